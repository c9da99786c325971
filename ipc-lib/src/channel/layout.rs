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
//! word 3   checksum of words 1, 2 and the payload words (see `Checksum`)
//! word 4.. payload, the last word zero-padded
//! ```
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
use std::sync::atomic::{AtomicU32, AtomicU64};

/// The first word of every channel segment: `IPCSCHAN` in little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSCHAN");
/// The layout described in this module. Any change to it bumps this.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes before the data area: one page, so the ring starts page-aligned.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_SIZE: usize = 32;
/// The high half of a frame's second word.
pub const FRAME_MARKER: u32 = u32::from_le_bytes(*b"FRME");
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

/// The frame checksum: four independent lanes over the payload words (so the
/// multiplies overlap and it runs near copy speed), folded with the length
/// and id words.
///
/// Each step, `rotl((h ^ w) * K, 31)` with K odd, is a bijection of `w` for a
/// fixed `h` and of `h` for a fixed `w`, and so is the final mix. Changing any
/// single word of a frame (length, id, or any payload word) therefore always
/// changes the checksum; wider damage goes unnoticed with probability about
/// 2^-64. It guards against scribbles, not forgery: a writer that can reach
/// the segment can compute it too, which is why the reader validates every
/// field on its own as well.
#[derive(Clone, Debug)]
pub(crate) struct Checksum {
    lanes: [u64; 4],
    words: u64,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(31)
}

/// Murmur3's 64-bit finaliser: a bijection that spreads every input bit.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Checksum {
    pub(crate) fn new() -> Self {
        Checksum {
            lanes: [
                0x243F_6A88_85A3_08D3,
                0x1319_8A2E_0370_7344,
                0xA409_3822_299F_31D0,
                0x082E_FA98_EC4E_6C89,
            ],
            words: 0,
        }
    }

    #[inline(always)]
    fn one(&mut self, w: u64) {
        let lane = &mut self.lanes[(self.words & 3) as usize];
        *lane = mix(*lane, w);
        self.words += 1;
    }

    /// Absorbs words read from shared memory while copying them into `out`
    /// (`out.len() == src.len() * 8`). One pass, and every read is an atomic
    /// load, so a concurrent writer in another process is no data race.
    pub(crate) fn copy_out(&mut self, src: &[AtomicU64], out: &mut [u8]) {
        debug_assert_eq!(out.len(), src.len() * 8);
        use std::sync::atomic::Ordering::Relaxed;
        let mut i = 0;
        while self.words & 3 != 0 && i < src.len() {
            let w = src[i].load(Relaxed);
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
            self.one(w);
            i += 1;
        }
        let (src, out) = (&src[i..], &mut out[i * 8..]);
        let [mut a, mut b, mut c, mut d] = self.lanes;
        let mut s4 = src.chunks_exact(4);
        let mut o32 = out.chunks_exact_mut(32);
        for (s, o) in (&mut s4).zip(&mut o32) {
            let (w0, w1, w2, w3) = (
                s[0].load(Relaxed),
                s[1].load(Relaxed),
                s[2].load(Relaxed),
                s[3].load(Relaxed),
            );
            o[0..8].copy_from_slice(&w0.to_ne_bytes());
            o[8..16].copy_from_slice(&w1.to_ne_bytes());
            o[16..24].copy_from_slice(&w2.to_ne_bytes());
            o[24..32].copy_from_slice(&w3.to_ne_bytes());
            a = mix(a, w0);
            b = mix(b, w1);
            c = mix(c, w2);
            d = mix(d, w3);
        }
        self.lanes = [a, b, c, d];
        self.words += (src.len() / 4 * 4) as u64;
        for (s, o) in s4
            .remainder()
            .iter()
            .zip(o32.into_remainder().chunks_exact_mut(8))
        {
            let w = s.load(Relaxed);
            o.copy_from_slice(&w.to_ne_bytes());
            self.one(w);
        }
    }

    /// Absorbs payload bytes while storing them as words into shared memory
    /// (`dst.len() == src.len().div_ceil(8)`), zero-padding the last word.
    pub(crate) fn copy_in(&mut self, src: &[u8], dst: &[AtomicU64]) {
        debug_assert_eq!(dst.len(), src.len().div_ceil(8));
        use std::sync::atomic::Ordering::Relaxed;
        let n = dst.len();
        // i < n means i * 8 < src.len(), so every slice below is in bounds.
        let chunk = |i: usize| &src[i * 8..(i * 8 + 8).min(src.len())];
        let mut i = 0;
        while self.words & 3 != 0 && i < n {
            let w = word_of(chunk(i));
            dst[i].store(w, Relaxed);
            self.one(w);
            i += 1;
        }
        // Runs of four words that src covers entirely; fixed-size reads, so
        // no per-word length logic.
        let runs = (src.len() / 8).saturating_sub(i) / 4;
        // With no runs, i may already sit past src's last whole word.
        let body = if runs > 0 {
            &src[i * 8..(i + runs * 4) * 8]
        } else {
            &[]
        };
        let [mut a, mut b, mut c, mut d] = self.lanes;
        for (s, o) in body
            .chunks_exact(32)
            .zip(dst[i..i + runs * 4].chunks_exact(4))
        {
            let (w0, w1, w2, w3) = (
                word8(&s[0..8]),
                word8(&s[8..16]),
                word8(&s[16..24]),
                word8(&s[24..32]),
            );
            o[0].store(w0, Relaxed);
            o[1].store(w1, Relaxed);
            o[2].store(w2, Relaxed);
            o[3].store(w3, Relaxed);
            a = mix(a, w0);
            b = mix(b, w1);
            c = mix(c, w2);
            d = mix(d, w3);
        }
        self.lanes = [a, b, c, d];
        self.words += (runs * 4) as u64;
        i += runs * 4;
        while i < n {
            let w = word_of(chunk(i));
            dst[i].store(w, Relaxed);
            self.one(w);
            i += 1;
        }
    }

    /// Absorbs payload bytes without storing them: what a reader computes
    /// over a local copy, and what tests use to forge frames.
    pub(crate) fn absorb(&mut self, src: &[u8]) {
        for s in src.chunks(8) {
            self.one(word_of(s));
        }
    }

    /// The checksum of a frame with these length and id words.
    pub(crate) fn finish(&self, len_word: u64, id: u64) -> u64 {
        let mut h = mix(mix(0x4B7E_1516_28AE_D2A6, len_word), id);
        for lane in self.lanes {
            h = mix(h, lane);
        }
        fmix64(h ^ self.words)
    }
}

