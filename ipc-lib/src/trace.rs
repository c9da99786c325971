//! The tracer: operations become [`ipc_events::raw::RawEvent`] records in
//! this process's event ring (layout: [`ipc_events::ring`]).
//!
//! The ring is attached lazily, on the first traced operation: when
//! `ipcscope record` runs this process it sets [`SOCKET_ENV`], and the
//! tracer creates a memfd ring, hands its fd to the recorder over that
//! socket, and from then on writes events with no syscall at all. Without
//! the variable, or if anything in that fails, tracing is off: a few loads
//! per operation, and the application never notices. A full ring
//! refuses events and counts them, which the recorder stores as drops:
//! tracing never blocks.
//!
//! An event costs what its record costs to compose and copy, and no more:
//! each thread claims a lane of the ring for itself on its first event and
//! writes it with plain stores (no locked instruction; threads beyond the
//! lanes share one, reserving by compare-and-swap), and events are stamped
//! with the raw time-stamp counter where the TSC is invariant and the
//! kernel keeps time with it (the collector converts the readings to
//! CLOCK_MONOTONIC), else with `clock_gettime`. See [`Stamp`].
//!
//! After `fork` the child must not write into its parent's ring (the
//! collector checks that every event's pid is the ring owner's), so an
//! atfork handler resets the child to re-attach with a ring of its own.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU8, Ordering};

use ipc_events::raw::{RawEvent, MAX_NAME};
use ipc_events::ring::{
    self, clock, Hello, Lane, MAX_CAPACITY, MAX_LANES, MIN_CAPACITY, SHARED_LANE, SOCKET_ENV,
};
use ipc_events::{ChannelKind, EventKind};

/// Bytes per lane when `IPCSCOPE_RING_BYTES` does not say otherwise: about
/// 40,000 events, tens of milliseconds of a busy thread, which the
/// collector drains every millisecond. Lanes no thread writes cost address
/// space only: a memfd's pages exist once touched.
const DEFAULT_CAPACITY: u32 = 4 << 20;
/// Lanes when `IPCSCOPE_RING_LANES` does not say otherwise: every one the
/// header has room for, the shared one included.
const DEFAULT_LANES: u32 = MAX_LANES;

const UNKNOWN: u8 = 0;
const INITIALIZING: u8 = 1;
const OFF: u8 = 2;
const ON: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// The mapped ring; valid while STATE is ON.
static RING: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// Bytes in each lane's data area, and lanes in the ring; set with RING.
static CAPACITY: AtomicU32 = AtomicU32::new(0);
static LANES: AtomicU32 = AtomicU32::new(0);
static PID: AtomicU32 = AtomicU32::new(0);
/// The registration socket, kept open so the recorder sees this process end.
static SOCKET: AtomicI32 = AtomicI32::new(-1);
/// Whether events are stamped with the raw TSC ([`Stamp`]); decided when
/// the ring is attached.
static TSC: AtomicBool = AtomicBool::new(false);

/// What a thread keeps of itself: its tid and comm, read once (both are
/// syscalls), and the ring lane it writes. Plain integers, no `Option`:
/// the record path copies it out on every event, and a layout of odd
/// offsets made that copy stall on store forwarding (a quarter of an
/// event's cost, by `perf annotate`).
#[derive(Clone, Copy)]
struct ThreadState {
    /// 0 until read: no thread has tid 0.
    tid: u32,
    /// [`NO_LANE`] until the thread's first event, then the lane it
    /// writes: its own (an index above [`SHARED_LANE`]) or
    /// [`SHARED`], the shared lane.
    lane: u32,
    comm: [u8; 16],
}

/// `ThreadState::lane` before the first event.
const NO_LANE: u32 = SHARED_LANE;
/// `ThreadState::lane` for a thread that writes the shared lane.
const SHARED: u32 = u32::MAX;

const UNREAD: ThreadState = ThreadState {
    tid: 0,
    lane: NO_LANE,
    comm: [0; 16],
};

