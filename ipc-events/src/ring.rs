//! The layout of an ipc-lib event ring: the one structure an ipc-lib
//! process and the collector share.
//!
//! A process that uses ipc-lib creates one ring (a memfd) and hands the fd
//! to the recorder over its Unix socket; from then on it writes events with
//! no syscall, and the collector maps the same memory and reads them.
//!
//! The ring is split into lanes, each a ring of its own with its own
//! `head`, `tail` and `dropped` ([`LaneHeader`]). Lane [`SHARED_LANE`] is
//! multi-producer: a writer reserves space by compare-and-swap on its
//! `head`. Every other lane belongs to at most one thread at a time, which
//! claims it once (a compare-and-swap on its `owner` word) and from then on
//! writes with plain loads and stores: no locked instruction per event
//! ([`write_owned`]). A thread that finds every lane taken writes to the
//! shared lane. In either kind of lane a writer publishes a record by
//! storing its commit word with Release ordering; the consumer reads commit
//! words with Acquire, copies records out, zeroes what it consumed (so a
//! later lap never mistakes stale bytes for a commit word) and advances the
//! lane's `tail`. A full lane refuses the record and counts it in the
//! lane's `dropped`: tracing never blocks the application.
//!
//! Each record's slot header says which clock stamped it ([`clock`]): a
//! raw time-stamp counter reading, where the TSC is invariant and the
//! kernel itself keeps time with it, which the collector converts to
//! CLOCK_MONOTONIC (a TSC read costs a third of `clock_gettime`); or
//! CLOCK_MONOTONIC nanoseconds.
//!
//! The consumer trusts nothing here: the writing process may be buggy or
//! hostile, so every length, position and clock word is checked before use.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::raw::{RawEvent, RAW_EVENT_SIZE};

/// `RingHeader::magic`: "IPCSRING".
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSRING");
/// Bumped whenever this layout or the registration changes (2: the
/// recorder answers a registration with [`ACCEPTED`]; 3: it says
/// [`READY`] before the process makes its ring; 4: lanes, one per writing
/// thread, and a clock word in every slot header).
pub const VERSION: u32 = 4;
/// The byte the recorder sends as soon as it admits a connection; the
/// process makes its ring only then. From that moment the recorder holds
/// back what it correlates until it knows the ring, so that the probes'
/// sight of the ring's mapping is known as its plumbing, not the user's
/// shared memory, however late the registration is handled.
pub const READY: u8 = 2;
/// The byte the recorder sends back once it has taken a ring; it closes
/// the connection instead when it refuses one. The process waits for the
/// answer, so that it is still alive while the recorder checks who it is.
pub const ACCEPTED: u8 = 1;
/// Bytes before the first lane's data area: the [`RingHeader`] and up to
/// [`MAX_LANES`] [`LaneHeader`]s, one page.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of the ring header proper, before the lane headers.
pub const RING_HEADER_SIZE: usize = 256;
/// Bytes of one lane header.
pub const LANE_HEADER_SIZE: usize = 256;
/// The most lanes a ring may have (their headers fill the header page).
pub const MAX_LANES: u32 = ((HEADER_SIZE - RING_HEADER_SIZE) / LANE_HEADER_SIZE) as u32;
/// The lane any thread may write, reserving by compare-and-swap; never
/// claimed.
pub const SHARED_LANE: u32 = 0;
/// Every record starts with an 8-byte slot header: the commit word, then
/// the [`clock`] word, so records stay 8-aligned.
pub const SLOT_HEADER: usize = 8;
/// Commit-word flag: the record is complete and may be read.
pub const COMMITTED: u32 = 1 << 31;
/// Commit-word flag: the record is padding up to the end of the data area.
pub const PADDING: u32 = 1 << 30;
/// Commit-word bits holding the record's total length, slot header included.
pub const LEN_MASK: u32 = PADDING - 1;
/// Smallest and largest data areas a lane may have (powers of two).
pub const MIN_CAPACITY: u32 = 1 << 12;
pub const MAX_CAPACITY: u32 = 1 << 28;
/// The most bytes a ring may span, headers and every lane included.
pub const MAX_RING_BYTES: usize = 1 << 31;

