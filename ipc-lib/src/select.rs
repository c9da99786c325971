//! Waiting on several things at once: channel receivers, work-queue
//! consumers, rpc servers, semaphores and process exits, blocking with a
//! timeout or as a future.
//!
//! ```no_run
//! use std::time::Duration;
//! use ipc_lib::select::{Process, Select, Source};
//! use ipc_lib::{Receiver, Semaphore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut results = Receiver::builder("results").create()?;
//! let slots = Semaphore::builder("slots").create()?;
//! let worker = std::process::Command::new("worker").spawn()?;
//! let exit = Process::from_child(&worker)?;
//! let mut select = Select::new();
//! loop {
//!     let sources = &mut [
//!         Source::from(&mut results),
//!         Source::from(&slots),
//!         Source::from(&exit),
//!     ];
//!     match select.wait(sources, Some(Duration::from_secs(1)))? {
//!         0 => println!("result: {:?}", results.try_recv()?),
//!         1 => if let Ok(permit) = slots.try_wait() { permit.forget() },
//!         _ => break, // the worker exited: reap it
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Ready, not taken
//!
//! [`Select::wait`] returns the index of a source that is ready and takes
//! nothing from it: the caller then calls `try_recv`, `try_next`,
//! `try_wait`, `next_request(Some(Duration::ZERO))` or `Child::wait` on
//! that one.
//! Why not take it: the sources give different things (bytes, a
//! [`Permit`](crate::sem::Permit) with its holder recorded, an rpc
//! request, an exit status), each with its own errors and trace events,
//! and a select that took a permit the caller then did not want would have
//! to give it back, traced as a post nobody made. Reporting readiness
//! keeps every operation the one the caller wrote.
//!
//! What "ready" means: the source's non-blocking operation would return at
//! once with something other than "nothing yet". A receiver is ready with
//! a message waiting, and also once its senders are gone (its `try_recv`
//! says `Disconnected`) or it found corruption; a queue consumer with a
//! job to take: the next in line, one given back, or one whose consumer
//! died (looked for once a liveness slice, as its blocking `next` does);
//! an rpc server or socket
//! receiver with a frame or a closed connection to read, or once every
//! client has left; a semaphore with a count above zero; a process once it
//! exited (a zombie counts: it has exited, and `wait` reaps it at once).
//! A receiver, server or process has one consumer, so its readiness lasts
//! until the caller acts. A semaphore's count may be taken by another
//! process between the select and the `try_wait`, and a queue's job by
//! another consumer before the `try_next`: the `try_wait` then says
//! `WouldBlock`, the `try_next` `Empty`, and the caller selects again.
//!
//! When several are ready the one returned rotates, starting after the
//! last one returned, so a busy source cannot starve the others.
//!
//! # How it sleeps
//!
//! Two kinds of source wake a sleeper in two ways. Shared-memory sources
//! (channel receivers, queue consumers, semaphores) are words in shared
//! memory that the
//! other process bumps and wakes with FUTEX_WAKE, only when a sleeper has
//! registered in the object's waiters count (the handshake of
//! `channel::ring::park`). Descriptor sources (rpc servers and socket
//! receivers through their epoll set, processes through a pidfd) are
//! woken by the kernel through poll.
//!
//! - Only shared-memory sources: one `futex_waitv` (Linux 5.16) over every
//!   word, at most [`MAX_FUTEX_SOURCES`]. No thread, no descriptor.
//! - Only descriptors: one `poll`.
//! - Both: a futex has no descriptor (FUTEX_FD left Linux in 2.6.26), and
//!   poll takes no futex, so a helper thread, made on first need and kept
//!   by the [`Select`] until it is dropped, sleeps in `futex_waitv` on the
//!   words while the caller polls the descriptors and an eventfd that the
//!   helper writes when a word moves. The helper never touches a source:
//!   it only sleeps on the words the caller hands it for one wait, and the
//!   caller takes them back (waiting for the helper to let go) before the
//!   wait returns.
//!
//! Race-free in every case, as a receive is: for each shared-memory source
//! the select reads its futex word, registers as a waiter, *then* checks
//! readiness, then sleeps only while the word still holds what it read; a
//! publication after the check bumps the word (the publisher sees the
//! registration), so the sleep returns at once. Descriptors are
//! level-triggered: one that turned ready before the sleep makes poll
//! return at once.
//!
//! Sleeps last at most a liveness slice (20 ms), after which a receiver's
//! senders, a queue's consumers holding jobs and producers writing them,
//! and a semaphore's holders are asked whether they live, as a blocking
//! receive or wait does: a sender that dies is noticed within a slice,
//! and so is a consumer that died holding a job (its job is ready for
//! the others).
//!
//! A semaphore post wakes one sleeper. If a select is that sleeper and its
//! caller then does not take the count, a thread blocked in `wait` on the
//! same semaphore sees the count at its next slice (20 ms), not at once.
//!
//! # Async
//!
//! [`Select::wait_async`] (feature `tokio`) registers the descriptor
//! sources with tokio's reactor (duplicates of them, so a source's own
//! async registration is untouched) and parks no blocking-pool thread.
//! Shared-memory sources cannot be registered with a reactor (no
//! descriptor, as above), so for them the same helper thread sleeps on the
//! words and writes an eventfd registered with the reactor: one dedicated
//! thread per [`Select`] that has waited on shared-memory sources, reused
//! across waits, asleep in the kernel, never a runtime or blocking-pool
//! thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::Receiver;
use crate::queue::Consumer;
use crate::rpc::Server;
use crate::sem::Semaphore;
use crate::socket::SocketReceiver;

