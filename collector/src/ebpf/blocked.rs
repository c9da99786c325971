//! Threads blocked in a receive, found from user space.
//!
//! The probes report a receive when it returns, so a receive that never
//! returns (two processes each reading a pipe that only the other writes)
//! would never be seen at all. Its entry in the probes' `PENDING` map is
//! there the whole time, though: [`BlockedReceives::scan`] reads the map
//! every [`SCAN_EVERY`], and a receive entered at least [`MIN_BLOCKED_NS`]
//! ago becomes a `recv_wait_begin` event stamped with its entry time and
//! naming the threads that could end it: every thread of every process
//! holding the other end open for writing, as `/proc` shows them. Of
//! those, the threads of a process that also has a thread in a wait the
//! graph follows are set apart as *idle* when they are asleep in a sleep,
//! a futex or poll wait or a call on something else (`idle_releasers`):
//! a process blocked in a cycle whose helper thread only sleeps is still
//! in the cycle. Once
//! the entry is gone the wait is over: the receive's own `msg_recv` ended
//! it if a message came, and a `recv_wait_end` does otherwise (end of file,
//! an error, a signal).
//!
//! The holders are looked up in all of `/proc`, traced or not: a process
//! outside the recording that holds the write end could still write, and
//! the analysis must not call a wait hopeless while it can. A wait on an
//! object anyone may send to (a SysV queue, an unconnected datagram
//! socket) names no releasers and so is never part of a deadlock. POSIX
//! queue receives are named by the queue's name, which only the exit reads
//! (from the kernel), so they are not reported here.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use ipc_events::raw::{chan, kind, op, PendingCall};
use ipc_events::{decode_parts, Event, Source};

/// How often the in-flight calls are read: a blocked receive is known at
/// most this long after it reaches [`MIN_BLOCKED_NS`].
pub const SCAN_EVERY: Duration = Duration::from_millis(50);

/// How long a receive must have been blocked before it is reported: half
/// the default deadlock threshold, so a deadlock is still found on time,
/// while the ordinary short waits of a busy consumer cost no `/proc` walk.
pub const MIN_BLOCKED_NS: u64 = 100_000_000;

/// The receives reported blocked and not yet seen to end.
#[derive(Debug, Default)]
pub struct BlockedReceives {
    /// Thread id -> the entry time of the receive reported, and its event
    /// (to end it with).
    reported: HashMap<u32, Event>,
}

impl BlockedReceives {
    /// Compares the calls in flight now (`now_ns`, CLOCK_MONOTONIC) with
    /// those reported before, appending a `recv_wait_begin` for each
    /// receive newly blocked long enough and a `recv_wait_end` for each
    /// reported one that is over. `proc` is the procfs root.
    pub fn scan(
        &mut self,
        in_flight: &[(u32, PendingCall)],
        now_ns: u64,
        proc: &Path,
        out: &mut Vec<Event>,
    ) {
        let blocked: HashMap<u32, &PendingCall> = in_flight
            .iter()
            .filter(|(_, p)| {
                matches!(p.op, op::FD_RECV | op::SYSV_RECV)
                    && now_ns.saturating_sub(p.ts_ns) >= MIN_BLOCKED_NS
            })
            .map(|(tid, p)| (*tid, p))
            .collect();
        let still: HashSet<(u32, u64)> = in_flight.iter().map(|(t, p)| (*t, p.ts_ns)).collect();

        // Ends first: a thread that left one receive and is blocked in the
        // next gets the end of the old wait before the begin of the new.
        self.reported.retain(|tid, begin| {
            if still.contains(&(*tid, begin.ts_ns)) {
                return true;
            }
            // It left at some time after the last scan that saw it and
            // before the entry of whatever it is in now; `now` is the one
            // stamp certain to be after its begin.
            let left_ns = in_flight
                .iter()
                .find(|(t, _)| t == tid)
                .map_or(now_ns, |(_, p)| p.ts_ns.max(begin.ts_ns));
            let mut end = begin.clone();
            end.kind = ipc_events::EventKind::RecvWaitEnd;
            end.ts_ns = left_ns;
            end.duration_ns = Some(left_ns - begin.ts_ns);
            end.releasers = Vec::new();
            out.push(end);
            false
        });

        let mut holders = Holders::new(proc);
        let calls: HashMap<u32, &PendingCall> = in_flight.iter().map(|(t, p)| (*t, p)).collect();
        // Processes with a thread in a wait the graph follows: those whose
        // other threads may be left out of the releasers when idle.
        let waiting: HashSet<u32> = in_flight
            .iter()
            .filter(|(_, p)| graph_wait(p.op))
            .map(|(_, p)| p.tgid)
            .collect();
        for (tid, p) in blocked {
            if self.reported.contains_key(&tid) {
                continue;
            }
            let Some(mut event) = begin_event(tid, p, proc) else {
                continue;
            };
            let writers = holders.writers(p);
            // A thread that holds the write end itself (the self-pipe
            // trick) is woken by its own signal handler writing: its wait
            // proves nothing, however long it lasts.
            if !writers.contains(&(p.tgid, tid)) {
                (event.idle_releasers, event.releasers) =
                    writers.into_iter().partition(|&(pid, t)| {
                        waiting.contains(&pid) && idle(proc, pid, t, calls.get(&t).copied())
                    });
            }
            self.reported.insert(tid, without_releasers(&event));
            out.push(event);
        }
    }
}

