//! Readable names for cgroups, for per-container attribution: the kernel tags work with the
//! task's cgroup v2 id (`bpf_get_current_cgroup_id`, the inode number of the cgroup's
//! directory in the unified hierarchy); this module turns an id into a path below the
//! hierarchy's root and a path into what a person calls it:
//!
//! - Kubernetes pods, with either kubelet cgroup driver (systemd:
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`;
//!   cgroupfs: `kubepods/burstable/pod<uid>/<id>`): `namespace/pod/container`, the pod found by
//!   its UID in the node's pod log directory (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/`)
//!   and the container by its id in `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//!   (no API server needed). A pod-level cgroup is `namespace/pod`.
//! - Other containers: `docker-<id12>`, `cri-containerd-<id12>`, `crio-<id12>`, `libpod-<id12>`.
//! - Anything else: the path below the root (`system.slice/nginx.service`, `batch/app`); the
//!   root itself is `/`.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Directories visited at most when indexing a hierarchy (a node with thousands of pods has
/// tens of thousands of cgroups; beyond this the rest stays unnamed and is counted).
pub const MAX_CGROUPS: usize = 65_536;

/// Where the cgroup v2 hierarchy is mounted below `sys_fs_cgroup` (usually `/sys/fs/cgroup`):
/// the mount itself on a pure v2 host, `unified/` on a hybrid one; `None` on v1 alone.
pub fn v2_root(sys_fs_cgroup: &Path) -> Option<PathBuf> {
    [sys_fs_cgroup.to_path_buf(), sys_fs_cgroup.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

/// A cgroup named by the user (`--cgroup`), found in the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its cgroup v2 id (its directory's inode number).
    pub id: u64,
    /// Its depth below the root (the root is 0): the level of its id among a task's ancestors.
    pub level: u32,
    /// Its path below the root ("" for the root).
    pub path: String,
}

/// Finds the cgroup `path` names in the v2 hierarchy below `sys_fs_cgroup`: a path below the
/// hierarchy's root (`system.slice/nginx.service`, or `/system.slice/nginx.service` as
/// `/proc/PID/cgroup` writes it), or an absolute path below `sys_fs_cgroup`
/// (`/sys/fs/cgroup/unified/batch`). The error is one line saying what to give instead.
pub fn find(sys_fs_cgroup: &Path, path: &str) -> Result<Found, String> {
    let root = v2_root(sys_fs_cgroup).ok_or_else(|| {
        format!(
            "{path}: no cgroup v2 hierarchy under {} (set cgroup_fs / --cgroup-fs to where the cgroup filesystem is mounted)",
            sys_fs_cgroup.display()
        )
    })?;
    let p = Path::new(path);
    let rel = match (p.strip_prefix(&root), p.strip_prefix(sys_fs_cgroup)) {
        (Ok(below_root), _) => below_root,
        (Err(_), Ok(_)) => {
            return Err(format!(
                "{path}: not in the cgroup v2 hierarchy (it is at {})",
                root.display()
            ));
        }
        // Relative to the root, with or without the leading slash.
        _ => p.strip_prefix("/").unwrap_or(p),
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy()),
            std::path::Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{path}: a path below the cgroup v2 root without \"..\" (e.g. system.slice/nginx.service)"
                ));
            }
        }
    }
    let rel = parts.join("/");
    let dir = root.join(&rel);
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() && dir.join("cgroup.procs").is_file() => Ok(Found {
            id: m.ino(),
            level: parts.len() as u32,
            path: rel,
        }),
        _ => Err(format!(
            "{path}: no such cgroup ({} is not a cgroup; see /proc/PID/cgroup for a process's)",
            dir.display()
        )),
    }
}

/// cgroup id → path below the root, from one walk of the hierarchy.
#[derive(Debug, Default)]
pub struct Index {
    by_id: HashMap<u64, String>,
    /// Directories left out beyond [`MAX_CGROUPS`].
    pub truncated: usize,
}

impl Index {
    /// Walks the hierarchy at `root` (a cgroup id is its directory's inode number).
    pub fn scan(root: &Path) -> Index {
        let mut ix = Index::default();
        let mut todo = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = todo.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            if ix.by_id.len() >= MAX_CGROUPS {
                ix.truncated += 1;
                continue;
            }
            ix.by_id.insert(meta.ino(), rel.clone());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    todo.push((e.path(), child));
                }
            }
        }
        ix
    }

    /// The path below the root of cgroup `id` ("" for the root), if it existed at the scan.
    pub fn path(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A pod known from the node's log directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pod {
    namespace: String,
    name: String,
    containers: Vec<String>,
}

