//! tracefs: mounting it when needed and reading tracepoint field offsets from `format` files,
//! so no kernel struct offset is ever hard-coded.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {TRACEFS} failed: {0} (run as root, or mount it: `mount -t tracefs nodev {TRACEFS}`)"
    )]
    Mount(std::io::Error),
    #[error("tracefs at {0} is mounted but not readable: run as root or grant CAP_DAC_READ_SEARCH")]
    Unreadable(String),
    #[error("tracepoint {0} not found in tracefs (this kernel lacks it)")]
    NoTracepoint(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tp}: field `{field}` missing or of unexpected size (want {want} bytes)")]
    Field {
        tp: String,
        field: String,
        want: usize,
    },
}

/// Where tracefs is mounted and readable; `None` when it is not mounted.
pub fn find() -> Result<Option<PathBuf>, TracefsError> {
    for p in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(p).join("events").is_dir() {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    // Mounted, but we may not look inside (mode 0700, not root): mounting again would not help.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(p) = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).zip(l.split_whitespace().nth(2)))
        .find(|(dir, fstype)| *fstype == "tracefs" && [TRACEFS, DEBUGFS_TRACING].contains(dir))
        .map(|(dir, _)| dir)
    {
        return Err(TracefsError::Unreadable(p.to_string()));
    }
    Ok(None)
}

/// Where tracefs is mounted, mounting it at /sys/kernel/tracing if it is nowhere.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(p) = find()? {
        return Ok(p);
    }
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    let source = CString::new("nodev").expect("no NUL");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// Fields of a tracepoint `format` file, by name (array suffixes stripped: `rwbs[10]` → `rwbs`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let Some(decl) = parts.next() else { continue };
            let (mut offset, mut size) = (None, None);
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the declaration's last word, without an array suffix.
            let Some(name) = decl.split_whitespace().last() else {
                continue;
            };
            let name = name
                .split('[')
                .next()
                .unwrap_or(name)
                .trim_start_matches('*');
            if let (Some(offset), Some(size)) = (offset, size) {
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Format { fields }
    }

    /// Offset of `field`, checking its size is at least `want` bytes (arrays may be longer).
    pub fn offset(&self, tp: &str, field: &str, want: usize) -> Result<u16, TracefsError> {
        match self.fields.get(field) {
            Some(f) if f.size as usize == want || (want > 8 && f.size as usize >= want) => {
                Ok(f.offset)
            }
            // Array fields we read a prefix of (rwbs is 8 or 10 bytes depending on the kernel).
            Some(f) if field == "rwbs" && f.size as usize >= want => Ok(f.offset),
            _ => Err(TracefsError::Field {
                tp: tp.into(),
                field: field.into(),
                want,
            }),
        }
    }
}

/// Reads and parses `events/<category>/<name>/format`.
pub fn format(tracefs: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    let dir = tracefs.join("events").join(category).join(name);
    if !dir.is_dir() {
        return Err(TracefsError::NoTracepoint(format!("{category}:{name}")));
    }
    let path = dir.join("format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
    Ok(Format::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_RQ_ISSUE: &str = "name: block_rq_issue
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:unsigned int bytes;\toffset:28;\tsize:4;\tsigned:0;
\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:char comm[16];\toffset:44;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:60;\tsize:4;\tsigned:0;

print fmt: \"%d,%d %s %u (%s) %llu + %u %s [%s]\", ...
";

    #[test]
    fn parses_block_rq_issue() {
        let f = Format::parse(BLOCK_RQ_ISSUE);
        assert_eq!(f.fields["dev"], Field { offset: 8, size: 4 });
        assert_eq!(
            f.fields["sector"],
            Field {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            f.fields["bytes"],
            Field {
                offset: 28,
                size: 4
            }
        );
        assert_eq!(
            f.fields["rwbs"],
            Field {
                offset: 34,
                size: 10
            }
        );
        assert_eq!(
            f.fields["cmd"],
            Field {
                offset: 60,
                size: 4
            }
        );
        assert_eq!(f.offset("b", "rwbs", 8).unwrap(), 34);
        assert_eq!(f.offset("b", "sector", 8).unwrap(), 16);
        assert!(
            f.offset("b", "sector", 4).is_err(),
            "size mismatch is refused"
        );
        assert!(f.offset("b", "nope", 4).is_err());
    }

    #[test]
    fn parses_pointer_fields() {
        let f = Format::parse("\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n");
        assert_eq!(f.fields["skaddr"], Field { offset: 8, size: 8 });
    }
}
