//! Integration tests on the real kernel: load every program, drive known load, assert the
//! agent's numbers. Run as root, one test at a time (`cargo xtask test`).

mod common;

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::OpenOptionsExt,
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, assert_in_catalogue, at_busiest, getppid_n, sum, values};

const FINISH: Duration = Duration::from_secs(30);

#[test]
fn getppid_calls_are_counted_exactly() {
    const N: usize = 50_000;
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall",
        "--duration",
        "3s",
    ]);
    agent.wait_ready();
    getppid_n(N);
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    assert!(
        intervals.len() >= 3,
        "3 intervals for --duration 3s, got {}",
        intervals.len()
    );
    for i in &intervals {
        assert_eq!(i["interval_s"], 1.0);
        assert!(i["time"].as_u64().unwrap() > 1_600_000_000);
    }
    let count = sum(&intervals, "syscall.count", &[("syscall", "getppid")]);
    // System-wide: stray calls by other processes (shells read $PPID...) are allowed, 0.5% at
    // most; `pid_filter_excludes_other_processes` asserts the exact count.
    assert!(
        (N as f64..=N as f64 * 1.005).contains(&count),
        "syscall.count{{getppid}} = {count}, want {N}"
    );
    assert_eq!(
        sum(&intervals, "syscall.errors", &[("syscall", "getppid")]),
        0.0
    );
    let (_, p50) = at_busiest(
        &intervals,
        "syscall.count",
        "syscall.latency_us.p50",
        &[("syscall", "getppid")],
    )
    .unwrap();
    assert!(p50 > 0.0 && p50 < 50.0, "getppid p50 {p50} µs");
    assert_eq!(
        sum(&intervals, "agent.probe_up", &[("probe", "syscall")]),
        intervals.len() as f64
    );
}

#[test]
fn nanosleep_p50_matches_the_true_sleep() {
    const SLEEPS: usize = 150;
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall",
        "--duration",
        "3s",
        "--slow-threshold",
        "5ms",
    ]);
    agent.wait_ready();
    let mut true_ns = Vec::with_capacity(SLEEPS);
    let req = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    for _ in 0..SLEEPS {
        let t = Instant::now();
        // SAFETY: valid timespec, no remainder wanted. The raw syscall, so the agent sees `nanosleep`.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &req,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        true_ns.push(t.elapsed().as_nanos() as f64);
    }
    let intervals = agent.intervals(FINISH);
    true_ns.sort_by(f64::total_cmp);
    let true_p50_us = true_ns[SLEEPS / 2] / 1000.0;
    let tags = [("syscall", "nanosleep")];
    assert!(sum(&intervals, "syscall.count", &tags) >= SLEEPS as f64);
    let (count, p50) =
        at_busiest(&intervals, "syscall.count", "syscall.latency_us.p50", &tags).unwrap();
    assert!(count >= 40.0);
    let err = (p50 - true_p50_us).abs() / true_p50_us;
    assert!(
        err <= 0.125,
        "agent p50 {p50} µs vs true {true_p50_us} µs: {:.1}% off",
        err * 100.0
    );
    // Every sleep is over the 5 ms threshold: each reaches the ring buffer as a slow event.
    let me = std::process::id();
    let slow = intervals
        .iter()
        .flat_map(|i| i["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "slow_syscall" && e["target"] == "nanosleep" && e["pid"] == me)
        .inspect(|e| assert!(e["latency_us"].as_f64().unwrap() >= 5000.0))
        .count();
    assert_eq!(slow, SLEEPS, "slow nanosleep events from this process");
    assert_eq!(
        sum(&intervals, "agent.events_lost", &[("probe", "syscall")]),
        0.0
    );
}

/// The whole-disk device holding `path` (e.g. `vda`), from /sys.
fn disk_of(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    // A partition's parent directory is its disk.
    let dir = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn direct_writes_are_counted_on_the_root_disk() {
    direct_writes_are_counted(false);
}

/// The same through the classic tracepoints, which serve on kernels without BTF.
#[test]
fn direct_writes_are_counted_through_classic_tracepoints() {
    direct_writes_are_counted(true);
}

/// Starts the agent on the BTF tracepoints, or on the classic ones (`classic`, as on a kernel
/// without BTF), and checks which of the probe's two programs, (BTF, classic), serves.
fn start_on_tracepoints(classic: bool, args: &[&str], programs: (&str, &str)) -> Agent {
    let env: &[(&str, &str)] = if classic {
        &[("EBPF_AGENT_CLASSIC_TRACEPOINTS", "1")]
    } else {
        &[]
    };
    let mut agent = Agent::start_env(args, env);
    agent.wait_ready();
    let (used, unused) = if classic {
        (programs.1, programs.0)
    } else {
        programs
    };
    assert_eq!(programs_named(used), 1, "{used} attached");
    assert_eq!(programs_named(unused), 0, "{unused} not attached");
    agent
}

/// M O_DIRECT writes, each followed by fdatasync: at least M writes of 4 KiB on the disk
/// holding the test's directory, as many flushes, and (threshold 0) M slow-request events
/// naming this process.
fn direct_writes_are_counted(classic: bool) {
    const M: usize = 200;
    let dir = env!("CARGO_TARGET_TMPDIR").to_string();
    let path = format!("{dir}/ebpf-agent-direct-{}", std::process::id());
    let device = disk_of(&dir);
    let agent = start_on_tracepoints(
        classic,
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "disk",
            "--duration",
            "4s",
            "--interval",
            "250ms",
            "--slow-threshold",
            "0",
        ],
        ("btf_rq_issue", "block_rq_issue"),
    );
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        // O_DIRECT wants an aligned buffer: take a 4 KiB-aligned slice of a larger one.
        let raw = vec![0xabu8; 8192];
        let off = raw.as_ptr().align_offset(4096);
        let block = &raw[off..off + 4096];
        for _ in 0..M {
            f.write_all(block).unwrap();
            f.sync_data().unwrap();
            // Spread over several intervals: each keeps its latest 256 events.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::fs::remove_file(&path).unwrap();
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    let tags = [("device", device.as_str()), ("op", "write")];
    let ops = sum(&intervals, "disk.ops", &tags);
    assert!(
        ops >= M as f64,
        "disk.ops{{device={device},op=write}} = {ops}, want >= {M}"
    );
    assert!(sum(&intervals, "disk.bytes", &tags) >= (M * 4096) as f64);
    // On a device with a volatile write cache each fdatasync flushes it: a flush request per
    // write (op other).
    let cache = std::fs::read_to_string(format!("/sys/block/{device}/queue/write_cache"))
        .unwrap_or_default();
    let flushes = sum(
        &intervals,
        "disk.ops",
        &[("device", device.as_str()), ("op", "other")],
    );
    if cache.trim() == "write back" {
        assert!(flushes >= M as f64, "flushes {flushes}, want >= {M}");
    }
    // Every write is an event naming the task that handed the request to the driver: this
    // process (a write issued synchronously, at queue depth 1).
    let target = format!("{device} write");
    let writes: Vec<serde_json::Value> = intervals
        .iter()
        .flat_map(|i| i["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "slow_disk" && e["target"] == target.as_str())
        .collect();
    let ours = writes
        .iter()
        .filter(|e| e["pid"] == std::process::id() && e["ret"] == 4096)
        .count();
    let others: Vec<&serde_json::Value> = writes
        .iter()
        .filter(|e| e["pid"] != std::process::id())
        .collect();
    assert!(
        ours >= M,
        "{} write events, {ours} of this process; others: {:?}",
        writes.len(),
        others.iter().take(5).collect::<Vec<_>>()
    );
    let p99 = values(&intervals, "disk.latency_us.p99", &tags);
    assert!(
        !p99.is_empty() && p99.iter().all(|&v| v > 0.0),
        "write p99: {p99:?}"
    );
}

#[test]
fn loopback_connects_are_counted_exactly() {
    loopback_connects("127.0.0.1", false);
}

#[test]
fn ipv6_loopback_connects_are_counted_exactly() {
    loopback_connects("::1", false);
}

/// The same through the classic tracepoints, which serve on kernels without BTF.
#[test]
fn loopback_connects_are_counted_through_classic_tracepoints() {
    loopback_connects("127.0.0.1", true);
}

/// K connections to a listener of this process on `ip`, 3 request/replies each: K connects,
/// K accepts, an RTT sample per segment received, and an event for each connect and accept
/// with both ends' addresses and this process's pid.
fn loopback_connects(ip: &str, classic: bool) {
    const K: usize = 40;
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = start_on_tracepoints(
        classic,
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "tcp",
            "--duration",
            "3s",
        ],
        ("btf_tcp_probe", "tcp_probe"),
    );
    let mut clients = Vec::new();
    for _ in 0..K {
        let mut c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        // A little data each way gives the kernel RTT samples (tcp_probe).
        for _ in 0..3 {
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
            c.read_exact(&mut buf).unwrap();
        }
        clients.push(c.local_addr().unwrap());
    }
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    assert_eq!(sum(&intervals, "tcp.connects", &[]), K as f64);
    assert_eq!(sum(&intervals, "tcp.accepts", &[]), K as f64);
    // Each ping and pong is a segment received on an established socket.
    let samples = sum(&intervals, "tcp.rtt_samples", &[]);
    assert!(samples >= (6 * K) as f64, "rtt samples {samples}");
    let rtt = values(&intervals, "tcp.rtt_us.p50", &[]);
    assert!(
        !rtt.is_empty() && rtt.iter().all(|&v| v > 0.0 && v < 100_000.0),
        "rtt p50: {rtt:?}"
    );
    let connect = values(&intervals, "tcp.connect_latency_us.p50", &[]);
    assert!(!connect.is_empty() && connect.iter().all(|&v| v > 0.0));
    // Every connect and accept also reached the ring buffer, with both ends.
    let events: Vec<_> = intervals
        .iter()
        .flat_map(|i| i["events"].as_array().cloned().unwrap_or_default())
        .collect();
    let me = std::process::id();
    let seen = |kind: &str, target: String| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["target"] == target.as_str() && e["pid"] == me)
            .count()
    };
    for client in &clients {
        assert_eq!(
            seen("tcp_connect", format!("{client} -> {addr}")),
            1,
            "connect {client} -> {addr} among {} events",
            events.len()
        );
        assert_eq!(
            seen("tcp_accept", format!("{addr} -> {client}")),
            1,
            "accept {addr} -> {client}"
        );
    }
}

#[test]
fn pid_filter_excludes_other_processes() {
    const N: usize = 10_000;
    let me = std::process::id().to_string();
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall",
        "--duration",
        "3s",
        "--pid",
        &me,
    ]);
    agent.wait_ready();
    // Another process hammering getppid must not be counted.
    let other = Command::new("python3")
        .args(["-c", "import os\nfor _ in range(20000): os.getppid()"])
        .status()
        .unwrap();
    assert!(other.success());
    getppid_n(N);
    let intervals = agent.intervals(FINISH);
    let count = sum(&intervals, "syscall.count", &[("syscall", "getppid")]);
    assert!(
        (N as f64..=N as f64 + 5.0).contains(&count),
        "getppid with --pid: {count}, want {N}"
    );
}

