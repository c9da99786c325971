//! Records that cross a process or kernel boundary, as bytes.
//!
//! One fixed-size [`RawEvent`] header per event, followed by `name_len` bytes
//! of object name (for IPC objects named by a string: mq, shm, ipc-lib
//! channels) and `data_len` bytes of captured payload. Records in a byte
//! stream are padded to [`RECORD_ALIGN`].
//!
//! The layout rules follow aya's integration-common: explicit padding,
//! integers instead of `bool` or enums (a kernel or a hostile process can put
//! any bit pattern here, and only the decoder may turn it into an enum), and a
//! size assertion, so both compilers agree on every byte.

/// Size of [`RawEvent`] in bytes.
pub const RAW_EVENT_SIZE: usize = 96;
/// The most payload bytes one record may carry (`--payload-bytes` cap).
pub const MAX_PAYLOAD: usize = 4096;
/// The longest object name one record may carry.
pub const MAX_NAME: usize = 255;
/// Records in a stream start at multiples of this.
pub const RECORD_ALIGN: usize = 8;

/// One event as the probes and the ipc-lib ring write it.
///
/// Field meanings beyond the obvious depend on `kind`; [`kind`] documents
/// them, and `ipc_events::decode` is the one place that interprets them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// CLOCK_MONOTONIC, nanoseconds (`bpf_ktime_get_ns` is the same clock).
    pub ts_ns: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// One of the [`kind`] constants.
    pub kind: u16,
    /// One of the [`chan`] constants; [`chan::NONE`] when no IPC object.
    pub chan_kind: u16,
    /// Bytes of object name following the header.
    pub name_len: u16,
    /// Bytes of captured payload following the name.
    pub data_len: u16,
    /// First object identity word (inode, key, address, target pid).
    pub obj: u64,
    /// Second object identity word (peer inode, owning pid).
    pub obj2: u64,
    /// Bytes moved, a count for [`kind::DROP`], or for
    /// [`kind::SIGNAL_GENERATE`] the signal's `si_code`.
    pub size: u64,
    /// Message id from an ipc-lib frame; 0 when there is none.
    pub msg_id: u64,
    /// Return value or negative errno.
    pub result: i64,
    /// How long a blocking call took, 0 when it did not block or is unknown.
    pub duration_ns: u64,
    /// Kind-specific: parent pid, signal number, wait status.
    pub aux: u64,
    /// The task's comm, NUL-padded.
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<RawEvent>() == RAW_EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<RawEvent>() == RECORD_ALIGN);

#[cfg(feature = "user")]
// SAFETY: RawEvent is repr(C), has no padding (the size assertion above sums
// its fields) and every bit pattern of its integer fields is valid.
unsafe impl aya::Pod for RawEvent {}

/// A syscall between its entry and its exit, as the probes keep it in
/// their `PENDING` map (thread id -> entry): what the entry learned, for
/// the exit to report once the return value says what happened. The
/// loader reads the map too: a receive whose entry has stood for a while
/// is a thread blocked in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    /// When the syscall was entered (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub obj: u64,
    pub obj2: u64,
    /// Bytes moved by a call that returns 0 on success (mq_timedsend,
    /// msgsnd), as its length argument said.
    pub size: u64,
    /// A user address the exit reads, which the kernel fills in
    /// (mq_timedreceive's priority, msgrcv's mtype).
    pub addr: u64,
    /// A message queue's dentry (a kernel address), whose name the exit
    /// reads.
    pub dentry: u64,
    /// Where the message's bytes are, when payload capture is on; else
    /// 0: the user buffer holding them or, when `buf_iov` is 1, the user
    /// `struct iovec` array (writev, readv, sendmsg, recvmsg).
    pub buf: u64,
    /// How many bytes `buf` holds, or how many iovecs when `buf_iov` is 1.
    pub buf_len: u64,
    /// The event's `aux`, when the entry knows it.
    pub aux: u64,
    /// The process the thread belongs to.
    pub tgid: u32,
    /// One of [`op`]: what the exit does.
    pub op: u16,
    /// The event kind the exit reports.
    pub kind: u16,
    pub chan_kind: u16,
    /// 1: `buf` is an iovec array of `buf_len` entries; 0: a buffer.
    pub buf_iov: u16,
    pub _pad: [u16; 2],
}

