//! Intervals aligned to the wall clock: the rhythm shared by `run` and `watch`.
//!
//! The first boundary primes the deltas, so every reported interval is a whole one; `--duration`
//! ends after that many whole intervals; SIGINT/SIGTERM end the current interval early so what
//! it holds is still reported; SIGHUP (when asked for) interrupts the wait for a reload.
//!
//! The wait is one kernel timer (a timerfd on the wall clock, absolute): one wakeup per
//! interval. Tokio's timer wheel would wake at each of its levels on the way to a deadline a
//! second away (two or three wakeups per interval), and an idle agent should wake once.

use std::{
    io,
    os::fd::OwnedFd,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
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

/// A timer on the wall clock (CLOCK_REALTIME, absolute expiry): the wait ends when the clock
/// reads the deadline, even if it was stepped meanwhile.
struct WallTimer(AsyncFd<OwnedFd>);

impl WallTimer {
    fn new() -> io::Result<WallTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Realtime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the AsyncFd owns the timer's fd: it stays open while registered.
        Ok(WallTimer(unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE)
        }?))
    }

    /// Waits until the wall clock reads `t`. A timer that cannot be armed or read (not seen: the
    /// fd is ours and valid) degrades to tokio's sleep, and says so.
    async fn wait(&self, t: SystemTime) {
        if let Err(e) = self.sleep_until(t).await {
            tracing::warn!("interval timer: {e}; using tokio's");
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left).await;
        }
    }

    /// Waits until the wall clock reads `t` (at once if it is past). Cancel-safe: the next call
    /// re-arms the timer, which also forgets an expiry nobody waited for.
    async fn sleep_until(&self, t: SystemTime) -> io::Result<()> {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let at = Timespec {
            tv_sec: since.as_secs() as _,
            // A zero expiry would disarm the timer: 1 ns later is the same boundary.
            tv_nsec: since.subsec_nanos().max(u32::from(since.as_secs() == 0)) as _,
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: at,
        };
        timerfd_settime(self.0.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
        loop {
            let mut guard = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.0.get_ref(), &mut expirations) {
                Ok(_) => return Ok(()),
                // Readiness left from an earlier expiry, forgotten by the re-arming.
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
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
    timer: WallTimer,
    term: Signal,
    int: Signal,
    hup: Option<Signal>,
}

impl Ticker {
    /// Listens for SIGINT/SIGTERM (and SIGHUP when `reload`) from now on.
    pub fn new(interval: Duration, reload: bool) -> io::Result<Ticker> {
        let now = SystemTime::now();
        Ok(Ticker {
            interval,
            boundary: now,
            start: now,
            deadline: None,
            timer: WallTimer::new()?,
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
            _ = self.timer.wait(b) => {}
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
            _ = self.timer.wait(target) => {}
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
