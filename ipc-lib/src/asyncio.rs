//! tokio glue for the async forms (feature `tokio`): the descriptors the
//! blocking forms poll are registered with tokio's reactor, and each
//! operation is its non-blocking form retried whenever the reactor says
//! the descriptor is ready. No async operation ever blocks a worker thread.
//!
//! They need a runtime with I/O enabled (`#[tokio::main]` and
//! `#[tokio::test]` have one); calls with timeouts need its timer too.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A descriptor that something else owns and closes. The owner must drop
/// the [`Registration`] first (declare it as an earlier field), so tokio
/// never deregisters a number that was closed and reused.
#[derive(Debug)]
pub(crate) struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A descriptor registered with the reactor.
pub(crate) type Registration = AsyncFd<Borrowed>;

/// Registers `fd`; an error rather than tokio's panic outside a runtime.
///
/// # Safety
///
/// `fd` must stay open, naming the same file, until the registration is
/// dropped.
unsafe fn register(fd: RawFd, interest: Interest) -> io::Result<Registration> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(
            "an async ipc-lib operation was used outside a tokio runtime",
        ));
    }
    // SAFETY: the caller keeps fd open for the registration's life.
    unsafe { AsyncFd::register_with_interest(Borrowed(fd), interest) }.map_err(|e| e.into_parts().1)
}

/// The registration kept in `slot`, made on first use. Taken out while an
/// operation runs (which needs the rest of its owner mutably) and put back
/// by [`retry`]'s caller.
///
/// # Safety
///
/// As for [`register`]: `fd` outlives the registration, which its owner
/// guarantees by dropping the slot before closing `fd`.
pub(crate) unsafe fn take(
    slot: &mut Option<Registration>,
    fd: RawFd,
    interest: Interest,
) -> io::Result<Registration> {
    match slot.take() {
        Some(r) => Ok(r),
        // SAFETY: passed on from our caller.
        None => unsafe { register(fd, interest) },
    }
}

/// Runs `attempt` (a non-blocking try: `Ok(None)` when it would block)
/// until it gives an answer, waiting for `interest` on `reg` between
/// tries. `os` turns a reactor error into the operation's error.
pub(crate) async fn retry<T, E>(
    reg: &Registration,
    interest: Interest,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
    os: impl Fn(io::Error) -> E,
) -> Result<T, E> {
    loop {
        let mut guard = reg.ready(interest).await.map_err(&os)?;
        match attempt()? {
            Some(t) => return Ok(t),
            // Not ready after all: wait for the next edge.
            None => guard.clear_ready(),
        }
    }
}
