//! Named, cross-process counting semaphores whose holders are known: each
//! count taken is recorded in a holders table in shared memory, so the
//! tracer can say who a blocked thread waits for, and a process that dies
//! holding a count is found and its count recovered.
//!
//! ```text
//! offset 0     header, written once by the creator, magic last:
//!                magic u64, version u64, slots u64, header_size u64
//! offset 64    count u32 (the futex word), waiters u32,
//!              owner_deaths u64 (counts recovered from dead holders)
//! offset 128   HOLDER_SLOTS slots of 32 bytes: owner u64 (pid << 32 | tid,
//!              0 when free, u64::MAX while being recovered), start_time u64 (the pid's start time, so a
//!              recycled pid is not mistaken for the holder), since_ns u64
//!              (CLOCK_MONOTONIC when taken), reserved u64
//! ```
//!
//! # Holders and dead holders
//!
//! A count taken by [`Semaphore::wait`] (or its siblings) is a [`Permit`];
//! the permit's slot in the table names the process and thread holding it
//! until the permit is released (dropped) or [forgotten](Permit::forget).
//! A count added by [`Semaphore::post`] comes from no holder: that is the
//! signalling use (one process posts, another waits and keeps the count).
//!
//! A waiter that has to block checks every [`LIVENESS_CHECK`] whether the
//! holders are alive (pidfd, as the channel does for its peers). A holder
//! whose process has exited loses its slot and its count is **recovered**:
//! posted back, traced as a `SemPost` with `result = -EOWNERDEAD` (see
//! `ipc_events::raw::kind::SEM_POST`), and counted in
//! [`Semaphore::owner_deaths`]. The acquire itself succeeds as usual; a
//! caller that uses the semaphore as a lock around shared data checks
//! `owner_deaths` to learn that the data may be half-updated, as
//! `EOWNERDEAD` tells a robust-mutex user.
//!
//! Known limits: a holder killed in the few instructions between taking the
//! count and recording its slot (or between freeing its slot and posting)
//! leaves the count one short; more than [`HOLDER_SLOTS`] concurrent
//! holders are counted correctly but the extra ones are not named (their
//! permits hold no slot, so their death cannot be detected).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};

use crate::channel::OpenError;
use crate::shm::{self, Mapping, OpenHow};
use crate::sys::{self, PeerWatch};
use crate::trace::{self, Op};

/// The first word of every semaphore: `IPCSSEMA` in little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSSEMA");
/// The layout described in this module. Any change to it bumps this.
pub const LAYOUT_VERSION: u32 = 1;
/// Holders the table can name at once.
pub const HOLDER_SLOTS: usize = 64;
/// How often a blocked waiter checks that the holders are alive.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// Bytes of the header proper.
const HEADER_SIZE: usize = 64;
const STATE_OFFSET: usize = HEADER_SIZE;
const SLOTS_OFFSET: usize = 128;
const SLOT_SIZE: usize = 32;
const SEGMENT_SIZE: usize = SLOTS_OFFSET + HOLDER_SLOTS * SLOT_SIZE;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU64,
    slots: AtomicU64,
    header_size: AtomicU64,
}

#[repr(C)]
struct State {
    count: AtomicU32,
    waiters: AtomicU32,
    owner_deaths: AtomicU64,
}

#[repr(C)]
struct Slot {
    owner: AtomicU64,
    start_time: AtomicU64,
    since_ns: AtomicU64,
    _reserved: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= STATE_OFFSET);
const _: () = assert!(STATE_OFFSET + std::mem::size_of::<State>() <= SLOTS_OFFSET);
const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);

/// A slot's owner word while a recoverer clears it: no claimer takes it
/// (they take only free, zero slots) and no pid is `u32::MAX`.
const RECOVERING: u64 = u64::MAX;

