//! The bytes of a broadcast segment, and mapping one.
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
//! word 3   checksum of words 1-2 and the payload (channel's `Checksum`)
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

use std::ffi::CString;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::channel::layout::{PeerSlot, FRAME_HEADER_SIZE};
use crate::channel::OpenError;
use crate::shm::{self, Mapping, OpenHow};

/// The first word of every broadcast segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSBCST");
/// Bumped on any change to these bytes; other versions are refused.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes before slot 0.
pub const HEADER_SIZE: usize = 512;
/// The most slots a broadcast may have.
pub const MAX_CAPACITY: usize = 1 << 24;
/// The largest message (a slot stays within a 32-bit length).
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;
/// Offset of the count of messages published.
pub const OFFSET_WRITE_SEQ: usize = offset_of!(Header, write_seq);

/// Default slots: enough for a subscriber to be a few scheduler ticks
/// late at tens of thousands of messages a second.
pub(crate) const DEFAULT_CAPACITY: usize = 256;
/// Default largest message.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 4096;

/// Bytes one slot takes for messages of at most `max` bytes.
pub const fn slot_size(max: usize) -> usize {
    FRAME_HEADER_SIZE + max.div_ceil(8) * 8
}

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
        HEADER_SIZE + self.capacity * slot_size(self.max_message_size)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(format!(
                "capacity {} is not between 1 and {MAX_CAPACITY} messages",
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

/// What a builder asked for; `None` is taken from an existing broadcast,
/// or defaulted when creating one.
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

/// A mapped broadcast segment.
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
        let h = seg.header();
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.capacity.store(layout.capacity as u64, Ordering::Relaxed);
        h.max_message
            .store(layout.max_message_size as u64, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u64, Ordering::Relaxed);
        // Last, so an opener that sees it sees the rest.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    fn attach(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let (map, magic) = Mapping::attach(name, path, HEADER_SIZE, shm::MAX_OBJECT, "broadcast")?;
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        if magic != MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                kind: "broadcast",
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

    /// The words of the slot message `seq` lives in.
    pub(crate) fn slot(&self, seq: u64) -> &[AtomicU64] {
        let i = (seq % self.layout.capacity as u64) as usize;
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
    fn stamps_tell_writing_from_done_and_never_collide_with_unwritten() {
        assert_eq!(writing(0), 1);
        assert_eq!(done(0), 2);
        assert!(done(5) < writing(6));
        assert_eq!(slot_size(0), 32);
        assert_eq!(slot_size(9), 48);
    }

    #[test]
    fn layout_refuses_empty_and_huge_shapes() {
        let ok = Layout {
            capacity: 4,
            max_message_size: 64,
        };
        assert!(ok.check().is_ok());
        assert!(Layout { capacity: 0, ..ok }.check().is_err());
        assert!(Layout {
            capacity: MAX_CAPACITY,
            max_message_size: MAX_MESSAGE_SIZE
        }
        .check()
        .is_err());
    }
}
