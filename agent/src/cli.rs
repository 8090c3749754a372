//! Command line. Bad flags or values: clap prints one line naming the flag and exits 2.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    probes::Probe,
    settings::{self, Settings},
    sinks::StatsdTagStyle,
};

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
    /// Benchmark helper: what reading the histogram table costs per interval, on a synthetic
    /// table of `--cpus` possible CPUs where every row changed (no BPF needed); prints JSON.
    #[command(hide = true)]
    ReadCost {
        #[arg(long, default_value_t = 256)]
        cpus: usize,
        #[arg(long, default_value_t = 20)]
        intervals: usize,
        /// Also read the per-cgroup block, every slot taken (the `cgroup` source on; off by
        /// default, when the agent never reads it).
        #[arg(long)]
        cgroup: bool,
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

pub use agent_core::settings::{DEFAULT_STATE_DIR, Output};

/// The metric source that reads /proc (the others are the kernel probes).
pub const PROCFS: &str = "procfs";

/// Every metric source by name: the kernel probes, then procfs. Settings and `--probes` are
/// checked against this list.
pub fn sources() -> Vec<&'static str> {
    Probe::ALL
        .iter()
        .map(|p| p.name())
        .chain([PROCFS])
        .collect()
}

/// A source name for `--probes`.
fn parse_source(s: &str) -> Result<String, String> {
    settings::check_source(s, &sources())?;
    Ok(s.to_string())
}

/// A duration such as `1s`, `500ms`, `2m`; must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = settings::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be greater than zero"));
    }
    Ok(d)
}

fn parse_run_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    settings::check_duration(d)?;
    Ok(d)
}

pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    settings::check_interval(d)?;
    Ok(d)
}

/// A duration where 0 is allowed (thresholds).
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    settings::parse_threshold(s)
}

pub fn parse_comm(s: &str) -> Result<String, String> {
    settings::check_comm(s)?;
    Ok(s.to_string())
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    let p = s
        .parse::<u32>()
        .map_err(|_| format!("`{s}`: a process id is a positive integer"))?;
    settings::check_pid(p)?;
    Ok(p)
}

pub fn parse_cgroup_top(s: &str) -> Result<usize, String> {
    let k = s
        .parse::<usize>()
        .map_err(|_| format!("`{s}`: a number of cgroups between 1 and 1000"))?;
    settings::check_cgroup_top(k)?;
    Ok(k)
}

pub fn parse_cgroup(s: &str) -> Result<String, String> {
    settings::check_cgroup(s)?;
    Ok(s.to_string())
}

pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let k = s
        .parse::<u32>()
        .map_err(|_| format!("`{s}`: a power of two between 4 and 1048576"))?;
    settings::check_ring_kib(k)?;
    Ok(k)
}

// The flags below are an overlay over the settings (agent_core::settings): each is an `Option`
// with no clap default, so that one given here wins over the file, and one not given leaves the
// file's value or the documented default. Defaults are named in the help text only.

