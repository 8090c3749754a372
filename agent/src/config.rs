//! The configuration file (TOML) and the settings in force. The file's schema, defaults and
//! bounds are [`Settings`] (agent-core); this module reads the file, puts the command line over
//! it (a flag given wins) and says where a bad value is: `PATH:LINE: key: reason` for the file,
//! `--flag value: reason` for the command line. Read at start and again on SIGHUP ([`Reload`]),
//! through the same function.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::{
    anomaly::DetectorConfig,
    cli::{self, CommonArgs, RunArgs},
    settings::{self, Invalid, Parsed, Settings},
};

/// Read when present and no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/ebpf-agent/config.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `line` is 1-based; 0 when unknown.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        reason: String,
    },
    /// A value given on the command line: `--sink-queue 0: must hold ...`.
    #[error("{0}")]
    Flag(String),
}

/// A parsed file (not yet validated: the command line may replace some of its values).
pub struct Loaded {
    pub path: String,
    parsed: Parsed,
}

pub fn parse(path: &str, text: &str) -> Result<Loaded, ConfigError> {
    let parsed = settings::parse(text).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        line: e.line,
        reason: e.reason,
    })?;
    Ok(Loaded {
        path: path.into(),
        parsed,
    })
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &text)
}

/// The file to read: `--config`, else the default path when it exists.
pub fn path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Path::new(DEFAULT_PATH)
            .exists()
            .then(|| PathBuf::from(DEFAULT_PATH)),
    }
}

/// The settings in force: the defaults, the file's values over them, then `overlay` (the
/// command line, returning the keys it set); validated. A bad value is reported where it was
/// written: on the command line, or at its line in the file.
pub fn settings(
    loaded: Option<&Loaded>,
    overlay: impl FnOnce(&mut Settings) -> Vec<&'static str>,
) -> Result<Settings, ConfigError> {
    let mut s = loaded.map_or_else(Settings::default, |l| l.parsed.settings.clone());
    let given = overlay(&mut s);
    s.validate(&cli::sources())
        .map_err(|e| locate(e, loaded, &given))?;
    Ok(s)
}

fn locate(e: Invalid, loaded: Option<&Loaded>, given: &[&str]) -> ConfigError {
    match loaded {
        Some(l) if !given.contains(&e.key.as_str()) => ConfigError::Invalid {
            path: l.path.clone(),
            line: l.parsed.line_of(&e.key),
            reason: e.to_string(),
        },
        _ => ConfigError::Flag(e.as_flag()),
    }
}

/// The settings of commands that read no file (`record`, `compare`), from their flags.
pub fn from_flags(common: &CommonArgs) -> Result<Settings, ConfigError> {
    settings(None, |s| common.overlay(s))
}

/// The file's `state_dir` and `[anomaly]` settings (the whole file validated), for `watch`.
pub fn anomaly_settings(
    l: &Loaded,
) -> Result<(Option<PathBuf>, Option<DetectorConfig>), ConfigError> {
    let s = settings(Some(l), |_| vec![])?;
    Ok((Some(s.state_dir), Some(s.anomaly)))
}

/// The effective settings as TOML, for `config check`: every default spelled out.
pub fn render(s: &Settings) -> Result<String, ConfigError> {
    s.resolved(&cli::sources())
        .to_toml()
        .map_err(|e| ConfigError::Flag(format!("cannot print the settings: {e}")))
}

/// What a SIGHUP needs to rebuild the settings: the command line as given, and the file.
pub struct Reload {
    flags: RunArgs,
    path: Option<PathBuf>,
}

impl Reload {
    /// The file is `--config`, else the default one when it exists (looked up once, at start).
    pub fn new(flags: RunArgs) -> Self {
        let path = path(flags.config.as_deref());
        Self { flags, path }
    }

