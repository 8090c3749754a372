//! System metrics from /proc (memory, swap, CPU, PSI, load).
//!
//! [`ProcfsCollector`] reads a proc tree under a configurable root (`/proc` by default, `/host/proc`
//! in a container, a fixture tree in tests) with the `procfs` crate's parsers and appends one
//! interval's metrics to the snapshot's list. It needs no BPF and no privileges.
//!
//! Each file is a group: a group whose file is missing or unparsable is skipped for that interval
//! and logged once (the first time only). Counters are per-interval deltas: the first call (or the
//! first after a failed read) only primes them, and a counter that goes backwards counts 0.
//!
//! Health: [`ProcfsCollector::health`] reports, per source file, whether it was read this interval
//! (`agent.procfs_up{source}`) and how many values were dropped as NaN, infinite or negative
//! (`agent.procfs_dropped{source}`); [`ProcfsCollector::any_read`] is the probe's `probe_up`.
//!
//! The files are read here (bounded, ASCII only, as the kernel writes them) and only then handed
//! to the crate's parsers, each run under `catch_unwind`: a malformed file is reported as such
//! (with its path) and skipped, never a crash of the agent.

use std::io::Read as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[cfg(test)]
use procfs::Meminfo;
use procfs::{
    CpuPressure, CpuTime, FromRead, FromReadSI, IoPressure, KernelStats, LoadAverage,
    PressureRecord, ProcError, ProcResult,
};
use tracing::{debug, warn};

use crate::{
    catalogue::{MetricDef, agent as self_metrics},
    snapshot::Metric,
};

// ---- the metric families read from /proc (the typed catalogue) ----

pub const MEM_TOTAL: MetricDef = MetricDef::gauge("mem.total_bytes", &[], "MemTotal");
pub const MEM_AVAILABLE: MetricDef = MetricDef::gauge("mem.available_bytes", &[], "MemAvailable");
pub const MEM_FREE: MetricDef = MetricDef::gauge("mem.free_bytes", &[], "MemFree");
pub const MEM_USED: MetricDef = MetricDef::gauge(
    "mem.used_bytes",
    &[],
    "total − free − buffers − cached (classic `free`)",
);
pub const MEM_CACHED: MetricDef = MetricDef::gauge("mem.cached_bytes", &[], "Cached");
pub const MEM_BUFFERS: MetricDef = MetricDef::gauge("mem.buffers_bytes", &[], "Buffers");
pub const MEM_DIRTY: MetricDef = MetricDef::gauge("mem.dirty_bytes", &[], "Dirty");
pub const MEM_WRITEBACK: MetricDef = MetricDef::gauge("mem.writeback_bytes", &[], "Writeback");
pub const SWAP_TOTAL: MetricDef = MetricDef::gauge("swap.total_bytes", &[], "SwapTotal");
pub const SWAP_USED: MetricDef = MetricDef::gauge("swap.used_bytes", &[], "SwapTotal − SwapFree");
pub const SWAP_IN: MetricDef = MetricDef::counter("swap.in_pages", &[], "pswpin (/proc/vmstat)");
pub const SWAP_OUT: MetricDef = MetricDef::counter("swap.out_pages", &[], "pswpout (/proc/vmstat)");
pub const CPU_USER: MetricDef =
    MetricDef::gauge("cpu.user_pct", &[], "user and nice share of all CPU time");
pub const CPU_SYSTEM: MetricDef = MetricDef::gauge(
    "cpu.system_pct",
    &[],
    "system, irq and softirq share of all CPU time",
);
pub const CPU_IOWAIT: MetricDef =
    MetricDef::gauge("cpu.iowait_pct", &[], "iowait share of all CPU time");
pub const CPU_STEAL: MetricDef =
    MetricDef::gauge("cpu.steal_pct", &[], "steal share of all CPU time");
pub const CPU_IDLE: MetricDef = MetricDef::gauge("cpu.idle_pct", &[], "idle share of all CPU time");
pub const LOAD_1: MetricDef = MetricDef::gauge("load.1", &[], "load average over 1 minute");
pub const LOAD_5: MetricDef = MetricDef::gauge("load.5", &[], "load average over 5 minutes");
pub const LOAD_15: MetricDef = MetricDef::gauge("load.15", &[], "load average over 15 minutes");

/// `psi.<resource>.<some|full>_avg10`, by resource (as [`PSI_RESOURCES`]) and line.
pub const PSI_AVG10: [[MetricDef; 2]; 3] = [
    [
        MetricDef::gauge("psi.cpu.some_avg10", &[], "pressure"),
        MetricDef::gauge("psi.cpu.full_avg10", &[], "pressure"),
    ],
    [
        MetricDef::gauge("psi.io.some_avg10", &[], "pressure"),
        MetricDef::gauge("psi.io.full_avg10", &[], "pressure"),
    ],
    [
        MetricDef::gauge("psi.memory.some_avg10", &[], "pressure"),
        MetricDef::gauge("psi.memory.full_avg10", &[], "pressure"),
    ],
];
/// `psi.<resource>.<some|full>_stall_us`, as [`PSI_AVG10`].
pub const PSI_STALL: [[MetricDef; 2]; 3] = [
    [
        MetricDef::counter("psi.cpu.some_stall_us", &[], "stall time"),
        MetricDef::counter("psi.cpu.full_stall_us", &[], "stall time"),
    ],
    [
        MetricDef::counter("psi.io.some_stall_us", &[], "stall time"),
        MetricDef::counter("psi.io.full_stall_us", &[], "stall time"),
    ],
    [
        MetricDef::counter("psi.memory.some_stall_us", &[], "stall time"),
        MetricDef::counter("psi.memory.full_stall_us", &[], "stall time"),
    ],
];

