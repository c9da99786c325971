//! The eBPF source: loads the probes (the probe-ebpf crate, built by
//! `build.rs` and embedded here), tells them which processes to follow, and
//! turns what they write into [`Event`]s.
//!
//! The kernel does the filtering: a process that is not followed costs one
//! hash lookup per tracepoint hit and never reaches user space.
//!
//! What the probes report: the process tree (fork, exec, exit), signals
//! (generated and delivered), messages (`read`/`write`/`readv`/
//! `writev`/`recvfrom`/`sendto`/`recvmsg`/`sendmsg` on pipes, FIFOs and
//! Unix sockets, identified in the kernel by walking the fd table to the
//! inode (and the peer's, for a socket); `mq_timedsend`/`mq_timedreceive`
//! on POSIX message queues, named by their dentry; `msgsnd`/`msgrcv` on
//! SysV queues, by id and key), waits (futex waits and SysV `semop`,
//! reported when they begin and when they end) and shared memory (`mmap`
//! with `MAP_SHARED` of a tmpfs file, a memfd or anonymous memory, and
//! SysV `shmat`; the mappings are followed in the kernel, and each first
//! touch of a page, a user page fault, is reported as a read or write
//! sample). Kernel struct offsets come from
//! BTF (`btf`) and tracepoint field offsets from tracefs (`format`).
//!
//! Following starts from a pid registered with [`Probes::track`] (typically the
//! recorder itself, as a *launcher*) and the probes extend it to every
//! process forked below it, in the kernel, before the child first runs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLink;
use aya::programs::trace_point::TracePointLink;
use aya::programs::{ProgramError, RawTracePoint, TracePoint};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfError, EbpfLoader};
use ipc_events::raw::{sysv_class, PendingCall, MAX_PAYLOAD};
use ipc_events::{decode, DecodeError, Event, Source};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::platform::{self, Capabilities};

pub mod blocked;
mod btf;
mod format;
pub(crate) mod targets;
pub mod titles;

pub use targets::running_process_events;

/// The compiled probes. aya-build names the object after probe-ebpf's bin
/// target.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// The tracepoint programs in [`OBJECT`] and the tracepoint each attaches
/// to, as `(program, category, tracepoint)`.
const PROGRAMS: [(&str, &str, &str); 6] = [
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("task_rename", "task", "task_rename"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("task_newtask", "task", "task_newtask"),
    ("signal_deliver", "signal", "signal_deliver"),
    ("page_fault_user", "exceptions", "page_fault_user"),
];

/// Raw tracepoint programs, as `(program, tracepoint)`: used where the
/// tracepoint's published record lacks what the probe needs, or costs
/// too much to build. signal_generate names its target task only by pid
/// (a thread id); the raw tracepoint hands over the `task_struct`, whose
/// tgid the probe reads. sys_enter and sys_exit (raw_syscalls) see every
/// syscall with no record built for it: the per-syscall
/// `syscalls:sys_enter_*` tracepoints would build one for each call of
/// every process, traced or not. Their prototypes are checked against BTF
/// in `btf::kernel_offsets`.
const RAW_PROGRAMS: [(&str, &str); 3] = [
    ("signal_generate", "signal_generate"),
    ("sys_enter", "sys_enter"),
    ("sys_exit", "sys_exit"),
];

/// `TRACKED` value bits; probe-ebpf's `flag` module holds the same values.
mod flag {
    /// The process's own events are reported.
    pub const TRACED: u8 = 1;
    /// The process's new children are traced; its own events are not.
    pub const LAUNCHER: u8 = 2;
}

/// How often the ring is read when the probes have not woken the reader:
/// they do only once a backlog builds up, so this bounds how late a
/// trickle of events arrives.
pub const RING_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The most samples one [`Probes::read_into`] call drains, so a ring that
/// fills as fast as it is read cannot keep the caller from its other work
/// (or grow `out` without bound).
const MAX_BATCH: usize = 16 * 1024;

/// How to load the probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Report every process on the machine, not only the tracked ones
    /// (except the process that loads the probes, never reported).
    pub trace_all: bool,
    /// Bytes of each message to capture as its payload (at most
    /// [`MAX_PAYLOAD`]; more is an error); 0 captures none.
    pub payload_bytes: u16,
    /// Bytes in the kernel's event ring (a power of two, at least a page);
    /// `None` keeps the probes' own size, [`DEFAULT_RING_BYTES`].
    pub ring_bytes: Option<u32>,
}

