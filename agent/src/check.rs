//! `ebpf-agent check`: what this kernel and these privileges allow, one line per probe.

use std::{
    io::{self, Write},
    path::Path,
    process::ExitCode,
};

use agent_common::{RuntimeConfig, maps};
use anyhow::Result;

use crate::probes::{self, Kernel, Probe, ProbeOptions, tracefs};

/// One line on stdout; a closed stdout is an error the caller ends quietly on
/// ([`crate::output::stdout_closed`]).
fn line(what: &str, ok: bool, detail: &str) -> io::Result<()> {
    writeln!(
        io::stdout(),
        "{:<10} {:<4} {detail}",
        what,
        if ok { "ok" } else { "FAIL" }
    )
}

pub async fn check(cgroup_fs: &Path) -> Result<ExitCode> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    writeln!(
        io::stdout(),
        "{:<10} {:<4} {}",
        "kernel",
        "",
        release.trim()
    )?;
    let has_btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let forced = probes::classic_forced();
    let btf_users = probes::btf_capable_names();
    line(
        "btf",
        has_btf,
        &match (has_btf, forced) {
            (true, false) => {
                format!("/sys/kernel/btf/vmlinux: {btf_users} can use BTF tracepoints")
            }
            (true, true) => format!(
                "/sys/kernel/btf/vmlinux (unused: {}=1): {btf_users} use classic tracepoints (tracefs)",
                probes::CLASSIC_ENV
            ),
            _ => format!("no kernel BTF: {btf_users} use classic tracepoints (tracefs)"),
        },
    )?;
    let btf = has_btf && !forced;
    // With BTF, tracefs only serves the classic fallback: not having it is no failure.
    let not_needed = "not needed with BTF (only the classic fallback would use it)";
    if btf {
        match tracefs::find() {
            Ok(Some(p)) => line("tracefs", true, &p.display().to_string())?,
            Ok(None) => line("tracefs", true, &format!("not mounted; {not_needed}"))?,
            Err(e) => line("tracefs", true, &format!("{not_needed}: {e}"))?,
        }
    } else {
        match tracefs::ensure_mounted() {
            Ok(p) => line("tracefs", true, &p.display().to_string())?,
            Err(e) => line("tracefs", false, &e.to_string())?,
        }
    }
    let psi = Path::new("/proc/pressure").is_dir();
    line(
        "psi",
        psi,
        if psi {
            "/proc/pressure"
        } else {
            "no /proc/pressure: psi.* metrics absent"
        },
    )?;
    let (cg_ok, cg_line) = agent_core::cgroup::describe(
        cgroup_fs,
        Path::new(probes::cgroup::PODS_DIR),
        Path::new(probes::cgroup::CONTAINERS_DIR),
    );
    line("cgroupfs", cg_ok, &cg_line)?;

    let opts = ProbeOptions {
        probes: Probe::ALL.to_vec(),
        runtime: RuntimeConfig::default(),
        ring_bytes: maps::EVENTS_DEFAULT_BYTES,
        bpf_stats_every: 0,
    };
    let kernel = match Kernel::load(&opts) {
        Ok(k) => k,
        Err(e) => {
            line("bpf", false, &e.to_string())?;
            for p in Probe::ALL {
                line(p.name(), false, "not loaded")?;
            }
            return Ok(ExitCode::from(1));
        }
    };
    line(
        "bpf",
        true,
        "programs load; ring buffer and mmapable arrays available",
    )?;
    let mut all_ok = true;
    for s in kernel.status() {
        match &s.result {
            Ok(()) => {
                let hooks: Vec<String> = s.programs.iter().map(|p| p.attach.to_string()).collect();
                let detail = if hooks.is_empty() {
                    // Per-cgroup accounting runs inside the other probes' programs.
                    "loads; counted by the syscall, disk, tcp and runq programs when switched on \
                     ([enable] cgroup)"
                        .to_string()
                } else {
                    hooks.join(", ")
                };
                line(s.probe.name(), true, &detail)?;
            }
            Err(e) => {
                all_ok = false;
                line(s.probe.name(), false, e)?;
            }
        }
    }
    let ncpus = aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1);
    let (table, rest) = kernel.map_memory_split();
    line("memory", true, &memory_line(ncpus, table, rest))?;
    drop(kernel);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// CPU counts `check` projects kernel memory to.
pub const PROJECT_CPUS: [usize; 3] = [64, 128, 256];

/// Kernel map bytes at `ncpus` possible CPUs: the histogram table grows with CPUs (`table`
/// bytes measured at `measured_cpus`), the other maps (row index, in-flight tables, ring
/// buffers) do not.
pub fn projected_bytes(table: u64, rest: u64, measured_cpus: usize, ncpus: usize) -> u64 {
    table / measured_cpus.max(1) as u64 * ncpus as u64 + rest
}

/// `check`'s memory line: this host's figure, then the projection to bigger hosts.
fn memory_line(ncpus: usize, table: u64, rest: u64) -> String {
    let kib = |b: u64| b as f64 / 1024.0;
    let projection: Vec<String> = PROJECT_CPUS
        .iter()
        .map(|&n| {
            let b = projected_bytes(table, rest, ncpus, n);
            format!(
                "{n} CPUs {:.1} MiB ({:.0} KiB/CPU)",
                mib(b),
                kib(b) / n as f64
            )
        })
        .collect();
    format!(
        "{:.2} MiB of kernel maps for {ncpus} possible CPUs ({:.2} MiB per CPU; histogram table {:.0} KiB per CPU, other maps {:.2} MiB whatever the CPUs); projected: {}",
        mib(table + rest),
        mib(table + rest) / ncpus.max(1) as f64,
        kib(table) / ncpus.max(1) as f64,
        mib(rest),
        projection.join(", ")
    )
}

/// `ebpf-agent floor`: the benchmark's empty programs, attached until duration or a signal.
pub async fn floor(duration: Option<std::time::Duration>, clock: bool) -> Result<ExitCode> {
    let ebpf = probes::attach_floor(clock)?;
    eprintln!(
        "floor attached: {} sys_enter and sys_exit programs",
        if clock { "clock-reading" } else { "empty" }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let sleep =
        tokio::time::sleep(duration.unwrap_or(std::time::Duration::from_secs(u64::MAX / 4)));
    tokio::select! {
        _ = sleep => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(ebpf);
    Ok(ExitCode::SUCCESS)
}

/// `ebpf-agent read-cost`: userspace's reading cost per interval on a synthetic table (no BPF
/// needed), as one JSON line for the benchmark.
pub fn read_cost(cpus: usize, intervals: usize, cgroup: bool) -> ExitCode {
    match probes::read_cost(cpus.max(1), intervals.max(1), cgroup) {
        Ok(c) => {
            println!(
                "{}",
                serde_json::json!({
                    "cpus": c.ncpus,
                    "table_bytes": c.table_bytes,
                    "rows_read": c.rows_read,
                    "median_ms": c.median_ms,
                    "max_ms": c.max_ms,
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ebpf-agent: synthetic table: {e}");
            ExitCode::from(1)
        }
    }
}
