//! The cgroup "probe": per-cgroup attribution of the syscall, disk, tcp and runq probes' events
//! (their programs add to the cgroup rows when the object was loaded with it on: it has no
//! programs of its own). Kernel side: `agent-ebpf/src/cgroup.rs`; contract:
//! `agent_common::probes::cgroup`.
//!
//! Each interval: the slots' cgroup ids from the index, the changed rows read whole, named by
//! `agent_core::cgroup` (path below the v2 root, containers and pods shortened), merged by name,
//! then the top K by syscall time plus `cgroup=other` (every count adds up to the host's).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::RwLock,
};

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event, hist,
    layout::{self, Block, CELL_BUCKETS, CLAIMING},
    probes::cgroup::{
        self as contract, ALL_SLOTS, CELL_DISK_BYTES, CELL_EVENTS, CELL_SYS_COUNT, CELL_SYS_ERRORS,
        CELL_SYS_TIME_NS, CELL_TAKEN, CELL_TCP_CONNECTS, CG_BUCKETS, CgroupBtf, HASH_ENTRIES,
        HIST_DISK, HIST_RUNQ, HIST_SYSCALL, OPS_DISK, OVERFLOW, SLOTS, cell_id, cell_slot,
        fine_range,
    },
};
use agent_core::cgroup::{Index, OTHER, Pods, readable, top_k, v2_root};
use aya::Ebpf;

use super::{
    Globals, ProbeDef, ProbeState, Program, Rows, Section,
    btf::{Btf, BtfError},
};
use crate::{
    catalogue::MetricDef,
    snapshot::{Metric, Tags},
};
use agent_core::events::EventView;

const T: &[&str] = &["cgroup"];
const T_OP: &[&str] = &["cgroup", "op"];

pub const SYS_COUNT: MetricDef = MetricDef::counter(
    "cgroup.syscall.count",
    T,
    "syscalls completed by the cgroup's tasks (the top K cgroups by syscall time, the rest in cgroup=other: they add up to syscall.count)",
);
pub const SYS_ERRORS: MetricDef = MetricDef::counter(
    "cgroup.syscall.errors",
    T,
    "syscalls of the cgroup's tasks that returned an error",
);
pub const SYS_TIME: MetricDef = MetricDef::counter(
    "cgroup.syscall.time_us",
    T,
    "time the cgroup's tasks spent in syscalls",
);
pub const SYS_P50: MetricDef = MetricDef::gauge(
    "cgroup.syscall.latency_us.p50",
    T,
    "syscall latency of the cgroup's tasks (buckets 2 per power of two: within 25%)",
);
pub const SYS_P99: MetricDef = MetricDef::gauge(
    "cgroup.syscall.latency_us.p99",
    T,
    "syscall latency of the cgroup's tasks (buckets 2 per power of two: within 25%)",
);
pub const SYS_MAX: MetricDef = MetricDef::gauge(
    "cgroup.syscall.latency_us.max",
    T,
    "syscall latency of the cgroup's tasks (buckets 2 per power of two: within 25%)",
);
pub const DISK_OPS: MetricDef = MetricDef::counter(
    "cgroup.disk.ops",
    T_OP,
    "block requests completed, by the cgroup of the task that issued them",
);
pub const DISK_BYTES: MetricDef = MetricDef::counter(
    "cgroup.disk.bytes",
    T_OP,
    "bytes of the block requests the cgroup's tasks issued",
);
pub const DISK_P50: MetricDef = MetricDef::gauge(
    "cgroup.disk.latency_us.p50",
    T,
    "block request latency, by the issuing task's cgroup (within 25%)",
);
pub const DISK_P99: MetricDef = MetricDef::gauge(
    "cgroup.disk.latency_us.p99",
    T,
    "block request latency, by the issuing task's cgroup (within 25%)",
);
pub const TCP_CONNECTS: MetricDef = MetricDef::counter(
    "cgroup.tcp.connects",
    T,
    "TCP connects the cgroup's tasks started (SYN sent)",
);
pub const RUNQ_P50: MetricDef = MetricDef::gauge(
    "cgroup.runq.latency_us.p50",
    T,
    "run-queue latency of the cgroup's tasks (BTF tracepoints only; within 25%)",
);
pub const RUNQ_P99: MetricDef = MetricDef::gauge(
    "cgroup.runq.latency_us.p99",
    T,
    "run-queue latency of the cgroup's tasks (BTF tracepoints only; within 25%)",
);

