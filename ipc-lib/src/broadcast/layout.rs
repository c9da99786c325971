//! The bytes of a broadcast segment; `crate::slots` maps and checks it.
//!
//! ```text
//! offset 0      header (HEADER_SIZE bytes, see `Header`)
//! HEADER_SIZE   slot 0, slot 1, ... slot CAPACITY-1, each slot_size() bytes
//! ```
//!
//! Message `s` (counted from 0) lives in slot `s % capacity`. A slot is a
//! channel frame (`crate::channel::layout`) whose first word is a seqlock
//! stamp instead of a commit word:
//!
//! ```text
//! word 0   stamp: 0 never written; 2s+1 message s being written;
//!          2s+2 message s complete
//! word 1   FRAME_MARKER << 32 | payload length in bytes
//! word 2   message id (s + 1; 0 is never an id)
//! word 3   checksum of words 1-2 and the payload (the channel's, `checksum`)
//! word 4.. payload, zero-padded to a whole word
//! ```
//!
//! The publisher stores the odd stamp, a Release fence, the frame, then
//! the even stamp (Release), then `write_seq = s + 1` (SeqCst). A
//! subscriber loads `write_seq`, the stamp (Acquire), copies the frame
//! with relaxed loads, an Acquire fence, and the stamp again: two equal
//! stamps naming its message mean the copy is whole, anything else that
//! the publisher came round and wrote over it (the subscriber lagged).
//! The checksum then catches a frame damaged by anyone else.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::channel::layout::PeerSlot;
use crate::slots::{self, Prefix, SlotHeader};
pub use crate::slots::{slot_size, MAX_MESSAGE_SIZE};

/// The first word of every broadcast segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSBCST");
/// Bumped on any change to these bytes; other versions are refused.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes before slot 0.
pub const HEADER_SIZE: usize = 512;
/// The most slots a broadcast may have.
pub const MAX_CAPACITY: usize = 1 << 24;
/// Offset of the count of messages published.
pub const OFFSET_WRITE_SEQ: usize = offset_of!(Header, write_seq);

/// The stamp of message `seq` while it is written.
pub(crate) const fn writing(seq: u64) -> u64 {
    2 * seq + 1
}

/// The stamp of message `seq` once complete.
pub(crate) const fn done(seq: u64) -> u64 {
    2 * seq + 2
}

/// The shape of a broadcast, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Layout {
    /// Slots: how many of the newest messages a subscriber can still read.
    pub capacity: usize,
    /// The largest payload one message may carry.
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

    /// Messages published: the next message's sequence number.
    pub write_seq: AtomicU64,
    _pad1: [AtomicU64; 15],

    /// Bumped by every publish that finds a sleeping subscriber.
    pub data_futex: AtomicU32,
    pub recv_waiters: AtomicU32,
    _pad2: [AtomicU64; 15],

    pub publisher: PeerSlot,
}

const _: () = assert!(offset_of!(Header, write_seq) == 128);
const _: () = assert!(offset_of!(Header, data_futex) == 256);
const _: () = assert!(offset_of!(Header, publisher) == 384);
const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);

// SAFETY: `Header` is `#[repr(C)]`, atomics only, 8-aligned, starts with
// the prefix and fits in HEADER_SIZE (asserted above), a multiple of 8.
unsafe impl SlotHeader for Header {
    const KIND: &'static str = "broadcast";
    const UNIT: &'static str = "messages";
    const MAGIC: u64 = MAGIC;
    const VERSION: u32 = LAYOUT_VERSION;
    const SIZE: usize = HEADER_SIZE;
    const MAX_CAPACITY: usize = MAX_CAPACITY;
    /// Enough for a subscriber to be a few scheduler ticks late at tens
    /// of thousands of messages a second.
    const DEFAULT_CAPACITY: usize = 256;
}

/// A mapped broadcast segment; slot `s % capacity` holds message `s`.
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
    fn stamps_tell_writing_from_done_and_never_collide_with_unwritten() {
        assert_eq!(writing(0), 1);
        assert_eq!(done(0), 2);
        assert!(done(5) < writing(6));
        assert_eq!(slot_size(0), 32);
        assert_eq!(slot_size(9), 48);
    }

    #[test]
    fn layout_refuses_empty_and_huge_shapes() {
        let check = slots::check::<Header>;
        assert!(check(4, 64).is_ok());
        assert!(check(0, 64).is_err());
        assert!(check(MAX_CAPACITY, MAX_MESSAGE_SIZE).is_err());
    }
}
