//! How an open waits for the process that creates its object: every
//! named object (shared-memory channel, region, semaphore, queue,
//! broadcast; socket channel and rpc server) is made by one process and
//! opened by others, and processes start in no particular order, so an
//! open that finds no name waits for it instead of failing, bounded by the
//! builder's `wait`.
//!
//! Why sleeps and not inotify on /dev/shm: a socket in the abstract
//! namespace has no file to watch, and one mechanism for both is simpler;
//! with the naps growing to 16 ms a waiting open wakes at most ~60 times a
//! second (no measurable CPU) and sees the name at most 16 ms late, which
//! is nothing next to a process starting.
//!
//! Each kind of open is written once, as an [`Opening`]: a series of
//! tries that never block, each saying what to wait for before the next
//! (a nap, or a socket turning readable). [`block`] runs one on the
//! calling thread (the builders' `open`), [`wait`] as a future that waits
//! on tokio's timer and reactor (their `open_async`), so the blocking and
//! the async open wait as long and give the same errors by construction.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::channel::OpenError;

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

    /// The nap before the next try, unless `limit` (from the start of the
    /// open) is spent: then `None`. The naps double from 1 ms to 16 ms and
    /// never overshoot `limit`, so the last try falls on it.
    pub(crate) fn next_nap(&mut self, limit: Duration) -> Option<Duration> {
        let left = limit.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return None;
        }
        let nap = self.nap.min(left);
        self.nap = (self.nap * 2).min(LONGEST_NAP);
        Some(nap)
    }
}

/// What an open in progress needs before its next try.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Finished: the object, or why not.
    Done(Result<T, OpenError>),
    /// Not there yet: try again after this long.
    Nap(Duration),
    /// Try again once `fd` (which the [`Opening`] owns and keeps open until
    /// its next step) turns readable, or at `until` at the latest.
    Readable { fd: RawFd, until: Option<Instant> },
}

/// An open that may have to wait for its creator, as tries that never
/// block (see the module docs).
pub(crate) trait Opening {
    type Output;
    /// One try.
    fn step(&mut self) -> Step<Self::Output>;
    /// The object's name, for an error of the wait itself.
    fn name(&self) -> &str;
}

fn os(name: &str, op: &'static str, source: std::io::Error) -> OpenError {
    OpenError::Os {
        name: name.to_owned(),
        op,
        source,
    }
}

/// Runs `open` to its end on this thread, sleeping between tries.
pub(crate) fn block<O: Opening>(mut open: O) -> Result<O::Output, OpenError> {
    loop {
        match open.step() {
            Step::Done(r) => return r,
            Step::Nap(nap) => std::thread::sleep(nap),
            Step::Readable { fd, until } => {
                // SAFETY: `open` owns `fd` and keeps it open until its
                // next step, which comes after this borrow ends.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let left = crate::socket::sys::remaining(until);
                crate::socket::sys::poll_one(borrowed, libc::POLLIN, left)
                    .map_err(|e| os(open.name(), "poll", e))?;
            }
        }
    }
}

/// Runs `open` to its end as a future: naps on tokio's timer, sockets on
/// its reactor, never blocking the thread. Cancel safe: every try either
/// finishes the open or leaves nothing made, so a dropped future only
/// drops what `open` holds.
#[cfg(feature = "tokio")]
pub(crate) async fn wait<O: Opening>(mut open: O) -> Result<O::Output, OpenError> {
    loop {
        let step = open.step();
        if !matches!(step, Step::Done(_)) && tokio::runtime::Handle::try_current().is_err() {
            // tokio's timer would panic; an error says what is wrong.
            let e = std::io::Error::other("an async ipc-lib open was used outside a tokio runtime");
            return Err(os(open.name(), "waiting for the creator", e));
        }
        match step {
            Step::Done(r) => return r,
            Step::Nap(nap) => tokio::time::sleep(nap).await,
            Step::Readable { fd, until } => {
                use tokio::io::Interest;
                let name = open.name();
                // SAFETY: `open` owns `fd` and keeps it open until its
                // next step; the registration is dropped at the end of
                // this arm, before that.
                let reg = unsafe { crate::asyncio::take(&mut None, fd, Interest::READABLE) }
                    .map_err(|e| os(name, "tokio register", e))?;
                let ready = reg.readable();
                let ready = match until {
                    Some(t) => match tokio::time::timeout_at(t.into(), ready).await {
                        Ok(r) => r.map(drop),
                        // Its deadline: the next try says what that means.
                        Err(_) => Ok(()),
                    },
                    None => ready.await.map(drop),
                };
                ready.map_err(|e| os(name, "tokio ready", e))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_wait_gives_up_at_once_on_a_name_but_not_on_readiness() {
        let mut p = Patience::new(Duration::ZERO);
        assert_eq!(p.next_nap(p.for_name()), None);
        assert_eq!(p.for_ready(), READY_GRACE);
        assert!(p.next_nap(p.for_ready()).is_some());
    }

    #[test]
    fn naps_end_on_the_limit() {
        let limit = Duration::from_millis(40);
        let mut p = Patience::new(limit);
        let mut naps = 0;
        while let Some(nap) = p.next_nap(limit) {
            std::thread::sleep(nap);
            naps += 1;
        }
        assert!(p.started.elapsed() >= limit);
        // 1 + 2 + 4 + 8 + 16 ms, then what is left: the naps grew.
        assert!(naps <= 7, "{naps} naps");
    }
}
