//! StatsD (Etsy line protocol, optionally DogStatsD tags): pure encoding of a snapshot into
//! datagrams. Sending lives in [`super`].
//!
//! One line per metric, `name:value|g` for gauges and `name:value|c` for counters, lines packed
//! into datagrams of at most `max_packet` bytes separated by `\n`, a line never split.
//!
//! Names:
//! - [`StatsdTagStyle::Name`] (plain StatsD / Graphite): tag values are folded into the name,
//!   `PREFIX.[--tag values.]<first name segment>.<metric tag values>.<rest of name>`, e.g.
//!   `ebpf.syscall.read.latency_us.p99`, `ebpf.disk.vda.write.ops`.
//! - [`StatsdTagStyle::Dogstatsd`]: `PREFIX.<name>` and `|#k:v,k2:v2` (metric tags, then `--tag`s).
//!
//! Every name segment keeps only `[A-Za-z0-9_-]` (anything else becomes `_`, an empty segment is
//! `_`), so a name never holds `:`, `|`, `@`, `#`, `,`, a space or a newline whatever a tag value
//! holds. DogStatsD tag keys and values keep `[A-Za-z0-9_./-]`.
//!
//! Values never use exponent notation; NaN and infinities are skipped (and counted by the
//! caller). Etsy's statsd reads a gauge value with a leading sign as a change to the current
//! value, so a negative gauge is sent as the two lines `name:0|g` and `name:-X|g`, kept together
//! in one datagram: the result is `-X` whatever the server held before.

use crate::snapshot::{Kind, Metric, Snapshot};

use super::{Datagram, Encoded, StatsdTagStyle};

/// What the StatsD encoder needs from the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Dotted prefix, e.g. `ebpf` (may be empty).
    pub prefix: String,
    pub style: StatsdTagStyle,
    /// `--tag` pairs, added to every metric.
    pub tags: Vec<(String, String)>,
    /// Largest datagram payload, in bytes.
    pub max_packet: usize,
}

/// Encodes one interval: every finite metric once, packed into datagrams of at most
/// `cfg.max_packet` bytes. `skipped` counts non-finite values and lines longer than a datagram.
pub fn encode(snap: &Snapshot, cfg: &Config) -> Encoded {
    // One line buffer for the whole interval, the prefix and `--tag`s sanitised once: this runs
    // every interval for every metric, and allocating per line was a fifth of the idle agent.
    let w = Writer::new(cfg);
    let mut line = Vec::with_capacity(256);
    let mut packer = Packer::new(cfg.max_packet);
    let mut skipped = 0;
    for m in &snap.metrics {
        line.clear();
        if w.entry(m, &mut line) {
            packer.push(&line);
        } else {
            skipped += 1;
        }
    }
    let (datagrams, oversize) = packer.finish();
    Encoded {
        datagrams,
        skipped: skipped + oversize,
    }
}

/// The line(s) for one metric: one line, or two (`0` then the value) for a negative gauge.
/// `None` when the value is NaN or infinite.
pub fn entry(m: &Metric, cfg: &Config) -> Option<String> {
    let mut line = Vec::new();
    Writer::new(cfg)
        .entry(m, &mut line)
        .then(|| String::from_utf8(line).expect("StatsD lines are ASCII"))
}

/// The metric's StatsD name (see the module doc).
pub fn name(m: &Metric, cfg: &Config) -> String {
    let mut out = Vec::new();
    Writer::new(cfg).name(m, &mut out);
    String::from_utf8(out).expect("StatsD names are ASCII")
}

/// What every line of one interval shares, sanitised once.
struct Writer {
    style: StatsdTagStyle,
    /// The prefix's segments, then (plain style) the `--tag` values, dot-separated.
    head: Vec<u8>,
    /// DogStatsD: the `--tag`s as `k:v,...` (empty when none).
    global_tags: Vec<u8>,
}

impl Writer {
    fn new(cfg: &Config) -> Self {
        let mut head = Vec::with_capacity(cfg.prefix.len() + 16);
        if !cfg.prefix.is_empty() {
            cfg.prefix
                .split('.')
                .for_each(|seg| push_segment(&mut head, seg));
        }
        let mut global_tags = Vec::new();
        match cfg.style {
            StatsdTagStyle::Name => cfg
                .tags
                .iter()
                .for_each(|(_, v)| push_segment(&mut head, v)),
            StatsdTagStyle::Dogstatsd => {
                for (k, v) in &cfg.tags {
                    if !global_tags.is_empty() {
                        global_tags.push(b',');
                    }
                    push_tag(&mut global_tags, k, v);
                }
            }
        }
        Writer {
            style: cfg.style,
            head,
            global_tags,
        }
    }