thread_local! {
    /// Plain data with no destructor: readable for as long as the thread
    /// lives, even while other thread-locals are being torn down.
    static THREAD: Cell<ThreadState> = const { Cell::new(UNREAD) };
    /// Gives the thread's own lane back when the thread ends.
    static LANE_GUARD: LaneGuard = const { LaneGuard(Cell::new(None)) };
}

/// The lane a thread claimed, and the ring mapping it belongs to.
struct LaneGuard(Cell<Option<(usize, Lane)>>);

impl Drop for LaneGuard {
    fn drop(&mut self) {
        let Some((ring, lane)) = self.0.take() else {
            return;
        };
        // Events after this (from other thread-locals' destructors) go to
        // the shared lane.
        THREAD.with(|t| {
            t.set(ThreadState {
                lane: SHARED,
                ..t.get()
            })
        });
        // Only a lane of this process's own ring: a forked child has a ring
        // of its own, and must not free a lane its parent's thread writes.
        if RING.load(Ordering::Acquire) as usize == ring {
            ring::release(&lane);
        }
    }
}

/// A moment as the tracer stamps events: a raw time-stamp counter
/// reading where the TSC is invariant and the kernel's clocksource (7 ns
/// here, where `clock_gettime` takes 16), converted to CLOCK_MONOTONIC by
/// the collector; else CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    value: u64,
    /// One of [`ipc_events::ring::clock`].
    clock: u32,
}

impl Stamp {
    /// A moment already read as CLOCK_MONOTONIC nanoseconds.
    pub(crate) const fn ns(ns: u64) -> Stamp {
        Stamp {
            value: ns,
            clock: clock::MONOTONIC_NS,
        }
    }

    /// Now, by the cheapest clock the collector can convert.
    #[inline(always)]
    pub(crate) fn now() -> Stamp {
        #[cfg(target_arch = "x86_64")]
        if TSC.load(Ordering::Relaxed) {
            return Stamp {
                value: ring::tsc(),
                clock: clock::TSC,
            };
        }
        Stamp::ns(monotonic_ns())
    }
}

/// Whether events are being recorded (attaching first if this is the first
/// question asked).
#[inline]
pub fn enabled() -> bool {
    match STATE.load(Ordering::Acquire) {
        ON => true,
        OFF => false,
        _ => attach_slow(),
    }
}

/// One traced operation. Fields a kind does not use stay at their defaults
/// ([`Op::new`]); `ipc_events::raw::kind` says what each means per kind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op<'a> {
    pub kind: EventKind,
    /// The object touched; `None` for kinds that touch none (signals).
    pub channel: Option<ChannelKind>,
    pub name: &'a str,
    pub size: u64,
    pub msg_id: u64,
    pub obj: u64,
    pub obj2: u64,
    pub aux: u64,
    pub result: i64,
    pub duration_ns: u64,
    /// When the operation took effect, if not now: a send is stamped with
    /// the moment before its syscall, since the receiver may have traced
    /// its receive before the sender gets to trace anything after it.
    /// (Named when stamps were nanoseconds; a [`Stamp`] may be either.)
    pub at_ns: Option<Stamp>,
}

impl<'a> Op<'a> {
    pub(crate) const fn new(kind: EventKind, channel: ChannelKind, name: &'a str) -> Self {
        Op {
            kind,
            channel: Some(channel),
            name,
            size: 0,
            msg_id: 0,
            obj: 0,
            obj2: 0,
            aux: 0,
            result: 0,
            duration_ns: 0,
            at_ns: None,
        }
    }

    /// An operation that touches no IPC object (signals).
    pub(crate) const fn without_object(kind: EventKind) -> Self {
        Op {
            channel: None,
            ..Op::new(kind, ChannelKind::IpclibChannel, "")
        }
    }
}

