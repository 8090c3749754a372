//! The disk probe: block I/O latency per device and op from block_rq_issue /
//! block_rq_complete, as BTF tracepoints where the kernel's BTF allows, else as classic ones
//! (kernel side: `agent-ebpf/src/disk.rs`; contract: `agent_common::probes::disk`).

use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event, EventKind,
    layout::{self, Block, Index},
    probes::disk::{self as contract, BlockBtf, DiskTpOffsets, SLOTS, progs},
};
use aya::{Ebpf, maps::HashMap as BpfHashMap};

use super::{
    Globals, ProbeDef, ProbeState, Program, Rows, Section,
    btf::{Btf, BtfError},
    table,
    tracefs::{self, TracefsError},
};
use crate::{
    catalogue::MetricDef,
    histogram::LatencyStats,
    snapshot::{Metric, Tags},
};
use agent_core::events::{EventView, comm_str};

pub const OPS: [&str; contract::OPS] = ["read", "write", "other"];
/// Device tag of the last slot, shared by devices beyond the first `SLOTS - 1`.
pub const OTHER_DEVICE: &str = "other";
/// `op` tag of the catch-all row: device × op pairs first seen once every row was taken.
pub const OTHER_PAIRS_OP: &str = "any";
const REFRESH_EVERY: Duration = Duration::from_secs(10);

pub const OPS_DONE: MetricDef = MetricDef::counter(
    "disk.ops",
    &["device", "op"],
    "block requests completed (`op` = read, write, other: flush, discard)",
);
pub const BYTES: MetricDef =
    MetricDef::counter("disk.bytes", &["device", "op"], "bytes of those requests");
pub const LATENCY: MetricDef = MetricDef::latency(
    "disk.latency_us",
    &["device", "op"],
    "issue to completion (device time, as biolatency)",
);

const PROGRAMS: &[Program] = &[
    Program::tracepoint(progs::BLOCK_RQ_ISSUE, "block", "block_rq_issue"),
    Program::tracepoint(progs::BLOCK_RQ_COMPLETE, "block", "block_rq_complete"),
];

/// Preferred: no record built per event, and the request's address keys it in flight.
const PROGRAMS_BTF: &[Program] = &[
    Program::btf(progs::BTF_RQ_ISSUE, "block_rq_issue"),
    Program::btf(progs::BTF_RQ_COMPLETE, "block_rq_complete"),
];

pub struct Disk;

impl ProbeDef for Disk {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn block(&self) -> Block {
        layout::DISK
    }

    fn index(&self) -> Option<Index> {
        Some(layout::DISK_INDEX)
    }

    fn variants(&self) -> &'static [&'static [Program]] {
        &[PROGRAMS_BTF, PROGRAMS]
    }

    #[cfg(test)]
    fn maps(&self) -> &'static [MapSpec] {
        contract::MAPS
    }

    #[cfg(test)]
    fn globals(&self) -> &'static [GlobalSpec] {
        contract::GLOBALS
    }

    fn set_btf_globals(&self, btf: &Btf, g: &mut Globals) -> Result<(), BtfError> {
        g.set(contract::GLOBAL_BTF, &btf_offsets(btf)?);
        Ok(())
    }

    fn set_classic_globals(&self, tracefs: &Path, g: &mut Globals) -> Result<(), TracefsError> {
        g.set(contract::GLOBAL_TP, &read_offsets(tracefs)?);
        Ok(())
    }

    fn metrics(&self) -> &'static [MetricDef] {
        &[OPS_DONE, BYTES, LATENCY]
    }

    fn state(&self) -> Box<dyn ProbeState> {
        Box::new(DiskState::default())
    }

    fn watch_section(&self) -> Option<(&'static str, Section)> {
        Some(("disks", watch_section))
    }
}

