//! Anomaly detection in the daemon: feeds every interval to the [`Detector`], groups what is off
//! into [`incidents`](crate::incident) (what a person reads: one log line per open, escalation
//! and close), annotates the snapshot for the sinks (state and description per metric, a
//! summary on state changes, the incidents, sparse `anomaly.score` gauges, `anomaly.active`,
//! `incidents.open`), and keeps the learnt baseline across restarts.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    anomaly::{Detector, DetectorConfig, State, Verdicts},
    catalogue::anomaly as metrics,
    events::EventView,
    incident::{IncidentConfig, Incidents, Signal},
    snapshot::{Anomaly, AnomalySummary, Kind, Metric, Snapshot},
};

/// The state file inside the state directory.
pub const STATE_FILE: &str = "detector.state";
/// How often the baseline is saved (and on exit).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// The tag of `anomaly.score` naming the key it scores. Not `metric`: Riemann merges attributes
/// into the event, and `metric` is the event's value.
const SCORE_KEY_TAG: &str = "key";
/// A key's score is sent while at least this high (or while its state is not ok), then once as 0.
const SCORE_REPORTED_FROM: f64 = 0.5;

pub struct Detection {
    detector: Detector,
    state: Option<PathBuf>,
    last_save: Instant,
    save_warned: bool,
    /// Keys whose score was sent last interval.
    reported: HashSet<String>,
    /// Keys read from the state file at start (0: learning afresh).
    pub loaded_keys: usize,
    incidents: Incidents,
}

impl Detection {
    /// Loads the baseline from `state_dir` when there is one (a corrupt or foreign file is
    /// ignored with one warning).
    pub fn start(cfg: DetectorConfig, state_dir: Option<&Path>) -> Detection {
        let state = state_dir.map(|d| d.join(STATE_FILE));
        if let Some(p) = &state {
            let n = crate::anomaly::clean_stale_temporaries(p);
            if n > 0 {
                tracing::info!("removed {n} unfinished anomaly state file(s) of stopped agents");
            }
        }
        Detection::open(cfg, state)
    }

    fn open(cfg: DetectorConfig, state: Option<PathBuf>) -> Detection {
        let detector = match &state {
            Some(p) if p.exists() => match Detector::load(cfg.clone(), p) {
                Ok(d) => {
                    tracing::info!("anomaly baseline: {} keys from {}", d.len(), p.display());
                    d
                }
                Err(e) => {
                    tracing::warn!(
                        "ignoring the anomaly baseline in {} ({e}); learning afresh",
                        p.display()
                    );
                    Detector::new(cfg)
                }
            },
            _ => Detector::new(cfg),
        };
        Detection {
            loaded_keys: detector.len(),
            detector,
            state,
            last_save: Instant::now(),
            save_warned: false,
            reported: HashSet::new(),
            incidents: Incidents::new(IncidentConfig::default()),
        }
    }

    /// Takes over `old`'s incidents (a reload that restarts detection): ids go on rather than
    /// start again at 1, and incidents open at the reload close when calm, once.
    pub fn carry_incidents_from(&mut self, old: Detection) {
        self.incidents = old.incidents;
    }

    /// Judges with the baseline in `state_dir` but never writes it (`watch`: a short session
    /// must not disturb what the daemon learnt).
    pub fn read_only(cfg: DetectorConfig, state_dir: &Path) -> Detection {
        let mut d = Detection::open(cfg, Some(state_dir.join(STATE_FILE)));
        d.state = None;
        d
    }

    /// Judges the interval and annotates `snap` (before the sinks see it); `events` are the
    /// interval's slow events (which processes an incident is about).
    pub fn annotate(&mut self, snap: &mut Snapshot, events: &[EventView]) -> Verdicts {
        let verdicts = self.detector.observe(snap);
        self.group(snap, &verdicts, events);
        let mut now_reported = HashSet::new();
        let not_ok: HashSet<String> = verdicts
            .items
            .iter()
            .filter(|v| v.state != State::Ok)
            .map(|v| v.key())
            .collect();
        for (key, score) in &verdicts.scores {
            if *score >= SCORE_REPORTED_FROM || not_ok.contains(key) {
                snap.metrics.push(Metric::gauge(
                    "anomaly.score",
                    vec![(SCORE_KEY_TAG, key.clone())],
                    *score,
                ));
                now_reported.insert(key.clone());
            } else if self.reported.contains(key) {
                // Back to calm: say so once, so a stored gauge does not stay high.
                snap.metrics.push(Metric::gauge(
                    "anomaly.score",
                    vec![(SCORE_KEY_TAG, key.clone())],
                    0.0,
                ));
            }
        }
        self.reported = now_reported;
        snap.metrics.push(Metric::gauge(
            "anomaly.active",
            vec![],
            verdicts.active as f64,
        ));
        snap.annotations.anomalies = verdicts
            .items
            .iter()
            .map(|v| Anomaly {
                name: v.name.clone(),
                tags: v.tags.clone(),
                state: v.state,
                score: v.score,
                value: v.value,
                usual: v.usual,
                since_s: v.since_s,
                description: v.description.clone(),
                changed: v.changed,
            })
            .collect();
        if verdicts.any_changed() {
            let worst = verdicts
                .items
                .iter()
                .map(|v| v.state)
                .max()
                .unwrap_or(State::Ok);
            snap.annotations.summary = Some(AnomalySummary {
                state: worst,
                active: verdicts.active,
                description: verdicts.summary(),
            });
            // Per key: detail for whoever debugs the detector; people read the incidents.
            for v in verdicts.items.iter().filter(|v| v.changed) {
                let what = if v.state == State::Ok {
                    "back to usual"
                } else {
                    v.state.as_str()
                };
                tracing::debug!("anomaly {what}: {}", v.description);
            }
        }
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
        verdicts
    }

