//! Loading the embedded eBPF object, attaching each probe of the registry on its own (with its
//! fallbacks), and reading the histogram table every interval.

use std::{collections::HashMap, io, path::PathBuf, time::Duration, time::Instant};

use agent_common::{RuntimeConfig, layout, maps, probes::floor};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use thiserror::Error;

use super::{
    Attach, Globals, Probe, ProbeState, Program, Rows, btf, btf_capable, btf_capable_names,
    has_classic_variant, key_row, klog,
    table::{HistTable, RowDiff, RowIndex},
    tracefs,
};
use crate::{
    catalogue::agent as self_metrics,
    snapshot::{Metric, Tags},
};
use agent_common::Event;
use agent_core::events::EventView;

/// The kernel programs, built by build.rs (aya-build) and embedded in the binary.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "no permission to load eBPF programs ({0}): run as root, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8)"
    )]
    NoPrivilege(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("mapping the histogram table failed: {0}")]
    Mmap(io::Error),
}

/// What to load, and the kernel-side settings.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub probes: Vec<Probe>,
    pub runtime: RuntimeConfig,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Measure the programs' own cost one interval out of this many (0 = never).
    pub bpf_stats_every: u32,
}

/// Outcome of attaching one probe.
#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub probe: Probe,
    pub result: Result<(), String>,
    /// The programs attached for it (none when it is down).
    pub programs: &'static [Program],
}

/// A probe asked for: how attaching went, and its state while up.
struct Loaded {
    status: ProbeStatus,
    state: Option<Box<dyn ProbeState>>,
}

/// The loaded kernel side.
pub struct Kernel {
    ebpf: Ebpf,
    table: HistTable,
    index: RowIndex,
    diff: RowDiff,
    /// Probes asked for, in registry order.
    loaded: Vec<Loaded>,
    /// Probes whose classic tracepoints cannot be used (tracefs or formats missing), with why.
    classic_unavailable: Vec<(Probe, String)>,
    /// The probes whose BTF tracepoint programs can be used (every offset they read found in
    /// the kernel's BTF). aya's parse of the BTF, which attaching them needs, is made only
    /// while attaching: kept, it would double the agent's memory.
    btf_probes: Vec<Probe>,
    /// The programs' log (aya-log), until taken by [`Kernel::take_logger`].
    logger: Option<aya_log::EbpfLogger<klog::KernelLog>>,
    /// Keeps the kernel's BPF run-time statistics on while open (refcounted by the kernel, so
    /// closing it on exit restores the previous state, and other users are unaffected).
    stats_fd: Option<std::os::fd::OwnedFd>,
    /// Statistics are on for one interval out of this many (0 = never, 1 = always).
    stats_every: u32,
    stats_tick: u64,
    stats_warned: bool,
    /// Per program: (run time, run count, when read).
    prev_stats: HashMap<&'static str, (Duration, u64, Instant)>,
    /// Whether the programs were loaded with per-cgroup attribution.
    cgroup_on: bool,
}

/// The cgroup attribution's registry entry.
fn cgroup_probe() -> Probe {
    Probe::ALL
        .into_iter()
        .find(|p| p.name() == super::ProbeDef::name(&super::cgroup::Cgroup))
        .expect("cgroup is in the registry")
}

/// Whether any error in `e`'s chain is EPERM/EACCES.
fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Loading the object failed: for lack of privilege, or for another reason.
fn load_error(e: aya::EbpfError) -> ProbeError {
    if is_permission_error(&e) {
        ProbeError::NoPrivilege(error_chain(&e))
    } else {
        ProbeError::Load(error_chain(&e))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let m = err.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = err.source();
    }
    s
}

fn nr_cpus() -> Result<usize, ProbeError> {
    aya::util::nr_cpus().map_err(|(path, e)| ProbeError::Load(format!("reading {path}: {e}")))
}