fn owner_word(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

fn split_owner(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// Why a wait ended without a count. No count was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// `try_wait`: the count is zero.
    #[error("semaphore count is zero")]
    WouldBlock,
    /// `wait_timeout`: no count became free within the timeout.
    #[error("timed out waiting for the semaphore")]
    Timeout,
    /// `wait_async`: no watcher thread could be started to sleep on the
    /// count (the process is out of threads; the cause is logged).
    #[error("could not start the thread async waits sleep on")]
    NoWatcher,
}

/// Why a post added nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// The count is at its maximum, `u32::MAX`.
    #[error("semaphore count is at its maximum of {max}")]
    Overflow { max: u32 },
}

/// One holder of a count, as the table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The holder's process.
    pub pid: u32,
    /// The thread that took the count.
    pub tid: u32,
    /// When it was taken (CLOCK_MONOTONIC nanoseconds, the tracer's clock).
    pub since_ns: u64,
}

#[derive(Debug)]
struct Inner {
    map: Mapping,
    name: String,
}

/// A named counting semaphore shared between processes. Cloning gives
/// another handle to the same mapping.
///
/// ```
/// use ipc_lib::sem::Semaphore;
///
/// let name = format!("doc-sem-{}", std::process::id());
/// let sem = Semaphore::builder(&name).initial(1).create()?; // the name goes with `sem`
/// let other = Semaphore::builder(&name).open()?; // another process, usually
/// let permit = sem.wait();
/// assert_eq!(sem.holders()[0].pid, std::process::id());
/// assert!(other.try_wait().is_err()); // the one count is held
/// drop(permit); // released: posted back
/// let permit = other.wait_timeout(std::time::Duration::from_secs(1))?;
/// permit.forget(); // keep the count taken (signalling use)
/// assert_eq!(sem.count(), 0);
/// sem.post()?;
/// assert_eq!(sem.count(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

/// Options for creating or opening a [`Semaphore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SemaphoreBuilder {
    name: String,
    initial: u32,
    unlink_on_drop: bool,
    wait: Duration,
}

impl SemaphoreBuilder {
    /// The count a new semaphore starts with (0 by default). Ignored when
    /// opening an existing one.
    pub fn initial(mut self, count: u32) -> Self {
        self.initial = count;
        self
    }

    shm::open_methods!(Semaphore, "semaphore");

    fn opening(
        &self,
        how: OpenHow,
    ) -> Result<impl crate::patience::Opening<Output = (Mapping, bool)> + '_, OpenError> {
        let path = shm::shm_name(&self.name)?;
        let name = shm::display_name(&self.name);
        let attach_path = path.clone();
        let initial = self.initial;
        Ok(shm::opening(
            name,
            how,
            self.wait,
            move || create(name, path.clone(), initial),
            move || attach(name, attach_path.clone()),
        ))
    }

    fn finish(self, (mut map, created): (Mapping, bool)) -> Result<Semaphore, OpenError> {
        map.set_unlink_on_drop(created && self.unlink_on_drop);
        Ok(Semaphore {
            inner: Arc::new(Inner {
                map,
                name: shm::display_name(&self.name).to_owned(),
            }),
        })
    }
}

fn header(map: &Mapping) -> &Header {
    // SAFETY: every mapping this is called on is at least HEADER_SIZE
    // bytes (`create` makes SEGMENT_SIZE; `attach` maps nothing smaller),
    // page-aligned and alive as long as `map`; `Header` is atomics only,
    // valid for any bits and for concurrent writers.
    unsafe { map.ptr().cast::<Header>().as_ref() }
}

fn create(name: &str, path: std::ffi::CString, initial: u32) -> Result<Mapping, OpenError> {
    let map = Mapping::create(name, path, SEGMENT_SIZE)?;
    let h = header(&map);
    // SAFETY: the mapping is SEGMENT_SIZE bytes, see `Semaphore::state`.
    let state = unsafe { map.ptr().add(STATE_OFFSET).cast::<State>().as_ref() };
    state.count.store(initial, Ordering::Relaxed);
    h.version
        .store(u64::from(LAYOUT_VERSION), Ordering::Relaxed);
    h.slots.store(HOLDER_SLOTS as u64, Ordering::Relaxed);
    h.header_size.store(SLOTS_OFFSET as u64, Ordering::Relaxed);
    // Last, with Release: an opener that sees the magic sees the rest.
    h.magic.store(MAGIC, Ordering::Release);
    Ok(map)
}

