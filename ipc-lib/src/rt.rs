//! Waiting for another process in async code, without a thread per wait.
//!
//! Every wait in this crate sleeps on a futex word in shared memory that
//! the other process bumps and wakes with FUTEX_WAKE, and only when a
//! sleeper has registered in the object's waiters count (the handshake of
//! `channel::ring::park`): a send to a receiver that is not asleep costs
//! no syscall. What an async wait needs is a way from that FUTEX_WAKE to
//! the task's `Waker`. The options, and why this one:
//!
//! - A descriptor the runtime can poll, signalled by the other side: a
//!   futex has none (FUTEX_FD left Linux in 2.6.26), and the waking
//!   process cannot write this process's eventfd: it would need a
//!   descriptor per receiver (a FIFO, a socket, or the eventfd itself
//!   through `pidfd_getfd`, which needs ptrace rights), a write syscall on
//!   its hot path, and a new protocol every sender and poster speaks.
//! - A thread asleep on the futex per wait (tokio's blocking pool, which
//!   this module used before): correct, but 64 waiting receivers held 64
//!   threads.
//! - The one taken: the waking side is unchanged, and in this process one
//!   **watcher thread** sleeps in `futex_waitv` (Linux 5.16) on the words
//!   of every pending async wait at once, up to [`PER_WATCHER`] of them,
//!   and wakes the tasks whose words moved through their `Waker` (tokio's
//!   rouses its driver through the driver's own eventfd). A second thread
//!   starts only when that many waits are asleep at once. Watchers live
//!   as long as the process, asleep while no wait needs them.
//!
//! An async wait ([`wait`]) first tries inline (the common case: no
//! syscall, no thread). If it must sleep it makes the handshake a
//! blocking wait makes (reads the word, registers as a waiter, checks
//! again) and hands the word to a watcher; a word the watcher has held
//! for a liveness slice (20 ms) wakes its task anyway, so the end asks
//! whether its peers live as often as a blocking wait does.
//!
//! What it costs: a wait that must sleep wakes the watcher once to hand it
//! the word (one FUTEX_WAKE of a private word), and a wake-up reaches the
//! task through the watcher thread, one hop, as it reached it through a
//! blocking-pool thread before (`select_wake`'s `recv async` case measures
//! it).
//!
//! Cancel safe by construction: a try that takes something (a message, a
//! count, room for a send) returns it in the same poll, so the future
//! only ever sleeps with nothing taken, and dropping it loses nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::channel::ring::LIVENESS_SLICE;
use crate::select::{futex_waitv, wake_private, FutexWaitv, MAX_FUTEX_SOURCES};

/// The most waits one watcher thread sleeps on: `futex_waitv` takes 128
/// words, one of them the watcher's own.
pub(crate) const PER_WATCHER: usize = MAX_FUTEX_SOURCES;

/// An end whose waits [`wait`] runs.
pub(crate) trait Wait {
    type Output;
    type Error;
    /// One try that never blocks, as a waiting end makes it: `Ok(None)`
    /// when nothing is there yet. With `check` (once a liveness slice of
    /// waiting) it also asks the kernel whether the peers live.
    fn attempt(&mut self, check: bool) -> Result<Option<Self::Output>, Self::Error>;
    /// The futex word the other side bumps and wakes, the count of
    /// sleepers it reads first, and the value to sleep while the word
    /// holds (`None`: the word as it is now; a semaphore sleeps while its
    /// count is zero).
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>);
    /// Whether a try would now find something: the check half of the
    /// handshake, made after registering as a sleeper (SeqCst loads).
    fn ready(&self) -> bool;
    /// No watcher thread could be started for the wait.
    fn no_watcher(source: io::Error) -> Self::Error;
}

/// A receiving end (a channel's receiver, a broadcast's subscriber), whose
/// waits give a message and its id: [`Wait`] in the words of a receive.
pub(crate) trait Receive {
    type Error;
    /// [`Wait::attempt`] into `msg`, giving the message id.
    fn attempt_into(&mut self, msg: &mut Vec<u8>, check: bool) -> Result<Option<u64>, Self::Error>;
    /// The futex word a sender bumps and the count of sleepers it reads.
    fn wake_words(&self) -> (&AtomicU32, &AtomicU32);
    /// [`Wait::ready`].
    fn wake_ready(&self) -> bool;
    /// [`Wait::no_watcher`].
    fn os(op: &'static str, source: io::Error) -> Self::Error;
}

impl<R: Receive> Wait for R {
    type Output = (Vec<u8>, u64);
    type Error = R::Error;
    fn attempt(&mut self, check: bool) -> Result<Option<(Vec<u8>, u64)>, R::Error> {
        let mut msg = Vec::new();
        Ok(self.attempt_into(&mut msg, check)?.map(|id| (msg, id)))
    }
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>) {
        let (word, waiters) = self.wake_words();
        (word, waiters, None)
    }
    fn ready(&self) -> bool {
        self.wake_ready()
    }
    fn no_watcher(source: io::Error) -> R::Error {
        R::os(WATCHER_OP, source)
    }
}

