//! The agent's settings, described once. [`Settings`] is the configuration file's TOML schema
//! (`packaging/config.example.toml`), its `Default` is the documented defaults, and
//! [`Settings::validate`] is the one place that bounds every value: whatever it accepts runs.
//! The command line is an overlay (the agent's `cli.rs`): a flag given wins over the file, which
//! wins over the defaults.
//!
//! Errors name the key; [`parse`] keeps the file's spans so that the agent can say on which line
//! that key is ([`Parsed::line_of`]), for type errors and for values out of bounds alike.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    ser::{SerializeMap, SerializeStruct},
};
use thiserror::Error;
use toml_edit::{ImDocument, TableLike};

use crate::{anomaly::DetectorConfig, sinks::SinkArgs};

/// Where the daemon keeps its learnt anomaly baseline.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ebpf-agent";

// Bounds (the README's Configuration section lists them). Each keeps something downstream from
// crashing, stalling or growing without limit.
/// Shorter intervals cost more than they tell (the kernel side is read whole each interval).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longer ones look like a dead agent to every collector (and Riemann TTLs follow them).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// `duration` is added to the start time: bounded so that it can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The ring buffer, in KiB: a power of two the kernel accepts (4 KiB pages .. 1 GiB).
pub const RING_BUFFER_KIB: std::ops::RangeInclusive<u32> = 4..=1 << 20;
/// The kernel's comm is 16 bytes with its NUL.
pub const MAX_COMM_BYTES: usize = 15;
/// The detector's own bound on keys (its state file refuses more); a test keeps them equal.
pub const MAX_ANOMALY_KEYS: usize = 1 << 16;
/// Cgroups named per interval (`cgroup_top`): each adds a dozen metric keys downstream.
pub const CGROUP_TOP: std::ops::RangeInclusive<usize> = 1..=1000;
/// Where the cgroup filesystem is mounted on a host (a container sees the host's where it is
/// mounted into it, e.g. `/host/sys/fs/cgroup`: its own is a namespaced view).
pub const DEFAULT_CGROUP_FS: &str = "/sys/fs/cgroup";

/// What `run` prints on stdout each interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Text,
    Json,
    None,
}

/// Every setting of `ebpf-agent run`, as the configuration file spells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Length of one interval, aligned to the wall clock.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Stop cleanly after this long; `None`: until a signal.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// `None`: text without a sink, none with one (see [`Settings::output`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// `None`: this machine's hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub procfs_root: PathBuf,
    /// The metric sources to run, by name (`--probes`); `None`: the `[enable]` switches decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<String>>,
    /// Syscalls and block requests at least this slow go to the event stream (0 = every one).
    #[serde(with = "opt_threshold", skip_serializing_if = "Option::is_none")]
    pub slow_threshold: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Only trace this cgroup and its descendants (path below the v2 root, or absolute below
    /// `cgroup_fs`); checked against the hierarchy when the agent starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Where the cgroup filesystem is mounted (its v2 hierarchy: there or `unified/` below).
    pub cgroup_fs: PathBuf,
    /// Per-cgroup attribution: cgroups reported by name each interval, the rest as `other`.
    pub cgroup_top: usize,
    pub ring_buffer_kib: u32,
    pub bpf_stats_every: u32,
    pub state_dir: PathBuf,
    pub enable: Enable,
    pub sinks: SinkArgs,
    #[serde(serialize_with = "serialize_anomaly")]
    pub anomaly: DetectorConfig,
}

impl Default for Settings {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            duration: None,
            output: None,
            host: None,
            procfs_root: "/proc".into(),
            probes: None,
            slow_threshold: None,
            pid: None,
            comm: None,
            cgroup: None,
            cgroup_fs: DEFAULT_CGROUP_FS.into(),
            cgroup_top: 20,
            ring_buffer_kib: 256,
            bpf_stats_every: 60,
            state_dir: DEFAULT_STATE_DIR.into(),
            enable: Enable::default(),
            sinks: SinkArgs::default(),
            anomaly: DetectorConfig::default(),
        }
    }
}