/// Pods and containers of this node, from `/var/log/pods` and `/var/log/containers`.
#[derive(Clone, Debug, Default)]
pub struct Pods {
    /// Pod UID (with dashes) → pod.
    by_uid: HashMap<String, Pod>,
    /// Container id (full) → container name.
    containers: HashMap<String, String>,
}

impl Pods {
    /// Reads `pods_dir` (`<namespace>_<pod>_<uid>/<container>/`) and, when given,
    /// `containers_dir` (`<pod>_<namespace>_<container>-<id>.log`). Missing directories give
    /// an empty set: names then fall back to container ids.
    pub fn load(pods_dir: &Path, containers_dir: Option<&Path>) -> Pods {
        let mut pods = Pods::default();
        for e in fs::read_dir(pods_dir).into_iter().flatten().flatten() {
            let dir = e.file_name().to_string_lossy().into_owned();
            // Namespaces and pod names cannot hold '_': the split is unambiguous.
            let mut parts = dir.splitn(3, '_');
            let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let mut containers: Vec<String> = fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                .map(|c| c.file_name().to_string_lossy().into_owned())
                .collect();
            containers.sort();
            pods.by_uid.insert(
                uid.to_string(),
                Pod {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    containers,
                },
            );
        }
        for e in containers_dir
            .and_then(|d| fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = file.strip_suffix(".log") else {
                continue;
            };
            let Some((head, id)) = stem.rsplit_once('-') else {
                continue;
            };
            let Some(container) = head.splitn(3, '_').nth(2) else {
                continue;
            };
            pods.containers
                .insert(id.to_string(), container.to_string());
        }
        pods
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

/// Container runtimes' scope prefixes (systemd driver) and the name kept for them.
const RUNTIMES: [&str; 4] = ["cri-containerd-", "docker-", "crio-", "libpod-"];

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container cgroup's (runtime, full id): `cri-containerd-<id>.scope` (systemd driver),
/// or a bare id (cgroupfs driver; Docker's `docker/<id>`).
fn container_of(segment: &str, parent: Option<&str>) -> Option<(&'static str, String)> {
    let seg = segment.strip_suffix(".scope").unwrap_or(segment);
    for rt in RUNTIMES {
        if let Some(id) = seg.strip_prefix(rt).filter(|id| is_hex_id(id)) {
            return Some((rt, id.to_string()));
        }
    }
    if is_hex_id(seg) && seg.len() == 64 {
        let rt = if parent == Some("docker") {
            "docker-"
        } else {
            ""
        };
        return Some((rt, seg.to_string()));
    }
    None
}

/// A pod cgroup's UID: `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver) or
/// `pod<uid>` (cgroupfs driver).
fn pod_uid_of(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = &s[s.rfind("pod")? + 3..];
    (uid.len() == 36 || uid.len() == 32).then(|| uid.replace('_', "-"))
}

/// What a person calls the cgroup at `path` below the root (see the module's rules).
pub fn readable(path: &str, pods: &Pods) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        return "/".into();
    }
    let kube = segs.first().is_some_and(|s| s.starts_with("kubepods"));
    let pod = kube
        .then(|| {
            segs.iter()
                .enumerate()
                .find_map(|(i, s)| Some((i, pod_uid_of(s)?)))
        })
        .flatten();
    let last = segs.len() - 1;
    let parent = last.checked_sub(1).map(|i| segs[i]);
    let container = container_of(segs[last], parent);
    if let Some((at, uid)) = &pod
        && let Some(p) = pods.by_uid.get(uid)
    {
        let base = format!("{}/{}", p.namespace, p.name);
        return match &container {
            Some((_, id)) if *at < last => {
                let name = pods.containers.get(id).cloned().or_else(|| {
                    // A pod with one container: its only log directory names it.
                    (p.containers.len() == 1).then(|| p.containers[0].clone())
                });
                format!("{base}/{}", name.unwrap_or_else(|| id[..12].to_string()))
            }
            _ => base,
        };
    }
    match container {
        Some((rt, id)) => format!("{rt}{}", &id[..12]),
        None => segs.join("/"),
    }
}

/// The name of the entry that gathers every cgroup beyond the top K.
pub const OTHER: &str = "other";

