//! Where snapshots go: StatsD and Riemann (this module), stdout (`stdout`, wired by the CLI).
//!
//! [`Sinks::start`] gives every endpoint its own task and its own bounded queue of intervals;
//! [`Sinks::send`] hands each snapshot to every queue without waiting, so a slow or dead endpoint
//! holds up nothing but itself. A full queue drops its oldest interval.
//!
//! Encoding is pure ([`statsd::encode`], [`riemann::encode_udp`], [`riemann::frame`]): a
//! snapshot in, bytes out. Delivery problems (refused UDP, TCP resets, timeouts, unresolvable
//! hosts) are never fatal: they are counted in the self-metrics of [`Sinks::self_metrics`] and
//! logged at most once a minute per sink.
//!
//! Self-metrics, per sink (`sink` = `statsd:HOST:PORT`, `riemann-udp:HOST:PORT`,
//! `riemann-tcp:HOST:PORT`), per-interval deltas:
//! - `agent.sink_errors`: failed sends, connections, acks and look-ups;
//! - `agent.sink_dropped`: metric values that did not reach the endpoint: in a datagram whose
//!   send failed, in an interval pushed out of a full queue or refused by the server, NaN or
//!   infinite, or too large for one datagram.

pub mod riemann;
pub mod statsd;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::snapshot::{Metric, Snapshot};

/// How tags reach a StatsD server.
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StatsdTagStyle {
    /// Tag values folded into the name (plain StatsD, Graphite): `ebpf.syscall.read.count`.
    #[default]
    Name,
    /// DogStatsD tags: `ebpf.syscall.count:3|c|#syscall:read`.
    Dogstatsd,
}

/// `[sinks]` of the settings (`crate::settings`): where snapshots go and how. The command line
/// sets the same fields (`--statsd`, `--tag`, ...) over the file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkArgs {
    /// StatsD servers (UDP).
    pub statsd: Vec<String>,
    /// Riemann servers: UDP unless `tcp://`.
    pub riemann: Vec<String>,
    /// First component of every metric name (StatsD) and first word of every service (Riemann).
    pub prefix: String,
    /// `KEY=VALUE` tags added to every metric.
    pub tags: Vec<String>,
    /// How tags reach StatsD: folded into the name, or as DogStatsD `|#k:v` tags.
    pub statsd_tags: StatsdTagStyle,
    /// Largest StatsD datagram payload, in bytes.
    pub statsd_max_packet: usize,
    /// Largest Riemann UDP datagram, in bytes: by default one that fits a 1500-byte MTU
    /// ([`RIEMANN_DEFAULT_PACKET`]); at most the server's receive limit, 16384.
    pub riemann_max_packet: usize,
    /// How long Riemann keeps each event; `None`: twice the interval.
    #[serde(
        deserialize_with = "de::opt_duration",
        serialize_with = "de::ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub riemann_ttl: Option<humantime::Duration>,
    /// Riemann over TCP: how long to wait for a connection, and for the server's ack.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub riemann_timeout: humantime::Duration,
    /// How long a counter that stopped being reported is still sent to Riemann as 0 (so the
    /// index does not expire a key that is merely quiet); zero: off.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub riemann_keepalive: humantime::Duration,
    /// Intervals each sink holds while its endpoint is slow or away; the oldest go first.
    pub sink_queue: usize,
}

impl Default for SinkArgs {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            statsd: vec![],
            riemann: vec![],
            prefix: "ebpf".into(),
            tags: vec![],
            statsd_tags: StatsdTagStyle::Name,
            statsd_max_packet: 1432,
            riemann_max_packet: RIEMANN_DEFAULT_PACKET,
            riemann_ttl: None,
            riemann_timeout: Duration::from_secs(5).into(),
            riemann_keepalive: Duration::from_secs(300).into(),
            sink_queue: 60,
        }
    }
}