/// What an error says failed when no watcher thread could start.
pub(crate) const WATCHER_OP: &str = "starting the async watcher thread";

/// Waits on `end` until a try gives an answer (see the module docs).
///
/// Counts against tokio's task budget, as tokio's own channels do: a task
/// receiving a steady stream, whose tries never have to sleep, still
/// yields now and then to the other tasks of its thread.
pub(crate) async fn wait<W: Wait>(end: &mut W) -> Result<W::Output, W::Error> {
    tokio::task::coop::cooperative(wait_uncounted(end)).await
}

async fn wait_uncounted<W: Wait>(end: &mut W) -> Result<W::Output, W::Error> {
    let mut last_check = Instant::now();
    loop {
        let check = last_check.elapsed() >= LIVENESS_SLICE;
        if check {
            last_check = Instant::now();
        }
        if let Some(out) = end.attempt(check)? {
            return Ok(out);
        }
        let (word, waiters, val) = end.sleep_on();
        // The word first, then the registration, then the check: either
        // the check sees what the other side published, or the other
        // side sees the registration and moves the word after we read it.
        let val = val.unwrap_or_else(|| word.load(SeqCst));
        let _sleeper = Sleeper::register(waiters);
        if !end.ready() {
            Watch::new(word, val).await.map_err(W::no_watcher)?;
        }
    }
}

/// A registration in a waiters count, undone on drop (also when the
/// waiting future is dropped).
struct Sleeper<'a>(&'a AtomicU32);

impl<'a> Sleeper<'a> {
    fn register(waiters: &'a AtomicU32) -> Self {
        waiters.fetch_add(1, SeqCst);
        Sleeper(waiters)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A word handed to a watcher: ready once the word no longer holds `val`,
/// was woken, or was held a liveness slice. Dropping it takes the word
/// back, so the watcher never reads it after its mapping may be gone.
struct Watch<'a> {
    word: &'a AtomicU32,
    val: u32,
    /// The watcher holding the word and the entry's id, from the first
    /// poll until the entry fires or this is dropped.
    at: Option<(Arc<Watcher>, u64)>,
}

impl<'a> Watch<'a> {
    fn new(word: &'a AtomicU32, val: u32) -> Self {
        Watch {
            word,
            val,
            at: None,
        }
    }
}

impl Future for Watch<'_> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some((watcher, id)) = &this.at else {
            this.at = Some(register(this.word, this.val, cx.waker())?);
            return Poll::Pending;
        };
        if let Some(e) = watcher.lock().entries.iter_mut().find(|e| e.id == *id) {
            // Polled again before it fired: the task may have moved.
            e.waker.clone_from(cx.waker());
            return Poll::Pending;
        }
        // The watcher removed the entry: it fired.
        this.at = None;
        Poll::Ready(Ok(()))
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let Some((watcher, id)) = self.at.take() else {
            return;
        };
        let mut st = watcher.lock();
        let before = st.entries.len();
        st.entries.retain(|e| e.id != id);
        let removed = st.entries.len() != before;
        drop(st);
        if removed {
            // Called out of its sleep, the watcher stops sleeping on the
            // word, whose wake-ups (a semaphore's post wakes one sleeper)
            // belong to the processes still waiting on it.
            watcher.call_out();
        }
    }
}

/// One watcher thread's shared state.
#[derive(Debug)]
struct Watcher {
    /// The process whose thread this is: a forked child inherits the list
    /// of watchers but none of their threads.
    pid: u32,
    /// Bumped and woken when the entries change, to call the thread out
    /// of its sleep.
    control: AtomicU32,
    state: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    entries: Vec<Entry>,
    next_id: u64,
}

/// A word some task sleeps on.
#[derive(Debug)]
struct Entry {
    id: u64,
    word: *const AtomicU32,
    val: u32,
    since: Instant,
    waker: Waker,
}

// SAFETY: `word` names an atomic that the [`Watch`] which registered the
// entry borrows; the entry leaves the list (under the lock) before that
// borrow ends, and the watcher reads the word only under the lock.
// Atomics may be used from any thread.
unsafe impl Send for Entry {}

impl Entry {
    fn word(&self) -> &AtomicU32 {
        // SAFETY: see `impl Send for Entry`: while the entry is listed its
        // word is alive, and the caller holds the lock that keeps it
        // listed.
        unsafe { &*self.word }
    }
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A list of plain entries is valid after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn call_out(&self) {
        self.control.fetch_add(1, SeqCst);
        wake_private(&self.control);
    }
}

/// Every watcher of this process.
static WATCHERS: Mutex<Vec<Arc<Watcher>>> = Mutex::new(Vec::new());

