//! Incidents: what reaches a person. The detector judges every key on its own; this layer
//! groups the keys that go off together into one incident that opens once, can escalate, and
//! closes once when calm, and says what it is about: the few keys that matter most (value and
//! usual), since when (local time), which subsystems, and which processes (the pid/comm whose
//! slow events rose the most during the incident, with its share).
//!
//! Grouping: a key that goes off joins an open incident when it starts within
//! [`IncidentConfig::join_window_s`] of the incident's start, or shares a subsystem with it, or
//! its slow events come from the incident's leading process; otherwise it opens a new one.
//!
//! Severity follows impact (see [`Impact`]): latency and errors going up on a key the detector
//! finds unusual are critical when the change is material (a latency ≥ 5x its usual and ≥ 5 ms
//! more for a typical call, 10 ms more for a p90, 20 ms more for a p99; a majority of failing
//! calls that used to succeed; a run-queue wait ≥ 5x its usual and ≥ 20 ms more, or its mean
//! ≥ 1 ms more; `full` memory pressure ≥ 10% of the time, thrashing), else a warning;
//! saturation (pressure, iowait, swapping) going up is a warning that joins and explains the
//! incident; rates and levels (more calls, more processes, more memory) are at most a warning,
//! and so is a tail statistic (`max`, `p999`, a quantile or mean of too few values: see
//! [`is_tail`]); rates, levels and pressure within a quarter of their usual, and latency,
//! errors or pressure going *down*, are not an incident. A rate change the host's rhythm
//! explains never reaches this layer: the detector judges every key against its learnt daily
//! and weekly profile.
//!
//! Processes: the slow events name who was hurt (slow calls and requests, failed connects, a
//! task woken to act that waited long for a CPU). Run-queue waits of tasks preempted while
//! running name who kept the CPUs busy instead, said apart in a CPU incident's description.
//!
//! Pure: fed one interval at a time ([`Incidents::step`]); no clock, no I/O.

use std::collections::HashMap;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use crate::anomaly::{LocalTime, State, format_value, metric_label};
use crate::events::{self, EventView};
use crate::snapshot::{Kind, TagMap, Tags};

/// Settings of the grouping.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentConfig {
    /// Keys going off within this many seconds of an incident's start join it.
    pub join_window_s: f64,
    /// An incident closes after this many seconds without any of its keys off.
    pub calm_s: f64,
    /// A key off as a warning for this many seconds in a row is the host's new level, no
    /// longer news: it stops holding an incident open and joining others until it is back to
    /// usual (or turns critical). Without it, a level that moved for good (a background job
    /// started, dirty pages flushed after a build) held one incident open for as long as it
    /// lasted, and every later fault joined that incident instead of opening its own.
    pub settle_s: f64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            join_window_s: 10.0,
            calm_s: 15.0,
            settle_s: 60.0,
        }
    }
}

/// What a change in a key means for the people relying on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impact {
    /// More calls, more bytes, more processes, a memory level: at most a warning.
    Rate,
    /// Pressure stalls, iowait, swapping, the run queue.
    Saturation,
    /// Failing calls, TCP resets and retransmits.
    Errors,
    /// Time taken by calls and requests.
    Latency,
}

/// Calls that probe paths and terminals: their errors (ENOENT, ENOTTY) grow with every process
/// started, so a burst of them is a change in rates, not failures.
const PROBING_SYSCALLS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "access",
    "faccessat",
    "faccessat2",
    "stat",
    "lstat",
    "newfstatat",
    "statx",
    "readlink",
    "readlinkat",
    "ioctl",
    "execve",
    "execveat",
    "wait4",
    "waitid",
    "getxattr",
    "lgetxattr",
    "mkdir",
    "unlink",
    "unlinkat",
    "rt_sigreturn",
];

/// Syscalls that wait by design, until an event, a child or a timeout the caller chose: their
/// latency is how idle the caller is, not harm (a thread pool waiting longer on its futex has
/// less work; a sleep loop sleeps what it asks). Their latency is a rate: at most a warning.
const WAITING_SYSCALLS: &[&str] = &[
    "nanosleep",
    "clock_nanosleep",
    "futex",
    "futex_waitv",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "wait4",
    "waitid",
    "pause",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "accept",
    "accept4",
    "msgrcv",
    "semtimedop",
];

/// Syscalls whose latency is the disk's (file data I/O). Not `read`, `write`, `readv` and
/// `writev`: they wait as long on pipes, sockets and terminals (measured live: a tool's blocking
/// pipe reads opened "disk slower than usual"), so they stay in `syscall`.
const DISK_SYSCALLS: &[&str] = &[
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "io_submit",
    "io_getevents",
    "io_uring_enter",
];

/// Syscalls of the network.
const NET_SYSCALLS: &[&str] = &[
    "connect", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg",
    "recvmmsg", "shutdown",
];

fn tag<'a>(tags: &'a Tags, k: &str) -> Option<&'a str> {
    tags.iter().find(|(t, _)| *t == k).map(|(_, v)| v.as_str())
}

/// The impact class of a key.
pub fn impact(name: &str, tags: &Tags) -> Impact {
    let fam = name.split('.').next().unwrap_or(name);
    if name.starts_with("syscall.latency_us")
        && tag(tags, "syscall").is_some_and(|s| WAITING_SYSCALLS.contains(&s))
    {
        Impact::Rate
    } else if name.contains("latency_us") || name.contains("rtt_us") {
        Impact::Latency
    } else if fam == "psi"
        || fam == "runq"
        || name == "cpu.iowait_pct"
        || name == "cpu.steal_pct"
        || fam == "swap" && name.ends_with("_pages")
    {
        Impact::Saturation
    } else if name == "tcp.resets" || name == "tcp.retransmits" || name == "agent.events_lost" {
        Impact::Errors
    } else if name == "syscall.errors" {
        match tag(tags, "syscall") {
            Some(s) if PROBING_SYSCALLS.contains(&s) => Impact::Rate,
            _ => Impact::Errors,
        }
    } else {
        Impact::Rate
    }
}

/// The subsystem a key belongs to: `disk`, `tcp`, `memory`, `cpu`, `syscall`, or its family.
pub fn subsystem(name: &str, tags: &Tags) -> String {
    let fam = name.split('.').next().unwrap_or(name);
    let s = match fam {
        "disk" => "disk",
        "tcp" => "tcp",
        "mem" | "swap" => "memory",
        "cpu" if name == "cpu.iowait_pct" => "disk",
        "cpu" | "load" | "runq" => "cpu",
        "psi" => match name.split('.').nth(1) {
            Some("io") => "disk",
            Some("memory") => "memory",
            _ => "cpu",
        },
        "syscall" => match tag(tags, "syscall") {
            Some(s) if DISK_SYSCALLS.contains(&s) => "disk",
            Some(s) if NET_SYSCALLS.contains(&s) => "tcp",
            _ => "syscall",
        },
        other => other,
    };
    s.to_string()
}

/// One key's judgement this interval, as the detector gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub name: String,
    pub tags: Tags,
    pub kind: Kind,
    pub value: f64,
    pub usual: f64,
    /// The detector's state (after its hysteresis).
    pub state: State,
    /// For `syscall.errors`: `(calls now, usual calls)` of the same syscall.
    pub calls: Option<(f64, f64)>,
    /// For a latency statistic: how many values it was taken from this interval (see
    /// [`samples_of`]).
    pub samples: Option<f64>,
    /// For a memory level (`mem.*_bytes`, `swap.*_bytes`): the host's memory
    /// (`mem.total_bytes`).
    pub memory: Option<f64>,
}

/// The counter that says how many values a latency statistic was taken from, with the same
/// tags.
pub fn samples_of(name: &str) -> Option<&'static str> {
    Some(match name.rsplit_once('.')?.0 {
        "syscall.latency_us" => "syscall.count",
        "disk.latency_us" => "disk.ops",
        "runq.latency_us" => "runq.count",
        "tcp.rtt_us" => "tcp.rtt_samples",
        "tcp.connect_latency_us" => "tcp.connects",
        "cgroup.syscall.latency_us" => "cgroup.syscall.count",
        _ => return None,
    })
}

/// A statistic's suffix: `p99` of `syscall.latency_us.p99`.
fn stat(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or("")
}

/// Whether a latency statistic is a tail: `max` and `p999` always; with other calls in the
/// interval, a quantile of too few values to leave one above it (the p99 of fewer than 100
/// calls, the p90 of fewer than 10) is the slowest call's latency, and a mean of fewer than 20
/// is mostly the slowest call's. Measured live on a 2-vCPU VM: a benign `find /usr` took a
/// service's `fdatasync` p99 from 289 µs to 4.06 ms over its 20 calls per 250 ms interval
/// (one slow call) while its p50 stayed within 2x. A single call is every call: throttled to
/// 10 writes/s, the same service made one or two calls per interval, each 100-200 ms.
fn is_tail(s: &Signal) -> bool {
    let stat = stat(&s.name);
    if stat == "max" || stat == "p999" {
        return true;
    }
    let Some(n) = s.samples.filter(|n| *n >= 2.0) else {
        return false;
    };
    match stat {
        "mean" => n < 20.0,
        p => crate::histogram::QUANTILES
            .iter()
            .find(|(suffix, _)| *suffix == p)
            .is_some_and(|(_, q)| n * (1.0 - q) < 1.0 - 1e-9),
    }
}