pub fn read_offsets(tracefs: &Path) -> Result<DiskTpOffsets, TracefsError> {
    let mut o = DiskTpOffsets::UNSET;
    let tp = "block:block_rq_issue";
    let f = tracefs::format(tracefs, "block", "block_rq_issue")?;
    o.issue_dev = f.offset(tp, "dev", 4)?;
    o.issue_sector = f.offset(tp, "sector", 8)?;
    o.issue_bytes = f.offset(tp, "bytes", 4)?;
    o.issue_rwbs = f.offset(tp, "rwbs", 8)?;
    let tp = "block:block_rq_complete";
    let f = tracefs::format(tracefs, "block", "block_rq_complete")?;
    o.complete_dev = f.offset(tp, "dev", 4)?;
    o.complete_sector = f.offset(tp, "sector", 8)?;
    Ok(o)
}

/// What the BTF programs read of `struct request` (and the queue and disk it points to), as
/// the block tracepoints themselves do: `dev` from `rq->q->disk`, bytes `__data_len`, the op
/// the low bits of `cmd_flags`.
pub fn btf_offsets(btf: &Btf) -> Result<BlockBtf, BtfError> {
    // REQ_OP_BITS is a macro; the first request flag bit is defined as it.
    let op_bits = btf.enumerator("__REQ_FAILFAST_DEV")?;
    if !(1..=16).contains(&op_bits) {
        return Err(BtfError::NoEnumerator(format!(
            "__REQ_FAILFAST_DEV in 1..=16 (is {op_bits})"
        )));
    }
    let op = |name: &str| -> Result<u32, BtfError> {
        let v = btf.enumerator(name)?;
        u32::try_from(v).map_err(|_| BtfError::NoEnumerator(format!("{name} ≥ 0 (is {v})")))
    };
    Ok(BlockBtf {
        rq_q: btf.member_sized("request", "q", 8)?,
        rq_cmd_flags: btf.member_sized("request", "cmd_flags", 4)?,
        rq_data_len: btf.member_sized("request", "__data_len", 4)?,
        q_disk: btf.member_sized("request_queue", "disk", 8)?,
        disk_major: btf.member_sized("gendisk", "major", 4)?,
        disk_first_minor: btf.member_sized("gendisk", "first_minor", 4)?,
        op_mask: (1u32 << op_bits) - 1,
        op_read: op("REQ_OP_READ")?,
        op_write: op("REQ_OP_WRITE")?,
        _pad: 0,
    })
}

/// The kernel's internal dev_t encoding (MKDEV), as block tracepoints report it.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

/// Whole block devices from /sys/block: (name, kernel dev), real disks before loop/ram/zram.
pub fn block_devices(sys_block: &Path) -> Vec<(String, u32)> {
    let mut devs: Vec<(String, u32)> = fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = fs::read_to_string(e.path().join("dev")).ok()?;
            let (ma, mi) = text.trim().split_once(':')?;
            Some((name, kernel_dev(ma.parse().ok()?, mi.parse().ok()?)))
        })
        .collect();
    let virtual_dev =
        |n: &str| n.starts_with("loop") || n.starts_with("ram") || n.starts_with("zram");
    devs.sort_by(|a, b| (virtual_dev(&a.0), &a.0).cmp(&(virtual_dev(&b.0), &b.0)));
    devs
}

/// Device → histogram slot assignment, kept in the kernel's DISK_SLOTS map.
struct DiskState {
    /// Device name of each slot; the last slot is [`OTHER_DEVICE`].
    names: Vec<Option<String>>,
    slots: HashMap<u32, usize>,
    last_refresh: Option<Instant>,
}

impl Default for DiskState {
    fn default() -> Self {
        let mut names = vec![None; SLOTS];
        names[SLOTS - 1] = Some(OTHER_DEVICE.to_string());
        Self {
            names,
            slots: HashMap::new(),
            last_refresh: None,
        }
    }
}

