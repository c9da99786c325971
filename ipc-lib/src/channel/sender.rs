//! The sending end.

#[cfg(feature = "tokio")]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::Serialize;

use super::error::{OpenError, SendError};
use super::layout::{Layout, Mode};
use super::ring::{self, Claim, PeerState, Producer, Reserved, Shared, LIVENESS_SLICE};
use super::segment::{display_name, LayoutRequest, OpenHow, Segment};
use crate::spin::{Spin, SpinWait};
use crate::sys::PeerWatch;
use crate::trace::{self, Op};

/// What [`Sender::send`] does when the channel is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the receiver makes room (spinning while spinning has
    /// lately paid, then sleeping on a futex), or until it is gone.
    #[default]
    Block,
    /// Return [`SendError::Full`] at once.
    Error,
}

/// How many sends pass between two checks that the receiver's process still
/// lives when nothing else prompts one: a check is a syscall, so it is
/// amortised, and a dead receiver is still reported long before the ring
/// could fill.
const LIVENESS_EVERY: u32 = 1024;
/// The most spins on a full ring before sleeping; how many a send makes
/// is learned from how its last waits ended (see `crate::spin`).
const SPINS: u32 = 100;

/// Builds a [`Sender`]. Layout settings apply when this end creates the
/// channel and are checked against the channel when it opens one; settings
/// left out are taken from the existing channel.
#[derive(Clone, Debug)]
#[must_use]
pub struct SenderBuilder {
    name: String,
    req: LayoutRequest,
    when_full: WhenFull,
    unlink_on_drop: bool,
    wait: Duration,
}

impl SenderBuilder {
    builder_options!(Sender);

    /// What [`Sender::send`] does on a full channel. Default
    /// [`WhenFull::Block`].
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    fn finish(self, (mut seg, created): (Segment, bool)) -> Result<Sender, OpenError> {
        seg.set_unlink_on_drop(created && self.unlink_on_drop);
        let name = display_name(&self.name).to_owned();
        let sh = Shared::new(seg, name.clone());
        let h = sh.header();
        let slots = sh.layout.mode.sender_slots();
        let mut slot = None;
        let mut holder = 0;
        let tail = h.tail.load(Ordering::Acquire);
        for (i, s) in h.senders.iter().enumerate().take(slots) {
            match ring::claim(s, tail) {
                Claim::Claimed => {
                    h.slots_used.fetch_max(i as u32 + 1, Ordering::AcqRel);
                    slot = Some(i);
                    break;
                }
                Claim::Live(pid) => holder = pid,
                Claim::Evidence => {}
            }
        }
        let Some(slot) = slot else {
            return Err(match sh.layout.mode {
                Mode::Spsc => OpenError::PeerAttached {
                    name,
                    role: "sender",
                    pid: holder,
                },
                Mode::Mpsc => OpenError::NoSenderSlot { name, max: slots },
            });
        };
        let producer = match Producer::new(&sh, slot) {
            Ok(p) => p,
            Err(reason) => {
                ring::release(&h.senders[slot]);
                return Err(OpenError::CorruptHeader {
                    name,
                    reason: reason.to_string(),
                });
            }
        };
        Ok(Sender {
            sh,
            producer,
            when_full: self.when_full,
            watch: None,
            sends_since_check: 0,
            full_streak: 0,
            spin: Spin::new(SPINS),
            scratch: Vec::new(),
            pending: None,
        })
    }
}

/// The sending end of a shared-memory channel.
///
/// Every successful send traces a `msg_send` event carrying the message id
/// that the receiver's `msg_recv` event carries too.
///
/// In a [`Mode::Spsc`] channel there is one sender at a time; in a
/// [`Mode::Mpsc`] channel each sender, in this process or another, opens its
/// own `Sender`. A sender whose process dies frees its place for a new one.
/// After `fork`, a child must open its own end: the inherited one still
/// names the parent's pid.
///
/// ```
/// use ipc_lib::channel::{Receiver, Sender, WhenFull};
///
/// let name = format!("doc-sender-{}", std::process::id());
/// let mut rx = Receiver::builder(&name).capacity(4096).max_message_size(256).create()?;
/// let mut tx = Sender::builder(&name).when_full(WhenFull::Error).open()?;
/// let id = tx.send(b"hello")?;
/// assert_eq!(rx.recv()?, b"hello");
/// assert!(id >= 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Sender {
    sh: Shared,
    producer: Producer,
    when_full: WhenFull,
    watch: Option<PeerWatch>,
    sends_since_check: u32,
    /// Consecutive `Full` answers; a caller polling a full channel asks the
    /// kernel about the receiver only on every 64th.
    full_streak: u32,
    spin: Spin,
    scratch: Vec<u8>,
    /// The reservation a [`Loan`] holds, taken by its send or drop.
    pending: Option<Reserved>,
}