/// The probes' `EVENTS` ring unless [`ProbeConfig::ring_bytes`] says
/// otherwise: room for about 100 ms of a million events a second.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// What one [`Probes::read_into`] call produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Events decoded and appended.
    pub events: usize,
    /// Samples that did not decode and were left out; the caller records
    /// them as a drop with source `DECODE`.
    pub decode_errors: u64,
    /// When the ring was drained (monotonic): every record the probes
    /// committed before it was read.
    pub read_through: u64,
}

/// Why loading the probes or talking to them failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probes read x86-64 syscall numbers and argument registers.
    #[error("the eBPF probes support x86-64 only, not {arch}; record without them with --no-ebpf")]
    Architecture { arch: &'static str },
    /// `/proc/self/status` could not be read or has no `CapEff` line.
    #[error("cannot read this process's capabilities from /proc/self/status")]
    Capabilities {
        #[source]
        source: io::Error,
    },
    /// The process may not load or attach BPF programs.
    #[error(
        "the eBPF probes need {missing}, which this process does not have: run as root \
         (or grant them, e.g. `setcap cap_bpf,cap_perfmon+ep`), or record without the \
         probes with --no-ebpf"
    )]
    MissingPrivileges {
        /// The capabilities missing, in words.
        missing: String,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is not mounted and mounting it at {path} failed (this needs \
         CAP_SYS_ADMIN; as root: `mount -t tracefs tracefs {path}`)"
    )]
    Tracefs {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// A tracepoint's format file (its record layout) could not be read.
    #[error("cannot read tracepoint format {}", path.display())]
    TracepointFormat {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tracepoint lacks a field the probes read, or its size changed:
    /// this kernel's layout is one the probes do not know.
    #[error(
        "tracepoint {tracepoint} does not have the layout the probes read: they read \
         field `{field}` as {size} bytes, and this kernel {}",
        found.map_or_else(|| "has no such field".to_owned(), |n| format!("has it as {n} bytes"))
    )]
    TracepointLayout {
        tracepoint: String,
        field: &'static str,
        /// The size the probes read.
        size: u32,
        /// The size the kernel has; `None` when it has no such field.
        found: Option<u32>,
    },
    /// The kernel's BTF could not be read.
    #[error("cannot read the kernel's type information {}", path.display())]
    Btf {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel's BTF is not in a format this reader understands.
    #[error("cannot parse the kernel's type information {}: {reason}", path.display())]
    BtfFormat {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A kernel struct lacks a field the probes read, or it changed type:
    /// this kernel's layout is one the probes do not know.
    #[error(
        "this kernel's {field} is not what the probes read: they expect {expected}, \
         the kernel has {found}"
    )]
    KernelLayout {
        field: String,
        expected: String,
        found: String,
    },
    /// The embedded object could not be parsed or its maps created.
    #[error("cannot load the embedded eBPF object")]
    Object {
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a program this loader expects: a build mismatch.
    #[error("the embedded eBPF object has no (raw) tracepoint program `{name}`")]
    MissingProgram { name: &'static str },
    /// The kernel (usually its verifier) refused a program.
    #[error("the kernel refused eBPF program `{name}`")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// A program loaded but could not be attached.
    #[error("cannot attach eBPF program `{name}` to tracepoint {category}:{tracepoint}")]
    Attach {
        name: &'static str,
        /// `raw` for a raw tracepoint.
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// The object lacks a map this loader expects: a build mismatch.
    #[error("the embedded eBPF object has no map `{name}`")]
    MissingMap { name: &'static str },
    /// A map is not of the type or key/value layout this loader expects.
    #[error("eBPF map `{name}` does not have the expected type or layout")]
    MapLayout {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// A pid could not be added to `TRACKED` (for instance, it is full).
    #[error("cannot add pid {pid} to the probes' TRACKED map")]
    Track {
        pid: u32,
        #[source]
        source: Box<MapError>,
    },
    /// A pid could not be removed from `TRACKED`.
    #[error("cannot remove pid {pid} from the probes' TRACKED map")]
    Untrack {
        pid: u32,
        #[source]
        source: Box<MapError>,
    },
    /// More payload was asked for than a record can carry.
    #[error("cannot capture {requested} bytes of payload per message: at most {MAX_PAYLOAD}")]
    PayloadTooLarge { requested: u16 },
    /// The kernel ring must be a power-of-two number of pages.
    #[error(
        "a kernel ring of {bytes} bytes is not possible: it must be a power of two \
         of at least {page} bytes (a page) and at most 1 GiB"
    )]
    RingSize { bytes: u32, page: u32 },
    /// `/proc` could not be listed to find the processes running.
    #[error("cannot list the running processes in /proc")]
    ProcessTable {
        #[source]
        source: io::Error,
    },
    /// `/proc/sysvipc/{msg,sem}` could not be read or parsed.
    #[error("cannot read the existing SysV objects from {path}")]
    SysvList {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// The probes' id -> key map of SysV objects could not be filled.
    #[error("cannot add SysV id {id} to the probes' SYSV_KEYS map")]
    SysvKeys {
        id: u32,
        #[source]
        source: Box<MapError>,
    },
    /// A program's run statistics could not be read.
    #[error("cannot read the run statistics of probe {name}")]
    ReadSkips {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's drop counter could not be read.
    #[error("cannot read the probes' DROPS counter")]
    ReadDrops {
        #[source]
        source: Box<MapError>,
    },
    /// The ring buffer could not be registered with tokio's reactor (or
    /// [`Probes::read_into`] was polled outside a tokio runtime).
    #[error("cannot register the eBPF ring buffer with the tokio reactor")]
    RingRegister {
        #[source]
        source: io::Error,
    },
    /// Waiting for the ring buffer to become readable failed.
    #[error("cannot wait on the eBPF ring buffer")]
    RingWait {
        #[source]
        source: io::Error,
    },
}

/// The loaded and attached probes. Dropping this detaches and unloads
/// them.
pub struct Probes {
    tracked: HashMap<MapData, u32, u8>,
    /// The syscalls traced threads are in right now, by thread id.
    pending: HashMap<MapData, u32, PendingCall>,
    drops: PerCpuArray<MapData, u64>,
    ring: Ring,
    /// Whether a decode failure was logged yet: one warning says the
    /// object and the decoder disagree; a thousand say nothing more.
    decode_warned: bool,
    /// The programs' attachments, owned here so that [`Drop`] can detach
    /// them all at once.
    links: Vec<Link>,
    /// Owns the programs.
    ebpf: Ebpf,
}

/// One attachment of a program to a tracepoint.
enum Link {
    // Held only to be dropped: dropping detaches.
    TracePoint(#[expect(dead_code, reason = "held to be dropped")] TracePointLink),
    Raw(#[expect(dead_code, reason = "held to be dropped")] RawTracePointLink),
}

impl Drop for Probes {
    /// Detaching a tracepoint waits for the kernel (an RCU grace period,
    /// about 40 ms here); one after another, the twenty attachments took
    /// 1.5 s after every recording. Dropped on threads of their own, part
    /// of the waits overlap (0.8 s in all; the kernel serialises the rest).
    fn drop(&mut self) {
        let detaching: Vec<_> = self
            .links
            .drain(..)
            .map(|link| std::thread::Builder::new().spawn(move || drop(link)))
            .collect();
        // A thread that could not be spawned dropped its link at once; one
        // that panicked has nothing left to do.
        for thread in detaching.into_iter().flatten() {
            let _ = thread.join();
        }
    }
}

/// The ring buffer, registered with tokio on first read: loading needs no
/// runtime (`ipcscope doctor` loads the probes outside one), and
/// registration does.
enum Ring {
    Idle(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// A placeholder inside [`Ring::polled`] while `Idle` becomes
    /// `Polled`; every path out of it puts a real state back.
    Lost,
}

impl Probes {
    /// Loads the embedded probes and attaches them all.
    ///
    /// Checks privileges first (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)
    /// so that a missing one is named instead of surfacing as an EPERM from
    /// deep inside aya. Mounts tracefs when it is missing, and reads from it
    /// where this kernel puts the tracepoint fields the probes read. No
    /// process is followed until [`Probes::track`] is called, unless
    /// `config.trace_all`.
    pub fn load(config: &ProbeConfig) -> Result<Probes, ProbeError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Architecture {
                arch: std::env::consts::ARCH,
            });
        }
        let caps = Capabilities::current().map_err(|source| ProbeError::Capabilities { source })?;
        if let Some(missing) = caps.missing_for_ebpf() {
            return Err(ProbeError::MissingPrivileges { missing });
        }
        let (tracefs, _) = platform::ensure_tracefs().map_err(|source| ProbeError::Tracefs {
            path: platform::TRACEFS,
            source,
        })?;
        let offsets = format::offsets(&tracefs)?;
        let kernel_offsets = btf::kernel_offsets(std::path::Path::new(platform::BTF_VMLINUX))?;
        raise_memlock_limit();

        if usize::from(config.payload_bytes) > MAX_PAYLOAD {
            return Err(ProbeError::PayloadTooLarge {
                requested: config.payload_bytes,
            });
        }
        let payload_bytes = u32::from(config.payload_bytes);
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let ring_bytes = config.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
        if !ring_bytes.is_power_of_two() || ring_bytes < page || ring_bytes > 1 << 30 {
            return Err(ProbeError::RingSize {
                bytes: ring_bytes,
                page,
            });
        }
        let trace_all = u8::from(config.trace_all);
        let me = std::process::id();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("EVENTS", ring_bytes);
        let wakeup_bytes = u64::from(ring_bytes / 64).min(256 * 1024);
        loader.override_global("WAKEUP_BYTES", &wakeup_bytes, true);
        loader.override_global("TRACE_ALL", &trace_all, true);
        // This process reads the ring; it must never report itself.
        loader.override_global("EXCLUDED_TGID", &me, true);
        loader.override_global("PAYLOAD_BYTES", &payload_bytes, true);
        let dev_shm = dev_shm_device();
        loader.override_global("DEV_SHM_DEV", &dev_shm, true);
        // Fields shared by several tracepoints repeat a global; setting it
        // again sets the same (checked) value.
        for (field, offset) in format::FIELDS.iter().zip(&offsets) {
            loader.override_global(field.global, offset, true);
        }
        for (field, offset) in btf::KERNEL_FIELDS.iter().zip(&kernel_offsets) {
            loader.override_global(field.global, offset, true);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| ProbeError::Object {
            source: Box::new(source),
        })?;

        let mut links = Vec::new();
        for (name, category, tracepoint) in PROGRAMS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                // The only failure is a program of another type.
                .map_err(|_| ProbeError::MissingProgram { name })?;
            program.load().map_err(|source| ProbeError::LoadProgram {
                name,
                source: Box::new(source),
            })?;
            let attach_error = |source| ProbeError::Attach {
                name,
                category,
                tracepoint,
                source: Box::new(source),
            };
            let id = program.attach(category, tracepoint).map_err(attach_error)?;
            links.push(Link::TracePoint(
                program.take_link(id).map_err(attach_error)?,
            ));
        }
        for (name, tracepoint) in RAW_PROGRAMS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                .map_err(|_| ProbeError::MissingProgram { name })?;
            program.load().map_err(|source| ProbeError::LoadProgram {
                name,
                source: Box::new(source),
            })?;
            let attach_error = |source| ProbeError::Attach {
                name,
                category: "raw",
                tracepoint,
                source: Box::new(source),
            };
            let id = program.attach(tracepoint).map_err(attach_error)?;
            links.push(Link::Raw(program.take_link(id).map_err(attach_error)?));
        }

        let tracked =
            HashMap::try_from(take_map(&mut ebpf, "TRACKED")?).map_err(map_layout("TRACKED"))?;
        let drops =
            PerCpuArray::try_from(take_map(&mut ebpf, "DROPS")?).map_err(map_layout("DROPS"))?;
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(map_layout("EVENTS"))?;
        let mut sysv_keys: HashMap<_, u64, u32> =
            HashMap::try_from(take_map(&mut ebpf, "SYSV_KEYS")?)
                .map_err(map_layout("SYSV_KEYS"))?;
        let mut shm_sizes: HashMap<_, u32, u64> =
            HashMap::try_from(take_map(&mut ebpf, "SHM_SIZES")?)
                .map_err(map_layout("SHM_SIZES"))?;
        preload_sysv(&mut sysv_keys, &mut shm_sizes)?;
        let pending =
            HashMap::try_from(take_map(&mut ebpf, "PENDING")?).map_err(map_layout("PENDING"))?;
        Ok(Probes {
            tracked,
            pending,
            drops,
            ring: Ring::Idle(ring),
            decode_warned: false,
            links,
            ebpf,
        })
    }

    /// Follows process `pid` (a tgid). A `launcher`'s own events are not
    /// reported, but every process it forks from now on is followed, and
    /// so are theirs; otherwise `pid` itself is followed too.
    pub fn track(&mut self, pid: u32, launcher: bool) -> Result<(), ProbeError> {
        let flags = if launcher {
            flag::LAUNCHER
        } else {
            flag::TRACED
        };
        self.tracked
            .insert(pid, flags, 0)
            .map_err(|source| ProbeError::Track {
                pid,
                source: Box::new(source),
            })
    }

    /// Follows each of `roots` and every process below it, those it forks
    /// from now on (in the kernel) and those it already has (from
    /// `/proc`). Returns every pid followed.
    ///
    /// The roots are tracked first, so any fork from then on is caught in
    /// the kernel; `/proc` is then walked until it shows no process below
    /// them that is not followed yet, which catches one forked by a
    /// descendant between a walk and its tracking.
    pub fn follow(&mut self, roots: &[u32]) -> Result<Vec<u32>, ProbeError> {
        let mut followed: Vec<u32> = Vec::new();
        for &pid in roots {
            self.track(pid, false)?;
            followed.push(pid);
        }
        // Each round tracks what the last one missed; a tree that keeps
        // forking faster than that is caught by the kernel after all.
        for _ in 0..8 {
            let table =
                targets::process_table().map_err(|source| ProbeError::ProcessTable { source })?;
            // The recorder itself is below `-p 1`: its own waits and
            // sockets are not what the user asked to see.
            let new: Vec<u32> = targets::descendants(&table, roots)
                .into_iter()
                .filter(|pid| !followed.contains(pid) && *pid != std::process::id())
                .collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                self.track(pid, false)?;
                followed.push(pid);
            }
        }
        Ok(followed)
    }

    /// The processes the probes follow now (not launchers), at most
    /// `limit` of them: `TRACKED`'s keys. Empty under `trace_all`, which
    /// follows every process without listing them.
    pub fn tracked_pids(&self, limit: usize) -> Vec<u32> {
        // An entry removed while the walk passes it ends the walk's view
        // of it with an error; such entries are skipped.
        self.tracked
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, flags)| flags & flag::TRACED != 0)
            .map(|(pid, _)| pid)
            .take(limit)
            .collect()
    }

    /// Every process running now, as `(pid, ppid)` from `/proc`.
    pub fn running_processes() -> Result<Vec<(u32, u32)>, ProbeError> {
        targets::process_table().map_err(|source| ProbeError::ProcessTable { source })
    }

    /// Stops following `pid`; processes it already forked stay followed.
    /// Not an error when `pid` is not followed (it may have exited, which
    /// removes it).
    pub fn untrack(&mut self, pid: u32) -> Result<(), ProbeError> {
        match self.tracked.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(ProbeError::Untrack {
                pid,
                source: Box::new(source),
            }),
        }
    }

    /// Waits until the ring buffer has samples, or [`RING_POLL`] passes,
    /// then drains it (up to a batch limit), appending each decoded sample
    /// to `out`. The probes wake this only once a backlog has built up
    /// (see probe-ebpf's `wakeup`), so a trickle of events is read on the
    /// timer.
    ///
    /// Samples that fail to decode are counted in the returned
    /// [`ReadStats::decode_errors`], never dropped silently; the first is
    /// logged with its [`DecodeError`].
    ///
    /// Cancel-safe: the only await is the wait for readiness, before any
    /// sample is taken, so it can sit in a `tokio::select!`.
    pub async fn read_into(&mut self, out: &mut Vec<Event>) -> Result<ReadStats, ProbeError> {
        let Probes {
            ring,
            decode_warned,
            ..
        } = self;
        let ring = ring.polled()?;
        let mut stats = ReadStats::default();
        match tokio::time::timeout(RING_POLL, ring.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard.map_err(|source| ProbeError::RingWait { source })?;
                stats.read_through = crate::clock::monotonic_ns();
                let drained = drain(guard.get_inner_mut(), out, &mut stats, decode_warned);
                // Readiness is edge-triggered: clearing it with samples
                // still in the ring would leave them there until the next
                // wakeup. tokio clears only if no wakeup arrived since the
                // guard was taken, so a sample committed after the last
                // `next` is not missed either.
                if drained {
                    guard.clear_ready();
                } else {
                    guard.retain_ready();
                }
            }
            // The timer: whatever arrived without a wakeup.
            Err(_) => {
                stats.read_through = crate::clock::monotonic_ns();
                drain(ring.get_mut(), out, &mut stats, decode_warned);
            }
        }
        Ok(stats)
    }

    /// The syscalls on IPC objects that traced threads are in right now,
    /// by thread id, as the probes entered them. An entry that stays is a
    /// thread blocked in its call (see [`blocked`]).
    pub fn in_flight(&self) -> Vec<(u32, PendingCall)> {
        // An entry removed while the walk passes it ends the walk's view of
        // it with an error; the calls still in flight are what matters, so
        // such entries are skipped rather than failing the scan.
        self.pending.iter().filter_map(Result::ok).collect()
    }

    /// Events the kernel lost: the sum of `DROPS` over CPUs, counted when
    /// the ring buffer had no room, `TRACKED` or `PENDING` was full, or a
    /// tracepoint field or kernel struct could not be read. Monotonic over
    /// the life of the probes.
    pub fn kernel_drops(&self) -> Result<u64, ProbeError> {
        let per_cpu = self
            .drops
            .get(&0, 0)
            .map_err(|source| ProbeError::ReadDrops {
                source: Box::new(source),
            })?;
        Ok(per_cpu.iter().sum())
    }

    /// How many times the kernel skipped one of the programs because it
    /// was already running on that CPU: a signal raised from an interrupt
    /// (a timer's) while `signal_generate` handled another one. Skips are
    /// counted for every process, traced or not, so this bounds the
    /// events lost that way from above. Monotonic over the life of the
    /// probes.
    pub fn skipped_runs(&self) -> Result<u64, ProbeError> {
        let mut skipped = 0;
        for (name, program) in self.ebpf.programs() {
            let error = |source| ProbeError::ReadSkips {
                name: name.to_owned(),
                source,
            };
            let fd = program
                .fd()
                .map_err(|e| error(io::Error::other(e.to_string())))?;
            skipped += recursion_misses(fd.as_fd()).map_err(error)?;
        }
        Ok(skipped)
    }
}

