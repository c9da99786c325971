//! The bytes of a channel segment: what both ends, and anything that
//! inspects a channel from outside (tests, the collector, a debugger), agree
//! on.
//!
//! ```text
//! offset 0      header (HEADER_SIZE bytes, one page)
//!   0           line 0, written once by the creator before `magic`:
//!                 magic u64, version u32, mode u32, capacity u64,
//!                 max_message u64, header_size u64, commit_key u64
//!   128         line 1, producer: head u64 (next free byte; multi-producer:
//!                 the reservation word, below), next_msg_id u64
//!   256         line 2, consumer: tail u64 (next byte to read)
//!   384         line 3, receiver sleeps: data_futex u32, recv_waiters u32
//!   512         line 4, senders sleep: space_futex u32, send_waiters u32,
//!                 slots_used u32 (one past the highest sender slot used)
//!   640         receiver slot, then MAX_SENDERS sender slots, 32 bytes each:
//!                 state_pid u64 (state << 32 | pid), start_time u64,
//!                 claim u64, claim_size u64 (multi-producer senders, below)
//! offset 4096   data: `capacity` bytes, a ring of frames
//! ```
//!
//! Positions (`head`, `tail`) count bytes since the channel was created and
//! never wrap; a position's place in the data area is `pos % capacity`. Every
//! frame starts at a multiple of 8 and is a whole number of 8-byte words, so
//! no word straddles the end of the ring, though a frame may: its words
//! continue at the start of the data area.
//!
//! A frame, all words in native byte order:
//!
//! ```text
//! word 0   commit, stored last; a reader trusts nothing in the frame until
//!          it sees this: pos ^ commit_key (single-producer), or the
//!          reservation word the frame's reservation replaced ^ commit_key
//!          (multi-producer: pos << 3 | the slot of the previous frame's
//!          sender)
//! word 1   FRAME_MARKER << 32 | payload length in bytes
//! word 2   message id (from next_msg_id, never 0)
//! word 3   checksum: CRC-64/XZ of words 1 and 2, then the payload words
//!          zero-padded to a multiple of 16 bytes (see `checksum`)
//! word 4.. payload, the last word zero-padded
//! ```
//!
//! A skip frame (layout version 4) is a multi-producer sender's loan
//! (`Sender::loan`) given up after its reservation: it is committed like
//! any frame, with `SKIP_MARKER` in place of `FRAME_MARKER` in word 1
//! (the length still saying how far it reaches), 0 in word 2 and, in word
//! 3, the checksum of words 1 and 2 alone. Its payload is whatever the
//! ring held; the receiver checks the three words and steps over it,
//! delivering nothing. (A single-producer loan given up was never
//! published, so needs none.)
//!
//! Multi-producer channels must survive a sender that dies at any
//! instruction, so a reservation records its owner and size atomically with
//! itself:
//!
//! - `head` is the reservation word `pos << 3 | slot`: the next free byte and
//!   the sender slot that reserved the frame ending there. A sender reserves
//!   `[pos, pos + size)` by a compare-and-swap of `head` from `W = pos << 3 |
//!   s'` to `(pos + size) << 3 | s`.
//! - Before that compare-and-swap it writes `claim_size = size`, then `claim
//!   = W + 1` into its slot, and clears `claim` (0) once the frame is
//!   committed or the attempt given up. A frame whose sender is dead is
//!   therefore always named, with its size, by a dead sender's claim.
//! - Senders that lost the race for the same `W` and died before retrying
//!   name it too. The owner is told apart by what its compare-and-swap left:
//!   `head` is `(pos + size) << 3 | s`, or the next reservation replaced
//!   that word (its sender's claim, or its frame's commit word, says so). No
//!   other sender's `(pos + size) << 3 | s` was ever in `head`.
//!
//! Producer and consumer positions sit 128 bytes apart rather than 64 because
//! Intel cores prefetch cache lines in adjacent pairs, which would make two
//! 64-byte neighbours bounce between cores anyway.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The first word of every channel segment: `IPCSCHAN` in little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSCHAN");
/// The layout described in this module. Any change to it bumps this.
pub const LAYOUT_VERSION: u32 = 4;
/// Bytes before the data area: one page, so the ring starts page-aligned.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_SIZE: usize = 32;
/// The high half of a frame's second word.
pub const FRAME_MARKER: u32 = u32::from_le_bytes(*b"FRME");
/// The high half of a skip frame's second word: a multi-producer loan its
/// sender gave up, which the receiver steps over (see the module docs).
pub const SKIP_MARKER: u32 = u32::from_le_bytes(*b"SKIP");
/// The most senders a multi-producer channel can have attached at once.
pub const MAX_SENDERS: usize = 64;
const _: () = assert!(MAX_SENDERS <= 1 << resv::SLOT_BITS);
/// The largest data area a channel may have (1 TiB): positions then stay far
/// from any overflow, and a hostile header cannot ask for an absurd mapping.
pub const MAX_CAPACITY: usize = 1 << 40;
/// The largest message: the frame's length field is 32 bits.
pub const MAX_MESSAGE_SIZE: usize = (u32::MAX as usize) - 7;

