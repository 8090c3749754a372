//! Block I/O latency per device and op: tracepoints block:block_rq_issue / block_rq_complete,
//! as BTF tracepoints where the kernel's BTF allows, else as classic ones.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{BlockBtf, TpOffsets, layout, maps::progs};
use aya::{Ebpf, maps::HashMap as BpfHashMap};

use super::{
    Attach, Program,
    btf::{Btf, BtfError},
    table::{self, HistTable, RowDiff},
    tracefs::{self, TracefsError},
};
use crate::{histogram::LatencyStats, snapshot::Metric};

pub const PROGRAMS: &[Program] = &[
    Program {
        name: progs::BLOCK_RQ_ISSUE,
        attach: Attach::Tracepoint("block", "block_rq_issue"),
    },
    Program {
        name: progs::BLOCK_RQ_COMPLETE,
        attach: Attach::Tracepoint("block", "block_rq_complete"),
    },
];

/// Preferred: no record built per event, and the request's address keys it in flight.
pub const PROGRAMS_BTF: &[Program] = &[
    Program {
        name: progs::BTF_RQ_ISSUE,
        attach: Attach::Btf("block_rq_issue"),
    },
    Program {
        name: progs::BTF_RQ_COMPLETE,
        attach: Attach::Btf("block_rq_complete"),
    },
];

pub const OPS: [&str; layout::DISK_OPS] = ["read", "write", "other"];
/// Device tag of the last slot, shared by devices beyond the first `DISK_SLOTS - 1`.
pub const OTHER_DEVICE: &str = "other";
const REFRESH_EVERY: Duration = Duration::from_secs(10);

pub fn read_offsets(tracefs: &Path, o: &mut TpOffsets) -> Result<(), TracefsError> {
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
    Ok(())
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
pub struct DiskProbe {
    /// Device name of each slot; the last slot is [`OTHER_DEVICE`].
    names: Vec<Option<String>>,
    slots: HashMap<u32, usize>,
    last_refresh: Option<Instant>,
}

impl Default for DiskProbe {
    fn default() -> Self {
        let mut names = vec![None; layout::DISK_SLOTS];
        names[layout::DISK_SLOTS - 1] = Some(OTHER_DEVICE.to_string());
        Self {
            names,
            slots: HashMap::new(),
            last_refresh: None,
        }
    }
}

impl DiskProbe {
    /// Gives new block devices a slot (hot-plugged ones are found within `REFRESH_EVERY`).
    pub fn refresh_slots(&mut self, ebpf: &mut Ebpf) {
        self.last_refresh = Some(Instant::now());
        let Some(map) = ebpf.map_mut(agent_common::maps::DISK_SLOTS) else {
            return;
        };
        let Ok(mut map) = BpfHashMap::<_, u32, u32>::try_from(map) else {
            return;
        };
        for (name, dev) in block_devices(Path::new("/sys/block")) {
            if self.slots.contains_key(&dev) {
                continue;
            }
            let Some(slot) = self.names[..layout::DISK_SLOTS - 1]
                .iter()
                .position(Option::is_none)
            else {
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

    pub fn maybe_refresh(&mut self, ebpf: &mut Ebpf) {
        if self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
        {
            self.refresh_slots(ebpf);
        }
    }

    /// `disk.ops`, `disk.bytes`, `disk.latency_us.*` per device and op with I/O in the interval.
    pub fn collect(&self, t: &HistTable, diff: &mut RowDiff, out: &mut Vec<Metric>) {
        for (slot, name) in self.slot_names() {
            for (op, op_name) in OPS.iter().enumerate() {
                let Some(d) = diff.delta(t, layout::disk_row(slot, op as u32)) else {
                    continue;
                };
                let tags = vec![("device", name.to_string()), ("op", op_name.to_string())];
                out.push(Metric::counter(
                    "disk.ops",
                    tags.clone(),
                    d[layout::CELL_COUNT],
                ));
                out.push(Metric::counter(
                    "disk.bytes",
                    tags.clone(),
                    d[layout::CELL_AUX],
                ));
                if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM])
                {
                    s.push_us("disk.latency_us", &tags, out);
                }
            }
        }
    }

    /// (slot, device name) of every slot in use, the shared "other" slot included.
    pub fn slot_names(&self) -> impl Iterator<Item = (usize, &str)> {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_deref().map(|n| (i, n)))
    }

    /// Name of a kernel dev for events; falls back to major:minor.
    pub fn device_name(&self, dev: u32) -> String {
        match self.slots.get(&dev).and_then(|&s| self.names[s].clone()) {
            Some(n) => n,
            None => format!("{}:{}", dev >> 20, dev & 0xfffff),
        }
    }
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
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(254, 0), 254 << 20);
        assert_eq!(kernel_dev(8, 17), (8 << 20) | 17);
    }
}
