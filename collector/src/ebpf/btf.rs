//! Kernel struct layouts, read from the kernel's BTF when the probes load.
//!
//! aya-ebpf has no CO-RE relocations, so a probe that walks kernel structs
//! (`task->files->fdt->fd[fd]->f_inode`, a socket's peer) reads each field
//! at an offset held in a global, and the loader sets those globals from
//! `/sys/kernel/btf/vmlinux`. A kernel that renames, resizes or turns a
//! field into a bitfield fails to load with the field named, instead of
//! the probes reading garbage.
//!
//! aya's own `Btf` parser keeps its members crate-private, so this is a
//! small reader of the format (`Documentation/bpf/btf.rst`): the header,
//! the type section walked once to index type ids, and member lookup that
//! descends into anonymous structs and unions the way C field access does.

use std::path::Path;

use super::ProbeError;

/// One kernel struct field a probe reads, and the global that tells it where.
#[derive(Clone, Copy, Debug)]
pub(super) struct KernelField {
    /// The struct, by its C name (`task_struct`).
    pub strukt: &'static str,
    /// The member, dotted for nested named members (`__sk_common.skc_family`).
    pub member: &'static str,
    /// The size the probe reads; 0 when the probe only takes the address.
    pub size: u32,
    /// The probe-ebpf global holding the byte offset.
    pub global: &'static str,
}

const fn field(
    strukt: &'static str,
    member: &'static str,
    size: u32,
    global: &'static str,
) -> KernelField {
    KernelField {
        strukt,
        member,
        size,
        global,
    }
}

/// Every struct field the probes read (probe-ebpf's `KOFF_*` globals).
pub(super) const KERNEL_FIELDS: [KernelField; 34] = [
    field("task_struct", "tgid", 4, "KOFF_TASK_TGID"),
    field("task_struct", "pid", 4, "KOFF_TASK_PID"),
    field("task_struct", "files", 8, "KOFF_TASK_FILES"),
    field("files_struct", "fdt", 8, "KOFF_FILES_FDT"),
    field("fdtable", "max_fds", 4, "KOFF_FDT_MAX_FDS"),
    field("fdtable", "fd", 8, "KOFF_FDT_FD"),
    field("file", "f_inode", 8, "KOFF_FILE_INODE"),
    field("file", "private_data", 8, "KOFF_FILE_PRIVATE_DATA"),
    field("file", "f_path.dentry", 8, "KOFF_FILE_DENTRY"),
    field("dentry", "d_name.name", 8, "KOFF_DENTRY_NAME"),
    field("inode", "i_mode", 2, "KOFF_INODE_MODE"),
    field("inode", "i_ino", 8, "KOFF_INODE_INO"),
    field("inode", "i_sb", 8, "KOFF_INODE_SB"),
    field("super_block", "s_magic", 8, "KOFF_SB_MAGIC"),
    field("super_block", "s_dev", 4, "KOFF_SB_DEV"),
    field("socket", "type", 2, "KOFF_SOCKET_TYPE"),
    field("socket", "sk", 8, "KOFF_SOCKET_SK"),
    field("sock", "__sk_common.skc_family", 2, "KOFF_SOCK_FAMILY"),
    field("sock", "sk_socket", 8, "KOFF_SOCK_SOCKET"),
    field("unix_sock", "peer", 8, "KOFF_UNIX_PEER"),
    // SOCK_INODE(): a socket and its inode are allocated together.
    field("socket_alloc", "vfs_inode", 0, "KOFF_SOCKET_ALLOC_INODE"),
    field(
        "task_struct",
        "thread_info.status",
        4,
        "KOFF_TASK_TI_STATUS",
    ),
    // An exit's wait status (probe-ebpf's wait_status).
    field("task_struct", "exit_code", 4, "KOFF_TASK_EXIT_CODE"),
    field("task_struct", "group_leader", 8, "KOFF_TASK_GROUP_LEADER"),
    field("task_struct", "signal", 8, "KOFF_TASK_SIGNAL"),
    field("signal_struct", "flags", 4, "KOFF_SIGNAL_FLAGS"),
    field(
        "signal_struct",
        "group_exit_code",
        4,
        "KOFF_SIGNAL_GROUP_EXIT_CODE",
    ),
    // Who sent a signal (in the anonymous struct of __SIGINFO).
    field("kernel_siginfo", "si_code", 4, "KOFF_SIGINFO_CODE"),
    // The registers x86-64 passes syscall arguments in, in order.
    field("pt_regs", "di", 8, "KOFF_REGS_DI"),
    field("pt_regs", "si", 8, "KOFF_REGS_SI"),
    field("pt_regs", "dx", 8, "KOFF_REGS_DX"),
    field("pt_regs", "r10", 8, "KOFF_REGS_R10"),
    field("pt_regs", "r8", 8, "KOFF_REGS_R8"),
    field("pt_regs", "r9", 8, "KOFF_REGS_R9"),
];