/// Byte offset of the header's `magic` word.
pub const OFFSET_MAGIC: usize = offset_of!(Header, magic);
/// Byte offset of the layout version (u32).
pub const OFFSET_VERSION: usize = offset_of!(Header, version);
/// Byte offset of the mode (u32).
pub const OFFSET_MODE: usize = offset_of!(Header, mode);
/// Byte offset of the data capacity (u64).
pub const OFFSET_CAPACITY: usize = offset_of!(Header, capacity);
/// Byte offset of the maximum message size (u64).
pub const OFFSET_MAX_MESSAGE: usize = offset_of!(Header, max_message);
/// Byte offset of the producer position (u64; in a multi-producer channel,
/// the reservation word: see the module documentation).
pub const OFFSET_HEAD: usize = offset_of!(Header, head);
/// Byte offset of the consumer position (u64).
pub const OFFSET_TAIL: usize = offset_of!(Header, tail);
/// Byte offset of the message-id counter (u64).
pub const OFFSET_NEXT_MSG_ID: usize = offset_of!(Header, next_msg_id);

/// How a channel's producers share the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One sender at a time: the sender owns `head` and publishes with a
    /// plain store, the fastest path.
    Spsc,
    /// Up to [`MAX_SENDERS`] senders, in any processes: each reserves its
    /// frame with a compare-and-swap on `head` and commits it on its own. A
    /// sender that dies mid-frame costs that frame only: the receiver steps
    /// over it.
    Mpsc,
}

impl Mode {
    pub(crate) const fn code(self) -> u32 {
        match self {
            Mode::Spsc => 1,
            Mode::Mpsc => 2,
        }
    }

    pub(crate) const fn from_code(code: u32) -> Option<Mode> {
        match code {
            1 => Some(Mode::Spsc),
            2 => Some(Mode::Mpsc),
            _ => None,
        }
    }

    /// How many sender slots this mode uses.
    pub(crate) const fn sender_slots(self) -> usize {
        match self {
            Mode::Spsc => 1,
            Mode::Mpsc => MAX_SENDERS,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Spsc => "single-producer",
            Mode::Mpsc => "multi-producer",
        })
    }
}

/// The shape of a channel, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Layout {
    /// Bytes in the data area (a multiple of 8).
    pub capacity: usize,
    /// The largest payload one message may carry.
    pub max_message_size: usize,
    /// Single- or multi-producer.
    pub mode: Mode,
}

impl Layout {
    /// Bytes of the whole segment.
    pub const fn segment_size(&self) -> usize {
        HEADER_SIZE + self.capacity
    }

    /// Whether this layout can be created: a frame of the largest message
    /// must fit in the ring, and sizes stay within the limits above.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.capacity == 0 || !self.capacity.is_multiple_of(8) {
            return Err(format!(
                "capacity {} is not a positive multiple of 8",
                self.capacity
            ));
        }
        if self.capacity > MAX_CAPACITY {
            return Err(format!(
                "capacity {} exceeds the limit of {MAX_CAPACITY}",
                self.capacity
            ));
        }
        if self.max_message_size > MAX_MESSAGE_SIZE {
            return Err(format!(
                "max message size {} exceeds the limit of {MAX_MESSAGE_SIZE}",
                self.max_message_size
            ));
        }
        if frame_size(self.max_message_size) > self.capacity {
            return Err(format!(
                "a frame of the max message size ({} bytes with its header) does not fit in \
                 a capacity of {} bytes",
                frame_size(self.max_message_size),
                self.capacity
            ));
        }
        Ok(())
    }
}

