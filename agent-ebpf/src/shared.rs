//! What every probe's programs share: the histogram table, the ring buffer, the runtime
//! settings, and the helpers that record into them.

use agent_common::{
    Event, EventKind, RuntimeConfig,
    event::EventBudget,
    hist,
    layout::{self, Block, CLAIMING, Index, Row},
};
use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm, bpf_get_smp_processor_id,
        bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};

// ---- maps (names are agent_common::maps::*) ----

/// Sized by userspace to possible CPUs × layout::ROWS before load.
#[map]
static HIST: Array<Row> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Key → row of the probes with an index (see `agent_common::layout::Index`).
#[map]
static ROW_INDEX: Array<u64> = Array::with_max_entries(layout::INDEX_CELLS as u32, BPF_F_MMAPABLE);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::maps::EVENTS_DEFAULT_BYTES, 0);
/// The runtime settings (`agent_common::maps::CONFIG`): alone in their data section, which
/// userspace writes as a one-entry array while the programs run.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.config")]
static mut RUNTIME_CONFIG: RuntimeConfig = RuntimeConfig::DEFAULT;

/// Never read: its address is the fixed point [`pointer_key`] measures from.
#[unsafe(no_mangle)]
static KEY_ANCHOR: Global<u64> = Global::new(0);

/// The current CPU (its slice of the histogram table).
#[inline(always)]
pub fn cpu() -> u32 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

/// The clock every latency is measured with (CLOCK_MONOTONIC, ns).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// This CPU's `row` of the table.
#[inline(always)]
pub fn table_row(r: usize) -> Option<&'static mut Row> {
    row(cpu(), r)
}

/// A cell of ROW_INDEX, for indexes with their own layout (`probes::cgroup`).
#[inline(always)]
pub fn index_cell(cell: usize) -> Option<*mut u64> {
    ROW_INDEX.get_ptr_mut(cell as u32)
}

#[inline(always)]
fn row(cpu: u32, row: usize) -> Option<&'static mut Row> {
    let ptr = HIST.get_ptr_mut(layout::row_index(cpu as usize, row) as u32)?;
    // SAFETY: a valid element of the array; only this CPU writes its slice, and a program runs
    // to completion on its CPU, so no other reference to this row is live.
    Some(unsafe { &mut *ptr })
}

/// Adds to counter cell `ctr` of `block`'s counter row, on this CPU.
#[inline(always)]
pub fn count(block: Block, ctr: usize, n: u64) {
    if let Some(r) = row(cpu(), block.counters())
        && let Some(c) = r.head.get_mut(ctr)
    {
        *c += n;
    }
}

/// Records one sample of `value_ns` in histogram row `row_idx` of this CPU.
#[inline(always)]
pub fn record(row_idx: usize, value_ns: u64, aux: u64) {
    let Some(r) = row(cpu(), row_idx) else { return };
    r.head[layout::CELL_COUNT] += 1;
    r.head[layout::CELL_SUM] += value_ns;
    r.head[layout::CELL_AUX] += aux;
    let b = hist::bucket(value_ns);
    // The head's line is written anyway: marking the bucket costs no cache line.
    let (cell, bit) = layout::mask_bit(b);
    if let Some(m) = r.head.get_mut(cell) {
        *m |= bit;
    }
    if let Some(b) = r.buckets.get_mut(b) {
        // 32-bit: userspace widens (agent_common::layout).
        *b = b.wrapping_add(1);
    }
}

/// Table row of `key` (< `index.keys`) of a probe with a row index: one read of a shared,
/// read-mostly cache line; the row is claimed on the key's first sight.
#[inline(always)]
pub fn indexed_row(index: Index, key: usize) -> Option<usize> {
    if key >= index.keys {
        return Some(index.block.row(index.other()));
    }
    let cell = ROW_INDEX.get_ptr(index.cell(key) as u32)?;
    // SAFETY: a valid element; written only by `claim` (atomically), read here as one word.
    let v = unsafe { core::ptr::read_volatile(cell) };
    let r = match index.row_of(v) {
        Some(r) => r,
        None if v == 0 => claim(
            index.cell(key) as u32,
            index.counter() as u32,
            index.claimable(),
        )
        .min(index.other() as u64) as usize,
        // Another CPU is claiming this key's row right now: this one sample goes to the
        // catch-all (counted there) rather than wait.
        None => index.other(),
    };
    Some(index.block.row(r))
}

