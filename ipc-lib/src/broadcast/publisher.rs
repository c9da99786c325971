//! The publishing end.

use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use ipc_events::{ChannelKind, EventKind};
use serde::Serialize;

use super::layout::{done, writing, Layout, Segment, MAX_CAPACITY};
use super::PublishError;
use crate::channel::layout::{checksum, len_word, store_words};
use crate::channel::ring::{self, Claim};
use crate::channel::OpenError;
use crate::shm::{self, OpenHow};
use crate::slots::LayoutRequest;
use crate::trace::{self, Op};

/// Builds a [`Publisher`]. Layout settings apply when it creates the
/// broadcast and are checked against an existing one it opens.
#[derive(Clone, Debug)]
#[must_use]
pub struct PublisherBuilder {
    name: String,
    req: LayoutRequest,
    unlink_on_drop: bool,
    wait: Duration,
}

impl PublisherBuilder {
    shm::open_methods!(Publisher, "broadcast");

    /// How many of the newest messages the broadcast holds (slots): a
    /// subscriber further behind than this lags. Default 256.
    pub fn capacity(mut self, messages: usize) -> Self {
        self.req.capacity = Some(messages);
        self
    }

    /// The largest message, in bytes. Default 4 KiB. Every slot is this
    /// big, so the segment is about `capacity * max_message_size` bytes.
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

    fn finish(self, (mut seg, created): (Segment, bool)) -> Result<Publisher, OpenError> {
        seg.set_unlink_on_drop(created && self.unlink_on_drop);
        let name = shm::display_name(&self.name).to_owned();
        let h = seg.header();
        match ring::claim(&h.publisher, 0) {
            Claim::Claimed => {}
            Claim::Live(pid) => {
                return Err(OpenError::PeerAttached {
                    name,
                    role: "publisher",
                    pid,
                })
            }
            Claim::Evidence => {
                return Err(OpenError::CorruptHeader {
                    name,
                    reason: "publisher slot holds a sender's claim".into(),
                })
            }
        }
        // A publisher before us (that left, or died) numbered this many;
        // we carry on. Checked so that `seq + capacity` and stamps never
        // overflow.
        let seq = h.write_seq.load(Ordering::Acquire);
        if seq > u64::MAX / 4 - MAX_CAPACITY as u64 {
            ring::release(&h.publisher);
            return Err(OpenError::CorruptHeader {
                name,
                reason: format!("message count {seq} is impossible"),
            });
        }
        Ok(Publisher {
            seg,
            name,
            seq,
            scratch: Vec::new(),
        })
    }
}

/// The publishing end of a broadcast: one per broadcast at a time.
///
/// A publish never blocks and never fails for want of room: it writes
/// over the oldest message, which subscribers that had not read it learn
/// as [`RecvError::Lagged`](super::RecvError::Lagged).
#[derive(Debug)]
pub struct Publisher {
    seg: Segment,
    name: String,
    /// The next message's sequence number; this end alone moves it.
    seq: u64,
    scratch: Vec<u8>,
}

impl Publisher {
    /// Starts building the publisher of broadcast `name` (a shared-memory
    /// object name, with or without a leading `/`).
    pub fn builder(name: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            name: name.into(),
            req: LayoutRequest::default(),
            unlink_on_drop: true,
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

    /// Messages published so far (by this publisher and any before it).
    pub fn published(&self) -> u64 {
        self.seq
    }

    /// Publishes one message to every subscriber and returns its id (its
    /// sequence number plus one).
    pub fn publish(&mut self, msg: &[u8]) -> Result<u64, PublishError> {
        let max = self.seg.max_message_size;
        if msg.len() > max {
            return Err(PublishError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let seq = self.seq;
        let id = seq + 1;
        // Stamped before the message is visible: a subscriber may trace
        // its receive before we trace anything after the publication.
        let sent_ns = trace::now_if_enabled();
        let slot = self.seg.slot(seq);
        // The seqlock writer: odd stamp, then (fence) the frame, then the
        // even stamp. A subscriber that read any of the frame's new words
        // sees the odd stamp or a later one on its second look.
        slot[0].store(writing(seq), Ordering::Relaxed);
        fence(Ordering::Release);
        let n = msg.len().div_ceil(8);
        // The length was checked against the maximum, which fits u32.
        let lw = len_word(msg.len() as u32);
        // Summed before the stores into the slot (see `ring::write_frame`).
        let sum = checksum(lw, id, msg);
        store_words(msg, &slot[4..4 + n]);
        slot[1].store(lw, Ordering::Relaxed);
        slot[2].store(id, Ordering::Relaxed);
        slot[3].store(sum, Ordering::Relaxed);
        slot[0].store(done(seq), Ordering::Release);
        self.seq = seq + 1;
        let h = self.seg.header();
        // SeqCst: the other half of the sleep handshake (`ring::park`).
        h.write_seq.store(self.seq, Ordering::SeqCst);
        if h.recv_waiters.load(Ordering::SeqCst) != 0 {
            wake_all(self.seg.header());
        }
        trace::emit_op(Op {
            size: msg.len() as u64,
            msg_id: id,
            at_ns: sent_ns,
            ..Op::new(EventKind::MsgSend, ChannelKind::IpclibBroadcast, &self.name)
        });
        Ok(id)
    }

    /// Serializes `value` (postcard, as every ipc-lib end) and publishes
    /// it. Receive it with
    /// [`Subscriber::recv_value`](super::Subscriber::recv_value).
    pub fn publish_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, PublishError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = match crate::codec::encode_into(value, &mut buf) {
            Ok(()) => self.publish(&buf),
            Err(crate::channel::SendError::Encode(e)) => Err(PublishError::Encode(e)),
            Err(e) => unreachable!("encoding fails only to encode: {e}"),
        };
        self.scratch = buf;
        r
    }
}

pub(super) fn wake_all(h: &super::layout::Header) {
    h.data_futex.fetch_add(1, Ordering::SeqCst);
    crate::sys::futex_wake_all(&h.data_futex);
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let h = self.seg.header();
        ring::release(&h.publisher);
        // Sleeping subscribers learn now, not a slice later.
        wake_all(h);
    }
}