/// Largest UDP payload over IPv4.
const MAX_UDP: usize = 65507;
/// Riemann UDP datagrams by default: a 1500-byte Ethernet MTU less the IPv6 (40) and UDP (8)
/// headers is 1452; 20 bytes more are left for IP options or a tunnel's header, as StatsD's
/// 1432. A larger datagram is fragmented, and one lost fragment loses all its events.
pub const RIEMANN_DEFAULT_PACKET: usize = 1432;
/// Riemann's UDP server reads at most this many bytes of a datagram.
pub const RIEMANN_MAX_PACKET: usize = 16384;
/// Riemann keep-alive, at most a day.
pub const MAX_RIEMANN_KEEPALIVE: Duration = Duration::from_secs(24 * 3600);
/// Endpoints of each kind (each has its own task and queue).
pub const MAX_ENDPOINTS: usize = 16;
/// Intervals a sink may hold: an hour of one-second intervals (each queued interval is a whole
/// snapshot, and the queue is allocated up front).
pub const MAX_SINK_QUEUE: usize = 3600;
/// Tags on every metric: each is repeated in every line and event sent.
pub const MAX_TAGS: usize = 32;
/// Bytes of a tag's key, of its value, and of the prefix.
pub const MAX_TAG_BYTES: usize = 128;
/// Riemann TTL, at most a day.
pub const MAX_RIEMANN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Riemann TCP timeout, at most an hour.
pub const MAX_RIEMANN_TIMEOUT: Duration = Duration::from_secs(3600);

impl SinkArgs {
    /// Checks addresses, tags, sizes and bounds: `Err((key, reason))`, the key as `[sinks]`
    /// spells it and the reason starting with the value.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, list) in [("statsd", &self.statsd), ("riemann", &self.riemann)] {
            if list.len() > MAX_ENDPOINTS {
                return Err((
                    key,
                    format!("{} endpoints: at most {MAX_ENDPOINTS}", list.len()),
                ));
            }
        }
        for s in &self.statsd {
            parse_host_port(s).map_err(|e| ("statsd", format!("{s:?}: {e}")))?;
        }
        for r in &self.riemann {
            parse_riemann(r).map_err(|e| ("riemann", format!("{r:?}: {e}")))?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err((
                "tags",
                format!("{} tags: at most {MAX_TAGS}", self.tags.len()),
            ));
        }
        let tags = self.parsed_tags().map_err(|e| ("tags", e))?;
        if !self.riemann.is_empty()
            && let Some((k, v)) = tags
                .iter()
                .find(|(k, _)| riemann::RESERVED_KEYS.contains(&k.as_str()))
        {
            return Err((
                "tags",
                format!(
                    "\"{k}={v}\": `{k}` is a field of every Riemann event, which this tag would overwrite; use another key (Riemann reserves {})",
                    riemann::RESERVED_KEYS.join(", ")
                ),
            ));
        }
        if !valid_prefix(&self.prefix) || self.prefix.len() > MAX_TAG_BYTES {
            return Err((
                "prefix",
                format!(
                    "{:?}: use dot-separated words of A-Z a-z 0-9 _ - (e.g. ebpf or ebpf.prod), at most {MAX_TAG_BYTES} bytes",
                    self.prefix
                ),
            ));
        }
        if !(64..=MAX_UDP).contains(&self.statsd_max_packet) {
            return Err((
                "statsd_max_packet",
                format!(
                    "{}: must be between 64 and {MAX_UDP} bytes",
                    self.statsd_max_packet
                ),
            ));
        }
        if !(256..=RIEMANN_MAX_PACKET).contains(&self.riemann_max_packet) {
            return Err((
                "riemann_max_packet",
                format!(
                    "{}: must be between 256 and {RIEMANN_MAX_PACKET} bytes (Riemann's receive limit)",
                    self.riemann_max_packet
                ),
            ));
        }
        // Every event repeats the tags (keys twice: in `tags` and `attributes`): over UDP they
        // must leave room for the event itself, or every event would be too large to send.
        let tag_bytes: usize = tags.iter().map(|(k, v)| 2 * k.len() + v.len() + 8).sum();
        let udp_riemann = self
            .riemann
            .iter()
            .any(|r| parse_riemann(r).is_ok_and(|(t, _)| t == Transport::Udp));
        if udp_riemann && tag_bytes + 512 > self.riemann_max_packet {
            return Err((
                "tags",
                format!(
                    "{} tags take {tag_bytes} bytes of every Riemann event: more than a {}-byte UDP datagram holds with the event; raise riemann_max_packet (at most {RIEMANN_MAX_PACKET}), use Riemann over tcp://, or shorten the tags",
                    tags.len(),
                    self.riemann_max_packet
                ),
            ));
        }
        if let Some(ttl) = self.riemann_ttl
            && (ttl.is_zero() || *ttl > MAX_RIEMANN_TTL)
        {
            return Err((
                "riemann_ttl",
                format!("{ttl}: must be longer than 0s and at most 1day"),
            ));
        }
        if *self.riemann_keepalive > MAX_RIEMANN_KEEPALIVE {
            return Err((
                "riemann_keepalive",
                format!(
                    "{}: must be at most 1day (0s turns it off)",
                    self.riemann_keepalive
                ),
            ));
        }
        let timeout = self.riemann_timeout;
        if timeout.is_zero() || *timeout > MAX_RIEMANN_TIMEOUT {
            return Err((
                "riemann_timeout",
                format!("{timeout}: must be longer than 0s and at most 1h"),
            ));
        }
        if !(1..=MAX_SINK_QUEUE).contains(&self.sink_queue) {
            return Err((
                "sink_queue",
                format!(
                    "{}: must hold between 1 and {MAX_SINK_QUEUE} intervals",
                    self.sink_queue
                ),
            ));
        }
        Ok(())
    }

    /// `--tag` values as (key, value) pairs.
    fn parsed_tags(&self) -> Result<Vec<(String, String)>, String> {
        self.tags
            .iter()
            .map(|t| {
                let bad = || {
                    format!(
                        "{t:?}: expected KEY=VALUE, KEY of A-Z a-z 0-9 _ . - and a non-empty VALUE, each at most {MAX_TAG_BYTES} bytes"
                    )
                };
                let (k, v) = t.split_once('=').ok_or_else(bad)?;
                let key_ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                if !key_ok
                    || v.is_empty()
                    || v.chars().any(char::is_control)
                    || k.len() > MAX_TAG_BYTES
                    || v.len() > MAX_TAG_BYTES
                {
                    return Err(bad());
                }
                Ok((k.to_owned(), v.to_owned()))
            })
            .collect()
    }
}

fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || p.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// `HOST:PORT`, `[v6]:PORT` → (host, port).
fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    const HINT: &str = "expected HOST:PORT (e.g. 127.0.0.1:8125, [::1]:8125, collector:5555)";
    let (host, port) = s.rsplit_once(':').ok_or(HINT)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or(HINT)?,
        None if host.contains(':') => return Err(format!("{HINT}; put an IPv6 address in [ ]")),
        None => host,
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(HINT.into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?;
    Ok((host.to_owned(), port))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// `[tcp://|udp://]HOST:PORT` → (transport, `HOST:PORT`).
fn parse_riemann(s: &str) -> Result<(Transport, &str), String> {
    let (transport, rest) = if let Some(r) = s.strip_prefix("tcp://") {
        (Transport::Tcp, r)
    } else if let Some(r) = s.strip_prefix("udp://") {
        (Transport::Udp, r)
    } else if s.contains("://") {
        return Err("the scheme must be tcp:// or udp:// (or none, for UDP)".into());
    } else {
        (Transport::Udp, s)
    };
    parse_host_port(rest)?;
    Ok((transport, rest))
}

/// Durations as humantime strings (`5s`, `1m 30s`).
mod de {
    use serde::{Deserialize, Deserializer};

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<humantime::Duration, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }

    pub fn opt_duration<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<humantime::Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn ser_duration<S: serde::Serializer>(
        d: &humantime::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn ser_opt_duration<S: serde::Serializer>(
        d: &Option<humantime::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(d),
            None => s.serialize_none(),
        }
    }
}

/// Datagrams of one interval, and how many metric values were left out (non-finite, too big).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded {
    pub datagrams: Vec<Datagram>,
    pub skipped: u64,
}

/// One datagram's payload and how many metrics it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub metrics: usize,
}

/// Running sinks: one task and one bounded queue each.
pub struct Sinks {
    sinks: Vec<Sink>,
}

