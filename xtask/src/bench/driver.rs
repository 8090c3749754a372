//! What the sections share: the configurations and attaching them, interleaved rounds, fio,
//! the loop device, and windows of the agent's own figures.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bench, load,
    proc::{self, Finished, Helper, Ready},
    stats::median,
};

/// What is attached to the kernel during one measurement.
#[derive(Clone, Debug)]
pub(super) enum Cfg {
    Nothing,
    /// `ebpf-agent run` with these arguments.
    Agent(Vec<&'static str>),
    /// The same on the classic tracepoints (`EBPF_AGENT_CLASSIC_TRACEPOINTS=1`), as on a kernel
    /// without BTF.
    AgentClassic(Vec<&'static str>),
    /// `ebpf-agent floor`: two empty raw tracepoint programs.
    Floor,
    /// The floor while BPF run-time statistics are on (the agent turns them on for
    /// `agent.bpf_ns_per_event`): what the statistics alone add.
    FloorStats,
    /// `ebpf-agent floor --clock`: the two programs only read the clock, which any latency
    /// tracer must do at entry and exit.
    FloorClock,
    Syscount,
    Bpftrace,
    Biolatency(Vec<&'static str>),
    /// libbpf-tools `runqlat` (one histogram of run-queue latency, as the agent's runq probe).
    Runqlat,
}

/// The bpftrace one-liner: a latency histogram per syscall from raw_syscalls enter/exit.
const BPFTRACE_HIST: &str = "tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
    tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @h[args->id] = hist(nsecs - @start[tid]); \
    delete(@start[tid]); } END { clear(@start); }";

/// A configuration while attached.
pub(super) struct Attached {
    pub(super) helper: Option<Helper>,
    _stats: Option<OwnedFd>,
}

impl Attached {
    fn pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Helper::pid)
    }