/// Records one operation on a named IPC object: `size` bytes, the frame's
/// `msg_id` (0 when the operation carries no message).
#[inline]
pub(crate) fn emit(kind: EventKind, channel: ChannelKind, name: &str, size: u64, msg_id: u64) {
    emit_op(Op {
        size,
        msg_id,
        ..Op::new(kind, channel, name)
    });
}

/// Records one operation.
///
/// Inlined whole (what is uncommon stays out of line: attaching, a
/// thread's first event, the shared lane, `tracing`'s view): with nothing
/// listening an operation pays a few loads and branches, under a
/// nanosecond; traced, its fields go from registers into the ring. Once,
/// the record was written by a call: the fields, laid out in memory for
/// it, cost an event with tracing off 4-7 ns on the CI machine kind, and
/// reloading them stalled the traced path (`collector/benches/channel.rs`,
/// `--only emit`).
#[inline(always)]
pub(crate) fn emit_op(op: Op<'_>) {
    // The tracing crate's view of the same operation, for the application's
    // own subscribers (or, through tracing's `log` feature, its logger):
    // out of line, behind the first checks its macro makes, so that
    // without listeners the operation's fields stay in registers.
    if tracing::level_enabled!(tracing::Level::TRACE) || log::max_level() >= log::Level::Trace {
        to_tracing(op);
    }
    match STATE.load(Ordering::Acquire) {
        OFF => return,
        ON => {}
        _ => {
            if !attach_slow() {
                return;
            }
        }
    }
    record(op);
}

/// Hands an operation to the `tracing` crate.
#[cold]
#[inline(never)]
fn to_tracing(op: Op<'_>) {
    tracing::trace!(
        target: "ipc_lib",
        kind = op.kind.as_str(),
        channel = op.channel.map_or("", ChannelKind::as_str),
        name = op.name,
        size = op.size,
        msg_id = op.msg_id,
        obj = op.obj,
        obj2 = op.obj2,
        aux = op.aux,
        result = op.result,
        duration_ns = op.duration_ns,
    );
}

/// Writes the record of an operation.
///
/// Inlined into the operation, like the checks before it: called, it
/// read the operation's fields back from the caller's stack with wider
/// loads than the caller had stored them with, and each such load stalled
/// on store forwarding (a third of an event's cost, by `perf annotate`).
/// Inlined, the fields go from registers into the ring slot.
#[inline(always)]
fn record(op: Op<'_>) {
    let at = op.at_ns.unwrap_or_else(Stamp::now);
    let state = thread_state();
    let name = &op.name.as_bytes()[..op.name.len().min(MAX_NAME)];
    // Made in each branch below, not once before them: one record on the
    // stack for both would be stored field by field and then copied with
    // wide loads that stall on store forwarding.
    let raw = || RawEvent {
        ts_ns: at.value,
        pid: PID.load(Ordering::Relaxed),
        tid: state.tid,
        kind: op.kind.code(),
        chan_kind: op
            .channel
            .map_or(ipc_events::raw::chan::NONE, ChannelKind::code),
        // Clamped to MAX_NAME (255) above.
        name_len: name.len() as u16,
        obj: op.obj,
        obj2: op.obj2,
        msg_id: op.msg_id,
        size: op.size,
        result: op.result,
        duration_ns: op.duration_ns,
        aux: op.aux,
        comm: state.comm,
        ..RawEvent::default()
    };
    let lane = match state.lane {
        NO_LANE => take_lane(state),
        lane => lane,
    };
    let base = RING.load(Ordering::Acquire);
    if base.is_null() {
        return; // a fork handler just ran
    }
    let index = if lane == SHARED { SHARED_LANE } else { lane };
    // SAFETY: RING is a live ring of LANES lanes of CAPACITY bytes (attach
    // set all three before RING), never unmapped, and `index` is one of
    // its lanes (take_lane had it from ring::claim).
    let lane = unsafe { Lane::new(base, CAPACITY.load(Ordering::Relaxed), index) };
    if index != SHARED_LANE {
        // SAFETY: this thread claimed the lane from the live ring RING
        // points at (take_lane), which is never unmapped, and writes it
        // alone: the claim is given back only as the thread ends, and a
        // forked child starts over. Names are clamped to MAX_NAME.
        unsafe { ring::write_owned(&lane, &raw(), name, at.clock) };
    } else {
        write_shared(&lane, &raw(), name, at.clock);
    }
}

