//! The agent itself, as a user runs it: the default configuration (every probe, the anomaly
//! detector, a StatsD sink, a private state directory), idle and under a pinned getppid storm.
//! Its CPU and how often it wakes, over every thread, and its memory.

use std::{
    fs,
    net::UdpSocket,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Bench, load,
    proc::{self, Helper, Ready},
    report::{self, Table, Target, Verdict, num},
    stats::{Spread, median},
};

/// What one window of the agent measured.
struct Window {
    calls_per_s: f64,
    /// Context switches (voluntary + nonvoluntary) of every thread, per second.
    wakeups_per_s: f64,
    nonvoluntary_per_s: f64,
    /// utime+stime, % of one core.
    cpu_pct: f64,
    /// Run time from /proc/PID/task/*/schedstat (ns, not ticks), % of one core.
    run_pct: f64,
    threads: usize,
    /// The agent's own `agent.cpu_pct`, as received by the StatsD listener.
    statsd_cpu_pct: Option<f64>,
    datagrams_per_s: f64,
    rss_bytes: f64,
    peak_bytes: f64,
}

/// Per-thread figures of a process, summed: context switches (voluntary, nonvoluntary) and run
/// time in ns.
fn threads(pid: u32) -> Result<(u64, u64, u64, usize)> {
    let (mut vol, mut nonvol, mut run, mut n) = (0, 0, 0, 0);
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        // A thread that ended between the listing and the read counts no more.
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        vol += field("voluntary_ctxt_switches");
        nonvol += field("nonvoluntary_ctxt_switches");
        run += fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        n += 1;
    }
    Ok((vol, nonvol, run, n))
}

