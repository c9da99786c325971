//! Pairing events that belong together: a signal's generation with its
//! delivery, and a message's send with the receive that took it.
//!
//! Correlators see events in the order their source committed them (the
//! kernel ring's order for the eBPF probes), keep only what is still
//! unpaired, and name what they paired with an opaque token the caller
//! chose (the writer uses the stored row's id), so they do no I/O and are
//! tested on plain event sequences.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::fast_map::FastMap;

/// `enum trace_signal_result` from `<trace/events/signal.h>`: what the
/// kernel did with a generated signal, in signal_generate's `result`.
pub mod signal_result {
    /// Queued (the kernel's name, `TRACE_SIGNAL_DELIVERED`, means "will be").
    pub const QUEUED: i64 = 0;
    /// The target ignores it: dropped at once.
    pub const IGNORED: i64 = 1;
    /// A standard signal already pending: merged into that one.
    pub const ALREADY_PENDING: i64 = 2;
    /// A real-time signal over the queue limit: dropped.
    pub const OVERFLOW_FAIL: i64 = 3;
    /// Queued without its siginfo (no memory for it).
    pub const LOSE_INFO: i64 = 4;
}

/// Whether a generated signal with this `result` will get a delivery of
/// its own. Ignored, merged and overflowed signals never do, so they are
/// not waited for: a later delivery belongs to an earlier generation.
pub fn awaits_delivery(result: i64) -> bool {
    matches!(result, signal_result::QUEUED | signal_result::LOSE_INFO)
}

/// `SIGKILL`: what the kernel delivers in place of a fatal signal.
pub const SIGKILL: u32 = 9;

/// Whether signal `signo`'s default action ends the process (`man 7
/// signal`: Term and Core, and every real-time signal).
pub fn kills_by_default(signo: u32) -> bool {
    matches!(signo, 1..=8 | 10..=16 | 24..=27 | 29..=31 | 32..=64)
}

/// Pairs signal generations with deliveries, per target process and signal
/// number, first in first out.
///
/// Exact for what the kernel reports: a generation that the kernel says it
/// merged or dropped is never paired, and a queued one is paired with the
/// next delivery of that signal in that process. A signal queued and never
/// delivered (blocked until the process exited) stays unpaired.
///
/// One inference: a signal whose default action kills, sent to a process
/// that keeps that default, is turned by the kernel into a kill of the
/// whole process at once, and delivered as SIGKILL. So a SIGKILL delivery
/// with no SIGKILL waiting delivers the oldest waiting signal that kills by
/// default. (The SIGKILL each other thread of an exiting process receives
/// finds nothing left to deliver, unless such a signal was blocked and
/// pending at that moment, which it then wrongly claims.) Other deliveries
/// with no waiting generation (sent before tracking began) pair with
/// nothing.
#[derive(Debug)]
pub struct SignalPairer<T> {
    /// Per (target pid, signo), the waiting generations with their arrival
    /// number.
    queued: HashMap<(u32, u32), VecDeque<(u64, T)>>,
    next_seq: u64,
}

