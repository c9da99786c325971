//! The ipc-lib ring reader against real sealed memfds, written by the same
//! producer code ipc-lib uses, and by a hostile writer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::Ordering;

use collector::lib_ring::{DrainStats, RingError, RingReader};
use ipc_events::raw::{chan, kind, RawEvent, MAX_NAME};
use ipc_events::ring::{self, clock, Lane, RingHeader, SHARED_LANE, VERSION};
use ipc_events::{Event, EventKind};

struct Ring {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
    capacity: u32,
    lanes: u32,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len are what mmap returned.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn make_ring(capacity: u32, pid: u32, seal: bool) -> Ring {
    make_lanes(capacity, 1, pid, seal)
}

fn make_lanes(capacity: u32, lanes: u32, pid: u32, seal: bool) -> Ring {
    let len = ring::ring_len(lanes, capacity).unwrap();
    // SAFETY: test setup through plain syscalls, each result checked.
    unsafe {
        let fd = libc::memfd_create(
            c"test-ring".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), len as libc::off_t), 0);
        if seal {
            assert_eq!(
                libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
                ),
                0
            );
        }
        let base = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        ring::init(base.cast(), lanes, capacity, pid);
        Ring {
            fd,
            base: base.cast(),
            len,
            capacity,
            lanes,
        }
    }
}

impl Ring {
    fn lane(&self, i: u32) -> Lane {
        assert!(i < self.lanes);
        // SAFETY: a live ring of self.lanes lanes of self.capacity bytes.
        unsafe { Lane::new(self.base, self.capacity, i) }
    }

    /// Lane `i`, claimed for a writer of its own (`i` > 0).
    fn own(&self, tid: u32) -> Lane {
        // SAFETY: as above.
        unsafe { ring::claim(self.base, self.lanes, self.capacity, tid) }
            .unwrap()
            .1
    }
}

fn raw(pid: u32, msg_id: u64, name: &str) -> RawEvent {
    RawEvent {
        ts_ns: msg_id * 10,
        pid,
        tid: pid,
        kind: kind::MSG_SEND,
        chan_kind: chan::IPCLIB_CHANNEL,
        name_len: name.len() as u16,
        size: 64,
        msg_id,
        ..RawEvent::default()
    }
}

/// Into the shared lane, stamped in nanoseconds.
fn write(ring: &Ring, raw: &RawEvent, name: &str) -> bool {
    // SAFETY: the shared lane of a live ring set up by ring::init.
    unsafe {
        ring::write_shared(
            &ring.lane(SHARED_LANE),
            raw,
            name.as_bytes(),
            clock::MONOTONIC_NS,
        )
    }
}

/// Into a lane this writer owns.
fn write_owned(lane: &Lane, raw: &RawEvent, name: &str, clock: u32) -> bool {
    // SAFETY: a claimed lane of a live ring, written by this thread alone.
    unsafe { ring::write_owned(lane, raw, name.as_bytes(), clock) }
}

fn lane_head_and_tail(ring: &Ring, i: u32) -> (u64, u64) {
    let lane = ring.lane(i);
    (
        lane.header().head.load(Ordering::Relaxed),
        lane.header().tail.load(Ordering::Relaxed),
    )
}

/// One drain's findings, or its error.
fn drain(reader: &mut RingReader, out: &mut Vec<Event>) -> Result<DrainStats, RingError> {
    let mut stats = DrainStats::default();
    reader.drain(out, &mut stats).map(|()| stats)
}