    /// Flags given on the command line, over the file, over defaults; validated. At start and on
    /// every SIGHUP.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let loaded = self.path.as_deref().map(load).transpose()?;
        settings(loaded.as_ref(), |s| self.flags.overlay(s))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, Output};

    fn run_args(args: &[&str]) -> RunArgs {
        let mut full = vec!["ebpf-agent", "run"];
        full.extend_from_slice(args);
        let Command::Run(run) = Cli::try_parse_from(full).unwrap().command else {
            unreachable!()
        };
        run
    }

    /// Parses `args` as `ebpf-agent run ...` and merges `toml`.
    fn merged(args: &[&str], toml: &str) -> Result<Settings, ConfigError> {
        let run = run_args(args);
        let loaded = parse("test.toml", toml)?;
        settings(Some(&loaded), |s| run.overlay(s))
    }

    const EXAMPLE: &str = include_str!("../../packaging/config.example.toml");

    #[test]
    fn file_values_apply_and_flags_win() {
        let toml = r#"
interval = "2s"
slow_threshold = "10ms"
host = "from-file"

[enable]
disk = false
slow_events = false

[sinks]
statsd = ["127.0.0.1:8125"]
prefix = "filepfx"
tags = ["env=prod"]
"#;
        let r = merged(&[], toml).unwrap();
        assert_eq!(r.interval, Duration::from_secs(2));
        assert_eq!(r.slow_threshold, Some(Duration::from_millis(10)));
        assert_eq!(r.host.as_deref(), Some("from-file"));
        let on: Vec<_> = cli::sources()
            .into_iter()
            .filter(|s| r.source_on(s))
            .collect();
        assert_eq!(on, ["syscall", "tcp", "runq", "procfs"]);
        assert!(!r.enable.slow_events);
        assert_eq!(r.sinks.statsd, vec!["127.0.0.1:8125"]);
        assert_eq!(r.sinks.prefix, "filepfx");
        assert_eq!(
            r.output(),
            Output::None,
            "a sink and no output: nothing on stdout"
        );

        let r = merged(
            &[
                "--interval",
                "500ms",
                "--prefix",
                "cli",
                "--probes",
                "disk",
                "--host",
                "cli-host",
            ],
            toml,
        )
        .unwrap();
        assert_eq!(r.interval, Duration::from_millis(500));
        assert_eq!(r.sinks.prefix, "cli");
        let on: Vec<_> = cli::sources()
            .into_iter()
            .filter(|s| r.source_on(s))
            .collect();
        assert_eq!(on, ["disk"]);
        assert_eq!(r.host.as_deref(), Some("cli-host"));
        assert_eq!(
            r.sinks.tags,
            vec!["env=prod"],
            "not given on the command line: from the file"
        );
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let toml = "interval = \"2s\"\nring_buffer_kib = 512\n[enable]\nstatsd = false\nanomaly = true\n[sinks]\nsink_queue = 10\nstatsd = [\"127.0.0.1:1\"]\n";
        let s = merged(
            &[
                "--ring-buffer-kib",
                "64",
                "--sink-queue",
                "5",
                "--statsd",
                "127.0.0.1:2",
                "--no-anomaly",
                "--no-events",
            ],
            toml,
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(2), "file over default");
        assert_eq!(s.ring_buffer_kib, 64, "flag over file");
        assert_eq!(s.sinks.sink_queue, 5);
        assert_eq!(
            s.sinks_in_force().statsd,
            ["127.0.0.1:2"],
            "a sink flag runs"
        );
        assert!(!s.enable.anomaly && !s.enable.slow_events);
        assert_eq!(s.bpf_stats_every, Settings::default().bpf_stats_every);
        // A bad file value replaced by a flag does not matter; a bad flag is named as a flag.
        let s = merged(&["--sink-queue", "5"], "[sinks]\nsink_queue = 0\n").unwrap();
        assert_eq!(s.sinks.sink_queue, 5);
        let e = merged(&["--sink-queue", "0"], "[sinks]\nsink_queue = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--sink-queue 0:"), "{e}");
        let e = merged(&["--statsd", "localhost"], "")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--statsd \"localhost\":"), "{e}");
        let e = merged(&["--tag", "novalue"], "").unwrap_err().to_string();
        assert!(e.starts_with("--tag \"novalue\":"), "{e}");
    }

    #[test]
    fn sinks_can_be_switched_off() {
        let toml = "[enable]\nstatsd = false\n[sinks]\nstatsd = [\"127.0.0.1:8125\"]\nriemann = [\"127.0.0.1:5555\"]\n";
        let r = merged(&[], toml).unwrap().sinks_in_force();
        assert!(r.statsd.is_empty());
        assert_eq!(r.riemann, vec!["127.0.0.1:5555"]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = merged(&[], "interval = \"1s\"\n\nintervall = \"2s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:3:") && e.contains("intervall"),
            "{e}"
        );
        let e = merged(&[], "# c\ninterval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:2: interval:"), "{e}");
        let e = merged(&[], "interval = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1:"), "{e}");
        let e = merged(&[], "[sinks]\nprefix = \"x\"\nstatsd = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:3: sinks.statsd:") && e.contains("nope"),
            "{e}"
        );
        let e = merged(&[], "[enable]\nsyscal = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:2:") && e.contains("syscal"), "{e}");
        let e = merged(&[], "[sinks]\nstatsd_max_pkt = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:2:"), "{e}");
        // A tag that would overwrite a Riemann event's own field, only with a Riemann sink.
        let e = merged(
            &[],
            "[sinks]\nriemann = [\"127.0.0.1:5555\"]\ntags = [\"service=web\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("test.toml:3: sinks.tags:") && e.contains("Riemann event"),
            "{e}"
        );
        merged(
            &[],
            "[sinks]\nstatsd = [\"127.0.0.1:8125\"]\ntags = [\"service=web\"]\n",
        )
        .unwrap();
    }

    fn example_line(old: &str) -> usize {
        EXAMPLE.lines().position(|l| l.starts_with(old)).unwrap() + 1
    }

    /// The example with its line starting with `old` replaced: that line and the error.
    fn example_error_line(old: &str, new: &str) -> (usize, String) {
        let line = example_line(old);
        let text: Vec<_> = EXAMPLE
            .lines()
            .map(|l| if l.starts_with(old) { new } else { l })
            .collect();
        let e = merged(&[], &text.join("\n")).unwrap_err().to_string();
        (line, e)
    }

    #[test]
    fn errors_in_the_shipped_example_name_their_line_and_key() {
        for (old, new, key) in [
            ("statsd = [", "statsd = [\"nope\"]", "sinks.statsd"),
            ("max_keys", "max_keys = 0", "anomaly.max_keys"),
            ("sensitivity", "sensitivity = nan", "anomaly.sensitivity"),
            (
                "sink_queue",
                "sink_queue = 100000000000",
                "sinks.sink_queue",
            ),
            ("interval", "interval = \"100000years\"", "interval"),
        ] {
            let (line, e) = example_error_line(old, new);
            assert!(
                e.starts_with(&format!("test.toml:{line}: {key}:")),
                "{new}: {e}"
            );
        }
        // The lines the defects were measured at (42 and 74 then; `runq = true` came since, then
        // 7 lines of cgroup settings: cgroup_fs, cgroup_top, the cgroup filter, [enable] cgroup).
        assert_eq!(example_line("statsd = ["), 50);
        assert_eq!(example_line("max_keys"), 82);
    }

    #[test]
    fn the_example_config_is_valid_and_rendered() {
        let r = merged(&[], EXAMPLE).unwrap();
        let rendered = render(&r).unwrap();
        // What config check prints parses back to the same settings.
        let again = merged(&[], &rendered).unwrap();
        assert_eq!(render(&again).unwrap(), rendered);
        assert_eq!(again.interval, r.interval);
        assert_eq!(again.sinks, r.sinks);
        assert_eq!(again, r.resolved(&cli::sources()));
    }

    #[test]
    fn reload_reads_the_file_again_and_keeps_flags() {
        let dir = std::env::temp_dir().join(format!("ebpf-agent-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "interval = \"2s\"\nbpf_stats_every = 5\n").unwrap();
        let p = file.display().to_string();
        let reload = Reload::new(run_args(&["--config", &p, "--bpf-stats-every", "7"]));
        let s = reload.settings().unwrap();
        assert_eq!((s.interval, s.bpf_stats_every), (Duration::from_secs(2), 7));
        std::fs::write(&file, "interval = \"3s\"\n").unwrap();
        assert_eq!(reload.settings().unwrap().interval, Duration::from_secs(3));
        std::fs::write(&file, "\n[sinks]\nsink_queue = 100000000000\n").unwrap();
        let e = reload.settings().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{p}:3: sinks.sink_queue:")), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