/// `[enable]`: a switch per metric source (named by the agent's list: a new probe needs no
/// change here), the event stream, each kind of sink and the anomaly detection. Everything is on
/// unless switched off.
#[derive(Clone, Debug, PartialEq)]
pub struct Enable {
    /// Metric sources by name; one not named is on. Checked against the agent's list by
    /// [`Settings::validate`].
    pub sources: BTreeMap<String, bool>,
    /// The one-by-one event stream: slow syscalls and block requests, TCP opens.
    pub slow_events: bool,
    pub statsd: bool,
    pub riemann: bool,
    pub anomaly: bool,
}

impl Default for Enable {
    fn default() -> Self {
        Self {
            sources: BTreeMap::new(),
            slow_events: true,
            statsd: true,
            riemann: true,
            anomaly: true,
        }
    }
}

impl Enable {
    const FIXED: [&str; 4] = ["slow_events", "statsd", "riemann", "anomaly"];
}

impl<'de> Deserialize<'de> for Enable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A table of booleans: the fixed switches, and the rest are sources.
        let mut sources = BTreeMap::<String, bool>::deserialize(d)?;
        let mut take = |k: &str| sources.remove(k).unwrap_or(true);
        Ok(Enable {
            slow_events: take("slow_events"),
            statsd: take("statsd"),
            riemann: take("riemann"),
            anomaly: take("anomaly"),
            sources,
        })
    }
}

impl Serialize for Enable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.sources.len() + Self::FIXED.len()))?;
        for (k, v) in &self.sources {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("slow_events", &self.slow_events)?;
        m.serialize_entry("statsd", &self.statsd)?;
        m.serialize_entry("riemann", &self.riemann)?;
        m.serialize_entry("anomaly", &self.anomaly)?;
        m.end()
    }
}

fn serialize_anomaly<S: Serializer>(a: &DetectorConfig, s: S) -> Result<S::Ok, S::Error> {
    // The detector's fields as `[anomaly]` spells them (it deserializes the same names).
    let mut t = s.serialize_struct("anomaly", 8)?;
    t.serialize_field("sensitivity", &a.sensitivity)?;
    t.serialize_field("families", &a.families)?;
    t.serialize_field("exclude", &a.exclude)?;
    t.serialize_field("raise_after", &a.raise_after)?;
    t.serialize_field("clear_after", &a.clear_after)?;
    t.serialize_field("warmup", &a.warmup)?;
    t.serialize_field("max_keys", &a.max_keys)?;
    match a.utc_offset_s {
        Some(o) => t.serialize_field("utc_offset_s", &o)?,
        None => t.skip_field("utc_offset_s")?,
    }
    t.end()
}

/// A value out of bounds: the key (dotted, as in the file: `sinks.statsd`) and why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same error for a value given on the command line: `--statsd "x": ...`.
    pub fn as_flag(&self) -> String {
        format!("--{} {}", flag_for(&self.key), self.reason)
    }
}

/// The command-line flag of a key: its last component with dashes (`sinks.sink_queue` →
/// `--sink-queue`); `tags` is given one `--tag` at a time, sources by `--probes`.
pub fn flag_for(key: &str) -> String {
    match key.rsplit('.').next().unwrap_or(key) {
        "tags" => "tag".into(),
        _ if key.starts_with("enable.") => "probes".into(),
        last => last.replace('_', "-"),
    }
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `interval`: between [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn check_interval(d: Duration) -> Result<(), String> {
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!(
            "{}: the interval must be between {} and {}",
            fmt(d),
            fmt(MIN_INTERVAL),
            fmt(MAX_INTERVAL)
        ));
    }
    Ok(())
}

/// `duration`: positive, at most [`MAX_DURATION`].
pub fn check_duration(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err(format!("{}: must be greater than zero", fmt(d)));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "{}: at most {} (no value: until stopped)",
            fmt(d),
            fmt(MAX_DURATION)
        ));
    }
    Ok(())
}

/// `ring_buffer_kib`: a power of two in [`RING_BUFFER_KIB`].
pub fn check_ring_kib(k: u32) -> Result<(), String> {
    if !k.is_power_of_two() || !RING_BUFFER_KIB.contains(&k) {
        return Err(format!(
            "{k}: a power of two between {} and {}",
            RING_BUFFER_KIB.start(),
            RING_BUFFER_KIB.end()
        ));
    }
    Ok(())
}