/// A loaded program's `bpf_prog_info.recursion_misses`, which aya does not
/// expose. The field's offset is part of the kernel's ABI (`bpf_prog_info`
/// only grows at its end); asking for exactly the bytes up to it makes the
/// kernel fill no more.
fn recursion_misses(program: BorrowedFd<'_>) -> io::Result<u64> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `offsetof(struct bpf_prog_info, recursion_misses)`, since Linux 5.12.
    const OFFSET: usize = 208;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u64; OFFSET / 8 + 1];
    let mut attr = InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the bpf(2) union's obj_info member, valid for the
    // call; the kernel writes at most `info_len` bytes to `info`, which
    // has that many.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // An older kernel's shorter struct leaves the field at its zero.
    Ok(info[OFFSET / 8])
}

/// Decodes up to [`MAX_BATCH`] samples from `ring` into `out`; true when
/// the ring is empty.
fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mut Vec<Event>,
    stats: &mut ReadStats,
    decode_warned: &mut bool,
) -> bool {
    for _ in 0..MAX_BATCH {
        let Some(sample) = ring.next() else {
            return true;
        };
        match decode(Source::Ebpf, &sample) {
            Ok((event, _)) => {
                out.push(event);
                stats.events += 1;
            }
            Err(e) => {
                stats.decode_errors += 1;
                warn_decode_error(decode_warned, &e, sample.len());
            }
        }
    }
    false
}