#[test]
fn records_come_out_as_written() {
    let ring = make_ring(1 << 16, 77, true);
    for id in 1..=3 {
        assert!(write(&ring, &raw(77, id, "jobs"), "jobs"));
    }
    let mut reader = RingReader::map(&ring.fd, 77).unwrap();
    let mut out = Vec::new();
    let stats = drain(&mut reader, &mut out).unwrap();
    assert_eq!(stats.events, 3);
    assert_eq!(
        out.iter().map(|e| e.msg_id.unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(out
        .iter()
        .all(|e: &Event| e.kind == EventKind::MsgSend
            && e.channel.as_ref().unwrap().name() == "jobs"));
    let (head, tail) = lane_head_and_tail(&ring, SHARED_LANE);
    assert_eq!(tail, head);
}

#[test]
fn wrap_around_keeps_every_record_in_order() {
    // The smallest ring and names of every length: records land at every
    // offset, and padding slots are written and skipped many times.
    // In the shared lane and in an owned one.
    let ring = make_lanes(4096, 2, 5, true);
    let owned = ring.own(5);
    let mut reader = RingReader::map(&ring.fd, 5).unwrap();
    let mut next = 1u64;
    let mut seen = Vec::new();
    for round in 0..200 {
        for i in 0..7 {
            let name = "n".repeat(1 + (round * 7 + i) % 200);
            let written = if round % 2 == 0 {
                write(&ring, &raw(5, next, &name), &name)
            } else {
                write_owned(&owned, &raw(5, next, &name), &name, clock::MONOTONIC_NS)
            };
            assert!(written, "a drained ring has room");
            next += 1;
        }
        let mut out = Vec::new();
        drain(&mut reader, &mut out).unwrap();
        seen.extend(out.iter().map(|e| e.msg_id.unwrap()));
    }
    assert_eq!(seen, (1..next).collect::<Vec<_>>());
}

#[test]
fn a_full_ring_refuses_and_the_count_is_reported() {
    // Both lanes full: the refusals of each are counted, once.
    let ring = make_lanes(4096, 2, 9, true);
    let owned = ring.own(9);
    let mut reader = RingReader::map(&ring.fd, 9).unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for id in 1..=100 {
        if write(&ring, &raw(9, id, "x"), "x") {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    for id in 101..=170 {
        if write_owned(&owned, &raw(9, id, "x"), "x", clock::MONOTONIC_NS) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0 && accepted > 0);
    let mut out = Vec::new();
    let stats = drain(&mut reader, &mut out).unwrap();
    assert_eq!(stats.events, accepted);
    assert_eq!(stats.ring_full, refused);
    // Counted once: a second drain reports no new refusals.
    assert_eq!(drain(&mut reader, &mut out).unwrap().ring_full, 0);
}

#[test]
fn records_claiming_another_pid_or_garbage_are_rejected_not_stored() {
    let ring = make_ring(1 << 16, 100, true);
    assert!(write(&ring, &raw(100, 1, "a"), "a"));
    assert!(write(&ring, &raw(101, 2, "a"), "a")); // forged pid
    let mut bad = raw(100, 3, "a");
    bad.kind = 999; // not a kind
    assert!(write(&ring, &bad, "a"));
    // A clock no one knows.
    // SAFETY: the shared lane of a live ring.
    assert!(unsafe { ring::write_shared(&ring.lane(SHARED_LANE), &raw(100, 5, "a"), b"a", 7) });
    assert!(write(&ring, &raw(100, 4, "a"), "a"));
    let mut reader = RingReader::map(&ring.fd, 100).unwrap();
    let mut out = Vec::new();
    let stats = drain(&mut reader, &mut out).unwrap();
    assert_eq!((stats.events, stats.rejected), (2, 3));
    assert_eq!(
        out.iter().map(|e| e.msg_id.unwrap()).collect::<Vec<_>>(),
        vec![1, 4]
    );
}

#[test]
fn a_corrupted_length_or_head_detaches_the_ring_without_panicking() {
    let ring = make_ring(1 << 16, 3, true);
    assert!(write(&ring, &raw(3, 1, "a"), "a"));
    // A hostile writer rewrites the commit word: committed, absurd length.
    // SAFETY: the first slot's commit word is at the data area's start.
    unsafe {
        ptr::write_volatile(
            ring.lane(SHARED_LANE).data().cast::<u32>(),
            ring::COMMITTED | 0x3fff_fff8,
        )
    };
    let mut reader = RingReader::map(&ring.fd, 3).unwrap();
    assert!(matches!(
        drain(&mut reader, &mut Vec::new()),
        Err(RingError::Corrupt(_))
    ));

    let ring = make_lanes(1 << 16, 3, 3, true);
    ring.lane(2)
        .header()
        .head
        .store(u64::MAX, Ordering::Relaxed);
    let mut reader = RingReader::map(&ring.fd, 3).unwrap();
    assert!(matches!(
        drain(&mut reader, &mut Vec::new()),
        Err(RingError::Corrupt(_))
    ));
}

#[test]
fn unsealed_mismatched_or_foreign_memfds_are_refused() {
    let unsealed = make_ring(1 << 16, 1, false);
    assert!(matches!(
        RingReader::map(&unsealed.fd, 1),
        Err(RingError::NotSealed)
    ));

    let lying = make_ring(1 << 16, 1, true);
    // SAFETY: the header is ours to scribble on in this test.
    unsafe { (*lying.base.cast::<RingHeader>()).capacity = 1 << 20 };
    assert!(matches!(
        RingReader::map(&lying.fd, 1),
        Err(RingError::BadHeader(_))
    ));

    let foreign = make_ring(1 << 16, 1, true);
    // SAFETY: as above.
    unsafe { (*foreign.base.cast::<RingHeader>()).magic = 0x1234 };
    assert!(matches!(
        RingReader::map(&foreign.fd, 1),
        Err(RingError::BadHeader(_))
    ));

    // More lanes than the memfd holds, or than a ring may have.
    for lanes in [2, 0, 16, u32::MAX] {
        let ring = make_ring(1 << 16, 1, true);
        // SAFETY: as above.
        unsafe { (*ring.base.cast::<RingHeader>()).lanes = lanes };
        assert!(
            matches!(RingReader::map(&ring.fd, 1), Err(RingError::BadHeader(_))),
            "{lanes} lanes"
        );
    }
}

#[test]
fn a_ring_of_an_older_or_newer_layout_is_refused() {
    for version in [VERSION - 1, VERSION + 1] {
        let ring = make_ring(1 << 16, 1, true);
        // SAFETY: the header is ours to scribble on in this test.
        unsafe { (*ring.base.cast::<RingHeader>()).version = version };
        let refused = RingReader::map(&ring.fd, 1);
        match refused {
            Err(e @ RingError::Version { found, expected }) => {
                assert_eq!((found, expected), (version, VERSION));
                assert!(e.to_string().contains("ring protocol version"), "{e}");
            }
            other => panic!("version {version}: {:?}", other.err()),
        }
    }
}

#[test]
fn threads_write_lanes_of_their_own_and_every_record_comes_out() {
    const PID: u32 = 61;
    const THREADS: u32 = 6;
    const EACH: u64 = 20_000;
    // Four lanes for six threads: three own one each, the others share.
    let ring = make_lanes(1 << 14, 4, PID, true);
    let mut reader = RingReader::map(&ring.fd, PID).unwrap();
    let base = ring.base as usize;
    let (lanes, capacity) = (ring.lanes, ring.capacity);
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let base = base as *mut u8;
                // SAFETY: the ring outlives the threads (joined below).
                let own = unsafe { ring::claim(base, lanes, capacity, 1000 + t) };
                let shared = unsafe { Lane::new(base, capacity, SHARED_LANE) };
                let mut refused = 0u64;
                for i in 0..EACH {
                    let id = u64::from(t) << 32 | (i + 1);
                    let r = raw(PID, id, "lanes");
                    // SAFETY: our own lane, or the shared one.
                    let ok = unsafe {
                        match &own {
                            Some((_, lane)) => {
                                ring::write_owned(lane, &r, b"lanes", clock::MONOTONIC_NS)
                            }
                            None => ring::write_shared(&shared, &r, b"lanes", clock::MONOTONIC_NS),
                        }
                    };
                    if !ok {
                        refused += 1;
                        std::thread::yield_now();
                    }
                }
                (own.is_some(), refused)
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut ring_full = 0;
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        let mut out = Vec::new();
        ring_full += drain(&mut reader, &mut out).unwrap().ring_full;
        seen.extend(out.iter().map(|e| e.msg_id.unwrap()));
    }
    let results: Vec<(bool, u64)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.0).count(),
        3,
        "three lanes to own"
    );
    let refused: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(ring_full, refused, "every refusal counted");
    // Each thread's records in its own order, none twice, none lost but
    // the refused.
    assert_eq!(seen.len() as u64 + refused, u64::from(THREADS) * EACH);
    for t in 0..THREADS {
        let mine: Vec<u64> = seen
            .iter()
            .filter(|id| *id >> 32 == u64::from(t))
            .copied()
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "thread {t} in order");
    }
}

