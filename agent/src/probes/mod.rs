//! Kernel probes: load the embedded eBPF object, attach each probe on its own, and turn the
//! histogram table into per-interval metrics.
//!
//! A probe that cannot attach (missing tracepoint, verifier refusal) is detached whole, reported
//! down with one warning, and the others run. Without BPF privilege nothing loads and the agent
//! runs procfs-only.
//!
//! A probe may have several program sets: disk and tcp prefer BTF tracepoints (kernel structs
//! read at offsets from the kernel's BTF, no per-event record, no tracefs) and fall back to the
//! classic tracepoints (field offsets from tracefs) when the BTF lacks a member or the BTF set
//! does not load.

pub mod btf;
pub mod disk;
pub mod events;
pub mod syscall;
pub mod table;
pub mod tcp;
pub mod tracefs;

use std::{fmt, io, path::PathBuf, str::FromStr};

use agent_common::{BlockBtf, RuntimeConfig, TcpBtf, TpOffsets, layout, maps};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use thiserror::Error;

use crate::snapshot::{Metric, Tags};
use table::{HistTable, RowDiff};

/// The kernel programs, built by build.rs (aya-build) and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// The kernel probes, by the name used in `--probes` and in `probe` tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    Syscall,
    Disk,
    Tcp,
}

impl Probe {
    pub const ALL: [Probe; 3] = [Probe::Syscall, Probe::Disk, Probe::Tcp];

    pub fn name(self) -> &'static str {
        match self {
            Probe::Syscall => "syscall",
            Probe::Disk => "disk",
            Probe::Tcp => "tcp",
        }
    }

    /// The program sets that can serve this probe, preferred first.
    fn variants(self) -> &'static [&'static [Program]] {
        match self {
            Probe::Syscall => &[syscall::PROGRAMS],
            Probe::Disk => &[disk::PROGRAMS_BTF, disk::PROGRAMS],
            Probe::Tcp => &[tcp::PROGRAMS_BTF, tcp::PROGRAMS],
        }
    }

    /// Events-lost and in-flight-dropped counter cells of this probe.
    fn loss_counters(self) -> (usize, usize) {
        match self {
            Probe::Syscall => (
                layout::CTR_SYS_EVENTS_LOST,
                layout::CTR_SYS_INFLIGHT_DROPPED,
            ),
            Probe::Disk => (
                layout::CTR_DISK_EVENTS_LOST,
                layout::CTR_DISK_INFLIGHT_DROPPED,
            ),
            Probe::Tcp => (
                layout::CTR_TCP_EVENTS_LOST,
                layout::CTR_TCP_INFLIGHT_DROPPED,
            ),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Probe::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown probe `{s}` (expected syscall, disk or tcp)"))
    }
}

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// Raw tracepoint by name.
    Raw(&'static str),
    /// Classic tracepoint by category and name (needs tracefs).
    Tracepoint(&'static str, &'static str),
    /// BTF tracepoint (tp_btf) by tracepoint name (needs the kernel's BTF).
    Btf(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub attach: Attach,
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attach::Raw(tp) => write!(f, "raw_tracepoint:{tp}"),
            Attach::Tracepoint(c, n) => write!(f, "tracepoint:{c}:{n}"),
            Attach::Btf(tp) => write!(f, "tp_btf:{tp}"),
        }
    }
}

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

