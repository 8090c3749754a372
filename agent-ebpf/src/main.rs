//! Kernel programs of ebpf-agent.
//!
//! Hot paths only count: each event lands in the caller CPU's slice of the mmapable histogram
//! table (see `agent_common::layout`); only events over a threshold and TCP opens go through the
//! ring buffer. Every program is a thin wrapper around a `try_*` function; failures are counted,
//! never logged.
#![no_std]
#![no_main]

use agent_common::{
    BlockBtf, Event, EventKind, RuntimeConfig, TcpBtf, TpOffsets, hist,
    layout::{self, Row},
    maps::{
        DISK_INFLIGHT_ENTRIES, DISK_PROBES, DISK_STALE_NS, DiskInflight, OWNER_NR_MASK,
        SysInflight, TcpInflight,
    },
};
use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_skc_to_tcp_sock,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

// ---- maps (names are agent_common::maps::*) ----

/// Sized by userspace to possible CPUs × layout::ROWS before load.
#[map]
static HIST: Array<Row> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static SYS_INFLIGHT: Array<SysInflight> =
    Array::with_max_entries(agent_common::maps::SYS_INFLIGHT_ENTRIES, 0);
#[map]
static DISK_INFLIGHT: Array<DiskInflight> = Array::with_max_entries(DISK_INFLIGHT_ENTRIES, 0);
/// dev → slot, filled by userspace from /sys/block; unknown devices use the last slot.
#[map]
static DISK_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(2 * layout::DISK_SLOTS as u32, 0);
#[map]
static TCP_INFLIGHT: LruHashMap<u64, TcpInflight> =
    LruHashMap::with_max_entries(agent_common::maps::TCP_INFLIGHT_ENTRIES, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::maps::EVENTS_DEFAULT_BYTES, 0);
#[map]
static CONFIG: Array<RuntimeConfig> = Array::with_max_entries(1, 0);

// ---- load-time globals ----

#[unsafe(no_mangle)]
static TP_OFFSETS: Global<TpOffsets> = Global::new(TpOffsets::UNSET);
#[unsafe(no_mangle)]
static BLOCK_BTF: Global<BlockBtf> = Global::new(BlockBtf::UNSET);
#[unsafe(no_mangle)]
static TCP_BTF: Global<TcpBtf> = Global::new(TcpBtf::UNSET);
#[unsafe(no_mangle)]
static NR_EXIT: Global<i64> = Global::new(-1);
#[unsafe(no_mangle)]
static NR_EXIT_GROUP: Global<i64> = Global::new(-1);

// ---- helpers ----

#[inline(always)]
fn cpu() -> u32 {
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn row(cpu: u32, row: usize) -> Option<&'static mut Row> {
    let ptr = HIST.get_ptr_mut(layout::row_index(cpu as usize, row) as u32)?;
    Some(unsafe { &mut *ptr })
}

/// Adds to one of the per-CPU counters of `layout::ROW_COUNTERS`.
#[inline(always)]
fn count(ctr: usize, n: u64) {
    if let Some(r) = row(cpu(), layout::ROW_COUNTERS)
        && let Some(c) = r.cells.get_mut(ctr)
    {
        *c += n;
    }
}

/// Records one sample of `value_ns` in histogram row `row_idx` of this CPU.
#[inline(always)]
fn record(row_idx: usize, value_ns: u64, aux: u64) {
    let Some(r) = row(cpu(), row_idx) else { return };
    r.cells[layout::CELL_COUNT] += 1;
    r.cells[layout::CELL_SUM] += value_ns;
    r.cells[layout::CELL_AUX] += aux;
    if let Some(b) = r
        .cells
        .get_mut(layout::CELL_BUCKETS + hist::bucket(value_ns))
    {
        *b += 1;
    }
}

/// Waking the reader costs an irq_work per event (about a microsecond) when it keeps up, so
/// events are submitted without wakeup; the reader also drains on a short timer, and is woken
/// at once only when the buffer is a quarter full.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if pending >= size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn config() -> Option<&'static RuntimeConfig> {
    CONFIG.get(0)
}