/// Flags shared by `run` and `watch`.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Sources to enable, comma-separated (syscall, disk, tcp, runq, cgroup, procfs)
    /// [default: all but cgroup].
    #[arg(long, value_delimiter = ',', value_parser = parse_source)]
    pub probes: Option<Vec<String>>,
    /// Length of one interval (intervals are aligned to the wall clock) [default: 1s].
    #[arg(long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Stop cleanly after this long (exit 0); default: run until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_run_duration)]
    pub duration: Option<Duration>,
    /// Only trace this process (tgid) in the syscall probe.
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,
    /// Only trace tasks with this command name (comm) in the syscall probe.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only trace tasks of this cgroup and its descendants in the syscall probe: a path below
    /// the cgroup v2 root (system.slice/nginx.service, or /system.slice/nginx.service as
    /// /proc/PID/cgroup writes it), or absolute below --cgroup-fs.
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,
    /// Where the cgroup filesystem is mounted (a container reads the host's, e.g.
    /// /host/sys/fs/cgroup) [default: /sys/fs/cgroup].
    #[arg(long = "cgroup-fs", value_name = "PATH")]
    pub cgroup_fs: Option<PathBuf>,
    /// Cgroups reported by name each interval by the cgroup source (the top by syscall time;
    /// the rest add up in cgroup=other), 1 to 1000 [default: 20].
    #[arg(long = "cgroup-top", value_name = "N", value_parser = parse_cgroup_top)]
    pub cgroup_top: Option<usize>,
    /// Report syscalls and block requests at least this slow one by one (0 = every one).
    #[arg(long = "slow-threshold", value_parser = parse_threshold)]
    pub slow_threshold: Option<Duration>,
    /// Root of the proc filesystem to read (e.g. /host/proc in a container) [default: /proc].
    #[arg(long = "procfs-root")]
    pub procfs_root: Option<PathBuf>,
    /// Turn off the one-by-one event stream (slow syscalls and block requests, TCP opens).
    #[arg(long = "no-events")]
    pub no_events: bool,
    /// Measure the kernel programs' own cost (agent.bpf_*) one interval out of N: the kernel's
    /// statistics add two clock reads to every program run while on. 0 = never, 1 = always
    /// [default: 60].
    #[arg(long = "bpf-stats-every", value_name = "N")]
    pub bpf_stats_every: Option<u32>,
    /// Ring buffer size in KiB (a power of two) [default: 256].
    #[arg(long = "ring-buffer-kib", value_parser = parse_ring_kib)]
    pub ring_buffer_kib: Option<u32>,
}

/// Sets `$dst` from `$src` when given and records the key.
macro_rules! overlay {
    ($given:ident, $($key:literal: $dst:expr => $src:expr),* $(,)?) => {$(
        if let Some(v) = &$src {
            $dst = v.clone().into();
            $given.push($key);
        }
    )*};
}

impl CommonArgs {
    /// Puts the flags given over `s`; returns their keys.
    pub fn overlay(&self, s: &mut Settings) -> Vec<&'static str> {
        let mut given = vec![];
        overlay!(given,
            "probes": s.probes => self.probes,
            "interval": s.interval => self.interval,
            "duration": s.duration => self.duration,
            "pid": s.pid => self.pid,
            "comm": s.comm => self.comm,
            "cgroup": s.cgroup => self.cgroup,
            "cgroup_fs": s.cgroup_fs => self.cgroup_fs,
            "cgroup_top": s.cgroup_top => self.cgroup_top,
            "slow_threshold": s.slow_threshold => self.slow_threshold,
            "procfs_root": s.procfs_root => self.procfs_root,
            "bpf_stats_every": s.bpf_stats_every => self.bpf_stats_every,
            "ring_buffer_kib": s.ring_buffer_kib => self.ring_buffer_kib,
        );
        if self.no_events {
            s.enable.slow_events = false;
            given.push("enable.slow_events");
        }
        given
    }

    /// The defaults with these flags over them (commands that read no configuration file).
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        self.overlay(&mut s);
        s
    }
}

#[derive(Args, Debug, Clone, Default)]
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
    /// Where the learnt anomaly baseline is kept across restarts [default: /var/lib/ebpf-agent].
    #[arg(long = "state-dir", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file (TOML); flags given here win over it. Default: /etc/ebpf-agent/config.toml
    /// when it exists. Reloaded on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sinks: SinkFlags,
}

