//! `ebpf-agent watch` on the real kernel (root): frames on a pipe, known `getppid` load, the exit
//! report, and the `--pid` filter. Run with one test thread: the programs count system-wide.

mod common;

use common::getppid_n;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

const N: usize = 50_000;

/// The tests count this process's own calls: they must not overlap, even without
/// `--test-threads=1`.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `ebpf-agent watch` whose stdout lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: thread::JoinHandle<String>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let args: Vec<&str> = std::iter::once("watch")
            .chain(args.iter().copied())
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ebpf-agent"))
            .args(common::with_temp_state(&args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ebpf-agent watch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Watch {
            child,
            lines,
            stdout: vec![],
            stderr,
        }
    }

    /// Waits for the first frame's `--- <time>` line: from now on every call is counted.
    fn wait_first_frame(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let frame = line.starts_with("--- ");
                    self.stdout.push(line);
                    if frame {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no frame within 20 s; stdout so far: {:#?}", self.stdout);
    }

    /// Waits for exit (it must stop by itself); returns status, stdout lines and stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("watch did not stop by itself; stdout: {:#?}", self.stdout);
            }
            thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at EOF, once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let stderr = self.stderr.join().unwrap();
        (status, self.stdout, stderr)
    }
}

/// Frames: the lines after each `--- <time>` separator, up to the next one or the report.
fn frames(out: &[String]) -> Vec<&[String]> {
    let mut starts: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("--- "))
        .map(|(i, _)| i)
        .collect();
    let report = out
        .iter()
        .position(|l| l.starts_with("=== "))
        .unwrap_or(out.len());
    starts.push(report);
    starts.windows(2).map(|w| &out[w[0] + 1..w[1]]).collect()
}

/// calls/s of `syscall` in a frame's top-syscalls table, if listed.
fn calls_per_s(frame: &[String], syscall: &str) -> Option<f64> {
    frame
        .iter()
        .skip_while(|l| !l.starts_with("TOP SYSCALLS BY TOTAL TIME"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            // An anomalous row starts with its mark.
            let l = l.trim_start_matches(['▲', '▼', ' ']);
            let mut cols = l.split_whitespace();
            (cols.next() == Some(syscall)).then(|| cols.next().unwrap().parse::<f64>().unwrap())
        })
}

/// The exit report's histogram of `title` (heading line and bar rows).
fn report_histogram<'a>(out: &'a [String], title: &str) -> Option<Vec<&'a String>> {
    let report = out.iter().position(|l| l.starts_with("=== "))?;
    let head = format!("{title}: ");
    let at = out[report..].iter().position(|l| l.starts_with(&head))? + report;
    Some(out[at..].iter().take_while(|l| !l.is_empty()).collect())
}

#[test]
fn watch_shows_frames_and_the_session_histogram_of_known_load() {
    let _serial = serial();
    let mut w = Watch::start(&["--duration", "3s", "--probes", "syscall,procfs"]);
    w.wait_first_frame();
    getppid_n(N);
    let (status, out, stderr) = w.finish();
    let text = out.join("\n");
    assert!(
        status.success(),
        "exit {status:?}; stderr: {stderr}; stdout:\n{text}"
    );
    assert!(!text.contains('\x1b'), "escape codes on a pipe:\n{text}");

    let frames = frames(&out);
    assert!(frames.len() >= 2, "{} frames:\n{text}", frames.len());
    for f in &frames {
        assert!(
            f[0].starts_with("ebpf-agent watch · "),
            "frame header: {f:#?}"
        );
        assert!(f[1].contains("collecting: syscall, procfs"), "{f:#?}");
        assert!(
            f.iter().any(|l| l.starts_with("MEMORY, SWAP, IOWAIT")),
            "{f:#?}"
        );
    }
    let seen: Vec<f64> = frames
        .iter()
        .filter_map(|f| calls_per_s(f, "getppid"))
        .collect();
    assert!(
        !seen.is_empty(),
        "getppid not in any top-syscalls table:\n{text}"
    );
    let total: f64 = seen.iter().sum();
    // System-wide: other processes may add a few calls.
    assert!(
        total >= N as f64,
        "getppid calls/s summed over frames = {total}, want ≥ {N}:\n{text}"
    );

    let hist = report_histogram(&out, "syscall getppid")
        .unwrap_or_else(|| panic!("no session histogram for getppid:\n{text}"));
    let samples: u64 = hist[0]
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("heading: {}", hist[0]));
    assert!(samples >= N as u64, "{}", hist[0]);
    let rows: Vec<u64> = hist[1..]
        .iter()
        .map(|r| {
            assert!(r.contains(") µs") && r.ends_with('|'), "bar row: {r}");
            let count = r.split(") µs").nth(1).unwrap().split('|').next().unwrap();
            count.trim().parse().unwrap()
        })
        .collect();
    assert!(!rows.is_empty(), "no bar rows: {hist:#?}");
    assert_eq!(
        rows.iter().sum::<u64>(),
        samples,
        "rows add up to the samples: {hist:#?}"
    );
}