#[test]
fn check_reports_every_probe() {
    let out = Command::new(common::bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed:\n{text}");
    for probe in [
        "syscall", "disk", "tcp", "runq", "cgroup", "memory", "tracefs", "cgroupfs",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(probe))
            .unwrap_or_else(|| panic!("no {probe} line:\n{text}"));
        assert!(line.contains(" ok "), "{line}");
    }
    // The cgroup v2 hierarchy this host has (hybrid here: /sys/fs/cgroup/unified), counted.
    let root = agent_core::cgroup::v2_root(std::path::Path::new("/sys/fs/cgroup"))
        .expect("this host has a cgroup v2 hierarchy");
    let cg = text.lines().find(|l| l.starts_with("cgroupfs")).unwrap();
    assert!(
        cg.contains(&format!(" at {}, ", root.display())) && cg.contains(" cgroup"),
        "{cg}"
    );
    // It looks where the configuration (or --cgroup-fs) says: a container's view.
    let d = std::path::PathBuf::from(common::temp_state_dir());
    let cfg = d.join("config.toml");
    std::fs::write(&cfg, format!("cgroup_fs = {:?}\n", d.display().to_string())).unwrap();
    let other = Command::new(common::bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let other = String::from_utf8_lossy(&other.stdout);
    let cg = other.lines().find(|l| l.starts_with("cgroupfs")).unwrap();
    assert!(
        cg.contains(" FAIL ") && cg.contains("no cgroup v2 hierarchy"),
        "{cg}"
    );
    // The kernel map budget: at most 2 MiB per possible CPU.
    let mem = text.lines().find(|l| l.starts_with("memory")).unwrap();
    let per_cpu: f64 = mem
        .split('(')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(per_cpu > 0.5 && per_cpu <= 2.0, "{mem}");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        &["run", "--interval", "0s"][..],
        &["run", "--probes", "gpu"],
        &["run", "--output", "xml"],
        &["watch", "--pid", "abc"],
        &["watch", "--config", "/nonexistent/ebpf-agent.toml"],
        &["frobnicate"],
        &["run", "--statsd", "no-port-here"],
        &["run", "--statsd", "host.invalid:8125"],
        &["run", "--riemann", "ftp://127.0.0.1:5555"],
        &["run", "--tag", "novalue"],
        &["run", "--riemann", "127.0.0.1:5555", "--tag", "service=web"],
        // Above any pid_max (at most 2^22): no such process.
        &["run", "--pid", "99999999", "--duration", "1s"],
        &["watch", "--pid", "99999999", "--duration", "1s"],
    ] {
        let out = Command::new(common::bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // One line: clap's usage errors start with "error:", ours with "ebpf-agent:".
        let first = err.lines().next().unwrap();
        assert!(
            first.starts_with("error:") || first.starts_with("ebpf-agent:"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn without_bpf_privilege_runs_procfs_only() {
    // An unprivileged user (nobody) cannot load programs: the agent must degrade, not fail.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(common::bin())
        .args(["run", "--output", "json", "--duration", "1s"])
        .args(["--state-dir", &common::temp_state_dir()])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {err}", out.status);
    assert!(err.contains("procfs metrics only"), "{err}");
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(intervals.len(), 1);
    for p in ["syscall", "disk", "tcp"] {
        assert_eq!(
            values(&intervals, "agent.probe_up", &[("probe", p)]),
            vec![0.0]
        );
    }
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "procfs")]),
        vec![1.0]
    );
    assert!(values(&intervals, "mem.total_bytes", &[])[0] > 0.0);
}

/// Programs of ours loaded in the kernel (by name), via bpftool.
fn our_programs() -> usize {
    count_programs()
}

/// Our program count once the kernel has finished freeing what earlier tests' agents left (it
/// frees asynchronously): no ebpf-agent process alive, and the count steady for 300 ms.
fn quiescent_programs() -> usize {
    let agents_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "ebpf-agent")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = our_programs();
        std::thread::sleep(Duration::from_millis(300));
        let b = our_programs();
        if (a == b && !agents_alive()) || Instant::now() > deadline {
            return b;
        }
    }
}

