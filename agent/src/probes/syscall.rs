//! Syscall latency per syscall: raw tracepoints sys_enter / sys_exit.

use agent_common::{layout, maps::progs};
use syscalls::Sysno;

use super::{
    Attach, Program,
    table::{self, HistTable, RowDiff},
};
use crate::{histogram::LatencyStats, snapshot::Metric};

pub const PROGRAMS: &[Program] = &[
    Program {
        name: progs::SYS_ENTER,
        attach: Attach::Raw("sys_enter"),
    },
    Program {
        name: progs::SYS_EXIT,
        attach: Attach::Raw("sys_exit"),
    },
];

/// Numbers of exit and exit_group on this architecture (they never reach sys_exit).
pub fn never_returning() -> (i64, i64) {
    (Sysno::exit as i64, Sysno::exit_group as i64)
}

/// Name of syscall `nr` from the architecture's table, or `sys_<nr>` for unknown numbers.
pub fn name(nr: usize) -> String {
    match Sysno::new(nr) {
        Some(s) => s.name().to_string(),
        None => format!("sys_{nr}"),
    }
}

pub struct SyscallProbe {
    names: Vec<String>,
}

impl Default for SyscallProbe {
    fn default() -> Self {
        Self {
            names: (0..layout::MAX_SYSCALLS).map(name).collect(),
        }
    }
}

impl SyscallProbe {
    /// `syscall.count`, `syscall.errors` and `syscall.latency_us.*` for every syscall called in
    /// the interval (syscalls not called are omitted: the tag's cardinality is the syscall table).
    pub fn collect(&self, t: &HistTable, diff: &mut RowDiff, out: &mut Vec<Metric>) {
        for (nr, name) in self.names.iter().enumerate() {
            let Some(d) = diff.delta(t, layout::ROW_SYSCALL0 + nr) else {
                continue;
            };
            let tags = vec![("syscall", name.clone())];
            out.push(Metric::counter(
                "syscall.count",
                tags.clone(),
                d[layout::CELL_COUNT],
            ));
            out.push(Metric::counter(
                "syscall.errors",
                tags.clone(),
                d[layout::CELL_AUX],
            ));
            if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
                s.push_us("syscall.latency_us", &tags, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_come_from_the_table() {
        assert_eq!(super::name(syscalls::Sysno::getppid as usize), "getppid");
        assert_eq!(super::name(syscalls::Sysno::read as usize), "read");
        assert_eq!(super::name(100_000), "sys_100000");
    }
}
