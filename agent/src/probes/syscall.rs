//! The syscall probe: latency per syscall from raw tracepoints sys_enter / sys_exit (kernel
//! side: `agent-ebpf/src/syscall.rs`; contract: `agent_common::probes::syscall`).

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event, EventKind,
    layout::{self, Block, Index},
    probes::syscall::{self as contract, MAX_SYSCALLS, progs},
};
use aya::Ebpf;
use syscalls::Sysno;

use super::{Globals, ProbeDef, ProbeState, Program, Rows, table};
use crate::{
    catalogue::MetricDef,
    histogram::LatencyStats,
    snapshot::{Metric, Tags},
};
use agent_core::events::{EventView, comm_str};

pub const COUNT: MetricDef = MetricDef::counter(
    "syscall.count",
    &["syscall"],
    "calls completed in the interval",
);
pub const ERRORS: MetricDef = MetricDef::counter(
    "syscall.errors",
    &["syscall"],
    "calls that returned an error (< 0)",
);
pub const LATENCY: MetricDef =
    MetricDef::latency("syscall.latency_us", &["syscall"], "sys_enter to sys_exit");

const PROGRAMS: &[Program] = &[
    Program::raw(progs::SYS_ENTER, "sys_enter"),
    Program::raw(progs::SYS_EXIT, "sys_exit"),
];

pub struct Syscall;

impl ProbeDef for Syscall {
    fn name(&self) -> &'static str {
        "syscall"
    }

    fn block(&self) -> Block {
        layout::SYSCALL
    }

    fn index(&self) -> Option<Index> {
        Some(layout::SYSCALL_INDEX)
    }

    fn variants(&self) -> &'static [&'static [Program]] {
        &[PROGRAMS]
    }

    #[cfg(test)]
    fn maps(&self) -> &'static [MapSpec] {
        contract::MAPS
    }

    #[cfg(test)]
    fn globals(&self) -> &'static [GlobalSpec] {
        contract::GLOBALS
    }

    fn set_globals(&self, g: &mut Globals) {
        // exit and exit_group never reach sys_exit: their entries would only go stale.
        g.set(contract::GLOBAL_NR_EXIT, &(Sysno::exit as i64));
        g.set(contract::GLOBAL_NR_EXIT_GROUP, &(Sysno::exit_group as i64));
    }

    fn metrics(&self) -> &'static [MetricDef] {
        &[COUNT, ERRORS, LATENCY]
    }

    fn state(&self) -> Box<dyn ProbeState> {
        // Keys: the syscall numbers, then the catch-all (`layout::Index`).
        let mut names: Vec<String> = (0..MAX_SYSCALLS).map(name).collect();
        names.push(OTHER.to_string());
        Box::new(SyscallState { names })
    }
}

/// The `syscall` tag of the catch-all row: syscalls first seen once every row was taken.
pub const OTHER: &str = "other";

/// Name of syscall `nr` from the architecture's table, or `sys_<nr>` for unknown numbers.
pub fn name(nr: usize) -> String {
    match Sysno::new(nr) {
        Some(s) => s.name().to_string(),
        None => format!("sys_{nr}"),
    }
}

struct SyscallState {
    names: Vec<String>,
}

impl ProbeState for SyscallState {
    /// `syscall.count`, `syscall.errors` and `syscall.latency_us.*` for every syscall called in
    /// the interval (syscalls not called are omitted: the tag's cardinality is the syscall table),
    /// and for [`OTHER`] when syscalls went to the catch-all row.
    fn collect(&mut self, _ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>) {
        for (nr, name) in self.names.iter().enumerate() {
            let Some(d) = rows.delta(nr) else {
                continue;
            };
            let tags: Tags = vec![("syscall", name.clone())];
            out.push(COUNT.count(tags.clone(), d[layout::CELL_COUNT]));
            out.push(ERRORS.count(tags.clone(), d[layout::CELL_AUX]));
            if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
                LATENCY.latency_of(&s, &tags, out);
            }
        }
    }

    fn keys(&self) -> Vec<(&'static str, Tags, usize)> {
        self.names
            .iter()
            .enumerate()
            .map(|(nr, name)| (LATENCY.name, vec![("syscall", name.clone())], nr))
            .collect()
    }

    fn event(&self, e: &Event) -> Option<EventView> {
        (EventKind::from_u32(e.kind)? == EventKind::SlowSyscall).then(|| EventView {
            kind: "slow_syscall",
            pid: e.pid,
            tid: e.tid,
            comm: comm_str(&e.comm),
            latency_us: e.latency_ns as f64 / 1000.0,
            target: name(e.key as usize),
            ret: Some(e.ret),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_table() {
        assert_eq!(name(Sysno::getppid as usize), "getppid");
        assert_eq!(name(Sysno::read as usize), "read");
        assert_eq!(name(100_000), "sys_100000");
    }

    #[test]
    fn renders_its_events_only() {
        let mut e = super::super::tests_support::event(EventKind::SlowSyscall);
        let v = Syscall.state().event(&e).unwrap();
        assert_eq!(
            (v.kind, v.target.as_str(), v.comm.as_str(), v.ret),
            ("slow_syscall", "read", "curl", Some(-4))
        );
        assert_eq!(v.latency_us, 1500.0);
        e.kind = EventKind::SlowDisk as u32;
        assert!(Syscall.state().event(&e).is_none());
        e.kind = 99;
        assert!(Syscall.state().event(&e).is_none());
    }
}
