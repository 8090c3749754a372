//! Helpers for the integration tests: run the real binary, read its JSON intervals, make load.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ebpf-agent")
}

/// A fresh, empty state directory for one agent: tests never read or write the host's
/// `/var/lib/ebpf-agent` (a baseline learnt from tests would judge the host's real work).
/// Under the target's temporary directory, removed by the next `cargo clean`.
pub fn temp_state_dir() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = format!(
        "{}/state-{}-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary state dir");
    dir
}

/// `args` of `run` or `watch` with `--state-dir` set to a fresh temporary directory, unless
/// they set one (or name a configuration file that does).
pub fn with_temp_state(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let sets_dir = args.iter().any(|a| a.starts_with("--state-dir"))
        || args.windows(2).any(|w| {
            w[0] == "--config"
                && std::fs::read_to_string(w[1]).is_ok_and(|c| c.contains("state_dir"))
        });
    if matches!(args.first(), Some(&"run") | Some(&"watch")) && !sets_dir {
        out.insert(1, "--state-dir".into());
        out.insert(2, temp_state_dir());
    }
    out
}

/// A running `ebpf-agent`, its stdout collected, its stderr watched for readiness.
pub struct Agent {
    child: Child,
    stdout: Option<thread::JoinHandle<String>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Agent {
    pub fn start(args: &[&str]) -> Agent {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(bin())
            .args(with_temp_state(args))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ebpf-agent");
        let mut out = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).unwrap();
            s
        });
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            stdout: Some(stdout),
            stderr_lines: rx,
            stderr: vec![],
        }
    }

    /// Waits for the "collecting:" log line: programs are attached and deltas primed, so every
    /// event from now on is counted.
    pub fn wait_ready(&mut self) -> &mut Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
                let ready = line.contains("collecting:");
                self.stderr.push(line);
                if ready {
                    return self;
                }
            }
        }
        panic!("agent not ready after 20 s; stderr: {:#?}", self.stderr);
    }

    /// Asks the agent to stop (SIGTERM: it finishes the interval and exits cleanly).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// The stderr lines received since the last call (kept for `finish` too).
    pub fn new_stderr(&mut self) -> Vec<String> {
        let new: Vec<String> = self.stderr_lines.try_iter().collect();
        self.stderr.extend(new.iter().cloned());
        new
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for exit (it must stop by itself within `timeout`); returns status, stdout, stderr.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, String, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not stop within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let out = self.stdout.take().unwrap().join().unwrap();
        self.stderr.extend(self.stderr_lines.try_iter());
        thread::sleep(Duration::from_millis(100));
        self.stderr.extend(self.stderr_lines.try_iter());
        (status, out, std::mem::take(&mut self.stderr))
    }

    /// Waits for a successful exit and parses stdout as JSON lines.
    pub fn intervals(self, timeout: Duration) -> Vec<Value> {
        let (status, out, err) = self.finish(timeout);
        assert!(status.success(), "agent failed: {status}; stderr: {err:#?}");
        parse_lines(&out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn parse_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn tags_match(m: &Value, tags: &[(&str, &str)]) -> bool {
    tags.iter().all(|(k, v)| m["tags"][*k].as_str() == Some(*v))
}

/// Metrics named `name` with these tags, one per interval that has it.
pub fn values(intervals: &[Value], name: &str, tags: &[(&str, &str)]) -> Vec<f64> {
    intervals
        .iter()
        .flat_map(|i| i["metrics"].as_array().unwrap().iter())
        .filter(|m| m["name"] == name && tags_match(m, tags))
        .map(|m| m["value"].as_f64().unwrap())
        .collect()
}

pub fn sum(intervals: &[Value], name: &str, tags: &[(&str, &str)]) -> f64 {
    values(intervals, name, tags).iter().sum()
}

/// The value of `name` in the same interval where `key` (same tags) is largest.
pub fn at_busiest(
    intervals: &[Value],
    key: &str,
    name: &str,
    tags: &[(&str, &str)],
) -> Option<(f64, f64)> {
    intervals
        .iter()
        .filter_map(|i| {
            let ms = i["metrics"].as_array().unwrap();
            let find = |n: &str| {
                ms.iter()
                    .find(|m| m["name"] == n && tags_match(m, tags))
                    .map(|m| m["value"].as_f64().unwrap())
            };
            Some((find(key)?, find(name)?))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

pub fn getppid_n(n: usize) {
    for _ in 0..n {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() };
    }
}

/// Raw `nanosleep`s (the agent sees `nanosleep`, not `clock_nanosleep`) of `ms` milliseconds in
/// a loop on a new thread of this process until `stop` is set; `ms` may change meanwhile.
pub fn sleeper(
    ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let req = libc::timespec {
                tv_sec: 0,
                tv_nsec: (ms.load(Ordering::Relaxed) * 1_000_000) as i64,
            };
            // SAFETY: a valid timespec, no remainder wanted.
            unsafe {
                libc::syscall(
                    libc::SYS_nanosleep,
                    &req,
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
        }
    })
}

/// Every metric of every interval is in the agent's typed catalogue, with its kind: nothing is
/// emitted that the README does not document (the README is checked against the catalogue).
pub fn assert_in_catalogue(intervals: &[Value]) {
    let catalogue = ebpf_agent::metric_catalogue();
    let mut seen = 0;
    for m in intervals
        .iter()
        .flat_map(|i| i["metrics"].as_array().cloned().unwrap_or_default())
    {
        let name = m["name"].as_str().expect("metric name");
        let def = catalogue
            .iter()
            .find(|d| d.produces(name))
            .unwrap_or_else(|| panic!("{name} is not in the metric catalogue"));
        assert_eq!(m["kind"], def.kind().as_str(), "kind of {name}");
        seen += 1;
    }
    assert!(seen > 0, "no metrics");
}