fn without_releasers(event: &Event) -> Event {
    Event {
        releasers: Vec::new(),
        idle_releasers: Vec::new(),
        ..event.clone()
    }
}

/// Whether an in-flight call of kind `op` is a wait the analysis follows
/// in its wait-for graph (a blocked receive, a semop), so that the graph,
/// not this scan, judges whether the thread in it can still send.
fn graph_wait(op: u16) -> bool {
    matches!(op, op::FD_RECV | op::SYSV_RECV | op::SEMOP)
}

/// Whether a thread that could end a blocked receive is idle: not in a
/// call the probes follow (a receive or semop the graph judges, a send
/// about to move bytes; a futex wait is idle like any sleep) and, as
/// `/proc` shows it now, asleep in a call that waits ([`thread_idle`]).
fn idle(proc: &Path, pid: u32, tid: u32, call: Option<&PendingCall>) -> bool {
    if call.is_some_and(|c| c.op != op::FUTEX_WAIT) {
        return false;
    }
    thread_idle(proc, pid, tid)
}

/// Whether thread `tid` of process `pid` is idle now, as `proc` (the
/// procfs root) shows it: asleep (state `S` or `D`) in a call that waits
/// for time, a signal, a child, a lock or an event on something else
/// (sleeps, futex, poll/select/epoll, wait4, reads). A running or
/// runnable thread, one stopped outside a call, or one in any other call
/// may be about to send: not idle. A thread that is gone cannot send:
/// idle. Threads in calls the probes follow are judged by the wait-for
/// graph instead; this looks only at what `/proc` shows.
///
/// An idle thread is a guess about the future: a sleeping helper may
/// wake and send. The analysis takes it as not able to end a wait, and
/// checks again (with this function) when a cycle through it reaches the
/// deadlock threshold.
pub fn thread_idle(proc: &Path, pid: u32, tid: u32) -> bool {
    let dir = proc.join(format!("{pid}/task/{tid}"));
    let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
        return true;
    };
    // The comm may hold anything, ')' too: the state follows the last.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    match state {
        Some('S' | 'D') => {}
        Some('Z' | 'X' | 'x') => return true,
        _ => return false,
    }
    // "NR args... sp pc" while blocked in a call; "running", or -1 outside
    // a call. Unreadable (no ptrace access): not known to be idle.
    let Ok(syscall) = fs::read_to_string(dir.join("syscall")) else {
        return false;
    };
    syscall
        .split_whitespace()
        .next()
        .and_then(|nr| nr.parse::<libc::c_long>().ok())
        .is_some_and(waits_idly)
}

/// Whether a thread asleep in system call `nr` waits for time, a signal,
/// a child, a futex or an event on an object the probes do not follow.
fn waits_idly(nr: libc::c_long) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        nr,
        libc::SYS_select | libc::SYS_poll | libc::SYS_pause | libc::SYS_epoll_wait
    ) {
        return true;
    }
    matches!(
        nr,
        libc::SYS_nanosleep
            | libc::SYS_clock_nanosleep
            | libc::SYS_futex
            | libc::SYS_ppoll
            | libc::SYS_pselect6
            | libc::SYS_epoll_pwait
            | libc::SYS_epoll_pwait2
            | libc::SYS_rt_sigsuspend
            | libc::SYS_rt_sigtimedwait
            | libc::SYS_wait4
            | libc::SYS_waitid
            | libc::SYS_accept
            | libc::SYS_accept4
            | libc::SYS_read
            | libc::SYS_readv
            | libc::SYS_pread64
            | libc::SYS_recvfrom
            | libc::SYS_recvmsg
            | libc::SYS_io_getevents
    )
}

