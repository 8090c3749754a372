//! The sinks against real peers on loopback: Etsy's statsd daemon (npm package `statsd`) read
//! back through its admin interface, and a Riemann receiver in Python that decodes with Google's
//! protobuf runtime and the riemann.proto of Debian's riemann-c-client (no code shared with the
//! agent).
//!
//! The peers live in `target/peers` (or `$EBPF_AGENT_PEERS_DIR`); when they are missing these
//! tests run `tests/peers/setup.sh` and fail, never skip, if it cannot install them.

mod common;

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebpf_agent::sinks::{SinkArgs, Sinks, StatsdTagStyle};
use ebpf_agent::snapshot::{Metric, Snapshot};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The peers' directory, installed by tests/peers/setup.sh on first use.
fn peers() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("EBPF_AGENT_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/peers"));
        let ready = |d: &Path| {
            d.join("node_modules/statsd/stats.js").is_file()
                && d.join("venv/bin/python").is_file()
                && d.join("py/riemann_pb2.py").is_file()
                && d.join("proto/riemann.proto").is_file()
        };
        if !ready(&dir) {
            let script = repo().join("tests/peers/setup.sh");
            eprintln!(
                "sink peers missing in {}: running {}",
                dir.display(),
                script.display()
            );
            let status = Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .status()
                .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
            assert!(
                status.success() && ready(&dir),
                "{} {} failed ({status}): these tests need Etsy statsd from npm, protobuf and \
                 grpcio-tools from PyPI, and Debian's riemann-c-client sources; run it by hand \
                 to see why",
                script.display(),
                dir.display()
            );
        }
        std::fs::create_dir_all(dir.join("run")).unwrap();
        dir
    })
}

