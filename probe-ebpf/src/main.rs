//! ipcscope's eBPF programs: the kernel end of the event flow.
//!
//! Each program sits on a tracepoint, decides in the kernel whether the
//! current process is one ipcscope follows (one hash lookup for the ones it
//! does not), and writes an `ipc_events::raw::RawEvent` into the `EVENTS`
//! ring buffer, which the collector (`collector::ebpf`) drains and decodes.
//!
//! Which processes are followed lives in `TRACKED`: user space registers a
//! *launcher* (the recorder, just before it spawns the command) and the
//! kernel extends the set to every process a tracked process forks, so a
//! whole process tree is followed from its first instruction with no race.
//!
//! Besides the process tree, the programs report signals (generated, by
//! sender or target, and delivered), messages (the eight read/write/
//! send/recv syscalls on pipes, FIFOs and Unix sockets; POSIX message
//! queues; SysV message queues), waits (futexes, SysV semaphores), futex
//! wakes that woke someone, shared memory (mappings, and page faults on
//! them as access samples) and the names processes give themselves
//! (`task_rename`). Signals carry their `si_code` (a process or the
//! kernel sent them) and exits their wait status.
//! Syscalls come through one raw `sys_enter` and one raw `sys_exit`
//! program, which look at the syscall number and the process before
//! anything else. A syscall's entry resolves its IPC object in the kernel
//! and remembers it in `PENDING`; its exit reports what the return value
//! says happened. Waits are also reported at their entry, so a thread
//! blocked right now is known before (or without) its return.
//!
//! Programs are thin wrappers over `try_*` functions; nothing here panics,
//! and an event the ring has no room for is counted in `DROPS`, never lost
//! without a trace.
// no_std and no_main only for the BPF target: on the host the crate is an
// ordinary, empty binary, so `cargo check`/`clippy --workspace` (which
// build every member for the host) lint it instead of failing on it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::ptr;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    bpf_probe_read_kernel, bpf_probe_read_user, generated,
};
use aya_ebpf::macros::{map, raw_tracepoint, tracepoint};
use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{RawTracePointContext, TracePointContext};
use aya_ebpf::{EbpfContext, Global};
use ipc_events::raw::{
    chan, kind, op, shm_origin, sysv_class, PendingCall, RawEvent, MAX_NAME, MAX_PAYLOAD,
    RECORD_ALIGN, SI_CODE_KNOWN, SYSV_KEY_UNKNOWN, WAIT_BEGUN,
};

/// `TRACKED` value bits. The collector (`collector::ebpf`) writes the same
/// values; keep the two in step.
mod flag {
    /// The process's own events are reported.
    pub const TRACED: u8 = 1;
    /// The process's new children are traced; its own events are not.
    pub const LAUNCHER: u8 = 2;
}

/// `CLONE_THREAD` from `<linux/sched.h>`: a new thread, not a new process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// Every process is traced, whatever `TRACKED` says. Set by the loader
/// (`EbpfLoader::override_global`); read-only once loaded.
#[no_mangle]
static TRACE_ALL: Global<u8> = Global::new(0);

/// How many bytes of each message to capture (`--payload-bytes`, at most
/// MAX_PAYLOAD); 0 captures none and skips finding the buffers at all.
#[no_mangle]
static PAYLOAD_BYTES: Global<u32> = Global::new(0);

/// The process that loaded the probes (the recorder), never traced even
/// under `TRACE_ALL`: its own writes, futexes and ring reads would
/// otherwise feed back into the ring without end.
#[no_mangle]
static EXCLUDED_TGID: Global<u32> = Global::new(0);

/// tgid -> `flag` bits. Big enough for a large build's process tree; an
/// insert into a full map fails and the child goes untraced, which is
/// reported as a drop.
#[map]
static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Every event, in the order the kernel committed them. The loader sets
/// its size (`collector::ebpf::DEFAULT_RING_BYTES` unless `record
/// --kernel-ring-kib` says otherwise); 16 MiB holds about 170k events,
/// several seconds of a busy workload if the reader stalls.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Thread id -> the syscall it is in. Only syscalls on IPC objects of
/// traced processes are entered here; an entry whose exit never comes
/// (the thread died in the call) is removed when the thread exits. A full
/// map loses the message, which is counted as a drop.
#[map]
static PENDING: HashMap<u32, PendingCall> = HashMap::with_max_entries(16384, 0);

/// SysV id (with its `sysv_class` in the high word) -> the key it was
/// created from. The kernel keeps the key only behind the IPC namespace's
/// idr, which a probe cannot walk; so the probes learn it from the
/// msgget/semget calls of traced processes, and the loader adds the
/// objects that existed before (from `/proc/sysvipc`). LRU: ids of
/// removed objects age out.
#[map]
static SYSV_KEYS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// SysV shared-memory id -> the segment's size, learnt like `SYSV_KEYS`
/// (from shmget, and from `/proc/sysvipc/shm` at load): shmat returns
/// only an address, and page faults are matched to segments by range.
#[map]
static SHM_SIZES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// tgid -> the shared-memory mappings of a traced process, which its page
/// faults are matched against ([`try_page_fault`]). Filled by mmap/shmat
/// exits and copied to each child at fork (mappings are inherited); an
/// entry goes at exec and exit.
#[map]
static SHM_MAPS: HashMap<u32, ShmMappings> = HashMap::with_max_entries(4096, 0);

/// DROPS[0]: events lost in the kernel: no room in `EVENTS`, a child that
/// could not be added to a full `TRACKED`, a message syscall that could not
/// be remembered in a full `PENDING`, or a failed read of a tracepoint
/// field or kernel struct. Per CPU so that counting losses under load does not contend on
/// one cache line.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A record with a name: the header and room for an exec's program path
/// or a message queue's name. The ring only takes reservations of a size
/// known to the verifier, so the area is fixed and `name_len` says how
/// much of it is the name; the decoder reads `name_len` bytes and ignores
/// the rest.
#[repr(C)]
struct NamedRecord {
    header: RawEvent,
    /// MAX_NAME bytes of name plus the NUL the kernel's string copy writes.
    name: [u8; MAX_NAME + 1],
}

/// A message record with a payload: the header, then the queue's name
/// (for an mq) and right after it the first bytes of the message. Fixed
/// size like [`NamedRecord`]; reserved only when payload capture is on.
#[repr(C)]
struct PayloadRecord {
    header: RawEvent,
    area: [u8; MAX_NAME + 1 + MAX_PAYLOAD],
}

/// One shared-memory mapping of a process: `[start, end)` holds object
/// `obj`/`obj2` of `chan_kind` from byte `offset` of it; for a
/// `chan::SHM` object, `dentry` names it. `end == 0`: a free slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct ShmMapping {
    start: u64,
    end: u64,
    obj: u64,
    obj2: u64,
    offset: u64,
    dentry: u64,
    chan_kind: u16,
    _pad: [u16; 3],
}

/// The most shared mappings followed per process; a process with more
/// gets the rest reported as mapped but not sampled, counted as a drop.
const MAX_SHM_MAPPINGS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct ShmMappings {
    slots: [ShmMapping; MAX_SHM_MAPPINGS],
}

/// What a new `SHM_MAPS` entry starts from. A static rather than a value
/// on the stack, which the 512-byte BPF stack could not hold.
static NO_MAPPINGS: ShmMappings = ShmMappings {
    slots: [ShmMapping {
        start: 0,
        end: 0,
        obj: 0,
        obj2: 0,
        offset: 0,
        dentry: 0,
        chan_kind: 0,
        _pad: [0; 3],
    }; MAX_SHM_MAPPINGS],
};

/// The name of every anonymous shared mapping (`shm_origin::ANON`); the
/// decoder makes it unique with the mapping's pid and address.
static ANON_NAME: [u8; 5] = *b"anon\0";

// The ring's reservations are 8-byte aligned and sized in multiples of 8.
const _: () = assert!(core::mem::size_of::<NamedRecord>().is_multiple_of(RECORD_ALIGN));
const _: () = assert!(core::mem::size_of::<PayloadRecord>().is_multiple_of(RECORD_ALIGN));
// `gather` keeps an offset below MAX_PAYLOAD with a mask.
const _: () = assert!(MAX_PAYLOAD.is_power_of_two());

// Where this kernel puts the tracepoint fields the programs read. Tracepoint
// layouts are not a promised ABI, so the loader reads the real offsets from
// tracefs's format files and overrides these (collector::ebpf::format); the
// defaults are those of Linux 6.x.
/// task:task_newtask `pid_t pid` (the child's).
#[no_mangle]
static OFFSET_NEWTASK_PID: Global<u32> = Global::new(8);
/// task:task_newtask `char comm[16]` (the child's, still the parent's name).
#[no_mangle]
static OFFSET_NEWTASK_COMM: Global<u32> = Global::new(12);
/// task:task_newtask `u64 clone_flags`.
#[no_mangle]
static OFFSET_NEWTASK_CLONE_FLAGS: Global<u32> = Global::new(32);
/// sched:sched_process_exec `__data_loc char[] filename`: a u32 holding
/// the string's offset in the record (low 16 bits) and length (high 16).
#[no_mangle]
static OFFSET_EXEC_FILENAME: Global<u32> = Global::new(8);
/// sched:sched_process_exit `bool group_dead`.
#[no_mangle]
static OFFSET_EXIT_GROUP_DEAD: Global<u32> = Global::new(32);
/// task:task_rename `pid_t pid` (the renamed thread's).
#[no_mangle]
static OFFSET_RENAME_PID: Global<u32> = Global::new(8);
/// task:task_rename `char newcomm[16]`.
#[no_mangle]
static OFFSET_RENAME_NEWCOMM: Global<u32> = Global::new(28);

