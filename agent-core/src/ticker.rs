//! Intervals aligned to the wall clock: the rhythm shared by `run` and `watch`.
//!
//! The first boundary primes the deltas, so every reported interval is a whole one; `--duration`
//! ends after that many whole intervals; SIGINT/SIGTERM end the current interval early so what
//! it holds is still reported; SIGHUP (when asked for) interrupts the wait for a reload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

/// The next multiple of `interval` on the wall clock strictly after `now`.
pub fn next_boundary(now: SystemTime, interval: Duration) -> SystemTime {
    let since = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let step = interval.as_nanos().max(1);
    let next = (since / step + 1) * step;
    UNIX_EPOCH + Duration::from_nanos(next as u64)
}

/// `duration` rounded up to a whole number of intervals, at least one: `--duration` counts
/// whole intervals (`1ns` is one interval, `1500ms` at 1 s intervals two).
pub fn whole_intervals(duration: Duration, interval: Duration) -> Duration {
    let step = interval.as_nanos().max(1);
    let n = duration.as_nanos().div_ceil(step).max(1);
    Duration::from_nanos(u64::try_from(n * step).unwrap_or(u64::MAX))
}

/// Tokio instant at which the wall clock reads `t` (sleeping on the monotonic clock).
fn instant_at(t: SystemTime) -> Instant {
    Instant::now()
        + t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}

pub enum Tick {
    /// An interval ended at `end` after `len`; `last` when the agent stops after it.
    Interval {
        end: SystemTime,
        len: Duration,
        last: bool,
    },
    /// SIGHUP: reload, then call `next` again (the interval goes on).
    Reload,
}

pub struct Ticker {
    interval: Duration,
    boundary: SystemTime,
    start: SystemTime,
    deadline: Option<SystemTime>,
    term: Signal,
    int: Signal,
    hup: Option<Signal>,
}

impl Ticker {
    /// Listens for SIGINT/SIGTERM (and SIGHUP when `reload`) from now on.
    pub fn new(interval: Duration, reload: bool) -> std::io::Result<Ticker> {
        let now = SystemTime::now();
        Ok(Ticker {
            interval,
            boundary: now,
            start: now,
            deadline: None,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: if reload {
                Some(signal(SignalKind::hangup())?)
            } else {
                None
            },
        })
    }

    /// Waits for the first boundary, where the deltas start; `None` when stopped first.
    pub async fn first(&mut self, duration: Option<Duration>) -> Option<SystemTime> {
        let b = next_boundary(SystemTime::now(), self.interval);
        tokio::select! {
            _ = tokio::time::sleep_until(instant_at(b)) => {}
            _ = self.term.recv() => return None,
            _ = self.int.recv() => return None,
        }
        self.boundary = b;
        self.start = b;
        self.deadline = duration.map(|d| b + whole_intervals(d, self.interval));
        Some(b)
    }

    /// A new interval length, from a reload: the current interval ends at the next boundary of
    /// the new length after now.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        self.boundary = SystemTime::now().max(self.start);
    }

    pub async fn next(&mut self) -> Tick {
        let boundary = next_boundary(self.boundary, self.interval);
        let stop_at = self.deadline.filter(|d| *d <= boundary);
        let target = stop_at.unwrap_or(boundary);
        let mut stopping = stop_at.is_some();
        let hup = async {
            match &mut self.hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(instant_at(target)) => {}
            _ = self.term.recv() => stopping = true,
            _ = self.int.recv() => stopping = true,
            _ = hup => return Tick::Reload,
        }
        // On a signal the interval ends now.
        let end = if stopping {
            SystemTime::now().min(target)
        } else {
            target
        };
        let len = end.duration_since(self.start).unwrap_or(Duration::ZERO);
        self.boundary = boundary;
        self.start = end;
        Tick::Interval {
            end,
            len,
            last: stopping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_intervals() {
        let s = Duration::from_secs;
        assert_eq!(whole_intervals(Duration::from_nanos(1), s(1)), s(1));
        assert_eq!(whole_intervals(Duration::ZERO, s(1)), s(1));
        assert_eq!(whole_intervals(Duration::from_millis(1500), s(1)), s(2));
        assert_eq!(whole_intervals(s(3), s(1)), s(3));
        assert_eq!(
            whole_intervals(s(1), Duration::from_millis(300)),
            Duration::from_millis(1200)
        );
        // The longest accepted duration at the shortest interval does not overflow.
        let year = s(366 * 24 * 3600);
        assert_eq!(whole_intervals(year, Duration::from_millis(100)), year);
    }

    #[test]
    fn boundaries_align_to_the_wall_clock() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(
            next_boundary(t, Duration::from_secs(1)),
            UNIX_EPOCH + Duration::from_secs(1_700_000_001)
        );
        assert_eq!(
            next_boundary(t, Duration::from_millis(500)),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
        );
        // Exactly on a boundary: the next one.
        let on = UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(
            next_boundary(on, Duration::from_secs(5)),
            UNIX_EPOCH + Duration::from_secs(15)
        );
    }
}
