//! The ring itself: reserving, writing and publishing frames on one side,
//! validating and copying them out on the other, sleeping and waking, and
//! the peer slots that say who is attached.
//!
//! Nothing read from the segment is trusted: each end keeps its own position
//! in a local and reads the other end's once per step, checks it, and reads
//! every frame field once into a local before using it. Indices are always
//! reduced modulo the ring, so a bad value can cause an error, never a read
//! outside the segment.

use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

use super::crc64::{self, Head};
use super::error::Corruption;
use super::layout::{
    checksum, frame_size, len_word, resv, skip_word, slot, word_of, Header, Layout, Mode, PeerSlot,
    FRAME_HEADER_SIZE, FRAME_MARKER, SKIP_MARKER,
};
use super::segment::Segment;
use crate::sys::{self, PeerWatch};

/// How long a blocked end sleeps before it checks that its peer still
/// lives. Bounds how late a peer's death is noticed; a clean close wakes the
/// sleeper at once.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(20);

/// No honest position gets near this (it is 1 EiB of traffic, 3.6 years at
/// 10 GB/s); refusing larger ones keeps every `position + frame` sum far
/// from overflow, and every position fits a reservation word.
const MAX_POSITION: u64 = 1 << 60;

/// A mapped channel and the layout this end settled on when it attached.
#[derive(Debug)]
pub(crate) struct Shared {
    seg: Segment,
    pub layout: Layout,
    pub name: String,
    cap: u64,
    cap_words: usize,
    max: u64,
    key: u64,
}

impl Shared {
    pub(crate) fn new(seg: Segment, name: String) -> Self {
        let layout = seg.layout();
        // Read once: a later change by anyone cannot make this end accept
        // stale frames or reject good ones.
        let key = seg.header().commit_key.load(Relaxed);
        Shared {
            layout,
            name,
            cap: layout.capacity as u64,
            cap_words: layout.capacity / 8,
            max: layout.max_message_size as u64,
            key,
            seg,
        }
    }

    pub(crate) fn header(&self) -> &Header {
        self.seg.header()
    }

    /// The word index in the data area of stream position `pos`. Each end
    /// otherwise tracks its index incrementally (`advance`): a division per
    /// access would cost more than the rest of a small message's path.
    #[inline]
    fn index_of(&self, pos: u64) -> usize {
        (pos / 8 % self.cap_words as u64) as usize
    }

    /// `at` moved on by `bytes` (at most one ring).
    #[inline]
    fn advance(&self, at: usize, bytes: u64) -> usize {
        let i = at + (bytes / 8) as usize;
        if i >= self.cap_words {
            i - self.cap_words
        } else {
            i
        }
    }

    /// Word `k` (< 4) of the frame whose first word is at index `at`.
    #[inline]
    fn word(&self, at: usize, k: usize) -> &AtomicU64 {
        &self.seg.data()[self.advance(at, 8 * k as u64)]
    }

    /// The payload words of the frame at index `at`: one run, or two when
    /// the frame wraps.
    #[inline]
    fn payload_words(&self, at: usize, n: usize) -> (&[AtomicU64], &[AtomicU64]) {
        let data = self.seg.data();
        let start = self.advance(at, 32);
        let first = n.min(self.cap_words - start);
        (&data[start..start + first], &data[..n - first])
    }

    // ----- producer side -----

    /// Writes a frame (already reserved) at index `at` and commits it with
    /// `commit` (see the layout). The commit word goes last so a reader that
    /// sees it sees the whole frame.
    fn write_frame(&self, commit: u64, at: usize, id: u64, payload: &[u8]) {
        let n = payload.len().div_ceil(8);
        let (a, b) = self.payload_words(at, n);
        // The caller checked the length against the maximum, which fits u32.
        let lw = len_word(payload.len() as u32);
        // Whole words in bulk, up to the end of the ring and on from its
        // start; the last partial word, zero-padded, on its own.
        let whole = payload.len() / 8 * 8;
        let sum = if b.is_empty() && whole >= FUSED_SEND {
            // SAFETY: `a` is the frame's `n` payload words, at least
            // `whole` bytes of the segment, which private `payload` does
            // not overlap; races: see "Payloads cross the segment in
            // bulk" below.
            unsafe { crc64::copy_in(Head(lw, id), payload, shared_ptr(a), whole) }
        } else {
            // Summed before the copy, not after: the copy's stores miss
            // (the receiver's core holds those lines), and loads issued
            // behind them wait on them; read first, the sum costs a small
            // message's one-way latency nothing (after, it added 30-100
            // ns at 64 bytes).
            let sum = checksum(lw, id, payload);
            let in_a = whole.min(a.len() * 8);
            copy_to_shared(&payload[..in_a], a);
            copy_to_shared(&payload[in_a..whole], b);
            sum
        };
        if whole < payload.len() {
            let last = match b.len() {
                0 => &a[n - 1],
                _ => &b[n - 1 - a.len()],
            };
            last.store(word_of(&payload[whole..]), Relaxed);
        }
        self.publish(commit, at, lw, id, sum);
    }

