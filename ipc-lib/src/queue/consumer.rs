//! The consuming end and the job guard.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::de::DeserializeOwned;

use super::layout::{phase, Segment, State, MAX_CONSUMERS, MAX_POSITION, MAX_PRODUCERS, ORPHAN};
use super::producer::free_dead_write;
use super::{AckError, Corruption, Layout, OpenError, TakeError};
use crate::channel::layout::{check_frame, load_words, slot};
use crate::channel::ring::{self, Claim, PeerState, LIVENESS_SLICE};
use crate::shm::{self, OpenHow};
use crate::slots::LayoutRequest;
use crate::sys::PeerWatch;
use crate::trace::{self, Op};

/// Spins on an empty queue before sleeping (as a channel receiver).
const SPINS: u32 = 200;

/// Builds a [`Consumer`]. Layout settings apply when it creates the
/// queue and are checked against an existing one it opens.
#[derive(Clone, Debug)]
#[must_use]
pub struct ConsumerBuilder {
    name: String,
    req: LayoutRequest,
    unlink_on_drop: bool,
    wait: Duration,
}

impl ConsumerBuilder {
    shm::open_methods!(Consumer, "queue");

    /// Slots: how many jobs the queue holds, waiting or in work. Default
    /// 1024.
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.req.capacity = Some(jobs);
        self
    }

    /// The largest job, in bytes. Default 4 KiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.req.max_message_size = Some(bytes);
        self
    }

    fn opening(
        &self,
        how: OpenHow,
    ) -> Result<impl crate::patience::Opening<Output = (Segment, bool)> + '_, OpenError> {
        Segment::opening(&self.name, how, &self.req, self.wait)
    }

    fn finish(self, (mut seg, created): (Segment, bool)) -> Result<Consumer, OpenError> {
        seg.set_unlink_on_drop(created && self.unlink_on_drop);
        let name = shm::display_name(&self.name).to_owned();
        let h = seg.header();
        let mut taken = None;
        for (i, s) in h.consumers.iter().enumerate() {
            let before = slot::unpack(s.state_pid.load(Acquire)).1;
            // Consumers make no claims: nothing holds a slot back.
            if let Claim::Claimed = ring::claim(s, u64::MAX) {
                taken = Some((i, before));
                break;
            }
        }
        let Some((slot, before)) = taken else {
            return Err(OpenError::NoSenderSlot {
                name,
                max: MAX_CONSUMERS,
            });
        };
        let inner = Arc::new(Inner { seg, name, slot });
        inner.give_back_jobs_of(before);
        Ok(Consumer {
            seen_returned: inner.seg.header().returned.load(Acquire),
            inner,
            consumer_watches: (0..MAX_CONSUMERS).map(|_| None).collect(),
            producer_watches: (0..MAX_PRODUCERS).map(|_| None).collect(),
            last_scan: Instant::now(),
            rescan: false,
            writer_seen: None,
        })
    }
}

/// What a consumer and the jobs it handed out share: the mapping, and
/// the consumer slot, released only when the last of them is gone (a job
/// still held keeps its consumer alive, for others, until it is acked or
/// given back).
#[derive(Debug)]
struct Inner {
    seg: Segment,
    name: String,
    slot: usize,
}

impl Inner {
    /// Our consumer slot was held by a process (`pid`) that died holding
    /// jobs: gives them back, for any consumer to take, before anyone
    /// could take them for ours.
    fn give_back_jobs_of(&self, pid: u32) {
        let cap = self.seg.capacity as u64;
        for i in 0..cap {
            let word = self.seg.slot(i)[0].load(Acquire);
            let s = State::unpack(word);
            if s.phase == phase::TAKEN && s.owner == self.slot {
                self.give_back(s, word, pid, true);
            }
        }
    }

