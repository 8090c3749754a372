//! The loads the benchmark drives: a getppid loop, nanosleep loops, loopback TCP, fio.

use std::{
    fs,
    hint::black_box,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The CPU the syscall loops are pinned to: the last one this process may use.
pub fn load_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap_or(0)
    }
}

/// Runs `f` on a new thread pinned to `cpu` (only that thread: helper processes started by
/// the main thread keep the whole machine).
pub fn pinned<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: as above; 0 = the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        f()
    })
    .join()
    .expect("load thread panicked")
}

#[inline(never)]
fn getppid_calls(n: u64) {
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
}

/// Nanoseconds per getppid over `calls` calls.
pub fn getppid_ns(calls: u64) -> f64 {
    let t = Instant::now();
    getppid_calls(calls);
    t.elapsed().as_nanos() as f64 / calls as f64
}

/// getppid as fast as possible for `d`: (calls, seconds).
pub fn getppid_for(d: Duration) -> (u64, f64) {
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < d {
        getppid_calls(20_000);
        calls += 20_000;
    }
    (calls, start.elapsed().as_secs_f64())
}

/// getppid as fast as possible for `d` on one thread pinned to each of `cpus`: (calls in all,
/// seconds).
pub fn getppid_on(cpus: &[usize], d: Duration) -> (u64, f64) {
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| thread::spawn(move || pinned(cpu, move || getppid_for(d))))
        .collect();
    let runs: Vec<(u64, f64)> = threads
        .into_iter()
        .map(|t| t.join().expect("load thread panicked"))
        .collect();
    let calls = runs.iter().map(|r| r.0).sum();
    let secs = runs.iter().map(|r| r.1).fold(0.0, f64::max);
    (calls, secs)
}

/// The CPUs this process may use.
pub fn all_cpus() -> Vec<usize> {
    // SAFETY: as in `load_cpu`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Raw `nanosleep(req)` (syscall 35, not glibc's clock_nanosleep) in a loop for `total`: for
/// each call, when it returned (seconds since the epoch) and its latency measured around it, in
/// microseconds.
pub fn nanosleep_loop(req: Duration, total: Duration) -> Vec<(f64, f64)> {
    let ts = libc::timespec {
        tv_sec: req.as_secs() as libc::time_t,
        tv_nsec: req.subsec_nanos() as libc::c_long,
    };
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < total {
        let t = Instant::now();
        // SAFETY: ts is a valid timespec; the remainder pointer may be null.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            );
        }
        let us = t.elapsed().as_nanos() as f64 / 1000.0;
        out.push((crate::bench::proc::unix(SystemTime::now()), us));
    }
    out
}

/// A loop device over a sparse file in /dev/shm (tmpfs); detached and removed when dropped.
pub struct LoopDev {
    pub dev: PathBuf,
    backing: PathBuf,
}

