//! Command line. Bad flags or values: clap prints one line naming the flag and exits 2.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{probes::Probe, sinks::SinkArgs};

#[derive(Parser, Debug)]
#[command(
    name = "ebpf-agent",
    version,
    about = "Kernel-level latency and system metrics, every second"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Collect every interval and push to the outputs (the daemon).
    Run(RunArgs),
    /// A live per-second view for a person at a terminal; histograms and slow events on exit.
    Watch(WatchArgs),
    /// What this kernel and these privileges allow: one line per probe; exit 0 if all can run.
    Check(CheckArgs),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Record a known-good period as a reference sheet (per metric: count, mean, quantiles,
    /// rhythm).
    Record(RecordArgs),
    /// Run live and print what deviates from a reference sheet, worst first; exit 1 when
    /// something is beyond the critical level.
    Compare(CompareArgs),
    /// Replay the anomaly detector over a CSV history (`timestamp,value`); writes
    /// `timestamp,value,anomaly_score,state` to stdout.
    Detect(DetectArgs),
    /// Benchmark helper: attach two empty programs on sys_enter/sys_exit (the cost floor of any
    /// syscall tracer) until the duration ends or a signal.
    #[command(hide = true)]
    Floor {
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Programs that only read the clock (bpf_ktime_get_ns) at entry and exit.
        #[arg(long)]
        clock: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective settings (exit 2 if invalid).
    Check {
        /// The file (default: /etc/ebpf-agent/config.toml).
        path: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Text,
    Json,
    None,
}

/// A source of metrics for `--probes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Source {
    Syscall,
    Disk,
    Tcp,
    Procfs,
}

impl Source {
    pub fn probe(self) -> Option<Probe> {
        match self {
            Source::Procfs => None,
            kernel => format!("{kernel:?}").to_lowercase().parse().ok(),
        }
    }
}

/// A duration such as `1s`, `500ms`, `2m`; must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}`: {e} (examples: 1s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be greater than zero"));
    }
    Ok(d)
}

pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("`{s}`: the interval must be at least 100ms"));
    }
    Ok(d)
}

/// A duration where 0 is allowed (thresholds).
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (examples: 10ms, 1s, 0)"))
}

pub fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "`{s}`: a command name has 1 to 15 bytes (the kernel's comm)"
        ));
    }
    Ok(s.to_string())
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}`: a process id is a positive integer")),
    }
}

/// Where the daemon keeps its learnt anomaly baseline.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ebpf-agent";

/// Flags shared by `run` and `watch`.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Sources to enable, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "syscall,disk,tcp,procfs")]
    pub probes: Vec<Source>,
    /// Length of one interval (intervals are aligned to the wall clock).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop cleanly after this long (exit 0); default: run until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Only trace this process (tgid) in the syscall probe.
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,
    /// Only trace tasks with this command name (comm) in the syscall probe.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Report syscalls and block requests at least this slow one by one (0 = every one).
    #[arg(long = "slow-threshold", value_parser = parse_threshold)]
    pub slow_threshold: Option<Duration>,
    /// Root of the proc filesystem to read (e.g. /host/proc in a container).
    #[arg(long = "procfs-root", default_value = "/proc")]
    pub procfs_root: PathBuf,
    /// Turn off the one-by-one event stream (slow syscalls and block requests, TCP opens).
    #[arg(long = "no-events")]
    pub no_events: bool,
    /// Measure the kernel programs' own cost (agent.bpf_*) one interval out of N: the kernel's
    /// statistics add two clock reads to every program run while on. 0 = never, 1 = always.
    #[arg(long = "bpf-stats-every", value_name = "N", default_value_t = 60)]
    pub bpf_stats_every: u32,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long = "ring-buffer-kib", default_value_t = 256, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
}

pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(k) if k >= 4 && k.is_power_of_two() && k <= 1 << 20 => Ok(k),
        _ => Err(format!("`{s}`: a power of two between 4 and 1048576")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to print on stdout each interval (logs always go to stderr). Default: text, or none
    /// when a --statsd or --riemann sink is given.
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// Host name reported with every metric (default: this machine's hostname).
    #[arg(long)]
    pub host: Option<String>,
    /// Turn off the anomaly detection (on by default).
    #[arg(long = "no-anomaly")]
    pub no_anomaly: bool,
    /// Where the learnt anomaly baseline is kept across restarts.
    #[arg(long = "state-dir", value_name = "PATH", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Anomaly detection settings: `[anomaly]` in the configuration file.
    #[arg(skip)]
    pub anomaly: crate::anomaly::DetectorConfig,
    /// Configuration file (TOML); flags given here win over it. Default: /etc/ebpf-agent/config.toml
    /// when it exists. Reloaded on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sinks: SinkArgs,
}

impl RunArgs {
    pub fn output(&self) -> Output {
        match self.output {
            Some(o) => o,
            None if self.sinks.statsd.is_empty() && self.sinks.riemann.is_empty() => Output::Text,
            None => Output::None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Do not mark anomalous rows.
    #[arg(long = "no-anomaly")]
    pub no_anomaly: bool,
    /// The daemon's state directory: its learnt baseline is read (never written) so anomalous
    /// rows stand out at once. Default: `state_dir` of the configuration file, else
    /// /var/lib/ebpf-agent.
    #[arg(long = "state-dir", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file whose `state_dir` and `[anomaly]` settings are used (the daemon's).
    /// Default: /etc/ebpf-agent/config.toml when it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {}

#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where to write the sheet (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The reference sheet written by `record`.
    pub file: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_sensitivity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}`: a positive number (1 = default, 2 = twice as sensitive)"
        )),
    }
}

#[derive(Args, Debug, Clone)]
pub struct DetectArgs {
    /// CSV with a header `timestamp,value` (`YYYY-MM-DD HH:MM:SS` UTC or unix seconds), or `-`.
    pub file: PathBuf,
    /// Higher flags more.
    #[arg(long, default_value_t = 1.0, value_parser = parse_sensitivity)]
    pub sensitivity: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_flags() {
        let cli = Cli::try_parse_from([
            "ebpf-agent",
            "run",
            "--output",
            "json",
            "--duration",
            "3s",
            "--interval",
            "500ms",
            "--probes",
            "syscall,procfs",
            "--slow-threshold",
            "0",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.output(), Output::Json);
        assert_eq!(r.common.duration, Some(Duration::from_secs(3)));
        assert_eq!(r.common.interval, Duration::from_millis(500));
        assert_eq!(r.common.probes, vec![Source::Syscall, Source::Procfs]);
        assert_eq!(r.common.slow_threshold, Some(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["ebpf-agent", "run", "--interval", "0s"][..],
            &["ebpf-agent", "run", "--interval", "10ms"],
            &["ebpf-agent", "run", "--duration", "soon"],
            &["ebpf-agent", "run", "--probes", "syscall,gpu"],
            &["ebpf-agent", "run", "--output", "xml"],
            &["ebpf-agent", "watch", "--pid", "0"],
            &["ebpf-agent", "watch", "--comm", "a-name-longer-than-15"],
            &["ebpf-agent", "run", "--ring-buffer-kib", "1000"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
