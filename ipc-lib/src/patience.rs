//! How an open waits for the process that creates its object: every
//! named object (shared-memory channel, region, semaphore; socket channel
//! and rpc server) is made by one process and opened by others, and
//! processes start in no particular order, so an open that finds no name
//! waits for it instead of failing, bounded by the builder's `wait`.
//!
//! Why sleeps and not inotify on /dev/shm: a socket in the abstract
//! namespace has no file to watch, and one mechanism for both is simpler;
//! with the naps growing to 16 ms a waiting open wakes at most ~60 times a
//! second (no measurable CPU) and sees the name at most 16 ms late, which
//! is nothing next to a process starting.

use std::time::{Duration, Instant};

/// How long an open waits, unless its builder says otherwise, for the
/// name to appear and its creator to finish setting it up.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(5);

/// The least time an object that exists is given to become ready (its
/// creator sizes and initialises it a few microseconds after making the
/// name, a socket receiver greets from a thread of its own), even when the
/// open's `wait` is shorter: `Duration::ZERO` means "do not wait for a name
/// that is not there", not "fail on a creator caught mid-way".
pub(crate) const READY_GRACE: Duration = Duration::from_secs(2);

const FIRST_NAP: Duration = Duration::from_millis(1);
const LONGEST_NAP: Duration = Duration::from_millis(16);

/// One open's bounded wait.
#[derive(Debug)]
pub(crate) struct Patience {
    started: Instant,
    wait: Duration,
    nap: Duration,
}

impl Patience {
    pub(crate) fn new(wait: Duration) -> Patience {
        Patience {
            started: Instant::now(),
            wait,
            nap: FIRST_NAP,
        }
    }

    /// How long a name that does not exist is waited for.
    pub(crate) fn for_name(&self) -> Duration {
        self.wait
    }

    /// How long an object that exists is waited for to become ready.
    pub(crate) fn for_ready(&self) -> Duration {
        self.wait.max(READY_GRACE)
    }

    /// When [`for_ready`](Self::for_ready) runs out (`None`: never, for a
    /// wait too long to represent).
    pub(crate) fn ready_deadline(&self) -> Option<Instant> {
        self.started.checked_add(self.for_ready())
    }

    /// Sleeps before the next try, unless `limit` (from the start of the
    /// open) is spent: then returns false at once. The naps double from
    /// 1 ms to 16 ms and never overshoot `limit`, so the last try falls on
    /// it.
    pub(crate) fn nap(&mut self, limit: Duration) -> bool {
        let left = limit.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.nap.min(left));
        self.nap = (self.nap * 2).min(LONGEST_NAP);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_wait_gives_up_at_once_on_a_name_but_not_on_readiness() {
        let mut p = Patience::new(Duration::ZERO);
        assert!(!p.nap(p.for_name()));
        assert_eq!(p.for_ready(), READY_GRACE);
        assert!(p.nap(p.for_ready()));
    }

    #[test]
    fn naps_end_on_the_limit() {
        let limit = Duration::from_millis(40);
        let mut p = Patience::new(limit);
        let mut naps = 0;
        while p.nap(limit) {
            naps += 1;
        }
        assert!(p.started.elapsed() >= limit);
        // 1 + 2 + 4 + 8 + 16 ms, then what is left: the naps grew.
        assert!(naps <= 7, "{naps} naps");
    }
}
