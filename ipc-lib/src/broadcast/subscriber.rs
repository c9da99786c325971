//! The subscribing end.

#[cfg(feature = "tokio")]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::de::DeserializeOwned;

use super::layout::{done, Layout, Segment, MAX_CAPACITY};
use super::{decode, Corruption, RecvError};
use crate::channel::layout::{check_frame, load_words};
use crate::channel::ring::{self, PeerState, LIVENESS_SLICE};
use crate::channel::OpenError;
use crate::shm::{self, OpenHow};
use crate::slots::LayoutRequest;
use crate::sys::PeerWatch;
use crate::trace::{self, Op};

/// Spins on an empty broadcast before sleeping (as a channel receiver).
const SPINS: u32 = 200;
/// Empty polls between two checks that the publisher's process lives.
const LIVENESS_EVERY: u32 = 1024;

/// Where a new subscriber starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// With the first message published after it joined (tokio's
    /// `subscribe`).
    #[default]
    New,
    /// With the newest message already published, if any: for a
    /// broadcast of state, where the latest value is what matters.
    Latest,
    /// With the oldest message still held.
    Oldest,
}

/// Builds a [`Subscriber`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SubscriberBuilder {
    name: String,
    start: Start,
    wait: Duration,
}

impl SubscriberBuilder {
    /// Where to start reading. Default [`Start::New`].
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// How long `open` waits for the broadcast to be created, and its
    /// creator to finish setting it up (at least 2 s for that). Default
    /// [`DEFAULT_OPEN_WAIT`](crate::DEFAULT_OPEN_WAIT) (5 s);
    /// `Duration::ZERO` fails at once if the name does not exist.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Opens the broadcast, waiting for its publisher to create it as
    /// [`wait`](Self::wait) says. A subscriber never creates one: it could
    /// not know its shape.
    pub fn open(self) -> Result<Subscriber, OpenError> {
        let opened = crate::patience::block(self.opening()?)?;
        self.finish(opened)
    }

    /// [`open`](Self::open) for async code (feature `tokio`): waits as
    /// long, with the same errors, on tokio's timer between tries that
    /// never block (so it needs a runtime with time enabled). Cancel
    /// safe: a dropped future leaves nothing open.
    #[cfg(feature = "tokio")]
    pub async fn open_async(self) -> Result<Subscriber, OpenError> {
        let opened = crate::patience::wait(self.opening()?).await?;
        self.finish(opened)
    }

    fn opening(
        &self,
    ) -> Result<impl crate::patience::Opening<Output = (Segment, bool)> + '_, OpenError> {
        // Whatever shape the publisher gave it.
        const ANY: &LayoutRequest = &LayoutRequest {
            capacity: None,
            max_message_size: None,
        };
        Segment::opening(&self.name, OpenHow::Open, ANY, self.wait)
    }

    fn finish(self, (seg, _): (Segment, bool)) -> Result<Subscriber, OpenError> {
        let name = shm::display_name(&self.name).to_owned();
        let head = seg.header().write_seq.load(Ordering::Acquire);
        let cap = seg.capacity as u64;
        if head > u64::MAX / 4 - MAX_CAPACITY as u64 {
            return Err(OpenError::CorruptHeader {
                name,
                reason: format!("message count {head} is impossible"),
            });
        }
        let next = match self.start {
            Start::New => head,
            Start::Latest => head.saturating_sub(1),
            Start::Oldest => head.saturating_sub(cap),
        };
        Ok(Subscriber {
            seg,
            name,
            next,
            missed: 0,
            watch: None,
            dead_publisher: None,
            empty_polls: 0,
            scratch: Vec::new(),
        })
    }
}

/// A subscribing end of a broadcast. Any number may read one broadcast,
/// in any processes; each receives every message published after its
/// start, in order, unless it falls more than the broadcast's capacity
/// behind (then [`RecvError::Lagged`]).
///
/// A subscriber writes nothing into the broadcast (it only sleeps on its
/// futex): it can be dropped or killed at any moment without anyone
/// noticing.
#[derive(Debug)]
pub struct Subscriber {
    seg: Segment,
    name: String,
    /// The sequence number of the next message to read.
    next: u64,
    missed: u64,
    watch: Option<PeerWatch>,
    /// The publisher slot's word when its process was found gone.
    dead_publisher: Option<u64>,
    empty_polls: u32,
    scratch: Vec<u8>,
}