pub fn check_pid(p: u32) -> Result<(), String> {
    if p == 0 {
        return Err("0: a process id is a positive integer".into());
    }
    Ok(())
}

pub fn check_comm(c: &str) -> Result<(), String> {
    if c.is_empty() || c.len() > MAX_COMM_BYTES || c.contains('\0') {
        return Err(format!(
            "{c:?}: a command name has 1 to {MAX_COMM_BYTES} bytes (the kernel's comm)"
        ));
    }
    Ok(())
}

/// `cgroup_top`: within [`CGROUP_TOP`].
pub fn check_cgroup_top(k: usize) -> Result<(), String> {
    if !CGROUP_TOP.contains(&k) {
        return Err(format!(
            "{k}: between {} and {} cgroups (the rest are reported as cgroup=other)",
            CGROUP_TOP.start(),
            CGROUP_TOP.end()
        ));
    }
    Ok(())
}

/// `cgroup` (the filter): a path, not empty (whether it exists is checked at start).
pub fn check_cgroup(p: &str) -> Result<(), String> {
    if p.is_empty() || p.contains('\0') {
        return Err(format!(
            "{p:?}: a cgroup path below the v2 root, e.g. system.slice/nginx.service"
        ));
    }
    Ok(())
}

/// Metric sources that run only when switched on: per-cgroup attribution adds about 10 ns to
/// every syscall (median of 8 pinned getppid runs, Intel Xeon VM), over the ~10 ns a default may
/// cost.
pub const OFF_BY_DEFAULT: &[&str] = &["cgroup"];

/// A metric source name from `--probes` or `probes`, checked against the agent's list.
pub fn check_source(name: &str, sources: &[&str]) -> Result<(), String> {
    if !sources.contains(&name) {
        return Err(format!(
            "unknown source {name:?}: use one of {}",
            sources.join(", ")
        ));
    }
    Ok(())
}

impl Settings {
    /// Checks every value; `sources` are the metric sources the agent has (its kernel probes and
    /// procfs). The error names the key.
    pub fn validate(&self, sources: &[&str]) -> Result<(), Invalid> {
        check_interval(self.interval).map_err(|e| Invalid::new("interval", e))?;
        if let Some(d) = self.duration {
            check_duration(d).map_err(|e| Invalid::new("duration", e))?;
        }
        for p in self.probes.iter().flatten() {
            check_source(p, sources).map_err(|e| Invalid::new("probes", e))?;
        }
        for name in self.enable.sources.keys() {
            check_source(name, sources).map_err(|e| Invalid::new(format!("enable.{name}"), e))?;
        }
        if let Some(p) = self.pid {
            check_pid(p).map_err(|e| Invalid::new("pid", e))?;
        }
        if let Some(c) = &self.comm {
            check_comm(c).map_err(|e| Invalid::new("comm", e))?;
        }
        if let Some(c) = &self.cgroup {
            check_cgroup(c).map_err(|e| Invalid::new("cgroup", e))?;
        }
        check_cgroup_top(self.cgroup_top).map_err(|e| Invalid::new("cgroup_top", e))?;
        check_ring_kib(self.ring_buffer_kib).map_err(|e| Invalid::new("ring_buffer_kib", e))?;
        self.sinks_in_force()
            .check()
            .map_err(|(k, e)| Invalid::new(format!("sinks.{k}"), e))?;
        self.check_anomaly()
    }

    fn check_anomaly(&self) -> Result<(), Invalid> {
        let a = &self.anomaly;
        let bad = |k: &str, e: String| Err(Invalid::new(format!("anomaly.{k}"), e));
        let sens_ok = |s: f64| s.is_finite() && s > 0.0;
        if !sens_ok(a.sensitivity) {
            return bad(
                "sensitivity",
                format!(
                    "{}: a positive number (1 = default, 2 = twice as sensitive)",
                    a.sensitivity
                ),
            );
        }
        if let Some((p, s)) = a.families.iter().find(|(_, s)| !sens_ok(*s)) {
            return bad(
                "families",
                format!("{s}: the sensitivity of {p:?} must be a positive number"),
            );
        }
        if a.raise_after == 0 {
            return bad("raise_after", "0: at least 1 interval".into());
        }
        if a.clear_after == 0 {
            return bad("clear_after", "0: at least 1 interval".into());
        }
        if !(1..=MAX_ANOMALY_KEYS).contains(&a.max_keys) {
            return bad(
                "max_keys",
                format!("{}: between 1 and {MAX_ANOMALY_KEYS}", a.max_keys),
            );
        }
        if let Some(o) = a.utc_offset_s
            && o.abs() > 16 * 3600
        {
            return bad("utc_offset_s", format!("{o}: within ±16 hours (±57600)"));
        }
        Ok(())
    }