/// What a slot header's second word says of its record's `ts_ns`.
pub mod clock {
    /// CLOCK_MONOTONIC nanoseconds, as is.
    pub const MONOTONIC_NS: u32 = 0;
    /// A raw x86_64 time-stamp counter reading (`rdtsc`): the collector
    /// converts it to CLOCK_MONOTONIC nanoseconds. Written only where the
    /// TSC is invariant (`constant_tsc`, `nonstop_tsc`) and the kernel's
    /// clocksource is the TSC, so every CPU reads one counter.
    pub const TSC: u32 = 1;
}

/// The time-stamp counter, raw (x86_64 `rdtsc`). Not serialising: it may
/// be read a few cycles before the instructions before it complete, far
/// below the accuracy of any conversion to nanoseconds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc exists on every x86_64 CPU and reads a register; the
    // kernel does not disable it for user space on Linux.
    #[allow(unused_unsafe, reason = "`_rdtsc` is an unsafe fn on older compilers")]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// The first [`RING_HEADER_SIZE`] bytes of a ring, read once by the
/// collector when it maps the ring.
#[repr(C)]
pub struct RingHeader {
    pub magic: u64,
    pub version: u32,
    /// Bytes in each lane's data area; a power of two.
    pub capacity: u32,
    /// The process that owns (writes) the ring.
    pub pid: u32,
    /// Lanes in the ring, [`SHARED_LANE`] included: 1 to [`MAX_LANES`].
    pub lanes: u32,
    pub _pad0: [u32; 58],
}

const _: () = assert!(core::mem::size_of::<RingHeader>() == RING_HEADER_SIZE);

/// The bookkeeping of one lane. `owner`, `head`, `tail` and `dropped` sit
/// on cache lines of their own: the writer hammers `head`, the consumer
/// `tail`.
#[repr(C)]
pub struct LaneHeader {
    /// The thread (its tid) that alone writes this lane, 0 when none does.
    /// Always 0 in the shared lane.
    pub owner: AtomicU32,
    pub _pad0: [u32; 15],
    /// Total bytes ever reserved by writers.
    pub head: AtomicU64,
    pub _pad1: [u64; 7],
    /// Total bytes ever consumed by the collector.
    pub tail: AtomicU64,
    pub _pad2: [u64; 7],
    /// Records refused because the lane was full.
    pub dropped: AtomicU64,
    pub _pad3: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<LaneHeader>() == LANE_HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(LaneHeader, head) == 64);
const _: () = assert!(core::mem::offset_of!(LaneHeader, tail) == 128);
const _: () = assert!(core::mem::offset_of!(LaneHeader, dropped) == 192);

/// Bytes a ring of `lanes` lanes of `capacity` bytes each spans, or `None`
/// when that is out of range (too many lanes, a capacity that is not a
/// power of two in range, or more than [`MAX_RING_BYTES`]).
pub const fn ring_len(lanes: u32, capacity: u32) -> Option<usize> {
    if lanes == 0
        || lanes > MAX_LANES
        || !capacity.is_power_of_two()
        || capacity < MIN_CAPACITY
        || capacity > MAX_CAPACITY
    {
        return None;
    }
    let len = HEADER_SIZE + lanes as usize * capacity as usize;
    if len > MAX_RING_BYTES {
        return None;
    }
    Some(len)
}

/// Where lane `lane` keeps its header, from the ring's start.
pub const fn lane_header_offset(lane: u32) -> usize {
    RING_HEADER_SIZE + lane as usize * LANE_HEADER_SIZE
}

/// Where lane `lane`'s data area starts, from the ring's start.
pub const fn lane_data_offset(lane: u32, capacity: u32) -> usize {
    HEADER_SIZE + lane as usize * capacity as usize
}

/// One lane of a live ring, as a writer holds it: where its header and
/// data area are, and how big the data area is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    header: *const LaneHeader,
    data: *mut u8,
    capacity: u32,
}