/// A run-queue wait quantile must grow by this much (µs) to be critical: tasks waiting tens of
/// ms for a CPU is harm someone feels. Less is what any busy spell does to a few tasks: a
/// scheduler slice is 0.75-3 ms and preemption lands on a tick (1-4 ms at HZ 1000-250), so a
/// CPU-bound task sharing a CPU waits a few ms each time, which hurts nobody.
const RUNQ_MATERIAL_US: f64 = 20_000.0;
/// The mean run-queue wait must grow by this much (µs) to be critical: the average task that
/// wants a CPU waits a slice or a tick, so every CPU has a queue (more runnable tasks than
/// CPUs, all the time) and everyone's latency pays for it.
const RUNQ_MEAN_MATERIAL_US: f64 = 1_000.0;

/// How much (µs) a latency statistic must rise to be critical: the fewer calls it speaks for,
/// the more. A typical call (`p50`, `mean`) 5 ms slower is felt by whoever waits on it; one call
/// in ten or a hundred must be slower by tens of ms. Measured on a fresh 2-vCPU VM: a cold
/// `find /usr` and a build beside a service doing 80 `fdatasync` calls a second took their p90
/// from 0.21 to 2.2 ms and their p99 to 3 ms, while throttled writes took every call to 100-200
/// ms.
fn latency_material_us(name: &str) -> f64 {
    match stat(name) {
        "p50" | "mean" => 5_000.0,
        "p90" => 10_000.0,
        _ => 20_000.0,
    }
}

/// The share of time every runnable task must stall on memory for it to be critical.
const MEMORY_THRASH_SHARE: f64 = 0.1;

/// Whether a change in the direction of harm is large enough to be critical.
fn material(s: &Signal, interval_s: f64) -> bool {
    let up = s.value - s.usual;
    match impact(&s.name, &s.tags) {
        // Host-wide waits of every task. Measured on a 2-vCPU VM (HZ 250): a burst of 2,500
        // short processes took the p99 to 5.5 ms and the mean to 0.53 ms, throttled disk
        // writes the p99 to 8 ms, a build sized to the CPUs the p99 to 8 ms and the mean to
        // 0.65 ms; twice as many busy loops as CPUs the mean to 1.5-6 ms and the p99 to 8-52
        // ms (the more other work, the longer).
        Impact::Latency if s.name.starts_with("runq.") => {
            let tail = is_tail(s);
            let floor = if stat(&s.name) == "mean" {
                RUNQ_MEAN_MATERIAL_US
            } else {
                RUNQ_MATERIAL_US
            };
            !tail && s.value >= 5.0 * s.usual.max(0.0) && up >= floor
        }
        Impact::Latency => {
            !is_tail(s) && s.value >= 5.0 * s.usual.max(0.0) && up >= latency_material_us(&s.name)
        }
        Impact::Errors => match (s.name.as_str(), s.calls) {
            ("syscall.errors", Some((calls, usual_calls))) => {
                let share = s.value / calls.max(1.0);
                let usual_share = (s.usual / usual_calls.max(1.0)).min(1.0);
                share >= 0.5 && share >= usual_share + 0.25 && s.value / interval_s >= 10.0
            }
            ("syscall.errors", None) => false,
            _ => s.value / interval_s >= 10.0 && s.value >= 4.0 * s.usual.max(0.0),
        },
        // Saturation says where to look, not that someone is hurt: measured on a 2-vCPU VM, a
        // cold `find /usr` held io `full` pressure at 65% and iowait at 33% while the service's
        // calls stayed within 3x of usual, and a build keeps cpu `some` pressure near 100%.
        // What hurts shows as latency or errors, which make an incident critical. Memory is
        // the exception: `full` memory pressure is every runnable task stalled in reclaim at
        // once (thrashing), which no ordinary work causes on a host with memory to spare.
        Impact::Saturation => {
            // The share of the time stalled: µs per interval, or avg10's percent.
            let share = match s.name.as_str() {
                "psi.memory.full_stall_us" => s.value / (interval_s * 1e6),
                "psi.memory.full_avg10" => s.value / 100.0,
                _ => return false,
            };
            share >= MEMORY_THRASH_SHARE && s.value >= 5.0 * s.usual
        }
        Impact::Rate => false,
    }
}

/// Memory going the harmless way (more available or free, less used, cached, dirty, swapped),
/// or moving by less than [`MEMORY_MATERIAL`] of the host's memory. Measured live: the dirty
/// pages a build left flushed over a minute, and "memory quieter than usual" was the first
/// incident of a quiet host; another time it was "mem writeback 8 KiB (usual 0 B)".
fn harmless_memory(s: &Signal) -> bool {
    if !(s.name.starts_with("mem.") || s.name.starts_with("swap.")) || !s.name.ends_with("_bytes") {
        return false;
    }
    if s.memory
        .is_some_and(|total| (s.value - s.usual).abs() < MEMORY_MATERIAL * total)
    {
        return true;
    }
    let freer = matches!(s.name.as_str(), "mem.available_bytes" | "mem.free_bytes");
    if freer {
        s.value > s.usual
    } else {
        s.value < s.usual
    }
}

/// The share of the host's memory a memory level must move by to be worth a person's look.
const MEMORY_MATERIAL: f64 = 0.01;

/// A latency that rose by less than this (µs) or less than [`NOTICEABLE_RATIO`] times its usual
/// is felt by no one. Measured live on the whole host: `readlinkat` p50 2.02 → 2.18 µs and
/// `fcntl` p50 0.10 → 0.14 µs were each a warning incident of their own, and a burst of short
/// processes made `read` p50 0.23 → 0.61 µs. A tenth of a millisecond is a network round trip
/// within a rack.
const NOTICEABLE_US: f64 = 100.0;
const NOTICEABLE_RATIO: f64 = 2.0;

/// A quantile above the median (`p90`, `p99`, ...) or any run-queue quantile that rose by less
/// than this (µs) is felt by no one: one call in ten a fraction of a millisecond slower, a tick
/// at HZ 1000 of waiting for a CPU. Measured live on a quiet host: a disk's p90 0.07 → 0.38 ms
/// and the service's fdatasync p90 0.18 → 0.82 ms opened "disk slower than usual"; the run
/// queue's p99 0.065 → 0.31 ms "cpu slower". The median and the mean keep [`NOTICEABLE_US`]:
/// they are the typical call's.
const NOTICEABLE_TAIL_US: f64 = 1_000.0;

fn noticeable(s: &Signal) -> bool {
    let stat = stat(&s.name);
    let typical = stat == "mean" || (stat == "p50" && !s.name.starts_with("runq."));
    let floor = if typical {
        NOTICEABLE_US
    } else {
        NOTICEABLE_TAIL_US
    };
    s.value - s.usual >= floor && s.value >= NOTICEABLE_RATIO * s.usual.max(0.0)
}

/// A rate or level that moved by at least [`MOVED_RATIO`] either way (from or to zero counts).
fn moved(s: &Signal) -> bool {
    let (lo, hi) = (s.value.min(s.usual), s.value.max(s.usual));
    if lo <= 0.0 {
        return hi > lo;
    }
    hi >= MOVED_RATIO * lo
}

const MOVED_RATIO: f64 = 1.25;

/// A key's contribution to an incident's severity.
pub fn severity(s: &Signal, interval_s: f64) -> State {
    if s.state == State::Ok {
        return State::Ok;
    }
    let harmful_way = s.value > s.usual;
    let impact = impact(&s.name, &s.tags);
    match impact {
        Impact::Rate if harmless_memory(s) => State::Ok,
        // Fewer failing calls (fewer paths probed) is never harm.
        Impact::Rate if s.name == "syscall.errors" && !harmful_way => State::Ok,
        // A level or rate within a quarter of its usual is noise to a person, however unusual
        // to the detector: measured live, the smooth 15-minute load average moved 0.239 →
        // 0.23 and opened "cpu quieter than usual".
        Impact::Rate | Impact::Saturation if !moved(s) => State::Ok,
        Impact::Rate => State::Warning,
        _ if !harmful_way => State::Ok,
        // The detector says whether a key is unusual; how much it hurts is the magnitude's:
        // measured live, a service's writes going from 0.2 ms to 105 ms held the detector at
        // warning (its score fades as a change persists).
        _ if material(s, interval_s) => State::Critical,
        Impact::Latency if !noticeable(s) => State::Ok,
        _ => State::Warning,
    }
}