impl DiskState {
    /// Gives new block devices a slot (hot-plugged ones are found within `REFRESH_EVERY`).
    fn refresh_slots(&mut self, ebpf: &mut Ebpf) {
        self.last_refresh = Some(Instant::now());
        let Some(map) = ebpf.map_mut(contract::MAP_SLOTS) else {
            return;
        };
        let Ok(mut map) = BpfHashMap::<_, u32, u32>::try_from(map) else {
            return;
        };
        for (name, dev) in block_devices(Path::new("/sys/block")) {
            if self.slots.contains_key(&dev) {
                continue;
            }
            let Some(slot) = self.names[..SLOTS - 1].iter().position(Option::is_none) else {
                break; // full: further devices share the "other" slot
            };
            if let Err(e) = map.insert(dev, slot as u32, 0) {
                tracing::warn!("disk slot for {name}: {e}");
                continue;
            }
            self.names[slot] = Some(name);
            self.slots.insert(dev, slot);
        }
    }

    fn maybe_refresh(&mut self, ebpf: &mut Ebpf) {
        if self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
        {
            self.refresh_slots(ebpf);
        }
    }

    /// (slot, device name) of every slot in use, the shared "other" slot included.
    fn slot_names(&self) -> impl Iterator<Item = (usize, &str)> {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_deref().map(|n| (i, n)))
    }

    /// Name of a kernel dev for events; falls back to major:minor.
    fn device_name(&self, dev: u32) -> String {
        match self.slots.get(&dev).and_then(|&s| self.names[s].clone()) {
            Some(n) => n,
            None => format!("{}:{}", dev >> 20, dev & 0xfffff),
        }
    }
}

/// `disk.ops`, `disk.bytes` and `disk.latency_us.*` of one row's delta.
fn push_row(d: &[u64; layout::ROW_LEN], tags: Tags, out: &mut Vec<Metric>) {
    out.push(OPS_DONE.count(tags.clone(), d[layout::CELL_COUNT]));
    out.push(BYTES.count(tags.clone(), d[layout::CELL_AUX]));
    if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
        LATENCY.latency_of(&s, &tags, out);
    }
}

impl ProbeState for DiskState {
    fn attached(&mut self, ebpf: &mut Ebpf) {
        self.refresh_slots(ebpf);
    }

    /// `disk.ops`, `disk.bytes`, `disk.latency_us.*` per device and op with I/O in the interval.
    fn collect(&mut self, ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>) {
        self.maybe_refresh(ebpf);
        for (slot, name) in self.slot_names() {
            for (op, op_name) in OPS.iter().enumerate() {
                let Some(d) = rows.delta(contract::key(slot, op as u32)) else {
                    continue;
                };
                let tags: Tags = vec![("device", name.to_string()), ("op", op_name.to_string())];
                push_row(d, tags, out);
            }
        }
        // Device × op pairs first seen once every row was taken (`layout::Index`).
        if let Some(d) = rows.delta(contract::KEYS) {
            let tags: Tags = vec![
                ("device", OTHER_DEVICE.to_string()),
                ("op", OTHER_PAIRS_OP.to_string()),
            ];
            push_row(d, tags, out);
        }
    }

    fn keys(&self) -> Vec<(&'static str, Tags, usize)> {
        let mut keys = Vec::new();
        for (slot, device) in self.slot_names() {
            for (op, op_name) in OPS.iter().enumerate() {
                let tags = vec![("device", device.to_string()), ("op", op_name.to_string())];
                keys.push((LATENCY.name, tags, contract::key(slot, op as u32)));
            }
        }
        let tags = vec![
            ("device", OTHER_DEVICE.to_string()),
            ("op", OTHER_PAIRS_OP.to_string()),
        ];
        keys.push((LATENCY.name, tags, contract::KEYS));
        keys
    }