impl<T> Default for SignalPairer<T> {
    fn default() -> Self {
        SignalPairer {
            queued: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> SignalPairer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Signal `signo` was generated for process `target`; `token` names it.
    /// Returns whether it now waits for a delivery.
    pub fn generated(&mut self, target: u32, signo: u32, result: i64, token: T) -> bool {
        if !awaits_delivery(result) {
            return false;
        }
        self.next_seq += 1;
        self.queued
            .entry((target, signo))
            .or_default()
            .push_back((self.next_seq, token));
        true
    }

    /// Signal `signo` was delivered to a thread of process `pid`: the
    /// generation it delivers, if one is waiting.
    pub fn delivered(&mut self, pid: u32, signo: u32) -> Option<T> {
        if let Some(token) = self.pop(pid, signo) {
            return Some(token);
        }
        if signo != SIGKILL {
            return None;
        }
        let oldest_fatal = self
            .queued
            .iter()
            .filter(|((target, s), _)| *target == pid && kills_by_default(*s))
            .filter_map(|(&(_, s), q)| q.front().map(|(seq, _)| (*seq, s)))
            .min()?;
        self.pop(pid, oldest_fatal.1)
    }

    fn pop(&mut self, pid: u32, signo: u32) -> Option<T> {
        let queue = self.queued.get_mut(&(pid, signo))?;
        let token = queue.pop_front().map(|(_, t)| t);
        if queue.is_empty() {
            self.queued.remove(&(pid, signo));
        }
        token
    }

    /// Process `pid` exited: what it had pending is never delivered, and
    /// its pid may be reused.
    pub fn exited(&mut self, pid: u32) {
        self.queued.retain(|&(target, _), _| target != pid);
    }

    /// Generations waiting for a delivery.
    pub fn waiting(&self) -> usize {
        self.queued.values().map(VecDeque::len).sum()
    }
}

/// The most framed messages [`IdPairer`] holds unpaired before it forgets
/// them (a sender whose receiver is not traced never pairs).
pub const MAX_UNPAIRED_IDS: usize = 1 << 20;

/// Pairs messages that carry an id in their frame (ipc-lib): exact, and in
/// whatever order the two sides arrive. They do arrive out of order: the
/// sender's and the receiver's rings are drained independently.
#[derive(Debug)]
pub struct IdPairer<K> {
    sends: HashMap<(K, u64), Side>,
    recvs: HashMap<(K, u64), Side>,
}

impl<K> Default for IdPairer<K> {
    fn default() -> Self {
        IdPairer {
            sends: HashMap::new(),
            recvs: HashMap::new(),
        }
    }
}

/// A send or receive whose other side will not be seen (its end is not
/// traced, or events were lost): a message with one end known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpaired<K> {
    pub channel: K,
    pub side: Side,
    /// Which end `side` is.
    pub sent: bool,
    pub msg_id: Option<u64>,
}

impl<K> Unpaired<K> {
    /// A side of a message whose frame carried id `id` (ipc-lib's).
    fn framed(channel: K, id: u64, side: Side, sent: bool) -> Self {
        Unpaired {
            channel,
            side,
            sent,
            msg_id: Some(id),
        }
    }
}

impl<K: Copy + Eq + Hash> IdPairer<K> {
    /// A framed send; what it pairs goes to `out`, and sides given up on
    /// to keep memory bounded to `unpaired`.
    pub fn send(
        &mut self,
        key: K,
        id: u64,
        side: Side,
        out: &mut Vec<Paired<K>>,
        unpaired: &mut Vec<Unpaired<K>>,
    ) {
        match self.recvs.remove(&(key, id)) {
            Some(recv) => out.push(Paired {
                channel: key,
                send: side,
                recv,
                msg_id: Some(id),
            }),
            None => Self::wait(&mut self.sends, (key, id), side, true, unpaired),
        }
    }

    pub fn recv(
        &mut self,
        key: K,
        id: u64,
        side: Side,
        out: &mut Vec<Paired<K>>,
        unpaired: &mut Vec<Unpaired<K>>,
    ) {
        match self.sends.remove(&(key, id)) {
            Some(send) => out.push(Paired {
                channel: key,
                send,
                recv: side,
                msg_id: Some(id),
            }),
            None => Self::wait(&mut self.recvs, (key, id), side, false, unpaired),
        }
    }

    fn wait(
        map: &mut HashMap<(K, u64), Side>,
        at: (K, u64),
        side: Side,
        sent: bool,
        unpaired: &mut Vec<Unpaired<K>>,
    ) {
        if map.len() >= MAX_UNPAIRED_IDS {
            // No order to evict by; starting over keeps memory bounded,
            // and what waited becomes messages with one end known.
            unpaired.extend(
                map.drain()
                    .map(|((channel, id), side)| Unpaired::framed(channel, id, side, sent)),
            );
        }
        map.insert(at, side);
    }