    /// Writes a frame's payload-less part and commits it: the length, id
    /// and checksum words, then the commit word, last.
    #[inline]
    fn publish(&self, commit: u64, at: usize, lw: u64, id: u64, sum: u64) {
        self.word(at, 1).store(lw, Relaxed);
        self.word(at, 2).store(id, Relaxed);
        self.word(at, 3).store(sum, Relaxed);
        let word = self.word(at, 0);
        match self.layout.mode {
            // The head store publishes (SeqCst there); this only needs to
            // order the frame before itself.
            Mode::Spsc => word.store(commit ^ self.key, Release),
            // The commit is the publication: SeqCst pairs with the
            // receiver's check before it sleeps (see `park`).
            Mode::Mpsc => word.store(commit ^ self.key, SeqCst),
        }
    }

    /// Commits a frame whose payload the caller wrote in place (a loan):
    /// `len` bytes from word `start` of the data area, contiguous. Zeroes
    /// the last word's padding, which the checksum covers, then sums the
    /// payload where it lies.
    fn write_in_place(&self, commit: u64, at: usize, start: usize, id: u64, len: usize) {
        let n = len.div_ceil(8);
        let words = &self.seg.data()[start..start + n];
        if !len.is_multiple_of(8) {
            let last = &words[n - 1];
            let mut b = last.load(Relaxed).to_ne_bytes();
            b[len % 8..].fill(0);
            last.store(u64::from_ne_bytes(b), Relaxed);
        }
        // The caller checked the length against the maximum, which fits u32.
        let lw = len_word(len as u32);
        // This sender's reservation, which no honest process writes; a
        // dishonest one only changes the sum (see `crc64::checksum_words`).
        let sum = crc64::checksum_words(Head(lw, id), words);
        self.publish(commit, at, lw, id, sum);
    }