fn attach(name: &str, path: std::ffi::CString) -> Result<Mapping, OpenError> {
    // Only the header must be there to tell what the object is: the
    // creator sizes the object before it stores the magic, so once the
    // magic is seen the size is final and is checked below.
    let (map, magic) = Mapping::attach(name, path, HEADER_SIZE, shm::MAX_OBJECT, "ipc-lib object")?;
    let h = header(&map);
    if magic != MAGIC {
        return Err(OpenError::BadMagic {
            name: name.to_owned(),
            kind: "semaphore",
            found: magic,
        });
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != u64::from(LAYOUT_VERSION) {
        return Err(OpenError::VersionMismatch {
            name: name.to_owned(),
            found: u32::try_from(version).unwrap_or(u32::MAX),
            expected: LAYOUT_VERSION,
        });
    }
    let slots = h.slots.load(Ordering::Relaxed);
    let header_size = h.header_size.load(Ordering::Relaxed);
    if slots != HOLDER_SLOTS as u64 || header_size != SLOTS_OFFSET as u64 {
        return Err(OpenError::CorruptHeader {
            name: name.to_owned(),
            reason: format!(
                "{slots} holder slots after {header_size} header bytes, expected \
                 {HOLDER_SLOTS} after {SLOTS_OFFSET}"
            ),
        });
    }
    if map.len() != SEGMENT_SIZE {
        return Err(OpenError::CorruptHeader {
            name: name.to_owned(),
            reason: format!(
                "object of {} bytes, a semaphore has {SEGMENT_SIZE}",
                map.len()
            ),
        });
    }
    Ok(map)
}

impl Semaphore {
    /// Starts creating or opening the semaphore called `name`.
    pub fn builder(name: impl Into<String>) -> SemaphoreBuilder {
        SemaphoreBuilder {
            name: name.into(),
            initial: 0,
            unlink_on_drop: true,
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The semaphore's name, without a leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn state(&self) -> &State {
        // SAFETY: the mapping of a `Semaphore` is SEGMENT_SIZE bytes
        // (create makes it so, attach refuses anything else), STATE_OFFSET is 8-aligned in a
        // page-aligned mapping, and `State` is atomics only.
        unsafe {
            self.inner
                .map
                .ptr()
                .add(STATE_OFFSET)
                .cast::<State>()
                .as_ref()
        }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: as for `state`: HOLDER_SLOTS slots of SLOT_SIZE bytes
        // from SLOTS_OFFSET fill the SEGMENT_SIZE-byte mapping exactly;
        // aligned; atomics only.
        unsafe {
            std::slice::from_raw_parts(
                self.inner
                    .map
                    .ptr()
                    .as_ptr()
                    .add(SLOTS_OFFSET)
                    .cast::<Slot>(),
                HOLDER_SLOTS,
            )
        }
    }

    /// The count now (it may change at once).
    pub fn count(&self) -> u32 {
        self.state().count.load(Ordering::Acquire)
    }

    /// How many counts have been recovered from holders that died holding
    /// them, ever. A lock user compares it before and after taking the lock
    /// to learn that the data it guards may be half-updated.
    pub fn owner_deaths(&self) -> u64 {
        self.state().owner_deaths.load(Ordering::Acquire)
    }

    /// For [`crate::select`]: the count (the futex a post wakes) and the
    /// number of sleepers a post reads before it wakes one.
    pub(crate) fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        let st = self.state();
        (&st.count, &st.waiters)
    }

    /// The holders the table names now.
    pub fn holders(&self) -> Vec<Holder> {
        self.slots()
            .iter()
            .filter_map(|s| {
                let owner = s.owner.load(Ordering::Acquire);
                (owner != 0 && owner != RECOVERING).then(|| {
                    let (pid, tid) = split_owner(owner);
                    Holder {
                        pid,
                        tid,
                        since_ns: s.since_ns.load(Ordering::Relaxed),
                    }
                })
            })
            .collect()
    }

    /// Takes a count if there is one, without blocking.
    ///
    /// When the count is zero, first recovers counts of dead holders (see
    /// the module docs), which costs a few syscalls per holder.
    pub fn try_wait(&self) -> Result<Permit, WaitError> {
        if let Some(p) = self.try_take() {
            return Ok(self.acquired(p, 0));
        }
        self.recover_dead();
        match self.try_take() {
            Some(p) => Ok(self.acquired(p, 0)),
            None => Err(WaitError::WouldBlock),
        }
    }

    /// Takes a count, blocking until there is one.
    pub fn wait(&self) -> Permit {
        loop {
            // With no deadline the wait only ends by taking a count, so
            // this loop runs once.
            if let Some(p) = self.wait_until(None) {
                return p;
            }
        }
    }

    /// Takes a count, blocking at most `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Permit, WaitError> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until(deadline).ok_or(WaitError::Timeout)
    }

    /// Takes a count, waiting without blocking the async runtime: tried
    /// inline first; a wait that must sleep holds no thread (the
    /// process's watcher thread sleeps on the count for it, see `rt`).
    /// Cancel safe: a dropped future took no count, and its wait is traced
    /// as ended with `-ECANCELED`. For a timeout, wrap it in
    /// `tokio::time::timeout`.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&self) -> Result<Permit, WaitError> {
        if let Some(p) = self.try_take() {
            return Ok(self.acquired(p, 0));
        }
        let mut waiting = Waiting::begin(self);
        let slot = crate::rt::wait(&mut waiting).await?;
        Ok(waiting.took(slot))
    }

    /// Adds one to the count, waking one waiter. This is a post from no
    /// holder (the signalling use); a [`Permit`] releases its own count.
    pub fn post(&self) -> Result<(), PostError> {
        self.post_for(0, 0, 0, 0)
    }

    /// Traces a post on behalf of holder `pid`/`tid` in `slot` (plus one;
    /// zeros: no holder), then adds the count and wakes a waiter.
    ///
    /// The event goes first so its timestamp precedes any acquire the count
    /// makes possible: a wait-for graph built from the trace never sees a
    /// count taken before it was released. The price: a post that then
    /// fails (the count reached `u32::MAX` between the check and the add,
    /// which only a flood of posts can do) leaves its event behind.
    fn post_for(&self, pid: u32, tid: u32, slot: usize, result: i64) -> Result<(), PostError> {
        let st = self.state();
        if st.count.load(Ordering::Relaxed) == u32::MAX {
            return Err(PostError::Overflow { max: u32::MAX });
        }
        trace::emit_op(Op {
            obj: u64::from(pid),
            obj2: u64::from(tid),
            aux: slot as u64,
            result,
            ..Op::new(EventKind::SemPost, ChannelKind::IpclibSem, self.name())
        });
        // SeqCst on the count and on `waiters`, here and in `wait_until`:
        // either the waiter's re-check sees this count or this load sees
        // the waiter, so no wake-up is lost.
        st.count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_add(1))
            .map_err(|_| PostError::Overflow { max: u32::MAX })?;
        if st.waiters.load(Ordering::SeqCst) > 0 {
            // One count satisfies one waiter. A woken waiter that gives up
            // instead (timeout, cancel) leaves the count to the others,
            // who re-check at least every LIVENESS_CHECK.
            sys::futex_wake(&st.count, 1);
        }
        Ok(())
    }

    /// Takes one count if the count is not zero, and records this thread in
    /// a free slot. Returns the slot (or `None` when the table is full).
    fn try_take(&self) -> Option<Option<usize>> {
        self.state()
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .ok()?;
        Some(self.claim_slot())
    }

    fn claim_slot(&self) -> Option<usize> {
        let tid = trace::current_tid();
        let me = owner_word(sys::my_pid(), tid);
        // Start where this thread's id points, so threads rarely contend
        // for the same free slot.
        let start = tid as usize % HOLDER_SLOTS;
        let slots = self.slots();
        (0..HOLDER_SLOTS)
            .map(|i| (start + i) % HOLDER_SLOTS)
            .find(|&i| {
                let s = &slots[i];
                if s.owner
                    .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    return false;
                }
                s.start_time.store(sys::my_start_time(), Ordering::Release);
                s.since_ns.store(trace::monotonic_ns(), Ordering::Release);
                true
            })
    }

    fn acquired(&self, slot: Option<usize>, waited_ns: u64) -> Permit {
        trace::emit_op(Op {
            aux: slot.map_or(0, |s| s as u64 + 1),
            duration_ns: waited_ns,
            ..Op::new(EventKind::SemWaitEnd, ChannelKind::IpclibSem, self.name())
        });
        Permit {
            sem: self.clone(),
            slot,
            done: false,
        }
    }

    /// The blocking wait under `wait` and `wait_timeout`. `None`: the
    /// deadline passed, and nothing was taken.
    fn wait_until(&self, deadline: Option<Instant>) -> Option<Permit> {
        if let Some(p) = self.try_take() {
            return Some(self.acquired(p, 0));
        }
        let mut waiting = Waiting::begin(self);
        let st = self.state();
        st.waiters.fetch_add(1, Ordering::SeqCst);
        let mut last_check = Instant::now();
        let taken = loop {
            let now = Instant::now();
            let check = now.duration_since(last_check) >= LIVENESS_CHECK;
            if check {
                last_check = now;
            }
            if let Some(p) = waiting.attempt(check) {
                break Some(p);
            }
            if deadline.is_some_and(|d| now >= d) {
                break None;
            }
            let slice = deadline.map_or(LIVENESS_CHECK, |d| (d - now).min(LIVENESS_CHECK));
            // Sleeps only while the count is still zero; a post in between
            // changes the word and the wait returns at once.
            sys::futex_wait(&st.count, 0, slice);
        };
        st.waiters.fetch_sub(1, Ordering::SeqCst);
        match taken {
            Some(p) => Some(waiting.took(p)),
            None => {
                waiting.errno = libc::ETIMEDOUT;
                None
            }
        }
    }

    /// Frees the slots of holders whose process has exited and posts their
    /// counts back, each traced as a `SemPost` with `-EOWNERDEAD`.
    pub(crate) fn recover_dead(&self) {
        for (i, s) in self.slots().iter().enumerate() {
            let owner = s.owner.load(Ordering::Acquire);
            if owner == 0 || owner == RECOVERING {
                continue;
            }
            let (pid, tid) = split_owner(owner);
            // Zero (unknown) or this owner's, never a previous owner's:
            // every slot is freed with its start time cleared first (see
            // `free_slot`), and the owner word orders the two.
            let start_time = s.start_time.load(Ordering::Acquire);
            if PeerWatch::new(pid, start_time).alive() {
                continue;
            }
            // Only one recoverer wins the slot, so the count is posted back
            // once; it clears the start time before it frees the slot.
            if s.owner
                .compare_exchange(owner, RECOVERING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            s.start_time.store(0, Ordering::Relaxed);
            s.owner.store(0, Ordering::Release);
            self.state().owner_deaths.fetch_add(1, Ordering::AcqRel);
            // A full count cannot be: the dead holder's count is missing
            // from it. Should a hostile writer have made it so, the count
            // stays at the maximum, which is what the post would give.
            let _ = self.post_for(pid, tid, i + 1, -i64::from(libc::EOWNERDEAD));
        }
    }
}

