//! Giving up the capabilities `record` no longer needs.
//!
//! Loading and attaching the probes needs CAP_BPF, CAP_PERFMON and, for
//! some of it, CAP_SYS_ADMIN. Once they are attached and the command is
//! started, the recorder only reads what it already holds open (the ring
//! buffer's mapping, the maps' fds, the database) and `/proc`, where the
//! blocked-receive scan and channel naming read other users' `fd` and
//! `fdinfo`. A recorder that parses what other processes write should not
//! keep the power to load kernel code while it does, so everything else
//! goes, from the effective, permitted and bounding sets.
//!
//! Capabilities belong to threads, not processes, and by the time the
//! probes are in, the async runtime's workers and SQLite's connection
//! threads are running. So every thread is asked to drop its own, by a
//! signal whose handler makes only async-signal-safe raw syscalls
//! (`prctl`, `capget`, `capset`), and the kernel's view of each thread
//! (`/proc/self/task/*/status`) is read back until all of them show the
//! reduced sets. A thread started later inherits its creator's sets, so it
//! starts reduced too.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Capability numbers, from `linux/capability.h`.
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_KILL: u32 = 5;
const CAP_SYS_PTRACE: u32 = 19;

/// What the recorder keeps for the rest of the recording:
/// - CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH read `/proc/PID/fd` and
///   `fdinfo` of processes of other users (the blocked-receive scan looks
///   at every holder of an IPC object, traced or not);
/// - CAP_KILL passes the user's Ctrl-C or stop on to the command as
///   SIGTERM even when the command has since changed its uid.
const KEPT: u64 = bit(CAP_SYS_PTRACE) | bit(CAP_DAC_READ_SEARCH) | bit(CAP_KILL);

/// Kept besides when the database or its directory is not the recorder's
/// own (`sudo ipcscope record --db mine.db`): the pool opens a connection
/// whenever it has none to spare (after one idled out, say), which opens
/// the database and its journal files again, and SQLite run as root gives
/// a journal file it creates the database's owner.
const KEPT_FOR_ANOTHERS_DATABASE: u64 = bit(CAP_DAC_OVERRIDE) | bit(CAP_CHOWN);

const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// How long the threads get to drop theirs: each needs only to be
/// scheduled once, but the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(5);

/// Why not every thread gave up what it should have.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("cannot install the handler that drops capabilities in each thread: {0}")]
    Handler(#[source] io::Error),
    #[error("cannot read the capabilities of {path}: {source}")]
    Status {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("thread {tid} still holds capabilities {held:#x} after {PATIENCE:?}")]
    Stuck { tid: u32, held: u64 },
}

/// Drops, in every thread of this process, each capability but those the
/// recorder keeps: CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_KILL, and
/// CAP_DAC_OVERRIDE and CAP_CHOWN too when `db` or its directory is
/// another user's. A process that holds none beyond them (an ordinary
/// user's) is left as it is.
pub fn drop_unneeded(db: &Path) -> Result<(), DropError> {
    let mut keep = KEPT;
    if !owned_by_us(db) || !db.parent().is_some_and(owned_by_us) {
        keep |= KEPT_FOR_ANOTHERS_DATABASE;
    }
    let before = read_sets(Path::new("/proc/thread-self/status"))?;
    if before.iter().all(|set| set & !keep == 0) {
        return Ok(());
    }
    KEEP.store(keep, Ordering::Relaxed);
    install_handler()?;
    drop_in_this_thread(keep);
    // Without CAP_SETPCAP the bounding set cannot shrink: what this thread
    // reached is what every thread can.
    let target = read_sets(Path::new("/proc/thread-self/status"))?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stuck = None;
        for task in std::fs::read_dir("/proc/self/task").map_err(status_err("/proc/self/task"))? {
            let Ok(task) = task else { continue };
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            // A thread that ended meanwhile has nothing left to drop.
            let Ok(sets) = read_sets(&task.path().join("status")) else {
                continue;
            };
            let held = sets
                .iter()
                .zip(target)
                .fold(0, |held, (set, allowed)| held | (set & !allowed));
            if held != 0 {
                // SAFETY: tgkill has no memory effects; a tid that ended
                // and was reused by another thread of ours only gets the
                // same harmless request.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal()) };
                stuck = Some(DropError::Stuck { tid, held });
            }
        }
        match stuck {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => return Err(e),
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The signal that asks a thread to drop: a real-time one, which nothing
/// else in the recorder uses.
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// What the handler keeps, set before the first signal is sent.
static KEEP: AtomicU64 = AtomicU64::new(0);

fn install_handler() -> Result<(), DropError> {
    // SAFETY: sigaction is plain data; zeroed means no flags and an empty
    // mask, which the fields below fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
    // Interrupted calls in the threads resume as if nothing happened.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler only makes async-signal-safe syscalls and saves
    // and restores errno.
    if unsafe { libc::sigaction(signal(), &action, std::ptr::null_mut()) } != 0 {
        return Err(DropError::Handler(io::Error::last_os_error()));
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    let errno = unsafe { *libc::__errno_location() };
    drop_in_this_thread(KEEP.load(Ordering::Relaxed));
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two, for capabilities
/// 0-31 and 32-63.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops the calling thread's capabilities but `keep`. Only raw syscalls,
/// no allocation: it runs in a signal handler.
fn drop_in_this_thread(keep: u64) {
    // The bounding set first: shrinking it needs CAP_SETPCAP, which the
    // capset below takes away.
    for cap in 0..64 {
        if keep & bit(cap) == 0 {
            // SAFETY: prctl with integer arguments has no memory effects.
            // EINVAL past the kernel's last capability and EPERM without
            // CAP_SETPCAP both leave nothing more to do.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the structs capget expects for version
    // 3, data with room for its two elements.
    if unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } != 0 {
        return;
    }
    for (half, d) in data.iter_mut().enumerate() {
        let keep = (keep >> (32 * half)) as u32;
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable &= keep;
    }
    // SAFETY: as for capget; only ever lowering the sets, which needs no
    // privilege. Ambient capabilities not in the new permitted set go with
    // it.
    unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
}

/// CapEff, CapPrm and CapBnd of one thread.
fn read_sets(status: &Path) -> Result<[u64; 3], DropError> {
    let text = std::fs::read_to_string(status).map_err(status_err(&status.to_string_lossy()))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| DropError::Status {
                path: status.to_string_lossy().into_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("no {name} line")),
            })
    };
    Ok([field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?])
}

fn status_err(path: &str) -> impl FnOnce(io::Error) -> DropError + '_ {
    move |source| DropError::Status {
        path: path.to_owned(),
        source,
    }
}

/// Whether `path` belongs to this process's effective uid.
fn owned_by_us(path: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    let us = unsafe { libc::geteuid() };
    std::fs::metadata(path).is_ok_and(|m| m.uid() == us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sets_are_read_from_a_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(
            &status,
            "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
             CapEff:\t0000000000080024\nCapBnd:\t000001ffffffffff\n",
        )
        .unwrap();
        assert_eq!(
            read_sets(&status).unwrap(),
            [0x80024, 0x1ff_ffff_ffff, 0x1ff_ffff_ffff]
        );
        std::fs::write(&status, "Name:\tx\n").unwrap();
        assert!(read_sets(&status).is_err());
    }
}