    /// Asks for the cache lines of the first `bytes` (at most 256) of a
    /// frame about to be written in place, from word `at` on, for
    /// writing. A loan's writer stores into them and its commit then sums
    /// them: without this the sum's loads miss behind the stores' misses
    /// (the receiver's core holds the lines), fetching each line twice,
    /// shared then owned. A hint: it never faults and changes nothing.
    #[inline]
    fn prefetch_for_write(&self, at: usize, bytes: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let data = self.seg.data();
            let end = (at + (bytes.min(256) / 8) as usize).min(self.cap_words);
            for w in data[at..end].iter().step_by(8) {
                // SAFETY: a prefetch reads and writes nothing, and `w` is
                // a word of the mapped segment.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(w.as_ptr().cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, bytes);
    }

    /// The first byte of the `len`-byte payload that starts at word
    /// `start` of the data area and does not wrap.
    pub(crate) fn payload_ptr(&self, start: usize, len: usize) -> *mut u8 {
        shared_ptr(&self.seg.data()[start..start + len.div_ceil(8)])
    }

    /// The producer position, in either mode.
    fn head(&self) -> u64 {
        let word = self.header().head.load(Acquire);
        match self.layout.mode {
            Mode::Spsc => word,
            Mode::Mpsc => resv::pos(word),
        }
    }

    /// Multi-producer: whether reservation word `word` was ever in `head`,
    /// that is, whether its slot reserved the frame that ends at its
    /// position. `head_word` must have been read before anything else here.
    ///
    /// If `word` was replaced before that read, the sender that replaced it
    /// claimed `word` first and keeps the claim until its own frame, which
    /// starts where `word` ends, is committed with `word` in its commit
    /// word; that frame stays unread while this receiver is behind it. So
    /// when `word` was in `head`, one of the three says so (at worst a read
    /// ordered too early misses it, and the caller asks again later); when
    /// it was not, none can honestly.
    fn reserved(&self, head_word: u64, slots: &[PeerSlot], word: u64) -> bool {
        if head_word == word || slots.iter().any(|s| s.claim.load(Acquire) == word + 1) {
            return true;
        }
        let end = resv::pos(word);
        end < resv::pos(head_word)
            && self.word(self.index_of(end), 0).load(Acquire) == word ^ self.key
    }

    /// Multi-producer: whether `word`, a frame's commit word, commits a
    /// frame at `pos`. Its low bits name the previous frame's sender, which
    /// only a skip looks at.
    #[inline]
    fn commits(&self, word: u64, pos: u64) -> bool {
        resv::pos(word ^ self.key) == pos
    }

    fn next_id(&self) -> u64 {
        let h = self.header();
        let id = h.next_msg_id.fetch_add(1, Relaxed);
        // 0 means "no id" everywhere; only a wrapped or scribbled counter
        // gives it.
        if id == 0 {
            h.next_msg_id.fetch_add(1, Relaxed)
        } else {
            id
        }
    }

    /// Wakes a sleeping receiver, with a syscall only when one sleeps.
    fn wake_receiver(&self) {
        let h = self.header();
        if h.recv_waiters.load(SeqCst) != 0 {
            wake_all(&h.data_futex);
        }
    }

    fn wake_senders(&self) {
        let h = self.header();
        if h.send_waiters.load(SeqCst) != 0 {
            wake_all(&h.space_futex);
        }
    }

    /// Wakes both sides whoever sleeps: a peer leaving must not go unseen.
    pub(crate) fn wake_everyone(&self) {
        let h = self.header();
        wake_all(&h.data_futex);
        wake_all(&h.space_futex);
    }
}

// Payloads cross the segment in bulk (`copy_nonoverlapping`, the speed of
// `memcpy`) rather than one atomic word at a time. Why that is sound:
//
// - Between threads of this process, the ring protocol orders every copy
//   after the accesses it could race with: a sender writes only space it
//   reserved after reading `tail` (Acquire), which the receiver stored
//   (SeqCst) after it had copied that space out; the receiver copies only a
//   frame whose commit word it read (Acquire) after the sender stored it
//   (Release or SeqCst) over the finished frame. Honest ends never race.
// - The segment is shared with other processes, which the compiler knows
//   nothing of. One that breaks the protocol (scribbling, dying and
//   replaced by an impostor) may write the bytes while we copy them, like
//   a device or the kernel writing a buffer: at the machine level the copy
//   then holds a mix of old and new bytes, a valid value for `u8`s. Nothing
//   here forms a `&` or `&mut` to those bytes (only raw pointers, from the
//   `AtomicU64`s' `UnsafeCell`s), reads them twice, or keeps a pointer
//   past the copy.
// - The receiver trusts nothing it copied until it has summed its private
//   copy and compared the sum with the frame's checksum word: a torn or
//   scribbled copy is `Corruption::Checksum`, never a wrong message. A
//   compiler fence after the copy keeps the compiler from reading the
//   shared bytes again in place of the private ones, so the bytes summed
//   are the bytes returned. (With AVX-512, `crc64::copy_out` sums each 64
//   bytes from the register it stores into the private copy: the same
//   bytes, read once.)

/// The first byte of shared words, for bulk copies. Writable: the words
/// are `UnsafeCell`s (atomics), which may be written through a pointer made
/// from a shared reference.
fn shared_ptr(words: &[AtomicU64]) -> *mut u8 {
    words.as_ptr().cast::<u8>().cast_mut()
}

/// From this many bytes on, a sender copies and sums a frame in one pass
/// (`crc64::copy_in`). Below it, summing first and then copying is quicker
/// one way: the one pass's loads wait behind its own stores, which miss
/// (one-way p50 at 1 KiB: 650-680 ns against 550-640 summing first; at
/// 4 KiB and up the one pass wins, 8.4 against 8.6-9.0 µs at 64 KiB, and
/// streams 64 KiB 10% faster).
const FUSED_SEND: usize = 2048;

/// Up to this many bytes, a payload is copied word by word with atomic
/// loads and stores (plain moves on x86): for a small message that beats a
/// call to `memcpy`, and needs no argument about races at all.
const SMALL_COPY: usize = 256;

/// Copies `src`, whole words, into the shared words `dst` (at least as
/// many): bulk and non-atomic when large, see above for why that is sound.
#[inline]
fn copy_to_shared(src: &[u8], dst: &[AtomicU64]) {
    assert!(src.len().is_multiple_of(8) && src.len() <= dst.len() * 8);
    if src.len() <= SMALL_COPY {
        for (s, d) in src.chunks_exact(8).zip(dst) {
            d.store(word_of(s), Relaxed);
        }
        return;
    }
    // SAFETY: `dst` spans at least `src.len()` bytes (checked) of the
    // mapped segment, whose words are `UnsafeCell`s (atomics) and so may be
    // written through a pointer made from a shared reference; a private
    // slice and the segment never overlap; every bit pattern is a valid
    // `u64`. Races: see "Payloads cross the segment in bulk" above.
    unsafe {
        std::ptr::copy_nonoverlapping(
            src.as_ptr(),
            dst.as_ptr().cast::<u8>().cast_mut(),
            src.len(),
        )
    }
}

/// Copies the shared words `src` into `out` (`src.len() * 8` bytes): bulk
/// and non-atomic when large, see above for why that is sound and why the
/// caller checks the copy.
#[inline]
fn copy_from_shared(src: &[AtomicU64], out: &mut [u8]) {
    assert_eq!(out.len(), src.len() * 8);
    if out.len() <= SMALL_COPY {
        for (s, o) in src.iter().zip(out.chunks_exact_mut(8)) {
            o.copy_from_slice(&s.load(Relaxed).to_ne_bytes());
        }
        return;
    }
    // SAFETY: `src` spans `out.len()` bytes of the mapped segment (checked),
    // readable for as long as `src` lives; `out` is private and so does not
    // overlap it; any bytes are valid `u8`s. Races: see "Payloads cross
    // the segment in bulk" above.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), out.as_mut_ptr(), out.len()) }
    compiler_fence(SeqCst);
}

pub(crate) fn wake_all(futex: &AtomicU32) {
    futex.fetch_add(1, SeqCst);
    sys::futex_wake_all(futex);
}

/// Sleeps on `futex` for at most `slice`, unless `ready` already holds.
///
/// The handshake that makes the fast path syscall-free: the sleeper reads
/// the futex value, registers in `waiters`, then checks `ready` (SeqCst); the
/// other side publishes (SeqCst), then reads `waiters` (SeqCst) and bumps and
/// wakes the futex only when it is non-zero. In the single total order of
/// SeqCst operations either the check sees the publication, or the
/// publisher sees the registration and bumps the futex after the sleeper
/// read it, so FUTEX_WAIT returns at once or is woken. No wake-up is lost;
/// anything a hostile writer does to these words costs at most a spurious
/// wake-up or one slice of sleep.
pub(crate) fn park(
    futex: &AtomicU32,
    waiters: &AtomicU32,
    slice: Duration,
    ready: impl FnOnce() -> bool,
) {
    let seq = futex.load(SeqCst);
    waiters.fetch_add(1, SeqCst);
    if !ready() {
        sys::futex_wait(futex, seq, slice);
    }
    waiters.fetch_sub(1, SeqCst);
}

/// The sending end's view of the ring.
#[derive(Debug)]
pub(crate) struct Producer {
    /// Single-producer: the next free position, owned by this end, and its
    /// word index.
    head: u64,
    head_at: usize,
    cached_tail: u64,
    slot: usize,
}

impl Producer {
    pub(crate) fn new(sh: &Shared, slot: usize) -> Result<Self, Corruption> {
        if sh.layout.mode == Mode::Mpsc {
            // Multi-producer senders read both positions afresh on every
            // send; checked here, the pair could look inconsistent only
            // because other senders and the receiver moved in between.
            return Ok(Producer {
                head: 0,
                head_at: 0,
                cached_tail: 0,
                slot,
            });
        }
        let h = sh.header();
        // Nobody else moves head now that we hold the sender slot, and tail
        // only grows towards it, so this pair is consistent when honest.
        let tail = h.tail.load(Acquire);
        let head = h.head.load(Acquire);
        if tail > head || head - tail > sh.cap || !head.is_multiple_of(8) || head > MAX_POSITION {
            return Err(Corruption::Positions {
                head,
                tail,
                capacity: sh.cap,
            });
        }
        Ok(Producer {
            head,
            head_at: sh.index_of(head),
            cached_tail: tail,
            slot,
        })
    }

    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// Sends `payload` if it fits now. `Ok(None)`: full.
    pub(crate) fn try_push(
        &mut self,
        sh: &Shared,
        payload: &[u8],
    ) -> Result<Option<u64>, Corruption> {
        let need = frame_size(payload.len()) as u64;
        match sh.layout.mode {
            Mode::Spsc => {
                let Some(pos) = self.reserve_spsc(sh, need)? else {
                    return Ok(None);
                };
                let id = sh.next_id();
                sh.write_frame(pos, self.head_at, id, payload);
                self.head = pos + need;
                self.head_at = sh.advance(self.head_at, need);
                sh.header().head.store(self.head, SeqCst);
                sh.wake_receiver();
                Ok(Some(id))
            }
            Mode::Mpsc => {
                let claim = &sh.header().senders[self.slot].claim;
                let (pos, replaced) = match self.reserve_mpsc(sh, need) {
                    Ok(Some(r)) => r,
                    other => {
                        // No frame is ours: a claim left standing would make
                        // the receiver wait for us (see
                        // `Consumer::skip_abandoned`).
                        claim.store(0, Relaxed);
                        return other.map(|_| None);
                    }
                };
                let id = sh.next_id();
                sh.write_frame(replaced, sh.index_of(pos), id, payload);
                // After the commit: until then the claim is what lets the
                // receiver step over this frame should we die.
                claim.store(0, Release);
                sh.wake_receiver();
                Ok(Some(id))
            }
        }
    }

