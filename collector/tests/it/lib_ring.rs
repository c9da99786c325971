//! The ipc-lib ring reader against real sealed memfds, written by the same
//! producer code ipc-lib uses, and by a hostile writer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::Ordering;

use collector::lib_ring::{DrainStats, RingError, RingReader};
use ipc_events::raw::{chan, kind, RawEvent, MAX_NAME};
use ipc_events::ring::{self, RingHeader, HEADER_SIZE};
use ipc_events::{Event, EventKind};

struct Ring {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len are what mmap returned.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn make_ring(capacity: u32, pid: u32, seal: bool) -> Ring {
    let len = HEADER_SIZE + capacity as usize;
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
        ring::init(base.cast(), capacity, pid);
        Ring {
            fd,
            base: base.cast(),
            len,
        }
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

fn write(ring: &Ring, raw: &RawEvent, name: &str) -> bool {
    // SAFETY: ring.base is a live ring set up by ring::init.
    unsafe { ring::write(ring.base, raw, name.as_bytes()) }
}

fn header(ring: &Ring) -> &RingHeader {
    // SAFETY: the mapping starts with the header and outlives the borrow.
    unsafe { &*ring.base.cast::<RingHeader>() }
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
    assert_eq!(
        header(&ring).tail.load(Ordering::Relaxed),
        header(&ring).head.load(Ordering::Relaxed)
    );
}

#[test]
fn wrap_around_keeps_every_record_in_order() {
    // The smallest ring and names of every length: records land at every
    // offset, and padding slots are written and skipped many times.
    let ring = make_ring(4096, 5, true);
    let mut reader = RingReader::map(&ring.fd, 5).unwrap();
    let mut next = 1u64;
    let mut seen = Vec::new();
    for round in 0..200 {
        for i in 0..7 {
            let name = "n".repeat(1 + (round * 7 + i) % 200);
            assert!(
                write(&ring, &raw(5, next, &name), &name),
                "a drained ring has room"
            );
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
    let ring = make_ring(4096, 9, true);
    let mut reader = RingReader::map(&ring.fd, 9).unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for id in 1..=100 {
        if write(&ring, &raw(9, id, "x"), "x") {
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
    assert!(write(&ring, &raw(100, 4, "a"), "a"));
    let mut reader = RingReader::map(&ring.fd, 100).unwrap();
    let mut out = Vec::new();
    let stats = drain(&mut reader, &mut out).unwrap();
    assert_eq!((stats.events, stats.rejected), (2, 2));
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
            ring.base.add(HEADER_SIZE).cast::<u32>(),
            ring::COMMITTED | 0x3fff_fff8,
        )
    };
    let mut reader = RingReader::map(&ring.fd, 3).unwrap();
    assert!(matches!(
        drain(&mut reader, &mut Vec::new()),
        Err(RingError::Corrupt(_))
    ));

    let ring = make_ring(1 << 16, 3, true);
    header(&ring).head.store(u64::MAX, Ordering::Relaxed);
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
}

/// What the owner of a ring does between two drains.
#[derive(Clone, Debug)]
enum Act {
    /// An honest record in its own name, with a name this long.
    Write(usize),
    /// A record in another process's name.
    Forge,
    /// Garbage: one word anywhere past the fields read only at mapping.
    Poke {
        word: usize,
        value: u64,
    },
    Drain,
}

fn acts() -> impl proptest::strategy::Strategy<Value = Vec<Act>> {
    use proptest::prelude::*;
    let words = (HEADER_SIZE + 4096) / 8;
    prop::collection::vec(
        prop_oneof![
            4 => (1..=MAX_NAME).prop_map(Act::Write),
            1 => Just(Act::Forge),
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
    /// ring is undamaged, every record exactly once and every forgery
    /// counted.
    #[test]
    fn a_ring_owner_can_lose_its_own_records_and_nothing_else(acts in acts()) {
        const OWNER: u32 = 42;
        let ring = make_ring(4096, OWNER, true);
        let mut reader = RingReader::map(&ring.fd, OWNER).unwrap();
        let (mut next, mut expected, mut forged) = (1u64, Vec::new(), 0u64);
        let (mut seen, mut rejected) = (Vec::new(), 0u64);
        let mut damaged = false;
        for act in acts.into_iter().chain([Act::Drain]) {
            match act {
                // The honest producer trusts the header; once it is
                // scribbled on, only the hostile side writes.
                Act::Write(len) if !damaged => {
                    let name = "n".repeat(len);
                    if write(&ring, &raw(OWNER, next, &name), &name) {
                        expected.push(next);
                    }
                    next += 1;
                }
                Act::Forge if !damaged => {
                    if write(&ring, &raw(OWNER + 1, next, "f"), "f") {
                        forged += 1;
                    }
                    next += 1;
                }
                Act::Write(_) | Act::Forge => {}
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
                    proptest::prop_assert!(stats.ring_full <= 1 << 32);
                    seen.extend(out.iter().map(|e| e.msg_id.unwrap_or(0)));
                    rejected += stats.rejected;
                    if result.is_err() {
                        // Detached: the recorder stops reading this ring.
                        proptest::prop_assert!(damaged, "an undamaged ring was refused: {result:?}");
                        return Ok(());
                    }
                }
            }
        }
        if !damaged {
            proptest::prop_assert_eq!(seen, expected);
            proptest::prop_assert_eq!(rejected, forged);
        }
    }
}