    /// The recording ended: every side still waiting is a message with
    /// one end known.
    pub fn finish(&mut self, unpaired: &mut Vec<Unpaired<K>>) {
        for (map, sent) in [(&mut self.sends, true), (&mut self.recvs, false)] {
            unpaired.extend(
                map.drain()
                    .map(|((channel, id), side)| Unpaired::framed(channel, id, side, sent)),
            );
        }
    }

    /// Sides waiting for their other half.
    pub fn waiting(&self) -> usize {
        self.sends.len() + self.recvs.len()
    }
}

/// Pairs a broadcast's messages (ipc-lib's `broadcast`): each publish
/// with every subscriber's receive of its id, in whatever order they
/// arrive. A publish is kept for the receives still to come, the newest
/// [`MAX_UNPAIRED_IDS`] of them (a subscriber cannot receive a message
/// older than the broadcast's capacity); a receive that comes before its
/// publish waits for it.
#[derive(Debug)]
pub struct FanOutPairer<K> {
    /// Publishes, with whether any receive took them yet.
    sends: HashMap<(K, u64), (Side, bool)>,
    /// The publishes' keys, oldest first: which one to forget first.
    order: VecDeque<(K, u64)>,
    /// Receives that came before their publish.
    recvs: HashMap<(K, u64), Vec<Side>>,
}

impl<K> Default for FanOutPairer<K> {
    fn default() -> Self {
        FanOutPairer {
            sends: HashMap::new(),
            order: VecDeque::new(),
            recvs: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> FanOutPairer<K> {
    /// A publish: paired with the receives that waited for it, then kept
    /// for those to come.
    pub fn send(
        &mut self,
        key: K,
        id: u64,
        side: Side,
        out: &mut Vec<Paired<K>>,
        unpaired: &mut Vec<Unpaired<K>>,
    ) {
        let waited = self.recvs.remove(&(key, id)).unwrap_or_default();
        out.extend(waited.iter().map(|&recv| Paired {
            channel: key,
            send: side,
            recv,
            msg_id: Some(id),
        }));
        if self.order.len() >= MAX_UNPAIRED_IDS {
            if let Some(oldest) = self.order.pop_front() {
                if let Some((send, false)) = self.sends.remove(&oldest) {
                    unpaired.push(Unpaired::framed(oldest.0, oldest.1, send, true));
                }
            }
        }
        if self
            .sends
            .insert((key, id), (side, !waited.is_empty()))
            .is_none()
        {
            self.order.push_back((key, id));
        }
    }

    /// A subscriber's receive: paired with its publish if that came.
    pub fn recv(
        &mut self,
        key: K,
        id: u64,
        side: Side,
        out: &mut Vec<Paired<K>>,
        unpaired: &mut Vec<Unpaired<K>>,
    ) {
        if let Some((send, paired)) = self.sends.get_mut(&(key, id)) {
            *paired = true;
            out.push(Paired {
                channel: key,
                send: *send,
                recv: side,
                msg_id: Some(id),
            });
            return;
        }
        if self.recvs.len() >= MAX_UNPAIRED_IDS {
            // As IdPairer does: starting over keeps memory bounded.
            self.give_up_receives(unpaired);
        }
        self.recvs.entry((key, id)).or_default().push(side);
    }

    /// The recording ended: a publish nobody received, and a receive
    /// whose publish never came, are messages with one end known.
    pub fn finish(&mut self, unpaired: &mut Vec<Unpaired<K>>) {
        self.order.clear();
        unpaired.extend(
            self.sends
                .drain()
                .filter(|(_, (_, paired))| !paired)
                .map(|((channel, id), (side, _))| Unpaired::framed(channel, id, side, true)),
        );
        self.give_up_receives(unpaired);
    }

    /// Every receive still waiting for its publish becomes a message with
    /// one end known.
    fn give_up_receives(&mut self, unpaired: &mut Vec<Unpaired<K>>) {
        unpaired.extend(self.recvs.drain().flat_map(|((channel, id), sides)| {
            sides
                .into_iter()
                .map(move |side| Unpaired::framed(channel, id, side, false))
        }));
    }
}

/// How a channel carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A byte stream (pipes, FIFOs, stream sockets): a receive may take
    /// part of a send, or several; a send is received by the receive that
    /// takes its last byte.
    Bytes,
    /// Records (datagram and seqpacket sockets): each receive takes one
    /// send, in order.
    Records,
}

/// One side of a message, as the pairer needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub size: u64,
}

/// A send paired with the receive that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paired<K> {
    /// The channel, as the caller keyed it.
    pub channel: K,
    pub send: Side,
    /// The receive that completed the message; its `size` is what that
    /// receive returned, which may cover other messages too.
    pub recv: Side,
    /// The id from the message's frame, when it had one (ipc-lib).
    pub msg_id: Option<u64>,
}

/// The most unpaired operations one direction of a channel keeps. A
/// channel whose other end is not traced (a traced program writing to a
/// pager) never pairs; past this, its oldest sends are handed out as
/// messages with one end known.
pub const MAX_UNPAIRED: usize = 65_536;

/// Pairs sends with receives per channel direction, by byte position for
/// byte streams and in order for records.
///
/// Exact when every send and receive on a direction is seen, one process
/// writes it at a time, and nobody peeks (`MSG_PEEK` reads bytes that are
/// read again). Events may come in either order: a reader's return can
/// reach the ring before its writer's, so whichever side comes first waits
/// for the other.
///
/// After events were lost, positions no longer line up and cannot be
/// found again, so rather than pair wrongly, [`MessagePairer::lost`] gives
/// up on every direction seen so far (directions first seen later pair as
/// usual). A direction also gives up by itself when a pairing would
/// receive a message before it was sent, which only a loss can cause.
#[derive(Debug)]
pub struct MessagePairer<K> {
    directions: FastMap<K, Direction>,
    /// Sends and receives that will not pair, since the last
    /// [`MessagePairer::take_unpaired`].
    unpaired: Vec<Unpaired<K>>,
}

/// What became of a direction when it gave up pairing.
#[derive(Debug, Default)]
enum State {
    #[default]
    Pairing,
    /// Positions are unknown after a loss: nothing more is paired.
    GaveUp,
}

/// One direction of one channel: the bytes (or records) sent and received
/// so far, and the operations not yet paired, each with the position just
/// past its last byte.
#[derive(Debug, Default)]
struct Direction {
    state: State,
    sent: u64,
    received: u64,
    sends: VecDeque<(u64, Side)>,
    recvs: VecDeque<(u64, Side)>,
}

impl<K> Default for MessagePairer<K> {
    fn default() -> Self {
        MessagePairer {
            directions: FastMap::default(),
            unpaired: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> MessagePairer<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A send of `side.size` bytes into direction `key`; appends what it
    /// completes to `out`.
    pub fn send(&mut self, key: K, framing: Framing, side: Side, out: &mut Vec<Paired<K>>) {
        let d = self.directions.entry(key).or_default();
        d.sent += advance(framing, side.size);
        d.sends.push_back((d.sent, side));
        if matches!(d.state, State::Pairing) {
            d.trim(key, &mut self.unpaired);
            d.drain(key, out);
        }
        // A loss found now or before: nothing here pairs any more.
        if matches!(d.state, State::GaveUp) {
            d.release(key, &mut self.unpaired);
        }
    }

    /// A receive of `side.size` bytes from direction `key`.
    pub fn recv(&mut self, key: K, framing: Framing, side: Side, out: &mut Vec<Paired<K>>) {
        let d = self.directions.entry(key).or_default();
        d.received += advance(framing, side.size);
        d.recvs.push_back((d.received, side));
        if matches!(d.state, State::Pairing) {
            d.trim(key, &mut self.unpaired);
            d.drain(key, out);
        }
        // A loss found now or before: nothing here pairs any more.
        if matches!(d.state, State::GaveUp) {
            d.release(key, &mut self.unpaired);
        }
    }

    /// Events were lost: every direction seen so far gives up.
    pub fn lost(&mut self) {
        for (&key, d) in &mut self.directions {
            d.give_up(key, &mut self.unpaired);
        }
    }

    /// The recording ended: what still waits will not pair.
    pub fn finish(&mut self) {
        for (&key, d) in &mut self.directions {
            d.release(key, &mut self.unpaired);
        }
    }

    /// Sends and receives that will not pair, as messages with one end
    /// known: every send, and the receives of a direction whose sender
    /// was never seen (a receive's bytes are a send's too when both ends
    /// are traced, so they are counted once, as the send).
    pub fn take_unpaired(&mut self) -> Vec<Unpaired<K>> {
        std::mem::take(&mut self.unpaired)
    }

    /// Directions that gave up pairing.
    pub fn given_up(&self) -> usize {
        self.directions
            .values()
            .filter(|d| matches!(d.state, State::GaveUp))
            .count()
    }

    /// Operations waiting for their other side.
    pub fn waiting(&self) -> usize {
        self.directions
            .values()
            .map(|d| d.sends.len() + d.recvs.len())
            .sum()
    }
}

/// How far an operation moves its side's position: bytes, or one record.
fn advance(framing: Framing, size: u64) -> u64 {
    match framing {
        Framing::Bytes => size,
        Framing::Records => 1,
    }
}

impl Direction {
    /// Pairs while both sides have operations: the oldest send is complete
    /// once a receive reaches its last byte, and that receive took it; a
    /// receive that ends before the oldest send does took only part of it.
    fn drain<K: Copy>(&mut self, key: K, out: &mut Vec<Paired<K>>) {
        while let (Some(&(send_end, send)), Some(&(recv_end, recv))) =
            (self.sends.front(), self.recvs.front())
        {
            if send_end <= recv_end {
                if recv.ts_ns < send.ts_ns {
                    // Received before it was sent: the positions are off.
                    self.state = State::GaveUp;
                    return;
                }
                out.push(Paired {
                    channel: key,
                    send,
                    recv,
                    msg_id: None,
                });
                self.sends.pop_front();
                if send_end == recv_end {
                    self.recvs.pop_front();
                }
            } else {
                self.recvs.pop_front();
            }
        }
    }

    fn give_up<K: Copy>(&mut self, key: K, unpaired: &mut Vec<Unpaired<K>>) {
        self.state = State::GaveUp;
        self.release(key, unpaired);
    }

    /// Hands out everything waiting as unpaired (see
    /// [`MessagePairer::take_unpaired`] for which receives count).
    fn release<K: Copy>(&mut self, key: K, unpaired: &mut Vec<Unpaired<K>>) {
        let sender_seen = self.sent > 0;
        let one = |sent| {
            move |(_, side)| Unpaired {
                channel: key,
                side,
                sent,
                msg_id: None,
            }
        };
        unpaired.extend(self.sends.drain(..).map(one(true)));
        let recvs = self.recvs.drain(..);
        if sender_seen {
            drop(recvs);
        } else {
            unpaired.extend(recvs.map(one(false)));
        }
    }

    /// Keeps each queue within [`MAX_UNPAIRED`]: the oldest beyond it will
    /// not pair (a direction whose other end is not traced).
    fn trim<K: Copy>(&mut self, key: K, unpaired: &mut Vec<Unpaired<K>>) {
        while self.sends.len() > MAX_UNPAIRED {
            if let Some((_, side)) = self.sends.pop_front() {
                unpaired.push(Unpaired {
                    channel: key,
                    side,
                    sent: true,
                    msg_id: None,
                });
            }
        }
        let sender_seen = self.sent > 0;
        while self.recvs.len() > MAX_UNPAIRED {
            if let Some((_, side)) = self.recvs.pop_front() {
                if !sender_seen {
                    unpaired.push(Unpaired {
                        channel: key,
                        side,
                        sent: false,
                        msg_id: None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signal_result::*;
    use super::*;

    const SIGUSR1: u32 = 10;
    const SIGUSR2: u32 = 12;

    #[test]
    fn a_publish_pairs_with_every_receive_of_it_whichever_comes_first() {
        let side = |ts_ns| Side {
            pid: 1,
            tid: 1,
            ts_ns,
            size: 8,
        };
        let mut p = FanOutPairer::default();
        let (mut out, mut unpaired) = (Vec::new(), Vec::new());
        // Subscriber rings drain independently: a receive before its
        // publish waits for it.
        p.recv(7, 1, side(12), &mut out, &mut unpaired);
        p.send(7, 1, side(10), &mut out, &mut unpaired);
        p.recv(7, 1, side(13), &mut out, &mut unpaired);
        p.recv(7, 1, side(14), &mut out, &mut unpaired);
        // Nobody received 2; nobody published 3.
        p.send(7, 2, side(20), &mut out, &mut unpaired);
        p.recv(7, 3, side(31), &mut out, &mut unpaired);
        let received: Vec<u64> = out.iter().map(|m| m.recv.ts_ns).collect();
        assert_eq!(received, [12, 13, 14]);
        assert!(out
            .iter()
            .all(|m| m.send.ts_ns == 10 && m.msg_id == Some(1)));
        assert!(unpaired.is_empty());
        p.finish(&mut unpaired);
        unpaired.sort_by_key(|u| u.msg_id);
        let ends: Vec<(Option<u64>, bool)> = unpaired.iter().map(|u| (u.msg_id, u.sent)).collect();
        assert_eq!(ends, [(Some(2), true), (Some(3), false)]);
    }

    #[test]
    fn pairs_each_delivery_with_the_oldest_waiting_generation() {
        let mut p = SignalPairer::new();
        assert!(p.generated(7, SIGUSR1, QUEUED, "a"));
        assert!(p.generated(7, SIGUSR2, QUEUED, "b"));
        assert!(p.generated(7, SIGUSR1, LOSE_INFO, "c"));
        assert_eq!(p.delivered(7, SIGUSR1), Some("a"));
        assert_eq!(p.delivered(7, SIGUSR2), Some("b"));
        assert_eq!(p.delivered(7, SIGUSR1), Some("c"));
        assert_eq!(p.delivered(7, SIGUSR1), None);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn merged_ignored_and_overflowed_signals_are_never_delivered() {
        let mut p = SignalPairer::new();
        assert!(p.generated(7, SIGUSR1, QUEUED, 1));
        // Two more while the first is pending: the kernel merges them.
        assert!(!p.generated(7, SIGUSR1, ALREADY_PENDING, 2));
        assert!(!p.generated(7, SIGUSR1, ALREADY_PENDING, 3));
        assert!(!p.generated(7, SIGUSR2, IGNORED, 4));
        assert!(!p.generated(7, 40, OVERFLOW_FAIL, 5));
        // The one delivery is the first generation's.
        assert_eq!(p.delivered(7, SIGUSR1), Some(1));
        assert_eq!(p.delivered(7, SIGUSR1), None);
        assert_eq!(p.delivered(7, SIGUSR2), None);
    }

    #[test]
    fn targets_are_kept_apart_and_forgotten_when_they_exit() {
        let mut p = SignalPairer::new();
        p.generated(7, SIGUSR1, QUEUED, 1);
        p.generated(8, SIGUSR1, QUEUED, 2);
        assert_eq!(p.delivered(8, SIGUSR1), Some(2));
        // 7 exits with its signal still blocked; a new process reusing the
        // pid does not inherit it.
        p.exited(7);
        assert_eq!(p.delivered(7, SIGUSR1), None);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn a_delivery_with_no_generation_pairs_with_nothing() {
        let mut p = SignalPairer::<u32>::new();
        assert_eq!(p.delivered(7, SIGKILL), None);
        assert_eq!(p.delivered(7, SIGUSR1), None);
    }

    fn side(pid: u32, ts_ns: u64, size: u64) -> Side {
        Side {
            pid,
            tid: pid,
            ts_ns,
            size,
        }
    }

    /// (sender pid, receiver pid, send ts, recv ts) of each pair.
    fn summary(out: &[Paired<u8>]) -> Vec<(u32, u32, u64, u64)> {
        out.iter()
            .map(|p| (p.send.pid, p.recv.pid, p.send.ts_ns, p.recv.ts_ns))
            .collect()
    }

    #[test]
    fn a_byte_stream_send_is_received_by_the_read_that_takes_its_last_byte() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        // Writes of 100 and 50 bytes; reads of 60, 60 and 30.
        p.send(0, Framing::Bytes, side(1, 10, 100), &mut out);
        p.send(0, Framing::Bytes, side(1, 20, 50), &mut out);
        p.recv(0, Framing::Bytes, side(2, 30, 60), &mut out);
        assert!(out.is_empty(), "60 of the first 100 bytes read");
        p.recv(0, Framing::Bytes, side(2, 40, 60), &mut out);
        assert_eq!(summary(&out), [(1, 2, 10, 40)]);
        p.recv(0, Framing::Bytes, side(3, 50, 30), &mut out);
        assert_eq!(summary(&out), [(1, 2, 10, 40), (1, 3, 20, 50)]);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn one_read_can_take_several_writes_and_may_be_seen_first() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        // The reader's return reached the ring before the writers'.
        p.recv(0, Framing::Bytes, side(2, 30, 15), &mut out);
        p.send(0, Framing::Bytes, side(1, 10, 5), &mut out);
        p.send(0, Framing::Bytes, side(1, 11, 10), &mut out);
        assert_eq!(summary(&out), [(1, 2, 10, 30), (1, 2, 11, 30)]);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn records_pair_in_order_whatever_their_sizes() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        p.send(0, Framing::Records, side(1, 10, 100), &mut out);
        p.send(0, Framing::Records, side(1, 11, 7), &mut out);
        // A receive with a short buffer truncates the record; still one.
        p.recv(0, Framing::Records, side(2, 20, 50), &mut out);
        p.recv(0, Framing::Records, side(2, 21, 7), &mut out);
        assert_eq!(summary(&out), [(1, 2, 10, 20), (1, 2, 11, 21)]);
        assert_eq!(out[0].send.size, 100);
    }

    #[test]
    fn directions_are_independent() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        p.send(0, Framing::Bytes, side(1, 10, 4), &mut out);
        p.send(1, Framing::Bytes, side(2, 11, 4), &mut out);
        p.recv(1, Framing::Bytes, side(1, 12, 4), &mut out);
        assert_eq!(summary(&out), [(2, 1, 11, 12)]);
        assert_eq!(p.waiting(), 1);
    }

    #[test]
    fn a_direction_nobody_reads_stays_bounded() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        for i in 0..MAX_UNPAIRED as u64 + 10 {
            p.send(0, Framing::Bytes, side(1, i, 1), &mut out);
        }
        assert_eq!(p.waiting(), MAX_UNPAIRED);
        let unpaired = p.take_unpaired();
        assert_eq!(unpaired.len(), 10);
        assert!(unpaired.iter().all(|u| u.sent && u.side.ts_ns < 10));
        p.finish();
        assert_eq!(p.take_unpaired().len(), MAX_UNPAIRED);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn receives_of_an_untraced_sender_are_messages_with_one_end_and_a_traced_ones_are_not() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        // Direction 0: only the reader is traced. Direction 1: both, but
        // the last write's reader is not done when the recording ends.
        p.recv(0, Framing::Bytes, side(2, 10, 7), &mut out);
        p.send(1, Framing::Bytes, side(1, 11, 4), &mut out);
        p.send(1, Framing::Bytes, side(1, 12, 4), &mut out);
        p.recv(1, Framing::Bytes, side(2, 13, 6), &mut out);
        p.finish();
        let mut unpaired: Vec<_> = p
            .take_unpaired()
            .into_iter()
            .map(|u| (u.channel, u.sent, u.side.ts_ns, u.side.size))
            .collect();
        unpaired.sort();
        // Direction 1's read of 6 bytes took the first write and part of
        // the second: the second counts once, as its send.
        assert_eq!(unpaired, [(0, false, 10, 7), (1, true, 12, 4)]);
        assert_eq!(summary(&out), [(1, 2, 11, 13)]);
    }

    #[test]
    fn after_a_loss_known_directions_stop_pairing_and_new_ones_do_not() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        p.send(0, Framing::Bytes, side(1, 10, 4), &mut out);
        p.lost();
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.given_up(), 1);
        p.recv(0, Framing::Bytes, side(2, 20, 4), &mut out);
        p.send(1, Framing::Records, side(1, 30, 4), &mut out);
        p.recv(1, Framing::Records, side(2, 31, 4), &mut out);
        assert_eq!(summary(&out), [(1, 2, 30, 31)]);
        // The send before the loss is a message whose receiver is unknown;
        // the receive after it took bytes a traced sender sent.
        let unpaired: Vec<_> = p
            .take_unpaired()
            .iter()
            .map(|u| (u.sent, u.side.ts_ns))
            .collect();
        assert_eq!(unpaired, [(true, 10)]);
    }

    #[test]
    fn a_receive_before_its_send_means_positions_are_off() {
        let mut p = MessagePairer::new();
        let mut out = Vec::new();
        // The send of the first record was lost: the receive at 20 took
        // it, and would otherwise be paired with the send at 30.
        p.recv(0, Framing::Records, side(2, 20, 4), &mut out);
        p.send(0, Framing::Records, side(1, 30, 4), &mut out);
        assert!(out.is_empty());
        assert_eq!(p.given_up(), 1);
        p.send(0, Framing::Records, side(1, 40, 4), &mut out);
        p.recv(0, Framing::Records, side(2, 41, 4), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn framed_messages_pair_by_id_whichever_side_comes_first() {
        let mut p = IdPairer::default();
        let (mut out, mut un) = (Vec::new(), Vec::new());
        p.recv(1u8, 7, side(20, 200, 8), &mut out, &mut un);
        p.send(1u8, 8, side(10, 150, 8), &mut out, &mut un);
        assert!(out.is_empty());
        p.send(1u8, 7, side(10, 100, 8), &mut out, &mut un);
        p.send(2u8, 8, side(11, 160, 8), &mut out, &mut un); // another channel's id 8
        p.recv(1u8, 8, side(20, 300, 8), &mut out, &mut un);
        let got: Vec<_> = out
            .iter()
            .map(|m| (m.msg_id, m.send.ts_ns, m.recv.ts_ns))
            .collect();
        assert_eq!(got, vec![(Some(7), 100, 200), (Some(8), 150, 300)]);
        assert_eq!(p.waiting(), 1);
        assert!(un.is_empty());
        p.finish(&mut un);
        assert_eq!(
            un,
            [Unpaired {
                channel: 2,
                side: side(11, 160, 8),
                sent: true,
                msg_id: Some(8)
            }]
        );
    }

    #[test]
    fn a_fatal_signal_is_delivered_as_sigkill() {
        const SIGTERM: u32 = 15;
        const SIGCHLD: u32 = 17;
        let mut p = SignalPairer::new();
        p.generated(7, SIGCHLD, QUEUED, "child");
        p.generated(7, SIGTERM, QUEUED, "term");
        p.generated(7, SIGUSR1, QUEUED, "usr1");
        // SIGCHLD does not kill by default; of the two that do, the older
        // one is the one the kernel turned into the kill.
        assert_eq!(p.delivered(7, SIGKILL), Some("term"));
        // A real SIGKILL is paired with itself first.
        p.generated(7, SIGKILL, QUEUED, "kill");
        assert_eq!(p.delivered(7, SIGKILL), Some("kill"));
        assert_eq!(p.delivered(8, SIGKILL), None);
    }
}