/// How long a send may wait for space.
#[derive(Clone, Copy)]
enum Wait {
    No,
    Until(Option<Instant>),
}

impl Sender {
    /// Starts building the sending end of channel `name` (a shared-memory
    /// object name, with or without a leading `/`).
    pub fn builder(name: impl Into<String>) -> SenderBuilder {
        SenderBuilder {
            name: name.into(),
            req: LayoutRequest::default(),
            when_full: WhenFull::default(),
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

    /// Sends one message and returns its id. On a full channel, blocks or
    /// returns [`SendError::Full`] as the builder chose
    /// ([`SenderBuilder::when_full`]).
    pub fn send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        let wait = match self.when_full {
            WhenFull::Block => Wait::Until(None),
            WhenFull::Error => Wait::No,
        };
        self.send_inner(msg, wait)
    }

    /// Sends one message if there is room now, whatever the builder chose.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        self.send_inner(msg, Wait::No)
    }

    /// Sends one message, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<u64, SendError> {
        self.send_inner(msg, Wait::Until(Instant::now().checked_add(timeout)))
    }

    /// Serializes `value` (postcard: compact, varint-encoded) and sends it
    /// as [`send`](Self::send) does. Receive it with
    /// [`Receiver::recv_value`](super::Receiver::recv_value).
    ///
    /// ```
    /// use ipc_lib::channel::{Receiver, Sender};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, PartialEq, Debug)]
    /// struct Job { id: u32, path: String }
    ///
    /// let name = format!("doc-typed-{}", std::process::id());
    /// let mut rx = Receiver::builder(&name).create()?;
    /// let mut tx = Sender::builder(&name).open()?;
    /// tx.send_value(&Job { id: 7, path: "/tmp/x".into() })?;
    /// let job: Job = rx.recv_value()?;
    /// assert_eq!(job, Job { id: 7, path: "/tmp/x".into() });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        let buf = self.encode(value)?;
        let r = self.send(&buf);
        self.scratch = buf;
        r
    }

    /// [`send_value`](Self::send_value) that never waits for room.
    pub fn try_send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        let buf = self.encode(value)?;
        let r = self.try_send(&buf);
        self.scratch = buf;
        r
    }

    pub(super) fn encode<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<Vec<u8>, SendError> {
        let mut buf = std::mem::take(&mut self.scratch);
        crate::codec::encode_into(value, &mut buf)?;
        Ok(buf)
    }

    fn send_inner(&mut self, msg: &[u8], wait: Wait) -> Result<u64, SendError> {
        self.check_len(msg.len())?;
        self.with_room(msg.len(), wait, |p, sh| {
            // Stamped before the message is published: once it is, the
            // receiver may take it and stamp its receive first, and a send
            // must never look later than its receive.
            let sent_ns = trace::now_if_enabled();
            Ok(p.try_push(sh, msg)?.map(|id| (id, sent_ns)))
        })
        .map(|(id, sent_ns)| {
            self.traced(msg.len(), id, sent_ns);
            id
        })
    }

    fn check_len(&self, len: usize) -> Result<(), SendError> {
        let max = self.sh.layout.max_message_size;
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        Ok(())
    }

    /// Traces a send: the same event whether the message was copied in or
    /// written in place.
    #[inline]
    fn traced(&self, len: usize, id: u64, sent_ns: Option<trace::Stamp>) {
        trace::emit_op(Op {
            size: len as u64,
            msg_id: id,
            at_ns: sent_ns,
            ..Op::new(
                EventKind::MsgSend,
                ChannelKind::IpclibChannel,
                &self.sh.name,
            )
        });
    }

    /// Runs `attempt` (a push or a reservation of a `len`-byte frame)
    /// until it finds room, waiting as `wait` says in between.
    #[inline(always)]
    fn with_room<R>(
        &mut self,
        len: usize,
        wait: Wait,
        mut attempt: impl FnMut(&mut Producer, &Shared) -> Result<Option<R>, super::error::Corruption>,
    ) -> Result<R, SendError> {
        if self.pending.is_some() {
            self.give_up_leaked_loan();
        }
        // A clean close is one load away; a death costs a syscall to see, so
        // it is looked for only every so often and whenever we would wait.
        self.sends_since_check += 1;
        let check = self.sends_since_check >= LIVENESS_EVERY;
        if self.receiver_gone(check) {
            return Err(SendError::Disconnected);
        }
        let mut waiting = SpinWait::default();
        // Set when the first wait starts: the fast path reads no clock.
        let mut last_check: Option<Instant> = None;
        loop {
            if let Some(r) = attempt(&mut self.producer, &self.sh).map_err(SendError::Corrupt)? {
                self.full_streak = 0;
                waiting.done(&mut self.spin);
                return Ok(r);
            }
            let deadline = match wait {
                Wait::No => {
                    // Full because the receiver died is Disconnected, not a
                    // reason to retry.
                    let check = self.full_streak.is_multiple_of(64);
                    self.full_streak = self.full_streak.wrapping_add(1);
                    return Err(if self.receiver_gone(check) {
                        SendError::Disconnected
                    } else {
                        SendError::Full
                    });
                }
                Wait::Until(deadline) => deadline,
            };
            if waiting.spin(&mut self.spin) {
                continue;
            }
            let now = Instant::now();
            let since = *last_check.get_or_insert(now);
            if now.duration_since(since) >= LIVENESS_SLICE {
                last_check = Some(now);
                if self.receiver_gone(true) {
                    return Err(SendError::Disconnected);
                }
            }
            let slice = match deadline {
                Some(d) if d <= now => return Err(SendError::Timeout),
                Some(d) => (d - now).min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let h = self.sh.header();
            ring::park(&h.space_futex, &h.send_waiters, slice, || {
                self.wake_ready(len)
            });
        }
    }

    /// A loan leaked (`mem::forget`) instead of sent or dropped: given up
    /// now, or its reservation would hold up every later frame.
    #[cold]
    fn give_up_leaked_loan(&mut self) {
        if let Some(r) = self.pending.take() {
            self.producer.abandon(&self.sh, &r);
        }
    }

    /// Reserves room for a `len`-byte message in the ring and lends it
    /// out, for the message to be written where the receiver will read it
    /// (no copy); [`Loan::send`] publishes it, dropping the [`Loan`] gives
    /// the room back unsent. On a full channel, blocks or returns
    /// [`SendError::Full`] as [`send`](Self::send) does.
    ///
    /// The message is traced exactly as [`send`](Self::send) traces it,
    /// when [`Loan::send`] publishes it. In a [`Mode::Mpsc`] channel the
    /// receiver takes the frames of every sender in the order they were
    /// reserved, so a loan held long holds up the frames other senders
    /// reserve after it; a sender that dies holding one loses that message
    /// only, as one that dies mid-[`send`](Self::send) does.
    ///
    /// ```
    /// use ipc_lib::channel::{Receiver, Sender};
    ///
    /// let name = format!("doc-loan-{}", std::process::id());
    /// let mut rx = Receiver::builder(&name).create()?;
    /// let mut tx = Sender::builder(&name).open()?;
    /// let mut loan = tx.loan(5)?;
    /// loan.copy_from_slice(b"hello"); // or serialize into it: it is a `&mut [u8]`
    /// let id = loan.send();
    /// assert_eq!(rx.recv()?, b"hello");
    /// assert!(id >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        let wait = match self.when_full {
            WhenFull::Block => Wait::Until(None),
            WhenFull::Error => Wait::No,
        };
        self.loan_inner(len, wait)
    }

    /// [`loan`](Self::loan) if there is room now, whatever the builder
    /// chose.
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        self.loan_inner(len, Wait::No)
    }

    /// [`loan`](Self::loan), waiting at most `timeout` for room.
    pub fn loan_timeout(&mut self, len: usize, timeout: Duration) -> Result<Loan<'_>, SendError> {
        self.loan_inner(len, Wait::Until(Instant::now().checked_add(timeout)))
    }

    fn loan_inner(&mut self, len: usize, wait: Wait) -> Result<Loan<'_>, SendError> {
        self.check_len(len)?;
        let r = self.with_room(len, wait, |p, sh| p.try_reserve(sh, len))?;
        if r.payload.is_none() {
            // The frame wraps around the end of the ring: the message is
            // written here and copied in at the send.
            self.scratch.clear();
            self.scratch.resize(len, 0);
        }
        self.pending = Some(r);
        Ok(Loan { tx: self, r })
    }

    /// One try to send, as an async send makes it while it waits for
    /// room: `Ok(None)` when the channel is full. With `check` (once a
    /// liveness slice of waiting) it asks the kernel whether the receiver
    /// lives.
    #[cfg(feature = "tokio")]
    pub(super) fn attempt(&mut self, msg: &[u8], check: bool) -> Result<Option<u64>, SendError> {
        if check && self.receiver_gone(true) {
            return Err(SendError::Disconnected);
        }
        match self.try_send(msg) {
            Err(SendError::Full) => Ok(None),
            other => other.map(Some),
        }
    }

    /// The futex a receiver bumps when it frees room (or leaves) and the
    /// count of sleepers it reads first; see `ring::park`.
    #[cfg(feature = "tokio")]
    pub(super) fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        let h = self.sh.header();
        (&h.space_futex, &h.send_waiters)
    }

    /// Whether a message of `len` bytes fits now, or the receiver left:
    /// the check half of the sleep handshake.
    pub(super) fn wake_ready(&self, len: usize) -> bool {
        self.producer.has_space(&self.sh, len)
            || ring::observe(&self.sh.header().receiver, &mut None, false) == PeerState::Gone
    }

    /// Whether the receiver closed its end or (with `check`) its process
    /// died. A receiver that never attached is not gone: messages wait for
    /// it.
    fn receiver_gone(&mut self, check: bool) -> bool {
        if check {
            self.sends_since_check = 0;
        }
        ring::observe(&self.sh.header().receiver, &mut self.watch, check) == PeerState::Gone
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(r) = self.pending.take() {
            self.producer.abandon(&self.sh, &r);
        }
        ring::release(&self.sh.header().senders[self.producer.slot()]);
        // A receiver asleep on an empty ring must learn now, not a slice
        // later, that it may be disconnected.
        self.sh.wake_everyone();
    }
}