struct Sink {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Sinks {
    /// Resolves every host once (again later, after send errors), then spawns one task per sink.
    /// Fails with a one-line message naming the flag when an address is malformed or does not
    /// resolve.
    pub async fn start(args: &SinkArgs, interval: Duration) -> anyhow::Result<Sinks> {
        args.check()
            .map_err(|(key, e)| anyhow!("[sinks] {key}: {e}"))?;
        let tags = args
            .parsed_tags()
            .map_err(|e| anyhow!("[sinks] tags: {e}"))?;
        let mut sinks = Sinks { sinks: vec![] };
        for s in &args.statsd {
            let endpoint = Endpoint::resolve_flag("--statsd", s).await?;
            let shared = Shared::new(format!("statsd:{s}"), args.sink_queue);
            let cfg = statsd::Config {
                prefix: args.prefix.clone(),
                style: args.statsd_tags,
                tags: tags.clone(),
                max_packet: args.statsd_max_packet,
            };
            let task = tokio::spawn(run_udp(shared.clone(), endpoint, UdpEncoder::Statsd(cfg)));
            sinks.sinks.push(Sink { shared, task });
        }
        let ttl = match args.riemann_ttl {
            Some(d) => d.as_secs_f32(),
            None => 2.0 * interval.as_secs_f32(),
        };
        for r in &args.riemann {
            let (transport, hostport) = parse_riemann(r).map_err(|e| anyhow!(e))?;
            let endpoint = Endpoint::resolve_flag("--riemann", hostport).await?;
            let cfg = riemann::Config {
                prefix: args.prefix.clone(),
                tags: tags.clone(),
                ttl,
                max_packet: args.riemann_max_packet,
            };
            let (shared, task) = match transport {
                Transport::Udp => {
                    let shared = Shared::new(format!("riemann-udp:{hostport}"), args.sink_queue);
                    let keep = riemann::KeepAlive::new(*args.riemann_keepalive);
                    let task = tokio::spawn(run_udp(
                        shared.clone(),
                        endpoint,
                        UdpEncoder::Riemann(cfg, keep),
                    ));
                    (shared, task)
                }
                Transport::Tcp => {
                    let shared = Shared::new(format!("riemann-tcp:{hostport}"), args.sink_queue);
                    let timeout = *args.riemann_timeout;
                    let keep = riemann::KeepAlive::new(*args.riemann_keepalive);
                    let task = tokio::spawn(riemann::run_tcp(
                        shared.clone(),
                        endpoint,
                        cfg,
                        timeout,
                        keep,
                    ));
                    (shared, task)
                }
            };
            sinks.sinks.push(Sink { shared, task });
        }
        Ok(sinks)
    }

    /// Queues the snapshot for every sink and returns at once (never awaits, never blocks beyond
    /// a queue's short lock). A full queue drops its oldest interval, counted in `sink_dropped`.
    pub fn send(&self, snap: Arc<Snapshot>) {
        for s in &self.sinks {
            s.shared.push(snap.clone());
        }
    }

    /// `agent.sink_errors{sink}` and `agent.sink_dropped{sink}` since the previous call, for
    /// every sink (zeros included, so each series is continuous).
    pub fn self_metrics(&self) -> Vec<Metric> {
        let mut out = Vec::with_capacity(2 * self.sinks.len());
        for s in &self.sinks {
            let sh = &s.shared;
            let tags = || vec![("sink", sh.name.clone())];
            out.push(Metric::counter(
                "agent.sink_errors",
                tags(),
                sh.errors.swap(0, Ordering::Relaxed),
            ));
            out.push(Metric::counter(
                "agent.sink_dropped",
                tags(),
                sh.dropped.swap(0, Ordering::Relaxed),
            ));
        }
        out
    }

