//! ebpf-agent: kernel-level latency and system metrics at one-second resolution.
//!
//! Data flows one way: kernel programs → maps / ring buffer → [`probes`] ─┐
//! /proc → [`procfs`] ─────────────────────────────────────────────────────┼→ [`snapshot`] → [`sinks`], [`output`], [`watch`]
//! (assembled each interval by [`collector`], driven by [`run`]).

pub mod anomaly;
pub mod check;
pub mod cli;
pub mod collector;
pub mod config;
pub mod detection;
pub mod histogram;
pub mod output;
pub mod probes;
pub mod procfs;
pub mod reference;
pub mod run;
pub mod sinks;
pub mod snapshot;
pub mod ticker;
pub mod watch;
