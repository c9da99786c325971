//! The bytes of a work-queue segment; `crate::slots` maps and checks it.
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
//! word 3   checksum of words 1-2 and the payload (the channel's, `checksum`)
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

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::channel::layout::PeerSlot;
use crate::slots::{self, Prefix, SlotHeader};
pub use crate::slots::{slot_size, MAX_MESSAGE_SIZE};

/// The first word of every queue segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSWQUE");
/// Bumped on any change to these bytes; other versions are refused.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes before slot 0.
pub const HEADER_SIZE: usize = 4576;
/// The most slots a queue may have.
pub const MAX_CAPACITY: usize = 1 << 20;
/// Processes that may push at once.
pub const MAX_PRODUCERS: usize = 64;
/// Processes that may consume at once (one owner value is [`ORPHAN`]).
pub const MAX_CONSUMERS: usize = 63;

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
        slots::segment_size::<Header>(self.capacity, self.max_message_size)
    }
}

/// Every field is an atomic: other processes write any byte at any time.
#[repr(C)]
pub(crate) struct Header {
    /// Read and written by `slots::Segment` only.
    _prefix: Prefix,

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

// SAFETY: `Header` is `#[repr(C)]`, atomics only, 8-aligned, starts with
// the prefix and is exactly HEADER_SIZE (asserted above), a multiple of 8.
unsafe impl SlotHeader for Header {
    const KIND: &'static str = "queue";
    const UNIT: &'static str = "jobs";
    const MAGIC: u64 = MAGIC;
    const VERSION: u32 = LAYOUT_VERSION;
    const SIZE: usize = HEADER_SIZE;
    const MAX_CAPACITY: usize = MAX_CAPACITY;
    /// Jobs waiting plus jobs being worked on.
    const DEFAULT_CAPACITY: usize = 1024;

    fn init(seg: &Segment) {
        // Slot i waits for position i; the file is zero-filled, which is
        // slot 0's state already.
        for i in 1..seg.capacity as u64 {
            seg.slot(i)[0].store(State::free(i), Ordering::Relaxed);
        }
        seg.header().next_msg_id.store(1, Ordering::Relaxed);
    }
}

/// A mapped queue segment; slot `p % capacity` holds position `p`.
pub(crate) type Segment = slots::Segment<Header>;

impl Segment {
    pub(crate) fn layout(&self) -> Layout {
        Layout {
            capacity: self.capacity,
            max_message_size: self.max_message_size,
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