/// Exactly 8 bytes as a native-endian word.
#[inline(always)]
fn word8(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[..8]);
    u64::from_ne_bytes(b)
}

/// Up to 8 bytes as a native-endian word, zero-padded.
#[inline(always)]
fn word_of(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..s.len()].copy_from_slice(s);
    u64::from_ne_bytes(b)
}

/// The checksum of a whole payload (used by the sender and by tests).
pub fn frame_checksum(len: u32, msg_id: u64, payload: &[u8]) -> u64 {
    let mut sum = Checksum::new();
    sum.absorb(payload);
    sum.finish(len_word(len), msg_id)
}

/// The second word of a frame.
pub const fn len_word(len: u32) -> u64 {
    (FRAME_MARKER as u64) << 32 | len as u64
}

/// Checks a whole private copy of a slot's frame (broadcast, queue):
/// its length word `lw`, against the largest message `max`, and the
/// checksum `sum` computed over the copied payload, for message `id`,
/// against the `stored` one.
pub(crate) fn check_frame(
    lw: u64,
    max: usize,
    sum: &Checksum,
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
    let computed = sum.finish(lw, id);
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

    proptest! {
        #[test]
        fn copy_in_and_copy_out_agree_with_absorb(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            split in 0usize..40,
            id in 1u64..,
        ) {
            let words = data.len().div_ceil(8);
            let ring = atomics(words);
            // Writing in two pieces, as a frame that wraps is written.
            let split = split.min(words);
            let mut w = Checksum::new();
            w.copy_in(&data[..(split * 8).min(data.len())], &ring[..split]);
            w.copy_in(&data[(split * 8).min(data.len())..], &ring[split..]);
            let len = data.len() as u32;
            let sent = w.finish(len_word(len), id);
            prop_assert_eq!(sent, frame_checksum(len, id, &data));

            let mut out = vec![0u8; words * 8];
            let mut r = Checksum::new();
            let (a, b) = out.split_at_mut(split * 8);
            r.copy_out(&ring[..split], a);
            r.copy_out(&ring[split..], b);
            prop_assert_eq!(r.finish(len_word(len), id), sent);
            prop_assert_eq!(&out[..data.len()], &data[..]);
            prop_assert!(out[data.len()..].iter().all(|&b| b == 0));
        }

        #[test]
        fn any_single_word_change_changes_the_checksum(
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