    /// Whether the metric source `name` runs: listed in `probes` when given, else not switched
    /// off in `[enable]` (or switched on, for those [`OFF_BY_DEFAULT`]).
    pub fn source_on(&self, name: &str) -> bool {
        match &self.probes {
            Some(p) => p.iter().any(|x| x == name),
            None => self
                .enable
                .sources
                .get(name)
                .copied()
                .unwrap_or(!OFF_BY_DEFAULT.contains(&name)),
        }
    }

    /// The sinks to start: the lists of the kinds `[enable]` switches off are emptied.
    pub fn sinks_in_force(&self) -> SinkArgs {
        let mut s = self.sinks.clone();
        if !self.enable.statsd {
            s.statsd.clear();
        }
        if !self.enable.riemann {
            s.riemann.clear();
        }
        s
    }

    /// What goes to stdout: as set, else text without a sink and nothing with one.
    pub fn output(&self) -> Output {
        let s = self.sinks_in_force();
        match self.output {
            Some(o) => o,
            None if s.statsd.is_empty() && s.riemann.is_empty() => Output::Text,
            None => Output::None,
        }
    }

    /// The host name sent with every metric.
    pub fn host(&self) -> String {
        self.host.clone().unwrap_or_else(hostname)
    }

    /// The same settings with what defaults to something computed spelled out (output, host,
    /// one switch per source), as `config check` prints them.
    pub fn resolved(&self, sources: &[&str]) -> Settings {
        let mut r = self.clone();
        r.output = Some(self.output());
        r.host = Some(self.host());
        r.enable.sources = sources
            .iter()
            .map(|s| (s.to_string(), self.source_on(s)))
            .collect();
        r.probes = None;
        r
    }

    /// As TOML (the effective settings `config check` prints).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// This machine's host name; `localhost` if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length are valid.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_string();
        }
    }
    "localhost".into()
}

/// A file that does not parse: its 1-based line (0 when unknown) and the reason, naming the key
/// when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// A parsed file: its settings (not yet validated: the command line may still replace values)
/// and where each key is written.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub settings: Settings,
    doc: ImDocument<String>,
}

/// Parses a configuration file.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let doc = ImDocument::parse(text.to_owned()).map_err(|e| ParseError {
        line: e.span().map_or(0, |s| line_at(text, s.start)),
        reason: e.message().trim().to_string(),
    })?;
    let settings: Settings = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start);
        let message = e.message().trim();
        ParseError {
            line: start.map_or(0, |s| line_at(text, s)),
            // A bad value: say whose (an unknown key names itself).
            reason: match start.and_then(|s| key_of_value_at(doc.as_table(), s, "")) {
                Some(key) => format!("{key}: {message}"),
                None => message.to_string(),
            },
        }
    })?;
    Ok(Parsed { settings, doc })
}