/// The raw tracepoints the probes read by argument position, and what
/// each argument must be. Raw tracepoint arguments are a prototype, not a
/// published record, so they are checked.
pub(super) const RAW_PROTOS: [(&str, &[Param]); 3] = [
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct
    // *task, int group, int result)
    (
        "btf_trace_signal_generate",
        &[
            Param::Int(4),
            Param::PtrTo("kernel_siginfo"),
            Param::PtrTo("task_struct"),
            Param::Int(4),
            Param::Int(4),
        ],
    ),
    // TP_PROTO(struct pt_regs *regs, long id)
    (
        "btf_trace_sys_enter",
        &[Param::PtrTo("pt_regs"), Param::Int(8)],
    ),
    // TP_PROTO(struct pt_regs *regs, long ret)
    (
        "btf_trace_sys_exit",
        &[Param::PtrTo("pt_regs"), Param::Int(8)],
    ),
];

/// What a raw tracepoint argument must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Param {
    /// An integer of this many bytes.
    Int(u32),
    /// A pointer to the struct of this name.
    PtrTo(&'static str),
}

/// The offset of each of [`KERNEL_FIELDS`] on the running kernel, in the
/// same order, after checking the raw tracepoint prototypes.
pub(super) fn kernel_offsets(vmlinux: &Path) -> Result<[u32; KERNEL_FIELDS.len()], ProbeError> {
    let data = std::fs::read(vmlinux).map_err(|source| ProbeError::Btf {
        path: vmlinux.to_path_buf(),
        source,
    })?;
    let btf = Btf::parse(data).map_err(|reason| ProbeError::BtfFormat {
        path: vmlinux.to_path_buf(),
        reason,
    })?;
    let mut out = [0; KERNEL_FIELDS.len()];
    for (slot, f) in out.iter_mut().zip(KERNEL_FIELDS) {
        let layout = |found: String| ProbeError::KernelLayout {
            field: format!("struct {}.{}", f.strukt, f.member),
            expected: if f.size == 0 {
                "a member".to_owned()
            } else {
                format!("{} bytes", f.size)
            },
            found,
        };
        let found = btf
            .member_path(f.strukt, f.member)
            .ok_or_else(|| layout("no such field".to_owned()))?;
        if found.bitfield {
            return Err(layout("a bitfield".to_owned()));
        }
        if f.size != 0 && found.size != Some(f.size) {
            return Err(layout(found.size.map_or_else(
                || "a type of unknown size".to_owned(),
                |n| format!("{n} bytes"),
            )));
        }
        *slot = found.offset;
    }
    for (name, params) in RAW_PROTOS {
        if let Err(found) = btf.check_raw_tracepoint(name, params) {
            return Err(ProbeError::KernelLayout {
                field: format!("raw tracepoint prototype {name}"),
                expected: format!("{params:?}"),
                found,
            });
        }
    }
    Ok(out)
}

// BTF type kinds (`BTF_KIND_*`).
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
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER: usize = 12;

/// A parsed BTF blob: the bytes, and where each type id starts.
struct Btf {
    data: Vec<u8>,
    /// Byte offset in `data` of type id `i` at index `i`; index 0 (void)
    /// is unused.
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
}

/// A member found by [`Btf::member_path`].
#[derive(Debug, PartialEq, Eq)]
struct Member {
    /// Byte offset from the start of the outer struct.
    offset: u32,
    /// The member type's size, when it has one.
    size: Option<u32>,
    bitfield: bool,
}

