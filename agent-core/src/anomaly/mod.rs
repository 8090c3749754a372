//! Anomaly detection: tells a person when a metric is out of the ordinary.
//!
//! - [`Detector`]: online, in the daemon: one model per metric key (name + tags, at most
//!   [`DetectorConfig::max_keys`], least recently seen evicted), fed one [`Snapshot`] per
//!   interval, giving a score in [0, 1] (surprise: high at an anomaly's onset, fading while it
//!   persists), a state (ok, warning, critical) with hysteresis and a description for people
//!   ([`Verdicts`]). Its memory survives restarts ([`Detector::save`],
//!   [`Detector::load`]).
//! - [`Series`]: the same model for one series, fed `(time, value)` points; [`detect_csv`]
//!   replays a CSV history through it.
//! - [`SheetBuilder`], [`Sheet`], [`compare`]: a reference sheet of a known-good period, and
//!   what deviates from it now.
//!
//! The model (see `model.rs`) keeps, per key, a robust short-term baseline (Huber-clipped EWMAs:
//! a spike cannot drag it), hour-of-day and hour-of-week profiles trusted only once they predict
//! better than a flat line, and four views scored as robust z: point (spikes, drops, shifts),
//! sustained (drift, a quiet afternoon that should be busy), variance (turned erratic), flat (a
//! normally noisy series stuck on one value). State per key: 1 KiB at most; work per key per
//! interval: constant.
//!
//! Absence: a counter key missing from a snapshot counts as 0 when its family (first name
//! segment, e.g. `syscall`) is present, so a busy counter that stops is seen dropping to zero;
//! when the whole family is missing (its probe is down) its keys wait.

mod csv;
mod describe;
mod model;
mod persist;
mod sheet;
mod time;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use serde::Deserialize;
use serde::ser::{SerializeStruct, Serializer};

use crate::snapshot::{Kind, Snapshot, Tags};
use model::{Assessment, Hysteresis, Model, Params};

pub use csv::{CsvError, detect_csv};
pub use describe::{format_value, metric_label};
pub use persist::LoadError;
pub(crate) use persist::clean_stale_temporaries;
pub use sheet::{
    Deviation, Sheet, SheetBuilder, SheetEntry, compare, compare_with, render_json, render_text,
};
pub use time::LocalTime;

/// Relative precision of latency percentiles (log-linear histogram buckets, within 6.25%).
const LATENCY_REL_FLOOR: f64 = 0.03;
/// Relative precision of memory levels (they step by allocations).
const BYTES_REL_FLOOR: f64 = 0.01;
/// Tail statistics of latency (the interval's max, p999, p99) jitter by multiples of their level
/// from one interval to the next: one late wake-up among a thousand calls makes the max (a 1 ms
/// sleep loop's max wanders between 1.1 and 6.6 ms). Their spread is at least this share of the
/// level: a noise model they have from the first judged point, before any history.
const TAIL_REL_FLOOR: [(&str, f64); 3] = [("max", 1.0), ("p999", 1.0), ("p99", 0.5)];
/// Relative precision of any other metric (and of [`Series`]).
const REL_FLOOR: f64 = 1e-3;

/// Shortest interval the model is run at (1 ms): its memories are counted in intervals, so a
/// zero interval would make them infinite.
const MIN_INTERVAL_S: f64 = 1e-3;

/// Settings of the online detector (`[anomaly]` in the configuration file).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Global sensitivity: z-scores are multiplied by it (2 = twice as touchy, 0.5 = half).
    pub sensitivity: f64,
    /// Per-family sensitivity, `(prefix of the metric name, sensitivity)`: the longest matching
    /// prefix replaces the global value.
    pub families: Vec<(String, f64)>,
    /// Metric names starting with one of these prefixes are not watched.
    pub exclude: Vec<String>,
    /// A state (warning, critical) is entered after holding this many intervals.
    pub raise_after: u32,
    /// Back to ok after this many calm intervals.
    pub clear_after: u32,
    /// No alert before a key has this many intervals of history.
    pub warmup: u32,
    /// Keys watched at most; the least recently seen key makes room for a new one.
    pub max_keys: usize,
    /// Seconds east of UTC of the local time the daily and weekly rhythms follow (e.g. 3600 for
    /// CET), overriding the host's time zone; unset: the host's zone, daylight saving included
    /// ([`LocalTime::system`]).
    pub utc_offset_s: Option<i32>,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            sensitivity: 1.0,
            families: Vec::new(),
            exclude: vec!["agent.heartbeat".into()],
            raise_after: 3,
            clear_after: 10,
            warmup: 300,
            max_keys: 4096,
            utc_offset_s: None,
        }
    }
}

