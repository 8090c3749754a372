//! Riemann: the protocol's messages (written by hand against `agent/proto/riemann.proto`), pure
//! encoding of a snapshot into events, UDP datagrams and TCP frames, and the TCP sender.
//!
//! Each metric is one [`Event`]:
//! - `host`: the snapshot's host; `service`: `PREFIX metric tagvalue…` separated by spaces,
//!   e.g. `ebpf syscall.latency_us.p99 read`;
//! - `metric_d` and `metric_f` always, plus `metric_sint64` for counters (whole numbers);
//! - `time` (Unix seconds) and `time_micros` (the interval's end);
//! - `ttl` (default twice the interval), `state` `ok`;
//! - `tags`: `ebpf-agent` and the keys of the `--tag`s; `attributes`: every tag of the metric,
//!   then every `--tag`, as key/value.
//!
//! NaN and infinite values are skipped (counted by the caller).
//!
//! UDP: one `Msg` per datagram, at most `max_packet` bytes each, events split across as many
//! datagrams as needed. TCP: one `Msg` per interval behind a 4-byte big-endian length, and the
//! server's `Msg { ok: true }` awaited before the next.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

// `State` here is Riemann's protobuf message; the detector's states are `AnomalyState`.
use crate::anomaly::State as AnomalyState;
use crate::snapshot::{Kind, Metric, Name, Snapshot, Tags};

use super::{Datagram, Encoded, Endpoint, Shared};

/// proto2 `Msg` (field numbers as in riemann.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(bool, optional, tag = "2")]
    pub ok: Option<bool>,
    #[prost(string, optional, tag = "3")]
    pub error: Option<String>,
    #[prost(message, repeated, tag = "4")]
    pub states: Vec<State>,
    #[prost(message, optional, tag = "5")]
    pub query: Option<Query>,
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<Event>,
}

/// proto2 `Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(int64, optional, tag = "1")]
    pub time: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub state: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub service: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub host: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub description: Option<String>,
    #[prost(string, repeated, tag = "7")]
    pub tags: Vec<String>,
    #[prost(float, optional, tag = "8")]
    pub ttl: Option<f32>,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<Attribute>,
    #[prost(int64, optional, tag = "10")]
    pub time_micros: Option<i64>,
    #[prost(sint64, optional, tag = "13")]
    pub metric_sint64: Option<i64>,
    #[prost(double, optional, tag = "14")]
    pub metric_d: Option<f64>,
    #[prost(float, optional, tag = "15")]
    pub metric_f: Option<f32>,
}

/// proto2 `Attribute`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attribute {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// proto2 `State` (deprecated by the protocol; never sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct State {
    #[prost(int64, optional, tag = "1")]
    pub time: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub state: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub service: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub host: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub description: Option<String>,
    #[prost(bool, optional, tag = "6")]
    pub once: Option<bool>,
    #[prost(string, repeated, tag = "7")]
    pub tags: Vec<String>,
    #[prost(float, optional, tag = "8")]
    pub ttl: Option<f32>,
}

/// proto2 `Query` (never sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Query {
    #[prost(string, optional, tag = "1")]
    pub string: Option<String>,
}

/// The fixed tag on every event.
pub const AGENT_TAG: &str = "ebpf-agent";

/// Attribute keys Riemann would merge over the event's own fields (its event is a map: an
/// attribute `service=x` replaces the service): refused as `--tag` keys with a Riemann sink.
pub const RESERVED_KEYS: [&str; 12] = [
    "host",
    "service",
    "state",
    "description",
    "metric",
    "time",
    "time_micros",
    "ttl",
    "tags",
    "metric_f",
    "metric_d",
    "metric_sint64",
];

/// Largest TCP answer accepted from a server (an ack is a few bytes).
const MAX_ACK: usize = 1 << 20;

/// What the Riemann encoder needs from the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// First word of every service (may be empty).
    pub prefix: String,
    /// `--tag` pairs.
    pub tags: Vec<(String, String)>,
    /// Seconds the events stay valid.
    pub ttl: f32,
    /// Largest UDP datagram, in bytes.
    pub max_packet: usize,
}

