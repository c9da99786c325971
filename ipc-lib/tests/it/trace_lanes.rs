//! The tracer's side of the ring, against a stand-in recorder: this test
//! takes the registration as `ipcscope record` does (READY, the memfd,
//! ACCEPTED) and reads the ring's bytes itself once the traced process,
//! this binary re-run in a role, has gone.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use ipc_events::raw::{RawEvent, RAW_EVENT_SIZE};
use ipc_events::ring::{
    self, clock, Lane, RingHeader, ACCEPTED, COMMITTED, HELLO_SIZE, LEN_MASK, PADDING, READY,
    SHARED_LANE, SLOT_HEADER,
};

use crate::support::PATIENCE;

/// Set in the traced process: which clock it was told to use.
const ROLE: &str = "IPCLIB_IT_TRACE_LANES";
/// Events each thread of the traced process emits.
const EACH: usize = 100;

/// What the traced process does: two threads one after the other, then
/// three at once, each emitting [`EACH`] events; its ring has the shared
/// lane and two of its own, so the second thread takes the lane the first
/// gave back, and one of the three writes the shared lane.
fn traced() {
    let emit = || {
        for _ in 0..EACH {
            ipc_lib::set_role("lanes");
        }
    };
    for _ in 0..2 {
        std::thread::spawn(emit).join().unwrap();
    }
    let together = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let together = Arc::clone(&together);
            std::thread::spawn(move || {
                together.wait();
                emit();
                // All three hold their lanes until all have written.
                together.wait();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(ipc_lib::trace::enabled());
    assert_eq!(ipc_lib::trace::dropped(), 0);
}

#[test]
fn threads_write_lanes_of_their_own_stamped_by_the_tsc() {
    if std::env::var_os(ROLE).is_some() {
        traced();
        return;
    }
    check(None);
}

#[test]
fn threads_write_lanes_of_their_own_stamped_by_the_monotonic_clock() {
    if std::env::var_os(ROLE).is_some() {
        traced();
        return;
    }
    check(Some("monotonic"));
}

/// One record as the test reads it back.
#[derive(Debug)]
struct Seen {
    lane: u32,
    clock: u32,
    raw: RawEvent,
}

fn check(clock_env: Option<&str>) {
    let name = format!("ipclib-it-lanes-{}-{}", std::process::id(), monotonic_ns());
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let test = if clock_env.is_some() {
        "trace_lanes::threads_write_lanes_of_their_own_stamped_by_the_monotonic_clock"
    } else {
        "trace_lanes::threads_write_lanes_of_their_own_stamped_by_the_tsc"
    };
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .env(ring::SOCKET_ENV, format!("@{name}"))
        .env("IPCSCOPE_RING_LANES", "3")
        .env("IPCSCOPE_RING_BYTES", "65536")
        .stdin(Stdio::null());
    match clock_env {
        Some(c) => cmd.env("IPCSCOPE_CLOCK", c),
        None => cmd.env_remove("IPCSCOPE_CLOCK"),
    };
    let before = monotonic_ns();
    let mut child = cmd.spawn().unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(&[READY]).unwrap();
    let fd = recv_fd(&stream);
    stream.write_all(&[ACCEPTED]).unwrap();
    // The traced process keeps the socket open until it ends.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(child.wait().unwrap().success(), "the traced process failed");
    let after = monotonic_ns();

    let seen = read_ring(&fd);
    assert_eq!(seen.len(), 5 * EACH, "every event, none refused");
    let mut tids: Vec<u32> = seen.iter().map(|s| s.raw.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), 5, "five threads");
    for tid in &tids {
        let lanes: Vec<u32> = seen
            .iter()
            .filter(|s| s.raw.tid == *tid)
            .map(|s| s.lane)
            .collect();
        assert!(
            lanes.iter().all(|l| *l == lanes[0]),
            "thread {tid} wrote one lane: {lanes:?}"
        );
    }
    let shared: Vec<u32> = tids
        .iter()
        .copied()
        .filter(|tid| {
            seen.iter()
                .any(|s| s.raw.tid == *tid && s.lane == SHARED_LANE)
        })
        .collect();
    assert_eq!(shared.len(), 1, "one thread found no lane free: {shared:?}");
    // The first two threads took lane 1 in turn: it was given back.
    let first_lane: Vec<u32> = tids
        .iter()
        .copied()
        .filter(|tid| seen.iter().any(|s| s.raw.tid == *tid && s.lane == 1))
        .collect();
    assert!(first_lane.len() >= 2, "lane 1 reused: {first_lane:?}");

    let expected = match clock_env {
        Some(_) => clock::MONOTONIC_NS,
        None if tsc_usable() => clock::TSC,
        None => clock::MONOTONIC_NS,
    };
    assert!(seen.iter().all(|s| s.clock == expected), "clock {expected}");
    if expected == clock::MONOTONIC_NS {
        assert!(seen.iter().all(|s| (before..=after).contains(&s.raw.ts_ns)));
    } else {
        // Readings of one counter, in each thread's order.
        for tid in &tids {
            let ts: Vec<u64> = seen
                .iter()
                .filter(|s| s.raw.tid == *tid)
                .map(|s| s.raw.ts_ns)
                .collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}

/// Every record in every lane of the ring in `fd`, and that no lane is
/// still claimed.
fn read_ring(fd: &OwnedFd) -> Vec<Seen> {
    // SAFETY: fstat into a zeroed struct; mmap of the whole memfd, checked.
    let (base, len) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
        let len = st.st_size as usize;
        let base = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        (base.cast::<u8>(), len)
    };
    // SAFETY: the mapping starts with the header.
    let header = unsafe { &*base.cast::<RingHeader>() };
    let (lanes, capacity) = (header.lanes, header.capacity);
    assert_eq!((lanes, capacity), (3, 65536));
    assert_eq!(ring::ring_len(lanes, capacity), Some(len));
    let mut seen = Vec::new();
    for i in 0..lanes {
        // SAFETY: lane i of the ring just checked.
        let lane = unsafe { Lane::new(base, capacity, i) };
        assert_eq!(
            lane.header()
                .owner
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "lane {i} given back"
        );
        let head = lane
            .header()
            .head
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(head <= u64::from(capacity), "one lap at most here");
        let mut at = 0;
        while at < head as usize {
            // SAFETY: below head, inside the lane's data area.
            let slot = unsafe { std::slice::from_raw_parts(lane.data().add(at), SLOT_HEADER) };
            let word = u32::from_le_bytes(slot[..4].try_into().unwrap());
            let clock = u32::from_le_bytes(slot[4..8].try_into().unwrap());
            assert!(word & COMMITTED != 0);
            let len = (word & LEN_MASK) as usize;
            if word & PADDING == 0 {
                assert!(len >= SLOT_HEADER + RAW_EVENT_SIZE);
                // SAFETY: the record follows its slot header, inside the
                // lane.
                let raw = unsafe {
                    lane.data()
                        .add(at + SLOT_HEADER)
                        .cast::<RawEvent>()
                        .read_unaligned()
                };
                seen.push(Seen {
                    lane: i,
                    clock,
                    raw,
                });
            }
            at += len;
        }
    }
    // SAFETY: base/len are what mmap returned.
    unsafe { libc::munmap(base.cast(), len) };
    seen
}

/// Takes the registration: the hello, with the ring's fd attached.
fn recv_fd(stream: &std::os::unix::net::UnixStream) -> OwnedFd {
    let mut bytes = [0u8; HELLO_SIZE];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; the buffers outlive the call, and
    // CMSG_* stay within what the kernel filled.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, 0);
        assert_eq!(n, HELLO_SIZE as isize);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null());
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<i32>(),
        ))
    }
}

/// What ipc-lib decides from: an invariant TSC the kernel keeps time by.
fn tsc_usable() -> bool {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has = |f: &str| flags.split_ascii_whitespace().any(|x| x == f);
    cfg!(target_arch = "x86_64")
        && source.trim() == "tsc"
        && has("constant_tsc")
        && has("nonstop_tsc")
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