    /// Hands job `s` (state `word`) to no one: counted and traced as a
    /// redelivery lost by `pid`, and consumers are told to look.
    fn give_back(&self, s: State, word: u64, pid: u32, died: bool) -> bool {
        let h = self.seg.header();
        let orphan = State::taken(s.pos, s.deliveries, ORPHAN);
        if self.seg.slot(s.pos)[0]
            .compare_exchange(word, orphan, AcqRel, Relaxed)
            .is_err()
        {
            return false;
        }
        h.returned.fetch_add(1, SeqCst);
        self.redelivery(s.pos, pid, died);
        if h.recv_waiters.load(SeqCst) != 0 {
            ring::wake_all(&h.data_futex);
        }
        true
    }

    /// Counts and traces a delivery of the job at `pos` that process
    /// `pid` never acknowledged.
    fn redelivery(&self, pos: u64, pid: u32, died: bool) {
        self.seg.header().redelivered.fetch_add(1, Relaxed);
        let msg_id = self.seg.slot(pos)[2].load(Relaxed);
        trace::emit_op(Op {
            size: 1,
            msg_id,
            obj: u64::from(pid),
            aux: ipc_events::raw::drop_source::REDELIVERED,
            result: if died {
                -i64::from(libc::EOWNERDEAD)
            } else {
                0
            },
            ..Op::new(EventKind::Drop, ChannelKind::IpclibQueue, &self.name)
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        ring::release(&self.seg.header().consumers[self.slot]);
    }
}

/// A consuming end of a work queue. Any number may consume from one queue
/// (up to [`MAX_CONSUMERS`] at once), in any processes; each job goes to
/// one of them, as a [`Job`] to acknowledge.
#[derive(Debug)]
pub struct Consumer {
    inner: Arc<Inner>,
    consumer_watches: Vec<Option<PeerWatch>>,
    producer_watches: Vec<Option<PeerWatch>>,
    /// When we last looked for jobs whose consumer died.
    last_scan: Instant,
    /// The queue's give-back count when we last looked.
    seen_returned: u64,
    /// A select found a job to take back (given back, or its consumer
    /// dead): the next look scans for it whatever the time.
    rescan: bool,
    /// Since when the job at the head of the queue has been half written.
    writer_seen: Option<(u64, Instant)>,
}

/// A job handed to a consumer: its payload, and the duty to
/// [`ack`](Job::ack) it once the work is done.
///
/// Dropping a job without an ack gives it back: it is delivered again (to
/// any consumer, this one included) and counted and traced as a
/// redelivery, just as if this process had died holding it. Unfinished
/// work is never silently taken for done.
#[derive(Debug)]
#[must_use = "a job dropped without an ack is delivered again"]
pub struct Job {
    inner: Arc<Inner>,
    pos: u64,
    /// The slot's state while the job is ours.
    word: u64,
    id: u64,
    deliveries: u8,
    payload: Vec<u8>,
    delivered: Instant,
    settled: bool,
}

impl Job {
    /// The job's id, as its push returned it and as traced.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The job's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Which delivery this is: 1 the first, more when consumers before
    /// this one died holding it or gave it back (saturates at 255).
    pub fn deliveries(&self) -> u32 {
        u32::from(self.deliveries)
    }

    /// Marks the job done: it leaves the queue and its slot is free for a
    /// new push. Traced as the job's `msg_recv`.
    pub fn ack(mut self) -> Result<(), AckError> {
        self.settled = true;
        let h = self.inner.seg.header();
        let cap = self.inner.seg.capacity as u64;
        // SeqCst: the other half of a sleeping producer's handshake.
        if self.inner.seg.slot(self.pos)[0]
            .compare_exchange(self.word, State::free(self.pos + cap), SeqCst, Relaxed)
            .is_err()
        {
            return Err(AckError::Lost { msg_id: self.id });
        }
        trace::emit_op(Op {
            size: self.payload.len() as u64,
            msg_id: self.id,
            aux: u64::from(self.deliveries),
            duration_ns: u64::try_from(self.delivered.elapsed().as_nanos()).unwrap_or(u64::MAX),
            ..Op::new(
                EventKind::MsgRecv,
                ChannelKind::IpclibQueue,
                &self.inner.name,
            )
        });
        if h.send_waiters.load(SeqCst) != 0 {
            ring::wake_all(&h.space_futex);
        }
        Ok(())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.settled {
            let s = State::unpack(self.word);
            self.inner
                .give_back(s, self.word, crate::sys::my_pid(), false);
        }
    }
}

impl Consumer {
    /// Starts building a consumer of queue `name` (a shared-memory object
    /// name, with or without a leading `/`).
    pub fn builder(name: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            name: name.into(),
            req: LayoutRequest::default(),
            unlink_on_drop: true,
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The queue's name, as traced.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The queue's shape.
    pub fn layout(&self) -> Layout {
        self.inner.seg.layout()
    }

    /// Deliveries never acknowledged, by any consumer of this queue since
    /// it was created, whose jobs went round again.
    pub fn redelivered(&self) -> u64 {
        self.inner.seg.header().redelivered.load(Relaxed)
    }

    /// Jobs lost, in this queue's life, because their producer died while
    /// pushing them.
    pub fn skipped(&self) -> u64 {
        self.inner.seg.header().skipped.load(Relaxed)
    }

    /// Waits for the next job.
    #[expect(
        clippy::should_implement_trait,
        reason = "a wait that fails or times out is not an iterator step: a queue never ends"
    )]
    pub fn next(&mut self) -> Result<Job, TakeError> {
        self.next_until(Some(None))
    }

    /// Waits at most `timeout` for the next job.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Job, TakeError> {
        self.next_until(Some(Instant::now().checked_add(timeout)))
    }