/// signal:signal_deliver `int sig`.
#[no_mangle]
static OFFSET_DELIVER_SIG: Global<u32> = Global::new(8);
/// exceptions:page_fault_user `unsigned long address`.
#[no_mangle]
static OFFSET_FAULT_ADDRESS: Global<u32> = Global::new(8);
/// exceptions:page_fault_user `unsigned long error_code`.
#[no_mangle]
static OFFSET_FAULT_ERROR_CODE: Global<u32> = Global::new(24);

/// The kernel's `dev_t` of the filesystem mounted at /dev/shm (0 when there
/// is none), set by the loader: a tmpfs file on it was opened with
/// `shm_open` and is named by its path.
#[no_mangle]
static DEV_SHM_DEV: Global<u32> = Global::new(0);

// Where this kernel puts the struct fields the probes walk. aya-ebpf has no
// CO-RE relocations, so the loader reads them from the kernel's BTF
// (collector::ebpf::btf) and always overrides these placeholders; a
// missing or changed field fails the load instead.
/// `task_struct.tgid`.
#[no_mangle]
static KOFF_TASK_TGID: Global<u32> = Global::new(0);
/// `task_struct.pid`.
#[no_mangle]
static KOFF_TASK_PID: Global<u32> = Global::new(0);
/// `task_struct.files`.
#[no_mangle]
static KOFF_TASK_FILES: Global<u32> = Global::new(0);
/// `files_struct.fdt`.
#[no_mangle]
static KOFF_FILES_FDT: Global<u32> = Global::new(0);
/// `fdtable.max_fds`.
#[no_mangle]
static KOFF_FDT_MAX_FDS: Global<u32> = Global::new(0);
/// `fdtable.fd`.
#[no_mangle]
static KOFF_FDT_FD: Global<u32> = Global::new(0);
/// `file.f_inode`.
#[no_mangle]
static KOFF_FILE_INODE: Global<u32> = Global::new(0);
/// `file.f_path.dentry`.
#[no_mangle]
static KOFF_FILE_DENTRY: Global<u32> = Global::new(0);
/// `dentry.d_name.name`.
#[no_mangle]
static KOFF_DENTRY_NAME: Global<u32> = Global::new(0);
/// `file.private_data` (the `struct socket` of a socket's file).
#[no_mangle]
static KOFF_FILE_PRIVATE_DATA: Global<u32> = Global::new(0);
/// `inode.i_mode`.
#[no_mangle]
static KOFF_INODE_MODE: Global<u32> = Global::new(0);
/// `inode.i_ino`.
#[no_mangle]
static KOFF_INODE_INO: Global<u32> = Global::new(0);
/// `inode.i_sb`.
#[no_mangle]
static KOFF_INODE_SB: Global<u32> = Global::new(0);
/// `super_block.s_magic`.
#[no_mangle]
static KOFF_SB_MAGIC: Global<u32> = Global::new(0);
/// `super_block.s_dev`.
#[no_mangle]
static KOFF_SB_DEV: Global<u32> = Global::new(0);
/// `socket.type`.
#[no_mangle]
static KOFF_SOCKET_TYPE: Global<u32> = Global::new(0);
/// `socket.sk`.
#[no_mangle]
static KOFF_SOCKET_SK: Global<u32> = Global::new(0);
/// `sock.__sk_common.skc_family`.
#[no_mangle]
static KOFF_SOCK_FAMILY: Global<u32> = Global::new(0);
/// `sock.sk_socket`.
#[no_mangle]
static KOFF_SOCK_SOCKET: Global<u32> = Global::new(0);
/// `unix_sock.peer`.
#[no_mangle]
static KOFF_UNIX_PEER: Global<u32> = Global::new(0);
/// `socket_alloc.vfs_inode`: a socket's inode, allocated with it.
#[no_mangle]
static KOFF_SOCKET_ALLOC_INODE: Global<u32> = Global::new(0);
/// `task_struct.exit_code`: the status a thread's `do_exit` was given.
#[no_mangle]
static KOFF_TASK_EXIT_CODE: Global<u32> = Global::new(0);
/// `task_struct.group_leader`: the process's main thread.
#[no_mangle]
static KOFF_TASK_GROUP_LEADER: Global<u32> = Global::new(0);
/// `task_struct.signal`: the process's `signal_struct`.
#[no_mangle]
static KOFF_TASK_SIGNAL: Global<u32> = Global::new(0);
/// `signal_struct.flags` (`SIGNAL_GROUP_EXIT`).
#[no_mangle]
static KOFF_SIGNAL_FLAGS: Global<u32> = Global::new(0);
/// `signal_struct.group_exit_code`: the status of a group exit.
#[no_mangle]
static KOFF_SIGNAL_GROUP_EXIT_CODE: Global<u32> = Global::new(0);
/// `kernel_siginfo.si_code`: who sent a signal.
#[no_mangle]
static KOFF_SIGINFO_CODE: Global<u32> = Global::new(0);
/// `task_struct.thread_info.status`, whose `TS_COMPAT` bit marks a 32-bit
/// syscall.
#[no_mangle]
static KOFF_TASK_TI_STATUS: Global<u32> = Global::new(0);
/// The `pt_regs` registers x86-64 passes syscall arguments in, in order:
/// `di`, `si`, `dx`, `r10`, `r8`, `r9`.
#[no_mangle]
static KOFF_REGS_DI: Global<u32> = Global::new(0);
#[no_mangle]
static KOFF_REGS_SI: Global<u32> = Global::new(0);
#[no_mangle]
static KOFF_REGS_DX: Global<u32> = Global::new(0);
#[no_mangle]
static KOFF_REGS_R10: Global<u32> = Global::new(0);
#[no_mangle]
static KOFF_REGS_R8: Global<u32> = Global::new(0);
#[no_mangle]
static KOFF_REGS_R9: Global<u32> = Global::new(0);

/// x86-64 syscall numbers (`arch/x86/entry/syscalls/syscall_64.tbl`), an
/// ABI that never changes; the loader refuses other architectures.
mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const MMAP: i64 = 9;
    pub const MUNMAP: i64 = 11;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SHMGET: i64 = 29;
    pub const SHMAT: i64 = 30;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const SEMGET: i64 = 64;
    pub const SEMOP: i64 = 65;
    pub const SHMDT: i64 = 67;
    pub const MSGGET: i64 = 68;
    pub const MSGSND: i64 = 69;
    pub const MSGRCV: i64 = 70;
    pub const EXECVE: i64 = 59;
    pub const FUTEX: i64 = 202;
    pub const SEMTIMEDOP: i64 = 220;
    pub const MQ_TIMEDSEND: i64 = 242;
    pub const MQ_TIMEDRECEIVE: i64 = 243;
    pub const EXECVEAT: i64 = 322;
}

/// x86's `TS_COMPAT`: the current syscall is a 32-bit one, numbered from
/// another table.
const TS_COMPAT: u32 = 0x0002;

/// `S_IFMT` and the file types among it, from `<linux/stat.h>`.
const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
/// pipefs's `s_magic`: an anonymous pipe, where a FIFO lives on the
/// filesystem that holds its path.
const PIPEFS_MAGIC: u64 = 0x5049_5045;
/// mqueue's `s_magic`: a POSIX message queue's file.
const MQUEUE_MAGIC: u64 = 0x1980_0202;
/// tmpfs's (shmem's) `s_magic`: POSIX shm files, memfds, SysV segments
/// and anonymous shared memory all live on one.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const AF_UNIX: u16 = 1;

/// mmap flags from `<linux/mman.h>`: the mapping type, and anonymous.
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED: u64 = 0x01;
const MAP_SHARED_VALIDATE: u64 = 0x03;
const MAP_ANONYMOUS: u64 = 0x20;
/// Faults are sampled per page; mappings are whole pages.
const PAGE_SIZE: u64 = 4096;
/// x86's page-fault error code bit for a write (`X86_PF_WRITE`); the
/// page_fault_user tracepoint exists only on x86.
const PF_WRITE: u64 = 2;
/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
const SOCK_STREAM: i16 = 1;
const SOCK_DGRAM: i16 = 2;
const SOCK_SEQPACKET: i16 = 5;

/// Futex operations from `<linux/futex.h>`: the command is the op without
/// its flags.
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_UNLOCK_PI: u64 = 7;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_CMP_REQUEUE_PI: u64 = 12;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
const FUTEX_LOCK_PI2: u64 = 13;
/// The owner's tid in a PI futex word (`FUTEX_TID_MASK`).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// A PI futex word's bit saying threads wait on it (`FUTEX_WAITERS`).
const FUTEX_WAITERS: u32 = 0x8000_0000;

/// `signal_struct.flags`' `SIGNAL_GROUP_EXIT` (`<linux/sched/signal.h>`):
/// the whole thread group was made to exit, with `group_exit_code`.
const SIGNAL_GROUP_EXIT: u32 = 0x4;
/// The kernel's special `struct kernel_siginfo *` values
/// (`<linux/sched/signal.h>`): `SEND_SIG_NOINFO` (a user's kill with no
/// info: `SI_USER` from current), `SEND_SIG_PRIV` (from the kernel).
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;
/// `si_code` values (`<asm-generic/siginfo.h>`).
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;
/// `si_code` of a POSIX timer's expiry.
const SI_TIMER: i32 = -2;

/// msgrcv's `MSG_COPY` (`<linux/msg.h>`).
const MSG_COPY: u64 = 0o40000;

/// `struct sembuf` from `<linux/sem.h>`: one semaphore operation.
#[repr(C)]
#[derive(Clone, Copy)]
struct SemBuf {
    sem_num: u16,
    sem_op: i16,
    sem_flg: i16,
}

