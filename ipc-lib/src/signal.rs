//! Signals: [`send`] one to a process, and [`Signals`], which turns the
//! signals this process receives into a stream to read at leisure.
//!
//! Both are traced: a send is a `signal_generate` (`obj` the target pid,
//! `aux` the signal number, `result` 0 or the negated errno), and each
//! signal the stream yields is a `signal_handle` (`aux` the signal number,
//! `obj` the sender's pid when the kernel names one, `duration_ns` the time
//! from the handler running to the stream yielding it).
//!
//! # Why a self-pipe and not signalfd
//!
//! `signalfd` only sees a signal that is blocked in every thread of the
//! process; a library cannot block it in threads that already exist (a
//! tokio runtime's workers, say), and a signal that reaches such a thread
//! runs its default action instead. So [`Signals`] installs a handler
//! (`SA_SIGINFO`) that does the only async-signal-safe thing needed: it
//! writes a 16-byte record (signal, sender pid, time) into a non-blocking
//! pipe, which the stream reads. A write that finds the pipe full (more
//! than 4096 signals not yet read) is counted, never silently dropped:
//! [`Signals::overflowed`].
//!
//! Each signal number has one pipe for the life of the process, never
//! closed: a handler already running on another thread while a [`Signals`]
//! is dropped can then never write into a descriptor that was closed and
//! reused for something else.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::signal::{self, Signals, Signal};
//!
//! let usr = Signal::new(libc::SIGRTMIN() + 7)?;
//! let mut signals = Signals::new(&[usr])?;
//! signal::send(std::process::id(), usr)?;
//! let got = signals.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!(got.signal, usr);
//! assert_eq!(got.sender_pid, Some(std::process::id()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::mem::zeroed;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipc_events::EventKind;

use crate::trace::{self, monotonic_ns, Op};

/// Signal numbers 1..=64 (Linux's `_NSIG` is 65).
const NSIG: usize = 65;
/// Bytes of one record in a signal's pipe: signal, sender pid, time.
const RECORD: usize = 16;

/// A signal number, checked to be one Linux has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(libc::c_int);

/// `SIGHUP`.
pub const SIGHUP: Signal = Signal(libc::SIGHUP);
/// `SIGINT`.
pub const SIGINT: Signal = Signal(libc::SIGINT);
/// `SIGTERM`.
pub const SIGTERM: Signal = Signal(libc::SIGTERM);
/// `SIGUSR1`.
pub const SIGUSR1: Signal = Signal(libc::SIGUSR1);
/// `SIGUSR2`.
pub const SIGUSR2: Signal = Signal(libc::SIGUSR2);
/// `SIGCHLD`.
pub const SIGCHLD: Signal = Signal(libc::SIGCHLD);
/// `SIGKILL` (can be sent, not handled).
pub const SIGKILL: Signal = Signal(libc::SIGKILL);

impl Signal {
    /// Signal number `signo`, if Linux has one (1 to 64).
    pub fn new(signo: i32) -> Result<Signal, SignalError> {
        if (1..NSIG as i32).contains(&signo) {
            Ok(Signal(signo))
        } else {
            Err(SignalError::Invalid { signo })
        }
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        self.0
    }
}

