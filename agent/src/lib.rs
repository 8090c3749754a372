//! ebpf-agent: kernel-level latency and system metrics at one-second resolution.
//!
//! Data flows one way: kernel programs → maps / ring buffer → [`probes`] ─┐
//! /proc → [`procfs`] ─────────────────────────────────────────────────────┼→ [`snapshot`] → [`sinks`], [`output`], [`watch`]
//! (assembled each interval by [`collector`], driven by [`run`]).
//!
//! The pure parts (snapshot, sinks, procfs, detector) live in `agent-core`, which builds and
//! tests on stable without root; this crate adds the kernel side and the commands.

pub use agent_core::{
    anomaly, catalogue, cgroup, detection, histogram, incident, output, procfs, settings, sinks,
    snapshot, ticker,
};

pub mod check;
pub mod cli;
mod collector;
pub mod config;
mod probes;
pub mod reference;
pub mod run;
pub mod watch;

/// Every metric family the agent can emit: the probes', /proc's, its own and the detector's.
pub fn metric_catalogue() -> Vec<catalogue::MetricDef> {
    let mut all: Vec<catalogue::MetricDef> = probes::metrics().copied().collect();
    all.extend(procfs::metrics());
    all.extend_from_slice(catalogue::agent::ALL);
    all.extend_from_slice(catalogue::anomaly::ALL);
    all
}

#[cfg(test)]
mod readme_catalogue;