/// First sight of a key: elects one CPU per key (compare-and-swap of its cell from 0), which
/// takes the next of `claimable` rows (compare-and-swap on the counter; when all are taken, or
/// the counter stays contended, the catch-all at `claimable`). Returns the key's row in its
/// block. Out of line: it runs once per key, and keeps the hot path's image small.
#[inline(never)]
pub fn claim(cell: u32, counter: u32, claimable: u64) -> u64 {
    let (Some(cell), Some(counter)) = (ROW_INDEX.get_ptr_mut(cell), ROW_INDEX.get_ptr_mut(counter))
    else {
        return claimable;
    };
    // The BPF target has no compare-and-swap in core::sync::atomic: the intrinsic lowers to
    // BPF_CMPXCHG (Linux 5.12+). Fetch-add would need cpu v3, which aya-build does not set.
    // SAFETY: valid, aligned u64 elements of the array, only ever written atomically.
    let (old, won) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(cell, 0, CLAIMING) };
    if !won {
        return if old == CLAIMING {
            claimable
        } else {
            old.wrapping_sub(1)
        };
    }
    let mut row = claimable;
    // SAFETY: as above.
    let mut next = unsafe { core::ptr::read_volatile(counter) };
    // Other CPUs claim other keys at the same instant only at start: a few tries suffice.
    for _ in 0..CLAIM_TRIES {
        if next >= claimable {
            break;
        }
        // SAFETY: as above.
        let (old, ok) =
            unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(counter, next, next + 1) };
        if ok {
            row = next;
            break;
        }
        next = old;
    }
    // SAFETY: as above; only the winner writes the cell from CLAIMING on, and an aligned
    // 64-bit store is seen whole (the BPF backend has no atomic store before cpu v4).
    unsafe { core::ptr::write_volatile(cell, row + 1) };
    row
}

/// Attempts at the claim counter before a key settles for the catch-all.
const CLAIM_TRIES: u32 = 16;

/// Waking the reader costs an irq_work per event (about a microsecond), and a wakeup of the
/// agent, so events are submitted without one: the agent reads them at each interval's end,
/// and is woken at once only when the buffer is a quarter full (it could overflow before then).
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if pending >= size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn config() -> &'static RuntimeConfig {
    // SAFETY: a valid value at a fixed address. Userspace may rewrite it while a program reads
    // it, as it could an array map's value: a program then sees old and new fields at worst.
    unsafe { &*(&raw const RUNTIME_CONFIG) }
}

/// Whether the current task passes the pid/comm/cgroup filters (all off by default).
#[inline(always)]
pub fn selected(cfg: &RuntimeConfig, tgid: u32) -> bool {
    if cfg.filter_tgid != 0 && cfg.filter_tgid != tgid {
        return false;
    }
    // The cgroup and its descendants: their ancestor at the cgroup's depth is the cgroup (0 for
    // a task in a shallower cgroup).
    if cfg.filter_cgroup != 0
        // SAFETY: a helper taking a plain integer.
        && unsafe { bpf_get_current_ancestor_cgroup_id(cfg.filter_cgroup_level as i32) }
            != cfg.filter_cgroup
    {
        return false;
    }
    if cfg.filter_comm_on != 0 {
        match bpf_get_current_comm() {
            Ok(comm) => return comm == cfg.filter_comm,
            Err(_) => return false,
        }
    }
    true
}

/// Sends `event` through the ring buffer, or counts it lost in `block`.
#[inline(always)]
pub fn send(event: Event, block: Block) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(wakeup_flags());
        }
        None => count(block, layout::CTR_EVENTS_LOST, 1),
    }
}

/// A slow operation's event (no addresses).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn emit(
    kind: EventKind,
    pid: u32,
    tid: u32,
    comm: [u8; 16],
    latency_ns: u64,
    key: u32,
    op: u32,
    ret: i64,
    block: Block,
) {
    send(
        Event {
            key,
            op,
            ret,
            ..event(kind, pid, tid, comm, latency_ns)
        },
        block,
    );
}