/// The event for one metric; `None` when its value is NaN or infinite.
pub fn event(snap: &Snapshot, m: &Metric, cfg: &Config) -> Option<Event> {
    if !m.value.is_finite() {
        return None;
    }
    let micros = snap
        .time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    let mut service = String::with_capacity(cfg.prefix.len() + m.name.len() + 16);
    for word in std::iter::once(cfg.prefix.as_str())
        .chain(std::iter::once(&*m.name))
        .chain(m.tags.iter().map(|(_, v)| v.as_str()))
    {
        if word.is_empty() && !service.is_empty() {
            continue;
        }
        if !service.is_empty() {
            service.push(' ');
        }
        service.push_str(word);
    }
    let tags = std::iter::once(AGENT_TAG.to_owned())
        .chain(cfg.tags.iter().map(|(k, _)| k.clone()))
        .collect();
    let attributes = m
        .tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(cfg.tags.iter().cloned())
        .map(|(key, value)| Attribute {
            key,
            value: Some(value),
        })
        .collect();
    // The anomaly detection's judgement, when it has one for this metric.
    let anomaly = snap.anomaly_of(m);
    let metric_d = match m.kind {
        Kind::Counter => m.value.round(),
        Kind::Gauge => m.value,
    };
    Some(Event {
        time: Some(micros.div_euclid(1_000_000)),
        time_micros: Some(micros),
        state: Some(anomaly.map_or(AnomalyState::Ok, |a| a.state).to_string()),
        service: Some(service),
        host: Some(snap.host.clone()),
        description: anomaly.map(|a| a.description.clone()),
        tags,
        ttl: Some(cfg.ttl),
        attributes,
        metric_sint64: (m.kind == Kind::Counter).then(|| m.value.round() as i64),
        metric_d: Some(metric_d),
        // Older consumers read only the float (the server itself prefers sint64, then d).
        metric_f: Some(metric_d as f32),
    })
}

/// Every finite metric's event, and how many were skipped.
pub fn events(snap: &Snapshot, cfg: &Config) -> (Vec<Event>, u64) {
    let mut skipped = 0;
    let mut events: Vec<Event> = snap
        .metrics
        .iter()
        .filter_map(|m| {
            let e = event(snap, m, cfg);
            if e.is_none() {
                skipped += 1;
            }
            e
        })
        .collect();
    // A state change also gets one event saying what is off overall: service `PREFIX anomaly`.
    if let Some(sum) = &snap.annotations.summary {
        let summary = Metric::gauge("anomaly", vec![], sum.active as f64);
        if let Some(mut e) = event(snap, &summary, cfg) {
            e.state = Some(sum.state.to_string());
            e.description = Some(sum.description.clone());
            events.push(e);
        }
    }
    // Each incident's open, escalation and close: service `PREFIX incident`, attribute
    // `incident` = its id, metric 1 while open and 0 at the close.
    for i in snap
        .annotations
        .incidents
        .iter()
        .filter(|i| i.change.is_some())
    {
        let open = if i.state == AnomalyState::Ok {
            0.0
        } else {
            1.0
        };
        if let Some(mut e) = event(snap, &Metric::gauge("incident", vec![], open), cfg) {
            e.state = Some(i.state.to_string());
            e.description = Some(i.description.clone());
            e.attributes.push(Attribute {
                key: "incident".into(),
                value: Some(i.id.to_string()),
            });
            events.push(e);
        }
    }
    (events, skipped)
}

/// Keeps quiet counters alive in Riemann's index.
///
/// Riemann expires an event `ttl` seconds after it was received, and the agent sends a key only
/// in intervals where it has a value: without this, a syscall that is not called for a few
/// seconds or a disk that goes idle would expire every time (the "expired" events people alert
/// on). A counter seen in the last `window` is therefore sent as 0 in each interval it is
/// absent from; only a key quiet for longer expires. Latency gauges of a quiet key are not
/// sent (there is no latency of nothing): they expire after the ttl.
#[derive(Debug)]
pub struct KeepAlive {
    window: Duration,
    /// Counter keys and the end of the last interval that had them.
    last_seen: HashMap<(Name, Tags), SystemTime>,
}