    /// Reserves a frame for a `len`-byte payload that the caller writes in
    /// place (a loan), if it fits now. `Ok(None)`: full. Nothing is
    /// published until [`commit`](Self::commit); until then a
    /// multi-producer reservation holds up the frames reserved after it,
    /// and must be committed or [`abandon`](Self::abandon)ed.
    pub(crate) fn try_reserve(
        &mut self,
        sh: &Shared,
        len: usize,
    ) -> Result<Option<Reserved>, Corruption> {
        let need = frame_size(len) as u64;
        let (pos, at, commit) = match sh.layout.mode {
            Mode::Spsc => match self.reserve_spsc(sh, need)? {
                // Ours alone: `head`, which publishes, moves at the commit.
                Some(pos) => (pos, self.head_at, pos),
                None => return Ok(None),
            },
            Mode::Mpsc => match self.reserve_mpsc(sh, need) {
                Ok(Some((pos, replaced))) => (pos, sh.index_of(pos), replaced),
                other => {
                    // As in `try_push`: a claim left standing would make
                    // the receiver wait for us.
                    sh.header().senders[self.slot].claim.store(0, Relaxed);
                    return other.map(|_| None);
                }
            },
        };
        sh.prefetch_for_write(at, need);
        let start = sh.advance(at, FRAME_HEADER_SIZE as u64);
        let contiguous = len.div_ceil(8) <= sh.cap_words - start;
        Ok(Some(Reserved {
            pos,
            at,
            need,
            commit,
            len,
            payload: contiguous.then_some(start),
        }))
    }