/// What went wrong with a signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// Not a signal number Linux has.
    #[error("{signo} is not a signal number")]
    Invalid { signo: i32 },
    /// Not a pid a signal can be sent to (0 and values above `i32::MAX`
    /// would name process groups or nothing).
    #[error("{pid} is not a process id")]
    InvalidPid { pid: u32 },
    /// No such process.
    #[error("no process {pid}")]
    NoSuchProcess { pid: u32 },
    /// The process belongs to someone this one may not signal.
    #[error("not permitted to signal process {pid}")]
    NotPermitted { pid: u32 },
    /// The signal cannot be caught: SIGKILL and SIGSTOP never reach a
    /// handler, and a handler returning from SIGSEGV, SIGBUS, SIGFPE or
    /// SIGILL would re-run the faulting instruction forever.
    #[error("signal {signo} cannot be handled as a stream")]
    Uncatchable { signo: i32 },
    /// Another live [`Signals`] in this process already takes this signal.
    #[error("signal {signo} is already taken by another Signals")]
    AlreadyHandled { signo: i32 },
    /// `recv_timeout`: none arrived in time.
    #[error("no signal within the timeout")]
    Timeout,
    /// `try_recv`: none is waiting.
    #[error("no signal is waiting")]
    Empty,
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Sends `signal` to process `pid`, traced as `signal_generate`.
pub fn send(pid: u32, signal: Signal) -> Result<(), SignalError> {
    let Ok(target) = libc::pid_t::try_from(pid) else {
        return Err(SignalError::InvalidPid { pid });
    };
    if target == 0 {
        return Err(SignalError::InvalidPid { pid });
    }
    // Stamped before the kill: the target may handle it before we return.
    let at = monotonic_ns();
    // SAFETY: kill has no memory preconditions; a positive pid names one
    // process.
    let r = unsafe { libc::kill(target, signal.0) };
    let err = (r != 0).then(io::Error::last_os_error);
    trace::emit_op(Op {
        obj: u64::from(pid),
        aux: signal.0 as u64,
        at_ns: Some(trace::Stamp::ns(at)),
        result: err
            .as_ref()
            .and_then(io::Error::raw_os_error)
            .map_or(0, |e| -i64::from(e)),
        ..Op::without_object(EventKind::SignalGenerate)
    });
    match err {
        None => Ok(()),
        Some(e) => Err(match e.raw_os_error() {
            Some(libc::ESRCH) => SignalError::NoSuchProcess { pid },
            Some(libc::EPERM) => SignalError::NotPermitted { pid },
            _ => SignalError::Os {
                op: "kill",
                source: e,
            },
        }),
    }
}

/// One signal the stream yielded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Which signal.
    pub signal: Signal,
    /// The process that sent it, when a process did (`kill`, `sigqueue`,
    /// `tgkill`); `None` when the kernel raised it.
    pub sender_pid: Option<u32>,
}

/// Per signal number: the pipe's ends (-1 until first used) and the
/// records lost to a full pipe. Statics, because the handler can reach
/// nothing else.
struct Slot {
    read: AtomicI32,
    write: AtomicI32,
    overflowed: AtomicU64,
}

#[expect(
    clippy::declare_interior_mutable_const,
    reason = "only the array initialiser below uses it, once per element"
)]
const EMPTY: Slot = Slot {
    read: AtomicI32::new(-1),
    write: AtomicI32::new(-1),
    overflowed: AtomicU64::new(0),
};
static SLOTS: [Slot; NSIG] = [EMPTY; NSIG];

/// The previous action of each signal a live [`Signals`] has taken; the
/// lock also orders installs against restores.
static TAKEN: Mutex<[Option<libc::sigaction>; NSIG]> = Mutex::new([None; NSIG]);

extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let Some(slot) = usize::try_from(signo).ok().and_then(|i| SLOTS.get(i)) else {
        return;
    };
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's errno intact.
    let errno = unsafe { *libc::__errno_location() };
    let mut pid = 0u32;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; si_pid
        // is meaningful when si_code <= 0 (sent by a process).
        unsafe {
            if (*info).si_code <= 0 {
                pid = (*info).si_pid() as u32;
            }
        }
    }
    let mut rec = [0u8; RECORD];
    rec[0..4].copy_from_slice(&(signo as u32).to_le_bytes());
    rec[4..8].copy_from_slice(&pid.to_le_bytes());
    rec[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
    let fd = slot.write.load(Ordering::Acquire);
    // SAFETY: write(2) and clock_gettime (in monotonic_ns) are
    // async-signal-safe; fd is a pipe that is never closed; the record
    // (16 bytes < PIPE_BUF) is written whole or not at all.
    let n = unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
    if n != RECORD as isize {
        slot.overflowed.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Signals this process receives, as a stream.
///
/// Only one `Signals` at a time may take a given signal; dropping it puts
/// back the action the signal had before.
#[derive(Debug)]
pub struct Signals {
    /// `epoll` registered with tokio, made on first async use; declared
    /// before `epoll` so it is deregistered before that closes.
    #[cfg(feature = "tokio")]
    registration: Option<crate::asyncio::Registration>,
    /// One descriptor over all our pipes, for tokio to watch.
    #[cfg(feature = "tokio")]
    epoll: Option<crate::socket::sys::Epoll>,
    /// The signals taken, with their pipes' read ends.
    taken: Vec<(Signal, libc::c_int)>,
    /// Where the last search for a record stopped, so that one busy signal
    /// does not starve the others.
    next: usize,
}

impl Signals {
    /// Starts catching `signals`; from now on each one delivered to this
    /// process is queued for [`recv`](Self::recv).
    pub fn new(signals: &[Signal]) -> Result<Signals, SignalError> {
        let mut table = TAKEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut wanted: Vec<Signal> = signals.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        for s in &wanted {
            let signo = s.0;
            if [
                libc::SIGKILL,
                libc::SIGSTOP,
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
            ]
            .contains(&signo)
            {
                return Err(SignalError::Uncatchable { signo });
            }
            if table[signo as usize].is_some() {
                return Err(SignalError::AlreadyHandled { signo });
            }
        }
        let mut taken = Vec::with_capacity(wanted.len());
        for s in wanted {
            match take(&mut table, s) {
                Ok(read) => taken.push((s, read)),
                Err(e) => {
                    for (s, _) in taken {
                        restore(&mut table, s);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Signals {
            #[cfg(feature = "tokio")]
            registration: None,
            #[cfg(feature = "tokio")]
            epoll: None,
            taken,
            next: 0,
        })
    }

    /// The signals this stream takes.
    pub fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        self.taken.iter().map(|(s, _)| *s)
    }

    /// Signals lost because more than the pipe holds arrived unread, since
    /// the process began (per signal number, summed over ours).
    pub fn overflowed(&self) -> u64 {
        self.taken
            .iter()
            .map(|(s, _)| SLOTS[s.0 as usize].overflowed.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits for the next signal.
    pub fn recv(&mut self) -> Result<Delivered, SignalError> {
        self.wait(None, SignalError::Timeout)
    }

    /// Waits at most `timeout` for the next signal.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivered, SignalError> {
        self.wait(Instant::now().checked_add(timeout), SignalError::Timeout)
    }

    /// The next signal if one is waiting.
    pub fn try_recv(&mut self) -> Result<Delivered, SignalError> {
        self.wait(Some(Instant::now()), SignalError::Empty)
    }

    /// The signals as a blocking iterator; it ends only on an error (none
    /// is expected short of the system failing).
    pub fn forever(&mut self) -> impl Iterator<Item = Delivered> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        none: SignalError,
    ) -> Result<Delivered, SignalError> {
        loop {
            if let Some(d) = self.read_one()? {
                return Ok(d);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(none);
            }
            let mut fds: Vec<libc::pollfd> = self
                .taken
                .iter()
                .map(|(_, fd)| libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = left.map_or(-1, |t| {
                t.as_nanos()
                    .div_ceil(1_000_000)
                    .min(libc::c_int::MAX as u128) as libc::c_int
            });
            // SAFETY: fds is a live array of fds.len() pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                // Our own signals interrupt poll: look again.
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(SignalError::Os {
                        op: "poll",
                        source: e,
                    });
                }
            }
        }
    }

    /// One record from whichever pipe has one, starting after the last
    /// pipe read; traced.
    fn read_one(&mut self) -> Result<Option<Delivered>, SignalError> {
        let n = self.taken.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let (signal, fd) = self.taken[i];
            let Some(rec) = read_record(fd)? else {
                continue;
            };
            self.next = i + 1;
            let pid = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            let at = u64::from_le_bytes([
                rec[8], rec[9], rec[10], rec[11], rec[12], rec[13], rec[14], rec[15],
            ]);
            trace::emit_op(Op {
                obj: u64::from(pid),
                aux: signal.0 as u64,
                duration_ns: monotonic_ns().saturating_sub(at),
                ..Op::without_object(EventKind::SignalHandle)
            });
            return Ok(Some(Delivered {
                signal,
                sender_pid: (pid != 0).then_some(pid),
            }));
        }
        Ok(None)
    }
}

#[cfg(feature = "tokio")]
impl Signals {
    /// [`recv`](Self::recv) for async code: waits on the reactor, never
    /// blocking the thread. Call it in a loop for a stream of signals.
    pub async fn recv_async(&mut self) -> Result<Delivered, SignalError> {
        use tokio::io::Interest;

        let os = |op| move |source| SignalError::Os { op, source };
        let epoll = match self.epoll.take() {
            Some(e) => e,
            None => {
                let e = crate::socket::sys::Epoll::new().map_err(os("epoll_create1"))?;
                for (_, fd) in &self.taken {
                    e.add(*fd).map_err(os("epoll_ctl"))?;
                }
                e
            }
        };
        let fd = epoll.raw();
        self.epoll = Some(epoll);
        // SAFETY: the registration lives in self.registration or in this
        // call; self.registration is declared (so dropped) before
        // self.epoll, which owns fd and is not replaced once set.
        let reg = unsafe { crate::asyncio::take(&mut self.registration, fd, Interest::READABLE) }
            .map_err(os("tokio register"))?;
        let r = crate::asyncio::retry(
            &reg,
            Interest::READABLE,
            || self.read_one(),
            os("tokio ready"),
        )
        .await;
        self.registration = Some(reg);
        r
    }
}

/// Reads one whole record, or `None` when the pipe is empty. Records are
/// written whole (atomic pipe writes) and read whole, so a pipe only ever
/// holds whole records.
fn read_record(fd: libc::c_int) -> Result<Option<[u8; RECORD]>, SignalError> {
    let mut rec = [0u8; RECORD];
    loop {
        // SAFETY: rec is valid for RECORD bytes of writes.
        let n = unsafe { libc::read(fd, rec.as_mut_ptr().cast(), RECORD) };
        if n == RECORD as isize {
            return Ok(Some(rec));
        }
        let e = io::Error::last_os_error();
        match (n, e.kind()) {
            (-1, io::ErrorKind::Interrupted) => continue,
            (-1, io::ErrorKind::WouldBlock) => return Ok(None),
            (-1, _) => {
                return Err(SignalError::Os {
                    op: "read",
                    source: e,
                })
            }
            _ => {
                return Err(SignalError::Os {
                    op: "read",
                    source: io::Error::other(format!("short read of {n} bytes from a signal pipe")),
                })
            }
        }
    }
}

/// Makes `s`'s pipe if it has none, empties it of records from an earlier
/// `Signals`, installs the handler, and remembers the old action.
fn take(
    table: &mut [Option<libc::sigaction>; NSIG],
    s: Signal,
) -> Result<libc::c_int, SignalError> {
    let slot = &SLOTS[s.0 as usize];
    if slot.read.load(Ordering::Acquire) < 0 {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(SignalError::Os {
                op: "pipe2",
                source: io::Error::last_os_error(),
            });
        }
        slot.read.store(fds[0], Ordering::Release);
        slot.write.store(fds[1], Ordering::Release);
    }
    let read = slot.read.load(Ordering::Acquire);
    while read_record(read)?.is_some() {}
    // SAFETY: sigaction is plain old data; the handler has the SA_SIGINFO
    // signature and only does async-signal-safe things.
    let mut new: libc::sigaction = unsafe { zeroed() };
    new.sa_sigaction = on_signal as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: a valid mask to empty.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { zeroed() };
    // SAFETY: valid pointers to sigaction structs; the signal was checked
    // to be catchable.
    if unsafe { libc::sigaction(s.0, &new, &mut old) } != 0 {
        return Err(SignalError::Os {
            op: "sigaction",
            source: io::Error::last_os_error(),
        });
    }
    table[s.0 as usize] = Some(old);
    Ok(read)
}

/// Puts back the action `s` had before it was taken.
fn restore(table: &mut [Option<libc::sigaction>; NSIG], s: Signal) {
    if let Some(old) = table[s.0 as usize].take() {
        // SAFETY: the action sigaction itself handed back; cannot fail for
        // a signal we installed a handler for.
        unsafe { libc::sigaction(s.0, &old, std::ptr::null_mut()) };
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let mut table = TAKEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (s, _) in &self.taken {
            restore(&mut table, *s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A real-time signal of this test's own, so tests running at once in
    /// this process never take the same one.
    fn rt(k: i32) -> Signal {
        Signal::new(libc::SIGRTMIN() + k).unwrap()
    }

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn every_queued_signal_is_yielded_with_its_sender() {
        let s = rt(1);
        let mut signals = Signals::new(&[s]).unwrap();
        // Real-time signals queue rather than merge: all 200 arrive.
        for _ in 0..200 {
            send(me(), s).unwrap();
        }
        for i in 0..200 {
            let d = signals
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("signal {i}: {e}"));
            assert_eq!(
                d,
                Delivered {
                    signal: s,
                    sender_pid: Some(me())
                }
            );
        }
        assert!(matches!(signals.try_recv(), Err(SignalError::Empty)));
        assert_eq!(signals.overflowed(), 0);
    }

    #[test]
    fn several_signals_on_one_stream_are_all_seen() {
        let (a, b) = (rt(2), rt(3));
        let mut signals = Signals::new(&[a, b, a]).unwrap();
        assert_eq!(signals.signals().collect::<Vec<_>>(), vec![a, b]);
        send(me(), b).unwrap();
        send(me(), a).unwrap();
        let mut got: Vec<_> = (0..2)
            .map(|_| signals.recv_timeout(PATIENCE).unwrap().signal)
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![a, b]);
        assert!(matches!(
            signals.recv_timeout(Duration::from_millis(20)),
            Err(SignalError::Timeout)
        ));
    }

    #[test]
    fn a_signal_is_taken_by_one_stream_at_a_time_and_given_back() {
        let s = rt(4);
        let first = Signals::new(&[s]).unwrap();
        assert!(matches!(
            Signals::new(&[rt(5), s]),
            Err(SignalError::AlreadyHandled { .. })
        ));
        // The failed attempt did not keep rt(5).
        drop(Signals::new(&[rt(5)]).unwrap());
        drop(first);
        let mut again = Signals::new(&[s]).unwrap();
        send(me(), s).unwrap();
        assert_eq!(again.recv_timeout(PATIENCE).unwrap().signal, s);
    }

    #[test]
    fn bad_signals_and_pids_are_refused() {
        assert!(matches!(
            Signal::new(0),
            Err(SignalError::Invalid { signo: 0 })
        ));
        assert!(matches!(Signal::new(65), Err(SignalError::Invalid { .. })));
        for s in [SIGKILL, Signal::new(libc::SIGSEGV).unwrap()] {
            assert!(matches!(
                Signals::new(&[s]),
                Err(SignalError::Uncatchable { .. })
            ));
        }
        assert!(matches!(
            send(0, SIGUSR1),
            Err(SignalError::InvalidPid { pid: 0 })
        ));
        assert!(matches!(
            send(u32::MAX, SIGUSR1),
            Err(SignalError::InvalidPid { .. })
        ));
        // A pid that was reaped and, this soon, not reused.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(
            send(pid, SIGUSR1),
            Err(SignalError::NoSuchProcess { .. })
        ));
    }
}