/// A process in an incident, with its share of the incident's slow events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessShare {
    pub comm: String,
    pub pid: u32,
    pub share: f64,
}

/// A key of an incident: its value when last off, and its usual.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentKey {
    pub name: String,
    pub tags: Tags,
    pub value: f64,
    pub usual: f64,
}

impl Serialize for IncidentKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("IncidentKey", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("tags", &TagMap(&self.tags))?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("usual", &self.usual)?;
        st.end()
    }
}

/// What happened to an incident this interval (for notifications: sinks, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Opened,
    Escalated,
    Closed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Opened => "opened",
            Change::Escalated => "escalated",
            Change::Closed => "closed",
        }
    }
}

/// An incident as reported in one interval (JSON: `incidents`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    /// Unique per agent run.
    pub id: u64,
    /// `ok` only in the interval it closes.
    pub state: State,
    /// Unix seconds of its first interval.
    pub since: u64,
    pub subsystems: Vec<String>,
    pub processes: Vec<ProcessShare>,
    pub keys: Vec<IncidentKey>,
    pub description: String,
    /// Set in the interval it opened, escalated or closed: what a notification is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

/// Keys and processes shown at most.
const MAX_KEYS_SHOWN: usize = 3;
const MAX_PROCESSES: usize = 3;
/// Subjects (comm and what its slow events are about) whose usual rate is remembered at most.
const MAX_COMMS: usize = 4096;
/// A run-queue wait's unit for people (µs, shown as ms or s).
const RUNQ_WAIT: &str = "runq.latency_us";
/// Memory of the usual slow events per comm, in intervals.
const EVENT_MEMORY: f64 = 60.0;

#[derive(Clone, Debug)]
struct Member {
    name: String,
    tags: Tags,
    kind: Kind,
    value: f64,
    usual: f64,
    severity: State,
    impact: Impact,
    active: bool,
    /// Unix seconds of the last interval it was off.
    last_active: f64,
}

#[derive(Clone, Debug)]
struct Open {
    id: u64,
    state: State,
    since: f64,
    last_active: f64,
    members: Vec<Member>,
    /// Slow events above the comm's usual, per (pid, comm): who was hurt.
    excess: HashMap<(u32, String), f64>,
    /// Long run-queue waits of woken tasks during the incident, per (pid, comm): (waits, µs).
    waits: HashMap<(u32, String), (f64, f64)>,
    /// Long run-queue waits of preempted tasks above the comm's usual: who kept the CPUs busy.
    busy: HashMap<(u32, String), f64>,
    interval_s: f64,
    /// Subsystems with a critical key so far: a new one is an escalation too (a disk stall
    /// during a CPU incident is news).
    critical_in: Vec<String>,
}

impl Open {
    fn subsystems(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.ranked() {
            let s = subsystem(&m.name, &m.tags);
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// Members, most telling first: severity, then impact, then how far off.
    fn ranked(&self) -> Vec<&Member> {
        let mut v: Vec<&Member> = self.members.iter().collect();
        let off = |m: &Member| {
            if m.usual.abs() > 0.0 {
                (m.value / m.usual).abs().ln().abs()
            } else {
                f64::MAX
            }
        };
        v.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(b.impact.cmp(&a.impact))
                .then(off(b).total_cmp(&off(a)))
        });
        v
    }

    fn processes(&self) -> Vec<ProcessShare> {
        let total: f64 = self.excess.values().sum();
        if total <= 0.0 {
            return vec![];
        }
        let mut v: Vec<ProcessShare> = self
            .excess
            .iter()
            .map(|((pid, comm), n)| ProcessShare {
                comm: comm.clone(),
                pid: *pid,
                share: n / total,
            })
            .collect();
        v.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.pid.cmp(&b.pid)));
        v.truncate(MAX_PROCESSES);
        v
    }

    fn headline(&self) -> String {
        let Some(top) = self.ranked().first().copied() else {
            return "incident".into();
        };
        let sub = subsystem(&top.name, &top.tags);
        let what = match top.impact {
            Impact::Latency if top.severity == State::Critical && top.name.starts_with("runq.") => {
                "overloaded"
            }
            Impact::Latency if top.severity == State::Critical => "stalled",
            Impact::Latency => "slower than usual",
            Impact::Errors => "failing",
            Impact::Saturation if top.severity == State::Critical => "thrashing",
            Impact::Saturation => "saturated",
            Impact::Rate if top.value < top.usual => "quieter than usual",
            Impact::Rate => "busier than usual",
        };
        format!("{sub} {what}")
    }

    /// Who kept the CPUs busy, by command (`4 × bash (1201, 1202, 1203, …)`), when the
    /// incident is about the CPUs.
    fn busy_note(&self) -> Option<String> {
        let about_cpu = self
            .members
            .iter()
            .any(|m| subsystem(&m.name, &m.tags) == "cpu");
        if !about_cpu || self.busy.is_empty() {
            return None;
        }
        let mut by_comm: HashMap<&str, (f64, Vec<u32>)> = HashMap::new();
        for ((pid, comm), n) in &self.busy {
            let e = by_comm.entry(comm.as_str()).or_default();
            e.0 += n;
            e.1.push(*pid);
        }
        let mut v: Vec<(&str, (f64, Vec<u32>))> = by_comm.into_iter().collect();
        v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.0.cmp(b.0)));
        // Commands far behind the busiest are the host's usual work, not news.
        let top = v.first().map_or(0.0, |c| c.1.0);
        let shown: Vec<String> = v
            .into_iter()
            .take_while(|c| c.1.0 >= 0.1 * top)
            .take(MAX_PROCESSES)
            .map(|(comm, (_, mut pids))| {
                pids.sort_unstable();
                if pids.len() == 1 {
                    return format!("{comm}[{}]", pids[0]);
                }
                let mut list: Vec<String> = pids.iter().take(3).map(u32::to_string).collect();
                if pids.len() > 3 {
                    list.push("…".into());
                }
                format!("{} × {comm} ({})", pids.len(), list.join(", "))
            })
            .collect();
        Some(shown.join(", "))
    }

    /// `settled`: it closes with a key still off (a warning that lasted): settled at a new
    /// level, not resolved.
    fn report(
        &self,
        state: State,
        change: Option<Change>,
        settled: bool,
        local: &LocalTime,
    ) -> Incident {
        // One key per subject (a syscall, a disk and op, ...: the family's first word and the
        // tags): three quantiles of one slow syscall say less than the next subject does.
        let mut keys: Vec<&Member> = Vec::new();
        for m in self.ranked() {
            let subject =
                |k: &Member| (k.name.split('.').next().map(str::to_owned), k.tags.clone());
            if keys.len() < MAX_KEYS_SHOWN && !keys.iter().any(|k| subject(k) == subject(m)) {
                keys.push(m);
            }
        }
        let processes = self.processes();
        let mut d = format!(
            "{}: {} since {}",
            if state == State::Ok && settled {
                "settled at a new level".to_string()
            } else if state == State::Ok {
                "resolved".to_string()
            } else {
                state.to_string()
            },
            self.headline(),
            local.clock(self.since)
        );
        let shown: Vec<String> = keys
            .iter()
            .map(|m| {
                // Pressure averages are percentages though their names do not say so.
                let unit = if m.name.starts_with("psi.") && m.name.ends_with("_avg10") {
                    "psi_pct"
                } else {
                    &m.name
                };
                let f = |v| format_value(unit, m.kind, v, self.interval_s);
                format!(
                    "{} {} (usual {})",
                    metric_label(&m.name, &m.tags),
                    f(m.value),
                    f(m.usual)
                )
            })
            .collect();
        if !shown.is_empty() {
            d.push_str(" — ");
            d.push_str(&shown.join(", "));
            if self.members.len() > keys.len() {
                d.push_str(&format!(" and {} more", self.members.len() - keys.len()));
            }
        }
        if let Some(p) = processes.first() {
            d.push_str(&format!(
                "; {:.0}% of slow events from {}[{}]",
                p.share * 100.0,
                p.comm,
                p.pid
            ));
            if let Some((n, sum_us)) = self.waits.get(&(p.pid, p.comm.clone())) {
                let mean = format_value(RUNQ_WAIT, Kind::Gauge, sum_us / n, self.interval_s);
                d.push_str(&format!(", which waited {mean} for a CPU on average"));
            }
        }
        if let Some(busy) = self.busy_note() {
            d.push_str("; busy on the CPUs: ");
            d.push_str(&busy);
        }
        Incident {
            id: self.id,
            state,
            since: self.since.max(0.0) as u64,
            subsystems: self.subsystems(),
            processes,
            keys: keys
                .iter()
                .map(|m| IncidentKey {
                    name: m.name.clone(),
                    tags: m.tags.clone(),
                    value: m.value,
                    usual: m.usual,
                })
                .collect(),
            description: d,
            change,
        }
    }
}