    /// Publishes a reserved frame: its payload as the caller wrote it in
    /// place, or `staged` (its first `r.len` bytes) when the frame wraps
    /// around the end of the ring. Returns the message id.
    pub(crate) fn commit(&mut self, sh: &Shared, r: &Reserved, staged: &[u8]) -> u64 {
        let id = sh.next_id();
        match r.payload {
            Some(start) => sh.write_in_place(r.commit, r.at, start, id, r.len),
            None => sh.write_frame(r.commit, r.at, id, &staged[..r.len]),
        }
        self.published(sh, r);
        id
    }

    /// Gives a reserved frame up. A single-producer reservation was never
    /// published: nothing to undo. A multi-producer one is in `head`, and
    /// the frames of other senders may follow it: it is committed as a
    /// skip frame (see the layout), which the receiver steps over.
    pub(crate) fn abandon(&mut self, sh: &Shared, r: &Reserved) {
        if sh.layout.mode == Mode::Mpsc {
            // `r.len` passed the maximum check when it was reserved.
            let lw = skip_word(r.len as u32);
            sh.publish(r.commit, r.at, lw, 0, checksum(lw, 0, &[]));
            self.published(sh, r);
        }
    }

    /// After a reserved frame's commit word: the single-producer `head`
    /// published, or the multi-producer claim cleared (until then, the
    /// claim is what lets the receiver step over the frame should we die).
    fn published(&mut self, sh: &Shared, r: &Reserved) {
        match sh.layout.mode {
            Mode::Spsc => {
                self.head = r.pos + r.need;
                self.head_at = sh.advance(r.at, r.need);
                sh.header().head.store(self.head, SeqCst);
            }
            Mode::Mpsc => sh.header().senders[self.slot].claim.store(0, Release),
        }
        sh.wake_receiver();
    }

    fn reserve_spsc(&mut self, sh: &Shared, need: u64) -> Result<Option<u64>, Corruption> {
        let head = self.head;
        if head + need - self.cached_tail > sh.cap {
            let tail = sh.header().tail.load(Acquire);
            if tail > head || head - tail > sh.cap {
                return Err(Corruption::Positions {
                    head,
                    tail,
                    capacity: sh.cap,
                });
            }
            self.cached_tail = tail;
            if head + need - tail > sh.cap {
                return Ok(None);
            }
        }
        Ok(Some(head))
    }

    /// Reserves `need` bytes; returns their position and the reservation
    /// word replaced. The slot's claim names that word on return (and, on
    /// `Ok(None)` or an error, may name an older one: the caller clears it).
    fn reserve_mpsc(&mut self, sh: &Shared, need: u64) -> Result<Option<(u64, u64)>, Corruption> {
        let h = sh.header();
        let s = &h.senders[self.slot];
        let mut stale = 0u32;
        loop {
            // Tail first: tail <= head at every instant and head only grows,
            // so an honest pair read in this order always has tail <= head.
            let tail = h.tail.load(Acquire);
            let word = h.head.load(Acquire);
            let head = resv::pos(word);
            if tail > head || head > MAX_POSITION {
                return Err(Corruption::Positions {
                    head,
                    tail,
                    capacity: sh.cap,
                });
            }
            if head - tail > sh.cap {
                // The receiver and other senders moved between the two
                // loads. Honest races end quickly; endless ones are damage.
                stale += 1;
                if stale > 10_000 {
                    return Err(Corruption::Positions {
                        head,
                        tail,
                        capacity: sh.cap,
                    });
                }
                continue;
            }
            if head + need - tail > sh.cap {
                return Ok(None);
            }
            // Size, then claim, then the reservation (whose Release orders
            // both before it): a receiver that sees the reservation sees the
            // claim, and a claim is never paired with another frame's size.
            s.claim_size.store(need, Relaxed);
            s.claim.store(word + 1, Relaxed);
            if h.head
                .compare_exchange_weak(word, resv::pack(head + need, self.slot), AcqRel, Relaxed)
                .is_ok()
            {
                return Ok(Some((head, word)));
            }
        }
    }

    /// Whether a frame of `need` bytes would fit; the SeqCst half of the
    /// sleep handshake with a receiver that frees space.
    pub(crate) fn has_space(&self, sh: &Shared, len: usize) -> bool {
        let need = frame_size(len) as u64;
        let h = sh.header();
        let tail = h.tail.load(SeqCst);
        let head = match sh.layout.mode {
            Mode::Spsc => self.head,
            Mode::Mpsc => resv::pos(h.head.load(SeqCst)),
        };
        // Damage counts as "something changed": the caller finds it on its
        // next attempt.
        tail > head || head.saturating_add(need) - tail <= sh.cap
    }
}

/// A frame reserved for a loan ([`Producer::try_reserve`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reserved {
    pos: u64,
    /// The frame's first word's index.
    at: usize,
    need: u64,
    /// What the commit word says: `pos` (single-producer) or the
    /// reservation word replaced (multi-producer).
    commit: u64,
    pub len: usize,
    /// The payload's first word's index, when the payload does not wrap
    /// around the end of the ring (and so can be lent as one slice).
    pub payload: Option<usize>,
}