impl Kernel {
    /// Loads the object and attaches the requested probes.
    pub fn load(opts: &ProbeOptions) -> Result<Kernel, ProbeError> {
        let ncpus = nr_cpus()?;
        let mut globals = Globals::default();
        for probe in Probe::ALL {
            probe.def().set_globals(&mut globals);
        }
        // BTF tracepoints are preferred where the kernel's BTF has every member they read.
        let btf_probes = prepare_btf(&mut globals);
        // Per-cgroup attribution is compiled into the other probes' programs or out of them
        // (a load-time constant: off, it costs nothing), so it is decided here, once per load.
        let cgroup_on = opts.probes.contains(&cgroup_probe());
        globals.set(
            agent_common::probes::cgroup::GLOBAL_ON,
            &u32::from(cgroup_on),
        );
        // The classic tracepoints' field offsets come from tracefs, read before load (they are
        // load-time globals) for every probe, so a probe switched on later by a reload can
        // attach too. tracefs is mounted only when a probe has no BTF tracepoints to use; when
        // it is there already, the offsets are read anyway, for a fallback.
        let classic: Vec<Probe> = Probe::ALL
            .into_iter()
            .filter(|&p| has_classic_variant(p))
            .collect();
        let needs_tracefs = classic.iter().any(|p| !btf_probes.contains(p));
        let tracefs: Result<PathBuf, String> = if needs_tracefs {
            tracefs::ensure_mounted().map_err(|e| e.to_string())
        } else {
            match tracefs::find() {
                Ok(Some(p)) => Ok(p),
                Ok(None) => Err("tracefs is not mounted".into()),
                Err(e) => Err(e.to_string()),
            }
        };
        let mut classic_unavailable = Vec::new();
        for probe in classic {
            let prepared = tracefs.as_ref().map_err(Clone::clone).and_then(|t| {
                probe
                    .def()
                    .set_classic_globals(t, &mut globals)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = prepared {
                classic_unavailable.push((probe, e));
            }
        }

        let log_level = klog::level();
        let mut ebpf = {
            // The loader holds its own parse of the kernel's BTF (tens of MiB): dropped as soon
            // as the object is loaded, before attaching parses it again.
            let mut loader = EbpfLoader::new();
            for (name, bytes) in globals.iter() {
                loader.override_global(name, bytes, true);
            }
            loader
                .override_global(maps::GLOBAL_LOG_LEVEL, &log_level, true)
                .map_max_entries(maps::HIST, layout::hist_entries(ncpus) as u32)
                .map_max_entries(maps::EVENTS, opts.ring_bytes)
                .load(EBPF_OBJECT)
                .map_err(load_error)?
        };
        release_freed_memory();

        let mut config: Array<_, RuntimeConfig> = Array::try_from(
            ebpf.map_mut(maps::CONFIG)
                .ok_or_else(|| ProbeError::Load(format!("map {} missing", maps::CONFIG)))?,
        )
        .map_err(|e| ProbeError::Load(e.to_string()))?;
        config
            .set(0, opts.runtime, 0)
            .map_err(|e| ProbeError::Load(e.to_string()))?;

        let table = {
            let map = ebpf
                .map(maps::HIST)
                .ok_or_else(|| ProbeError::Load("map HIST missing".into()))?;
            let aya::maps::Map::Array(data) = map else {
                return Err(ProbeError::Load("map HIST is not an array".into()));
            };
            HistTable::new(data, ncpus).map_err(ProbeError::Mmap)?
        };
        let index = {
            let map = ebpf
                .map(maps::ROW_INDEX)
                .ok_or_else(|| ProbeError::Load("map ROW_INDEX missing".into()))?;
            let aya::maps::Map::Array(data) = map else {
                return Err(ProbeError::Load("map ROW_INDEX is not an array".into()));
            };
            RowIndex::new(data).map_err(ProbeError::Mmap)?
        };

        let logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, klog::KernelLog) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(
                    "kernel programs' log unavailable ({e}): their rare-path messages are only counted"
                );
                None
            }
        };

