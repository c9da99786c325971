//! How far each source has been read, so that the correlation stage waits
//! for the slowest one instead of a fixed time.
//!
//! Each ipc-lib ring and the kernel ring is drained by a task of its own.
//! On a loaded machine one of them can fall tens of milliseconds behind the
//! others, and then an event it holds reaches the stage after later events
//! of another source were correlated: a signal ipc-lib sent and the probes
//! saw is counted twice, a futex wait inside an ipc-lib wait is not known
//! as the same wait. Each source says up to when it has read (the time
//! taken just before a drain, published once the drained batch is queued);
//! the stage correlates only events stamped before the earliest of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::writer::lock;

/// A source silent for this long (its task starved, or stuck) no longer
/// holds the others back: its events are correlated when they come, late.
pub(super) const MAX_WAIT_NS: u64 = 1_000_000_000;

/// Every live source's mark.
#[derive(Debug, Default)]
pub(super) struct Watermarks {
    marks: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Watermarks {
    /// A new source, which has read nothing yet.
    pub(super) fn source(&self) -> ReadThrough {
        let mark = Arc::new(AtomicU64::new(0));
        let mut marks = lock(&self.marks);
        marks.retain(|m| m.strong_count() > 0);
        marks.push(Arc::downgrade(&mark));
        ReadThrough(mark)
    }

    /// The time before which every live source has queued everything it
    /// read, at `now_ns`: `now_ns` itself when no source is live.
    pub(super) fn read_through(&self, now_ns: u64) -> u64 {
        let oldest_waited = now_ns.saturating_sub(MAX_WAIT_NS);
        lock(&self.marks)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|m| m.load(Ordering::Acquire).max(oldest_waited))
            .fold(now_ns, u64::min)
    }
}

/// One source's mark; the source stops holding the others back when it is
/// dropped.
#[derive(Debug)]
pub struct ReadThrough(Arc<AtomicU64>);

impl ReadThrough {
    /// Everything written to the source before `ts_ns` (monotonic) has
    /// been handed to [`Ingest`](super::Ingest). Call it after the batch is
    /// queued, with the time taken before the drain that read it.
    pub fn advance(&self, ts_ns: u64) {
        self.0.fetch_max(ts_ns, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_live_source_sets_the_mark_within_the_longest_wait() {
        let marks = Watermarks::default();
        let now = 10 * MAX_WAIT_NS;
        assert_eq!(marks.read_through(now), now);
        let kernel = marks.source();
        let ring = marks.source();
        kernel.advance(now - 1_000);
        ring.advance(now - 5_000_000);
        assert_eq!(marks.read_through(now), now - 5_000_000);
        // A mark never goes back.
        ring.advance(now - 9_000_000);
        assert_eq!(marks.read_through(now), now - 5_000_000);
        // A source that has read nothing for longer than the longest wait
        // holds the others back only that long.
        let starved = marks.source();
        assert_eq!(marks.read_through(now), now - MAX_WAIT_NS);
        drop(starved);
        drop(ring);
        assert_eq!(marks.read_through(now), now - 1_000);
    }
}