impl KeepAlive {
    /// `window` zero: off.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_seen: HashMap::new(),
        }
    }

    /// The zero counters to send with `snap`: each counter key seen within the window before
    /// `snap` but absent from it. Keys quiet for longer are forgotten.
    pub fn quiet_counters(&mut self, snap: &Snapshot) -> Vec<Metric> {
        if self.window.is_zero() {
            return vec![];
        }
        let mut present = HashSet::new();
        for m in snap.metrics.iter().filter(|m| m.kind == Kind::Counter) {
            let key = (m.name.clone(), m.tags.clone());
            self.last_seen.insert(key.clone(), snap.time);
            present.insert(key);
        }
        let window = self.window;
        let mut out = Vec::new();
        self.last_seen.retain(|key, last| {
            if present.contains(key) {
                return true;
            }
            let quiet = snap.time.duration_since(*last).unwrap_or_default();
            let keep = quiet <= window;
            if keep {
                out.push(Metric::counter(key.0.clone(), key.1.clone(), 0));
            }
            keep
        });
        // The map's order is random: sorted, so datagrams are stable from one interval to the next.
        out.sort_by(|a, b| (&a.name, &a.tags).cmp(&(&b.name, &b.tags)));
        out
    }

    /// [`events`] of `snap` plus the zero counters of the quiet keys, and how many were skipped.
    pub fn events(&mut self, snap: &Snapshot, cfg: &Config) -> (Vec<Event>, u64) {
        let (mut out, skipped) = events(snap, cfg);
        out.extend(
            self.quiet_counters(snap)
                .iter()
                .filter_map(|m| event(snap, m, cfg)),
        );
        (out, skipped)
    }
}

/// UDP: one `Msg` per datagram, each at most `cfg.max_packet` bytes.
pub fn encode_udp(snap: &Snapshot, cfg: &Config) -> Encoded {
    encode_events(events(snap, cfg), cfg)
}

/// As [`encode_udp`], with the quiet counters `keep` keeps alive.
pub fn encode_udp_kept(snap: &Snapshot, cfg: &Config, keep: &mut KeepAlive) -> Encoded {
    encode_events(keep.events(snap, cfg), cfg)
}

fn encode_events((events, skipped): (Vec<Event>, u64), cfg: &Config) -> Encoded {
    let (datagrams, oversize) = pack_udp(events, cfg.max_packet);
    Encoded {
        datagrams,
        skipped: skipped + oversize,
    }
}

/// Bytes one event adds to a `Msg`: field 6's key, the length, the event.
fn event_len_in_msg(e: &Event) -> usize {
    let len = e.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Splits events, in order, into `Msg`s of at most `max` encoded bytes. Returns the datagrams
/// and how many events were larger than `max` on their own (left out).
pub fn pack_udp(events: Vec<Event>, max: usize) -> (Vec<Datagram>, u64) {
    let mut out = Vec::new();
    let mut oversize = 0;
    let mut batch: Vec<Event> = Vec::new();
    let mut size = 0;
    let flush = |batch: &mut Vec<Event>, out: &mut Vec<Datagram>| {
        let msg = Msg {
            events: std::mem::take(batch),
            ..Default::default()
        };
        out.push(Datagram {
            metrics: msg.events.len(),
            bytes: msg.encode_to_vec(),
        });
    };
    for e in events {
        let len = event_len_in_msg(&e);
        if len > max {
            oversize += 1;
            continue;
        }
        if size + len > max {
            flush(&mut batch, &mut out);
            size = 0;
        }
        size += len;
        batch.push(e);
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut out);
    }
    (out, oversize)
}

