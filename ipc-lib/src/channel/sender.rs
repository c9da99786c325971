//! The sending end.

#[cfg(feature = "tokio")]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::Serialize;

use super::error::{OpenError, SendError};
use super::layout::{Layout, Mode};
use super::ring::{self, Claim, PeerState, Producer, Shared, LIVENESS_SLICE};
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
        let max = self.sh.layout.max_message_size;
        if msg.len() > max {
            return Err(SendError::TooLarge {
                len: msg.len(),
                max,
            });
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
            // Stamped before the message is published: once it is, the
            // receiver may take it and stamp its receive first, and a send
            // must never look later than its receive.
            let sent_ns = trace::now_if_enabled();
            if let Some(id) = self
                .producer
                .try_push(&self.sh, msg)
                .map_err(SendError::Corrupt)?
            {
                self.full_streak = 0;
                waiting.done(&mut self.spin);
                trace::emit_op(Op {
                    size: msg.len() as u64,
                    msg_id: id,
                    at_ns: sent_ns,
                    ..Op::new(
                        EventKind::MsgSend,
                        ChannelKind::IpclibChannel,
                        &self.sh.name,
                    )
                });
                return Ok(id);
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
                self.wake_ready(msg.len())
            });
        }
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
        ring::release(&self.sh.header().senders[self.producer.slot()]);
        // A receiver asleep on an empty ring must learn now, not a slice
        // later, that it may be disconnected.
        self.sh.wake_everyone();
    }
}