/// The loaded kernel side.
pub struct Kernel {
    ebpf: Ebpf,
    table: HistTable,
    diff: RowDiff,
    /// Probes asked for, and how attaching them went.
    status: Vec<ProbeStatus>,
    /// Probes whose classic tracepoints cannot be used (tracefs or formats missing), with why.
    classic_unavailable: Vec<(Probe, String)>,
    /// The probes whose BTF tracepoint programs can be used (every offset they read found in
    /// the kernel's BTF). aya's parse of the BTF, which attaching them needs, is made only
    /// while attaching: kept, it would double the agent's memory.
    btf_probes: Vec<Probe>,
    syscall: syscall::SyscallProbe,
    disk: disk::DiskProbe,
    tcp: tcp::TcpProbe,
    /// Keeps the kernel's BPF run-time statistics on while open (refcounted by the kernel, so
    /// closing it on exit restores the previous state, and other users are unaffected).
    stats_fd: Option<std::os::fd::OwnedFd>,
    /// Statistics are on for one interval out of this many (0 = never, 1 = always).
    stats_every: u32,
    stats_tick: u64,
    stats_warned: bool,
    /// Per program: (run time, run count, when read).
    prev_stats:
        std::collections::HashMap<&'static str, (std::time::Duration, u64, std::time::Instant)>,
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

impl Kernel {
    /// Loads the object and attaches the requested probes.
    pub fn load(opts: &ProbeOptions) -> Result<Kernel, ProbeError> {
        let ncpus = aya::util::nr_cpus()
            .map_err(|(path, e)| ProbeError::Load(format!("reading {path}: {e}")))?;
        raise_memlock_limit();
        // BTF tracepoints are preferred where the kernel's BTF has every member they read.
        let btf = prepare_btf();
        // The classic tracepoints' field offsets come from tracefs, read before load (they are
        // load-time globals) for every probe, so a probe switched on later by a reload can
        // attach too. tracefs is mounted only when a probe has no BTF tracepoints to use; when
        // it is there already, the offsets are read anyway, for a fallback.
        let mut offsets = TpOffsets::UNSET;
        let needs_tracefs = [Probe::Disk, Probe::Tcp]
            .iter()
            .any(|p| !btf.probes.contains(p));
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
        for probe in Probe::ALL {
            let prepared =
                match probe {
                    Probe::Syscall => Ok(()),
                    Probe::Disk => tracefs.as_ref().map_err(Clone::clone).and_then(|t| {
                        disk::read_offsets(t, &mut offsets).map_err(|e| e.to_string())
                    }),
                    Probe::Tcp => tracefs.as_ref().map_err(Clone::clone).and_then(|t| {
                        tcp::read_offsets(t, &mut offsets).map_err(|e| e.to_string())
                    }),
                };
            if let Err(e) = prepared {
                classic_unavailable.push((probe, e));
            }
        }

        let (nr_exit, nr_exit_group) = syscall::never_returning();
        let mut ebpf = EbpfLoader::new()
            .override_global(maps::GLOBAL_TP_OFFSETS, &offsets, true)
            .override_global(maps::GLOBAL_BLOCK_BTF, &btf.block, true)
            .override_global(maps::GLOBAL_TCP_BTF, &btf.tcp, true)
            .override_global(maps::GLOBAL_NR_EXIT, &nr_exit, true)
            .override_global(maps::GLOBAL_NR_EXIT_GROUP, &nr_exit_group, true)
            .map_max_entries(maps::HIST, layout::hist_entries(ncpus) as u32)
            .map_max_entries(maps::EVENTS, opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(load_error)?;

        let mut config: Array<_, RuntimeConfig> = Array::try_from(
            ebpf.map_mut(maps::CONFIG)
                .ok_or_else(|| ProbeError::Load("map CONFIG missing".into()))?,
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

        let mut diff = RowDiff::default();
        diff.prime(&table, 0..layout::ROWS);
        let mut kernel = Kernel {
            ebpf,
            table,
            diff,
            status: Vec::new(),
            classic_unavailable,
            btf_probes: btf.probes,
            syscall: syscall::SyscallProbe::default(),
            disk: disk::DiskProbe::default(),
            tcp: tcp::TcpProbe,
            stats_fd: None,
            stats_every: opts.bpf_stats_every,
            stats_tick: 0,
            stats_warned: false,
            prev_stats: Default::default(),
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
            let current = self.status.iter().position(|s| s.probe == probe);
            let want = wanted.contains(&probe);
            match (current, want) {
                (Some(i), false) => {
                    if self.status[i].result.is_ok() {
                        for prog in self.status[i].programs {
                            unload(&mut self.ebpf, prog.name);
                        }
                        tracing::info!("probe {probe} detached");
                    }
                    self.status.remove(i);
                }
                (Some(i), true) if self.status[i].result.is_ok() => {}
                (current, true) => {
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
                    let attached = attach_probe(&mut self.ebpf, probe, btf, no_classic);
                    let (result, programs) = match attached {
                        Ok(programs) => (Ok(()), programs),
                        Err(e) => (Err(e), &[][..]),
                    };
                    match &result {
                        Err(e) => tracing::warn!("probe {probe} disabled: {e}"),
                        Ok(()) => {
                            if probe == Probe::Disk {
                                self.disk.refresh_slots(&mut self.ebpf);
                            }
                            // Counts recorded while it was detached are none: re-prime anyway so
                            // a re-attached probe starts clean.
                            let rows = probe_rows(probe);
                            self.diff.prime(&self.table, rows);
                        }
                    }
                    let st = ProbeStatus {
                        probe,
                        result,
                        programs,
                    };
                    match current {
                        Some(i) => self.status[i] = st,
                        None => self.status.push(st),
                    }
                }
                (None, false) => {}
            }
        }
        self.status.sort_by_key(|s| s.probe);
        if aya_btf.take().is_some() {
            release_freed_memory();
        }
    }

    /// Forgets everything recorded so far: the next interval starts now.
    pub fn prime(&mut self) {
        self.diff.prime(&self.table, 0..layout::ROWS);
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    pub fn is_up(&self, probe: Probe) -> bool {
        self.status
            .iter()
            .any(|s| s.probe == probe && s.result.is_ok())
    }

    /// Changes the kernel-side settings while attached.
    pub fn set_runtime(&mut self, cfg: RuntimeConfig) -> Result<(), aya::maps::MapError> {
        let mut config: Array<_, RuntimeConfig> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).expect("CONFIG map exists"))?;
        config.set(0, cfg, 0)
    }

    /// Takes the ring buffer (once), for [`events::EventStream`].
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        RingBuf::try_from(self.ebpf.take_map(maps::EVENTS)?).ok()
    }

