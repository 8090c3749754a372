//! Names of the maps every probe shares (15 bytes at most: the kernel truncates longer names).
//! A probe's own maps, globals and programs are named in its module of [`crate::probes`].

/// The histogram table: one `BPF_F_MMAPABLE` array of rows, sliced per CPU (see [`crate::layout`]).
pub const HIST: &str = "HIST";
/// Slow events and connects, one by one.
pub const EVENTS: &str = "EVENTS";
/// Key → histogram row of the probes with a [`crate::layout::Index`]: one `BPF_F_MMAPABLE`
/// array of `u64`, shared by every CPU.
pub const ROW_INDEX: &str = "ROW_INDEX";
/// [`crate::RuntimeConfig`], changeable while attached: a data section of its own (the global
/// `RUNTIME_CONFIG`), which the loader makes a one-entry array. The programs read it at its
/// address, without the lookup an array map needs (about 1 ns per program on every syscall).
pub const CONFIG: &str = ".data.config";

/// Default ring buffer size in bytes (a power of two, multiple of the page size).
pub const EVENTS_DEFAULT_BYTES: u32 = 1 << 18;

/// A map the agent uses, as the kernel object must declare it (checked by a host test against
/// the embedded object, and by the kernel at load).
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    /// Bytes of one value.
    pub value_size: usize,
    /// Entries as compiled (userspace may resize HIST and EVENTS before load); 0 = not checked.
    pub max_entries: u32,
}

/// The kernel programs' log (aya-log's ring buffer, read by the agent).
pub const LOGS: &str = "AYA_LOGS";
/// Load-time global: the programs' log level (aya-log's; 0 = off).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// The shared maps.
pub const SHARED: &[MapSpec] = &[
    MapSpec {
        name: LOGS,
        value_size: 0,
        max_entries: 0,
    },
    MapSpec {
        name: HIST,
        value_size: size_of::<crate::layout::Row>(),
        max_entries: 0,
    },
    MapSpec {
        name: ROW_INDEX,
        value_size: 8,
        max_entries: crate::layout::INDEX_CELLS as u32,
    },
    MapSpec {
        name: EVENTS,
        value_size: 0,
        max_entries: EVENTS_DEFAULT_BYTES,
    },
    MapSpec {
        name: CONFIG,
        value_size: size_of::<crate::RuntimeConfig>(),
        max_entries: 1,
    },
];

/// A load-time global the agent sets (`EbpfLoader::override_global`), with its size.
#[derive(Clone, Copy, Debug)]
pub struct GlobalSpec {
    pub name: &'static str,
    pub size: usize,
}