impl DetectorConfig {
    /// Checks the values; the message names the field and what to do.
    pub fn validate(&self) -> Result<(), String> {
        let sens_ok = |s: f64| s.is_finite() && s > 0.0;
        if !sens_ok(self.sensitivity) {
            return Err(format!(
                "anomaly.sensitivity must be a positive number (1 = default), not {}",
                self.sensitivity
            ));
        }
        if let Some((p, s)) = self.families.iter().find(|(_, s)| !sens_ok(*s)) {
            return Err(format!(
                "anomaly.families: sensitivity of `{p}` must be a positive number, not {s}"
            ));
        }
        if self.raise_after == 0 || self.clear_after == 0 {
            return Err("anomaly.raise_after and anomaly.clear_after must be at least 1".into());
        }
        if self.max_keys == 0 || self.max_keys > persist::MAX_KEYS {
            return Err(format!(
                "anomaly.max_keys must be between 1 and {}",
                persist::MAX_KEYS
            ));
        }
        if self.utc_offset_s.is_some_and(|o| o.abs() > 16 * 3600) {
            return Err("anomaly.utc_offset_s must be within ±16 hours".into());
        }
        Ok(())
    }

    /// Sensitivity for a metric name: the longest matching family prefix, else the global one.
    pub fn sensitivity_for(&self, name: &str) -> f64 {
        let s = self
            .families
            .iter()
            .filter(|(p, _)| name.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.sensitivity, |(_, s)| *s);
        if s.is_finite() && s > 0.0 { s } else { 1.0 }
    }

    pub fn excluded(&self, name: &str) -> bool {
        self.exclude.iter().any(|p| name.starts_with(p.as_str()))
    }

    fn max_keys(&self) -> usize {
        self.max_keys.clamp(1, persist::MAX_KEYS)
    }
}

/// Offset of the local time zone from UTC now, in seconds (east positive), from the C library
/// (`TZ`, `/etc/localtime`); 0 if unknown.
pub fn local_utc_offset() -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: localtime_r only writes into the `tm` we own; both pointers are valid.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff as i32
    }
}

/// State of a key, after hysteresis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl State {
    /// The name on the wire (Riemann `state`), in JSON and in text output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "warning",
            State::Critical => "critical",
        }
    }
}

/// The wire and JSON name (`ok`, `warning`, `critical`); honours width and alignment
/// (`{:<9}`), so states line up in columns.
impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One key's judgement in one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub name: String,
    pub tags: Tags,
    /// This interval's value (counters: per interval, as in the snapshot).
    pub value: f64,
    /// What was expected (same unit as `value`).
    pub usual: f64,
    /// Surprise, in [0, 1]: how unexpected this interval's value is. High at the onset of an
    /// anomaly, fading while it persists (the k-th anomalous interval in a row scores as if its
    /// deviation were k times smaller); `state` says whether the condition is still on.
    pub score: f64,
    /// How far off the value is, in [0, 1], without the fading: what `state` follows.
    pub strength: f64,
    pub state: State,
    /// Seconds since the episode began (first anomalous interval); when back to ok, how long
    /// the episode lasted.
    pub since_s: f64,
    /// For people, e.g. `disk vda write latency p99 48.1 ms: 6.2x its usual 7.7 ms (Tue
    /// 14:00-15:00 profile), for 12 s`.
    pub description: String,
    /// The state changed this interval (including back to ok).
    pub changed: bool,
}

impl Verdict {
    /// `name{k=v,...}`, the key used in [`Verdicts::scores`].
    pub fn key(&self) -> String {
        key_string(&self.name, &self.tags)
    }
}

/// JSON: `{"name", "tags": {..}, "value", "usual", "score", "strength", "state", "since_s",
/// "description", "changed"}`.
impl serde::Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tags: std::collections::BTreeMap<&str, &str> =
            self.tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut st = s.serialize_struct("Verdict", 10)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("tags", &tags)?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("usual", &self.usual)?;
        st.serialize_field("score", &self.score)?;
        st.serialize_field("strength", &self.strength)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("since_s", &self.since_s)?;
        st.serialize_field("description", &self.description)?;
        st.serialize_field("changed", &self.changed)?;
        st.end()
    }
}

