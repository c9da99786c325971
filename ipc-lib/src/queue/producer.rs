//! The pushing end.

use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::Serialize;

use super::layout::{phase, Segment, State, MAX_POSITION, MAX_PRODUCERS};
use super::{Corruption, Layout, OpenError, PushError};
use crate::channel::layout::{checksum, len_word, slot, store_words, PeerSlot};
use crate::channel::ring::{self, Claim, LIVENESS_SLICE};
use crate::shm::{self, OpenHow};
use crate::slots::LayoutRequest;
use crate::trace::{self, Op};

/// Builds a [`Producer`]. Layout settings apply when it creates the
/// queue and are checked against an existing one it opens.
#[derive(Clone, Debug)]
#[must_use]
pub struct ProducerBuilder {
    name: String,
    req: LayoutRequest,
    unlink_on_drop: bool,
    wait: Duration,
}

impl ProducerBuilder {
    shm::open_methods!(Producer, "queue");

    /// Slots: how many jobs the queue holds, waiting or in work. Default
    /// 1024.
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.req.capacity = Some(jobs);
        self
    }

    /// The largest job, in bytes. Default 4 KiB. Every slot is this big.
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

    fn finish(self, (mut seg, created): (Segment, bool)) -> Result<Producer, OpenError> {
        seg.set_unlink_on_drop(created && self.unlink_on_drop);
        let name = shm::display_name(&self.name).to_owned();
        let h = seg.header();
        let mut taken = None;
        for (i, s) in h.producers.iter().enumerate() {
            settle(&seg, &name, i, s);
            // Claims here never hold a slot back (see `settle`): no
            // position is past u64::MAX.
            if let Claim::Claimed = ring::claim(s, u64::MAX) {
                taken = Some(i);
                break;
            }
        }
        let Some(slot) = taken else {
            return Err(OpenError::NoSenderSlot {
                name,
                max: MAX_PRODUCERS,
            });
        };
        Ok(Producer {
            seg,
            name,
            slot,
            scratch: Vec::new(),
        })
    }
}

/// A producer slot's previous holder died while pushing the job at its
/// claim: frees that job's slot, which would otherwise wait for a
/// producer that will never finish it, before the producer slot (which
/// names the dead writer) is reused. A consumer at that position does the
/// same (`Consumer::skip_dead_writer`); the compare-and-swap picks one.
fn settle(seg: &Segment, name: &str, i: usize, s: &PeerSlot) {
    let claim = s.claim.load(Acquire);
    if claim == 0 || ring::observe(s, &mut None, true) != ring::PeerState::Gone {
        return;
    }
    let pid = slot::unpack(s.state_pid.load(Relaxed)).1;
    free_dead_write(seg, name, claim - 1, i, pid);
}

/// Frees the slot of position `pos` if producer `i` (process `pid`, dead)
/// left it half written; counts and traces the lost job.
pub(super) fn free_dead_write(seg: &Segment, name: &str, pos: u64, i: usize, pid: u32) -> bool {
    let cap = seg.capacity as u64;
    let h = seg.header();
    let freed = seg.slot(pos)[0]
        .compare_exchange(
            State::writing(pos, i),
            State::free(pos + cap),
            AcqRel,
            Relaxed,
        )
        .is_ok();
    if freed {
        h.skipped.fetch_add(1, Relaxed);
        tracing::warn!(
            target: "ipc_lib",
            queue = name,
            pid,
            pos,
            "producer died while pushing; its unfinished job is dropped"
        );
        trace::emit_op(Op {
            size: 1,
            obj: u64::from(pid),
            aux: ipc_events::raw::drop_source::SENDER_DIED,
            result: -i64::from(libc::EOWNERDEAD),
            ..Op::new(EventKind::Drop, ChannelKind::IpclibQueue, name)
        });
        if h.send_waiters.load(SeqCst) != 0 {
            ring::wake_all(&h.space_futex);
        }
    }
    freed
}

/// A pushing end of a work queue. Any number may push into one queue (up
/// to [`MAX_PRODUCERS`] at once), in any processes; each opens its own.
/// One killed mid-push loses that job and nothing else.
#[derive(Debug)]
pub struct Producer {
    seg: Segment,
    name: String,
    /// Our producer slot, named in the state of a job we are writing.
    slot: usize,
    scratch: Vec<u8>,
}