impl RunArgs {
    /// Puts the flags given over `s`; returns their keys (dotted, as in the file).
    pub fn overlay(&self, s: &mut Settings) -> Vec<&'static str> {
        let mut given = self.common.overlay(s);
        overlay!(given,
            "output": s.output => self.output,
            "host": s.host => self.host,
            "state_dir": s.state_dir => self.state_dir,
        );
        if self.no_anomaly {
            s.enable.anomaly = false;
            given.push("enable.anomaly");
        }
        let (f, k) = (&self.sinks, &mut s.sinks);
        overlay!(given,
            "sinks.statsd": k.statsd => f.statsd,
            "sinks.riemann": k.riemann => f.riemann,
            "sinks.prefix": k.prefix => f.prefix,
            "sinks.tags": k.tags => f.tags,
            "sinks.statsd_tags": k.statsd_tags => f.statsd_tags,
            "sinks.statsd_max_packet": k.statsd_max_packet => f.statsd_max_packet,
            "sinks.riemann_max_packet": k.riemann_max_packet => f.riemann_max_packet,
            "sinks.riemann_ttl": k.riemann_ttl => f.riemann_ttl,
            "sinks.riemann_timeout": k.riemann_timeout => f.riemann_timeout,
            "sinks.riemann_keepalive": k.riemann_keepalive => f.riemann_keepalive,
            "sinks.sink_queue": k.sink_queue => f.sink_queue,
        );
        // A sink given here runs whatever the file's `[enable]` says.
        s.enable.statsd |= f.statsd.is_some();
        s.enable.riemann |= f.riemann.is_some();
        given
    }
}