/// Every family above.
pub fn metrics() -> Vec<MetricDef> {
    let mut v = vec![
        MEM_TOTAL,
        MEM_AVAILABLE,
        MEM_FREE,
        MEM_USED,
        MEM_CACHED,
        MEM_BUFFERS,
        MEM_DIRTY,
        MEM_WRITEBACK,
        SWAP_TOTAL,
        SWAP_USED,
        SWAP_IN,
        SWAP_OUT,
        CPU_USER,
        CPU_SYSTEM,
        CPU_IOWAIT,
        CPU_STEAL,
        CPU_IDLE,
        LOAD_1,
        LOAD_5,
        LOAD_15,
    ];
    v.extend(PSI_AVG10.iter().flatten());
    v.extend(PSI_STALL.iter().flatten());
    v
}

/// Where the kernel mounts procfs. In a container, mount the host's at e.g. `/host/proc`.
pub const DEFAULT_ROOT: &str = "/proc";

/// The PSI resources read from `<root>/pressure/`, in emission order.
const PSI_RESOURCES: [&str; 3] = ["cpu", "io", "memory"];

/// The files read, as the `source` tag of the health metrics names them.
const SOURCES: [&str; 7] = [
    "meminfo",
    "vmstat",
    "stat",
    "loadavg",
    "pressure_cpu",
    "pressure_io",
    "pressure_memory",
];
const MEMINFO: usize = 0;
const VMSTAT: usize = 1;
const STAT: usize = 2;
const LOADAVG: usize = 3;
/// `PSI_SOURCE + i` for [`PSI_RESOURCES`]`[i]`.
const PSI_SOURCE: usize = 4;

/// Largest /proc file read (the kernel's are a few KiB; a fixture or a wrong root could be
/// anything).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a source gave no values this interval.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed ({0})")]
    Malformed(String),
}

impl From<ProcError> for SourceError {
    fn from(e: ProcError) -> Self {
        match e {
            ProcError::Io(e, _) => SourceError::Io(e),
            ProcError::NotFound(_) => {
                SourceError::Io(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
            // The crate calls any unexpected input its own bug ("please report this procfs
            // bug"): here it is the file that is wrong.
            ProcError::InternalError(e) => SourceError::Malformed(e.msg),
            ProcError::Other(m) => SourceError::Malformed(m),
            other => SourceError::Malformed(other.to_string()),
        }
    }
}

/// The text of a /proc file: at most [`MAX_FILE_BYTES`], ASCII only (the kernel writes nothing
/// else in these files, and the crate's parsers slice by byte offsets).
fn read_source(path: &Path) -> Result<String, SourceError> {
    let mut f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.by_ref()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SourceError::Malformed(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    if let Some(at) = bytes.iter().position(|b| !b.is_ascii()) {
        return Err(SourceError::Malformed(format!(
            "a byte that is not ASCII at offset {at}"
        )));
    }
    Ok(String::from_utf8(bytes).expect("ASCII is UTF-8"))
}

/// Runs one of the crate's parsers; a panic inside it becomes a malformed-file error.
fn contained<T>(parse: impl FnOnce() -> ProcResult<T>) -> Result<T, SourceError> {
    match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(r) => r.map_err(SourceError::from),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(SourceError::Malformed(format!(
                "the parser panicked: {msg}"
            )))
        }
    }
}

/// Reads and parses one source.
fn parse_file<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> ProcResult<T>,
) -> Result<T, SourceError> {
    let text = read_source(path)?;
    contained(|| parse(text.as_bytes()))
}

/// `pswpin` and `pswpout` of /proc/vmstat. Only these two lines are parsed: the crate's parser
/// built a map of every line's name (about 180 strings) each interval.
fn swap_pages(text: &str) -> Result<(u64, u64), SourceError> {
    let (mut pswpin, mut pswpout) = (None, None);
    for line in text.lines() {
        let Some((key, v)) = line.split_once(' ') else {
            continue;
        };
        let slot = match key {
            "pswpin" => &mut pswpin,
            "pswpout" => &mut pswpout,
            _ => continue,
        };
        let n: i64 = v
            .trim()
            .parse()
            .map_err(|_| SourceError::Malformed(format!("`{line}` is not a page count")))?;
        // As the crate read them (i64); page counters are never negative.
        *slot = Some(u64::try_from(n).unwrap_or(0));
    }
    let get = |v: Option<u64>, key: &str| {
        v.ok_or_else(|| SourceError::Malformed(format!("no `{key}` line")))
    };
    Ok((get(pswpin, "pswpin")?, get(pswpout, "pswpout")?))
}

/// The /proc/meminfo lines the metrics use, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct MemBytes {
    mem_total: u64,
    mem_free: u64,
    /// Since Linux 3.14.
    mem_available: Option<u64>,
    buffers: u64,
    cached: u64,
    dirty: u64,
    writeback: u64,
    swap_total: u64,
    swap_free: u64,
}