/// The receiving end's view of the ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    tail: u64,
    tail_at: usize,
    cached_head: u64,
}

impl Consumer {
    pub(crate) fn new(sh: &Shared) -> Result<Self, (u64, Corruption)> {
        let tail = sh.header().tail.load(Acquire);
        let head = sh.head();
        if tail > head || head - tail > sh.cap || !tail.is_multiple_of(8) || head > MAX_POSITION {
            return Err((
                tail,
                Corruption::Positions {
                    head,
                    tail,
                    capacity: sh.cap,
                },
            ));
        }
        Ok(Consumer {
            tail,
            tail_at: sh.index_of(tail),
            cached_head: tail,
        })
    }

    pub(crate) fn position(&self) -> u64 {
        self.tail
    }

    /// Takes the next message into `out` if one is there. `Ok(None)`: empty.
    pub(crate) fn try_pop(
        &mut self,
        sh: &Shared,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, Corruption> {
        match self.next_frame(sh)? {
            Some(f) => self.take_copy(sh, &f, out).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame's checked header, if a frame is there; skip frames
    /// (abandoned loans) are stepped over on the way.
    #[inline(always)]
    fn next_frame(&mut self, sh: &Shared) -> Result<Option<Frame>, Corruption> {
        let h = sh.header();
        loop {
            let (tail, at) = (self.tail, self.tail_at);
            let positions = |head| Corruption::Positions {
                head,
                tail,
                capacity: sh.cap,
            };
            let available = match sh.layout.mode {
                Mode::Spsc => {
                    if self.cached_head == tail {
                        let head = h.head.load(Acquire);
                        if head < tail || head - tail > sh.cap {
                            return Err(positions(head));
                        }
                        self.cached_head = head;
                        if head == tail {
                            return Ok(None);
                        }
                    }
                    let commit = sh.word(at, 0).load(Acquire);
                    if commit != tail ^ sh.key {
                        return Err(Corruption::Commit { found: commit });
                    }
                    self.cached_head - tail
                }
                Mode::Mpsc => {
                    // The commit word is the publication; until it names
                    // this position the frame is not there yet (or is
                    // being written).
                    if !sh.commits(sh.word(at, 0).load(Acquire), tail) {
                        return Ok(None);
                    }
                    let head = resv::pos(h.head.load(Acquire));
                    if head <= tail || head - tail > sh.cap {
                        return Err(positions(head));
                    }
                    head - tail
                }
            };

            let lw = sh.word(at, 1).load(Relaxed);
            let id = sh.word(at, 2).load(Relaxed);
            let stored = sh.word(at, 3).load(Relaxed);
            let marker = (lw >> 32) as u32;
            if marker != FRAME_MARKER && marker != SKIP_MARKER {
                return Err(Corruption::Marker { found: marker });
            }
            let len = lw & 0xFFFF_FFFF;
            if len > sh.max {
                return Err(Corruption::Length { len, max: sh.max });
            }
            // len <= max <= capacity, so these fit usize.
            let len = len as usize;
            let size = frame_size(len) as u64;
            if size > available {
                return Err(Corruption::Truncated { size, available });
            }
            if marker == SKIP_MARKER {
                self.step_over_skip(sh, lw, id, stored, size)?;
                continue;
            }
            return Ok(Some(Frame {
                at,
                lw,
                id,
                stored,
                len,
                size,
            }));
        }
    }

    /// Steps over a skip frame, checked: a loan its sender gave up.
    #[cold]
    fn step_over_skip(
        &mut self,
        sh: &Shared,
        lw: u64,
        id: u64,
        stored: u64,
        size: u64,
    ) -> Result<(), Corruption> {
        // Its payload is not summed: nobody reads it.
        let computed = checksum(lw, id, &[]);
        if computed != stored {
            return Err(Corruption::Checksum { stored, computed });
        }
        self.advance(sh, size);
        Ok(())
    }

    /// Moves the position past a frame of `size` bytes and says so.
    #[inline]
    fn advance(&mut self, sh: &Shared, size: u64) {
        self.tail += size;
        self.tail_at = sh.advance(self.tail_at, size);
        sh.header().tail.store(self.tail, SeqCst);
        sh.wake_senders();
    }

    /// Copies frame `f` out into `out`, checks it there, and moves past it.
    #[inline(always)]
    fn take_copy(&mut self, sh: &Shared, f: &Frame, out: &mut Vec<u8>) -> Result<u64, Corruption> {
        let &Frame {
            at,
            lw,
            id,
            stored,
            len,
            size,
        } = f;
        let n = len.div_ceil(8);
        // Every byte is overwritten below, so a reused buffer's old contents
        // need no zeroing; only growth is zero-filled.
        out.truncate(n * 8);
        out.resize(n * 8, 0);
        let (a, b) = sh.payload_words(at, n);
        // Computed over our copy, not over shared memory: what we return is
        // exactly what we checked.
        let computed = if b.is_empty() && out.len() > SMALL_COPY {
            assert_eq!(a.len() * 8, out.len());
            // SAFETY: `a` is the frame's `n` payload words, `out.len()`
            // bytes of the segment, which private `out` does not overlap;
            // races: see "Payloads cross the segment in bulk" above.
            unsafe { crc64::copy_out(Head(lw, id), shared_ptr(a), out) }
        } else if b.is_empty() {
            crc64::copy_out_words(Head(lw, id), a, out)
        } else {
            let (oa, ob) = out.split_at_mut(a.len() * 8);
            copy_from_shared(a, oa);
            copy_from_shared(b, ob);
            checksum(lw, id, out)
        };
        if computed != stored {
            return Err(Corruption::Checksum { stored, computed });
        }
        if id == 0 {
            return Err(Corruption::ZeroId);
        }
        out.truncate(len);
        self.advance(sh, size);
        Ok(id)
    }

    /// Lends the next message where it lies, if one is there: checks it
    /// in place and keeps the position before it, so no honest sender
    /// writes over it until [`release`](Self::release). A frame that wraps
    /// around the end of the ring cannot be one slice: it is copied into
    /// `spill` and taken as `try_pop` takes it.
    pub(crate) fn try_borrow(
        &mut self,
        sh: &Shared,
        spill: &mut Vec<u8>,
    ) -> Result<Option<Held>, Corruption> {
        let Some(f) = self.next_frame(sh)? else {
            return Ok(None);
        };
        let n = f.len.div_ceil(8);
        let (a, b) = sh.payload_words(f.at, n);
        if !b.is_empty() {
            let id = self.take_copy(sh, &f, spill)?;
            return Ok(Some(Held {
                id,
                len: f.len,
                size: f.size,
                payload: None,
            }));
        }
        // Summed where it lies (see `crc64::checksum_words` for bytes that
        // change while summed).
        let computed = crc64::checksum_words(Head(f.lw, f.id), a);
        if computed != f.stored {
            return Err(Corruption::Checksum {
                stored: f.stored,
                computed,
            });
        }
        if f.id == 0 {
            return Err(Corruption::ZeroId);
        }
        Ok(Some(Held {
            id: f.id,
            len: f.len,
            size: f.size,
            payload: Some(sh.advance(f.at, FRAME_HEADER_SIZE as u64)),
        }))
    }

    /// Moves past a frame lent by [`try_borrow`](Self::try_borrow): its
    /// space is the senders' again.
    pub(crate) fn release(&mut self, sh: &Shared, held: &Held) {
        if held.payload.is_some() {
            self.advance(sh, held.size);
        }
    }

    /// Whether a receive would find a message or an error now: [`ready`],
    /// and the frame there not a skip frame (those it steps over).
    ///
    /// [`ready`]: Self::ready
    pub(crate) fn has_next(&mut self, sh: &Shared) -> bool {
        self.ready(sh) && !matches!(self.next_frame(sh), Ok(None))
    }

    /// Whether a frame is ready or something changed; the SeqCst half of
    /// the sleep handshake with a publishing sender.
    pub(crate) fn ready(&self, sh: &Shared) -> bool {
        match sh.layout.mode {
            Mode::Spsc => sh.header().head.load(SeqCst) != self.tail,
            Mode::Mpsc => sh.commits(sh.word(self.tail_at, 0).load(SeqCst), self.tail),
        }
    }

    /// Multi-producer: if the frame at our position was reserved by a
    /// sender that died before committing it, steps over it (it may be half
    /// written, or not written at all) and says whose it was.
    ///
    /// Asks the kernel whether the frame's sender lives, so callers ask only
    /// once the frame has been missing a while.
    pub(crate) fn skip_abandoned(
        &mut self,
        sh: &Shared,
        watches: &mut [Option<PeerWatch>],
    ) -> Option<Abandoned> {
        if sh.layout.mode != Mode::Mpsc {
            return None;
        }
        let h = sh.header();
        let tail = self.tail;
        // Read before the claims (see `Shared::reserved`).
        let head_word = h.head.load(Acquire);
        let head = resv::pos(head_word);
        if head <= tail || head - tail > sh.cap || self.ready(sh) {
            return None;
        }
        let slots = &h.senders[..used_slots(h)];
        let largest = frame_size(sh.layout.max_message_size) as u64;
        // The frame's owner claims `tail` until it commits; so may senders
        // that lost the race for it and died, or have not retried yet. The
        // owner is the one whose reservation word was in `head`.
        let mut owner = None;
        for (i, s) in slots.iter().enumerate() {
            let claim = s.claim.load(Acquire);
            if claim == 0 || resv::pos(claim - 1) != tail {
                continue;
            }
            let size = s.claim_size.load(Relaxed);
            let plausible = size >= FRAME_HEADER_SIZE as u64
                && size.is_multiple_of(8)
                && size <= largest
                && size <= head - tail;
            if plausible && sh.reserved(head_word, slots, resv::pack(tail + size, i)) {
                if owner.is_some() {
                    // Only one sender's word can have been in `head` with
                    // this frame's end; two say so only if someone wrote
                    // over the slots. Which to believe cannot be known.
                    return None;
                }
                owner = Some((i, size));
            }
        }
        let (i, size) = owner?;
        let s = &slots[i];
        if observe(s, watches.get_mut(i)?, true) != PeerState::Gone {
            // Still writing it.
            return None;
        }
        let pid = slot::unpack(s.state_pid.load(Relaxed)).1;
        // A sender that died between committing and clearing its claim left
        // a whole frame: that one is read, not skipped.
        if self.ready(sh) {
            return None;
        }
        self.tail = tail + size;
        self.tail_at = sh.advance(self.tail_at, size);
        h.tail.store(self.tail, SeqCst);
        sh.wake_senders();
        Some(Abandoned { pos: tail, pid })
    }
}

/// A frame's header words, read once and checked (`Consumer::next_frame`).
struct Frame {
    at: usize,
    lw: u64,
    id: u64,
    stored: u64,
    len: usize,
    size: u64,
}

/// A message lent by `Consumer::try_borrow`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub id: u64,
    pub len: usize,
    size: u64,
    /// The payload's first word's index when it is lent in place; `None`
    /// when it was copied out (the frame wrapped), and the position is
    /// already past it.
    pub payload: Option<usize>,
}

/// A frame stepped over because its sender died before committing it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Abandoned {
    pub pos: u64,
    pub pid: u32,
}

/// What a peer slot says about its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Nobody ever attached.
    Never,
    /// Attached, and alive as far as was checked.
    Alive,
    /// Closed cleanly, or died.
    Gone,
}