/// A wait that found the count at zero: traced as begun when made, and as
/// ended when it takes a count or is dropped without one (`errno` says
/// why: cancelled unless the waiter says otherwise).
struct Waiting<'a> {
    sem: &'a Semaphore,
    started: u64,
    errno: i32,
}

impl<'a> Waiting<'a> {
    fn begin(sem: &'a Semaphore) -> Self {
        let started = trace::monotonic_ns();
        let holders = sem.holders();
        let (holder_pid, holder_tid) = holders.first().map_or((0, 0), |h| (h.pid, h.tid));
        trace::emit_op(Op {
            obj: u64::from(holder_pid),
            obj2: u64::from(holder_tid),
            aux: holders.len() as u64,
            ..Op::new(EventKind::SemWaitBegin, ChannelKind::IpclibSem, sem.name())
        });
        Waiting {
            sem,
            started,
            errno: libc::ECANCELED,
        }
    }

    /// Takes a count if there is one (the slot it holds, if any). With
    /// `check` (once a liveness slice of waiting) first recovers the
    /// counts of dead holders: that costs syscalls per holder.
    fn attempt(&self, check: bool) -> Option<Option<usize>> {
        if check {
            self.sem.recover_dead();
        }
        self.sem.try_take()
    }

    /// The count was taken: traced with how long the wait took.
    fn took(mut self, slot: Option<usize>) -> Permit {
        self.errno = 0;
        self.sem.acquired(slot, self.waited_ns())
    }

