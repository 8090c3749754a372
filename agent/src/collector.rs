//! The per-interval loop's state: gathers every source into one [`Snapshot`].
//!
//! Work per interval is proportional to the table size and the number of metrics, never to the
//! number of kernel events.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::RuntimeConfig;

use crate::{
    catalogue::agent as self_metrics,
    cli::PROCFS,
    probes::{
        Kernel, Probe, ProbeError, ProbeOptions, cgroup,
        events::{self, EventLog, EventView},
        klog,
    },
    procfs::ProcfsCollector,
    settings::Settings,
    snapshot::{Metric, Snapshot},
};

/// Everything the agent reads, ready to be collected each interval.
pub struct Collector {
    pub kernel: Option<Kernel>,
    procfs: Option<ProcfsCollector>,
    /// Kernel probes asked for (reported in `agent.probe_up` even when down).
    wanted: Vec<Probe>,
    pub events: Arc<EventLog>,
    readers: Option<Readers>,
    self_stats: SelfStats,
    /// Rendered events of the last interval.
    pub last_events: Vec<EventView>,
}

impl Collector {
    /// Loads the kernel probes (degrading to procfs-only without privilege) and starts consuming
    /// the ring buffer. Must run inside a tokio runtime.
    pub fn start(args: &Settings) -> Collector {
        configure_cgroup(args);
        let wanted = kernel_probes(args);
        let procfs = args
            .source_on(PROCFS)
            .then(|| ProcfsCollector::new(&args.procfs_root));
        let events = Arc::new(EventLog::default());
        let (kernel, readers) = load_kernel(args, &wanted, &events);
        Collector {
            kernel,
            procfs,
            wanted,
            events,
            readers,
            self_stats: SelfStats::new(),
            last_events: vec![],
        }
    }

    /// Applies new settings while running (SIGHUP): probes switched on or off (the others keep
    /// running and lose no counts), kernel-side thresholds and filters, procfs on or off.
    pub fn apply(&mut self, args: &Settings) {
        configure_cgroup(args);
        let wanted = kernel_probes(args);
        match &mut self.kernel {
            Some(k) => {
                k.set_probes(&wanted);
                if let Err(e) = k.set_runtime(probe_options(args, &wanted).runtime) {
                    tracing::warn!("updating kernel settings: {e}");
                }
            }
            None => {
                // Nothing was loaded yet (no kernel probe wanted at start): load now.
                let (kernel, readers) = load_kernel(args, &wanted, &self.events);
                self.kernel = kernel;
                self.readers = readers;
                if let Some(k) = &mut self.kernel {
                    k.prime();
                }
            }
        }
        self.wanted = wanted;
        if !args.source_on(PROCFS) {
            self.procfs = None;
        } else if self
            .procfs
            .as_ref()
            .is_none_or(|p| p.root() != args.procfs_root)
        {
            // A new or moved proc root: primed, so its first interval is a whole one.
            let mut p = ProcfsCollector::new(&args.procfs_root);
            p.collect(&mut Vec::new());
            self.procfs = Some(p);
        }
    }

    /// One line for people saying what runs.
    pub fn summary(&self) -> String {
        let mut up = vec![];
        let mut down = vec![];
        for &p in &self.wanted {
            if self.kernel.as_ref().is_some_and(|k| k.is_up(p)) {
                up.push(p.name());
            } else {
                down.push(p.name());
            }
        }
        if self.procfs.is_some() {
            up.push("procfs");
        }
        let mut s = format!(
            "collecting: {}",
            if up.is_empty() {
                "nothing".into()
            } else {
                up.join(", ")
            }
        );
        if !down.is_empty() {
            s.push_str(&format!("; down: {}", down.join(", ")));
        }
        s
    }

    /// Starts the deltas: what happened before this call is not reported.
    pub fn prime(&mut self) {
        let mut sink = Vec::new();
        if let Some(k) = &mut self.kernel {
            k.collect(&mut sink);
        }
        if let Some(p) = &mut self.procfs {
            p.collect(&mut sink);
        }
        let _ = self.events.drain();
        self.self_stats.sample();
    }

    /// Collects one interval ending at `end`.
    pub fn collect(&mut self, end: SystemTime, interval: Duration, host: &str) -> Snapshot {
        let mut metrics = Vec::with_capacity(512);
        if let Some(k) = &mut self.kernel {
            k.collect(&mut metrics);
        }
        if let Some(p) = &mut self.procfs {
            p.collect(&mut metrics);
        }
        let (events, received) = self.events.drain();
        self.last_events = match &self.kernel {
            Some(k) => events.iter().filter_map(|e| k.event_view(e)).collect(),
            None => vec![],
        };
        for &p in &self.wanted {
            let up = self.kernel.as_ref().is_some_and(|k| k.is_up(p));
            metrics.push(
                self_metrics::PROBE_UP.level(vec![("probe", p.name().into())], up as u8 as f64),
            );
        }
        if let Some(p) = &self.procfs {
            // Up only when it read something: a wrong or missing proc root is a blind probe.
            let up = p.any_read() as u8 as f64;
            metrics.push(self_metrics::PROBE_UP.level(vec![("probe", PROCFS.into())], up));
            p.health(&mut metrics);
        }
        if self.kernel.is_some() {
            metrics.push(self_metrics::EVENTS.count(vec![], received));
        }
        metrics.push(self_metrics::HEARTBEAT.count(vec![], 1));
        self.self_stats.push(&mut metrics);
        Snapshot::new(end, interval, host.to_string(), metrics)
    }

