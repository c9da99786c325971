//! The ring itself: reserving, writing and publishing frames on one side,
//! validating and copying them out on the other, sleeping and waking, and
//! the peer slots that say who is attached.
//!
//! Nothing read from the segment is trusted: each end keeps its own position
//! in a local and reads the other end's once per step, checks it, and reads
//! every frame field once into a local before using it. Indices are always
//! reduced modulo the ring, so a bad value can cause an error, never a read
//! outside the segment.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

use super::error::Corruption;
use super::layout::{
    frame_size, len_word, slot, Checksum, Header, Layout, Mode, PeerSlot, FRAME_MARKER,
};
use super::segment::Segment;
use crate::sys::{self, PeerWatch};

/// How long a blocked end sleeps before it checks that its peer still
/// lives. Bounds how late a peer's death is noticed; a clean close wakes the
/// sleeper at once.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(20);

/// No honest position gets near this (it is 4 EiB of traffic); refusing
/// larger ones keeps every `position + frame` sum far from overflow.
const MAX_POSITION: u64 = 1 << 62;

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

    /// Writes a frame at `pos` (already reserved) and commits it. The commit
    /// word goes last so a reader that sees it sees the whole frame.
    fn write_frame(&self, pos: u64, at: usize, id: u64, payload: &[u8]) {
        let n = payload.len().div_ceil(8);
        let (a, b) = self.payload_words(at, n);
        let split = (a.len() * 8).min(payload.len());
        let mut sum = Checksum::new();
        sum.copy_in(&payload[..split], a);
        sum.copy_in(&payload[split..], b);
        // The caller checked the length against the maximum, which fits u32.
        let lw = len_word(payload.len() as u32);
        self.word(at, 1).store(lw, Relaxed);
        self.word(at, 2).store(id, Relaxed);
        self.word(at, 3).store(sum.finish(lw, id), Relaxed);
        let commit = self.word(at, 0);
        match self.layout.mode {
            // The head store publishes (SeqCst there); this only needs to
            // order the frame before itself.
            Mode::Spsc => commit.store(pos ^ self.key, Release),
            // The commit is the publication: SeqCst pairs with the
            // receiver's check before it sleeps (see `park`).
            Mode::Mpsc => commit.store(pos ^ self.key, SeqCst),
        }
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

fn wake_all(futex: &AtomicU32) {
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
                let busy = &sh.header().senders[self.slot].busy;
                // Marks "about to reserve" before the reservation exists, so
                // a receiver never sees a reservation without a busy slot
                // (see Consumer::abandoned).
                busy.store(u64::MAX, SeqCst);
                let pos = match self.reserve_mpsc(sh, need) {
                    Ok(Some(pos)) => pos,
                    other => {
                        busy.store(0, Release);
                        return other;
                    }
                };
                busy.store(pos + 1, Release);
                let id = sh.next_id();
                sh.write_frame(pos, sh.index_of(pos), id, payload);
                busy.store(0, Release);
                sh.wake_receiver();
                Ok(Some(id))
            }
        }
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

    fn reserve_mpsc(&mut self, sh: &Shared, need: u64) -> Result<Option<u64>, Corruption> {
        let h = sh.header();
        let mut stale = 0u32;
        loop {
            // Tail first: tail <= head at every instant and head only grows,
            // so an honest pair read in this order always has tail <= head.
            let tail = h.tail.load(Acquire);
            let head = h.head.load(Acquire);
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
            if h.head
                .compare_exchange_weak(head, head + need, AcqRel, Relaxed)
                .is_ok()
            {
                return Ok(Some(head));
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
            Mode::Mpsc => h.head.load(SeqCst),
        };
        // Damage counts as "something changed": the caller finds it on its
        // next attempt.
        tail > head || head.saturating_add(need) - tail <= sh.cap
    }
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
        let h = sh.header();
        let tail = h.tail.load(Acquire);
        let head = h.head.load(Acquire);
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
        let h = sh.header();
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
                // The commit word is the publication; until it names this
                // position the frame is not there yet (or is being written).
                if sh.word(at, 0).load(Acquire) != tail ^ sh.key {
                    return Ok(None);
                }
                let head = h.head.load(Acquire);
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
        if marker != FRAME_MARKER {
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
        let n = len.div_ceil(8);
        // Every byte is overwritten below, so a reused buffer's old contents
        // need no zeroing; only growth is zero-filled.
        out.truncate(n * 8);
        out.resize(n * 8, 0);
        let (a, b) = sh.payload_words(at, n);
        let (oa, ob) = out.split_at_mut(a.len() * 8);
        let mut sum = Checksum::new();
        sum.copy_out(a, oa);
        sum.copy_out(b, ob);
        // Computed over our copy, not over shared memory: what we return is
        // exactly what we checked.
        let computed = sum.finish(lw, id);
        if computed != stored {
            return Err(Corruption::Checksum { stored, computed });
        }
        if id == 0 {
            return Err(Corruption::ZeroId);
        }
        out.truncate(len);
        self.tail = tail + size;
        self.tail_at = sh.advance(at, size);
        h.tail.store(self.tail, SeqCst);
        sh.wake_senders();
        Ok(Some(id))
    }

    /// Whether a frame is ready or something changed; the SeqCst half of
    /// the sleep handshake with a publishing sender.
    pub(crate) fn ready(&self, sh: &Shared) -> bool {
        match sh.layout.mode {
            Mode::Spsc => sh.header().head.load(SeqCst) != self.tail,
            Mode::Mpsc => sh.word(self.tail_at, 0).load(SeqCst) == self.tail ^ sh.key,
        }
    }

    /// Multi-producer: whether the frame at our position was reserved by a
    /// sender that died before committing it. Then nothing after it can be
    /// located. Returns the dead sender's pid.
    pub(crate) fn abandoned(&self, sh: &Shared, watches: &mut [Option<PeerWatch>]) -> Option<u32> {
        if sh.layout.mode != Mode::Mpsc {
            return None;
        }
        let h = sh.header();
        let tail = self.tail;
        if h.head.load(SeqCst) <= tail || self.ready(sh) {
            return None;
        }
        // Someone reserved [tail, ..) and has not committed. Its slot shows
        // tail + 1 while it writes, or u64::MAX between setting busy and
        // recording the position; it clears busy only after committing.
        let mut dead_unknown = None;
        for (i, s) in h.senders.iter().enumerate().take(used_slots(h)) {
            let busy = s.busy.load(SeqCst);
            if busy == 0 {
                continue;
            }
            let state = observe(s, watches.get_mut(i)?, true);
            if busy == tail + 1 {
                return (state == PeerState::Gone)
                    .then(|| slot::unpack(s.state_pid.load(Relaxed)).1);
            }
            if busy == u64::MAX {
                match state {
                    PeerState::Gone => {
                        dead_unknown = Some(slot::unpack(s.state_pid.load(Relaxed)).1)
                    }
                    // A live sender might be the owner: wait and see.
                    _ => return None,
                }
            }
        }
        // Committed meanwhile? Then it is not abandoned.
        if self.ready(sh) {
            return None;
        }
        dead_unknown
    }
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
    /// A dead sender holds it mid-frame; its busy word is the evidence the
    /// receiver needs, so it is not reused.
    Evidence,
}

/// Takes `s` for this process if it is free, closed, or held by a dead
/// process.
pub(crate) fn claim(s: &PeerSlot) -> Claim {
    let me = sys::my_pid();
    loop {
        let cur = s.state_pid.load(Acquire);
        let (state, pid) = slot::unpack(cur);
        if matches!(state, slot::CLAIMING | slot::ATTACHED) {
            let mut w = None;
            if observe(s, &mut w, true) == PeerState::Alive {
                return Claim::Live(pid);
            }
            if s.busy.load(Acquire) != 0 {
                return Claim::Evidence;
            }
        }
        // Two steps so an observer never pairs our pid with the previous
        // holder's start time: CLAIMING means "start time not valid yet".
        if s.state_pid
            .compare_exchange(cur, slot::pack(slot::CLAIMING, me), AcqRel, Acquire)
            .is_ok()
        {
            s.busy.store(0, Relaxed);
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