/// Bytes a frame with a payload of `len` bytes occupies in the ring.
pub const fn frame_size(len: usize) -> usize {
    FRAME_HEADER_SIZE + len.div_ceil(8) * 8
}

/// Peer slot states, the high half of `state_pid`.
pub(crate) mod slot {
    /// Never used.
    pub const EMPTY: u32 = 0;
    /// Being claimed: the pid is set, the start time not yet.
    pub const CLAIMING: u32 = 1;
    /// Attached: pid and start time are valid.
    pub const ATTACHED: u32 = 2;
    /// The peer detached cleanly.
    pub const CLOSED: u32 = 3;

    pub const fn pack(state: u32, pid: u32) -> u64 {
        (state as u64) << 32 | pid as u64
    }

    pub const fn unpack(word: u64) -> (u32, u32) {
        ((word >> 32) as u32, word as u32)
    }
}

/// The multi-producer reservation word (see the module documentation).
pub(crate) mod resv {
    /// Bits of the word that name the reserving slot.
    pub const SLOT_BITS: u32 = 6;

    /// The word saying that the frame ending at `pos` was reserved by
    /// `slot`. `pos` is a multiple of 8 below 2^61, so nothing is lost.
    pub const fn pack(pos: u64, slot: usize) -> u64 {
        pos << 3 | slot as u64
    }

    /// The position a word names.
    pub const fn pos(word: u64) -> u64 {
        word >> SLOT_BITS << 3
    }
}

/// One attached process.
#[repr(C)]
pub(crate) struct PeerSlot {
    /// `state << 32 | pid`, so both change in one atomic step.
    pub state_pid: AtomicU64,
    /// The peer's start time (clock ticks since boot, from
    /// `/proc/PID/stat`), so a recycled pid is not taken for the peer; 0 when
    /// unknown.
    pub start_time: AtomicU64,
    /// Multi-producer senders: the reservation word this sender is
    /// replacing, or replaced and has not yet committed the frame of, plus
    /// one; 0 otherwise. Written before the reservation, so a frame whose
    /// writer died is never without it.
    pub claim: AtomicU64,
    /// The size of the frame `claim` is for, written before `claim`.
    pub claim_size: AtomicU64,
}

/// Everything is an atomic, padding included: another process may write any
/// byte of the header at any time, so no byte of it may sit behind a plain
/// shared reference.
#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub mode: AtomicU32,
    pub capacity: AtomicU64,
    pub max_message: AtomicU64,
    pub header_size: AtomicU64,
    pub commit_key: AtomicU64,
    _pad0: [AtomicU64; 10],

    pub head: AtomicU64,
    pub next_msg_id: AtomicU64,
    _pad1: [AtomicU64; 14],

    pub tail: AtomicU64,
    _pad2: [AtomicU64; 15],

    pub data_futex: AtomicU32,
    pub recv_waiters: AtomicU32,
    _pad3: [AtomicU64; 15],

    pub space_futex: AtomicU32,
    pub send_waiters: AtomicU32,
    /// One past the highest sender slot ever claimed, so scans stop early.
    pub slots_used: AtomicU32,
    _pad4a: AtomicU32,
    _pad4: [AtomicU64; 14],

    pub receiver: PeerSlot,
    pub senders: [PeerSlot; MAX_SENDERS],
}

const _: () = assert!(size_of::<PeerSlot>() == 32);
const _: () = assert!(offset_of!(Header, head) == 128);
const _: () = assert!(offset_of!(Header, tail) == 256);
const _: () = assert!(offset_of!(Header, data_futex) == 384);
const _: () = assert!(offset_of!(Header, space_futex) == 512);
const _: () = assert!(offset_of!(Header, receiver) == 640);
const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(HEADER_SIZE.is_multiple_of(8) && FRAME_HEADER_SIZE.is_multiple_of(8));