impl Ring {
    /// The ring registered with tokio, registering it on first use.
    fn polled(&mut self) -> Result<&mut AsyncFd<RingBuf<MapData>>, ProbeError> {
        if !matches!(self, Ring::Polled(_)) {
            match std::mem::replace(self, Ring::Lost) {
                Ring::Idle(ring) => {
                    if let Err(e) = tokio::runtime::Handle::try_current() {
                        // Registering would panic; say why instead.
                        *self = Ring::Idle(ring);
                        return Err(ProbeError::RingRegister {
                            source: io::Error::other(e),
                        });
                    }
                    // SAFETY: the AsyncFd owns the RingBuf, which owns the
                    // map's fd (in its MapData): it stays open, and
                    // as_raw_fd returns that same fd, until the RingBuf is
                    // dropped, which AsyncFd does only after deregistering.
                    let registered =
                        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
                    match registered {
                        Ok(polled) => *self = Ring::Polled(polled),
                        Err(e) => {
                            let (ring, source) = e.into_parts();
                            *self = Ring::Idle(ring);
                            return Err(ProbeError::RingRegister { source });
                        }
                    }
                }
                other => *self = other,
            }
        }
        match self {
            Ring::Polled(polled) => Ok(polled),
            Ring::Idle(_) | Ring::Lost => Err(ProbeError::RingRegister {
                source: io::Error::other("the ring buffer is not registered"),
            }),
        }
    }
}