    /// Groups the interval's verdicts into incidents: `snap.annotations.incidents`, the
    /// `incidents.open` gauge, one log line per open, escalation and close.
    fn group(&mut self, snap: &mut Snapshot, verdicts: &Verdicts, events: &[EventView]) {
        let kind_of = |name: &str, tags: &crate::snapshot::Tags| {
            snap.metrics
                .iter()
                .find(|m| m.name == name && &m.tags == tags)
                .map_or(Kind::Counter, |m| m.kind)
        };
        let signals: Vec<Signal> = verdicts
            .items
            .iter()
            .map(|v| Signal {
                kind: kind_of(&v.name, &v.tags),
                calls: (v.name == "syscall.errors").then(|| {
                    let now = snap
                        .value("syscall.count", &tag_refs(&v.tags))
                        .unwrap_or(0.0);
                    let usual = self
                        .detector
                        .status("syscall.count", &v.tags)
                        .map_or(0.0, |s| s.usual);
                    (now, usual)
                }),
                samples: crate::incident::samples_of(&v.name)
                    .and_then(|count| snap.value(count, &tag_refs(&v.tags))),
                memory: (v.name.starts_with("mem.") || v.name.starts_with("swap."))
                    .then(|| snap.value("mem.total_bytes", &[]))
                    .flatten(),
                name: v.name.clone(),
                tags: v.tags.clone(),
                value: v.value,
                usual: v.usual,
                state: v.state,
            })
            .collect();
        // The agent's own waits are not what an incident is about.
        let own = std::process::id();
        let events: Vec<EventView> = events.iter().filter(|e| e.pid != own).cloned().collect();
        let incidents = self.incidents.step(
            snap.unix_seconds(),
            snap.interval.as_secs_f64(),
            &signals,
            &events,
            self.detector.local_time(),
        );
        for i in &incidents {
            if let Some(c) = i.change {
                tracing::info!("incident {} {}: {}", i.id, c.as_str(), i.description);
            }
        }
        snap.metrics
            .push(metrics::INCIDENTS_OPEN.level(vec![], self.incidents.open() as f64));
        snap.annotations.incidents = incidents;
    }

    /// Writes the baseline (atomically); failures are logged once.
    pub fn save(&mut self) {
        self.last_save = Instant::now();
        let Some(path) = &self.state else { return };
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| self.detector.save(path));
        match r {
            Ok(()) => self.save_warned = false,
            Err(e) if !self.save_warned => {
                self.save_warned = true;
                tracing::warn!(
                    "cannot save the anomaly baseline to {}: {e}",
                    path.display()
                );
            }
            Err(_) => {}
        }
    }
}

fn tag_refs(tags: &crate::snapshot::Tags) -> Vec<(&str, &str)> {
    tags.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_survives_a_fifo_state_and_cleans_stale_temporaries_read_only_does_not() {
        let dir = std::env::temp_dir().join(format!("ebpf-agent-detection-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join(STATE_FILE);
        let c = std::ffi::CString::new(state.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A pid above the kernel's pid_max (at most 2^22): its writer is gone.
        let stale = dir.join(format!("{STATE_FILE}.tmp.99999999"));
        std::fs::write(&stale, b"partial").unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let ro = Detection::read_only(DetectorConfig::default(), &d);
            let stale_after_ro = d.join(format!("{STATE_FILE}.tmp.99999999")).exists();
            let rw = Detection::start(DetectorConfig::default(), Some(&d));
            let _ = tx.send((ro.loaded_keys, stale_after_ro, rw.loaded_keys));
        });
        let (ro_keys, stale_after_ro, rw_keys) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("start hung on a FIFO state file");
        assert_eq!((ro_keys, rw_keys), (0, 0));
        assert!(
            stale_after_ro,
            "watch (read-only) must not touch the state directory"
        );
        assert!(!stale.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reload that restarts detection keeps counting incidents, and closes the open one.
    #[test]
    fn incident_ids_go_on_across_a_restart_of_detection() {
        let mut old = Detection::open(DetectorConfig::default(), None);
        let resets = Signal {
            name: "tcp.resets".into(),
            tags: vec![],
            kind: Kind::Counter,
            value: 900.0,
            usual: 0.0,
            state: State::Critical,
            calls: None,
            samples: None,
            memory: None,
        };
        let local = old.detector.local_time().clone();
        let t0 = 1_764_684_000.0;
        let out = old.incidents.step(t0, 1.0, &[resets], &[], &local);
        assert_eq!(out[0].id, 1);
        let mut new = Detection::open(DetectorConfig::default(), None);
        new.carry_incidents_from(old);
        assert_eq!(new.incidents.next_id(), 2);
        let mut closes = vec![];
        for k in 1..30 {
            for i in new.incidents.step(t0 + k as f64, 1.0, &[], &[], &local) {
                if i.change.is_some() {
                    closes.push((i.id, i.state));
                }
            }
        }
        assert_eq!(closes, [(1, State::Ok)]);
    }
}