// The programs return 0 whatever happens: for a tracepoint, anything else
// asks the kernel to also hand the event to perf, which nobody reads. A
// failure after a process was found to be traced is an event lost, so it
// is counted with the ring buffer's losses.

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    if try_task_newtask(&ctx).is_err() {
        count_drop();
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if try_sched_process_exec(&ctx).is_err() {
        count_drop();
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    if try_sched_process_exit(&ctx).is_err() {
        count_drop();
    }
    0
}

/// A task renamed (`prctl(PR_SET_NAME)`, a write to its `comm`, or an
/// exec, which is left out).
#[tracepoint(category = "task", name = "task_rename")]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    if try_task_rename(&ctx).is_err() {
        count_drop();
    }
    0
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> u32 {
    if try_signal_generate(&ctx).is_err() {
        count_drop();
    }
    0
}

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    if try_signal_deliver(&ctx).is_err() {
        count_drop();
    }
    0
}

/// The entry of every syscall, through the raw `sys_enter` tracepoint
/// (`raw_syscalls`): one program instead of one per syscall, because
/// enabling any `syscalls:sys_enter_*` tracepoint makes the kernel build a
/// record for each of those syscalls in every process, traced or not,
/// before a program can look at it. Here nothing is built: the syscall
/// number is compared first (a register, where the PID check is a hash
/// lookup), so most syscalls of every process end at once; the PID check
/// comes next, and only then are arguments read.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    if try_sys_enter(&ctx).is_err() {
        count_drop();
    }
    0
}

/// A page fault in user space: on a shared mapping of a traced process,
/// the first touch of a page, reported as an access sample.
#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    if try_page_fault(&ctx).is_err() {
        count_drop();
    }
    0
}

/// The exit of every syscall, through the raw `sys_exit` tracepoint
/// (`raw_syscalls`): the per-syscall `syscalls:sys_exit_*` tracepoints
/// would build a record for every exit of every process, traced or not,
/// before the program could look at it; here the first thing that runs
/// is the `PENDING` lookup, which fails for any syscall not entered above.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    if try_sys_exit(&ctx).is_err() {
        count_drop();
    }
    0
}

/// A signal was generated (queued, ignored, or merged with a pending one:
/// `result` says which). Reported when the sender (the current task) or
/// the target process is traced. The raw tracepoint's arguments are its
/// prototype, `(int sig, struct kernel_siginfo *info, struct task_struct
/// *task, int group, int result)`, checked by the loader against BTF.
fn try_signal_generate(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    let task: u64 = ctx.arg(2);
    let task = task as *const u8;
    // SAFETY: `task` is the tracepoint's live task_struct and the offsets
    // are its fields' (from BTF); bpf_probe_read_kernel faults safely.
    let target_tgid: u32 = unsafe { read_field(task, &KOFF_TASK_TGID) }?;
    let target_traced = is_traced(target_tgid);
    if !target_traced && !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: as above.
    let target_tid: u32 = unsafe { read_field(task, &KOFF_TASK_PID) }?;
    let sig: u64 = ctx.arg(0);
    let result: u64 = ctx.arg(4);
    // Who sent it: the current task is only the sender when a process
    // did (a timer, a child's exit, a fault are the kernel's, whoever
    // happens to be running).
    let info: u64 = ctx.arg(1);
    let si_code = match info {
        SEND_SIG_NOINFO => SI_USER,
        SEND_SIG_PRIV => SI_KERNEL,
        // SAFETY: a live kernel_siginfo, the tracepoint's argument; the
        // offset is from BTF; bpf_probe_read_kernel faults safely.
        _ => unsafe { read_field::<i32>(info as *const u8, &KOFF_SIGINFO_CODE) }?,
    };
    // A timer's or the kernel's own signal to an untraced process says
    // nothing about the traced one it interrupted.
    if !target_traced && matches!(si_code, SI_KERNEL | SI_TIMER) {
        return Ok(());
    }
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::SIGNAL_GENERATE,
        chan_kind: chan::NONE,
        obj: u64::from(target_tgid),
        obj2: u64::from(target_tid),
        size: SI_CODE_KNOWN | u64::from(si_code as u32),
        // `int` arguments arrive as the low half of a u64.
        result: i64::from(result as u32 as i32),
        aux: u64::from(sig as u32),
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
}

/// A signal is being delivered to the current task (its handler is about
/// to run, or its default action taken).
fn try_signal_deliver(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offset is that of signal_deliver's `int sig`; read_at
    // goes through bpf_probe_read_kernel, which faults safely.
    let sig: i32 = unsafe { ctx.read_at(offset(&OFFSET_DELIVER_SIG)) }.map_err(i64::from)?;
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::SIGNAL_DELIVER,
        chan_kind: chan::NONE,
        aux: sig as u32 as u64,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
}

/// A syscall's entry: those the probes follow, of traced processes, go
/// to their handler. `TP_PROTO(struct pt_regs *regs, long id)` (checked
/// by the loader).
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), i64> {
    let id: i64 = ctx.arg(1);
    if !matches!(
        id,
        nr::READ
            | nr::WRITE
            | nr::MMAP
            | nr::MUNMAP
            | nr::READV
            | nr::WRITEV
            | nr::SHMGET
            | nr::SHMAT
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
            | nr::SEMGET
            | nr::SEMOP
            | nr::SHMDT
            | nr::MSGGET
            | nr::MSGSND
            | nr::MSGRCV
            | nr::FUTEX
            | nr::SEMTIMEDOP
            | nr::MQ_TIMEDSEND
            | nr::MQ_TIMEDRECEIVE
            | nr::EXECVE
            | nr::EXECVEAT
    ) {
        return Ok(());
    }
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the current task's thread_info, at its offset from BTF;
    // bpf_probe_read_kernel faults safely.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let status: u32 = unsafe { read_field(task, &KOFF_TASK_TI_STATUS) }?;
    if status & TS_COMPAT != 0 {
        // A 32-bit process's syscall: its numbers mean other calls.
        return Ok(());
    }
    let regs: u64 = ctx.arg(0);
    let call = Call {
        tgid,
        tid,
        regs: regs as *const u8,
    };
    match id {
        nr::WRITE | nr::SENDTO => fd_enter(&call, kind::MSG_SEND, BufAt::Plain),
        nr::WRITEV => fd_enter(&call, kind::MSG_SEND, BufAt::Iovec),
        nr::SENDMSG => fd_enter(&call, kind::MSG_SEND, BufAt::Msghdr),
        nr::READ | nr::RECVFROM => fd_enter(&call, kind::MSG_RECV, BufAt::Plain),
        nr::READV => fd_enter(&call, kind::MSG_RECV, BufAt::Iovec),
        nr::RECVMSG => fd_enter(&call, kind::MSG_RECV, BufAt::Msghdr),
        nr::MQ_TIMEDSEND => mq_enter(&call, kind::MSG_SEND),
        nr::MQ_TIMEDRECEIVE => mq_enter(&call, kind::MSG_RECV),
        nr::MSGSND => sysv_msg_enter(&call, kind::MSG_SEND),
        nr::MSGRCV => sysv_msg_enter(&call, kind::MSG_RECV),
        nr::MSGGET => sysv_get_enter(&call, sysv_class::MSG),
        nr::SEMGET => sysv_get_enter(&call, sysv_class::SEM),
        nr::SHMGET => sysv_get_enter(&call, sysv_class::SHM),
        nr::FUTEX => futex_enter(&call),
        // semtimedop's first three arguments are semop's.
        nr::SEMOP | nr::SEMTIMEDOP => semop_enter(&call),
        nr::MMAP => mmap_enter(&call),
        nr::SHMAT => shmat_enter(&call),
        // Both take the mapping's address first.
        nr::MUNMAP | nr::SHMDT => unmap_enter(&call),
        nr::EXECVE | nr::EXECVEAT => {
            // Marks the rename the exec makes as the exec's
            // (try_task_rename); the exit reports nothing.
            remember(tid, entry(tgid, op::EXEC, 0, chan::NONE));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A syscall of a traced thread, being entered.
struct Call {
    tgid: u32,
    tid: u32,
    /// The user registers saved at the syscall's entry.
    regs: *const u8,
}

impl Call {
    /// Argument `n` (0-5) of the syscall, from the register x86-64 passes
    /// it in.
    fn arg(&self, n: usize) -> Result<u64, i64> {
        let field = match n {
            0 => &KOFF_REGS_DI,
            1 => &KOFF_REGS_SI,
            2 => &KOFF_REGS_DX,
            3 => &KOFF_REGS_R10,
            4 => &KOFF_REGS_R8,
            _ => &KOFF_REGS_R9,
        };
        // SAFETY: `regs` is the tracepoint's pt_regs and the offset that
        // register's, from BTF; bpf_probe_read_kernel faults safely.
        unsafe { read_field(self.regs, field) }
    }
}

/// The entry of a message syscall: when the file descriptor is a pipe,
/// FIFO or Unix socket, remember it for the exit. Resolving here, while
/// the fd is certainly open, keeps the exit down to one lookup and makes
/// every other file (regular files, ttys, network sockets) cost nothing
/// more than this walk.
fn fd_enter(call: &Call, msg_kind: u16, buf_at: BufAt) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let fd = call.arg(0)?;
    let Some(file) = fd_file(fd as u32)? else {
        return Ok(());
    };
    let Some((chan_kind, obj, obj2)) = ipc_object(file)? else {
        return Ok(());
    };
    let op = if msg_kind == kind::MSG_SEND {
        op::FD_SEND
    } else {
        op::FD_RECV
    };
    let (buf, buf_len, buf_iov) = user_buffer(call, buf_at);
    remember(
        tid,
        PendingCall {
            obj,
            obj2,
            buf,
            buf_len,
            buf_iov,
            ..entry(tgid, op, msg_kind, chan_kind)
        },
    );
    Ok(())
}

/// How a message syscall passes its buffer.
#[derive(Clone, Copy)]
enum BufAt {
    /// Argument 1 is the buffer, argument 2 its length.
    Plain,
    /// Argument 1 is a `struct iovec` array.
    Iovec,
    /// Argument 1 is a `struct user_msghdr`, whose `msg_iov` is one.
    Msghdr,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// `offsetof(struct user_msghdr, msg_iov)`: after the name pointer and
/// its (padded) int length; `msg_iovlen` follows it. User ABI, not a
/// kernel layout.
const MSGHDR_IOV: u64 = 16;

/// Where the message's bytes are when payload capture is on, as
/// `PendingCall`'s `buf`, `buf_len` and `buf_iov`: the buffer and its
/// length, or for the vectored calls the iovec array and its count (the
/// exit walks it: only the return value says how many of its bytes
/// moved, and a receive fills it only then). `(0, 0, 0)` when capture is
/// off or the arguments cannot be read: the message is still reported,
/// without its bytes.
fn user_buffer(call: &Call, buf_at: BufAt) -> (u64, u64, u16) {
    if PAYLOAD_BYTES.load() == 0 {
        return (0, 0, 0);
    }
    let found = || -> Result<(u64, u64, u16), i64> {
        let arg1 = call.arg(1)?;
        match buf_at {
            BufAt::Plain => Ok((arg1, call.arg(2)?, 0)),
            BufAt::Iovec => Ok((arg1, call.arg(2)?, 1)),
            BufAt::Msghdr => {
                // `msg_iov` and `msg_iovlen`, laid out as an iovec is.
                // SAFETY: bpf_probe_read_user faults safely on any address.
                let iov: Iovec =
                    unsafe { bpf_probe_read_user((arg1 + MSGHDR_IOV) as *const Iovec) }
                        .map_err(i64::from)?;
                Ok((iov.base, iov.len, 1))
            }
        }
    };
    found().unwrap_or((0, 0, 0))
}

/// The entry of mq_timedsend / mq_timedreceive on a POSIX message queue.
/// The queue is named by its dentry, read at the exit: a name does not
/// fit in `PENDING`, and the syscall holds the file (so the dentry) open.
fn mq_enter(call: &Call, msg_kind: u16) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let fd = call.arg(0)?;
    let Some(file) = fd_file(fd as u32)? else {
        return Ok(());
    };
    // SAFETY (the reads): `file` is a kernel pointer from the fd table,
    // the offsets are from BTF, and bpf_probe_read_kernel faults safely.
    let inode: *const u8 = unsafe { read_field(file, &KOFF_FILE_INODE) }?;
    let sb: *const u8 = unsafe { read_field(inode, &KOFF_INODE_SB) }?;
    let magic: u64 = unsafe { read_field(sb, &KOFF_SB_MAGIC) }?;
    if magic != MQUEUE_MAGIC {
        // mq_* on another fd fails with EBADF: nothing moves.
        return Ok(());
    }
    let ino: u64 = unsafe { read_field(inode, &KOFF_INODE_INO) }?;
    let dentry: u64 = unsafe { read_field(file, &KOFF_FILE_DENTRY) }?;
    let mut pending = PendingCall {
        obj: ino,
        dentry,
        ..entry(tgid, op::MQ_RECV, msg_kind, chan::MQ)
    };
    if PAYLOAD_BYTES.load() != 0 {
        pending.buf = call.arg(1)?;
        pending.buf_len = call.arg(2)?;
    }
    if msg_kind == kind::MSG_SEND {
        pending.op = op::MQ_SEND;
        pending.size = call.arg(2)?;
        pending.aux = call.arg(3)? & 0xffff_ffff;
    } else {
        // `unsigned int *u_msg_prio`, filled in by the kernel.
        pending.addr = call.arg(3)?;
    }
    remember(tid, pending);
    Ok(())
}

/// The entry of msgsnd / msgrcv. The queue is its id and the key it was
/// created from, when known (`SYSV_KEYS`).
fn sysv_msg_enter(call: &Call, msg_kind: u16) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    // `int msqid`, in a syscall argument word.
    let id = call.arg(0)? as u32;
    // `struct msgbuf *msgp`, which starts with the `long mtype`.
    let msgp = call.arg(1)?;
    let mut pending = PendingCall {
        obj: sysv_key(sysv_class::MSG, id),
        obj2: u64::from(id),
        ..entry(tgid, op::SYSV_RECV, msg_kind, chan::SYSV_MSG)
    };
    if PAYLOAD_BYTES.load() != 0 {
        // The bytes follow the `long mtype`.
        pending.buf = msgp + 8;
        pending.buf_len = call.arg(2)?;
    }
    if msg_kind == kind::MSG_RECV && call.arg(4)? & MSG_COPY != 0 {
        // A copy of the message at an index, left in the queue: no
        // message moves, and counting it would shift the pairing.
        return Ok(());
    }
    if msg_kind == kind::MSG_SEND {
        pending.op = op::SYSV_SEND;
        pending.size = call.arg(2)?;
        // A bad pointer fails the call (EFAULT), which is then not
        // reported; so an unreadable mtype is never used.
        // SAFETY: bpf_probe_read_user faults safely on any address.
        let mtype: i64 = unsafe { bpf_probe_read_user(msgp as *const i64) }.unwrap_or(0);
        pending.aux = mtype as u64;
    } else {
        pending.addr = msgp;
    }
    remember(tid, pending);
    Ok(())
}

/// The entry of msgget / semget / shmget: the exit learns which id `key`
/// names (and, for a segment, its size).
fn sysv_get_enter(call: &Call, class: u64) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    // `key_t key`: an int, kept as its 32 bits.
    let key = call.arg(0)? & 0xffff_ffff;
    let mut pending = PendingCall {
        obj: key,
        aux: class,
        ..entry(tgid, op::SYSV_GET, 0, chan::NONE)
    };
    if class == sysv_class::SHM {
        // `size_t size`: the segment's size when this call creates it.
        pending.size = call.arg(1)?;
    }
    remember(tid, pending);
    Ok(())
}