/// Parses /proc/meminfo as the crate's `Meminfo` does (every line `Key: value [unit]`, units
/// converted to bytes, the last of a repeated key wins) but keeps only the lines used: the
/// crate built a map of all ~55 lines' names each interval, a seventh of the idle agent's
/// instructions. Lines the metrics do not use need not be there.
fn mem_bytes(text: &str) -> Result<MemBytes, SourceError> {
    let bad = |line: &str, what: &str| SourceError::Malformed(format!("`{line}`: {what}"));
    let mut m = MemBytes::default();
    let (mut total, mut free, mut buffers, mut cached) = (None, None, None, None);
    let (mut dirty, mut writeback, mut swap_total, mut swap_free) = (None, None, None, None);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(field), Some(value)) = (words.next(), words.next()) else {
            return Err(bad(line, "no value"));
        };
        let value: u64 = value.parse().map_err(|_| bad(line, "not a number"))?;
        let scale: u64 = match words.next() {
            None | Some("B") => 1,
            Some("KiB" | "kiB" | "kB" | "KB") => 1 << 10,
            Some("MiB" | "miB" | "MB" | "mB") => 1 << 20,
            Some("GiB" | "giB" | "GB" | "gB") => 1 << 30,
            Some(_) => return Err(bad(line, "unknown unit")),
        };
        let bytes = value
            .checked_mul(scale)
            .ok_or_else(|| bad(line, "too large"))?;
        let Some(key) = field.strip_suffix(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemFree" => &mut free,
            "MemAvailable" => &mut m.mem_available,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            "Dirty" => &mut dirty,
            "Writeback" => &mut writeback,
            "SwapTotal" => &mut swap_total,
            "SwapFree" => &mut swap_free,
            _ => continue,
        };
        *slot = Some(bytes);
    }
    let get = |v: Option<u64>, key: &str| {
        v.ok_or_else(|| SourceError::Malformed(format!("no `{key}` line")))
    };
    m.mem_total = get(total, "MemTotal")?;
    m.mem_free = get(free, "MemFree")?;
    m.buffers = get(buffers, "Buffers")?;
    m.cached = get(cached, "Cached")?;
    m.dirty = get(dirty, "Dirty")?;
    m.writeback = get(writeback, "Writeback")?;
    m.swap_total = get(swap_total, "SwapTotal")?;
    m.swap_free = get(swap_free, "SwapFree")?;
    Ok(m)
}

/// A value the kernel cannot have written (NaN, infinite, negative) is dropped and counted.
fn plausible(x: f32, dropped: &mut u64) -> Option<f32> {
    if x.is_finite() && x >= 0.0 {
        Some(x)
    } else {
        *dropped += 1;
        None
    }
}

/// Per-interval collector of system metrics from a proc tree.
#[derive(Debug)]
pub struct ProcfsCollector {
    root: PathBuf,
    /// Aggregate `cpu` line of the previous successful read of `stat`.
    prev_cpu: Option<CpuTicks>,
    /// `pswpin`, `pswpout` of the previous successful read of `vmstat`.
    prev_swap_pages: Option<(u64, u64)>,
    /// `total=` (µs) of the previous read, per PSI resource, for `some` and `full`.
    prev_psi: [[Option<u64>; 2]; 3],
    warned: Warned,
    /// `<root>/pressure` is absent (kernel without PSI, or booted with `psi=0`): said once at debug.
    psi_absent_logged: bool,
    /// Per source, in the last interval: read (`Some(true)`), failed (`Some(false)`), or not
    /// expected (`None`: PSI on a kernel without it).
    up: [Option<bool>; SOURCES.len()],
    /// Per source, values dropped in the last interval (NaN, infinite, negative).
    dropped: [u64; SOURCES.len()],
}

/// One flag per group: a failing file is logged at the first failure only.
#[derive(Debug, Default)]
struct Warned {
    meminfo: bool,
    vmstat: bool,
    stat: bool,
    loadavg: bool,
    psi: [bool; 3],
}

/// CPU time of the aggregate `cpu` line, in ticks, folded into the reported buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTicks {
    /// user + nice (guest and guest_nice are already counted in these two).
    user: u64,
    /// system + irq + softirq.
    system: u64,
    iowait: u64,
    steal: u64,
    idle: u64,
}

impl From<&CpuTime> for CpuTicks {
    fn from(t: &CpuTime) -> Self {
        // Fields the kernel does not report (very old kernels) count as 0.
        Self {
            user: t.user.saturating_add(t.nice),
            system: t
                .system
                .saturating_add(t.irq.unwrap_or(0))
                .saturating_add(t.softirq.unwrap_or(0)),
            iowait: t.iowait.unwrap_or(0),
            steal: t.steal.unwrap_or(0),
            idle: t.idle,
        }
    }
}

impl Default for ProcfsCollector {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT)
    }
}