/// A child process killed (and reaped) when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on loopback now, never handed out twice in this process (tests run in parallel).
fn free_port(udp: bool) -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = if udp {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn free_udp_port() -> u16 {
    free_port(true)
}

fn free_tcp_port() -> u16 {
    free_port(false)
}

// ---- statsd ---------------------------------------------------------------------------------

struct Statsd {
    _proc: Peer,
    port: u16,
    mgmt_port: u16,
}

impl Statsd {
    /// Starts statsd on loopback (no backend, no flush within the test) and waits until it
    /// counts a probe line.
    async fn start(port: u16) -> Statsd {
        let dir = peers();
        let mgmt_port = free_tcp_port();
        let config = dir.join(format!("run/statsd-{port}.js"));
        std::fs::write(
            &config,
            format!(
                "{{ port: {port}, address: \"127.0.0.1\", mgmt_port: {mgmt_port}, \
                 mgmt_address: \"127.0.0.1\", backends: [], flushInterval: 3600000, \
                 automaticConfigReload: false }}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("run/statsd-{port}.log"))).unwrap();
        let child = Command::new("node")
            .arg(dir.join("node_modules/statsd/stats.js"))
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start node (Etsy statsd): is Node.js installed? run tests/peers/setup.sh");
        let s = Statsd {
            _proc: Peer(child),
            port,
            mgmt_port,
        };
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let _ = probe.send_to(b"peers.probe:1|c", ("127.0.0.1", port));
            if let Ok(c) = s.try_query("counters").await
                && c.contains_key("peers.probe")
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "statsd did not come up on 127.0.0.1:{port} (log: {})",
                dir.join(format!("run/statsd-{port}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `counters` or `gauges` from the admin interface.
    async fn try_query(&self, what: &str) -> std::io::Result<HashMap<String, f64>> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.mgmt_port)).await?;
        s.write_all(format!("{what}\n").as_bytes()).await?;
        let mut buf = Vec::new();
        let read = async {
            while !buf.ends_with(b"END\n\n") {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            std::io::Result::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| std::io::Error::other("admin interface timed out"))??;
        let _ = s.write_all(b"quit\n").await;
        Ok(parse_inspect(&String::from_utf8_lossy(&buf)))
    }

    async fn query(&self, what: &str) -> HashMap<String, f64> {
        self.try_query(what).await.unwrap()
    }

    /// Polls `what` until `done` holds, then returns it.
    async fn wait(
        &self,
        what: &str,
        done: impl Fn(&HashMap<String, f64>) -> bool,
    ) -> HashMap<String, f64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.query(what).await;
            if done(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "statsd {what} never got there: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads Node's `util.inspect` of a flat object of numbers: `{ 'a.b': 1, c: -2.5 }`.
fn parse_inspect(text: &str) -> HashMap<String, f64> {
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        panic!("not an object: {text:?}");
    };
    text[start + 1..end]
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.rsplit_once(':').unwrap_or_else(|| panic!("entry {p:?}"));
            let v: f64 = v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("value in {p:?}"));
            (k.trim().trim_matches('\'').to_owned(), v)
        })
        .collect()
}

// ---- Riemann receiver -----------------------------------------------------------------------

struct Riemann {
    proc: Option<Peer>,
    port: u16,
    lines: mpsc::Receiver<String>,
    events: Vec<Value>,
}

impl Riemann {
    /// Starts tests/peers/riemann_receiver.py (`udp` or `tcp`) on `port` (0: any).
    fn start(transport: &str, port: u16, extra: &[&str]) -> Riemann {
        let dir = peers();
        let mut child = Command::new(dir.join("venv/bin/python"))
            .arg("-u")
            .arg(repo().join("tests/peers/riemann_receiver.py"))
            .arg("--pb")
            .arg(dir.join("py"))
            .arg(format!("--{transport}"))
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python Riemann receiver: run tests/peers/setup.sh");
        let stdout = child.stdout.take().unwrap();
        let proc = Peer(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(WAIT)
            .expect("the Riemann receiver did not start (see its stderr above)");
        let port = ready
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
        Riemann {
            proc: Some(proc),
            port,
            lines,
            events: vec![],
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(v.get("error").is_none(), "receiver: {v}");
            self.events.push(v);
        }
    }

    /// Waits until the events received so far satisfy `done`.
    async fn wait(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if done(&self.events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Riemann receiver never saw {what}; got {} events, last: {:?}",
                self.events.len(),
                self.events.last()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn with_service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["service"] == service)
    }
}

fn has_service(events: &[Value], service: &str) -> bool {
    events.iter().any(|e| e["service"] == service)
}

// ---- snapshots and self-metrics -------------------------------------------------------------

const HOST: &str = "peer-test-host";

/// A second boundary plus 250 ms, so `time` and `time_micros` differ.
fn test_time() -> (SystemTime, i64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + 250),
        secs as i64,
    )
}

fn snapshot(time: SystemTime, metrics: Vec<Metric>) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        annotations: Default::default(),
        time,
        interval: Duration::from_secs(1),
        host: HOST.into(),
        metrics,
    })
}

/// Running totals of the sinks' self-metrics (each call to `self_metrics` returns deltas).
#[derive(Default)]
struct Totals(HashMap<(String, String), f64>);

impl Totals {
    fn add(&mut self, sinks: &Sinks) {
        for m in sinks.self_metrics() {
            let sink = m.tag("sink").unwrap().to_owned();
            *self.0.entry((m.name.to_string(), sink)).or_default() += m.value;
        }
    }