/// The entry of an mmap that shares memory (`MAP_SHARED`) with a tmpfs
/// file (a POSIX shm object, a memfd) or anonymously: remembered for the
/// exit, which learns the address. Private and file mappings cost this
/// one flag test.
fn mmap_enter(call: &Call) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let flags = call.arg(3)?;
    if !matches!(flags & MAP_TYPE, MAP_SHARED | MAP_SHARED_VALIDATE) {
        return Ok(());
    }
    let mut pending = PendingCall {
        size: call.arg(1)?,
        ..entry(tgid, op::MMAP, kind::SHM_MAP, chan::SHM)
    };
    if flags & MAP_ANONYMOUS != 0 {
        // Named by this process and the address, which the exit fills in.
        pending.obj2 = shm_origin::ANON | (u64::from(tgid) << 8);
    } else {
        let fd = call.arg(4)?;
        let Some(file) = fd_file(fd as u32)? else {
            return Ok(());
        };
        let Some((ino, origin)) = shm_file(file)? else {
            return Ok(());
        };
        pending.obj = ino;
        pending.obj2 = origin;
        // SAFETY: `file` is a kernel pointer from the fd table, the offset
        // is from BTF, and bpf_probe_read_kernel faults safely.
        pending.dentry = unsafe { read_field(file, &KOFF_FILE_DENTRY) }?;
        // The offset into the object where the mapping starts.
        pending.aux = call.arg(5)?;
    }
    remember(tid, pending);
    Ok(())
}

/// `(inode, shm_origin)` of a file on a tmpfs, `None` for any other.
fn shm_file(file: *const u8) -> Result<Option<(u64, u64)>, i64> {
    // SAFETY (the reads): `file` is a kernel pointer from the fd table, the
    // offsets are from BTF, and bpf_probe_read_kernel faults safely.
    let inode: *const u8 = unsafe { read_field(file, &KOFF_FILE_INODE) }?;
    let sb: *const u8 = unsafe { read_field(inode, &KOFF_INODE_SB) }?;
    let magic: u64 = unsafe { read_field(sb, &KOFF_SB_MAGIC) }?;
    if magic != TMPFS_MAGIC {
        return Ok(None);
    }
    let dev: u32 = unsafe { read_field(sb, &KOFF_SB_DEV) }?;
    let ino: u64 = unsafe { read_field(inode, &KOFF_INODE_INO) }?;
    let origin = if dev != 0 && dev == DEV_SHM_DEV.load() {
        shm_origin::DEV_SHM
    } else {
        shm_origin::FILE
    };
    Ok(Some((ino, origin)))
}

/// The entry of shmat: the segment, its key and size as far as known.
fn shmat_enter(call: &Call) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let id = call.arg(0)? as u32;
    // SAFETY: a plain u64 copied out at once.
    let size = unsafe { SHM_SIZES.get(id) }.copied().unwrap_or(0);
    remember(
        tid,
        PendingCall {
            obj: sysv_key(sysv_class::SHM, id),
            obj2: u64::from(id),
            size,
            ..entry(tgid, op::SHMAT, kind::SHM_MAP, chan::SYSV_SHM)
        },
    );
    Ok(())
}

/// The entry of munmap / shmdt, for a process with shared mappings: the
/// exit forgets the one starting at the address. (A munmap that takes
/// only part of a mapping, or several, is not followed.)
fn unmap_enter(call: &Call) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    // Most processes that unmap share nothing: one lookup ends it.
    if SHM_MAPS.get_ptr(tgid).is_none() {
        return Ok(());
    }
    let addr = call.arg(0)?;
    remember(
        tid,
        PendingCall {
            addr,
            ..entry(tgid, op::UNMAP, kind::SHM_UNMAP, chan::NONE)
        },
    );
    Ok(())
}

