//! Per-cgroup attribution on the real kernel: cgroups created by the test in the v2 hierarchy
//! (`/sys/fs/cgroup/unified` on a hybrid host), loads of known size run inside them. Root, one
//! test at a time, under the machine's BPF lock (`cargo xtask test`).

mod common;

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{Agent, assert_in_catalogue, sum};

const FINISH: Duration = Duration::from_secs(30);

/// The v2 hierarchy's root on this host.
fn v2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// A cgroup made for the test, removed on drop even when the test fails (its processes have
/// exited by then: each load is a child that ends inside it).
struct TestCgroup {
    path: PathBuf,
    name: String,
}

impl TestCgroup {
    fn new(suffix: &str) -> TestCgroup {
        let name = format!("ebpf-agent-test-{}-{suffix}", std::process::id());
        let path = v2_root().join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup { path, name }
    }

    /// Forks a child that joins this cgroup and makes `n` getppid calls, and waits for it.
    /// In the cgroup the child makes only: the end of its `write` to cgroup.procs, the calls,
    /// and `exit_group` (which never returns, so is never counted).
    fn run_getppid(&self, n: usize) {
        let procs = CString::new(self.path.join("cgroup.procs").to_str().unwrap()).unwrap();
        // SAFETY: opening a path we own the string of.
        let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
        assert!(fd >= 0, "open {procs:?}");
        // SAFETY: the child only makes raw syscalls (no allocation, no locks) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // "0" moves the writing task itself.
            // SAFETY: raw syscalls on our fd, then getppid, then _exit.
            unsafe {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
                for _ in 0..n {
                    libc::syscall(libc::SYS_getppid);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(fd);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child could not join {}",
            self.path.display()
        );
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The calls a child makes in its cgroup besides its load (see `run_getppid`).
const ENTERING: f64 = 1.0;

#[test]
fn syscalls_are_counted_per_cgroup() {
    const A: usize = 30_000;
    const B: usize = 70_000;
    let (a, b) = (TestCgroup::new("a"), TestCgroup::new("b"));
    let mut agent = Agent::start(&[
        "run",
        "--output",
        "json",
        "--probes",
        "syscall,cgroup",
        "--duration",
        "3s",
    ]);
    agent.wait_ready();
    a.run_getppid(A);
    b.run_getppid(B);
    let intervals = agent.intervals(FINISH);
    assert_in_catalogue(&intervals);
    for (cg, n) in [(&a, A), (&b, B)] {
        let count = sum(&intervals, "cgroup.syscall.count", &[("cgroup", &cg.name)]);
        assert!(
            (n as f64..=n as f64 + ENTERING).contains(&count),
            "cgroup.syscall.count{{cgroup={}}} = {count}, want {n} (+{ENTERING})",
            cg.name
        );
        assert_eq!(
            sum(&intervals, "cgroup.syscall.errors", &[("cgroup", &cg.name)]),
            0.0
        );
        let p99 = sum(
            &intervals,
            "cgroup.syscall.latency_us.p99",
            &[("cgroup", &cg.name)],
        );
        assert!(p99 > 0.0, "p99 of {}", cg.name);
    }
    // Every call of every cgroup (other included) adds up to the host's count. The two blocks
    // of rows are read microseconds apart, so the calls made in between (other processes')
    // fall in different intervals: over the run they agree but for the first and last reads.
    let host = sum(&intervals, "syscall.count", &[]);
    let cgroups = sum(&intervals, "cgroup.syscall.count", &[]);
    assert!(
        (cgroups - host).abs() <= 50.0,
        "per-cgroup counts {cgroups} vs syscall.count {host}"
    );
}
