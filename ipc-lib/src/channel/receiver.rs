//! The receiving end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::de::DeserializeOwned;

use super::error::{Corruption, OpenError, RecvError};
use super::layout::{Layout, Mode, MAX_SENDERS};
use super::ring::{self, Claim, Consumer, Held, PeerState, Shared, LIVENESS_SLICE};
use super::segment::{display_name, LayoutRequest, OpenHow, Segment};
use crate::codec::decode;
use crate::spin::{Spin, SpinWait};
use crate::sys::PeerWatch;
use crate::trace::{self, Op};

/// Empty polls between two checks that the senders' processes still live
/// (see `Sender`'s twin constant): `try_recv` in a loop stays syscall-free
/// nearly always.
const LIVENESS_EVERY: u32 = 1024;
/// Default bound on the spins of a wait on an empty ring: about 4.5 µs
/// on the 2-vCPU machine of BENCHMARKS.md, where a spin (one look at the
/// ring and a `pause`) takes 22 ns, so a message a few microseconds away
/// is caught without a futex while spinning pays (see `crate::spin`).
const DEFAULT_SPINS: u32 = 200;

/// Builds a [`Receiver`]. Layout settings apply when this end creates the
/// channel and are checked against the channel when it opens one; settings
/// left out are taken from the existing channel.
#[derive(Clone, Debug)]
#[must_use]
pub struct ReceiverBuilder {
    name: String,
    req: LayoutRequest,
    spins: u32,
    unlink_on_drop: bool,
    wait: Duration,
}

impl ReceiverBuilder {
    builder_options!(Receiver);

    /// The most times a blocking receive polls an empty ring before it
    /// sleeps on the futex. Default 200, a few microseconds.
    ///
    /// How many of them a receive makes, the receiver learns from its last
    /// waits: while at least 1 in 32 of the spins catch a message, a
    /// receive spins up to about twice what the longest recent catch
    /// took; when fewer do (typically a sender that needs the CPU the
    /// receiver spins on), it sleeps at once, with an occasional spin of
    /// the whole bound to notice when spinning pays again. On a machine
    /// with one CPU online it never spins. 0 sleeps at once; `u32::MAX`
    /// spins until a message comes.
    pub fn spins(mut self, spins: u32) -> Self {
        self.spins = spins;
        self
    }

    fn finish(self, (mut seg, created): (Segment, bool)) -> Result<Receiver, OpenError> {
        seg.set_unlink_on_drop(created && self.unlink_on_drop);
        let name = display_name(&self.name).to_owned();
        let sh = Shared::new(seg, name.clone());
        let h = sh.header();
        match ring::claim(&h.receiver, h.tail.load(Ordering::Acquire)) {
            Claim::Claimed => {}
            Claim::Live(pid) => {
                return Err(OpenError::PeerAttached {
                    name,
                    role: "receiver",
                    pid,
                })
            }
            // Receivers make no claims; only a scribbled slot has one, and
            // it is refused rather than trusted.
            Claim::Evidence => {
                return Err(OpenError::CorruptHeader {
                    name,
                    reason: "receiver slot holds a sender's claim".into(),
                })
            }
        }
        let consumer = match Consumer::new(&sh) {
            Ok(c) => c,
            Err((_, reason)) => {
                ring::release(&h.receiver);
                return Err(OpenError::CorruptHeader {
                    name,
                    reason: reason.to_string(),
                });
            }
        };
        Ok(Receiver {
            sh,
            consumer,
            spin: Spin::new(self.spins),
            watches: (0..MAX_SENDERS).map(|_| None).collect(),
            empty_polls: 0,
            last_check: None,
            failed: None,
            skipped: 0,
            scratch: Vec::new(),
            held: None,
            spill: Vec::new(),
        })
    }
}