/// A user page fault. The process's shared mappings are looked up first:
/// every fault of every process on the machine comes here, and the ones
/// with no shared mapping followed end at that lookup.
fn try_page_fault(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    let Some(maps) = SHM_MAPS.get_ptr(tgid) else {
        return Ok(());
    };
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offsets are page_fault_user's fields (checked by the
    // loader); read_at goes through bpf_probe_read_kernel.
    let address: u64 = unsafe { ctx.read_at(offset(&OFFSET_FAULT_ADDRESS)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let error_code: u64 =
        unsafe { ctx.read_at(offset(&OFFSET_FAULT_ERROR_CODE)) }.map_err(i64::from)?;
    for i in 0..MAX_SHM_MAPPINGS {
        // SAFETY: `maps` is this process's live map value; the slot is
        // copied out at once.
        let mapping = unsafe { (*maps).slots[i] };
        if mapping.end == 0 || address < mapping.start || address >= mapping.end {
            continue;
        }
        let page = address & !(PAGE_SIZE - 1);
        let kind = if error_code & PF_WRITE != 0 {
            kind::SHM_WRITE
        } else {
            kind::SHM_READ
        };
        return emit_shm(
            &mapping,
            RawEvent {
                ts_ns: now(),
                pid: tgid,
                tid,
                kind,
                size: PAGE_SIZE,
                aux: mapping.offset + (page - mapping.start),
                comm: bpf_get_current_comm().unwrap_or_default(),
                ..RawEvent::default()
            },
        );
    }
    Ok(())
}

/// Follows the mapping a successful mmap/shmat made at `addr` and reports
/// it.
fn map_shared(pending: &PendingCall, tid: u32, addr: u64, ts_ns: u64) -> Result<(), i64> {
    let mut mapping = ShmMapping {
        start: addr,
        end: addr + pending.size.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        obj: pending.obj,
        obj2: pending.obj2,
        offset: pending.aux,
        dentry: pending.dentry,
        chan_kind: pending.chan_kind,
        _pad: [0; 3],
    };
    if pending.chan_kind == chan::SHM && pending.obj2 & 0xff == shm_origin::ANON {
        mapping.obj = addr;
        mapping.offset = 0;
    }
    let header = RawEvent {
        ts_ns,
        pid: pending.tgid,
        tid,
        kind: kind::SHM_MAP,
        size: pending.size,
        aux: addr,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    };
    // A SysV segment whose size is unknown is reported, not sampled.
    if mapping.end > mapping.start && !follow_mapping(pending.tgid, &mapping) {
        count_drop();
    }
    emit_shm(&mapping, header)
}

/// Adds `mapping` to process `tgid`'s in `SHM_MAPS`; false when the map or
/// the process's slots are full.
fn follow_mapping(tgid: u32, mapping: &ShmMapping) -> bool {
    if SHM_MAPS.get_ptr(tgid).is_none() {
        // Another thread of the process may insert first; either is fine.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the 896 bytes would be copied onto the 512-byte BPF stack"
        )]
        let _ = SHM_MAPS.insert(tgid, &NO_MAPPINGS, BPF_NOEXIST);
    }
    let Some(maps) = SHM_MAPS.get_ptr_mut(tgid) else {
        return false;
    };
    for i in 0..MAX_SHM_MAPPINGS {
        // SAFETY: `maps` is this process's live map value; threads of one
        // process mapping at the same instant may race for a slot, which
        // at worst loses one mapping's samples.
        let slot = unsafe { &mut (*maps).slots[i] };
        if slot.end == 0 {
            *slot = *mapping;
            return true;
        }
    }
    false
}

/// Stops following the mapping of process `tgid` that starts at `addr`
/// (munmap or shmdt succeeded), and reports it.
fn unmap_shared(tgid: u32, tid: u32, addr: u64, ts_ns: u64) -> Result<(), i64> {
    let Some(maps) = SHM_MAPS.get_ptr_mut(tgid) else {
        return Ok(());
    };
    for i in 0..MAX_SHM_MAPPINGS {
        // SAFETY: `maps` is this process's live map value.
        let slot = unsafe { &mut (*maps).slots[i] };
        if slot.end == 0 || slot.start != addr {
            continue;
        }
        let gone = *slot;
        slot.end = 0;
        return emit_shm(
            &gone,
            RawEvent {
                ts_ns,
                pid: tgid,
                tid,
                kind: kind::SHM_UNMAP,
                size: gone.end - gone.start,
                aux: addr,
                comm: bpf_get_current_comm().unwrap_or_default(),
                ..RawEvent::default()
            },
        );
    }
    Ok(())
}

/// Reports one event on the object of `mapping`: `header` with the
/// object's identity, and for a `chan::SHM` object its dentry's name.
fn emit_shm(mapping: &ShmMapping, mut header: RawEvent) -> Result<(), i64> {
    header.chan_kind = mapping.chan_kind;
    header.obj = mapping.obj;
    header.obj2 = mapping.obj2;
    if mapping.chan_kind != chan::SHM {
        emit(&header);
        return Ok(());
    }
    let name = if mapping.obj2 & 0xff == shm_origin::ANON {
        ANON_NAME.as_ptr()
    } else {
        // SAFETY: the dentry of a file the mapping holds open; the offset
        // is from BTF; bpf_probe_read_kernel faults safely.
        unsafe { read_field(mapping.dentry as *const u8, &KOFF_DENTRY_NAME) }?
    };
    emit_named(header, name, false)
}

/// The entry of a futex call that waits (FUTEX_WAIT, WAIT_BITSET,
/// WAIT_REQUEUE_PI, LOCK_PI, LOCK_PI2): reported at once as begun, so a
/// thread blocked now (perhaps forever, in a deadlock) is known. A call
/// that wakes is remembered for its exit ([`futex_wake_enter`]).
fn futex_enter(call: &Call) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let futex_op = call.arg(1)?;
    let cmd = futex_op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    let pi = matches!(cmd, FUTEX_LOCK_PI | FUTEX_LOCK_PI2);
    let uaddr = call.arg(0)?;
    // A private futex is an address in this process only.
    let obj2 = if futex_op & FUTEX_PRIVATE_FLAG != 0 {
        u64::from(tgid)
    } else {
        0
    };
    if !pi && !matches!(cmd, FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_WAIT_REQUEUE_PI) {
        return futex_wake_enter(call, cmd, uaddr, obj2);
    }
    // A PI futex word holds its owner's tid (glibc's PI mutexes); other
    // futex words hold whatever their user keeps there, so no owner.
    let owner = if pi {
        // SAFETY: bpf_probe_read_user faults safely on any address.
        unsafe { bpf_probe_read_user(uaddr as *const u32) }.map_or(0, |w| w & FUTEX_TID_MASK)
    } else {
        0
    };
    let pending = PendingCall {
        obj: uaddr,
        obj2,
        aux: u64::from(owner),
        ..entry(tgid, op::FUTEX_WAIT, kind::FUTEX_WAIT, chan::FUTEX)
    };
    remember(tid, pending);
    emit(&RawEvent {
        result: WAIT_BEGUN,
        ..event_of(&pending, tid, pending.ts_ns)
    });
    Ok(())
}

/// The entry of a futex call that may wake waiters of `uaddr`: the exit
/// reports a wake if the return value says anyone was woken. Only the
/// first address is named: FUTEX_WAKE_OP may also wake waiters of its
/// second (`uaddr2`), and the REQUEUE commands move waiters there, but
/// the one return value does not say how many of each, and the first is
/// the futex the caller meant to signal.
fn futex_wake_enter(call: &Call, cmd: u64, uaddr: u64, obj2: u64) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    if !matches!(
        cmd,
        FUTEX_WAKE
            | FUTEX_WAKE_BITSET
            | FUTEX_WAKE_OP
            | FUTEX_REQUEUE
            | FUTEX_CMP_REQUEUE
            | FUTEX_CMP_REQUEUE_PI
            | FUTEX_UNLOCK_PI
    ) {
        return Ok(());
    }
    // FUTEX_UNLOCK_PI returns 0 whether or not it handed the lock to a
    // waiter; the word's FUTEX_WAITERS bit, which the kernel sets before
    // a waiter sleeps, says whether one was there.
    let mut waiters = 0;
    if cmd == FUTEX_UNLOCK_PI {
        // SAFETY: bpf_probe_read_user faults safely on any address.
        let word = unsafe { bpf_probe_read_user(uaddr as *const u32) }.unwrap_or(0);
        if word & FUTEX_WAITERS == 0 {
            return Ok(());
        }
        waiters = 1;
    }
    remember(
        tid,
        PendingCall {
            obj: uaddr,
            obj2,
            aux: waiters,
            ..entry(tgid, op::FUTEX_WAKE, kind::FUTEX_WAKE, chan::FUTEX)
        },
    );
    Ok(())
}

/// The entry of semop / semtimedop. The first operation says what the
/// call is: a single increment is a post, anything else may block and is
/// reported at once as a wait begun.
fn semop_enter(call: &Call) -> Result<(), i64> {
    let Call { tgid, tid, .. } = *call;
    let id = call.arg(0)? as u32;
    let tsops = call.arg(1)?;
    let nsops = call.arg(2)? & 0xffff;
    // SAFETY: bpf_probe_read_user faults safely on any address; an
    // unreadable array fails the call with EFAULT, reported as its result.
    let first = unsafe { bpf_probe_read_user(tsops as *const SemBuf) }.unwrap_or(SemBuf {
        sem_num: 0,
        sem_op: 0,
        sem_flg: 0,
    });
    let post = nsops == 1 && first.sem_op > 0;
    let pending = PendingCall {
        obj: sysv_key(sysv_class::SEM, id),
        obj2: u64::from(id) | (u64::from(first.sem_num) << 32),
        aux: u64::from(first.sem_num) | (u64::from(first.sem_op as u16) << 16) | (nsops << 32),
        ..entry(
            tgid,
            op::SEMOP,
            if post {
                kind::SEM_POST
            } else {
                kind::SEM_WAIT_END
            },
            chan::SYSV_SEM,
        )
    };
    remember(tid, pending);
    if !post {
        emit(&RawEvent {
            kind: kind::SEM_WAIT_BEGIN,
            ..event_of(&pending, tid, pending.ts_ns)
        });
    }
    Ok(())
}