/// The `recv_wait_begin` for thread `tid` blocked in `p`, stamped when it
/// entered the call.
fn begin_event(tid: u32, p: &PendingCall, proc: &Path) -> Option<Event> {
    let mut raw = p.event(tid, p.ts_ns, comm(proc, p.tgid, tid));
    raw.kind = kind::RECV_WAIT_BEGIN;
    // Decoded as the probes' own records are, so the object is named the
    // same way (canonical socket pairs, the end it is read through).
    decode_parts(Source::Ebpf, &raw, &[], &[]).ok()
}

/// The thread's comm, NUL-padded as the kernel keeps it; empty if it is
/// already gone.
fn comm(proc: &Path, pid: u32, tid: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(name) = fs::read(proc.join(format!("{pid}/task/{tid}/comm"))) {
        let name = name.strip_suffix(b"\n").unwrap_or(&name);
        let n = name.len().min(15);
        out[..n].copy_from_slice(&name[..n]);
    }
    out
}

/// Who holds which IPC object open, read from `/proc` once per scan and
/// only when a scan has something to look up.
struct Holders<'a> {
    proc: &'a Path,
    /// (file type is a FIFO, inode) -> processes holding it open for
    /// writing; (socket, inode) -> processes holding it.
    open: Option<HashMap<(bool, u64), Vec<u32>>>,
}

impl<'a> Holders<'a> {
    fn new(proc: &'a Path) -> Self {
        Holders { proc, open: None }
    }

    /// Every thread that can send what `p` waits to receive: for a pipe
    /// or FIFO the threads of processes with it open for writing; for a
    /// connected Unix socket those of processes holding its peer end.
    /// Empty for anything anyone may send to.
    fn writers(&mut self, p: &PendingCall) -> Vec<(u32, u32)> {
        let key = match p.chan_kind {
            chan::PIPE | chan::FIFO => (true, p.obj),
            chan::UNIX_STREAM | chan::UNIX_SEQPACKET | chan::UNIX_DGRAM if p.obj2 != 0 => {
                (false, p.obj2)
            }
            _ => return Vec::new(),
        };
        let proc = self.proc;
        let open = self.open.get_or_insert_with(|| open_objects(proc));
        let Some(pids) = open.get(&key) else {
            return Vec::new();
        };
        pids.iter()
            .flat_map(|&pid| threads(proc, pid).into_iter().map(move |tid| (pid, tid)))
            .collect()
    }
}

/// Every pipe and FIFO open for writing and every socket, in every
/// process, by inode. Processes and descriptors that vanish or deny access
/// during the walk are skipped: what cannot be seen cannot be named.
fn open_objects(proc: &Path) -> HashMap<(bool, u64), Vec<u32>> {
    let mut open: HashMap<(bool, u64), Vec<u32>> = HashMap::new();
    let Ok(processes) = fs::read_dir(proc) else {
        return open;
    };
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat follows the magic link to the object itself.
            let Ok(meta) = fs::metadata(fd.path()) else {
                continue;
            };
            let kind = meta.file_type();
            let key = if kind.is_fifo() {
                let info = entry.path().join("fdinfo").join(fd.file_name());
                if !open_for_writing(&info) {
                    continue;
                }
                (true, meta.ino())
            } else if kind.is_socket() {
                (false, meta.ino())
            } else {
                continue;
            };
            let pids = open.entry(key).or_default();
            if pids.last() != Some(&pid) {
                pids.push(pid);
            }
        }
    }
    open
}