    /// Lets every sink deliver what it holds, for at most `timeout` in all, then stops them.
    /// Returns the metric values left undelivered (queued, or sent and not acknowledged), which
    /// are also counted in the sink's `sink_dropped` and logged with their count: the agent's
    /// last interval was already sent, so the log line is where they show.
    pub async fn shutdown(mut self, timeout: Duration) -> u64 {
        for s in &self.sinks {
            s.shared.closing.store(true, Ordering::Release);
            s.shared.notify.notify_one();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut undelivered = 0;
        for mut s in std::mem::take(&mut self.sinks) {
            if tokio::time::timeout_at(deadline, &mut s.task)
                .await
                .is_err()
            {
                s.task.abort();
                let queued: usize = lock(&s.shared.queue).iter().map(|q| q.metrics.len()).sum();
                let left = queued as u64 + s.shared.in_flight.load(Ordering::Relaxed);
                s.shared.dropped(left);
                undelivered += left;
                tracing::warn!(
                    sink = %s.shared.name,
                    "stopped before delivering everything: {left} metric values not delivered \
                     (counted in agent.sink_dropped)"
                );
            }
        }
        undelivered
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// The sinks' names, as in the `sink` tag of the self-metrics.
    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.shared.name.clone()).collect()
    }
}

impl Drop for Sinks {
    /// Without [`Sinks::shutdown`], the tasks stop at once (nothing is flushed).
    fn drop(&mut self) {
        for s in &self.sinks {
            s.task.abort();
        }
    }
}

/// What a sink's task and [`Sinks`] share: the queue, the counters, the log limiter.
pub(crate) struct Shared {
    name: String,
    queue: Mutex<VecDeque<Arc<Snapshot>>>,
    capacity: usize,
    notify: Notify,
    closing: AtomicBool,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// Metric values taken from the queue and not yet delivered (TCP: awaiting the ack).
    in_flight: AtomicU64,
    log: Mutex<LogLimiter>,
}

/// A lock that a panic elsewhere cannot poison for the collector.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// At most one warning a minute per sink.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl Shared {
    fn new(name: String, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            notify: Notify::new(),
            closing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            log: Mutex::new(LogLimiter::default()),
        })
    }

    fn push(&self, snap: Arc<Snapshot>) {
        let evicted = {
            let mut q = lock(&self.queue);
            let evicted = if q.len() >= self.capacity {
                q.pop_front()
            } else {
                None
            };
            q.push_back(snap);
            evicted
        };
        self.notify.notify_one();
        if let Some(old) = evicted {
            self.dropped(old.metrics.len() as u64);
            self.problem(format_args!(
                "queue full ({} intervals): dropped the oldest",
                self.capacity
            ));
        }
    }

    /// The next interval to deliver; `None` once shutting down with nothing left.
    pub(crate) async fn next(&self) -> Option<Arc<Snapshot>> {
        loop {
            let notified = self.notify.notified();
            if let Some(s) = lock(&self.queue).pop_front() {
                return Some(s);
            }
            if self.closing.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// Counts a delivery error and logs it (rate limited).
    pub(crate) fn error(&self, what: fmt::Arguments<'_>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.problem(what);
    }

    pub(crate) fn dropped(&self, metrics: u64) {
        if metrics > 0 {
            self.dropped.fetch_add(metrics, Ordering::Relaxed);
        }
    }

    /// Logs a warning unless one was logged for this sink in the last minute.
    fn problem(&self, what: fmt::Arguments<'_>) {
        let mut log = lock(&self.log);
        let now = Instant::now();
        if log.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        if suppressed > 0 {
            tracing::warn!(sink = %self.name, "{what} (and {suppressed} more problems in the last minute)");
        } else {
            tracing::warn!(sink = %self.name, "{what}");
        }
    }
}

/// A resolved `HOST:PORT`, looked up again after errors.
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    pub(crate) addr: SocketAddr,
    resolved_at: Instant,
    /// A send failed since the last look-up.
    stale: bool,
}

/// Look a host up again at most this often.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

impl Endpoint {
    async fn resolve_flag(flag: &str, hostport: &str) -> anyhow::Result<Endpoint> {
        let (host, port) =
            parse_host_port(hostport).map_err(|e| anyhow!("{flag} {hostport:?}: {e}"))?;
        let addr = lookup(&host, port)
            .await
            .map_err(|e| anyhow!("{flag} {hostport:?}: cannot resolve {host:?}: {e}"))?;
        Ok(Endpoint {
            host,
            port,
            addr,
            resolved_at: Instant::now(),
            stale: false,
        })
    }