/// The SysV objects of this IPC namespace, as `/proc/sysvipc` lists them.
const SYSV_LISTS: [(&str, u64); 3] = [
    ("/proc/sysvipc/msg", sysv_class::MSG),
    ("/proc/sysvipc/sem", sysv_class::SEM),
    ("/proc/sysvipc/shm", sysv_class::SHM),
];

/// Tells the probes the keys of the SysV objects that exist now, and the
/// sizes of the shared-memory segments: they learn those of later ones
/// from msgget/semget/shmget, but an object created before recording
/// (`-p PID`) is known only through these lists.
fn preload_sysv(
    keys: &mut HashMap<MapData, u64, u32>,
    shm_sizes: &mut HashMap<MapData, u32, u64>,
) -> Result<(), ProbeError> {
    for (path, class) in SYSV_LISTS {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // A kernel without SysV IPC has neither the lists nor objects.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ProbeError::SysvList { path, source }),
        };
        let entries =
            parse_sysv_list(&text).map_err(|source| ProbeError::SysvList { path, source })?;
        for SysvObject { key, id, size } in entries {
            let fill_error = |source| ProbeError::SysvKeys {
                id,
                source: Box::new(source),
            };
            keys.insert((class << 32) | u64::from(id), key, 0)
                .map_err(fill_error)?;
            if class == sysv_class::SHM {
                shm_sizes.insert(id, size, 0).map_err(fill_error)?;
            }
        }
    }
    Ok(())
}

