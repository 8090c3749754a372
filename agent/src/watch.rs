//! `ebpf-agent watch`: a live per-second view for a person at a terminal.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::WatchArgs;

pub async fn watch(_args: WatchArgs) -> Result<ExitCode> {
    anyhow::bail!("watch: not yet")
}