        let mut diff = RowDiff::default();
        diff.prime(&table, 0..layout::ROWS);
        let mut kernel = Kernel {
            ebpf,
            table,
            index,
            diff,
            loaded: Vec::new(),
            classic_unavailable,
            btf_probes,
            logger,
            stats_fd: None,
            stats_every: opts.bpf_stats_every,
            stats_tick: 0,
            stats_warned: false,
            prev_stats: Default::default(),
            cgroup_on,
        };
        kernel.set_probes(&opts.probes);
        Ok(kernel)
    }

    /// Attaches the probes in `wanted` that are not attached and detaches the others; probes
    /// already attached and still wanted are left alone (their counts continue).
    pub fn set_probes(&mut self, wanted: &[Probe]) {
        // aya's parse of the kernel's BTF (tens of MiB of small allocations): made when a BTF
        // tracepoint is to be attached, dropped (and the heap trimmed) when done.
        let mut aya_btf: Option<Option<aya::Btf>> = None;
        for probe in Probe::ALL {
            let current = self.loaded.iter().position(|l| l.status.probe == probe);
            let want = wanted.contains(&probe);
            match (current, want) {
                (Some(i), false) => {
                    let gone = self.loaded.remove(i);
                    if gone.status.result.is_ok() {
                        for prog in gone.status.programs {
                            unload(&mut self.ebpf, prog.name);
                        }
                        tracing::info!("probe {probe} detached");
                    }
                }
                (Some(i), true) if self.loaded[i].status.result.is_ok() => {}
                (current, true) => {
                    // Per-cgroup attribution is a load-time constant of the other probes'
                    // programs: it cannot be switched on by a reload.
                    let attached = if probe == cgroup_probe() && !self.cgroup_on {
                        Err("per-cgroup attribution was off when the programs were loaded: switching it on takes a restart".to_string())
                    } else {
                        let btf = if self.btf_probes.contains(&probe) {
                            aya_btf.get_or_insert_with(load_aya_btf).as_ref()
                        } else {
                            None
                        };
                        let no_classic = self
                            .classic_unavailable
                            .iter()
                            .find(|(p, _)| *p == probe)
                            .map(|(_, e)| e.as_str());
                        attach_probe(&mut self.ebpf, probe, btf, no_classic)
                    };
                    let loaded = match attached {
                        Ok(programs) => {
                            let mut state = probe.def().state();
                            state.attached(&mut self.ebpf);
                            // Counts recorded while it was detached are none: re-prime anyway
                            // so a re-attached probe starts clean.
                            let block = probe.def().block();
                            self.diff.prime(&self.table, block.start..block.end());
                            Loaded {
                                status: ProbeStatus {
                                    probe,
                                    result: Ok(()),
                                    programs,
                                },
                                state: Some(state),
                            }
                        }
                        Err(e) => {
                            tracing::warn!("probe {probe} disabled: {e}");
                            Loaded {
                                status: ProbeStatus {
                                    probe,
                                    result: Err(e),
                                    programs: &[],
                                },
                                state: None,
                            }
                        }
                    };
                    match current {
                        Some(i) => self.loaded[i] = loaded,
                        None => self.loaded.push(loaded),
                    }
                }
                (None, false) => {}
            }
        }
        self.loaded.sort_by_key(|l| l.status.probe);
        if aya_btf.take().is_some() {
            release_freed_memory();
        }
    }

    /// Forgets everything recorded so far: the next interval starts now.
    pub fn prime(&mut self) {
        self.diff.prime(&self.table, 0..layout::ROWS);
    }

    pub fn status(&self) -> impl Iterator<Item = &ProbeStatus> {
        self.loaded.iter().map(|l| &l.status)
    }

    pub fn is_up(&self, probe: Probe) -> bool {
        self.loaded
            .iter()
            .any(|l| l.status.probe == probe && l.status.result.is_ok())
    }

    /// Changes the kernel-side settings while attached.
    pub fn set_runtime(&mut self, cfg: RuntimeConfig) -> Result<(), aya::maps::MapError> {
        let map =
            self.ebpf
                .map_mut(maps::CONFIG)
                .ok_or_else(|| aya::maps::MapError::InvalidName {
                    name: maps::CONFIG.into(),
                })?;
        let mut config: Array<_, RuntimeConfig> = Array::try_from(map)?;
        config.set(0, cfg, 0)
    }

    /// Takes the programs' log (once), for [`klog::forward`].
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<klog::KernelLog>> {
        self.logger.take()
    }

    /// Takes the ring buffer (once), for [`super::events::consume`].
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        RingBuf::try_from(self.ebpf.take_map(maps::EVENTS)?).ok()
    }

    /// Appends this interval's kernel metrics: every probe that is up, its losses, and the
    /// programs' own cost.
    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        for l in &mut self.loaded {
            let Some(state) = l.state.as_mut() else {
                continue;
            };
            let probe = l.status.probe;
            let mut rows = Rows {
                table: &self.table,
                diff: &mut self.diff,
                block: probe.def().block(),
                index: probe.def().index().map(|ix| (ix, &self.index)),
                cells: &self.index,
            };
            state.collect(&mut self.ebpf, &mut rows, out);
            let tags: Tags = vec![("probe", probe.name().to_string())];
            let lost = rows.counter(layout::CTR_EVENTS_LOST);
            let dropped = rows.counter(layout::CTR_INFLIGHT_DROPPED);
            let read_errors = rows.counter(layout::CTR_READ_ERRORS);
            out.push(self_metrics::EVENTS_LOST.count(tags.clone(), lost));
            out.push(self_metrics::INFLIGHT_DROPPED.count(tags.clone(), dropped));
            if read_errors > 0 {
                out.push(self_metrics::READ_ERRORS.count(tags, read_errors));
                tracing::warn!(
                    "probe {probe}: {read_errors} tracepoint field reads failed in the last interval"
                );
            }
        }
        self.collect_bpf_stats(out);
    }

    /// Renders a ring-buffer event through the probe it belongs to.
    pub fn event_view(&self, e: &Event) -> Option<EventView> {
        self.loaded
            .iter()
            .filter_map(|l| l.state.as_ref())
            .find_map(|s| s.event(e))
    }

    /// `agent.bpf_ns_per_event{program}` and `agent.bpf_cpu_pct{program}`: the kernel's own
    /// measure of what each attached program costs.
    ///
    /// The statistics add two clock reads to every program run (about as much as the programs
    /// themselves), so the agent switches them on for one interval out of `stats_every` (0 =
    /// never) and reports its cost at a fraction of the measuring price. When someone else keeps
    /// `kernel.bpf_stats_enabled` on, they cost us nothing more and are read every interval.
    fn collect_bpf_stats(&mut self, out: &mut Vec<Metric>) {
        self.stats_tick += 1;
        let external = self.stats_fd.is_none() && stats_sysctl_on();
        if self.stats_fd.is_some() || external {
            self.read_bpf_stats(out);
        }
        if self.stats_fd.is_some() && self.stats_every != 1 {
            self.stats_fd = None; // the window is over: statistics off again
            self.prev_stats.clear();
        }
        if !external
            && self.stats_fd.is_none()
            && self.stats_every > 0
            && self.stats_tick.is_multiple_of(u64::from(self.stats_every))
        {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => {
                    self.stats_fd = Some(fd);
                    self.prev_stats.clear();
                    self.read_bpf_stats(&mut Vec::new()); // the window's baseline
                }
                Err(e) => {
                    if !self.stats_warned {
                        self.stats_warned = true;
                        tracing::info!(
                            "BPF run-time statistics unavailable ({e}): no agent.bpf_* metrics unless kernel.bpf_stats_enabled=1"
                        );
                    }
                }
            }
        }
    }

    fn read_bpf_stats(&mut self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        for s in self.loaded.iter().map(|l| &l.status) {
            for prog in s.programs {
                let Some((run_time, run_count)) = program_stats(&self.ebpf, prog.name) else {
                    continue;
                };
                if let Some((t0, c0, when)) = self
                    .prev_stats
                    .insert(prog.name, (run_time, run_count, now))
                {
                    let ns = run_time.saturating_sub(t0).as_nanos() as f64;
                    let events = run_count.saturating_sub(c0);
                    let wall = now.duration_since(when).as_nanos() as f64;
                    let tags: Tags = vec![("program", prog.name.to_string())];
                    if events > 0 {
                        out.push(
                            self_metrics::BPF_NS_PER_EVENT.level(tags.clone(), ns / events as f64),
                        );
                    }
                    if wall > 0.0 {
                        out.push(self_metrics::BPF_CPU_PCT.level(tags, ns / wall * 100.0));
                    }
                }
            }
        }
    }

    /// Cumulative rows (since load) of every histogram key with samples: (latency family, tags,
    /// row cells in `layout` order).
    pub fn cumulative_rows(&self) -> Vec<(&'static str, Tags, Vec<u64>)> {
        let mut out = Vec::new();
        for l in &self.loaded {
            let Some(state) = l.state.as_ref() else {
                continue;
            };
            let def = l.status.probe.def();
            let index = def.index().map(|ix| (ix, &self.index));
            for (name, tags, key) in state.keys() {
                let Some(row) = key_row(def.block(), index, key) else {
                    continue;
                };
                let cells = self.diff.cumulative(&self.table, row);
                if cells[layout::CELL_COUNT] > 0 {
                    out.push((name, tags, cells.to_vec()));
                }
            }
        }
        out
    }

    /// Kernel memory held by the agent's maps, from the kernel's own accounting (`memlock` in
    /// /proc/self/fdinfo of each map), split into the histogram table (grows with CPUs) and the
    /// other maps (do not).
    pub fn map_memory_split(&self) -> (u64, u64) {
        let (mut table, mut rest) = (0, 0);
        for (name, map) in self.ebpf.maps() {
            let bytes = map_data(map).and_then(fdinfo_memlock).unwrap_or(0);
            if name == maps::HIST {
                table += bytes;
            } else {
                rest += bytes;
            }
        }
        (table, rest)
    }
}