/// Reads a slot; with `check` also asks the kernel whether the process
/// lives (a syscall, so callers rate-limit it).
pub(crate) fn observe(s: &PeerSlot, watch: &mut Option<PeerWatch>, check: bool) -> PeerState {
    let (state, pid) = slot::unpack(s.state_pid.load(Acquire));
    match state {
        slot::EMPTY => PeerState::Never,
        slot::CLAIMING | slot::ATTACHED => {
            if !check {
                return PeerState::Alive;
            }
            let start = if state == slot::ATTACHED {
                s.start_time.load(Relaxed)
            } else {
                0
            };
            let w = match watch {
                Some(w) if w.is_for(pid, start) => w,
                _ => watch.insert(PeerWatch::new(pid, start)),
            };
            if w.alive() {
                PeerState::Alive
            } else {
                PeerState::Gone
            }
        }
        // CLOSED, or a state no honest process writes.
        _ => PeerState::Gone,
    }
}

/// Sender slots in use: scanning stops at the highest ever claimed.
pub(crate) fn used_slots(h: &Header) -> usize {
    (h.slots_used.load(Acquire) as usize).min(h.senders.len())
}

/// The outcome of trying to take a slot.
pub(crate) enum Claim {
    Claimed,
    /// A live process holds it.
    Live(u32),
    /// A dead sender holds it with a claim on a frame the receiver has not
    /// passed: the receiver needs that claim to step over the frame, so the
    /// slot is not reused yet.
    Evidence,
}