/// The receiving end of a shared-memory channel; one per channel.
///
/// Receives validate every frame (marker, length, bounds, checksum) on a
/// private copy before returning it, so a process that scribbles on the
/// segment causes [`RecvError::Corrupt`], never a panic or a wrong message.
/// Every successful receive traces a `msg_recv` event with the message id
/// its sender traced.
///
/// [`RecvError::Disconnected`] means no sender is attached right now; a
/// sender that attaches later (a restarted producer) makes messages flow
/// again. After `fork`, a child must open its own end.
///
/// In a [`Mode::Mpsc`] channel, a sender whose process dies in the middle
/// of a send loses that message only: the receiver steps over its
/// unfinished frame once it has waited a liveness slice (20 ms) for it,
/// counts it ([`skipped`](Self::skipped)), traces it as a `drop` on the
/// channel, and goes on with the other senders' messages.
///
/// ```
/// use std::time::Duration;
/// use ipc_lib::channel::{Receiver, RecvError, Sender};
///
/// let name = format!("doc-receiver-{}", std::process::id());
/// let mut rx = Receiver::builder(&name).create()?;
/// assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
///
/// let mut tx = Sender::builder(&name).open()?;
/// tx.send(b"one")?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(5))?, b"one");
///
/// // Once every sender is gone and the ring is drained: Disconnected.
/// tx.send(b"two")?;
/// drop(tx);
/// assert_eq!(rx.recv()?, b"two");
/// assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Receiver {
    sh: Shared,
    consumer: Consumer,
    spin: Spin,
    watches: Vec<Option<PeerWatch>>,
    empty_polls: u32,
    /// When a blocking receive began waiting, or last asked the kernel
    /// whether the senders live; `None` once a message comes. Kept across
    /// calls, so that receives with timeouts shorter than a slice, in a
    /// loop, still ask every slice.
    last_check: Option<Instant>,
    /// After corruption nothing further can be read: the position where it
    /// was found and what it was, which every later receive repeats.
    failed: Option<(u64, Corruption)>,
    skipped: u64,
    scratch: Vec<u8>,
    /// The message a [`Borrowed`] lends, until its drop gives it back.
    held: Option<Held>,
    /// Where a lent message that wraps around the end of the ring is
    /// copied to.
    spill: Vec<u8>,
}

/// What a receive does with the message it finds.
enum Take<'a> {
    /// Copies it out into the buffer.
    Copy(&'a mut Vec<u8>),
    /// Lends it where it lies (`held`).
    Lend,
}

