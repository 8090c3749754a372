//! The incident goal on the real kernel (issue 12): after learning a steady service, a benign
//! change gives at most one notification and nothing critical; a real fault gives one critical
//! incident within 10 s naming the service's process. Root, under the bpf lock, one at a time:
//! `flock /tmp/bpf.lock cargo test -p agent --test incident_live -- --nocapture`.
//!
//! The service (a small Python loop renamed `steadysvc`): O_DIRECT pwrite + fdatasync of 4 KiB,
//! 20 getppid calls, 10 ms sleep. Phases, each followed by calm until its incident closes:
//! learning; benign (2,500 short processes, a cold `find /usr` metadata scan (caches dropped
//! first, as on a fresh machine), then a build: `make -j<CPUs>` of generated C files); the
//! service's direct writes throttled (blkio `throttle.write_iops_device` on a cgroup v1 group
//! the test creates and removes); CPU hogs, twice the CPU count; the service's connects storming
//! a closed port. The agent's JSON intervals are read afterwards: notifications are incident
//! opens and escalations (a close is a resolution, not a call to act).
//!
//! Asserted: the benign phase (at most one notification, nothing critical); the throttled
//! writes and the connect storm, each one critical incident within 10 s naming the service as
//! its leading process (slow writes; failed connects); the CPU hogs, one critical incident
//! within 10 s with the service among the processes (its wakeups' long run-queue waits; the
//! hogs' own waits are preemptions, said apart as the busy ones), critical through the typical
//! run-queue wait (mean ≥ 5× usual and ≥ 1 ms more). On a quiet 2-vCPU VM it was critical
//! 0.5-0.8 s after the hogs started (mean 1.4-2.4 ms against a usual 10-20 µs) in every run
//! (about 15, and CI's); it can be only a warning when other CPU-heavy work shares the machine
//! while the agent learns (the usual wait is then that work's), so run this test alone. The
//! run-queue wait's mean, p50 and p99 per phase (and the half minute before the hogs) are
//! printed to tell which.

mod common;

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::Agent;
use serde_json::Value;

const SERVICE: &str = r#"
import ctypes, mmap, os, socket, sys, time
libc = ctypes.CDLL(None)
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG SIGKILL: never outlive the test
libc.prctl(15, b"steadysvc", 0, 0, 0)
path, flag, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "wb") as f:
    f.write(b"\0" * (1 << 20)); f.flush(); os.fsync(f.fileno())
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 4096); buf.write(b"x" * 4096)
i = 0
while True:
    os.pwrite(fd, buf, (i % 256) * 4096)
    os.fdatasync(fd)
    for _ in range(20):
        os.getppid()
    if os.path.exists(flag):
        for _ in range(200):
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                pass
            s.close()
    time.sleep(0.01)
    i += 1
"#;

const LEARN: Duration = Duration::from_secs(50);
const FAULT: Duration = Duration::from_secs(12);
/// How long to wait for the incidents before a phase to close: each closes 15 s after its
/// keys' own 2 s hysteresis, or 15 s after a lasting warning settled (60 s).
const CALM_LIMIT: Duration = Duration::from_secs(90);
/// A fault's critical incident must come within this long.
const WITHIN_S: f64 = 10.0;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blkio (cgroup v1) group limiting writes to `dev` to `iops`; removed on drop, its
/// processes moved back to the root group first.
struct Throttle {
    dir: PathBuf,
    pids: Vec<u32>,
}

