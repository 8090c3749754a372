//! The detector's memory on disk: a versioned little-endian binary file.
//!
//! Layout: magic `EBPFANOM`, format version (u32), key count (u32), then per key its name, tags,
//! kind and model fields, and last a 64-bit FNV-1a checksum of everything before it. Strings are
//! length-prefixed and bounded, the key count is bounded by [`MAX_KEYS`], so the file is at most
//! about `keys × (1 KiB + key length)`. Written to a temporary file in the same directory,
//! fsynced, renamed over the old one, and the directory fsynced: a crash leaves the old or the
//! new file, never a torn one.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

use super::State;
use super::model::{Bf16, Hysteresis, Model, Novelty, Range, Slot, Surprise};
use crate::snapshot::{Kind, Tags};

const MAGIC: &[u8; 8] = b"EBPFANOM";
/// 2: the score's state (`Surprise`) and the model's unit after the hysteresis. 3: weekly slots'
/// spreads as a byte each against a reference spread, then the novelty memory (`Novelty`). 4: the
/// remembered range (`Range`) and whether the tail was faded. Older files are refused (the
/// daemon then starts fresh).
const VERSION: u32 = 4;
/// Most keys a file (and a detector) may hold.
pub(crate) const MAX_KEYS: usize = 1 << 16;
const MAX_NAME: usize = 512;
const MAX_TAGS: usize = 16;
/// Model fields plus the longest key.
const MAX_ENTRY: usize = 4096 + MAX_NAME + MAX_TAGS * (2 * MAX_NAME + 4);

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("reading the anomaly state: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an anomaly state file of ebpf-agent (wrong magic)")]
    Foreign,
    #[error("anomaly state format version {0} is not supported (this agent reads {VERSION})")]
    Version(u32),
    #[error("anomaly state file is corrupt: {0}")]
    Corrupt(String),
    #[error("the anomaly state path is {0}, not a regular file (remove it)")]
    NotAFile(&'static str),
}

pub(crate) struct KeyRef<'a> {
    pub name: &'a str,
    pub tags: &'a Tags,
    pub kind: Kind,
    pub model: &'a Model,
}

