//! One-by-one events (slow syscalls, slow block requests, TCP opens and failed connects, long
//! run-queue waits) as people and JSON see them. Decoding the kernel's records is the probes'
//! business; this is what they produce.

use serde::Serialize;

/// An event rendered for people and JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventView {
    pub kind: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub latency_us: f64,
    /// Syscall name, device name, or `saddr:sport -> daddr:dport`.
    pub target: String,
    /// Syscall return value, or bytes of a block request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
}

/// Kind of a long run-queue wait of a task woken from sleep: it waited to answer or act.
pub const RUNQ_WOKEN: &str = "runq_wait";
/// Kind of a long run-queue wait of a task preempted while running: it was busy on a CPU.
pub const RUNQ_PREEMPTED: &str = "runq_preempted";
/// Kind of a failed TCP connect (refused, unreachable, timed out).
pub const TCP_CONNECT_FAILED: &str = "tcp_connect_failed";

pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
