//! Just enough of the kernel's BTF (/sys/kernel/btf/vmlinux) to find struct member offsets and
//! enumerator values at load time, so the BTF tracepoint programs never hard-code a layout.
//!
//! aya parses BTF too but keeps struct members private, and the one standalone crate for it
//! (btf-rs) is LGPL, which does not sit with this MIT/Apache binary; the format is small and
//! stable (Documentation/bpf/btf.rst), and only the parts read here are decoded.

use std::path::Path;

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {0}: {1} (a kernel built without CONFIG_DEBUG_INFO_BTF has no BTF)")]
    Io(String, std::io::Error),
    #[error("malformed BTF: {0}")]
    Format(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("BTF struct {0} member {1} is {2} bytes, expected {3}")]
    Size(String, String, u32, u32),
    #[error("BTF has no enumerator {0}")]
    NoEnumerator(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A native-endian word at byte `o`, if the blob holds one there.
fn u32_at(data: &[u8], o: usize) -> Option<u32> {
    data.get(o..o + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// One type's header (`struct btf_type`) and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` for ints, structs, unions, enums; the referenced type id for pointers, typedefs
    /// and modifiers.
    size_or_type: u32,
    data: usize,
}

/// A struct member: byte offset from the start of the struct (anonymous members flattened)
/// and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    data: Vec<u8>,
    /// Index = type id; id 0 is `void` (a placeholder here).
    types: Vec<Type>,
    strings: (usize, usize),
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Io(path.display().to_string(), e))?;
        Btf::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let truncated = || BtfError::Format("truncated");
        if data.get(..2) != Some(&MAGIC.to_ne_bytes()[..]) {
            return Err(BtfError::Format(
                "bad magic (not BTF, or another byte order)",
            ));
        }
        let field = |o| u32_at(&data, o).map(|v| v as usize).ok_or_else(truncated);
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = (hdr_len + str_off, hdr_len + str_off + str_len);
        if types_end > data.len() || strings.1 > data.len() {
            return Err(truncated());
        }
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            data: 0,
        }];
        let mut o = types_start;
        while o < types_end {
            let (name_off, info, size_or_type) =
                match (u32_at(&data, o), u32_at(&data, o + 4), u32_at(&data, o + 8)) {
                    (Some(a), Some(b), Some(c)) => (a, b, c),
                    _ => return Err(BtfError::Format("truncated type")),
                };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let data_start = o + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                0 | KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | 12 | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Format("unknown type kind")),
            };
            types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                data: data_start,
            });
            o = data_start + extra;
        }
        if o != types_end {
            return Err(BtfError::Format("type section overruns"));
        }
        Ok(Btf {
            data,
            types,
            strings,
        })
    }

    /// A word of type data; `parse` checked that every type's data lies in the blob.
    fn u32_at(&self, o: usize) -> u32 {
        u32_at(&self.data, o).expect("type data inside the BTF blob")
    }

    fn name(&self, off: u32) -> &str {
        let (start, end) = self.strings;
        let s = &self.data[start..end];
        let from = (off as usize).min(s.len());
        let len = s[from..].iter().position(|&c| c == 0).unwrap_or(0);
        std::str::from_utf8(&s[from..from + len]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Size in bytes of type `id`, through typedefs and modifiers.
    fn size_of(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Some(t.size_or_type);
                }
                KIND_PTR => return Some(8),
                KIND_ARRAY => {
                    let elem = self.u32_at(t.data);
                    let n = self.u32_at(t.data + 8);
                    return self.size_of(elem)?.checked_mul(n);
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return None,
            }
        }
        None
    }

    /// Finds `member` in struct or union `id`, looking inside anonymous members; byte offset
    /// relative to `id`. Bitfields are not members for this purpose.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<Member> {
        let t = *self.ty(id)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.data + 12 * i;
            let (name_off, mtype, raw) = (self.u32_at(m), self.u32_at(m + 4), self.u32_at(m + 8));
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0xff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if bitfield != 0 || bits % 8 != 0 {
                continue;
            }
            if name_off == 0 {
                let inner = self.strip_modifiers(mtype);
                if let Some(found) = self.find_member(inner, member, depth + 1) {
                    return Some(Member {
                        offset: bits / 8 + found.offset,
                        size: found.size,
                    });
                }
            } else if self.name(name_off) == member {
                return Some(Member {
                    offset: bits / 8,
                    size: self.size_of(mtype)?,
                });
            }
        }
        None
    }

    fn strip_modifiers(&self, mut id: u32) -> u32 {
        while let Some(t) = self.ty(id) {
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset and size of `strukt.member`.
    pub fn member(&self, strukt: &str, member: &str) -> Result<Member, BtfError> {
        // The first named struct with members (a forward declaration has none). A scan: a few
        // lookups at start, and no index of every name to keep in memory.
        let id = self
            .types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && t.vlen > 0
                    && t.name_off != 0
                    && self.name(t.name_off) == strukt
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))? as u32;
        self.find_member(id, member, 0)
            .ok_or_else(|| BtfError::NoMember(strukt.into(), member.into()))
    }

    /// `member` of `strukt` when it is exactly `size` bytes (the width the program loads).
    pub fn member_sized(&self, strukt: &str, member: &str, size: u32) -> Result<u32, BtfError> {
        let m = self.member(strukt, member)?;
        if m.size != size {
            return Err(BtfError::Size(strukt.into(), member.into(), m.size, size));
        }
        Ok(m.offset)
    }

    /// The value of an enumerator, from any enum.
    pub fn enumerator(&self, name: &str) -> Result<i64, BtfError> {
        for t in &self.types {
            let width = match t.kind {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => continue,
            };
            for i in 0..t.vlen as usize {
                let e = t.data + width * i;
                if self.name(self.u32_at(e)) != name {
                    continue;
                }
                let lo = self.u32_at(e + 4);
                return Ok(if t.kind == KIND_ENUM {
                    // Signed unless kind_flag says unsigned.
                    if t.kind_flag {
                        i64::from(lo)
                    } else {
                        i64::from(lo as i32)
                    }
                } else {
                    ((u64::from(self.u32_at(e + 8)) << 32) | u64::from(lo)) as i64
                });
            }
        }
        Err(BtfError::NoEnumerator(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: `int`, `struct s { int a; union { long b; int c; }; int *p; }`,
    /// `enum e { X = -1, Y = 7 }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0p\0long\0e\0X\0Y\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int (4 bytes)
        t.extend([s("int"), info(KIND_INT, 0), 4, 32]);
        // 2: long (8 bytes)
        t.extend([s("long"), info(KIND_INT, 0), 8, 64]);
        // 3: anonymous union { long b; int c; }
        t.extend([0, info(KIND_UNION, 2), 8]);
        t.extend([s("b"), 2, 0, s("c"), 1, 0]);
        // 4: int *
        t.extend([0, info(KIND_PTR, 0), 1]);
        // 5: struct s { int a; <pad>; union; int *p; }
        t.extend([s("s"), info(KIND_STRUCT, 3), 24]);
        t.extend([s("a"), 1, 0, 0, 3, 64, s("p"), 4, 128]);
        // 6: enum e { X = -1, Y = 7 }
        t.extend([s("e"), info(KIND_ENUM, 2), 4]);
        t.extend([s("X"), u32::MAX, s("Y"), 7]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_ne_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn members_through_anonymous_unions_and_enumerators() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member("s", "a").unwrap(), Member { offset: 0, size: 4 });
        assert_eq!(btf.member("s", "b").unwrap(), Member { offset: 8, size: 8 });
        assert_eq!(btf.member("s", "c").unwrap(), Member { offset: 8, size: 4 });
        assert_eq!(
            btf.member("s", "p").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert!(matches!(btf.member("s", "zz"), Err(BtfError::NoMember(..))));
        assert!(matches!(btf.member("t", "a"), Err(BtfError::NoStruct(_))));
        assert!(matches!(
            btf.member_sized("s", "b", 4),
            Err(BtfError::Size(_, _, 8, 4))
        ));
        assert_eq!(btf.enumerator("X").unwrap(), -1);
        assert_eq!(btf.enumerator("Y").unwrap(), 7);
        assert!(btf.enumerator("Z").is_err());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"\x7fELF and more bytes than a header".to_vec()).is_err());
        let mut cut = sample();
        cut.truncate(40);
        assert!(Btf::parse(cut).is_err());
    }

    /// The running kernel's own BTF, against the layout its block tracepoints imply.
    #[test]
    fn this_kernel_has_the_block_layer_members() {
        let btf = Btf::from_file(Path::new(VMLINUX)).unwrap();
        assert_eq!(btf.member("request", "q").unwrap().offset, 0);
        assert_eq!(btf.member("request", "__data_len").unwrap().size, 4);
        assert_eq!(btf.member("request", "__sector").unwrap().size, 8);
        assert_eq!(btf.member("gendisk", "major").unwrap().size, 4);
        assert_eq!(btf.enumerator("REQ_OP_WRITE").unwrap(), 1);
    }
}