    /// Detaches; the helper's output, if there was one.
    pub(super) fn stop(self) -> Result<Option<Finished>> {
        self.helper.map(Helper::stop).transpose()
    }
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run-time statistics stay on while the fd is open.
pub(super) fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u32; 2]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    // SAFETY: attr is a valid, zeroed bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Bench {
    /// Starts a configuration and waits until it is attached.
    pub(super) fn attach(&self, cfg: &Cfg) -> Result<Attached> {
        let tool = |t: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
            t.clone()
                .with_context(|| format!("{name} is not installed (apt-get install failed?)"))
        };
        let line_buffered = |bin: PathBuf| {
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg(bin);
            c
        };
        let secs = Duration::from_secs;
        let (helper, settle, stats) = match cfg {
            Cfg::Nothing => (None, 0, None),
            Cfg::Agent(args) | Cfg::AgentClassic(args) => {
                let mut c = Command::new(&self.agent);
                c.arg("run")
                    .arg("--config")
                    .arg(&self.config)
                    .args(args)
                    .env("EBPF_AGENT_LOG", "info");
                if matches!(cfg, Cfg::AgentClassic(_)) {
                    c.env("EBPF_AGENT_CLASSIC_TRACEPOINTS", "1");
                }
                let h = Helper::start("ebpf-agent", c, Ready::Stderr("collecting:"), secs(30))?;
                (Some(h), 300, None)
            }
            Cfg::Floor | Cfg::FloorStats | Cfg::FloorClock => {
                let stats = match cfg {
                    Cfg::FloorStats => Some(enable_bpf_stats()?),
                    _ => None,
                };
                let mut c = Command::new(&self.agent);
                c.arg("floor");
                if matches!(cfg, Cfg::FloorClock) {
                    c.arg("--clock");
                }
                let h = Helper::start(
                    "ebpf-agent floor",
                    c,
                    Ready::Stderr("floor attached"),
                    secs(30),
                )?;
                (Some(h), 300, stats)
            }
            Cfg::Syscount => {
                let mut c = line_buffered(tool(&self.tools.syscount, "syscount")?);
                c.arg("-L");
                let h = Helper::start("syscount", c, Ready::Stdout("Tracing syscalls"), secs(30))?;
                (Some(h), 300, None)
            }
            Cfg::Bpftrace => {
                let mut c = line_buffered(tool(&self.tools.bpftrace, "bpftrace")?);
                c.arg("-e").arg(BPFTRACE_HIST);
                // bpftrace prints "Attaching N probes..." just before it attaches.
                let h = Helper::start("bpftrace", c, Ready::Stdout("Attaching"), secs(60))?;
                (Some(h), 1000, None)
            }
            Cfg::Biolatency(args) => {
                let mut c = line_buffered(tool(&self.tools.biolatency, "biolatency")?);
                c.args(args);
                let h = Helper::start(
                    "biolatency",
                    c,
                    Ready::Stdout("Tracing block device"),
                    secs(30),
                )?;
                (Some(h), 300, None)
            }
            Cfg::Runqlat => {
                // It finds the sched tracepoints through tracefs, which is not mounted at boot.
                let _ = Command::new("mount")
                    .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                    .stderr(std::process::Stdio::null())
                    .status();
                let c = line_buffered(tool(&self.tools.runqlat, "runqlat")?);
                let h = Helper::start("runqlat", c, Ready::Stdout("Tracing run queue"), secs(30))?;
                (Some(h), 300, None)
            }
        };
        thread::sleep(Duration::from_millis(settle));
        Ok(Attached {
            helper,
            _stats: stats,
        })
    }

    /// Runs `measure` under every configuration once per round, the order rotating from round
    /// to round so no configuration always follows the same one. A configuration that fails is
    /// reported once (`what, name: error`) and skipped from then on. Returns `[config][round]`.
    pub(super) fn interleaved<T>(
        &mut self,
        what: &str,
        configs: &[(&str, Cfg)],
        rounds: usize,
        mut measure: impl FnMut(&Self) -> Result<T>,
    ) -> Vec<Vec<Option<T>>> {
        let n = configs.len();
        let mut out: Vec<Vec<Option<T>>> = (0..n)
            .map(|_| (0..rounds).map(|_| None).collect())
            .collect();
        let mut failed = vec![false; n];
        for r in 0..rounds {
            for k in (0..n).map(|i| (i + r) % n) {
                if failed[k] {
                    continue;
                }
                let (name, cfg) = &configs[k];
                eprintln!("bench: {what} round {}/{rounds}: {name}", r + 1);
                let res = self.attach(cfg).and_then(|att| {
                    let v = measure(self);
                    att.stop()?;
                    v
                });
                match res {
                    Ok(v) => out[k][r] = Some(v),
                    Err(e) => {
                        self.errors.push(format!("{what}, {name}: {e:#}"));
                        failed[k] = true;
                    }
                }
            }
        }
        out
    }

    pub(super) fn fio(&self, target: &Path, secs: f64) -> Result<load::Fio> {
        let fio = self.tools.fio.clone().context("fio is not installed")?;
        load::fio(&fio, target, self.plan.fio_mib, secs)
    }

    /// The loop device on tmpfs, set up on first use and detached when the run ends.
    pub(super) fn loop_dev(&mut self) -> Result<PathBuf> {
        if self.loopdev.is_none() {
            self.loopdev = Some(load::LoopDev::new(self.plan.fio_mib)?);
        }
        Ok(self.loopdev.as_ref().expect("just set").dev.clone())
    }

    /// Runs the agent with `args` (JSON output) for `secs` seconds while a getppid loop runs
    /// on each CPU of `load` (none: idle). Returns what was measured.
    pub(super) fn agent_window(
        &self,
        args: &[&'static str],
        load: &[usize],
        secs: f64,
    ) -> Result<Window> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let att = self.attach(&Cfg::Agent(all))?;
        let pid = att.pid().context("agent pid")?;
        let (u0, s0) = proc::cpu_secs(pid)?;
        let from = SystemTime::now();
        let t = Instant::now();
        let d = Duration::from_secs_f64(secs);
        let (calls, load_secs) = if !load.is_empty() {
            load::getppid_on(load, d)
        } else {
            thread::sleep(d);
            (0, d.as_secs_f64())
        };
        let wall = t.elapsed().as_secs_f64();
        let to = SystemTime::now();
        let (u1, s1) = proc::cpu_secs(pid)?;
        // The interval that covers the end of the load must have been printed.
        let helper = att.helper.as_ref().expect("agent helper");
        helper.wait_stdout(Duration::from_secs(3), |l| proc::interval_ends_after(l, to));
        let fin = att.stop()?.context("agent output")?;
        let ivs = proc::intervals(&fin.stdout);
        let inside = proc::inside(&ivs, from, to);
        if inside.is_empty() {
            bail!("no whole agent interval inside the {secs} s window");
        }
        let med = |name: &str, tags: &[(&str, &str)]| -> Option<f64> {
            let v: Vec<f64> = inside
                .iter()
                .filter_map(|i| proc::metric(&i.v, name, tags).map(|x| x / i.len))
                .collect();
            median(&v)
        };
        let lost: f64 = ivs
            .iter()
            .filter_map(|i| proc::metric(&i.v, "agent.events_lost", &[("probe", "syscall")]))
            .sum();
        Ok(Window {
            calls_per_s: calls as f64 / load_secs,
            cpu_pct: (u1 - u0 + s1 - s0) / wall * 100.0,
            events_per_s: med("agent.events", &[]),
            lost,
            lost_per_s: med("agent.events_lost", &[("probe", "syscall")]),
            intervals: inside.len(),
        })
    }
}

/// What one agent window measured.
#[derive(Clone)]
pub(super) struct Window {
    pub(super) calls_per_s: f64,
    pub(super) cpu_pct: f64,
    pub(super) events_per_s: Option<f64>,
    pub(super) lost: f64,
    pub(super) lost_per_s: Option<f64>,
    /// Whole agent intervals inside the window.
    pub(super) intervals: usize,
}