/// One interval's outcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdicts {
    /// Keys not ok, or whose state changed this interval; worst first.
    pub items: Vec<Verdict>,
    /// Keys not ok (all watched keys, seen this interval or not).
    pub active: usize,
    /// Every key scored this interval (warm keys only): `(name{k=v,...}, score)` (surprise;
    /// see [`Verdict::score`]).
    pub scores: Vec<(String, f64)>,
    /// Keys still warming up (no alert from them yet).
    pub warming_up: usize,
    /// Metrics not watched this interval because `max_keys` keys were all seen this interval.
    pub untracked: usize,
}

impl Verdicts {
    pub fn any_changed(&self) -> bool {
        self.items.iter().any(|v| v.changed)
    }

    /// One line on what is off, for the summary event of a state change, e.g.
    /// `2 anomalies: disk vda write latency p99 48.1 ms ... (critical); ...`, or `all usual`.
    pub fn summary(&self) -> String {
        let off: Vec<&Verdict> = self.items.iter().filter(|v| v.state != State::Ok).collect();
        if off.is_empty() {
            return "all usual".into();
        }
        let mut s = format!(
            "{} anomal{}: ",
            self.active,
            if self.active == 1 { "y" } else { "ies" }
        );
        for (i, v) in off.iter().take(5).enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(&format!("{} ({})", v.description, v.state));
        }
        if off.len() > 5 {
            s.push_str(&format!("; and {} more", off.len() - 5));
        }
        s
    }
}

/// What the detector currently believes about one key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyStatus {
    pub warming_up: bool,
    pub state: State,
    /// The short-term usual value (deseasonalised level plus the profile at the last point).
    pub usual: f64,
    /// Score (surprise) of the last point.
    pub score: f64,
}