/// The exit of a syscall entered in `PENDING`: reports what the return
/// value says happened. Failed messages (EAGAIN included) and end-of-file
/// move nothing and are not messages; a wait is reported however it
/// ended, since its begin was.
fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (_, tid) = current_ids();
    // SAFETY: the value is copied out at once; only this thread writes its
    // own entry.
    let Some(pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(tid);
    // `TP_PROTO(struct pt_regs *regs, long ret)` (checked by the loader).
    let ret: i64 = ctx.arg(1);
    let exit_ns = now();
    let mut event = event_of(&pending, tid, exit_ns);
    event.result = ret;
    // A send is stamped when it started and a receive when it completed:
    // whatever the scheduling, a receive then never precedes the send whose
    // bytes it returns.
    if pending.kind == kind::MSG_SEND {
        event.ts_ns = pending.ts_ns;
    }
    match pending.op {
        op::FD_SEND | op::FD_RECV if ret > 0 => event.size = ret as u64,
        op::MQ_SEND | op::SYSV_SEND if ret == 0 => event.size = pending.size,
        // Zero-length messages exist on both kinds of queue.
        op::MQ_RECV if ret >= 0 => {
            event.size = ret as u64;
            // NULL when the caller did not ask; then read as priority 0.
            if pending.addr != 0 {
                // SAFETY: bpf_probe_read_user faults safely on any address.
                let prio: u32 = unsafe { bpf_probe_read_user(pending.addr as *const u32) }
                    .map_err(i64::from)?;
                event.aux = u64::from(prio);
            }
        }
        op::SYSV_RECV if ret >= 0 => {
            event.size = ret as u64;
            // SAFETY: bpf_probe_read_user faults safely on any address.
            let mtype: i64 =
                unsafe { bpf_probe_read_user(pending.addr as *const i64) }.map_err(i64::from)?;
            event.aux = mtype as u64;
        }
        op::SYSV_GET => {
            if ret >= 0 {
                let id = (pending.aux << 32) | (ret as u64 & 0xffff_ffff);
                if SYSV_KEYS.insert(id, pending.obj as u32, 0).is_err() {
                    count_drop();
                }
                if pending.aux == sysv_class::SHM {
                    learn_shm_size(ret as u32, pending.size);
                }
            }
            return Ok(());
        }
        // Addresses are below 2^47: any success is positive.
        op::MMAP | op::SHMAT if ret > 0 => return map_shared(&pending, tid, ret as u64, exit_ns),
        op::UNMAP if ret == 0 => return unmap_shared(pending.tgid, tid, pending.addr, exit_ns),
        op::FUTEX_WAKE => {
            // A wake that woke nobody is not reported: most are such, and
            // they end no wait. UNLOCK_PI's 0 with waiters (`aux`) woke
            // one.
            let woken = match ret {
                0 if pending.aux != 0 => 1,
                _ => ret,
            };
            if woken <= 0 {
                return Ok(());
            }
            // Stamped at the entry, like a send: before any wait it ended.
            event.ts_ns = pending.ts_ns;
            event.result = woken;
            event.aux = 0;
            event.duration_ns = 0;
            emit(&event);
            return Ok(());
        }
        op::FUTEX_WAIT | op::SEMOP => {}
        _ => return Ok(()),
    }
    let mut mq_name = None;
    if pending.chan_kind == chan::MQ {
        // SAFETY: the dentry of the queue's file, which the syscall held;
        // the offset is from BTF; bpf_probe_read_kernel faults safely.
        mq_name = Some(unsafe { read_field(pending.dentry as *const u8, &KOFF_DENTRY_NAME) }?);
        // The inode is not part of the event: a queue is its name.
        event.obj = 0;
    }
    let (src, payload) = match pending.buf_iov {
        0 => (Payload::Buffer(pending.buf), pending.buf_len),
        _ => (
            Payload::Iovecs {
                iov: pending.buf,
                count: pending.buf_len,
            },
            u64::MAX,
        ),
    };
    let payload = payload.min(PAYLOAD_BYTES.load() as u64).min(event.size);
    match mq_name {
        _ if pending.buf != 0 && payload > 0 => {
            emit_with_payload(event, mq_name, src, payload as usize)
        }
        Some(name) => emit_named(event, name, true),
        None => {
            emit(&event);
            Ok(())
        }
    }
}

/// Records the size of SysV segment `id` from a shmget of `size` bytes.
/// A shmget that finds an existing segment may ask for less (even 0), so
/// the largest seen is kept: the creating call's.
fn learn_shm_size(id: u32, size: u64) {
    // SAFETY: a plain u64 copied out at once.
    let known = unsafe { SHM_SIZES.get(id) }.copied().unwrap_or(0);
    if size > known && SHM_SIZES.insert(id, size, 0).is_err() {
        count_drop();
    }
}

/// An entry of the current process made now.
fn entry(tgid: u32, op: u16, kind: u16, chan_kind: u16) -> PendingCall {
    PendingCall::new(now(), tgid, op, kind, chan_kind)
}

/// The event `pending` reports for thread `tid`, stamped `ts_ns`.
fn event_of(pending: &PendingCall, tid: u32, ts_ns: u64) -> RawEvent {
    pending.event(tid, ts_ns, bpf_get_current_comm().unwrap_or_default())
}

/// Enters `pending` for thread `tid`'s exit; a full map loses it, counted.
fn remember(tid: u32, pending: PendingCall) {
    if PENDING.insert(tid, pending, 0).is_err() {
        count_drop();
    }
}

/// The key SysV object `id` of `class` was created from.
fn sysv_key(class: u64, id: u32) -> u64 {
    // SAFETY: a plain u32 copied out at once.
    unsafe { SYSV_KEYS.get((class << 32) | u64::from(id)) }
        .map_or(SYSV_KEY_UNKNOWN, |key| u64::from(*key))
}

/// The `struct file` behind the current task's file descriptor `fd`, or
/// `None` when there is none.
///
/// Walks `current->files->fdt->fd[fd]` as `fcheck` does, without the RCU
/// read lock a kernel caller would take: the task is in a syscall on that
/// fd, and every read goes through bpf_probe_read_kernel, which returns an
/// error rather than faulting if a concurrent close freed something.
fn fd_file(fd: u32) -> Result<Option<*const u8>, i64> {
    // SAFETY (all reads below): each pointer is a kernel pointer read from
    // the field before it, starting from the current task; the offsets are
    // those fields' from BTF; bpf_probe_read_kernel faults safely on a bad
    // address.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = unsafe { read_field(task, &KOFF_TASK_FILES) }?;
    if files.is_null() {
        return Ok(None);
    }
    let fdt: *const u8 = unsafe { read_field(files, &KOFF_FILES_FDT) }?;
    let max_fds: u32 = unsafe { read_field(fdt, &KOFF_FDT_MAX_FDS) }?;
    if fd >= max_fds {
        return Ok(None);
    }
    let fd_array: *const *const u8 = unsafe { read_field(fdt, &KOFF_FDT_FD) }?;
    let file: *const u8 =
        unsafe { bpf_probe_read_kernel(fd_array.wrapping_add(fd as usize)) }.map_err(i64::from)?;
    Ok((!file.is_null()).then_some(file))
}

/// The IPC object `file` is, as `(chan kind, obj, obj2)`; `None` for
/// anything else (regular files, ttys, non-Unix sockets).
fn ipc_object(file: *const u8) -> Result<Option<(u16, u64, u64)>, i64> {
    // SAFETY (all reads below): each pointer is a kernel pointer read from
    // the field before it, starting from a file of the fd table; the
    // offsets are those fields' from BTF; bpf_probe_read_kernel faults
    // safely on a bad address.
    let inode: *const u8 = unsafe { read_field(file, &KOFF_FILE_INODE) }?;
    let mode: u16 = unsafe { read_field(inode, &KOFF_INODE_MODE) }?;
    match mode & S_IFMT {
        S_IFIFO => {
            let ino: u64 = unsafe { read_field(inode, &KOFF_INODE_INO) }?;
            let sb: *const u8 = unsafe { read_field(inode, &KOFF_INODE_SB) }?;
            let magic: u64 = unsafe { read_field(sb, &KOFF_SB_MAGIC) }?;
            let kind = if magic == PIPEFS_MAGIC {
                chan::PIPE
            } else {
                chan::FIFO
            };
            Ok(Some((kind, ino, 0)))
        }
        S_IFSOCK => {
            let socket: *const u8 = unsafe { read_field(file, &KOFF_FILE_PRIVATE_DATA) }?;
            let sk: *const u8 = unsafe { read_field(socket, &KOFF_SOCKET_SK) }?;
            if sk.is_null() {
                return Ok(None);
            }
            let family: u16 = unsafe { read_field(sk, &KOFF_SOCK_FAMILY) }?;
            if family != AF_UNIX {
                return Ok(None);
            }
            let sock_type: i16 = unsafe { read_field(socket, &KOFF_SOCKET_TYPE) }?;
            let kind = match sock_type {
                SOCK_STREAM => chan::UNIX_STREAM,
                SOCK_DGRAM => chan::UNIX_DGRAM,
                SOCK_SEQPACKET => chan::UNIX_SEQPACKET,
                _ => return Ok(None),
            };
            let ino: u64 = unsafe { read_field(inode, &KOFF_INODE_INO) }?;
            // The peer's inode: unix_sock.peer -> its struct socket ->
            // the inode allocated with it. No peer (an unconnected
            // datagram socket, a closed other end) leaves obj2 at 0.
            let peer: *const u8 = unsafe { read_field(sk, &KOFF_UNIX_PEER) }?;
            let mut peer_ino = 0;
            if !peer.is_null() {
                peer_ino = peer_inode(peer)?;
            }
            Ok(Some((kind, ino, peer_ino)))
        }
        _ => Ok(None),
    }
}

