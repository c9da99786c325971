//! Which of a batch's events its `messages` rows hold (migration 10): a
//! send or receive that a message row reproduces exactly is stored in that
//! row, and `events` (a view) shows it from there.
//!
//! An event folds into the first message of its batch that names it (its
//! thread and time) when that message's row gives back every column of its
//! `events` row: the same process, channel and message id, and, for a
//! receive, the message's size (a receive that took several messages, or
//! part of one, returned another). A send or receive paired in a later
//! batch than its own was stored as an event row already, and stays one.

use ipc_events::{Event, EventKind};

use crate::correlate::{Paired, Side};

/// The indexes in its batch of the events a message row holds: its send's
/// and its receive's.
pub(super) type Ends = [Option<u32>; 2];

/// Each message's [`Ends`], and whether each event is held by one.
pub(super) fn fold(
    events: &[Event],
    channel_ids: &[Option<i64>],
    messages: &[Paired<i64>],
) -> (Vec<Ends>, Vec<bool>) {
    let mut folded = vec![false; events.len()];
    if messages.is_empty() {
        return (Vec::new(), folded);
    }
    let index = Index::new(events);
    let ends = messages
        .iter()
        .map(|m| {
            let mut claim = |side: &Side, kind: EventKind| {
                let i = index.find(side, kind)?;
                let e = &events[i];
                let exact = !folded[i]
                    && e.pid == side.pid
                    && e.size == m.send.size
                    && e.msg_id == m.msg_id
                    && channel_ids[i] == Some(m.channel);
                exact.then(|| {
                    folded[i] = true;
                    i as u32
                })
            };
            [
                claim(&m.send, EventKind::MsgSend),
                claim(&m.recv, EventKind::MsgRecv),
            ]
        })
        .collect();
    (ends, folded)
}

/// The batch's sends and receives by time, small enough to stay in cache
/// while it is searched (an `Event` is some 200 bytes; a search through
/// them cost 15 cache misses a message).
struct Index(Vec<(u64, u32, bool, u32)>);

impl Index {
    fn new(events: &[Event]) -> Self {
        Index(
            events
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.kind, EventKind::MsgSend | EventKind::MsgRecv))
                .map(|(i, e)| (e.ts_ns, e.tid, e.kind == EventKind::MsgSend, i as u32))
                .collect(),
        )
    }

    /// The index in the batch of the `kind` event of `side`'s thread at
    /// `side`'s time.
    fn find(&self, side: &Side, kind: EventKind) -> Option<usize> {
        let send = kind == EventKind::MsgSend;
        let from = self.0.partition_point(|e| e.0 < side.ts_ns);
        self.0[from..]
            .iter()
            .take_while(|e| e.0 == side.ts_ns)
            .find(|e| e.1 == side.tid && e.2 == send)
            .map(|e| e.3 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::Source;

    fn event(ts_ns: u64, tid: u32, kind: EventKind, size: u64) -> Event {
        let mut e = Event::new(ts_ns, tid, tid, Source::Ebpf, kind);
        e.size = size;
        e
    }

    fn side(ts_ns: u64, tid: u32, size: u64) -> Side {
        Side {
            pid: tid,
            tid,
            ts_ns,
            size,
        }
    }

    fn message(send: Side, recv: Side) -> Paired<i64> {
        Paired {
            channel: 7,
            send,
            recv,
            msg_id: None,
        }
    }

    #[test]
    fn a_send_and_its_whole_receive_fold_into_their_message() {
        let events = [
            event(10, 1, EventKind::MsgSend, 5),
            event(20, 2, EventKind::MsgRecv, 5),
        ];
        let (ends, folded) = fold(
            &events,
            &[Some(7), Some(7)],
            &[message(side(10, 1, 5), side(20, 2, 5))],
        );
        assert_eq!(ends, [[Some(0), Some(1)]]);
        assert_eq!(folded, [true, true]);
    }

    #[test]
    fn a_receive_of_two_messages_stays_an_event_and_the_sends_fold() {
        let events = [
            event(10, 1, EventKind::MsgSend, 5),
            event(11, 1, EventKind::MsgSend, 5),
            event(20, 2, EventKind::MsgRecv, 10),
        ];
        let recv = side(20, 2, 10);
        let (ends, folded) = fold(
            &events,
            &[Some(7); 3],
            &[message(side(10, 1, 5), recv), message(side(11, 1, 5), recv)],
        );
        assert_eq!(ends, [[Some(0), None], [Some(1), None]]);
        assert_eq!(folded, [true, true, false]);
    }

    #[test]
    fn an_end_from_an_earlier_batch_or_another_channel_is_not_folded() {
        // The send was in the batch before; the receive's event is on
        // another channel than the message (it cannot come back from it).
        let events = [event(20, 2, EventKind::MsgRecv, 5)];
        let (ends, folded) = fold(
            &events,
            &[Some(8)],
            &[message(side(10, 1, 5), side(20, 2, 5))],
        );
        assert_eq!(ends, [[None, None]]);
        assert_eq!(folded, [false]);
    }

    #[test]
    fn a_publish_received_by_two_subscribers_folds_into_the_first_delivery_only() {
        let events = [
            event(10, 1, EventKind::MsgSend, 5),
            event(20, 2, EventKind::MsgRecv, 5),
            event(21, 3, EventKind::MsgRecv, 5),
        ];
        let send = side(10, 1, 5);
        let (ends, _) = fold(
            &events,
            &[Some(7); 3],
            &[message(send, side(20, 2, 5)), message(send, side(21, 3, 5))],
        );
        assert_eq!(ends, [[Some(0), Some(1)], [None, Some(2)]]);
    }
}