/// The open incidents and what is usual for slow events.
#[derive(Clone, Debug)]
pub struct Incidents {
    cfg: IncidentConfig,
    next_id: u64,
    open: Vec<Open>,
    /// Usual slow events per interval, per subject (learnt while no incident is open).
    usual_events: HashMap<String, f64>,
    /// The same for the long run-queue waits of preempted tasks (busy ones).
    usual_busy: HashMap<String, f64>,
    /// Since when each key off now has been off without a break (unix s).
    off_since: HashMap<(String, Tags), f64>,
}

impl Incidents {
    pub fn new(cfg: IncidentConfig) -> Self {
        Self {
            cfg,
            next_id: 1,
            open: Vec::new(),
            usual_events: HashMap::new(),
            usual_busy: HashMap::new(),
            off_since: HashMap::new(),
        }
    }

    /// Incidents open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The id the next incident will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Feeds one interval ending at `t` (unix seconds): the detector's signals (keys not ok or
    /// that changed state) and the interval's slow events. Returns every open incident, and
    /// those closing now (state ok), each once.
    pub fn step(
        &mut self,
        t: f64,
        interval_s: f64,
        signals: &[Signal],
        events: &[EventView],
        local: &LocalTime,
    ) -> Vec<Incident> {
        // Slow events this interval per (pid, comm, subject) and per subject (a comm's slow
        // calls of one syscall, its slow requests to one disk, its long waits for a CPU, ...):
        // those of the hurt, and those of the busy (preempted while running).
        let mut by_proc: HashMap<(u32, &str, String), f64> = HashMap::new();
        let mut by_subject: HashMap<String, f64> = HashMap::new();
        let mut busy_proc: HashMap<(u32, &str, String), f64> = HashMap::new();
        let mut busy_subject: HashMap<String, f64> = HashMap::new();
        let mut waits: HashMap<(u32, &str), (f64, f64)> = HashMap::new();
        let mut per_pid: HashMap<u32, f64> = HashMap::new();
        for e in events {
            let subj = subject(e);
            let key = (e.pid, e.comm.as_str(), subj.clone());
            if e.kind == events::RUNQ_PREEMPTED {
                *busy_proc.entry(key).or_default() += 1.0;
                *busy_subject.entry(subj).or_default() += 1.0;
                continue;
            }
            if e.kind == events::RUNQ_WOKEN {
                let w = waits.entry((e.pid, e.comm.as_str())).or_default();
                w.0 += 1.0;
                w.1 += e.latency_us;
            }
            *by_proc.entry(key).or_default() += 1.0;
            *by_subject.entry(subj).or_default() += 1.0;
            *per_pid.entry(e.pid).or_default() += 1.0;
        }
        let top_proc = per_pid
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(pid, _)| *pid);

        let mut new_ids = vec![];
        for o in &mut self.open {
            for m in &mut o.members {
                m.active = false;
            }
        }
        let off: Vec<(&Signal, State)> = signals
            .iter()
            .map(|s| (s, severity(s, interval_s)))
            .filter(|(_, sev)| *sev != State::Ok)
            .collect();
        self.off_since
            .retain(|k, _| off.iter().any(|(s, _)| s.name == k.0 && s.tags == k.1));
        for (s, sev) in off {
            let since = *self
                .off_since
                .entry((s.name.clone(), s.tags.clone()))
                .or_insert(t);
            // Harm (critical) is news for as long as it lasts; a warning that lasts is not.
            if sev == State::Warning && t - since >= self.cfg.settle_s {
                continue;
            }
            let member = Member {
                name: s.name.clone(),
                tags: s.tags.clone(),
                kind: s.kind,
                value: s.value,
                usual: s.usual,
                severity: sev,
                impact: impact(&s.name, &s.tags),
                active: true,
                last_active: t,
            };
            let sub = subsystem(&s.name, &s.tags);
            if let Some(m) = self
                .open
                .iter_mut()
                .flat_map(|o| o.members.iter_mut())
                .find(|m| m.name == s.name && m.tags == s.tags)
            {
                *m = member;
                continue;
            }
            // Keys calm for a while no longer pull newcomers in: a long incident does not
            // swallow an unrelated episode that starts much later.
            let recent = self.cfg.calm_s;
            let join = self.open.iter_mut().find(|o| {
                t - o.since <= self.cfg.join_window_s
                    || o.members
                        .iter()
                        .any(|m| t - m.last_active <= recent && subsystem(&m.name, &m.tags) == sub)
                    // Slow events name who is hurt: an incident of rates alone has no one hurt
                    // (its slow events are the host's usual ones), so harm elsewhere (a
                    // critical key) starts an incident of its own rather than joining it.
                    || (sev != State::Critical
                        || o.members.iter().any(|m| m.impact != Impact::Rate))
                        && top_proc
                            .is_some_and(|p| o.processes().first().is_some_and(|q| q.pid == p))
            });
            match join {
                Some(o) => o.members.push(member),
                // A tail (a max, or a p99 of a few calls) is one slow call: it tells more about
                // an incident open anyway, but is not one. Measured live on an idle host: one
                // `fstat` p99 of 139 µs (usual 10 µs) was a warning incident of its own.
                None if member.impact == Impact::Latency && is_tail(s) => {}
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    new_ids.push(id);
                    self.open.push(Open {
                        id,
                        state: State::Ok,
                        since: t - interval_s,
                        last_active: t,
                        members: vec![member],
                        excess: HashMap::new(),
                        waits: HashMap::new(),
                        busy: HashMap::new(),
                        interval_s,
                        critical_in: vec![],
                    });
                }
            }
        }

        // Slow events above their subject's usual count toward the open incidents' processes:
        // per subject, so a service whose throttled writes slow its whole loop (fewer slow
        // waits, more slow writes) is still seen.
        let excess = |procs: &HashMap<(u32, &str, String), f64>,
                      subjects: &HashMap<String, f64>,
                      usual: &HashMap<String, f64>| {
            let mut out: HashMap<(u32, String), f64> = HashMap::new();
            for ((pid, comm, subj), n) in procs {
                let all = subjects[subj];
                let usual = usual.get(subj).copied().unwrap_or(0.0);
                let x = (all - usual).max(0.0) * (n / all);
                if x > 0.0 {
                    *out.entry((*pid, comm.to_string())).or_default() += x;
                }
            }
            out
        };
        let hurt = excess(&by_proc, &by_subject, &self.usual_events);
        let busy = excess(&busy_proc, &busy_subject, &self.usual_busy);
        for o in &mut self.open {
            for (k, x) in &hurt {
                *o.excess.entry(k.clone()).or_default() += x;
            }
            for (k, x) in &busy {
                *o.busy.entry(k.clone()).or_default() += x;
            }
            for ((pid, comm), (n, us)) in &waits {
                let w = o.waits.entry((*pid, comm.to_string())).or_default();
                w.0 += n;
                w.1 += us;
            }
        }
        if self.open.is_empty() {
            learn_events(&mut self.usual_events, &by_subject);
            learn_events(&mut self.usual_busy, &busy_subject);
        }

        let mut out = vec![];
        let mut closed = vec![];
        let off_since = &self.off_since;
        for (i, o) in self.open.iter_mut().enumerate() {
            o.interval_s = interval_s;
            let now = o
                .members
                .iter()
                .filter(|m| m.active)
                .map(|m| m.severity)
                .max()
                .unwrap_or(State::Ok);
            if now != State::Ok {
                o.last_active = t;
            }
            let mut newly_critical = false;
            for m in o
                .members
                .iter()
                .filter(|m| m.active && m.severity == State::Critical)
            {
                let sub = subsystem(&m.name, &m.tags);
                if !o.critical_in.contains(&sub) {
                    o.critical_in.push(sub);
                    newly_critical = true;
                }
            }
            let change = if new_ids.contains(&o.id) {
                o.state = now;
                Some(Change::Opened)
            } else if now > o.state || newly_critical {
                o.state = o.state.max(now);
                Some(Change::Escalated)
            } else if now == State::Ok && t - o.last_active >= self.cfg.calm_s {
                let settled = o
                    .members
                    .iter()
                    .any(|m| off_since.contains_key(&(m.name.clone(), m.tags.clone())));
                closed.push(i);
                out.push(o.report(State::Ok, Some(Change::Closed), settled, local));
                continue;
            } else {
                None
            };
            out.push(o.report(o.state, change, false, local));
        }
        for i in closed.into_iter().rev() {
            self.open.remove(i);
        }
        out
    }
}

/// Learns one interval's slow events per subject into `usual` (a moving average).
fn learn_events(usual: &mut HashMap<String, f64>, by_subject: &HashMap<String, f64>) {
    let a = 1.0 / EVENT_MEMORY;
    for v in usual.values_mut() {
        *v *= 1.0 - a;
    }
    for (subj, n) in by_subject {
        if let Some(v) = usual.get_mut(subj) {
            *v += a * n;
        } else if usual.len() < MAX_COMMS {
            usual.insert(subj.clone(), a * n);
        }
    }
    usual.retain(|_, v| *v > 1e-3);
}