/// `name` alone, or `name{k=v,k2=v2}` with the tags in their snapshot order.
pub fn key_string(name: &str, tags: &[(&'static str, String)]) -> String {
    if tags.is_empty() {
        return name.to_string();
    }
    let mut s = String::with_capacity(name.len() + 16 * tags.len());
    s.push_str(name);
    s.push('{');
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s.push('}');
    s
}

fn key_hash(name: &str, tags: &[(&'static str, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    for (k, v) in tags {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

/// The index's hasher: its keys are [`key_hash`]es already, so they are used as they are
/// instead of being hashed a second time (per metric, every interval).
#[derive(Default)]
struct KeyHashed(u64);

impl Hasher for KeyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach here; anything else still hashes, just not as well.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Relative precision of a metric's values: the tails of latency (max, p999, p99) jitter by
/// multiples (see [`TAIL_REL_FLOOR`]); other latency percentiles come from log-linear histograms
/// (bucket midpoints, within 6.25%), so moves under 3% of the level are noise; memory levels
/// step by allocations, under 1% of the level is noise (a flat RSS must not alarm on a few
/// pages); elsewhere 0.1%.
fn rel_floor(name: &str) -> f64 {
    let latency = name.split('.').any(|seg| seg.ends_with("_us")) && !name.contains("stall_us");
    let last = name.rsplit('.').next().unwrap_or(name);
    if let Some(&(_, floor)) = TAIL_REL_FLOOR.iter().find(|(s, _)| *s == last)
        && latency
    {
        floor
    } else if latency {
        LATENCY_REL_FLOOR
    } else if name.ends_with("_bytes") {
        BYTES_REL_FLOOR
    } else {
        REL_FLOOR
    }
}

/// First segment of a dotted name: the probe family a key belongs to.
fn family(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    tags: Tags,
    key: String,
    hash: u64,
    kind: Kind,
    /// Tick of the last snapshot that carried this key.
    last_seen: u64,
    last_score: f64,
    /// The key's sensitivity and relative floor: fixed by its name and the configuration, so
    /// worked out once instead of from the name's text every interval.
    sensitivity: f64,
    rel_floor: f64,
    model: Model,
}

/// The online detector: one model per metric key.
#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    entries: Vec<Entry>,
    /// Key hash → index in `entries` (a 64-bit hash collision leaves the newcomer untracked).
    index: HashMap<u64, usize, BuildHasherDefault<KeyHashed>>,
    tick: u64,
    /// The local time rhythms follow, and its offset at the interval being judged.
    local: LocalTime,
    offset_s: f64,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Self {
            local: LocalTime::from_override(cfg.utc_offset_s),
            offset_s: 0.0,
            cfg,
            entries: Vec::new(),
            index: HashMap::default(),
            tick: 0,
        }
    }

    /// Follows `local` instead of the configured or host's time (tests, tools).
    pub fn set_local_time(&mut self, local: LocalTime) {
        self.local = local;
    }

    pub fn local_time(&self) -> &LocalTime {
        &self.local
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Keys watched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of model state per key (the seasonal profiles included).
    pub fn state_bytes_per_key() -> usize {
        size_of::<Model>()
    }

    pub fn status(&self, name: &str, tags: &[(&'static str, String)]) -> Option<KeyStatus> {
        let e = &self.entries[*self.index.get(&key_hash(name, tags))?];
        (e.name == name && e.tags == tags).then(|| KeyStatus {
            warming_up: e.model.warming_up(&self.params(e, 1.0)),
            state: e.model.hyst.state,
            usual: e.model.usual(),
            score: e.last_score,
        })
    }

    fn params(&self, e: &Entry, interval_s: f64) -> Params {
        Params {
            interval_s,
            sensitivity: e.sensitivity,
            warmup: self.cfg.warmup,
            raise_after: self.cfg.raise_after,
            clear_after: self.cfg.clear_after,
            counter: e.kind == Kind::Counter,
            rel_floor: e.rel_floor,
            tz_offset_s: self.offset_s,
        }
    }

    /// Index of the key's entry, inserting it (evicting the least recently seen key when full);
    /// `None` when the table is full of keys seen this very interval, or on a hash collision.
    fn slot(&mut self, name: &str, tags: &Tags, kind: Kind) -> Option<usize> {
        let hash = key_hash(name, tags);
        if let Some(&i) = self.index.get(&hash) {
            let e = &self.entries[i];
            return (e.name == name && e.tags == *tags).then_some(i);
        }
        if self.entries.len() >= self.cfg.max_keys() {
            let (lru, seen) = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (i, e.last_seen))
                .min_by_key(|&(_, s)| s)?;
            if seen >= self.tick {
                return None;
            }
            self.remove(lru);
        }
        self.index.insert(hash, self.entries.len());
        self.entries.push(Entry {
            name: name.to_string(),
            tags: tags.clone(),
            key: key_string(name, tags),
            hash,
            kind,
            last_seen: self.tick,
            sensitivity: self.cfg.sensitivity_for(name),
            rel_floor: rel_floor(name),
            last_score: 0.0,
            model: Model::new(),
        });
        Some(self.entries.len() - 1)
    }

    fn remove(&mut self, i: usize) {
        let gone = self.entries.swap_remove(i);
        self.index.remove(&gone.hash);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.hash, i);
        }
    }

    fn feed(&mut self, i: usize, value: f64, t: f64, interval_s: f64, out: &mut Verdicts) {
        let p = self.params(&self.entries[i], interval_s);
        let e = &mut self.entries[i];
        let a = e.model.step(value, t, &p);
        e.last_score = a.score;
        if a.warming_up {
            return;
        }
        out.scores.push((e.key.clone(), a.score));
        if a.state != State::Ok || a.changed {
            out.items.push(verdict(e, &a, t, interval_s));
        }
    }

    /// Feeds one interval; returns the verdicts for keys that are not ok or changed state this
    /// interval (worst first), plus a summary.
    pub fn observe(&mut self, snap: &Snapshot) -> Verdicts {
        let t = snap.unix_seconds();
        let interval_s = snap.interval.as_secs_f64().max(MIN_INTERVAL_S);
        self.tick += 1;
        // Once per interval: hours, days and weeks are cut on the local clock at `t`.
        self.offset_s = f64::from(self.local.offset_s(t));
        let mut out = Verdicts::default();
        // A handful of families, in runs: a list is cheaper than hashing every metric's name.
        let mut families: Vec<&str> = Vec::new();
        for m in &snap.metrics {
            let f = family(&m.name);
            if families.last() != Some(&f) && !families.contains(&f) {
                families.push(f);
            }
            if !m.value.is_finite() || self.cfg.excluded(&m.name) {
                continue;
            }
            let Some(i) = self.slot(&m.name, &m.tags, m.kind) else {
                out.untracked += 1;
                continue;
            };
            let e = &mut self.entries[i];
            if e.last_seen == self.tick && e.model.n > 0 && e.model.last_t >= t {
                continue; // the same key twice in one snapshot: first wins
            }
            e.last_seen = self.tick;
            e.kind = m.kind;
            self.feed(i, m.value, t, interval_s, &mut out);
        }
        // Absence: a counter of a present family that did not report did not count anything.
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if e.kind == Kind::Counter
                && e.last_seen < self.tick
                && e.model.n > 0
                && families.contains(&family(&e.name))
            {
                self.feed(i, 0.0, t, interval_s, &mut out);
            }
        }
        out.active = self
            .entries
            .iter()
            .filter(|e| e.model.hyst.state != State::Ok)
            .count();
        out.warming_up = self
            .entries
            .iter()
            .filter(|e| e.model.warming_up(&self.params(e, interval_s)))
            .count();
        out.items.sort_by(|a, b| {
            b.state
                .cmp(&a.state)
                .then(b.score.total_cmp(&a.score))
                .then_with(|| a.name.cmp(&b.name))
        });
        out
    }

    /// Writes the learnt state atomically (temporary file, fsync, rename): at most `max_keys`
    /// keys of about 1 KiB each.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let keys: Vec<persist::KeyRef<'_>> = self
            .entries
            .iter()
            .map(|e| persist::KeyRef {
                name: &e.name,
                tags: &e.tags,
                kind: e.kind,
                model: &e.model,
            })
            .collect();
        persist::write_atomic(path, &persist::encode(&keys))
    }

    /// Reads a state written by [`Detector::save`]; a corrupt, truncated or foreign file, or
    /// one from another format version, is an error (start fresh with [`Detector::new`]).
    pub fn load(cfg: DetectorConfig, path: &std::path::Path) -> Result<Self, LoadError> {
        let keys = persist::read(path, cfg.max_keys())?;
        let mut d = Detector::new(cfg);
        for k in keys {
            if d.cfg.excluded(&k.name) {
                continue;
            }
            let hash = key_hash(&k.name, &k.tags);
            if d.index.contains_key(&hash) {
                continue;
            }
            d.index.insert(hash, d.entries.len());
            // What was learnt carries over, not what was being alerted on: a new process
            // starts every key ok (`watch` must not open with the daemon's stale alerts).
            let mut model = k.model;
            model.hyst = Hysteresis::default();
            d.entries.push(Entry {
                key: key_string(&k.name, &k.tags),
                sensitivity: d.cfg.sensitivity_for(&k.name),
                rel_floor: rel_floor(&k.name),
                name: k.name,
                tags: k.tags,
                hash,
                kind: k.kind,
                last_seen: 0,
                last_score: 0.0,
                model,
            });
        }
        Ok(d)
    }
}

fn verdict(e: &Entry, a: &Assessment, t: f64, interval_s: f64) -> Verdict {
    let since_s = if a.state == State::Ok {
        if a.changed {
            (e.model.hyst.since - e.model.hyst.pending_since).max(0.0)
        } else {
            0.0
        }
    } else {
        (t - e.model.hyst.since).max(0.0) + interval_s
    };
    let description = describe::describe(&e.name, &e.tags, e.kind, interval_s, a, since_s);
    Verdict {
        name: e.name.clone(),
        tags: e.tags.clone(),
        value: a.value,
        usual: a.usual,
        score: a.score,
        strength: a.strength,
        state: a.state,
        since_s,
        description,
        changed: a.changed,
    }
}

/// One point of [`Series::push`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Surprise in [0, 1] (see [`Verdict::score`]); 0 while warming up.
    pub score: f64,
    /// How far off, in [0, 1], without fading (see [`Verdict::strength`]).
    pub strength: f64,
    pub state: State,
    pub warming_up: bool,
    /// What was expected.
    pub usual: f64,
    pub changed: bool,
}