/// How often a sleeping select asks whether a receiver's senders and a
/// semaphore's holders still live (as their own blocking waits do).
const SLICE: Duration = Duration::from_millis(20);

/// The most shared-memory sources (receivers, consumers, semaphores) one select
/// takes: `futex_waitv` takes 128 words, and one is the helper's own.
pub const MAX_FUTEX_SOURCES: usize = 127;

/// Something to wait on. Made with `From`: `Source::from(&mut rx)`,
/// `(&sem).into()`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Source<'a> {
    /// A shared-memory channel's receiving end: a message to receive (or
    /// `Disconnected`).
    Receiver(&'a mut Receiver),
    /// A work queue's consumer: a job to take.
    Consumer(&'a mut Consumer),
    /// A semaphore: a count to take.
    Semaphore(&'a Semaphore),
    /// An rpc server: a request to answer.
    Server(&'a mut Server),
    /// A socket channel's receiving end: a message to receive.
    Socket(&'a mut SocketReceiver),
    /// A process: its exit.
    Process(&'a Process),
}

impl<'a> From<&'a mut Receiver> for Source<'a> {
    fn from(r: &'a mut Receiver) -> Self {
        Source::Receiver(r)
    }
}

impl<'a> From<&'a mut Consumer> for Source<'a> {
    fn from(c: &'a mut Consumer) -> Self {
        Source::Consumer(c)
    }
}

impl<'a> From<&'a Semaphore> for Source<'a> {
    fn from(s: &'a Semaphore) -> Self {
        Source::Semaphore(s)
    }
}

impl<'a> From<&'a mut Server> for Source<'a> {
    fn from(s: &'a mut Server) -> Self {
        Source::Server(s)
    }
}

impl<'a> From<&'a mut SocketReceiver> for Source<'a> {
    fn from(s: &'a mut SocketReceiver) -> Self {
        Source::Socket(s)
    }
}

impl<'a> From<&'a Process> for Source<'a> {
    fn from(p: &'a Process) -> Self {
        Source::Process(p)
    }
}

/// Why a select returned no source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No source became ready within the timeout.
    #[error("no source became ready within the timeout")]
    Timeout,
    /// The select was given no source: it would wait for nothing.
    #[error("nothing to wait on: no sources")]
    NoSources,
    /// More shared-memory sources than one `futex_waitv` takes.
    #[error("{count} shared-memory sources, at most {max} can be waited on at once")]
    TooManySources { count: usize, max: usize },
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn os(op: &'static str) -> impl Fn(io::Error) -> SelectError {
    move |source| SelectError::Os { op, source }
}

/// A process whose exit can be waited on, through a pidfd (Linux 5.3).
/// Holding the pidfd pins the process: a recycled pid is never taken for
/// it.
#[derive(Debug)]
pub struct Process {
    fd: OwnedFd,
    pid: u32,
}