impl Lane {
    /// Lane `lane` of the ring at `base`.
    ///
    /// # Safety
    /// `base` must point at a live ring mapping set up by [`init`] with
    /// `capacity` and more than `lane` lanes; the result is valid as long
    /// as that mapping is.
    pub unsafe fn new(base: *mut u8, capacity: u32, lane: u32) -> Lane {
        // SAFETY: per the contract, both offsets lie inside the mapping.
        unsafe {
            Lane {
                header: base.add(lane_header_offset(lane)).cast(),
                data: base.add(lane_data_offset(lane, capacity)),
                capacity,
            }
        }
    }

    /// The lane's header.
    pub fn header(&self) -> &LaneHeader {
        // SAFETY: `new`'s contract: a live mapping holding this header.
        unsafe { &*self.header }
    }

    /// The start of the lane's data area.
    pub fn data(&self) -> *mut u8 {
        self.data
    }

    /// Bytes in the lane's data area.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Writes a fresh header for `lanes` lanes of `capacity` bytes at `base`.
///
/// # Safety
/// `base` must point at a writable, 8-aligned mapping of at least
/// [`ring_len`]`(lanes, capacity)` bytes, zeroed, that no one else uses
/// yet; `ring_len(lanes, capacity)` must be `Some`.
pub unsafe fn init(base: *mut u8, lanes: u32, capacity: u32, pid: u32) {
    let header = base.cast::<RingHeader>();
    // SAFETY: the caller guarantees a writable, aligned header's worth.
    unsafe {
        (*header).magic = MAGIC;
        (*header).version = VERSION;
        (*header).capacity = capacity;
        (*header).pid = pid;
        (*header).lanes = lanes;
    }
}

/// Claims a lane of its own for thread `tid`: the first free one after
/// the shared lane, or `None` when every one is taken. Its writes then go
/// through [`write_owned`] until [`release`].
///
/// # Safety
/// As [`Lane::new`], with `lanes` the ring's true lane count.
pub unsafe fn claim(base: *mut u8, lanes: u32, capacity: u32, tid: u32) -> Option<(u32, Lane)> {
    (SHARED_LANE + 1..lanes).find_map(|i| {
        // SAFETY: i < lanes, per the contract.
        let lane = unsafe { Lane::new(base, capacity, i) };
        // Acquire: the writes of the lane's previous owner (its `head`)
        // happen before ours.
        lane.header()
            .owner
            .compare_exchange(0, tid.max(1), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some((i, lane))
    })
}

/// Gives a claimed lane back (its owner thread is ending).
pub fn release(lane: &Lane) {
    // Release: the next owner sees every record and `head` we wrote.
    lane.header().owner.store(0, Ordering::Release);
}

/// Appends one record (`raw` followed by `name`, its `ts_ns` in clock
/// `clock`) to the shared lane; returns false, and counts it in `dropped`,
/// when the lane is full. Never blocks; safe to call from any number of
/// threads at once.
///
/// # Safety
/// `lane` must be the shared lane of a live ring ([`Lane::new`]), and
/// `name` must be at most a few KiB (far below [`LEN_MASK`]).
pub unsafe fn write_shared(lane: &Lane, raw: &RawEvent, name: &[u8], clock: u32) -> bool {
    let header = lane.header();
    let cap = u64::from(lane.capacity);
    let total = record_len(name);
    let (start, gap) = loop {
        let head = header.head.load(Ordering::Relaxed);
        let tail = header.tail.load(Ordering::Acquire);
        let Some(gap) = room(head, tail, cap, total) else {
            header.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if header
            .head
            .compare_exchange_weak(
                head,
                head + gap + total,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            break (head + gap, gap);
        }
    };
    // SAFETY: [start - gap, start + total) is ours alone until committed:
    // writers reserve disjoint ranges and the consumer stops at an
    // uncommitted word.
    unsafe { fill(lane, start, gap, total, raw, name, clock) };
    true
}

/// Appends one record to a lane this thread owns ([`claim`]): as
/// [`write_shared`], with plain loads and stores in place of the
/// compare-and-swap, since no one else reserves space here.
///
/// # Safety
/// As [`write_shared`], and the calling thread must own `lane` (it
/// claimed it and has not released it), so that no other writer touches
/// it, nor this one re-entered (from a signal handler).
#[inline]
pub unsafe fn write_owned(lane: &Lane, raw: &RawEvent, name: &[u8], clock: u32) -> bool {
    let header = lane.header();
    let cap = u64::from(lane.capacity);
    let total = record_len(name);
    let head = header.head.load(Ordering::Relaxed);
    let tail = header.tail.load(Ordering::Acquire);
    let Some(gap) = room(head, tail, cap, total) else {
        // Only the owner writes this counter: no locked add needed.
        let dropped = header.dropped.load(Ordering::Relaxed);
        header.dropped.store(dropped + 1, Ordering::Relaxed);
        return false;
    };
    // The lines a few records on, asked for now with the intent to write
    // (`prefetchw`; a no-op on CPUs without it): a lap ago the collector
    // read them, so each is in its core's cache or out in memory, and
    // fetching them on demand was a third of an event's cost. 2 KiB
    // ahead (about 16 records) took the emission bench from 32 to 20 ns;
    // 4 and 8 KiB did no better.
    #[cfg(target_arch = "x86_64")]
    for line in [0, 64] {
        let at = (head + PREFETCH_AHEAD + line) & (cap - 1);
        // SAFETY: `at` is inside the data area; a prefetch neither reads
        // nor writes memory as far as the program can tell.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(
                lane.data.add(at as usize).cast::<i8>(),
            )
        };
    }
    // SAFETY: the range is free (room) and only we write this lane.
    unsafe { fill(lane, head + gap, gap, total, raw, name, clock) };
    // After the commit: the consumer never meets an uncommitted slot here,
    // though it would wait at one as in the shared lane.
    header.head.store(head + gap + total, Ordering::Release);
    true
}

/// How far ahead of its `head` an owned lane's writer prefetches.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: u64 = 2048;

/// A record's whole slot, header and padding to 8 included.
#[inline(always)]
fn record_len(name: &[u8]) -> u64 {
    (SLOT_HEADER + RAW_EVENT_SIZE + name.len()).next_multiple_of(8) as u64
}

/// The padding needed before a record of `total` bytes reserved at
/// `head`, or `None` when the lane has no room for both. A record never
/// wraps: one that would is preceded by padding to the end, reserved
/// together with it in one step.
#[inline(always)]
fn room(head: u64, tail: u64, cap: u64, total: u64) -> Option<u64> {
    let off = head & (cap - 1);
    let gap = if off + total > cap { cap - off } else { 0 };
    // Wrapping: a head behind the tail (which an honest ring never has)
    // reads as full.
    (head.wrapping_add(gap + total).wrapping_sub(tail) <= cap).then_some(gap)
}

/// Writes and commits a reserved record at `start`, and the padding of
/// `gap` bytes before it.
///
/// # Safety
/// `[start - gap, start + total)` must be reserved by the caller in
/// `lane`'s data area, 8-aligned, and not wrap.
#[inline(always)]
unsafe fn fill(
    lane: &Lane,
    start: u64,
    gap: u64,
    total: u64,
    raw: &RawEvent,
    name: &[u8],
    clock: u32,
) {
    let mask = u64::from(lane.capacity) - 1;
    if gap > 0 {
        // SAFETY: the padding slot starts at an 8-aligned offset inside the
        // data area that this reservation owns.
        unsafe { commit(lane.data, (start - gap) & mask, gap as u32 | PADDING) };
    }
    let off = (start & mask) as usize;
    // SAFETY: [off, off + total) lies inside the data area (a reservation
    // never crosses its end) and is ours alone until committed; off is
    // 8-aligned, so the record is aligned for a RawEvent.
    unsafe {
        let slot = lane.data.add(off);
        slot.add(4).cast::<u32>().write(clock);
        let dst = slot.add(SLOT_HEADER);
        // A typed store, not a byte copy: with the record's fields in
        // registers, they are stored as they are, with no copy of the
        // record on the stack whose wide reloads of narrow stores would
        // stall on store forwarding.
        dst.cast::<RawEvent>().write(*raw);
        copy_name(dst.add(RAW_EVENT_SIZE), name);
        commit(lane.data, off as u64, total as u32);
    }
}

/// Copies a name: one of 32 bytes or fewer (most are) inline, as words
/// that overlap, reading and writing nothing outside either buffer;
/// a longer one through `memcpy`, whose call costs more than the copy of
/// a short one.
///
/// # Safety
/// `dst` must be valid for `name.len()` bytes of writes.
#[inline(always)]
unsafe fn copy_name(dst: *mut u8, name: &[u8]) {
    let (src, n) = (name.as_ptr(), name.len());
    // SAFETY: every access below lies within [0, n) of both buffers.
    unsafe {
        if n > 32 {
            core::ptr::copy_nonoverlapping(src, dst, n);
        } else if n > 16 {
            let words = [0, 8, n - 16, n - 8].map(|at| src.add(at).cast::<u64>().read_unaligned());
            for (at, word) in [0, 8, n - 16, n - 8].into_iter().zip(words) {
                dst.add(at).cast::<u64>().write_unaligned(word);
            }
        } else if n >= 8 {
            let head = src.cast::<u64>().read_unaligned();
            let tail = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(head);
            dst.add(n - 8).cast::<u64>().write_unaligned(tail);
        } else if n >= 4 {
            let head = src.cast::<u32>().read_unaligned();
            let tail = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(head);
            dst.add(n - 4).cast::<u32>().write_unaligned(tail);
        } else if n > 0 {
            // 1 to 3 bytes: the first, the middle, the last.
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
    }
}

/// Publishes a slot: everything written before is visible to a consumer
/// that reads this word with Acquire.
///
/// # Safety
/// `off` must be an 8-aligned offset inside the data area at `data`.
#[inline(always)]
unsafe fn commit(data: *mut u8, off: u64, len: u32) {
    // SAFETY: per the contract, an aligned u32 inside the mapping.
    let word = unsafe { &*data.add(off as usize).cast::<AtomicU32>() };
    word.store(len | COMMITTED, Ordering::Release);
}

/// The registration message an ipc-lib process sends over the recorder's
/// socket, with the ring's fd attached (SCM_RIGHTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: u64,
    pub version: u32,
    pub pid: u32,
}

pub const HELLO_SIZE: usize = core::mem::size_of::<Hello>();
const _: () = assert!(HELLO_SIZE == 16);

impl Hello {
    pub fn new(pid: u32) -> Self {
        Hello {
            magic: MAGIC,
            version: VERSION,
            pid,
        }
    }