/// Whether the descriptor whose `/proc/PID/fdinfo/FD` is `info` may write:
/// its `flags:` line (octal open flags) has write or read-write access.
fn open_for_writing(info: &Path) -> bool {
    let Ok(text) = fs::read_to_string(info) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// The threads of process `pid` (none if it is gone).
fn threads(proc: &Path, pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(proc.join(format!("{pid}/task"))) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use ipc_events::raw::op;
    use ipc_events::{ChannelKind, EventKind};

    use super::*;

    const MS: u64 = 1_000_000;

    fn recv_on(tgid: u32, chan_kind: u16, obj: u64, obj2: u64, ts_ns: u64) -> PendingCall {
        PendingCall {
            obj,
            obj2,
            ..PendingCall::new(ts_ns, tgid, op::FD_RECV, kind::MSG_RECV, chan_kind)
        }
    }

    fn ino(fd: &impl AsRawFd) -> u64 {
        fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    fn gettid() -> u32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() as u32 }
    }

    /// A thread id no thread has: the waiter in tests where this thread
    /// must be one of the writers, not the waiter.
    const OTHER_TID: u32 = 0x7fff_fff0;

    #[test]
    fn a_receive_blocked_long_enough_begins_a_wait_naming_the_writers() {
        let (rx, tx) = std::io::pipe().unwrap();
        let me = std::process::id();
        let tid = OTHER_TID;
        let pipe = ino(&rx);
        let proc = Path::new("/proc");
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        let call = recv_on(me, chan::PIPE, pipe, 0, 1000 * MS);

        // Not yet blocked long enough: nothing.
        scan.scan(
            &[(tid, call)],
            1000 * MS + MIN_BLOCKED_NS - 1,
            proc,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");

        scan.scan(&[(tid, call)], 1000 * MS + MIN_BLOCKED_NS, proc, &mut out);
        let [begin] = &out[..] else { panic!("{out:?}") };
        assert_eq!(begin.kind, EventKind::RecvWaitBegin);
        assert_eq!(begin.ts_ns, 1000 * MS, "stamped when it entered the call");
        assert_eq!((begin.pid, begin.tid), (me, tid));
        assert_eq!(begin.channel.as_ref().unwrap().kind(), ChannelKind::Pipe);
        // This process holds the write end, so each of its threads could
        // end the wait; this one among them.
        assert!(begin.releasers.contains(&(me, gettid())), "{begin:?}");
        assert!(begin.releasers.iter().all(|&(pid, _)| pid == me));

        // Still blocked: reported once.
        out.clear();
        scan.scan(&[(tid, call)], 2000 * MS, proc, &mut out);
        assert!(out.is_empty(), "{out:?}");

        // Gone: ended, when the scan saw it.
        scan.scan(&[], 2100 * MS, proc, &mut out);
        let [end] = &out[..] else { panic!("{out:?}") };
        assert_eq!(end.kind, EventKind::RecvWaitEnd);
        assert_eq!(end.ts_ns, 2100 * MS);
        assert_eq!(end.duration_ns, Some(1100 * MS));
        drop(tx);
    }

    /// A thread of this process asleep in a timed futex wait until the
    /// returned sender is dropped (30 s at most), and its tid.
    fn sleeper() -> (
        std::sync::mpsc::Sender<()>,
        u32,
        std::thread::JoinHandle<()>,
    ) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let join = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            let _ = stop_rx.recv_timeout(std::time::Duration::from_secs(30));
        });
        (stop_tx, tid_rx.recv().unwrap(), join)
    }

    /// Waits (bounded) until `/proc` shows thread `tid` of this process
    /// asleep.
    fn until_asleep(tid: u32) {
        let me = std::process::id();
        for _ in 0..1000 {
            if thread_idle(Path::new("/proc"), me, tid) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("thread {tid} never seen asleep");
    }

    #[test]
    fn a_sleeping_thread_is_idle_and_a_running_one_is_not() {
        let (stop, tid, join) = sleeper();
        until_asleep(tid);
        let me = std::process::id();
        // This thread runs: it is reading /proc.
        assert!(!thread_idle(Path::new("/proc"), me, gettid()));
        // Gone: it cannot send.
        assert!(thread_idle(Path::new("/proc"), me, OTHER_TID));
        drop(stop);
        join.join().unwrap();
    }

    #[test]
    fn idle_threads_of_a_waiting_process_are_set_apart_from_the_releasers() {
        let (rx, tx) = std::io::pipe().unwrap();
        let me = std::process::id();
        let (stop, helper, join) = sleeper();
        until_asleep(helper);
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        // Another thread of this process is blocked reading the pipe this
        // process writes: this process waits in the graph, and its
        // sleeping helper is idle.
        let call = recv_on(me, chan::PIPE, ino(&rx), 0, 0);
        scan.scan(
            &[(OTHER_TID, call)],
            MIN_BLOCKED_NS,
            Path::new("/proc"),
            &mut out,
        );
        let [begin] = &out[..] else { panic!("{out:?}") };
        assert!(begin.idle_releasers.contains(&(me, helper)), "{begin:?}");
        assert!(!begin.releasers.contains(&(me, helper)), "{begin:?}");
        assert!(
            begin.releasers.contains(&(me, gettid())),
            "running: {begin:?}"
        );

        // In a call the probes follow (a send), it is not idle, whatever
        // /proc says.
        let mut scan = BlockedReceives::default();
        out.clear();
        let send = PendingCall {
            obj: ino(&rx),
            ..PendingCall::new(0, me, op::FD_SEND, kind::MSG_SEND, chan::PIPE)
        };
        scan.scan(
            &[(OTHER_TID, call), (helper, send)],
            MIN_BLOCKED_NS,
            Path::new("/proc"),
            &mut out,
        );
        let [begin] = &out[..] else { panic!("{out:?}") };
        assert!(begin.releasers.contains(&(me, helper)), "{begin:?}");
        drop(stop);
        join.join().unwrap();
        drop(tx);
    }

    #[test]
    fn threads_of_a_process_with_no_wait_are_never_idle() {
        // The waiter is in another process: this one, holding the write
        // end, waits for nothing, so its sleeping thread may well write.
        let (rx, tx) = std::io::pipe().unwrap();
        let me = std::process::id();
        let (stop, helper, join) = sleeper();
        until_asleep(helper);
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        let call = recv_on(me + 1, chan::PIPE, ino(&rx), 0, 0);
        scan.scan(
            &[(OTHER_TID, call)],
            MIN_BLOCKED_NS,
            Path::new("/proc"),
            &mut out,
        );
        let [begin] = &out[..] else { panic!("{out:?}") };
        assert!(begin.releasers.contains(&(me, helper)), "{begin:?}");
        assert_eq!(begin.idle_releasers, Vec::new());
        drop(stop);
        join.join().unwrap();
        drop(tx);
    }

    #[test]
    fn a_thread_that_could_write_itself_names_no_releasers() {
        let (rx, tx) = std::io::pipe().unwrap();
        let (me, tid) = (std::process::id(), gettid());
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        let call = recv_on(me, chan::PIPE, ino(&rx), 0, 0);
        scan.scan(&[(tid, call)], MIN_BLOCKED_NS, Path::new("/proc"), &mut out);
        let [begin] = &out[..] else { panic!("{out:?}") };
        assert_eq!(begin.releasers, Vec::new());
        drop(tx);
    }

    #[test]
    fn a_pipe_whose_write_end_is_closed_has_no_releasers() {
        let (rx, tx) = std::io::pipe().unwrap();
        let pipe = ino(&rx);
        drop(tx);
        let mut holders = Holders::new(Path::new("/proc"));
        let call = recv_on(std::process::id(), chan::PIPE, pipe, 0, 0);
        assert_eq!(holders.writers(&call), Vec::new());
        drop(rx);
    }

    #[test]
    fn a_socket_waits_for_the_holders_of_its_peer() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = std::process::id();
        let mut holders = Holders::new(Path::new("/proc"));
        let call = recv_on(me, chan::UNIX_STREAM, ino(&a), ino(&b), 0);
        assert!(holders.writers(&call).contains(&(me, gettid())));
        // Unconnected (no peer): anyone may send, so nobody is named.
        let call = recv_on(me, chan::UNIX_DGRAM, ino(&a), 0, 0);
        assert_eq!(holders.writers(&call), Vec::new());
    }

    #[test]
    fn a_thread_in_a_new_receive_ends_the_old_wait_before_the_new_begins() {
        let (rx, tx) = std::io::pipe().unwrap();
        let (me, tid) = (std::process::id(), OTHER_TID);
        let pipe = ino(&rx);
        let proc = Path::new("/proc");
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        let first = recv_on(me, chan::PIPE, pipe, 0, 0);
        scan.scan(&[(tid, first)], MIN_BLOCKED_NS, proc, &mut out);
        out.clear();
        let second = recv_on(me, chan::PIPE, pipe, 0, 500 * MS);
        scan.scan(&[(tid, second)], 500 * MS + MIN_BLOCKED_NS, proc, &mut out);
        let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.ts_ns)).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::RecvWaitEnd, 500 * MS),
                (EventKind::RecvWaitBegin, 500 * MS)
            ]
        );
        drop(tx);
    }

    #[test]
    fn sends_and_short_receives_are_not_waits() {
        let mut scan = BlockedReceives::default();
        let mut out = Vec::new();
        let send = PendingCall {
            obj: 1,
            ..PendingCall::new(0, 1, op::FD_SEND, kind::MSG_SEND, chan::PIPE)
        };
        scan.scan(
            &[(1, send)],
            10 * MIN_BLOCKED_NS,
            Path::new("/proc"),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }
}