/// Room for one message in the ring, lent by [`Sender::loan`]: a
/// `&mut [u8]` of the message's length (through `DerefMut`), written in
/// place. [`send`](Loan::send) publishes it; dropping the loan unsent
/// gives the room back, and the receiver never sees it.
///
/// The bytes start as whatever the ring held (earlier messages): write
/// every byte the receiver should rely on.
///
/// Zero-copy except where the frame would wrap around the end of the
/// ring (at most once per lap of the ring): there the loan lends a
/// private buffer, copied in at the send.
#[derive(Debug)]
#[must_use = "a loan dropped unsent sends nothing"]
pub struct Loan<'a> {
    tx: &'a mut Sender,
    r: Reserved,
}

impl Loan<'_> {
    /// Publishes the message, checksummed where it lies, and returns its
    /// id. Traced as [`Sender::send`] traces a message.
    pub fn send(self) -> u64 {
        let mut this = std::mem::ManuallyDrop::new(self);
        let r = this.r;
        let tx = &mut *this.tx;
        tx.pending = None;
        // Stamped before the message is published (see `send_inner`).
        let sent_ns = trace::now_if_enabled();
        let id = tx.producer.commit(&tx.sh, &r, &tx.scratch);
        tx.traced(r.len, id, sent_ns);
        id
    }
}

