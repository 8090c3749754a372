//! Block I/O latency per device and op: block_rq_issue / block_rq_complete as BTF tracepoints
//! (preferred) or classic ones (contract: `agent_common::probes::disk`).

use agent_common::{
    EventKind, RuntimeConfig,
    layout::{self, DISK},
    probes::disk::{
        self, BlockBtf, DiskInflight, DiskTpOffsets, INFLIGHT_ENTRIES, OP_OTHER, OP_READ, OP_WRITE,
        PROBES, SLOTS, SLOTS_ENTRIES, STALE_NS,
    },
};
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    cgroup,
    shared::{
        config, count, emit, field, indexed_row, kload, now_ns, pointer_key, record, record_head,
    },
};

#[map]
static DISK_INFLIGHT: Array<DiskInflight> = Array::with_max_entries(INFLIGHT_ENTRIES, 0);
/// dev → slot, filled by userspace from /sys/block; unknown devices use the last slot.
#[map]
static DISK_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(SLOTS_ENTRIES, 0);

#[unsafe(no_mangle)]
static DISK_TP: Global<DiskTpOffsets> = Global::new(DiskTpOffsets::UNSET);
#[unsafe(no_mangle)]
static BLOCK_BTF: Global<BlockBtf> = Global::new(BlockBtf::UNSET);

/// The in-flight slot `i` probes from the request's first one.
#[inline(always)]
fn inflight_slot(first: u32, i: u32) -> Option<&'static mut DiskInflight> {
    let p = DISK_INFLIGHT.get_ptr_mut((first + i) & (INFLIGHT_ENTRIES - 1))?;
    // SAFETY: a valid array element; a request's issue and completion are ordered by the
    // block layer, and a slot shared by two racing requests loses at most one sample.
    Some(unsafe { &mut *p })
}

/// Classifies the `rwbs` string of the block tracepoints ("R", "WS", "FWS", "FF", "D", ...).
#[inline(always)]
fn rwbs_op(rwbs: &[u8; 8]) -> u32 {
    // A leading 'F' is a preflush when followed by the real op.
    let c = if rwbs[0] == b'F' { rwbs[1] } else { rwbs[0] };
    match c {
        b'R' => OP_READ,
        b'W' => OP_WRITE,
        _ => OP_OTHER,
    }
}

/// Records a request issued now in a free in-flight slot. `key` names the request: its
/// address (BTF tracepoints, `dev` ignored for slots) or its start sector (classic ones).
#[inline(always)]
fn issue(slot_dev: u32, key: u64, dev: u32, bytes: u32, op: u32) -> Option<()> {
    // Who issued the request only matters to a slow-request event: two helper calls saved
    // per request while events are off.
    let events = config().slow_disk_ns != RuntimeConfig::OFF;
    let (id, comm) = if events {
        (
            bpf_get_current_pid_tgid(),
            bpf_get_current_comm().unwrap_or([0; 16]),
        )
    } else {
        (0, [0; 16])
    };
    let now = now_ns();
    let first = DiskInflight::slot(slot_dev, key);
    for i in 0..PROBES {
        let slot = inflight_slot(first, i)?;
        // Free, stale, or this very request issued again (a requeue).
        if slot.start_ns == 0
            || now.saturating_sub(slot.start_ns) > STALE_NS
            || (slot.dev == dev && slot.key == key)
        {
            *slot = DiskInflight {
                key,
                start_ns: now,
                dev,
                bytes,
                op,
                pid: (id >> 32) as u32,
                tid: id as u32,
                cgroup: cgroup::current_slot(),
                comm,
            };
            return Some(());
        }
    }
    count(DISK, layout::CTR_INFLIGHT_DROPPED, 1);
    Some(())
}