/// Hands `word` to a watcher with room, starting one if none has.
fn register(word: &AtomicU32, val: u32, waker: &Waker) -> io::Result<(Arc<Watcher>, u64)> {
    // Held while the entry goes in, so no two registrations fill the
    // same last place.
    let mut all = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    let me = crate::sys::my_pid();
    all.retain(|w| w.pid == me);
    let watcher = match all.iter().find(|w| w.lock().entries.len() < PER_WATCHER) {
        Some(w) => Arc::clone(w),
        None => {
            let w = Arc::new(Watcher {
                pid: me,
                control: AtomicU32::new(0),
                state: Mutex::default(),
            });
            let thread_w = Arc::clone(&w);
            std::thread::Builder::new()
                .name("ipc-lib-watch".into())
                .spawn(move || watch_loop(&thread_w))?;
            all.push(Arc::clone(&w));
            w
        }
    };
    let mut st = watcher.lock();
    st.next_id += 1;
    let id = st.next_id;
    st.entries.push(Entry {
        id,
        word,
        val,
        since: Instant::now(),
        waker: waker.clone(),
    });
    drop(st);
    drop(all);
    watcher.call_out();
    Ok((watcher, id))
}

/// The watcher thread: sleeps on every listed word and its control word,
/// then fires the entries whose words moved, were woken, or were held a
/// slice.
fn watch_loop(w: &Watcher) {
    let mut words = Vec::new();
    let mut ids = Vec::new();
    let mut fired = Vec::new();
    loop {
        let timeout = {
            let st = w.lock();
            words.clear();
            ids.clear();
            for e in &st.entries {
                words.push(FutexWaitv::shared(e.word(), e.val));
                ids.push(e.id);
            }
            // Read under the lock that `register` pushes under: a word
            // listed after this read moves the control word, so the sleep
            // below returns at once.
            words.push(FutexWaitv::private(&w.control, w.control.load(SeqCst)));
            let first = st.entries.iter().map(|e| e.since).min();
            first.map(|t| (t + LIVENESS_SLICE).saturating_duration_since(Instant::now()))
        };
        // A word unlisted since the snapshot may be unmapped by now: the
        // kernel only reads it (EFAULT at worst), and its removal moved the
        // control word, so the sleep returns at once anyway.
        let woken = match futex_waitv(&words, timeout) {
            Ok(woken) => woken.and_then(|i| ids.get(i).copied()),
            Err(e) => {
                // Every wait is told, so none hangs; they come back after
                // a slice instead of a wake-up.
                tracing::error!(target: "ipc_lib", "async watcher: futex_waitv: {e}");
                std::thread::sleep(LIVENESS_SLICE);
                None
            }
        };
        let mut st = w.lock();
        let now = Instant::now();
        st.entries.retain(|e| {
            let fire = woken == Some(e.id)
                || e.word().load(SeqCst) != e.val
                || now.duration_since(e.since) >= LIVENESS_SLICE;
            if fire {
                fired.push(e.waker.clone());
            }
            !fire
        });
        drop(st);
        // Outside the lock: a waker may run code of the executor's.
        for waker in fired.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `watch` once, as an executor would on the first poll: that
    /// hands its word to a watcher.
    fn poll_once(watch: &mut Watch<'_>) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(watch).poll(&mut cx)
    }

    fn move_word(word: &AtomicU32) {
        word.fetch_add(1, SeqCst);
        crate::sys::futex_wake_all(word);
    }

    /// Twice what one watcher's `futex_waitv` takes, asleep at once: they
    /// are spread over watchers (the kernel refuses more than 128 words)
    /// and each fires when its word moves.
    #[test]
    fn more_waits_than_one_watcher_holds_are_spread_and_all_fire() {
        let words: Vec<AtomicU32> = (0..2 * PER_WATCHER + 1)
            .map(|_| AtomicU32::new(0))
            .collect();
        let mut watches: Vec<Watch<'_>> = words.iter().map(|w| Watch::new(w, 0)).collect();
        for w in &mut watches {
            assert!(poll_once(w).is_pending());
        }
        for w in WATCHERS.lock().unwrap().iter() {
            assert!(w.lock().entries.len() <= PER_WATCHER);
        }
        for w in &words {
            move_word(w);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for w in watches {
                w.await.unwrap();
            }
        });
    }

    #[test]
    fn a_dropped_watch_leaves_no_word_with_its_watcher() {
        let word = AtomicU32::new(0);
        let mut watch = Watch::new(&word, 0);
        assert!(poll_once(&mut watch).is_pending());
        let (watcher, id) = watch.at.clone().unwrap();
        assert!(watcher.lock().entries.iter().any(|e| e.id == id));
        drop(watch);
        assert!(!watcher.lock().entries.iter().any(|e| e.id == id));
    }
}