/// Per-cgroup rows of one interval, named, bounded to the `k` largest by `rank` plus one
/// [`OTHER`] entry: rows with the same name are merged first (cells added), the rest beyond `k`
/// merged into `other`, so every cell's total over the result equals its total over the input
/// (per-cgroup counts add up exactly to the host's). Largest first; ties by name.
pub fn top_k(
    rows: impl IntoIterator<Item = (String, Vec<u64>)>,
    k: usize,
    rank: impl Fn(&[u64]) -> u64,
) -> Vec<(String, Vec<u64>)> {
    fn add(into: &mut Vec<u64>, cells: &[u64]) {
        if into.len() < cells.len() {
            into.resize(cells.len(), 0);
        }
        for (a, b) in into.iter_mut().zip(cells) {
            *a = a.wrapping_add(*b);
        }
    }
    let mut by_name: HashMap<String, Vec<u64>> = HashMap::new();
    for (name, cells) in rows {
        add(by_name.entry(name).or_default(), &cells);
    }
    let mut all: Vec<(String, Vec<u64>)> = by_name.into_iter().collect();
    all.sort_by(|a, b| rank(&b.1).cmp(&rank(&a.1)).then_with(|| a.0.cmp(&b.0)));
    // A cgroup literally named "other" joins the rest rather than shadowing it.
    let (mut kept, mut rest): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for row in all {
        if kept.len() < k && row.0 != OTHER {
            kept.push(row);
        } else {
            rest.push(row);
        }
    }
    if !rest.is_empty() {
        let mut other = Vec::new();
        for (_, cells) in &rest {
            add(&mut other, cells);
        }
        kept.push((OTHER.to_string(), other));
    }
    kept
}