/// Sink flags of `run` (`[sinks]` in the file).
#[derive(Args, Debug, Clone, Default)]
pub struct SinkFlags {
    /// Push every interval to this StatsD server over UDP (repeatable).
    #[arg(long = "statsd", value_name = "HOST:PORT")]
    pub statsd: Option<Vec<String>>,
    /// Push every interval to this Riemann server: UDP unless `tcp://` (repeatable).
    #[arg(long = "riemann", value_name = "[tcp://|udp://]HOST:PORT")]
    pub riemann: Option<Vec<String>>,
    /// First component of every metric name (StatsD) and first word of every service (Riemann)
    /// [default: ebpf].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Tag added to every metric (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Option<Vec<String>>,
    /// How tags reach StatsD: folded into the name, or as DogStatsD `|#k:v` tags [default: name].
    #[arg(long = "statsd-tags", value_enum)]
    pub statsd_tags: Option<StatsdTagStyle>,
    /// Largest StatsD datagram payload, in bytes [default: 1432].
    #[arg(long = "statsd-max-packet", value_name = "BYTES")]
    pub statsd_max_packet: Option<usize>,
    /// Largest Riemann UDP datagram, in bytes: the default fits a 1500-byte MTU over IPv4 and
    /// IPv6; at most 16384, the server's receive limit [default: 1432].
    #[arg(long = "riemann-max-packet", value_name = "BYTES")]
    pub riemann_max_packet: Option<usize>,
    /// How long Riemann keeps each event [default: twice the interval].
    #[arg(long = "riemann-ttl", value_name = "DUR")]
    pub riemann_ttl: Option<humantime::Duration>,
    /// How long a counter that stopped being reported is still sent to Riemann, as 0, so that
    /// the server's index does not expire it while it is merely quiet; 0 turns it off
    /// [default: 5m].
    #[arg(long = "riemann-keepalive", value_name = "DUR")]
    pub riemann_keepalive: Option<humantime::Duration>,
    /// Riemann over TCP: how long to wait for a connection, and for the server's ack
    /// [default: 5s].
    #[arg(long = "riemann-timeout", value_name = "DUR")]
    pub riemann_timeout: Option<humantime::Duration>,
    /// Intervals each sink holds while its endpoint is slow or away; the oldest go first
    /// [default: 60].
    #[arg(long = "sink-queue", value_name = "N")]
    pub sink_queue: Option<usize>,
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
pub struct CheckArgs {
    /// Configuration file whose `cgroup_fs` to use (default: /etc/ebpf-agent/config.toml when
    /// it exists), so `check` in a container looks where the agent does.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where the cgroup filesystem is mounted (e.g. /host/sys/fs/cgroup in a container)
    /// [default: the file's cgroup_fs, else /sys/fs/cgroup].
    #[arg(long = "cgroup-fs", value_name = "PATH")]
    pub cgroup_fs: Option<PathBuf>,
}

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
    /// CSV with a header `timestamp,value` (RFC 3339 with an offset, `YYYY-MM-DD HH:MM:SS` UTC or
    /// unix seconds; quoted fields allowed), or `-`; streamed row by row.
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
        let mut s = Settings::default();
        r.overlay(&mut s);
        assert_eq!(s.output(), Output::Json);
        assert_eq!(s.duration, Some(Duration::from_secs(3)));
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.probes, Some(vec!["syscall".into(), "procfs".into()]));
        assert_eq!(s.slow_threshold, Some(Duration::ZERO));
        assert!(s.source_on("syscall") && s.source_on("procfs") && !s.source_on("disk"));
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
            &["ebpf-agent", "run", "--interval", "100000years"],
            &["ebpf-agent", "run", "--interval", "2h"],
            &["ebpf-agent", "run", "--duration", "584942417355years"],
            &[
                "ebpf-agent",
                "record",
                "--duration",
                "1000years",
                "--out",
                "x",
            ],
            &["ebpf-agent", "run", "--sink-queue", "-1"],
            &["ebpf-agent", "run", "--cgroup-top", "0"],
            &["ebpf-agent", "watch", "--cgroup-top", "1001"],
            &["ebpf-agent", "run", "--cgroup-top", "many"],
            &["ebpf-agent", "watch", "--cgroup", ""],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn cgroup_flags_reach_the_settings_for_run_and_watch() {
        let Command::Watch(w) = Cli::try_parse_from([
            "ebpf-agent",
            "watch",
            "--cgroup-top",
            "1",
            "--cgroup-fs",
            "/host/sys/fs/cgroup",
            "--cgroup",
            "system.slice/nginx.service",
        ])
        .unwrap()
        .command
        else {
            panic!("not watch")
        };
        let s = w.common.settings();
        assert_eq!(s.cgroup_top, 1);
        assert_eq!(s.cgroup_fs, PathBuf::from("/host/sys/fs/cgroup"));
        assert_eq!(s.cgroup.as_deref(), Some("system.slice/nginx.service"));
        let Command::Run(r) = Cli::try_parse_from(["ebpf-agent", "run", "--cgroup-top", "1000"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        let mut s = Settings::default();
        assert_eq!(r.overlay(&mut s), ["cgroup_top"]);
        assert_eq!(s.cgroup_top, 1000);
        let e = Cli::try_parse_from(["ebpf-agent", "run", "--cgroup-top", "0"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("between 1 and 1000"), "{msg}");
    }

    #[test]
    fn flags_not_given_leave_the_settings_alone() {
        let Command::Run(r) = Cli::try_parse_from(["ebpf-agent", "run"]).unwrap().command else {
            panic!("not run")
        };
        let mut s = Settings {
            interval: Duration::from_secs(7),
            ..Settings::default()
        };
        let before = s.clone();
        assert!(r.overlay(&mut s).is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn the_help_names_the_documented_defaults() {
        let d = Settings::default();
        let help = Cli::command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        for default in [
            format!("[default: {}]", humantime::format_duration(d.interval)),
            format!("[default: {}]", d.procfs_root.display()),
            format!("[default: {}]", d.bpf_stats_every),
            format!("[default: {}]", d.ring_buffer_kib),
            format!("[default: {}]", d.cgroup_fs.display()),
            format!("[default: {}]", d.cgroup_top),
            format!("[default: {}]", d.state_dir.display()),
            format!("[default: {}]", d.sinks.prefix),
            format!("[default: {}]", d.sinks.statsd_max_packet),
            format!("[default: {}]", d.sinks.riemann_max_packet),
            format!("[default: {}]", d.sinks.riemann_timeout),
            format!("[default: {}]", d.sinks.riemann_keepalive),
            format!("[default: {}]", d.sinks.sink_queue),
        ] {
            assert!(help.contains(&default), "{default} not in\n{help}");
        }
    }
}