pub(crate) struct LoadedKey {
    pub name: String,
    pub tags: Tags,
    pub kind: Kind,
    pub model: Model,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Tag keys are `&'static str` in snapshots; names read back from disk are interned once each
/// (a small, bounded set: `syscall`, `device`, `op`, ...).
fn intern(s: &str) -> Option<&'static str> {
    static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(|| Mutex::new(vec!["syscall", "device", "op", "probe", "sink"]))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&n) = names.iter().find(|&&n| n == s) {
        return Some(n);
    }
    if names.len() >= 256 {
        return None;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    names.push(leaked);
    Some(leaked)
}

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        let s = &s.as_bytes()[..floor_char_boundary(s, MAX_NAME)];
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s);
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn corrupt(what: &str) -> LoadError {
    LoadError::Corrupt(what.to_string())
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, LoadError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32, LoadError> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn f32(&mut self) -> Result<f32, LoadError> {
        Ok(f32::from_le_bytes(self.arr()?))
    }
    fn f64(&mut self) -> Result<f64, LoadError> {
        Ok(f64::from_le_bytes(self.arr()?))
    }
    /// A finite f64.
    fn fin(&mut self) -> Result<f64, LoadError> {
        let v = self.f64()?;
        v.is_finite()
            .then_some(v)
            .ok_or_else(|| corrupt("non-finite level"))
    }
    /// A non-negative f32 (NaN allowed: empty).
    fn pos32(&mut self) -> Result<f32, LoadError> {
        let v = self.f32()?;
        (v.is_nan() || v >= 0.0)
            .then_some(v)
            .ok_or_else(|| corrupt("negative spread"))
    }
    fn str(&mut self) -> Result<String, LoadError> {
        let n = usize::from(self.u16()?);
        if n > MAX_NAME {
            return Err(corrupt("name too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| corrupt("name not UTF-8"))
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::Ok => 0,
        State::Warning => 1,
        State::Critical => 2,
    }
}

fn encode_model(e: &mut Enc, m: &Model) {
    e.u32(m.n);
    e.u16(m.n_short);
    e.u16(m.hours);
    e.f64(m.last_t);
    e.f64(m.level);
    e.f64(m.mid);
    e.f64(m.long);
    e.f64(m.prev);
    e.f64(m.acc_sum);
    e.f64(m.day_ref);
    e.f64(m.week_ref);
    e.i32(m.acc_hour);
    for v in [
        m.scale,
        m.scale_slow,
        m.fast,
        m.var_dev,
        m.mid_dev,
        m.quantum,
        m.p_same,
    ] {
        e.f32(v);
    }
    for c in m.hist {
        e.u16(c);
    }
    e.u16(m.since_episode);
    e.u16(m.run);
    e.f32(m.run_ref);
    e.u32(m.shift_run as u32);
    e.f64(m.shift_mean);
    e.f32(m.acc_abs);
    e.u16(m.acc_n);
    e.u16(m.acc_calm);
    e.f32(m.err_flat);
    e.f32(m.err_day);
    e.f32(m.err_week);
    let h = &m.hyst;
    e.u8(state_code(h.state));
    for c in [h.hot, h.crit, h.below, h.calm] {
        e.u16(c);
    }
    e.f64(h.pending_since);
    e.f64(h.since);
    let s = &m.surprise;
    for v in [s.recent, s.mean, s.sq] {
        e.f32(v);
    }
    e.u16(s.rest);
    e.u16(s.hot);
    e.u16(s.seen);
    e.f32(s.peak);
    e.u16(m.unit_exp as u16);
    for s in &m.hod {
        e.u16(s.loc.0);
        e.u16(s.sigma.0);
    }
    for l in &m.how {
        e.u16(l.0);
    }
    e.0.extend_from_slice(&m.how_sigma);
    e.f32(m.how_ref);
    let nv = &m.novelty;
    for w in nv.table {
        e.0.extend_from_slice(&w.to_le_bytes());
    }
    e.u16(nv.recent);
    e.u8(nv.filled);
    e.u16(nv.age_in);
    e.u8(nv.age_word);
    e.f32(nv.mean);
    for v in m.range.hi.iter().chain(&m.range.lo) {
        e.f32(*v);
    }
    e.u8(u8::from(m.tail_faded));
}

fn decode_model(d: &mut Dec<'_>) -> Result<Model, LoadError> {
    let mut m = Model::new();
    m.n = d.u32()?;
    m.n_short = d.u16()?;
    m.hours = d.u16()?;
    m.last_t = d.fin()?;
    m.level = d.fin()?;
    m.mid = d.fin()?;
    m.long = d.fin()?;
    m.prev = d.fin()?;
    m.acc_sum = d.fin()?;
    m.day_ref = d.fin()?;
    m.week_ref = d.fin()?;
    m.acc_hour = d.i32()?;
    m.scale = d.pos32()?;
    m.scale_slow = d.pos32()?;
    m.fast = d.pos32()?;
    m.var_dev = d.pos32()?;
    m.mid_dev = d.pos32()?;
    m.quantum = d.pos32()?;
    m.p_same = d.f32()?;
    if !(0.0..=1.0).contains(&m.p_same) {
        return Err(corrupt("probability out of range"));
    }
    for c in m.hist.iter_mut() {
        *c = d.u16()?;
    }
    m.since_episode = d.u16()?;
    m.run = d.u16()?;
    m.run_ref = d.pos32()?;
    m.shift_run = d.u32()? as i32;
    m.shift_mean = d.fin()?;
    m.acc_abs = d.pos32()?;
    m.acc_n = d.u16()?;
    m.acc_calm = d.u16()?;
    m.err_flat = d.pos32()?;
    m.err_day = d.pos32()?;
    m.err_week = d.pos32()?;
    for v in [m.scale, m.scale_slow, m.fast, m.mid_dev] {
        if !v.is_finite() {
            return Err(corrupt("non-finite spread"));
        }
    }
    let mut h = Hysteresis {
        state: match d.u8()? {
            0 => State::Ok,
            1 => State::Warning,
            2 => State::Critical,
            _ => return Err(corrupt("unknown state")),
        },
        ..Default::default()
    };
    h.hot = d.u16()?;
    h.crit = d.u16()?;
    h.below = d.u16()?;
    h.calm = d.u16()?;
    h.pending_since = d.fin()?;
    h.since = d.fin()?;
    m.hyst = h;
    m.surprise = Surprise {
        recent: d.pos32()?,
        mean: d.pos32()?,
        sq: d.pos32()?,
        rest: d.u16()?,
        hot: d.u16()?,
        seen: d.u16()?,
        peak: d.pos32()?,
        streak: 0,
    };
    let sp = &m.surprise;
    if ![sp.recent, sp.mean, sp.sq, sp.peak]
        .iter()
        .all(|v| v.is_finite())
    {
        return Err(corrupt("non-finite score state"));
    }
    m.unit_exp = d.u16()? as i16;
    if !(-1100..=1100).contains(&m.unit_exp) {
        return Err(corrupt("unit out of range"));
    }
    for s in m.hod.iter_mut() {
        *s = Slot {
            loc: Bf16(d.u16()?),
            sigma: Bf16(d.u16()?),
        };
    }
    for l in m.how.iter_mut() {
        *l = Bf16(d.u16()?);
    }
    m.how_sigma = d.arr()?;
    m.how_ref = d.pos32()?;
    let mut nv = Novelty::default();
    for w in nv.table.iter_mut() {
        *w = u64::from_le_bytes(d.arr()?);
    }
    nv.recent = d.u16()?;
    nv.filled = d.u8()?;
    nv.age_in = d.u16()?;
    nv.age_word = d.u8()?;
    nv.mean = d.f32()?;
    if !nv.valid() {
        return Err(corrupt("novelty memory out of range"));
    }
    m.novelty = nv;
    let mut range = Range::default();
    for v in range.hi.iter_mut().chain(range.lo.iter_mut()) {
        *v = d.f32()?;
    }
    if !range.valid() {
        return Err(corrupt("remembered range out of order"));
    }
    m.range = range;
    m.tail_faded = match d.u8()? {
        0 => false,
        1 => true,
        _ => return Err(corrupt("tail flag out of range")),
    };
    Ok(m)
}

pub(crate) fn encode(keys: &[KeyRef<'_>]) -> Vec<u8> {
    let keys = &keys[..keys.len().min(MAX_KEYS)];
    let mut e = Enc(Vec::with_capacity(16 + keys.len() * 1100));
    e.0.extend_from_slice(MAGIC);
    e.u32(VERSION);
    e.u32(keys.len() as u32);
    for k in keys {
        e.str(k.name);
        let tags = &k.tags[..k.tags.len().min(MAX_TAGS)];
        e.u8(tags.len() as u8);
        for (tk, tv) in tags {
            e.str(tk);
            e.str(tv);
        }
        e.u8(match k.kind {
            Kind::Gauge => 0,
            Kind::Counter => 1,
        });
        encode_model(&mut e, k.model);
    }
    let sum = fnv1a(&e.0);
    e.0.extend_from_slice(&sum.to_le_bytes());
    e.0
}

pub(crate) fn decode(buf: &[u8], max_keys: usize) -> Result<Vec<LoadedKey>, LoadError> {
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        return Err(LoadError::Foreign);
    }
    let mut d = Dec {
        buf,
        pos: MAGIC.len(),
    };
    let version = d.u32()?;
    if version != VERSION {
        return Err(LoadError::Version(version));
    }
    if buf.len() < 24 {
        return Err(corrupt("truncated"));
    }
    let (body, sum) = buf.split_at(buf.len() - 8);
    if fnv1a(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut d = Dec {
        buf: body,
        pos: d.pos,
    };
    let count = d.u32()? as usize;
    if count > MAX_KEYS {
        return Err(corrupt("too many keys"));
    }
    let mut keys = Vec::with_capacity(count.min(max_keys));
    for _ in 0..count {
        let name = d.str()?;
        let ntags = usize::from(d.u8()?);
        if ntags > MAX_TAGS {
            return Err(corrupt("too many tags"));
        }
        let mut tags = Tags::with_capacity(ntags);
        for _ in 0..ntags {
            let k = intern(&d.str()?).ok_or_else(|| corrupt("too many distinct tag names"))?;
            tags.push((k, d.str()?));
        }
        let kind = match d.u8()? {
            0 => Kind::Gauge,
            1 => Kind::Counter,
            _ => return Err(corrupt("unknown metric kind")),
        };
        let model = decode_model(&mut d)?;
        keys.push(LoadedKey {
            name,
            tags,
            kind,
            model,
        });
    }
    if d.pos != body.len() {
        return Err(corrupt("trailing bytes"));
    }
    // Keep the most recently updated keys when the file holds more than we may.
    if keys.len() > max_keys {
        keys.sort_by(|a, b| b.model.last_t.total_cmp(&a.model.last_t));
        keys.truncate(max_keys);
    }
    Ok(keys)
}

/// Reads and decodes a state file, refusing anything larger than `MAX_KEYS` keys could be.
pub(crate) fn read(path: &Path, max_keys: usize) -> Result<Vec<LoadedKey>, LoadError> {
    let limit = (20 + MAX_KEYS * MAX_ENTRY) as u64;
    decode(&read_state_file(path, limit)?, max_keys)
}

/// The bytes of a regular file of at most `limit` bytes that starts with [`MAGIC`]. Opened
/// without blocking (a FIFO at the path would block the open until a writer came) and checked
/// through the opened descriptor (no race with a swap of the path): a FIFO, a device (a
/// symlink to `/dev/zero` would read forever) or a directory is refused, and a foreign file is
/// refused after its first bytes, before reading the rest.
fn read_state_file(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(LoadError::NotAFile(if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    if meta.len() > limit {
        return Err(corrupt("file too large"));
    }
    let mut magic = [0u8; MAGIC.len()];
    if f.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(LoadError::Foreign);
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    buf.extend_from_slice(&magic);
    // Bounded even if the file grows while being read.
    f.take(limit - MAGIC.len() as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(corrupt("file too large"));
    }
    Ok(buf)
}

/// Suffix of the temporary files of [`write_atomic`]: `<file>.tmp.<pid>`.
const TMP_SUFFIX: &str = ".tmp.";

/// Removes `<path>.tmp.<pid>` files left by a writer that died before its rename (a kill during a
/// save): those whose pid is not a running process, or is this one (it has not saved yet).
/// Returns how many were removed.
pub(crate) fn clean_stale_temporaries(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!("{name}{TMP_SUFFIX}");
    let mut removed = 0;
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        if (pid as u32 == std::process::id() || !process_alive(pid))
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this pid exists (signal 0 checks without sending anything; EPERM
/// means it exists under another user).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename,
/// fsync of the directory. Creates the directory if needed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?
        .to_os_string();
    tmp_name.push(format!("{TMP_SUFFIX}{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::model::Params;

    fn trained() -> Model {
        let p = Params {
            interval_s: 300.0,
            sensitivity: 1.0,
            warmup: 10,
            raise_after: 1,
            clear_after: 1,
            counter: false,
            rel_floor: 1e-3,
            tz_offset_s: 0.0,
        };
        let mut m = Model::new();
        for i in 0..3000 {
            let t = 1_700_000_000.0 + f64::from(i) * 300.0;
            m.step(10.0 + (f64::from(i) * 0.7).sin(), t, &p);
        }
        m
    }

    #[test]
    fn round_trip() {
        let m = trained();
        let tags: Tags = vec![("device", "vda".into()), ("weird_tag", "x".into())];
        let keys = [KeyRef {
            name: "disk.ops",
            tags: &tags,
            kind: Kind::Counter,
            model: &m,
        }];
        let buf = encode(&keys);
        let back = decode(&buf, 10).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].name, "disk.ops");
        assert_eq!(back[0].tags, tags);
        assert_eq!(back[0].kind, Kind::Counter);
        // NaN fields (empty slots) compare unequal: compare the encodings.
        let again = encode(&[KeyRef {
            name: "disk.ops",
            tags: &back[0].tags,
            kind: Kind::Counter,
            model: &back[0].model,
        }]);
        assert_eq!(buf, again);
    }

    #[test]
    fn damage_is_detected() {
        let m = trained();
        let tags: Tags = vec![];
        let buf = encode(&[KeyRef {
            name: "load.1",
            tags: &tags,
            kind: Kind::Gauge,
            model: &m,
        }]);
        for i in [9, 20, buf.len() / 2, buf.len() - 1] {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, 10).is_err(), "flip at {i}");
        }
        assert!(matches!(
            decode(&buf[..buf.len() - 3], 10),
            Err(LoadError::Corrupt(_))
        ));
        assert!(matches!(
            decode(b"{\"json\": true}", 10),
            Err(LoadError::Foreign)
        ));
        // Files of the previous formats (version 1, before the score's state; version 2,
        // before the novelty memory; version 3, before the remembered range) are refused
        // cleanly, as is a newer one; the daemon then learns afresh.
        for v in [1, 2, 3, 5] {
            let mut old = buf.clone();
            old[8] = v;
            assert!(matches!(decode(&old, 10), Err(LoadError::Version(x)) if x == u32::from(v)));
        }
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("ebpf-agent-persist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fifo_at_the_state_path_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        let path = dir.join("detector.state");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A blocking open would wait for a writer forever: run it on a thread and bound the wait.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read(&p, 10).map(|_| ()).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO state path hung");
        assert_eq!(
            r.unwrap_err(),
            "the anomaly state path is a FIFO, not a regular file (remove it)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_and_junk_is_not_read_whole() {
        let dir = temp_dir("zero");
        let path = dir.join("detector.state");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(matches!(
            read(&path, 10),
            Err(LoadError::NotAFile("a device"))
        ));
        std::fs::remove_file(&path).unwrap();
        // A large foreign file: refused on its magic, not read to its end.
        std::fs::write(&path, vec![b'x'; 4 << 20]).unwrap();
        assert!(matches!(
            read_state_file(&path, 8 << 20),
            Err(LoadError::Foreign)
        ));
        std::fs::write(&path, vec![b'x'; 4 << 20]).unwrap();
        assert!(matches!(
            read_state_file(&path, 1 << 20),
            Err(LoadError::Corrupt(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = temp_dir("tmp");
        let path = dir.join("detector.state");
        // A pid above the kernel's pid_max (at most 2^22) is never running.
        let dead = dir.join("detector.state.tmp.99999999");
        let mine = dir.join(format!("detector.state.tmp.{}", std::process::id()));
        // pid 1 is always running: its file is someone's save in progress.
        let alive = dir.join("detector.state.tmp.1");
        let other = dir.join("other.tmp.99999999");
        for f in [&dead, &mine, &alive, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        assert_eq!(clean_stale_temporaries(&path), 2);
        assert!(!dead.exists() && !mine.exists());
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
