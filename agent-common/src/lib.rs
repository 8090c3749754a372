//! The contract between the kernel programs (`agent-ebpf`) and userspace (`agent`).
//!
//! Everything both sides must agree on lives here, once: the histogram bucket layout, the
//! layout of the shared histogram table, the shared maps, event and config structs, and per
//! probe (in [`probes`]) its rows, counters, in-flight records, globals, maps and programs.
//! All structs are `#[repr(C)]` with explicit widths and padding so both compilers see the
//! same bytes; the agent checks every name against the built object in a host test.
#![no_std]

pub mod config;
pub mod event;
pub mod hist;
pub mod layout;
pub mod maps;
pub mod probes;

pub use config::RuntimeConfig;
pub use event::{Event, EventKind};
