//! The public API as the agent uses it: one root whose files change between intervals.

use std::fs;
use std::path::{Path, PathBuf};

use agent_core::procfs::ProcfsCollector;
use agent_core::snapshot::{Kind, Metric};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/proc")
        .join(name)
}

/// Copies the fixture tree `from` over `to` (files and the `pressure/` directory).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn value(out: &[Metric], name: &str, kind: Kind) -> f64 {
    let m = out
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(m.kind, kind, "{name}");
    m.value
}

#[test]
fn procfs_same_root_changing_files() {
    let root = std::env::temp_dir().join(format!("ebpf-agent-procfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    copy_tree(&fixture("t0"), &root);

    let mut c = ProcfsCollector::new(&root);
    assert_eq!(c.root(), root);
    let mut first = Vec::new();
    c.collect(&mut first);
    assert!(first.iter().all(|m| m.kind == Kind::Gauge));

    copy_tree(&fixture("t1"), &root);
    let mut out = Vec::new();
    c.collect(&mut out);
    fs::remove_dir_all(&root).unwrap();

    assert_eq!(
        value(&out, "mem.used_bytes", Kind::Gauge),
        212_652.0 * 1024.0
    );
    assert_eq!(value(&out, "cpu.user_pct", Kind::Gauge), 30.0);
    assert_eq!(value(&out, "swap.out_pages", Kind::Counter), 32.0);
    assert_eq!(value(&out, "psi.io.full_stall_us", Kind::Counter), 3_000.0);
    assert_eq!(value(&out, "load.15", Kind::Gauge), 0.35);
}