/// A message behind its 4-byte big-endian length, as TCP carries it.
pub fn frame(msg: &Msg) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Capped exponential backoff between TCP reconnection attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, cap: Duration) -> Self {
        Self {
            next: first,
            first,
            cap,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// One interval waiting for the server's ack, encoded once however many times it is retried.
struct Pending {
    frame: Vec<u8>,
    metrics: u64,
}

/// Sends each queued interval as one framed `Msg` and waits for the ack; on any failure keeps the
/// interval, reconnects after a capped exponential backoff and sends it again. Intervals that
/// pile up meanwhile stay in the sink's bounded queue (oldest dropped, counted).
pub(super) async fn run_tcp(
    shared: Arc<Shared>,
    mut endpoint: Endpoint,
    cfg: Config,
    timeout: Duration,
    mut keep: KeepAlive,
) {
    let mut conn: Option<TcpStream> = None;
    let mut pending: Option<Pending> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        shared
            .in_flight
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let p = match pending.take() {
            Some(p) => p,
            None => match shared.next().await {
                Some(snap) => {
                    let (events, skipped) = keep.events(&snap, &cfg);
                    shared.dropped(skipped);
                    if events.is_empty() {
                        continue;
                    }
                    Pending {
                        metrics: events.len() as u64,
                        frame: frame(&Msg {
                            events,
                            ..Default::default()
                        }),
                    }
                }
                None => break,
            },
        };

        shared
            .in_flight
            .store(p.metrics, std::sync::atomic::Ordering::Relaxed);
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(&endpoint, timeout).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    shared.error(format_args!("cannot connect: {e}"));
                    pending = Some(p);
                    pause(&mut backoff).await;
                    endpoint.resolve_after_error(&shared).await;
                    continue;
                }
            },
        };

        match tokio::time::timeout(timeout, exchange(stream, &p.frame)).await {
            Ok(Ok(ack)) if ack.ok == Some(true) => backoff.reset(),
            Ok(Ok(ack)) => {
                // The server read the message and refused it: sending it again would not help.
                shared.error(format_args!(
                    "server refused {} events: {}",
                    p.metrics,
                    ack.error.as_deref().unwrap_or("no reason given")
                ));
                shared.dropped(p.metrics);
            }
            Ok(Err(e)) => {
                shared.error(format_args!("send failed: {e}"));
                conn = None;
                pending = Some(p);
                pause(&mut backoff).await;
            }
            Err(_) => {
                shared.error(format_args!(
                    "no ack within {}",
                    humantime::format_duration(timeout)
                ));
                conn = None;
                pending = Some(p);
                pause(&mut backoff).await;
            }
        }
    }
}

