//! Helper processes (the agent, the peer tools) started for one measurement, and what the
//! benchmark reads about them: their output lines, the agent's JSON intervals, /proc figures.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// One line of output and when it was read.
pub type Line = (SystemTime, String);

#[derive(Default)]
struct Lines {
    out: Vec<Line>,
    err: Vec<Line>,
}

type Shared = Arc<(Mutex<Lines>, Condvar)>;

/// What tells that a helper is attached and measuring.
pub enum Ready<'a> {
    Stdout(&'a str),
    Stderr(&'a str),
}

/// A running helper process; killed if dropped without `stop`.
pub struct Helper {
    pub name: String,
    child: Child,
    lines: Shared,
    readers: Vec<thread::JoinHandle<()>>,
    done: bool,
}

/// A stopped helper's output.
pub struct Finished {
    pub stdout: Vec<Line>,
}

impl Helper {
    /// Starts `cmd` and waits until it prints `ready` (or fails, or `timeout` passes).
    pub fn start(name: &str, mut cmd: Command, ready: Ready, timeout: Duration) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let lines: Shared = Default::default();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let readers = vec![
            reader(out, lines.clone(), true),
            reader(err, lines.clone(), false),
        ];
        let mut helper = Helper {
            name: name.to_string(),
            child,
            lines,
            readers,
            done: false,
        };
        let (stream, needle) = match ready {
            Ready::Stdout(s) => (true, s),
            Ready::Stderr(s) => (false, s),
        };
        let deadline = Instant::now() + timeout;
        loop {
            if helper.seen(stream, needle) {
                return Ok(helper);
            }
            if let Some(status) = helper.child.try_wait()? {
                // Let the readers catch the last words.
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "{name} exited before it was ready ({status}): {}",
                    helper.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not print {needle:?} within {timeout:?}: {}",
                    helper.stderr_tail()
                );
            }
            let (lock, cond) = &*helper.lines;
            let guard = lock.lock().expect("lines lock");
            let _ = cond.wait_timeout(guard, Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn seen(&self, stdout: bool, needle: &str) -> bool {
        let l = self.lines.0.lock().expect("lines lock");
        let v = if stdout { &l.out } else { &l.err };
        v.iter().any(|(_, s)| s.contains(needle))
    }

    fn stderr_tail(&self) -> String {
        let l = self.lines.0.lock().expect("lines lock");
        let n = l.err.len();
        let tail: Vec<&str> = l.err[n.saturating_sub(5)..]
            .iter()
            .map(|(_, s)| s.as_str())
            .collect();
        if tail.is_empty() {
            "no stderr".into()
        } else {
            tail.join(" | ")
        }
    }

    /// Waits until a stdout line satisfies `pred` (true) or `timeout` passes (false).
    pub fn wait_stdout(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.lines;
        let mut guard = lock.lock().expect("lines lock");
        loop {
            if guard.out.iter().any(|(_, s)| pred(s)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = cond
                .wait_timeout(guard, (deadline - now).min(Duration::from_millis(100)))
                .expect("lines lock")
                .0;
        }
    }

    /// Stops the helper with SIGINT (SIGKILL after 15 s) and returns its output. Fails if it had
    /// already exited: what it measured would be incomplete.
    pub fn stop(mut self) -> Result<Finished> {
        if let Some(status) = self.child.try_wait()? {
            self.done = true;
            thread::sleep(Duration::from_millis(100));
            bail!(
                "{} exited during the measurement ({status}): {}",
                self.name,
                self.stderr_tail()
            );
        }
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        let _status: ExitStatus = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.done = true;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let mut l = self.lines.0.lock().expect("lines lock");
        Ok(Finished {
            stdout: std::mem::take(&mut l.out),
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn reader(r: impl Read + Send + 'static, lines: Shared, stdout: bool) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let (lock, cond) = &*lines;
                    let mut l = lock.lock().expect("lines lock");
                    let v = if stdout { &mut l.out } else { &mut l.err };
                    v.push((SystemTime::now(), s));
                    cond.notify_all();
                }
            }
        }
    })
}

/// Seconds since the epoch.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One interval of the agent's `--output json`: it covers [end - len, end].
pub struct Interval {
    pub end: f64,
    pub len: f64,
    pub v: Value,
}

/// The agent's JSON intervals among its stdout lines.
pub fn intervals(lines: &[Line]) -> Vec<Interval> {
    lines
        .iter()
        .filter_map(|(_, s)| serde_json::from_str::<Value>(s).ok())
        .filter_map(|v| {
            Some(Interval {
                end: v.get("time")?.as_f64()?,
                len: v.get("interval_s")?.as_f64()?,
                v,
            })
        })
        .collect()
}

/// The whole intervals (at least 0.9 s long) that lie inside [from, to].
pub fn inside(ivs: &[Interval], from: SystemTime, to: SystemTime) -> Vec<&Interval> {
    let (from, to) = (unix(from), unix(to));
    ivs.iter()
        .filter(|i| i.len >= 0.9 && i.end - i.len >= from - 0.005 && i.end <= to + 0.005)
        .collect()
}

/// Does this stdout line hold an interval ending at or after `t`?
pub fn interval_ends_after(line: &str, t: SystemTime) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("time")?.as_f64())
        .is_some_and(|end| end >= unix(t))
}

/// The metrics of one interval named `name`: (tags, value).
pub fn metrics<'a>(v: &'a Value, name: &'a str) -> impl Iterator<Item = (&'a Value, f64)> + 'a {
    v.get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |m| m.get("name").and_then(Value::as_str) == Some(name))
        .filter_map(|m| Some((m.get("tags")?, m.get("value")?.as_f64()?)))
}

/// The value of metric `name` whose tags include `tags`.
pub fn metric(v: &Value, name: &str, tags: &[(&str, &str)]) -> Option<f64> {
    metrics(v, name)
        .find(|(t, _)| {
            tags.iter()
                .all(|(k, want)| t.get(*k).and_then(Value::as_str) == Some(*want))
        })
        .map(|(_, x)| x)
}

/// User and system CPU time of a process so far, in seconds (all its threads).
pub fn cpu_secs(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').context("malformed /proc/pid/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(f.get(i).context("short stat")?.parse::<f64>()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime is field 14, stime 15; `rest` starts at field 3.
    Ok((ticks(11)? / hz, ticks(12)? / hz))
}

/// Resident memory of a process, in bytes: now (`VmRSS`) or its peak (`VmHWM`).
pub fn rss_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("no {field}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("malformed {field}"))?
        .parse()?;
    Ok(kib * 1024)
}
