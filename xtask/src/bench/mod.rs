//! `cargo xtask bench`: what the agent costs, side by side with what users would otherwise run
//! (libbpf-tools `syscount`/`biolatency`, a bpftrace one-liner, the empty-program floor), and
//! how accurate it is. Every configuration runs in each of several interleaved rounds (the
//! order rotates each round); figures are medians over the rounds with their min–max, and the
//! ratios that count are those between configurations of the same run. Prints Markdown tables
//! with PASS/MISS per target and writes everything as JSON. No timing is asserted: the exit
//! status is non-zero only when a configuration could not run at all.

// Figures are [configuration][round] matrices filled in round-robin order.
#![allow(clippy::needless_range_loop)]

mod accuracy;
mod agent_itself;
mod disk;
mod driver;
mod kernel_costs;
mod load;
mod memory;
pub(crate) mod proc;
mod report;
mod ring_buffer;
mod runq;
mod stats;
mod syscalls;
mod tcp;
mod tools;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use self::{
    report::{Table, Target},
    tools::Tools,
};

/// What `--smoke` and a full run change.
struct Plan {
    sys_rounds: usize,
    sys_samples: usize,
    sys_calls: u64,
    disk_rounds: usize,
    fio_secs: f64,
    fio_mib: u64,
    fio_loop_secs: f64,
    tcp_rounds: usize,
    tcp_secs: f64,
    self_rounds: usize,
    self_secs: f64,
    ring_rounds: usize,
    ring_kib: Vec<u64>,
    ring_secs: f64,
    sleep_secs: f64,
    costs_secs: f64,
    costs_peer_secs: f64,
}

impl Plan {
    fn new(smoke: bool) -> Self {
        if smoke {
            Plan {
                sys_rounds: 1,
                sys_samples: 3,
                sys_calls: 1_000_000,
                disk_rounds: 1,
                fio_secs: 3.0,
                fio_mib: 256,
                fio_loop_secs: 2.0,
                tcp_rounds: 1,
                tcp_secs: 1.0,
                self_rounds: 1,
                // Shorter than the 20 s the targets are stated over: the table says so.
                self_secs: 5.0,
                ring_rounds: 1,
                ring_kib: vec![256, 4096],
                ring_secs: 3.2,
                sleep_secs: 3.2,
                costs_secs: 2.5,
                costs_peer_secs: 1.0,
            }
        } else {
            Plan {
                sys_rounds: 5,
                sys_samples: 5,
                sys_calls: 2_000_000,
                disk_rounds: 5,
                fio_secs: 10.0,
                fio_mib: 256,
                fio_loop_secs: 5.0,
                tcp_rounds: 5,
                tcp_secs: 2.0,
                self_rounds: 3,
                self_secs: 20.5,
                ring_rounds: 2,
                ring_kib: vec![256, 1024, 4096, 16384],
                ring_secs: 5.2,
                sleep_secs: 6.2,
                costs_secs: 4.5,
                costs_peer_secs: 3.0,
            }
        }
    }
}

struct Bench {
    plan: Plan,
    smoke: bool,
    agent: PathBuf,
    config: PathBuf,
    fio_file: PathBuf,
    loopdev: Option<load::LoopDev>,
    tools: Tools,
    cpu: usize,
    errors: Vec<String>,
    targets: Vec<Target>,
    tables: Vec<Table>,
    json: serde_json::Map<String, Value>,
}

/// Options of `cargo xtask bench`.
pub struct Options {
    pub smoke: bool,
    pub out: PathBuf,
    /// Run only these sections (empty: all).
    pub only: Vec<String>,
}

/// The sections, in the order they run.
pub const SECTIONS: [&str; 12] = [
    "syscalls",
    "disk",
    "disk_loop",
    "tcp",
    "runq",
    "agent_itself",
    "ring_buffer",
    "accuracy_sleep",
    "accuracy_disk",
    "kernel_costs",
    "kernel_costs_peers",
    "memory",
];