impl Parsed {
    /// 1-based line where `key` (dotted: `sinks.statsd`) is written; 0 when the file does not
    /// set it.
    pub fn line_of(&self, key: &str) -> usize {
        let mut table: &dyn TableLike = self.doc.as_table();
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some((k, item)) = table.get_key_value(part) else {
                return 0;
            };
            if parts.peek().is_none() {
                return k.span().map_or(0, |s| line_at(self.doc.raw(), s.start));
            }
            match item.as_table_like() {
                Some(t) => table = t,
                None => return 0,
            }
        }
        0
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key whose value spans `offset`, if any.
fn key_of_value_at(table: &dyn TableLike, offset: usize, prefix: &str) -> Option<String> {
    for (k, item) in table.iter() {
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(t) = item.as_table_like()
            && let Some(inner) = key_of_value_at(t, offset, &path)
        {
            return Some(inner);
        }
        if item.is_value() && item.span().is_some_and(|s| s.contains(&offset)) {
            return Some(path);
        }
    }
    None
}

mod duration {
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (examples: 1s, 500ms, 2m)"))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&fmt(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// A threshold: a duration, or `0` for every one.
mod opt_threshold {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) if d.is_zero() => s.serialize_str("0"),
            _ => opt_duration::serialize(d, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "0" {
            return Ok(Some(Duration::ZERO));
        }
        duration::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration as the command line and the file write it (`1s`, `500ms`, `2m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// A threshold as the command line and the file write it (`10ms`, `0` = every one).
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (examples: 10ms, 1s, 0)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &[&str] = &["syscall", "disk", "tcp", "runq", "cgroup", "procfs"];
    const EXAMPLE: &str = include_str!("../../packaging/config.example.toml");

    /// Parses and validates, as `config check` does: `Err((line, message))`.
    fn check(text: &str) -> Result<Settings, (usize, String)> {
        let p = parse(text).map_err(|e| (e.line, e.reason))?;
        p.settings
            .validate(SOURCES)
            .map_err(|e| (p.line_of(&e.key), e.to_string()))?;
        Ok(p.settings)
    }

    /// The example with the line starting with `old` replaced by `new`; and that line's number.
    fn example_with(old: &str, new: &str) -> (String, usize) {
        let line = EXAMPLE
            .lines()
            .position(|l| l.starts_with(old))
            .unwrap_or_else(|| panic!("no line {old:?} in the example"))
            + 1;
        let text = EXAMPLE
            .lines()
            .map(|l| if l.starts_with(old) { new } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        (text, line)
    }

    #[test]
    fn defaults_and_the_example_are_valid() {
        Settings::default().validate(SOURCES).unwrap();
        let s = check(EXAMPLE).unwrap();
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.sinks.statsd, ["127.0.0.1:8125"]);
        assert_eq!(s.anomaly.families.len(), 2);
        // The example spells out the defaults.
        assert_eq!(s.ring_buffer_kib, Settings::default().ring_buffer_kib);
        assert_eq!(s.sinks.sink_queue, Settings::default().sinks.sink_queue);
        assert_eq!(check("").unwrap(), Settings::default());
    }

    #[test]
    fn errors_in_the_example_name_the_right_line() {
        // Each was reported at a wrong line (or 0) before settings were one type.
        for (old, new, key) in [
            ("statsd = [", "statsd = [\"nope\"]", "sinks.statsd"),
            ("max_keys", "max_keys = 0", "anomaly.max_keys"),
            ("sensitivity", "sensitivity = nan", "anomaly.sensitivity"),
            ("sensitivity", "sensitivity = -1.0", "anomaly.sensitivity"),
            (
                "sink_queue",
                "sink_queue = 100000000000",
                "sinks.sink_queue",
            ),
            ("interval", "interval = \"100000years\"", "interval"),
            (
                "ring_buffer_kib",
                "ring_buffer_kib = 1000",
                "ring_buffer_kib",
            ),
            ("tcp = true", "gpu = true", "enable.gpu"),
            ("interval", "interval = \"soon\"", "interval"),
            ("interval", "interval = 5", ""),
            ("raise_after", "raise_after = 0", "anomaly.raise_after"),
            ("cgroup_top", "cgroup_top = 0", "cgroup_top"),
            (
                "utc_offset_s",
                "utc_offset_s = 90000",
                "anomaly.utc_offset_s",
            ),
            (
                "statsd_max_packet",
                "statsd_max_packet = 10",
                "sinks.statsd_max_packet",
            ),
        ] {
            let (text, line) = example_with(old, new);
            let (got, msg) = check(&text).unwrap_err();
            assert_eq!(got, line, "{new}: {msg}");
            assert!(msg.starts_with(key), "{new}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        // 43 and 75 before the cgroup settings (cgroup_fs, cgroup_top, the commented cgroup
        // filter, [enable] cgroup) took 7 lines above them.
        assert_eq!(example_with("statsd = [", "").1, 50);
        assert_eq!(example_with("max_keys", "").1, 82);
    }

    #[test]
    fn unknown_keys_and_sources_are_refused_at_their_line() {
        let (line, msg) = check("interval = \"1s\"\n\nintervall = \"2s\"\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.contains("intervall"), "{msg}");
        let (line, msg) = check("[enable]\nsyscal = true\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(
            msg.contains("syscal") && msg.contains("syscall, disk"),
            "{msg}"
        );
        let (line, msg) = check("[sinks]\nstatsd_max_pkt = 5\n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = check("\nprobes = [\"syscall\", \"gpu\"]\n").unwrap_err();
        assert_eq!((line, msg.starts_with("probes:")), (2, true), "{msg}");
        let (line, msg) = check("[enable]\nsyscall = \"yes\"\n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        // Inline tables and dotted keys are found too.
        assert_eq!(check("sinks = { prefix = \"a..b\" }\n").unwrap_err().0, 1);
        assert_eq!(check("\nsinks.sink_queue = 0\n").unwrap_err().0, 2);
    }

    #[test]
    fn every_bound_is_enforced() {
        let bad = |f: &dyn Fn(&mut Settings), key: &str| {
            let mut s = Settings::default();
            f(&mut s);
            let e = s.validate(SOURCES).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        };
        bad(&|s| s.interval = Duration::from_millis(99), "interval");
        bad(&|s| s.interval = Duration::from_secs(3601), "interval");
        bad(&|s| s.duration = Some(Duration::ZERO), "duration");
        bad(&|s| s.duration = Some(Duration::MAX), "duration");
        bad(&|s| s.ring_buffer_kib = 2, "ring_buffer_kib");
        bad(&|s| s.ring_buffer_kib = 1 << 21, "ring_buffer_kib");
        bad(&|s| s.ring_buffer_kib = 384, "ring_buffer_kib");
        bad(&|s| s.pid = Some(0), "pid");
        bad(&|s| s.comm = Some("a-name-longer-than-15".into()), "comm");
        bad(&|s| s.cgroup_top = 0, "cgroup_top");
        bad(&|s| s.cgroup_top = 1001, "cgroup_top");
        bad(&|s| s.cgroup = Some(String::new()), "cgroup");
        bad(&|s| s.probes = Some(vec!["gpu".into()]), "probes");
        bad(&|s| s.sinks.sink_queue = 3601, "sinks.sink_queue");
        bad(&|s| s.sinks.sink_queue = 0, "sinks.sink_queue");
        bad(
            &|s| s.sinks.tags = (0..33).map(|i| format!("k{i}=v")).collect(),
            "sinks.tags",
        );
        bad(
            &|s| s.sinks.tags = vec![format!("k={}", "v".repeat(129))],
            "sinks.tags",
        );
        bad(
            &|s| s.sinks.tags = vec![format!("{}=v", "k".repeat(129))],
            "sinks.tags",
        );
        bad(
            &|s| s.sinks.riemann_max_packet = 70000,
            "sinks.riemann_max_packet",
        );
        bad(
            &|s| s.sinks.riemann_timeout = Duration::ZERO.into(),
            "sinks.riemann_timeout",
        );
        bad(
            &|s| s.sinks.riemann_timeout = Duration::from_secs(3601).into(),
            "sinks.riemann_timeout",
        );
        bad(
            &|s| s.sinks.riemann_ttl = Some(Duration::from_secs(86401).into()),
            "sinks.riemann_ttl",
        );
        bad(
            &|s| s.sinks.riemann_keepalive = Duration::from_secs(86401).into(),
            "sinks.riemann_keepalive",
        );
        bad(
            &|s| s.sinks.riemann_max_packet = 16385,
            "sinks.riemann_max_packet",
        );
        bad(&|s| s.sinks.prefix = "p".repeat(129), "sinks.prefix");
        bad(
            &|s| s.anomaly.sensitivity = f64::INFINITY,
            "anomaly.sensitivity",
        );
        bad(
            &|s| s.anomaly.families = vec![("disk".into(), f64::NAN)],
            "anomaly.families",
        );
        bad(&|s| s.anomaly.clear_after = 0, "anomaly.clear_after");
        bad(
            &|s| s.anomaly.max_keys = MAX_ANOMALY_KEYS + 1,
            "anomaly.max_keys",
        );
        // The edges are accepted.
        let mut s = Settings {
            interval: MAX_INTERVAL,
            duration: Some(MAX_DURATION),
            ring_buffer_kib: *RING_BUFFER_KIB.end(),
            cgroup_top: *CGROUP_TOP.end(),
            ..Settings::default()
        };
        s.sinks.sink_queue = 3600;
        s.sinks.tags = (0..32)
            .map(|i| format!("k{i}={}", "v".repeat(128)))
            .collect();
        s.anomaly.max_keys = MAX_ANOMALY_KEYS;
        s.validate(SOURCES).unwrap();
        // A switched-off sink kind is not started, so not checked.
        s.sinks.statsd = vec!["nope".into()];
        s.enable.statsd = false;
        s.validate(SOURCES).unwrap();
    }

    #[test]
    fn anomaly_bounds_agree_with_the_detector() {
        let with = |max_keys| DetectorConfig {
            max_keys,
            ..DetectorConfig::default()
        };
        assert!(with(MAX_ANOMALY_KEYS).validate().is_ok());
        assert!(with(MAX_ANOMALY_KEYS + 1).validate().is_err());
    }

    #[test]
    fn rendering_parses_back_to_the_same_settings() {
        for text in [
            EXAMPLE,
            "",
            "duration = \"90s\"\nslow_threshold = \"0\"\npid = 7\ncomm = \"nginx\"\nprobes = [\"disk\"]\n\
             [enable]\nstatsd = false\n[sinks]\nriemann_ttl = \"1m 30s\"\ntags = [\"a=b c\"]\n\
             statsd_tags = \"dogstatsd\"\n[anomaly]\nfamilies = [[\"tcp\", 0.5]]\n",
        ] {
            let s = check(text).unwrap().resolved(SOURCES);
            let rendered = s.to_toml().unwrap();
            let again = check(&rendered).unwrap_or_else(|e| panic!("{e:?}\n{rendered}"));
            assert_eq!(again, s, "{rendered}");
            assert_eq!(
                again.resolved(SOURCES),
                s,
                "resolving twice changes nothing"
            );
        }
        let r = check(EXAMPLE).unwrap().resolved(SOURCES).to_toml().unwrap();
        assert!(
            r.contains("interval = \"1s\"\n") && r.contains("\n[sinks]\n"),
            "{r}"
        );
        assert!(
            r.contains("syscall = true") && r.contains("output = \"none\""),
            "{r}"
        );
    }

    #[test]
    fn probes_or_switches_choose_the_sources() {
        let s = check("[enable]\ndisk = false\n").unwrap();
        assert!(s.source_on("syscall") && !s.source_on("disk") && s.source_on("runq"));
        let s = check("probes = [\"disk\"]\n[enable]\ndisk = false\n").unwrap();
        assert!(
            s.source_on("disk") && !s.source_on("syscall"),
            "probes wins"
        );
    }

    #[test]
    fn sinks_switched_off_are_not_started_and_output_follows() {
        let s =
            check("[enable]\nstatsd = false\n[sinks]\nstatsd = [\"127.0.0.1:8125\"]\n").unwrap();
        assert!(s.sinks_in_force().statsd.is_empty());
        assert_eq!(s.output(), Output::Text);
        let s = check("[sinks]\nstatsd = [\"127.0.0.1:8125\"]\n").unwrap();
        assert_eq!(s.output(), Output::None);
    }

    #[test]
    fn flags_are_named_after_keys() {
        assert_eq!(flag_for("sinks.sink_queue"), "sink-queue");
        assert_eq!(flag_for("sinks.tags"), "tag");
        assert_eq!(flag_for("interval"), "interval");
        assert_eq!(flag_for("enable.runq"), "probes");
        let e = Invalid::new("sinks.statsd", "\"x\": expected HOST:PORT");
        assert_eq!(e.as_flag(), "--statsd \"x\": expected HOST:PORT");
        assert_eq!(e.to_string(), "sinks.statsd: \"x\": expected HOST:PORT");
    }
}