/// Sleeps the next backoff delay; queued intervals keep piling up (bounded) meanwhile.
async fn pause(backoff: &mut Backoff) {
    tokio::time::sleep(backoff.next_delay()).await;
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = endpoint.addr;
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes one frame and reads the server's framed answer.
async fn exchange(s: &mut TcpStream, frame: &[u8]) -> std::io::Result<Msg> {
    s.write_all(frame).await?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ACK {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer of {len} bytes is not an ack"),
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Msg::decode(buf.as_slice()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn cfg() -> Config {
        Config {
            prefix: "ebpf".into(),
            tags: vec![("env".into(), "prod".into())],
            ttl: 2.0,
            max_packet: 16384,
        }
    }

    fn snap(metrics: Vec<Metric>) -> Snapshot {
        Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_micros(1_700_000_001_250_000),
            interval: Duration::from_secs(1),
            host: "web-1".into(),
            metrics,
        }
    }

    #[test]
    fn an_incident_change_is_one_event_with_its_id() {
        use crate::incident::{Change, Incident};
        let mut s = snap(vec![Metric::gauge("load.1", vec![], 0.5)]);
        let inc = |id, state, change| Incident {
            id,
            state,
            since: 1_700_000_000,
            subsystems: vec!["disk".into()],
            processes: vec![],
            keys: vec![],
            description: format!("{state}: disk stalled since 22:13:20"),
            change,
        };
        s.annotations.incidents = vec![
            inc(7, AnomalyState::Critical, Some(Change::Escalated)),
            inc(8, AnomalyState::Warning, None), // still open, nothing new: no event
            inc(9, AnomalyState::Ok, Some(Change::Closed)),
        ];
        let (events, _) = events(&s, &cfg());
        let inc: Vec<&Event> = events
            .iter()
            .filter(|e| e.service.as_deref() == Some("ebpf incident"))
            .collect();
        assert_eq!(inc.len(), 2);
        let id = |e: &Event| {
            e.attributes
                .iter()
                .find(|a| a.key == "incident")
                .and_then(|a| a.value.clone())
        };
        assert_eq!(id(inc[0]).as_deref(), Some("7"));
        assert_eq!(inc[0].state.as_deref(), Some("critical"));
        assert_eq!(inc[0].metric_d, Some(1.0));
        assert_eq!(
            inc[0].description.as_deref(),
            Some("critical: disk stalled since 22:13:20")
        );
        assert_eq!(id(inc[1]).as_deref(), Some("9"));
        assert_eq!(inc[1].state.as_deref(), Some("ok"));
        assert_eq!(inc[1].metric_d, Some(0.0));
    }

    #[test]
    fn anomalies_set_state_and_description_and_a_summary_event() {
        use crate::snapshot::{Anomaly, AnomalySummary};
        let tags = vec![("device", "vda".to_string()), ("op", "write".to_string())];
        let mut s = snap(vec![
            Metric::gauge("disk.latency_us.p99", tags.clone(), 48_100.0),
            Metric::gauge("load.1", vec![], 0.5),
        ]);
        s.annotations.anomalies.push(Anomaly {
            name: "disk.latency_us.p99".into(),
            tags,
            state: AnomalyState::Critical,
            score: 0.97,
            value: 48_100.0,
            usual: 7_700.0,
            since_s: 12.0,
            description: "disk vda write p99 48.1 ms: 6.2x its usual 7.7 ms, for 12 s".into(),
            changed: true,
        });
        s.annotations.summary = Some(AnomalySummary {
            state: AnomalyState::Critical,
            active: 1,
            description: "1 anomaly: disk vda write p99 48.1 ms ... (critical)".into(),
        });
        let (events, skipped) = events(&s, &cfg());
        assert_eq!((events.len(), skipped), (3, 0));
        assert_eq!(
            events[0].service.as_deref(),
            Some("ebpf disk.latency_us.p99 vda write")
        );
        assert_eq!(events[0].state.as_deref(), Some("critical"));
        assert!(
            events[0]
                .description
                .as_deref()
                .unwrap()
                .contains("6.2x its usual")
        );
        assert_eq!(events[1].state.as_deref(), Some("ok"));
        assert_eq!(events[1].description, None);
        assert_eq!(events[2].service.as_deref(), Some("ebpf anomaly"));
        assert_eq!(events[2].state.as_deref(), Some("critical"));
        assert_eq!(events[2].metric_d, Some(1.0));
        assert!(
            events[2]
                .description
                .as_deref()
                .unwrap()
                .starts_with("1 anomaly")
        );
    }

    #[test]
    fn event_fields() {
        let s = snap(vec![
            Metric::gauge(
                "syscall.latency_us.p99",
                vec![("syscall", "read".into())],
                12.5,
            ),
            Metric::counter(
                "disk.ops",
                vec![("device", "vda".into()), ("op", "write".into())],
                42,
            ),
            Metric::gauge("load.1", vec![], f64::NAN),
        ]);
        let (ev, skipped) = events(&s, &cfg());
        assert_eq!(skipped, 1);
        assert_eq!(ev.len(), 2);
        let e = &ev[0];
        assert_eq!(e.host.as_deref(), Some("web-1"));
        assert_eq!(
            e.service.as_deref(),
            Some("ebpf syscall.latency_us.p99 read")
        );
        assert_eq!(e.metric_d, Some(12.5));
        assert_eq!(e.metric_f, Some(12.5));
        assert_eq!(e.metric_sint64, None);
        assert_eq!(e.time, Some(1_700_000_001));
        assert_eq!(e.time_micros, Some(1_700_000_001_250_000));
        assert_eq!(e.ttl, Some(2.0));
        assert_eq!(e.state.as_deref(), Some("ok"));
        assert_eq!(e.tags, vec!["ebpf-agent", "env"]);
        let attrs: Vec<(&str, &str)> = e
            .attributes
            .iter()
            .map(|a| (a.key.as_str(), a.value.as_deref().unwrap()))
            .collect();
        assert_eq!(attrs, vec![("syscall", "read"), ("env", "prod")]);
        let e = &ev[1];
        assert_eq!(e.service.as_deref(), Some("ebpf disk.ops vda write"));
        assert_eq!(e.metric_sint64, Some(42));
        assert_eq!(e.metric_d, Some(42.0));
        assert_eq!(e.metric_f, Some(42.0));

        let mut c = cfg();
        c.prefix.clear();
        let (ev, _) = events(&s, &c);
        assert_eq!(
            ev[0].service.as_deref(),
            Some("syscall.latency_us.p99 read")
        );
    }

    /// Bytes written out by hand from riemann.proto's field numbers and wire types, so a wrong
    /// tag in the derive attributes cannot hide behind a round trip through the same structs.
    #[test]
    fn wire_bytes_match_the_proto_field_numbers() {
        let msg = Msg {
            events: vec![Event {
                time: Some(1),
                state: Some("ok".into()),
                service: Some("s".into()),
                host: Some("h".into()),
                tags: vec!["t".into()],
                ttl: Some(2.0),
                attributes: vec![Attribute {
                    key: "k".into(),
                    value: Some("v".into()),
                }],
                time_micros: Some(3),
                metric_sint64: Some(-1),
                metric_d: Some(0.5),
                ..Default::default()
            }],
            ..Default::default()
        };
        #[rustfmt::skip]
        let event: Vec<u8> = [
            &[0x08, 1][..],                       // 1 time varint
            &[0x12, 2, b'o', b'k'],               // 2 state
            &[0x1a, 1, b's'],                     // 3 service
            &[0x22, 1, b'h'],                     // 4 host
            &[0x3a, 1, b't'],                     // 7 tags
            &[0x45], &2.0f32.to_le_bytes(),       // 8 ttl fixed32
            &[0x4a, 6, 0x0a, 1, b'k', 0x12, 1, b'v'], // 9 attributes {1 key, 2 value}
            &[0x50, 3],                           // 10 time_micros varint
            &[0x68, 1],                           // 13 metric_sint64 zigzag(-1) = 1
            &[0x71], &0.5f64.to_le_bytes(),       // 14 metric_d fixed64
        ]
        .concat();
        let mut expected = vec![0x32, event.len() as u8]; // Msg 6 events
        expected.extend_from_slice(&event);
        assert_eq!(msg.encode_to_vec(), expected);

        let ack = Msg {
            ok: Some(true),
            ..Default::default()
        };
        assert_eq!(ack.encode_to_vec(), [0x10, 1]); // Msg 2 ok
        assert_eq!(frame(&ack), [0, 0, 0, 2, 0x10, 1]);
    }

    #[test]
    fn protobuf_round_trip() {
        let s = snap(vec![
            Metric::gauge(
                "tcp.rtt_us.p50",
                vec![("peer", "10.0.0.1:443 ü\n".into())],
                -0.125,
            ),
            Metric::counter(
                "syscall.count",
                vec![("syscall", "getppid".into())],
                u32::MAX as u64 * 4,
            ),
        ]);
        let (ev, _) = events(&s, &cfg());
        let msg = Msg {
            events: ev.clone(),
            ..Default::default()
        };
        let back = Msg::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, msg);
        let f = frame(&msg);
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(Msg::decode(&f[4..]).unwrap().events, ev);
    }

    #[test]
    fn udp_splits_at_16k_without_losing_events() {
        let metrics: Vec<Metric> = (0..3000)
            .map(|i| {
                Metric::gauge(
                    format!("syscall.latency_us.p{}", i % 100),
                    vec![
                        ("syscall", format!("call_{i}")),
                        ("cpu", "x".repeat(i % 50)),
                    ],
                    i as f64 / 3.0,
                )
            })
            .collect();
        let s = snap(metrics);
        let c = cfg();
        let enc = encode_udp(&s, &c);
        assert_eq!(enc.skipped, 0);
        assert!(
            enc.datagrams.len() > 10,
            "{} datagrams",
            enc.datagrams.len()
        );
        let mut seen = HashSet::new();
        let mut total = 0;
        for (i, d) in enc.datagrams.iter().enumerate() {
            assert!(
                d.bytes.len() <= 16384,
                "datagram {i}: {} bytes",
                d.bytes.len()
            );
            // Greedy packing: every datagram but the last is nearly full.
            if i + 1 < enc.datagrams.len() {
                assert!(
                    d.bytes.len() > 16384 - 400,
                    "datagram {i}: {} bytes",
                    d.bytes.len()
                );
            }
            let msg = Msg::decode(d.bytes.as_slice()).unwrap();
            assert_eq!(msg.events.len(), d.metrics);
            total += msg.events.len();
            for e in msg.events {
                assert!(
                    seen.insert(e.attributes[0].value.clone().unwrap()),
                    "duplicate"
                );
            }
        }
        assert_eq!(total, 3000);
        assert_eq!(seen.len(), 3000);

        // An event that cannot fit in any datagram is counted, not sent.
        let big = snap(vec![
            Metric::gauge("a", vec![("k", "v".repeat(20_000))], 1.0),
            Metric::gauge("b", vec![], 1.0),
        ]);
        let enc = encode_udp(&big, &c);
        assert_eq!(enc.skipped, 1);
        assert_eq!(enc.datagrams.len(), 1);
        assert_eq!(enc.datagrams[0].metrics, 1);
    }

    fn at(secs: u64, metrics: Vec<Metric>) -> Snapshot {
        let mut s = snap(metrics);
        s.time = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs);
        s
    }

    #[test]
    fn quiet_counters_are_kept_alive_as_zero_for_the_window_then_expire() {
        let read = || vec![("syscall", "read".to_string())];
        let busy = || {
            vec![
                Metric::counter("syscall.count", read(), 7),
                Metric::gauge("syscall.latency_us.p99", read(), 12.5),
            ]
        };
        let mut keep = KeepAlive::new(Duration::from_secs(3));
        assert!(keep.quiet_counters(&at(0, busy())).is_empty());
        // Quiet for 1, 2, 3 s: the counter is sent as 0; the latency gauge is not sent.
        for t in 1..=3 {
            let (ev, _) = keep.events(&at(t, vec![]), &cfg());
            assert_eq!(ev.len(), 1, "at {t}: {ev:?}");
            assert_eq!(ev[0].service.as_deref(), Some("ebpf syscall.count read"));
            assert_eq!(ev[0].metric_sint64, Some(0));
            assert_eq!(ev[0].metric_d, Some(0.0));
            assert_eq!(ev[0].ttl, Some(2.0));
            assert_eq!(ev[0].time, Some(1_700_000_000 + t as i64));
        }
        // Quiet for longer than the window: no longer sent (Riemann expires it), and forgotten.
        assert!(keep.quiet_counters(&at(4, vec![])).is_empty());
        assert!(keep.last_seen.is_empty());
        // Seen again: kept alive again from then.
        keep.quiet_counters(&at(10, busy()));
        assert_eq!(keep.quiet_counters(&at(11, vec![])).len(), 1);
        // Off: nothing added.
        let mut off = KeepAlive::new(Duration::ZERO);
        off.quiet_counters(&at(0, busy()));
        assert!(off.quiet_counters(&at(1, vec![])).is_empty());
    }

    #[test]
    fn udp_datagrams_fit_the_default_packet() {
        let metrics: Vec<Metric> = (0..500)
            .map(|i| {
                Metric::gauge(
                    "syscall.latency_us.p99",
                    vec![("syscall", format!("call_{i}"))],
                    1.5,
                )
            })
            .collect();
        let mut c = cfg();
        c.max_packet = super::super::RIEMANN_DEFAULT_PACKET;
        let enc = encode_udp(&snap(metrics), &c);
        assert_eq!(enc.skipped, 0);
        assert_eq!(enc.datagrams.iter().map(|d| d.metrics).sum::<usize>(), 500);
        for d in &enc.datagrams {
            // 1432 bytes of payload + 8 (UDP) + 40 (IPv6) + 20 spare = 1500.
            assert!(d.bytes.len() <= 1432, "{} bytes", d.bytes.len());
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let d: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