/// A StatsD listener on a local UDP port: the datagrams it received and when.
struct Listener {
    port: u16,
    got: Arc<Mutex<Vec<(SystemTime, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Result<Listener> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("binding a local UDP port")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let port = sock.local_addr()?.port();
        let got: Arc<Mutex<Vec<(SystemTime, String)>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock()
                            .expect("listener lock")
                            .push((SystemTime::now(), s));
                    }
                }
            })
        };
        Ok(Listener {
            port,
            got,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams received in [from, to].
    fn between(&self, from: SystemTime, to: SystemTime) -> Vec<String> {
        self.got
            .lock()
            .expect("listener lock")
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Values of StatsD gauge `name` (no tags) in `datagrams`.
fn gauges(datagrams: &[String], name: &str) -> Vec<f64> {
    let head = format!("{name}:");
    datagrams
        .iter()
        .flat_map(|d| d.lines())
        .filter_map(|l| l.strip_prefix(&head)?.strip_suffix("|g")?.parse().ok())
        .collect()
}

impl Bench {
    /// Runs the agent with the defaults and a StatsD sink for `secs` seconds while a getppid
    /// loop runs on each CPU of `load` (none: idle).
    fn default_window(&self, n: usize, load: &[usize], secs: f64) -> Result<Window> {
        let state = self
            .config
            .with_file_name(format!("agent-state-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let listener = Listener::start()?;
        let mut c = Command::new(&self.agent);
        c.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--statsd")
            .arg(format!("127.0.0.1:{}", listener.port))
            .arg("--state-dir")
            .arg(&state)
            .env("EBPF_AGENT_LOG", "info");
        let agent = Helper::start(
            "ebpf-agent",
            c,
            Ready::Stderr("collecting:"),
            Duration::from_secs(30),
        )?;
        // Past the first interval (sockets opened, the detector's first samples).
        thread::sleep(Duration::from_millis(1500));
        let pid = agent.pid();
        let (v0, n0, r0, _) = threads(pid)?;
        let (u0, s0) = proc::cpu_secs(pid)?;
        let from = SystemTime::now();
        let t = Instant::now();
        let d = Duration::from_secs_f64(secs);
        let (calls, load_secs) = if load.is_empty() {
            thread::sleep(d);
            (0, d.as_secs_f64())
        } else {
            load::getppid_on(load, d)
        };
        let (v1, n1, r1, nthreads) = threads(pid)?;
        let (u1, s1) = proc::cpu_secs(pid)?;
        let wall = t.elapsed().as_secs_f64();
        let to = SystemTime::now();
        let rss = proc::rss_bytes(pid, "VmRSS")?;
        let peak = proc::rss_bytes(pid, "VmHWM")?;
        agent.stop()?;
        let _ = fs::remove_dir_all(&state);
        let datagrams = listener.between(from, to);
        Ok(Window {
            calls_per_s: calls as f64 / load_secs,
            wakeups_per_s: (v1 + n1 - v0 - n0) as f64 / wall,
            nonvoluntary_per_s: (n1 - n0) as f64 / wall,
            cpu_pct: (u1 - u0 + s1 - s0) / wall * 100.0,
            run_pct: (r1 - r0) as f64 / 1e9 / wall * 100.0,
            threads: nthreads,
            statsd_cpu_pct: median(&gauges(&datagrams, "ebpf.agent.cpu_pct")),
            datagrams_per_s: datagrams.len() as f64 / wall,
            rss_bytes: rss as f64,
            peak_bytes: peak as f64,
        })
    }

    pub(super) fn agent_itself(&mut self) -> Result<Value> {
        let (rounds, secs) = (self.plan.self_rounds, self.plan.self_secs);
        let states = [
            ("idle".to_string(), vec![]),
            (
                format!("getppid loop pinned to CPU {} at full speed", self.cpu),
                vec![self.cpu],
            ),
        ];
        let mut got: Vec<Vec<Window>> = vec![Vec::new(), Vec::new()];
        for r in 0..rounds {
            for k in (0..2).map(|i| (i + r) % 2) {
                eprintln!(
                    "bench: agent itself round {}/{rounds}: {}",
                    r + 1,
                    states[k].0
                );
                match self.default_window(r * 2 + k, &states[k].1, secs) {
                    Ok(w) => got[k].push(w),
                    Err(e) => self
                        .errors
                        .push(format!("agent itself, {}: {e:#}", states[k].0)),
                }
            }
        }
        let mut table = Table::new(
            &format!(
                "The agent itself, with the defaults: every probe, anomaly detection, a StatsD sink ({secs} s windows, {rounds} rounds{})",
                if self.smoke {
                    "; smoke: windows shorter than the 20 s the targets are measured over"
                } else {
                    ""
                }
            ),
            &[
                "state",
                "traced syscalls/s (loop)",
                "wakeups/s (all threads)",
                "of which preempted",
                "CPU % of one core (utime+stime)",
                "CPU % (run time, ns)",
                "agent.cpu_pct (StatsD)",
                "datagrams/s",
                "threads",
                "RSS MiB (max)",
                "peak RSS MiB (VmHWM)",
            ],
        );
        let mut out = serde_json::Map::new();
        let (mut rss_max, mut peak_max): (f64, f64) = (0.0, 0.0);
        for (k, (name, _)) in states.iter().enumerate() {
            let s = |f: fn(&Window) -> Option<f64>| Spread(got[k].iter().filter_map(f).collect());
            let rate = s(|w| Some(w.calls_per_s));
            let wake = s(|w| Some(w.wakeups_per_s));
            let nonvol = s(|w| Some(w.nonvoluntary_per_s));
            let cpu = s(|w| Some(w.cpu_pct));
            let run = s(|w| Some(w.run_pct));
            let jcpu = s(|w| w.statsd_cpu_pct);
            let dgrams = s(|w| Some(w.datagrams_per_s));
            let nthreads = s(|w| Some(w.threads as f64));
            let rss = s(|w| Some(w.rss_bytes / 1048576.0));
            let peak = s(|w| Some(w.peak_bytes / 1048576.0));
            rss_max = rss_max.max(rss.max().unwrap_or(0.0));
            peak_max = peak_max.max(peak.max().unwrap_or(0.0));
            table.row(vec![
                name.clone(),
                if k == 0 { "–".into() } else { rate.show(0) },
                wake.show(2),
                nonvol.show(2),
                cpu.show(3),
                run.show(3),
                jcpu.show(2),
                dgrams.show(1),
                num(nthreads.max(), 0),
                num(rss.max(), 1),
                num(peak.max(), 1),
            ]);
            out.insert(
                name.clone(),
                json!({
                    "syscalls_per_s": rate.json(),
                    "wakeups_per_s": wake.json(),
                    "nonvoluntary_per_s": nonvol.json(),
                    "cpu_pct": cpu.json(),
                    "run_time_pct": run.json(),
                    "agent_cpu_pct_statsd": jcpu.json(),
                    "datagrams_per_s": dgrams.json(),
                    "threads": nthreads.json(),
                    "rss_mib": rss.json(),
                    "peak_rss_mib": peak.json(),
                }),
            );
            let how = format!(
                "{secs} s windows; utime+stime of the agent's process; context switches summed over its threads; {}",
                report::cpu_line()
            );
            if k == 0 {
                self.target(Target {
                    name: "agent idle, defaults: ≤ 2 wakeups/s".into(),
                    value: format!("{} /s", num(wake.median(), 2)),
                    limit: "≤ 2 /s".into(),
                    verdict: Verdict::rounds(&wake.0, |v| v <= 2.0),
                    note: how.clone(),
                });
                self.target(Target {
                    name: "agent idle, defaults: ≤ 0.1% of a core".into(),
                    value: format!("{} %", num(cpu.median(), 3)),
                    limit: "≤ 0.1 %".into(),
                    verdict: Verdict::rounds(&cpu.0, |v| v <= 0.1),
                    note: format!("{how}; run time from schedstat {} %", num(run.median(), 3)),
                });
            } else {
                // A round counts only if the loop reached the rate the target is stated at.
                let rounds: Vec<f64> = got[k]
                    .iter()
                    .filter(|w| w.calls_per_s >= 3e6)
                    .map(|w| w.cpu_pct)
                    .collect();
                self.target(Target {
                    name: "agent, defaults: ≤ 0.3% of a core at ≥ 3M traced syscalls/s".into(),
                    value: format!("{} %", num(cpu.median(), 3)),
                    limit: "≤ 0.3 %".into(),
                    verdict: Verdict::rounds(&rounds, |v| v <= 0.3),
                    note: format!(
                        "at {} syscalls/s ({} of {} rounds at ≥ 3M); {how}",
                        num(rate.median(), 0),
                        rounds.len(),
                        got[k].len()
                    ),
                });
            }
        }
        table.note(format!(
            "The agent as `ebpf-agent run --statsd 127.0.0.1:PORT --state-dir DIR` runs it, with an \
             empty configuration file: every probe, the anomaly detector, StatsD datagrams to a \
             local listener (no stdout output), a fresh state directory. Wakeups: voluntary and \
             nonvoluntary context switches of every thread (/proc/PID/task/*/status), per second; \
             preempted: the nonvoluntary ones. CPU: utime+stime (/proc/PID/stat, 10 ms ticks: \
             one tick is {:.3}% of a {secs} s window) and the threads' run time in ns \
             (/proc/PID/task/*/schedstat), in % of one core; agent.cpu_pct is the agent's own \
             figure over each interval, as its StatsD sink sent it. The kernel programs' cost is \
             not in these columns: see the syscall table and the kernel-side table. {}",
            1.0 / secs,
            report::cpu_line()
        ));
        self.print(table);
        self.target(Target {
            name: "agent: RSS < 32 MiB".into(),
            value: format!("{rss_max:.1} MiB"),
            limit: "< 32 MiB".into(),
            verdict: Verdict::of((rss_max > 0.0).then_some(rss_max.max(peak_max) < 32.0)),
            note: format!(
                "max over the idle and loaded windows; peak since start {peak_max:.1} MiB (VmHWM: parsing the kernel's BTF at start), also below the limit for a PASS"
            ),
        });
        Ok(json!({ "rounds": rounds, "secs": secs, "cpu": report::cpu_line(), "states": out }))
    }
}