/// The detector's model for a single series, fed `(unix seconds, value)` points at a regular
/// interval (gaps allowed). Used by [`detect_csv`]; handy for tuning and tests.
#[derive(Clone, Debug)]
pub struct Series {
    params: Params,
    model: Model,
    local: LocalTime,
}

impl Series {
    /// `interval_s`: the data's interval; hysteresis counts (`raise_after`, `clear_after`) and
    /// `warmup` are in points.
    pub fn new(cfg: &DetectorConfig, interval_s: f64, counter: bool) -> Self {
        Self {
            params: Params {
                interval_s: interval_s.max(MIN_INTERVAL_S),
                sensitivity: if cfg.sensitivity.is_finite() && cfg.sensitivity > 0.0 {
                    cfg.sensitivity
                } else {
                    1.0
                },
                warmup: cfg.warmup,
                raise_after: cfg.raise_after,
                clear_after: cfg.clear_after,
                counter,
                rel_floor: REL_FLOOR,
                tz_offset_s: 0.0,
            },
            model: Model::new(),
            local: LocalTime::from_override(cfg.utc_offset_s),
        }
    }

    /// Follows `local` instead of the configured or host's time.
    pub fn set_local_time(&mut self, local: LocalTime) {
        self.local = local;
    }

    /// Feeds one point; a non-finite value is a gap (nothing learnt, score 0).
    pub fn push(&mut self, t: f64, value: f64) -> Point {
        self.params.tz_offset_s = f64::from(self.local.offset_s(t));
        let a = self.model.step(value, t, &self.params);
        Point {
            score: a.score,
            strength: a.strength,
            state: a.state,
            warming_up: a.warming_up,
            usual: a.usual,
            changed: a.changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Metric;
    use std::time::{Duration, UNIX_EPOCH};

    fn snap(t: u64, metrics: Vec<Metric>) -> Snapshot {
        Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_secs(t),
            interval: Duration::from_secs(1),
            host: "h".into(),
            metrics,
        }
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            warmup: 60,
            ..Default::default()
        }
    }