    fn event(&self, e: &Event) -> Option<EventView> {
        if EventKind::from_u32(e.kind)? != EventKind::SlowDisk {
            return None;
        }
        let op = OPS.get(e.op as usize).copied().unwrap_or("other");
        Some(EventView {
            kind: "slow_disk",
            pid: e.pid,
            tid: e.tid,
            comm: comm_str(&e.comm),
            latency_us: e.latency_ns as f64 / 1000.0,
            target: format!("{} {op}", self.device_name(e.key)),
            ret: Some(e.ret),
        })
    }
}

// ---- its section of `watch` ----

use crate::snapshot::tags_include;
use crate::watch::{
    layout::Line,
    model::{Scale, mark, named, sparkline},
    sections::{
        DISK_BYTES, DISK_FAMILY, DISK_LATENCY_P50, DISK_LATENCY_P99, DISK_OPS, SectionCtx, marked,
        probe_down, table_head,
    },
};
use agent_core::format::{self, Style::Column};

/// Busy devices and ops: rates, throughput, p50/p99 and a sparkline of the last minute.
fn watch_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, Disk.name(), "DISKS") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let head = format!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}  ",
        "device op", "ops/s", "MB/s", "p50 µs", "p99 µs"
    );
    let (head, spark_w) = table_head(head, "ops/s", snap, width);
    let mut out = vec![Line::plain("DISKS"), head];
    // Devices busy now or within the window.
    let mut keys: Vec<(String, String)> = snap
        .metrics
        .iter()
        .filter(|m| m.name == DISK_OPS)
        .filter_map(|m| Some((m.tag("device")?.to_string(), m.tag("op")?.to_string())))
        .collect();
    for tags in h.active(DISK_OPS) {
        let tag = |k: &str| tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.clone());
        if let (Some(dev), Some(op)) = (tag("device"), tag("op")) {
            keys.push((dev, op));
        }
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        out.push(Line::plain("  (no block I/O in the last minute)"));
    }
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format::number(v, Column));
    for (dev, op) in keys {
        let tags = [("device", dev.as_str()), ("op", op.as_str())];
        let ops = snap.value(DISK_OPS, &tags).unwrap_or(0.0);
        let bytes = snap.value(DISK_BYTES, &tags).unwrap_or(0.0);
        let m = mark(snap, |a| {
            named(a, DISK_FAMILY) && tags_include(&a.tags, &tags)
        });
        out.push(Line::marked(
            m,
            format!(
                "{:<22}{:>10}{:>10}{:>10}{:>10}  {}",
                marked(m, &format!("{dev} {op}")),
                format::count(ops / secs),
                format::sig(bytes / secs / 1e6, Column),
                num(snap.value(DISK_LATENCY_P50, &tags)),
                num(snap.value(DISK_LATENCY_P99, &tags)),
                sparkline(&h.points(DISK_OPS, &tags), spark_w, Scale::FromZero)
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_block_devices() {
        let devs = block_devices(Path::new("/sys/block"));
        assert!(!devs.is_empty());
        // Real disks come before virtual ones.
        if let Some(first_virtual) = devs
            .iter()
            .position(|(n, _)| n.starts_with("loop") || n.starts_with("zram"))
        {
            assert!(
                devs[first_virtual..]
                    .iter()
                    .all(|(n, _)| n.starts_with("loop")
                        || n.starts_with("zram")
                        || n.starts_with("ram"))
            );
        }
    }

    #[test]
    fn renders_slow_requests_with_the_device_name() {
        let mut e = super::super::tests_support::event(EventKind::SlowDisk);
        e.op = 1;
        let v = Disk.state().event(&e).unwrap();
        // No slot for this dev: named by major:minor.
        assert_eq!(
            v.target,
            format!("{}:{} write", e.key >> 20, e.key & 0xfffff)
        );
        e.kind = EventKind::SlowSyscall as u32;
        assert!(Disk.state().event(&e).is_none());
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(254, 0), 254 << 20);
        assert_eq!(kernel_dev(8, 17), (8 << 20) | 17);
    }
}
