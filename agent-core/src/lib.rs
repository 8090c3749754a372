//! The parts of ebpf-agent that need no kernel, no root and no nightly toolchain: the
//! per-interval [`snapshot`] and its [`histogram`] statistics, `/proc` reading ([`procfs`]),
//! the [`sinks`] and their wire encoders, [`output`] for stdout, the wall-clock [`ticker`], and
//! anomaly detection ([`anomaly`], applied by [`detection`]), and the agent's [`settings`].
//!
//! `cargo test` at the workspace root builds and tests this crate on stable Rust.

pub mod anomaly;
pub mod catalogue;
pub mod cgroup;
pub mod detection;
pub mod events;
pub mod format;
pub mod histogram;
pub mod incident;
pub mod output;
pub mod procfs;
pub mod settings;
pub mod sinks;
pub mod snapshot;
pub mod ticker;
