//! The spans of a commit's message ids (migration 11): how the readers
//! find a time slice's messages without an index by time on `messages`.
//!
//! The writer inserts a commit's messages in the order the correlation
//! stage paired them, which is close to the order of their receipt, and
//! their sends close behind. A span is a run of consecutive ids whose
//! times of one kind lie within [`SPAN_NS`] of each other; a message out
//! of order (received long after it was sent, or stored late) starts a
//! span of its own, and the one after it another: the span's bound holds
//! for every span, whatever the order. A span also ends after
//! [`MAX_SPAN_IDS`] ids.

use super::SPAN_NS;

/// The most ids a span covers: a reader of a time slice reads the whole
/// id range of each span that overlaps it, so a span must be short beside
/// a slice (a replay reads 100 ms at a time, a million messages at full
/// rate), and spans are still a thousandth of the rows.
pub(super) const MAX_SPAN_IDS: i64 = 1024;

/// A run of message ids and the bounds of their times of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub by_received: bool,
    pub from_ns: i64,
    pub to_ns: i64,
    pub first_id: i64,
    pub last_id: i64,
}

/// The spans of the messages with ids from `first_id` on, whose send and
/// receipt times (`None`: that end not traced) `times` gives in id order:
/// by send, then by receipt, each in id order.
pub(super) fn spans(first_id: i64, times: impl IntoIterator<Item = [Option<i64>; 2]>) -> Vec<Span> {
    let mut done = [Vec::new(), Vec::new()];
    let mut open: [Option<Span>; 2] = [None, None];
    for (id, ends) in (first_id..).zip(times) {
        for (k, t) in ends.into_iter().enumerate() {
            let Some(t) = t else { continue };
            match &mut open[k] {
                Some(span)
                    if t.max(span.to_ns) - t.min(span.from_ns) < SPAN_NS
                        && id - span.first_id < MAX_SPAN_IDS =>
                {
                    span.from_ns = span.from_ns.min(t);
                    span.to_ns = span.to_ns.max(t);
                    span.last_id = id;
                }
                slot => {
                    done[k].extend(slot.take());
                    *slot = Some(Span {
                        by_received: k == 1,
                        from_ns: t,
                        to_ns: t,
                        first_id: id,
                        last_id: id,
                    });
                }
            }
        }
    }
    let [mut sent, received] = done;
    let [open_sent, open_received] = open;
    sent.extend(open_sent);
    sent.extend(received);
    sent.extend(open_received);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = SPAN_NS;

    fn span(by_received: bool, from_ns: i64, to_ns: i64, ids: (i64, i64)) -> Span {
        Span {
            by_received,
            from_ns,
            to_ns,
            first_id: ids.0,
            last_id: ids.1,
        }
    }

    #[test]
    fn messages_in_order_make_one_span_of_each_kind_per_second() {
        let times = (0..4).map(|i| [Some(i * S / 2), Some(i * S / 2 + 10)]);
        assert_eq!(
            spans(100, times),
            [
                span(false, 0, S / 2, (100, 101)),
                span(false, S, 3 * S / 2, (102, 103)),
                span(true, 10, S / 2 + 10, (100, 101)),
                span(true, S + 10, 3 * S / 2 + 10, (102, 103)),
            ]
        );
    }

    #[test]
    fn a_message_sent_long_before_the_others_has_a_send_span_of_its_own() {
        let times = [
            [Some(5 * S), Some(5 * S + 1)],
            [Some(S), Some(5 * S + 2)],
            [Some(5 * S + 3), Some(5 * S + 4)],
        ];
        assert_eq!(
            spans(1, times),
            [
                span(false, 5 * S, 5 * S, (1, 1)),
                span(false, S, S, (2, 2)),
                span(false, 5 * S + 3, 5 * S + 3, (3, 3)),
                span(true, 5 * S + 1, 5 * S + 4, (1, 3)),
            ]
        );
    }

    #[test]
    fn a_span_ends_after_its_most_ids() {
        let n = MAX_SPAN_IDS * 2 + 1;
        let made = spans(0, (0..n).map(|i| [Some(i), None]));
        let ids: Vec<_> = made.iter().map(|s| (s.first_id, s.last_id)).collect();
        let cap = MAX_SPAN_IDS;
        assert_eq!(ids, [(0, cap - 1), (cap, 2 * cap - 1), (2 * cap, 2 * cap)]);
    }

    #[test]
    fn an_end_not_traced_is_in_no_span_of_its_kind() {
        let times = [[Some(0), None], [None, Some(7)], [Some(9), Some(12)]];
        assert_eq!(
            spans(1, times),
            [span(false, 0, 9, (1, 3)), span(true, 7, 12, (2, 3))]
        );
    }

    #[test]
    fn every_span_is_shorter_than_its_bound_and_holds_its_times() {
        // Times out of order in every way: jumps back and forth.
        let times: Vec<[Option<i64>; 2]> = (0..500i64)
            .map(|i| {
                let t = (i * 7919 % 613) * S / 97;
                [Some(t), (i % 5 != 0).then_some(t + (i % 13) * S / 3)]
            })
            .collect();
        let made = spans(1000, times.clone());
        for s in &made {
            assert!(s.to_ns - s.from_ns < S, "{s:?}");
        }
        for (i, ends) in times.iter().enumerate() {
            for (k, t) in ends.iter().enumerate() {
                let Some(t) = *t else { continue };
                let id = 1000 + i as i64;
                let holding: Vec<_> = made
                    .iter()
                    .filter(|s| s.by_received == (k == 1) && (s.first_id..=s.last_id).contains(&id))
                    .collect();
                assert_eq!(holding.len(), 1, "id {id} kind {k}");
                assert!((holding[0].from_ns..=holding[0].to_ns).contains(&t));
            }
        }
    }
}