/// Whether `kernel.bpf_stats_enabled` is on (set by the operator, systemd or another tool).
fn stats_sysctl_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// (run time, run count) of a loaded program, from the kernel.
fn program_stats(ebpf: &Ebpf, name: &str) -> Option<(Duration, u64)> {
    let info = match ebpf.program(name)? {
        aya::programs::Program::RawTracePoint(p) => p.info().ok()?,
        aya::programs::Program::TracePoint(p) => p.info().ok()?,
        aya::programs::Program::BtfTracePoint(p) => p.info().ok()?,
        _ => return None,
    };
    Some((info.run_time(), info.run_count()))
}

fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerCpuArray(d) => Some(d),
        _ => None,
    }
}

fn fdinfo_memlock(data: &MapData) -> Option<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = data.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Loads and attaches the first of `probe`'s program sets that attaches whole, and returns it;
/// a set that fails is unloaded whole (no half probe) before the next is tried. Sets of BTF
/// tracepoints are skipped without `btf`, sets of classic ones when `no_classic` says why.
fn attach_probe(
    ebpf: &mut Ebpf,
    probe: Probe,
    btf: Option<&aya::Btf>,
    no_classic: Option<&str>,
) -> Result<&'static [Program], String> {
    let usable = |set: &&&[Program]| {
        set.iter().all(|p| match p.attach {
            Attach::Btf(_) => btf.is_some(),
            Attach::Tracepoint(..) => no_classic.is_none(),
            Attach::Raw(_) => true,
        })
    };
    let sets: Vec<&'static [Program]> = probe
        .def()
        .variants()
        .iter()
        .filter(usable)
        .copied()
        .collect();
    let mut failed = None;
    for (i, set) in sets.iter().enumerate() {
        match attach_set(ebpf, probe, set, btf) {
            Ok(()) => return Ok(set),
            Err(e) => {
                if let Some(next) = sets.get(i + 1) {
                    tracing::info!("probe {probe}: {e}; trying {}", next[0].attach);
                }
                failed = Some(e);
            }
        }
    }
    // What failed last, and why the classic tracepoints were not tried.
    let skipped = no_classic.map(|why| format!("classic tracepoints: {why}"));
    Err(match (failed, skipped) {
        (Some(e), Some(why)) => format!("{e}; {why}"),
        (Some(e), None) => e,
        (None, Some(why)) => why,
        (None, None) => "no BTF".into(),
    })
}