/// What `ebpf-agent check` says of cgroups: the v2 hierarchy below `sys_fs_cgroup`, how many
/// cgroups it holds, and whether Kubernetes pod cgroups resolve to names through `pods_dir` /
/// `containers_dir`. `false` when there is no v2 hierarchy (per-cgroup metrics are then absent).
pub fn describe(sys_fs_cgroup: &Path, pods_dir: &Path, containers_dir: &Path) -> (bool, String) {
    let Some(root) = v2_root(sys_fs_cgroup) else {
        return (
            false,
            format!(
                "no cgroup v2 hierarchy at {} or {}/unified: per-cgroup metrics absent \
                 (mount one: mount -t cgroup2 none {}/unified)",
                sys_fs_cgroup.display(),
                sys_fs_cgroup.display(),
                sys_fs_cgroup.display()
            ),
        );
    };
    let kind = if root == sys_fs_cgroup {
        "v2"
    } else {
        "hybrid, v2 unified"
    };
    let ix = Index::scan(&root);
    let n = ix.len();
    let mut line = format!(
        "{kind} at {}, {n} cgroup{}",
        root.display(),
        if n == 1 { "" } else { "s" }
    );
    if ix.truncated > 0 {
        line += &format!(" ({} beyond {MAX_CGROUPS} unnamed)", ix.truncated);
    }
    let pods = Pods::load(pods_dir, Some(containers_dir));
    // Pod cgroups (the pod level, not its containers) and how many of them have a name.
    let (mut pod_cgroups, mut named) = (0usize, 0usize);
    for path in ix.by_id.values() {
        let Some(last) = path.rsplit('/').next() else {
            continue;
        };
        if !path.starts_with("kubepods") {
            continue;
        }
        if let Some(uid) = pod_uid_of(last) {
            pod_cgroups += 1;
            named += usize::from(pods.by_uid.contains_key(&uid));
        }
    }
    line += &match (pod_cgroups, pods.len()) {
        (0, 0) => format!(
            "; no Kubernetes pods (pod names would come from {})",
            pods_dir.display()
        ),
        (0, n) => format!(
            "; {n} pods in {}, none in this hierarchy",
            pods_dir.display()
        ),
        (p, _) if named == p => format!("; pod names resolve ({p} of {p} pods)"),
        (p, 0) => format!(
            "; pod names do not resolve (0 of {p} pods: mount the node's {} read-only; \
             containers are named by runtime id)",
            pods_dir.display()
        ),
        (p, _) => format!("; pod names resolve for {named} of {p} pods"),
    };
    (true, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_and_the_rest_adds_up_in_other() {
        let rows = vec![
            ("a".to_string(), vec![10, 100]),
            ("b".to_string(), vec![1, 500]),
            ("c".to_string(), vec![5, 50]),
            // Two ids with one name (a restarted unit) merge first.
            ("a".to_string(), vec![2, 20]),
            ("other".to_string(), vec![1, 1]),
        ];
        let out = top_k(rows.clone(), 1, |c| c[1]);
        assert_eq!(
            out,
            vec![
                ("b".to_string(), vec![1, 500]),
                ("other".to_string(), vec![18, 171]),
            ]
        );
        for cell in 0..2 {
            let total: u64 = rows.iter().map(|r| r.1[cell]).sum();
            assert_eq!(out.iter().map(|r| r.1[cell]).sum::<u64>(), total);
        }
        let all = top_k(rows, 10, |c| c[1]);
        assert_eq!(
            all.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["b", "a", "c", "other"]
        );
        assert!(top_k(Vec::new(), 3, |c: &[u64]| c[0]).is_empty());
    }

    #[test]
    fn a_cgroup_is_found_by_relative_proc_style_or_absolute_path() {
        // A hybrid host's layout: v1 controllers beside the v2 hierarchy at unified/.
        let d = tempdir::Dir::new("cgfs");
        let root = d.path().join("unified");
        let app = root.join("batch/app");
        fs::create_dir_all(&app).unwrap();
        fs::create_dir_all(d.path().join("memory/batch")).unwrap();
        for dir in [&root, &root.join("batch"), &app] {
            fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        fs::write(root.join("cgroup.controllers"), "").unwrap();
        let ino = fs::metadata(&app).unwrap().ino();
        let abs = app.to_str().unwrap().to_string();
        for given in [
            "batch/app",
            "/batch/app",
            "batch/app/",
            "./batch/app",
            abs.as_str(),
        ] {
            let f = find(d.path(), given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(
                (f.id, f.level, f.path.as_str()),
                (ino, 2, "batch/app"),
                "{given}"
            );
        }
        let r = find(d.path(), "/").unwrap();
        assert_eq!((r.level, r.path.as_str()), (0, ""));
        for bad in [
            "batch/nope",
            "batch/app/cgroup.procs",
            "batch/../batch/app",
            d.path().join("memory/batch").to_str().unwrap(),
        ] {
            let e = find(d.path(), bad).unwrap_err();
            assert!(e.starts_with(bad) && !e.contains('\n'), "{e}");
        }
        let e = find(&d.path().join("memory"), "batch").unwrap_err();
        assert!(e.contains("no cgroup v2 hierarchy"), "{e}");
    }

    const UID: &str = "0d4b2c2e-5f3a-4b8e-9c1d-2e3f4a5b6c7d";
    const CID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

    fn fixture() -> (tempdir::Dir, Pods) {
        let d = tempdir::Dir::new("pods");
        let pod = d.path().join(format!("shop_checkout-7d9f_{UID}"));
        fs::create_dir_all(pod.join("app")).unwrap();
        fs::create_dir_all(pod.join("istio-proxy")).unwrap();
        let single = d
            .path()
            .join("kube-system_coredns-abc_11111111-2222-3333-4444-555555555555");
        fs::create_dir_all(single.join("coredns")).unwrap();
        fs::create_dir_all(d.path().join("not-a-pod-dir")).unwrap();
        let logs = d.path().join("containers");
        fs::create_dir_all(&logs).unwrap();
        fs::write(logs.join(format!("checkout-7d9f_shop_app-{CID}.log")), "").unwrap();
        let pods = Pods::load(d.path(), Some(&logs));
        (d, pods)
    }

    #[test]
    fn kubernetes_pods_by_either_cgroup_driver() {
        let (_d, pods) = fixture();
        let uid_ = UID.replace('-', "_");
        let systemd = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(readable(&systemd, &pods), "shop/checkout-7d9f/app");
        let cgroupfs = format!("kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(readable(&cgroupfs, &pods), "shop/checkout-7d9f/app");
        // Guaranteed QoS pods sit right under kubepods.
        let guaranteed =
            format!("kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(readable(&guaranteed, &pods), "shop/checkout-7d9f/app");
        // The pod's own cgroup.
        assert_eq!(
            readable(&format!("kubepods/burstable/pod{UID}"), &pods),
            "shop/checkout-7d9f"
        );
        // A container id /var/log/containers does not list: its pod's only container, else
        // the short id.
        let other = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
        assert_eq!(
            readable(
                &format!("kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/{other}"),
                &pods
            ),
            "kube-system/coredns-abc/coredns"
        );
        assert_eq!(
            readable(&format!("kubepods/burstable/pod{UID}/{other}"), &pods),
            "shop/checkout-7d9f/abcdef012345"
        );
    }

    #[test]
    fn unknown_pods_and_other_containers_by_short_id() {
        let pods = Pods::default();
        let uid_ = UID.replace('-', "_");
        assert_eq!(
            readable(
                &format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope"
                ),
                &pods
            ),
            "cri-containerd-4f1e2d3c4b5a"
        );
        assert_eq!(
            readable(&format!("system.slice/docker-{CID}.scope"), &pods),
            "docker-4f1e2d3c4b5a"
        );
        assert_eq!(
            readable(&format!("docker/{CID}"), &pods),
            "docker-4f1e2d3c4b5a"
        );
        assert_eq!(
            readable(&format!("machine.slice/libpod-{CID}.scope"), &pods),
            "libpod-4f1e2d3c4b5a"
        );
    }

    #[test]
    fn plain_paths_and_the_root() {
        let pods = Pods::default();
        assert_eq!(readable("", &pods), "/");
        assert_eq!(readable("/", &pods), "/");
        assert_eq!(
            readable("system.slice/nginx.service", &pods),
            "system.slice/nginx.service"
        );
        assert_eq!(readable("batch/app", &pods), "batch/app");
        // Names that only look like ids stay paths.
        assert_eq!(readable("docker-cafe.scope", &pods), "docker-cafe.scope");
    }

    #[test]
    fn missing_log_directories_give_an_empty_set() {
        let pods = Pods::load(Path::new("/nonexistent/pods"), None);
        assert!(pods.is_empty());
    }

    #[test]
    fn an_index_maps_directory_inodes_to_paths() {
        let d = tempdir::Dir::new("cg");
        fs::create_dir_all(d.path().join("system.slice/nginx.service")).unwrap();
        fs::create_dir_all(d.path().join("batch/app")).unwrap();
        let ix = Index::scan(d.path());
        let ino = |p: &str| fs::metadata(d.path().join(p)).unwrap().ino();
        assert_eq!(ix.path(fs::metadata(d.path()).unwrap().ino()), Some(""));
        assert_eq!(
            ix.path(ino("system.slice/nginx.service")),
            Some("system.slice/nginx.service")
        );
        assert_eq!(ix.path(ino("batch/app")), Some("batch/app"));
        assert_eq!(ix.len(), 5);
        assert_eq!(ix.truncated, 0);
    }

    #[test]
    fn v2_root_on_pure_and_hybrid_hosts() {
        let d = tempdir::Dir::new("sysfs");
        assert_eq!(v2_root(d.path()), None);
        fs::create_dir_all(d.path().join("unified")).unwrap();
        fs::write(d.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(v2_root(d.path()), Some(d.path().join("unified")));
        fs::write(d.path().join("cgroup.controllers"), "cpu io memory").unwrap();
        assert_eq!(v2_root(d.path()), Some(d.path().to_path_buf()));
    }

    #[test]
    fn describe_says_hierarchy_count_and_whether_pods_resolve() {
        let d = tempdir::Dir::new("describe");
        let fs_root = d.path().join("sys/fs/cgroup");
        let (ok, line) = describe(&fs_root, &d.path().join("pods"), &d.path().join("logs"));
        assert!(!ok);
        assert!(line.contains("no cgroup v2 hierarchy"), "{line}");

        let unified = fs_root.join("unified");
        fs::create_dir_all(&unified).unwrap();
        fs::write(unified.join("cgroup.controllers"), "").unwrap();
        fs::create_dir_all(unified.join("system.slice/nginx.service")).unwrap();
        let (ok, line) = describe(&fs_root, &d.path().join("pods"), &d.path().join("logs"));
        assert!(ok);
        assert!(line.starts_with("hybrid, v2 unified at "), "{line}");
        assert!(line.contains(", 3 cgroups; no Kubernetes pods"), "{line}");

        let uid_ = UID.replace('-', "_");
        fs::create_dir_all(unified.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope"
        )))
        .unwrap();
        fs::create_dir_all(unified.join(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod99999999_2222_3333_4444_555555555555.slice",
        ))
        .unwrap();
        let (_, line) = describe(&fs_root, &d.path().join("pods"), &d.path().join("logs"));
        assert!(
            line.contains("; pod names do not resolve (0 of 2 pods: mount the node's "),
            "{line}"
        );
        let (pods, _) = fixture();
        let (_, line) = describe(&fs_root, pods.path(), &pods.path().join("containers"));
        assert!(
            line.ends_with("; pod names resolve for 1 of 2 pods"),
            "{line}"
        );
    }

    /// A temporary directory removed on drop (no crate needed for this much).
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new(name: &str) -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ebpf-agent-cgroup-{name}-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
