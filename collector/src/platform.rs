//! What this machine offers ipcscope: privileges, BTF, tracefs and the
//! tracepoint families the probes attach to.
//!
//! [`checks`] is `ipcscope doctor`: every fact the eBPF source depends on,
//! each with a reason when it is missing, ending with a real load and
//! attach of the probes. The capability and tracefs helpers here are also
//! what [`crate::ebpf::Probes::load`] checks before it touches the kernel,
//! so doctor and record can never disagree about what is needed.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::ebpf::{ProbeConfig, Probes};

/// Where ipcscope expects tracefs, and mounts it when it is missing.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older setups have it, through debugfs; aya looks here too.
const TRACEFS_IN_DEBUGFS: &str = "/sys/kernel/debug/tracing";
/// The kernel's own type information, which the probes' loader uses.
pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Tracepoint families (directories under tracefs `events/`) that ipcscope
/// attaches to now or will (process lifecycle, IPC syscalls, signals,
/// socket traffic, page faults on shared memory), with the name of each
/// one's check.
pub const TRACEPOINT_FAMILIES: [(&str, &str); 7] = [
    ("syscalls", "tracepoints: syscalls"),
    ("signal", "tracepoints: signal"),
    ("sched", "tracepoints: sched"),
    ("task", "tracepoints: task"),
    ("sock", "tracepoints: sock"),
    ("exceptions", "tracepoints: exceptions"),
    ("raw_syscalls", "tracepoints: raw_syscalls"),
];

/// One line of `ipcscope doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found; when not ok, why, and what to do about it.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// Runs every check, in the order a reader would fix things.
///
/// Mounts tracefs when it is missing and can be mounted, as loading the
/// probes would; the detail says so.
pub fn checks() -> Vec<Check> {
    let mut out = vec![capabilities_check(), btf_check()];
    let tracefs = ensure_tracefs();
    out.push(match &tracefs {
        Ok((path, TracefsState::Mounted)) => {
            Check::new("tracefs", true, format!("mounted at {}", path.display()))
        }
        Ok((path, TracefsState::MountedNow)) => Check::new(
            "tracefs",
            true,
            format!("was not mounted; mounted it at {}", path.display()),
        ),
        Err(e) => Check::new(
            "tracefs",
            false,
            format!(
                "not mounted, and mounting it at {TRACEFS} failed: {e} \
                 (needs CAP_SYS_ADMIN: `mount -t tracefs tracefs {TRACEFS}`)"
            ),
        ),
    });
    let tracefs = tracefs.ok().map(|(path, _)| path);

    for (family, name) in TRACEPOINT_FAMILIES {
        out.push(match &tracefs {
            None => Check::new(name, false, "unknown: tracefs is not mounted"),
            Some(root) => {
                let dir = root.join("events").join(family);
                if dir.is_dir() {
                    Check::new(name, true, format!("present ({})", dir.display()))
                } else {
                    Check::new(
                        name,
                        false,
                        format!("no {} in this kernel's tracefs", dir.display()),
                    )
                }
            }
        });
    }

    out.push(match &tracefs {
        None => Check::new("uprobes", false, "unknown: tracefs is not mounted"),
        Some(root) if root.join("uprobe_events").exists() => {
            Check::new("uprobes", true, "available (uprobe_events present)")
        }
        Some(_) => Check::new(
            "uprobes",
            false,
            "not available (no uprobe_events in tracefs: CONFIG_UPROBE_EVENTS unset); \
             library-level probes (semaphores, mutexes) will be missing",
        ),
    });
    // ipcscope is designed around tracepoints and uprobes because machines
    // like CI have no kprobes; their absence is information, not a fault.
    out.push(match &tracefs {
        Some(root) if root.join("kprobe_events").exists() => {
            Check::new("kprobes", true, "available; ipcscope does not need them")
        }
        Some(_) => Check::new(
            "kprobes",
            true,
            "not available (CONFIG_KPROBES unset); ipcscope does not need it",
        ),
        None => Check::new(
            "kprobes",
            true,
            "unknown: tracefs is not mounted; ipcscope does not need it",
        ),
    });

    out.push(match Probes::load(&ProbeConfig::default()) {
        Ok(probes) => {
            drop(probes);
            Check::new(
                "ebpf probes",
                true,
                "loaded and attached every program, then detached",
            )
        }
        Err(e) => Check::new("ebpf probes", false, error_chain(&e)),
    });
    out
}

fn capabilities_check() -> Check {
    const NAME: &str = "capabilities";
    let caps = match Capabilities::current() {
        Ok(caps) => caps,
        Err(e) => return Check::new(NAME, false, format!("cannot read them: {e}")),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let who = if euid == 0 { "root" } else { "not root" };
    match caps.missing_for_ebpf() {
        None => Check::new(NAME, true, format!("{who}; effective: {caps}")),
        Some(missing) => Check::new(
            NAME,
            false,
            format!(
                "{who}; effective: {caps}; loading the probes needs {missing}: run as root, \
                 or record with --no-ebpf"
            ),
        ),
    }
}

fn btf_check() -> Check {
    if Path::new(BTF_VMLINUX).is_file() {
        Check::new("btf", true, format!("{BTF_VMLINUX} present"))
    } else {
        Check::new(
            "btf",
            false,
            format!(
                "{BTF_VMLINUX} missing (kernel built without CONFIG_DEBUG_INFO_BTF); \
                 kernel-struct offsets cannot be looked up"
            ),
        )
    }
}

/// `e` and its causes, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// A process's effective capability set (`CapEff` in `/proc/PID/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    effective: u64,
}

