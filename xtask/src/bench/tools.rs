//! The peer tools: found on this machine, installed with apt-get when missing.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The peer tools, found (and installed with apt-get when missing).
#[derive(Default)]
pub(super) struct Tools {
    pub(super) syscount: Option<PathBuf>,
    pub(super) biolatency: Option<PathBuf>,
    pub(super) runqlat: Option<PathBuf>,
    pub(super) bpftrace: Option<PathBuf>,
    pub(super) bpftool: Option<PathBuf>,
    pub(super) fio: Option<PathBuf>,
}

/// Debian packages and the command each provides.
const PEERS: [(&str, &str); 6] = [
    ("syscount", "libbpf-tools"),
    ("runqlat", "libbpf-tools"),
    ("biolatency", "libbpf-tools"),
    ("bpftrace", "bpftrace"),
    ("fio", "fio"),
    ("bpftool", "bpftool"),
];

impl Tools {
    fn find() -> Self {
        Tools {
            syscount: find_tool("syscount", "libbpf-tools"),
            biolatency: find_tool("biolatency", "libbpf-tools"),
            runqlat: find_tool("runqlat", "libbpf-tools"),
            bpftrace: find_tool("bpftrace", "bpftrace"),
            fio: find_tool("fio", "fio"),
            bpftool: find_tool("bpftool", "bpftool"),
        }
    }

    /// Installs the missing peers (idempotent: nothing runs when all are there).
    pub(super) fn install() -> Self {
        let found = Self::find();
        let mut missing: Vec<&str> = PEERS
            .iter()
            .filter(|(cmd, pkg)| find_tool(cmd, pkg).is_none())
            .map(|(_, pkg)| *pkg)
            .collect();
        missing.dedup();
        if missing.is_empty() {
            return found;
        }
        eprintln!("bench: installing {}", missing.join(" "));
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !apt(&["install", "-y", "-qq"]
            .iter()
            .chain(&missing)
            .copied()
            .collect::<Vec<_>>())
        {
            // The package lists may be missing or stale: refresh them once and retry.
            apt(&["update", "-qq"]);
            if !apt(&["install", "-y", "-qq"]
                .iter()
                .chain(&missing)
                .copied()
                .collect::<Vec<_>>())
            {
                eprintln!(
                    "bench: apt-get could not install {}: those configurations will fail",
                    missing.join(" ")
                );
            }
        }
        Self::find()
    }
}

/// A command on PATH or in the sbin directories, or listed by `dpkg -L pkg` (Debian versions
/// differ in where and under which name libbpf-tools installs).
fn find_tool(name: &str, pkg: &str) -> Option<PathBuf> {
    let path = env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"]);
    for d in dirs.filter(|d| !d.is_empty()) {
        let p = Path::new(d).join(name);
        if is_executable(&p) {
            return Some(p);
        }
    }
    let listed = crate::output(Command::new("dpkg").args(["-L", pkg]))?;
    listed
        .lines()
        .map(PathBuf::from)
        .filter(|p| {
            p.components()
                .any(|c| c.as_os_str() == "bin" || c.as_os_str() == "sbin")
        })
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f == name || f.ends_with(&format!("-{name}")))
                && is_executable(p)
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
