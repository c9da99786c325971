//! The bytes of a work-queue segment, and mapping one.
//!
//! ```text
//! offset 0      header (HEADER_SIZE bytes, see `Header`)
//! HEADER_SIZE   slot 0, slot 1, ... slot CAPACITY-1, each slot_size() bytes
//! ```
//!
//! Job position `p` (counted from 0, in push order) lives in slot
//! `p % capacity`. A slot is a channel frame (`crate::channel::layout`)
//! whose first word is the slot's state instead of a commit word:
//!
//! ```text
//! word 0   state: pos << 16 | deliveries << 8 | phase << 6 | owner
//! word 1   FRAME_MARKER << 32 | payload length in bytes
//! word 2   message id (the job's id; 0 is never an id)
//! word 3   checksum of words 1-2 and the payload (channel's `Checksum`)
//! word 4.. payload, zero-padded to a whole word
//! ```
//!
//! A slot goes round `FREE(p)` → `WRITING(p, producer)` → `READY(p)` →
//! `TAKEN(p, consumer)` → `FREE(p + capacity)` (the ack). Every step is
//! one compare-and-swap of the state word, so whoever wins it owns the
//! step, and the word always names the process a step waits for: a
//! producer killed while writing is found in `WRITING`, a consumer killed
//! while working in `TAKEN`, and the next consumer that looks takes over
//! (see `consumer.rs`). `TAKEN` with owner [`ORPHAN`] is a job given
//! back (its guard dropped unacknowledged, or its consumer found dead by
//! the process that took its slot over): any consumer may take it.
//!
//! `head` (the next position to push) and `next` (the next to deliver)
//! are hints that only grow: the slot's own word decides, and anyone who
//! finds a hint behind the slot it names moves it on, so a process killed
//! between its compare-and-swap and the hint's update stalls nobody.

use std::ffi::CString;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::channel::layout::{PeerSlot, FRAME_HEADER_SIZE};
use crate::channel::OpenError;
use crate::shm::{self, Mapping, OpenHow};

/// The first word of every queue segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSWQUE");
/// Bumped on any change to these bytes; other versions are refused.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes before slot 0.
pub const HEADER_SIZE: usize = 4576;
/// The most slots a queue may have.
pub const MAX_CAPACITY: usize = 1 << 20;
/// The largest job (a slot stays within a 32-bit length).
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;
/// Processes that may push at once.
pub const MAX_PRODUCERS: usize = 64;
/// Processes that may consume at once (one owner value is [`ORPHAN`]).
pub const MAX_CONSUMERS: usize = 63;

/// Default slots: jobs waiting plus jobs being worked on.
pub(crate) const DEFAULT_CAPACITY: usize = 1024;
/// Default largest job.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 4096;

/// Slot phases, bits 6..8 of the state word.
pub(crate) mod phase {
    pub const FREE: u64 = 0;
    pub const WRITING: u64 = 1;
    pub const READY: u64 = 2;
    pub const TAKEN: u64 = 3;
}

/// The owner of a `TAKEN` job that nobody works on: given back, for any
/// consumer to take.
pub(crate) const ORPHAN: usize = 63;
/// Positions stay below this (2^48 jobs: 9 years at a million a second),
/// so they fit the state word; a larger one is damage.
pub(crate) const MAX_POSITION: u64 = 1 << 48;

/// A slot's state word, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub pos: u64,
    /// Deliveries so far (saturating at 255).
    pub deliveries: u8,
    pub phase: u64,
    /// A producer's slot (`WRITING`) or a consumer's (`TAKEN`).
    pub owner: usize,
}

impl State {
    pub(crate) const fn free(pos: u64) -> u64 {
        pos << 16
    }

    pub(crate) const fn writing(pos: u64, producer: usize) -> u64 {
        pos << 16 | phase::WRITING << 6 | producer as u64
    }

    pub(crate) const fn ready(pos: u64) -> u64 {
        pos << 16 | phase::READY << 6
    }

    pub(crate) const fn taken(pos: u64, deliveries: u8, consumer: usize) -> u64 {
        pos << 16 | (deliveries as u64) << 8 | phase::TAKEN << 6 | consumer as u64
    }