    /// Appends this interval's kernel metrics.
    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        if self.is_up(Probe::Syscall) {
            self.syscall.collect(&self.table, &mut self.diff, out);
        }
        if self.is_up(Probe::Disk) {
            self.disk.maybe_refresh(&mut self.ebpf);
            self.disk.collect(&self.table, &mut self.diff, out);
        }
        if self.is_up(Probe::Tcp) {
            self.tcp.collect(&self.table, &mut self.diff, out);
        }
        for s in &self.status {
            let tags: Tags = vec![("probe", s.probe.name().to_string())];
            if s.result.is_ok() {
                let (lost, dropped) = s.probe.loss_counters();
                let lost = self.diff.counter(&self.table, lost);
                let dropped = self.diff.counter(&self.table, dropped);
                out.push(Metric::counter("agent.events_lost", tags.clone(), lost));
                out.push(Metric::counter(
                    "agent.inflight_dropped",
                    tags.clone(),
                    dropped,
                ));
            }
        }
        self.collect_bpf_stats(out);
        let read_errors = self.diff.counter(&self.table, layout::CTR_READ_ERRORS);
        if read_errors > 0 {
            tracing::warn!("{read_errors} tracepoint field reads failed in the last interval");
        }
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
        let now = std::time::Instant::now();
        for s in self.status.iter().filter(|s| s.result.is_ok()) {
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
                        out.push(Metric::gauge(
                            "agent.bpf_ns_per_event",
                            tags.clone(),
                            ns / events as f64,
                        ));
                    }
                    if wall > 0.0 {
                        out.push(Metric::gauge("agent.bpf_cpu_pct", tags, ns / wall * 100.0));
                    }
                }
            }
        }
    }

    /// Cumulative rows (since load) of every histogram key with samples: (latency family, tags,
    /// row cells in `layout` order).
    pub fn cumulative_rows(&self) -> Vec<(&'static str, Tags, Vec<u64>)> {
        let mut out = Vec::new();
        let mut push = |name, tags, row: usize| {
            if self.table.total(row, layout::CELL_COUNT) > 0 {
                let mut cells = [0u64; layout::ROW_LEN];
                self.table.row_total(row, &mut cells);
                out.push((name, tags, cells.to_vec()));
            }
        };
        for nr in 0..layout::MAX_SYSCALLS {
            push(
                "syscall.latency_us",
                vec![("syscall", syscall::name(nr))],
                layout::ROW_SYSCALL0 + nr,
            );
        }
        for (slot, device) in self.disk.slot_names() {
            for (op, op_name) in disk::OPS.iter().enumerate() {
                let tags = vec![("device", device.to_string()), ("op", op_name.to_string())];
                push("disk.latency_us", tags, layout::disk_row(slot, op as u32));
            }
        }
        push("tcp.rtt_us", vec![], layout::ROW_TCP_RTT);
        push("tcp.connect_latency_us", vec![], layout::ROW_TCP_CONNECT);
        out
    }

    /// Name of a block device from its kernel dev number.
    pub fn device_name(&self, dev: u32) -> String {
        self.disk.device_name(dev)
    }

    /// Kernel memory held by the agent's maps, from the kernel's own accounting
    /// (`memlock` in /proc/self/fdinfo of each map).
    pub fn map_memory_bytes(&self) -> u64 {
        self.ebpf
            .maps()
            .filter_map(|(_, map)| map_data(map))
            .map(|data| fdinfo_memlock(data).unwrap_or(0))
            .sum()
    }
}