/// One line of a `/proc/sysvipc` listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SysvObject {
    key: u32,
    id: u32,
    /// The fourth column: a segment's size in the `shm` list (the other
    /// lists have counts there, unused).
    size: u64,
}

/// Each object in a `/proc/sysvipc/{msg,sem,shm}` listing: a header line,
/// then one line per object starting with its key (a signed decimal
/// `key_t`), its id, its permissions, and the size (or a count).
fn parse_sysv_list(text: &str) -> Result<Vec<SysvObject>, io::Error> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut words = line.split_whitespace();
        let (Some(key), Some(id), _, Some(size)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {line:?} has no key, id, permissions and size"),
            ));
        };
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {line:?}: {what} is not a number"),
            )
        };
        // key_t is an int; the probes keep its 32 bits.
        let key = key.parse::<i32>().map_err(|_| bad("the key"))? as u32;
        let id = id.parse::<u32>().map_err(|_| bad("the id"))?;
        let size = size.parse::<u64>().map_err(|_| bad("the size"))?;
        out.push(SysvObject { key, id, size });
    }
    Ok(out)
}

/// The kernel's `dev_t` of the filesystem at /dev/shm, as the probes
/// compare it with a superblock's `s_dev` (`MKDEV`: major << 20 | minor),
/// or 0 when there is none: then no file is named as a /dev/shm path.
fn dev_shm_device() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/dev/shm").map_or(0, |m| {
        let dev = m.dev();
        (libc::major(dev) << 20) | libc::minor(dev)
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })
}