/// The settings of per-cgroup attribution, set by the collector from the agent's settings (at
/// start and on SIGHUP) and read by the probe's state each interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Cgroups reported per interval besides `other` (`cgroup_top`).
    pub top: usize,
    /// Where the cgroup filesystem is mounted (`cgroup_fs`).
    pub fs: PathBuf,
}

static CONFIG: RwLock<Option<CgroupConfig>> = RwLock::new(None);

/// Sets what the cgroup probe's state reads (see [`CgroupConfig`]).
pub fn configure(c: CgroupConfig) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
}

fn config() -> CgroupConfig {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| {
            let d = agent_core::settings::Settings::default();
            CgroupConfig {
                top: d.cgroup_top,
                fs: d.cgroup_fs,
            }
        })
}

/// Where the node's pod logs are (mounted read-only into the DaemonSet).
pub const PODS_DIR: &str = "/var/log/pods";
pub const CONTAINERS_DIR: &str = "/var/log/containers";

pub struct Cgroup;

impl ProbeDef for Cgroup {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn block(&self) -> Block {
        layout::CGROUP
    }

    /// No programs of its own: the others' programs record for it.
    fn variants(&self) -> &'static [&'static [Program]] {
        &[&[]]
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

    fn metrics(&self) -> &'static [MetricDef] {
        &[
            SYS_COUNT,
            SYS_ERRORS,
            SYS_TIME,
            SYS_P50,
            SYS_P99,
            SYS_MAX,
            DISK_OPS,
            DISK_BYTES,
            DISK_P50,
            DISK_P99,
            TCP_CONNECTS,
            RUNQ_P50,
            RUNQ_P99,
        ]
    }

    fn watch_section(&self) -> Option<(&'static str, Section)> {
        Some(("containers", watch_section))
    }

    fn state(&self) -> Box<dyn ProbeState> {
        let config = config();
        Box::new(CgroupState {
            root: find_root(&config.fs),
            config,
            names: HashMap::new(),
            pods: None,
        })
    }
}

/// `task->cgroups->dfl_cgrp->kn->id` from the kernel's BTF (runq waits by the woken task).
pub fn btf_offsets(btf: &Btf) -> Result<CgroupBtf, BtfError> {
    Ok(CgroupBtf {
        task_cgroups: btf.member_sized("task_struct", "cgroups", 8)?,
        css_set_dfl_cgrp: btf.member_sized("css_set", "dfl_cgrp", 8)?,
        cgroup_kn: btf.member_sized("cgroup", "kn", 8)?,
        kn_id: btf.member_sized("kernfs_node", "id", 8)?,
        on: 1,
        _pad: 0,
    })
}

/// The v2 hierarchy's root below `fs` (warned when there is none).
fn find_root(fs: &Path) -> Option<PathBuf> {
    let root = v2_root(fs);
    if root.is_none() {
        tracing::warn!(
            "no cgroup v2 hierarchy under {} (cgroup_fs): cgroups are named by their id; set cgroup_fs to where the host's cgroup filesystem is mounted",
            fs.display()
        );
    }
    root
}

struct CgroupState {
    /// The settings `root` was found with.
    config: CgroupConfig,
    root: Option<PathBuf>,
    /// Readable name by cgroup id (cgroups never change paths; ids are not reused while the
    /// hierarchy is mounted), and its path below the root (`None`: gone before it was named).
    names: HashMap<u64, (String, Option<String>)>,
    pods: Option<Pods>,
}

impl CgroupState {
    /// Names every id of `ids` not named yet: one walk of the hierarchy (and of the pod logs)
    /// per interval that saw a new cgroup.
    fn name_all(&mut self, ids: &[u64]) {
        if ids.iter().all(|id| *id == 0 || self.names.contains_key(id)) {
            return;
        }
        let index = self.root.as_deref().map(Index::scan).unwrap_or_default();
        // Read again with every new cgroup: pods come and go with them.
        let pods = self.pods.insert(Pods::load(
            Path::new(PODS_DIR),
            Some(Path::new(CONTAINERS_DIR)),
        ));
        for &id in ids {
            if id == 0 || self.names.contains_key(&id) {
                continue;
            }
            let named = match index.path(id) {
                Some(path) => (readable(path, pods), Some(path.to_string())),
                // Gone before it could be named (a short-lived cgroup).
                None => (format!("id-{id}"), None),
            };
            self.names.insert(id, named);
        }
    }