/// Raw TSC readings taken between two CLOCK_MONOTONIC reads come out
/// between them, to a microsecond: over a second of writes, drains and
/// pauses, and for records stamped well before they are written (as a
/// send is stamped before it publishes), whichever lane they are in.
#[cfg(target_arch = "x86_64")]
#[test]
fn tsc_stamps_come_out_within_a_microsecond_of_the_monotonic_clock() {
    const PID: u32 = 71;
    const BOUND_NS: u64 = 1_000;
    let ring = make_lanes(1 << 16, 2, PID, true);
    let owned = ring.own(PID);
    let mut reader = RingReader::map(&ring.fd, PID).unwrap();
    let mut seen = Vec::new();
    let mut late: Vec<(u64, u64, u64)> = Vec::new();
    let started = std::time::Instant::now();
    let mut id = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        id += 1;
        let before = monotonic_ns();
        let tsc = ring::tsc();
        let after = monotonic_ns();
        if id.is_multiple_of(7) {
            // Written a few drains later.
            late.push((tsc, before, after));
        } else {
            let mut r = raw(PID, id, "tsc");
            (r.ts_ns, r.size, r.aux) = (tsc, before, after);
            assert!(write_owned(&owned, &r, "tsc", clock::TSC));
        }
        if id.is_multiple_of(50) {
            if late.len() > 20 {
                for (tsc, before, after) in late.drain(..) {
                    id += 1;
                    let mut r = raw(PID, id, "tsc");
                    (r.ts_ns, r.size, r.aux) = (tsc, before, after);
                    // SAFETY: the shared lane of a live ring.
                    assert!(unsafe {
                        ring::write_shared(&ring.lane(SHARED_LANE), &r, b"tsc", clock::TSC)
                    });
                }
            }
            drain(&mut reader, &mut seen).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(id % 1500));
        }
    }
    drain(&mut reader, &mut seen).unwrap();
    assert!(seen.len() > 1000, "{} records", seen.len());
    let mut worst = 0;
    for e in &seen {
        let (before, after) = (e.size, e.aux);
        let off = if e.ts_ns < before {
            before - e.ts_ns
        } else {
            e.ts_ns.saturating_sub(after)
        };
        worst = worst.max(off);
        assert!(
            off <= BOUND_NS,
            "record {:?}: {} converted outside [{before}, {after}] by {off} ns",
            e.msg_id,
            e.ts_ns
        );
    }
    eprintln!(
        "{} TSC stamps, the worst {worst} ns outside its clock reads",
        seen.len()
    );
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