/// Waits (up to 3 s) for our program count to settle back to `want`: the kernel frees the
/// programs of an exited process asynchronously (RCU), a few milliseconds later.
fn programs_settle_to(want: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while our_programs() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(our_programs(), want, "programs left in the kernel");
}

fn count_programs() -> usize {
    [
        "sys_enter",
        "sys_exit",
        "block_rq_issue",
        "block_rq_complete",
        "btf_rq_issue",
        "btf_rq_complete",
        "inet_sock_set_state",
        "tcp_probe",
        "btf_sock_state",
        "btf_tcp_probe",
        "tcp_retransmit_skb",
        "tcp_send_reset",
        "tcp_receive_reset",
        "sched_wakeup",
        "sched_wakeup_new",
        "sched_switch",
        "btf_sched_wakeup",
        "btf_sched_wakeup_new",
        "btf_sched_switch",
    ]
    .iter()
    .map(|name| programs_named(name))
    .sum()
}

/// Loaded programs with this name, via bpftool (it prints the full function names, from BTF).
fn programs_named(name: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(" name {name} ")))
        .count()
}

#[test]
fn a_probe_that_cannot_attach_is_down_alone() {
    let before = quiescent_programs();
    let out = Command::new(common::bin())
        .env("EBPF_AGENT_BREAK_PROBE", "disk")
        .args(["run", "--output", "json", "--duration", "1s"])
        .args(["--state-dir", &common::temp_state_dir()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<_> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    assert!(
        warnings[0].contains("probe disk disabled")
            && warnings[0].contains("ebpf_agent_no_such_tracepoint")
    );
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "disk")]),
        vec![0.0]
    );
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "syscall")]),
        vec![1.0]
    );
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "tcp")]),
        vec![1.0]
    );
    assert!(sum(&intervals, "syscall.count", &[]) > 0.0);
    programs_settle_to(before);
}

#[test]
fn while_running_exactly_the_up_probes_are_loaded() {
    let before = quiescent_programs();
    let mut agent = Agent::start(&["run", "--output", "none", "--duration", "1s"]);
    agent.wait_ready();
    assert_eq!(our_programs(), before + 12);
    agent.finish(FINISH);
    programs_settle_to(before);
    let mut agent = Agent::start_env(
        &["run", "--output", "none", "--duration", "1s"],
        &[("EBPF_AGENT_BREAK_PROBE", "disk")],
    );
    agent.wait_ready();
    // The disk probe's programs were unloaded when its attach failed: no half-attached probe.
    assert_eq!(our_programs(), before + 10);
    agent.finish(FINISH);
}

