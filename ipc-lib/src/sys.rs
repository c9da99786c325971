//! The few system calls channels and semaphores need that std does not
//! wrap: futexes, pidfds, and the process start time that tells a live peer
//! from a recycled pid.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns when
/// woken, when the value differs, on a signal, or at the timeout; the caller
/// re-checks its condition in every case, so the reason does not matter.
///
/// The futex is shared (no FUTEX_PRIVATE_FLAG): the waker is another process
/// that maps the same page.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 for the duration of the call (it
    // borrows the mapping), `ts` outlives the call, and FUTEX_WAIT only reads
    // the word and the timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every waiter on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    futex_wake(word, i32::MAX);
}

/// Wakes at most `n` waiters on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not touch
    // memory, it only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// This process's id, cached: glibc no longer caches getpid, and a
/// semaphore acquire asks for it each time (a syscall would be most of an
/// uncontended acquire's cost). A fork handler clears the cache in the
/// child.
pub(crate) fn my_pid() -> u32 {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    REGISTERED.call_once(|| {
        // SAFETY: the handler is a plain extern "C" fn that stores one
        // atomic, which is async-signal-safe.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

static PID: AtomicU32 = AtomicU32::new(0);

/// In a forked child: the cached pid is the parent's.
extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's start time, read once.
pub(crate) fn my_start_time() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| proc_start_time(my_pid()).unwrap_or(0))
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks after boot.
/// `None` when the process does not exist or /proc cannot tell.
pub(crate) fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The command name (field 2) is in parentheses and may itself hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; the start time is field 22.
    after.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether a process has exited, watched through a pidfd where the kernel
/// has them (5.3+), else through `kill(pid, 0)`.
///
/// Why a pidfd and not a robust futex or a lock held for the peer's lifetime:
/// robust futexes and robust mutexes belong to the thread that took them,
/// while a `Sender` or `Receiver` may move between threads and outlive the
/// one that made it. A pidfd names the process, cannot be fooled by a
/// recycled pid once opened, and reports a zombie (killed, not yet reaped)
/// as exited, which `kill(pid, 0)` does not. The start time recorded in the
/// peer slot closes the remaining gap: a pid recycled before we open the
/// pidfd is not the peer we were told about.
///
/// Pids are compared as this process sees them, so both ends must share a
/// pid namespace (two containers sharing /dev/shm but not pids would see
/// each other as dead).
#[derive(Debug)]
pub(crate) struct PeerWatch {
    pid: u32,
    start_time: u64,
    how: Watch,
}

#[derive(Debug)]
enum Watch {
    Pidfd(OwnedFd),
    Kill,
    Dead,
}

impl PeerWatch {
    /// Starts watching `pid`, which the peer slot says started at
    /// `start_time` (0: unknown).
    pub(crate) fn new(pid: u32, start_time: u64) -> Self {
        let how = Self::open(pid, start_time);
        PeerWatch {
            pid,
            start_time,
            how,
        }
    }

    fn open(pid: u32, start_time: u64) -> Watch {
        if pid == 0 || pid > i32::MAX as u32 {
            return Watch::Dead;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        let how = if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us and nothing
            // else owns it.
            Watch::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        } else {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => return Watch::Dead,
                _ => Watch::Kill,
            }
        };
        // Opened (or checked) after the pid was read from the slot: if the
        // pid was recycled in between, the start time tells.
        if start_time != 0 {
            match proc_start_time(pid) {
                Some(t) if t != start_time => return Watch::Dead,
                _ => {}
            }
        }
        how
    }

    /// Whether this watch is for the peer described by `pid`/`start_time`.
    pub(crate) fn is_for(&self, pid: u32, start_time: u64) -> bool {
        self.pid == pid && self.start_time == start_time
    }

    /// Whether the process is still running. Once it is seen dead it stays
    /// dead.
    pub(crate) fn alive(&mut self) -> bool {
        if self.pid == my_pid() {
            return true;
        }
        let alive = match &self.how {
            Watch::Dead => false,
            Watch::Pidfd(fd) => {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `p` is one valid pollfd for the duration of the
                // call; a zero timeout never blocks.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                // Readable means exited. An error (EINTR) is retried at the
                // next check, so it counts as alive for now.
                !(n > 0 && p.revents != 0)
            }
            Watch::Kill => {
                // SAFETY: signal 0 performs only the existence and
                // permission check; nothing is delivered.
                let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
                let gone = r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
                !gone && !is_zombie(self.pid)
            }
        };
        if !alive {
            self.how = Watch::Dead;
        }
        alive
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after
                .split_ascii_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(false)
}

/// A random word for the commit key; falls back to time and pid, which is
/// enough for its purpose (stale payload bytes must not look committed).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is 8 writable bytes and getrandom writes at most
    // that many.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(my_pid()) << 32) ^ 0x9E37_79B9_7F4A_7C15
}

/// The CPUs online now (not this process's affinity or quota): `None`
/// if the kernel does not say.
pub(crate) fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf reads a system setting; it takes no pointer.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c) R 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("42 (x"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(my_start_time() > 0);
        let mut me = PeerWatch::new(my_pid(), my_start_time());
        assert!(me.alive());

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut gone = PeerWatch::new(pid, 0);
        assert!(!gone.alive());
    }

    #[test]
    fn a_forked_child_knows_its_own_pid() {
        assert_eq!(my_pid(), std::process::id());
        // SAFETY: the child only reads atomics, calls getpid and _exit, all
        // async-signal-safe, so forking a threaded test process is sound.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            let ok = my_pid() == unsafe { libc::getpid() } as u32;
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert!(child > 0);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(my_pid(), std::process::id());
    }

    #[test]
    fn a_killed_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut watch = PeerWatch::new(pid, proc_start_time(pid).unwrap_or(0));
        assert!(watch.alive());
        child.kill().unwrap();
        // Still a zombie: not reaped yet. Bounded wait for the exit to land.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watch.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!watch.alive());
        child.wait().unwrap();
    }

    #[test]
    fn a_recycled_pid_is_not_the_peer() {
        // The parent with another start time stands for a recycled pid (our
        // own pid would not do: it always counts as alive).
        let ppid = std::os::unix::process::parent_id();
        let real = proc_start_time(ppid).unwrap();
        let mut fake = PeerWatch::new(ppid, real + 1);
        assert!(!fake.alive());
        let mut right = PeerWatch::new(ppid, real);
        assert!(right.alive());
    }
}