/// Size of [`PendingCall`] in bytes.
pub const PENDING_CALL_SIZE: usize = 88;
const _: () = assert!(core::mem::size_of::<PendingCall>() == PENDING_CALL_SIZE);

#[cfg(feature = "user")]
// SAFETY: PendingCall is repr(C), has no padding (the size assertion above
// sums its fields) and every bit pattern of its integer fields is valid.
unsafe impl aya::Pod for PendingCall {}

impl PendingCall {
    /// An entry of thread group `tgid` made at `ts_ns`.
    pub const fn new(ts_ns: u64, tgid: u32, op: u16, kind: u16, chan_kind: u16) -> Self {
        PendingCall {
            ts_ns,
            obj: 0,
            obj2: 0,
            size: 0,
            addr: 0,
            dentry: 0,
            buf: 0,
            buf_len: 0,
            aux: 0,
            tgid,
            op,
            kind,
            chan_kind,
            buf_iov: 0,
            _pad: [0; 2],
        }
    }

    /// The event this entry reports for thread `tid`, stamped `ts_ns`,
    /// with the time since the entry as its duration.
    pub fn event(&self, tid: u32, ts_ns: u64, comm: [u8; 16]) -> RawEvent {
        RawEvent {
            ts_ns,
            pid: self.tgid,
            tid,
            kind: self.kind,
            chan_kind: self.chan_kind,
            obj: self.obj,
            obj2: self.obj2,
            aux: self.aux,
            duration_ns: ts_ns.saturating_sub(self.ts_ns),
            comm,
            ..RawEvent::default()
        }
    }
}

/// What a syscall's exit does with its [`PendingCall`].
pub mod op {
    /// A send on an fd (pipe, FIFO, Unix socket): `ret` bytes.
    pub const FD_SEND: u16 = 1;
    /// A receive on an fd: `ret` bytes.
    pub const FD_RECV: u16 = 2;
    /// mq_timedsend: 0 on success, `size` bytes.
    pub const MQ_SEND: u16 = 3;
    /// mq_timedreceive: `ret` bytes, priority at `addr`.
    pub const MQ_RECV: u16 = 4;
    /// msgsnd: 0 on success, `size` bytes.
    pub const SYSV_SEND: u16 = 5;
    /// msgrcv: `ret` bytes, mtype at `addr`.
    pub const SYSV_RECV: u16 = 6;
    /// msgget / semget: `ret` is the id of key `obj`.
    pub const SYSV_GET: u16 = 7;
    /// A futex wait; its begin was reported at the entry.
    pub const FUTEX_WAIT: u16 = 8;
    /// A semop that may block; its begin was reported at the entry.
    pub const SEMOP: u16 = 9;
    /// A `MAP_SHARED` mmap of shared memory: `ret` is the address of
    /// `size` bytes of object `obj`/`obj2` (named by `dentry`), from
    /// offset `aux` in it.
    pub const MMAP: u16 = 10;
    /// shmat: `ret` is the address of SysV segment `obj`/`obj2`, `size`
    /// bytes (0 when the probes never learnt its size).
    pub const SHMAT: u16 = 11;
    /// munmap / shmdt: a mapping starting at `addr` goes when `ret` is 0.
    pub const UNMAP: u16 = 12;
    /// A futex call that may wake waiters of `obj`/`obj2`: reported when
    /// it woke any (`ret` > 0; for FUTEX_UNLOCK_PI, `ret` 0 with `aux` 1,
    /// the word's FUTEX_WAITERS bit seen at the entry).
    pub const FUTEX_WAKE: u16 = 13;
    /// execve / execveat: nothing is reported at the exit; the entry only
    /// tells the `task_rename` probe that the rename it sees is the exec's
    /// (the new program's name), not the process renaming itself.
    pub const EXEC: u16 = 14;
}

