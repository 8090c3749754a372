//! Reference sheets: `ebpf-agent record` captures a known-good period; `ebpf-agent compare`
//! runs live and says, worst first, what deviates from it (exit 1 beyond the critical level, so
//! it can gate a deploy). `ebpf-agent detect` replays the detector over a CSV history.

use std::{
    io::{self, BufReader, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    anomaly::{self, Sheet, SheetBuilder, State},
    collector::Collector,
    run::hostname,
    settings::Settings,
    ticker::{Tick, Ticker},
};

/// Collects `common.duration` of intervals into a sheet (stopped early by SIGINT/SIGTERM).
async fn collect_sheet(common: &Settings, duration: Duration) -> Result<Sheet> {
    let host = hostname();
    let mut collector = Collector::start(common);
    let mut ticker = Ticker::new(common.interval, false)?;
    let mut builder = SheetBuilder::new();
    if ticker.first(Some(duration)).await.is_none() {
        return Ok(builder.finish());
    }
    collector.prime();
    tracing::info!(
        "{} for {}",
        collector.summary(),
        humantime::format_duration(duration)
    );
    loop {
        let Tick::Interval { end, len, last } = ticker.next().await else {
            continue;
        };
        if len > Duration::ZERO {
            builder.add(&collector.collect(end, len, &host));
        }
        if last {
            break;
        }
    }
    Ok(builder.finish())
}

pub async fn record(common: Settings, out: &Path) -> Result<ExitCode> {
    let duration = common
        .duration
        .context("record needs --duration (e.g. --duration 10m)")?;
    let sheet = collect_sheet(&common, duration).await?;
    sheet
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "ebpf-agent: recorded {} intervals of {} keys into {}",
        sheet.snapshots,
        sheet.entries.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Default live period of `compare` when no --duration is given.
pub const COMPARE_DEFAULT: Duration = Duration::from_secs(60);

pub async fn compare(common: Settings, file: &Path, json: bool) -> Result<ExitCode> {
    let sheet = Sheet::load(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let duration = common.duration.unwrap_or(COMPARE_DEFAULT);
    let live = collect_sheet(&common, duration).await?;
    let devs = anomaly::compare(&sheet, &live);
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &anomaly::render_json(&sheet, &live, &devs))?;
        writeln!(out)?;
    } else {
        write!(out, "{}", anomaly::render_text(&sheet, &live, &devs))?;
    }
    out.flush()?;
    let critical = devs.iter().any(|d| d.severity == State::Critical);
    Ok(if critical {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `detect FILE.csv` (or `-` for stdin): scores on stdout; a bad row is one error line, exit 2.
pub fn detect(file: &Path, sensitivity: f64) -> ExitCode {
    let stdout = io::stdout().lock();
    let result = if file == Path::new("-") {
        anomaly::detect_csv(io::stdin().lock(), stdout, sensitivity)
    } else {
        match std::fs::File::open(file) {
            Ok(f) => anomaly::detect_csv(BufReader::new(f), stdout, sensitivity),
            Err(e) => {
                eprintln!("ebpf-agent: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if crate::output::stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebpf-agent: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}