fn attach_set(
    ebpf: &mut Ebpf,
    probe: Probe,
    set: &[Program],
    btf: Option<&aya::Btf>,
) -> Result<(), String> {
    for prog in set {
        if let Err(e) = attach_program(ebpf, Some(probe), prog, btf) {
            // Including the one that failed: it may be loaded without being attached.
            for prog in set {
                unload(ebpf, prog.name);
            }
            return Err(format!("{} ({}): {e}", prog.name, prog.attach));
        }
    }
    Ok(())
}

/// Test and escape hatch: `EBPF_AGENT_CLASSIC_TRACEPOINTS=1` leaves the BTF tracepoints out, as
/// on a kernel without BTF.
pub const CLASSIC_ENV: &str = "EBPF_AGENT_CLASSIC_TRACEPOINTS";

/// Whether the classic tracepoints were asked for ([`CLASSIC_ENV`]).
pub fn classic_forced() -> bool {
    std::env::var(CLASSIC_ENV).is_ok_and(|v| v == "1")
}

/// Sets the BTF tracepoint programs' globals from the kernel's BTF, and returns the probes that
/// can use them.
fn prepare_btf(globals: &mut Globals) -> Vec<Probe> {
    let candidates = btf_capable();
    if candidates.is_empty() {
        return vec![];
    }
    let classic = format!("{} use classic tracepoints", btf_capable_names());
    if classic_forced() {
        tracing::info!("{CLASSIC_ENV}=1: {classic}");
        return vec![];
    }
    let ours = match btf::Btf::from_file(std::path::Path::new(btf::VMLINUX)) {
        Ok(b) => b,
        Err(e) => {
            tracing::info!("BTF tracepoints unavailable ({e}): {classic}");
            return vec![];
        }
    };
    // Probes without BTF programs that read kernel structs from BTF programs of others (cgroup:
    // the woken task's cgroup in runq's sched_switch); without the offsets they do less.
    for probe in Probe::ALL.into_iter().filter(|p| !candidates.contains(p)) {
        if let Err(e) = probe.def().set_btf_globals(&ours, globals) {
            tracing::info!("probe {probe}: {e}; part of it is off");
        }
    }
    candidates
        .into_iter()
        .filter(|&probe| match probe.def().set_btf_globals(&ours, globals) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("probe {probe}: {e}; using classic tracepoints");
                false
            }
        })
        .collect()
}