/// Runs the benchmark from the workspace root.
pub fn run(root: &Path, opts: Options) -> Result<()> {
    if let Some(bad) = opts.only.iter().find(|o| !SECTIONS.contains(&o.as_str())) {
        bail!("unknown section {bad:?}: one of {}", SECTIONS.join(", "));
    }
    super::require_root("bench")?;
    super::setup(root, false)?;
    super::cargo(&["build", "--release", "--package", "agent"])?;
    let tools = Tools::install();
    let work = root.join("target/bench");
    fs::create_dir_all(&work).context("creating target/bench")?;
    // A copy of the binary just built: a build in the shared target directory during the run
    // must not change what is measured.
    let agent = work.join("ebpf-agent");
    fs::copy(root.join("target/release/ebpf-agent"), &agent)
        .context("copying target/release/ebpf-agent")?;
    // The defaults but for the state directory: a /etc/ebpf-agent/config.toml on this machine
    // must not change what is measured, and the bench must not learn into the host's
    // /var/lib/ebpf-agent (CI runs it on the machine that runs the tests).
    let state = work.join("state");
    let _ = fs::remove_dir_all(&state);
    fs::create_dir_all(&state).context("creating target/bench/state")?;
    let config = work.join("defaults-config.toml");
    fs::write(
        &config,
        format!("state_dir = {:?}\n", state.display().to_string()),
    )?;
    let mut b = Bench {
        plan: Plan::new(opts.smoke),
        smoke: opts.smoke,
        agent,
        config,
        fio_file: work.join("fio.dat"),
        loopdev: None,
        tools,
        cpu: load::load_cpu(),
        errors: Vec::new(),
        targets: Vec::new(),
        tables: Vec::new(),
        json: Default::default(),
    };
    let started = Instant::now();
    b.machine();
    let sections: [fn(&mut Bench) -> Result<Value>; SECTIONS.len()] = [
        Bench::syscalls,
        Bench::disk,
        Bench::disk_loop,
        Bench::tcp,
        Bench::runq,
        Bench::agent_itself,
        Bench::ring_buffer,
        Bench::accuracy_sleep,
        Bench::accuracy_disk,
        Bench::kernel_costs,
        Bench::kernel_costs_peers,
        Bench::memory,
    ];
    for (name, f) in SECTIONS.iter().zip(sections) {
        if opts.only.is_empty() || opts.only.iter().any(|o| o == name) {
            b.section(name, f);
        }
    }
    b.json
        .insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    b.finish(&opts.out)?;
    if !b.errors.is_empty() {
        bail!(
            "{} configuration(s) could not run:\n  {}",
            b.errors.len(),
            b.errors.join("\n  ")
        );
    }
    Ok(())
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn first_line(cmd: &mut Command) -> String {
    super::output(cmd)
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

impl Bench {
    fn machine(&mut self) {
        let meminfo = read_trim("/proc/meminfo");
        let mem_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let model = report::cpu_model();
        let mitigations = report::mitigations();
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let dpkg = |pkg: &str| {
            first_line(Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg]))
        };
        let m = json!({
            "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
            "kernel": read_trim("/proc/sys/kernel/osrelease"),
            "cpus": cpus,
            "cpu_model": model,
            "cpu_mitigations": mitigations,
            "mem_bytes": mem_kib * 1024,
            "clocksource": read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
            "bpf_stats_enabled_sysctl": read_trim("/proc/sys/kernel/bpf_stats_enabled"),
            "loadavg": read_trim("/proc/loadavg"),
            "load_cpu": self.cpu,
            "commit": first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
            "agent_sources_modified": super::output(Command::new("git").args([
                "status", "--porcelain", "--", "agent", "agent-ebpf", "agent-common",
            ]))
            .map(|s| s.lines().map(str::to_string).collect::<Vec<_>>()),
            "smoke": self.smoke,
            "peers": {
                "libbpf-tools": dpkg("libbpf-tools"),
                "bpftrace": dpkg("bpftrace"),
                "fio": dpkg("fio"),
            },
            "paths": {
                "syscount": self.tools.syscount,
                "biolatency": self.tools.biolatency,
                "bpftrace": self.tools.bpftrace,
                "fio": self.tools.fio,
            },
        });
        let dirty = m["agent_sources_modified"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        println!(
            "# ebpf-agent benchmark{}\n\n{} · commit {}{} · Linux {} · {} CPUs ({}) · {:.1} GiB · load {} · loops pinned to CPU {}\n\nCPU mitigations: {}",
            if self.smoke {
                " (smoke: short, figures indicative only)"
            } else {
                ""
            },
            m["date"].as_str().unwrap_or(""),
            m["commit"].as_str().unwrap_or(""),
            if dirty {
                " + uncommitted agent changes"
            } else {
                ""
            },
            m["kernel"].as_str().unwrap_or(""),
            cpus,
            m["cpu_model"].as_str().unwrap_or(""),
            mem_kib as f64 / 1048576.0,
            m["loadavg"].as_str().unwrap_or(""),
            self.cpu,
            m["cpu_mitigations"].as_str().unwrap_or(""),
        );
        self.json.insert("machine".into(), m);
    }

    /// Runs one section; its failure is recorded, and the next section runs.
    fn section(&mut self, name: &str, f: fn(&mut Bench) -> Result<Value>) {
        let load_before = read_trim("/proc/loadavg");
        eprintln!("bench: {name} (load {load_before})");
        let t = Instant::now();
        let mut v = match f(self) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(format!("{name}: {e:#}"));
                json!({ "error": format!("{e:#}") })
            }
        };
        if let Value::Object(o) = &mut v {
            o.insert("loadavg_before".into(), json!(load_before));
            o.insert("loadavg_after".into(), json!(read_trim("/proc/loadavg")));
            o.insert("seconds".into(), json!(t.elapsed().as_secs_f64()));
        }
        self.json.insert(name.into(), v);
    }

    fn print(&mut self, t: Table) {
        t.print();
        self.tables.push(t);
    }

    fn target(&mut self, t: Target) {
        self.targets.push(t);
    }

    fn finish(&mut self, out: &Path) -> Result<()> {
        let mut t = Table::new("Targets", &["target", "value", "limit", "result", "how"]);
        for g in &self.targets {
            t.row(vec![
                g.name.clone(),
                g.value.clone(),
                g.limit.clone(),
                g.verdict().into(),
                g.note.clone(),
            ]);
        }
        if self.smoke {
            t.note("Smoke run: too short for the figures to mean much; no timing is asserted.");
        }
        if !self.errors.is_empty() {
            t.note(format!(
                "Configurations that failed: {}",
                self.errors.join("; ")
            ));
        }
        self.print(t);
        self.json.insert(
            "targets".into(),
            Value::Array(self.targets.iter().map(Target::json).collect()),
        );
        self.json.insert("errors".into(), json!(self.errors));
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(
            out,
            serde_json::to_string_pretty(&Value::Object(self.json.clone()))?,
        )
        .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: results written to {}", out.display());
        Ok(())
    }
}