/// Whether the current task passes the pid/comm filters (both off by default).
#[inline(always)]
fn selected(cfg: &RuntimeConfig, tgid: u32) -> bool {
    if cfg.filter_tgid != 0 && cfg.filter_tgid != tgid {
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

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    kind: EventKind,
    pid: u32,
    tid: u32,
    comm: [u8; 16],
    latency_ns: u64,
    key: u32,
    op: u32,
    ret: i64,
    lost_ctr: usize,
) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind: kind as u32,
                pid,
                tid,
                cpu: cpu(),
                latency_ns,
                end_ns: unsafe { bpf_ktime_get_ns() },
                key,
                op,
                ret,
                comm,
                saddr: [0; 16],
                daddr: [0; 16],
                sport: 0,
                dport: 0,
                _pad: 0,
            });
            entry.submit(wakeup_flags());
        }
        None => count(lost_ctr, 1),
    }
}

// ---- syscalls: raw tracepoints sys_enter / sys_exit ----

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = config()?;
    // The pid filter is the only reader of the tgid here: no helper call when it is off.
    if cfg.filter_tgid != 0 || cfg.filter_comm_on != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if !selected(cfg, tgid) {
            return None;
        }
    }
    let regs: u64 = ctx.arg(0);
    let nr: i64 = ctx.arg(1);
    // exit/exit_group never reach sys_exit: their entries would only go stale.
    if nr < 0
        || nr >= layout::MAX_SYSCALLS as i64
        || nr == NR_EXIT.load()
        || nr == NR_EXIT_GROUP.load()
    {
        return None;
    }
    let slot = SYS_INFLIGHT.get_ptr_mut(SysInflight::slot(regs))?;
    let slot = unsafe { &mut *slot };
    let owner = SysInflight::owner(regs, nr as u64);
    if slot.start_ns != 0 && (slot.owner ^ owner) & !OWNER_NR_MASK != 0 {
        // Another live thread owns this slot: its sample is lost, and counted.
        count(layout::CTR_SYS_INFLIGHT_DROPPED, 1);
    }
    slot.owner = owner;
    slot.start_ns = unsafe { bpf_ktime_get_ns() };
    Some(())
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let regs: u64 = ctx.arg(0);
    let slot = SYS_INFLIGHT.get_ptr_mut(SysInflight::slot(regs))?;
    let slot = unsafe { &mut *slot };
    let start = slot.start_ns;
    let owner = slot.owner;
    // Not ours (filtered out, started before attach, or taken over by a colliding thread).
    if start == 0 || (owner ^ regs) & !OWNER_NR_MASK != 0 {
        return None;
    }
    slot.start_ns = 0;
    let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    let ret: i64 = ctx.arg(1);
    let nr = (owner & OWNER_NR_MASK) as u32;
    let nr_idx = nr as usize;
    if nr_idx >= layout::MAX_SYSCALLS {
        return None;
    }
    record(layout::ROW_SYSCALL0 + nr_idx, delta, (ret < 0) as u64);
    let cfg = config()?;
    if delta >= cfg.slow_syscall_ns {
        let id = bpf_get_current_pid_tgid();
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        emit(
            EventKind::SlowSyscall,
            (id >> 32) as u32,
            id as u32,
            comm,
            delta,
            nr,
            0,
            ret,
            layout::CTR_SYS_EVENTS_LOST,
        );
    }
    Some(())
}

// ---- disk: block:block_rq_issue / block:block_rq_complete (classic tracepoints) ----

#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == TpOffsets::MISSING {
        return None;
    }
    match unsafe { ctx.read_at::<T>(off as usize) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(layout::CTR_READ_ERRORS, 1);
            None
        }
    }
}

/// The first `N` bytes of a classic tracepoint's record, in one helper call: reading fields one
/// by one costs a call each, 50-100 ns apiece here.
#[inline(always)]
fn record_head<const N: usize>(ctx: &TracePointContext) -> Option<[u8; N]> {
    match unsafe { ctx.read_at::<[u8; N]>(0) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(layout::CTR_READ_ERRORS, 1);
            None
        }
    }
}

