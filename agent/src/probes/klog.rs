//! What the kernel programs say on their rare paths (aya-log): read from its ring buffer and
//! logged through `tracing` with the target `kernel`. The programs' log level is a load-time
//! constant taken from the agent's own, so a disabled call costs nothing (the verifier drops
//! it).

use aya_log::{EbpfLogger, Level};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::level_filters::LevelFilter;

/// The kernel programs' level for the agent's current `tracing` level.
pub fn level() -> u8 {
    let level = match LevelFilter::current() {
        LevelFilter::OFF => return 0,
        LevelFilter::ERROR => Level::Error,
        LevelFilter::WARN => Level::Warn,
        LevelFilter::INFO => Level::Info,
        LevelFilter::DEBUG => Level::Debug,
        _ => Level::Trace,
    };
    level as u8
}

/// Forwards the kernel programs' records to `tracing`.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Logs the programs' records as they come, until the task is dropped (woken by the kernel:
/// no polling).
pub async fn forward(logger: EbpfLogger<KernelLog>) -> std::io::Result<()> {
    // SAFETY: the fd belongs to `logger`, which the AsyncFd owns: it stays open while registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
