//! The configuration file (TOML). Every `run` flag has a key; a flag given on the command line
//! wins over the file. `[enable]` switches each probe, the slow-event stream and each kind of
//! sink on or off. Read at start and again on SIGHUP.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;
use thiserror::Error;

use crate::{
    anomaly::DetectorConfig,
    cli::{self, Output, RunArgs, Source},
    sinks::SinkArgs,
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
}

/// Feature flips.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Enable {
    pub syscall: bool,
    pub disk: bool,
    pub tcp: bool,
    pub procfs: bool,
    /// The ring buffer stream: slow syscalls and block requests, TCP connects and accepts.
    pub slow_events: bool,
    pub statsd: bool,
    pub riemann: bool,
    /// Online anomaly detection.
    pub anomaly: bool,
}

impl Default for Enable {
    fn default() -> Self {
        Self {
            syscall: true,
            disk: true,
            tcp: true,
            procfs: true,
            slow_events: true,
            statsd: true,
            riemann: true,
            anomaly: true,
        }
    }
}

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub interval: Option<String>,
    pub duration: Option<String>,
    pub output: Option<Output>,
    pub host: Option<String>,
    pub procfs_root: Option<PathBuf>,
    pub slow_threshold: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub ring_buffer_kib: Option<u32>,
    pub bpf_stats_every: Option<u32>,
    pub state_dir: Option<PathBuf>,
    pub enable: Enable,
    pub sinks: Option<SinkArgs>,
    pub anomaly: Option<DetectorConfig>,
}

/// 1-based line of the first line of `text` assigning `key` (`key =` or `key=`), else 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// A parsed file and its text (for line numbers).
pub struct Loaded {
    pub path: String,
    pub text: String,
    pub file: FileConfig,
}

impl Loaded {
    fn invalid(&self, key: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: line_of(&self.text, key),
            reason: format!("{key}: {reason}"),
        }
    }
}

pub fn parse(path: &str, text: &str) -> Result<Loaded, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        ConfigError::Invalid {
            path: path.into(),
            line,
            reason: e.message().trim().to_string(),
        }
    })?;
    Ok(Loaded {
        path: path.into(),
        text: text.into(),
        file,
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

/// The file's `state_dir` and `[anomaly]` settings (validated), for `run` and `watch`.
pub fn anomaly_settings(
    l: &Loaded,
) -> Result<(Option<PathBuf>, Option<DetectorConfig>), ConfigError> {
    if let Some(a) = &l.file.anomaly {
        a.validate().map_err(|e| l.invalid("anomaly", e))?;
    }
    Ok((l.file.state_dir.clone(), l.file.anomaly.clone()))
}

/// The settings in force: command-line flags that were given, else the file, else defaults.
/// `m` are the `run` subcommand's matches (to tell given flags from defaults).
pub fn effective(
    cli: &RunArgs,
    m: Option<&ArgMatches>,
    loaded: Option<&Loaded>,
) -> Result<RunArgs, ConfigError> {
    let mut out = cli.clone();
    let Some(l) = loaded else { return Ok(out) };
    let f = &l.file;
    let given = |id: &str| m.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));

    if !given("interval")
        && let Some(v) = &f.interval
    {
        out.common.interval = cli::parse_interval(v).map_err(|e| l.invalid("interval", e))?;
    }
    if !given("duration")
        && let Some(v) = &f.duration
    {
        out.common.duration = Some(cli::parse_duration(v).map_err(|e| l.invalid("duration", e))?);
    }
    if !given("slow_threshold")
        && let Some(v) = &f.slow_threshold
    {
        out.common.slow_threshold =
            Some(cli::parse_threshold(v).map_err(|e| l.invalid("slow_threshold", e))?);
    }
    if !given("pid")
        && let Some(v) = f.pid
    {
        out.common.pid = Some(cli::parse_pid(&v.to_string()).map_err(|e| l.invalid("pid", e))?);
    }
    if !given("comm")
        && let Some(v) = &f.comm
    {
        out.common.comm = Some(cli::parse_comm(v).map_err(|e| l.invalid("comm", e))?);
    }
    if !given("procfs_root")
        && let Some(v) = &f.procfs_root
    {
        out.common.procfs_root = v.clone();
    }
    if !given("ring_buffer_kib")
        && let Some(v) = f.ring_buffer_kib
    {
        out.common.ring_buffer_kib =
            cli::parse_ring_kib(&v.to_string()).map_err(|e| l.invalid("ring_buffer_kib", e))?;
    }
    if !given("bpf_stats_every")
        && let Some(v) = f.bpf_stats_every
    {
        out.common.bpf_stats_every = v;
    }
    let (state_dir, anomaly) = anomaly_settings(l)?;
    if !given("state_dir")
        && let Some(v) = state_dir
    {
        out.state_dir = v;
    }
    if !given("no_anomaly") && !f.enable.anomaly {
        out.no_anomaly = true;
    }
    if let Some(a) = anomaly {
        out.anomaly = a;
    }
    if !given("output") && f.output.is_some() {
        out.output = f.output;
    }
    if !given("host") && f.host.is_some() {
        out.host = f.host.clone();
    }
    if !given("probes") {
        let e = &f.enable;
        out.common.probes = [
            (e.syscall, Source::Syscall),
            (e.disk, Source::Disk),
            (e.tcp, Source::Tcp),
            (e.procfs, Source::Procfs),
        ]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
        .collect();
    }
    if !given("no_events") && !f.enable.slow_events {
        out.common.no_events = true;
    }

    let file_sinks = f.sinks.clone().unwrap_or_default();
    let s = &mut out.sinks;
    macro_rules! from_file {
        ($($field:ident),*) => {$(
            if !given(stringify!($field)) {
                s.$field = file_sinks.$field.clone();
            }
        )*};
    }
    from_file!(
        statsd,
        riemann,
        prefix,
        tags,
        statsd_tags,
        statsd_max_packet,
        riemann_max_packet,
        riemann_ttl,
        riemann_timeout,
        sink_queue
    );
    if !given("statsd") && !f.enable.statsd {
        s.statsd.clear();
    }
    if !given("riemann") && !f.enable.riemann {
        s.riemann.clear();
    }
    out.sinks.validate().map_err(|e| {
        // Name the key the flag stands for.
        let key = e
            .trim_start_matches("--")
            .split([' ', ':'])
            .next()
            .unwrap_or("sinks")
            .replace('-', "_");
        let key = if key == "tag" {
            "tags".to_string()
        } else {
            key
        };
        ConfigError::Invalid {
            path: l.path.clone(),
            line: line_of(&l.text, &key),
            reason: format!("[sinks] {e}"),
        }
    })?;
    Ok(out)
}