    pub fn to_bytes(self) -> [u8; HELLO_SIZE] {
        let mut b = [0u8; HELLO_SIZE];
        b[..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..].copy_from_slice(&self.pid.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; HELLO_SIZE] = b.try_into().ok()?;
        let [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, v2, v3, p0, p1, p2, p3] = *b;
        Some(Hello {
            magic: u64::from_le_bytes([m0, m1, m2, m3, m4, m5, m6, m7]),
            version: u32::from_le_bytes([v0, v1, v2, v3]),
            pid: u32::from_le_bytes([p0, p1, p2, p3]),
        })
    }
}

/// The environment variable through which `ipcscope record` tells the
/// processes it runs where to register their rings: a Unix socket, `@name`
/// in the abstract namespace (what `record` gives) or a path.
pub const SOCKET_ENV: &str = "IPCSCOPE_SOCKET";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_every_length_are_copied_exactly_and_nothing_else() {
        for n in 0..=crate::raw::MAX_NAME {
            let name: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(7) | 1).collect();
            // A guard byte on each side.
            let mut buf = vec![0xEEu8; n + 2];
            // SAFETY: buf holds n bytes after its first.
            unsafe { copy_name(buf.as_mut_ptr().add(1), &name) };
            assert_eq!(&buf[1..=n], &name[..], "length {n}");
            assert_eq!((buf[0], buf[n + 1]), (0xEE, 0xEE), "length {n}");
        }
    }

    /// A ring of `lanes` lanes of the smallest capacity, in 8-aligned
    /// memory.
    fn ring(lanes: u32) -> Vec<u64> {
        let len = ring_len(lanes, MIN_CAPACITY).unwrap();
        let mut mem = vec![0u64; len / 8];
        // SAFETY: zeroed, aligned, ring_len bytes, ours alone.
        unsafe { init(mem.as_mut_ptr().cast(), lanes, MIN_CAPACITY, 7) };
        mem
    }

    #[test]
    fn a_lane_is_claimed_by_one_thread_at_a_time_and_never_the_shared_one() {
        let mut mem = ring(3);
        let base: *mut u8 = mem.as_mut_ptr().cast();
        // SAFETY: a ring of 3 lanes set up by init.
        let (a, b, none) = unsafe {
            (
                claim(base, 3, MIN_CAPACITY, 10),
                claim(base, 3, MIN_CAPACITY, 11),
                claim(base, 3, MIN_CAPACITY, 12),
            )
        };
        assert_eq!(a.map(|l| l.0), Some(1));
        assert_eq!(b.map(|l| l.0), Some(2));
        assert!(none.is_none(), "the shared lane is never claimed");
        release(&a.unwrap().1);
        // SAFETY: as above.
        let again = unsafe { claim(base, 3, MIN_CAPACITY, 12) };
        assert_eq!(
            again.map(|l| (l.0, l.1.header().owner.load(Ordering::Relaxed))),
            Some((1, 12))
        );
    }

    #[test]
    fn owned_and_shared_writes_lay_out_the_same_slots() {
        let mut mem = ring(2);
        let base: *mut u8 = mem.as_mut_ptr().cast();
        let raw = RawEvent {
            ts_ns: 0x1122_3344_5566_7788,
            pid: 7,
            msg_id: 9,
            name_len: 5,
            ..RawEvent::default()
        };
        // SAFETY: lanes of a ring set up by init; lane 1 is written by
        // this thread alone.
        let (shared, owned) = unsafe {
            let shared = Lane::new(base, MIN_CAPACITY, SHARED_LANE);
            let owned = Lane::new(base, MIN_CAPACITY, 1);
            assert!(write_shared(&shared, &raw, b"jobs1", clock::TSC));
            assert!(write_owned(&owned, &raw, b"jobs1", clock::TSC));
            (shared, owned)
        };
        let total = (SLOT_HEADER + RAW_EVENT_SIZE + 5).next_multiple_of(8);
        for lane in [shared, owned] {
            assert_eq!(lane.header().head.load(Ordering::Relaxed), total as u64);
            // SAFETY: the slot just written, inside the lane.
            let slot = unsafe { core::slice::from_raw_parts(lane.data(), total) };
            let word = u32::from_le_bytes(slot[..4].try_into().unwrap());
            assert_eq!(word, COMMITTED | total as u32);
            assert_eq!(
                u32::from_le_bytes(slot[4..8].try_into().unwrap()),
                clock::TSC
            );
            assert_eq!(&slot[8..16], &raw.ts_ns.to_le_bytes());
            assert_eq!(&slot[SLOT_HEADER + RAW_EVENT_SIZE..][..5], b"jobs1");
        }
    }

    #[test]
    fn a_full_owned_lane_refuses_and_counts() {
        let mut mem = ring(2);
        // SAFETY: lane 1 of a ring set up by init, written by us alone.
        let lane = unsafe { Lane::new(mem.as_mut_ptr().cast(), MIN_CAPACITY, 1) };
        let raw = RawEvent::default();
        let fit = MIN_CAPACITY as usize / (SLOT_HEADER + RAW_EVENT_SIZE);
        for i in 0..fit {
            // SAFETY: as above.
            assert!(
                unsafe { write_owned(&lane, &raw, b"", clock::MONOTONIC_NS) },
                "record {i}"
            );
        }
        // SAFETY: as above.
        assert!(!unsafe { write_owned(&lane, &raw, b"", clock::MONOTONIC_NS) });
        assert_eq!(lane.header().dropped.load(Ordering::Relaxed), 1);
        // Freed by the consumer: room again, after padding to the end.
        lane.header().tail.store(
            lane.header().head.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        assert!(unsafe { write_owned(&lane, &raw, b"", clock::MONOTONIC_NS) });
    }

    #[test]
    fn hello_round_trips_and_rejects_wrong_sizes() {
        let h = Hello::new(4242);
        assert_eq!(Hello::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(Hello::from_bytes(&h.to_bytes()[..15]), None);
    }
}
