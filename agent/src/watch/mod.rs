//! `ebpf-agent watch`: a live per-second view for a person at a terminal (like `top`, for kernel
//! latencies), then, on exit, the session's latency histograms drawn as bars and its slow events.
//!
//! It runs the same [`Collector`] as `run`, on the same wall-clock-aligned intervals, so `--pid`
//! and `--comm` filter in the kernel. Everything but this event loop and [`terminal`] is pure
//! and unit-tested: [`model`] (history, sparklines, what is marked), [`sections`] (one frame
//! section per source), [`layout`] (the frame's lines and their tones), [`report`] (the exit
//! report). On a TTY every frame redraws in place on the alternate screen, clipped to the
//! terminal's size; otherwise (a pipe, a file, tests) every frame is printed after a
//! `--- <time>` line, without escape codes.
//!
//! The session histograms are exact: the kernel's cumulative buckets at the end minus those at the
//! start ([`Collector::cumulative_histograms`]), merged into power-of-two rows for display.

pub(crate) mod layout;
pub(crate) mod model;
mod report;
pub(crate) mod sections;
mod terminal;
#[cfg(test)]
mod testkit;

use std::{
    collections::VecDeque,
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;

pub use self::{
    layout::{Line, fit, frame_lines, render_frame},
    model::{HISTORY, History, MAX_KEYS, Scale, TimedEvent, Tone, View, sparkline},
    report::{
        SessionHist, SessionInfo, bar_rows, render_report, select_histograms, session_histograms,
    },
};
use self::{sections::AGENT_EVENTS, terminal::Screen};
use crate::{
    anomaly::{DetectorConfig, Verdicts},
    cli::{DEFAULT_STATE_DIR, WatchArgs},
    collector::Collector,
    config::{self, ConfigError},
    detection::Detection,
    run::hostname,
    ticker::{Tick, Ticker},
};

/// Slow events kept for the exit report.
pub const KEEP_EVENTS: usize = 50;
/// `--slow-threshold` of `watch` when not given (`run` reports none by default).
pub const DEFAULT_SLOW: Duration = Duration::from_millis(10);

fn quiet_pipe(r: io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        // A closed stdout (e.g. `| head`) ends the view quietly.
        Err(e) if crate::output::stdout_closed(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Where `watch` reads the daemon's baseline and with which detector settings: `--state-dir`,
/// else the configuration file's (`--config`, else the default file when it exists), else the
/// default directory. `None` with `--no-anomaly`. A bad file is an error (exit 2).
pub fn anomaly_settings(
    args: &WatchArgs,
) -> Result<Option<(PathBuf, DetectorConfig)>, ConfigError> {
    if args.no_anomaly {
        return Ok(None);
    }
    let (dir, cfg) = match config::path(args.config.as_deref()) {
        Some(p) => config::anomaly_settings(&config::load(&p)?)?,
        None => (None, None),
    };
    let dir = args
        .state_dir
        .clone()
        .or(dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Ok(Some((dir, cfg.unwrap_or_default())))
}

/// The header's word on anomaly marks.
fn anomaly_note(d: &Detection, v: &Verdicts, dir: &Path, warmup: u32) -> String {
    if d.loaded_keys == 0 && v.scores.is_empty() {
        format!(
            "anomalies: learning, no baseline in {} (marks after {warmup} intervals)",
            dir.display()
        )
    } else {
        format!("anomalies {}, baseline {} keys", v.active, d.loaded_keys)
    }
}

pub async fn watch(args: WatchArgs, judge: Option<(PathBuf, DetectorConfig)>) -> Result<ExitCode> {
    let mut common = args.common.settings();
    let slow_threshold = common
        .enable
        .slow_events
        .then(|| *common.slow_threshold.get_or_insert(DEFAULT_SLOW));
    let mut filters = vec![];
    if let Some(pid) = common.pid {
        filters.push(format!("pid {pid}"));
    }
    if let Some(comm) = &common.comm {
        filters.push(format!("comm {comm}"));
    }
    if let Some(cgroup) = &common.cgroup {
        filters.push(format!("cgroup {cgroup}"));
    }
    // The kernel applies them to the syscall probe only.
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!("{} (syscalls only)", filters.join(", "))
    };
    // Read-only: the session learns as it goes but never writes the daemon's file. Filtered
    // syscall figures are not what the baseline learnt, so they are not judged.
    let mut judge = judge.map(|(dir, mut cfg)| {
        if !filters.is_empty() {
            cfg.exclude.push("syscall.".into());
            cfg.exclude.push("cgroup.syscall.".into());
        }
        // agent.* describe this watcher (its own events and CPU), not what the daemon learnt.
        cfg.exclude.push("agent.".into());
        let warmup = cfg.warmup;
        (Detection::read_only(cfg, &dir), dir, warmup)
    });
    let host = hostname();
    let interval = common.interval;
    let mut collector = Collector::start(&common);
    tracing::info!(
        "{} (every {})",
        collector.summary(),
        humantime::format_duration(interval)
    );
    // Warnings and the line above stay on the main screen, readable after exit.
    let mut screen = Screen::new()?;

    let mut ticker = Ticker::new(interval, false)?;
    // Prime at the first boundary so every frame shows a whole interval.
    let Some(session_start) = ticker.first(common.duration).await else {
        return Ok(ExitCode::SUCCESS);
    };
    let baseline = collector.cumulative_histograms();
    collector.prime();

    let mut history = History::default();
    let mut events: VecDeque<TimedEvent> = VecDeque::with_capacity(KEEP_EVENTS);
    let mut events_received = 0u64;
    let mut frames = 0usize;
    let mut open = true;
    let mut session_end;
    loop {
        let Tick::Interval { end, len, last } = ticker.next().await else {
            continue; // no SIGHUP handling in watch
        };
        let mut stopping = last;
        session_end = end;
        if len > Duration::ZERO {
            let mut snap = collector.collect(end, len, &host);
            let anomaly = judge.as_mut().map(|(d, dir, warmup)| {
                let v = d.annotate(&mut snap, &collector.last_events);
                anomaly_note(d, &v, dir, *warmup)
            });
            history.record(&snap);
            events_received += snap.value(AGENT_EVENTS, &[]).unwrap_or(0.0) as u64;
            // The watcher's own waits (its runtime's epoll_wait, futex) would crowd the list.
            let own = std::process::id();
            for e in collector.last_events.drain(..).filter(|e| e.pid != own) {
                if events.len() == KEEP_EVENTS {
                    events.pop_front();
                }
                events.push_back(TimedEvent {
                    time: end,
                    event: e,
                });
            }
            let (width, height) = screen.size();
            let view = View {
                width,
                height,
                filters: filters.clone(),
                slow_threshold,
                elapsed: end.duration_since(session_start).unwrap_or_default(),
                hint: screen.tty,
                anomaly,
            };
            let lines = frame_lines(&snap, &history, &events, &view);
            frames += 1;
            if !quiet_pipe(screen.frame(end, &lines))? {
                open = false;
                stopping = true;
            }
        }
        if stopping {
            break;
        }
    }
    let hists = session_histograms(&baseline, &collector.cumulative_histograms());
    let kernel = collector.kernel.is_some();
    collector.stop();
    drop(collector); // detaches every program
    screen.leave();
    if open {
        let info = SessionInfo {
            host,
            start: session_start,
            end: session_end,
            frames,
            filters,
            slow_threshold,
            events_received,
            kernel,
        };
        let mut text = render_report(&info, &select_histograms(hists), &events).join("\n");
        text.push('\n');
        let mut out = io::stdout().lock();
        quiet_pipe(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    }
    Ok(ExitCode::SUCCESS)
}