/// One look at the slot of the next message.
enum Step {
    Message(u64),
    Empty,
}

impl Subscriber {
    /// Starts building a subscriber of broadcast `name`.
    pub fn builder(name: impl Into<String>) -> SubscriberBuilder {
        SubscriberBuilder {
            name: name.into(),
            start: Start::default(),
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The broadcast's name, as traced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broadcast's shape.
    pub fn layout(&self) -> Layout {
        self.seg.layout()
    }

    /// Messages this subscriber lost to lag, in all.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Messages published that this subscriber has not read yet (some may
    /// already be written over).
    pub fn pending(&self) -> u64 {
        self.seg
            .header()
            .write_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.next)
    }

    /// Waits for the next message.
    pub fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, None).map(|_| out)
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, Some(timeout)).map(|_| out)
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.try_recv_into(&mut out).map(|_| out)
    }

    /// [`try_recv`](Self::try_recv) into `out` (replacing its contents);
    /// returns the message id.
    pub fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError> {
        // Reset by a message: counts empty polls only.
        self.empty_polls += 1;
        let check = self.empty_polls >= LIVENESS_EVERY;
        self.attempt(out, check)?.ok_or(RecvError::Empty)
    }

    /// Waits for the next message into `out` (replacing its contents), at
    /// most `timeout` if one is given; returns the message id.
    pub fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<u64, RecvError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut spins = 0;
        let mut last_check: Option<Instant> = None;
        loop {
            // A clean leave is one load; a death costs a syscall, asked
            // once the spins are spent and then once per liveness slice.
            let check =
                spins >= SPINS && last_check.is_none_or(|at| at.elapsed() >= LIVENESS_SLICE);
            if check {
                last_check = Some(Instant::now());
            }
            if let Some(id) = self.attempt(out, check)? {
                return Ok(id);
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return Err(RecvError::Timeout),
                Some(d) => (d - now).min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let h = self.seg.header();
            ring::park(&h.data_futex, &h.recv_waiters, slice, || self.wake_ready());
        }
    }

    /// One look for a message, as every receive makes it: `Ok(None)` when
    /// none is there and the publisher may still publish one. With
    /// `check` it asks the kernel whether the publisher lives.
    pub(crate) fn attempt(
        &mut self,
        out: &mut Vec<u8>,
        check: bool,
    ) -> Result<Option<u64>, RecvError> {
        if let Step::Message(id) = self.step(out)? {
            return Ok(Some(id));
        }
        if self.publisher_gone(check) {
            return self.last_message(out).map(Some);
        }
        Ok(None)
    }

    /// The futex the publisher bumps when it publishes (or leaves) and the
    /// count of sleepers it reads first; see `ring::park`.
    #[cfg(feature = "tokio")]
    pub(crate) fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        let h = self.seg.header();
        (&h.data_futex, &h.recv_waiters)
    }

    /// Whether a receive would find something now (a message, or the
    /// publisher gone): the check half of the sleep handshake.
    pub(crate) fn wake_ready(&self) -> bool {
        let h = self.seg.header();
        h.write_seq.load(Ordering::SeqCst) > self.next
            || ring::observe(&h.publisher, &mut None, false) == PeerState::Gone
    }

    /// Receives one message and decodes it as `T` (the counterpart of
    /// [`Publisher::publish_value`](super::Publisher::publish_value)).
    pub fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.value(Some(None))
    }

    /// [`recv_value`](Self::recv_value), waiting at most `timeout`.
    pub fn recv_value_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvError> {
        self.value(Some(Some(timeout)))
    }

    /// [`recv_value`](Self::recv_value) that never waits.
    pub fn try_recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.value(None)
    }

    /// `wait`: `None` do not wait, `Some(None)` wait forever.
    fn value<T: DeserializeOwned>(
        &mut self,
        wait: Option<Option<Duration>>,
    ) -> Result<T, RecvError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = match wait {
            None => self.try_recv_into(&mut buf),
            Some(timeout) => self.recv_into(&mut buf, timeout),
        }
        .and_then(|id| decode(&buf, id));
        self.scratch = buf;
        r
    }

    /// The publisher is gone: a message it published just before leaving,
    /// or `Disconnected`.
    fn last_message(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError> {
        match self.step(out)? {
            Step::Message(id) => Ok(id),
            Step::Empty => Err(RecvError::Disconnected),
        }
    }

    /// Whether the publisher left (or, with `check`, died). One that
    /// never attached is not gone: a broadcast is only made by one.
    fn publisher_gone(&mut self, check: bool) -> bool {
        if check {
            self.empty_polls = 0;
        }
        let slot = &self.seg.header().publisher;
        let word = slot.state_pid.load(Ordering::Acquire);
        // A death, once seen, stays seen until someone else attaches:
        // `try_recv` asks the kernel only every so often.
        if self.dead_publisher == Some(word) {
            return true;
        }
        let gone = ring::observe(slot, &mut self.watch, check) == PeerState::Gone;
        if gone {
            self.dead_publisher = Some(word);
        }
        gone
    }

    /// Reads the next message if it is there, traced; a lag or damage
    /// is traced and returned as the error.
    fn step(&mut self, out: &mut Vec<u8>) -> Result<Step, RecvError> {
        match self.read(out) {
            Ok(Step::Message(id)) => {
                self.empty_polls = 0;
                trace::emit(
                    EventKind::MsgRecv,
                    ChannelKind::IpclibBroadcast,
                    &self.name,
                    out.len() as u64,
                    id,
                );
                Ok(Step::Message(id))
            }
            Err(RecvError::Lagged { missed }) => {
                self.missed += missed;
                trace::emit_op(Op {
                    size: missed,
                    aux: ipc_events::raw::drop_source::LAGGED,
                    ..Op::new(EventKind::Drop, ChannelKind::IpclibBroadcast, &self.name)
                });
                Err(RecvError::Lagged { missed })
            }
            other => other,
        }
    }

    /// The seqlock reader (see `layout`). Each call looks at one slot, so
    /// nothing another process writes can keep it looping.
    fn read(&mut self, out: &mut Vec<u8>) -> Result<Step, RecvError> {
        let h = self.seg.header();
        let cap = self.seg.capacity as u64;
        let max = self.seg.max_message_size;
        let head = h.write_seq.load(Ordering::Acquire);
        let seq = self.next;
        if head <= seq {
            // (A count that went backwards was scribbled: nothing to read
            // until it passes us again.)
            return Ok(Step::Empty);
        }
        if head - seq > cap {
            self.next = head - cap;
            return Err(RecvError::Lagged {
                missed: head - cap - seq,
            });
        }
        let slot = self.seg.slot(seq);
        let s1 = slot[0].load(Ordering::Acquire);
        let lw = slot[1].load(Ordering::Relaxed);
        let id = slot[2].load(Ordering::Relaxed);
        let stored = slot[3].load(Ordering::Relaxed);
        // A length read mid-write may be anything: bounded here, judged
        // below once the stamps say the copy is whole.
        let len = (lw as u32 as usize).min(max);
        let n = len.div_ceil(8);
        out.clear();
        out.resize(n * 8, 0);
        // Word by word, atomically: the publisher may be writing this slot
        // as we read it (the stamps below say whether it did).
        load_words(&slot[4..4 + n], out);
        fence(Ordering::Acquire);
        let s2 = slot[0].load(Ordering::Relaxed);
        self.next = seq + 1;
        if s1 == s2 && s1 == done(seq) {
            if let Err(reason) = check_frame(lw, max, out, seq + 1, stored) {
                out.clear();
                return Err(RecvError::Corrupt { seq, reason });
            }
            // The checksum covered the id we expect (seq + 1), so `id`,
            // which went into it, is that.
            out.truncate(len);
            return Ok(Step::Message(id));
        }
        out.clear();
        let stamp = s1.max(s2);
        // The message a stamp names; stamp 0 names none.
        match stamp.checked_sub(1).map(|s| s / 2) {
            Some(later) if later > seq && (later - seq).is_multiple_of(cap) => {
                // Written over before or while we read: lag. Messages up
                // to `later - cap` are gone, and whatever the publisher
                // has lapped since.
                let now = h.write_seq.load(Ordering::Acquire);
                let resume = (later - cap + 1).max(now.saturating_sub(cap));
                self.next = resume;
                Err(RecvError::Lagged {
                    missed: resume - seq,
                })
            }
            // Published (head > seq), so its stamp was stored before: an
            // older, unfinished or foreign stamp is damage.
            _ => Err(RecvError::Corrupt {
                seq,
                reason: Corruption::Commit { found: stamp },
            }),
        }
    }
}
