//! ebpf-agent: kernel-level latency and system metrics at one-second resolution.
//!
//! Data flows one way: kernel programs → maps / ring buffer → [`probes`] ─┐
//! /proc → [`procfs`] ─────────────────────────────────────────────────────┼→ [`snapshot`] → [`sinks`]
//! (assembled each interval by [`collector`]).

pub mod procfs;
pub mod sinks;
pub mod snapshot;
