use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use ebpf_agent::{
    cli::{Cli, Command, ConfigCommand},
    config, run,
};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches(); // bad flags: one line, exit 2
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBPF_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();

    // Settings are checked before anything is attached: a bad file or value exits 2.
    let mut watch_judge = None;
    let run_setup = match &cli.command {
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run").cloned();
            let reload = run::Reload::new(
                args.clone(),
                run_matches,
                config::path(args.config.as_deref()),
            );
            match reload.effective() {
                Ok(effective) => Some((effective, reload)),
                Err(e) => {
                    eprintln!("ebpf-agent: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Watch(args) => match ebpf_agent::watch::anomaly_settings(args) {
            Ok(judge) => {
                watch_judge = judge;
                None
            }
            Err(e) => {
                eprintln!("ebpf-agent: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Config(ConfigCommand::Check { path }) => {
            return config_check(path.as_deref());
        }
        Command::Detect(args) => {
            return ebpf_agent::reference::detect(&args.file, args.sensitivity);
        }
        Command::Record(args) if args.common.duration.is_none() => {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "record needs --duration (e.g. --duration 10m)",
                )
                .exit();
        }
        _ => None,
    };

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
        match (cli.command, run_setup) {
            (Command::Run(_), Some((args, reload))) => run::run(args, reload).await,
            (Command::Watch(args), _) => ebpf_agent::watch::watch(args, watch_judge).await,
            (Command::Check(_), _) => ebpf_agent::check::check().await,
            (Command::Floor { duration, clock }, _) => {
                ebpf_agent::check::floor(duration, clock).await
            }
            (Command::Record(a), _) => ebpf_agent::reference::record(a.common, &a.out).await,
            (Command::Compare(a), _) => {
                ebpf_agent::reference::compare(a.common, &a.file, a.json).await
            }
            _ => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ebpf-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `ebpf-agent config check [PATH]`: prints the effective settings, or the line and reason.
fn config_check(path: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = config::path(path) else {
        eprintln!(
            "ebpf-agent: no configuration file at {} (give a path)",
            config::DEFAULT_PATH
        );
        return ExitCode::from(2);
    };
    let defaults = match Cli::try_parse_from(["ebpf-agent", "run"]).map(|c| c.command) {
        Ok(Command::Run(r)) => r,
        _ => unreachable!("`run` parses without flags"),
    };
    match config::load(&path).and_then(|l| config::effective(&defaults, None, Some(&l))) {
        Ok(eff) => {
            println!("# {}: valid; effective settings:", path.display());
            print!("{}", config::render(&eff));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ebpf-agent: {e}");
            ExitCode::from(2)
        }
    }
}
