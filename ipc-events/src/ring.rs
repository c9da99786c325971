//! The layout of an ipc-lib event ring: the one structure an ipc-lib
//! process and the collector share.
//!
//! A process that uses ipc-lib creates one ring (a memfd) and hands the fd
//! to the recorder over its Unix socket; from then on it writes events with
//! no syscall, and the collector maps the same memory and reads them.
//!
//! The ring is multi-producer (any thread of the process), single-consumer
//! (the collector). Producers reserve space by compare-and-swap on `head`,
//! write a record, then publish it by storing its commit word with Release
//! ordering. The consumer reads commit words with Acquire, copies records
//! out, zeroes what it consumed (so a later lap never mistakes stale bytes
//! for a commit word) and advances `tail`. A full ring refuses the record
//! and counts it in `dropped`: tracing never blocks the application.
//!
//! The consumer trusts nothing here: the writing process may be buggy or
//! hostile, so every length and position is checked before use.

use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::raw::{RawEvent, RAW_EVENT_SIZE};

/// `RingHeader::magic`: "IPCSRING".
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSRING");
/// Bumped whenever this layout or the registration changes (2: the
/// recorder answers a registration with [`ACCEPTED`]; 3: it says
/// [`READY`] before the process makes its ring).
pub const VERSION: u32 = 3;
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
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 256;
/// Every record starts with an 8-byte slot header: the commit word and
/// padding, so records stay 8-aligned.
pub const SLOT_HEADER: usize = 8;
/// Commit-word flag: the record is complete and may be read.
pub const COMMITTED: u32 = 1 << 31;
/// Commit-word flag: the record is padding up to the end of the data area.
pub const PADDING: u32 = 1 << 30;
/// Commit-word bits holding the record's total length, slot header included.
pub const LEN_MASK: u32 = PADDING - 1;
/// Smallest and largest data areas a ring may have (powers of two).
pub const MIN_CAPACITY: u32 = 1 << 12;
pub const MAX_CAPACITY: u32 = 1 << 28;

/// The first [`HEADER_SIZE`] bytes of a ring. `head`, `tail` and
/// `dropped` sit on cache lines of their own: producers hammer `head`, the
/// consumer `tail`.
#[repr(C)]
pub struct RingHeader {
    pub magic: u64,
    pub version: u32,
    /// Bytes in the data area; a power of two.
    pub capacity: u32,
    /// The process that owns (writes) the ring.
    pub pid: u32,
    pub _pad0: [u32; 11],
    /// Total bytes ever reserved by producers.
    pub head: AtomicU64,
    pub _pad1: [u64; 7],
    /// Total bytes ever consumed by the collector.
    pub tail: AtomicU64,
    pub _pad2: [u64; 7],
    /// Records refused because the ring was full.
    pub dropped: AtomicU64,
    pub _pad3: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<RingHeader>() == HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(RingHeader, head) == 64);
const _: () = assert!(core::mem::offset_of!(RingHeader, tail) == 128);
const _: () = assert!(core::mem::offset_of!(RingHeader, dropped) == 192);

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

/// Writes a fresh header at `base`.
///
/// # Safety
/// `base` must point at a writable, 8-aligned mapping of at least
/// `HEADER_SIZE + capacity` bytes, zeroed, that no one else uses yet;
/// `capacity` must be a power of two within [`MIN_CAPACITY`,
/// `MAX_CAPACITY`].
pub unsafe fn init(base: *mut u8, capacity: u32, pid: u32) {
    let header = base.cast::<RingHeader>();
    // SAFETY: the caller guarantees a writable, aligned header's worth.
    unsafe {
        (*header).magic = MAGIC;
        (*header).version = VERSION;
        (*header).capacity = capacity;
        (*header).pid = pid;
    }
}

/// Appends one record (`raw` followed by `name`); returns false, and counts
/// it in `dropped`, when the ring is full. Never blocks; safe to call from
/// any number of threads at once.
///
/// # Safety
/// `base` must point at a live ring mapping set up by [`init`] (or by a
/// producer that followed it) whose header says `capacity` truthfully, and
/// `name` must be at most a few KiB (far below [`LEN_MASK`]).
pub unsafe fn write(base: *mut u8, raw: &RawEvent, name: &[u8]) -> bool {
    // SAFETY: the caller guarantees a live, initialised header at base.
    let header = unsafe { &*base.cast::<RingHeader>() };
    // SAFETY: the data area starts HEADER_SIZE bytes into the mapping.
    let data = unsafe { base.add(HEADER_SIZE) };
    let cap = u64::from(header.capacity);
    let total = (SLOT_HEADER + RAW_EVENT_SIZE + name.len()).next_multiple_of(8) as u64;
    let (start, gap) = loop {
        let head = header.head.load(Ordering::Relaxed);
        let tail = header.tail.load(Ordering::Acquire);
        let off = head & (cap - 1);
        // A record never wraps: one that would is preceded by padding to
        // the end, reserved together with it in one step.
        let gap = if off + total > cap { cap - off } else { 0 };
        if head + gap + total - tail > cap {
            header.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
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
    if gap > 0 {
        // SAFETY: the padding slot starts at an 8-aligned offset inside the
        // data area that this reservation owns.
        unsafe { commit(data, (start - gap) & (cap - 1), gap as u32 | PADDING) };
    }
    let off = (start & (cap - 1)) as usize;
    // SAFETY: [off, off + total) lies inside the data area (a reservation
    // never crosses its end) and is ours alone until committed: producers
    // reserve disjoint ranges and the consumer stops at an uncommitted word.
    // RawEvent is plain integers with no padding.
    unsafe {
        let dst = data.add(off + SLOT_HEADER);
        ptr::copy_nonoverlapping(ptr::from_ref(raw).cast::<u8>(), dst, RAW_EVENT_SIZE);
        ptr::copy_nonoverlapping(name.as_ptr(), dst.add(RAW_EVENT_SIZE), name.len());
        commit(data, off as u64, total as u32);
    }
    true
}

/// Publishes a slot: everything written before is visible to a consumer
/// that reads this word with Acquire.
///
/// # Safety
/// `off` must be an 8-aligned offset inside the data area at `data`.
unsafe fn commit(data: *mut u8, off: u64, len: u32) {
    // SAFETY: per the contract, an aligned u32 inside the mapping.
    let word = unsafe { &*data.add(off as usize).cast::<AtomicU32>() };
    word.store(len | COMMITTED, Ordering::Release);
}

/// The environment variable through which `ipcscope record` tells the
/// processes it runs where to register their rings: a Unix socket, `@name`
/// in the abstract namespace (what `record` gives) or a path.
pub const SOCKET_ENV: &str = "IPCSCOPE_SOCKET";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_wrong_sizes() {
        let h = Hello::new(4242);
        assert_eq!(Hello::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(Hello::from_bytes(&h.to_bytes()[..15]), None);
    }
}