/// A field at `off` (from the tracepoint's format file): from `head` when it lies inside, else
/// read on its own (another kernel's layout).
#[inline(always)]
fn field<T: Copy, const N: usize>(ctx: &TracePointContext, head: &[u8; N], off: u16) -> Option<T> {
    let o = off as usize;
    if off != TpOffsets::MISSING && o + core::mem::size_of::<T>() <= N {
        // SAFETY: inside `head` (checked above); T is plain data.
        Some(unsafe { core::ptr::read_unaligned(head.as_ptr().add(o) as *const T) })
    } else {
        read(ctx, off)
    }
}

/// The in-flight slot `i` probes from the request's first one.
#[inline(always)]
fn disk_slot(first: u32, i: u32) -> Option<&'static mut DiskInflight> {
    let p = DISK_INFLIGHT.get_ptr_mut((first + i) & (DISK_INFLIGHT_ENTRIES - 1))?;
    Some(unsafe { &mut *p })
}

/// Classifies the `rwbs` string of the block tracepoints ("R", "WS", "FWS", "FF", "D", ...).
#[inline(always)]
fn disk_op(rwbs: &[u8; 8]) -> u32 {
    // A leading 'F' is a preflush when followed by the real op.
    let c = if rwbs[0] == b'F' { rwbs[1] } else { rwbs[0] };
    match c {
        b'R' => layout::DISK_OP_READ,
        b'W' => layout::DISK_OP_WRITE,
        _ => layout::DISK_OP_OTHER,
    }
}

/// Records a request issued now in a free in-flight slot. `key` names the request: its
/// address (BTF tracepoints, `dev` ignored for slots) or its start sector (classic ones).
#[inline(always)]
fn disk_issue(slot_dev: u32, key: u64, dev: u32, bytes: u32, op: u32) -> Option<()> {
    // Who issued the request only matters to a slow-request event: two helper calls saved
    // per request while events are off.
    let events = config().is_some_and(|c| c.slow_disk_ns != RuntimeConfig::OFF);
    let (id, comm) = if events {
        (
            bpf_get_current_pid_tgid(),
            bpf_get_current_comm().unwrap_or([0; 16]),
        )
    } else {
        (0, [0; 16])
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let first = DiskInflight::slot(slot_dev, key);
    for i in 0..DISK_PROBES {
        let slot = disk_slot(first, i)?;
        // Free, stale, or this very request issued again (a requeue).
        if slot.start_ns == 0
            || now.saturating_sub(slot.start_ns) > DISK_STALE_NS
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
                _pad: 0,
                comm,
            };
            return Some(());
        }
    }
    count(layout::CTR_DISK_INFLIGHT_DROPPED, 1);
    Some(())
}

/// Takes the request's in-flight slot (matching `dev` too when given: sectors are per device)
/// and records its latency.
#[inline(always)]
fn disk_complete(slot_dev: u32, key: u64, dev: Option<u32>) -> Option<()> {
    let first = DiskInflight::slot(slot_dev, key);
    let mut found = None;
    for i in 0..DISK_PROBES {
        let slot = disk_slot(first, i)?;
        if slot.start_ns != 0 && slot.key == key && dev.is_none_or(|d| slot.dev == d) {
            found = Some(*slot);
            slot.start_ns = 0;
            break;
        }
    }
    let inflight = found?;
    let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(inflight.start_ns);
    let slot = match unsafe { DISK_SLOTS.get(&inflight.dev) } {
        Some(&s) if (s as usize) < layout::DISK_SLOTS => s as usize,
        _ => layout::DISK_SLOTS - 1,
    };
    let op = if inflight.op > layout::DISK_OP_OTHER {
        layout::DISK_OP_OTHER
    } else {
        inflight.op
    };
    record(layout::disk_row(slot, op), delta, inflight.bytes as u64);
    let cfg = config()?;
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
            layout::CTR_DISK_EVENTS_LOST,
        );
    }
    Some(())
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_issue(&ctx);
    0
}

#[inline(always)]
fn try_block_rq_issue(ctx: &TracePointContext) -> Option<()> {
    let off = TP_OFFSETS.load();
    let head: [u8; 48] = record_head(ctx)?;
    let dev: u32 = field(ctx, &head, off.issue_dev)?;
    let sector: u64 = field(ctx, &head, off.issue_sector)?;
    let bytes: u32 = field(ctx, &head, off.issue_bytes)?;
    let rwbs: [u8; 8] = field(ctx, &head, off.issue_rwbs)?;
    disk_issue(dev, sector, dev, bytes, disk_op(&rwbs))
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_complete(&ctx);
    0
}

