//! Each probe's side of the contract, one module per probe: its rows of the histogram table
//! (allocated in [`crate::layout`]), its counters, in-flight records, load-time globals, maps
//! and program names.

pub mod cgroup;
pub mod disk;
pub mod floor;
pub mod runq;
pub mod syscall;
pub mod tcp;