impl Receiver {
    /// Starts building the receiving end of channel `name` (a shared-memory
    /// object name, with or without a leading `/`).
    pub fn builder(name: impl Into<String>) -> ReceiverBuilder {
        ReceiverBuilder {
            name: name.into(),
            req: LayoutRequest::default(),
            spins: DEFAULT_SPINS,
            unlink_on_drop: true,
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The channel's name, as traced.
    pub fn name(&self) -> &str {
        &self.sh.name
    }

    /// The channel's layout.
    pub fn layout(&self) -> Layout {
        self.sh.layout
    }

    /// How many messages were lost because their sender died while sending
    /// them (multi-producer channels; always 0 in a single-producer one,
    /// whose sender publishes a frame only once it is whole).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Takes the next message if one is waiting: [`RecvError::Empty`] if
    /// not, [`RecvError::Disconnected`] if none can come any more. Never
    /// sleeps, and makes no syscall except for an occasional check that the
    /// senders live.
    pub fn try_recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.try_recv_into(&mut out).map(|_| out)
    }

    /// Waits for the next message: spins while spinning has lately paid
    /// (see [`ReceiverBuilder::spins`]), then sleeps on a futex.
    /// Returns [`RecvError::Disconnected`] once every sender is gone (closed
    /// or died) and the ring is drained.
    pub fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, None).map(|_| out)
    }

    /// [`recv`](Self::recv), giving up with [`RecvError::Timeout`] after
    /// `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, Some(timeout)).map(|_| out)
    }

    /// [`try_recv`](Self::try_recv) into a buffer the caller reuses;
    /// returns the message id. `out` holds exactly the message afterwards.
    pub fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError> {
        // Reset by a message: counts empty polls only.
        self.try_take(&mut Take::Copy(out))
    }

    /// One look, as `try_recv_into` and `try_borrow` make it.
    fn try_take(&mut self, take: &mut Take<'_>) -> Result<u64, RecvError> {
        self.empty_polls += 1;
        let check = self.empty_polls >= LIVENESS_EVERY;
        self.attempt_take(take, check)?.ok_or(RecvError::Empty)
    }

    /// [`recv`](Self::recv) (`timeout` `None`) or
    /// [`recv_timeout`](Self::recv_timeout) into a buffer the caller reuses;
    /// returns the message id.
    pub fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<u64, RecvError> {
        self.take_waiting(&mut Take::Copy(out), timeout)
    }

    /// The wait of `recv_into` and `borrow`.
    #[inline(always)]
    fn take_waiting(
        &mut self,
        take: &mut Take<'_>,
        timeout: Option<Duration>,
    ) -> Result<u64, RecvError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut waiting = SpinWait::default();
        loop {
            // Liveness is asked of the kernel only once a slice has passed
            // since the wait began; a clean close shows in the slot at once.
            let now_check = self
                .last_check
                .is_some_and(|t| t.elapsed() >= LIVENESS_SLICE);
            if now_check {
                self.last_check = Some(Instant::now());
            }
            if let Some(id) = self.attempt_take(take, now_check)? {
                waiting.done(&mut self.spin);
                return Ok(id);
            }
            if waiting.spin(&mut self.spin) {
                continue;
            }
            let now = Instant::now();
            self.last_check.get_or_insert(now);
            let slice = match deadline {
                Some(d) if d <= now => return Err(RecvError::Timeout),
                Some(d) => (d - now).min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let h = self.sh.header();
            ring::park(&h.data_futex, &h.recv_waiters, slice, || self.wake_ready());
        }
    }

    /// Waits for the next message, as [`recv`](Self::recv) does, and lends
    /// it where it lies in the ring instead of copying it out: checked in
    /// place (its checksum too), traced as [`recv`](Self::recv) traces a
    /// message, and kept from the senders until the [`Borrowed`] guard is
    /// dropped. A sender that fills the ring meanwhile waits for room (or
    /// gets [`SendError::Full`](super::SendError::Full)); nothing
    /// overwrites a lent message.
    ///
    /// The guard reads the message through copying accessors, not a
    /// `&[u8]`: see [`Borrowed`] for why, and for
    /// [`as_slice`](Borrowed::as_slice) where every process that can open
    /// the channel is trusted.
    ///
    /// ```
    /// use ipc_lib::channel::{Receiver, Sender};
    ///
    /// let name = format!("doc-borrow-{}", std::process::id());
    /// let mut rx = Receiver::builder(&name).create()?;
    /// let mut tx = Sender::builder(&name).open()?;
    /// tx.send(b"hello, world")?;
    /// let msg = rx.borrow()?;
    /// let mut head = [0u8; 5];
    /// assert_eq!(msg.read(0, &mut head), 5); // copies out only what it needs
    /// assert_eq!(&head, b"hello");
    /// assert_eq!(msg.len(), 12);
    /// drop(msg); // the space is the senders' again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn borrow(&mut self) -> Result<Borrowed<'_>, RecvError> {
        self.take_waiting(&mut Take::Lend, None)?;
        Ok(self.lent())
    }

    /// [`borrow`](Self::borrow), giving up with [`RecvError::Timeout`]
    /// after `timeout`.
    pub fn borrow_timeout(&mut self, timeout: Duration) -> Result<Borrowed<'_>, RecvError> {
        self.take_waiting(&mut Take::Lend, Some(timeout))?;
        Ok(self.lent())
    }

    /// [`borrow`](Self::borrow) if a message is waiting, as
    /// [`try_recv`](Self::try_recv) looks: [`RecvError::Empty`] if not.
    pub fn try_borrow(&mut self) -> Result<Borrowed<'_>, RecvError> {
        self.try_take(&mut Take::Lend)?;
        Ok(self.lent())
    }

    /// The guard of the message a `Take::Lend` just left in `held`.
    pub(super) fn lent(&mut self) -> Borrowed<'_> {
        let held = self
            .held
            .expect("a receive that lends a message leaves it in `held`");
        Borrowed { rx: self, held }
    }

    /// [`attempt`](Self::attempt), lending the message (in `held`).
    #[cfg(feature = "tokio")]
    pub(crate) fn attempt_lend(&mut self, check: bool) -> Result<Option<u64>, RecvError> {
        self.attempt_take(&mut Take::Lend, check)
    }

    /// Receives one message and decodes it as `T` (the counterpart of
    /// [`Sender::send_value`](super::Sender::send_value)).
    pub fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.value(None)
    }

    /// [`recv_value`](Self::recv_value) with a timeout.
    pub fn recv_value_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvError> {
        self.value(Some(timeout))
    }

    /// [`recv_value`](Self::recv_value) that never waits.
    pub fn try_recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = self.try_recv_into(&mut buf).and_then(|id| decode(&buf, id));
        self.scratch = buf;
        r
    }

    fn value<T: DeserializeOwned>(&mut self, timeout: Option<Duration>) -> Result<T, RecvError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = self
            .recv_into(&mut buf, timeout)
            .and_then(|id| decode(&buf, id));
        self.scratch = buf;
        r
    }

    /// One look for a message, as every receive makes it: `Ok(None)` when
    /// none is there and a sender may still send one. With `check` (once
    /// a liveness slice of waiting, or every so many empty polls) it asks
    /// the kernel whether the senders live, stepping over a dead one's
    /// unfinished frame.
    #[cfg(feature = "tokio")]
    pub(crate) fn attempt(
        &mut self,
        out: &mut Vec<u8>,
        check: bool,
    ) -> Result<Option<u64>, RecvError> {
        self.attempt_take(&mut Take::Copy(out), check)
    }

    /// [`attempt`](Self::attempt) for a copy or a loan: a loan leaves the
    /// message in `held`.
    fn attempt_take(&mut self, take: &mut Take<'_>, check: bool) -> Result<Option<u64>, RecvError> {
        if let Some(id) = self.pop(take)? {
            return Ok(Some(id));
        }
        if check {
            if let Some(id) = self.pop_past_dead(take)? {
                return Ok(Some(id));
            }
        }
        if self.senders_gone(check) {
            return self.last_messages(take).map(Some);
        }
        Ok(None)
    }

    /// One step of the ring, with corruption made sticky and the receive
    /// traced: the same event for a message copied out or lent.
    fn pop(&mut self, take: &mut Take<'_>) -> Result<Option<u64>, RecvError> {
        if let Some(held) = self.held.take() {
            // A lent message whose guard was leaked (`mem::forget`): it
            // was received, and its space is given back now.
            self.consumer.release(&self.sh, &held);
        }
        if let Some((pos, reason)) = &self.failed {
            return Err(RecvError::Corrupt {
                pos: *pos,
                reason: reason.clone(),
            });
        }
        let popped = match take {
            Take::Copy(out) => match self.consumer.try_pop(&self.sh, out) {
                Ok(Some(id)) => Ok(Some((id, out.len()))),
                Ok(None) => Ok(None),
                Err(reason) => {
                    out.clear();
                    Err(reason)
                }
            },
            Take::Lend => match self.consumer.try_borrow(&self.sh, &mut self.spill) {
                Ok(Some(held)) => {
                    self.held = Some(held);
                    Ok(Some((held.id, held.len)))
                }
                Ok(None) => Ok(None),
                Err(reason) => Err(reason),
            },
        };
        match popped {
            Ok(Some((id, len))) => {
                self.empty_polls = 0;
                self.last_check = None;
                trace::emit(
                    EventKind::MsgRecv,
                    ChannelKind::IpclibChannel,
                    &self.sh.name,
                    len as u64,
                    id,
                );
                Ok(Some(id))
            }
            Ok(None) => Ok(None),
            Err(reason) => {
                let pos = self.consumer.position();
                self.failed = Some((pos, reason.clone()));
                Err(RecvError::Corrupt { pos, reason })
            }
        }
    }

    /// Multi-producer: steps over the frames of senders that died before
    /// committing them, until a message comes (or nothing more does).
    fn pop_past_dead(&mut self, take: &mut Take<'_>) -> Result<Option<u64>, RecvError> {
        while self.failed.is_none() && self.step_over_dead() {
            if let Some(id) = self.pop(take)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Steps over one frame whose sender died before committing it, if the
    /// frame at our position is one: counted and traced. Asks the kernel
    /// whether senders live, so callers ask once a slice.
    fn step_over_dead(&mut self) -> bool {
        let Some(dead) = self.consumer.skip_abandoned(&self.sh, &mut self.watches) else {
            return false;
        };
        self.skipped += 1;
        tracing::warn!(
            target: "ipc_lib",
            channel = self.sh.name,
            pid = dead.pid,
            pos = dead.pos,
            "sender died while sending; its unfinished message is skipped"
        );
        // One message lost, sender `obj` dead: -EOWNERDEAD, as for a
        // semaphore count recovered from a dead holder.
        trace::emit_op(Op {
            size: 1,
            obj: u64::from(dead.pid),
            aux: ipc_events::raw::drop_source::SENDER_DIED,
            result: -i64::from(libc::EOWNERDEAD),
            ..Op::new(EventKind::Drop, ChannelKind::IpclibChannel, &self.sh.name)
        });
        true
    }

    /// For [`crate::select`]: whether a `try_recv` would return at once
    /// with something other than `Empty` (a message, `Disconnected`, or
    /// the corruption it found). Takes nothing; with `check` (once a
    /// liveness slice) also asks whether senders died, stepping over a
    /// dead sender's unfinished frame as a receive would.
    pub(crate) fn select_ready(&mut self, check: bool) -> bool {
        if self.failed.is_some() || self.consumer.has_next(&self.sh) {
            return true;
        }
        if check {
            while self.failed.is_none() && self.step_over_dead() {
                if self.consumer.has_next(&self.sh) {
                    return true;
                }
            }
        }
        self.senders_gone(check)
    }

    /// For [`crate::select`] and async receives: the futex a sender bumps
    /// when it publishes
    /// (or leaves) and the count of sleepers it reads first; see
    /// `ring::park` for the handshake.
    pub(crate) fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        let h = self.sh.header();
        (&h.data_futex, &h.recv_waiters)
    }

    /// Whether a receive would find something now (a frame, or every
    /// sender gone): the check half of the sleep handshake
    /// (`ring::park`).
    pub(crate) fn wake_ready(&self) -> bool {
        self.consumer.ready(&self.sh) || senders_gone(&self.sh, &mut [], false)
    }

    /// Every sender has left: what they sent, frames of those that died
    /// mid-send stepped over, then `Disconnected`.
    fn last_messages(&mut self, take: &mut Take<'_>) -> Result<u64, RecvError> {
        // A message published just before the last sender left.
        if let Some(id) = self.pop(take)? {
            return Ok(id);
        }
        match self.pop_past_dead(take)? {
            Some(id) => Ok(id),
            None => Err(RecvError::Disconnected),
        }
    }

    fn senders_gone(&mut self, check: bool) -> bool {
        if check {
            self.empty_polls = 0;
        }
        senders_gone(&self.sh, &mut self.watches, check)
    }
}

