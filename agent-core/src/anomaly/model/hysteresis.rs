//! Hysteresis: raw per-point states in, a state that changes only when it held.

use super::super::State;

/// Hysteresis: a state changes only after it held `raise_after` points; back to ok only after
/// `clear_after` calm points.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct Hysteresis {
    pub state: State,
    /// Consecutive points at warning or above.
    pub hot: u16,
    /// Consecutive critical points.
    pub crit: u16,
    /// Consecutive points below critical.
    pub below: u16,
    /// Consecutive ok points.
    pub calm: u16,
    /// Time of the first point of the current run at warning or above.
    pub pending_since: f64,
    /// Onset of the current episode (first anomalous point), or when it ended.
    pub since: f64,
}

impl Hysteresis {
    /// Feeds one raw state; returns whether the state changed.
    pub fn update(&mut self, raw: State, t: f64, raise_after: u32, clear_after: u32) -> bool {
        let inc = |c: u16| c.saturating_add(1);
        if raw >= State::Warning {
            if self.hot == 0 {
                self.pending_since = t;
            }
            self.hot = inc(self.hot);
            self.calm = 0;
        } else {
            self.hot = 0;
            self.calm = inc(self.calm);
        }
        if raw == State::Critical {
            self.crit = inc(self.crit);
            self.below = 0;
        } else {
            self.crit = 0;
            self.below = inc(self.below);
        }
        let raise = raise_after.max(1);
        let clear = clear_after.max(1);
        let next = match self.state {
            State::Ok if u32::from(self.crit) >= raise => State::Critical,
            State::Ok if u32::from(self.hot) >= raise => State::Warning,
            State::Warning if u32::from(self.crit) >= raise => State::Critical,
            State::Warning | State::Critical if u32::from(self.calm) >= clear => State::Ok,
            State::Critical if u32::from(self.below) >= clear => State::Warning,
            s => s,
        };
        if next == self.state {
            return false;
        }
        if self.state == State::Ok {
            self.since = self.pending_since;
        } else if next == State::Ok {
            self.since = t;
        }
        self.state = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_holds_and_clears() {
        let mut h = Hysteresis::default();
        let w = State::Warning;
        assert!(!h.update(w, 1.0, 3, 2));
        assert!(!h.update(w, 2.0, 3, 2));
        assert!(h.update(w, 3.0, 3, 2));
        assert_eq!(h.state, State::Warning);
        assert_eq!(h.since, 1.0);
        assert!(!h.update(State::Ok, 4.0, 3, 2));
        assert!(h.update(State::Ok, 5.0, 3, 2));
        assert_eq!(h.state, State::Ok);
        // Alternating never settles into a change.
        for i in 0..100 {
            let raw = if i % 2 == 0 {
                State::Critical
            } else {
                State::Ok
            };
            assert!(!h.update(raw, 6.0 + f64::from(i), 3, 2));
        }
    }
}
