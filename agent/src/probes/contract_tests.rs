//! The kernel/user contract checked without a kernel: every map, global and program name the
//! agent uses must exist in the embedded object, with the sizes `agent-common` declares, and
//! every program with the hook kind the agent attaches it as. A mismatch fails here, not at run
//! time on someone's host.

use std::collections::HashMap;

use agent_common::{
    RuntimeConfig,
    maps::{self, GlobalSpec, MapSpec},
    probes::floor,
};
use aya_obj::{Object, ProgramSection};
use object::{Object as _, ObjectSymbol as _};

use super::{Attach, Probe, kernel::EBPF_OBJECT};

fn object() -> Object {
    Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses")
}

fn all_maps() -> Vec<MapSpec> {
    let mut v = maps::SHARED.to_vec();
    for p in Probe::ALL {
        v.extend_from_slice(p.def().maps());
    }
    v
}

#[test]
fn every_map_exists_with_the_declared_sizes() {
    let obj = object();
    for spec in all_maps() {
        let map = obj
            .maps
            .get(spec.name)
            .unwrap_or_else(|| panic!("map {} missing from the object", spec.name));
        if spec.value_size > 0 {
            assert_eq!(
                map.value_size() as usize,
                spec.value_size,
                "value size of map {}",
                spec.name
            );
        }
        if spec.max_entries > 0 {
            assert_eq!(
                map.max_entries(),
                spec.max_entries,
                "entries of map {}",
                spec.name
            );
        }
    }
    // And no map the agent does not know of (a dead map is kernel memory for nothing).
    let known: Vec<&str> = all_maps().iter().map(|m| m.name).collect();
    for name in obj.maps.keys() {
        let data_section = name.starts_with('.');
        assert!(
            data_section || known.contains(&name.as_str()),
            "map {name} is in the object but not in agent_common's contract"
        );
    }
}

#[test]
fn the_runtime_settings_start_as_the_defaults() {
    // The programs run from attach on; until the agent writes its settings they read the
    // section's initial bytes, which must say "no events, no filters".
    let obj = object();
    let data = obj.maps[maps::CONFIG].data();
    assert_eq!(data.len(), size_of::<RuntimeConfig>());
    // SAFETY: exactly one RuntimeConfig's bytes (checked above), plain integers, read unaligned.
    let initial: RuntimeConfig = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    assert_eq!(initial, RuntimeConfig::DEFAULT);
    assert_eq!(initial.slow_syscall_ns, RuntimeConfig::OFF);
}

#[test]
fn every_global_exists_with_the_declared_size() {
    let file = object::File::parse(EBPF_OBJECT).expect("ELF");
    let symbols: HashMap<String, u64> = file
        .symbols()
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.size())))
        .collect();
    let mut globals: Vec<GlobalSpec> = Probe::ALL
        .into_iter()
        .flat_map(|p| p.def().globals().iter().copied())
        .collect();
    // Set by the loader from aya-log's name: the same symbol.
    assert_eq!(maps::GLOBAL_LOG_LEVEL, aya_log::LEVEL);
    globals.push(GlobalSpec {
        name: maps::GLOBAL_LOG_LEVEL,
        size: 1,
    });
    assert!(!globals.is_empty());
    for g in globals {
        assert_eq!(
            symbols.get(g.name).copied(),
            Some(g.size as u64),
            "global {} (size {})",
            g.name,
            g.size
        );
    }
}

#[test]
fn every_program_exists_with_its_hook_kind() {
    let obj = object();
    let mut used = Vec::new();
    for p in Probe::ALL {
        for set in p.def().variants() {
            for prog in *set {
                let section = &obj
                    .programs
                    .get(prog.name)
                    .unwrap_or_else(|| panic!("program {} of probe {p} missing", prog.name))
                    .section;
                let ok = matches!(
                    (prog.attach, section),
                    (Attach::Raw(_), ProgramSection::RawTracePoint)
                        | (Attach::Tracepoint(..), ProgramSection::TracePoint)
                        | (Attach::Btf(_), ProgramSection::BtfTracePoint)
                );
                assert!(
                    ok,
                    "program {} is a {section:?}, attached as {}",
                    prog.name, prog.attach
                );
                used.push(prog.name);
            }
        }
    }
    used.extend_from_slice(floor::PROGRAMS);
    for name in obj.programs.keys() {
        assert!(
            used.contains(&name.as_str()),
            "program {name} is in the object but no probe uses it"
        );
    }
}

#[test]
fn the_object_declares_a_gpl_compatible_licence() {
    // GPL-only helpers (ring buffer, bpf_skc_to_tcp_sock) need it; the crate is MIT/Apache.
    assert_eq!(object().license.to_str().unwrap(), "Dual MIT/GPL");
}

#[test]
fn probes_rows_tile_the_table_in_registry_order() {
    let mut next = 0;
    for p in Probe::ALL {
        let b = p.def().block();
        assert_eq!(b.start, next, "probe {p} starts where the previous ends");
        next = b.end();
    }
    assert_eq!(next, agent_common::layout::ROWS);
}

#[test]
fn the_histogram_table_and_row_index_are_mmapable_rows() {
    use agent_common::layout;
    let obj = object();
    let flags = |name: &str| obj.maps.get(name).expect("map").map_flags();
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    assert_ne!(
        flags(maps::HIST) & BPF_F_MMAPABLE,
        0,
        "HIST must be mmapable"
    );
    assert_ne!(
        flags(maps::ROW_INDEX) & BPF_F_MMAPABLE,
        0,
        "ROW_INDEX must be mmapable"
    );
    assert_eq!(
        obj.maps[maps::HIST].value_size() as usize,
        layout::ROW_BYTES
    );
    // Every index cell lies in the map, and every indexed probe's index names its own block.
    assert_eq!(
        obj.maps[maps::ROW_INDEX].max_entries() as usize,
        layout::INDEX_CELLS
    );
    for p in Probe::ALL {
        if let Some(ix) = p.def().index() {
            assert_eq!(ix.block, p.def().block(), "probe {p}'s index");
            assert!(ix.cell(ix.keys - 1) < layout::INDEX_CELLS);
        }
    }
}

/// Kernel memory per possible CPU, projected from the object's maps: the histogram table per
/// CPU, plus every other map (which does not grow with CPUs; hash entries counted with the
/// kernel's per-element overhead) spread over the CPUs.
#[test]
fn kernel_memory_stays_under_256_kib_per_cpu_at_256_cpus() {
    use agent_common::layout;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let obj = object();
    let mut rest = 0u64;
    for (name, map) in &obj.maps {
        if name == maps::HIST {
            continue;
        }
        let entries = u64::from(map.max_entries().max(1));
        let per_entry = match map.map_type() {
            BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH => {
                u64::from(map.key_size() + map.value_size()) + 64
            }
            _ => u64::from(map.value_size().max(1)).next_multiple_of(8),
        };
        rest += entries * per_entry;
    }
    for n in crate::check::PROJECT_CPUS {
        let table = (n * layout::CPU_BYTES) as u64;
        let per_cpu = crate::check::projected_bytes(table, rest, n, n) / n as u64;
        println!("{n} CPUs: {} KiB per CPU", per_cpu / 1024);
        if n == 256 {
            assert!(
                per_cpu <= 256 * 1024,
                "{per_cpu} bytes of kernel maps per CPU at {n} CPUs (target 256 KiB)"
            );
        }
    }
}