/// The inode number of the socket owning `sk`, 0 if it has none.
fn peer_inode(sk: *const u8) -> Result<u64, i64> {
    // SAFETY: `sk` is a live struct sock read from unix_sock.peer; the
    // offsets come from BTF; bpf_probe_read_kernel faults safely.
    let socket: *const u8 = unsafe { read_field(sk, &KOFF_SOCK_SOCKET) }?;
    if socket.is_null() {
        return Ok(0);
    }
    let inode = socket.wrapping_add(offset(&KOFF_SOCKET_ALLOC_INODE));
    // SAFETY: as above; SOCK_INODE(socket) lies right after the socket.
    unsafe { read_field(inode, &KOFF_INODE_INO) }
}

/// Reads the `T` at `base + offset` in kernel memory.
///
/// # Safety
///
/// `base` must be a kernel address (or null, which fails the read), and
/// `T` the type of the field at that offset.
unsafe fn read_field<T>(base: *const u8, field: &Global<u32>) -> Result<T, i64> {
    // SAFETY: per the function's contract; the helper faults safely.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset(field)).cast::<T>()) }
        .map_err(i64::from)
}

/// A new task, seen in its parent before the child first runs: adding the
/// child to `TRACKED` here means none of its own activity can be missed.
fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let (parent_tgid, _) = current_ids();
    let trace_all = TRACE_ALL.load() != 0;
    if !trace_all && flags_of(parent_tgid) & (flag::TRACED | flag::LAUNCHER) == 0 {
        return Ok(());
    }
    // SAFETY: the offsets are those of task_newtask's format, and read_at
    // goes through bpf_probe_read_kernel, which faults safely.
    let clone_flags: u64 =
        unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_CLONE_FLAGS)) }.map_err(i64::from)?;
    if clone_flags & CLONE_THREAD != 0 {
        // Threads share their process's tgid, which is already tracked.
        return Ok(());
    }
    // SAFETY: as above.
    let child: i32 = unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_PID)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let comm: [u8; 16] = unsafe { ctx.read_at(offset(&OFFSET_NEWTASK_COMM)) }.map_err(i64::from)?;
    let child = child as u32;

    if !trace_all && TRACKED.insert(child, flag::TRACED, 0).is_err() {
        // A full map: the child goes untraced, and the user must hear of it.
        count_drop();
        return Ok(());
    }
    let ts_ns = now();
    emit(&RawEvent {
        ts_ns,
        pid: child,
        tid: child,
        kind: kind::PROCESS_START,
        chan_kind: chan::NONE,
        aux: u64::from(parent_tgid),
        comm,
        ..RawEvent::default()
    });
    inherit_mappings(parent_tgid, child, comm, ts_ns)
}

/// A forked child shares its parent's shared mappings: they are followed
/// in the child too, and reported as mapped by it.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the 896-byte mappings would be copied onto the 512-byte BPF stack"
)]
fn inherit_mappings(parent: u32, child: u32, comm: [u8; 16], ts_ns: u64) -> Result<(), i64> {
    let Some(maps) = SHM_MAPS.get_ptr(parent) else {
        return Ok(());
    };
    // SAFETY: `maps` is the parent's live map value, which the update
    // copies whole.
    if SHM_MAPS.insert(child, unsafe { &*maps }, 0).is_err() {
        count_drop();
        return Ok(());
    }
    for i in 0..MAX_SHM_MAPPINGS {
        // SAFETY: as above; the slot is copied out at once.
        let mapping = unsafe { (*maps).slots[i] };
        if mapping.end == 0 {
            continue;
        }
        emit_shm(
            &mapping,
            RawEvent {
                ts_ns,
                pid: child,
                tid: child,
                kind: kind::SHM_MAP,
                size: mapping.end - mapping.start,
                aux: mapping.start,
                comm,
                ..RawEvent::default()
            },
        )?;
    }
    Ok(())
}

/// A successful exec; the tracepoint fires after the new program is in
/// place, so the current comm is already the new one.
fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // The new program starts with no mappings at all.
    let _ = SHM_MAPS.remove(tgid);
    // SAFETY: the offset is that of sched_process_exec's __data_loc word;
    // read_at goes through bpf_probe_read_kernel, which faults safely.
    let loc: u32 = unsafe { ctx.read_at(offset(&OFFSET_EXEC_FILENAME)) }.map_err(i64::from)?;
    // The __data_loc offset is relative to the start of the record.
    let filename = ctx
        .as_ptr()
        .cast::<u8>()
        .wrapping_add((loc & 0xffff) as usize);
    emit_named(
        RawEvent {
            ts_ns: now(),
            pid: tgid,
            tid,
            kind: kind::PROCESS_EXEC,
            chan_kind: chan::NONE,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..RawEvent::default()
        },
        filename,
        false,
    )
}