    pub(crate) const fn unpack(word: u64) -> State {
        State {
            pos: word >> 16,
            deliveries: (word >> 8) as u8,
            phase: word >> 6 & 3,
            owner: (word & 63) as usize,
        }
    }
}

/// Bytes one slot takes for jobs of at most `max` bytes.
pub const fn slot_size(max: usize) -> usize {
    FRAME_HEADER_SIZE + max.div_ceil(8) * 8
}

/// The shape of a queue, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Layout {
    /// Slots: jobs waiting plus jobs delivered and not yet acknowledged.
    pub capacity: usize,
    /// The largest payload one job may carry.
    pub max_message_size: usize,
}

impl Layout {
    /// Bytes of the whole segment.
    pub const fn segment_size(&self) -> usize {
        HEADER_SIZE + self.capacity * slot_size(self.max_message_size)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(format!(
                "capacity {} is not between 1 and {MAX_CAPACITY} jobs",
                self.capacity
            ));
        }
        if self.max_message_size > MAX_MESSAGE_SIZE {
            return Err(format!(
                "max message size {} exceeds the limit of {MAX_MESSAGE_SIZE}",
                self.max_message_size
            ));
        }
        let size = (self.capacity as u128) * (slot_size(self.max_message_size) as u128);
        if size > shm::MAX_OBJECT as u128 {
            return Err(format!(
                "{} slots of {} bytes exceed the limit of {} bytes",
                self.capacity,
                slot_size(self.max_message_size),
                shm::MAX_OBJECT
            ));
        }
        Ok(())
    }
}

/// What a builder asked for; `None` is taken from an existing queue, or
/// defaulted when creating one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LayoutRequest {
    pub capacity: Option<usize>,
    pub max_message_size: Option<usize>,
}

/// Every field is an atomic: other processes write any byte at any time.
#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    _pad_v: AtomicU32,
    pub capacity: AtomicU64,
    pub max_message: AtomicU64,
    pub header_size: AtomicU64,
    _pad0: [AtomicU64; 11],

    /// The next position to push (a hint, see the module documentation).
    pub head: AtomicU64,
    pub next_msg_id: AtomicU64,
    _pad1: [AtomicU64; 14],

    /// The next position to deliver (a hint).
    pub next: AtomicU64,
    /// Bumped whenever a job is given back: consumers look for given-back
    /// jobs when it moved, not only once a liveness slice.
    pub returned: AtomicU64,
    /// Deliveries never acknowledged, whose job went round again.
    pub redelivered: AtomicU64,
    /// Jobs lost because their producer died while writing them.
    pub skipped: AtomicU64,
    _pad2: [AtomicU64; 12],

    /// Bumped by pushes and give-backs that find a sleeping consumer.
    pub data_futex: AtomicU32,
    pub recv_waiters: AtomicU32,
    /// Bumped by acks that find a sleeping producer.
    pub space_futex: AtomicU32,
    pub send_waiters: AtomicU32,
    _pad3: [AtomicU64; 14],

    pub producers: [PeerSlot; MAX_PRODUCERS],
    pub consumers: [PeerSlot; MAX_CONSUMERS],
}

const _: () = assert!(offset_of!(Header, head) == 128);
const _: () = assert!(offset_of!(Header, next) == 256);
const _: () = assert!(offset_of!(Header, data_futex) == 384);
const _: () = assert!(offset_of!(Header, producers) == 512);
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

/// A mapped queue segment.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Mapping,
    pub layout: Layout,
    slot_words: usize,
}

impl Segment {
    /// Creates, opens or either, as channels do (`shm::open_with`).
    pub(crate) fn open(
        name: &str,
        how: OpenHow,
        req: &LayoutRequest,
        wait: Duration,
    ) -> Result<(Segment, bool), OpenError> {
        let path = shm::shm_name(name)?;
        let name = shm::display_name(name);
        shm::open_with(
            how,
            wait,
            || Self::create(name, path.clone(), req),
            || Self::attach(name, path.clone(), req),
        )
    }