    /// The next job if one is waiting: [`TakeError::Empty`] if not.
    pub fn try_next(&mut self) -> Result<Job, TakeError> {
        self.next_until(None)
    }

    /// Waits for the next job and decodes it as `T` (the counterpart of
    /// [`Producer::push_value`](super::Producer::push_value)); the job
    /// still needs its ack.
    pub fn next_value<T: DeserializeOwned>(&mut self) -> Result<(Job, T), TakeError> {
        self.next().and_then(decoded)
    }

    /// [`next_value`](Self::next_value), waiting at most `timeout`.
    pub fn next_value_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<(Job, T), TakeError> {
        self.next_timeout(timeout).and_then(decoded)
    }

    /// [`next_value`](Self::next_value) that never waits.
    pub fn try_next_value<T: DeserializeOwned>(&mut self) -> Result<(Job, T), TakeError> {
        self.try_next().and_then(decoded)
    }

    /// `wait`: `None` do not wait, `Some(None)` wait for ever,
    /// `Some(Some(deadline))` until then.
    fn next_until(&mut self, wait: Option<Option<Instant>>) -> Result<Job, TakeError> {
        let mut spins = 0;
        loop {
            if let Some(job) = self.take()? {
                return Ok(job);
            }
            let Some(deadline) = wait else {
                return Err(TakeError::Empty);
            };
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return Err(TakeError::Timeout),
                Some(d) => (d - now).min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let h = self.inner.seg.header();
            ring::park(&h.data_futex, &h.recv_waiters, slice, || self.job_ready());
        }
    }

    /// Whether a look would now find a job: the next one in line ready,
    /// or jobs given back since the last look (the check half of the
    /// sleep handshake, SeqCst loads).
    pub(super) fn job_ready(&self) -> bool {
        let seg = &self.inner.seg;
        let h = seg.header();
        let pos = h.next.load(SeqCst);
        let s = State::unpack(seg.slot(pos)[0].load(SeqCst));
        (s.pos == pos && s.phase == phase::READY) || h.returned.load(SeqCst) != self.seen_returned
    }

    /// The futex word producers bump and wake for a job (and consumers
    /// for a job given back), and the count of sleepers they read first:
    /// for async waits and [`crate::select`].
    pub(crate) fn wake_words(
        &self,
    ) -> (&std::sync::atomic::AtomicU32, &std::sync::atomic::AtomicU32) {
        let h = self.inner.seg.header();
        (&h.data_futex, &h.recv_waiters)
    }