/// Total bytes a record with these name and payload lengths occupies in a
/// stream, padding included.
pub const fn record_len(name_len: usize, data_len: usize) -> usize {
    let len = RAW_EVENT_SIZE + name_len + data_len;
    len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Event kinds. `obj`, `obj2`, `aux` and `size` meanings are given per kind.
pub mod kind {
    /// A message left the sender: `size` bytes, `msg_id` when framed. For
    /// an ipc-lib rpc reply, `aux` is the `msg_id` of the request it
    /// answers. On a POSIX message queue `aux` is the message's priority,
    /// on a SysV queue its `mtype`: each queue is FIFO per priority (per
    /// type), so messages pair in order within one. 0 otherwise.
    pub const MSG_SEND: u16 = 1;
    /// A message arrived: `size` bytes, `msg_id` when framed; `aux` as for
    /// [`MSG_SEND`].
    pub const MSG_RECV: u16 = 2;
    /// A shared-memory object was mapped: `size` bytes (for an ipc-lib
    /// region, its data bytes). From the probes: at address `aux`, and
    /// also for each mapping a child inherits when it is forked.
    pub const SHM_MAP: u16 = 3;
    /// A shared-memory object was unmapped (ipc-lib: `size` bytes, as
    /// mapped; the probes: the mapping at address `aux`).
    pub const SHM_UNMAP: u16 = 4;
    /// Read of `size` bytes at offset `aux`. From the probes, a sample:
    /// the first touch of a page (a page fault), `size` a page.
    pub const SHM_READ: u16 = 5;
    /// Write of `size` bytes at offset `aux` (the probes: as for
    /// [`SHM_READ`], a fault on a write).
    pub const SHM_WRITE: u16 = 6;
    /// A thread (the event's `pid`/`tid`) found the count zero and
    /// blocks. ipc-lib semaphores: `obj`/`obj2` the pid/tid of one current
    /// holder (0/0 when none is known), `aux` how many holders the table
    /// names: "T blocked on S, held by H". For a SysV semaphore (`semop`),
    /// `aux` packs the first operation: `sem_num` in bits 0..16, `sem_op`
    /// (an i16) in bits 16..32, and the number of operations in bits
    /// 32..48; the same for its end and for a post.
    pub const SEM_WAIT_BEGIN: u16 = 7;
    /// The wait ended: `result` 0 when acquired (then the event's thread
    /// holds a count of S), a negative errno when it gave up (`-ETIMEDOUT`
    /// timed out, `-ECANCELED` an async wait was dropped), `duration_ns`
    /// waited (0 for an acquire that
    /// did not block: every acquire has one, not every one a begin).
    /// ipc-lib: `aux` the holder slot taken plus one (0: the table was
    /// full, the holder is not named).
    pub const SEM_WAIT_END: u16 = 8;
    /// A semaphore was posted. ipc-lib: `obj`/`obj2` the pid/tid of the
    /// holder whose count is released ("T released S"; 0/0 for a post by
    /// no holder, the signalling use), `aux` its slot plus one. `result`
    /// `-EOWNERDEAD`: holder `obj`/`obj2` died holding the count and the
    /// event's process recovered it. ipc-lib stamps a post before the
    /// count is added and an acquire after it is taken, so a release is
    /// always earlier than the acquire it made possible.
    pub const SEM_POST: u16 = 9;
    /// A futex wait: `duration_ns`, `aux` the owner tid when known (the
    /// word of a PI futex names it; 0 when unknown). Reported twice by the
    /// probes: when it begins, with `result` [`super::WAIT_BEGUN`], and
    /// when it ends, with the call's result.
    pub const FUTEX_WAIT: u16 = 10;
    /// A futex call woke waiters of the futex (the probes: FUTEX_WAKE,
    /// WAKE_BITSET, WAKE_OP, REQUEUE, CMP_REQUEUE, CMP_REQUEUE_PI and
    /// UNLOCK_PI, private or not). `obj`/`obj2` as for [`FUTEX_WAIT`]
    /// (see [`super::chan::FUTEX`]), so a wake and the waits it ended
    /// are on one channel. `result` how many were woken, as the kernel's
    /// return value says (for REQUEUE and CMP_REQUEUE* it counts those
    /// requeued too; UNLOCK_PI, which returns 0, is reported as 1: it
    /// hands the lock to one waiter). Stamped when the call was entered,
    /// so it precedes the end of every wait it ended. A call that woke
    /// nobody is not reported. For FUTEX_WAKE_OP only the first address
    /// is named, though waiters of the second may have been woken too.
    pub const FUTEX_WAKE: u16 = 11;
    /// A lock was taken.
    pub const LOCK_ACQUIRE: u16 = 12;
    /// A lock was released.
    pub const LOCK_RELEASE: u16 = 13;
    /// A signal was sent: `aux` the signal number, `obj` the target pid,
    /// `obj2` the target thread, `result` what the kernel did with it
    /// (`enum trace_signal_result`: 0 queued, 1 ignored, 2 merged into a
    /// pending one, 3 queue full, 4 queued without its info).
    ///
    /// From the probes, `size` carries the signal's `si_code`, which says
    /// who sent it: bits 0..32 the code (an `i32`), bit 32
    /// ([`super::SI_CODE_KNOWN`]) set to say it is there. The event's
    /// `pid`/`tid` are the task that was running when the kernel generated
    /// the signal, the sender only when the code says a process sent it
    /// (`SI_USER` 0, `SI_TKILL` -6, `SI_QUEUE` -1...); `SI_KERNEL` (0x80),
    /// `SI_TIMER` (-2) and the positive per-signal codes (`CLD_EXITED`,
    /// `SEGV_MAPERR`...) mean the kernel sent it. The kernel's special
    /// siginfo pointers are decoded as it reads them: `SEND_SIG_NOINFO`
    /// is `SI_USER` from the current task, `SEND_SIG_PRIV` is
    /// `SI_KERNEL`. Without bit 32 (an ipc-lib record) the code is
    /// unknown and `size` is a size as for any kind.
    pub const SIGNAL_GENERATE: u16 = 14;
    /// A signal was delivered to `pid`: `aux` the signal number.
    pub const SIGNAL_DELIVER: u16 = 15;
    /// A user handler ran for signal `aux`.
    pub const SIGNAL_HANDLE: u16 = 16;
    /// Process `pid` was created: `aux` its parent pid.
    pub const PROCESS_START: u16 = 17;
    /// Process `pid` executed a new program (its path is the name).
    pub const PROCESS_EXEC: u16 = 18;
    /// Process `pid` exited: when `result` is 0, `aux` is its wait status,
    /// what `waitpid` reports for it: the exit code `<< 8`, or the signal
    /// that killed it in bits 0..7 with 0x80 set if it dumped core. The
    /// probes read it when its last thread exits, as `wait_task_zombie`
    /// does: the process's `group_exit_code` when the whole group was made
    /// to exit (`exit_group`, a fatal signal, a core dump), else the main
    /// thread's own `exit_code` (every thread ended with `exit`). A source
    /// that saw the exit but not how it ended (an ipc-lib ring closing)
    /// says -ENODATA in `result`.
    pub const PROCESS_EXIT: u16 = 19;
    /// `size` events were lost by the source named in `aux`.
    pub const DROP: u16 = 20;
    /// A thread has been blocked in a receive (`read`, `recv*`,
    /// `msgrcv`...) on the object since `ts_ns`. The collector makes these
    /// from the probes' in-flight syscalls, for receives that stay blocked
    /// long enough to be seen; the event's `releasers` are the threads
    /// that hold the other end open and so could end the wait. The
    /// receive's own `msg_recv`, or a [`RECV_WAIT_END`], ends it.
    pub const RECV_WAIT_BEGIN: u16 = 21;
    /// The blocked receive of [`RECV_WAIT_BEGIN`] returned without a
    /// message (end of file, an error, a signal), or the thread was no
    /// longer in it when the collector looked: `duration_ns` it was
    /// blocked, as far as the collector saw.
    pub const RECV_WAIT_END: u16 = 22;
    /// Process `pid` gave itself a new title: the event's name bytes (its
    /// `path`) are the new title. From the probes (`task:task_rename`),
    /// the main thread's new comm, set with `prctl(PR_SET_NAME)` or by
    /// writing `/proc/PID/comm` (not the rename an exec does). From the
    /// collector, the process's command line as `/proc/PID/cmdline` shows
    /// it (NULs as spaces, at most [`super::MAX_TITLE`] bytes) when it
    /// changed since the process's exec: a process that rewrote its argv
    /// (`postgres: checkpointer`). From ipc-lib, the role the process
    /// gave itself (`ipc_lib::set_role`).
    pub const PROCESS_TITLE: u16 = 23;
    /// A futex wait began: what the decoder makes of a [`FUTEX_WAIT`]
    /// record whose `result` is [`super::WAIT_BEGUN`], so that the marker
    /// never leaves it (`result` is then 0: the call has not returned).
    /// The probes do not write this code; a record that has it decodes as
    /// it says.
    pub const FUTEX_WAIT_BEGIN: u16 = 24;
}

/// IPC object kinds, as stored in `channels.kind`.
pub mod chan {
    pub const NONE: u16 = 0;
    /// `obj` pipe inode.
    pub const PIPE: u16 = 1;
    /// `obj` FIFO inode.
    pub const FIFO: u16 = 2;
    /// `obj` the inode of the socket end the event went through, `obj2`
    /// its peer's (0 when it has none).
    pub const UNIX_STREAM: u16 = 3;
    pub const UNIX_DGRAM: u16 = 4;
    pub const UNIX_SEQPACKET: u16 = 5;
    /// `obj` local port, `obj2` remote port.
    pub const TCP_LOOPBACK: u16 = 6;
    /// Named: POSIX message queue name.
    pub const MQ: u16 = 7;
    /// `obj` SysV key ([`super::SYSV_KEY_UNKNOWN`] when the probes did not
    /// learn it), `obj2` SysV id.
    pub const SYSV_MSG: u16 = 8;
    /// Named: a shared-memory object other than a SysV segment. From the
    /// probes, the name bytes are the kernel's dentry name and
    /// `obj`/`obj2` say what it is (see [`super::shm_origin`]).
    pub const SHM: u16 = 9;
    /// Named: POSIX named semaphore.
    pub const SEM: u16 = 10;
    /// One semaphore of a SysV set: `obj` the set's key (or
    /// [`super::SYSV_KEY_UNKNOWN`]), `obj2` the set's id in bits 0..32 and
    /// the semaphore's number in the set in bits 32..48 (each semaphore of
    /// a set is a resource of its own: a process can hold one and wait for
    /// another).
    pub const SYSV_SEM: u16 = 11;
    /// `obj` futex address, `obj2` the pid whose address space it is in
    /// (0 for a shared futex).
    pub const FUTEX: u16 = 12;
    /// Named: ipc-lib channel.
    pub const IPCLIB_CHANNEL: u16 = 13;
    /// Named: ipc-lib shared-memory region.
    pub const IPCLIB_SHM: u16 = 14;
    /// Named: ipc-lib semaphore.
    pub const IPCLIB_SEM: u16 = 15;
    /// A SysV shared-memory segment: `obj` its key (or
    /// [`super::SYSV_KEY_UNKNOWN`]), `obj2` its id.
    pub const SYSV_SHM: u16 = 16;
    /// Named: ipc-lib broadcast (one publisher, many subscribers; each
    /// message is received once by every subscriber).
    pub const IPCLIB_BROADCAST: u16 = 17;
    /// Named: ipc-lib work queue (producers push jobs, each job goes to
    /// one of many consumers, which acknowledge it). A push is a
    /// `msg_send`; the `msg_recv` is the acknowledged delivery, traced at
    /// the ack: `aux` the delivery it was (1 the first; more after a
    /// redelivery), `duration_ns` how long the consumer held the job.
    pub const IPCLIB_QUEUE: u16 = 18;
}

/// What a [`chan::SHM`] object from the probes is, in the low byte of its
/// `obj2`. Its name is built from these and the dentry name by
/// `ipc_events::decode`; a record with `obj` and `obj2` both 0 (as
/// [`crate::encode`] writes) carries its name as it is.
pub mod shm_origin {
    /// A file on a tmpfs, or a memfd (whose dentry reads `memfd:NAME`):
    /// `obj` its inode. Named `NAME:[INODE]`.
    pub const FILE: u64 = 0;
    /// A file in `/dev/shm` (`shm_open`'s home): named by its path.
    pub const DEV_SHM: u64 = 1;
    /// `MAP_SHARED | MAP_ANONYMOUS` memory, which the mapping process
    /// shares with the children it forks: `obj` its address there, bits
    /// 8.. of `obj2` that process's pid. Named `anon:PID@ADDRESS`.
    pub const ANON: u64 = 2;
}

/// Set in a [`kind::SIGNAL_GENERATE`] record's `size` when bits 0..32 hold
/// the signal's `si_code`.
pub const SI_CODE_KNOWN: u64 = 1 << 32;

/// The longest process title the collector reports ([`kind::PROCESS_TITLE`]).
pub const MAX_TITLE: usize = 256;

/// The `result` of a wait's begin record ([`kind::FUTEX_WAIT`]): the call
/// has not returned. No syscall returns this. Decoding turns such a record
/// into [`kind::FUTEX_WAIT_BEGIN`].
pub const WAIT_BEGUN: i64 = i64::MIN;

/// A SysV object's `obj` when its key is unknown: it was created before
/// the probes loaded and after the loader read `/proc/sysvipc`, or by a
/// process not traced. Keys are 32-bit, so this is no key.
pub const SYSV_KEY_UNKNOWN: u64 = u64::MAX;

/// Which SysV id space an id is in, as the probes key their id -> key map.
pub mod sysv_class {
    /// Message queues (`msgget`).
    pub const MSG: u64 = 1;
    /// Semaphore sets (`semget`).
    pub const SEM: u64 = 2;
    /// Shared-memory segments (`shmget`).
    pub const SHM: u64 = 3;
}

/// Which source lost events, in [`kind::DROP`]'s `aux`.
pub mod drop_source {
    /// The kernel ring buffer was full.
    pub const EBPF_RING: u64 = 1;
    /// An ipc-lib process's event ring was full.
    pub const LIB_RING: u64 = 2;
    /// The collector's ingest queue was full.
    pub const INGEST: u64 = 3;
    /// Records that failed to decode.
    pub const DECODE: u64 = 4;
    /// Messages of an ipc-lib channel whose sender died while writing
    /// them: the receiver stepped over them.
    pub const SENDER_DIED: u64 = 5;
    /// Messages of an ipc-lib broadcast that a subscriber fell too far
    /// behind to read: the publisher wrote over them.
    pub const LAGGED: u64 = 6;
    /// Probe runs the kernel skipped because the same probe was already
    /// running on that CPU; counted for every process, traced or not.
    pub const EBPF_SKIPPED: u64 = 7;
    /// Deliveries of an ipc-lib queue's job that were never acknowledged
    /// (the consumer died, `result` -EOWNERDEAD, or gave the job back):
    /// the job went to another delivery. `msg_id` the job, `obj` the pid
    /// of the consumer that lost it.
    pub const REDELIVERED: u64 = 8;
}
