//! `ebpf-agent run`: the per-interval loop, aligned to the wall clock, until a signal or
//! `--duration`. Collection never waits on delivery.

use std::{
    io::{self, Write},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Result;

use crate::{
    cli::Output,
    collector::Collector,
    config::Reload,
    detection::Detection,
    output,
    settings::Settings,
    sinks::Sinks,
    ticker::{Tick, Ticker},
};

pub use crate::settings::hostname;

/// How long delivery of the last interval may take on exit.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Runs with `args` (validated); a SIGHUP rebuilds the settings with `reload`.
pub async fn run(args: Settings, reload: Reload) -> Result<ExitCode> {
    let mut args = args;
    let mut host = args.host();
    let interval = args.interval;
    let mut output = args.output();
    // Sinks first: a bad address is a usage error (exit 2) before anything is attached.
    let mut sinks = match Sinks::start(&args.sinks_in_force(), interval).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ebpf-agent: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if !sinks.is_empty() {
        tracing::info!("sending to {}", sinks.names().join(", "));
    }
    let mut collector = Collector::start(&args);
    let mut detection = args
        .enable
        .anomaly
        .then(|| Detection::start(args.anomaly.clone(), Some(&args.state_dir)));

    let mut ticker = Ticker::new(interval, true)?;
    if ticker.first(args.duration).await.is_none() {
        return Ok(ExitCode::SUCCESS);
    }
    collector.prime();
    tracing::info!(
        "{} (every {})",
        collector.summary(),
        humantime::format_duration(interval)
    );

    let mut stdout = io::stdout().lock();
    let result = loop {
        let (end, len, last) = match ticker.next().await {
            Tick::Interval { end, len, last } => (end, len, last),
            Tick::Reload => {
                // The same loading and validation as at start.
                match reload.settings() {
                    Err(e) => tracing::warn!("reload rejected, keeping the running settings: {e}"),
                    Ok(new) => {
                        match apply(&mut args, new, &mut sinks, &mut collector, &mut detection)
                            .await
                        {
                            Err(e) => {
                                tracing::warn!(
                                    "reload rejected, keeping the running settings: {e:#}"
                                )
                            }
                            Ok(()) => {
                                host = args.host();
                                output = args.output();
                                ticker.set_interval(args.interval);
                                tracing::info!("reloaded: {}", collector.summary());
                            }
                        }
                    }
                }
                continue;
            }
        };
        if len > Duration::ZERO {
            let mut snap = collector.collect(end, len, &host);
            snap.metrics.extend(sinks.self_metrics());
            if let Some(d) = &mut detection {
                d.annotate(&mut snap, &collector.last_events);
            }
            let snap = Arc::new(snap);
            sinks.send(snap.clone());
            if let Err(e) = emit(&mut stdout, output, &snap, &collector) {
                break Err(e);
            }
        }
        if last {
            break Ok(());
        }
    };
    drop(collector); // stops the ring buffer reader, detaches every program
    if let Some(d) = &mut detection {
        d.save();
    }
    sinks.shutdown(SHUTDOWN_FLUSH).await;
    result?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Applies reloaded settings: new sinks first (a bad address keeps everything as it was), then
/// probes, thresholds and switches.
async fn apply(
    args: &mut Settings,
    new: Settings,
    sinks: &mut Sinks,
    collector: &mut Collector,
    detection: &mut Option<Detection>,
) -> Result<()> {
    if new.sinks_in_force() != args.sinks_in_force() {
        let fresh = Sinks::start(&new.sinks_in_force(), new.interval).await?;
        let old = std::mem::replace(sinks, fresh);
        tokio::spawn(old.shutdown(SHUTDOWN_FLUSH));
    }
    if new.ring_buffer_kib != args.ring_buffer_kib {
        tracing::warn!("ring_buffer_kib changes at the next restart");
    }
    collector.apply(&new);
    if new.enable.anomaly != args.enable.anomaly
        || new.anomaly != args.anomaly
        || new.state_dir != args.state_dir
    {
        // Keep what was learnt: save, then start again from the saved baseline, with the
        // incidents (their ids go on).
        let mut old = detection.take();
        if let Some(d) = &mut old {
            d.save();
        }
        *detection = new
            .enable
            .anomaly
            .then(|| Detection::start(new.anomaly.clone(), Some(&new.state_dir)));
        if let (Some(d), Some(old)) = (detection.as_mut(), old) {
            d.carry_incidents_from(old);
        }
    }
    *args = new;
    Ok(())
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
    // A closed stdout (e.g. `| head`) ends the agent, quietly (`output::stdout_closed` in main).
    Ok(r?)
}
