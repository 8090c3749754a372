//! Block I/O latency per device and op: block_rq_issue / block_rq_complete, as BTF tracepoints
//! (fields read from `struct request` at offsets from the kernel's BTF) or classic ones (record
//! fields at offsets from tracefs).

use crate::maps::{GlobalSpec, MapSpec};

/// Block devices with their own rows; the last slot gathers every device beyond the others.
pub const SLOTS: usize = 32;
pub const OPS: usize = 3;
pub const OP_READ: u32 = 0;
pub const OP_WRITE: u32 = 1;
/// Flush, discard, and anything that is neither read nor write.
pub const OP_OTHER: u32 = 2;
/// Keys of the probe's row index: one per slot and op.
pub const KEYS: usize = SLOTS * OPS;
/// Slot × op pairs with a row of their own, claimed on first sight (`layout::DISK_INDEX`): a
/// host does I/O on a few devices; pairs first seen after these are taken share the catch-all.
pub const DISK_ROWS: usize = 32;
/// The pairs' rows, the catch-all row, then the counter row.
pub const ROWS: usize = DISK_ROWS + 2;

/// Index key of a device slot and op.
#[inline(always)]
pub const fn key(slot: usize, op: u32) -> usize {
    slot * OPS + op as usize
}

pub mod progs {
    pub const BLOCK_RQ_ISSUE: &str = "block_rq_issue";
    pub const BLOCK_RQ_COMPLETE: &str = "block_rq_complete";
    /// The same two as BTF tracepoints (preferred: no record to build, fields read directly).
    pub const BTF_RQ_ISSUE: &str = "btf_rq_issue";
    pub const BTF_RQ_COMPLETE: &str = "btf_rq_complete";
}

/// In-flight block requests: array probed from [`DiskInflight::slot`].
pub const MAP_INFLIGHT: &str = "DISK_INFLIGHT";
/// Block device number to histogram slot, filled by userspace from /sys/block.
pub const MAP_SLOTS: &str = "DISK_SLOTS";
/// Load-time global holding [`DiskTpOffsets`].
pub const GLOBAL_TP: &str = "DISK_TP";
/// Load-time global holding [`BlockBtf`].
pub const GLOBAL_BTF: &str = "BLOCK_BTF";

/// Size of the in-flight table (a power of two). 4096 × 56 bytes = 224 KiB.
pub const INFLIGHT_BITS: u32 = 12;
pub const INFLIGHT_ENTRIES: u32 = 1 << INFLIGHT_BITS;
/// Entries of [`MAP_SLOTS`]: room for every slot, with a hash map's slack.
pub const SLOTS_ENTRIES: u32 = 2 * SLOTS as u32;

pub const MAPS: &[MapSpec] = &[
    MapSpec {
        name: MAP_INFLIGHT,
        value_size: size_of::<DiskInflight>(),
        max_entries: INFLIGHT_ENTRIES,
    },
    MapSpec {
        name: MAP_SLOTS,
        value_size: 4,
        max_entries: SLOTS_ENTRIES,
    },
];
pub const GLOBALS: &[GlobalSpec] = &[
    GlobalSpec {
        name: GLOBAL_TP,
        size: size_of::<DiskTpOffsets>(),
    },
    GlobalSpec {
        name: GLOBAL_BTF,
        size: size_of::<BlockBtf>(),
    },
];

/// An in-flight block request, in an array slot (a hash-map update costs several hundred ns
/// per request here; an array slot is a plain store). The BTF tracepoints key a request by its
/// `struct request` address (`dev` 0 in [`DiskInflight::slot`]); the classic ones carry no
/// request pointer, so there a request is its device and start sector (as bcc's tracepoint
/// tools do). A request probes up to [`PROBES`] slots from [`DiskInflight::slot`]; a slot
/// is free when empty or older than [`STALE_NS`] (a completion never seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskInflight {
    /// The request's address (BTF tracepoints) or start sector (classic tracepoints).
    pub key: u64,
    /// `bpf_ktime_get_ns` at issue; 0 = free.
    pub start_ns: u64,
    pub dev: u32,
    pub bytes: u32,
    /// One of [`OP_READ`], [`OP_WRITE`], [`OP_OTHER`].
    pub op: u32,
    /// The issuing task, while slow-request events are on (else 0).
    pub pid: u32,
    pub tid: u32,
    /// The issuing task's cgroup slot + 1 (`probes::cgroup`), 0 when not attributed.
    pub cgroup: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<DiskInflight>() == 56);