/// A type's header fields.
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for sized kinds, `type` for references.
    size_or_type: u32,
    /// Where the kind-specific data starts.
    extra: usize,
}

impl Btf {
    fn parse(data: Vec<u8>) -> Result<Btf, String> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return Err("not little-endian BTF (bad magic)".into());
        }
        let hdr_len = read_u32(&data, 4).ok_or("truncated header")? as usize;
        let word = |i: usize| read_u32(&data, 8 + 4 * i).map(|v| v as usize);
        let (type_off, type_len, str_off, str_len) = match (word(0), word(1), word(2), word(3)) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err("truncated header".into()),
        };
        let type_start = hdr_len + type_off;
        let type_end = type_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if type_end > data.len() || strings.end > data.len() {
            return Err("sections run past the end of the file".into());
        }
        let mut btf = Btf {
            data,
            types: vec![0],
            strings,
        };
        let mut at = type_start;
        while at < type_end {
            btf.types.push(at);
            let t = btf.header_at(at).ok_or("truncated type")?;
            let extra = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
                _ => 0,
            };
            at = t.extra + extra;
        }
        if at != type_end {
            return Err("the type section does not end on a type boundary".into());
        }
        Ok(btf)
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let info = read_u32(&self.data, at + 4)?;
        Some(TypeHeader {
            name_off: read_u32(&self.data, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(&self.data, at + 8)?,
            extra: at + TYPE_HEADER,
        })
    }

    fn header(&self, id: u32) -> Option<TypeHeader> {
        self.header_at(*self.types.get(id as usize)?)
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let start = self.strings.start + name_off as usize;
        let Some(rest) = self.data.get(start..self.strings.end) else {
            return &[];
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The id of the first type of `kind` called `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.types.len() as u32).find(|&id| {
            self.header(id)
                .is_some_and(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes())
        })
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> Option<(u32, TypeHeader)> {
        for _ in 0..32 {
            let t = self.header(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some((id, t)),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let (_, t) = self.strip(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(t.size_or_type),
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let elem = read_u32(&self.data, t.extra)?;
                let n = read_u32(&self.data, t.extra + 8)?;
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    /// `member` (dotted for nested members) of struct `strukt`.
    fn member_path(&self, strukt: &str, member: &str) -> Option<Member> {
        let mut id = self.find(KIND_STRUCT, strukt)?;
        let mut offset = 0;
        let mut found = None;
        for part in member.split('.') {
            let (bit_offset, type_id, bitfield) = self.member(id, part, 0)?;
            offset += bit_offset / 8;
            id = type_id;
            found = Some(Member {
                offset,
                size: self.size_of(type_id),
                bitfield: bitfield || bit_offset % 8 != 0,
            });
        }
        found
    }

    /// `(bit offset, type id, is a bitfield)` of `name` in the struct or
    /// union `id`, looking inside anonymous members too.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32, bool)> {
        let (_, t) = self.strip(id)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen {
            let at = t.extra + 12 * i;
            let name_off = read_u32(&self.data, at)?;
            let type_id = read_u32(&self.data, at + 4)?;
            let raw = read_u32(&self.data, at + 8)?;
            let (bit_offset, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                if let Some((inner, ty, bf)) = self.member(type_id, name, depth + 1) {
                    return Some((bit_offset + inner, ty, bf));
                }
            } else if self.name(name_off) == name.as_bytes() {
                return Some((bit_offset, type_id, bitfield));
            }
        }
        None
    }

    /// Checks that raw tracepoint typedef `name` (a pointer to a function
    /// whose first parameter is the `void *` context) takes `params`.
    fn check_raw_tracepoint(&self, name: &str, params: &[Param]) -> Result<(), String> {
        let id = self
            .find(KIND_TYPEDEF, name)
            .ok_or_else(|| "no such typedef".to_owned())?;
        let proto = self
            .strip(id)
            .filter(|(_, t)| t.kind == KIND_PTR)
            .and_then(|(_, t)| self.strip(t.size_or_type))
            .filter(|(_, t)| t.kind == KIND_FUNC_PROTO)
            .map(|(_, t)| t)
            .ok_or_else(|| "not a pointer to a function".to_owned())?;
        if proto.vlen != params.len() + 1 {
            return Err(format!("{} arguments", proto.vlen.saturating_sub(1)));
        }
        for (i, want) in params.iter().enumerate() {
            let type_id = read_u32(&self.data, proto.extra + 8 * (i + 1) + 4)
                .ok_or_else(|| "a truncated prototype".to_owned())?;
            let ok = match *want {
                Param::Int(size) => self
                    .strip(type_id)
                    .is_some_and(|(_, t)| t.kind == KIND_INT && t.size_or_type == size),
                Param::PtrTo(target) => self
                    .strip(type_id)
                    .filter(|(_, t)| t.kind == KIND_PTR)
                    .and_then(|(_, t)| self.strip(t.size_or_type))
                    .is_some_and(|(_, t)| {
                        t.kind == KIND_STRUCT && self.name(t.name_off) == target.as_bytes()
                    }),
            };
            if !ok {
                return Err(format!("argument {i} is not {want:?}"));
            }
        }
        Ok(())
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from `(name, info, size_or_type, extra words)`.
    fn blob(names: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        for n in names {
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
        }
        let mut section = Vec::new();
        for (name, info, st, extra) in types {
            for w in [*name, *info, *st].iter().chain(extra) {
                section.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            section.len() as u32,
            section.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&section);
        out.extend_from_slice(&strings);
        out
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (kind << 24) | vlen
    }

    /// Offsets of the names in `blob`'s string section.
    const INT: u32 = 1; // "int"
    const OUTER: u32 = 5; // "outer"
    const A: u32 = 11; // "a"
    const B: u32 = 13; // "b"
    const FLAGS: u32 = 15; // "flags"

    fn sample() -> Btf {
        // 1: int (4 bytes); 2: anonymous union { int b; }; 3: struct outer
        // { int a; union { int b; }; int flags: 3; } with kind_flag set.
        let data = blob(
            &["int", "outer", "a", "b", "flags"],
            &[
                (INT, info(KIND_INT, 0, false), 4, vec![32]),
                (0, info(KIND_UNION, 1, false), 4, vec![B, 1, 0]),
                (
                    OUTER,
                    info(KIND_STRUCT, 3, true),
                    12,
                    vec![A, 1, 0, 0, 2, 32, FLAGS, 1, (3 << 24) | 64],
                ),
            ],
        );
        Btf::parse(data).unwrap()
    }

    #[test]
    fn finds_members_and_looks_inside_anonymous_unions() {
        let btf = sample();
        assert_eq!(
            btf.member_path("outer", "a"),
            Some(Member {
                offset: 0,
                size: Some(4),
                bitfield: false
            })
        );
        assert_eq!(
            btf.member_path("outer", "b"),
            Some(Member {
                offset: 4,
                size: Some(4),
                bitfield: false
            })
        );
        assert!(btf.member_path("outer", "flags").unwrap().bitfield);
        assert_eq!(btf.member_path("outer", "missing"), None);
        assert_eq!(btf.member_path("nothing", "a"), None);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(vec![0; 64]).is_err());
        assert!(Btf::parse(Vec::new()).is_err());
        let mut truncated = blob(&["int"], &[(INT, info(KIND_INT, 0, false), 4, vec![32])]);
        truncated.truncate(30);
        assert!(Btf::parse(truncated).is_err());
    }

    /// The running kernel's BTF: every field the probes read is there,
    /// with the size they read.
    #[test]
    fn the_running_kernel_has_every_field_the_probes_read() {
        let path = Path::new(crate::platform::BTF_VMLINUX);
        if !path.exists() {
            // CI runs on this project's machine kind, which has BTF.
            assert!(
                std::env::var("CI").is_err(),
                "{} is missing",
                path.display()
            );
            eprintln!("no {} on this machine; skipped", path.display());
            return;
        }
        let offsets = kernel_offsets(path).unwrap();
        // struct sock starts with its sock_common, and unix_sock with its sock.
        let family = KERNEL_FIELDS
            .iter()
            .position(|f| f.global == "KOFF_SOCK_FAMILY")
            .unwrap();
        assert!(offsets[family] < 64, "{offsets:?}");
    }
}