    /// Whether cgroup `id` is still in the hierarchy (`None`: no hierarchy to tell).
    fn exists(&self, id: u64) -> Option<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let root = self.root.as_deref()?;
        Some(match self.names.get(&id) {
            Some((_, Some(path))) => {
                std::fs::metadata(root.join(path)).is_ok_and(|m| m.ino() == id)
            }
            // Not in the hierarchy when it was named.
            Some((_, None)) => false,
            // Not named yet: it is now, at the next interval.
            None => true,
        })
    }

    /// Gives back the slots and entries of cgroups deleted from the hierarchy whose rows did
    /// not change this interval (`entries`: index entry, cgroup id, slot cell; `changed`: per
    /// slot), and lets cgroups that went to the overflow claim a slot again when one is free.
    ///
    /// The race accepted: a cgroup can only be removed when no task is left in it, so no
    /// program is recording for it when its entry goes (its rows were idle for an interval
    /// besides); only a block request issued by one of its tasks before it was removed and
    /// completing after its slot went to another cgroup could land in the other's row, and the
    /// row's baseline, re-read at release, keeps anything before that out of the new owner's
    /// counts. A cgroup whose entry is unreachable (the same id earlier in its probe chain: it
    /// claimed a new entry after an entry before its own was released) is released likewise.
    fn recycle(&mut self, rows: &mut Rows<'_>, entries: &[(usize, u64, u64)], changed: &[bool]) {
        let at = |cell: usize| layout::CGROUP_INDEX + cell;
        let mut released = 0;
        for &(e, id, v) in entries {
            if v == 0 || v == CLAIMING {
                continue;
            }
            let slot = ((v - 1) as usize).min(OVERFLOW);
            if changed.get(slot).copied().unwrap_or(false) && slot < SLOTS {
                continue;
            }
            let unreachable = (0..contract::PROBES)
                .map(|i| (contract::home(id) + i) & (HASH_ENTRIES - 1))
                .take_while(|&e2| e2 != e)
                .any(|e2| rows.index_cell(at(cell_id(e2))) == id);
            let gone = match self.exists(id) {
                Some(exists) => !exists,
                // Without the hierarchy nothing is known gone.
                None => false,
            };
            if !(gone || unreachable) {
                continue;
            }
            let ix = rows.index();
            if !ix.compare_exchange(at(cell_slot(e)), v, 0) {
                continue;
            }
            if slot < SLOTS {
                rows.reprime_all(slot);
                rows.index().and(at(CELL_TAKEN), !(1u64 << slot));
            }
            rows.index().compare_exchange(at(cell_id(e)), id, 0);
            if gone {
                self.names.remove(&id);
            }
            released += 1;
        }
        // Cgroups first seen while every slot was taken retry at their next event.
        let mut free = (!rows.index_cell(at(CELL_TAKEN)) & ALL_SLOTS).count_ones();
        for &(e, _, v) in entries {
            if free == 0 {
                break;
            }
            if v == OVERFLOW as u64 + 1 && rows.index().compare_exchange(at(cell_slot(e)), v, 0) {
                free -= 1;
            }
        }
        if released > 0 {
            tracing::debug!("{released} cgroup slots of deleted cgroups given back");
        }
    }
}

/// `q`-quantile of a coarse histogram in µs (the coarse bucket's midpoint).
pub fn coarse_quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    let i = buckets.iter().position(|&c| {
        seen += c;
        seen >= rank
    })?;
    Some(coarse_mid_us(i))
}

fn coarse_mid_us(i: usize) -> f64 {
    let (lo, hi) = fine_range(i);
    let (lo, hi) = (hist::bucket_lo(lo), hist::bucket_hi(hi - 1));
    (lo + (hi - lo) / 2) as f64 / 1000.0
}

