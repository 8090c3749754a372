//! The contract between the kernel programs (`agent-ebpf`) and userspace (`agent`).
//!
//! Everything both sides must agree on lives here, once: map names, the histogram bucket
//! layout, the layout of the shared histogram table, event and config structs. All structs are
//! `#[repr(C)]` with explicit widths and padding so both compilers see the same bytes.
#![no_std]

pub mod config;
pub mod event;
pub mod hist;
pub mod layout;
pub mod maps;

pub use config::{BlockBtf, RuntimeConfig, TcpBtf, TpOffsets};
pub use event::{Event, EventKind};