/// Slots a request may take, from its hashed one on.
pub const PROBES: u32 = 4;
/// An entry this old is taken for a completion that was never seen.
pub const STALE_NS: u64 = 60_000_000_000;

impl DiskInflight {
    /// The first slot of a request: (dev, key) hashed over the table.
    #[inline(always)]
    pub fn slot(dev: u32, key: u64) -> u32 {
        ((key ^ (u64::from(dev) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INFLIGHT_BITS))
            as u32
    }
}

/// Byte offsets of the classic tracepoints' record fields, read by userspace from tracefs
/// `format` files at load time (never hard-coded: they change between kernels). An offset of
/// [`MISSING`] marks a field the kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskTpOffsets {
    // block:block_rq_issue
    pub issue_dev: u16,
    pub issue_sector: u16,
    pub issue_bytes: u16,
    pub issue_rwbs: u16,
    // block:block_rq_complete
    pub complete_dev: u16,
    pub complete_sector: u16,
    pub _pad: [u16; 2],
}
const _: () = assert!(size_of::<DiskTpOffsets>() == 16);

/// A tracepoint field the kernel lacks.
pub const MISSING: u16 = u16::MAX;

impl DiskTpOffsets {
    /// Every field missing: the programs read nothing until userspace sets real offsets.
    pub const UNSET: Self = Self {
        issue_dev: MISSING,
        issue_sector: MISSING,
        issue_bytes: MISSING,
        issue_rwbs: MISSING,
        complete_dev: MISSING,
        complete_sector: MISSING,
        _pad: [0; 2],
    };
}

/// What the BTF tracepoint programs on block requests read from `struct request` and the
/// structs it points to: byte offsets from the kernel's BTF (/sys/kernel/btf/vmlinux), found
/// at load time (never hard-coded), and the request-op encoding. The programs are loaded only
/// when every field was found, else the classic tracepoints (and [`DiskTpOffsets`]) serve.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockBtf {
    /// `request.q` (`struct request_queue *`).
    pub rq_q: u32,
    /// `request.cmd_flags` (u32: the op in its low bits, then flags).
    pub rq_cmd_flags: u32,
    /// `request.__data_len` (u32 bytes).
    pub rq_data_len: u32,
    /// `request_queue.disk` (`struct gendisk *`).
    pub q_disk: u32,
    /// `gendisk.major`, `gendisk.first_minor` (int).
    pub disk_major: u32,
    pub disk_first_minor: u32,
    /// `cmd_flags & op_mask` is the op: `(1 << REQ_OP_BITS) - 1`.
    pub op_mask: u32,
    /// `REQ_OP_READ`, `REQ_OP_WRITE`.
    pub op_read: u32,
    pub op_write: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<BlockBtf>() == 40);

impl BlockBtf {
    /// Nothing found: userspace loads the BTF programs only after setting real offsets.
    // SAFETY: plain integers; all zero is a valid value.
    pub const UNSET: Self = unsafe { core::mem::zeroed() };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::DiskInflight {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::DiskTpOffsets {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::BlockBtf {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn keys_spread_over_slots() {
        // A queue's requests sit in one array (struct request plus the driver's data: a few
        // hundred bytes each); 256 in flight at once rarely need a second probe.
        for size in [320u64, 384, 512, 640] {
            let mut seen = std::collections::HashSet::new();
            for tag in 0..256 {
                let s = DiskInflight::slot(0, 0xffff_8881_0400_0000 + tag * size);
                assert!(s < INFLIGHT_ENTRIES);
                seen.insert(s);
            }
            assert!(
                seen.len() > 240,
                "size {size}: {} distinct slots",
                seen.len()
            );
        }
        // Classic keys: consecutive sectors of one device.
        let seen: std::collections::HashSet<u32> = (0..256)
            .map(|i| DiskInflight::slot(254 << 20, 2048 + i * 8))
            .collect();
        assert!(seen.len() > 240, "{} distinct slots", seen.len());
    }
}
