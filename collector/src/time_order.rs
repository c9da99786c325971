//! Putting events in time order without moving them more than once.
//!
//! An `Event` is big (its strings, channel and optional fields), and the
//! events to order come in a few runs that are each in order already (one
//! per source's batch, or per table): a stable sort of the events moved
//! each several times, and was the recorder's largest cost beside SQLite
//! on a pipe flood (`Stage`'s hold-back: 14% of its busiest thread, most
//! of it in memmove). Here the order is found on (stamp, position) keys
//! and applied in place by following its cycles.

use ipc_events::Event;

/// Puts `events` in time order, those of one time in the order they came;
/// `beside(a, b)` swaps positions `a` and `b` of anything kept beside
/// them, index for index, as they are swapped.
pub(crate) fn sort_by_time(events: &mut [Event], mut beside: impl FnMut(usize, usize)) {
    let mut keys: Vec<(u64, u32)> = (0..)
        .zip(events.iter())
        .map(|(i, e)| (e.ts_ns, i))
        .collect();
    if keys.is_sorted() {
        return;
    }
    keys.sort_unstable();
    // `from[i]`: where the event that goes to `i` is now.
    let mut from: Vec<u32> = keys.into_iter().map(|(_, i)| i).collect();
    for start in 0..from.len() {
        let mut at = start;
        while from[at] as usize != start {
            let next = from[at] as usize;
            events.swap(at, next);
            beside(at, next);
            from[at] = at as u32;
            at = next;
        }
        from[at] = at as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::{EventKind, Source};

    #[test]
    fn events_go_in_time_order_with_what_is_beside_them_ties_as_they_came() {
        // Three runs in order, as three sources or tables give them.
        let stamps = [5, 9, 1, 5, 7, 2, 5, 8, 3, 4];
        let mut events: Vec<Event> = stamps
            .iter()
            .map(|&t| Event::new(t, 1, 1, Source::Lib, EventKind::MsgSend))
            .collect();
        let mut beside: Vec<usize> = (0..stamps.len()).collect();
        sort_by_time(&mut events, |a, b| beside.swap(a, b));
        let got: Vec<(u64, usize)> = events.iter().map(|e| e.ts_ns).zip(beside).collect();
        let want = [1, 2, 3, 4, 5, 5, 5, 7, 8, 9]
            .into_iter()
            .zip([2, 5, 8, 9, 0, 3, 6, 4, 7, 1]);
        assert_eq!(got, want.collect::<Vec<_>>());
    }
}
