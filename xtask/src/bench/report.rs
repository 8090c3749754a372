//! The printed tables and the targets' PASS/MISS lines.

use serde_json::{Value, json};

/// A titled table printed as Markdown (readable on a terminal, pasteable into BENCHMARKS.md).
pub struct Table {
    pub title: String,
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, head: &[&str]) -> Self {
        Self {
            title: title.into(),
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    pub fn print(&self) {
        let n = self.head.len();
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count().min(*w);
                s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            }
            s
        };
        println!("\n### {}\n", self.title);
        println!("{}", line(&self.head));
        let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line(&sep).replace(' ', "-"));
        for r in &self.rows {
            println!("{}", line(r));
        }
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("{note}");
            }
        }
    }
}

/// One target of the issue and whether this run met it.
pub struct Target {
    pub name: String,
    pub value: String,
    pub limit: String,
    pub verdict: Verdict,
    pub note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// The rounds fall on both sides of the limit: this run cannot tell.
    Noise,
    /// Could not be measured in this run.
    Unmeasured,
}

impl Verdict {
    pub fn of(pass: Option<bool>) -> Self {
        match pass {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Miss,
            None => Verdict::Unmeasured,
        }
    }

    /// From per-round values: PASS when every round passes, MISS when every round misses,
    /// NOISE when they disagree (the spread is wider than the distance to the limit) or when
    /// fewer than 3 rounds cannot show the spread (the smoke run).
    pub fn rounds(values: &[f64], pass: impl Fn(f64) -> bool) -> Self {
        let passed = values.iter().filter(|&&v| pass(v)).count();
        match (values.len(), passed) {
            (0, _) => Verdict::Unmeasured,
            (1 | 2, _) => Verdict::Noise,
            (n, p) if p == n => Verdict::Pass,
            (_, 0) => Verdict::Miss,
            _ => Verdict::Noise,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Noise => "NOISE",
            Verdict::Unmeasured => "n/a",
        }
    }
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        self.verdict.label()
    }

    pub fn json(&self) -> Value {
        json!({
            "target": self.name,
            "value": self.value,
            "limit": self.limit,
            "result": self.verdict(),
            "note": self.note,
        })
    }
}

/// The CPU model, from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The kernel's CPU vulnerability mitigations that change what a syscall or an indirect call
/// costs, summarized from /sys/devices/system/cpu/vulnerabilities: spectre_v2 and
/// spec_rstack_overflow always, the others when the CPU is affected (e.g. `spectre_v2:
/// Retpolines, BHI: Retpoline; spec_rstack_overflow: Safe RET`).
pub fn mitigations() -> String {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") else {
        return "mitigations unknown (no /sys/devices/system/cpu/vulnerabilities)".into();
    };
    let mut all: Vec<(String, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect();
    all.sort();
    let parts: Vec<String> = all
        .iter()
        // Every kernel has the same spectre_v1 barriers: they tell CPUs apart no more.
        .filter(|(name, text)| {
            name != "spectre_v1"
                && (text.trim() != "Not affected"
                    || name == "spectre_v2"
                    || name == "spec_rstack_overflow")
        })
        .map(|(name, text)| mitigation(name, text))
        .collect();
    parts.join("; ")
}

/// One vulnerability file in short: its first clause without "Mitigation: ", and for
/// spectre_v2 its BHI clause too.
fn mitigation(name: &str, text: &str) -> String {
    let mut clauses = text.trim().split(';').map(str::trim);
    let first = clauses.next().unwrap_or("");
    let mut short = first
        .strip_prefix("Mitigation: ")
        .unwrap_or(first)
        .to_string();
    if name == "spectre_v2"
        && let Some(bhi) = clauses.find(|c| c.starts_with("BHI:"))
    {
        short = format!("{short}, {bhi}");
    }
    format!("{name}: {short}")
}

/// The CPU and its mitigations, to print with every figure that depends on them.
pub fn cpu_line() -> String {
    format!("CPU: {}; mitigations: {}", cpu_model(), mitigations())
}

/// `x` with `d` decimals, or `–`.
pub fn num(x: Option<f64>, d: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.d$}"))
}

#[cfg(test)]
mod tests {
    use super::{Verdict, mitigation};

    #[test]
    fn mitigations_in_short() {
        assert_eq!(
            mitigation(
                "spectre_v2",
                "Mitigation: Retpolines; STIBP: disabled; RSB filling; PBRSB-eIBRS: Not affected; BHI: Retpoline\n"
            ),
            "spectre_v2: Retpolines, BHI: Retpoline"
        );
        assert_eq!(
            mitigation("spec_rstack_overflow", "Mitigation: Safe RET\n"),
            "spec_rstack_overflow: Safe RET"
        );
        assert_eq!(
            mitigation("retbleed", "Vulnerable\n"),
            "retbleed: Vulnerable"
        );
    }

    #[test]
    fn throughput_verdicts_need_every_round_on_one_side() {
        let at_least = |r: f64| r >= 0.98;
        assert_eq!(
            Verdict::rounds(&[0.99, 1.02, 0.985], at_least),
            Verdict::Pass
        );
        assert_eq!(
            Verdict::rounds(&[0.90, 0.95, 0.97], at_least),
            Verdict::Miss
        );
        assert_eq!(
            Verdict::rounds(&[0.90, 1.10, 0.99], at_least),
            Verdict::Noise
        );
        // One or two rounds cannot show the spread.
        assert_eq!(Verdict::rounds(&[1.35], at_least), Verdict::Noise);
        assert_eq!(Verdict::rounds(&[], at_least), Verdict::Unmeasured);
    }
}