impl Process {
    /// Watches process `pid`. Open it while the process surely lives (a
    /// child not yet reaped, as [`from_child`](Self::from_child) does), or
    /// the pid may already name another process.
    pub fn open(pid: u32) -> io::Result<Process> {
        let pid_t =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Process { fd, pid })
    }

    /// Watches a child this process spawned (and has not reaped: its pid
    /// is still its own).
    pub fn from_child(child: &std::process::Child) -> io::Result<Process> {
        Process::open(child.id())
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has exited (reaped or not).
    pub fn has_exited(&self) -> bool {
        readable(self.fd.as_fd())
    }
}

impl AsFd for Process {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether `fd` polls readable now.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

impl Source<'_> {
    /// Whether the source is ready (see the module docs); `check` asks
    /// the kernel about peers too, which costs syscalls.
    fn ready(&mut self, check: bool) -> bool {
        match self {
            Source::Receiver(r) => r.select_ready(check),
            Source::Consumer(c) => c.select_ready(check),
            Source::Semaphore(s) => {
                let (count, _) = s.wake_words();
                // SeqCst: the check half of the handshake with a post.
                if count.load(SeqCst) > 0 {
                    return true;
                }
                if check {
                    s.recover_dead();
                }
                count.load(SeqCst) > 0
            }
            Source::Server(s) => s.socket_mut().select_ready(),
            Source::Socket(s) => s.select_ready(),
            Source::Process(p) => p.has_exited(),
        }
    }

    /// The futex word and waiters count of a shared-memory source, and the
    /// value to sleep on: the word as it is now for a channel (a sender
    /// bumps it), zero for a semaphore (its count is the word).
    fn futex(&self) -> Option<(&AtomicU32, &AtomicU32, Option<u32>)> {
        match self {
            Source::Receiver(r) => {
                let (word, waiters) = r.wake_words();
                Some((word, waiters, None))
            }
            Source::Consumer(c) => {
                let (word, waiters) = c.wake_words();
                Some((word, waiters, None))
            }
            Source::Semaphore(s) => {
                let (count, waiters) = s.wake_words();
                Some((count, waiters, Some(0)))
            }
            _ => None,
        }
    }

    fn fd(&self) -> Option<RawFd> {
        match self {
            Source::Server(s) => Some(s.select_fd()),
            Source::Socket(s) => Some(s.select_fd()),
            Source::Process(p) => Some(p.fd.as_raw_fd()),
            _ => None,
        }
    }
}

// ----- futex_waitv -----

const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX2_PRIVATE: u32 = 128;

/// `struct futex_waitv` (include/uapi/linux/futex.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

// SAFETY: it is plain data; the address it holds is only handed to the
// kernel, by whoever the owner of the words lent them to (see `Helper`).
unsafe impl Send for FutexWaitv {}

impl FutexWaitv {
    /// A shared (cross-process) word.
    pub(crate) fn shared(word: &AtomicU32, val: u32) -> Self {
        FutexWaitv {
            val: u64::from(val),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        }
    }

    /// A word of this process only (the helper's control word).
    pub(crate) fn private(word: &AtomicU32, val: u32) -> Self {
        FutexWaitv {
            flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
            ..FutexWaitv::shared(word, val)
        }
    }
}

/// Sleeps until one of `words` is woken or no longer holds its value, or
/// `timeout` passes. Returns on any of these (and on a signal): callers
/// re-check their sources, so the reason does not matter, except a
/// refusal of the call itself (an old kernel: ENOSYS). `Some(i)`: word
/// `i` was woken.
pub(crate) fn futex_waitv(
    words: &[FutexWaitv],
    timeout: Option<Duration>,
) -> io::Result<Option<usize>> {
    let ts = timeout.map(|t| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let nanos = now.tv_nsec as u64 + u64::from(t.subsec_nanos());
        libc::timespec {
            tv_sec: now
                .tv_sec
                .saturating_add(t.as_secs().min(i32::MAX as u64) as libc::time_t)
                .saturating_add((nanos / 1_000_000_000) as libc::time_t),
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        }
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `words` is a live array of `futex_waitv` structs whose
    // addresses are live, aligned u32 words (each borrowed from a mapping
    // or from the helper's state for the whole call); the timespec
    // outlives the call; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            words.as_ptr(),
            words.len() as libc::c_uint,
            0u32,
            ts_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(usize::try_from(r).ok())
}

pub(crate) fn wake_private(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses its
    // address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn poll_many(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| {
        // Rounded up, so a sub-millisecond remainder still sleeps.
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
    });
    // SAFETY: `fds` is a live, writable array of pollfds.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn eventfd_write(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array; a failure (the counter
    // full) leaves it readable, which is all a write is for.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

