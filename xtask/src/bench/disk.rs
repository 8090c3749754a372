//! Disk: fio throughput with each tracer attached, on the root disk and on a loop device.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Cfg,
    report::{Table, Target, Verdict, num},
    stats::Spread,
};

impl Bench {
    pub(super) fn disk(&mut self) -> Result<Value> {
        let file = self.fio_file.clone();
        let what = format!("{} MiB file on the root disk", self.plan.fio_mib);
        self.disk_on(&file, &what, "root disk", self.plan.fio_secs)
    }

    /// The same on a loop device backed by tmpfs: no disk under it, so no noise from other
    /// tenants, and requests complete in microseconds: the tracer's cost per request shows as
    /// it would on a fast NVMe device (the worst case for a tracer).
    pub(super) fn disk_loop(&mut self) -> Result<Value> {
        let dev = self.loop_dev()?;
        let what = format!(
            "{} ({} MiB loop device on a tmpfs file)",
            dev.display(),
            self.plan.fio_mib
        );
        self.disk_on(&dev, &what, "loop on tmpfs", self.plan.fio_loop_secs)
    }

    fn disk_on(&mut self, target: &Path, what: &str, short: &str, secs: f64) -> Result<Value> {
        let configs: Vec<(&str, Cfg)> = vec![
            ("nothing", Cfg::Nothing),
            (
                "ebpf-agent (--probes disk)",
                Cfg::Agent(vec!["--output", "none", "--probes", "disk"]),
            ),
            ("biolatency 1 (libbpf-tools)", Cfg::Biolatency(vec!["1"])),
        ];
        let rounds = self.plan.disk_rounds;
        // Lays the file out (and warms the device) before anything is measured.
        self.fio(target, 1.0).context("fio warm-up")?;
        let runs = self.interleaved(&format!("disk ({short})"), &configs, rounds, |b| {
            b.fio(target, secs)
        });
        let iops: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|rs| rs.iter().map(|f| f.as_ref().map(|f| f.iops)).collect())
            .collect();
        let clat: Vec<Spread> = runs
            .iter()
            .map(|rs| Spread(rs.iter().flatten().filter_map(|f| f.clat_p50_us).collect()))
            .collect();
        let ratio = |a: usize, b: usize| -> Spread {
            Spread(
                (0..rounds)
                    .filter_map(|r| Some(iops[a][r]? / iops[b][r]?))
                    .collect(),
            )
        };
        let mut table = Table::new(
            &format!(
                "Disk ({short}): fio 4 KiB O_DIRECT random writes + fdatasync, {what}, {secs} s per run, {rounds} rounds"
            ),
            &["attached", "IOPS", "÷ nothing", "fio write clat p50 µs"],
        );
        let mut out = serde_json::Map::new();
        for (k, (name, _)) in configs.iter().enumerate() {
            let v = Spread(iops[k].iter().flatten().copied().collect());
            let rel = ratio(k, 0);
            table.row(vec![
                name.to_string(),
                v.show(0),
                if k == 0 { "1".into() } else { rel.show(3) },
                clat[k].show(1),
            ]);
            out.insert(
                name.to_string(),
                json!({ "iops": v.json(), "ratio_to_nothing": rel.json(), "fio_clat_p50_us": clat[k].json() }),
            );
        }
        let vs_bio = ratio(1, 2);
        table.row(vec![
            "agent ÷ biolatency".into(),
            String::new(),
            vs_bio.show(3),
            String::new(),
        ]);
        table.note("Ratios are per round (same round's runs), then median (min–max).");
        self.print(table);
        // Judged round by round: with the disk's run-to-run noise wider than 2%, rounds on both
        // sides of the limit say NOISE rather than a verdict by chance.
        let vs_nothing = ratio(1, 0);
        self.target(Target {
            name: format!(
                "disk ({short}): IOPS with the agent within 2% of nothing, by throughput"
            ),
            value: num(vs_nothing.median(), 3),
            limit: "≥ 0.98".into(),
            verdict: Verdict::rounds(&vs_nothing.0, |r| r >= 0.98),
            note: format!(
                "agent IOPS ÷ nothing IOPS, median of per-round ratios {}",
                vs_nothing.show(3)
            ),
        });
        self.target(Target {
            name: format!(
                "disk ({short}): IOPS with the agent no worse than with biolatency, by throughput"
            ),
            value: num(vs_bio.median(), 3),
            limit: "≥ 1.00".into(),
            verdict: Verdict::rounds(&vs_bio.0, |r| r >= 1.0),
            note: format!(
                "agent IOPS ÷ biolatency IOPS, median of per-round ratios {}",
                vs_bio.show(3)
            ),
        });
        out.insert("agent_over_biolatency".into(), vs_bio.json());
        Ok(json!({
            "target": target,
            "rounds": rounds,
            "fio_secs": secs,
            "configs": out,
        }))
    }
}