/// What a slow event is about, for its usual: its comm and kind, and for a slow call or
/// request its syscall or disk and op (a run-queue wait's CPU, or a connect's ports, vary
/// without meaning).
fn subject(e: &EventView) -> String {
    if e.kind == "slow_syscall" || e.kind == "slow_disk" {
        format!("{}\0{}\0{}", e.comm, e.kind, e.target)
    } else {
        format!("{}\0{}", e.comm, e.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_711_954_800.0; // 2024-04-01 07:00:00 UTC, 09:00:00 in Berlin (CEST)

    fn berlin() -> LocalTime {
        LocalTime::named("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    fn sig(
        name: &str,
        tags: &[(&'static str, &str)],
        value: f64,
        usual: f64,
        state: State,
    ) -> Signal {
        Signal {
            name: name.into(),
            tags: tags.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            kind: if name.contains("latency_us") || name.contains("_pct") || name.ends_with("avg10")
            {
                Kind::Gauge
            } else {
                Kind::Counter
            },
            value,
            usual,
            state,
            calls: None,
            samples: None,
            memory: None,
        }
    }

    fn ev(pid: u32, comm: &str, target: &str) -> EventView {
        EventView {
            kind: "syscall",
            pid,
            tid: pid,
            comm: comm.into(),
            latency_us: 50_000.0,
            target: target.into(),
            ret: Some(4096),
        }
    }

    /// Background slow events every interval: the usual for their comms.
    fn background() -> Vec<EventView> {
        vec![
            ev(10, "cargo", "futex"),
            ev(10, "cargo", "futex"),
            ev(11, "sshd", "poll"),
        ]
    }

    fn calm(inc: &mut Incidents, from: f64, n: usize) -> Vec<Vec<Incident>> {
        (0..n)
            .map(|i| inc.step(from + i as f64, 1.0, &[], &background(), &berlin()))
            .collect()
    }

    /// A quantile of too few values is the slowest call's latency: at most a warning. The
    /// service of the live test makes 20 fdatasync calls per 250 ms interval.
    #[test]
    fn a_quantile_of_few_values_is_a_tail() {
        let with = |name: &str, value: f64, usual: f64, n: f64| {
            let mut s = sig(
                name,
                &[("syscall", "fdatasync")],
                value,
                usual,
                State::Warning,
            );
            s.samples = Some(n);
            severity(&s, 0.25)
        };
        let p99 = "syscall.latency_us.p99";
        assert_eq!(with(p99, 40_600.0, 289.0, 20.0), State::Warning);
        assert_eq!(with(p99, 40_600.0, 289.0, 99.0), State::Warning);
        assert_eq!(with(p99, 40_600.0, 289.0, 100.0), State::Critical);
        let p90 = "syscall.latency_us.p90";
        assert_eq!(with(p90, 14_060.0, 289.0, 9.0), State::Warning);
        assert_eq!(with(p90, 14_060.0, 289.0, 10.0), State::Critical);
        // The throttled writes: one or two calls per interval, each slow: every call.
        let p50 = "syscall.latency_us.p50";
        assert_eq!(with(p50, 210_000.0, 151.0, 1.0), State::Critical);
        assert_eq!(with(p50, 210_000.0, 151.0, 2.0), State::Critical);
        assert_eq!(with(p99, 210_000.0, 151.0, 1.0), State::Critical);
        let mean = "syscall.latency_us.mean";
        assert_eq!(with(mean, 10_000.0, 151.0, 19.0), State::Warning);
        assert_eq!(with(mean, 10_000.0, 151.0, 20.0), State::Critical);
        assert_eq!(with(mean, 10_000.0, 151.0, 1.0), State::Critical);
        // Unknown sample counts (a cgroup's disk latency) keep the magnitude rule.
        assert_eq!(
            severity(
                &sig(
                    p99,
                    &[("syscall", "fdatasync")],
                    40_600.0,
                    289.0,
                    State::Warning
                ),
                0.25
            ),
            State::Critical
        );
        assert_eq!(samples_of("disk.latency_us.p99"), Some("disk.ops"));
        assert_eq!(samples_of("runq.latency_us.mean"), Some("runq.count"));
        assert_eq!(samples_of("cgroup.disk.latency_us.p99"), None);
    }

    /// A warning that lasts is the host's new level: one notification, then the incident
    /// closes as settled, and a later fault opens its own incident instead of joining it.
    #[test]
    fn a_lasting_warning_settles_and_does_not_swallow_later_faults() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let busy = sig("cpu.user_pct", &[], 100.0, 5.0, State::Warning);
        let mut changes = vec![];
        for k in 0..90 {
            for i in inc.step(
                T0 + k as f64,
                1.0,
                std::slice::from_ref(&busy),
                &background(),
                &berlin(),
            ) {
                if let Some(c) = i.change {
                    changes.push((k, i.id, c, i.description));
                }
            }
        }
        // Opened at once; settled after 60 s (last news at 59 s); closed 15 s later, still off.
        assert_eq!(changes.len(), 2, "{changes:#?}");
        assert_eq!((changes[0].0, changes[0].2), (0, Change::Opened));
        assert_eq!((changes[1].0, changes[1].2), (74, Change::Closed));
        assert!(
            changes[1]
                .3
                .starts_with("settled at a new level: cpu busier than usual"),
            "{}",
            changes[1].3
        );
        assert_eq!(inc.open(), 0);
        // The same key still off stays quiet; a real fault is an incident of its own.
        let stall = sig(
            "syscall.latency_us.p50",
            &[("syscall", "fdatasync")],
            210_000.0,
            150.0,
            State::Critical,
        );
        let out = inc.step(T0 + 90.0, 1.0, &[busy.clone(), stall], &[], &berlin());
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].id, out[0].change, out[0].state),
            (2, Some(Change::Opened), State::Critical)
        );
        assert_eq!(out[0].keys.len(), 1);
        // Back to usual, then off again: news again.
        inc.step(T0 + 91.0, 1.0, &[], &[], &berlin());
        let out = inc.step(T0 + 92.0, 1.0, &[busy], &[], &berlin());
        assert!(
            out.iter()
                .any(|i| i.keys.iter().any(|k| k.name == "cpu.user_pct"))
        );
    }

    /// Memory going the harmless way is not an incident; the harmful way is a warning.
    #[test]
    fn memory_getting_freer_is_not_an_incident() {
        let w = |name: &str, value: f64, usual: f64| {
            severity(&sig(name, &[], value, usual, State::Critical), 1.0)
        };
        assert_eq!(w("mem.dirty_bytes", 5e6, 191e6), State::Ok);
        assert_eq!(w("mem.used_bytes", 1e9, 2e9), State::Ok);
        assert_eq!(w("swap.used_bytes", 0.0, 1e9), State::Ok);
        assert_eq!(w("mem.available_bytes", 3e9, 1e9), State::Ok);
        assert_eq!(w("mem.dirty_bytes", 900e6, 5e6), State::Warning);
        assert_eq!(w("mem.available_bytes", 1e8, 2e9), State::Warning);
        // Moves under 1% of the host's memory are not worth a look.
        let with_total = |name: &str, value: f64, usual: f64| {
            let mut s = sig(name, &[], value, usual, State::Critical);
            s.memory = Some(4e9);
            severity(&s, 1.0)
        };
        assert_eq!(with_total("mem.writeback_bytes", 8192.0, 0.0), State::Ok);
        assert_eq!(with_total("mem.used_bytes", 2.039e9, 2e9), State::Ok);
        assert_eq!(with_total("mem.used_bytes", 2.6e9, 2e9), State::Warning);
        assert_eq!(
            with_total("mem.available_bytes", 1.5e9, 2e9),
            State::Warning
        );
        // Rates either way stay a warning: a service's calls collapsing is news.
        assert_eq!(w("syscall.count", 10.0, 5000.0), State::Warning);
    }

    /// An incident of rates alone does not pull a later fault (a critical key) in through its
    /// processes: its slow events are the host's usual ones.
    #[test]
    fn an_incident_of_rates_pulls_no_one_in() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let calls = sig(
            "syscall.count",
            &[("syscall", "getppid")],
            9e4,
            1e3,
            State::Warning,
        );
        let slow = vec![ev(42, "svc", "fdatasync"), ev(42, "svc", "fdatasync")];
        for k in 0..20 {
            inc.step(
                T0 + k as f64,
                1.0,
                std::slice::from_ref(&calls),
                &slow,
                &berlin(),
            );
        }
        let resets = sig("tcp.resets", &[], 900.0, 0.0, State::Critical);
        let out = inc.step(T0 + 20.0, 1.0, &[calls, resets], &slow, &berlin());
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!((out[1].id, out[1].change), (2, Some(Change::Opened)));
    }

    /// What the detector finds unusual but nobody feels is no incident: a latency up by
    /// under 0.1 ms or under 2x, fewer failing path probes.
    #[test]
    fn changes_nobody_feels_are_no_incident() {
        let lat = |syscall: &str, v: f64, u: f64| {
            severity(
                &sig(
                    "syscall.latency_us.p50",
                    &[("syscall", syscall)],
                    v,
                    u,
                    State::Critical,
                ),
                1.0,
            )
        };
        assert_eq!(lat("readlinkat", 2.18, 2.02), State::Ok);
        assert_eq!(lat("read", 0.61, 0.23), State::Ok);
        assert_eq!(lat("pwrite64", 390.0, 200.0), State::Ok); // under 2x
        assert_eq!(lat("pwrite64", 450.0, 200.0), State::Warning);
        assert_eq!(lat("pwrite64", 2_500.0, 200.0), State::Warning);
        assert_eq!(lat("pwrite64", 5_500.0, 200.0), State::Critical);
        // CI, a fresh VM: a cold `find /usr` and a build beside the service. Its fdatasync p90
        // over 20 calls went 0.21 → 2.23 ms: slower, felt, not a stall.
        let mut p90 = sig(
            "syscall.latency_us.p90",
            &[("syscall", "fdatasync")],
            2_230.0,
            209.0,
            State::Critical,
        );
        p90.samples = Some(20.0);
        assert_eq!(severity(&p90, 0.25), State::Warning);
        p90.value = 12_000.0;
        assert_eq!(severity(&p90, 0.25), State::Critical);
        // Levels and rates within a quarter of their usual, and pressure barely up.
        let level =
            |name: &str, v: f64, u: f64| severity(&sig(name, &[], v, u, State::Warning), 0.25);
        let runq = sig("runq.latency_us.p99", &[], 311.0, 65.3, State::Warning);
        assert_eq!(severity(&runq, 0.25), State::Ok);
        let mut disk = sig(
            "disk.latency_us.p90",
            &[("device", "vda"), ("op", "other")],
            377.0,
            68.6,
            State::Warning,
        );
        disk.samples = Some(24.0);
        assert_eq!(severity(&disk, 0.25), State::Ok);
        disk.value = 1_500.0;
        assert_eq!(severity(&disk, 0.25), State::Warning);
        assert_eq!(level("load.15", 0.23, 0.239), State::Ok);
        assert_eq!(level("load.15", 0.28, 0.244), State::Ok);
        assert_eq!(level("load.1", 2.5, 0.3), State::Warning);
        assert_eq!(level("psi.io.some_avg10", 2.5, 2.39), State::Ok);
        assert_eq!(level("psi.io.some_avg10", 12.8, 2.39), State::Warning);
        // Every task stalled on memory a tenth of the time is thrashing; io `full` pressure
        // that high is a cold scan's.
        assert_eq!(level("psi.memory.full_avg10", 12.0, 0.0), State::Critical);
        assert_eq!(level("psi.memory.full_avg10", 4.0, 0.0), State::Warning);
        assert_eq!(
            level("psi.memory.full_stall_us", 30_000.0, 0.0),
            State::Critical
        );
        assert_eq!(
            level("psi.memory.full_stall_us", 20_000.0, 0.0),
            State::Warning
        );
        assert_eq!(level("psi.io.full_avg10", 65.0, 0.0), State::Warning);
        assert_eq!(level("tcp.resets", 1.0, 0.0), State::Warning);
        let rtt = sig("tcp.rtt_us.p50", &[], 90.0, 30.0, State::Critical);
        assert_eq!(severity(&rtt, 1.0), State::Ok);
        let errors = |v: f64, u: f64| {
            severity(
                &sig(
                    "syscall.errors",
                    &[("syscall", "execve")],
                    v,
                    u,
                    State::Critical,
                ),
                1.0,
            )
        };
        assert_eq!(errors(0.0, 4.5), State::Ok);
        assert_eq!(errors(400.0, 4.5), State::Warning);
    }

    /// A tail alone (one slow call) opens no incident; it joins one open anyway.
    #[test]
    fn a_tail_alone_is_no_incident() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let mut tail = sig(
            "syscall.latency_us.p99",
            &[("syscall", "fstat")],
            139.0 * 20.0,
            10.0,
            State::Warning,
        );
        tail.samples = Some(30.0);
        let max = sig(
            "syscall.latency_us.max",
            &[("syscall", "fstat")],
            9e3,
            10.0,
            State::Critical,
        );
        for k in 0..5 {
            let out = inc.step(
                T0 + k as f64,
                1.0,
                &[tail.clone(), max.clone()],
                &[],
                &berlin(),
            );
            assert!(out.is_empty(), "{out:#?}");
        }
        let resets = sig("tcp.resets", &[], 900.0, 0.0, State::Critical);
        let out = inc.step(T0 + 5.0, 1.0, &[resets, tail, max], &[], &berlin());
        assert_eq!(out.len(), 1);
        // One key per subject is shown: the resets and fstat's farthest off (its max); the
        // p99 is "1 more".
        assert_eq!(out[0].keys.len(), 2);
        assert_eq!(out[0].keys[1].name, "syscall.latency_us.max");
        assert!(
            out[0].description.ends_with("and 1 more"),
            "{}",
            out[0].description
        );
    }

    #[test]
    fn severity_follows_impact() {
        use State::*;
        let i = 1.0;
        // Latency: a material rise keeps the detector's state; a small one is a warning;
        // latency going down is not an incident; a tail statistic is at most a warning.
        let p99 = |v, st| {
            sig(
                "syscall.latency_us.p99",
                &[("syscall", "pwrite64")],
                v,
                4000.0,
                st,
            )
        };
        assert_eq!(severity(&p99(1_500_000.0, Critical), i), Critical);
        // The detector finds it unusual; the magnitude makes it critical.
        assert_eq!(severity(&p99(1_500_000.0, Warning), i), Critical);
        assert_eq!(severity(&p99(9000.0, Critical), i), Warning);
        assert_eq!(severity(&p99(500.0, Critical), i), Ok);
        assert_eq!(severity(&p99(1_500_000.0, Ok), i), Ok);
        let max = sig(
            "syscall.latency_us.max",
            &[("syscall", "nanosleep")],
            6e6,
            1100.0,
            Critical,
        );
        assert_eq!(severity(&max, i), Warning);
        // A waiting call's latency is how idle its caller is: at most a warning, either way.
        for (syscall, v) in [("futex", 9e6), ("epoll_wait", 9e6), ("nanosleep", 10.0)] {
            let p50 = sig(
                "syscall.latency_us.p50",
                &[("syscall", syscall)],
                v,
                1e4,
                Critical,
            );
            assert_eq!(severity(&p50, i), Warning, "{syscall}");
        }
        // Rates alone: at most a warning, whichever way.
        let count = sig(
            "syscall.count",
            &[("syscall", "execve")],
            2500.0,
            3.0,
            Critical,
        );
        assert_eq!(severity(&count, i), Warning);
        assert_eq!(
            severity(&sig("disk.ops", &[], 0.0, 300.0, Critical), i),
            Warning
        );
        // Errors: a majority of connects failing is critical; ENOENT from path probing is a rate.
        let mut refused = sig(
            "syscall.errors",
            &[("syscall", "connect")],
            900.0,
            0.0,
            Critical,
        );
        refused.calls = Some((900.0, 2.0));
        assert_eq!(severity(&refused, i), Critical);
        let mut few = refused.clone();
        few.calls = Some((9000.0, 2.0));
        assert_eq!(severity(&few, i), Warning, "10% failing is not a majority");
        let mut enoent = sig(
            "syscall.errors",
            &[("syscall", "openat")],
            9000.0,
            20.0,
            Critical,
        );
        enoent.calls = Some((9000.0, 100.0));
        assert_eq!(severity(&enoent, i), Warning);
        assert_eq!(impact(&enoent.name, &enoent.tags), Impact::Rate);
        assert_eq!(
            severity(&sig("tcp.resets", &[], 800.0, 0.0, Critical), i),
            Critical
        );
        // Saturation: a warning that explains, whatever its level (a cold `find` or a build
        // saturates a small host without hurting anyone); pressure going down is nothing.
        for (name, v) in [
            ("psi.io.full_avg10", 38.0),
            ("psi.cpu.some_avg10", 90.0),
            ("psi.io.full_stall_us", 900_000.0),
            ("cpu.iowait_pct", 40.0),
        ] {
            assert_eq!(
                severity(&sig(name, &[], v, 1.0, Critical), i),
                Warning,
                "{name}"
            );
            assert_eq!(impact(name, &Vec::new()), Impact::Saturation, "{name}");
        }
        assert_eq!(
            severity(&sig("psi.io.full_avg10", &[], 0.0, 5.0, Warning), i),
            Ok
        );
    }

    /// A long incident does not swallow a later episode silently: a critical key in a
    /// subsystem not yet critical escalates it (news for a person), an unrelated subsystem
    /// opens its own incident, and keys calm for a while no longer pull newcomers in.
    #[test]
    fn a_new_critical_subsystem_is_news() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let cpu = sig(
            "syscall.latency_us.p99",
            &[("syscall", "mprotect")],
            90_000.0,
            50.0,
            State::Critical,
        );
        let ops = sig(
            "disk.ops",
            &[("device", "vda"), ("op", "write")],
            900.0,
            10.0,
            State::Warning,
        );
        let disk = sig(
            "syscall.latency_us.p99",
            &[("syscall", "pwrite64")],
            900_000.0,
            400.0,
            State::Critical,
        );
        let busy = sig(
            "syscall.count",
            &[("syscall", "getdents64")],
            9000.0,
            10.0,
            State::Warning,
        );
        let mut notes = vec![];
        for k in 0..60 {
            let mut s = vec![cpu.clone(), ops.clone()];
            if (20..25).contains(&k) {
                s.push(busy.clone()); // a warning in a subsystem already there: not news
            }
            if k >= 50 {
                s.push(disk.clone());
            }
            let out = inc.step(T0 + k as f64, 1.0, &s, &[], &berlin());
            notes.extend(
                out.iter()
                    .filter_map(|i| i.change.map(|c| (k, i.id, c, i.state))),
            );
        }
        assert_eq!(
            notes,
            [
                (0, 1, Change::Opened, State::Critical),
                (50, 1, Change::Escalated, State::Critical)
            ]
        );
        // Memory, long after the start, shares nothing: its own incident.
        let mem = sig("mem.used_bytes", &[], 9e9, 1e9, State::Warning);
        let out = inc.step(T0 + 60.0, 1.0, &[cpu.clone(), mem], &[], &berlin());
        assert_eq!((out[1].id, out[1].change), (2, Some(Change::Opened)));
        // Incident 1's disk keys calm; 20 s later a disk key no longer joins it.
        for k in 61..81 {
            inc.step(
                T0 + k as f64,
                1.0,
                std::slice::from_ref(&cpu),
                &[],
                &berlin(),
            );
        }
        let bytes = sig(
            "disk.bytes",
            &[("device", "vda"), ("op", "write")],
            9e7,
            1e5,
            State::Warning,
        );
        let out = inc.step(T0 + 81.0, 1.0, &[cpu, bytes], &[], &berlin());
        let opened: Vec<u64> = out
            .iter()
            .filter(|i| i.change == Some(Change::Opened))
            .map(|i| i.id)
            .collect();
        assert_eq!(opened, [3]);
    }

    #[test]
    fn subsystems_of_keys() {
        let s = |n: &str, t: &[(&'static str, &str)]| {
            subsystem(n, &t.iter().map(|(k, v)| (*k, v.to_string())).collect())
        };
        assert_eq!(
            s("syscall.latency_us.p99", &[("syscall", "pwrite64")]),
            "disk"
        );
        // A read waits as long on a pipe as on a disk.
        assert_eq!(
            s("syscall.latency_us.p50", &[("syscall", "read")]),
            "syscall"
        );
        assert_eq!(s("syscall.errors", &[("syscall", "connect")]), "tcp");
        assert_eq!(s("syscall.count", &[("syscall", "execve")]), "syscall");
        assert_eq!(s("psi.io.full_avg10", &[]), "disk");
        assert_eq!(s("cpu.iowait_pct", &[]), "disk");
        assert_eq!(s("psi.cpu.some_avg10", &[]), "cpu");
        assert_eq!(s("mem.used_bytes", &[]), "memory");
        assert_eq!(s("tcp.resets", &[]), "tcp");
    }

    /// A disk stall: keys going off over a few intervals make one incident that opens as a
    /// warning, escalates once to critical, names the writer, and closes once when calm.
    #[test]
    fn one_incident_per_episode() {
        let mut inc = Incidents::new(IncidentConfig::default());
        calm(&mut inc, T0 - 100.0, 100);
        let writer = |n: usize| {
            let mut v = background();
            v.extend((0..n).map(|_| ev(4121, "postgres", "pwrite64")));
            v
        };
        let mut notes = vec![];
        let mut last = vec![];
        for k in 0..20 {
            let t = T0 + k as f64;
            let mut s = vec![sig(
                "syscall.latency_us.p99",
                &[("syscall", "pwrite64")],
                if k < 2 { 9000.0 } else { 1_500_000.0 },
                4000.0,
                if k < 2 {
                    State::Warning
                } else {
                    State::Critical
                },
            )];
            if k >= 1 {
                s.push(sig("psi.io.full_avg10", &[], 38.0, 0.0, State::Critical));
                s.push(sig(
                    "disk.ops",
                    &[("device", "vda"), ("op", "write")],
                    5.0,
                    300.0,
                    State::Warning,
                ));
            }
            if k >= 12 {
                // Another subsystem, later on, from the same process: same incident.
                s.push(sig(
                    "syscall.count",
                    &[("syscall", "futex")],
                    9000.0,
                    100.0,
                    State::Warning,
                ));
            }
            last = inc.step(t, 1.0, &s, &writer(24), &berlin());
            notes.extend(
                last.iter()
                    .filter_map(|i| i.change.map(|c| (i.id, c, i.state))),
            );
        }
        assert_eq!(
            notes,
            vec![
                (1, Change::Opened, State::Warning),
                (1, Change::Escalated, State::Critical)
            ]
        );
        let i = &last[0];
        assert_eq!(i.state, State::Critical);
        assert_eq!(i.since, T0 as u64 - 1);
        assert_eq!(i.subsystems, ["disk", "syscall"]);
        assert_eq!(i.processes[0].comm, "postgres");
        assert_eq!(i.processes[0].pid, 4121);
        assert!(i.processes[0].share > 0.95, "{:?}", i.processes);
        assert_eq!(i.keys[0].name, "syscall.latency_us.p99");
        assert_eq!(
            i.description,
            "critical: disk stalled since 08:59:59 — syscall pwrite64 p99 1.5 s (usual 4 ms), \
             psi io full avg10 38% (usual 0%), syscall futex count 9000/s (usual 100/s) and 1 more; \
             98% of slow events from postgres[4121]"
        );
        // Calm: closes once, after `calm_s`, saying so.
        let after = calm(&mut inc, T0 + 20.0, 30);
        let closes: Vec<&Incident> = after
            .iter()
            .flatten()
            .filter(|i| i.change.is_some())
            .collect();
        assert_eq!(closes.len(), 1);
        assert_eq!(closes[0].change, Some(Change::Closed));
        assert_eq!(closes[0].state, State::Ok);
        assert!(
            closes[0]
                .description
                .starts_with("resolved: disk stalled since 08:59:59")
        );
        assert_eq!(inc.open(), 0);
        assert!(after.last().unwrap().is_empty());
        // The next episode gets a new id.
        let next = inc.step(
            T0 + 60.0,
            1.0,
            &[sig("tcp.resets", &[], 900.0, 0.0, State::Critical)],
            &[],
            &berlin(),
        );
        assert_eq!((next[0].id, next[0].change), (2, Some(Change::Opened)));
        assert_eq!(next[0].state, State::Critical);
        assert!(next[0].processes.is_empty());
        assert_eq!(
            next[0].description,
            "critical: tcp failing since 09:00:59 — tcp resets 900/s (usual 0/s)"
        );
    }

    fn wait(pid: u32, comm: &str, preempted: bool, ms: f64) -> EventView {
        EventView {
            kind: if preempted {
                events::RUNQ_PREEMPTED
            } else {
                events::RUNQ_WOKEN
            },
            pid,
            tid: pid,
            comm: comm.into(),
            latency_us: ms * 1000.0,
            target: "cpu 0".into(),
            ret: None,
        }
    }

    /// Run-queue waits: tens of ms more is critical; the few ms of a busy spell is a warning
    /// (figures measured on a 2-vCPU VM).
    #[test]
    fn run_queue_waits_of_tens_of_ms_are_critical() {
        let i = 0.25;
        let rq = |q: &str, v: f64, usual: f64| {
            severity(
                &sig(
                    &format!("runq.latency_us.{q}"),
                    &[],
                    v,
                    usual,
                    State::Warning,
                ),
                i,
            )
        };
        // Twice as many busy loops as CPUs, with other work, and on a quiet host.
        assert_eq!(rq("p99", 39846.0, 2030.0), State::Critical);
        assert_eq!(rq("mean", 6305.0, 14.0), State::Critical);
        assert_eq!(rq("mean", 1550.0, 41.7), State::Critical);
        assert_eq!(rq("p99", 8130.0, 1640.0), State::Warning);
        assert_eq!(rq("p50", 4063.0, 13.0), State::Warning);
        assert_eq!(rq("max", 176161.0, 4000.0), State::Warning);
        // 2,500 short processes and a `find /usr`; throttled writes; a build on the same host.
        assert_eq!(rq("p99", 5505.0, 172.0), State::Warning);
        assert_eq!(rq("mean", 526.0, 14.0), State::Warning);
        assert_eq!(rq("p99", 8126.0, 172.0), State::Warning);
        assert_eq!(rq("mean", 649.0, 14.0), State::Warning);
        assert_eq!(rq("p50", 5.0, 13.0), State::Ok);
        assert_eq!(impact("runq.latency_us.p50", &vec![]), Impact::Latency);
        assert_eq!(subsystem("runq.latency_us.p50", &vec![]), "cpu");
    }

    /// CPU hogs: the incident names the service whose wakeups waited (not the hogs, whose
    /// waits are preemptions), says how long it waited, and who kept the CPUs busy.
    #[test]
    fn cpu_hogs_name_who_waited_and_who_was_busy() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let usual = |t| {
            let mut v = background();
            v.push(wait(300, "rustc", true, 25.0)); // a build's usual share
            v.push(wait(300, "rustc", false, 21.0));
            if t % 4 == 0 {
                v.push(wait(15, "rcu_preempt", false, 22.0));
            }
            v
        };
        for k in 0..100 {
            inc.step(T0 - 100.0 + k as f64, 1.0, &[], &usual(k), &berlin());
        }
        let mut last = vec![];
        for k in 0..10 {
            let mut ev = usual(k);
            for h in 0..4 {
                for _ in 0..20 {
                    ev.push(wait(1201 + h, "bash", true, 16.0));
                }
            }
            for _ in 0..3 {
                ev.push(wait(4121, "steadysvc", false, 9.0));
            }
            ev.push(wait(15, "rcu_preempt", false, 22.0));
            ev.push(wait(300, "rustc", false, 30.0));
            let s = [
                sig("runq.latency_us.p99", &[], 39846.0, 2030.0, State::Critical),
                sig("runq.latency_us.p50", &[], 4063.0, 13.0, State::Critical),
            ];
            last = inc.step(T0 + k as f64, 1.0, &s, &ev, &berlin());
        }
        let i = &last[0];
        assert_eq!(i.state, State::Critical);
        assert_eq!(i.subsystems, ["cpu"]);
        assert_eq!(
            (i.processes[0].comm.as_str(), i.processes[0].pid),
            ("steadysvc", 4121)
        );
        assert!(
            i.processes.iter().all(|p| p.comm != "bash"),
            "{:?}",
            i.processes
        );
        assert_eq!(
            i.description,
            "critical: cpu overloaded since 08:59:59 — runq p99 39.8 ms (usual 2.03 ms) and 1 \
             more; 51% of slow events from steadysvc[4121], which waited 9 ms for a CPU on average; \
             busy on the CPUs: 4 × bash (1201, 1202, 1203, …)"
        );
    }

    /// A service whose writes are throttled slows its whole loop: fewer of its usual slow
    /// events (waits for a CPU), more slow writes. Counted per subject, it is still named.
    #[test]
    fn slow_events_are_judged_per_subject() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let svc = |n_waits: usize, n_writes: usize| {
            let mut v = background();
            v.extend((0..n_waits).map(|_| wait(4121, "steadysvc", false, 6.0)));
            v.extend((0..n_writes).map(|_| ev(4121, "steadysvc", "pwrite64")));
            v
        };
        for k in 0..100 {
            inc.step(T0 - 100.0 + k as f64, 1.0, &[], &svc(8, 0), &berlin());
        }
        let p99 = sig(
            "syscall.latency_us.p99",
            &[("syscall", "pwrite64")],
            110_000.0,
            150.0,
            State::Critical,
        );
        let out = inc.step(T0, 1.0, &[p99], &svc(1, 5), &berlin());
        assert_eq!(out[0].state, State::Critical);
        assert_eq!(
            out[0].processes[0].comm, "steadysvc",
            "{:?}",
            out[0].processes
        );
    }

    /// A storm of refused connects names who connected (failed connects are events too).
    #[test]
    fn a_connect_storm_names_who_connects() {
        let mut inc = Incidents::new(IncidentConfig::default());
        calm(&mut inc, T0 - 100.0, 100);
        let refused = |pid| EventView {
            kind: events::TCP_CONNECT_FAILED,
            pid,
            tid: pid,
            comm: "steadysvc".into(),
            latency_us: 40.0,
            target: "127.0.0.1:40000 -> 127.0.0.1:9".into(),
            ret: None,
        };
        let mut ev = background();
        ev.extend((0..50).map(|_| refused(4121)));
        let mut errors = sig(
            "syscall.errors",
            &[("syscall", "connect")],
            800.0,
            0.0,
            State::Critical,
        );
        errors.calls = Some((800.0, 0.0));
        let out = inc.step(T0, 1.0, &[errors], &ev, &berlin());
        assert_eq!(out[0].state, State::Critical);
        assert_eq!(out[0].processes[0].comm, "steadysvc");
        assert!(out[0].processes[0].share > 0.9, "{:?}", out[0].processes);
        assert!(
            out[0]
                .description
                .starts_with("critical: tcp failing since 08:59:59")
                && out[0]
                    .description
                    .contains("% of slow events from steadysvc[4121]"),
            "{}",
            out[0].description
        );
    }

    /// A benign burst: many rate keys in several subsystems over a minute are one warning
    /// incident, never critical.
    #[test]
    fn a_burst_of_rates_is_one_warning() {
        let mut inc = Incidents::new(IncidentConfig::default());
        calm(&mut inc, T0 - 100.0, 100);
        let mut notes = vec![];
        for k in 0..60 {
            let t = T0 + k as f64;
            let mut s = vec![];
            for (j, name) in [
                "execve",
                "clone",
                "mmap",
                "openat",
                "newfstatat",
                "getdents64",
            ]
            .iter()
            .enumerate()
            {
                if k >= j * 5 {
                    s.push(sig(
                        "syscall.count",
                        &[("syscall", name)],
                        5000.0,
                        50.0,
                        State::Critical,
                    ));
                }
            }
            if k > 30 {
                s.push(sig("cpu.user_pct", &[], 60.0, 10.0, State::Critical));
                s.push(sig(
                    "disk.ops",
                    &[("device", "vda"), ("op", "read")],
                    900.0,
                    1.0,
                    State::Critical,
                ));
                // Latency going down is not an incident.
                s.push(sig(
                    "syscall.latency_us.p99",
                    &[("syscall", "read")],
                    2.0,
                    40.0,
                    State::Critical,
                ));
            }
            let out = inc.step(t, 1.0, &s, &background(), &berlin());
            notes.extend(
                out.iter()
                    .filter_map(|i| i.change.map(|c| (i.id, c, i.state))),
            );
            assert!(out.iter().all(|i| i.state != State::Critical));
        }
        assert_eq!(notes, vec![(1, Change::Opened, State::Warning)]);
    }

    #[test]
    fn unrelated_keys_far_apart_are_separate_incidents() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let a = [sig("tcp.resets", &[], 900.0, 0.0, State::Critical)];
        let b = [sig("mem.used_bytes", &[], 9e9, 1e9, State::Warning)];
        for k in 0..30 {
            inc.step(T0 + k as f64, 1.0, &a, &[], &berlin());
        }
        let out = inc.step(
            T0 + 30.0,
            1.0,
            &[a[0].clone(), b[0].clone()],
            &[],
            &berlin(),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].id, out[1].change, out[1].state),
            (2, Some(Change::Opened), State::Warning)
        );
        assert_eq!(out[1].subsystems, ["memory"]);
    }

    #[test]
    fn json_shape() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let out = inc.step(
            T0,
            1.0,
            &[sig("psi.io.full_avg10", &[], 38.0, 0.0, State::Critical)],
            &[ev(7, "dd", "fsync")],
            &LocalTime::Fixed(0),
        );
        let v = serde_json::to_value(&out[0]).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["state"], "warning");
        assert_eq!(v["since"], T0 as u64 - 1);
        assert_eq!(v["subsystems"][0], "disk");
        assert_eq!(v["processes"][0]["comm"], "dd");
        assert_eq!(v["processes"][0]["pid"], 7);
        assert_eq!(v["processes"][0]["share"], 1.0);
        assert_eq!(v["keys"][0]["name"], "psi.io.full_avg10");
        assert_eq!(v["keys"][0]["tags"], serde_json::json!({}));
        assert_eq!(v["keys"][0]["value"], 38.0);
        assert_eq!(v["keys"][0]["usual"], 0.0);
        assert!(
            v["description"]
                .as_str()
                .unwrap()
                .starts_with("warning: disk saturated since 06:59:59")
        );
        assert!(v.get("change").is_none() || out[0].change.is_some());
        let opened = Incident {
            change: Some(Change::Opened),
            ..out[0].clone()
        };
        assert_eq!(serde_json::to_value(&opened).unwrap()["change"], "opened");
    }
}