/// aya's parse of the kernel's BTF, which loading a BTF tracepoint program needs.
fn load_aya_btf() -> Option<aya::Btf> {
    aya::Btf::from_sys_fs()
        .inspect_err(|e| {
            tracing::info!(
                "parsing {}: {e}; probes use classic tracepoints",
                btf::VMLINUX
            )
        })
        .ok()
}

/// Gives the heap's free memory back to the system: parsing the kernel's BTF leaves tens of
/// MiB of freed small allocations that glibc would otherwise keep as the agent's RSS.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments beyond the pad size; only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Test hook: `EBPF_AGENT_BREAK_PROBE=disk` points that probe's hooks at a tracepoint that does
/// not exist, so tests can exercise a real attach failure.
pub const BREAK_PROBE_ENV: &str = "EBPF_AGENT_BREAK_PROBE";
const NO_SUCH_TRACEPOINT: &str = "ebpf_agent_no_such_tracepoint";

fn broken(probe: Option<Probe>) -> bool {
    probe.is_some_and(|probe| {
        std::env::var(BREAK_PROBE_ENV).is_ok_and(|v| v.split(',').any(|p| p == probe.name()))
    })
}

fn attach_program(
    ebpf: &mut Ebpf,
    probe: Option<Probe>,
    prog: &Program,
    btf: Option<&aya::Btf>,
) -> Result<(), String> {
    let attach = match (broken(probe), prog.attach) {
        (false, a) => a,
        (true, Attach::Raw(_)) => Attach::Raw(NO_SUCH_TRACEPOINT),
        (true, Attach::Tracepoint(cat, _)) => Attach::Tracepoint(cat, NO_SUCH_TRACEPOINT),
        (true, Attach::Btf(_)) => Attach::Btf(NO_SUCH_TRACEPOINT),
    };
    let p = ebpf
        .program_mut(prog.name)
        .ok_or_else(|| format!("program {} not in object", prog.name))?;
    let describe = |e: &(dyn std::error::Error + 'static)| {
        if is_permission_error(e) {
            format!("{} (no permission)", error_chain(e))
        } else {
            error_chain(e)
        }
    };
    match attach {
        Attach::Raw(tp) => {
            let p: &mut RawTracePoint = p.try_into().map_err(|e| describe(&e))?;
            p.load().map_err(|e| describe(&e))?;
            p.attach(tp).map_err(|e| describe(&e))?;
        }
        Attach::Tracepoint(cat, name) => {
            let p: &mut TracePoint = p.try_into().map_err(|e| describe(&e))?;
            p.load().map_err(|e| describe(&e))?;
            p.attach(cat, name).map_err(|e| describe(&e))?;
        }
        Attach::Btf(tp) => {
            let btf = btf.ok_or("the kernel's BTF is not loaded")?;
            let p: &mut BtfTracePoint = p.try_into().map_err(|e| describe(&e))?;
            p.load(tp, btf).map_err(|e| describe(&e))?;
            p.attach().map_err(|e| describe(&e))?;
        }
    }
    Ok(())
}