fn eventfd_drain(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live array; non-blocking.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
}

// ----- the helper thread -----

/// What the caller asks of the helper.
#[derive(Debug)]
enum Job {
    Idle,
    /// Sleep on these words (the last is the control word) and write the
    /// eventfd when one moves.
    Watch(Vec<FutexWaitv>),
    Exit,
}

#[derive(Debug)]
struct HelperState {
    job: Job,
    /// The helper holds (sleeps on) words it was lent.
    busy: bool,
}

#[derive(Debug)]
struct HelperShared {
    /// Bumped (and woken) to call the helper out of its sleep.
    control: AtomicU32,
    state: Mutex<HelperState>,
    changed: Condvar,
    /// Written when a watched word moves; what the caller polls.
    event: OwnedFd,
}

impl HelperShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HelperState> {
        // The state is two plain fields, valid after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread that sleeps on shared-memory words for a caller that must
/// sleep in poll (see the module docs).
#[derive(Debug)]
struct Helper {
    shared: Arc<HelperShared>,
    thread: Option<JoinHandle<()>>,
}

impl Helper {
    fn new() -> io::Result<Helper> {
        let shared = Arc::new(HelperShared {
            control: AtomicU32::new(0),
            state: Mutex::new(HelperState {
                job: Job::Idle,
                busy: false,
            }),
            changed: Condvar::new(),
            event: new_eventfd()?,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ipc-lib-select".into())
            .spawn(move || helper_loop(&s))?;
        Ok(Helper {
            shared,
            thread: Some(thread),
        })
    }

    fn shared(&self) -> Arc<HelperShared> {
        Arc::clone(&self.shared)
    }
}

impl HelperShared {
    /// Lends the helper `words` until [`reclaim`](Self::reclaim). The
    /// caller must call `reclaim` before the words' mappings can go.
    fn lend(&self, mut words: Vec<FutexWaitv>) {
        eventfd_drain(&self.event);
        let mut st = self.lock();
        // Read under the lock: a reclaim bumps it under the lock too, so
        // the helper's sleep either sees the bump or is woken by it.
        let seq = self.control.load(SeqCst);
        words.push(FutexWaitv::private(&self.control, seq));
        st.job = Job::Watch(words);
        self.changed.notify_all();
    }

    /// Takes the words back: when this returns the helper sleeps on none
    /// of them.
    fn reclaim(&self) {
        let mut st = self.lock();
        st.job = Job::Idle;
        while st.busy {
            self.control.fetch_add(1, SeqCst);
            wake_private(&self.control);
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.shared.reclaim();
        self.shared.lock().job = Job::Exit;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn helper_loop(sh: &HelperShared) {
    let mut st = sh.lock();
    loop {
        let words = match std::mem::replace(&mut st.job, Job::Idle) {
            Job::Exit => return,
            Job::Idle => {
                st = sh.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            Job::Watch(words) => words,
        };
        st.busy = true;
        drop(st);
        let seq = words.last().map_or(0, |w| w.val as u32);
        // A slice at most, after which the caller is told anyway: an
        // async caller has no timer of its own for its liveness checks.
        if let Err(e) = futex_waitv(&words, Some(SLICE)) {
            tracing::error!(target: "ipc_lib", "select helper: futex_waitv: {e}");
        }
        // A word moved or a slice passed, unless we were called out: tell
        // the caller.
        if sh.control.load(SeqCst) == seq {
            eventfd_write(&sh.event);
        }
        st = sh.lock();
        st.busy = false;
        sh.changed.notify_all();
    }
}

// ----- the select itself -----

/// One wait's registration as a sleeper on each shared-memory source:
/// made before readiness is checked, undone on drop.
struct Registered {
    words: Vec<FutexWaitv>,
    waiters: Vec<*const AtomicU32>,
}

// SAFETY: the pointers name atomics in shared mappings that the borrowed
// sources keep alive (see `new`); atomics may be used from any thread.
unsafe impl Send for Registered {}

impl Registered {
    /// # Safety
    ///
    /// The sources' mappings must outlive the value (they do: the sources
    /// are borrowed for the whole wait that makes and drops it).
    unsafe fn new(sources: &[Source<'_>]) -> Registered {
        let mut r = Registered {
            words: Vec::new(),
            waiters: Vec::new(),
        };
        for s in sources {
            if let Some((word, waiters, val)) = s.futex() {
                // The word first, then the registration (see `ring::park`).
                let val = val.unwrap_or_else(|| word.load(SeqCst));
                waiters.fetch_add(1, SeqCst);
                r.words.push(FutexWaitv::shared(word, val));
                r.waiters.push(waiters);
            }
        }
        r
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for &w in &self.waiters {
            // SAFETY: see `new`: the mapping outlives this value.
            unsafe { &*w }.fetch_sub(1, SeqCst);
        }
    }
}

/// A reusable wait over several sources; see the module docs. Holds the
/// helper thread, when one was needed, from wait to wait.
#[derive(Debug, Default)]
pub struct Select {
    helper: Option<Helper>,
    /// Where the next readiness scan starts, for fairness.
    next: usize,
}

impl Select {
    /// A select with no helper thread yet.
    pub fn new() -> Select {
        Select::default()
    }

    /// The index of a source that is ready now, without waiting.
    pub fn try_ready(&mut self, sources: &mut [Source<'_>]) -> Option<usize> {
        self.scan(sources, true)
    }

    /// Waits until one of `sources` is ready and returns its index, at most
    /// `timeout` (`None`: for ever). Takes nothing from the source.
    pub fn wait(
        &mut self,
        sources: &mut [Source<'_>],
        timeout: Option<Duration>,
    ) -> Result<usize, SelectError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        Self::check_sources(sources)?;
        if let Some(i) = self.scan(sources, false) {
            return Ok(i);
        }
        let fds: Vec<RawFd> = sources.iter().filter_map(Source::fd).collect();
        let mut last_check = Instant::now();
        loop {
            let now = Instant::now();
            let check = now.duration_since(last_check) >= SLICE;
            if check {
                last_check = now;
            }
            // SAFETY: `sources` is borrowed for this whole call, past the
            // registration's drop at the end of this iteration.
            let reg = unsafe { Registered::new(sources) };
            if let Some(i) = self.scan(sources, check) {
                return Ok(i);
            }
            let slice = match deadline {
                Some(d) if d <= now => return Err(SelectError::Timeout),
                Some(d) => (d - now).min(SLICE),
                None => SLICE,
            };
            match (reg.words.is_empty(), fds.is_empty()) {
                (false, true) => {
                    futex_waitv(&reg.words, Some(slice)).map_err(os("futex_waitv"))?;
                }
                (true, _) => {
                    poll_many(&mut pollfds(&fds, None), Some(slice)).map_err(os("poll"))?
                }
                (false, false) => {
                    let helper = self.helper()?;
                    helper.lend(reg.words.clone());
                    let mut p = pollfds(&fds, Some(helper.event.as_raw_fd()));
                    let r = poll_many(&mut p, Some(slice));
                    helper.reclaim();
                    r.map_err(os("poll"))?;
                }
            }
            drop(reg);
        }
    }

    fn check_sources(sources: &[Source<'_>]) -> Result<(), SelectError> {
        if sources.is_empty() {
            return Err(SelectError::NoSources);
        }
        let count = sources.iter().filter(|s| s.futex().is_some()).count();
        if count > MAX_FUTEX_SOURCES {
            return Err(SelectError::TooManySources {
                count,
                max: MAX_FUTEX_SOURCES,
            });
        }
        Ok(())
    }

    fn helper(&mut self) -> Result<Arc<HelperShared>, SelectError> {
        Ok(match &mut self.helper {
            Some(h) => h.shared(),
            none => none
                .insert(Helper::new().map_err(os("starting the select helper thread"))?)
                .shared(),
        })
    }

    /// The first ready source from `self.next` on, round the ring.
    fn scan(&mut self, sources: &mut [Source<'_>], check: bool) -> Option<usize> {
        let n = sources.len();
        let start = self.next % n.max(1);
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| sources[i].ready(check))?;
        self.next = i + 1;
        Some(i)
    }
}

fn pollfds(fds: &[RawFd], extra: Option<RawFd>) -> Vec<libc::pollfd> {
    fds.iter()
        .copied()
        .chain(extra)
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

/// [`Select::wait`] once, with a select made for the call (a helper
/// thread too, if the sources need one): for a single wait; a loop keeps
/// a [`Select`].
pub fn select(sources: &mut [Source<'_>], timeout: Option<Duration>) -> Result<usize, SelectError> {
    Select::new().wait(sources, timeout)
}

#[cfg(feature = "tokio")]
impl Select {
    /// [`wait`](Self::wait) for async code, without a timeout (wrap it in
    /// `tokio::time::timeout` for one). Descriptor sources wait on the
    /// reactor; shared-memory sources on this select's helper thread,
    /// which wakes the reactor through an eventfd (see the module docs).
    /// Cancel safe: dropping the future takes nothing from any source.
    pub async fn wait_async(&mut self, sources: &mut [Source<'_>]) -> Result<usize, SelectError> {
        use tokio::io::unix::AsyncFd;
        use tokio::io::Interest;

        Self::check_sources(sources)?;
        if let Some(i) = self.scan(sources, false) {
            return Ok(i);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SelectError::Os {
                op: "tokio register",
                source: io::Error::other("wait_async was used outside a tokio runtime"),
            });
        }
        let helper = if sources.iter().any(|s| s.futex().is_some()) {
            Some(self.helper()?)
        } else {
            None
        };
        // Duplicates, registered for this wait only: a source's own
        // registration (its `recv_async`) is another descriptor number, so
        // the two never clash in the reactor.
        let mut fds = sources
            .iter()
            .filter_map(Source::fd)
            .chain(helper.as_ref().map(|h| h.event.as_raw_fd()))
            .map(|fd| {
                let fd = dup(fd).map_err(os("dup"))?;
                // SAFETY: the AsyncFd owns the descriptor, so it stays
                // open, naming the same file, as long as the registration.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| os("tokio register")(e.into_parts().1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_check = Instant::now();
        loop {
            let check = last_check.elapsed() >= SLICE;
            if check {
                last_check = Instant::now();
            }
            // SAFETY: `sources` is borrowed for this whole future, past the
            // registration's drop (a cancelled future drops it too).
            let reg = unsafe { Registered::new(sources) };
            let _lent = helper.as_ref().map(|h| {
                h.lend(reg.words.clone());
                Lent(h)
            });
            if let Some(i) = self.scan(sources, check) {
                return Ok(i);
            }
            std::future::poll_fn(|cx| {
                let mut any = false;
                for r in &mut fds {
                    match r.poll_read_ready_mut(cx) {
                        std::task::Poll::Ready(Ok(mut g)) => {
                            // Cleared before the sources are looked at
                            // again: a readiness after this is a new edge.
                            g.clear_ready();
                            any = true;
                        }
                        std::task::Poll::Ready(Err(e)) => {
                            return std::task::Poll::Ready(Err(os("tokio ready")(e)))
                        }
                        std::task::Poll::Pending => {}
                    }
                }
                if any {
                    std::task::Poll::Ready(Ok(()))
                } else {
                    std::task::Poll::Pending
                }
            })
            .await?;
        }
    }
}

/// Words lent to the helper, taken back on drop: when a wait returns and
/// when its future is dropped mid-wait.
#[cfg(feature = "tokio")]
struct Lent<'a>(&'a HelperShared);

#[cfg(feature = "tokio")]
impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.0.reclaim();
    }
}

#[cfg(feature = "tokio")]
pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor or fails; `fd` is
    // open (borrowed from a live source).
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