    fn get(&self, name: &str, sink: &str) -> f64 {
        self.0
            .get(&(name.to_owned(), sink.to_owned()))
            .copied()
            .unwrap_or_else(|| panic!("no {name}{{sink={sink}}} in {:?}", self.0))
    }
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_holds_exactly_the_values_sent() {
    let statsd = Statsd::start(free_udp_port()).await;
    let args = SinkArgs {
        statsd: vec![format!("127.0.0.1:{}", statsd.port)],
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, _) = test_time();
    let hostile = "10.0.0.1:443 |#@x";
    let mut first = vec![
        Metric::counter("syscall.count", vec![("syscall", "getppid".into())], 1000),
        Metric::gauge(
            "syscall.latency_us.p99",
            vec![("syscall", "read".into())],
            12.5,
        ),
        Metric::gauge("tcp.rtt_us.p50", vec![("peer", hostile.into())], -3.5),
        Metric::counter(
            "disk.ops",
            vec![("device", "vda".into()), ("op", "write".into())],
            123_456_789_012,
        ),
        Metric::gauge("load.1", vec![], 0.000123),
        Metric::gauge("bad.value", vec![], f64::NAN),
    ];
    // Enough lines for many 1432-byte datagrams.
    first.extend((0..400).map(|i| Metric::gauge(format!("bulk.m{i}"), vec![], i as f64 * 0.25)));
    sinks.send(snapshot(t, first));
    sinks.send(snapshot(
        t + Duration::from_secs(1),
        vec![
            Metric::counter("syscall.count", vec![("syscall", "getppid".into())], 234),
            Metric::gauge(
                "syscall.latency_us.p99",
                vec![("syscall", "read".into())],
                7.25,
            ),
            // Negative after negative: statsd would add a signed value to the old one.
            Metric::gauge("tcp.rtt_us.p50", vec![("peer", hostile.into())], -1.5),
        ],
    ));

    let counters = statsd
        .wait("counters", |c| {
            c.get("ebpf.syscall.getppid.count") == Some(&1234.0)
        })
        .await;
    let gauges = statsd
        .wait("gauges", |g| {
            g.get("ebpf.syscall.read.latency_us.p99") == Some(&7.25)
                && g.get("ebpf.tcp.10_0_0_1_443____x.rtt_us.p50") == Some(&-1.5)
                && g.contains_key("ebpf.bulk.m399")
        })
        .await;
    assert_eq!(counters["ebpf.syscall.getppid.count"], 1234.0);
    assert_eq!(counters["ebpf.disk.vda.write.ops"], 123_456_789_012.0);
    assert_eq!(counters["statsd.bad_lines_seen"], 0.0, "{counters:?}");
    assert_eq!(gauges["ebpf.syscall.read.latency_us.p99"], 7.25);
    assert_eq!(gauges["ebpf.tcp.10_0_0_1_443____x.rtt_us.p50"], -1.5);
    assert_eq!(gauges["ebpf.load.1"], 0.000123);
    for i in 0..400 {
        assert_eq!(
            gauges[&format!("ebpf.bulk.m{i}")],
            i as f64 * 0.25,
            "bulk.m{i}"
        );
    }
    assert!(!gauges.keys().any(|k| k.contains("bad")), "{gauges:?}");
    // Every line arrived: the two intervals' lines plus the probe, nothing else.
    let ours = counters.keys().filter(|k| k.starts_with("ebpf.")).count()
        + gauges.keys().filter(|k| k.starts_with("ebpf.")).count();
    assert_eq!(ours, 2 + 3 + 400);

    let mut totals = Totals::default();
    totals.add(&sinks);
    let sink = format!("statsd:127.0.0.1:{}", statsd.port);
    assert_eq!(totals.get("agent.sink_errors", &sink), 0.0);
    assert_eq!(totals.get("agent.sink_dropped", &sink), 1.0, "the NaN");
    sinks.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_reads_dogstatsd_tags() {
    let statsd = Statsd::start(free_udp_port()).await;
    let args = SinkArgs {
        statsd: vec![format!("127.0.0.1:{}", statsd.port)],
        statsd_tags: StatsdTagStyle::Dogstatsd,
        tags: vec!["env=ci".into()],
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, _) = test_time();
    sinks.send(snapshot(
        t,
        vec![
            Metric::counter("syscall.count", vec![("syscall", "getppid".into())], 5),
            Metric::gauge(
                "syscall.latency_us.p99",
                vec![("syscall", "read".into())],
                3.5,
            ),
            Metric::gauge("tcp.rtt_us.p50", vec![("peer", "a b:c|d".into())], -2.0),
        ],
    ));
    // statsd 0.9 keys tagged lines as `name;k=v;...`.
    let counters = statsd
        .wait("counters", |c| {
            c.contains_key("ebpf.syscall.count;syscall=getppid;env=ci")
        })
        .await;
    let gauges = statsd
        .wait("gauges", |g| {
            g.contains_key("ebpf.tcp.rtt_us.p50;peer=a_b_c_d;env=ci")
        })
        .await;
    assert_eq!(counters["ebpf.syscall.count;syscall=getppid;env=ci"], 5.0);
    assert_eq!(counters["statsd.bad_lines_seen"], 0.0);
    assert_eq!(
        gauges["ebpf.syscall.latency_us.p99;syscall=read;env=ci"],
        3.5
    );
    assert_eq!(gauges["ebpf.tcp.rtt_us.p50;peer=a_b_c_d;env=ci"], -2.0);
    sinks.shutdown(Duration::from_secs(2)).await;
}

/// The three known metrics of the Riemann tests and what the receiver must decode from them.
fn riemann_metrics() -> Vec<Metric> {
    vec![
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
        Metric::gauge("load.1", vec![], -0.75),
    ]
}

fn assert_riemann_fields(events: &[Value], secs: i64, ttl: f64, transport: &str) {
    let find = |service: &str| {
        let found: Vec<&Value> = events.iter().filter(|e| e["service"] == service).collect();
        assert_eq!(found.len(), 1, "{service}: {found:?}");
        found[0].clone()
    };
    let common = |e: &Value| {
        assert_eq!(e["transport"], transport);
        assert_eq!(e["host"], HOST);
        assert_eq!(e["time"], secs);
        assert_eq!(e["time_micros"], secs * 1_000_000 + 250_000);
        assert_eq!(e["ttl"], ttl);
        assert_eq!(e["state"], "ok");
        assert_eq!(e["tags"], json!(["ebpf-agent", "env"]));
        // metric_f alongside metric_d, for consumers that read only the float.
        assert_eq!(e["metric_f"], e["metric_d"]);
        assert_eq!(e["description"], Value::Null);
    };
    let e = find("ebpf syscall.latency_us.p99 read");
    common(&e);
    assert_eq!(e["metric_d"], 12.5);
    assert_eq!(e["metric_sint64"], Value::Null);
    assert_eq!(e["attributes"], json!([["syscall", "read"], ["env", "ci"]]));
    let e = find("ebpf disk.ops vda write");
    common(&e);
    assert_eq!(e["metric_d"], 42.0);
    assert_eq!(e["metric_sint64"], 42);
    assert_eq!(
        e["attributes"],
        json!([["device", "vda"], ["op", "write"], ["env", "ci"]])
    );
    let e = find("ebpf load.1");
    common(&e);
    assert_eq!(e["metric_d"], -0.75);
    assert_eq!(e["attributes"], json!([["env", "ci"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riemann_udp_events_decode_field_by_field_and_split_at_16k() {
    let mut rx = Riemann::start("udp", 0, &[]);
    let args = SinkArgs {
        riemann: vec![format!("127.0.0.1:{}", rx.port)], // bare: UDP
        tags: vec!["env=ci".into()],
        // The largest datagram Riemann reads (the default fits a 1500-byte MTU).
        riemann_max_packet: 16384,
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, secs) = test_time();
    let mut metrics = riemann_metrics();
    let pad = "p".repeat(80);
    metrics.extend(
        (0..600).map(|i| Metric::gauge("bulk.value", vec![("n", format!("{i}-{pad}"))], i as f64)),
    );
    sinks.send(snapshot(t, metrics));
    rx.wait("all 603 events", |ev| ev.len() >= 603).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rx.drain();
    assert_eq!(rx.events.len(), 603, "lost or duplicated events");
    assert_riemann_fields(&rx.events, secs, 2.0, "udp");
    for i in 0..600 {
        let service = format!("ebpf bulk.value {i}-{pad}");
        let found: Vec<&Value> = rx.with_service(&service).collect();
        assert_eq!(found.len(), 1, "{service}");
        assert_eq!(found[0]["metric_d"], i as f64);
    }
    let max = rx
        .events
        .iter()
        .map(|e| e["msg_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    let per_msg = rx
        .events
        .iter()
        .map(|e| e["msg_events"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max <= 16384, "a datagram of {max} bytes");
    assert!(max > 15000, "datagrams are filled: largest {max}");
    assert!(per_msg < 603, "the events were split across datagrams");

    let mut totals = Totals::default();
    totals.add(&sinks);
    let sink = format!("riemann-udp:127.0.0.1:{}", rx.port);
    assert_eq!(totals.get("agent.sink_errors", &sink), 0.0);
    assert_eq!(totals.get("agent.sink_dropped", &sink), 0.0);
    sinks.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riemann_tcp_is_acked_in_order_with_every_field() {
    let mut rx = Riemann::start("tcp", 0, &[]);
    let args = SinkArgs {
        riemann: vec![format!("tcp://127.0.0.1:{}", rx.port)],
        tags: vec!["env=ci".into()],
        riemann_ttl: Some(Duration::from_secs(7).into()),
        // Each metric exactly once: no zero counters kept alive in the later intervals.
        riemann_keepalive: Duration::ZERO.into(),
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, secs) = test_time();
    sinks.send(snapshot(t, riemann_metrics()));
    for seq in 0..5 {
        sinks.send(snapshot(t, vec![Metric::counter("probe.seq", vec![], seq)]));
    }
    rx.wait("five probes", |ev| {
        ev.iter()
            .filter(|e| e["service"] == "ebpf probe.seq")
            .count()
            >= 5
    })
    .await;
    rx.drain();
    assert_riemann_fields(&rx.events, secs, 7.0, "tcp");
    let seqs: Vec<i64> = rx
        .with_service("ebpf probe.seq")
        .map(|e| e["metric_sint64"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4], "one interval at a time, in order");

    let mut totals = Totals::default();
    totals.add(&sinks);
    let sink = format!("riemann-tcp:127.0.0.1:{}", rx.port);
    assert_eq!(totals.get("agent.sink_errors", &sink), 0.0);
    assert_eq!(totals.get("agent.sink_dropped", &sink), 0.0);
    sinks.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riemann_tcp_without_ack_times_out_and_sends_again() {
    let mut rx = Riemann::start("tcp", 0, &["--no-ack"]);
    let args = SinkArgs {
        riemann: vec![format!("tcp://127.0.0.1:{}", rx.port)],
        riemann_timeout: Duration::from_millis(300).into(),
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, _) = test_time();
    sinks.send(snapshot(t, vec![Metric::gauge("probe.noack", vec![], 1.0)]));
    rx.wait("the same interval twice", |ev| {
        ev.iter()
            .filter(|e| e["service"] == "ebpf probe.noack")
            .count()
            >= 2
    })
    .await;
    let mut totals = Totals::default();
    totals.add(&sinks);
    let sink = format!("riemann-tcp:127.0.0.1:{}", rx.port);
    assert!(totals.get("agent.sink_errors", &sink) >= 1.0);
    sinks.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riemann_tcp_reconnects_after_the_receiver_restarts() {
    let port = free_tcp_port();
    let mut rx = Riemann::start("tcp", port, &[]);
    let args = SinkArgs {
        riemann: vec![format!("tcp://127.0.0.1:{port}")],
        riemann_timeout: Duration::from_secs(1).into(),
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, _) = test_time();
    let probe = |seq: u64| snapshot(t, vec![Metric::counter("probe.seq", vec![], seq)]);
    let seqs = |ev: &[Value]| -> Vec<i64> {
        ev.iter()
            .filter(|e| e["service"] == "ebpf probe.seq")
            .map(|e| e["metric_sint64"].as_i64().unwrap())
            .collect()
    };
    sinks.send(probe(1));
    rx.wait("seq 1", |ev| seqs(ev) == [1]).await;

    rx.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sinks.send(probe(2));
    sinks.send(probe(3));
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut rx = Riemann::start("tcp", port, &[]);
    rx.wait("seq 2 and 3 after the restart", |ev| seqs(ev) == [2, 3])
        .await;
    sinks.send(probe(4));
    rx.wait("seq 4", |ev| seqs(ev) == [2, 3, 4]).await;

    let mut totals = Totals::default();
    totals.add(&sinks);
    let sink = format!("riemann-tcp:127.0.0.1:{port}");
    assert!(totals.get("agent.sink_errors", &sink) >= 1.0);
    assert_eq!(totals.get("agent.sink_dropped", &sink), 0.0, "nothing lost");
    sinks.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_down_then_up_count_errors_and_resume() {
    let (statsd_port, udp_port, tcp_port) = (free_udp_port(), free_udp_port(), free_tcp_port());
    let args = SinkArgs {
        statsd: vec![format!("127.0.0.1:{statsd_port}")],
        riemann: vec![
            format!("udp://127.0.0.1:{udp_port}"),
            format!("tcp://127.0.0.1:{tcp_port}"),
        ],
        riemann_timeout: Duration::from_millis(500).into(),
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, _) = test_time();
    let probe = |phase: &str, seq: u64| {
        snapshot(
            t,
            vec![Metric::gauge(format!("probe.{phase}"), vec![], seq as f64)],
        )
    };

    // Nothing listens: errors are counted, nothing panics.
    for seq in 0..5 {
        sinks.send(probe("down", seq));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut totals = Totals::default();
    totals.add(&sinks);
    let names = [
        format!("statsd:127.0.0.1:{statsd_port}"),
        format!("riemann-udp:127.0.0.1:{udp_port}"),
        format!("riemann-tcp:127.0.0.1:{tcp_port}"),
    ];
    for n in &names {
        assert!(
            totals.get("agent.sink_errors", n) >= 1.0,
            "{n}: {:?}",
            totals.0
        );
    }

    // Every peer comes up: delivery resumes, the collector side goes on sending each interval.
    let statsd = Statsd::start(statsd_port).await;
    let mut udp = Riemann::start("udp", udp_port, &[]);
    let mut tcp = Riemann::start("tcp", tcp_port, &[]);
    let deadline = Instant::now() + WAIT;
    let mut seq = 0;
    loop {
        sinks.send(probe("up", seq));
        seq += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
        udp.drain();
        tcp.drain();
        let g = statsd.query("gauges").await;
        if g.contains_key("ebpf.probe.up")
            && has_service(&udp.events, "ebpf probe.up")
            && has_service(&tcp.events, "ebpf probe.up")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivery did not resume: statsd {g:?}, udp {:?}, tcp {:?}",
            udp.events,
            tcp.events
        );
    }
    // TCP keeps what it could not send while the server was away (the queue holds 60).
    tcp.wait("every interval sent while down", |ev| {
        (0..5).all(|s| {
            ev.iter()
                .any(|e| e["service"] == "ebpf probe.down" && e["metric_d"] == s as f64)
        })
    })
    .await;
    totals.add(&sinks);
    sinks.shutdown(Duration::from_secs(2)).await;
}

/// The proto in the repo (the reference for the hand-written prost structs) says the same as
/// the one Debian ships in riemann-c-client, comments and blank lines aside.
#[test]
fn repo_proto_matches_debians_riemann_proto() {
    let strip = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                l.split("//")
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|l| !l.is_empty())
            .collect()
    };
    let ours = std::fs::read_to_string(repo().join("agent/proto/riemann.proto")).unwrap();
    let debian = std::fs::read_to_string(peers().join("proto/riemann.proto")).unwrap();
    assert_eq!(strip(&ours), strip(&debian));
}

// ---- end to end: the running agent, on the real kernel, into the real peers -----------------

/// Runs `ebpf-agent run --output json ARGS`, making `getppid_calls` once it has attached;
/// returns its JSON intervals.
async fn run_agent(args: &[String], getppid_calls: usize) -> Vec<Value> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ebpf-agent"))
        .args(["run", "--output", "json"])
        .args(if args.iter().any(|a| a == "--state-dir") {
            vec![]
        } else {
            vec!["--state-dir".to_string(), common::temp_state_dir()]
        })
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line),
        )
        .await
        .expect("agent not ready in time")
        .unwrap();
        assert!(n > 0, "agent exited before attaching");
        eprint!("[agent] {line}");
        if line.contains("collecting:") {
            break;
        }
    }
    for _ in 0..getppid_calls {
        // SAFETY: no preconditions.
        unsafe { libc::getppid() };
    }
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::stderr()).await });
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("agent did not stop")
        .unwrap();
    assert!(out.status.success(), "agent exit {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn printed<'a>(
    intervals: &'a [Value],
    name: &'a str,
    tag: Option<(&'a str, &'a str)>,
) -> impl Iterator<Item = (i64, f64)> + 'a {
    intervals.iter().flat_map(move |i| {
        let t = i["time"].as_i64().unwrap();
        i["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(move |m| m["name"] == name && tag.is_none_or(|(k, v)| m["tags"][k] == v))
            .map(move |m| (t, m["value"].as_f64().unwrap()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_to_statsd_holds_what_the_agent_printed() {
    const N: usize = 30_000;
    let statsd = Statsd::start(free_udp_port()).await;
    let args = vec![
        "--probes".into(),
        "syscall,procfs".into(),
        "--duration".into(),
        "3s".into(),
        "--statsd".into(),
        format!("127.0.0.1:{}", statsd.port),
    ];
    let intervals = run_agent(&args, N).await;
    let printed_count: f64 = printed(&intervals, "syscall.count", Some(("syscall", "getppid")))
        .map(|(_, v)| v)
        .sum();
    assert!(printed_count >= N as f64);
    let (_, last_mem) = printed(&intervals, "mem.total_bytes", None).last().unwrap();
    let (_, last_p99) = printed(
        &intervals,
        "syscall.latency_us.p99",
        Some(("syscall", "getppid")),
    )
    .last()
    .unwrap();
    // statsd's counters add up every interval sent (no flush during the test); gauges keep the last.
    let counters = statsd
        .wait("counters", |c| {
            c.get("ebpf.syscall.getppid.count") == Some(&printed_count)
        })
        .await;
    assert_eq!(counters["ebpf.syscall.getppid.count"], printed_count);
    assert_eq!(counters["ebpf.agent.heartbeat"], intervals.len() as f64);
    let gauges = statsd
        .wait("gauges", |g| g.contains_key("ebpf.mem.total_bytes"))
        .await;
    assert_eq!(gauges["ebpf.mem.total_bytes"], last_mem);
    assert!(gauges.contains_key("ebpf.syscall.getppid.latency_us.p99"));
    assert_eq!(gauges["ebpf.agent.syscall.probe_up"], 1.0);
    assert_eq!(
        counters
            .get("statsd.bad_lines_seen")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    // The p99 of the last interval containing getppid may differ from the last gauge if getppid
    // was not called in the last interval; it was printed at least once.
    assert!(last_p99 > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_to_riemann_udp_and_tcp_carry_what_the_agent_printed() {
    const N: usize = 20_000;
    let mut udp = Riemann::start("udp", 0, &[]);
    let mut tcp = Riemann::start("tcp", 0, &[]);
    let args = vec![
        "--probes".into(),
        "syscall,procfs".into(),
        "--duration".into(),
        "2s".into(),
        "--host".into(),
        "e2e-host".into(),
        "--riemann".into(),
        format!("127.0.0.1:{}", udp.port),
        "--riemann".into(),
        format!("tcp://127.0.0.1:{}", tcp.port),
    ];
    let intervals = run_agent(&args, N).await;
    let counts: Vec<(i64, f64)> =
        printed(&intervals, "syscall.count", Some(("syscall", "getppid"))).collect();
    assert!(counts.iter().map(|c| c.1).sum::<f64>() >= N as f64);
    let heartbeats = intervals.len();
    for (rx, transport) in [(&mut udp, "udp"), (&mut tcp, "tcp")] {
        rx.wait("every heartbeat", |ev| {
            ev.iter()
                .filter(|e| e["service"] == "ebpf agent.heartbeat")
                .count()
                == heartbeats
        })
        .await;
        for &(t, v) in &counts {
            let e = rx
                .with_service("ebpf syscall.count getppid")
                .find(|e| e["time"] == t)
                .unwrap_or_else(|| panic!("{transport}: no getppid count at {t}"));
            assert_eq!(e["host"], "e2e-host");
            assert_eq!(e["metric_sint64"], v as i64);
            assert_eq!(e["metric_d"], v);
            assert_eq!(e["ttl"], 2.0);
            assert_eq!(e["state"], "ok");
            assert_eq!(e["attributes"], json!([["syscall", "getppid"]]));
            assert_eq!(e["transport"], transport);
        }
    }
    // By default a UDP datagram fits a 1500-byte MTU.
    let largest = udp
        .events
        .iter()
        .map(|e| e["msg_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(largest <= 1432, "a datagram of {largest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riemann_quiet_counters_are_kept_alive_as_zero() {
    let mut rx = Riemann::start("udp", 0, &[]);
    let args = SinkArgs {
        riemann: vec![format!("127.0.0.1:{}", rx.port)],
        riemann_keepalive: Duration::from_secs(2).into(),
        ..Default::default()
    };
    let sinks = Sinks::start(&args, Duration::from_secs(1)).await.unwrap();
    let (t, secs) = test_time();
    sinks.send(snapshot(t, riemann_metrics()));
    // Three intervals without the counter (and the latency gauge): 0 twice, then nothing.
    for i in 1..=3 {
        let load = vec![Metric::gauge("load.1", vec![], 0.5)];
        sinks.send(snapshot(t + Duration::from_secs(i), load));
    }
    rx.wait("every load.1", |ev| {
        ev.iter().filter(|e| e["service"] == "ebpf load.1").count() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rx.drain();
    let ops: Vec<(i64, i64)> = rx
        .with_service("ebpf disk.ops vda write")
        .map(|e| {
            (
                e["time"].as_i64().unwrap(),
                e["metric_sint64"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [(secs, 42), (secs + 1, 0), (secs + 2, 0)]);
    assert_eq!(
        rx.with_service("ebpf syscall.latency_us.p99 read").count(),
        1
    );
    sinks.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_burst_of_slow_syscalls_reaches_riemann_and_clears() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut rx = Riemann::start("tcp", 0, &[]);
    let dir = std::env::temp_dir().join(format!("ebpf-agent-anomaly-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    // Short intervals and a short warm-up so the test fits in seconds.
    std::fs::write(
        &config,
        "interval = \"250ms\"\n[anomaly]\nwarmup = 16\nraise_after = 2\nclear_after = 4\n",
    )
    .unwrap();
    let ms = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let load = common::sleeper(ms.clone(), stop.clone());
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--probes".into(),
        "syscall".into(),
        "--duration".into(),
        "16s".into(),
        "--state-dir".into(),
        dir.display().to_string(),
        "--riemann".into(),
        format!("tcp://127.0.0.1:{}", rx.port),
    ];
    let agent = tokio::spawn(async move { run_agent(&args, 0).await });
    // Steady 1 ms sleeps for 7 s (28 intervals: past the warm-up), 15 ms for 3 s, then 1 ms.
    tokio::time::sleep(Duration::from_secs(7)).await;
    ms.store(15, Ordering::Relaxed);
    let burst_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ms.store(1, Ordering::Relaxed);
    let intervals = agent.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let service = "ebpf syscall.latency_us.mean nanosleep";
    rx.wait("the nanosleep p50 events", |ev| {
        ev.iter().any(|e| e["service"] == service)
    })
    .await;
    let mut seen: Vec<(f64, String)> = rx
        .with_service(service)
        .map(|e| {
            (
                e["time_micros"].as_f64().unwrap() / 1e6,
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    let raised = seen
        .iter()
        .find(|(t, s)| *t >= burst_start && s != "ok")
        .unwrap_or_else(|| panic!("no warning/critical for {service} after the burst: {seen:?}"));
    assert!(
        raised.0 - burst_start <= 3.0,
        "raised {:.2} s after the burst began",
        raised.0 - burst_start
    );
    assert!(
        seen.iter().any(|(t, s)| *t > raised.0 && s == "ok"),
        "back to ok after the burst: {seen:?}"
    );
    // The raised event says why, in words.
    let described = rx
        .with_service(service)
        .find(|e| e["state"] != "ok")
        .and_then(|e| e["description"].as_str().map(str::to_string))
        .unwrap();
    assert!(
        described.contains("nanosleep") && described.contains("usual"),
        "{described}"
    );
    // A state change also produced the summary event.
    assert!(
        rx.events
            .iter()
            .any(|e| e["service"] == "ebpf anomaly" && e["state"] != "ok")
    );
    // People get one incident: an `ebpf incident` event carrying its id, and the JSON lists it.
    let incident = rx
        .with_service("ebpf incident")
        .find(|e| e["state"] != "ok")
        .unwrap_or_else(|| panic!("no incident event: {:#?}", rx.events.len()));
    assert!(
        incident["attributes"].as_array().unwrap().iter().any(
            |a| a[0] == "incident" && a[1].as_str().is_some_and(|id| id.parse::<u64>().is_ok())
        ),
        "{incident}"
    );
    assert!(intervals.iter().any(|i| {
        i["incidents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["state"] != "ok"))
    }));
    // The JSON output lists the anomalies too.
    assert!(intervals.iter().any(|i| {
        i["anomalies"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["name"] == "syscall.latency_us.mean" && x["tags"]["syscall"] == "nanosleep"
            })
        })
    }));
    // The baseline was saved for the next start.
    assert!(dir.join("detector.state").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
