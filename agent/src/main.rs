use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use ebpf_agent::{
    anomaly::DetectorConfig,
    cli::{Cli, Command, CompareArgs, ConfigCommand, RecordArgs},
    config, run,
    settings::Settings,
};

fn main() -> ExitCode {
    let cli = Cli::parse(); // bad flags: one line, exit 2
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBPF_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();

    // Settings are checked before anything is attached: a bad file or value exits 2.
    let checked = match &cli.command {
        Command::Run(args) => {
            let reload = config::Reload::new(args.clone());
            reload.settings().map(|s| Setup::Run(s, reload))
        }
        Command::Watch(args) => config::from_flags(&args.common).and_then(|s| {
            ebpf_agent::watch::anomaly_settings(args).map(|judge| Setup::Watch(judge, s))
        }),
        Command::Record(args) if args.common.duration.is_none() => {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "record needs --duration (e.g. --duration 10m)",
                )
                .exit();
        }
        Command::Record(RecordArgs { common, .. })
        | Command::Compare(CompareArgs { common, .. }) => {
            config::from_flags(common).map(Setup::Settings)
        }
        Command::Config(ConfigCommand::Check { path }) => {
            return config_check(path.as_deref());
        }
        Command::Detect(args) => {
            return ebpf_agent::reference::detect(&args.file, args.sensitivity);
        }
        Command::ReadCost {
            cpus,
            intervals,
            cgroup,
        } => {
            return ebpf_agent::check::read_cost(*cpus, *intervals, *cgroup);
        }
        Command::Check(args) => match check_cgroup_fs(args) {
            Ok(fs) => Ok(Setup::Check(fs)),
            Err(e) => Err(e),
        },
        Command::Floor { .. } => Ok(Setup::None),
    };
    let setup = match checked {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ebpf-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // A filter on a process that does not exist would watch nothing, silently.
    if let Setup::Run(s, _) | Setup::Watch(_, s) | Setup::Settings(s) = &setup
        && let Some(pid) = s.pid
        && !process_exists(pid, &s.procfs_root)
    {
        eprintln!(
            "ebpf-agent: --pid {pid}: no such process (give the pid of a running process, e.g. --pid $(pidof nginx))"
        );
        return ExitCode::from(2);
    }
    // Likewise a cgroup that is not in the hierarchy.
    if let Setup::Run(s, _) | Setup::Watch(_, s) | Setup::Settings(s) = &setup
        && let Some(path) = &s.cgroup
        && let Err(e) = ebpf_agent::cgroup::find(&s.cgroup_fs, path)
    {
        eprintln!("ebpf-agent: --cgroup {e}");
        return ExitCode::from(2);
    }

    // One thread: the agent's work is one interval's collection at a time, and tasks handing
    // work to each other across threads would wake two threads where one suffices.
    let rt = match tokio::runtime::Builder::new_current_thread()
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
        match (cli.command, setup) {
            (Command::Run(_), Setup::Run(settings, reload)) => run::run(settings, reload).await,
            (Command::Watch(args), Setup::Watch(judge, _)) => {
                ebpf_agent::watch::watch(args, judge).await
            }
            (Command::Check(_), Setup::Check(cgroup_fs)) => {
                ebpf_agent::check::check(&cgroup_fs).await
            }
            (Command::Floor { duration, clock }, _) => {
                ebpf_agent::check::floor(duration, clock).await
            }
            (Command::Record(a), Setup::Settings(s)) => {
                ebpf_agent::reference::record(s, &a.out).await
            }
            (Command::Compare(a), Setup::Settings(s)) => {
                ebpf_agent::reference::compare(s, &a.file, a.json).await
            }
            (Command::ReadCost { .. }, _) => unreachable!("answered before the runtime"),
            _ => unreachable!("each command has its setup"),
        }
    });
    match result {
        Ok(code) => code,
        // `| head` and the like: the reader has what it wanted.
        Err(e) if ebpf_agent::output::stdout_closed(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebpf-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What a command needs once its settings are checked (one per process: size does not matter).
#[allow(clippy::large_enum_variant)]
enum Setup {
    Run(Settings, config::Reload),
    Watch(Option<(std::path::PathBuf, DetectorConfig)>, Settings),
    Settings(Settings),
    /// `check`: where the cgroup filesystem is.
    Check(std::path::PathBuf),
    None,
}

/// Whether `pid` is a running process: in this PID namespace (signal 0 sends nothing; EPERM
/// means it exists under another user), or in the proc root (`/host/proc`: the host's PIDs,
/// which the kernel programs filter on, seen from a container without the host's namespace).
fn process_exists(pid: u32, procfs_root: &std::path::Path) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let here = unsafe { libc::kill(p, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    here || procfs_root.join(pid.to_string()).is_dir()
}

/// `ebpf-agent config check [PATH]`: prints the effective settings, or the line and reason.
/// `check`'s cgroup filesystem: its flag, else the configuration file's, else the default. A
/// file that does not parse is an error: `check` should look where `run` would.
fn check_cgroup_fs(
    args: &ebpf_agent::cli::CheckArgs,
) -> Result<std::path::PathBuf, config::ConfigError> {
    if let Some(p) = &args.cgroup_fs {
        return Ok(p.clone());
    }
    let loaded = config::path(args.config.as_deref())
        .map(|p| config::load(&p))
        .transpose()?;
    Ok(config::settings(loaded.as_ref(), |_| vec![])?.cgroup_fs)
}

fn config_check(path: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = config::path(path) else {
        eprintln!(
            "ebpf-agent: no configuration file at {} (give a path)",
            config::DEFAULT_PATH
        );
        return ExitCode::from(2);
    };
    let checked = config::load(&path)
        .and_then(|l| config::settings(Some(&l), |_| vec![]))
        .and_then(|s| config::render(&s));
    match checked {
        Ok(rendered) => {
            let mut out = std::io::stdout().lock();
            let written = writeln!(out, "# {}: valid; effective settings:", path.display())
                .and_then(|()| out.write_all(rendered.as_bytes()))
                .and_then(|()| out.flush());
            match written {
                Err(e) if !ebpf_agent::output::stdout_closed(&e) => {
                    eprintln!("ebpf-agent: writing to stdout: {e}");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("ebpf-agent: {e}");
            ExitCode::from(2)
        }
    }
}