/// Takes the request's in-flight slot (matching `dev` too when given: sectors are per device)
/// and records its latency.
#[inline(always)]
fn complete(slot_dev: u32, key: u64, dev: Option<u32>) -> Option<()> {
    let first = DiskInflight::slot(slot_dev, key);
    let mut found = None;
    for i in 0..PROBES {
        let slot = inflight_slot(first, i)?;
        if slot.start_ns != 0 && slot.key == key && dev.is_none_or(|d| slot.dev == d) {
            found = Some(*slot);
            slot.start_ns = 0;
            break;
        }
    }
    let inflight = found?;
    let delta = now_ns().saturating_sub(inflight.start_ns);
    // SAFETY: a plain lookup; the value is copied at once.
    let slot = match unsafe { DISK_SLOTS.get(&inflight.dev) } {
        Some(&s) if (s as usize) < SLOTS => s as usize,
        _ => SLOTS - 1,
    };
    let op = if inflight.op > OP_OTHER {
        OP_OTHER
    } else {
        inflight.op
    };
    record(
        indexed_row(layout::DISK_INDEX, disk::key(slot, op))?,
        delta,
        inflight.bytes as u64,
    );
    cgroup::disk(inflight.cgroup, op, delta, inflight.bytes);
    let cfg = config();
    if delta >= cfg.slow_disk_ns {
        emit(
            EventKind::SlowDisk,
            inflight.pid,
            inflight.tid,
            inflight.comm,
            delta,
            inflight.dev,
            op,
            inflight.bytes as i64,
            DISK,
        );
    }
    Some(())
}

// ---- classic tracepoints ----

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_issue(&ctx);
    0
}

#[inline(always)]
fn try_block_rq_issue(ctx: &TracePointContext) -> Option<()> {
    let off = DISK_TP.load();
    let head: [u8; 48] = record_head(ctx, DISK)?;
    let dev: u32 = field(ctx, &head, off.issue_dev, DISK)?;
    let sector: u64 = field(ctx, &head, off.issue_sector, DISK)?;
    let bytes: u32 = field(ctx, &head, off.issue_bytes, DISK)?;
    let rwbs: [u8; 8] = field(ctx, &head, off.issue_rwbs, DISK)?;
    issue(dev, sector, dev, bytes, rwbs_op(&rwbs))
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_complete(&ctx);
    0
}

#[inline(always)]
fn try_block_rq_complete(ctx: &TracePointContext) -> Option<()> {
    let off = DISK_TP.load();
    let head: [u8; 32] = record_head(ctx, DISK)?;
    let dev: u32 = field(ctx, &head, off.complete_dev, DISK)?;
    let sector: u64 = field(ctx, &head, off.complete_sector, DISK)?;
    complete(dev, sector, Some(dev))
}

// ---- preferred: the same two tracepoints as BTF tracepoints ----
//
// No record is built for these (a classic tracepoint fills one before its program runs) and
// the request's fields are plain loads the verifier checks against the kernel's BTF, at
// offsets userspace found there (`BLOCK_BTF`, read-only data: constants to the verifier).

#[btf_tracepoint(function = "block_rq_issue")]
pub fn btf_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let _ = try_btf_rq_issue(&ctx);
    0
}

#[inline(always)]
fn try_btf_rq_issue(ctx: &BtfTracePointContext) -> Option<()> {
    let o = BLOCK_BTF.load();
    let rq: *const u8 = ctx.arg(0);
    // The tracepoint's own dev: the queue's disk, 0 without one.
    let q: *const u8 = kload(rq, o.rq_q);
    let disk: *const u8 = if q.is_null() {
        core::ptr::null()
    } else {
        kload(q, o.q_disk)
    };
    let dev = if disk.is_null() {
        0
    } else {
        let major: u32 = kload(disk, o.disk_major);
        let minor: u32 = kload(disk, o.disk_first_minor);
        (major << 20) | minor
    };
    let flags: u32 = kload(rq, o.rq_cmd_flags);
    let bytes: u32 = kload(rq, o.rq_data_len);
    let op = match flags & o.op_mask {
        x if x == o.op_read => OP_READ,
        x if x == o.op_write => OP_WRITE,
        _ => OP_OTHER,
    };
    issue(0, pointer_key(rq), dev, bytes, op)
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn btf_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let _ = complete(0, pointer_key(rq), None);
    0
}