    #[test]
    fn config_defaults_and_toml() {
        let c: DetectorConfig = toml::from_str(
            "sensitivity = 0.8\nfamilies = [[\"disk.\", 1.5], [\"disk.latency_us\", 0.5]]\nexclude = [\"agent.\"]",
        )
        .unwrap();
        assert_eq!(c.sensitivity, 0.8);
        assert_eq!(c.sensitivity_for("disk.latency_us.p99"), 0.5);
        assert_eq!(c.sensitivity_for("disk.ops"), 1.5);
        assert_eq!(c.sensitivity_for("syscall.count"), 0.8);
        assert!(c.excluded("agent.cpu_pct"));
        assert_eq!(c.raise_after, 3);
        assert!(c.validate().is_ok());
        assert!(
            DetectorConfig {
                sensitivity: 0.0,
                ..cfg()
            }
            .validate()
            .is_err()
        );
        assert!(toml::from_str::<DetectorConfig>("sensitivty = 1").is_err());
    }

    #[test]
    fn state_names_for_wire_and_columns() {
        assert_eq!(State::Critical.to_string(), "critical");
        assert_eq!(format!("[{:<9}]", State::Ok), "[ok       ]");
        assert_eq!(
            serde_json::to_string(&[State::Ok, State::Warning, State::Critical]).unwrap(),
            r#"["ok","warning","critical"]"#
        );
    }

    #[test]
    fn key_strings() {
        assert_eq!(key_string("load.1", &[]), "load.1");
        assert_eq!(
            key_string(
                "disk.ops",
                &[("device", "vda".into()), ("op", "write".into())]
            ),
            "disk.ops{device=vda,op=write}"
        );
    }

    #[test]
    fn busy_counter_stopping_is_seen() {
        let mut d = Detector::new(cfg());
        let tags = || vec![("syscall", "read".to_string())];
        let mut t = 1_700_000_000;
        for i in 0..400u64 {
            t += 1;
            let v = 1000 + (i * 7919) % 61;
            d.observe(&snap(
                t,
                vec![
                    Metric::counter("syscall.count", tags(), v),
                    Metric::counter("syscall.count", vec![("syscall", "write".into())], 5),
                ],
            ));
        }
        // `read` stops reporting while `write` (same family) goes on.
        let mut hit = None;
        for k in 0..10 {
            t += 1;
            let v = d.observe(&snap(
                t,
                vec![Metric::counter(
                    "syscall.count",
                    vec![("syscall", "write".into())],
                    5,
                )],
            ));
            if let Some(x) = v.items.iter().find(|x| x.name == "syscall.count")
                && x.state != State::Ok
                && x.tags == tags()
            {
                hit.get_or_insert((k, x.description.clone()));
            }
        }
        let (k, desc) = hit.expect("absence not detected");
        assert!(k <= 3, "detected after {k} intervals");
        assert!(desc.starts_with("syscall read count 0/s"), "{desc}");
        assert!(desc.contains("usual 10"), "{desc}");
    }