    /// Appends the name to `out`, which must be empty (a segment's dot depends on it).
    fn name(&self, m: &Metric, out: &mut Vec<u8>) {
        debug_assert!(out.is_empty());
        out.extend_from_slice(&self.head);
        match self.style {
            StatsdTagStyle::Dogstatsd => push_segments(out, &m.name),
            StatsdTagStyle::Name => {
                let (first, rest) = match m.name.bytes().position(|b| b == b'.') {
                    Some(dot) => (&m.name[..dot], Some(&m.name[dot + 1..])),
                    None => (&*m.name, None),
                };
                push_segment(out, first);
                m.tags.iter().for_each(|(_, v)| push_segment(out, v));
                if let Some(rest) = rest {
                    push_segments(out, rest);
                }
            }
        }
    }

    /// `|#k:v,...`: the metric's tags, then the `--tag`s; nothing when there are none.
    fn suffix(&self, m: &Metric, out: &mut Vec<u8>) {
        if self.style != StatsdTagStyle::Dogstatsd
            || (m.tags.is_empty() && self.global_tags.is_empty())
        {
            return;
        }
        out.extend_from_slice(b"|#");
        for (i, (k, v)) in m.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_tag(out, k, v);
        }
        if !self.global_tags.is_empty() {
            if !m.tags.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&self.global_tags);
        }
    }

    /// Writes the metric's line(s) into the empty `out`; false (`out` left empty) for NaN or
    /// infinity.
    fn entry(&self, m: &Metric, out: &mut Vec<u8>) -> bool {
        let (v, kind) = match m.kind {
            Kind::Counter => (m.value.round(), b'c'),
            Kind::Gauge => (m.value, b'g'),
        };
        if !v.is_finite() {
            return false;
        }
        self.name(m, out);
        let name_end = out.len();
        if kind == b'g' && v < 0.0 {
            // Reset first: Etsy's statsd adds a signed gauge value to the current one.
            out.extend_from_slice(b":0|g");
            self.suffix(m, out);
            out.push(b'\n');
            out.extend_from_within(..name_end);
        }
        out.push(b':');
        write_value(v, out);
        out.extend_from_slice(&[b'|', kind]);
        self.suffix(m, out);
        true
    }
}

/// Appends `.` (unless first) and the sanitised segment (`_` when empty).
fn push_segment(out: &mut Vec<u8>, seg: &str) {
    if !out.is_empty() {
        out.push(b'.');
    }
    push_sanitized(out, seg, is_name_byte);
}

/// [`push_segment`] of each of the dotted `name`'s segments, in one pass over its bytes.
fn push_segments(out: &mut Vec<u8>, name: &str) {
    if !name.is_ascii() {
        return name.split('.').for_each(|seg| push_segment(out, seg));
    }
    if is_clean_dotted(name.as_bytes()) {
        // The usual case (every catalogue name): copied whole rather than byte by byte, which
        // was a tenth of the encoding.
        if !out.is_empty() {
            out.push(b'.');
        }
        return out.extend_from_slice(name.as_bytes());
    }
    out.reserve(name.len() * 2 + 2);
    if !out.is_empty() {
        out.push(b'.');
    }
    let mut empty = true;
    for b in name.bytes() {
        if b == b'.' {
            if empty {
                out.push(b'_');
            }
            out.push(b'.');
            empty = true;
        } else {
            out.push(if is_name_byte(b) { b } else { b'_' });
            empty = false;
        }
    }
    if empty {
        out.push(b'_');
    }
}

/// Whether `name`'s segments need no change: name bytes only, none empty.
fn is_clean_dotted(name: &[u8]) -> bool {
    let mut prev = b'.'; // a leading dot is an empty first segment
    for &b in name {
        if !(is_name_byte(b) || (b == b'.' && prev != b'.')) {
            return false;
        }
        prev = b;
    }
    prev != b'.'
}