    /// For [`crate::select`]: whether a try would now hand out a job (or
    /// an error). With `check` (once a liveness slice) it also does what
    /// a try does that takes nothing: steps over a job a dead producer
    /// left half written, and looks for jobs given back or held by dead
    /// consumers, which the next try then takes first.
    pub(crate) fn select_ready(&mut self, check: bool) -> bool {
        if self.rescan || self.job_ready() {
            return true;
        }
        if !check {
            return false;
        }
        let mut alive = [None; MAX_CONSUMERS];
        if self.next_lost(0, &mut alive).is_some() {
            self.rescan = true;
            return true;
        }
        // A damaged position is ready too: the try says so.
        !matches!(self.head(), Ok(None))
    }

    /// One look for a job: given back or left by a dead consumer first
    /// (they are the oldest), when jobs were given back since the last
    /// look or a liveness slice has passed; then the next job in line.
    pub(super) fn take(&mut self) -> Result<Option<Job>, TakeError> {
        let returned = self.inner.seg.header().returned.load(Acquire);
        if returned != self.seen_returned
            || self.rescan
            || self.last_scan.elapsed() >= LIVENESS_SLICE
        {
            self.seen_returned = returned;
            self.last_scan = Instant::now();
            self.rescan = false;
            if let Some(job) = self.reclaim()? {
                return Ok(Some(job));
            }
        }
        loop {
            let Some((pos, word)) = self.head()? else {
                return Ok(None);
            };
            let seg = &self.inner.seg;
            let mine = State::taken(pos, 1, self.inner.slot);
            if seg.slot(pos)[0]
                .compare_exchange(word, mine, AcqRel, Relaxed)
                .is_ok()
            {
                let next = &seg.header().next;
                let _ = next.compare_exchange(pos, pos + 1, AcqRel, Relaxed);
                return self.deliver(pos, mine).map(Some);
            }
        }
    }

    /// The next job in line, ready to take (its position and state word),
    /// once what needs no taking is stepped over: positions already
    /// delivered, and a job a dead producer left half written. `None`:
    /// nothing is ready at the head of the line.
    fn head(&mut self) -> Result<Option<(u64, u64)>, TakeError> {
        let inner = self.inner.clone();
        let h = inner.seg.header();
        let cap = inner.seg.capacity as u64;
        loop {
            let pos = h.next.load(Acquire);
            if pos >= MAX_POSITION {
                return Err(TakeError::Corrupt {
                    pos,
                    reason: Corruption::Positions {
                        head: h.head.load(Relaxed),
                        tail: pos,
                        capacity: cap,
                    },
                });
            }
            let word = inner.seg.slot(pos)[0].load(Acquire);
            let s = State::unpack(word);
            if s.pos < pos || (s.pos == pos && s.phase == phase::FREE) {
                // Nothing pushed at our position yet (or its slot still
                // holds a job of the lap before, in work).
                return Ok(None);
            }
            if s.pos > pos || s.phase == phase::TAKEN {
                // Delivered; the one who took it has not moved the hint
                // (or died before it could).
                let _ = h.next.compare_exchange(pos, pos + 1, AcqRel, Relaxed);
                continue;
            }
            if s.phase == phase::WRITING {
                if self.writer_died(pos, s.owner) {
                    continue;
                }
                return Ok(None);
            }
            return Ok(Some((pos, word)));
        }
    }

    /// The job at `pos` is being written by producer `i`: whether that
    /// producer died, once it has been so for a liveness slice (asking
    /// the kernel is a syscall, and a live writer takes microseconds), in
    /// which case its slot is freed.
    fn writer_died(&mut self, pos: u64, i: usize) -> bool {
        let now = Instant::now();
        match self.writer_seen {
            Some((at, since)) if at == pos && now.duration_since(since) >= LIVENESS_SLICE => {
                self.writer_seen = Some((pos, now));
            }
            Some((at, _)) if at == pos => return false,
            _ => {
                self.writer_seen = Some((pos, now));
                return false;
            }
        }
        let seg = &self.inner.seg;
        let s = &seg.header().producers[i];
        let Some(watch) = self.producer_watches.get_mut(i) else {
            return false;
        };
        if ring::observe(s, watch, true) == PeerState::Alive {
            return false;
        }
        let pid = slot::unpack(s.state_pid.load(Relaxed)).1;
        free_dead_write(seg, &self.inner.name, pos, i, pid);
        // Freed by us or by someone else: either way, look again.
        true
    }