/// An event of `kind` ending now on this CPU; the kind's own fields zero.
#[inline(always)]
pub fn event(kind: EventKind, pid: u32, tid: u32, comm: [u8; 16], latency_ns: u64) -> Event {
    Event {
        kind: kind as u32,
        pid,
        tid,
        cpu: cpu(),
        latency_ns,
        end_ns: now_ns(),
        key: 0,
        op: 0,
        ret: 0,
        comm,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        _pad: 0,
    }
}

// ---- classic tracepoints: record fields at offsets from tracefs ----

/// A tracepoint field the kernel lacks (see the probes' `*TpOffsets`).
const MISSING: u16 = u16::MAX;

/// Reads a `T` at `off` of the tracepoint's record; a failed read is counted in `block`.
#[inline(always)]
pub fn read<T>(ctx: &TracePointContext, off: u16, block: Block) -> Option<T> {
    if off == MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read of the record at an offset from its format file; a bad offset
    // fails the read (counted), it cannot fault.
    match unsafe { ctx.read_at::<T>(off as usize) } {
        Ok(v) => Some(v),
        Err(e) => {
            read_failed(ctx, off, e, block);
            None
        }
    }
}

/// A record field could not be read: a layout the agent did not expect. Counted, and said
/// (a warning: compiled in, but rare by nature; the log level is a load-time constant).
#[inline(always)]
fn read_failed(ctx: &TracePointContext, off: u16, err: i32, block: Block) {
    count(block, layout::CTR_READ_ERRORS, 1);
    warn!(
        ctx,
        "tracepoint record read at offset {} failed ({}): unexpected layout", off, err
    );
}

/// The first `N` bytes of a classic tracepoint's record, in one helper call: reading fields one
/// by one costs a call each, 50-100 ns apiece here.
#[inline(always)]
pub fn record_head<const N: usize>(ctx: &TracePointContext, block: Block) -> Option<[u8; N]> {
    // SAFETY: as in `read`: a checked probe read of the record.
    match unsafe { ctx.read_at::<[u8; N]>(0) } {
        Ok(v) => Some(v),
        Err(e) => {
            read_failed(ctx, 0, e, block);
            None
        }
    }
}

/// A field at `off` (from the tracepoint's format file): from `head` when it lies inside, else
/// read on its own (another kernel's layout).
#[inline(always)]
pub fn field<T: Copy, const N: usize>(
    ctx: &TracePointContext,
    head: &[u8; N],
    off: u16,
    block: Block,
) -> Option<T> {
    let o = off as usize;
    if off != MISSING && o + size_of::<T>() <= N {
        // SAFETY: inside `head` (checked above); T is plain data, read unaligned.
        Some(unsafe { core::ptr::read_unaligned(head.as_ptr().add(o) as *const T) })
    } else {
        read(ctx, off, block)
    }
}

// ---- BTF tracepoints: kernel objects read at offsets from the kernel's BTF ----

/// Loads a `T` at byte `off` of a kernel object the verifier knows by its BTF type.
#[inline(always)]
pub fn kload<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: `base` is a BTF-typed pointer; the verifier checks `off` against the type and
    // turns the load into one that cannot fault.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// A kernel object's address as a key (a request in flight, a connecting socket). The
/// verifier forbids arithmetic on a BTF pointer (a hash multiplies) but lets a privileged
/// program subtract two pointers, so the key is the object's distance from a fixed address of
/// ours.
#[inline(always)]
pub fn pointer_key(p: *const u8) -> u64 {
    let anchor = &KEY_ANCHOR as *const Global<u64> as u64;
    (p as u64).wrapping_sub(anchor)
}

/// Whether this CPU's `budget` (a one-entry per-CPU array) allows one more event of a kind
/// that comes in storms; an event over budget is counted in `block`'s counter `ctr` instead.
#[inline(always)]
pub fn within_budget(budget: &PerCpuArray<EventBudget>, block: Block, ctr: usize) -> bool {
    let Some(b) = budget.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's element of a per-CPU array; a program runs to completion on its CPU.
    if unsafe { (*b).take(now_ns()) } {
        true
    } else {
        count(block, ctr, 1);
        false
    }
}
