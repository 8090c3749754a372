use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use ebpf_agent::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse(); // bad flags: one line, exit 2
    if let Command::Run(args) = &cli.command
        && let Err(msg) = args.sinks.validate()
    {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBPF_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebpf-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => ebpf_agent::run::run(args).await,
            Command::Watch(args) => ebpf_agent::watch::watch(args).await,
            Command::Check(_) => ebpf_agent::check::check().await,
        }
    });
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("ebpf-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}