#[test]
fn nothing_stays_attached_after_exit_or_failure() {
    let before = quiescent_programs();
    // Clean exit at --duration.
    let mut agent = Agent::start(&["run", "--output", "none", "--duration", "1s"]);
    agent.wait_ready();
    assert_eq!(
        our_programs(),
        before + 12,
        "all 12 programs attached while running"
    );
    let (status, _, _) = agent.finish(FINISH);
    assert!(status.success());
    programs_settle_to(before);
    // SIGTERM mid-interval: exit 0 and detach.
    let mut agent = Agent::start(&["run", "--output", "none"]);
    agent.wait_ready();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let (status, _, _) = agent.finish(FINISH);
    assert!(status.success(), "{status}");
    programs_settle_to(before);
    // Stdout closed under it (a reader that went away, `| head`): a quiet exit 0, as a
    // pipeline expects, and nothing left attached.
    let mut child = Command::new(common::bin())
        .args(["run", "--output", "json"])
        .args(["--state-dir", &common::temp_state_dir()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    programs_settle_to(before);
}

#[test]
fn config_check_validates_and_names_the_line() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/config.example.toml"
    );
    let out = Command::new(common::bin())
        .args(["config", "check", example])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("interval = \"1s\"") && text.contains("[sinks]"),
        "{text}"
    );
    let dir = env!("CARGO_TARGET_TMPDIR");
    let bad = format!("{dir}/bad-config.toml");
    std::fs::write(&bad, "interval = \"1s\"\n[sinks]\nstatsd = [\"no-port\"]\n").unwrap();
    let out = Command::new(common::bin())
        .args(["config", "check", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad}:3:")), "{err}");
    // `run` refuses the same file before attaching anything.
    let out = Command::new(common::bin())
        .args(["run", "--config", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The shipped example with the line starting with `old` replaced by `new`, written to a file;
/// returns the file and that line's number.
fn example_with(name: &str, old: &str, new: &str) -> (String, usize) {
    let example = include_str!("../packaging/config.example.toml");
    let line = example
        .lines()
        .position(|l| l.starts_with(old))
        .expect("line in the example")
        + 1;
    let text: Vec<_> = example
        .lines()
        .map(|l| if l.starts_with(old) { new } else { l })
        .collect();
    let path = format!(
        "{}/{name}-{}.toml",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::write(&path, text.join("\n")).unwrap();
    (path, line)
}

#[test]
fn config_check_refuses_what_would_not_run_at_the_right_line() {
    let tags = format!(
        "tags = [{}]",
        (0..33)
            .map(|i| format!("\"k{i}=v\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (old, new, key) in [
        ("statsd = [", "statsd = [\"nope\"]", "sinks.statsd"),
        ("max_keys", "max_keys = 0", "anomaly.max_keys"),
        ("sensitivity", "sensitivity = nan", "anomaly.sensitivity"),
        (
            "sink_queue",
            "sink_queue = 100000000000",
            "sinks.sink_queue",
        ),
        ("interval", "interval = \"100000years\"", "interval"),
        ("interval", "duration = \"500000years\"", "duration"),
        ("tags", &tags, "sinks.tags"),
        ("ring_buffer_kib", "ring_buffer_kib = 3", "ring_buffer_kib"),
        ("tcp = true", "gpu = true", "enable.gpu"),
    ] {
        let (path, line) = example_with("bound", old, new);
        for args in [&["config", "check", &path][..], &["run", "--config", &path]] {
            let out = Command::new(common::bin()).args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?} {new}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.starts_with(&format!("ebpf-agent: {path}:{line}: {key}:")),
                "{new}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}

#[test]
fn values_at_the_bounds_run_and_a_reload_beyond_them_is_refused() {
    let _ = quiescent_programs();
    // A Riemann TCP server that never answers: every interval waits in the queue.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    let tags = (0..32)
        .map(|i| format!("\"k{i}={}\"", "v".repeat(128)))
        .collect::<Vec<_>>()
        .join(", ");
    let edge = format!(
        "interval = \"100ms\"\noutput = \"json\"\nring_buffer_kib = 4\nprobes = [\"syscall\", \"procfs\"]\n\
         [sinks]\nriemann = [\"tcp://127.0.0.1:{port}\"]\nsink_queue = 3600\ntags = [{tags}]\n\
         riemann_timeout = \"1h\"\n"
    );
    let path = format!(
        "{}/edge-{}.toml",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::write(&path, &edge).unwrap();
    let out = Command::new(common::bin())
        .args(["config", "check", &path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut agent = Agent::start(&["run", "--config", &path]);
    agent.wait_ready();
    std::thread::sleep(Duration::from_millis(1500));
    // Beyond a bound: refused, the running settings stay.
    std::fs::write(
        &path,
        edge.replace("sink_queue = 3600", "sink_queue = 100000000000"),
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let (status, out, err) = agent.finish(FINISH);
    assert!(status.success(), "{status}: {err:#?}");
    assert!(
        err.iter().any(|l| l.contains("reload rejected")
            && l.contains(&format!("{path}:7: sinks.sink_queue:"))),
        "{err:#?}"
    );
    let intervals = common::parse_lines(&out);
    assert!(intervals.len() >= 15, "{} intervals", intervals.len());
    let rss = values(&intervals, "agent.rss_bytes", &[]);
    let peak = rss.iter().copied().fold(0.0, f64::max);
    assert!(peak > 0.0 && peak < 256.0 * 1024.0 * 1024.0, "rss {peak}");
    drop(dead);
}

#[test]
fn sighup_reloads_without_losing_counts() {
    const N: usize = 20_000;
    let dir = env!("CARGO_TARGET_TMPDIR");
    let path = format!("{dir}/reload-{}.toml", std::process::id());
    std::fs::write(
        &path,
        "output = \"json\"\n[enable]\ndisk = false\ntcp = false\nprocfs = false\nrunq = false\n",
    )
    .unwrap();
    // Earlier tests' programs freed first: the counts below are this agent's alone.
    let _ = quiescent_programs();
    let mut agent = Agent::start(&["run", "--config", &path]);
    agent.wait_ready();
    let pid = agent.pid() as i32;
    let before = our_programs(); // while our agent runs, disk not attached
    getppid_n(N);
    std::thread::sleep(Duration::from_millis(1500));
    // Switch disk and procfs on: syscall stays attached (same programs), nothing lost.
    std::fs::write(
        &path,
        "output = \"json\"\n[enable]\ndisk = true\ntcp = false\nprocfs = true\nrunq = false\n",
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        our_programs(),
        before + 2,
        "disk's two programs added, syscall's kept"
    );
    getppid_n(N);
    std::thread::sleep(Duration::from_millis(1200));
    // A broken file is rejected: the agent keeps running with what it had.
    std::fs::write(&path, "output = \"json\"\ninterval = \"never\"\n").unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1200));
    getppid_n(N);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, out, err) = agent.finish(FINISH);
    assert!(status.success(), "{status}");
    assert!(
        err.iter()
            .any(|l| l.contains("reload rejected") && l.contains("interval")),
        "{err:#?}"
    );
    let intervals = common::parse_lines(&out);
    let count = sum(&intervals, "syscall.count", &[("syscall", "getppid")]);
    assert!(
        (3.0 * N as f64..=3.0 * N as f64 * 1.005).contains(&count),
        "getppid across reloads: {count}"
    );
    // Switched-off probes are not reported; from the reload on, disk is up.
    assert!(
        intervals[0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["tags"]["probe"] != "disk")
    );
    let disk_up = values(&intervals, "agent.probe_up", &[("probe", "disk")]);
    assert!(
        !disk_up.is_empty() && disk_up.len() < intervals.len() && disk_up.iter().all(|&v| v == 1.0),
        "disk probe_up: {disk_up:?}"
    );
    assert!(
        values(&intervals, "mem.total_bytes", &[]).len() >= 2,
        "procfs switched on"
    );
    programs_settle_to(before - 2);
}

#[test]
fn without_bpf_capabilities_runs_procfs_only() {
    // Root, but with the capabilities BPF needs dropped from every set.
    let cmd = format!(
        "exec {} run --output json --duration 1s --state-dir {}",
        common::bin(),
        common::temp_state_dir()
    );
    let out = Command::new("capsh")
        .args(["--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c", &cmd])
        .output()
        .expect("capsh (libcap2-bin)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {err}", out.status);
    assert_eq!(
        err.lines().filter(|l| l.contains("WARN")).count(),
        1,
        "one warning: {err}"
    );
    assert!(err.contains("procfs metrics only"), "{err}");
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    for p in ["syscall", "disk", "tcp"] {
        assert_eq!(
            values(&intervals, "agent.probe_up", &[("probe", p)]),
            vec![0.0],
            "{p}"
        );
    }
    assert!(values(&intervals, "load.1", &[]).len() == 1);
}

#[test]
fn procfs_root_fixture_without_pressure_is_read_quietly() {
    // A proc tree of our own: every procfs metric must come from it, and no PSI, no warning.
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/proc/nopsi");
    let root = format!(
        "{}/proc-root-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::create_dir_all(&root).unwrap();
    for f in ["loadavg", "stat", "vmstat"] {
        std::fs::copy(format!("{src}/{f}"), format!("{root}/{f}")).unwrap();
    }
    let meminfo = std::fs::read_to_string(format!("{src}/meminfo")).unwrap();
    let meminfo: String = meminfo
        .lines()
        .map(|l| {
            if l.starts_with("MemTotal:") {
                "MemTotal:        1234567 kB".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(format!("{root}/meminfo"), meminfo).unwrap();
    std::fs::write(format!("{root}/loadavg"), "3.25 2.50 1.75 1/123 4567\n").unwrap();
    let (intervals, err) = run_procfs_root(&root);
    assert!(
        !err.contains("WARN") && !err.contains("ERROR"),
        "no warnings: {err}"
    );
    assert_eq!(
        values(&intervals, "mem.total_bytes", &[]),
        vec![1234567.0 * 1024.0; 2]
    );
    assert_eq!(values(&intervals, "load.1", &[]), vec![3.25; 2]);
    assert_eq!(values(&intervals, "load.15", &[]), vec![1.75; 2]);
    assert_eq!(values(&intervals, "swap.total_bytes", &[]), vec![0.0; 2]);
    let psi = intervals
        .iter()
        .flat_map(|i| i["metrics"].as_array().unwrap().iter())
        .filter(|m| m["name"].as_str().unwrap().starts_with("psi."))
        .count();
    assert_eq!(psi, 0);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn dead_sinks_for_a_long_time_keep_memory_bounded_then_deliver() {
    // 150 intervals of 100 ms with every endpoint away: far more than the 20-interval queue.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp); // nothing listens: ICMP port unreachable, ECONNREFUSED on the next send
    let tcp_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let statsd = format!("127.0.0.1:{port}");
    let riemann = format!("tcp://127.0.0.1:{tcp_port}");
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--interval",
        "100ms",
        "--duration",
        "15s",
        "--sink-queue",
        "20",
        "--statsd",
        &statsd,
        "--riemann",
        &riemann,
        "--riemann-timeout",
        "200ms",
    ]);
    agent.wait_ready();
    // Bring the StatsD endpoint back for the last seconds: delivery resumes.
    std::thread::sleep(Duration::from_secs(12));
    let back = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    back.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    let n = back
        .recv(&mut buf)
        .expect("statsd datagrams again once the endpoint is back");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("ebpf."));
    let intervals = agent.intervals(FINISH);
    assert!(intervals.len() >= 140, "{}", intervals.len());
    let tcp_tag = format!("riemann-tcp:127.0.0.1:{tcp_port}");
    assert!(sum(&intervals, "agent.sink_errors", &[("sink", &tcp_tag)]) > 0.0);
    assert!(
        sum(&intervals, "agent.sink_dropped", &[("sink", &tcp_tag)]) > 0.0,
        "the queue overflowed: oldest dropped, counted"
    );
    // Memory is flat: the last RSS is within 4 MiB of the RSS after the first 2 seconds.
    let rss = values(&intervals, "agent.rss_bytes", &[]);
    let (early, last) = (rss[20], *rss.last().unwrap());
    assert!(
        last <= early + 4.0 * 1024.0 * 1024.0,
        "RSS grew from {early} to {last}"
    );
}

#[test]
fn bpf_statistics_report_the_programs_cost_and_are_switched_off_again() {
    let sysctl = || {
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap()
            .trim()
            .to_string()
    };
    let before = sysctl();
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall",
        "--duration",
        "3s",
        "--bpf-stats-every",
        "1",
    ]);
    agent.wait_ready();
    getppid_n(10_000);
    let intervals = agent.intervals(FINISH);
    // Every interval after the first window has the kernel's measure of both programs.
    for program in ["sys_enter", "sys_exit"] {
        let ns = values(
            &intervals,
            "agent.bpf_ns_per_event",
            &[("program", program)],
        );
        assert!(
            ns.len() >= 2 && ns.iter().all(|&v| v > 0.0 && v < 100_000.0),
            "{program}: {ns:?}"
        );
        let cpu = values(&intervals, "agent.bpf_cpu_pct", &[("program", program)]);
        assert!(
            !cpu.is_empty() && cpu.iter().all(|&v| (0.0..=100.0).contains(&v)),
            "{program}: {cpu:?}"
        );
    }
    assert_eq!(sysctl(), before, "kernel.bpf_stats_enabled restored");
    // By default they are sampled one interval in ten: none in a 3-second run.
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall",
        "--duration",
        "3s",
    ]);
    agent.wait_ready();
    let intervals = agent.intervals(FINISH);
    assert!(
        values(
            &intervals,
            "agent.bpf_ns_per_event",
            &[("program", "sys_exit")]
        )
        .is_empty()
    );
}

#[test]
fn anomaly_baseline_survives_a_restart_and_a_corrupt_one_is_ignored() {
    let dir = format!(
        "{}/state-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let _ = std::fs::remove_dir_all(&dir);
    let run = |dir: &str| {
        let out = Command::new(common::bin())
            .args([
                "run",
                "--output",
                "json",
                "--probes",
                "syscall,procfs",
                "--duration",
                "2s",
                "--state-dir",
                dir,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // First run: learns from scratch and saves on exit.
    let first = run(&dir);
    assert!(!first.contains("anomaly baseline:"), "{first}");
    let state = format!("{dir}/detector.state");
    assert!(std::fs::metadata(&state).unwrap().len() > 1000);
    // Second run: starts from what the first learnt.
    let second = run(&dir);
    let line = second
        .lines()
        .find(|l| l.contains("anomaly baseline:"))
        .unwrap_or_else(|| panic!("{second}"));
    let keys: usize = line
        .split("anomaly baseline: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(keys > 20, "{line}");
    // A corrupt file: one warning, a fresh start, and a good file written again on exit.
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let third = run(&dir);
    let warnings: Vec<_> = third.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{third}");
    assert!(
        warnings[0].contains("ignoring the anomaly baseline"),
        "{third}"
    );
    assert!(run(&dir).contains("anomaly baseline:"), "rewritten on exit");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn record_then_compare_exits_0_on_the_same_load_and_1_on_a_changed_one() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let dir = format!(
        "{}/sheet-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let sheet = format!("{dir}/good.json");
    let me = std::process::id().to_string();
    // Only this process's syscalls (a steady sleeper thread), so the load is the test's own.
    // Output goes to files: no pipe reads by this process while the agent counts.
    let agent = |args: &[&str], with_sleeps_ms: u64, out: &str| {
        let stop = Arc::new(AtomicBool::new(false));
        let load = common::sleeper(Arc::new(AtomicU64::new(with_sleeps_ms)), stop.clone());
        let status = Command::new(common::bin())
            .args(args)
            .args(["--probes", "syscall", "--pid", &me, "--interval", "250ms"])
            .args(["--duration", "4s"])
            .stdout(std::fs::File::create(format!("{out}.out")).unwrap())
            .stderr(std::fs::File::create(format!("{out}.err")).unwrap())
            .status()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let read = |ext: &str| std::fs::read_to_string(format!("{out}.{ext}")).unwrap();
        (status, read("out"), read("err"))
    };

    let (status, _, err) = agent(&["record", "--out", &sheet], 1, &format!("{dir}/record"));
    assert!(status.success(), "record: {err}");
    assert!(err.contains("recorded 16 intervals"), "{err}");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sheet).unwrap()).unwrap();
    let nanosleep = recorded["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "syscall.count" && e["tags"]["syscall"] == "nanosleep")
        .unwrap_or_else(|| panic!("no nanosleep count in the sheet: {recorded:#}"));
    // ~225 sleeps of 1 ms (+ overhead) per 250 ms interval.
    let per_interval = nanosleep["mean"].as_f64().unwrap();
    assert!((120.0..=250.0).contains(&per_interval), "{nanosleep}");

    // The same load: nothing critical.
    let same = format!("{dir}/same");
    let (status, out, err) = agent(&["compare", &sheet], 1, &same);
    eprintln!("compare, same load:\n{out}");
    assert_eq!(status.code(), Some(0), "same load: {out}\n{err}");
    assert!(!out.contains("CRITICAL"), "{out}");
    assert!(out.contains("keys compared: 0 critical"), "{out}");

    // Sleeps four times as long: fewer and slower calls, critical, exit 1, named.
    let (status, out, err) = agent(&["compare", &sheet, "--json"], 4, &format!("{dir}/changed"));
    assert_eq!(status.code(), Some(1), "changed load: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["critical"].as_u64().unwrap() >= 1, "{v:#}");
    let critical: Vec<&serde_json::Value> = v["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "critical")
        .collect();
    let slower = critical
        .iter()
        .find(|d| d["name"] == "syscall.latency_us.mean" && d["tags"]["syscall"] == "nanosleep")
        .unwrap_or_else(|| panic!("nanosleep mean latency not critical: {critical:#?}"));
    let (before, after) = (
        slower["reference"].as_f64().unwrap(),
        slower["live"].as_f64().unwrap(),
    );
    // ~1.06 ms → ~4.06 ms.
    assert!(after / before > 3.0 && after / before < 4.5, "{slower}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kernel programs' rare paths speak through aya-log at a load-time level taken from the
/// agent's: a syscall number beyond the table is said at debug level, and not at the default
/// level (where the verifier drops the call).
#[test]
fn kernel_programs_log_rare_paths_at_the_agents_level() {
    const N: usize = 3;
    const NR: libc::c_long = 600; // no such syscall: ENOSYS
    let wanted = "syscall 600 is beyond the agent's table of 512: not timed";
    for (level, expect) in [("debug", N), ("info", 0)] {
        let mut agent = Agent::start_env(
            &[
                "run",
                "--output",
                "none",
                "--probes",
                "syscall",
                "--duration",
                "2s",
            ],
            &[("EBPF_AGENT_LOG", level)],
        );
        agent.wait_ready();
        for _ in 0..N {
            // SAFETY: an unknown syscall number only returns ENOSYS.
            let r = unsafe { libc::syscall(NR) };
            assert_eq!(r, -1);
        }
        let (status, _, err) = agent.finish(FINISH);
        assert!(status.success(), "{err:#?}");
        let said = err.iter().filter(|l| l.contains(wanted)).count();
        assert_eq!(
            said, expect,
            "at {level}: {said} kernel lines; stderr: {err:#?}"
        );
    }
}

/// Runs `run --probes procfs --duration 2s --output json --procfs-root ROOT`: (intervals, stderr).
fn run_procfs_root(root: &str) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(common::bin())
        .args(common::with_temp_state(&[
            "run",
            "--output",
            "json",
            "--probes",
            "procfs",
            "--duration",
            "2s",
            "--procfs-root",
            root,
        ]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(intervals.len(), 2, "{err}");
    assert_in_catalogue(&intervals);
    (intervals, err)
}

#[test]
fn procfs_root_missing_is_down_and_says_which_source() {
    let (intervals, err) = run_procfs_root("/nonexistent/proc");
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "procfs")]),
        vec![0.0; 2]
    );
    for s in ["meminfo", "vmstat", "stat", "loadavg"] {
        assert_eq!(
            values(&intervals, "agent.procfs_up", &[("source", s)]),
            vec![0.0; 2],
            "{s}"
        );
    }
    assert!(err.contains("/nonexistent/proc/meminfo"), "{err}");
}

#[test]
fn procfs_root_malformed_files_are_skipped_counted_and_never_crash() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/proc/t0");
    let root = format!(
        "{}/proc-malformed-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::create_dir_all(format!("{root}/pressure")).unwrap();
    for f in [
        "stat",
        "vmstat",
        "pressure/cpu",
        "pressure/io",
        "pressure/memory",
    ] {
        std::fs::copy(format!("{src}/{f}"), format!("{root}/{f}")).unwrap();
    }
    // The procfs crate panics on this line ("end byte index 10 is not a char boundary").
    let meminfo = std::fs::read_to_string(format!("{src}/meminfo")).unwrap();
    std::fs::write(
        format!("{root}/meminfo"),
        meminfo.replacen("MemTotal:       24684092 kB", "MemTotal\u{20ac} 5 kB", 1),
    )
    .unwrap();
    std::fs::write(format!("{root}/loadavg"), "nan inf 0.50 1/123 4567\n").unwrap();
    let (intervals, err) = run_procfs_root(&root);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        values(&intervals, "agent.probe_up", &[("probe", "procfs")]),
        vec![1.0; 2]
    );
    assert_eq!(
        values(&intervals, "agent.procfs_up", &[("source", "meminfo")]),
        vec![0.0; 2]
    );
    assert_eq!(
        values(&intervals, "agent.procfs_up", &[("source", "loadavg")]),
        vec![1.0; 2]
    );
    assert_eq!(
        values(&intervals, "agent.procfs_dropped", &[("source", "loadavg")]),
        vec![2.0; 2]
    );
    assert!(values(&intervals, "mem.total_bytes", &[]).is_empty());
    assert_eq!(values(&intervals, "load.15", &[]), vec![0.5; 2]);
    assert_eq!(values(&intervals, "psi.io.some_avg10", &[]).len(), 2);
    // Said once, with the file, blaming the file.
    let said: Vec<&str> = err.lines().filter(|l| l.contains("meminfo")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains(&format!("{root}/meminfo is malformed")),
        "{err}"
    );
    assert!(
        !err.contains("please report") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_duration_below_one_interval_runs_one_whole_interval() {
    let out = Command::new(common::bin())
        .args(common::with_temp_state(&[
            "run",
            "--output",
            "json",
            "--probes",
            "procfs",
            "--duration",
            "1ns",
        ]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(intervals.len(), 1);
    assert_eq!(intervals[0]["interval_s"], 1.0);
    // Not a multiple of the interval: rounded up to whole intervals too.
    let out = Command::new(common::bin())
        .args(common::with_temp_state(&[
            "run",
            "--output",
            "json",
            "--probes",
            "procfs",
            "--interval",
            "500ms",
            "--duration",
            "700ms",
        ]))
        .output()
        .unwrap();
    let intervals = common::parse_lines(&String::from_utf8_lossy(&out.stdout));
    let lens: Vec<f64> = intervals
        .iter()
        .map(|i| i["interval_s"].as_f64().unwrap())
        .collect();
    assert_eq!(lens, [0.5, 0.5]);
}

/// Runs the agent with its stdout already closed by the reader (`| head` that has had enough).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(common::bin())
        .args(common::with_temp_state(args))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_0() {
    let csv = format!(
        "{}/closed-{}.csv",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let rows: String = (0..20_000)
        .map(|i| format!("{},{}\n", 1_700_000_000 + 60 * i, i % 7))
        .collect();
    std::fs::write(&csv, format!("timestamp,value\n{rows}")).unwrap();
    for args in [
        &["detect", csv.as_str()][..],
        &["check"],
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "procfs",
            "--duration",
            "3s",
        ],
        &[
            "run",
            "--output",
            "text",
            "--probes",
            "syscall",
            "--duration",
            "3s",
        ],
        &[
            "config",
            "check",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../packaging/config.example.toml"
            ),
        ],
    ] {
        let (code, err) = with_closed_stdout(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked") && !err.contains("closed"),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_file(&csv).unwrap();
}

/// Two threads pinned to one CPU passing a byte back and forth through pipes `n` times: each
/// pass puts the other thread to sleep and wakes it, so every round trip is exactly two
/// run-queue waits that end (one per thread switched in).
/// Refused connects are events naming the caller, within the tcp probe's per-CPU budget.
#[test]
fn refused_connects_are_events_within_a_budget() {
    refused_connects(false);
}

/// The same through the classic tracepoints, which serve on kernels without BTF.
#[test]
fn refused_connects_are_events_within_a_budget_through_classic_tracepoints() {
    refused_connects(true);
}

/// Connects to a closed port: Q spaced ones are Q `tcp_connect_failed` events naming this
/// process and both ends; a storm of S is either sent or counted in
/// `agent.events_limited{probe=tcp}`, every one, and what is sent stays within the budget
/// (a burst of 20, then 100/s per CPU).
fn refused_connects(classic: bool) {
    const Q: usize = 10;
    const S: usize = 3000;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = common::temp_state_dir();
    let agent = start_on_tracepoints(
        classic,
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "tcp",
            "--interval",
            "250ms",
            "--duration",
            "4s",
            "--state-dir",
            &state,
        ],
        ("btf_sock_state", "inet_sock_set_state"),
    );
    let refused = || {
        let e = TcpStream::connect(("127.0.0.1", port)).expect_err("the port is closed");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    };
    for _ in 0..Q {
        refused();
        std::thread::sleep(Duration::from_millis(60));
    }
    // Let the budget fill again (20 events' worth at 100/s), then storm.
    std::thread::sleep(Duration::from_millis(300));
    let storm = Instant::now();
    for _ in 0..S {
        refused();
    }
    let storm_s = storm.elapsed().as_secs_f64();
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    let me = std::process::id();
    let events: Vec<serde_json::Value> = intervals
        .iter()
        .flat_map(|i| i["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "tcp_connect_failed")
        .collect();
    let to_port = format!(" -> 127.0.0.1:{port}");
    let mine: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["pid"] == me && e["target"].as_str().unwrap().ends_with(&to_port))
        .collect();
    if let Some(e) = mine.iter().find(|e| {
        e["comm"].as_str().is_none_or(str::is_empty)
            || !e["target"].as_str().unwrap().starts_with("127.0.0.1:")
    }) {
        panic!("a failed connect without its caller or source: {e}");
    }
    let limited = sum(&intervals, "agent.events_limited", &[("probe", "tcp")]);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let budget = cpus * (20.0 + 100.0 * storm_s) + Q as f64;
    eprintln!(
        "{} refused connects ({Q} spaced, {S} in {storm_s:.2} s): {} events, {limited} limited; budget {budget:.0}",
        Q + S,
        mine.len()
    );
    // Each of the spaced ones, sent whole; the storm was limited, and nothing vanished.
    let first_q = mine.iter().take(Q).count();
    assert_eq!(first_q, Q, "the {Q} spaced refused connects are events");
    assert!(
        limited > 0.0,
        "a storm of {S} in {storm_s:.2} s was not limited"
    );
    assert!(
        mine.len() as f64 <= budget,
        "{} events exceed the budget {budget:.0}",
        mine.len()
    );
    // Other processes' failed connects (host-wide) may add to the limited count, never less.
    assert!(
        mine.len() as f64 + limited >= (Q + S) as f64,
        "{} sent + {limited} limited < {} refused",
        mine.len(),
        Q + S
    );
}

/// Busy threads named `hog` pinned three to a CPU: each waits at least two of the others'
/// slices (a tick or more each) every time it is preempted, so with a 1 ms threshold their
/// waits are `runq_preempted` events naming them, each at least the threshold, within the
/// probe's budget.
#[test]
fn long_run_queue_waits_are_events_naming_who_waited() {
    long_run_queue_waits(false);
}

#[test]
fn long_run_queue_waits_are_events_through_classic_tracepoints() {
    long_run_queue_waits(true);
}

fn long_run_queue_waits(classic: bool) {
    const HOGS: usize = 3;
    let state = common::temp_state_dir();
    let agent = start_on_tracepoints(
        classic,
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "runq",
            "--slow-threshold",
            "1ms",
            "--interval",
            "250ms",
            "--duration",
            "3s",
            "--state-dir",
            &state,
        ],
        ("btf_sched_switch", "sched_switch"),
    );
    let until = Instant::now() + Duration::from_secs(2);
    let hogs: Vec<_> = (0..HOGS)
        .map(|_| {
            std::thread::Builder::new()
                .name("hog".into())
                .spawn(move || {
                    pin_to(0);
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() } as u64;
                    let mut x = 0u64;
                    while Instant::now() < until {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    tid
                })
                .unwrap()
        })
        .collect();
    let tids: Vec<u64> = hogs.into_iter().map(|h| h.join().unwrap()).collect();
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    let me = u64::from(std::process::id());
    let events: Vec<serde_json::Value> = intervals
        .iter()
        .flat_map(|i| i["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "runq_preempted" || e["kind"] == "runq_wait")
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["latency_us"].as_f64().unwrap() >= 1000.0),
        "a wait under the threshold was sent"
    );
    // Their first wait is a new thread's, woken before it names itself: the preempted ones.
    let ours: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| tids.contains(&e["tid"].as_u64().unwrap()) && e["kind"] == "runq_preempted")
        .collect();
    // The classic record has no process id: the thread id stands for it.
    let pid_of = |e: &serde_json::Value| {
        if classic {
            e["tid"].as_u64().unwrap()
        } else {
            me
        }
    };
    if let Some(e) = ours
        .iter()
        .find(|e| e["comm"] != "hog" || e["pid"].as_u64() != Some(pid_of(e)))
    {
        panic!("a hog's wait names another task: {e}");
    }
    let limited = sum(&intervals, "agent.events_limited", &[("probe", "runq")]);
    eprintln!(
        "{} long waits of the hogs among {} run-queue events, {limited} limited",
        ours.len(),
        events.len()
    );
    assert!(ours.len() >= 10, "{} events name the hogs", ours.len());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let budget = cpus * (20.0 + 100.0 * 3.5);
    assert!(
        events.len() as f64 <= budget,
        "{} run-queue events exceed the budget {budget:.0}",
        events.len()
    );
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for a small index.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn pinned_ping_pong(n: usize) {
    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for a small index.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }
    let (mut to_b, mut from_a) = pipe();
    let (mut to_a, mut from_b) = pipe();
    let b = std::thread::spawn(move || {
        pin_to(0);
        let mut byte = [0u8];
        for _ in 0..n {
            from_a.read_exact(&mut byte).unwrap();
            to_a.write_all(&byte).unwrap();
        }
    });
    let a = std::thread::spawn(move || {
        pin_to(0);
        let mut byte = [7u8];
        for _ in 0..n {
            to_b.write_all(&byte).unwrap();
            from_b.read_exact(&mut byte).unwrap();
        }
    });
    a.join().unwrap();
    b.join().unwrap();
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: two fresh descriptors, each owned by one File from here on.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[1]),
            std::fs::File::from_raw_fd(fds[0]),
        )
    }
}

/// Busy loops on `2 × CPUs` threads for `d`: every CPU's run queue holds waiting tasks.
fn cpu_hogs(d: Duration) {
    let n = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let until = Instant::now() + d;
    let hogs: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    for h in hogs {
        h.join().unwrap();
    }
}

#[test]
fn run_queue_waits_are_counted_on_btf_tracepoints() {
    run_queue_waits_are_counted(false);
}

#[test]
fn run_queue_waits_are_counted_through_classic_tracepoints() {
    run_queue_waits_are_counted(true);
}

/// A pinned ping-pong of N round trips: at least 2N waits in `runq.count`, in the intervals it
/// ran in.
fn run_queue_waits_are_counted(classic: bool) {
    const N: usize = 5000;
    let state = common::temp_state_dir();
    let agent = start_on_tracepoints(
        classic,
        &[
            "run",
            "--output",
            "json",
            "--probes",
            "runq",
            "--duration",
            "2s",
            "--state-dir",
            &state,
        ],
        ("btf_sched_switch", "sched_switch"),
    );
    pinned_ping_pong(N);
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    let waits = sum(&intervals, "runq.count", &[]);
    assert!(
        waits >= (2 * N) as f64,
        "runq.count = {waits}, want >= {}",
        2 * N
    );
    assert_eq!(
        sum(&intervals, "agent.read_errors", &[("probe", "runq")]),
        0.0
    );
    let p50 = values(&intervals, "runq.latency_us.p50", &[]);
    assert!(!p50.is_empty() && p50.iter().all(|&v| v > 0.0), "{p50:?}");
}

/// The p99 of `runqlat`'s log2 histogram (microseconds): the bucket holding it, `[lo, hi]`.
fn runqlat_p99(text: &str) -> Option<(f64, f64)> {
    // Lines like `      4096 -> 8191       : 57       |****     |`.
    let buckets: Vec<(f64, f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(':')?;
            let (lo, hi) = range.split_once("->")?;
            let count = rest.split('|').next()?.trim();
            Some((
                lo.trim().parse().ok()?,
                hi.trim().parse().ok()?,
                count.parse().ok()?,
            ))
        })
        .collect();
    let total: f64 = buckets.iter().map(|b| b.2).sum();
    let mut seen = 0.0;
    for (lo, hi, c) in buckets {
        seen += c;
        if seen >= 0.99 * total {
            return Some((lo, hi));
        }
    }
    None
}

/// Busy loops on twice as many threads as CPUs: the p99 wait is many times the idle one, and
/// agrees with libbpf-tools `runqlat` measuring the same seconds.
#[test]
fn run_queue_p99_under_cpu_hogs_matches_runqlat() {
    use std::process::Stdio;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // runqlat finds the tracepoints through tracefs; the agent's check mounts it.
    ebpf_agent_check_mounts_tracefs();
    let state = common::temp_state_dir();
    let idle = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "runq",
        "--duration",
        "3s",
        "--state-dir",
        &state,
    ])
    .intervals(FINISH);
    let idle_p99 = median(values(&idle, "runq.latency_us.p99", &[]));

    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "runq",
        "--duration",
        "5s",
        "--state-dir",
        &state,
    ]);
    agent.wait_ready();
    let runqlat = Command::new("runqlat")
        .args(["4", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runqlat (libbpf-tools; cargo xtask setup installs it)");
    // runqlat attaches within a fraction of a second; the hogs outlast its window.
    std::thread::sleep(Duration::from_millis(500));
    cpu_hogs(Duration::from_secs(5));
    let out = runqlat.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runqlat: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let intervals = agent.intervals(FINISH);
    let busy = values(&intervals, "runq.latency_us.p99", &[]);
    // The hogs fill all but the start of the first interval.
    let busy_p99 = median(busy.clone());
    let (lo, hi) = runqlat_p99(&text).unwrap_or_else(|| panic!("no histogram: {text}"));
    eprintln!(
        "runq p99 µs: idle {idle_p99:.0}, hogs {busy_p99:.0} (per interval {busy:?}); runqlat p99 bucket {lo}..{hi}"
    );
    // On a quiet machine idle p99 is well under a millisecond and hogs' several scheduler
    // slices: tens of times more. Other work sharing the machine raises the idle figure; twice
    // still tells a probe that sees the queue from one that does not.
    assert!(
        busy_p99 >= 2.0 * idle_p99,
        "p99 under hogs {busy_p99} µs, idle {idle_p99} µs"
    );
    // Same events, different bucketings and slightly different windows: within a factor 2 of
    // runqlat's power-of-two bucket.
    assert!(
        busy_p99 >= lo / 2.0 && busy_p99 <= (hi + 1.0) * 2.0,
        "agent p99 {busy_p99} µs, runqlat's bucket {lo}..{hi} µs:\n{text}"
    );
}

fn ebpf_agent_check_mounts_tracefs() {
    let out = Command::new(common::bin()).arg("check").output().unwrap();
    assert!(out.status.success());
}