    /// Cumulative histogram rows (since load) of every key with samples, named like the
    /// snapshot's latency families: diff two calls to get exactly what happened in between
    /// (`watch`'s session histograms).
    pub fn cumulative_histograms(&self) -> Vec<(&'static str, crate::snapshot::Tags, Vec<u64>)> {
        self.kernel
            .as_ref()
            .map(|k| k.cumulative_rows())
            .unwrap_or_default()
    }

    /// Stops reading the ring buffer; dropping the collector detaches every program.
    pub fn stop(&mut self) {
        self.readers = None;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per-cgroup attribution's settings, read by its probe each interval.
fn configure_cgroup(args: &Settings) {
    cgroup::configure(cgroup::CgroupConfig {
        top: args.cgroup_top,
        fs: args.cgroup_fs.clone(),
    });
}

/// The kernel probes switched on, each once.
fn kernel_probes(args: &Settings) -> Vec<Probe> {
    Probe::ALL
        .into_iter()
        .filter(|p| args.source_on(p.name()))
        .collect()
}

/// What reads the kernel's ring buffers as they fill: the events' reader thread and the task
/// forwarding the programs' log. Dropping it stops both.
struct Readers {
    _events: Option<events::Reader>,
    log: tokio::task::JoinHandle<()>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.log.abort();
    }
}

/// Loads `wanted` (nothing when empty) and starts the readers feeding `events` and the log.
fn load_kernel(
    args: &Settings,
    wanted: &[Probe],
    events: &Arc<EventLog>,
) -> (Option<Kernel>, Option<Readers>) {
    if wanted.is_empty() {
        return (None, None);
    }
    match Kernel::load(&probe_options(args, wanted)) {
        Ok(mut k) => {
            // Both woken by the kernel only; the events are also read by `collect` at each
            // interval's end.
            let reader = k.take_events().and_then(|rb| {
                events
                    .attach(rb)
                    .and_then(|fd| events::Reader::start(fd, events.clone()))
                    .inspect_err(|e| {
                        tracing::warn!(
                            "ring buffer reader: {e}; events are read at each interval's end only"
                        )
                    })
                    .ok()
            });
            let logger = k.take_logger();
            let log = tokio::spawn(async move {
                if let Some(l) = logger
                    && let Err(e) = klog::forward(l).await
                {
                    tracing::warn!("kernel programs' log reader stopped: {e}");
                }
            });
            let readers = Readers {
                _events: reader,
                log,
            };
            (Some(k), Some(readers))
        }
        Err(e @ ProbeError::NoPrivilege(_)) => {
            tracing::warn!("{e}; running with procfs metrics only");
            (None, None)
        }
        Err(e) => {
            tracing::warn!("kernel probes unavailable: {e}; running with procfs metrics only");
            (None, None)
        }
    }
}

fn probe_options(args: &Settings, probes: &[Probe]) -> ProbeOptions {
    let mut runtime = RuntimeConfig::default();
    if let Some(t) = args.slow_threshold {
        let ns = t.as_nanos().min(u64::MAX as u128 - 1) as u64;
        runtime.slow_syscall_ns = ns;
        runtime.slow_disk_ns = ns;
        runtime.slow_runq_ns = ns;
    }
    if !args.enable.slow_events {
        runtime.slow_syscall_ns = RuntimeConfig::OFF;
        runtime.slow_disk_ns = RuntimeConfig::OFF;
        runtime.slow_runq_ns = RuntimeConfig::OFF;
        runtime.tcp_events_on = 0;
    }
    if let Some(pid) = args.pid {
        runtime.filter_tgid = pid;
    }
    if let Some(path) = &args.cgroup {
        match agent_core::cgroup::find(&args.cgroup_fs, path) {
            Ok(found) => {
                runtime.filter_cgroup = found.id;
                runtime.filter_cgroup_level = found.level;
            }
            Err(e) => {
                // Gone since it was checked at start (a reload): trace nothing rather than
                // everything, and say so.
                tracing::warn!("--cgroup {e}: the syscall probe now counts nothing");
                runtime.filter_cgroup = u64::MAX;
            }
        }
    }
    if let Some(comm) = &args.comm {
        runtime.filter_comm_on = 1;
        runtime.filter_comm[..comm.len()].copy_from_slice(comm.as_bytes());
    }
    ProbeOptions {
        probes: probes.to_vec(),
        runtime,
        ring_bytes: args.ring_buffer_kib * 1024,
        bpf_stats_every: args.bpf_stats_every,
    }
}

/// The agent's own CPU and memory (`agent.cpu_pct`, `agent.rss_bytes`).
struct SelfStats {
    last: Option<(Instant, u64)>,
    ticks_per_sec: u64,
    page_size: u64,
}

impl SelfStats {
    fn new() -> Self {
        Self {
            last: None,
            ticks_per_sec: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }

    fn read() -> Option<(u64, u64)> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        Some((stat.utime + stat.stime, stat.rss))
    }

    fn sample(&mut self) {
        self.last = Self::read().map(|(ticks, _)| (Instant::now(), ticks));
    }

    fn push(&mut self, out: &mut Vec<Metric>) {
        let Some((ticks, rss_pages)) = Self::read() else {
            return;
        };
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let cpu =
                    ticks.saturating_sub(before) as f64 / self.ticks_per_sec as f64 / secs * 100.0;
                out.push(self_metrics::CPU_PCT.level(vec![], cpu));
            }
        }
        out.push(self_metrics::RSS_BYTES.level(vec![], (rss_pages * self.page_size) as f64));
        self.last = Some((now, ticks));
    }
}