/// True when at least one sender attached and none is attached now. Without
/// `check` only clean closes count (no syscall); with it, deaths too.
fn senders_gone(sh: &Shared, watches: &mut [Option<PeerWatch>], check: bool) -> bool {
    let h = sh.header();
    let mut any = false;
    for (i, s) in h.senders.iter().enumerate().take(ring::used_slots(h)) {
        let mut none = None;
        let w = watches.get_mut(i).unwrap_or(&mut none);
        match ring::observe(s, w, check) {
            PeerState::Alive => return false,
            PeerState::Gone => any = true,
            PeerState::Never => {}
        }
    }
    any
}

impl Drop for Receiver {
    fn drop(&mut self) {
        ring::release(&self.sh.header().receiver);
        // Senders asleep on a full ring learn now that nobody will drain it.
        self.sh.wake_everyone();
    }
}

/// A message lent where it lies in the ring ([`Receiver::borrow`]),
/// checked when it was lent. Dropping it gives its space back to the
/// senders; until then no honest sender writes over it, because the
/// receiver's position, which bounds where senders may write, stays
/// before it.
///
/// Why copying accessors and not a `&[u8]`: the ring is shared memory
/// that every process which can open the channel can write, at any time.
/// The protocol keeps honest senders off a lent message, but nothing
/// keeps a hostile or broken process off it, and a `&[u8]` promises the
/// compiler that its bytes do not change while it lives: code reading a
/// changing `&[u8]` may be compiled to read a byte twice and act on two
/// values (a bounds check on one, an index with the other), which is
/// undefined behaviour, not just a wrong answer. So the guard hands out
/// copies: each accessor reads each byte once, through raw pointers, into
/// memory of the caller's. A process that writes the message while it is
/// lent can make those copies differ from what was checked (as it could
/// have sent other bytes in the first place), never make this process
/// misbehave. Where every process that can open the channel (its
/// creator's user, or root: the segment is mode 0600) is trusted,
/// [`as_slice`](Self::as_slice) lends the bytes themselves.
///
/// A message whose frame wraps around the end of the ring is not one
/// slice there: it is copied out when lent (as [`Receiver::recv`] would),
/// and the guard reads the copy.
#[derive(Debug)]
pub struct Borrowed<'a> {
    rx: &'a mut Receiver,
    held: Held,
}