impl std::ops::Deref for Loan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let len = self.r.len;
        match self.r.payload {
            // SAFETY: as in `deref_mut`, shared.
            Some(start) => unsafe {
                std::slice::from_raw_parts(self.tx.sh.payload_ptr(start, len), len)
            },
            None => &self.tx.scratch[..len],
        }
    }
}

impl std::ops::DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.r.len;
        match self.r.payload {
            // SAFETY: `payload_ptr` is `len` bytes of the mapped segment,
            // which lives as long as the sender this loan borrows, and which
            // every bit pattern is a valid `u8` of. They are this sender's
            // reservation: between a reservation and its commit no honest
            // process reads or writes a frame's payload (the receiver reads
            // a frame only once its commit word says so; other senders
            // write only frames they reserved, which never overlap this
            // one while the receiver's position is behind it, and it is
            // until the commit), so this slice is the only access to those
            // bytes while it lives, as `&mut` requires. The segment's words
            // are `UnsafeCell`s (atomics), so a pointer made from a shared
            // reference may write them. What a dishonest process (which
            // can write anywhere in the segment) does to these bytes
            // meanwhile is outside the protocol; nothing of this end's own
            // state lies in them, and what is published is summed after
            // the slice is gone (see `Shared::write_in_place`).
            Some(start) => unsafe {
                std::slice::from_raw_parts_mut(self.tx.sh.payload_ptr(start, len), len)
            },
            None => &mut self.tx.scratch[..len],
        }
    }
}

impl Drop for Loan<'_> {
    /// Gives the room back unsent: nothing is published (a multi-producer
    /// reservation becomes a skip frame, which the receiver steps over),
    /// nothing traced, no message id spent.
    fn drop(&mut self) {
        self.tx.pending = None;
        self.tx.producer.abandon(&self.tx.sh, &self.r);
    }
}