impl ProcfsCollector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            prev_cpu: None,
            prev_swap_pages: None,
            prev_psi: [[None; 2]; 3],
            warned: Warned::default(),
            psi_absent_logged: false,
            up: [None; SOURCES.len()],
            dropped: [0; SOURCES.len()],
        }
    }

    /// Whether the last [`collect`](Self::collect) read any source: the probe's `probe_up`.
    pub fn any_read(&self) -> bool {
        self.up.contains(&Some(true))
    }

    /// The last interval's health: `agent.procfs_up{source}` for every source expected, and
    /// `agent.procfs_dropped{source}` where values were dropped.
    pub fn health(&self, out: &mut Vec<Metric>) {
        for (i, source) in SOURCES.into_iter().enumerate() {
            if let Some(up) = self.up[i] {
                out.push(
                    self_metrics::PROCFS_UP.level(vec![("source", source.into())], up as u8 as f64),
                );
            }
            if self.dropped[i] > 0 {
                out.push(
                    self_metrics::PROCFS_DROPPED
                        .count(vec![("source", source.into())], self.dropped[i]),
                );
            }
        }
    }

    /// The proc tree this collector reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Appends this interval's metrics. The first call primes the deltas (counters are emitted only
    /// from the second call on; gauges always).
    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        self.up = [None; SOURCES.len()];
        self.dropped = [0; SOURCES.len()];
        self.collect_meminfo(out);
        self.collect_vmstat(out);
        self.collect_cpu(out);
        self.collect_psi(out);
        self.collect_loadavg(out);
    }

    fn collect_meminfo(&mut self, out: &mut Vec<Metric>) {
        let path = self.root.join("meminfo");
        let m = match read_source(&path).and_then(|text| mem_bytes(&text)) {
            Ok(m) => m,
            Err(e) => {
                self.up[MEMINFO] = Some(false);
                return warn_once(&mut self.warned.meminfo, "memory and swap", &path, &e);
            }
        };
        self.up[MEMINFO] = Some(true);
        let gauge = |def: MetricDef, bytes: u64| def.level(vec![], bytes as f64);
        // Classic `free` (procps-ng up to 4.0.0): used = MemTotal - MemFree - Buffers - Cached.
        // (procps-ng 4.0.1+ prints total - available instead; mem.available_bytes carries that.)
        let used = m
            .mem_total
            .saturating_sub(m.mem_free)
            .saturating_sub(m.buffers)
            .saturating_sub(m.cached);
        out.push(gauge(MEM_TOTAL, m.mem_total));
        // MemAvailable exists since Linux 3.14; older kernels lack it and the metric is left out.
        if let Some(available) = m.mem_available {
            out.push(gauge(MEM_AVAILABLE, available));
        }
        out.push(gauge(MEM_FREE, m.mem_free));
        out.push(gauge(MEM_USED, used));
        out.push(gauge(MEM_CACHED, m.cached));
        out.push(gauge(MEM_BUFFERS, m.buffers));
        out.push(gauge(MEM_DIRTY, m.dirty));
        out.push(gauge(MEM_WRITEBACK, m.writeback));
        // No active swap reports SwapTotal 0 and SwapFree 0: both gauges are 0, never omitted.
        out.push(gauge(SWAP_TOTAL, m.swap_total));
        out.push(gauge(SWAP_USED, m.swap_total.saturating_sub(m.swap_free)));
    }

    fn collect_vmstat(&mut self, out: &mut Vec<Metric>) {
        let path = self.root.join("vmstat");
        let read = read_source(&path).and_then(|text| swap_pages(&text));
        let (pswpin, pswpout) = match read {
            Ok(pages) => pages,
            Err(e) => {
                self.up[VMSTAT] = Some(false);
                self.prev_swap_pages = None;
                return warn_once(&mut self.warned.vmstat, "swap paging", &path, &e);
            }
        };
        self.up[VMSTAT] = Some(true);
        if let Some((prev_in, prev_out)) = self.prev_swap_pages {
            out.push(SWAP_IN.count(vec![], pswpin.saturating_sub(prev_in)));
            out.push(SWAP_OUT.count(vec![], pswpout.saturating_sub(prev_out)));
        }
        self.prev_swap_pages = Some((pswpin, pswpout));
    }

    fn collect_cpu(&mut self, out: &mut Vec<Metric>) {
        let path = self.root.join("stat");
        // The system info only serves the crate's tick-to-ms helpers; ratios of ticks need none.
        let read = parse_file(&path, |text| {
            KernelStats::from_read(text, procfs::current_system_info())
        });
        let stats = match read {
            Ok(s) => s,
            Err(e) => {
                self.up[STAT] = Some(false);
                self.prev_cpu = None;
                return warn_once(&mut self.warned.stat, "CPU", &path, &e);
            }
        };
        self.up[STAT] = Some(true);
        let now = CpuTicks::from(&stats.total);
        let Some(prev) = self.prev_cpu else {
            self.prev_cpu = Some(now);
            return;
        };
        // Each bucket separately: iowait is documented to go backwards at times. The denominator is
        // the sum of the bucket deltas, so the five percentages add up to 100.
        let d = CpuTicks {
            user: now.user.saturating_sub(prev.user),
            system: now.system.saturating_sub(prev.system),
            iowait: now.iowait.saturating_sub(prev.iowait),
            steal: now.steal.saturating_sub(prev.steal),
            idle: now.idle.saturating_sub(prev.idle),
        };
        let total = d.user + d.system + d.iowait + d.steal + d.idle;
        if total == 0 {
            // Less than a tick since the previous read: nothing to divide; keep the older sample so
            // the next interval covers this one too.
            return;
        }
        let pct = |ticks: u64| 100.0 * ticks as f64 / total as f64;
        out.push(CPU_USER.level(vec![], pct(d.user)));
        out.push(CPU_SYSTEM.level(vec![], pct(d.system)));
        out.push(CPU_IOWAIT.level(vec![], pct(d.iowait)));
        out.push(CPU_STEAL.level(vec![], pct(d.steal)));
        out.push(CPU_IDLE.level(vec![], pct(d.idle)));
        self.prev_cpu = Some(now);
    }

    fn collect_psi(&mut self, out: &mut Vec<Metric>) {
        let dir = self.root.join("pressure");
        if !dir.is_dir() {
            // Not an error: kernels before 4.20, CONFIG_PSI=n, or booted with psi=0.
            if !self.psi_absent_logged {
                self.psi_absent_logged = true;
                debug!(
                    "{} is absent: no PSI metrics (kernel without PSI or booted with psi=0)",
                    dir.display()
                );
            }
            self.prev_psi = [[None; 2]; 3];
            return;
        }
        for (i, resource) in PSI_RESOURCES.into_iter().enumerate() {
            let path = dir.join(resource);
            let records = read_source(&path).and_then(|text| contained(|| parse_pressure(&text)));
            let (some, full) = match records {
                Ok(r) => r,
                Err(e) => {
                    self.up[PSI_SOURCE + i] = Some(false);
                    self.prev_psi[i] = [None; 2];
                    warn_once(&mut self.warned.psi[i], "PSI", &path, &e);
                    continue;
                }
            };
            self.up[PSI_SOURCE + i] = Some(true);
            for (j, record) in [Some(some), full].into_iter().enumerate() {
                let prev = &mut self.prev_psi[i][j];
                let Some(record) = record else {
                    *prev = None;
                    continue;
                };
                if let Some(avg10) = plausible(record.avg10, &mut self.dropped[PSI_SOURCE + i]) {
                    out.push(PSI_AVG10[i][j].level(vec![], two_decimals(avg10)));
                }
                if let Some(p) = *prev {
                    out.push(PSI_STALL[i][j].count(vec![], record.total.saturating_sub(p)));
                }
                *prev = Some(record.total);
            }
        }
    }

    fn collect_loadavg(&mut self, out: &mut Vec<Metric>) {
        let path = self.root.join("loadavg");
        let load = match parse_file(&path, |t| LoadAverage::from_read(t)) {
            Ok(l) => l,
            Err(e) => {
                self.up[LOADAVG] = Some(false);
                return warn_once(&mut self.warned.loadavg, "load", &path, &e);
            }
        };
        self.up[LOADAVG] = Some(true);
        for (def, x) in [
            (LOAD_1, load.one),
            (LOAD_5, load.five),
            (LOAD_15, load.fifteen),
        ] {
            if let Some(x) = plausible(x, &mut self.dropped[LOADAVG]) {
                out.push(def.level(vec![], two_decimals(x)));
            }
        }
    }
}

