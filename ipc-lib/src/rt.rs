//! Running a blocking wait without blocking a tokio worker thread.
//!
//! Why the blocking pool and not a readiness-based future: every wait in
//! this crate sleeps on a futex in shared memory, woken by another process.
//! A futex has no file descriptor (FUTEX_FD was removed from Linux in
//! 2.6.26), so there is nothing for the runtime's epoll to watch; polling
//! the word from a timer would add up to a timer tick of latency to every
//! wake-up, or burn a core. So the operation is first tried inline (the
//! common case, no thread hop at all) and only a wait that must sleep moves
//! to `spawn_blocking`, where it sleeps on the futex exactly as the
//! blocking API does, in slices, checking a flag that says the awaiting
//! future was dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest a cancelled wait keeps its blocking-pool thread: each
/// blocking step waits at most this long before checking the flag.
pub(crate) const CANCEL_SLICE: Duration = Duration::from_millis(50);

/// Sets the flag when the future that owns it is dropped, finished or not.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `work` on the blocking pool and awaits it. `work` gets a flag that
/// turns true when this future is dropped; it must check it at least every
/// [`CANCEL_SLICE`] and then return promptly. `None`: the runtime shut down
/// before `work` could finish.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> Option<T> {
    let flag = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(flag.clone());
    tokio::task::spawn_blocking(move || work(&flag)).await.ok()
}
