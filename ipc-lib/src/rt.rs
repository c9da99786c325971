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

/// A blocking receiving end an async one is built on: the shared-memory
/// channel's [`Receiver`](crate::channel::Receiver), the broadcast's
/// [`Subscriber`](crate::broadcast::Subscriber) and the work queue's
/// [`Consumer`](crate::queue::Consumer).
pub(crate) trait BlockingRecv: Send + 'static {
    /// What one receive gives: a message and its id, or a queue's job.
    type Item: Send + std::fmt::Debug + 'static;
    type Error: Send + std::fmt::Debug + 'static;
    /// The next item, without waiting.
    fn try_next(&mut self) -> Result<Self::Item, Self::Error>;
    /// The next item, waiting at most `timeout`.
    fn next_timeout(&mut self, timeout: Duration) -> Result<Self::Item, Self::Error>;
    /// Whether `error` only says nothing came (now, or within the wait).
    fn nothing_yet(error: &Self::Error) -> bool;
    /// The runtime shut down during the wait.
    fn runtime_shutdown() -> Self::Error;
}

/// The receive of every async end: an inline try first, then a wait on
/// the blocking pool. Cancel safe: a message that arrives as the awaiting
/// future is dropped is kept for the next receive, not lost.
#[derive(Debug)]
pub(crate) struct AsyncRecv<R: BlockingRecv> {
    state: Arc<tokio::sync::Mutex<RecvState<R>>>,
}

#[derive(Debug)]
struct RecvState<R: BlockingRecv> {
    end: R,
    /// What a blocking wait received; taken by the next receive, whether
    /// or not the one that started the wait is still there.
    received: Option<Received<R>>,
}

/// An item, or why there was none.
type Received<R> = Result<<R as BlockingRecv>::Item, <R as BlockingRecv>::Error>;

impl<R: BlockingRecv> AsyncRecv<R> {
    pub(crate) fn new(end: R) -> Self {
        AsyncRecv {
            state: Arc::new(tokio::sync::Mutex::new(RecvState {
                end,
                received: None,
            })),
        }
    }

    /// The next item.
    pub(crate) async fn next(&mut self) -> Received<R> {
        loop {
            // Only a wait abandoned by a dropped receive can hold the lock,
            // and it lets go within CANCEL_SLICE.
            let mut state = self.state.clone().lock_owned().await;
            if let Some(r) = state.received.take() {
                return r;
            }
            match state.end.try_next() {
                Err(e) if R::nothing_yet(&e) => {}
                other => return other,
            }
            let done = off_runtime(move |cancelled: &AtomicBool| {
                while !cancelled.load(Ordering::Acquire) {
                    match state.end.next_timeout(CANCEL_SLICE) {
                        Err(e) if R::nothing_yet(&e) => {}
                        other => {
                            state.received = Some(other);
                            return;
                        }
                    }
                }
            });
            if done.await.is_none() {
                return Err(R::runtime_shutdown());
            }
        }
    }
}