    fn waited_ns(&self) -> u64 {
        trace::monotonic_ns().saturating_sub(self.started)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.errno != 0 {
            trace::emit_op(Op {
                result: -i64::from(self.errno),
                duration_ns: self.waited_ns(),
                ..Op::new(
                    EventKind::SemWaitEnd,
                    ChannelKind::IpclibSem,
                    self.sem.name(),
                )
            });
        }
    }
}

#[cfg(feature = "tokio")]
impl crate::rt::Wait for Waiting<'_> {
    type Output = Option<usize>;
    type Error = WaitError;
    fn attempt(&mut self, check: bool) -> Result<Option<Option<usize>>, WaitError> {
        Ok(Waiting::attempt(self, check))
    }
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>) {
        let (count, waiters) = self.sem.wake_words();
        // A post moves the count off zero.
        (count, waiters, Some(0))
    }
    fn ready(&self) -> bool {
        self.sem.state().count.load(Ordering::SeqCst) > 0
    }
    fn no_watcher(source: std::io::Error) -> WaitError {
        tracing::error!(target: "ipc_lib", "starting the async watcher thread: {source}");
        WaitError::NoWatcher
    }
}

/// A count taken from a [`Semaphore`]. Dropping it releases the count (a
/// post from its holder); [`Permit::forget`] keeps the count taken.
#[derive(Debug)]
#[must_use = "dropping a permit releases it at once"]
pub struct Permit {
    sem: Semaphore,
    slot: Option<usize>,
    done: bool,
}