    /// Takes a job that was given back, or whose consumer died, if there
    /// is one: a scan of every slot, asking the kernel at most once per
    /// consumer whether it lives.
    fn reclaim(&mut self) -> Result<Option<Job>, TakeError> {
        let mut alive = [None; MAX_CONSUMERS];
        let mut from = 0;
        while let Some((i, word, lost_by)) = self.next_lost(from, &mut alive) {
            from = i + 1;
            let s = State::unpack(word);
            let mine = State::taken(s.pos, s.deliveries.saturating_add(1), self.inner.slot);
            if self.inner.seg.slot(i)[0]
                .compare_exchange(word, mine, AcqRel, Relaxed)
                .is_ok()
            {
                // A given-back job was counted when it was given back.
                if let Some(pid) = lost_by {
                    self.inner.redelivery(s.pos, pid, true);
                }
                return self.deliver(s.pos, mine).map(Some);
            }
        }
        Ok(None)
    }

    /// The first slot from `from` on holding a job nobody works on: given
    /// back, or taken by a consumer that died (`alive` caches, per
    /// consumer, what the kernel said). Returns the slot, its state word
    /// and the dead consumer's pid (`None`: given back).
    fn next_lost(
        &mut self,
        from: u64,
        alive: &mut [Option<bool>; MAX_CONSUMERS],
    ) -> Option<(u64, u64, Option<u32>)> {
        let seg = &self.inner.seg;
        let h = seg.header();
        for i in from..seg.capacity as u64 {
            let word = seg.slot(i)[0].load(Acquire);
            let s = State::unpack(word);
            if s.phase != phase::TAKEN || s.owner == self.inner.slot {
                continue;
            }
            if s.owner == ORPHAN {
                return Some((i, word, None));
            }
            let peer = &h.consumers[s.owner];
            let live = *alive[s.owner].get_or_insert_with(|| {
                ring::observe(peer, &mut self.consumer_watches[s.owner], true) == PeerState::Alive
            });
            if !live {
                return Some((i, word, Some(slot::unpack(peer.state_pid.load(Relaxed)).1)));
            }
        }
        None
    }

    /// Copies out the job at `pos`, ours with state `word`, and checks
    /// it; a damaged one is removed.
    fn deliver(&self, pos: u64, word: u64) -> Result<Job, TakeError> {
        let seg = &self.inner.seg;
        let max = seg.max_message_size;
        let slot = seg.slot(pos);
        let lw = slot[1].load(Relaxed);
        let id = slot[2].load(Relaxed);
        let stored = slot[3].load(Relaxed);
        // Bounded before use; judged by `check_frame` below.
        let len = (lw as u32 as usize).min(max);
        let n = len.div_ceil(8);
        let mut payload = vec![0; n * 8];
        load_words(&slot[4..4 + n], &mut payload);
        let checked = match id {
            0 => Err(Corruption::ZeroId),
            _ => check_frame(lw, max, &payload, id, stored),
        };
        if let Err(reason) = checked {
            let cap = seg.capacity as u64;
            let _ = slot[0].compare_exchange(word, State::free(pos + cap), SeqCst, Relaxed);
            return Err(TakeError::Corrupt { pos, reason });
        }
        payload.truncate(len);
        Ok(Job {
            inner: self.inner.clone(),
            pos,
            word,
            id,
            deliveries: State::unpack(word).deliveries,
            payload,
            delivered: Instant::now(),
            settled: false,
        })
    }
}

/// Decodes a job as `T`; one that does not decode is acknowledged (see
/// [`TakeError::Decode`]).
pub(super) fn decoded<T: DeserializeOwned>(job: Job) -> Result<(Job, T), TakeError> {
    match crate::codec::decode_bytes(job.payload()) {
        Ok(value) => Ok((job, value)),
        Err(source) => {
            let msg_id = job.id();
            // Lost to another consumer or not, it is gone from ours.
            let _ = job.ack();
            Err(TakeError::Decode {
                msg_id,
                type_name: std::any::type_name::<T>(),
                source,
            })
        }
    }
}