/// Takes `s` for this process if it is free, closed, or held by a dead
/// process whose claim, if any, is on a frame before `tail` (the
/// receiver's position, read by the caller).
pub(crate) fn claim(s: &PeerSlot, tail: u64) -> Claim {
    let me = sys::my_pid();
    loop {
        let cur = s.state_pid.load(Acquire);
        let (state, pid) = slot::unpack(cur);
        if matches!(state, slot::CLAIMING | slot::ATTACHED) {
            let mut w = None;
            if observe(s, &mut w, true) == PeerState::Alive {
                return Claim::Live(pid);
            }
            let claimed = s.claim.load(Acquire);
            if claimed != 0 && resv::pos(claimed - 1) >= tail {
                return Claim::Evidence;
            }
        }
        // Two steps so an observer never pairs our pid with the previous
        // holder's start time: CLAIMING means "start time not valid yet".
        if s.state_pid
            .compare_exchange(cur, slot::pack(slot::CLAIMING, me), AcqRel, Acquire)
            .is_ok()
        {
            s.claim.store(0, Relaxed);
            s.start_time.store(sys::my_start_time(), Relaxed);
            s.state_pid.store(slot::pack(slot::ATTACHED, me), Release);
            return Claim::Claimed;
        }
    }
}

/// Marks our slot closed, unless someone took it over (then it is theirs).
pub(crate) fn release(s: &PeerSlot) {
    let me = sys::my_pid();
    let _ = s.state_pid.compare_exchange(
        slot::pack(slot::ATTACHED, me),
        slot::pack(slot::CLOSED, me),
        SeqCst,
        Relaxed,
    );
}
