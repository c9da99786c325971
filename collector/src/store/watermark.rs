//! How far each source has been read, so that the correlation stage waits
//! for the slowest one instead of a fixed time.
//!
//! Each ipc-lib ring and the kernel ring is drained by a task of its own.
//! On a loaded machine one of them can fall tens of milliseconds behind the
//! others, and then an event it holds reaches the stage after later events
//! of another source were correlated: a signal ipc-lib sent and the probes
//! saw is counted twice, a futex wait inside an ipc-lib wait is not known
//! as the same wait. So each source has a mark: the time before which the
//! stage has received everything it read. A batch carries the time its
//! drain began, and moves the mark when the stage takes it in; a drain that
//! found nothing moves it at once, unless a batch is still on its way. The
//! stage correlates only events stamped before the earliest live mark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ipc_events::Event;

use super::writer::lock;

/// A source silent for this long (its task starved, or stuck) no longer
/// holds the others back: its events are correlated when they come, late.
pub(super) const MAX_WAIT_NS: u64 = 1_000_000_000;

/// Every live source's mark.
#[derive(Debug, Default)]
pub(super) struct Watermarks {
    marks: Mutex<Vec<Weak<Mark>>>,
}

impl Watermarks {
    /// A new source, which has nothing stamped before `read_through`.
    pub(super) fn source(&self, read_through: u64) -> ReadThrough {
        let mark = Arc::new(Mark {
            at: AtomicU64::new(read_through),
            in_flight: Mutex::new(0),
        });
        let mut marks = lock(&self.marks);
        marks.retain(|m| m.strong_count() > 0);
        marks.push(Arc::downgrade(&mark));
        ReadThrough(mark)
    }

    /// The time before which the stage has received everything every live
    /// source read, at `now_ns`: `now_ns` itself when no source is live.
    pub(super) fn read_through(&self, now_ns: u64) -> u64 {
        let oldest_waited = now_ns.saturating_sub(MAX_WAIT_NS);
        lock(&self.marks)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|m| m.at.load(Ordering::Acquire).max(oldest_waited))
            .fold(now_ns, u64::min)
    }
}

/// One source's mark. A batch on its way holds it (and so keeps the source
/// live) until the stage takes the batch in.
#[derive(Debug)]
pub(super) struct Mark {
    at: AtomicU64,
    /// Batches sent and not yet taken in. Changed under `lock` with `at`
    /// by a drain that found nothing, so that it moves the mark only when
    /// no batch is on its way.
    in_flight: Mutex<u64>,
}

impl Mark {
    fn advance(&self, ts_ns: u64) {
        self.at.fetch_max(ts_ns, Ordering::Release);
    }
}

/// A batch of events on its way to the stage and, for a source with a
/// mark, the time its drain began.
#[derive(Debug)]
pub struct Batch {
    pub(super) events: Vec<Event>,
    pub(super) read: Option<(Arc<Mark>, u64)>,
}

impl Batch {
    /// Its events, taken in by whoever drains the queue: the source's mark
    /// moves to the batch's drain.
    pub fn taken_in(self) -> Vec<Event> {
        if let Some((mark, at)) = self.read {
            let mut in_flight = lock(&mark.in_flight);
            *in_flight -= 1;
            mark.advance(at);
        }
        self.events
    }
}

/// One source's handle on its mark; the source stops holding the others
/// back when it is dropped and its last batch is taken in.
#[derive(Debug)]
pub struct ReadThrough(Arc<Mark>);

impl ReadThrough {
    /// `events` were read by a drain that began at `ts_ns` (monotonic):
    /// the batch that carries them, to hand to
    /// [`Ingest::send_batch`](super::Ingest::send_batch). With no events,
    /// the mark moves now if no batch is on its way (and the batch is
    /// empty).
    pub fn batch(&self, events: Vec<Event>, ts_ns: u64) -> Batch {
        let mut in_flight = lock(&self.0.in_flight);
        if events.is_empty() {
            if *in_flight == 0 {
                self.0.advance(ts_ns);
            }
            return Batch::from(events);
        }
        *in_flight += 1;
        Batch {
            events,
            read: Some((Arc::clone(&self.0), ts_ns)),
        }
    }
}

impl From<Vec<Event>> for Batch {
    /// Events of no source with a mark.
    fn from(events: Vec<Event>) -> Self {
        Batch { events, read: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::{EventKind, Source};

    fn one() -> Vec<Event> {
        vec![Event::new(1, 1, 1, Source::Lib, EventKind::MsgSend)]
    }

    #[test]
    fn the_slowest_live_source_sets_the_mark_within_the_longest_wait() {
        let marks = Watermarks::default();
        let now = 10 * MAX_WAIT_NS;
        assert_eq!(marks.read_through(now), now);
        let kernel = marks.source(0);
        let ring = marks.source(0);
        assert!(kernel.batch(Vec::new(), now - 1_000).events.is_empty());
        assert!(ring.batch(Vec::new(), now - 5_000_000).events.is_empty());
        assert_eq!(marks.read_through(now), now - 5_000_000);
        // A mark never goes back.
        assert!(ring.batch(Vec::new(), now - 9_000_000).events.is_empty());
        assert_eq!(marks.read_through(now), now - 5_000_000);
        // A source that has read nothing for longer than the longest wait
        // holds the others back only that long.
        let starved = marks.source(0);
        assert_eq!(marks.read_through(now), now - MAX_WAIT_NS);
        drop(starved);
        drop(ring);
        assert_eq!(marks.read_through(now), now - 1_000);
    }

    #[test]
    fn a_mark_moves_when_the_stage_takes_its_batch_in() {
        let marks = Watermarks::default();
        let now = 10 * MAX_WAIT_NS;
        let ring = marks.source(0);
        assert!(ring.batch(Vec::new(), now - 3_000).events.is_empty());
        let batch = ring.batch(one(), now - 2_000);
        // Nothing found since, but the batch is on its way.
        assert!(ring.batch(Vec::new(), now - 1_000).events.is_empty());
        assert_eq!(marks.read_through(now), now - 3_000);
        // Dropped with its batch still queued: still waited for.
        drop(ring);
        assert_eq!(marks.read_through(now), now - 3_000);
        assert_eq!(batch.taken_in().len(), 1);
        assert_eq!(marks.read_through(now), now);
    }
}
