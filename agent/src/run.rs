//! `ebpf-agent run`: the per-interval loop, aligned to the wall clock, until a signal or
//! `--duration`. Collection never waits on delivery.

use std::{
    io::{self, Write},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use tokio::{signal::unix::SignalKind, time::Instant};

use crate::{
    cli::{Output, RunArgs},
    collector::{Collector, next_boundary},
    config, output,
    sinks::Sinks,
};

/// How long delivery of the last interval may take on exit.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Tokio instant at which the wall clock reads `t` (sleeping on the monotonic clock).
fn instant_at(t: SystemTime) -> Instant {
    let now = SystemTime::now();
    Instant::now() + t.duration_since(now).unwrap_or(Duration::ZERO)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length are valid.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_string();
        }
    }
    "localhost".into()
}

/// What a SIGHUP needs to rebuild the settings: the command line as given, and the file.
pub struct Reload {
    cli: RunArgs,
    matches: Option<clap::ArgMatches>,
    path: Option<std::path::PathBuf>,
}

impl Reload {
    pub fn new(
        cli: RunArgs,
        matches: Option<clap::ArgMatches>,
        path: Option<std::path::PathBuf>,
    ) -> Self {
        Self { cli, matches, path }
    }

    /// Flags given on the command line, over the file, over defaults; validated.
    pub fn effective(&self) -> Result<RunArgs, String> {
        let loaded = match &self.path {
            Some(p) => Some(config::load(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let eff = config::effective(&self.cli, self.matches.as_ref(), loaded.as_ref())
            .map_err(|e| e.to_string())?;
        eff.sinks.validate()?;
        Ok(eff)
    }
}

pub async fn run(args: RunArgs, reload: Reload) -> Result<ExitCode> {
    let mut args = args;
    let mut host = args.host.clone().unwrap_or_else(hostname);
    let mut interval = args.common.interval;
    let mut output = args.output();
    // Sinks first: a bad address is a usage error (exit 2) before anything is attached.
    let mut sinks = match Sinks::start(&args.sinks, interval).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ebpf-agent: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if !sinks.is_empty() {
        tracing::info!("sending to {}", sinks.names().join(", "));
    }
    let mut collector = Collector::start(&args.common);

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;

    // Prime at the first boundary so every reported interval is a whole one.
    let mut boundary = next_boundary(SystemTime::now(), interval);
    tokio::select! {
        _ = tokio::time::sleep_until(instant_at(boundary)) => {}
        _ = sigterm.recv() => return Ok(ExitCode::SUCCESS),
        _ = sigint.recv() => return Ok(ExitCode::SUCCESS),
    }
    collector.prime();
    let deadline = args.common.duration.map(|d| boundary + d);
    tracing::info!(
        "{} (every {})",
        collector.summary(),
        humantime::format_duration(interval)
    );
    let mut start = boundary;

    let mut stdout = io::stdout().lock();
    loop {
        boundary = next_boundary(boundary, interval);
        let stop_at = match deadline {
            Some(d) if d <= boundary => Some(d),
            _ => None,
        };
        let target = stop_at.unwrap_or(boundary);
        let mut stopping = stop_at.is_some();
        let mut hup = false;
        tokio::select! {
            _ = tokio::time::sleep_until(instant_at(target)) => {}
            _ = sigterm.recv() => stopping = true,
            _ = sigint.recv() => stopping = true,
            _ = sighup.recv() => hup = true,
        }
        if hup {
            // Apply the new settings and keep waiting for the same boundary.
            match reload.effective() {
                Err(e) => tracing::warn!("reload rejected, keeping the running settings: {e}"),
                Ok(new) => {
                    if new.sinks != args.sinks {
                        match Sinks::start(&new.sinks, new.common.interval).await {
                            Ok(s) => {
                                let old = std::mem::replace(&mut sinks, s);
                                tokio::spawn(old.shutdown(SHUTDOWN_FLUSH));
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "reload rejected, keeping the running settings: {e:#}"
                                );
                                boundary = SystemTime::now();
                                continue;
                            }
                        }
                    }
                    if new.common.ring_buffer_kib != args.common.ring_buffer_kib {
                        tracing::warn!("ring_buffer_kib changes at the next restart");
                    }
                    collector.apply(&new.common);
                    host = new.host.clone().unwrap_or_else(hostname);
                    output = new.output();
                    interval = new.common.interval;
                    args = new;
                    tracing::info!("reloaded: {}", collector.summary());
                }
            }
            // The current interval goes on to the next boundary (of the new interval) after now.
            boundary = SystemTime::now();
            continue;
        }
        // On a signal the interval ends now: flush what it holds.
        let end = if stopping {
            SystemTime::now().min(target)
        } else {
            target
        };
        let len = end.duration_since(start).unwrap_or(interval);
        if len > Duration::ZERO {
            let mut snap = collector.collect(end, len, &host);
            snap.metrics.extend(sinks.self_metrics());
            let snap = Arc::new(snap);
            sinks.send(snap.clone());
            if let Err(e) = emit(&mut stdout, output, &snap, &collector) {
                collector.stop();
                drop(collector);
                sinks.shutdown(SHUTDOWN_FLUSH).await;
                return Err(e);
            }
        }
        start = end;
        if stopping {
            break;
        }
    }
    collector.stop();
    drop(collector); // detaches every program
    sinks.shutdown(SHUTDOWN_FLUSH).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn emit(
    w: &mut impl Write,
    out: Output,
    snap: &crate::snapshot::Snapshot,
    c: &Collector,
) -> Result<()> {
    let r = match out {
        Output::Json => output::write_json(w, snap, &c.last_events),
        Output::Text => output::write_text(w, snap, &c.last_events),
        Output::None => Ok(()),
    };
    match r {
        // A closed stdout (e.g. `| head`) ends the agent quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!("stdout closed")),
        r => Ok(r?),
    }
}