fn map_layout(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::MapLayout {
        name,
        source: Box::new(source),
    }
}

fn warn_decode_error(warned: &mut bool, error: &DecodeError, len: usize) {
    if !*warned {
        *warned = true;
        tracing::warn!(
            %error,
            sample_bytes = len,
            "an eBPF ring buffer sample did not decode; it and any later ones are \
             counted as drops (source DECODE), and only this first one is logged"
        );
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones
/// charge the memory cgroup and ignore it. Raising it can fail without
/// CAP_SYS_RESOURCE, which matters only on those old kernels, where the
/// load then fails with its own clear error.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass, which outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; not needed on kernels >= 5.11"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysv_lists_give_each_objects_key_and_id() {
        let msg = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime
         0          3   600           0          0     0     0     0     0     0     0          0          0 1700000000
1234567890         14   666          16          2   100   101     0     0     0     0 1700000001 1700000002 1700000000
       -17          9   600           0          0     0     0     0     0     0     0          0          0 1700000000
";
        let found: Vec<_> = parse_sysv_list(msg)
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.id, o.size))
            .collect();
        assert_eq!(
            found,
            [(0, 3, 0), (1_234_567_890, 14, 16), ((-17i32) as u32, 9, 0)]
        );
        let shm = "       key      shmid perms                  size  cpid  lpid nattch
      4660         32   600                 65536  1200  1201      2
";
        assert_eq!(
            parse_sysv_list(shm).unwrap(),
            [SysvObject {
                key: 4660,
                id: 32,
                size: 65536
            }]
        );
        assert_eq!(
            parse_sysv_list("       key      semid perms\n").unwrap(),
            []
        );
    }

    #[test]
    fn a_garbled_sysv_list_is_an_error_naming_the_line() {
        let err = parse_sysv_list("key msqid\nx 3 600 0\n").unwrap_err();
        assert!(err.to_string().contains("\"x 3 600 0\": the key"), "{err}");
        let err = parse_sysv_list("key msqid\n5\n").unwrap_err();
        assert!(err.to_string().contains("no key, id"), "{err}");
        let err = parse_sysv_list("key shmid perms size\n1 2 600 big\n").unwrap_err();
        assert!(err.to_string().contains("the size"), "{err}");
    }
}