/// Appends `k:v`, both sanitised for a DogStatsD tag.
fn push_tag(out: &mut Vec<u8>, k: &str, v: &str) {
    push_sanitized(out, k, is_tag_byte);
    out.push(b':');
    push_sanitized(out, v, is_tag_byte);
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_tag_byte(b: u8) -> bool {
    is_name_byte(b) || b == b'.' || b == b'/'
}

#[cfg(test)]
fn is_name_char(c: char) -> bool {
    c.is_ascii() && is_name_byte(c as u8)
}

#[cfg(test)]
fn is_tag_char(c: char) -> bool {
    c.is_ascii() && is_tag_byte(c as u8)
}

/// Every character outside `keep` (all ASCII) becomes one `_`; an empty string is `_`.
fn push_sanitized(out: &mut Vec<u8>, s: &str, keep: impl Fn(u8) -> bool) {
    if s.is_empty() {
        out.push(b'_');
    } else if s.bytes().all(&keep) {
        // The usual case (catalogue names, syscall and device names): copied as they are.
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(s.chars().map(|c| {
            if c.is_ascii() && keep(c as u8) {
                c as u8
            } else {
                b'_'
            }
        }));
    }
}

/// Decimal text every StatsD server parses: no exponent, no `inf`/`NaN` (→ `None`), `-0` is `0`.
/// Whole numbers print without a fraction (`12`), others with the shortest exact digits.
pub fn format_value(v: f64) -> Option<String> {
    if !v.is_finite() {
        return None;
    }
    let mut out = Vec::new();
    write_value(v, &mut out);
    Some(String::from_utf8(out).expect("decimal digits"))
}

/// [`format_value`] of a finite `v`, appended to `out`.
fn write_value(v: f64, out: &mut Vec<u8>) {
    use std::io::Write;
    debug_assert!(v.is_finite());
    let mut ryu_buf = ryu::Buffer::new();
    if v == 0.0 {
        out.push(b'0');
    } else if v.fract() == 0.0 && v.abs() < (1u64 << 53) as f64 {
        // Exact in an i64, and printed with the same digits as f64's `Display`, at a fraction
        // of the cost: counts and most byte gauges are whole.
        let mut n = v.abs() as u64;
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        while n > 0 {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        if v < 0.0 {
            out.push(b'-');
        }
        out.extend_from_slice(&digits[i..]);
    } else if v.fract() != 0.0
        && let s = ryu_buf.format_finite(v)
        && !s.contains('e')
        && significant_digits(s) <= 15
    {
        // Latencies and percentages are fractions, and `Display` was a sixth of the encoding.
        // Both write the shortest digits that read back as `v`; with at most 15 significant
        // digits those are unique (two such decimals are further apart than two doubles), so
        // Ryu's are `Display`'s, at a fraction of the cost. Beyond 15 the two may pick different
        // last digits, and below about 1e-5 Ryu uses exponent notation: those go through
        // `Display`. (A fraction is below 2^53, so Ryu never writes it as `X.0`.)
        out.extend_from_slice(s.as_bytes());
    } else {
        // Rust's `Display` for f64 never uses exponent notation and round-trips exactly.
        write!(out, "{v}").expect("writing to a Vec");
    }
}

/// Digits of a decimal without exponent, leading zeros (and sign, point) not counted.
fn significant_digits(s: &str) -> usize {
    s.bytes()
        .skip_while(|&b| matches!(b, b'-' | b'0' | b'.'))
        .filter(u8::is_ascii_digit)
        .count()
}

/// Packs entries into datagrams in order: entries joined by `\n`, each datagram at most `max`
/// bytes, an entry never split. Returns the datagrams and how many entries were longer than
/// `max` on their own (left out).
pub fn pack(entries: impl IntoIterator<Item = String>, max: usize) -> (Vec<Datagram>, u64) {
    let mut p = Packer::new(max);
    for e in entries {
        p.push(e.as_bytes());
    }
    p.finish()
}

/// [`pack`], one entry at a time.
struct Packer {
    max: usize,
    out: Vec<Datagram>,
    cur: Datagram,
    oversize: u64,
}

impl Packer {
    fn new(max: usize) -> Self {
        Packer {
            max,
            out: Vec::new(),
            cur: Datagram::default(),
            oversize: 0,
        }
    }

    fn push(&mut self, e: &[u8]) {
        if e.len() > self.max {
            self.oversize += 1;
            return;
        }
        if !self.cur.bytes.is_empty() && self.cur.bytes.len() + 1 + e.len() > self.max {
            let full = std::mem::replace(
                &mut self.cur,
                Datagram {
                    bytes: Vec::with_capacity(self.max),
                    metrics: 0,
                },
            );
            self.out.push(full);
        }
        if self.cur.bytes.is_empty() {
            self.cur.bytes.reserve(self.max);
        } else {
            self.cur.bytes.push(b'\n');
        }
        self.cur.bytes.extend_from_slice(e);
        self.cur.metrics += 1;
    }

    fn finish(mut self) -> (Vec<Datagram>, u64) {
        if !self.cur.bytes.is_empty() {
            self.out.push(self.cur);
        }
        (self.out, self.oversize)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::snapshot::Tags;

    fn cfg(style: StatsdTagStyle) -> Config {
        Config {
            prefix: "ebpf".into(),
            style,
            tags: vec![],
            max_packet: 1432,
        }
    }

    fn snap(metrics: Vec<Metric>) -> Snapshot {
        Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            interval: Duration::from_secs(1),
            host: "h".into(),
            metrics,
        }
    }

    #[test]
    fn names_fold_tag_values_after_the_first_segment() {
        let c = cfg(StatsdTagStyle::Name);
        let m = Metric::gauge(
            "syscall.latency_us.p99",
            vec![("syscall", "read".into())],
            1.0,
        );
        assert_eq!(name(&m, &c), "ebpf.syscall.read.latency_us.p99");
        let m = Metric::counter(
            "disk.ops",
            vec![("device", "vda".into()), ("op", "write".into())],
            3,
        );
        assert_eq!(name(&m, &c), "ebpf.disk.vda.write.ops");
        let m = Metric::gauge("load.1", vec![], 0.5);
        assert_eq!(name(&m, &c), "ebpf.load.1");
        let m = Metric::gauge("uptime", vec![("k", "v".into())], 0.5);
        assert_eq!(name(&m, &c), "ebpf.uptime.v");
    }

    #[test]
    fn global_tags_go_right_after_the_prefix() {
        let mut c = cfg(StatsdTagStyle::Name);
        c.prefix = "ebpf.prod".into();
        c.tags = vec![("dc".into(), "par1".into())];
        let m = Metric::counter("syscall.count", vec![("syscall", "read".into())], 1);
        assert_eq!(name(&m, &c), "ebpf.prod.par1.syscall.read.count");
        c.prefix = String::new();
        c.tags.clear();
        assert_eq!(name(&m, &c), "syscall.read.count");
    }

    #[test]
    fn hostile_tag_values_are_sanitised() {
        let hostile = [
            "a:b|c@d#e f\ng",
            "",
            "..",
            "é/ü\u{0}\r\t,=;",
            "x:1|c\ny:2|g",
            "#|@:",
        ];
        for style in [StatsdTagStyle::Name, StatsdTagStyle::Dogstatsd] {
            let mut c = cfg(style);
            c.tags = vec![("env".into(), "p r:o|d".into())];
            for h in hostile {
                let m = Metric::gauge(
                    "tcp.rtt_us.p50",
                    vec![("peer", h.to_string()), ("port", h.to_string())],
                    -2.5,
                );
                let n = name(&m, &c);
                assert!(
                    n.chars().all(|ch| is_name_char(ch) || ch == '.'),
                    "{style:?} {h:?} → {n:?}"
                );
                assert!(!n.contains(".."), "{n:?}");
                assert!(!n.starts_with('.') && !n.ends_with('.'), "{n:?}");
                let e = entry(&m, &c).unwrap();
                // Exactly the two lines of a negative gauge, each `name:value|g[|#tags]`.
                let lines: Vec<&str> = e.split('\n').collect();
                assert_eq!(lines.len(), 2, "{e:?}");
                for l in lines {
                    let (lname, value, kind, tags) = parse_line(l).unwrap();
                    assert_eq!(lname, n);
                    assert_eq!(kind, "g");
                    assert!(value == 0.0 || value == -2.5);
                    match style {
                        StatsdTagStyle::Name => assert!(tags.is_empty()),
                        StatsdTagStyle::Dogstatsd => {
                            assert_eq!(tags.len(), 3, "{l:?}");
                            for (k, v) in tags {
                                assert!(k.chars().all(is_tag_char) && !k.is_empty());
                                assert!(v.chars().all(is_tag_char) && !v.is_empty());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dogstatsd_tags_and_names() {
        let mut c = cfg(StatsdTagStyle::Dogstatsd);
        c.tags = vec![("env".into(), "prod".into())];
        let m = Metric::gauge(
            "syscall.latency_us.p99",
            vec![("syscall", "read".into())],
            12.5,
        );
        assert_eq!(
            entry(&m, &c).unwrap(),
            "ebpf.syscall.latency_us.p99:12.5|g|#syscall:read,env:prod"
        );
        c.tags.clear();
        let m = Metric::counter("net.drops", vec![], 7);
        assert_eq!(entry(&m, &c).unwrap(), "ebpf.net.drops:7|c");
    }

    #[test]
    fn float_formatting() {
        assert_eq!(format_value(0.5).unwrap(), "0.5");
        assert_eq!(format_value(12.0).unwrap(), "12");
        assert_eq!(format_value(-0.0).unwrap(), "0");
        assert_eq!(format_value(-3.25).unwrap(), "-3.25");
        assert_eq!(format_value(1e21).unwrap(), "1000000000000000000000");
        assert_eq!(format_value(1.5e-7).unwrap(), "0.00000015");
        assert_eq!(format_value(0.1 + 0.2).unwrap(), "0.30000000000000004");
        assert_eq!(format_value(f64::NAN), None);
        assert_eq!(format_value(f64::INFINITY), None);
        assert_eq!(format_value(f64::NEG_INFINITY), None);
        for v in [
            f64::MIN_POSITIVE,
            f64::MAX,
            -f64::MAX,
            123456.789,
            1.0 / 3.0,
            9007199254740993.0,
        ] {
            let s = format_value(v).unwrap();
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
            );
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
        }
    }

    /// The Ryu path writes exactly what `Display` writes, for the values the agent sends
    /// (latencies in µs from ns, percentages, ratios) and across magnitudes and signs.
    #[test]
    fn fractions_are_written_as_display_writes_them() {
        let mut values = vec![
            1e-5,
            9.99e-6,
            1.5e-7,
            0.1 + 0.2,
            1.0 / 3.0,
            4503599627370495.5,
        ];
        // A deterministic spread (xorshift): ns → µs, percentages, raw bit patterns.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x % 100_000_000) as f64 / 1000.0);
            values.push((x % 1_000_000) as f64 / 10_000.0 * 1.7);
            let bits = f64::from_bits(x);
            if bits.is_finite() {
                values.push(bits);
            }
        }
        for v in values.into_iter().flat_map(|v| [v, -v]) {
            let mut got = Vec::new();
            write_value(v, &mut got);
            let want = if v == 0.0 {
                "0".to_string()
            } else {
                format!("{v}")
            };
            assert_eq!(String::from_utf8(got).unwrap(), want, "{v:e}");
        }
    }

    #[test]
    fn counters_are_integers_and_non_finite_values_are_skipped() {
        let c = cfg(StatsdTagStyle::Name);
        let s = snap(vec![
            Metric::counter("a.count", vec![], 12),
            Metric::gauge("b.gauge", vec![], f64::NAN),
            Metric::gauge("c.gauge", vec![], f64::INFINITY),
            Metric::gauge("d.gauge", vec![], 0.25),
        ]);
        let enc = encode(&s, &c);
        assert_eq!(enc.skipped, 2);
        assert_eq!(enc.datagrams.len(), 1);
        assert_eq!(
            std::str::from_utf8(&enc.datagrams[0].bytes).unwrap(),
            "ebpf.a.count:12|c\nebpf.d.gauge:0.25|g"
        );
        assert_eq!(enc.datagrams[0].metrics, 2);
    }

    #[test]
    fn an_entry_longer_than_a_datagram_is_left_out_and_counted() {
        let (d, over) = pack(["x".repeat(10), "y".repeat(11), "z".repeat(4)], 10);
        assert_eq!(over, 1);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].bytes, b"xxxxxxxxxx");
        assert_eq!(d[1].bytes, b"zzzz");
    }

    /// The encoder as it was before it wrote into reused buffers (`format!` per line): the
    /// reference the faster one must match byte for byte.
    fn reference_entry(m: &Metric, cfg: &Config) -> Option<String> {
        fn sanitized(out: &mut String, s: &str, keep: fn(char) -> bool) {
            if s.is_empty() {
                out.push('_');
            }
            out.extend(s.chars().map(|c| if keep(c) { c } else { '_' }));
        }
        let mut name = String::new();
        let mut push = |seg: &str| {
            if !name.is_empty() {
                name.push('.');
            }
            sanitized(&mut name, seg, is_name_char);
        };
        if !cfg.prefix.is_empty() {
            cfg.prefix.split('.').for_each(&mut push);
        }
        let mut segs = m.name.split('.');
        match cfg.style {
            StatsdTagStyle::Dogstatsd => segs.for_each(&mut push),
            StatsdTagStyle::Name => {
                cfg.tags.iter().for_each(|(_, v)| push(v));
                if let Some(first) = segs.next() {
                    push(first);
                }
                m.tags.iter().for_each(|(_, v)| push(v));
                segs.for_each(&mut push);
            }
        }
        let mut tags = String::new();
        if cfg.style == StatsdTagStyle::Dogstatsd {
            let pairs = m
                .tags
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain(cfg.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            for (k, v) in pairs {
                tags.push(if tags.is_empty() { '#' } else { ',' });
                sanitized(&mut tags, k, is_tag_char);
                tags.push(':');
                sanitized(&mut tags, v, is_tag_char);
            }
        }
        let suffix = if tags.is_empty() {
            tags
        } else {
            format!("|{tags}")
        };
        let value = |v: f64| {
            if !v.is_finite() {
                None
            } else if v == 0.0 {
                Some("0".to_owned())
            } else {
                Some(format!("{v}"))
            }
        };
        match m.kind {
            Kind::Counter => {
                let v = value(m.value.round())?;
                Some(format!("{name}:{v}|c{suffix}"))
            }
            Kind::Gauge => {
                let v = value(m.value)?;
                if v.starts_with('-') {
                    Some(format!("{name}:0|g{suffix}\n{name}:{v}|g{suffix}"))
                } else {
                    Some(format!("{name}:{v}|g{suffix}"))
                }
            }
        }
    }

    #[test]
    fn lines_match_the_reference_encoder_byte_for_byte() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let prefixes = ["", "ebpf", "ebpf.prod", "a..b", "é.x"];
        for round in 0..200 {
            let mut c = cfg(if round % 2 == 0 {
                StatsdTagStyle::Name
            } else {
                StatsdTagStyle::Dogstatsd
            });
            c.prefix = prefixes[round % prefixes.len()].into();
            c.tags = (0..round % 3)
                .map(|_| (rng.text(6), rng.text(10)))
                .collect();
            let mut s = random_snapshot(&mut rng, 50);
            // Names with empty segments, non-ASCII and reserved characters too.
            for m in s.metrics.iter_mut().step_by(3) {
                m.name = rng.text(24).into();
            }
            let mut want = vec![];
            for m in &s.metrics {
                assert_eq!(entry(m, &c), reference_entry(m, &c), "{m:?} {c:?}");
                want.extend(reference_entry(m, &c));
            }
            let (datagrams, oversize) = pack(want, c.max_packet);
            let enc = encode(&s, &c);
            assert_eq!(enc.datagrams, datagrams);
            assert_eq!(
                enc.skipped,
                oversize + s.metrics.iter().filter(|m| entry(m, &c).is_none()).count() as u64
            );
        }
        // Whole numbers take the integer path: its edges against f64's `Display`.
        for v in [
            1.0,
            -1.0,
            9.0,
            10.0,
            -4096.0,
            123_456_789.0,
            9_007_199_254_740_991.0,
            -9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
        ] {
            assert_eq!(format_value(v).unwrap(), format!("{v}"));
        }
    }

    /// A parsed line: name, value, type, DogStatsD tags.
    type Line = (String, f64, String, Vec<(String, String)>);

    /// Splits `name:value|type[|#k:v,...]`, rejecting anything a StatsD server would misread.
    fn parse_line(l: &str) -> Option<Line> {
        let (name, rest) = l.split_once(':')?;
        let mut parts = rest.split('|');
        let value = parts.next()?;
        let kind = parts.next()?;
        let tags = match parts.next() {
            None => vec![],
            Some(t) => t
                .strip_prefix('#')?
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once(':')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect::<Option<Vec<_>>>()?,
        };
        if parts.next().is_some() || name.is_empty() {
            return None;
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return None;
        }
        Some((name.to_owned(), value.parse().ok()?, kind.to_owned(), tags))
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn text(&mut self, max_len: u64) -> String {
            const ALPHABET: &[char] = &[
                'a', 'Z', '0', '9', '_', '-', '.', ':', '|', '@', '#', ',', ' ', '\n', '/', 'é',
                '\u{0}', '=',
            ];
            (0..self.below(max_len + 1))
                .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
                .collect()
        }
        fn value(&mut self) -> f64 {
            match self.below(8) {
                0 => 0.0,
                1 => -(self.below(1_000_000) as f64) / 7.0,
                2 => f64::from_bits(self.next()), // anything, NaN and inf included
                3 => self.below(u32::MAX as u64) as f64 * 1e6,
                _ => self.below(1_000_000) as f64 / 64.0,
            }
        }
    }

    const KEYS: [&str; 4] = ["syscall", "device", "op", "peer"];

    fn random_snapshot(rng: &mut Rng, n: usize) -> Snapshot {
        let metrics = (0..n)
            .map(|i| {
                let tags: Tags = (0..rng.below(4) as usize)
                    .map(|k| (KEYS[k], rng.text(40)))
                    .collect();
                // A unique, clean name per metric, so every metric is found again by name.
                let name = format!("m{i}.x{}.p99", rng.below(100));
                if rng.below(2) == 0 {
                    Metric::counter(name, tags, rng.below(1 << 40))
                } else {
                    Metric::gauge(name, tags, rng.value())
                }
            })
            .collect();
        snap(metrics)
    }

    #[test]
    fn random_snapshots_pack_within_the_limit_and_parse_back_exactly() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let style = if round % 2 == 0 {
                StatsdTagStyle::Name
            } else {
                StatsdTagStyle::Dogstatsd
            };
            let max = [64, 200, 512, 1432, 8932][round % 5];
            let mut c = cfg(style);
            c.max_packet = max;
            if round % 3 == 0 {
                c.tags = vec![("env".into(), rng.text(12))];
            }
            let n = rng.below(400) as usize;
            let s = random_snapshot(&mut rng, n);
            let enc = encode(&s, &c);

            // Expected: one entry per finite metric that fits, keyed by the metric index.
            let mut expected: HashMap<String, (f64, &'static str)> = HashMap::new();
            let mut skipped = 0;
            for m in &s.metrics {
                let kind = if m.kind == Kind::Counter { "c" } else { "g" };
                match entry(m, &c) {
                    Some(e) if e.len() <= max => {
                        let v = if m.kind == Kind::Counter {
                            m.value.round()
                        } else {
                            m.value
                        };
                        assert!(expected.insert(name(m, &c), (v, kind)).is_none());
                    }
                    _ => skipped += 1,
                }
            }
            assert_eq!(enc.skipped, skipped);

            let mut seen: HashMap<String, (f64, String)> = HashMap::new();
            let mut metric_count = 0;
            for d in &enc.datagrams {
                assert!(
                    d.bytes.len() <= max,
                    "datagram of {} > {max}",
                    d.bytes.len()
                );
                assert!(!d.bytes.is_empty());
                metric_count += d.metrics;
                let text = std::str::from_utf8(&d.bytes).unwrap();
                let mut lines = text.split('\n').peekable();
                while let Some(l) = lines.next() {
                    let (n, v, kind, _) =
                        parse_line(l).unwrap_or_else(|| panic!("unparsable line {l:?}"));
                    if kind == "g" && v == 0.0 {
                        // Possibly the reset line of a negative gauge: its value follows.
                        if let Some(next) = lines.peek()
                            && let Some((n2, v2, _, _)) = parse_line(next)
                            && n2 == n
                            && v2 < 0.0
                        {
                            continue;
                        }
                    }
                    assert!(seen.insert(n.clone(), (v, kind)).is_none(), "duplicate {n}");
                }
            }
            assert_eq!(metric_count, expected.len());
            assert_eq!(seen.len(), expected.len(), "lost or extra lines");
            for (n, (v, kind)) in expected {
                let (sv, sk) = &seen[&n];
                assert_eq!(*sv, v, "{n}");
                assert_eq!(sk, kind, "{n}");
            }
        }
    }
}