/// Writes `header` with the NUL-terminated kernel string at `src` as its
/// name (see [`copy_name`] for `mq`), counting the record as dropped when
/// the ring is full.
fn emit_named(mut header: RawEvent, src: *const u8, mq: bool) -> Result<(), i64> {
    let Some(mut entry) = EVENTS.reserve::<NamedRecord>(0) else {
        count_drop();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a live reservation of NamedRecord's size,
    // whose `name` area has the MAX_NAME + 1 bytes copy_name needs.
    let copied = unsafe { copy_name(ptr::addr_of_mut!((*record).name).cast(), src, mq) };
    let len = match copied {
        Ok(len) => len,
        Err(e) => {
            entry.discard(0);
            return Err(e);
        }
    };
    header.name_len = len as u16;
    // SAFETY: as above; `header` lies within the reservation, and
    // ptr::write does not read the uninitialised memory it replaces.
    unsafe { ptr::write(ptr::addr_of_mut!((*record).header), header) };
    entry.submit(wakeup());
    Ok(())
}

/// Where a message's bytes are, in the calling process.
#[derive(Clone, Copy)]
enum Payload {
    /// One buffer.
    Buffer(u64),
    /// `count` `struct iovec`s at `iov`, filled in order.
    Iovecs { iov: u64, count: u64 },
}

/// The most iovecs of one writev/readv/sendmsg/recvmsg whose bytes are
/// captured. The verifier must see the copy loop end, and it checks every
/// turn of it; each turn is two user reads on the captured message's
/// path. 16 covers the scatter/gather of real programs (a header, a
/// body, a trailer; glibc's stdio uses two). The bytes a call moves
/// through its 17th iovec and later are not captured: the stored payload
/// then stops short of both the message's `size` and `--payload-bytes`,
/// which is how a reader sees the cut (README, "payload").
const MAX_IOVECS: u64 = 16;

/// Where a vectored call's bytes are gathered before they go into the
/// record: twice MAX_PAYLOAD, because the verifier bounds the offset and
/// the length of each iovec's copy separately (each up to MAX_PAYLOAD)
/// and must see their sum inside. Per CPU, and only the `sys_exit`
/// program uses it: tracepoint programs run with preemption off and one
/// at a time per CPU (see [`count_drop`]).
#[map]
static GATHER: PerCpuArray<[u8; 2 * MAX_PAYLOAD]> = PerCpuArray::with_max_entries(1, 0);

/// Copies the first `limit` bytes (at most MAX_PAYLOAD) of the `count`
/// iovecs at `iov` to `GATHER`, in order. Returns the area and how many
/// bytes it holds: fewer than `limit` when an iovec or its bytes cannot
/// be read (the copy stops there, so what is kept is always a prefix of
/// the message) or the message goes on past the MAX_IOVECS-th iovec.
fn gather(iov: u64, count: u64, limit: usize) -> Option<(*const u8, usize)> {
    let area = GATHER.get_ptr_mut(0)?.cast::<u8>();
    let limit = limit.min(MAX_PAYLOAD);
    let mut done = 0usize;
    for i in 0..MAX_IOVECS {
        if done >= limit || i >= count {
            break;
        }
        let at = iov + i * core::mem::size_of::<Iovec>() as u64;
        // SAFETY: bpf_probe_read_user faults safely on any address.
        let Ok(one) = (unsafe { bpf_probe_read_user(at as *const Iovec) }) else {
            break;
        };
        // Bounded (and masked, so the verifier sees it) to MAX_PAYLOAD;
        // `done` < limit <= MAX_PAYLOAD, so the mask keeps it whole.
        let n = (one.len.min((limit - done) as u64) as usize).min(MAX_PAYLOAD) & 0x1fff;
        if n == 0 {
            continue;
        }
        let off = done & (MAX_PAYLOAD - 1);
        // SAFETY: `off` + `n` < 2 * MAX_PAYLOAD, inside this CPU's GATHER
        // value; the helper faults safely on a bad source.
        let read = unsafe {
            generated::bpf_probe_read_user(area.add(off).cast(), n as u32, one.base as *const _)
        };
        if read != 0 {
            break;
        }
        done += n;
    }
    Some((area, done))
}

/// Writes `header` with the first `n` bytes of the message at `src` as
/// its payload, after the queue name at `mq_name` if any (see
/// [`copy_name`]). A buffer that cannot be read leaves the payload empty
/// rather than losing the event; iovecs keep what was read of them.
fn emit_with_payload(
    mut header: RawEvent,
    mq_name: Option<*const u8>,
    src: Payload,
    n: usize,
) -> Result<(), i64> {
    // Gathered first: the copy into the record below is then one bounded
    // read either way.
    let (from, n, user) = match src {
        Payload::Buffer(buf) => (buf as *const u8, n, true),
        Payload::Iovecs { iov, count } => match gather(iov, count, n) {
            Some((area, got)) => (area, got, false),
            None => (ptr::null(), 0, false),
        },
    };
    let Some(mut entry) = EVENTS.reserve::<PayloadRecord>(0) else {
        count_drop();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a live reservation of PayloadRecord's
    // size; its area holds a name (at most MAX_NAME bytes, plus the NUL
    // the copy writes) and then MAX_PAYLOAD bytes.
    let area = unsafe { ptr::addr_of_mut!((*record).area) }.cast::<u8>();
    let mut name_len = 0;
    if let Some(src) = mq_name {
        // SAFETY: as above.
        match unsafe { copy_name(area, src, true) } {
            Ok(len) => name_len = len,
            Err(e) => {
                entry.discard(0);
                return Err(e);
            }
        }
    }
    // Masked as well as bounded, so the verifier sees both limits.
    let at = name_len.min(MAX_NAME) & 0x1ff;
    let n = n.min(MAX_PAYLOAD) & 0x1fff;
    // SAFETY: `at` + `n` <= MAX_NAME + MAX_PAYLOAD, inside the area (as
    // above); the helpers fault safely on a bad source, zeroing what they
    // could not copy.
    let read = unsafe {
        if user {
            generated::bpf_probe_read_user(area.add(at).cast(), n as u32, from.cast())
        } else {
            generated::bpf_probe_read_kernel(area.add(at).cast(), n as u32, from.cast())
        }
    };
    header.name_len = name_len as u16;
    header.data_len = if read == 0 { n as u16 } else { 0 };
    // SAFETY: as above; `header` lies within the reservation.
    unsafe { ptr::write(ptr::addr_of_mut!((*record).header), header) };
    entry.submit(wakeup());
    Ok(())
}

/// Copies the NUL-terminated kernel string at `src` to `area` and returns
/// its length (the NUL not counted).
///
/// `mq`: the string is a message queue's dentry name, which gets the
/// leading `/` that `mq_open` names carry (names longer than MAX_NAME - 1
/// bytes are cut), and which must be read: without it the error is
/// returned and the record must go. Otherwise (an exec's path) a failed
/// copy is an empty name rather than a lost event.
///
/// # Safety
///
/// `area` must be writable for MAX_NAME + 1 bytes.
unsafe fn copy_name(area: *mut u8, src: *const u8, mq: bool) -> Result<usize, i64> {
    // The raw helper rather than aya's slice wrapper: it writes through a
    // pointer, so no reference to an uninitialised reservation is made.
    // SAFETY: each copy is bounded by what is left of the area (the
    // caller's contract); the helper NUL-terminates what it copies and
    // faults safely on a bad source.
    let copied = unsafe {
        if mq {
            ptr::write(area, b'/');
            generated::bpf_probe_read_kernel_str(area.add(1).cast(), MAX_NAME as u32, src.cast())
        } else {
            generated::bpf_probe_read_kernel_str(area.cast(), (MAX_NAME + 1) as u32, src.cast())
        }
    };
    // `copied` counts the NUL.
    let len = if copied > 1 {
        (copied as usize - 1).min(MAX_NAME)
    } else {
        0
    };
    if !mq {
        return Ok(len);
    }
    if len == 0 {
        return Err(copied);
    }
    Ok((len + 1).min(MAX_NAME))
}

/// A task ends; only the last thread of a process (`group_dead`) ends the
/// process.
fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    let flags = flags_of(tgid);
    let trace_all = TRACE_ALL.load() != 0;
    if !trace_all && flags == 0 {
        return Ok(());
    }
    // SAFETY: the offset is that of sched_process_exit's bool group_dead;
    // read_at goes through bpf_probe_read_kernel, which faults safely.
    let group_dead: u8 =
        unsafe { ctx.read_at(offset(&OFFSET_EXIT_GROUP_DEAD)) }.map_err(i64::from)?;
    // A thread that dies inside a message syscall never reaches its exit.
    let _ = PENDING.remove(tid);
    if group_dead == 0 {
        return Ok(());
    }
    if flags != 0 {
        // Pids are reused: a stale entry would trace an unrelated process.
        let _ = TRACKED.remove(tgid);
    }
    let _ = SHM_MAPS.remove(tgid);
    if !traced_with(tgid, flags) {
        return Ok(());
    }
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::PROCESS_EXIT,
        chan_kind: chan::NONE,
        aux: u64::from(wait_status()? as u32),
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
}

/// The status `waitpid` will report for the current task's process, read
/// as the kernel's `wait_task_zombie` reads it: the group's exit code when
/// the whole group was made to exit (`exit_group`, a fatal signal, a core
/// dump: every thread's `do_exit` got that code), else the main thread's
/// own `exit_code` (each thread ended with `exit`; the main thread may
/// have ended long before this last one). By `sched_process_exit` both
/// are set: `do_exit` stores `exit_code` before it fires the tracepoint.
fn wait_status() -> Result<i32, i64> {
    // SAFETY (the reads): the current task and the structs it points to
    // (its signal_struct and its group leader live until the process is
    // reaped, after this); the offsets are from BTF;
    // bpf_probe_read_kernel faults safely.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal: *const u8 = unsafe { read_field(task, &KOFF_TASK_SIGNAL) }?;
    let flags: u32 = unsafe { read_field(signal, &KOFF_SIGNAL_FLAGS) }?;
    if flags & SIGNAL_GROUP_EXIT != 0 {
        return unsafe { read_field(signal, &KOFF_SIGNAL_GROUP_EXIT_CODE) };
    }
    let leader: *const u8 = unsafe { read_field(task, &KOFF_TASK_GROUP_LEADER) }?;
    unsafe { read_field(leader, &KOFF_TASK_EXIT_CODE) }
}

/// A task is renamed. The tracepoint fires for `prctl(PR_SET_NAME)`, a
/// write to `/proc/PID/task/TID/comm` (which only the task's own process
/// may do, so the current process is the renamed task's) and an exec,
/// which gives the new program's name and is not the process naming
/// itself: an exec's rename comes while its execve is in `PENDING`. Only
/// the main thread's name is the process's title; threads name
/// themselves for their own sake (`pthread_setname_np`).
fn try_task_rename(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offsets are task_rename's fields (checked by the
    // loader); read_at goes through bpf_probe_read_kernel.
    let renamed: i32 = unsafe { ctx.read_at(offset(&OFFSET_RENAME_PID)) }.map_err(i64::from)?;
    if renamed as u32 != tgid {
        return Ok(());
    }
    // SAFETY: a plain struct copied out at once; only this thread writes
    // its own entry.
    // (An exec from a thread other than the main one takes the main
    // thread's id before it renames, so its entry is not found and its
    // rename is reported: a rare case, and a true name still.)
    if unsafe { PENDING.get(tid) }.is_some_and(|p| p.op == op::EXEC) {
        return Ok(());
    }
    // SAFETY: as above.
    let comm: [u8; 16] =
        unsafe { ctx.read_at(offset(&OFFSET_RENAME_NEWCOMM)) }.map_err(i64::from)?;
    let newcomm = ctx
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(offset(&OFFSET_RENAME_NEWCOMM));
    emit_named(
        RawEvent {
            ts_ns: now(),
            pid: tgid,
            tid,
            kind: kind::PROCESS_TITLE,
            chan_kind: chan::NONE,
            // The task is named this from now on (the tracepoint fires
            // just before the kernel copies it in).
            comm,
            ..RawEvent::default()
        },
        newcomm,
        false,
    )
}

/// The current task's (tgid, pid): the process and thread ids user space
/// calls pid and tid.
fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

fn offset(global: &Global<u32>) -> usize {
    global.load() as usize
}

fn flags_of(tgid: u32) -> u8 {
    // SAFETY: the value is a plain u8 copied out at once; a concurrent
    // update can at worst make this one decision on the old value.
    unsafe { TRACKED.get(tgid) }.copied().unwrap_or(0)
}

/// Whether this process's own events are reported.
fn is_traced(tgid: u32) -> bool {
    // Under TRACE_ALL no lookup: every process but one is traced.
    if TRACE_ALL.load() != 0 {
        return tgid != EXCLUDED_TGID.load();
    }
    flags_of(tgid) & flag::TRACED != 0
}

/// [`is_traced`] for a process whose `TRACKED` flags are already known.
fn traced_with(tgid: u32, flags: u8) -> bool {
    if TRACE_ALL.load() != 0 {
        return tgid != EXCLUDED_TGID.load();
    }
    flags & flag::TRACED != 0
}

fn now() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Writes a header-only record, counting it as dropped when the ring is
/// full.
fn emit(event: &RawEvent) {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(wakeup());
        }
        None => count_drop(),
    }
}

/// `bpf_ringbuf_submit` flags and the `bpf_ringbuf_query` of the bytes
/// waiting, from `<linux/bpf.h>`.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Bytes waiting in `EVENTS` before a record wakes the collector: 1/64 of
/// the ring, at most 256 KiB (about a millisecond of events at 2 million a
/// second). Set by the loader, which sizes the ring.
#[no_mangle]
static WAKEUP_BYTES: Global<u64> = Global::new(256 * 1024);

/// The submit flags for a record: no wakeup until [`WAKEUP_BYTES`] are
/// waiting. By default every record that finds the reader caught up wakes
/// it, which costs the traced thread an irq_work and the reader a trip
/// through the scheduler per record; the collector reads the ring on a
/// timer as well (`collector::ebpf::RING_POLL`), so a quiet trickle still
/// arrives within milliseconds. Only the records that take the backlog
/// across the threshold wake it, not every one past it: a reader that is
/// behind is awake already or starved of CPU, and a wakeup per record then
/// cost the traced threads a tenth of their time (an irq_work and an IPI
/// each, measured on a pipe flood the recorder could not keep up with).
fn wakeup() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let threshold = WAKEUP_BYTES.load();
    if waiting >= threshold && waiting < threshold.saturating_mul(2) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // A plain increment: the slot is this CPU's, and programs run with
        // preemption off. Only `signal_generate` raised in an interrupt (a
        // timer's signal) can land between another program's load and
        // store here, and then loses that one count; the BPF target's core
        // has no atomic read-modify-write to close that window.
        // SAFETY: `slot` points at this CPU's u64 in the map, valid for the
        // program's whole run.
        unsafe { *slot += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path may reach this: the verifier rejects the endless loop,
    // so a program that could panic fails to load instead of misbehaving.
    loop {}
}

// GPL-compatible, as bpf_probe_read_kernel and the ring buffer helpers
// require; "Dual MIT/GPL" is what aya's template uses.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