#[inline(always)]
fn try_block_rq_complete(ctx: &TracePointContext) -> Option<()> {
    let off = TP_OFFSETS.load();
    let head: [u8; 32] = record_head(ctx)?;
    let dev: u32 = field(ctx, &head, off.complete_dev)?;
    let sector: u64 = field(ctx, &head, off.complete_sector)?;
    disk_complete(dev, sector, Some(dev))
}

// ---- disk, preferred: the same two tracepoints as BTF tracepoints ----
//
// No record is built for these (a classic tracepoint fills one before its program runs) and
// the request's fields are plain loads the verifier checks against the kernel's BTF, at
// offsets userspace found there (`BLOCK_BTF`, read-only data: constants to the verifier).

/// Loads a `T` at byte `off` of a kernel object the verifier knows by its BTF type.
#[inline(always)]
fn kload<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: `base` is a BTF-typed pointer; the verifier checks `off` against the type and
    // turns the load into one that cannot fault.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

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
        x if x == o.op_read => layout::DISK_OP_READ,
        x if x == o.op_write => layout::DISK_OP_WRITE,
        _ => layout::DISK_OP_OTHER,
    };
    disk_issue(0, pointer_key(rq), dev, bytes, op)
}

/// A kernel object's address as a key (a request in flight, a connecting socket). The
/// verifier forbids arithmetic on a BTF pointer (a hash multiplies) but lets a privileged
/// program subtract two pointers, so the key is the object's distance from a fixed address of
/// ours.
#[inline(always)]
fn pointer_key(p: *const u8) -> u64 {
    let anchor = &BLOCK_BTF as *const Global<BlockBtf> as u64;
    (p as u64).wrapping_sub(anchor)
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn btf_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let _ = disk_complete(0, pointer_key(rq), None);
    0
}

// ---- TCP ----

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;

/// A socket's addresses for a connect/accept event: family, local and remote port (host
/// order), local and remote address (IPv4 in the first 4 bytes).
type SockAddrs = (u16, u16, u16, [u8; 16], [u8; 16]);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let off = TP_OFFSETS.load();
    // The whole record (72 bytes on 6.x) in one call.
    let head: [u8; 72] = record_head(ctx)?;
    let protocol: u16 = field(ctx, &head, off.sk_protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = field(ctx, &head, off.sk_skaddr)?;
    let old: i32 = field(ctx, &head, off.sk_oldstate)?;
    let new: i32 = field(ctx, &head, off.sk_newstate)?;
    sock_state(sk, old, new, || {
        Some((
            field(ctx, &head, off.sk_family)?,
            field(ctx, &head, off.sk_sport)?,
            field(ctx, &head, off.sk_dport)?,
            field(ctx, &head, off.sk_saddr_v6)?,
            field(ctx, &head, off.sk_daddr_v6)?,
        ))
    })
}

