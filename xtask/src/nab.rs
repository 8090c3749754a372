//! `cargo xtask nab PATH`: the Numenta Anomaly Benchmark through `ebpf-agent detect`.
//!
//! Runs `ebpf-agent detect` (default settings unless `--sensitivity`) over every series of a NAB
//! checkout, writes NAB's results format (`timestamp,value,anomaly_score,label`) under
//! `target/nab/`, and runs NAB's own, unmodified scorer (`run.py --optimize --score
//! --normalize`, in a Python 3.6 venv under `~/.cache`) with its results and thresholds redirected
//! there, so the checkout is only read. NAB is AGPL: nothing of it is copied into this repository.
//! Prints the three profiles' normalised scores and per-category figures.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};

/// NAB's name for our detector (no `_`: NAB splits result file names on it).
const DETECTOR: &str = "ebpfAgent";
/// The scorer's pinned packages install on this Python (pyenv); override with `NAB_PYTHON`.
const DEFAULT_PYTHON: &str = "/root/.pyenv/versions/3.6.15/bin/python";
/// The only packages of NAB's requirements the scorer imports (pins read from its file).
const SCORER_PACKAGES: [&str; 2] = ["pandas", "simplejson"];
const PROFILES: [(&str, &str); 3] = [
    ("standard", "standard"),
    ("reward_low_FP_rate", "reward low FP"),
    ("reward_low_FN_rate", "reward low FN"),
];

pub struct Options {
    pub nab: PathBuf,
    pub sensitivity: f64,
    /// A built `ebpf-agent`; default: build the release binary.
    pub agent: Option<PathBuf>,
}

