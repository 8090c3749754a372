//! Kernel probes: each probe is one module here ([`syscall`], [`disk`], [`tcp`]) implementing
//! [`ProbeDef`], plus one line in [`REGISTRY`]; its kernel side is the module of the same name
//! in `agent-ebpf`, and its contract the one in `agent_common::probes`. Everything else
//! (loading, attaching with fallbacks, reading the table, events, `check`, the settings'
//! switches, `watch`) works from the registry and never names a probe.
//!
//! A probe that cannot attach (missing tracepoint, verifier refusal) is detached whole, reported
//! down with one warning, and the others run. Without BPF privilege nothing loads and the agent
//! runs procfs-only.
//!
//! A probe may have several program sets: disk, tcp and runq prefer BTF tracepoints (kernel structs
//! read at offsets from the kernel's BTF, no per-event record, no tracefs) and fall back to the
//! classic tracepoints (field offsets from tracefs) when the BTF lacks a member or the BTF set
//! does not load.

mod btf;
pub(crate) mod cgroup;
pub(crate) mod disk;
pub(crate) mod events;
mod kernel;
pub(crate) mod klog;
pub(crate) mod runq;
pub(crate) mod syscall;
mod table;
pub(crate) mod tcp;
pub(crate) mod tracefs;

use std::{fmt, path::Path, str::FromStr};

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event,
    layout::{Block, Index},
};
use aya::Ebpf;

pub use self::kernel::{
    CLASSIC_ENV, Kernel, ProbeError, ProbeOptions, attach_floor, classic_forced,
};
use self::table::{HistTable, RowDiff, RowIndex};
pub(crate) use crate::watch::sections::Section;
use crate::{
    catalogue::MetricDef,
    snapshot::{Metric, Tags},
};
pub use agent_core::events::EventView;
pub use table::read_cost;

/// Every probe, in table order (`agent_common::layout` allocates their rows in the same order).
const REGISTRY: &[&dyn ProbeDef] = &[
    &syscall::Syscall,
    &disk::Disk,
    &tcp::Tcp,
    &runq::Runq,
    &cgroup::Cgroup,
];

/// What a probe is, to the rest of the agent. Implemented once per probe module.
pub trait ProbeDef: Sync {
    /// Its name in `--probes`, the `[enable]` table, `probe` tags and `check`.
    fn name(&self) -> &'static str;
    /// Its rows of the histogram table (`agent_common::layout`).
    fn block(&self) -> Block;
    /// Its row index, when its rows are claimed on first sight of a key (`layout::Index`): then
    /// [`Rows::delta`] takes keys, else rows of its block.
    fn index(&self) -> Option<Index> {
        None
    }
    /// The program sets that can serve it, preferred first; each attaches whole or not at all.
    fn variants(&self) -> &'static [&'static [Program]];
    /// Maps and load-time globals of its own, as the kernel object must declare them (checked
    /// against the built object by the contract test).
    #[cfg(test)]
    fn maps(&self) -> &'static [MapSpec] {
        &[]
    }
    #[cfg(test)]
    fn globals(&self) -> &'static [GlobalSpec] {
        &[]
    }
    /// Load-time globals every variant needs.
    fn set_globals(&self, _g: &mut Globals) {}
    /// Load-time globals of its BTF tracepoint variant, from the kernel's BTF (called when it
    /// has one; an error leaves that variant out).
    fn set_btf_globals(&self, _btf: &btf::Btf, _g: &mut Globals) -> Result<(), btf::BtfError> {
        Ok(())
    }
    /// Load-time globals of its classic tracepoint variant, from tracefs `format` files.
    fn set_classic_globals(
        &self,
        _tracefs: &Path,
        _g: &mut Globals,
    ) -> Result<(), tracefs::TracefsError> {
        Ok(())
    }
    /// The metric families it emits (the typed catalogue).
    fn metrics(&self) -> &'static [MetricDef];
    /// Fresh state for one load of the programs.
    fn state(&self) -> Box<dyn ProbeState>;
    /// Its section of a `watch` frame (name for "no room for: ...", and how to draw it), below
    /// the syscall table, in registry order.
    fn watch_section(&self) -> Option<(&'static str, Section)> {
        None
    }
}

/// A probe's userspace state while loaded: turns its rows into metrics and its ring-buffer
/// events into views.
pub trait ProbeState: Send {
    /// Its programs just attached.
    fn attached(&mut self, _ebpf: &mut Ebpf) {}
    /// Appends this interval's metrics from its rows (`rows.delta`), counters included.
    fn collect(&mut self, ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>);
    /// Every histogram key of its rows: (latency family, tags, key as [`Rows::delta`] takes
    /// it), for cumulative histograms (`watch`'s exit report).
    fn keys(&self) -> Vec<(&'static str, Tags, usize)>;
    /// Renders `e` if it is one of this probe's event kinds.
    fn event(&self, e: &Event) -> Option<EventView>;
}

/// A probe's view of the histogram table during [`ProbeState::collect`].
pub struct Rows<'a> {
    table: &'a HistTable,
    diff: &'a mut RowDiff,
    block: Block,
    index: Option<(Index, &'a RowIndex)>,
    /// The whole ROW_INDEX (indexes with their own layout).
    cells: &'a RowIndex,
}

/// Table row of `key`: a row of `block`, or through its index (`index.keys` = the catch-all).
/// `None` for a key never seen, or one that shares the catch-all.
fn key_row(block: Block, index: Option<(Index, &RowIndex)>, key: usize) -> Option<usize> {
    let Some((ix, map)) = index else {
        return (key < block.hist_rows()).then(|| block.row(key));
    };
    if key == ix.keys {
        return Some(block.row(ix.other()));
    }
    let r = map.row(ix, key)?;
    (r != ix.other()).then(|| block.row(r))
}

impl Rows<'_> {
    /// The change of the probe's key `i` (its histogram row `i`, or through its index the row
    /// of key `i`, `index.keys` being the catch-all) since the last interval, or `None` when
    /// nothing was recorded (one cache line per CPU read for an unchanged row).
    pub fn delta(&mut self, i: usize) -> Option<&[u64; agent_common::layout::ROW_LEN]> {
        let row = key_row(self.block, self.index, i)?;
        self.diff.delta(self.table, row)
    }

