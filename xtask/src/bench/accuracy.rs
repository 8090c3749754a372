//! Accuracy: the agent's latency percentiles against nanosleeps timed in userspace, and
//! against biolatency on the same fio load.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Cfg,
    load, proc,
    report::{Table, num},
    stats::{self, Log2Hist, Spread, median, percentile},
};

impl Bench {
    pub(super) fn accuracy_sleep(&mut self) -> Result<Value> {
        let secs = self.plan.sleep_secs;
        let pid = std::process::id().to_string();
        let pid: &'static str = Box::leak(pid.into_boxed_str());
        let att = self.attach(&Cfg::Agent(vec![
            "--output", "json", "--probes", "syscall", "--pid", pid,
        ]))?;
        let mut windows = Vec::new();
        for ms in [1u64, 10] {
            eprintln!("bench: accuracy: nanosleep({ms} ms) loop");
            let from = SystemTime::now();
            let samples =
                load::nanosleep_loop(Duration::from_millis(ms), Duration::from_secs_f64(secs));
            let to = SystemTime::now();
            windows.push((ms, from, to, samples));
        }
        let last_to = windows.last().map(|w| w.2).unwrap_or_else(SystemTime::now);
        if let Some(h) = att.helper.as_ref() {
            h.wait_stdout(Duration::from_secs(3), |l| {
                proc::interval_ends_after(l, last_to)
            });
        }
        let fin = att.stop()?.context("agent output")?;
        let ivs = proc::intervals(&fin.stdout);
        let mut table = Table::new(
            &format!(
                "Accuracy: raw nanosleep loops ({secs} s each), the agent (--pid self) vs the time measured around each call, interval by interval"
            ),
            &[
                "sleep",
                "calls",
                "intervals",
                "true p50 µs",
                "agent p50 µs",
                "error",
                "true p99 µs",
                "agent p99 µs",
                "error",
            ],
        );
        let mut out = Vec::new();
        for (ms, from, to, samples) in &windows {
            // Per whole agent interval: the agent's percentile and the true one over the calls
            // that returned in that interval (the agent counts a call when it exits).
            let mut per = Vec::new();
            for i in proc::inside(&ivs, *from, *to) {
                let lat: Vec<f64> = samples
                    .iter()
                    .filter(|(end, _)| *end > i.end - i.len && *end <= i.end)
                    .map(|(_, us)| *us)
                    .collect();
                let agent = |p: &str| {
                    proc::metric(
                        &i.v,
                        &format!("syscall.latency_us.{p}"),
                        &[("syscall", "nanosleep")],
                    )
                };
                per.push(json!({
                    "end": i.end,
                    "calls": lat.len(),
                    "true_p50_us": percentile(&lat, 50.0),
                    "agent_p50_us": agent("p50"),
                    "true_p99_us": percentile(&lat, 99.0),
                    "agent_p99_us": agent("p99"),
                }));
            }
            let med =
                |k: &str| median(&per.iter().filter_map(|v| v[k].as_f64()).collect::<Vec<_>>());
            let err = |a: &str, t: &str| {
                let e: Vec<f64> = per
                    .iter()
                    .filter_map(|v| {
                        Some((v[a].as_f64()? - v[t].as_f64()?) / v[t].as_f64()? * 100.0)
                    })
                    .collect();
                Spread(e)
            };
            let (e50, e99) = (
                err("agent_p50_us", "true_p50_us"),
                err("agent_p99_us", "true_p99_us"),
            );
            table.row(vec![
                format!("{ms} ms"),
                samples.len().to_string(),
                per.len().to_string(),
                num(med("true_p50_us"), 1),
                num(med("agent_p50_us"), 1),
                format!("{}%", e50.show(1)),
                num(med("true_p99_us"), 1),
                num(med("agent_p99_us"), 1),
                format!("{}%", e99.show(1)),
            ]);
            let all: Vec<f64> = samples.iter().map(|s| s.1).collect();
            out.push(json!({
                "sleep_ms": ms,
                "calls": samples.len(),
                "true_p50_us_all_calls": percentile(&all, 50.0),
                "true_p99_us_all_calls": percentile(&all, 99.0),
                "error_p50_pct": e50.json(),
                "error_p99_pct": e99.json(),
                "intervals": per,
            }));
        }
        table.note(
            "Per whole agent interval inside the loop: the agent's syscall.latency_us.p50/p99 \
             {syscall=nanosleep} (bucket midpoints: ±6.25% by design) against the percentiles of \
             the calls that returned in that interval, timed in userspace around the syscall (so \
             including entry and exit, ~1 µs). Columns: medians over the intervals; error: \
             median (min–max) of the per-interval errors.",
        );
        self.print(table);
        Ok(json!({ "secs": secs, "sleeps": out }))
    }