pub fn run(root: &Path, opt: Options) -> Result<()> {
    let nab = fs::canonicalize(&opt.nab).with_context(|| {
        format!(
            "{}: not found (a checkout of numenta/NAB)",
            opt.nab.display()
        )
    })?;
    for need in [
        "run.py",
        "data",
        "labels/combined_windows.json",
        "config/profiles.json",
        "results/null",
    ] {
        if !nab.join(need).exists() {
            bail!(
                "{} has no {need}: give the root of a numenta/NAB checkout",
                nab.display()
            );
        }
    }
    let agent = match opt.agent {
        Some(a) => fs::canonicalize(&a).with_context(|| format!("{}", a.display()))?,
        None => {
            super::cargo(&["build", "--release", "--package", "agent"])?;
            root.join("target/release/ebpf-agent")
        }
    };
    let python = venv(&nab)?;

    let work = root.join("target/nab");
    let results = work.join("results");
    if results.exists() {
        fs::remove_dir_all(&results)?;
    }
    // The null detector's scores are NAB's baseline for normalising.
    let null = results.join("null");
    fs::create_dir_all(&null)?;
    for e in fs::read_dir(nab.join("results/null"))? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with("_scores.csv") {
            fs::copy(e.path(), null.join(e.file_name()))?;
        }
    }

    let windows: BTreeMap<String, Vec<(String, String)>> = {
        let text = fs::read_to_string(nab.join("labels/combined_windows.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let mut m = BTreeMap::new();
        for (file, ws) in v
            .as_object()
            .context("combined_windows.json: not an object")?
        {
            let ws = ws
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|w| {
                            let w = w.as_array()?;
                            Some((
                                w.first()?.as_str()?.to_string(),
                                w.get(1)?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            m.insert(file.clone(), ws);
        }
        m
    };
    let files: Vec<String> = windows.keys().cloned().collect();
    println!(
        "nab: {} series through {} detect (sensitivity {})",
        files.len(),
        agent.display(),
        opt.sensitivity
    );
    let errors = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(file) = files.get(i) else { break };
                    if let Err(e) = detect_one(
                        &agent,
                        &nab,
                        &results,
                        file,
                        &windows[file],
                        opt.sensitivity,
                    ) {
                        errors.lock().unwrap().push(format!("{file}: {e:#}"));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        bail!("detect failed:\n{}", errors.join("\n"));
    }

    // NAB's scorer, unmodified; its outputs go to target/nab.
    let thresholds = work.join("thresholds.json");
    let _ = fs::remove_file(&thresholds);
    let out = Command::new(&python)
        .current_dir(&nab)
        .args([
            "run.py",
            "-d",
            DETECTOR,
            "--optimize",
            "--score",
            "--normalize",
        ])
        .arg("--skipConfirmation")
        .arg("--resultsDir")
        .arg(&results)
        .arg("--thresholdsFile")
        .arg(&thresholds)
        .output()
        .context("running NAB's run.py")?;
    if !out.status.success() {
        bail!(
            "NAB's scorer failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    report(&results, &thresholds)
}

/// A venv with the scorer's pinned packages, under `~/.cache` (never in a repository).
fn venv(nab: &Path) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = Path::new(&home).join(".cache/ebpf-agent-nab/venv");
    let py = dir.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import pandas, simplejson"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(py);
    }
    let base = std::env::var("NAB_PYTHON").unwrap_or_else(|_| DEFAULT_PYTHON.into());
    println!(
        "nab: creating {} with {base} (NAB's pins need Python 3.6; set NAB_PYTHON)",
        dir.display()
    );
    super::status(Command::new(&base).arg("-m").arg("venv").arg(&dir))?;
    let reqs = fs::read_to_string(nab.join("requirements.txt")).unwrap_or_default();
    let pins: Vec<String> = SCORER_PACKAGES
        .iter()
        .map(|p| {
            reqs.lines()
                .map(str::trim)
                .find(|l| l.to_lowercase().starts_with(&format!("{p}==")))
                .unwrap_or(p)
                .to_string()
        })
        .collect();
    super::status(
        Command::new(&py)
            .args(["-m", "pip", "install", "-q"])
            .args(&pins),
    )?;
    Ok(py)
}

/// One series: `detect`, then NAB's results format with the label column (1 inside a window).
fn detect_one(
    agent: &Path,
    nab: &Path,
    results: &Path,
    file: &str,
    windows: &[(String, String)],
    sensitivity: f64,
) -> Result<()> {
    let out = Command::new(agent)
        .arg("detect")
        .arg(nab.join("data").join(file))
        .arg("--sensitivity")
        .arg(sensitivity.to_string())
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8(out.stdout)?;
    let (dir, name) = file
        .rsplit_once('/')
        .context("NAB file names are category/name")?;
    let dest = results.join(DETECTOR).join(dir);
    fs::create_dir_all(&dest)?;
    let mut csv = String::with_capacity(text.len());
    csv.push_str("timestamp,value,anomaly_score,label\n");
    for line in text.lines().skip(1) {
        let mut f = line.split(',');
        let (Some(ts), Some(v), Some(score)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected detect output line `{line}`");
        };
        // Window bounds carry microseconds ("2014-04-10 07:15:00.000000"): compare the
        // seconds, which sort as text.
        let label = windows
            .iter()
            .any(|(a, b)| ts >= &a[..a.len().min(19)] && ts <= &b[..b.len().min(19)]);
        csv.push_str(&format!("{ts},{v},{score},{}\n", u8::from(label)));
    }
    fs::write(dest.join(format!("{DETECTOR}_{name}")), csv)?;
    Ok(())
}

/// Prints the normalised scores and, per category and profile, NAB's raw score with the windows
/// caught and the false alarms (rows outside windows, after NAB's probation) at the threshold
/// NAB chose.
fn report(results: &Path, thresholds: &Path) -> Result<()> {
    let finals: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(results.join("final_results.json"))?)?;
    let chosen: serde_json::Value = serde_json::from_str(&fs::read_to_string(thresholds)?)?;
    println!("\nNAB scores (normalised: 100 = perfect, 0 = the null detector):");
    for (key, label) in PROFILES {
        let v = finals[DETECTOR][key].as_f64().unwrap_or(f64::NAN);
        println!("  {label:<14} {v:6.2}");
    }
    let series = read_results(&results.join(DETECTOR))?;
    for (key, label) in PROFILES {
        let threshold = chosen[DETECTOR][key]["threshold"]
            .as_f64()
            .context("thresholds.json: no threshold")?;
        let path = results
            .join(DETECTOR)
            .join(format!("{DETECTOR}_{key}_scores.csv"));
        let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        // Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count
        let mut cats: BTreeMap<String, [f64; 4]> = BTreeMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 10 || f[0] == "Totals" {
                continue;
            }
            let cat = f[2].split('/').next().unwrap_or("").to_string();
            cats.entry(cat).or_default()[0] += f[4].parse::<f64>().unwrap_or(0.0);
        }
        for (cat, rows) in &series {
            let c = cats.entry(cat.clone()).or_default();
            let (caught, windows, fps) = rows.iter().fold((0, 0, 0), |acc, s| {
                let (a, b, c) = judge(s, threshold);
                (acc.0 + a, acc.1 + b, acc.2 + c)
            });
            c[1] += caught as f64;
            c[2] += windows as f64;
            c[3] += fps as f64;
        }
        println!(
            "\n{label} (threshold {threshold:.4}): raw score, windows caught, false-alarm rows"
        );
        let mut tot = [0.0; 4];
        for (cat, c) in &cats {
            println!(
                "  {cat:<22} {:8.2}  {:3}/{:<3} {:5}",
                c[0], c[1], c[2], c[3]
            );
            for k in 0..4 {
                tot[k] += c[k];
            }
        }
        println!(
            "  {:<22} {:8.2}  {:3}/{:<3} {:5}",
            "all", tot[0], tot[1], tot[2], tot[3]
        );
    }
    Ok(())
}

/// One series' rows: (score, inside a labelled window).
type Rows = Vec<(f64, bool)>;

/// Per category, each series' rows, from the results files written above.
fn read_results(dir: &Path) -> Result<BTreeMap<String, Vec<Rows>>> {
    let mut out: BTreeMap<String, Vec<Rows>> = BTreeMap::new();
    for cat in fs::read_dir(dir)? {
        let cat = cat?;
        if !cat.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(cat.path())? {
            let text = fs::read_to_string(f?.path())?;
            let rows = text
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    Some((f.get(2)?.parse().ok()?, *f.get(3)? == "1"))
                })
                .collect();
            out.entry(cat.file_name().to_string_lossy().into_owned())
                .or_default()
                .push(rows);
        }
    }
    Ok(out)
}

/// (windows caught, windows, false-alarm rows) of one series at `threshold`, after NAB's
/// probation (the first 15% of rows, at most 750).
fn judge(rows: &[(f64, bool)], threshold: f64) -> (usize, usize, usize) {
    let probation = ((0.15 * rows.len() as f64).floor()).min(750.0) as usize;
    let (mut caught, mut windows, mut fps) = (0, 0, 0);
    let mut in_window = false;
    let mut hit = false;
    for (i, &(score, label)) in rows.iter().enumerate() {
        let alarm = i >= probation && score >= threshold;
        if label {
            if !in_window {
                windows += 1;
                hit = false;
            }
            if alarm && !hit {
                caught += 1;
                hit = true;
            }
        } else if alarm {
            fps += 1;
        }
        in_window = label;
    }
    (caught, windows, fps)
}