fn coarse_max(buckets: &[u64]) -> Option<f64> {
    buckets.iter().rposition(|&c| c != 0).map(coarse_mid_us)
}

/// Turns one interval's cgroup rows (name, cells in `layout` order) into metrics.
pub fn metrics_of(rows: Vec<(String, Vec<u64>)>, k: usize, out: &mut Vec<Metric>) {
    let ranked = top_k(rows, k, |c| c.get(CELL_SYS_TIME_NS).copied().unwrap_or(0));
    for (name, c) in ranked {
        let tags: Tags = vec![("cgroup", name)];
        let hist = |at: usize| &c[CELL_BUCKETS + at..CELL_BUCKETS + at + CG_BUCKETS];
        out.push(SYS_COUNT.count(tags.clone(), c[CELL_SYS_COUNT]));
        out.push(SYS_ERRORS.count(tags.clone(), c[CELL_SYS_ERRORS]));
        out.push(SYS_TIME.count(tags.clone(), c[CELL_SYS_TIME_NS] / 1000));
        let sys = hist(HIST_SYSCALL);
        if let (Some(p50), Some(p99), Some(max)) = (
            coarse_quantile(sys, 0.5),
            coarse_quantile(sys, 0.99),
            coarse_max(sys),
        ) {
            out.push(SYS_P50.level(tags.clone(), p50));
            out.push(SYS_P99.level(tags.clone(), p99));
            out.push(SYS_MAX.level(tags.clone(), max));
        }
        for (op, op_name) in super::disk::OPS.iter().enumerate() {
            let ops = c[CELL_BUCKETS + OPS_DISK + op];
            if ops > 0 {
                let t: Tags = vec![("cgroup", tags[0].1.clone()), ("op", op_name.to_string())];
                out.push(DISK_OPS.count(t.clone(), ops));
                out.push(DISK_BYTES.count(t, c[CELL_DISK_BYTES + op]));
            }
        }
        let disk = hist(HIST_DISK);
        if let (Some(p50), Some(p99)) = (coarse_quantile(disk, 0.5), coarse_quantile(disk, 0.99)) {
            out.push(DISK_P50.level(tags.clone(), p50));
            out.push(DISK_P99.level(tags.clone(), p99));
        }
        if c[CELL_TCP_CONNECTS] > 0 {
            out.push(TCP_CONNECTS.count(tags.clone(), c[CELL_TCP_CONNECTS]));
        }
        let runq = hist(HIST_RUNQ);
        if let (Some(p50), Some(p99)) = (coarse_quantile(runq, 0.5), coarse_quantile(runq, 0.99)) {
            out.push(RUNQ_P50.level(tags.clone(), p50));
            out.push(RUNQ_P99.level(tags, p99));
        }
    }
}

impl ProbeState for CgroupState {
    fn attached(&mut self, _ebpf: &mut Ebpf) {}

    fn collect(&mut self, _ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>) {
        let config = config();
        if config.fs != self.config.fs {
            // Moved by a reload: ids stay, their names come from the new mount.
            self.root = find_root(&config.fs);
            self.names.clear();
        }
        self.config = config;
        // Slot → cgroup id, from the index's entries (a few KiB, read through the mapping).
        let mut ids = [0u64; SLOTS];
        let mut entries = Vec::new();
        for e in 0..HASH_ENTRIES {
            let id = rows.index_cell(layout::CGROUP_INDEX + cell_id(e));
            let v = rows.index_cell(layout::CGROUP_INDEX + cell_slot(e));
            if id != 0 && v != 0 && v != CLAIMING && ((v - 1) as usize) < SLOTS {
                ids[(v - 1) as usize] = id;
            }
            if id != 0 {
                entries.push((e, id, v));
            }
        }
        let mut changed = Vec::new();
        let mut is_changed = [false; OVERFLOW + 1];
        for (slot, c) in is_changed.iter_mut().enumerate() {
            if let Some(d) = rows.delta_all(slot, CELL_SYS_COUNT, CELL_EVENTS) {
                changed.push((slot, d.to_vec()));
                *c = true;
            }
        }
        // Every cgroup with an entry is named (and its path known, to tell when it is gone).
        let all: Vec<u64> = entries.iter().map(|&(_, id, _)| id).collect();
        self.name_all(&all);
        let named = changed
            .into_iter()
            .map(|(slot, cells)| {
                let name = match ids.get(slot) {
                    Some(&id) if id != 0 => {
                        self.names.get(&id).map(|n| n.0.clone()).unwrap_or_default()
                    }
                    // The overflow row (or a slot whose id is not visible yet).
                    _ => OTHER.to_string(),
                };
                (name, cells)
            })
            .collect();
        metrics_of(named, self.config.top, out);
        self.recycle(rows, &entries, &is_changed);
        let overflow = rows.counter(contract::CTR_OVERFLOW);
        if overflow > 0 {
            tracing::debug!("{overflow} events of cgroups without a slot went to cgroup=other");
        }
    }