/// The shared lane's write, out of line: threads beyond the lanes, and
/// the compare-and-swap loop, are the uncommon case.
#[inline(never)]
fn write_shared(lane: &Lane, raw: &RawEvent, name: &[u8], clock: u32) {
    // SAFETY: the shared lane of the live ring RING points at, which any
    // thread may write; names are clamped to MAX_NAME.
    unsafe { ring::write_shared(lane, raw, name, clock) };
}

/// This thread's lane, on its first event: a lane of its own if one is
/// free, else [`SHARED`]; [`SHARED`] too when there is no ring (a fork
/// handler just ran), unremembered.
#[cold]
#[inline(never)]
fn take_lane(state: ThreadState) -> u32 {
    let base = RING.load(Ordering::Acquire);
    if base.is_null() {
        return SHARED;
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let lanes = LANES.load(Ordering::Relaxed);
    // Claimed only while the guard can give it back: not once this
    // thread's thread-locals are being torn down.
    let claimed = LANE_GUARD
        .try_with(|guard| {
            // SAFETY: RING is a live ring of LANES lanes of CAPACITY bytes
            // (attach set all three before RING), never unmapped.
            let (index, lane) = unsafe { ring::claim(base, lanes, capacity, state.tid) }?;
            guard.0.set(Some((base as usize, lane)));
            Some(index)
        })
        .ok()
        .flatten();
    let lane = claimed.unwrap_or(SHARED);
    THREAD.with(|t| t.set(ThreadState { lane, ..state }));
    lane
}

/// One `msg_recv` event exactly as a channel receive emits it, for the
/// channel benchmark to time the tracer alone (`bench-internals` feature;
/// not part of the API). Inlined, as `emit` is into every operation, so
/// that the benchmark times what an operation pays and not a call.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[inline]
pub fn bench_emit_msg_recv(name: &str, size: u64, msg_id: u64) {
    emit(
        EventKind::MsgRecv,
        ChannelKind::IpclibChannel,
        name,
        size,
        msg_id,
    );
}

/// Labels the calling process with its role (`"worker-3"`), for
/// ipcscope to name it by: the label is traced as a `process_title`, the
/// event a process renaming itself makes, and stored as the process's
/// `title`, which the dashboard and the report show in place of its comm.
/// The latest label wins. It belongs to this process alone: a forked
/// child starts without one. At most 255 bytes are kept; without a
/// recorder this costs what any untraced operation does.
pub fn set_role(role: &str) {
    emit_op(Op {
        name: role,
        ..Op::without_object(EventKind::ProcessTitle)
    });
}

/// The time now when tracing is on (and no clock read when it is off): for
/// [`Op::at_ns`].
#[inline]
pub(crate) fn now_if_enabled() -> Option<Stamp> {
    enabled().then(Stamp::now)
}

/// Events this process's ring refused because it was full (every lane's).
pub fn dropped() -> u64 {
    let Some(base) = NonNull::new(RING.load(Ordering::Acquire)) else {
        return 0;
    };
    let (capacity, lanes) = (
        CAPACITY.load(Ordering::Relaxed),
        LANES.load(Ordering::Relaxed),
    );
    (0..lanes)
        .map(|i| {
            // SAFETY: RING points at a live MAP_SHARED mapping of LANES
            // lanes of CAPACITY bytes that attach() initialised and that is
            // never unmapped (it lives until the process ends).
            let lane = unsafe { Lane::new(base.as_ptr(), capacity, i) };
            lane.header().dropped.load(Ordering::Relaxed)
        })
        .sum()
}

#[cold]
#[inline(never)]
fn attach_slow() -> bool {
    match STATE.compare_exchange(UNKNOWN, INITIALIZING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            let on = match std::env::var_os(SOCKET_ENV) {
                None => false,
                Some(path) => match attach(&path) {
                    Ok(()) => true,
                    Err(e) => {
                        // Tracing must never break the application: say why
                        // once and carry on untraced.
                        eprintln!(
                            "ipc-lib: not tracing: cannot attach to ipcscope at {}: {e}",
                            path.to_string_lossy()
                        );
                        false
                    }
                },
            };
            STATE.store(if on { ON } else { OFF }, Ordering::Release);
            on
        }
        Err(_) => {
            // Another thread is attaching; it takes microseconds.
            while STATE.load(Ordering::Acquire) == INITIALIZING {
                std::thread::yield_now();
            }
            STATE.load(Ordering::Acquire) == ON
        }
    }
}