/// The effective settings as TOML, for `config check`.
pub fn render(r: &RunArgs) -> String {
    use std::fmt::Write;
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let q = |s: &str| format!("{s:?}");
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
        )
    };
    let has = |s: Source| r.common.probes.contains(&s);
    let mut o = String::new();
    let _ = writeln!(o, "interval = {}", q(&dur(r.common.interval)));
    if let Some(d) = r.common.duration {
        let _ = writeln!(o, "duration = {}", q(&dur(d)));
    }
    let _ = writeln!(
        o,
        "output = {}",
        q(&format!("{:?}", r.output()).to_lowercase())
    );
    let _ = writeln!(
        o,
        "host = {}",
        q(&r.host.clone().unwrap_or_else(crate::run::hostname))
    );
    let _ = writeln!(
        o,
        "procfs_root = {}",
        q(&r.common.procfs_root.display().to_string())
    );
    if let Some(t) = r.common.slow_threshold {
        let _ = writeln!(
            o,
            "slow_threshold = {}",
            q(&if t.is_zero() { "0".into() } else { dur(t) })
        );
    }
    if let Some(p) = r.common.pid {
        let _ = writeln!(o, "pid = {p}");
    }
    if let Some(c) = &r.common.comm {
        let _ = writeln!(o, "comm = {}", q(c));
    }
    let _ = writeln!(o, "ring_buffer_kib = {}", r.common.ring_buffer_kib);
    let _ = writeln!(o, "bpf_stats_every = {}", r.common.bpf_stats_every);
    let _ = writeln!(o, "state_dir = {}", q(&r.state_dir.display().to_string()));
    let _ = writeln!(o, "\n[enable]");
    for (k, s) in [
        ("syscall", Source::Syscall),
        ("disk", Source::Disk),
        ("tcp", Source::Tcp),
        ("procfs", Source::Procfs),
    ] {
        let _ = writeln!(o, "{k} = {}", has(s));
    }
    let _ = writeln!(o, "slow_events = {}", !r.common.no_events);
    let _ = writeln!(o, "statsd = {}", !r.sinks.statsd.is_empty());
    let _ = writeln!(o, "riemann = {}", !r.sinks.riemann.is_empty());
    let _ = writeln!(o, "anomaly = {}", !r.no_anomaly);
    let s = &r.sinks;
    let _ = writeln!(o, "\n[sinks]");
    let _ = writeln!(o, "statsd = {}", list(&s.statsd));
    let _ = writeln!(o, "riemann = {}", list(&s.riemann));
    let _ = writeln!(o, "prefix = {}", q(&s.prefix));
    let _ = writeln!(o, "tags = {}", list(&s.tags));
    let _ = writeln!(
        o,
        "statsd_tags = {}",
        q(&format!("{:?}", s.statsd_tags).to_lowercase())
    );
    let _ = writeln!(o, "statsd_max_packet = {}", s.statsd_max_packet);
    let _ = writeln!(o, "riemann_max_packet = {}", s.riemann_max_packet);
    match s.riemann_ttl {
        Some(d) => {
            let _ = writeln!(o, "riemann_ttl = {}", q(&dur(*d)));
        }
        None => {
            let _ = writeln!(
                o,
                "# riemann_ttl: twice the interval ({})",
                dur(r.common.interval * 2)
            );
        }
    }
    let _ = writeln!(o, "riemann_timeout = {}", q(&dur(*s.riemann_timeout)));
    let _ = writeln!(o, "sink_queue = {}", s.sink_queue);
    let a = &r.anomaly;
    let _ = writeln!(o, "\n[anomaly]");
    let _ = writeln!(o, "sensitivity = {}", a.sensitivity);
    let fams: Vec<String> = a
        .families
        .iter()
        .map(|(p, v)| format!("[{}, {v}]", q(p)))
        .collect();
    let _ = writeln!(o, "families = [{}]", fams.join(", "));
    let _ = writeln!(o, "exclude = {}", list(&a.exclude));
    let _ = writeln!(o, "raise_after = {}", a.raise_after);
    let _ = writeln!(o, "clear_after = {}", a.clear_after);
    let _ = writeln!(o, "warmup = {}", a.warmup);
    let _ = writeln!(o, "max_keys = {}", a.max_keys);
    let _ = writeln!(o, "utc_offset_s = {}", a.utc_offset_s);
    o
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};

    /// Parses `args` as `ebpf-agent run ...` and merges `toml`.
    fn merged(args: &[&str], toml: &str) -> Result<RunArgs, ConfigError> {
        let mut full = vec!["ebpf-agent", "run"];
        full.extend_from_slice(args);
        let m = Cli::command().get_matches_from(full);
        let Command::Run(run) = Cli::from_arg_matches(&m).unwrap().command else {
            unreachable!()
        };
        let loaded = parse("test.toml", toml)?;
        effective(&run, m.subcommand_matches("run"), Some(&loaded))
    }

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
        assert_eq!(r.common.interval, Duration::from_secs(2));
        assert_eq!(r.common.slow_threshold, Some(Duration::from_millis(10)));
        assert_eq!(r.host.as_deref(), Some("from-file"));
        assert_eq!(
            r.common.probes,
            vec![Source::Syscall, Source::Tcp, Source::Procfs]
        );
        assert!(r.common.no_events);
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
        assert_eq!(r.common.interval, Duration::from_millis(500));
        assert_eq!(r.sinks.prefix, "cli");
        assert_eq!(r.common.probes, vec![Source::Disk]);
        assert_eq!(r.host.as_deref(), Some("cli-host"));
        assert_eq!(
            r.sinks.tags,
            vec!["env=prod"],
            "not given on the command line: from the file"
        );
    }

    #[test]
    fn sinks_can_be_switched_off() {
        let toml = "[enable]\nstatsd = false\n[sinks]\nstatsd = [\"127.0.0.1:8125\"]\nriemann = [\"127.0.0.1:5555\"]\n";
        let r = merged(&[], toml).unwrap();
        assert!(r.sinks.statsd.is_empty());
        assert_eq!(r.sinks.riemann, vec!["127.0.0.1:5555"]);
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
            e.starts_with("test.toml:3:") && e.contains("--statsd"),
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
    }

    #[test]
    fn the_example_config_is_valid_and_rendered() {
        let text = include_str!("../../packaging/config.example.toml");
        let r = merged(&[], text).unwrap();
        let rendered = render(&r);
        // What config check prints parses back to the same settings.
        let again = merged(&[], &rendered).unwrap();
        assert_eq!(render(&again), rendered);
        assert_eq!(again.common.interval, r.common.interval);
        assert_eq!(again.sinks, r.sinks);
    }
}