impl Borrowed<'_> {
    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.held.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.held.len == 0
    }

    /// The message's id, as its sender's `send` returned it and as both
    /// ends traced it.
    pub fn msg_id(&self) -> u64 {
        self.held.id
    }

    /// The message's first byte: in the ring, or in the receiver's copy.
    fn bytes(&self) -> *const u8 {
        match self.held.payload {
            Some(start) => self.rx.sh.payload_ptr(start, self.held.len),
            None => self.rx.spill.as_ptr(),
        }
    }

    /// Copies the message's bytes from `offset` on into `dst`, as many as
    /// fit and are there; returns how many (0 when `offset` is at or past
    /// the end).
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.held.len.saturating_sub(offset));
        if n > 0 {
            // SAFETY: `offset + n <= len` bytes from `bytes()`, which are
            // readable while the receiver this guard borrows lives (the
            // mapped segment, or the receiver's own copy). `dst` is the
            // caller's memory; the only way safe code has to a `&mut` into
            // the segment is a loan, a frame reserved in the ring's free
            // space, which the receiver's position (kept before this frame
            // while it is lent) bounds: the two never overlap. Any bytes
            // are valid `u8`s, and each is read once: see "Payloads cross
            // the segment in bulk" in `ring.rs`.
            unsafe { std::ptr::copy_nonoverlapping(self.bytes().add(offset), dst.as_mut_ptr(), n) };
        }
        n
    }

    /// The byte at `index`, if the message has one there.
    pub fn get(&self, index: usize) -> Option<u8> {
        let mut b = [0u8; 1];
        (self.read(index, &mut b) == 1).then_some(b[0])
    }

    /// A copy of the whole message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.held.len];
        self.read(0, &mut v);
        v
    }

    /// The message's bytes themselves, where they lie.
    ///
    /// # Safety
    ///
    /// No process may write these bytes while the slice lives. Honest ends
    /// never do (see [`Borrowed`]); the caller vouches that every process
    /// able to open the channel is one, that is, that no process running as
    /// the channel's user (or as root) breaks the protocol.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` readable bytes (see `read`), unchanging while the
        // slice lives as the caller vouches; borrowed from `self`, so it
        // cannot outlive the guard, whose drop lets senders reuse them.
        unsafe { std::slice::from_raw_parts(self.bytes(), self.held.len) }
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.rx.held.take() {
            self.rx.consumer.release(&self.rx.sh, &held);
        }
    }
}