/// The checksum of a frame whose length word is `lw`: CRC-64/XZ over the
/// length and id words as stored (native byte order), then the payload
/// zero-padded to a multiple of 16 bytes (see `crc64`). `payload` is the
/// message, or a private copy of its words (the ring's padding bytes, which
/// a sender writes as zeros, included).
///
/// A 64-bit CRC detects every burst of up to 64 bits, so changing any single
/// word of a frame (length, id, or any payload word) always changes the
/// checksum; wider damage goes unnoticed with probability about 2^-64. It
/// guards against scribbles and torn copies, not forgery: a writer that can
/// reach the segment can compute it too, which is why the reader validates
/// every field on its own as well.
pub(crate) fn checksum(lw: u64, id: u64, payload: &[u8]) -> u64 {
    super::crc64::checksum(super::crc64::Head(lw, id), payload)
}

/// The checksum of a whole payload (used by the sender and by tests).
pub fn frame_checksum(len: u32, msg_id: u64, payload: &[u8]) -> u64 {
    checksum(len_word(len), msg_id, payload)
}

/// Stores payload bytes as words into shared memory (`dst.len() ==
/// src.len().div_ceil(8)`), zero-padding the last word. Word by word, each
/// an atomic store: for broadcast's slots, which a subscriber may copy
/// while the publisher writes them (a seqlock), and the work queue's, whose
/// copies were left as they were when the channel's went to bulk copies.
pub(crate) fn store_words(src: &[u8], dst: &[AtomicU64]) {
    debug_assert_eq!(dst.len(), src.len().div_ceil(8));
    for (s, d) in src.chunks(8).zip(dst) {
        d.store(word_of(s), Relaxed);
    }
}

/// Copies words out of shared memory (`out.len() == src.len() * 8`), each
/// an atomic load, so a concurrent writer in another thread or process is
/// no data race.
pub(crate) fn load_words(src: &[AtomicU64], out: &mut [u8]) {
    debug_assert_eq!(out.len(), src.len() * 8);
    for (s, o) in src.iter().zip(out.chunks_exact_mut(8)) {
        o.copy_from_slice(&s.load(Relaxed).to_ne_bytes());
    }
}

/// Up to 8 bytes as a native-endian word, zero-padded.
#[inline(always)]
pub(crate) fn word_of(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..s.len()].copy_from_slice(s);
    u64::from_ne_bytes(b)
}

/// The second word of a frame.
pub const fn len_word(len: u32) -> u64 {
    (FRAME_MARKER as u64) << 32 | len as u64
}

/// The second word of a skip frame whose payload space is `len` bytes.
pub const fn skip_word(len: u32) -> u64 {
    (SKIP_MARKER as u64) << 32 | len as u64
}

