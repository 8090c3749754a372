//! The ring buffer of one-by-one events (slow syscalls, slow block requests, TCP opens).
//!
//! Read on two occasions only, so an idle agent does not wake for it: when the kernel signals
//! that the buffer is filling (agent-ebpf's `wakeup_flags`: a quarter full), and at each
//! interval boundary ([`EventLog::drain`], called by the collector before it builds the
//! snapshot), so an event shows in the interval it happened in.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use agent_common::{Event, event::EVENT_SIZE};
pub use agent_core::events::EventView;
use aya::maps::{MapData, RingBuf};
use rustix::{
    buffer::spare_capacity,
    event::{EventfdFlags, epoll, eventfd},
};

/// Events kept for display between two intervals; beyond that they are counted only.
pub const KEEP_PER_INTERVAL: usize = 256;

#[derive(Default)]
struct State {
    recent: VecDeque<Event>,
    received: u64,
    ring: Option<RingBuf<MapData>>,
}

impl State {
    /// Reads every pending event: keeps the latest `KEEP_PER_INTERVAL`, counts them all.
    fn read_ring(&mut self) {
        let Some(rb) = self.ring.as_mut() else { return };
        while let Some(item) = rb.next() {
            self.received += 1;
            if item.len() >= EVENT_SIZE {
                if self.recent.len() == KEEP_PER_INTERVAL {
                    self.recent.pop_front();
                }
                // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
                self.recent
                    .push_back(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
            }
        }
    }
}

/// Events received since the last [`EventLog::drain`].
#[derive(Default)]
pub struct EventLog {
    state: Mutex<State>,
}

impl EventLog {
    /// Takes over the ring buffer; returns a duplicate of its fd for the [`Reader`] to wait on.
    pub fn attach(&self, rb: RingBuf<MapData>) -> io::Result<OwnedFd> {
        let fd = rb.as_fd().try_clone_to_owned()?;
        self.state.lock().expect("event log lock").ring = Some(rb);
        Ok(fd)
    }

    /// The kept events and the number received (kept or not) since the previous call,
    /// including those still in the ring buffer.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut st = self.state.lock().expect("event log lock");
        st.read_ring();
        let received = std::mem::take(&mut st.received);
        (st.recent.drain(..).collect(), received)
    }

    fn read_ring(&self) {
        self.state.lock().expect("event log lock").read_ring();
    }
}

/// The ring buffer's reader thread: it sleeps until the kernel signals that the buffer is
/// filling, so an idle agent never wakes for it, and a busy interval boundary on the runtime's
/// thread never delays it. Dropping it stops the thread.
pub struct Reader {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// epoll data of the two fds the reader waits on.
const RING: u64 = 0;
const STOP: u64 = 1;

impl Reader {
    /// Starts reading the ring buffer of `fd` (from [`EventLog::attach`]) into `log`.
    pub fn start(fd: OwnedFd, log: Arc<EventLog>) -> io::Result<Reader> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // Edge-triggered: reported on the kernel's wakeups only, not whenever events are
        // pending (those submitted without a wakeup wait for the watermark or the interval).
        epoll::add(
            &ep,
            &fd,
            epoll::EventData::new_u64(RING),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &ep,
            &stop,
            epoll::EventData::new_u64(STOP),
            epoll::EventFlags::IN,
        )?;
        let thread = std::thread::Builder::new()
            .name("ring-buffer".into())
            .spawn(move || {
                let _ring = fd; // open while the thread waits on it
                let mut ready = Vec::with_capacity(2);
                loop {
                    ready.clear();
                    match epoll::wait(&ep, spare_capacity(&mut ready), None) {
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            tracing::warn!(
                                "ring buffer reader stopped: {e}; events are read at each interval's end only"
                            );
                            return;
                        }
                    }
                    if ready.iter().any(|e| e.data.u64() == STOP) {
                        return;
                    }
                    log.read_ring();
                }
            })?;
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if rustix::io::write(&self.stop, &1u64.to_ne_bytes()).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}