/// What the owner of a ring does between two drains.
#[derive(Clone, Debug)]
enum Act {
    /// An honest record in its own name, with a name this long, into lane
    /// `lane` (the shared one, or one of its own), on clock `clock`.
    Write {
        len: usize,
        lane: u32,
        clock: u32,
    },
    /// A record in another process's name.
    Forge,
    /// A record on a clock no one knows.
    BadClock(u32),
    /// Garbage: one word anywhere past the fields read only at mapping.
    Poke {
        word: usize,
        value: u64,
    },
    Drain,
}

const PROP_LANES: u32 = 3;
const PROP_CAPACITY: u32 = 4096;

fn acts() -> impl proptest::strategy::Strategy<Value = Vec<Act>> {
    use proptest::prelude::*;
    let words = ring::ring_len(PROP_LANES, PROP_CAPACITY).unwrap() / 8;
    let clocks = if cfg!(target_arch = "x86_64") {
        prop_oneof![Just(clock::MONOTONIC_NS), Just(clock::TSC)].boxed()
    } else {
        Just(clock::MONOTONIC_NS).boxed()
    };
    prop::collection::vec(
        prop_oneof![
            4 => (1..=MAX_NAME, 0..PROP_LANES, clocks)
                .prop_map(|(len, lane, clock)| Act::Write { len, lane, clock }),
            1 => Just(Act::Forge),
            1 => (2u32..).prop_map(Act::BadClock),
            1 => (2..words, any::<u64>()).prop_map(|(word, value)| Act::Poke { word, value }),
            // Small values, the kind a near-miss bug writes.
            1 => (2..words, 0u64..5000).prop_map(|(word, value)| Act::Poke { word, value }),
            2 => Just(Act::Drain),
        ],
        1..120,
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever the owner writes, the reader returns (it never hangs or
    /// panics), passes on only records in the owner's name, and, while the
    /// ring is undamaged, every record exactly once (in order within its
    /// lane), every refusal and every forgery counted.
    #[test]
    fn a_ring_owner_can_lose_its_own_records_and_nothing_else(acts in acts()) {
        const OWNER: u32 = 42;
        let ring = make_lanes(PROP_CAPACITY, PROP_LANES, OWNER, true);
        let lanes: Vec<Lane> = (0..PROP_LANES)
            .map(|i| if i == SHARED_LANE { ring.lane(i) } else { ring.own(100 + i) })
            .collect();
        let mut reader = RingReader::map(&ring.fd, OWNER).unwrap();
        let (mut next, mut expected, mut forged, mut refused) = (1u64, Vec::new(), 0u64, 0u64);
        let (mut seen, mut rejected, mut ring_full) = (Vec::new(), 0u64, 0u64);
        let mut damaged = false;
        let mut lane_of = std::collections::HashMap::new();
        for act in acts.into_iter().chain([Act::Drain]) {
            match act {
                // The honest producer trusts the header; once it is
                // scribbled on, only the hostile side writes.
                Act::Write { len, lane, clock } if !damaged => {
                    let name = "n".repeat(len);
                    let mut r = raw(OWNER, next, &name);
                    lane_of.insert(next, lane);
                    if clock == ring::clock::TSC {
                        #[cfg(target_arch = "x86_64")]
                        { r.ts_ns = ring::tsc(); }
                    }
                    let l = &lanes[lane as usize];
                    // SAFETY: the shared lane, or one claimed for this
                    // (single) writer above.
                    let ok = unsafe {
                        if lane == SHARED_LANE {
                            ring::write_shared(l, &r, name.as_bytes(), clock)
                        } else {
                            ring::write_owned(l, &r, name.as_bytes(), clock)
                        }
                    };
                    if ok {
                        expected.push(next);
                    } else {
                        refused += 1;
                    }
                    next += 1;
                }
                Act::Forge if !damaged => {
                    if write(&ring, &raw(OWNER + 1, next, "f"), "f") {
                        forged += 1;
                    } else {
                        refused += 1;
                    }
                    next += 1;
                }
                Act::BadClock(clock) if !damaged => {
                    // SAFETY: the shared lane of a live ring.
                    if unsafe { ring::write_shared(&lanes[0], &raw(OWNER, next, "c"), b"c", clock) } {
                        forged += 1;
                    } else {
                        refused += 1;
                    }
                    next += 1;
                }
                Act::Write { .. } | Act::Forge | Act::BadClock(_) => {}
                Act::Poke { word, value } => {
                    damaged = true;
                    // SAFETY: word < the mapping's length in words; the
                    // reader copies before it looks, so any value goes.
                    unsafe { ptr::write_volatile(ring.base.cast::<u64>().add(word), value) };
                }
                Act::Drain => {
                    let mut out = Vec::new();
                    let mut stats = DrainStats::default();
                    let result = reader.drain(&mut out, &mut stats);
                    proptest::prop_assert!(out.iter().all(|e| e.pid == OWNER));
                    proptest::prop_assert_eq!(stats.events, out.len() as u64);
                    proptest::prop_assert!(stats.ring_full <= PROP_LANES as u64 * (1 << 32));
                    seen.extend(out.iter().map(|e| e.msg_id.unwrap_or(0)));
                    rejected += stats.rejected;
                    ring_full += stats.ring_full;
                    if result.is_err() {
                        // Detached: the recorder stops reading this ring.
                        proptest::prop_assert!(damaged, "an undamaged ring was refused: {result:?}");
                        return Ok(());
                    }
                }
            }
        }
        if !damaged {
            for lane in 0..PROP_LANES {
                let ids: Vec<u64> = seen.iter().copied().filter(|id| lane_of.get(id) == Some(&lane)).collect();
                proptest::prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "lane {lane}: {ids:?}");
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, expected);
            proptest::prop_assert_eq!(rejected, forged);
            proptest::prop_assert_eq!(ring_full, refused);
        }
    }
}

/// The recorder's answer to a registration whose hello says `version`,
/// with a ring whose header says `header_version`: `Some(ACCEPTED)`, or
/// `None` when it closed the connection on it.
fn registration_answer(version: u32, header_version: u32) -> Option<u8> {
    use collector::lib_ring::{Admission, RingListener};
    use collector::store::Ingest;
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(async { RingListener::bind(Admission::this_process()) })
        .unwrap();
    let address = listener.address().to_owned();
    let (ingest, mut batches) = Ingest::detached(16);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let recorder = std::thread::spawn(move || {
        runtime.block_on(async move {
            let drain = tokio::spawn(async move { while batches.recv().await.is_some() {} });
            listener.run(ingest, stopped, false).await;
            let _ = drain.await;
        })
    });

    let name = address.strip_prefix('@').unwrap();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], ring::READY);
    let pid = std::process::id();
    let ring = make_ring(1 << 16, pid, true);
    // SAFETY: the header is ours to write in this test.
    unsafe { (*ring.base.cast::<RingHeader>()).version = header_version };
    let mut hello = ring::Hello::new(pid);
    hello.version = version;
    send_with_fd(&stream, &hello.to_bytes(), ring.fd.as_raw_fd());
    let answer = match stream.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        Ok(_) | Err(_) => None,
    };
    drop(stream);
    let _ = stop.send(true);
    recorder.join().unwrap();
    answer
}

#[test]
fn a_process_of_another_ring_version_is_refused_at_registration() {
    assert_eq!(
        registration_answer(VERSION, VERSION),
        Some(ring::ACCEPTED),
        "the same version is taken"
    );
    for version in [VERSION - 1, VERSION + 1] {
        assert_eq!(
            registration_answer(version, version),
            None,
            "hello {version}"
        );
        assert_eq!(
            registration_answer(VERSION, version),
            None,
            "header {version}"
        );
    }
}

fn send_with_fd(socket: &std::os::unix::net::UnixStream, bytes: &[u8], fd: i32) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; the control buffer holds one fd's
    // header and data; everything outlives the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        assert_eq!(
            libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL),
            bytes.len() as isize
        );
    }
}
