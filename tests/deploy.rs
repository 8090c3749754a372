//! Deployment artifacts, checked with real tools and run the way they deploy the agent:
//! - `packaging/systemd/ebpf-agent.service`: `systemd-analyze verify` and `security`; the agent
//!   run as a non-root user holding exactly the unit's ambient capabilities; the unit itself
//!   started by a real systemd (PID 1 of private namespaces) with all its sandboxing.
//! - `deploy/kubernetes/`: validated against the Kubernetes API schemas (kubernetes-validate,
//!   strict), its structure asserted, and the agent run as the DaemonSet's container would be:
//!   its own root, mounts and namespaces, uid 0 with only the manifest's capabilities.
//! - `Dockerfile`: hadolint, and the shape the issue asks for.
//!
//! Root and a real kernel, one test at a time (`cargo xtask test`). The Python tools install
//! themselves into target/peers on first use (PyPI); a test fails, never skips, without them.

use std::{
    collections::BTreeSet,
    fs,
    net::UdpSocket,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const UNIT: &str = "packaging/systemd/ebpf-agent.service";
/// The highest `systemd-analyze security` exposure accepted (0 = locked down, 10 = exposed).
const MAX_EXPOSURE: f64 = 3.0;
/// Every probe of a default `run`.
const PROBES: [&str; 5] = ["syscall", "disk", "tcp", "runq", "procfs"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ lives in the workspace")
        .to_path_buf()
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ebpf-agent")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A fresh directory of this test process under `base`, removed first if left over.
fn scratch_in(base: &Path, name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = base.join(format!(
        "ebpf-agent-deploy-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn scratch(name: &str) -> PathBuf {
    scratch_in(Path::new(env!("CARGO_TARGET_TMPDIR")), name)
}

/// Runs `cmd`, killed after `secs` (coreutils `timeout`), and returns its output.
fn run_for(secs: u32, cmd: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(secs.to_string())
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    eprintln!(
        "$ {cmd} {}\n-> {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// --- systemd ---------------------------------------------------------------------------------

/// Values of `Key=` in a unit file (comments skipped), in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The unit's ambient capabilities, as written (`CAP_BPF`, ...).
fn unit_caps(unit: &str) -> Vec<String> {
    directive(unit, "AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// `CAP_BPF` -> `bpf` (setpriv's names).
fn setpriv_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_ascii_lowercase()
}

/// The names in a capability mask (`capsh --decode`), e.g. {cap_bpf, cap_perfmon}.
fn decode_caps(hex: &str) -> BTreeSet<String> {
    let out = Command::new("capsh")
        .arg(format!("--decode={hex}"))
        .output()
        .expect("capsh (Debian: libcap2-bin)");
    let s = text(&out.stdout);
    s.trim()
        .split_once('=')
        .map(|(_, names)| names)
        .unwrap_or("")
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn cap_set(caps: &[String]) -> BTreeSet<String> {
    caps.iter().map(|c| c.to_ascii_lowercase()).collect()
}

#[test]
fn unit_declares_least_privilege_and_hardening() {
    let unit = read(UNIT);
    let one = |k: &str| {
        let v = directive(&unit, k);
        assert_eq!(v.len(), 1, "{k}= set once in the unit, got {v:?}");
        v[0].clone()
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/ebpf-agent run --output none"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RestartSec"), "5");
    assert_eq!(one("StateDirectory"), "ebpf-agent");
    assert!(["simple", "exec"].contains(&one("Type").as_str()));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
    ] {
        assert_eq!(one(k), v, "{k}=");
    }
    assert!(!one("MemoryMax").is_empty() && !one("CPUQuota").is_empty());
    // The allow list must keep the two BPF system calls.
    let filter = directive(&unit, "SystemCallFilter");
    assert!(
        filter.iter().any(|f| !f.starts_with('~')
            && f.contains("@system-service")
            && f.contains("bpf")
            && f.contains("perf_event_open")),
        "SystemCallFilter= must allow @system-service bpf perf_event_open: {filter:?}"
    );
    // Capabilities: the same few in both sets, never CAP_SYS_ADMIN.
    let ambient = cap_set(&unit_caps(&unit));
    let bounding = cap_set(
        &directive(&unit, "CapabilityBoundingSet")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        ambient, bounding,
        "AmbientCapabilities= = CapabilityBoundingSet="
    );
    assert!(ambient.contains("cap_bpf") && ambient.contains("cap_perfmon"));
    assert!(
        !ambient.contains("cap_sys_admin"),
        "CAP_SYS_ADMIN is not needed"
    );
    // Options that break BPF in a unit: capabilities in a user namespace are worthless to it.
    assert!(directive(&unit, "PrivateUsers").iter().all(|v| v == "no"));
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    // `verify` checks that ExecStart='s binary exists: a copy of the unit points at the binary
    // under test; everything else is the file as shipped.
    let dir = scratch("verify");
    let unit = read(UNIT);
    assert!(unit.contains("ExecStart=/usr/local/bin/ebpf-agent "));
    let copy = dir.join("ebpf-agent.service");
    fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/ebpf-agent ",
            &format!("ExecStart={} ", bin()),
        ),
    )
    .unwrap();
    let out = run_for(60, "systemd-analyze", &["verify", copy.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Findings about other units of this machine are not ours; any about this one fail.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ebpf-agent"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:#?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unit_security_exposure_is_low() {
    let unit = repo().join(UNIT);
    let out = run_for(
        60,
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--no-pager",
            unit.to_str().unwrap(),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{stdout}"
    );
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ebpf-agent.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}"));
    // What is left exposed, and why, is in the unit's comments.
    for l in stdout.lines().filter(|l| l.starts_with('✗')) {
        eprintln!("{l}");
    }
    eprintln!("systemd-analyze security: exposure {score} (at most {MAX_EXPOSURE})");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );
}

/// A copy of the binary that any uid can execute (the checkout may be under /root).
struct PublicBin {
    dir: PathBuf,
    path: PathBuf,
}

impl PublicBin {
    fn new() -> PublicBin {
        let dir = scratch_in(&std::env::temp_dir(), "bin");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("ebpf-agent");
        fs::copy(bin(), &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        PublicBin { dir, path }
    }
}

impl Drop for PublicBin {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `setpriv` arguments for uid/gid 65534 (nobody) holding exactly `caps` (setpriv names),
/// ambient as systemd grants them.
fn as_nobody_with(caps: &[String]) -> Vec<String> {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

/// `agent.probe_up` of the last interval, per probe.
fn probe_up(intervals: &[Value]) -> Vec<(String, f64)> {
    let last = intervals.last().expect("at least one interval");
    last["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "agent.probe_up")
        .map(|m| {
            (
                m["tags"]["probe"].as_str().unwrap().to_string(),
                m["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[test]
fn agent_runs_as_non_root_with_exactly_the_units_capabilities() {
    let unit = read(UNIT);
    let caps: Vec<String> = unit_caps(&unit).iter().map(|c| setpriv_name(c)).collect();
    let agent = PublicBin::new();
    // `env`: variables for the agent (setpriv execs `env`, which execs the agent: ambient
    // capabilities survive both).
    let run_env = |caps: &[String], env: &[&str], args: &[&str]| {
        let mut a = as_nobody_with(caps);
        a.push("env".into());
        a.extend(env.iter().map(|s| s.to_string()));
        a.push(agent.path.to_str().unwrap().into());
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_for(60, "setpriv", &a)
    };
    let run = |caps: &[String], args: &[&str]| run_env(caps, &[], args);

    // All of them: every probe up. `--config /dev/null`: this machine's config plays no part;
    // a scratch state dir the agent's user may write: nor does the host's baseline.
    let state = scratch_in(&std::env::temp_dir(), "state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(
        &caps,
        &[
            "run",
            "--config",
            "/dev/null",
            "--state-dir",
            state.to_str().unwrap(),
            "--output",
            "json",
            "--duration",
            "2s",
        ],
    );
    assert!(
        out.status.success(),
        "agent with {caps:?} failed: {}",
        out.status
    );
    let _ = fs::remove_dir_all(&state);
    let intervals = json_lines(&text(&out.stdout));
    assert!(intervals.len() >= 2, "2 intervals, got {}", intervals.len());
    let up = probe_up(&intervals);
    eprintln!("uid 65534 with {caps:?}: {up:?}");
    for p in PROBES {
        assert!(
            up.iter().any(|(n, v)| n == p && *v == 1.0),
            "agent.probe_up{{probe={p}}} = 1 with the unit's capabilities {caps:?}: {up:?}"
        );
    }

    // Each of them is needed: without any one, `check` reports a probe it cannot run. Reading
    // tracefs (CAP_DAC_READ_SEARCH) serves only the classic tracepoints: on a kernel with BTF
    // every probe runs without it, and it is needed where the classic ones are (a kernel
    // without BTF, played by EBPF_AGENT_CLASSIC_TRACEPOINTS=1).
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        if missing == "dac_read_search" && btf {
            let out = run(&fewer, &["check"]);
            let report = text(&out.stdout);
            eprintln!("without {missing}, BTF tracepoints:\n{report}");
            assert!(
                out.status.success() && report.contains("tp_btf:block_rq_issue"),
                "every probe up on BTF tracepoints without {missing}:\n{report}"
            );
        }
        let out = run_env(&fewer, &["EBPF_AGENT_CLASSIC_TRACEPOINTS=1"], &["check"]);
        let report = text(&out.stdout);
        eprintln!("without {missing}, classic tracepoints:\n{report}");
        assert!(
            !out.status.success() && report.contains("FAIL"),
            "the agent does not need {missing}? `check` passed with {fewer:?}:\n{report}"
        );
    }
}

/// Runs the shipped unit under a real systemd: PID 1 of private pid, mount and UTS namespaces,
/// only this unit on its search path, its own cgroup. What the namespace's mounts replace
/// (/run, /var/lib, /usr/local/bin, /etc/ebpf-agent) stays out of the host's files.
const BOOT_SYSTEMD: &str = r#"
set -euo pipefail
dir=$1 bin=$2 systemd=$3
name=ebpf-agent-deploy-test-$$
cgroups=()
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    cgroups=(/sys/fs/cgroup)
else
    [ -d /sys/fs/cgroup/systemd ] && cgroups+=(/sys/fs/cgroup/systemd)
    [ -e /sys/fs/cgroup/unified/cgroup.controllers ] && cgroups+=(/sys/fs/cgroup/unified)
fi
cleanup() {
    # Every hierarchy, in case systemd made groups in controllers too.
    for c in /sys/fs/cgroup/"$name" /sys/fs/cgroup/*/"$name"; do
        [ -d "$c" ] || continue
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            find "$c" -depth -type d -exec rmdir {} + 2>/dev/null && break
            sleep 0.2
        done
    done
}
trap cleanup EXIT
for c in "${cgroups[@]}"; do mkdir "$c/$name"; done
(
    for c in "${cgroups[@]}"; do echo "$BASHPID" > "$c/$name/cgroup.procs"; done
    exec unshare --pid --fork --kill-child --mount --uts --propagation private -- bash -c '
        set -euo pipefail
        dir=$1 bin=$2 systemd=$3
        mount -t proc proc /proc
        # The manager writes to this file, never to the real console.
        touch "$dir/console"
        mount --bind "$dir/console" /dev/console
        mount -t tmpfs tmpfs /run
        mount -t tmpfs tmpfs /var/lib
        mount -t tmpfs tmpfs /usr/local/bin
        install -m 0755 "$bin" /usr/local/bin/ebpf-agent
        if [ -d /etc/ebpf-agent ]; then mount -t tmpfs tmpfs /etc/ebpf-agent; fi
        exec env -i container=ebpf-agent-test SYSTEMD_UNIT_PATH="$dir/units" \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            "$systemd" --system --unit=ebpf-agent-test.target --show-status=no \
            --log-target=console --log-level=notice
    ' bash "$dir" "$bin" "$systemd"
)
"#;

/// Boots systemd with the shipped unit (plus a drop-in: 3 intervals of JSON, output to files,
/// the main process's status recorded) and asserts every probe was up. Returns the main
/// process's status lines.
fn run_unit_under_systemd() -> String {
    let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd is installed (systemd-analyze comes with it)");
    let dir = scratch("systemd");
    let units = dir.join("units");
    fs::create_dir_all(units.join("ebpf-agent.service.d")).unwrap();
    // The unit as shipped; only a drop-in changes how long it runs and where output goes.
    fs::copy(repo().join(UNIT), units.join("ebpf-agent.service")).unwrap();
    // Started the way multi-user.target would: wanted by the target the manager boots into.
    fs::write(
        units.join("ebpf-agent-test.target"),
        "[Unit]\nDescription=ebpf-agent deployment test\nWants=ebpf-agent.service\n",
    )
    .unwrap();
    // systemd's own tracefs mount unit, which the unit wants (tracefs is mounted here already).
    let mount_unit = ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .iter()
        .map(|d| Path::new(d).join("sys-kernel-tracing.mount"))
        .find(|m| m.exists())
        .expect("systemd ships sys-kernel-tracing.mount");
    fs::copy(&mount_unit, units.join("sys-kernel-tracing.mount")).unwrap();
    let d = dir.display();
    fs::write(
        units.join("ebpf-agent.service.d/test.conf"),
        format!(
            "[Unit]\n\
             SuccessAction=exit-force\n\
             FailureAction=exit-force\n\
             FailureActionExitStatus=3\n\
             [Service]\n\
             ExecStart=\n\
             ExecStart=/usr/local/bin/ebpf-agent run --config /dev/null --output json --duration 3s\n\
             ExecStartPost=+/bin/sh -c 'grep -E \"^(Uid|Gid|Cap(Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):\" /proc/${{MAINPID}}/status > {d}/status; echo \"BpfStats: $$(cat /proc/sys/kernel/bpf_stats_enabled)\" >> {d}/status'\n\
             StandardOutput=file:{d}/out.json\n\
             StandardError=file:{d}/err.log\n\
             Restart=no\n"
        ),
    )
    .unwrap();
    let out = run_for(
        120,
        "bash",
        &[
            "-c",
            BOOT_SYSTEMD,
            "boot",
            dir.to_str().unwrap(),
            bin(),
            systemd,
        ],
    );
    let err_log = fs::read_to_string(dir.join("err.log")).unwrap_or_default();
    let console = fs::read_to_string(dir.join("console")).unwrap_or_default();
    eprintln!("[systemd]\n{console}\n[agent stderr]\n{err_log}");
    assert!(
        out.status.success(),
        "systemd ran the unit and it failed ({}):\n{}\n{err_log}",
        out.status,
        text(&out.stdout)
    );
    let intervals = json_lines(&fs::read_to_string(dir.join("out.json")).unwrap());
    assert!(intervals.len() >= 3, "3 intervals, got {}", intervals.len());
    let up = probe_up(&intervals);
    eprintln!("under systemd: {up:?}");
    for p in PROBES {
        assert!(
            up.iter().any(|(n, v)| n == p && *v == 1.0),
            "agent.probe_up{{probe={p}}} = 1 under the unit: {up:?}"
        );
    }
    let status = fs::read_to_string(dir.join("status")).expect("ExecStartPost wrote the status");
    eprintln!("[main process]\n{status}");
    fs::remove_dir_all(&dir).unwrap();
    status
}

#[test]
fn unit_runs_under_systemd_with_its_sandbox() {
    let bpf_stats = || fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    let stats_before = bpf_stats();
    // Every probe up (asserted inside)...
    let status = run_unit_under_systemd();
    // ...as a non-root user, with exactly the unit's capabilities, no new privileges and a
    // seccomp filter.
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{k} in {status}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(field("Uid"), "0", "DynamicUser: not root");
    let want = cap_set(&unit_caps(&read(UNIT)));
    for k in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(decode_caps(&field(k)), want, "{k}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "SystemCallFilter= in force");
    // BPF run-time statistics: on while the unit runs (ExecStartPre=), as they were after it
    // stops (ExecStopPost=).
    assert_eq!(
        field("BpfStats"),
        "1",
        "ExecStartPre= switched kernel.bpf_stats_enabled on"
    );
    assert_eq!(
        bpf_stats(),
        stats_before,
        "ExecStopPost= restored kernel.bpf_stats_enabled"
    );
}

// --- Kubernetes ------------------------------------------------------------------------------

/// Validates every manifest (kubernetes-validate, strict) and returns all their documents.
fn validated_manifests() -> Vec<Value> {
    let json = scratch("k8s").join("manifests.json");
    let script = repo().join("deploy/kubernetes/validate.sh");
    let out = run_for(
        600,
        "bash",
        &[script.to_str().unwrap(), "--json", json.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "deploy/kubernetes/validate.sh failed ({}): the manifests do not validate, or \
         kubernetes-validate could not be installed",
        out.status
    );
    let docs: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let _ = fs::remove_dir_all(json.parent().unwrap());
    docs.as_array().unwrap().clone()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "one {kind}");
    all[0]
}

/// Every value of `key` anywhere in `v`.
fn find_key<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                find_key(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `a` followed by `b` somewhere in `args`.
fn has_pair(args: &[&str], a: &str, b: &str) -> bool {
    args.windows(2).any(|w| w[0] == a && w[1] == b)
}

/// The host path of the volume mounted at `mount_path`, and whether it is read-only.
fn host_mount(pod: &Value, container: &Value, mount_path: &str) -> Option<(String, bool)> {
    let m = container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == mount_path)?;
    let vol = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == m["name"])?;
    Some((
        vol["hostPath"]["path"].as_str()?.to_string(),
        m["readOnly"] == true,
    ))
}

#[test]
fn kubernetes_manifests_validate_and_keep_their_promises() {
    let docs = validated_manifests();
    for kind_name in ["Namespace", "ServiceAccount", "DaemonSet", "ConfigMap"] {
        kind(&docs, kind_name);
    }
    // `kubectl apply -f deploy/kubernetes/` goes through the files in name order (the order
    // validate.sh lists them in): the namespace must come before anything in it.
    assert_eq!(
        docs[0]["kind"], "Namespace",
        "the first manifest creates the namespace"
    );
    // Never privileged, anywhere (also checked on the text: comments aside).
    let mut privileged = vec![];
    for d in &docs {
        find_key(d, "privileged", &mut privileged);
    }
    assert!(
        privileged.iter().all(|v| **v == false),
        "privileged: {privileged:?}"
    );
    for l in read("deploy/kubernetes/daemonset.yaml").lines() {
        let l = l.split('#').next().unwrap().trim();
        assert_ne!(l.replace(' ', ""), "privileged:true");
    }

    let ns = kind(&docs, "Namespace")["metadata"]["name"].clone();
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], ns);
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        kind(&docs, "ServiceAccount")["metadata"]["name"]
    );
    // Every node: a toleration without a key that tolerates any taint.
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "tolerations: {}",
        pod["tolerations"]
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args = strs(&c["args"]);
    assert_eq!(
        args.first(),
        Some(&"run"),
        "args after the image's entrypoint: {args:?}"
    );
    assert!(has_pair(&args, "--procfs-root", "/host/proc"), "{args:?}");
    assert!(has_pair(&args, "--host", "$(NODE_NAME)"), "{args:?}");
    assert!(
        has_pair(&args, "--cgroup-fs", "/host/sys/fs/cgroup"),
        "{args:?}"
    );
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME from the downward API: {env:?}"
    );
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "resources.{k}.{r}");
        }
    }
    // Capabilities instead of privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let add = strs(&sc["capabilities"]["add"]);
    assert!(add.contains(&"BPF") && add.contains(&"PERFMON"), "{add:?}");
    assert!(
        !add.contains(&"SYS_ADMIN"),
        "not needed on Linux >= 5.8: {add:?}"
    );
    // The host's /proc read-only at /host/proc, tracefs, the BPF filesystem.
    for (at, host) in [
        ("/host/proc", "/proc"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        // Per-container attribution: the node's cgroup hierarchy and the pod log directories.
        ("/host/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/var/log/pods", "/var/log/pods"),
        ("/var/log/containers", "/var/log/containers"),
    ] {
        let (path, ro) = host_mount(pod, c, at).unwrap_or_else(|| panic!("no hostPath at {at}"));
        assert_eq!(path, host, "{at}");
        assert!(ro, "{at} read-only");
    }
    // The configuration from the ConfigMap, where the agent reads it by default.
    let cm = kind(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], ns);
    let m = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/ebpf-agent")
        .expect("config mounted at /etc/ebpf-agent");
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    assert_eq!(vol["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cm["data"]["config.toml"].is_string());
}

#[test]
fn configmap_config_passes_config_check() {
    let docs = validated_manifests();
    let toml = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = scratch("cm");
    let file = dir.join("config.toml");
    fs::write(&file, toml).unwrap();
    let out = run_for(30, bin(), &["config", "check", file.to_str().unwrap()]);
    let effective = text(&out.stdout);
    eprintln!("{effective}");
    assert!(
        out.status.success(),
        "ebpf-agent config check rejects the ConfigMap's config"
    );
    assert!(
        effective.contains("procfs_root = \"/host/proc\""),
        "{effective}"
    );
    assert!(
        effective.contains("cgroup_fs = \"/host/sys/fs/cgroup\""),
        "{effective}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Runs the agent as the DaemonSet's container: a root filesystem holding only the binary and
/// its libraries (read-only, like the image with readOnlyRootFilesystem), the pod's volumes
/// mounted where the manifest says, its own /proc (PID namespace) and a read-only sysfs as the
/// runtime gives a non-privileged container, uid 0 with only the manifest's capabilities and
/// no_new_privs. Arguments: the manifest's. `$1` root, `$2` binary, `$3` capabilities to drop,
/// `$4` mounts (`kind source target ro|rw` lines), then the agent's arguments.
const CONTAINER: &str = r#"
set -euo pipefail
root=$1 bin=$2 drop=$3 mounts=$4
shift 4
mkdir -p "$root"/{proc,sys,dev,tmp,usr/local/bin}
install -m 0755 "$bin" "$root/usr/local/bin/ebpf-agent"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do install -D -m 0755 "$lib" "$root$lib"; done
while read -r kind src dst mode; do mkdir -p "$root$dst"; done <<< "$mounts"
exec unshare --pid --fork --kill-child --mount --propagation private -- bash -c '
    set -euo pipefail
    root=$1 drop=$2 mounts=$3
    shift 3
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount -t proc proc "$root/proc"
    mount -t sysfs -o ro sysfs "$root/sys"
    mount -t tmpfs tmpfs "$root/dev"
    for d in null zero urandom; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
    mount -t tmpfs tmpfs "$root/tmp"
    while read -r kind src dst mode; do
        case $kind in
            bind) mount --rbind "$src" "$root$dst" ;;
            tmpfs) mount -t tmpfs tmpfs "$root$dst" ;;
        esac
        if [ "$mode" = ro ]; then mount -o remount,bind,ro "$root$dst"; fi
    done <<< "$mounts"
    exec capsh --chroot="$root" --drop="$drop" --no-new-privs \
        --shell=/usr/local/bin/ebpf-agent -- "$@"
' bash "$root" "$drop" "$mounts" "$@"
"#;

#[test]
fn agent_runs_as_the_daemonsets_container() {
    let docs = validated_manifests();
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let dir = scratch("pod");

    // The ConfigMap's file, its StatsD sink pointed at this test.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let cm = kind(&docs, "ConfigMap");
    let config_dir = dir.join("configmap");
    fs::create_dir_all(&config_dir).unwrap();
    for (file, content) in cm["data"].as_object().unwrap() {
        let content = content
            .as_str()
            .unwrap()
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("statsd = [") {
                    format!("statsd = [\"127.0.0.1:{port}\"]")
                } else if l.trim_start().starts_with("riemann = [") {
                    "riemann = []".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(config_dir.join(file), content).unwrap();
    }

    // The pod's volumes, as mounts.
    let mut mounts = vec![];
    for m in c["volumeMounts"].as_array().unwrap() {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let dst = m["mountPath"].as_str().unwrap();
        let mode = if m["readOnly"] == true { "ro" } else { "rw" };
        let line = if let Some(p) = vol["hostPath"]["path"].as_str() {
            if vol["hostPath"]["type"] == "DirectoryOrCreate" && !Path::new(p).exists() {
                // The kubelet would create it (a node without pods yet): an empty directory.
                let empty = dir.join("host").join(p.trim_start_matches('/'));
                fs::create_dir_all(&empty).unwrap();
                format!("bind {} {dst} {mode}", empty.display())
            } else {
                format!("bind {p} {dst} {mode}")
            }
        } else if vol["configMap"].is_object() {
            format!("bind {} {dst} ro", config_dir.display())
        } else if vol["emptyDir"].is_object() {
            format!("tmpfs - {dst} {mode}")
        } else {
            panic!("volume kind not simulated: {vol}")
        };
        mounts.push(line);
    }

    // uid 0 with the manifest's capabilities only.
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    let keep: BTreeSet<String> = strs(&sc["capabilities"]["add"])
        .iter()
        .map(|c| format!("cap_{}", c.to_ascii_lowercase()))
        .collect();
    let print = text(
        &Command::new("capsh")
            .arg("--print")
            .output()
            .unwrap()
            .stdout,
    );
    let all = print
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print shows the bounding set");
    let drop = all
        .split(',')
        .filter(|c| !keep.contains(*c))
        .collect::<Vec<_>>()
        .join(",");

    // The manifest's arguments, with the downward API's value, for three intervals.
    let node = "test-node";
    let mut args: Vec<String> = strs(&c["args"])
        .iter()
        .map(|a| a.replace("$(NODE_NAME)", node))
        .collect();
    args.extend(["--duration".into(), "3s".into()]);
    let envs: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().map_or(node.to_string(), str::to_string);
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect();

    let (tx, rx) = mpsc::channel();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let listener = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = vec![];
        while Instant::now() < deadline && rx.try_recv().is_err() {
            if let Ok(n) = sock.recv(&mut buf) {
                lines.extend(text(&buf[..n]).lines().map(str::to_string));
            }
        }
        lines
    });
    let root = dir.join("rootfs");
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "60", "bash", "-c", CONTAINER, "container"])
        .arg(&root)
        .arg(bin())
        .arg(&drop)
        .arg(mounts.join("\n"))
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(envs)
        .stdin(Stdio::null());
    eprintln!("container: caps {keep:?}, mounts {mounts:#?}, args {args:?}");
    let out = cmd.output().unwrap();
    // Let the last datagrams in.
    thread::sleep(Duration::from_millis(300));
    tx.send(()).unwrap();
    let lines = listener.join().unwrap();
    eprintln!("{}", text(&out.stderr));
    assert!(
        out.status.success(),
        "the container's agent failed: {}",
        out.status
    );

    // `PREFIX.TAGS.agent.PROBE.probe_up:V|g` (tag values folded into the name).
    let ups: Vec<&String> = lines.iter().filter(|l| l.contains(".probe_up:")).collect();
    eprintln!("{ups:#?}");
    // The ConfigMap switches per-container attribution on.
    for p in PROBES.iter().chain(&["cgroup"]) {
        let of_p: Vec<&&String> = ups
            .iter()
            .filter(|l| l.contains(&format!(".agent.{p}.probe_up:")))
            .collect();
        assert!(
            !of_p.is_empty(),
            "no probe_up for {p} at the StatsD sink: {ups:#?}"
        );
        assert!(
            of_p.iter().all(|l| l.ends_with(":1|g")),
            "probe {p} down in the container: {of_p:?}"
        );
    }
    // Per-container attribution is on in the ConfigMap, its cgroups named through the node's
    // hierarchy mounted at /host/sys/fs/cgroup.
    // StatsD folds the tag into the name: `PREFIX.cgroup.<name>.syscall.count` (`/`, the root
    // cgroup this test's container runs in, is `_`).
    let per_cgroup: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(".cgroup.") && l.contains(".syscall.count:"))
        .collect();
    assert!(
        per_cgroup.iter().any(|l| !l.ends_with(":0|c")),
        "no cgroup.syscall.count at the StatsD sink: {:#?}",
        lines
            .iter()
            .filter(|l| l.contains("cgroup"))
            .collect::<Vec<_>>()
    );
    let _ = fs::remove_dir_all(&dir);
}

// --- container image -------------------------------------------------------------------------

/// Dockerfile instructions: (KEYWORD, rest), continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (k, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((k.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

#[test]
fn dockerfile_lints_clean_and_has_the_promised_shape() {
    let script = repo().join("deploy/docker/lint.sh");
    let out = run_for(600, "bash", &[script.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "hadolint finds problems in the Dockerfile, or could not be installed:\n{}",
        text(&out.stdout)
    );

    let ins = instructions(&read("Dockerfile"));
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let build = &ins[stages[0]..stages[1]];
    let last = &ins[*stages.last().unwrap()..];
    assert!(
        build[0].1.starts_with("rust:1.95-bookworm "),
        "{:?}",
        build[0]
    );
    let build_name = build[0].1.rsplit(' ').next().unwrap().to_string();

    // The build runs as a non-root user: a numeric, non-zero USER before any cargo step.
    let user = build
        .iter()
        .position(|(k, _)| k == "USER")
        .expect("USER in the build stage");
    let uid = build[user].1.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {uid}");
    let cargo_steps: Vec<usize> = build
        .iter()
        .enumerate()
        .filter(|(_, (k, r))| k == "RUN" && r.contains("cargo "))
        .map(|(i, _)| i)
        .collect();
    assert!(!cargo_steps.is_empty() && cargo_steps.iter().all(|&i| i > user));
    let cargo = build
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect::<String>();
    assert!(
        cargo.contains("cargo xtask setup --build-only"),
        "bpf-linker via xtask"
    );
    assert!(cargo.contains("cargo build --release") && cargo.contains("-p agent"));

    // The runtime stage: a small base, nothing run in it, only the binary copied in.
    assert!(
        last[0].1.starts_with("debian:bookworm-slim "),
        "{:?}",
        last[0]
    );
    assert!(
        !last.iter().any(|(k, _)| k == "RUN" || k == "ADD"),
        "{last:?}"
    );
    let copies: Vec<&String> = last
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let words: Vec<&str> = copies[0].split_whitespace().collect();
    assert_eq!(words[0], format!("--from={build_name}"));
    assert_eq!(words.len(), 3, "one file: {copies:?}");
    assert!(words[1].ends_with("/ebpf-agent"));
    assert_eq!(words[2], "/usr/local/bin/ebpf-agent");
    let get = |k: &str| {
        last.iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, r)| serde_json::from_str::<Vec<String>>(r).unwrap())
            .unwrap_or_else(|| panic!("{k} (JSON form) in the runtime stage"))
    };
    assert_eq!(get("ENTRYPOINT"), ["/usr/local/bin/ebpf-agent"]);
    let cmd = get("CMD");
    assert_eq!(
        cmd,
        ["run", "--output", "none", "--procfs-root", "/host/proc"]
    );
    // The default command parses (clap would exit 2 on a bad flag before reading --help).
    let mut help: Vec<&str> = cmd.iter().map(String::as_str).collect();
    help.push("--help");
    assert!(
        run_for(30, bin(), &help).status.success(),
        "CMD {cmd:?} parses"
    );

    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        ".dockerignore excludes target/"
    );
}
