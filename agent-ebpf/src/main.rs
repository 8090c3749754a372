//! Kernel programs of ebpf-agent, one module per probe (its contract is the module of the same
//! name in `agent_common::probes`), plus what they share.
//!
//! Hot paths only count: each event lands in the caller CPU's slice of the mmapable histogram
//! table (see `agent_common::layout`); only events over a threshold and TCP opens go through the
//! ring buffer. Every program is a thin wrapper around a `try_*` function; failures are counted,
//! never logged.
#![no_std]
// Atomic compare-and-swap (the row index's first-sight claims): the BPF target's
// core::sync::atomic has none.
#![allow(internal_features)]
#![feature(core_intrinsics, adt_const_params)]
#![no_main]

mod cgroup;
mod disk;
mod floor;
mod runq;
mod shared;
mod syscall;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects any program with a path to a panic.
    loop {}
}

/// The programs use GPL-only helpers (the ring buffer, `bpf_skc_to_tcp_sock`, BTF
/// tracepoints), which the kernel grants only to GPL-compatible licences: the object is
/// declared "Dual MIT/GPL" (one of the kernel's accepted strings), the crate itself being
/// MIT OR Apache-2.0 like the rest of the project.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