/// Parses a PSI file: a `some` line, then a `full` line where the kernel has one.
///
/// `/proc/pressure/cpu` has a `full` line since Linux 5.13 (all zeros at the system level) and none
/// before; the crate's `CpuPressure` reads only `some`, and `IoPressure`/`MemoryPressure` require
/// both. So the two-line parser is tried first and the one-line parser is the fallback.
fn parse_pressure(text: &str) -> ProcResult<(PressureRecord, Option<PressureRecord>)> {
    // The crate slices `line[5..]` after checking only the `some`/`full` prefix: a truncated or
    // garbled line would panic inside it. Reject those here.
    let well_formed = text.lines().all(|l| {
        !(l.starts_with("some") || l.starts_with("full")) || l.as_bytes().get(4) == Some(&b' ')
    });
    if !well_formed {
        return Err(ProcError::Other("malformed PSI line".into()));
    }
    match IoPressure::from_read(text.as_bytes()) {
        Ok(p) => Ok((p.some, Some(p.full))),
        Err(_) => CpuPressure::from_read(text.as_bytes()).map(|p| (p.some, None)),
    }
}

/// The crate parses load and PSI averages as `f32`; widening 0.92f32 gives 0.9200000166893005.
/// The kernel prints two decimals, so rounding to two restores the exact value it wrote.
fn two_decimals(x: f32) -> f64 {
    (f64::from(x) * 100.0).round() / 100.0
}

