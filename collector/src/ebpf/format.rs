//! Tracepoint record layouts, read from tracefs when the probes load.
//!
//! A tracepoint's fields sit at offsets the kernel publishes in
//! `events/CATEGORY/EVENT/format` but does not promise to keep. The probes
//! read each field at an offset held in a global, and the loader sets those
//! globals from the format files, so a kernel that moves a field still gets
//! correct events, and one that drops or resizes it fails to load with the
//! field named instead of reporting garbage.

use std::path::{Path, PathBuf};

use super::ProbeError;

/// One field a probe reads, and the global that tells it where.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub category: &'static str,
    pub event: &'static str,
    pub name: &'static str,
    /// The size the probe reads; any other size is an error.
    pub size: u32,
    /// The probe-ebpf global holding the offset.
    pub global: &'static str,
}

/// Every tracepoint field the probes read (probe-ebpf's `OFFSET_*`
/// globals). Syscall arguments are not among them: the raw `sys_enter`
/// program reads them from the registers (`btf`).
pub(super) const FIELDS: [Field; 10] = [
    Field {
        category: "task",
        event: "task_newtask",
        name: "pid",
        size: 4,
        global: "OFFSET_NEWTASK_PID",
    },
    Field {
        category: "task",
        event: "task_newtask",
        name: "comm",
        size: 16,
        global: "OFFSET_NEWTASK_COMM",
    },
    Field {
        category: "task",
        event: "task_newtask",
        name: "clone_flags",
        size: 8,
        global: "OFFSET_NEWTASK_CLONE_FLAGS",
    },
    Field {
        category: "sched",
        event: "sched_process_exec",
        name: "filename",
        size: 4,
        global: "OFFSET_EXEC_FILENAME",
    },
    Field {
        category: "sched",
        event: "sched_process_exit",
        name: "group_dead",
        size: 1,
        global: "OFFSET_EXIT_GROUP_DEAD",
    },
    Field {
        category: "task",
        event: "task_rename",
        name: "pid",
        size: 4,
        global: "OFFSET_RENAME_PID",
    },
    Field {
        category: "task",
        event: "task_rename",
        name: "newcomm",
        size: 16,
        global: "OFFSET_RENAME_NEWCOMM",
    },
    Field {
        category: "signal",
        event: "signal_deliver",
        name: "sig",
        size: 4,
        global: "OFFSET_DELIVER_SIG",
    },
    Field {
        category: "exceptions",
        event: "page_fault_user",
        name: "address",
        size: 8,
        global: "OFFSET_FAULT_ADDRESS",
    },
    Field {
        category: "exceptions",
        event: "page_fault_user",
        name: "error_code",
        size: 8,
        global: "OFFSET_FAULT_ERROR_CODE",
    },
];

/// The offset of each of [`FIELDS`] on this kernel, in the same order.
pub(super) fn offsets(tracefs: &Path) -> Result<[u32; FIELDS.len()], ProbeError> {
    let mut out = [0; FIELDS.len()];
    for (slot, field) in out.iter_mut().zip(FIELDS) {
        let path: PathBuf = [
            tracefs,
            Path::new("events"),
            Path::new(field.category),
            Path::new(field.event),
            Path::new("format"),
        ]
        .iter()
        .collect();
        let format =
            std::fs::read_to_string(&path).map_err(|source| ProbeError::TracepointFormat {
                path: path.clone(),
                source,
            })?;
        let layout = |found: Option<u32>| ProbeError::TracepointLayout {
            tracepoint: format!("{}:{}", field.category, field.event),
            field: field.name,
            size: field.size,
            found,
        };
        let (offset, size) = find_field(&format, field.name).ok_or_else(|| layout(None))?;
        if size != field.size {
            return Err(layout(Some(size)));
        }
        *slot = offset;
    }
    Ok(out)
}

/// `(offset, size)` of the field called `name` in a tracefs format file.
///
/// Field lines read `field:TYPE NAME[DIM];\toffset:N;\tsize:N;\tsigned:N;`,
/// where TYPE may be several words (`__data_loc char[]`, `unsigned int`).
fn find_field(format: &str, name: &str) -> Option<(u32, u32)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        let declared = decl.rsplit(' ').next()?;
        let declared = declared.split_once('[').map_or(declared, |(n, _)| n);
        if declared != name {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        Some((offset?, size?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/task/task_newtask/format` on Linux 6.18.
    const NEWTASK: &str = "name: task_newtask
ID: 205
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;

print fmt: \"pid=%d comm=%s clone_flags=%llx oom_score_adj=%hd\", REC->pid, REC->comm, REC->clone_flags, REC->oom_score_adj
";

    #[test]
    fn finds_fields_by_name_whatever_their_type() {
        assert_eq!(find_field(NEWTASK, "pid"), Some((8, 4)));
        assert_eq!(find_field(NEWTASK, "comm"), Some((12, 16)));
        assert_eq!(find_field(NEWTASK, "clone_flags"), Some((32, 8)));
        assert_eq!(find_field(NEWTASK, "common_pid"), Some((4, 4)));
    }

    #[test]
    fn data_loc_fields_are_found_by_their_name() {
        let exec = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
                    \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n";
        assert_eq!(find_field(exec, "filename"), Some((8, 4)));
    }

    #[test]
    fn missing_or_partial_fields_are_none() {
        assert_eq!(find_field(NEWTASK, "group_dead"), None);
        // A name that is only a prefix of a real one does not match.
        assert_eq!(find_field(NEWTASK, "clone"), None);
        assert_eq!(find_field("\tfield:int x;\toffset:4;\n", "x"), None);
        assert_eq!(find_field("", "pid"), None);
    }
}