fn unload(ebpf: &mut Ebpf, name: &str) {
    if let Some(p) = ebpf.program_mut(name) {
        // Programs never loaded answer NotLoaded: nothing to undo.
        let _ = match p {
            aya::programs::Program::RawTracePoint(p) => p.unload(),
            aya::programs::Program::TracePoint(p) => p.unload(),
            aya::programs::Program::BtfTracePoint(p) => p.unload(),
            _ => Ok(()),
        };
    }
}

/// The benchmark's floor: loads the object and attaches only the two empty programs on
/// sys_enter/sys_exit. Detached when the returned object is dropped.
pub fn attach_floor(clock: bool) -> Result<Ebpf, ProbeError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::HIST, layout::hist_entries(nr_cpus()?) as u32)
        .load(EBPF_OBJECT)
        .map_err(load_error)?;
    let programs = if clock {
        [
            Program::raw(floor::CLOCK_ENTER, "sys_enter"),
            Program::raw(floor::CLOCK_EXIT, "sys_exit"),
        ]
    } else {
        [
            Program::raw(floor::ENTER, "sys_enter"),
            Program::raw(floor::EXIT, "sys_exit"),
        ]
    };
    for prog in &programs {
        attach_program(&mut ebpf, None, prog, None).map_err(ProbeError::Load)?;
    }
    Ok(ebpf)
}