    /// After a failure: looks the host up again (not more than every few seconds) and returns
    /// whether its address changed.
    pub(crate) async fn resolve_after_error(&mut self, shared: &Shared) -> bool {
        self.stale = true;
        if self.host.parse::<std::net::IpAddr>().is_ok()
            || self.resolved_at.elapsed() < RESOLVE_EVERY
        {
            return false;
        }
        self.resolved_at = Instant::now();
        match lookup(&self.host, self.port).await {
            Ok(addr) => {
                self.stale = false;
                let changed = addr != self.addr;
                if changed {
                    tracing::info!(sink = %shared.name, "{} now resolves to {addr}", self.host);
                    self.addr = addr;
                }
                changed
            }
            Err(e) => {
                shared.error(format_args!("cannot resolve {}: {e}", self.host));
                false
            }
        }
    }
}

/// The host's first IPv4 address, else its first address: StatsD and Riemann servers commonly
/// listen on IPv4 only, while `localhost` often resolves to `::1` first.
async fn lookup(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

enum UdpEncoder {
    Statsd(statsd::Config),
    Riemann(riemann::Config, riemann::KeepAlive),
}

impl UdpEncoder {
    fn encode(&mut self, snap: &Snapshot) -> Encoded {
        match self {
            UdpEncoder::Statsd(c) => statsd::encode(snap, c),
            UdpEncoder::Riemann(c, keep) => riemann::encode_udp_kept(snap, c, keep),
        }
    }
}

/// A UDP sink: encodes each interval and sends its datagrams on a connected socket, so that
/// ICMP port-unreachable comes back as ECONNREFUSED (counted) instead of vanishing.
async fn run_udp(shared: Arc<Shared>, mut endpoint: Endpoint, mut encoder: UdpEncoder) {
    let mut sock: Option<UdpSocket> = None;
    while let Some(snap) = shared.next().await {
        let enc = encoder.encode(&snap);
        if enc.skipped > 0 {
            shared.dropped(enc.skipped);
            shared.problem(format_args!(
                "left out {} metric values (NaN, infinite, or larger than one datagram)",
                enc.skipped
            ));
        }
        if endpoint.stale && endpoint.resolve_after_error(&shared).await {
            sock = None;
        }
        let s = match sock.as_ref() {
            Some(s) => s,
            None => match udp_connect(endpoint.addr).await {
                Ok(s) => sock.insert(s),
                Err(e) => {
                    shared.error(format_args!(
                        "cannot open a socket to {}: {e}",
                        endpoint.addr
                    ));
                    shared.dropped(enc.datagrams.iter().map(|d| d.metrics as u64).sum());
                    endpoint.stale = true;
                    continue;
                }
            },
        };
        for d in &enc.datagrams {
            match s.send(&d.bytes).await {
                Ok(n) if n == d.bytes.len() => {}
                Ok(n) => {
                    shared.error(format_args!("short send: {n} of {} bytes", d.bytes.len()));
                    shared.dropped(d.metrics as u64);
                }
                Err(e) => {
                    shared.error(format_args!("send to {} failed: {e}", endpoint.addr));
                    shared.dropped(d.metrics as u64);
                    endpoint.stale = true;
                }
            }
        }
    }
}

async fn udp_connect(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(addr).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn missing_keys_take_the_defaults() {
        let a: SinkArgs = serde_json::from_str("{}").unwrap();
        assert_eq!(a, SinkArgs::default());
        let a: SinkArgs = serde_json::from_str(
            r#"{"statsd": ["127.0.0.1:8125"], "riemann_ttl": "3s", "statsd_tags": "dogstatsd"}"#,
        )
        .unwrap();
        assert_eq!(a.riemann_ttl, Some(Duration::from_secs(3).into()));
        assert_eq!(a.statsd_tags, StatsdTagStyle::Dogstatsd);
        assert_eq!(a.statsd, ["127.0.0.1:8125"]);
    }

    #[test]
    fn good_values_pass() {
        let a = SinkArgs {
            statsd: vec!["127.0.0.1:8125".into(), "[::1]:9125".into()],
            riemann: vec!["tcp://riemann.example:5555".into(), "localhost:5555".into()],
            tags: vec!["env=prod".into(), "dc=par 1".into()],
            statsd_tags: StatsdTagStyle::Dogstatsd,
            riemann_ttl: Some(Duration::from_secs(10).into()),
            prefix: "ebpf.prod".into(),
            ..Default::default()
        };
        assert_eq!(a.check(), Ok(()));
        assert_eq!(
            a.parsed_tags().unwrap(),
            vec![("env".into(), "prod".into()), ("dc".into(), "par 1".into())]
        );
    }

    #[test]
    fn riemann_udp_defaults_to_an_mtu_sized_datagram_and_tags_must_fit_it() {
        assert_eq!(SinkArgs::default().riemann_max_packet, 1432);
        let big_tags: Vec<String> = (0..10)
            .map(|i| format!("k{i}={}", "v".repeat(100)))
            .collect();
        let udp = SinkArgs {
            riemann: vec!["127.0.0.1:5555".into()],
            tags: big_tags.clone(),
            ..Default::default()
        };
        let (k, e) = udp.check().unwrap_err();
        assert_eq!(k, "tags");
        assert!(e.contains("raise riemann_max_packet"), "{e}");
        // Room made with the setting, or no datagram at all over TCP.
        let larger = SinkArgs {
            riemann_max_packet: 16384,
            ..udp.clone()
        };
        assert_eq!(larger.check(), Ok(()));
        let tcp = SinkArgs {
            riemann: vec!["tcp://127.0.0.1:5555".into()],
            ..udp
        };
        assert_eq!(tcp.check(), Ok(()));
    }

    #[test]
    fn riemann_reserved_tag_keys_are_refused_only_with_a_riemann_sink() {
        for key in riemann::RESERVED_KEYS {
            let tag = format!("{key}=x");
            let with_riemann = SinkArgs {
                riemann: vec!["127.0.0.1:5555".into()],
                tags: vec!["env=prod".into(), tag.clone()],
                ..Default::default()
            };
            let (k, e) = with_riemann.check().unwrap_err();
            assert_eq!(k, "tags");
            assert!(
                e.starts_with(&format!(
                    "\"{tag}\": `{key}` is a field of every Riemann event"
                )),
                "{e}"
            );
            // StatsD has no such fields: the same tag is fine there.
            let statsd_only = SinkArgs {
                statsd: vec!["127.0.0.1:8125".into()],
                tags: vec![tag],
                ..Default::default()
            };
            assert_eq!(statsd_only.check(), Ok(()));
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let d = SinkArgs::default;
        let one = |v: &str| vec![v.to_string()];
        let cases: Vec<(SinkArgs, &str)> = vec![
            (
                SinkArgs {
                    statsd: one("localhost"),
                    ..d()
                },
                "statsd",
            ),
            (
                SinkArgs {
                    statsd: one("localhost:0"),
                    ..d()
                },
                "statsd",
            ),
            (
                SinkArgs {
                    statsd: one("localhost:99999"),
                    ..d()
                },
                "statsd",
            ),
            (
                SinkArgs {
                    statsd: one(":8125"),
                    ..d()
                },
                "statsd",
            ),
            (
                SinkArgs {
                    statsd: one("::1:8125"),
                    ..d()
                },
                "statsd",
            ),
            (
                SinkArgs {
                    riemann: one("http://h:5555"),
                    ..d()
                },
                "riemann",
            ),
            (
                SinkArgs {
                    riemann: one("tcp://h"),
                    ..d()
                },
                "riemann",
            ),
            (
                SinkArgs {
                    tags: one("novalue"),
                    ..d()
                },
                "tags",
            ),
            (
                SinkArgs {
                    tags: one("=v"),
                    ..d()
                },
                "tags",
            ),
            (
                SinkArgs {
                    tags: one("k:x=v"),
                    ..d()
                },
                "tags",
            ),
            (
                SinkArgs {
                    tags: one("k=a\nb"),
                    ..d()
                },
                "tags",
            ),
            (
                SinkArgs {
                    prefix: "a..b".into(),
                    ..d()
                },
                "prefix",
            ),
            (
                SinkArgs {
                    prefix: "a:b".into(),
                    ..d()
                },
                "prefix",
            ),
            (
                SinkArgs {
                    statsd_max_packet: 10,
                    ..d()
                },
                "statsd_max_packet",
            ),
            (
                SinkArgs {
                    riemann_max_packet: 70000,
                    ..d()
                },
                "riemann_max_packet",
            ),
            (
                SinkArgs {
                    sink_queue: 0,
                    ..d()
                },
                "sink_queue",
            ),
            (
                SinkArgs {
                    sink_queue: 100_000_000_000,
                    ..d()
                },
                "sink_queue",
            ),
            (
                SinkArgs {
                    statsd: vec!["127.0.0.1:8125".into(); 17],
                    ..d()
                },
                "statsd",
            ),
        ];
        for (args, key) in cases {
            let (k, err) = args.check().unwrap_err();
            assert_eq!(k, key, "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    fn snap(n: usize) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH,
            interval: Duration::from_secs(1),
            host: "h".into(),
            metrics: (0..n)
                .map(|i| Metric::gauge(format!("m{i}"), vec![], 1.0))
                .collect(),
        })
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_its_values() {
        let sh = Shared::new("t".into(), 2);
        sh.push(snap(1));
        sh.push(snap(2));
        sh.push(snap(3));
        assert_eq!(sh.dropped.load(Ordering::Relaxed), 1);
        let q = sh.queue.lock().unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].metrics.len(), 2);
    }

    #[tokio::test]
    async fn unresolvable_host_is_a_one_line_error() {
        let args = SinkArgs {
            statsd: vec!["no-such-host.invalid:8125".into()],
            ..Default::default()
        };
        let err = Sinks::start(&args, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("--statsd \"no-such-host.invalid:8125\": cannot resolve"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[tokio::test]
    async fn lookup_prefers_ipv4() {
        let a = lookup("localhost", 8125).await.unwrap();
        assert!(a.is_ipv4(), "{a}");
        assert_eq!(lookup("::1", 1).await.unwrap(), "[::1]:1".parse().unwrap());
    }

    /// Every sink down: the queues stay at their bound, errors and drops are counted, and
    /// shutdown returns within its timeout.
    #[tokio::test]
    async fn memory_is_bounded_and_shutdown_returns_with_every_endpoint_down() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = SinkArgs {
            statsd: vec![format!("127.0.0.1:{port}")],
            riemann: vec![
                format!("127.0.0.1:{port}"),
                format!("tcp://127.0.0.1:{port}"),
            ],
            sink_queue: 4,
            riemann_timeout: Duration::from_millis(200).into(),
            ..Default::default()
        };
        let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            sinks.names(),
            [
                format!("statsd:127.0.0.1:{port}"),
                format!("riemann-udp:127.0.0.1:{port}"),
                format!("riemann-tcp:127.0.0.1:{port}")
            ]
        );
        for _ in 0..200 {
            sinks.send(snap(5));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for s in &sinks.sinks {
            assert!(s.shared.queue.lock().unwrap().len() <= 4);
        }
        let m = sinks.self_metrics();
        let get = |name: &str, sink: &str| {
            m.iter()
                .find(|x| x.name == name && x.tag("sink") == Some(sink))
                .unwrap()
                .value
        };
        for sink in ["statsd", "riemann-udp", "riemann-tcp"] {
            let sink = format!("{sink}:127.0.0.1:{port}");
            assert!(get("agent.sink_errors", &sink) > 0.0, "{sink}: {m:?}");
            assert!(get("agent.sink_dropped", &sink) > 0.0, "{sink}: {m:?}");
        }
        // The TCP sink cannot flush to a dead server: shutdown gives up at its timeout.
        let t = Instant::now();
        sinks.shutdown(Duration::from_millis(300)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn values_left_at_shutdown_are_counted_as_dropped() {
        // A Riemann server that accepts and never acknowledges: every interval stays queued.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let args = SinkArgs {
            riemann: vec![format!("tcp://127.0.0.1:{port}")],
            riemann_timeout: Duration::from_secs(60).into(),
            riemann_keepalive: Duration::ZERO.into(),
            ..Default::default()
        };
        let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
        for _ in 0..3 {
            sinks.send(snap(5));
        }
        // Let the task take the first interval and send it (it then waits for the ack).
        let (_conn, _) = silent.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let shared = sinks.sinks[0].shared.clone();
        assert_eq!(sinks.shutdown(Duration::from_millis(200)).await, 15);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 15);
    }
}
