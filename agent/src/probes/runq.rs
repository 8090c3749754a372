//! The runq probe: run-queue latency (wake-up or preemption to running, as BCC's `runqlat`)
//! host-wide, from sched_wakeup / sched_wakeup_new / sched_switch, as BTF tracepoints where
//! the kernel's BTF allows, else classic ones. Kernel side: `agent-ebpf/src/runq.rs`;
//! contract: `agent_common::probes::runq`.

use std::path::Path;

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event, EventKind, event as kevent,
    layout::{self, Block},
    probes::runq::{self as contract, RunqBtf, RunqTpOffsets, progs},
};
use aya::Ebpf;

use super::{
    Globals, ProbeDef, ProbeState, Program, Rows, Section,
    btf::{Btf, BtfError},
    table,
    tracefs::{self, TracefsError},
};
use crate::{
    catalogue::{MetricDef, agent::EVENTS_LIMITED},
    histogram::LatencyStats,
    snapshot::{Metric, Tags},
};
use agent_core::events::{self, EventView, comm_str};

pub const COUNT: MetricDef = MetricDef::counter(
    "runq.count",
    &[],
    "waits on a CPU's run queue that ended (a task switched in after a wake-up or preemption)",
);
pub const LATENCY: MetricDef = MetricDef::latency(
    "runq.latency_us",
    &[],
    "runnable to running: time a task waited for a CPU (as runqlat)",
);

const PROGRAMS: &[Program] = &[
    Program::tracepoint(progs::SCHED_WAKEUP, "sched", "sched_wakeup"),
    Program::tracepoint(progs::SCHED_WAKEUP_NEW, "sched", "sched_wakeup_new"),
    Program::tracepoint(progs::SCHED_SWITCH, "sched", "sched_switch"),
];

/// Preferred: no record built per context switch.
const PROGRAMS_BTF: &[Program] = &[
    Program::btf(progs::BTF_WAKEUP, "sched_wakeup"),
    Program::btf(progs::BTF_WAKEUP_NEW, "sched_wakeup_new"),
    Program::btf(progs::BTF_SWITCH, "sched_switch"),
];

pub struct Runq;

impl ProbeDef for Runq {
    fn name(&self) -> &'static str {
        "runq"
    }

    fn block(&self) -> Block {
        layout::RUNQ
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
        g.set(
            contract::GLOBAL_BTF,
            &RunqBtf {
                task_pid: btf.member_sized("task_struct", "pid", 4)?,
                task_tgid: btf.member_sized("task_struct", "tgid", 4)?,
                task_comm: btf.member_sized("task_struct", "comm", 16)?,
                _pad: 0,
            },
        );
        Ok(())
    }

    fn set_classic_globals(&self, tracefs: &Path, g: &mut Globals) -> Result<(), TracefsError> {
        g.set(contract::GLOBAL_TP, &read_offsets(tracefs)?);
        Ok(())
    }

    fn metrics(&self) -> &'static [MetricDef] {
        &[COUNT, LATENCY]
    }

    fn state(&self) -> Box<dyn ProbeState> {
        Box::new(RunqState)
    }

    fn watch_section(&self) -> Option<(&'static str, Section)> {
        Some(("run queue", watch_section))
    }
}

pub fn read_offsets(tracefs: &Path) -> Result<RunqTpOffsets, TracefsError> {
    let pid = |name: &str| -> Result<u16, TracefsError> {
        tracefs::format(tracefs, "sched", name)?.offset(&format!("sched:{name}"), "pid", 4)
    };
    let tp = "sched:sched_switch";
    let f = tracefs::format(tracefs, "sched", "sched_switch")?;
    Ok(RunqTpOffsets {
        wakeup_pid: pid("sched_wakeup")?,
        wakeup_new_pid: pid("sched_wakeup_new")?,
        prev_pid: f.offset(tp, "prev_pid", 4)?,
        prev_state: f.offset(tp, "prev_state", 8)?,
        next_pid: f.offset(tp, "next_pid", 4)?,
        next_comm: f.offset(tp, "next_comm", 16)?,
        _pad: [0; 2],
    })
}

struct RunqState;

impl ProbeState for RunqState {
    fn collect(&mut self, _ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>) {
        let limited = rows.counter(contract::CTR_EVENTS_LIMITED);
        if limited > 0 {
            out.push(EVENTS_LIMITED.count(vec![("probe", Runq.name().into())], limited));
        }
        let Some(d) = rows.delta(contract::ROW_LATENCY) else {
            out.push(COUNT.count(vec![], 0));
            return;
        };
        out.push(COUNT.count(vec![], d[layout::CELL_COUNT]));
        if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
            LATENCY.latency_of(&s, &vec![], out);
        }
    }

    fn keys(&self) -> Vec<(&'static str, Tags, usize)> {
        vec![(LATENCY.name, vec![], contract::ROW_LATENCY)]
    }

    fn event(&self, e: &Event) -> Option<EventView> {
        if EventKind::from_u32(e.kind)? != EventKind::RunqWait {
            return None;
        }
        Some(EventView {
            // A task pushed off a CPU it was using, or one woken to do something: who is busy,
            // and who waits to answer (incidents tell them apart).
            kind: if e.op == kevent::RUNQ_PREEMPTED {
                events::RUNQ_PREEMPTED
            } else {
                events::RUNQ_WOKEN
            },
            pid: e.pid,
            tid: e.tid,
            comm: comm_str(&e.comm),
            latency_us: e.latency_ns as f64 / 1000.0,
            target: format!("cpu {}", e.cpu),
            ret: None,
        })
    }
}

// ---- its section of `watch` ----

use crate::watch::{
    layout::{Line, kv_row},
    model::{Scale, mark, named},
    sections::{SectionCtx, probe_down},
};
use agent_core::format::{self, Style::Column};

/// Waits per second with their p50 / p99 and a sparkline of the p99.
fn watch_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, Runq.name(), "RUN QUEUE") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let q = |m: &str| {
        snap.value(m, &[])
            .map_or("-".into(), |v| format::number(v, Column))
    };
    let p50 = format!("{}.p50", LATENCY.name);
    let p99 = format!("{}.p99", LATENCY.name);
    vec![
        Line::plain("RUN QUEUE"),
        kv_row(
            mark(snap, |a| named(a, COUNT.name)),
            "waits/s",
            &format::count(snap.value(COUNT.name, &[]).unwrap_or(0.0) / secs),
            &h.points(COUNT.name, &[]),
            Scale::FromZero,
            width,
        ),
        kv_row(
            mark(snap, |a| a.name.starts_with(LATENCY.name)),
            "wait p50 / p99 µs",
            &format!("{} / {}", q(&p50), q(&p99)),
            &h.points(&p99, &[]),
            Scale::FromZero,
            width,
        ),
    ]
}
