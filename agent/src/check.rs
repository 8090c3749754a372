//! `ebpf-agent check`: what this kernel and these privileges allow, one line per probe.

use std::{
    io::{self, Write},
    path::Path,
    process::ExitCode,
};

use agent_common::{RuntimeConfig, layout, maps};
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

pub async fn check() -> Result<ExitCode> {
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
                line(s.probe.name(), true, &hooks.join(", "))?;
            }
            Err(e) => {
                all_ok = false;
                line(s.probe.name(), false, e)?;
            }
        }
    }
    let ncpus = aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1);
    let bytes = kernel.map_memory_bytes();
    line(
        "memory",
        true,
        &format!(
            "{:.2} MiB of kernel maps for {ncpus} possible CPUs ({:.2} MiB per CPU; histogram table {:.2} MiB per CPU)",
            mib(bytes),
            mib(bytes) / ncpus as f64,
            mib(layout::CPU_BYTES as u64)
        ),
    )?;
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
