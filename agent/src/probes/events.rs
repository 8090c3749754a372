//! The ring buffer of one-by-one events (slow syscalls, slow block requests, TCP opens),
//! consumed asynchronously as it fills, independent of the per-second collection.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use agent_common::{Event, event::EVENT_SIZE};
pub use agent_core::events::EventView;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How often the ring buffer is drained without a wakeup from the kernel.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Events kept for display between two intervals; beyond that they are counted only.
pub const KEEP_PER_INTERVAL: usize = 256;

#[derive(Default)]
struct State {
    recent: VecDeque<Event>,
    received: u64,
}

/// Events received since the last [`EventLog::drain`].
#[derive(Default)]
pub struct EventLog {
    state: Mutex<State>,
}

impl EventLog {
    fn push_batch(&self, batch: &mut Vec<Event>, received: u64) {
        let mut st = self.state.lock().expect("event log lock");
        st.received += received;
        for e in batch.drain(..) {
            if st.recent.len() == KEEP_PER_INTERVAL {
                st.recent.pop_front();
            }
            st.recent.push_back(e);
        }
    }

    /// The kept events and the number received (kept or not) since the previous call.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut st = self.state.lock().expect("event log lock");
        let received = std::mem::take(&mut st.received);
        (st.recent.drain(..).collect(), received)
    }
}

/// Reads the ring buffer whenever the kernel signals data, until the task is dropped.
pub async fn consume(rb: RingBuf<MapData>, log: Arc<EventLog>) -> std::io::Result<()> {
    // SAFETY: the fd belongs to `rb`, which the AsyncFd owns: it stays open while registered.
    let mut fd =
        unsafe { AsyncFd::register(rb) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut batch = Vec::with_capacity(KEEP_PER_INTERVAL);
    // The kernel side submits without waking us unless the buffer is filling up (see
    // agent-ebpf's wakeup_flags): drain on this timer too.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                n
            }
            _ = tick.tick() => drain(fd.get_mut(), &mut batch),
        };
        log.push_batch(&mut batch, received);
    }
}

/// Reads every pending event, keeping up to `KEEP_PER_INTERVAL` in `batch`; returns how many.
fn drain(rb: &mut RingBuf<MapData>, batch: &mut Vec<Event>) -> u64 {
    let mut received = 0u64;
    while let Some(item) = rb.next() {
        received += 1;
        if item.len() >= EVENT_SIZE && batch.len() < KEEP_PER_INTERVAL {
            // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
            batch.push(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
        }
    }
    received
}
