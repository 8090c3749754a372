//! Kernel memory (this host's figure and its projection to big hosts, from `ebpf-agent check`)
//! and userspace's cost of reading the histogram table per interval at 256 CPUs (on a synthetic
//! table: `ebpf-agent read-cost`).

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Bench,
    report::{Table, Target, Verdict, num},
};

/// Kernel maps per possible CPU at 256 CPUs, and the reading cost per interval there.
const KIB_PER_CPU_LIMIT: f64 = 256.0;
const READ_MS_LIMIT: f64 = 2.0;

impl Bench {
    pub(super) fn memory(&mut self) -> Result<Value> {
        let out = Command::new(&self.agent)
            .arg("check")
            .output()
            .context("running ebpf-agent check")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("memory"))
            .context("no memory line in `ebpf-agent check`")?
            .to_string();
        // "... projected: 64 CPUs 13.0 MiB (208 KiB/CPU), 128 CPUs ..., 256 CPUs ..."
        let projected: Vec<(u32, f64, f64)> = line
            .split_once("projected: ")
            .map(|(_, p)| p)
            .unwrap_or_default()
            .split("), ")
            .filter_map(|part| {
                let mut w = part.split_whitespace();
                let cpus = w.next()?.parse().ok()?;
                let _ = w.next()?; // "CPUs"
                let mib = w.next()?.parse().ok()?;
                let _ = w.next()?; // "MiB"
                let kib = w.next()?.trim_start_matches('(').parse().ok()?;
                Some((cpus, mib, kib))
            })
            .collect();
        if projected.is_empty() {
            bail!("cannot read the projection from: {line}");
        }
        let reps = if self.smoke { 5 } else { 50 };
        let rc = Command::new(&self.agent)
            .args([
                "read-cost",
                "--cpus",
                "256",
                "--intervals",
                &reps.to_string(),
            ])
            .output()
            .context("running ebpf-agent read-cost")?;
        let read: Value = serde_json::from_slice(&rc.stdout).context("read-cost output")?;
        let (med, max) = (read["median_ms"].as_f64(), read["max_ms"].as_f64());
        // With per-cgroup attribution on (off by default) and all its slots busy.
        let rc = Command::new(&self.agent)
            .args([
                "read-cost",
                "--cpus",
                "256",
                "--intervals",
                &reps.to_string(),
                "--cgroup",
            ])
            .output()
            .context("running ebpf-agent read-cost --cgroup")?;
        let read_cg: Value =
            serde_json::from_slice(&rc.stdout).context("read-cost --cgroup output")?;

        let mut t = Table::new(
            "Kernel memory and reading the table",
            &["possible CPUs", "kernel maps MiB", "KiB per CPU"],
        );
        for &(cpus, mib, kib) in &projected {
            t.row(vec![cpus.to_string(), num(Some(mib), 1), num(Some(kib), 0)]);
        }
        t.note(format!(
            "This host: {}",
            line.trim_start_matches("memory").trim()
        ));
        t.note(format!(
            "Reading the table per interval at 256 CPUs (synthetic {:.0} MiB table, every row changed on every CPU, {reps} intervals): median {} ms, max {} ms.",
            read["table_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            num(med, 2),
            num(max, 2)
        ));
        t.note(format!(
            "The same with per-cgroup attribution on (source `cgroup`, off by default) and all its slots busy on every CPU ({} rows instead of {}): median {} ms, max {} ms.",
            read_cg["rows_read"].as_u64().unwrap_or(0),
            read["rows_read"].as_u64().unwrap_or(0),
            num(read_cg["median_ms"].as_f64(), 2),
            num(read_cg["max_ms"].as_f64(), 2)
        ));
        self.print(t);
        let at256 = projected.iter().find(|p| p.0 == 256).map(|p| p.2);
        self.target(Target {
            name: "kernel maps per possible CPU at 256 CPUs".into(),
            value: format!("{} KiB", num(at256, 0)),
            limit: format!("≤ {KIB_PER_CPU_LIMIT} KiB"),
            verdict: Verdict::of(at256.map(|k| k <= KIB_PER_CPU_LIMIT)),
            note: "ebpf-agent check's projection (histogram table per CPU + the other maps)".into(),
        });
        self.target(Target {
            name: "reading the table per interval at 256 CPUs".into(),
            value: format!("{} ms", num(med, 2)),
            limit: format!("≤ {READ_MS_LIMIT} ms"),
            verdict: Verdict::of(med.map(|m| m <= READ_MS_LIMIT)),
            note: format!(
                "defaults (cgroup off); median of {reps} intervals, every row changed; max {} ms",
                num(max, 2)
            ),
        });
        Ok(json!({
            "check": line,
            "projected": projected.iter().map(|(c, m, k)| json!({"cpus": c, "mib": m, "kib_per_cpu": k})).collect::<Vec<_>>(),
            "read_cost_256_cpus": read,
            "read_cost_256_cpus_cgroup": read_cg,
        }))
    }
}