    pub(super) fn accuracy_disk(&mut self) -> Result<Value> {
        let secs = self.plan.fio_secs;
        let agent = self.attach(&Cfg::Agent(vec!["--output", "json", "--probes", "disk"]))?;
        let bio = match self.attach(&Cfg::Biolatency(vec!["-F", "1"])) {
            Ok(b) => b,
            Err(e) => {
                let _ = agent.stop();
                return Err(e);
            }
        };
        eprintln!("bench: accuracy: fio with the agent and biolatency -F attached together");
        let from = SystemTime::now();
        let f = self.fio(&self.fio_file, secs);
        let to = SystemTime::now();
        if let Some(h) = agent.helper.as_ref() {
            h.wait_stdout(Duration::from_secs(3), |l| proc::interval_ends_after(l, to));
        }
        let bio_out = bio.stop();
        let agent_out = agent.stop()?.context("agent output")?;
        let bio_out = bio_out?.context("biolatency output")?;
        let f = f?;
        // biolatency -F: one log2 histogram per set of request flags; the operation is the
        // flags' last word (Write, Read, Flush, ...). Summed over its intervals.
        let mut hists: BTreeMap<String, Log2Hist> = BTreeMap::new();
        let mut class = "all".to_string();
        for (_, l) in &bio_out.stdout {
            if let Some(flags) = l.trim().strip_prefix("flags = ") {
                class = flags.rsplit('-').next().unwrap_or(flags).to_lowercase();
            } else if let Some((lo, hi, c)) = stats::parse_log2_row(l) {
                hists.entry(class.clone()).or_default().add(lo, hi, c);
                hists.entry("all".into()).or_default().add(lo, hi, c);
            }
        }
        let ivs = proc::intervals(&agent_out.stdout);
        let inside = proc::inside(&ivs, from, to);
        // The device with the most writes in the window (the root disk).
        let mut ops: BTreeMap<String, f64> = BTreeMap::new();
        for i in &inside {
            for (tags, v) in proc::metrics(&i.v, "disk.ops") {
                if tags.get("op").and_then(Value::as_str) == Some("write") {
                    let dev = tags.get("device").and_then(Value::as_str).unwrap_or("");
                    *ops.entry(dev.to_string()).or_default() += v;
                }
            }
        }
        let dev = ops
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(d, _)| d.clone())
            .unwrap_or_default();
        let agent_pct = |op: &str, p: &str| {
            let name = format!("disk.latency_us.{p}");
            let v: Vec<f64> = inside
                .iter()
                .filter_map(|i| proc::metric(&i.v, &name, &[("device", &dev), ("op", op)]))
                .collect();
            median(&v)
        };
        let mut table = Table::new(
            &format!(
                "Accuracy: disk latency of the same fio load ({secs} s), the agent vs biolatency -F (log2 buckets), device {dev}"
            ),
            &[
                "op",
                "agent p50 µs",
                "biolatency p50 bucket µs",
                "agent p99 µs",
                "biolatency p99 bucket µs",
                "requests (biolatency)",
            ],
        );
        let bucket = |h: Option<&Log2Hist>, p: f64| {
            h.and_then(|h| h.percentile_bucket(p))
                .map_or("–".into(), |(lo, hi)| format!("{lo}–{hi}"))
        };
        let mut out = Vec::new();
        for (op, agent_op, bio_class) in [("write", "write", "write"), ("flush", "other", "flush")]
        {
            let h = hists.get(bio_class);
            let (a50, a99) = (agent_pct(agent_op, "p50"), agent_pct(agent_op, "p99"));
            table.row(vec![
                format!("{op} (agent op={agent_op})"),
                num(a50, 1),
                bucket(h, 50.0),
                num(a99, 1),
                bucket(h, 99.0),
                h.map_or(0, Log2Hist::total).to_string(),
            ]);
            out.push(json!({
                "op": op,
                "agent_p50_us": a50, "agent_p99_us": a99,
                "biolatency_p50_bucket_us": h.and_then(|h| h.percentile_bucket(50.0)),
                "biolatency_p99_bucket_us": h.and_then(|h| h.percentile_bucket(99.0)),
                "biolatency_requests": h.map_or(0, Log2Hist::total),
            }));
        }
        let all = hists.get("all");
        table.row(vec![
            "all requests (biolatency)".into(),
            "–".into(),
            bucket(all, 50.0),
            "–".into(),
            bucket(all, 99.0),
            all.map_or(0, Log2Hist::total).to_string(),
        ]);
        table.note(format!(
            "Both measure issue → completion in the device (biolatency without -Q). fio's own \
             write completion latency for reference: p50 {} µs, p99 {} µs ({:.0} IOPS). Agent: \
             median of its whole intervals inside the run.",
            num(f.clat_p50_us, 1),
            num(f.clat_p99_us, 1),
            f.iops
        ));
        self.print(table);
        Ok(json!({
            "secs": secs,
            "device": dev,
            "ops": out,
            "biolatency_all_p50_bucket_us": all.and_then(|h| h.percentile_bucket(50.0)),
            "biolatency_all_p99_bucket_us": all.and_then(|h| h.percentile_bucket(99.0)),
            "fio": { "iops": f.iops, "clat_p50_us": f.clat_p50_us, "clat_p99_us": f.clat_p99_us },
        }))
    }
}