    /// The change of histogram row `i`, read whole (no bucket masks), when head cell `a` or `b`
    /// changed.
    pub fn delta_all(
        &mut self,
        i: usize,
        a: usize,
        b: usize,
    ) -> Option<&[u64; agent_common::layout::ROW_LEN]> {
        if i >= self.block.hist_rows() {
            return None;
        }
        self.diff.delta_all(self.table, self.block.row(i), a, b)
    }

    /// ROW_INDEX cell `cell`, as it is now.
    pub fn index_cell(&self, cell: usize) -> u64 {
        self.cells.cell(cell)
    }

    /// The whole ROW_INDEX, for an index userspace writes too (`probes::cgroup`).
    pub fn index(&self) -> &RowIndex {
        self.cells
    }

    /// Takes histogram row `i`'s current values (read whole) as its baseline.
    pub fn reprime_all(&mut self, i: usize) {
        if i < self.block.hist_rows() {
            self.diff.reprime_all(self.table, self.block.row(i));
        }
    }

    /// The change of counter cell `ctr` of the probe's counter row.
    pub fn counter(&mut self, ctr: usize) -> u64 {
        self.diff.counter(self.table, self.block.counters(), ctr)
    }
}

/// Load-time globals collected from every probe before loading (name, bytes).
#[derive(Default)]
pub struct Globals(Vec<(&'static str, Vec<u8>)>);

impl Globals {
    pub fn set<T: aya::Pod>(&mut self, name: &'static str, value: &T) {
        // SAFETY: `T: Pod` is plain data without padding bytes (the contract's structs have
        // explicit padding fields), so all its bytes are initialised.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, bytes.to_vec()));
    }

    fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.0.iter().map(|(n, b)| (*n, b.as_slice()))
    }
}

/// A kernel probe: a handle on its [`REGISTRY`] entry, ordered as the registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe(usize);

impl Probe {
    /// Every probe, in registry order.
    pub const ALL: [Probe; REGISTRY.len()] = {
        let mut all = [Probe(0); REGISTRY.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = Probe(i);
            i += 1;
        }
        all
    };

    pub fn def(self) -> &'static dyn ProbeDef {
        REGISTRY[self.0]
    }

    pub fn name(self) -> &'static str {
        self.def().name()
    }

    /// The names of every probe, for messages.
    pub fn names() -> Vec<&'static str> {
        Probe::ALL.iter().map(|p| p.name()).collect()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Probe {
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
            .ok_or_else(|| {
                format!(
                    "unknown probe `{s}` (expected one of: {})",
                    Probe::names().join(", ")
                )
            })
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

impl Program {
    pub const fn raw(name: &'static str, tracepoint: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Raw(tracepoint),
        }
    }

    pub const fn tracepoint(
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
    ) -> Self {
        Self {
            name,
            attach: Attach::Tracepoint(category, tracepoint),
        }
    }

    pub const fn btf(name: &'static str, tracepoint: &'static str) -> Self {
        Self {
            name,
            attach: Attach::Btf(tracepoint),
        }
    }
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

/// Whether a probe has a program set of BTF tracepoints / of classic tracepoints.
fn has_variant(probe: Probe, f: impl Fn(&Attach) -> bool) -> bool {
    probe
        .def()
        .variants()
        .iter()
        .any(|set| set.iter().any(|p| f(&p.attach)))
}

fn has_btf_variant(probe: Probe) -> bool {
    has_variant(probe, |a| matches!(a, Attach::Btf(_)))
}

/// The probes with a BTF tracepoint variant, in registry order.
pub(crate) fn btf_capable() -> Vec<Probe> {
    Probe::ALL
        .into_iter()
        .filter(|&p| has_btf_variant(p))
        .collect()
}

/// Their names for people: "disk, tcp and runq".
pub(crate) fn btf_capable_names() -> String {
    let names: Vec<&str> = btf_capable().iter().map(|p| p.name()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

pub(crate) fn has_classic_variant(probe: Probe) -> bool {
    has_variant(probe, |a| matches!(a, Attach::Tracepoint(..)))
}

/// Every metric family the probes emit.
pub fn metrics() -> impl Iterator<Item = &'static MetricDef> {
    Probe::ALL.into_iter().flat_map(|p| p.def().metrics())
}

#[cfg(test)]
mod contract_tests;

#[cfg(test)]
mod tests_support {
    use std::net::Ipv4Addr;

    use agent_common::{Event, EventKind};

    /// An event as the kernel sends it, from `curl`, of `kind`.
    pub fn event(kind: EventKind) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            kind: kind as u32,
            pid: 10,
            tid: 11,
            cpu: 0,
            latency_ns: 1_500_000,
            end_ns: 0,
            key: syscalls::Sysno::read as u32,
            op: 2,
            ret: -4,
            comm,
            saddr: Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets(),
            daddr: Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets(),
            sport: 40000,
            dport: 80,
            _pad: 0,
        }
    }
}