#[test]
fn watch_pid_filter_excludes_other_processes() {
    let _serial = serial();
    let me = std::process::id().to_string();
    let mut w = Watch::start(&["--duration", "3s", "--probes", "syscall", "--pid", &me]);
    w.wait_first_frame();
    // Another process's 20,000 getppid calls must not be counted...
    let other = Command::new("python3")
        .args(["-c", "import os\nfor _ in range(20000): os.getppid()"])
        .spawn()
        .expect("python3 is needed by this test");
    // ...while this process's are.
    getppid_n(N);
    let other = other.wait_with_output().unwrap();
    assert!(other.status.success(), "python3 failed: {other:?}");
    let (status, out, stderr) = w.finish();
    let text = out.join("\n");
    assert!(
        status.success(),
        "exit {status:?}; stderr: {stderr}; stdout:\n{text}"
    );
    let frames = frames(&out);
    assert!(frames.len() >= 2, "{} frames:\n{text}", frames.len());
    assert!(
        frames[0][1].contains(&format!("filter: pid {me}")),
        "{:#?}",
        frames[0]
    );
    let total: f64 = frames
        .iter()
        .filter_map(|f| calls_per_s(f, "getppid"))
        .sum();
    assert!(
        (N as f64..=N as f64 + 50.0).contains(&total),
        "getppid calls/s summed over frames = {total}, want {N} (+50 at most), far below {}:\n{text}",
        N + 20_000
    );
}

#[test]
fn watch_marks_what_the_daemons_baseline_finds_unusual_and_never_writes_it() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("ebpf-agent-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    // The daemon's file: its state_dir and [anomaly] settings are what watch uses too. Short
    // intervals and warm-up so the test fits in seconds. The per-interval max and p999 of a
    // 1 ms sleep loop jitter by several times at 250 ms intervals: the detector's noise model
    // for tails must keep that quiet from the first judged point (issue #12).
    std::fs::write(
        &config,
        format!(
            "interval = \"250ms\"\nstate_dir = {:?}\n[anomaly]\nwarmup = 16\nraise_after = 2\nclear_after = 4\nexclude = [\"agent.heartbeat\"]\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let ms = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let load = common::sleeper(ms.clone(), stop.clone());

    // The daemon learns steady 1 ms sleeps for 7 s (28 intervals, past the warm-up). Its JSON
    // is read here as watch's frames will be, a line per interval: this process's blocking
    // pipe reads are part of the host's usual `read` latency then too, as they will be while
    // watch runs.
    let daemon = Command::new(env!("CARGO_BIN_EXE_ebpf-agent"))
        .args([
            "run",
            "--config",
            &config,
            "--probes",
            "syscall",
            "--duration",
            "7s",
        ])
        .args(["--output", "json"])
        .output()
        .expect("run ebpf-agent");
    assert!(daemon.status.success(), "daemon: {daemon:?}");
    let state = dir.join("detector.state");
    let saved = std::fs::read(&state).expect("the daemon saved its baseline");

    // watch with the same file: 2 s as usual, then 3 s of 15 ms sleeps.
    let mut w = Watch::start(&[
        "--config",
        &config,
        "--probes",
        "syscall",
        "--interval",
        "250ms",
        "--duration",
        "7s",
    ]);
    w.wait_first_frame();
    thread::sleep(Duration::from_secs(2));
    ms.store(15, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(3));
    ms.store(1, Ordering::Relaxed);
    let (status, out, stderr) = w.finish();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let text = out.join("\n");
    assert!(
        status.success(),
        "exit {status:?}; stderr: {stderr}; stdout:\n{text}"
    );

    let frames = frames(&out);
    assert!(
        frames[0][1].contains("baseline ") && !frames[0][1].contains("baseline 0 keys"),
        "the header names the loaded baseline: {:#?}",
        frames[0]
    );
    // The slow sleeps' row is marked as above its usual, and the description says why.
    let marked = frames.iter().position(|f| {
        f.iter().any(|l| l.starts_with("▲ nanosleep "))
            && f.iter().any(|l| {
                (l.starts_with("critical") || l.starts_with("warning"))
                    && l.contains("nanosleep")
                    && l.contains("usual")
            })
    });
    let marked = marked.unwrap_or_else(|| panic!("no frame marks nanosleep:\n{text}"));
    // Before the burst nothing about nanosleep stood out.
    assert!(
        !frames[0].iter().any(|l| l.starts_with("▲ nanosleep")),
        "marked before the burst:\n{text}"
    );
    assert!(marked > 0);
    // Read-only: the daemon's file is untouched.
    assert_eq!(
        std::fs::read(&state).unwrap(),
        saved,
        "watch wrote the baseline"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