impl Throttle {
    fn new(dev: &str, iops: u32, pid: u32) -> Throttle {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/blkio/ebpf-agent-incident-{}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("a cgroup v1 blkio group (/sys/fs/cgroup/blkio)");
        fs::write(
            dir.join("blkio.throttle.write_iops_device"),
            format!("{dev} {iops}"),
        )
        .expect("blkio.throttle.write_iops_device");
        fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the service");
        Throttle {
            dir,
            pids: vec![pid],
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        for p in &self.pids {
            let _ = fs::write("/sys/fs/cgroup/blkio/cgroup.procs", p.to_string());
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// `major:minor` of the whole disk holding `path` (throttling takes a disk, not a partition).
fn disk_of(path: &Path) -> String {
    let dev = fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("../dev")).unwrap();
        return parent.trim().to_string();
    }
    format!("{major}:{minor}")
}

/// One notification: an incident opening or escalating.
#[derive(Debug)]
struct Note {
    t: f64,
    id: u64,
    state: String,
    what: &'static str,
    processes: Vec<String>,
    description: String,
}

fn notifications(intervals: &[Value]) -> Vec<Note> {
    let mut out = vec![];
    for i in intervals {
        let t = i["time"].as_f64().unwrap();
        for inc in i["incidents"].as_array().into_iter().flatten() {
            let id = inc["id"].as_u64().unwrap();
            let state = inc["state"].as_str().unwrap().to_string();
            // The agent's own word: an escalation is a new critical subsystem too (a connect
            // storm joining an open critical CPU incident is news), as Riemann gets it.
            let what = match inc["change"].as_str() {
                Some("opened") => "opened",
                Some("escalated") => "escalated",
                Some("closed") => {
                    eprintln!("  {t:.2} incident {id} closed");
                    continue;
                }
                _ => continue,
            };
            out.push(Note {
                t,
                id,
                state,
                what,
                processes: inc["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| format!("{}[{}]", p["comm"].as_str().unwrap(), p["pid"]))
                    .collect(),
                description: inc["description"].as_str().unwrap().to_string(),
            });
        }
    }
    out
}

/// The keys the detector found off in the last interval before `t`: what kept an incident open
/// when a phase's wait for calm ran out.
fn keys_off_before(intervals: &[Value], t: f64) -> Vec<String> {
    let Some(i) = intervals
        .iter()
        .rev()
        .find(|i| i["time"].as_f64().unwrap() <= t)
    else {
        return vec![];
    };
    i["anomalies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] != "ok")
        .map(|a| format!("{} {}", a["state"], a["description"]))
        .collect()
}

/// Whether an interval in `[a, b]` shows one of incidents `ids` naming `me` (`comm[pid]`):
/// as its leading process, or (`leading` false) among its processes.
fn named_within(
    intervals: &[Value],
    ids: &std::collections::BTreeSet<u64>,
    a: f64,
    b: f64,
    me: &str,
    leading: bool,
) -> bool {
    intervals
        .iter()
        .filter(|i| (a..=b).contains(&i["time"].as_f64().unwrap()))
        .flat_map(|i| i["incidents"].as_array().into_iter().flatten())
        .filter(|inc| ids.contains(&inc["id"].as_u64().unwrap()))
        .any(|inc| {
            let names: Vec<String> = inc["processes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{}[{}]", p["comm"].as_str().unwrap(), p["pid"]))
                .collect();
            if leading {
                names.first().map(String::as_str) == Some(me)
            } else {
                names.iter().any(|n| n == me)
            }
        })
}

/// The run-queue wait's mean, p50 and p99 over `[a, b]`: median and highest interval, in ms.
fn runq_waits(intervals: &[Value], a: f64, b: f64) -> String {
    waits(
        intervals,
        a,
        b,
        "runq.latency_us",
        None,
        &["mean", "p50", "p99"],
    )
}

/// The median and highest interval of a latency's statistics between `a` and `b`, optionally of
/// one syscall.
fn waits(
    intervals: &[Value],
    a: f64,
    b: f64,
    family: &str,
    syscall: Option<&str>,
    stats: &[&str],
) -> String {
    let q = |stat: &str| {
        let name = format!("{family}.{stat}");
        let mut v: Vec<f64> = intervals
            .iter()
            .filter(|i| (a..=b).contains(&i["time"].as_f64().unwrap()))
            .flat_map(|i| i["metrics"].as_array().into_iter().flatten())
            .filter(|m| m["name"] == name.as_str())
            .filter(|m| syscall.is_none_or(|s| m["tags"]["syscall"] == s))
            .filter_map(|m| m["value"].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        match (v.get(v.len() / 2), v.last()) {
            (Some(m), Some(x)) => format!("{stat} {:.2}/{:.2} ms", m / 1000.0, x / 1000.0),
            _ => format!("{stat} -"),
        }
    };
    stats.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
}

/// Killed with the test's thread, even if the test itself is killed: the children inherit the
/// bpf lock's descriptor, and one left running would hold the machine-wide lock.
fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Waits until no incident is open (the agent's `incident N opened|closed` log lines) for 2 s,
/// at most `limit`: each phase starts from calm, not inside an incident the shared machine's
/// other work opened (its disk traffic slows the service's direct writes too). Says so when
/// the host stayed busy.
fn wait_calm(
    agent: &mut Agent,
    open: &mut std::collections::BTreeSet<u64>,
    limit: Duration,
) -> Option<f64> {
    let start = std::time::Instant::now();
    let mut calm_since = None;
    while start.elapsed() < limit {
        for l in agent.new_stderr() {
            let Some(rest) = l.split("incident ").nth(1) else {
                continue;
            };
            let mut w = rest.split_whitespace();
            let (Some(id), Some(what)) = (w.next().and_then(|i| i.parse().ok()), w.next()) else {
                continue;
            };
            match what {
                "opened:" => {
                    open.insert(id);
                }
                "closed:" => {
                    open.remove(&id);
                }
                _ => {}
            }
        }
        if open.is_empty() {
            let since = *calm_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                return None;
            }
        } else {
            calm_since = None;
        }
        thread::sleep(Duration::from_millis(250));
    }
    eprintln!("still open after {limit:?}: {open:?}");
    Some(now())
}

/// A small C project for the benign phase's build: `files` sources of a few hundred functions
/// each (about half a second of `cc -O2` per file here) and a Makefile.
fn write_build(dir: &Path, files: usize) {
    fs::create_dir_all(dir).unwrap();
    let mut objs = vec![];
    for f in 0..files {
        let mut src = String::from("#include <stdio.h>\n#include <string.h>\n");
        for i in 0..300 {
            src.push_str(&format!(
                "int f{f}_{i}(const char *p, int n) {{ int s = {i}; for (int j = 0; j < n; j++) \
                 s = s * 31 + p[j] + (int)strlen(p + j) % {m}; return s ^ (s >> {r}); }}\n",
                m = i % 7 + 2,
                r = i % 5 + 1
            ));
        }
        fs::write(dir.join(format!("u{f}.c")), src).unwrap();
        objs.push(format!("u{f}.o"));
    }
    fs::write(
        dir.join("Makefile"),
        format!("all: {}\n%.o: %.c\n\tcc -O2 -c $< -o $@\n", objs.join(" ")),
    )
    .unwrap();
}

fn shell(script: &str) -> Child {
    dies_with_parent(Command::new("bash").args(["-c", script]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn one_incident_per_episode_on_the_real_kernel() {
    let dir = PathBuf::from(format!(
        "{}/incident-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    fs::write(
        &config,
        format!(
            "interval = \"250ms\"\nstate_dir = {:?}\n[anomaly]\nwarmup = 120\nraise_after = 3\nclear_after = 8\n",
            dir.join("state")
        ),
    )
    .unwrap();
    fs::write(dir.join("svc.py"), SERVICE).unwrap();
    // A closed port: bound once by the system for us, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flag = dir.join("storm");
    let data = dir.join("data");
    let service = Command::new("python3")
        .arg(dir.join("svc.py"))
        .arg(&data)
        .arg(&flag)
        .arg(port.to_string())
        .spawn()
        .expect("python3");
    let svc_pid = service.id();
    let children = Killed(vec![service]);

    // The agent runs until the test is done: it is stopped (SIGTERM) at the end.
    let total = LEARN + CALM_LIMIT * 4 + FAULT * 3 + Duration::from_secs(80);
    let config_s = config.display().to_string();
    let duration = format!("{}s", total.as_secs());
    let mut agent = Agent::start(&[
        "run",
        "--config",
        &config_s,
        "--output",
        "json",
        // Low enough that the service's long waits for a CPU under the hogs (2-40 ms, most
        // under 20 ms on this VM) are events that name it.
        "--slow-threshold",
        "5ms",
        // The syscall probe watches the service: the machine this runs on is shared, and the
        // other processes' syscalls (builds starting and stopping) are not the test's to judge.
        // Disks, pressure, CPU, memory and TCP stay host-wide.
        "--comm",
        "steadysvc",
        "--duration",
        &duration,
    ]);
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    agent.wait_ready();
    thread::sleep(LEARN);
    let mut open = std::collections::BTreeSet::new();
    let mut timeouts = vec![];
    timeouts.extend(wait_calm(&mut agent, &mut open, CALM_LIMIT));

    // Benign: thousands of short processes, a metadata scan, then a build (make -j, one job
    // per CPU, of generated C files).
    let build = dir.join("build");
    write_build(&build, 6 * cpus);
    // Cold, as on a fresh machine (CI): the scan reads its metadata from the disk the service
    // writes to. Dropping clean caches changes nothing but how fast they refill; the kernel's
    // work doing it is part of the phase.
    let benign_start = now();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let status = Command::new("bash")
        .args([
            "-c",
            &format!(
                "for i in $(seq 2500); do /bin/true; done; find /usr -xdev >/dev/null 2>&1; \
                 make -s -j{cpus} -C {}",
                build.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let benign_end = now();
    thread::sleep(Duration::from_secs(5));
    timeouts.extend(wait_calm(&mut agent, &mut open, CALM_LIMIT));

    // Fault 1: the service's direct writes throttled to 10 writes/s.
    let disk_start = now();
    {
        let _t = Throttle::new(&disk_of(&data), 10, svc_pid);
        thread::sleep(FAULT);
    }
    let disk_end = now();
    thread::sleep(Duration::from_secs(5));
    timeouts.extend(wait_calm(&mut agent, &mut open, CALM_LIMIT));

    // Fault 2: CPU hogs, twice the CPU count.
    let cpu_start = now();
    {
        let _hogs = Killed(
            (0..2 * cpus)
                .map(|_| shell("while :; do :; done"))
                .collect(),
        );
        thread::sleep(FAULT);
    }
    let cpu_end = now();
    thread::sleep(Duration::from_secs(5));
    timeouts.extend(wait_calm(&mut agent, &mut open, CALM_LIMIT));

    // Fault 3: the service's connects storm a closed port.
    let storm_start = now();
    fs::write(&flag, "").unwrap();
    thread::sleep(FAULT);
    fs::remove_file(&flag).unwrap();
    let storm_end = now();
    thread::sleep(Duration::from_secs(8)); // the storm's window ends 5 s after it
    agent.terminate();

    let intervals = agent.intervals(Duration::from_secs(30));
    drop(children); // killed and reaped: they hold the bpf lock's descriptor too
    let _ = fs::remove_dir_all(&dir);

    let notes = notifications(&intervals);
    let me = format!("steadysvc[{svc_pid}]");
    eprintln!("service: {me}; {} intervals", intervals.len());
    for n in &notes {
        eprintln!(
            "  {:.2} incident {} {} {}: {} {:?}",
            n.t, n.id, n.what, n.state, n.description, n.processes
        );
    }
    for t in &timeouts {
        eprintln!("keys off when the wait for calm ran out at {t:.2}:");
        for k in keys_off_before(&intervals, *t) {
            eprintln!("  {k}");
        }
    }
    let during =
        |a: f64, b: f64| -> Vec<&Note> { notes.iter().filter(|n| n.t >= a && n.t <= b).collect() };
    let benign = during(benign_start, benign_end + 5.0);
    let benign_critical = benign.iter().filter(|n| n.state == "critical").count();
    eprintln!(
        "benign ({:.0} s): {} notifications, {} critical",
        benign_end - benign_start,
        benign.len(),
        benign_critical
    );
    let mut failures = vec![];
    if benign.len() > 1 || benign_critical > 0 {
        failures.push(format!(
            "benign: {} notifications, {benign_critical} critical",
            benign.len()
        ));
    }
    eprintln!(
        "run-queue wait (median / highest interval): learning {}; benign {}; before the hogs {}",
        runq_waits(&intervals, benign_start - 40.0, benign_start - 5.0),
        runq_waits(&intervals, benign_start, benign_end + 5.0),
        runq_waits(&intervals, cpu_start - 30.0, cpu_start)
    );
    let fdatasync = |a, b| {
        waits(
            &intervals,
            a,
            b,
            "syscall.latency_us",
            Some("fdatasync"),
            &["p50", "p90", "p99"],
        )
    };
    eprintln!(
        "the service's fdatasync (median / highest interval): learning {}; benign {}",
        fdatasync(benign_start - 40.0, benign_start - 5.0),
        fdatasync(benign_start, benign_end + 5.0),
    );
    // (phase, the service must lead its processes, or only be among them)
    for (name, a, b, leading) in [
        ("disk writes throttled", disk_start, disk_end, true),
        ("cpu hogs", cpu_start, cpu_end, false),
        ("connect storm", storm_start, storm_end, true),
    ] {
        let crit: Vec<&Note> = during(a, b + 5.0)
            .into_iter()
            .filter(|n| n.state == "critical")
            .collect();
        let ids: std::collections::BTreeSet<u64> = crit.iter().map(|n| n.id).collect();
        let first = crit.first().map(|n| n.t - a);
        let named = named_within(&intervals, &ids, a, a + WITHIN_S, &me, leading);
        eprintln!(
            "{name}: {} critical incident(s), first after {}, naming the service{} within {WITHIN_S} s: {named}; run-queue wait {}",
            ids.len(),
            first.map_or("-".into(), |s| format!("{s:.1} s")),
            if leading { " first" } else { "" },
            runq_waits(&intervals, a, b)
        );
        if ids.len() != 1 || first.is_none_or(|s| s > WITHIN_S) || !named {
            failures.push(format!(
                "{name}: {} critical incidents, first after {first:?} s, named: {named}",
                ids.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
