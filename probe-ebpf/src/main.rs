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
//! sender or target, and delivered) and messages: the eight read/write/
//! send/recv syscalls on pipes, FIFOs and Unix sockets. A syscall's entry
//! resolves its fd to the IPC object in the kernel and remembers it in
//! `PENDING`; its exit reports the bytes the return value says moved.
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
    bpf_probe_read_kernel, generated,
};
use aya_ebpf::macros::{map, raw_tracepoint, tracepoint};
use aya_ebpf::maps::{HashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{RawTracePointContext, TracePointContext};
use aya_ebpf::{EbpfContext, Global};
use ipc_events::raw::{chan, kind, RawEvent, MAX_NAME, RECORD_ALIGN};

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

/// tgid -> `flag` bits. Big enough for a large build's process tree; an
/// insert into a full map fails and the child goes untraced, which is
/// reported as a drop.
#[map]
static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Every event, in the order the kernel committed them. 16 MiB holds about
/// 170k events: several seconds of a busy workload if the reader stalls.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// A message syscall between its entry and its exit: what the entry
/// learned about the file descriptor, for the exit to report once the
/// return value says how much moved. Keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    /// When the syscall was entered.
    ts_ns: u64,
    obj: u64,
    obj2: u64,
    /// `kind::MSG_SEND` or `kind::MSG_RECV`.
    kind: u16,
    chan_kind: u16,
    _pad: u32,
}

/// Thread id -> the message syscall it is in. Only syscalls on IPC objects
/// of traced processes are entered here; an entry whose exit never comes
/// (the thread died in the call) is removed when the thread exits. A full
/// map loses the message, which is counted as a drop.
#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// DROPS[0]: events lost in the kernel: no room in `EVENTS`, a child that
/// could not be added to a full `TRACKED`, a message syscall that could not
/// be remembered in a full `PENDING`, or a failed read of a tracepoint
/// field or kernel struct. Per CPU so that counting losses under load does not contend on
/// one cache line.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// An exec record: the header and room for the program's path. The ring
/// only takes reservations of a size known to the verifier, so the area is
/// fixed and `name_len` says how much of it is the path; the decoder reads
/// `name_len` bytes and ignores the rest.
#[repr(C)]
struct ExecRecord {
    header: RawEvent,
    /// MAX_NAME bytes of path plus the NUL the kernel's string copy writes.
    path: [u8; MAX_NAME + 1],
}

// The ring's reservations are 8-byte aligned and sized in multiples of 8.
const _: () = assert!(core::mem::size_of::<ExecRecord>().is_multiple_of(RECORD_ALIGN));

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

/// signal:signal_deliver `int sig`.
#[no_mangle]
static OFFSET_DELIVER_SIG: Global<u32> = Global::new(8);
/// syscalls:sys_enter_{read,write,readv,writev,recvfrom,sendto,recvmsg,
/// sendmsg} `fd`, the same in all eight (checked by the loader).
#[no_mangle]
static OFFSET_SYSCALL_FD: Global<u32> = Global::new(16);
/// syscalls:sys_exit_* `long ret`, the same in all eight.
#[no_mangle]
static OFFSET_SYSCALL_RET: Global<u32> = Global::new(16);

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

/// `S_IFMT` and the file types among it, from `<linux/stat.h>`.
const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
/// pipefs's `s_magic`: an anonymous pipe, where a FIFO lives on the
/// filesystem that holds its path.
const PIPEFS_MAGIC: u64 = 0x5049_5045;
const AF_UNIX: u16 = 1;
const SOCK_STREAM: i16 = 1;
const SOCK_DGRAM: i16 = 2;
const SOCK_SEQPACKET: i16 = 5;

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

/// write, writev, sendto, sendmsg.
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_send(ctx: TracePointContext) -> u32 {
    if try_sys_enter(&ctx, kind::MSG_SEND).is_err() {
        count_drop();
    }
    0
}

/// read, readv, recvfrom, recvmsg.
#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn sys_enter_recv(ctx: TracePointContext) -> u32 {
    if try_sys_enter(&ctx, kind::MSG_RECV).is_err() {
        count_drop();
    }
    0
}

/// The exit of all eight message syscalls.
#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn sys_exit_msg(ctx: TracePointContext) -> u32 {
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
    if !is_traced(tgid) && !is_traced(target_tgid) {
        return Ok(());
    }
    // SAFETY: as above.
    let target_tid: u32 = unsafe { read_field(task, &KOFF_TASK_PID) }?;
    let sig: u64 = ctx.arg(0);
    let result: u64 = ctx.arg(4);
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::SIGNAL_GENERATE,
        chan_kind: chan::NONE,
        obj: u64::from(target_tgid),
        obj2: u64::from(target_tid),
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

/// The entry of a message syscall: when the file descriptor is a pipe,
/// FIFO or Unix socket, remember it for the exit. Resolving here, while
/// the fd is certainly open, keeps the exit down to one lookup and makes
/// every other file (regular files, ttys, network sockets) cost nothing
/// more than this walk.
fn try_sys_enter(ctx: &TracePointContext, msg_kind: u16) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offset is that of the syscall's `fd` word; read_at goes
    // through bpf_probe_read_kernel, which faults safely.
    let fd: u64 = unsafe { ctx.read_at(offset(&OFFSET_SYSCALL_FD)) }.map_err(i64::from)?;
    let Some((chan_kind, obj, obj2)) = ipc_object(fd as u32)? else {
        return Ok(());
    };
    let pending = Pending {
        ts_ns: now(),
        obj,
        obj2,
        kind: msg_kind,
        chan_kind,
        _pad: 0,
    };
    if PENDING.insert(tid, pending, 0).is_err() {
        count_drop();
    }
    Ok(())
}