impl Capabilities {
    /// Numbers from `<linux/capability.h>`.
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;

    /// The capabilities named in messages, with their numbers.
    const NAMED: [(u32, &'static str); 3] = [
        (Self::SYS_ADMIN, "CAP_SYS_ADMIN"),
        (Self::PERFMON, "CAP_PERFMON"),
        (Self::BPF, "CAP_BPF"),
    ];

    /// This process's effective set.
    pub fn current() -> io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Self::from_status(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/status has no readable CapEff line",
            )
        })
    }

    /// Parses the `CapEff:` line of a `/proc/PID/status` text; `None` when
    /// there is none or it is not hex.
    pub fn from_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))?
            .trim();
        if hex.is_empty() {
            return None;
        }
        u64::from_str_radix(hex, 16)
            .ok()
            .map(|effective| Capabilities { effective })
    }

    pub const fn has(self, cap: u32) -> bool {
        cap < 64 && self.effective & (1 << cap) != 0
    }

    /// What is missing to load and attach the probes, in words, or `None`
    /// when nothing is. Since Linux 5.8 CAP_BPF and CAP_PERFMON together are
    /// enough; CAP_SYS_ADMIN alone still is.
    pub fn missing_for_ebpf(self) -> Option<String> {
        if self.has(Self::SYS_ADMIN) || (self.has(Self::BPF) && self.has(Self::PERFMON)) {
            return None;
        }
        let missing: Vec<&str> = [(Self::BPF, "CAP_BPF"), (Self::PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(cap, _)| !self.has(cap))
            .map(|(_, name)| name)
            .collect();
        Some(format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")))
    }
}

impl fmt::Display for Capabilities {
    /// The raw mask and the capabilities ipcscope cares about.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapEff={:016x}", self.effective)?;
        let held: Vec<&str> = Self::NAMED
            .iter()
            .filter(|&&(cap, _)| self.has(cap))
            .map(|&(_, name)| name)
            .collect();
        if held.is_empty() {
            f.write_str(" (none of CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF)")
        } else {
            write!(f, " ({})", held.join(", "))
        }
    }
}

/// How [`ensure_tracefs`] found tracefs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracefsState {
    /// It was already mounted.
    Mounted,
    /// It was not; this call mounted it at [`TRACEFS`].
    MountedNow,
}

/// Finds tracefs, mounting it at [`TRACEFS`] when neither place has it (a
/// fresh machine boots without it). Returns the directory in use.
///
/// Must run before the first tracepoint attach in the process: aya looks
/// for tracefs once and remembers the answer.
pub fn ensure_tracefs() -> io::Result<(PathBuf, TracefsState)> {
    for root in [TRACEFS, TRACEFS_IN_DEBUGFS] {
        let root = Path::new(root);
        if root.join("events").is_dir() {
            return Ok((root.to_path_buf(), TracefsState::Mounted));
        }
    }
    let (source, target, fstype): (&CStr, &CStr, &CStr) =
        (c"tracefs", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: all three are NUL-terminated strings that outlive the call;
    // tracefs takes no mount data, so a null data pointer is allowed.
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
        return Err(io::Error::last_os_error());
    }
    Ok((PathBuf::from(TRACEFS), TracefsState::MountedNow))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cap_eff: &str) -> String {
        format!(
            "Name:\tcat\nUmask:\t0022\nCapInh:\t0000000000000000\n\
             CapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\nCapBnd:\t000001ffffffffff\n"
        )
    }

    #[test]
    fn full_root_set_can_load_probes() {
        let caps = Capabilities::from_status(&status("000001ffffffffff")).unwrap();
        assert!(caps.has(Capabilities::SYS_ADMIN));
        assert!(caps.has(Capabilities::BPF));
        assert_eq!(caps.missing_for_ebpf(), None);
    }

    #[test]
    fn bpf_and_perfmon_without_sys_admin_are_enough() {
        let mask = (1u64 << 39) | (1 << 38);
        let caps = Capabilities::from_status(&status(&format!("{mask:016x}"))).unwrap();
        assert!(!caps.has(Capabilities::SYS_ADMIN));
        assert_eq!(caps.missing_for_ebpf(), None);
    }

    #[test]
    fn sys_admin_alone_is_enough() {
        let caps = Capabilities::from_status(&status("0000000000200000")).unwrap();
        assert_eq!(caps.missing_for_ebpf(), None);
    }

    #[test]
    fn missing_capabilities_are_named() {
        let none = Capabilities::from_status(&status("0000000000000000")).unwrap();
        assert_eq!(
            none.missing_for_ebpf().as_deref(),
            Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
        let bpf_only = Capabilities::from_status(&status("0000008000000000")).unwrap();
        assert!(bpf_only.has(Capabilities::BPF));
        assert_eq!(
            bpf_only.missing_for_ebpf().as_deref(),
            Some("CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
    }

    #[test]
    fn unreadable_cap_eff_is_none() {
        assert_eq!(Capabilities::from_status("Name:\tcat\n"), None);
        assert_eq!(Capabilities::from_status(&status("")), None);
        assert_eq!(Capabilities::from_status(&status("not-hex")), None);
        assert_eq!(
            Capabilities::from_status(&status("1ffffffffffffffffff")),
            None
        );
    }

    #[test]
    fn display_names_held_capabilities() {
        let caps = Capabilities::from_status(&status("000000c000200000")).unwrap();
        assert_eq!(
            caps.to_string(),
            "CapEff=000000c000200000 (CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF)"
        );
    }
}