fn warn_once(flag: &mut bool, group: &str, path: &Path, err: &SourceError) {
    if !*flag {
        *flag = true;
        match err {
            SourceError::Io(_) => warn!(
                "{}: {err}; {group} metrics are skipped while it stays unreadable \
                 (check that the proc root points at a mounted procfs)",
                path.display()
            ),
            SourceError::Malformed(_) => warn!(
                "{} is {err}; {group} metrics are skipped while it stays so",
                path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Kind;

    const KIB: f64 = 1024.0;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/proc")
            .join(name)
    }

    fn collect(c: &mut ProcfsCollector) -> Vec<Metric> {
        let mut out = Vec::new();
        c.collect(&mut out);
        // Every name at most once, no tags.
        for (i, m) in out.iter().enumerate() {
            assert!(m.tags.is_empty(), "{m:?}");
            assert!(
                out[..i].iter().all(|o| o.name != m.name),
                "duplicate {}",
                m.name
            );
        }
        out
    }

    fn get<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {out:#?}"))
    }

    fn gauge(out: &[Metric], name: &str) -> f64 {
        let m = get(out, name);
        assert_eq!(m.kind, Kind::Gauge, "{name}");
        m.value
    }

    fn counter(out: &[Metric], name: &str) -> f64 {
        let m = get(out, name);
        assert_eq!(m.kind, Kind::Counter, "{name}");
        m.value
    }

    fn names(out: &[Metric]) -> Vec<&str> {
        out.iter().map(|m| &*m.name).collect()
    }

    const COUNTERS: [&str; 8] = [
        "swap.in_pages",
        "swap.out_pages",
        "psi.cpu.some_stall_us",
        "psi.cpu.full_stall_us",
        "psi.io.some_stall_us",
        "psi.io.full_stall_us",
        "psi.memory.some_stall_us",
        "psi.memory.full_stall_us",
    ];

    #[test]
    fn procfs_fixture_first_call_gauges_only() {
        let mut c = ProcfsCollector::new(fixture("t0"));
        let out = collect(&mut c);
        assert!(out.iter().all(|m| m.kind == Kind::Gauge), "{out:#?}");
        assert!(!names(&out).iter().any(|n| n.starts_with("cpu.")));
        assert_eq!(gauge(&out, "mem.total_bytes"), 24_684_092.0 * KIB);
        // 24684092 - 22660852 - 10848 - 1828408
        assert_eq!(gauge(&out, "mem.used_bytes"), 183_984.0 * KIB);
        assert_eq!(gauge(&out, "mem.writeback_bytes"), 128.0 * KIB);
        // 2097148 - 2031612
        assert_eq!(gauge(&out, "swap.used_bytes"), 65_536.0 * KIB);
        assert_eq!(gauge(&out, "psi.cpu.some_avg10"), 0.55);
        assert_eq!(gauge(&out, "psi.io.full_avg10"), 0.22);
        assert_eq!(gauge(&out, "load.1"), 0.92);
        assert_eq!(out.len(), 10 + 6 + 3, "{:?}", names(&out));
    }

    #[test]
    fn emits_exactly_its_catalogue() {
        let mut c = ProcfsCollector::new(fixture("t0"));
        collect(&mut c);
        c.root = fixture("t1");
        let out = collect(&mut c);
        let catalogue = metrics();
        for m in &out {
            let def = catalogue.iter().find(|d| d.produces(&m.name));
            let def = def.unwrap_or_else(|| panic!("{} is not in the catalogue", m.name));
            assert_eq!(m.kind, def.kind(), "{}", m.name);
        }
        // The fixture has every source, PSI `full` lines included: every family shows.
        for d in &catalogue {
            assert!(
                out.iter().any(|m| d.produces(&m.name)),
                "{} never emitted",
                d.name
            );
        }
    }

    #[test]
    fn procfs_fixture_two_samples_exact() {
        let mut c = ProcfsCollector::new(fixture("t0"));
        collect(&mut c);
        c.root = fixture("t1");
        let out = collect(&mut c);

        // Memory: kB × 1024.
        assert_eq!(gauge(&out, "mem.total_bytes"), 24_684_092.0 * KIB);
        assert_eq!(gauge(&out, "mem.available_bytes"), 24_280_300.0 * KIB);
        assert_eq!(gauge(&out, "mem.free_bytes"), 22_599_412.0 * KIB);
        // used = 24684092 - 22599412 - 10852 - 1861176
        assert_eq!(gauge(&out, "mem.used_bytes"), 212_652.0 * KIB);
        assert_eq!(gauge(&out, "mem.cached_bytes"), 1_861_176.0 * KIB);
        assert_eq!(gauge(&out, "mem.buffers_bytes"), 10_852.0 * KIB);
        assert_eq!(gauge(&out, "mem.dirty_bytes"), 4_096.0 * KIB);
        assert_eq!(gauge(&out, "mem.writeback_bytes"), 0.0);
        assert_eq!(gauge(&out, "swap.total_bytes"), 2_097_148.0 * KIB);
        // 2097148 - 2029564
        assert_eq!(gauge(&out, "swap.used_bytes"), 67_584.0 * KIB);

        // vmstat: pswpin 1200 → 1208, pswpout 3400 → 3432.
        assert_eq!(counter(&out, "swap.in_pages"), 8.0);
        assert_eq!(counter(&out, "swap.out_pages"), 32.0);

        // /proc/stat aggregate deltas (user nice system idle iowait irq softirq steal guest gnice):
        // 250 50 70 525 50 10 20 25 40 0. Denominator without guest: 1000 ticks.
        // user = 250 + 50, system = 70 + 10 + 20.
        assert_eq!(gauge(&out, "cpu.user_pct"), 30.0);
        assert_eq!(gauge(&out, "cpu.system_pct"), 10.0);
        assert_eq!(gauge(&out, "cpu.iowait_pct"), 5.0);
        assert_eq!(gauge(&out, "cpu.steal_pct"), 2.5);
        assert_eq!(gauge(&out, "cpu.idle_pct"), 52.5);

        // PSI: avg10 as written; stall = delta of total= (µs).
        assert_eq!(gauge(&out, "psi.cpu.some_avg10"), 1.25);
        assert_eq!(gauge(&out, "psi.cpu.full_avg10"), 0.0);
        assert_eq!(gauge(&out, "psi.io.some_avg10"), 0.47);
        assert_eq!(gauge(&out, "psi.io.full_avg10"), 0.36);
        assert_eq!(gauge(&out, "psi.memory.some_avg10"), 0.12);
        assert_eq!(gauge(&out, "psi.memory.full_avg10"), 0.05);
        assert_eq!(counter(&out, "psi.cpu.some_stall_us"), 10_000.0);
        assert_eq!(counter(&out, "psi.cpu.full_stall_us"), 0.0);
        assert_eq!(counter(&out, "psi.io.some_stall_us"), 5_000.0);
        assert_eq!(counter(&out, "psi.io.full_stall_us"), 3_000.0);
        assert_eq!(counter(&out, "psi.memory.some_stall_us"), 1_500.0);
        assert_eq!(counter(&out, "psi.memory.full_stall_us"), 700.0);

        assert_eq!(gauge(&out, "load.1"), 1.04);
        assert_eq!(gauge(&out, "load.5"), 0.74);
        assert_eq!(gauge(&out, "load.15"), 0.35);

        // 10 memory/swap gauges, 2 swap counters, 5 cpu, 6 + 6 psi, 3 load: nothing else.
        assert_eq!(out.len(), 32, "{:?}", names(&out));
    }

    #[test]
    fn procfs_counters_going_backwards_count_zero() {
        let mut c = ProcfsCollector::new(fixture("t1"));
        collect(&mut c);
        c.root = fixture("t0");
        let out = collect(&mut c);
        for name in COUNTERS {
            assert_eq!(counter(&out, name), 0.0, "{name}");
        }
        // Every CPU bucket went backwards: no elapsed ticks, so no percentages this interval.
        assert!(!names(&out).iter().any(|n| n.starts_with("cpu.")));
    }

    #[test]
    fn procfs_without_pressure_dir_no_psi_and_zero_swap() {
        let mut c = ProcfsCollector::new(fixture("nopsi"));
        collect(&mut c);
        let out = collect(&mut c);
        assert!(
            !names(&out).iter().any(|n| n.starts_with("psi.")),
            "{out:#?}"
        );
        assert!(c.psi_absent_logged);
        assert!(!c.warned.psi.iter().any(|&w| w));
        // This machine has no active swap: zeros are reported, not skipped.
        assert_eq!(gauge(&out, "swap.total_bytes"), 0.0);
        assert_eq!(gauge(&out, "swap.used_bytes"), 0.0);
        assert_eq!(counter(&out, "swap.in_pages"), 0.0);
        assert_eq!(counter(&out, "swap.out_pages"), 0.0);
        // Same file twice: no ticks elapsed, so no CPU percentages.
        assert!(!names(&out).iter().any(|n| n.starts_with("cpu.")));
        assert!(gauge(&out, "mem.total_bytes") > 0.0);
    }

    #[test]
    fn procfs_missing_root_skips_everything_and_warns_once_per_group() {
        let mut c = ProcfsCollector::new("/nonexistent/proc");
        for _ in 0..3 {
            assert!(collect(&mut c).is_empty());
        }
        let w = &c.warned;
        assert!(w.meminfo && w.vmstat && w.stat && w.loadavg);
        // No pressure/ directory either: that is "no PSI", not a failure.
        assert!(!w.psi.iter().any(|&w| w));
    }

    #[test]
    fn procfs_failed_read_reprimes_counters() {
        let mut c = ProcfsCollector::new(fixture("t0"));
        collect(&mut c);
        c.root = PathBuf::from("/nonexistent/proc");
        collect(&mut c);
        c.root = fixture("t1");
        let out = collect(&mut c);
        // The delta would span the gap: primed again instead.
        assert!(out.iter().all(|m| m.kind == Kind::Gauge), "{out:#?}");
    }

    #[test]
    fn vmstat_swap_pages_and_bad_lines() {
        let text = "nr_free_pages 123\npswpin 1200\npswpout 3400\nnr_dirty 7\n";
        assert_eq!(swap_pages(text).unwrap(), (1200, 3400));
        for bad in ["pswpin 1\n", "pswpout 1\n", "", "pswpin x\npswpout 2\n"] {
            assert!(
                matches!(swap_pages(bad), Err(SourceError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Lines the agent does not use are not checked.
        assert_eq!(swap_pages("junk\npswpin 0\npswpout 5\n").unwrap(), (0, 5));
    }

    #[test]
    fn procfs_pressure_parsing() {
        // Before Linux 5.13, /proc/pressure/cpu has no `full` line.
        let (some, full) =
            parse_pressure("some avg10=0.55 avg60=3.20 avg300=2.55 total=16252298\n").unwrap();
        assert_eq!(some.total, 16_252_298);
        assert!(full.is_none());
        let (_, full) = parse_pressure(
            "some avg10=0.31 avg60=0.52 avg300=0.42 total=3297094\n\
             full avg10=0.22 avg60=0.42 avg300=0.35 total=2841129\n",
        )
        .unwrap();
        assert_eq!(full.unwrap().total, 2_841_129);
        // Garbage is an error, never a panic (the crate would slice past the end of these).
        for bad in [
            "",
            "some",
            "full",
            "someé avg10=1",
            "some avg10=x",
            "nonsense\n",
        ] {
            assert!(parse_pressure(bad).is_err(), "{bad:?}");
        }
    }

    /// A temporary copy of a fixture tree, removed on drop.
    struct TempTree(PathBuf);

    impl TempTree {
        fn copy_of(name: &str, tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ebpf-agent-procfs-unit-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(&fixture(name), &dir);
            TempTree(dir)
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn health(c: &ProcfsCollector) -> Vec<(String, String, f64)> {
        let mut out = Vec::new();
        c.health(&mut out);
        out.iter()
            .map(|m| (m.name.to_string(), m.tags[0].1.clone(), m.value))
            .collect()
    }

    fn up_of(c: &ProcfsCollector, source: &str) -> f64 {
        health(c)
            .into_iter()
            .find(|(n, s, _)| n == "agent.procfs_up" && s == source)
            .unwrap_or_else(|| panic!("no procfs_up for {source}: {:?}", health(c)))
            .2
    }

    #[test]
    fn procfs_health_every_source_up_on_a_good_tree() {
        let mut c = ProcfsCollector::new(fixture("t0"));
        collect(&mut c);
        assert!(c.any_read());
        let h = health(&c);
        assert_eq!(h.len(), 7, "{h:?}");
        assert!(
            h.iter()
                .all(|(n, _, v)| n == "agent.procfs_up" && *v == 1.0)
        );
        // Without a pressure/ directory the PSI sources are not expected: not reported.
        let mut c = ProcfsCollector::new(fixture("nopsi"));
        collect(&mut c);
        assert_eq!(health(&c).len(), 4);
    }

    #[test]
    fn procfs_missing_root_is_down_per_source() {
        let mut c = ProcfsCollector::new("/nonexistent/proc");
        collect(&mut c);
        assert!(!c.any_read());
        for s in ["meminfo", "vmstat", "stat", "loadavg"] {
            assert_eq!(up_of(&c, s), 0.0, "{s}");
        }
    }

    #[test]
    fn procfs_non_ascii_meminfo_is_malformed_not_a_panic() {
        // The procfs crate panics on this line (it slices off the key's last byte, assuming `:`).
        let t = TempTree::copy_of("t0", "euro");
        let meminfo = std::fs::read_to_string(t.0.join("meminfo")).unwrap();
        let bad = meminfo.replacen("MemTotal:", "MemTotal\u{20ac}", 1);
        std::fs::write(t.0.join("meminfo"), bad).unwrap();
        let mut c = ProcfsCollector::new(&t.0);
        let out = collect(&mut c);
        assert!(
            !names(&out).iter().any(|n| n.starts_with("mem.")),
            "{out:#?}"
        );
        assert!(c.warned.meminfo);
        assert_eq!(up_of(&c, "meminfo"), 0.0);
        // The others keep going.
        assert_eq!(up_of(&c, "loadavg"), 1.0);
        assert_eq!(gauge(&out, "load.1"), 0.92);
        assert!(c.any_read());
    }

    /// The agent's meminfo parser reads what the crate's reads, on the fixtures and this host.
    #[test]
    fn meminfo_reads_as_the_crate_reads_it() {
        let paths = ["t0", "t1", "nopsi"]
            .map(|f| fixture(f).join("meminfo"))
            .into_iter()
            .chain([PathBuf::from("/proc/meminfo")]);
        for path in paths {
            let text = read_source(&path).unwrap();
            let c = Meminfo::from_read(text.as_bytes()).unwrap();
            let want = MemBytes {
                mem_total: c.mem_total,
                mem_free: c.mem_free,
                mem_available: c.mem_available,
                buffers: c.buffers,
                cached: c.cached,
                dirty: c.dirty,
                writeback: c.writeback,
                swap_total: c.swap_total,
                swap_free: c.swap_free,
            };
            assert_eq!(mem_bytes(&text).unwrap(), want, "{}", path.display());
            assert!(want.mem_total > 0, "{}", path.display());
        }
        let without_available = "MemTotal: 2 kB\nMemFree: 1 kB\nBuffers: 0 kB\nCached: 0 kB\n\
            Dirty: 0 kB\nWriteback: 0 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\nHugePages_Total: 3\n";
        let m = mem_bytes(without_available).unwrap();
        assert_eq!((m.mem_total, m.mem_available), (2048, None));
        for (bad, why) in [
            ("MemTotal:\n", "no value"),
            ("MemTotal: x kB\n", "not a number"),
            ("MemTotal: 1 TB\n", "unknown unit"),
            ("MemTotal: 18446744073709551615 kB\n", "too large"),
            ("MemTotal: 1 kB\n", "no `MemFree` line"),
        ] {
            let e = mem_bytes(bad).unwrap_err();
            assert!(
                matches!(e, SourceError::Malformed(_)) && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn procfs_internal_errors_and_panics_are_malformed_files() {
        // "no value": the crate's own "please report this procfs bug" error.
        let t = TempTree::copy_of("t0", "novalue");
        std::fs::write(t.0.join("meminfo"), "MemTotal:\n").unwrap();
        let e = parse_file(&t.0.join("meminfo"), |t| Meminfo::from_read(t)).unwrap_err();
        assert!(matches!(e, SourceError::Malformed(_)), "{e}");
        assert!(!e.to_string().contains("please report"), "{e}");
        let e = contained::<()>(|| panic!("end byte index 10 is not a char boundary")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed (the parser panicked: end byte index 10 is not a char boundary)"
        );
        // A file too large to be the kernel's is not read whole.
        std::fs::write(t.0.join("loadavg"), vec![b'1'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = read_source(&t.0.join("loadavg")).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn procfs_nan_inf_negative_values_are_dropped_and_counted() {
        let t = TempTree::copy_of("t0", "nan");
        std::fs::write(t.0.join("loadavg"), "nan -1.5 0.30 1/100 4242\n").unwrap();
        std::fs::write(
            t.0.join("pressure/io"),
            "some avg10=inf avg60=0.52 avg300=0.42 total=3297094\n\
             full avg10=0.22 avg60=0.42 avg300=0.35 total=2841129\n",
        )
        .unwrap();
        let mut c = ProcfsCollector::new(&t.0);
        let out = collect(&mut c);
        assert!(!names(&out).contains(&"load.1"));
        assert!(!names(&out).contains(&"load.5"));
        assert_eq!(gauge(&out, "load.15"), 0.3);
        assert!(!names(&out).contains(&"psi.io.some_avg10"));
        assert_eq!(gauge(&out, "psi.io.full_avg10"), 0.22);
        let dropped: Vec<(String, f64)> = health(&c)
            .into_iter()
            .filter(|(n, _, _)| n == "agent.procfs_dropped")
            .map(|(_, s, v)| (s, v))
            .collect();
        assert_eq!(
            dropped,
            [
                ("loadavg".to_string(), 2.0),
                ("pressure_io".to_string(), 1.0)
            ]
        );
        assert_eq!(up_of(&c, "loadavg"), 1.0);
    }

    #[test]
    fn procfs_real_proc_sanity() {
        let mut c = ProcfsCollector::default();
        collect(&mut c);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = collect(&mut c);
        assert!(gauge(&out, "mem.total_bytes") > 0.0);
        assert!(gauge(&out, "mem.used_bytes") <= gauge(&out, "mem.total_bytes"));
        assert!(gauge(&out, "swap.total_bytes") >= 0.0);
        assert!(gauge(&out, "swap.used_bytes") <= gauge(&out, "swap.total_bytes"));
        counter(&out, "swap.in_pages");
        let sum: f64 = ["user", "system", "iowait", "steal", "idle"]
            .iter()
            .map(|b| gauge(&out, &format!("cpu.{b}_pct")))
            .sum();
        assert!((sum - 100.0).abs() <= 1.0, "cpu pct sum {sum}");
        gauge(&out, "load.1");
        if Path::new("/proc/pressure/io").exists() {
            gauge(&out, "psi.io.some_avg10");
            counter(&out, "psi.io.some_stall_us");
        }
    }
}