impl LoopDev {
    pub fn new(mib: u64) -> Result<Self> {
        let backing = PathBuf::from(format!(
            "/dev/shm/ebpf-agent-bench-{}.img",
            std::process::id()
        ));
        fs::File::create(&backing)
            .and_then(|f| f.set_len(mib << 20))
            .with_context(|| format!("creating {}", backing.display()))?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .context("running losetup");
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => {
                let _ = fs::remove_file(&backing);
                bail!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            Err(e) => {
                let _ = fs::remove_file(&backing);
                return Err(e);
            }
        };
        Ok(LoopDev {
            dev: dev.into(),
            backing,
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = fs::remove_file(&self.backing);
    }
}

const MSG: usize = 64;

/// Loopback TCP, one short connection per operation: connect, send 64 bytes, receive 64 bytes,
/// close. The server closes first, so TIME_WAIT stays on its side and the client's ports are
/// not exhausted. Returns operations per second over `d`.
pub fn tcp_short_connections(d: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<()> {
            let mut buf = [0u8; MSG];
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut s = conn?;
                s.set_nodelay(true)?;
                if s.read_exact(&mut buf).is_ok() {
                    s.write_all(&buf)?;
                }
            }
            Ok(())
        })
    };
    let result = (|| -> Result<f64> {
        let req = [7u8; MSG];
        let mut resp = [0u8; MSG];
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < d {
            let mut c = TcpStream::connect(addr).context("loopback connect")?;
            c.set_nodelay(true)?;
            c.write_all(&req)?;
            c.read_exact(&mut resp)?;
            // The server's FIN: it closed first.
            let mut eof = [0u8; 1];
            let _ = c.read(&mut eof);
            ops += 1;
        }
        Ok(ops as f64 / start.elapsed().as_secs_f64())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    server.join().expect("tcp server panicked")?;
    result
}

/// Loopback TCP, one connection, 64-byte request and 64-byte reply per operation (TCP_NODELAY).
/// Returns round trips per second over `d`.
pub fn tcp_ping_pong(d: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; MSG];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let result = (|| -> Result<f64> {
        let mut c = TcpStream::connect(addr).context("loopback connect")?;
        c.set_nodelay(true)?;
        let req = [7u8; MSG];
        let mut resp = [0u8; MSG];
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < d {
            for _ in 0..64 {
                c.write_all(&req)?;
                c.read_exact(&mut resp)?;
            }
            ops += 64;
        }
        let rate = ops as f64 / start.elapsed().as_secs_f64();
        c.shutdown(Shutdown::Both)?;
        Ok(rate)
    })();
    server.join().expect("tcp server panicked")?;
    result
}

/// Two threads pinned to `cpu` passing a byte back and forth through pipes for `d`: every
/// round trip is two context switches, each ending a run-queue wait. Round trips per second.
pub fn pipe_ping_pong(cpu: usize, d: Duration) -> Result<f64> {
    fn pipe() -> Result<(fs::File, fs::File)> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe");
        }
        // SAFETY: two fresh descriptors, each owned by one File from here on.
        Ok(unsafe { (fs::File::from_raw_fd(fds[1]), fs::File::from_raw_fd(fds[0])) })
    }
    let (mut to_b, mut from_a) = pipe()?;
    let (mut to_a, mut from_b) = pipe()?;
    let echo = thread::spawn(move || {
        pinned(cpu, move || {
            let mut byte = [0u8];
            // Ends when the other side closes its end.
            while from_a.read_exact(&mut byte).is_ok() && to_a.write_all(&byte).is_ok() {}
        })
    });
    let rate = pinned(cpu, move || -> Result<f64> {
        let mut byte = [7u8];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            for _ in 0..256 {
                to_b.write_all(&byte)?;
                from_b.read_exact(&mut byte)?;
            }
            n += 256;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    });
    echo.join().expect("echo thread panicked");
    rate
}

/// One fio run's figures.
pub struct Fio {
    pub iops: f64,
    /// Writes completed, and fio's own run time (ms) for them.
    pub ios: f64,
    pub runtime_ms: f64,
    /// Write completion latency (submission to completion, as fio sees it), microseconds.
    pub clat_p50_us: Option<f64>,
    pub clat_p99_us: Option<f64>,
}

/// fio: 4 KiB O_DIRECT random writes with an fdatasync after each, one job, on `file`.
pub fn fio(fio: &Path, file: &Path, size_mib: u64, secs: f64) -> Result<Fio> {
    let out = Command::new(fio)
        .args([
            "--name=bench",
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--fdatasync=1",
            "--ioengine=psync",
            "--numjobs=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size_mib}m"))
        .arg(format!("--runtime={}ms", (secs * 1000.0) as u64))
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // fio may print notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('{').context("no JSON from fio")?..];
    let v: Value = serde_json::from_str(json).context("fio's JSON")?;
    let write = &v["jobs"][0]["write"];
    let pct = |p: &str| {
        write["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    Ok(Fio {
        iops: write["iops"]
            .as_f64()
            .context("no write IOPS in fio's JSON")?,
        ios: write["total_ios"].as_f64().unwrap_or(0.0),
        runtime_ms: write["runtime"].as_f64().unwrap_or(0.0),
        clat_p50_us: pct("50.000000"),
        clat_p99_us: pct("99.000000"),
    })
}