/// A TCP socket's state change: times connects (SYN_SENT → ESTABLISHED) and counts connects
/// and accepts, sending each as an event when on. `sk` names the socket; `addrs` is read only
/// for an event.
#[inline(always)]
fn sock_state(
    sk: u64,
    old: i32,
    new: i32,
    addrs: impl FnOnce() -> Option<SockAddrs>,
) -> Option<()> {
    let (kind, latency_ns, pid, tid, comm) = if new == TCP_SYN_SENT {
        // In the connecting task's context: remember who and when.
        let id = bpf_get_current_pid_tgid();
        let val = TcpInflight {
            start_ns: unsafe { bpf_ktime_get_ns() },
            pid: (id >> 32) as u32,
            tid: id as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        if TCP_INFLIGHT.insert(&sk, &val, 0).is_err() {
            count(layout::CTR_TCP_INFLIGHT_DROPPED, 1);
        }
        return Some(());
    } else if old == TCP_SYN_SENT {
        let started = unsafe { TCP_INFLIGHT.get(&sk) }.copied();
        let _ = TCP_INFLIGHT.remove(&sk);
        if new != TCP_ESTABLISHED {
            return Some(()); // failed connect (TCP_CLOSE) or other
        }
        count(layout::CTR_TCP_CONNECTS, 1);
        let started = started?; // connect began before we attached: counted, not timed
        let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(started.start_ns);
        record(layout::ROW_TCP_CONNECT, delta, 0);
        (
            EventKind::TcpConnect,
            delta,
            started.pid,
            started.tid,
            started.comm,
        )
    } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        count(layout::CTR_TCP_ACCEPTS, 1);
        let id = bpf_get_current_pid_tgid();
        (
            EventKind::TcpAccept,
            0,
            (id >> 32) as u32,
            id as u32,
            bpf_get_current_comm().unwrap_or([0; 16]),
        )
    } else {
        return Some(());
    };
    if config()?.tcp_events_on == 0 {
        return Some(());
    }
    let (family, sport, dport, saddr, daddr) = addrs()?;
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind: kind as u32,
                pid,
                tid,
                cpu: cpu(),
                latency_ns,
                end_ns: unsafe { bpf_ktime_get_ns() },
                key: 0,
                op: family as u32,
                ret: 0,
                comm,
                saddr,
                daddr,
                sport,
                dport,
                _pad: 0,
            });
            entry.submit(wakeup_flags());
        }
        None => count(layout::CTR_TCP_EVENTS_LOST, 1),
    }
    Some(())
}

#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let off = TP_OFFSETS.load();
    // srtt is in microseconds (tp->srtt_us >> 3); the histogram counts ns.
    if let Some(srtt_us) = read::<u32>(&ctx, off.probe_srtt) {
        record(layout::ROW_TCP_RTT, srtt_us as u64 * 1000, 0);
    }
    0
}

// ---- TCP, preferred: the same two tracepoints as BTF tracepoints ----
// tcp_probe fires on every segment an established socket receives: its classic record (both
// addresses, a dozen counters, the socket cookie) costs more than everything the agent does.

const AF_INET: u16 = 2;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_sock_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_btf_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_btf_sock_state(ctx: &BtfTracePointContext) -> Option<()> {
    let o = TCP_BTF.load();
    let sk: *const u8 = ctx.arg(0);
    let protocol: u16 = kload(sk, o.sk_protocol);
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    sock_state(pointer_key(sk), old, new, || {
        let family: u16 = kload(sk, o.skc_family);
        let sport: u16 = kload(sk, o.skc_num);
        let dport: u16 = u16::from_be(kload(sk, o.skc_dport));
        let (mut saddr, mut daddr) = ([0u8; 16], [0u8; 16]);
        if family == AF_INET {
            saddr[..4].copy_from_slice(&kload::<[u8; 4]>(sk, o.skc_rcv_saddr));
            daddr[..4].copy_from_slice(&kload::<[u8; 4]>(sk, o.skc_daddr));
        } else {
            saddr = kload(sk, o.skc_v6_rcv_saddr);
            daddr = kload(sk, o.skc_v6_daddr);
        }
        Some((family, sport, dport, saddr, daddr))
    })
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn btf_tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // A checked cast (the socket is a full TCP socket): its tcp_sock fields become loads.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if !tp.is_null() {
        let srtt_x8: u32 = kload(tp, TCP_BTF.load().tp_srtt_us);
        record(layout::ROW_TCP_RTT, u64::from(srtt_x8 >> 3) * 1000, 0);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(_ctx: RawTracePointContext) -> i32 {
    count(layout::CTR_TCP_RETRANSMITS, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(_ctx: RawTracePointContext) -> i32 {
    count(layout::CTR_TCP_RESETS, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(_ctx: RawTracePointContext) -> i32 {
    count(layout::CTR_TCP_RESETS, 1);
    0
}

// ---- the benchmark's floor: empty programs on the same hooks as the syscall probe ----
// Never attached by the agent; `ebpf-agent floor` attaches them so the overhead benchmark can
// measure what merely running a program on every syscall costs.

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

// The clock floor: the same, plus the one thing any latency tracer must do, read the clock at
// entry and at exit (`ebpf-agent floor --clock`).

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_clock_enter(_ctx: RawTracePointContext) -> i32 {
    let _ = unsafe { bpf_ktime_get_ns() };
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_clock_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = unsafe { bpf_ktime_get_ns() };
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