    fn keys(&self) -> Vec<(&'static str, Tags, usize)> {
        vec![]
    }

    fn event(&self, _e: &Event) -> Option<EventView> {
        None
    }
}

// ---- its section of `watch` ----

use crate::watch::{
    layout::Line,
    model::{Scale, mark, sparkline},
    sections::{SectionCtx, marked, probe_down, table_head},
};
use agent_core::format::{self, Style::Column};

/// Cgroups shown in `watch` (the rest are in the metrics).
const WATCH_ROWS: usize = 8;
/// Characters of the cgroup column.
const NAME_W: usize = 30;

/// `name` within `w` characters: its end, the most specific part (`.../pod/container`).
fn name_tail(name: &str, w: usize) -> String {
    let n = name.chars().count();
    if n <= w {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - (w - 1)).collect();
    format!("…{tail}")
}

/// The busiest cgroups by time in syscalls, with calls/s, syscall p99 and run-queue p99, and a
/// sparkline of their calls/s; `other` last.
fn watch_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, Cgroup.name(), "CONTAINERS") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let mut rows: Vec<(&str, f64)> = snap
        .metrics
        .iter()
        .filter(|m| m.name == SYS_TIME.name)
        .filter_map(|m| m.tags.first().map(|t| (t.1.as_str(), m.value)))
        .collect();
    // Largest first, `other` last whatever its size: it is many cgroups.
    rows.sort_by(|a, b| {
        (a.0 == OTHER)
            .cmp(&(b.0 == OTHER))
            .then(b.1.total_cmp(&a.1))
            .then(a.0.cmp(b.0))
    });
    let shown = rows.len().min(WATCH_ROWS);
    let mut out = vec![Line::plain(format!(
        "CONTAINERS (CGROUPS) BY SYSCALL TIME ({shown} of {})",
        rows.len()
    ))];
    let head = format!(
        "{:<w$}{:>10}{:>10}{:>12}{:>11}  ",
        "cgroup",
        "calls/s",
        "p99 µs",
        "runq p99 µs",
        "time ms/s",
        w = NAME_W
    );
    let (head, spark_w) = table_head(head, "calls/s", snap, width);
    out.push(head);
    if rows.is_empty() {
        out.push(Line::plain("  (no cgroup made a syscall in this interval)"));
    }
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format::number(v, Column));
    for &(name, time_us) in rows.iter().take(WATCH_ROWS) {
        let tag = [("cgroup", name)];
        let m = mark(snap, |a| {
            a.name.starts_with("cgroup.") && crate::snapshot::tags_include(&a.tags, &tag)
        });
        let calls = snap.value(SYS_COUNT.name, &tag).unwrap_or(0.0);
        out.push(Line::marked(
            m,
            format!(
                "{:<w$}{:>10}{:>10}{:>12}{:>11}  {}",
                marked(m, &name_tail(name, NAME_W - 2)),
                format::count(calls / secs),
                num(snap.value(SYS_P99.name, &tag)),
                num(snap.value(RUNQ_P99.name, &tag)),
                format::number(time_us / 1000.0 / secs, Column),
                sparkline(&h.points(SYS_COUNT.name, &tag), spark_w, Scale::FromZero),
                w = NAME_W
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_shows_the_busiest_cgroups_then_other() {
        use crate::watch::model::History;
        let mut out =
            vec![crate::catalogue::agent::PROBE_UP.level(vec![("probe", "cgroup".into())], 1.0)];
        let long = "shop/checkout-7d9f5c6b8-x2x4q/istio-proxy-and-more";
        for (name, calls, time_us, p99, runq) in [
            ("other", 50_000, 900_000, 3.0, 10.0),
            ("batch/app", 1_000, 2_000, 1.5, 12_000.0),
            (long, 20_000, 40_000, 2.0, 30.0),
        ] {
            let t: Tags = vec![("cgroup", name.to_string())];
            out.push(SYS_COUNT.count(t.clone(), calls));
            out.push(SYS_TIME.count(t.clone(), time_us));
            out.push(SYS_P99.level(t.clone(), p99));
            out.push(RUNQ_P99.level(t, runq));
        }
        let snap = crate::snapshot::Snapshot::new(
            std::time::SystemTime::UNIX_EPOCH,
            std::time::Duration::from_secs(2),
            "h".into(),
            out,
        );
        let mut h = History::default();
        h.record(&snap);
        let ctx = SectionCtx {
            snap: &snap,
            history: &h,
            events: &Default::default(),
            width: 100,
            syscall_rows: 10,
        };
        let lines: Vec<String> = watch_section(&ctx).into_iter().map(|l| l.text).collect();
        let text = lines.join("\n");
        assert!(
            lines[0].starts_with("CONTAINERS (CGROUPS) BY SYSCALL TIME (3 of 3)"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("cgroup") && lines[1].contains("runq p99 µs"),
            "{text}"
        );
        // By time, `other` last; the long name keeps its end.
        assert!(lines[2].starts_with("…"), "{text}");
        assert!(lines[2].contains("istio-proxy-and-more"), "{text}");
        let cols: Vec<&str> = lines[2][NAME_W..].split_whitespace().collect();
        assert_eq!(&cols[..4], ["10000", "2.00", "30.0", "20.0"], "{text}");
        let cols: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            &cols[..5],
            ["batch/app", "500", "1.50", "12000", "1.00"],
            "{text}"
        );
        assert!(lines[4].starts_with("other"), "{text}");
        // Without the source asked for, no section.
        let none = crate::snapshot::Snapshot::new(
            std::time::SystemTime::UNIX_EPOCH,
            std::time::Duration::from_secs(1),
            "h".into(),
            vec![],
        );
        let ctx = SectionCtx { snap: &none, ..ctx };
        assert!(watch_section(&ctx).is_empty());
    }

    fn row() -> Vec<u64> {
        vec![0; layout::ROW_LEN]
    }

    #[test]
    fn counts_add_up_and_quantiles_come_from_coarse_buckets() {
        let mut a = row();
        a[CELL_SYS_COUNT] = 100;
        a[CELL_SYS_TIME_NS] = 50_000;
        // 99 calls at ~1 µs, 1 at ~1 ms.
        a[CELL_BUCKETS + HIST_SYSCALL + contract::coarse_bucket(1_000)] = 99;
        a[CELL_BUCKETS + HIST_SYSCALL + contract::coarse_bucket(1_000_000)] = 1;
        let mut b = row();
        b[CELL_SYS_COUNT] = 7;
        b[CELL_SYS_TIME_NS] = 10;
        b[CELL_BUCKETS + HIST_SYSCALL + contract::coarse_bucket(100)] = 7;
        let mut out = Vec::new();
        metrics_of(vec![("a".into(), a), ("b".into(), b)], 1, &mut out);
        let get = |name: &str, cg: &str| {
            out.iter()
                .find(|m| m.name == name && m.tags[0].1 == cg)
                .map(|m| m.value)
        };
        assert_eq!(get("cgroup.syscall.count", "a"), Some(100.0));
        assert_eq!(get("cgroup.syscall.count", "other"), Some(7.0));
        assert_eq!(get("cgroup.syscall.time_us", "a"), Some(50.0));
        let p50 = get("cgroup.syscall.latency_us.p50", "a").unwrap();
        assert!((0.75..=1.5).contains(&p50), "{p50}");
        let p99 = get("cgroup.syscall.latency_us.p99", "a").unwrap();
        assert!((0.75..=1.5).contains(&p99), "{p99}");
        let max = get("cgroup.syscall.latency_us.max", "a").unwrap();
        assert!((750.0..=1500.0).contains(&max), "{max}");
    }
}