impl Permit {
    /// Releases the count now; the same as dropping the permit, but says
    /// when the count could not be added.
    pub fn release(mut self) -> Result<(), PostError> {
        self.release_once()
    }

    /// Keeps the count taken and leaves the holders table: the count was
    /// consumed (e.g. a signal received), so no one holds it any more.
    pub fn forget(mut self) {
        self.done = true;
        self.free_slot();
    }

    /// The slot this permit holds (0-based), if the table had room.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    fn release_once(&mut self) -> Result<(), PostError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let (pid, tid) = self.free_slot();
        self.sem
            .post_for(pid, tid, self.slot.map_or(0, |s| s + 1), 0)
    }

    /// Clears this permit's slot, returning the holder it named.
    fn free_slot(&self) -> (u32, u32) {
        let Some(i) = self.slot else {
            return (sys::my_pid(), trace::current_tid());
        };
        let s = &self.sem.slots()[i];
        // Cleared first, so whoever sees the slot claimed next never pairs
        // the new owner with this start time (it would call it dead).
        s.start_time.store(0, Ordering::Relaxed);
        let owner = s.owner.swap(0, Ordering::AcqRel);
        split_owner(owner)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Overflow is impossible while this count is out of the semaphore
        // (short of a hostile writer; see `recover_dead`).
        let _ = self.release_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// Every real holder has a non-zero word that is not the
        /// recovering mark, and the word gives back its pid and tid.
        #[test]
        fn owner_words_round_trip(pid in 1u32..=i32::MAX as u32, tid: u32) {
            let w = owner_word(pid, tid);
            prop_assert_eq!(split_owner(w), (pid, tid));
            prop_assert!(w != 0 && w != RECOVERING);
        }
    }
}