/// Checks a whole private copy of a slot's frame (broadcast, queue):
/// its length word `lw`, against the largest message `max`, and the
/// checksum of the copied payload words `payload`, for message `id`,
/// against the `stored` one.
pub(crate) fn check_frame(
    lw: u64,
    max: usize,
    payload: &[u8],
    id: u64,
    stored: u64,
) -> Result<(), super::Corruption> {
    use super::Corruption;
    let marker = (lw >> 32) as u32;
    if marker != FRAME_MARKER {
        return Err(Corruption::Marker { found: marker });
    }
    let len = lw as u32;
    if len as usize > max {
        return Err(Corruption::Length {
            len: u64::from(len),
            max: max as u64,
        });
    }
    debug_assert_eq!(lw, len_word(len));
    let computed = checksum(lw, id, payload);
    if computed != stored {
        return Err(Corruption::Checksum { stored, computed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn atomics(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn frames_are_whole_words() {
        assert_eq!(frame_size(0), 32);
        assert_eq!(frame_size(1), 40);
        assert_eq!(frame_size(8), 40);
        assert_eq!(frame_size(9), 48);
    }

    #[test]
    fn layout_rejects_a_ring_too_small_for_its_largest_frame() {
        let ok = Layout {
            capacity: 64,
            max_message_size: 32,
            mode: Mode::Spsc,
        };
        assert!(ok.check().is_ok());
        assert!(Layout {
            max_message_size: 33,
            ..ok
        }
        .check()
        .is_err());
        assert!(Layout { capacity: 60, ..ok }.check().is_err());
        assert!(Layout { capacity: 0, ..ok }.check().is_err());
    }

    #[test]
    fn the_checksum_is_crc_64_xz_of_the_length_and_id_words_then_the_padded_payload() {
        // Pinned, so that a change to what the checksum covers cannot pass
        // unnoticed: it would need LAYOUT_VERSION bumped. Bytes as on a
        // little-endian machine.
        #[cfg(target_endian = "little")]
        {
            let mut stream = len_word(5).to_le_bytes().to_vec();
            stream.extend_from_slice(&9u64.to_le_bytes());
            stream.extend_from_slice(b"hello");
            stream.resize(32, 0);
            assert_eq!(frame_checksum(5, 9, b"hello"), crc_64_xz(&stream));
            assert_eq!(frame_checksum(5, 9, b"hello"), 0x01E7_31C7_9BE7_1B93);
        }
    }

    /// CRC-64/XZ one bit at a time.
    fn crc_64_xz(bytes: &[u8]) -> u64 {
        let poly = 0x42F0_E1EB_A9EA_3693u64.reverse_bits();
        let mut crc = !0u64;
        for &b in bytes {
            crc ^= u64::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ poly
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn bytes_of(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    proptest! {
        #[test]
        fn stored_words_load_back_zero_padded(
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let words = data.len().div_ceil(8);
            let ring = atomics(words);
            store_words(&data, &ring);
            let mut out = vec![0xAAu8; words * 8];
            load_words(&ring, &mut out);
            prop_assert_eq!(&out[..data.len()], &data[..]);
            prop_assert!(out[data.len()..].iter().all(|&b| b == 0));
            // What a reader checks (the words, padding included) is what
            // the sender summed (the message).
            let len = data.len() as u32;
            prop_assert_eq!(checksum(len_word(len), 3, &out), frame_checksum(len, 3, &data));
        }

        #[test]
        fn any_single_word_change_changes_the_checksum(
            words in proptest::collection::vec(any::<u64>(), 1..300),
            at in any::<prop::sample::Index>(),
            flip in 1u64..,
            id in any::<u64>(),
        ) {
            let data = bytes_of(&words);
            let lw = len_word(data.len() as u32);
            let good = checksum(lw, id, &data);
            let mut bad = words.clone();
            bad[at.index(words.len())] ^= flip;
            prop_assert_ne!(checksum(lw, id, &bytes_of(&bad)), good);
            prop_assert_ne!(checksum(lw, id ^ flip, &data), good);
            prop_assert_ne!(checksum(lw ^ flip, id, &data), good);
        }

        #[test]
        fn any_burst_of_up_to_64_bits_changes_the_checksum(
            data in proptest::collection::vec(any::<u8>(), 9..600),
            at in any::<prop::sample::Index>(),
            burst in any::<u64>(),
        ) {
            // A burst of errors anywhere, across a word boundary too: bits
            // [bit, bit + 64) xored with a pattern whose first bit is set.
            let burst = burst | 1;
            let len = data.len() as u32;
            let good = frame_checksum(len, 7, &data);
            let bit = at.index(data.len() * 8 - 63);
            let mut bad = data.clone();
            for i in 0..64 {
                if burst >> i & 1 == 1 {
                    let b = bit + i;
                    bad[b / 8] ^= 1 << (b % 8);
                }
            }
            prop_assert_ne!(frame_checksum(len, 7, &bad), good);
        }

        #[test]
        fn any_single_byte_change_changes_the_checksum(
            data in proptest::collection::vec(any::<u8>(), 1..200),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let len = data.len() as u32;
            let good = frame_checksum(len, 7, &data);
            let mut bad = data.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            prop_assert_ne!(frame_checksum(len, 7, &bad), good);
            prop_assert_ne!(frame_checksum(len, 8, &data), good);
            prop_assert_ne!(frame_checksum(len + 1, 7, &data), good);
        }
    }
}