/// Whether `kernel.bpf_stats_enabled` is on (set by the operator, systemd or another tool).
fn stats_sysctl_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// Lifts the locked-memory limit: kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later
/// ones to the memory cgroup). Best effort: without the privilege, loading says what failed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("RLIMIT_MEMLOCK unchanged: {}", io::Error::last_os_error());
    }
}

/// Histogram and counter rows written by `probe`'s programs.
fn probe_rows(probe: Probe) -> std::ops::Range<usize> {
    match probe {
        Probe::Syscall => layout::ROW_SYSCALL0..layout::ROW_DISK0,
        Probe::Disk => layout::ROW_DISK0..layout::ROW_TCP_RTT,
        Probe::Tcp => layout::ROW_TCP_RTT..layout::ROW_COUNTERS,
    }
}

/// (run time, run count) of a loaded program, from the kernel.
fn program_stats(ebpf: &Ebpf, name: &str) -> Option<(std::time::Duration, u64)> {
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
    let sets: Vec<&'static [Program]> = probe.variants().iter().filter(usable).copied().collect();
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
        if let Err(e) = attach_program(ebpf, probe, prog, btf) {
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

/// The kernel's BTF and the offsets read from it (zeros where missing), and the probes that
/// can use them.
struct BtfPrep {
    block: BlockBtf,
    tcp: TcpBtf,
    probes: Vec<Probe>,
}

fn prepare_btf() -> BtfPrep {
    let mut prep = BtfPrep {
        block: BlockBtf::default(),
        tcp: TcpBtf::default(),
        probes: Vec::new(),
    };
    let classic = "disk and tcp use classic tracepoints";
    if classic_forced() {
        tracing::info!("{CLASSIC_ENV}=1: {classic}");
        return prep;
    }
    let ours = match btf::Btf::from_file(std::path::Path::new(btf::VMLINUX)) {
        Ok(b) => b,
        Err(e) => {
            tracing::info!("BTF tracepoints unavailable ({e}): {classic}");
            return prep;
        }
    };
    let why = |probe: Probe, e: btf::BtfError| {
        tracing::info!("probe {probe}: {e}; using classic tracepoints");
    };
    match disk::btf_offsets(&ours) {
        Ok(o) => {
            prep.block = o;
            prep.probes.push(Probe::Disk);
        }
        Err(e) => why(Probe::Disk, e),
    }
    match tcp::btf_offsets(&ours) {
        Ok(o) => {
            prep.tcp = o;
            prep.probes.push(Probe::Tcp);
        }
        Err(e) => why(Probe::Tcp, e),
    }
    prep
}

/// aya's parse of the kernel's BTF, which loading a BTF tracepoint program needs.
fn load_aya_btf() -> Option<aya::Btf> {
    aya::Btf::from_sys_fs()
        .inspect_err(|e| {
            tracing::info!(
                "parsing {}: {e}; disk and tcp use classic tracepoints",
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

fn broken(probe: Probe) -> bool {
    std::env::var(BREAK_PROBE_ENV).is_ok_and(|v| v.split(',').any(|p| p == probe.name()))
}

fn attach_program(
    ebpf: &mut Ebpf,
    probe: Probe,
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
    let ncpus = aya::util::nr_cpus()
        .map_err(|(path, e)| ProbeError::Load(format!("reading {path}: {e}")))?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::HIST, layout::hist_entries(ncpus) as u32)
        .load(EBPF_OBJECT)
        .map_err(load_error)?;
    let programs = if clock {
        [
            ("floor_clock_enter", "sys_enter"),
            ("floor_clock_exit", "sys_exit"),
        ]
    } else {
        [("floor_enter", "sys_enter"), ("floor_exit", "sys_exit")]
    };
    for (name, tp) in programs {
        attach_program(
            &mut ebpf,
            Probe::Syscall,
            &Program {
                name,
                attach: Attach::Raw(tp),
            },
            None,
        )
        .map_err(ProbeError::Load)?;
    }
    Ok(ebpf)
}