    #[test]
    fn whole_family_missing_is_not_absence() {
        let mut d = Detector::new(cfg());
        let mut t = 1_700_000_000;
        for i in 0..200u64 {
            t += 1;
            d.observe(&snap(
                t,
                vec![
                    Metric::counter("tcp.retransmits", vec![], 100 + i % 9),
                    Metric::gauge("load.1", vec![], 1.0 + (i % 5) as f64 * 0.01),
                ],
            ));
        }
        for _ in 0..20 {
            t += 1;
            let load = Metric::gauge("load.1", vec![], 1.0 + (t % 5) as f64 * 0.01);
            let v = d.observe(&snap(t, vec![load]));
            assert!(v.items.is_empty(), "{:?}", v.items);
        }
    }

    #[test]
    fn lru_bounds_the_keys() {
        let mut d = Detector::new(DetectorConfig {
            max_keys: 8,
            ..cfg()
        });
        for i in 0..50u64 {
            let m = Metric::gauge("x", vec![("k", format!("{}", i % 20))], 1.0);
            let v = d.observe(&snap(1_000 + i, vec![m]));
            assert_eq!(v.untracked, 0);
        }
        assert_eq!(d.len(), 8);
        // Twelve keys in one interval, eight slots: four are left out, none evicted mid-interval.
        let many = (0..12)
            .map(|i| Metric::gauge("y", vec![("k", format!("{i}"))], 1.0))
            .collect();
        let v = d.observe(&snap(2_000, many));
        assert_eq!(v.untracked, 4);
        assert_eq!(d.len(), 8);
        assert!(d.status("y", &[("k", "0".into())]).is_some());
    }

    #[test]
    fn excluded_metrics_are_not_watched() {
        let mut d = Detector::new(DetectorConfig {
            exclude: vec!["agent.".into()],
            ..cfg()
        });
        d.observe(&snap(1, vec![Metric::gauge("agent.cpu_pct", vec![], 1.0)]));
        assert!(d.is_empty());
    }

    #[test]
    fn a_loaded_baseline_starts_every_key_ok() {
        let mut d = Detector::new(cfg());
        let mut t = 1_700_000_000;
        let m = |v: f64| vec![Metric::gauge("disk.latency_us.p99", vec![], v)];
        for i in 0..200u64 {
            t += 1;
            d.observe(&snap(t, m(1000.0 + (i % 7) as f64 * 10.0)));
        }
        for _ in 0..10 {
            t += 1;
            d.observe(&snap(t, m(90_000.0)));
        }
        let hot = d.status("disk.latency_us.p99", &[]).unwrap();
        assert_ne!(hot.state, State::Ok);
        let dir = std::env::temp_dir().join(format!("ebpf-agent-hyst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("detector.state");
        d.save(&path).unwrap();
        let loaded = Detector::load(cfg(), &path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let s = loaded.status("disk.latency_us.p99", &[]).unwrap();
        assert_eq!(s.state, State::Ok);
        assert!(!s.warming_up, "the learnt baseline is kept");
        assert_eq!(s.usual, hot.usual);
    }

    /// Hour slots follow the local clock across a daylight-saving change: the same local
    /// hour lands in the same slot before and after, so a 09:00 rhythm stays at 09:00.
    #[test]
    fn rhythms_follow_the_zone_not_utc() {
        let mut c = cfg();
        c.utc_offset_s = Some(0);
        let mut d = Detector::new(c);
        d.set_local_time(LocalTime::named("CET-1CEST,M3.5.0,M10.5.0/3").unwrap());
        // 2024-03-30 08:00 UTC is 09:00 CET; 2024-04-01 07:00 UTC is 09:00 CEST.
        for t in [1_711_785_600u64, 1_711_954_800] {
            d.observe(&snap(t, vec![Metric::gauge("load.1", vec![], 1.0)]));
            assert_eq!(d.offset_s, if t < 1_711_846_800 { 3600.0 } else { 7200.0 });
            assert_eq!(time::hour_of_day(time::hour_index(t as f64, d.offset_s)), 9);
        }
    }

    #[test]
    fn local_offset_is_sane() {
        assert!(local_utc_offset().abs() <= 16 * 3600);
    }
}