/// The exit of a message syscall entered on an IPC object: a message of
/// `ret` bytes when `ret` > 0. Errors (EAGAIN included) and end-of-file
/// move nothing and are not messages.
fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    // SAFETY: the value is copied out at once; only this thread writes its
    // own entry.
    let Some(pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(tid);
    // SAFETY: the offset is that of the syscall's `long ret`; read_at goes
    // through bpf_probe_read_kernel, which faults safely.
    let ret: i64 = unsafe { ctx.read_at(offset(&OFFSET_SYSCALL_RET)) }.map_err(i64::from)?;
    if ret <= 0 {
        return Ok(());
    }
    let exit_ns = now();
    // A send is stamped when it started and a receive when it completed:
    // whatever the scheduling, a receive then never precedes the send whose
    // bytes it returns.
    let ts_ns = if pending.kind == kind::MSG_SEND {
        pending.ts_ns
    } else {
        exit_ns
    };
    emit(&RawEvent {
        ts_ns,
        pid: tgid,
        tid,
        kind: pending.kind,
        chan_kind: pending.chan_kind,
        obj: pending.obj,
        obj2: pending.obj2,
        size: ret as u64,
        result: ret,
        duration_ns: exit_ns.saturating_sub(pending.ts_ns),
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
}

/// The IPC object behind the current task's file descriptor `fd`, as
/// `(chan kind, obj, obj2)`; `None` for anything else (no such fd, regular
/// files, ttys, non-Unix sockets).
///
/// Walks `current->files->fdt->fd[fd]` as `fcheck` does, without the RCU
/// read lock a kernel caller would take: the task is in a syscall on that
/// fd, and every read goes through bpf_probe_read_kernel, which returns an
/// error rather than faulting if a concurrent close freed something.
fn ipc_object(fd: u32) -> Result<Option<(u16, u64, u64)>, i64> {
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
    if file.is_null() {
        return Ok(None);
    }
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
    emit(&RawEvent {
        ts_ns: now(),
        pid: child,
        tid: child,
        kind: kind::PROCESS_START,
        chan_kind: chan::NONE,
        aux: u64::from(parent_tgid),
        comm,
        ..RawEvent::default()
    });
    Ok(())
}

/// A successful exec; the tracepoint fires after the new program is in
/// place, so the current comm is already the new one.
fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: the offset is that of sched_process_exec's __data_loc word;
    // read_at goes through bpf_probe_read_kernel, which faults safely.
    let loc: u32 = unsafe { ctx.read_at(offset(&OFFSET_EXEC_FILENAME)) }.map_err(i64::from)?;
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_drop();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // The __data_loc offset is relative to the start of the record.
    let filename = ctx
        .as_ptr()
        .cast::<u8>()
        .wrapping_add((loc & 0xffff) as usize);
    // The raw helper rather than aya's slice wrapper: it writes through a
    // pointer, so no reference to the uninitialised reservation is made.
    // SAFETY: `record` points at a live reservation of ExecRecord's size, and
    // the copy is bounded by the size of its `path` area. The helper
    // NUL-terminates what it copies and faults safely on a bad source.
    let copied = unsafe {
        generated::bpf_probe_read_kernel_str(
            ptr::addr_of_mut!((*record).path).cast(),
            (MAX_NAME + 1) as u32,
            filename.cast(),
        )
    };
    // `copied` counts the NUL; a failed copy leaves the path empty rather
    // than losing the exec.
    let path_len = if copied > 1 {
        (copied as usize - 1).min(MAX_NAME)
    } else {
        0
    };
    let header = RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::PROCESS_EXEC,
        chan_kind: chan::NONE,
        name_len: path_len as u16,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    };
    // SAFETY: as above; `header` lies within the reservation, and
    // ptr::write does not read the uninitialised memory it replaces.
    unsafe { ptr::write(ptr::addr_of_mut!((*record).header), header) };
    entry.submit(0);
    Ok(())
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
    if !trace_all && flags & flag::TRACED == 0 {
        return Ok(());
    }
    emit(&RawEvent {
        ts_ns: now(),
        pid: tgid,
        tid,
        kind: kind::PROCESS_EXIT,
        chan_kind: chan::NONE,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..RawEvent::default()
    });
    Ok(())
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
    TRACE_ALL.load() != 0 || flags_of(tgid) & flag::TRACED != 0
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
            entry.submit(0);
        }
        None => count_drop(),
    }
}

fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // A plain increment is enough: the slot is this CPU's, tracepoint
        // programs run with preemption off, and the kernel's per-CPU
        // bpf_prog_active guard keeps a second program from interleaving.
        // (The BPF target's core has no atomic read-modify-write either.)
        // SAFETY: `slot` points at this CPU's u64 in the map, valid for the
        // program's whole run, and nothing else writes it meanwhile (above).
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