impl Producer {
    /// Starts building a producer of queue `name` (a shared-memory object
    /// name, with or without a leading `/`).
    pub fn builder(name: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder {
            name: name.into(),
            req: LayoutRequest::default(),
            unlink_on_drop: true,
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The queue's name, as traced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's shape.
    pub fn layout(&self) -> Layout {
        self.seg.layout()
    }

    /// Pushes one job and returns its id, waiting for a free slot when the
    /// queue is full.
    pub fn push(&mut self, job: &[u8]) -> Result<u64, PushError> {
        self.push_until(job, Some(None))
    }

    /// Pushes one job if a slot is free now.
    pub fn try_push(&mut self, job: &[u8]) -> Result<u64, PushError> {
        self.push_until(job, None)
    }

    /// Pushes one job, waiting at most `timeout` for a free slot.
    pub fn push_timeout(&mut self, job: &[u8], timeout: Duration) -> Result<u64, PushError> {
        self.push_until(job, Some(Instant::now().checked_add(timeout)))
    }

    /// Serializes `value` (postcard, as every ipc-lib end) and pushes it
    /// as [`push`](Self::push) does. Take it with
    /// [`Consumer::next_value`](super::Consumer::next_value).
    pub fn push_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, PushError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = match crate::codec::encode_into(value, &mut buf) {
            Ok(()) => self.push(&buf),
            Err(crate::channel::SendError::Encode(e)) => Err(PushError::Encode(e)),
            Err(e) => unreachable!("encoding fails only to encode: {e}"),
        };
        self.scratch = buf;
        r
    }

    /// `wait`: `None` do not wait, `Some(None)` wait for ever,
    /// `Some(Some(deadline))` until then.
    fn push_until(&mut self, job: &[u8], wait: Option<Option<Instant>>) -> Result<u64, PushError> {
        let max = self.seg.max_message_size;
        if job.len() > max {
            return Err(PushError::TooLarge {
                len: job.len(),
                max,
            });
        }
        loop {
            // Stamped before the job is visible: a consumer may take it and
            // trace its ack before we trace anything after the publication.
            let sent_ns = trace::now_if_enabled();
            if let Some(id) = self.try_write(job)? {
                trace::emit_op(Op {
                    size: job.len() as u64,
                    msg_id: id,
                    at_ns: sent_ns,
                    ..Op::new(EventKind::MsgSend, ChannelKind::IpclibQueue, &self.name)
                });
                return Ok(id);
            }
            let deadline = match wait {
                None => return Err(PushError::Full),
                Some(deadline) => deadline,
            };
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return Err(PushError::Timeout),
                Some(d) => (d - now).min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let h = self.seg.header();
            let seg = &self.seg;
            ring::park(&h.space_futex, &h.send_waiters, slice, || {
                let pos = h.head.load(SeqCst);
                State::unpack(seg.slot(pos)[0].load(SeqCst)).pos >= pos
            });
        }
    }

    /// Writes `job` into the slot at the head if it is free. `Ok(None)`:
    /// full.
    fn try_write(&mut self, job: &[u8]) -> Result<Option<u64>, PushError> {
        let h = self.seg.header();
        let cap = self.seg.capacity as u64;
        let claim = &h.producers[self.slot].claim;
        // Each turn either takes the slot, finds it full, or moves the
        // head hint on; a hint pushed around by a hostile writer is
        // bounded by the position limit.
        loop {
            let pos = h.head.load(Acquire);
            if pos >= MAX_POSITION {
                return Err(PushError::Corrupt(Corruption::Positions {
                    head: pos,
                    tail: h.next.load(Relaxed),
                    capacity: cap,
                }));
            }
            let slot = self.seg.slot(pos);
            let word = slot[0].load(Acquire);
            let s = State::unpack(word);
            if s.pos < pos {
                // The slot still holds a job of the lap before: full.
                return Ok(None);
            }
            if s.pos > pos || s.phase != phase::FREE {
                // Someone took this position and has not moved the hint
                // (or died before it could).
                let _ = h.head.compare_exchange(pos, pos + 1, AcqRel, Relaxed);
                continue;
            }
            // The claim first: should we die between the two, whoever
            // reuses our producer slot finds what we were writing.
            claim.store(pos + 1, SeqCst);
            if slot[0]
                .compare_exchange(word, State::writing(pos, self.slot), AcqRel, Relaxed)
                .is_err()
            {
                continue;
            }
            let _ = h.head.compare_exchange(pos, pos + 1, AcqRel, Relaxed);
            let id = next_id(&h.next_msg_id);
            let n = job.len().div_ceil(8);
            // The length was checked against the maximum, which fits u32.
            let lw = len_word(job.len() as u32);
            // Summed before the stores into the slot (see
            // `ring::write_frame`).
            let sum = checksum(lw, id, job);
            store_words(job, &slot[4..4 + n]);
            slot[1].store(lw, Relaxed);
            slot[2].store(id, Relaxed);
            slot[3].store(sum, Relaxed);
            // SeqCst: the publication, and the other half of a sleeping
            // consumer's handshake (`ring::park`).
            slot[0].store(State::ready(pos), SeqCst);
            claim.store(0, Release);
            if h.recv_waiters.load(SeqCst) != 0 {
                ring::wake_all(&h.data_futex);
            }
            return Ok(Some(id));
        }
    }
}

/// The next message id; 0 means "no id" everywhere, so a wrapped (or
/// scribbled) counter skips it.
fn next_id(counter: &std::sync::atomic::AtomicU64) -> u64 {
    match counter.fetch_add(1, Relaxed) {
        0 => counter.fetch_add(1, Relaxed),
        id => id,
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        ring::release(&self.seg.header().producers[self.slot]);
    }
}