    fn create(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let layout = Layout {
            capacity: req.capacity.unwrap_or(DEFAULT_CAPACITY),
            max_message_size: req.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE),
        };
        layout.check().map_err(|reason| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason,
        })?;
        let map = Mapping::create(name, path, layout.segment_size())?;
        let seg = Segment::new(map, layout);
        // Slot i waits for position i; the file is zero-filled, which is
        // slot 0's state already.
        for i in 1..layout.capacity as u64 {
            seg.slot(i)[0].store(State::free(i), Ordering::Relaxed);
        }
        let h = seg.header();
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.capacity.store(layout.capacity as u64, Ordering::Relaxed);
        h.max_message
            .store(layout.max_message_size as u64, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u64, Ordering::Relaxed);
        h.next_msg_id.store(1, Ordering::Relaxed);
        // Last, so an opener that sees it sees the rest.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    fn attach(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let (map, magic) = Mapping::attach(name, path, HEADER_SIZE, shm::MAX_OBJECT, "queue")?;
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        if magic != MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                kind: "queue",
                found: magic,
            });
        }
        // SAFETY: as in `header`: at least HEADER_SIZE bytes, page-aligned,
        // atomics only; the borrow ends before `map` moves.
        let h = unsafe { map.ptr().cast::<Header>().as_ref() };
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let header_size = h.header_size.load(Ordering::Relaxed);
        if header_size != HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "header size {header_size}, expected {HEADER_SIZE}"
            )));
        }
        // Read once: later changes by anyone are never read again.
        let layout = Layout {
            capacity: usize::try_from(h.capacity.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
            max_message_size: usize::try_from(h.max_message.load(Ordering::Relaxed))
                .unwrap_or(usize::MAX),
        };
        layout.check().map_err(corrupt)?;
        if layout.segment_size() != map.len() {
            return Err(corrupt(format!(
                "{} slots of {} bytes do not fill the object's {} bytes",
                layout.capacity,
                slot_size(layout.max_message_size),
                map.len()
            )));
        }
        let mismatch = |field: &'static str, expected: usize, found: usize| {
            Err(OpenError::LayoutMismatch {
                name: name.to_owned(),
                field,
                expected: expected as u64,
                found: found as u64,
            })
        };
        if let Some(want) = req.capacity.filter(|&c| c != layout.capacity) {
            return mismatch("capacity", want, layout.capacity);
        }
        if let Some(want) = req
            .max_message_size
            .filter(|&m| m != layout.max_message_size)
        {
            return mismatch("max message size", want, layout.max_message_size);
        }
        Ok(Segment::new(map, layout))
    }

    fn new(map: Mapping, layout: Layout) -> Segment {
        Segment {
            map,
            slot_words: slot_size(layout.max_message_size) / 8,
            layout,
        }
    }

    pub(crate) fn set_unlink_on_drop(&mut self, yes: bool) {
        self.map.set_unlink_on_drop(yes);
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (create sized
        // it so, attach checked it), page-aligned, lives as long as
        // `self`, and `Header` is atomics only: any bits are valid and
        // other processes' writes are no data race.
        unsafe { self.map.ptr().cast::<Header>().as_ref() }
    }

    /// The words of the slot position `pos` lives in.
    pub(crate) fn slot(&self, pos: u64) -> &[AtomicU64] {
        let i = (pos % self.layout.capacity as u64) as usize;
        // SAFETY: slot i < capacity spans [HEADER_SIZE + i * slot bytes,
        // + slot bytes), inside the mapping, whose size is exactly
        // segment_size() (checked on attach, made so on create); HEADER_SIZE
        // and slot sizes are multiples of 8 and the mapping page-aligned,
        // so the words are aligned; atomics accept any bits and concurrent
        // writers; the slice borrows `self`, so it dies before the mapping.
        unsafe {
            std::slice::from_raw_parts(
                self.map
                    .ptr()
                    .as_ptr()
                    .add(HEADER_SIZE + i * self.slot_words * 8)
                    .cast::<AtomicU64>(),
                self.slot_words,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_word_unpacks_to_what_was_packed() {
        let s = State::unpack(State::taken(123_456, 7, 42));
        assert_eq!(
            s,
            State {
                pos: 123_456,
                deliveries: 7,
                phase: phase::TAKEN,
                owner: 42
            }
        );
        assert_eq!(State::unpack(State::free(5)).phase, phase::FREE);
        assert_eq!(State::unpack(State::writing(5, 63)).owner, 63);
        assert_eq!(
            State::unpack(State::ready(MAX_POSITION - 1)).pos,
            MAX_POSITION - 1
        );
    }
}