fn attach(path: &std::ffi::OsStr) -> io::Result<()> {
    let capacity = std::env::var("IPCSCOPE_RING_BYTES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(DEFAULT_CAPACITY, |c| {
            c.clamp(MIN_CAPACITY, MAX_CAPACITY).next_power_of_two()
        });
    let lanes = std::env::var("IPCSCOPE_RING_LANES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(DEFAULT_LANES, |l| l.clamp(1, MAX_LANES));
    let len = ring::ring_len(lanes, capacity).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no ring of {lanes} lanes of {capacity} bytes"),
        )
    })?;
    // The recorder first: it must know a ring is coming before the probes
    // see it mapped.
    let socket = connect(path)?;
    await_answer(&socket, ring::READY)?;
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no
    // other preconditions.
    let fd = unsafe {
        libc::memfd_create(
            c"ipcscope-ring".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on our own fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The collector maps this memory: sealing its size means no one (this
    // process included) can shrink it under that mapping and crash the
    // collector with SIGBUS. The collector refuses unsealed rings.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on our own memfd, created with MFD_ALLOW_SEALING.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: mapping len bytes of a file we just sized to len; the result
    // is checked against MAP_FAILED before use.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let pid = std::process::id();
    // SAFETY: base is a fresh, zeroed, page-aligned mapping of
    // ring_len(lanes, capacity) bytes that nothing else references yet.
    unsafe { ring::init(base.cast(), lanes, capacity, pid) };
    match send_with_fd(&socket, &Hello::new(pid).to_bytes(), fd.as_raw_fd()) {
        Ok(()) => {}
        // The recorder checks who connected before it reads a byte, and
        // closes on a stranger: the hello can meet a closed socket.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(refused())
        }
        Err(e) => return Err(e),
    }
    await_answer(&socket, ring::ACCEPTED)?;

    PID.store(pid, Ordering::Relaxed);
    CAPACITY.store(capacity, Ordering::Relaxed);
    LANES.store(lanes, Ordering::Relaxed);
    TSC.store(tsc_is_usable(), Ordering::Relaxed);
    RING.store(base.cast(), Ordering::Release);
    SOCKET.store(
        std::os::fd::IntoRawFd::into_raw_fd(socket),
        Ordering::Relaxed,
    );
    register_atfork();
    Ok(())
}

/// The recorder said no (it closes the socket on a process it does not
/// admit, and logs why).
fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the recorder refused this process (see its log)",
    )
}

/// How long a process waits for the recorder to take its ring: far above
/// the microseconds it takes, so only a stuck recorder is given up on.
const ACCEPT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for the recorder's `expected` answer: [`ring::READY`] to the
/// connection, [`ring::ACCEPTED`] to the registration (the process stays
/// alive, and its parents known, while the recorder checks it). Anything
/// else, or the socket closed, is a refusal.
fn await_answer(socket: &UnixStream, expected: u8) -> io::Result<()> {
    use std::io::Read;
    socket.set_read_timeout(Some(ACCEPT_PATIENCE))?;
    let mut answer = [0u8; 1];
    let read = (&*socket).read(&mut answer);
    socket.set_read_timeout(None)?;
    match read {
        Ok(1) if answer[0] == expected => Ok(()),
        // Closed on us: with the registration unread, as a reset.
        Ok(_) => Err(refused()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(refused()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the recorder did not answer within {ACCEPT_PATIENCE:?}"),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Connects to the recorder: `@name` is a socket in the abstract
/// namespace (what `ipcscope record` gives), anything else a path.
fn connect(address: &std::ffi::OsStr) -> io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match address.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            UnixStream::connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)
        }
        None => UnixStream::connect(address),
    }
}

fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: i32) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // Room for one fd, aligned as cmsghdr requires.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
    debug_assert!(space <= size_of_val(&control));
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` writable, aligned bytes, so the
    // first header and its data fit; CMSG_* only compute addresses in it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
    }
    // SAFETY: msg and everything it points to live across the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    match sent {
        n if n == bytes.len() as isize => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short registration write",
        )),
    }
}

fn register_atfork() {
    static REGISTERED: AtomicU8 = AtomicU8::new(0);
    if REGISTERED.swap(1, Ordering::Relaxed) == 0 {
        // SAFETY: the handler is a plain extern "C" fn that only touches
        // atomics, a thread-local Cell and close(2): all async-signal-safe
        // enough for the child side of fork.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    }
}

/// In a forked child: forget the parent's ring and socket, so the first
/// traced operation attaches a ring of the child's own.
extern "C" fn after_fork_in_child() {
    RING.store(ptr::null_mut(), Ordering::Release);
    let fd = SOCKET.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: fd was our registration socket, inherited by this child;
        // the parent keeps its own copy.
        unsafe { libc::close(fd) };
    }
    THREAD.with(|t| t.set(UNREAD));
    // The lane this thread claimed is its parent's thread's to give back.
    let _ = LANE_GUARD.try_with(|guard| guard.0.take());
    STATE.store(UNKNOWN, Ordering::Release);
}

/// Whether to stamp events with the raw TSC: on x86_64, where the TSC
/// ticks at one rate in every power state (`constant_tsc`, `nonstop_tsc`)
/// and the kernel keeps its own time with it (clocksource `tsc`: it found
/// the CPUs' counters in step, else it would have fallen back to another
/// clock). `IPCSCOPE_CLOCK=monotonic` says no whatever the machine.
fn tsc_is_usable() -> bool {
    if std::env::var_os("IPCSCOPE_CLOCK").is_some_and(|c| c == "monotonic") {
        return false;
    }
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let clocksource =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if clocksource.ok().as_deref().map(str::trim) != Some("tsc") {
        return false;
    }
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |flag: &str| flags.split_ascii_whitespace().any(|f| f == flag);
    has("constant_tsc") && has("nonstop_tsc")
}

#[inline(always)]
fn thread_state() -> ThreadState {
    let state = THREAD.with(Cell::get);
    if state.tid != 0 {
        return state;
    }
    read_thread_state()
}

#[cold]
#[inline(never)]
fn read_thread_state() -> ThreadState {
    THREAD.with(|t| {
        // The cache must not outlive a fork (semaphore holders are named
        // by it even when tracing is off), so the fork handler that clears
        // it is registered with the first cached value.
        register_atfork();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let mut comm = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) };
        let state = ThreadState {
            tid,
            comm,
            lane: NO_LANE,
        };
        t.set(state);
        state
    })
}

/// The calling thread's id (cached: gettid is a syscall).
pub(crate) fn current_tid() -> u32 {
    thread_state().tid
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every event is stamped with,
/// for operations that measure their own duration.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid and writable; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_knows_its_own_thread_id() {
        // SAFETY: gettid has no preconditions.
        assert_eq!(current_tid(), unsafe { libc::gettid() } as u32);
        // SAFETY: the child reads a thread-local Cell, calls gettid and
        // _exit; nothing it touches can be held by another thread.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            let ok = current_tid() == unsafe { libc::gettid() } as u32;
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert!(child > 0);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
