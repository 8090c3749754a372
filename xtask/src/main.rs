//! Developer and CI tasks: `cargo xtask setup | build | run | test | bench | nab`.
//!
//! `setup` installs, idempotently, what a fresh machine lacks to build the kernel programs
//! (nightly's rust-src, bpf-linker 0.10.4) and to run the tests (StatsD and Riemann peers,
//! bpftool). `run` and `test` call it first, so one command does everything.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod nab;

const BPF_LINKER_VERSION: &str = "0.10.4";
const NIGHTLY: &str = "nightly";

#[derive(Parser)]
#[command(name = "xtask", about = "ebpf-agent build tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build and test prerequisites (idempotent).
    Setup {
        /// Only what building needs (no test peers).
        #[arg(long)]
        build_only: bool,
    },
    /// Build the release binary (target/release/ebpf-agent).
    Build,
    /// Setup, build, then run the agent as root printing per-second metrics; extra arguments go
    /// to `ebpf-agent run` (e.g. `cargo xtask run -- --output json`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then every check and test: formatting, clippy, unit tests, and the integration
    /// tests that load the programs into the running kernel (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Overhead and accuracy against the peer tools (syscount, biolatency, bpftrace, the
    /// empty-program floor), interleaved rounds; prints tables with PASS/MISS per target and
    /// writes JSON (needs root; installs the peers). Exits non-zero only if a configuration
    /// could not run.
    Bench {
        /// A short run (CI): everything briefly, figures indicative only.
        #[arg(long)]
        smoke: bool,
        /// Where to write the JSON results (relative to the workspace root).
        #[arg(long, default_value = "bench-results/bench.json")]
        out: PathBuf,
        /// Only these sections (comma-separated): syscalls, disk, disk_loop, tcp, runq,
        /// agent_itself, ring_buffer, accuracy_sleep, accuracy_disk, kernel_costs,
        /// kernel_costs_peers, memory.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The Numenta Anomaly Benchmark: `ebpf-agent detect` over every series of a NAB checkout
    /// (github numenta/NAB, AGPL: kept outside this repository), scored by NAB's own scorer
    /// (Python 3.6 venv under ~/.cache); prints the three profiles' scores and per-category
    /// figures. Writes under target/nab.
    Nab {
        /// Root of the NAB checkout.
        path: PathBuf,
        /// Passed to `detect --sensitivity`.
        #[arg(long, default_value_t = 1.0)]
        sensitivity: f64,
        /// Use this `ebpf-agent` instead of building the release binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup { build_only } => setup(&root, !build_only),
        Cmd::Build => {
            setup(&root, false)?;
            cargo(&["build", "--release", "--package", "agent"])
        }
        Cmd::Run { args } => {
            setup(&root, false)?;
            cargo(&["build", "--release", "--package", "agent"])?;
            require_root("run")?;
            let mut cmd = Command::new(root.join("target/release/ebpf-agent"));
            cmd.arg("run").args(&args);
            status(&mut cmd)
        }
        Cmd::Test { args } => {
            setup(&root, true)?;
            require_root("test")?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            // Every crate but the eBPF one (built by agent/build.rs). One test thread:
            // integration tests load programs into the same kernel and count the same
            // system-wide events.
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--",
                "--test-threads=1",
            ];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)
        }
        Cmd::Bench { smoke, out, only } => bench::run(&root, bench::Options { smoke, out, only }),
        Cmd::Nab {
            path,
            sensitivity,
            agent,
        } => nab::run(
            &root,
            nab::Options {
                nab: path,
                sensitivity,
                agent,
            },
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("`cargo xtask {what}` loads eBPF programs and needs root: run it with sudo -E");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?} failed ({s})");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    status(Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup(root: &Path, test_peers: bool) -> Result<()> {
    // Nightly: the machine's toolchain manager has it; it cannot be downloaded here.
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context("the nightly toolchain is missing: `rustup toolchain install nightly`")?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        eprintln!("xtask: installing rust-src for {NIGHTLY}");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION}");
        // Stable cargo builds it; it loads rustc's own LLVM, so no system LLVM is needed.
        status(Command::new("cargo").args([
            "+stable",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    if test_peers {
        // bpftool: the tests count the programs left in the kernel; systemd-analyze, capsh,
        // setpriv and unshare: the deployment and degradation tests.
        apt_install(&[
            ("bpftool", "bpftool"),
            ("systemd-analyze", "systemd"),
            ("capsh", "libcap2-bin"),
            ("setpriv", "util-linux"),
            ("unshare", "util-linux"),
        ])?;
        let script = root.join("tests/peers/setup.sh");
        if script.exists() {
            status(Command::new("bash").arg(script))?;
        }
    }
    Ok(())
}

/// Installs Debian packages whose command is missing: (command, package).
fn apt_install(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    let mut missing = missing;
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
