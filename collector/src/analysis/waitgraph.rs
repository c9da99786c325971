//! The wait-for graph across processes, and the deadlocks in it.
//!
//! Nodes are threads and resources (semaphores, locks, futexes, channels:
//! whatever key the caller uses). A blocked thread waits for one resource;
//! a resource can be released by a set of threads, its *releasers*: the
//! holders of a semaphore or lock, or the only possible senders on a
//! channel. A blocked thread is *stuck* when every releaser of what it
//! waits for is stuck too (AND over the releasers: one releaser still
//! running may free it). With one holder per resource that is a plain
//! cycle. A resource with no known releaser proves nothing (anyone might
//! post it), so its waiters are never called stuck.
//!
//! Stuck is the greatest fixed point of that rule, and it has a local
//! form that makes the incremental check cheap: a thread is stuck exactly
//! when every thread reachable from it (through what it waits for and
//! that resource's releasers) is blocked on a resource with releasers. If
//! some reachable thread runs, every thread on the path to it depends on
//! it. So an edge that arrives is checked by walking from it over dense
//! indices: along first releasers (the whole reach when no resource on
//! the way is shared), then through the other releasers it passed. A
//! chain of 64 is 64 steps.
//!
//! A stuck set contains at least one cycle; the one reported follows each
//! thread to the first releaser of its resource (a function, so the walks
//! of all the threads that lead into one cycle find that same cycle, and
//! it is reported once). A cycle found is a
//! *candidate*; [`WaitGraph::tick`] confirms it as a deadlock once every
//! member has been blocked for the threshold, reports it once with a
//! stable id, and reports its resolution when any member stops waiting,
//! exits, or a running thread becomes able to release a resource in it.
//!
//! A resource may also have *idle* releasers
//! ([`WaitGraph::set_idle_releasers`]): threads that could release it
//! but were asleep when seen (the helper threads of a process blocked
//! reading a pipe, say, asleep in a timed wait). They are not releasers:
//! they do not keep its waiters from being stuck. As that is a guess
//! about their future, [`WaitGraph::tick_with`] asks again whether each
//! is still idle when a cycle through the resource reaches the threshold;
//! one that woke becomes a releaser, and a cycle it can break is dropped
//! unreported. A deadlock names them ([`WaitGraph::idle_threads`]).
//!
//! Some stuck sets are only seen from a thread the changing edge does not
//! reach (a releaser that blocks elsewhere can make waiters on it stuck),
//! so `tick` also runs the full sweep, linear in the blocked threads and
//! their edges, whenever the graph changed since the last one.

use std::hash::{Hash, Hasher};

use super::FastMap;
use crate::fast_map::FxHasher;

/// A thread, as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thread {
    pub pid: u32,
    pub tid: u32,
}

impl Thread {
    /// Thread `tid` of process `pid`.
    pub const fn new(pid: u32, tid: u32) -> Self {
        Thread { pid, tid }
    }
}

/// How long every member of a cycle must have been blocked before it is
/// called a deadlock: long enough that an ordinary contended hand-over is
/// never reported, short enough to be seen at once by a person.
pub const DEFAULT_THRESHOLD_NS: u64 = 200_000_000;

/// One thread of a cycle and what it waits for; the next member (the
/// first after the last) is a releaser of that resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<R> {
    pub thread: Thread,
    pub waits_for: R,
    /// When it started waiting.
    pub since_ns: u64,
}

/// A deadlock found or ended by [`WaitGraph::tick`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphChange<R> {
    /// Every member has been blocked past the threshold; `id` names this
    /// deadlock until it resolves.
    Detected {
        id: u64,
        detected_ns: u64,
        cycle: Vec<Member<R>>,
    },
    /// A member stopped waiting or exited, or one of its resources gained
    /// a releaser that is not stuck.
    Resolved { id: u64, resolved_ns: u64 },
}

/// Dense index of a thread or resource node.
type Ix = u32;

/// How a first-releaser walk ended.
enum Walk {
    /// In a cycle, `path[from..]`; `single` when every resource on the
    /// walk had exactly one releaser.
    Cycle { from: usize, single: bool },
    /// At a thread that is not blocked, or a resource with no releaser.
    Free,
    /// At a thread an earlier walk of the same sweep went through.
    Known,
}

/// One member's share of a cycle's hash; a cycle's hash is the sum of its
/// members', so every rotation of it has the same.
fn member_hash(thread: Thread, since_ns: u64) -> u64 {
    let mut h = FxHasher::default();
    h.write_u64((u64::from(thread.pid) << 32) | u64::from(thread.tid));
    h.write_u64(since_ns);
    h.finish()
}

#[derive(Clone, Copy, Debug)]
struct Wait {
    res: Ix,
    since_ns: u64,
}

#[derive(Debug)]
struct ThreadNode {
    key: Thread,
    /// False once the slot is free (the thread exited).
    live: bool,
    wait: Option<Wait>,
    /// Resources this thread can release.
    holds: Vec<Ix>,
    /// Position in `WaitGraph::blocked` while blocked.
    blocked_pos: usize,
    /// Visit stamp of the current walk or sweep.
    mark: u64,
    /// Walk stamp and position, for finding the cycle of a functional walk.
    seen: u64,
    pos: u32,
    /// When its wait last began or ended: a resolution's time.
    changed_ns: u64,
}

#[derive(Debug)]
struct ResourceNode<R> {
    key: R,
    /// Threads that can release it, with how many counts each holds.
    releasers: Vec<(Ix, u32)>,
    /// Threads blocked on it.
    waiters: Vec<Ix>,
    /// Threads that could release it but were idle when seen: not
    /// releasers, until a check finds one awake.
    idle: Vec<Thread>,
    /// When its releasers last changed.
    changed_ns: u64,
}

/// A cycle being watched: a candidate until `id` is set.
#[derive(Debug)]
struct Tracked<R> {
    id: Option<u64>,
    members: Vec<Member<R>>,
    /// Set when a member's process exited: nothing else records when.
    broken_ns: Option<u64>,
}

/// The graph; `R` is the caller's resource key (`channels.id` in the
/// collector).
#[derive(Debug)]
pub struct WaitGraph<R> {
    threshold_ns: u64,
    threads: FastMap<Thread, Ix>,
    thread_nodes: Vec<ThreadNode>,
    free_threads: Vec<Ix>,
    resources: FastMap<R, Ix>,
    resource_nodes: Vec<ResourceNode<R>>,
    /// Threads blocked now: what the sweep starts from.
    blocked: Vec<Ix>,
    /// Stamps for marks and walks; only ever grow, so no mark needs
    /// clearing.
    stamp: u64,
    /// Scratch space for walks, kept to avoid allocating per check.
    stack: Vec<Ix>,
    path: Vec<Ix>,
    /// `path_hash[i]`: the sum of the member hashes of `path[..i]`, so a
    /// cycle's (rotation-free) hash is a difference.
    path_hash: Vec<u64>,
    /// Cycles found, by the hash of their canonical (thread, since)
    /// sequence: finding one already known then allocates nothing.
    tracked: FastMap<u64, Vec<Tracked<R>>>,
    next_id: u64,
    /// Whether anything changed since the last sweep.
    dirty: bool,
}

impl<R: Copy + Eq + Hash> WaitGraph<R> {
    /// An empty graph confirming cycles blocked for `threshold_ns`.
    pub fn new(threshold_ns: u64) -> Self {
        WaitGraph {
            threshold_ns,
            threads: FastMap::default(),
            thread_nodes: Vec::new(),
            free_threads: Vec::new(),
            resources: FastMap::default(),
            resource_nodes: Vec::new(),
            blocked: Vec::new(),
            stamp: 0,
            stack: Vec::new(),
            path: Vec::new(),
            path_hash: Vec::new(),
            tracked: FastMap::default(),
            next_id: 1,
            dirty: false,
        }
    }

    /// `thread` blocked on `resource` at `since_ns` (a thread waits for one
    /// thing at a time: a previous wait ends). Returns whether this made
    /// it stuck, in which case its cycle is now a candidate.
    pub fn block(&mut self, thread: Thread, resource: R, since_ns: u64) -> bool {
        let t = self.thread(thread);
        self.end_wait(t, since_ns);
        let res = self.resource(resource);
        let node = &mut self.thread_nodes[t as usize];
        node.wait = Some(Wait { res, since_ns });
        node.blocked_pos = self.blocked.len();
        node.changed_ns = since_ns;
        self.blocked.push(t);
        self.resource_nodes[res as usize].waiters.push(t);
        self.dirty = true;
        self.check_and_track(t)
    }

    /// `thread` stopped waiting at `ts_ns`; returns since when it had
    /// been waiting, if it was.
    pub fn unblock(&mut self, thread: Thread, ts_ns: u64) -> Option<u64> {
        let t = *self.threads.get(&thread)?;
        self.end_wait(t, ts_ns)
    }

    /// What `thread` is blocked on, and since when.
    pub fn waiting(&self, thread: Thread) -> Option<(R, u64)> {
        let t = *self.threads.get(&thread)?;
        let w = self.thread_nodes[t as usize].wait?;
        Some((self.resource_nodes[w.res as usize].key, w.since_ns))
    }

    /// `thread` took one count of `resource`: it can now release it.
    pub fn acquire(&mut self, thread: Thread, resource: R, ts_ns: u64) {
        let t = self.thread(thread);
        let res = self.resource(resource);
        let node = &mut self.resource_nodes[res as usize];
        node.changed_ns = ts_ns;
        self.dirty = true;
        match node.releasers.iter_mut().find(|(h, _)| *h == t) {
            Some((_, count)) => *count = count.saturating_add(1),
            None => {
                node.releasers.push((t, 1));
                let first = node.releasers.len() == 1;
                self.thread_nodes[t as usize].holds.push(res);
                // A first releaser can make the waiters stuck; any other
                // can only free them.
                if first {
                    self.check_waiters(res);
                }
            }
        }
    }

    /// `thread` gave back one count of `resource`. Returns whether it held
    /// one.
    pub fn release(&mut self, thread: Thread, resource: R, ts_ns: u64) -> bool {
        let (Some(&t), Some(&res)) = (self.threads.get(&thread), self.resources.get(&resource))
        else {
            return false;
        };
        let node = &mut self.resource_nodes[res as usize];
        let Some(i) = node.releasers.iter().position(|(h, _)| *h == t) else {
            return false;
        };
        node.releasers[i].1 -= 1;
        if node.releasers[i].1 == 0 {
            node.releasers.remove(i);
            let holds = &mut self.thread_nodes[t as usize].holds;
            if let Some(j) = holds.iter().position(|&r| r == res) {
                holds.swap_remove(j);
            }
        }
        node.changed_ns = ts_ns;
        self.dirty = true;
        // One releaser fewer: the rest may all be stuck.
        self.check_waiters(res);
        true
    }

    /// Replaces the releasers of `resource` (the possible senders of a
    /// channel, say) with `threads`, one count each.
    pub fn set_releasers(&mut self, resource: R, threads: &[Thread], ts_ns: u64) {
        let res = self.resource(resource);
        for (t, _) in std::mem::take(&mut self.resource_nodes[res as usize].releasers) {
            let holds = &mut self.thread_nodes[t as usize].holds;
            if let Some(j) = holds.iter().position(|&r| r == res) {
                holds.swap_remove(j);
            }
        }
        for &thread in threads {
            let t = self.thread(thread);
            let node = &mut self.resource_nodes[res as usize];
            if !node.releasers.iter().any(|(h, _)| *h == t) {
                node.releasers.push((t, 1));
                self.thread_nodes[t as usize].holds.push(res);
            }
        }
        self.resource_nodes[res as usize].changed_ns = ts_ns;
        self.dirty = true;
        self.check_waiters(res);
    }

    /// Replaces the idle releasers of `resource` with `threads`: threads
    /// that could release it but are asleep, and so do not keep its
    /// waiters from being stuck. [`WaitGraph::tick_with`] checks them
    /// again before a cycle through `resource` is confirmed.
    pub fn set_idle_releasers(&mut self, resource: R, threads: &[Thread]) {
        let res = self.resource(resource);
        let idle = &mut self.resource_nodes[res as usize].idle;
        idle.clear();
        idle.extend_from_slice(threads);
    }

    /// The idle releasers of `resource`.
    pub fn idle_releasers(&self, resource: R) -> impl Iterator<Item = Thread> + '_ {
        self.resources
            .get(&resource)
            .into_iter()
            .flat_map(|&r| &self.resource_nodes[r as usize].idle)
            .copied()
    }

    /// The tids of the idle releasers of `cycle`'s resources that belong
    /// to process `pid`, sorted: the threads of a member's process that a
    /// deadlock report names as not blocked.
    pub fn idle_threads(&self, cycle: &[Member<R>], pid: u32) -> Vec<u32> {
        let mut tids: Vec<u32> = cycle
            .iter()
            .flat_map(|m| self.idle_releasers(m.waits_for))
            .filter(|t| t.pid == pid)
            .map(|t| t.tid)
            .collect();
        tids.sort_unstable();
        tids.dedup();
        tids
    }

    /// The threads that can release `resource`.
    pub fn releasers(&self, resource: R) -> impl Iterator<Item = Thread> + '_ {
        self.resources
            .get(&resource)
            .into_iter()
            .flat_map(|&r| &self.resource_nodes[r as usize].releasers)
            .map(|&(t, _)| self.thread_nodes[t as usize].key)
    }

    /// Every thread of process `pid` is gone at `ts_ns`: its waits end and
    /// what it held has no releaser left in it. Deadlocks it was part of
    /// resolve at `ts_ns`. Returns the waits that ended, with when each
    /// began. Linear in the
    /// threads known: exits are rare.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64) -> Vec<(Thread, R, u64)> {
        let gone: Vec<Ix> = self
            .threads
            .iter()
            .filter(|(k, _)| k.pid == pid)
            .map(|(_, &t)| t)
            .collect();
        let mut ended = Vec::new();
        if gone.is_empty() {
            return ended;
        }
        for tracked in self.tracked.values_mut().flatten() {
            if tracked.members.iter().any(|m| m.thread.pid == pid) {
                tracked.broken_ns.get_or_insert(ts_ns);
            }
        }
        for t in gone {
            if let Some(w) = self.thread_nodes[t as usize].wait {
                let key = self.thread_nodes[t as usize].key;
                ended.push((key, self.resource_nodes[w.res as usize].key, w.since_ns));
                self.end_wait(t, ts_ns);
            }
            for res in std::mem::take(&mut self.thread_nodes[t as usize].holds) {
                let node = &mut self.resource_nodes[res as usize];
                node.releasers.retain(|(h, _)| *h != t);
                node.changed_ns = ts_ns;
                self.check_waiters(res);
            }
            let node = &mut self.thread_nodes[t as usize];
            node.live = false;
            self.threads.remove(&node.key);
            self.free_threads.push(t);
        }
        self.dirty = true;
        ended
    }

    /// Whether `thread` is stuck now: the incremental check, one walk over
    /// what it reaches.
    pub fn is_stuck(&mut self, thread: Thread) -> bool {
        match self.threads.get(&thread) {
            Some(&t) => self.stuck(t),
            None => false,
        }
    }

    /// Every stuck thread, by the full sweep; registers the cycles among
    /// them as candidates. Linear in the blocked threads and their edges.
    pub fn sweep(&mut self) -> Vec<Thread> {
        let stuck = self.sweep_and_track();
        stuck
            .iter()
            .map(|&t| self.thread_nodes[t as usize].key)
            .collect()
    }

    fn sweep_and_track(&mut self) -> Vec<Ix> {
        let stuck = self.sweep_marks();
        self.dirty = false;
        self.track_cycles_of(&stuck);
        stuck
    }

    /// Confirms candidates blocked past the threshold and resolves
    /// deadlocks that broke, as of `now_ns`; each deadlock is detected once
    /// and resolved once. Call it often (the live feed's 10 Hz tick, or at
    /// [`WaitGraph::next_due`]): detection is at most one tick late.
    pub fn tick(&mut self, now_ns: u64) -> Vec<GraphChange<R>> {
        self.tick_with(now_ns, |_| true)
    }

    /// [`WaitGraph::tick`], asking `still_idle` about each idle releaser of
    /// a cycle's resources before confirming it: one no longer idle
    /// becomes a releaser (as of `now_ns`), and a cycle it can break is
    /// dropped without being reported.
    pub fn tick_with(
        &mut self,
        now_ns: u64,
        mut still_idle: impl FnMut(Thread) -> bool,
    ) -> Vec<GraphChange<R>> {
        if self.dirty {
            self.sweep_and_track();
        }
        let mut changes = Vec::new();
        let mut due = Vec::new();
        let hashes: Vec<u64> = self.tracked.keys().copied().collect();
        for hash in hashes {
            let Some(bucket) = self.tracked.remove(&hash) else {
                continue;
            };
            let mut kept = Vec::with_capacity(bucket.len());
            for tracked in bucket {
                if !self.still_holds(&tracked) {
                    if let Some(id) = tracked.id {
                        let resolved_ns = self.broken_at(&tracked).min(now_ns);
                        changes.push(GraphChange::Resolved { id, resolved_ns });
                    }
                    continue;
                }
                if tracked.id.is_none() && now_ns >= self.due(&tracked) {
                    due.push((tracked.members[0].thread, tracked.members[0].since_ns, hash));
                }
                kept.push(tracked);
            }
            if !kept.is_empty() {
                self.tracked.insert(hash, kept);
            }
        }
        // Ids in a stable order, whatever the map's.
        due.sort_unstable();
        for (thread, since_ns, hash) in due {
            let Some(mut bucket) = self.tracked.remove(&hash) else {
                continue;
            };
            let found = bucket.iter().position(|t| {
                t.id.is_none() && t.members[0].thread == thread && t.members[0].since_ns == since_ns
            });
            if let Some(i) = found {
                if self.wake_idle(&bucket[i], now_ns, &mut still_idle)
                    && !self.still_holds(&bucket[i])
                {
                    bucket.swap_remove(i);
                } else {
                    let id = self.next_id;
                    self.next_id += 1;
                    bucket[i].id = Some(id);
                    changes.push(GraphChange::Detected {
                        id,
                        detected_ns: now_ns,
                        cycle: bucket[i].members.clone(),
                    });
                }
            }
            if !bucket.is_empty() {
                self.tracked.insert(hash, bucket);
            }
        }
        changes.sort_by_key(|c| match c {
            GraphChange::Detected { id, .. } | GraphChange::Resolved { id, .. } => *id,
        });
        changes
    }

    /// Asks `still_idle` about every idle releaser of the resources
    /// `tracked` waits for; those awake become releasers at `now_ns`.
    /// Returns whether any did.
    fn wake_idle(
        &mut self,
        tracked: &Tracked<R>,
        now_ns: u64,
        still_idle: &mut impl FnMut(Thread) -> bool,
    ) -> bool {
        let mut woke = false;
        for m in &tracked.members {
            let Some(&res) = self.resources.get(&m.waits_for) else {
                continue;
            };
            let idle = std::mem::take(&mut self.resource_nodes[res as usize].idle);
            let (asleep, awake): (Vec<Thread>, Vec<Thread>) =
                idle.into_iter().partition(|&t| still_idle(t));
            self.resource_nodes[res as usize].idle = asleep;
            for thread in awake {
                let t = self.thread(thread);
                let node = &mut self.resource_nodes[res as usize];
                if !node.releasers.iter().any(|(h, _)| *h == t) {
                    node.releasers.push((t, 1));
                    self.thread_nodes[t as usize].holds.push(res);
                }
                self.resource_nodes[res as usize].changed_ns = now_ns;
                self.dirty = true;
                woke = true;
            }
        }
        woke
    }

    /// When every member of a cycle will have been blocked for the
    /// threshold.
    fn due(&self, tracked: &Tracked<R>) -> u64 {
        let newest = tracked.members.iter().map(|m| m.since_ns).max();
        newest.unwrap_or(0).saturating_add(self.threshold_ns)
    }

    /// When the earliest candidate will have been blocked for the
    /// threshold: the latest moment to call [`WaitGraph::tick`] for a
    /// prompt detection.
    pub fn next_due(&self) -> Option<u64> {
        self.tracked
            .values()
            .flatten()
            .filter(|t| t.id.is_none())
            .map(|t| self.due(t))
            .min()
    }

    /// Deadlocks confirmed and not resolved: (id, cycle).
    pub fn deadlocks(&self) -> impl Iterator<Item = (u64, &[Member<R>])> {
        self.tracked
            .values()
            .flatten()
            .filter_map(|t| t.id.map(|id| (id, t.members.as_slice())))
    }

    /// Cycles found and not yet confirmed or dropped.
    pub fn candidates(&self) -> usize {
        self.tracked
            .values()
            .flatten()
            .filter(|t| t.id.is_none())
            .count()
    }

    fn thread(&mut self, key: Thread) -> Ix {
        if let Some(&t) = self.threads.get(&key) {
            return t;
        }
        let node = ThreadNode {
            key,
            live: true,
            wait: None,
            holds: Vec::new(),
            blocked_pos: 0,
            mark: 0,
            seen: 0,
            pos: 0,
            changed_ns: 0,
        };
        let t = match self.free_threads.pop() {
            Some(t) => {
                self.thread_nodes[t as usize] = node;
                t
            }
            None => {
                self.thread_nodes.push(node);
                (self.thread_nodes.len() - 1) as Ix
            }
        };
        self.threads.insert(key, t);
        t
    }

    fn resource(&mut self, key: R) -> Ix {
        if let Some(&r) = self.resources.get(&key) {
            return r;
        }
        self.resource_nodes.push(ResourceNode {
            key,
            releasers: Vec::new(),
            waiters: Vec::new(),
            idle: Vec::new(),
            changed_ns: 0,
        });
        let r = (self.resource_nodes.len() - 1) as Ix;
        self.resources.insert(key, r);
        r
    }

    fn end_wait(&mut self, t: Ix, ts_ns: u64) -> Option<u64> {
        let node = &mut self.thread_nodes[t as usize];
        let wait = node.wait.take()?;
        node.changed_ns = ts_ns;
        let pos = node.blocked_pos;
        self.blocked.swap_remove(pos);
        if let Some(&moved) = self.blocked.get(pos) {
            self.thread_nodes[moved as usize].blocked_pos = pos;
        }
        let waiters = &mut self.resource_nodes[wait.res as usize].waiters;
        if let Some(i) = waiters.iter().position(|&w| w == t) {
            waiters.swap_remove(i);
        }
        self.dirty = true;
        Some(wait.since_ns)
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// The incremental check: every thread reachable from `start` is
    /// blocked on a resource with releasers.
    fn stuck(&mut self, start: Ix) -> bool {
        let stamp = self.next_stamp();
        self.stack.clear();
        self.stack.push(start);
        self.thread_nodes[start as usize].mark = stamp;
        while let Some(t) = self.stack.pop() {
            let Some(wait) = self.thread_nodes[t as usize].wait else {
                return false;
            };
            let releasers = &self.resource_nodes[wait.res as usize].releasers;
            if releasers.is_empty() {
                return false;
            }
            for &(h, _) in releasers {
                let node = &mut self.thread_nodes[h as usize];
                if node.mark != stamp {
                    node.mark = stamp;
                    self.stack.push(h);
                }
            }
        }
        true
    }

    /// The incremental check of an arriving edge at `t`, taking the cycle
    /// it closes as a candidate. The first-releaser walk comes first: it
    /// ends at a running thread (not stuck) or in a cycle. When every
    /// resource on it had one releaser, the walk was the whole reach and
    /// the cycle is stuck; otherwise the check goes on from the other
    /// releasers the walk passed, its own threads already known.
    fn check_and_track(&mut self, t: Ix) -> bool {
        let stamp = self.next_stamp();
        match self.walk(t, stamp, stamp, true) {
            Walk::Free => false,
            Walk::Cycle { from, single } => {
                if !single && !self.rest_stuck(stamp) {
                    return false;
                }
                self.track(from);
                true
            }
            // Only a sweep's walks meet earlier ones.
            Walk::Known => self.stuck(t),
        }
    }

    /// Finishes the check a walk with `stamp` began: the threads it left
    /// on the stack, and all they reach, are blocked on resources with
    /// releasers.
    fn rest_stuck(&mut self, stamp: u64) -> bool {
        while let Some(t) = self.stack.pop() {
            let node = &mut self.thread_nodes[t as usize];
            if node.mark == stamp {
                continue;
            }
            node.mark = stamp;
            let Some(wait) = node.wait else {
                return false;
            };
            let releasers = &self.resource_nodes[wait.res as usize].releasers;
            if releasers.is_empty() {
                return false;
            }
            for &(h, _) in releasers {
                if self.thread_nodes[h as usize].mark != stamp {
                    self.stack.push(h);
                }
            }
        }
        true
    }

    /// All waiters of a resource share its fate: checking one is enough.
    fn check_waiters(&mut self, res: Ix) {
        if let Some(&w) = self.resource_nodes[res as usize].waiters.first() {
            self.check_and_track(w);
        }
    }

    /// Follows first releasers from `start` until a thread repeats, a
    /// thread runs, or a resource has no releaser. With `check`, marks the
    /// threads walked and stacks the other releasers passed, for
    /// [`WaitGraph::rest_stuck`].
    fn walk(&mut self, start: Ix, first: u64, stamp: u64, check: bool) -> Walk {
        self.path.clear();
        self.path_hash.clear();
        self.path_hash.push(0);
        if check {
            self.stack.clear();
        }
        let mut single = true;
        let mut t = start;
        loop {
            let node = &mut self.thread_nodes[t as usize];
            if node.seen == stamp {
                return Walk::Cycle {
                    from: node.pos as usize,
                    single,
                };
            }
            if node.seen >= first {
                return Walk::Known;
            }
            let Some(wait) = node.wait else {
                return Walk::Free;
            };
            node.seen = stamp;
            if check {
                node.mark = stamp;
            }
            node.pos = self.path.len() as u32;
            let hash = member_hash(node.key, wait.since_ns);
            self.path.push(t);
            let sum = self.path_hash.last().copied().unwrap_or(0);
            self.path_hash.push(sum.wrapping_add(hash));
            let releasers = &self.resource_nodes[wait.res as usize].releasers;
            single &= releasers.len() == 1;
            if check && releasers.len() > 1 {
                self.stack.extend(releasers[1..].iter().map(|&(h, _)| h));
            }
            match releasers.first() {
                Some(&(next, _)) => t = next,
                None => return Walk::Free,
            }
        }
    }

    /// A blocked thread as a cycle member.
    fn member(&self, t: Ix) -> Option<Member<R>> {
        let node = &self.thread_nodes[t as usize];
        let wait = node.wait?;
        Some(Member {
            thread: node.key,
            waits_for: self.resource_nodes[wait.res as usize].key,
            since_ns: wait.since_ns,
        })
    }

    /// Starts watching the cycle `self.path[from..]` (each thread waits
    /// for what the next releases), unless it is watched already; the
    /// check for that allocates nothing. Stored in one form for every
    /// rotation: the smallest thread first.
    fn track(&mut self, from: usize) {
        let cycle = &self.path[from..];
        let len = cycle.len();
        let hash = self.path_hash[self.path.len()].wrapping_sub(self.path_hash[from]);
        let nodes = &self.thread_nodes;
        let threads = &self.threads;
        let same = |t: &Tracked<R>| {
            if t.members.len() != len {
                return false;
            }
            // Where the stored first member is in this walk: its `pos`,
            // if the walk's cycle holds it.
            let Some(&ix) = threads.get(&t.members[0].thread) else {
                return false;
            };
            let pos = nodes[ix as usize].pos as usize;
            if !(from..from + len).contains(&pos) || cycle[pos - from] != ix {
                return false;
            }
            let start = pos - from;
            t.members.iter().enumerate().all(|(i, m)| {
                let node = &nodes[cycle[(start + i) % len] as usize];
                m.thread == node.key && node.wait.is_some_and(|w| w.since_ns == m.since_ns)
            })
        };
        if self.tracked.get(&hash).is_some_and(|b| b.iter().any(same)) {
            return;
        }
        let Some(first) = (0..len).min_by_key(|&i| nodes[cycle[i] as usize].key) else {
            return;
        };
        let members: Vec<Member<R>> = (0..len)
            .filter_map(|i| self.member(cycle[(first + i) % len]))
            .collect();
        self.tracked.entry(hash).or_default().push(Tracked {
            id: None,
            members,
            broken_ns: None,
        });
    }

    /// Marks the stuck threads (greatest fixed point) and returns them.
    fn sweep_marks(&mut self) -> Vec<Ix> {
        let stamp = self.next_stamp();
        // Assume stuck every blocked thread whose resource has releasers.
        for &t in &self.blocked {
            let Some(wait) = self.thread_nodes[t as usize].wait else {
                continue;
            };
            if !self.resource_nodes[wait.res as usize].releasers.is_empty() {
                self.thread_nodes[t as usize].mark = stamp;
            }
        }
        // Then take back every one with a releaser outside the set, and
        // whoever waits on what a taken-back thread releases.
        self.stack.clear();
        for i in 0..self.blocked.len() {
            let t = self.blocked[i];
            let Some(wait) = self.thread_nodes[t as usize].wait else {
                continue;
            };
            let free = self.resource_nodes[wait.res as usize]
                .releasers
                .iter()
                .any(|&(h, _)| self.thread_nodes[h as usize].mark != stamp);
            if free && self.thread_nodes[t as usize].mark == stamp {
                self.thread_nodes[t as usize].mark = 0;
                self.stack.push(t);
            }
        }
        while let Some(y) = self.stack.pop() {
            for i in 0..self.thread_nodes[y as usize].holds.len() {
                let res = self.thread_nodes[y as usize].holds[i];
                for &w in &self.resource_nodes[res as usize].waiters {
                    let node = &mut self.thread_nodes[w as usize];
                    if node.mark == stamp {
                        node.mark = 0;
                        self.stack.push(w);
                    }
                }
            }
        }
        self.blocked
            .iter()
            .copied()
            .filter(|&t| self.thread_nodes[t as usize].mark == stamp)
            .collect()
    }

    fn track_cycles_of(&mut self, stuck: &[Ix]) {
        let first = self.stamp + 1;
        for &t in stuck {
            let stamp = self.next_stamp();
            // From a stuck thread the walk can only end in a cycle.
            if let Walk::Cycle { from, .. } = self.walk(t, first, stamp, false) {
                self.track(from);
            }
        }
    }

    /// Whether a watched cycle is still a stuck cycle: each member still in
    /// the same wait, the next one still a releaser of it, and the first
    /// one stuck (which makes them all stuck).
    fn still_holds(&mut self, tracked: &Tracked<R>) -> bool {
        if tracked.broken_ns.is_some() {
            return false;
        }
        let mut ixs = Vec::with_capacity(tracked.members.len());
        for m in &tracked.members {
            let Some(&t) = self.threads.get(&m.thread) else {
                return false;
            };
            match self.thread_nodes[t as usize].wait {
                Some(w)
                    if w.since_ns == m.since_ns
                        && self.resource_nodes[w.res as usize].key == m.waits_for =>
                {
                    ixs.push((t, w.res))
                }
                _ => return false,
            }
        }
        for (i, &(_, res)) in ixs.iter().enumerate() {
            let next = ixs[(i + 1) % ixs.len()].0;
            if !self.resource_nodes[res as usize]
                .releasers
                .iter()
                .any(|&(h, _)| h == next)
            {
                return false;
            }
        }
        match ixs.first() {
            Some(&(t, _)) => self.stuck(t),
            None => false,
        }
    }

    /// When a cycle broke: the exit that ended it, else the latest change
    /// to a member's wait or a resource's releasers.
    fn broken_at(&self, tracked: &Tracked<R>) -> u64 {
        if let Some(ns) = tracked.broken_ns {
            return ns;
        }
        tracked
            .members
            .iter()
            .flat_map(|m| {
                let thread = self
                    .threads
                    .get(&m.thread)
                    .map(|&t| self.thread_nodes[t as usize].changed_ns);
                let res = self
                    .resources
                    .get(&m.waits_for)
                    .map(|&r| self.resource_nodes[r as usize].changed_ns);
                thread.into_iter().chain(res)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn th(n: u32) -> Thread {
        Thread::new(n, n)
    }

    /// Threads 1..=n, thread i holding resource i and waiting for i+1
    /// (mod n when `closed`).
    fn ring(g: &mut WaitGraph<u64>, n: u32, closed: bool) {
        for i in 1..=n {
            g.acquire(th(i), u64::from(i), 0);
        }
        for i in 1..n {
            g.block(th(i), u64::from(i + 1), 10 * MS);
        }
        if closed {
            g.block(th(n), 1, 10 * MS);
        }
    }

    fn detected(changes: &[GraphChange<u64>]) -> Vec<(u64, Vec<u32>)> {
        changes
            .iter()
            .filter_map(|c| match c {
                GraphChange::Detected { id, cycle, .. } => {
                    Some((*id, cycle.iter().map(|m| m.thread.pid).collect()))
                }
                GraphChange::Resolved { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_two_cycle_is_a_deadlock_once_past_the_threshold() {
        let mut g = WaitGraph::new(200 * MS);
        g.acquire(th(1), 100, 0);
        g.acquire(th(2), 200, 0);
        assert!(!g.block(th(1), 200, 10 * MS), "2 still runs");
        assert!(g.block(th(2), 100, 20 * MS), "the edge that closes it");
        assert_eq!(g.next_due(), Some(220 * MS));
        assert!(g.tick(219 * MS).is_empty(), "2 not blocked long enough");
        let changes = g.tick(220 * MS);
        assert_eq!(detected(&changes), [(1, vec![1, 2])]);
        let GraphChange::Detected { cycle, .. } = &changes[0] else {
            unreachable!()
        };
        assert_eq!(cycle[0].waits_for, 200, "1 waits for what 2 holds");
        assert_eq!(cycle[1].waits_for, 100);
        assert!(g.tick(500 * MS).is_empty(), "reported once");
        assert_eq!(g.deadlocks().count(), 1);
    }

    #[test]
    fn ticking_at_10_hz_detects_within_100_ms_of_the_threshold() {
        for phase in [0, 1, 37 * MS, 99 * MS] {
            let mut g = WaitGraph::new(DEFAULT_THRESHOLD_NS);
            ring(&mut g, 3, true);
            let due = 10 * MS + DEFAULT_THRESHOLD_NS;
            let mut now = phase;
            let detected_ns = loop {
                if let Some(GraphChange::Detected { detected_ns, .. }) = g.tick(now).first() {
                    break *detected_ns;
                }
                assert!(now < 10 * due, "never detected");
                now += 100 * MS;
            };
            assert!(detected_ns >= due, "phase {phase}: before the threshold");
            assert!(detected_ns - due < 100 * MS, "phase {phase}: late");
        }
        // Ticking at next_due detects at the threshold exactly.
        let mut g = WaitGraph::new(DEFAULT_THRESHOLD_NS);
        ring(&mut g, 3, true);
        let due = g.next_due().unwrap();
        assert_eq!(detected(&g.tick(due)).len(), 1);
        assert_eq!(g.next_due(), None);
    }

    #[test]
    fn a_cycle_found_again_is_watched_once() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 3, true);
        assert_eq!(g.candidates(), 1);
        // The same waits seen again (a rotation: found from thread 3).
        g.unblock(th(3), 10 * MS);
        assert!(g.block(th(3), 1, 10 * MS));
        // A holder taking another count changes nothing.
        g.acquire(th(2), 2, 11 * MS);
        assert_eq!(g.candidates(), 1);
        assert_eq!(detected(&g.tick(300 * MS)).len(), 1);
        // Its threads waiting anew make it another cycle.
        g.unblock(th(3), 400 * MS);
        g.block(th(3), 1, 400 * MS);
        assert_eq!(
            g.tick(401 * MS),
            [GraphChange::Resolved {
                id: 1,
                resolved_ns: 400 * MS
            }]
        );
        assert_eq!(g.candidates(), 1);
    }

    #[test]
    fn a_three_cycle_in_any_edge_order_is_one_deadlock() {
        let mut g = WaitGraph::new(200 * MS);
        for i in 1..=3 {
            g.acquire(th(i), u64::from(i), 0);
        }
        g.block(th(2), 3, MS);
        g.block(th(1), 2, 2 * MS);
        g.block(th(3), 1, 3 * MS);
        let changes = g.tick(300 * MS);
        assert_eq!(detected(&changes), [(1, vec![1, 2, 3])]);
    }

    #[test]
    fn a_chain_of_64_is_not_a_deadlock_until_closed() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 64, false);
        assert!(!g.is_stuck(th(1)));
        assert!(g.tick(1000 * MS).is_empty());
        assert!(g.block(th(64), 1, 1000 * MS));
        assert!(g.tick(1100 * MS).is_empty(), "the closing edge is new");
        let changes = g.tick(1200 * MS);
        assert_eq!(detected(&changes), [(1, (1..=64).collect())]);
    }

    #[test]
    fn a_cycle_that_breaks_before_the_threshold_is_never_reported() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 2, true);
        assert_eq!(g.candidates(), 1);
        // 2 times out of its wait.
        assert_eq!(g.unblock(th(2), 100 * MS), Some(10 * MS));
        assert!(g.tick(1000 * MS).is_empty());
        assert_eq!(g.candidates(), 0);
    }

    #[test]
    fn a_deadlock_resolves_when_a_member_stops_waiting() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 3, true);
        assert_eq!(detected(&g.tick(300 * MS)).len(), 1);
        g.unblock(th(2), 400 * MS);
        assert_eq!(
            g.tick(450 * MS),
            [GraphChange::Resolved {
                id: 1,
                resolved_ns: 400 * MS
            }]
        );
        assert!(g.tick(900 * MS).is_empty(), "resolved once");
        // The same threads deadlocking again is a new deadlock.
        g.block(th(2), 3, 1000 * MS);
        assert_eq!(detected(&g.tick(1300 * MS)), [(2, vec![1, 2, 3])]);
    }

    #[test]
    fn a_deadlock_resolves_when_a_member_process_exits() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 2, true);
        g.tick(300 * MS);
        g.process_exited(2, 350 * MS);
        assert_eq!(
            g.tick(400 * MS),
            [GraphChange::Resolved {
                id: 1,
                resolved_ns: 350 * MS
            }]
        );
        assert_eq!(g.releasers(2).count(), 0, "what 2 held is free");
        assert_eq!(g.releasers(1).collect::<Vec<_>>(), [th(1)]);
        assert!(!g.is_stuck(th(1)));
    }

    #[test]
    fn a_resource_with_one_running_releaser_is_not_a_deadlock() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 2, true);
        // 3 also holds a count of what 1 waits for, and runs.
        g.acquire(th(3), 2, 15 * MS);
        assert!(!g.is_stuck(th(1)));
        assert!(!g.is_stuck(th(2)), "2 waits on 1, which 3 may free");
        assert!(g.tick(1000 * MS).is_empty());
        // Once 3 gives its count back, nothing is left to free them.
        g.release(th(3), 2, 1100 * MS);
        assert!(g.is_stuck(th(1)));
        assert_eq!(detected(&g.tick(1100 * MS)).len(), 1);
        // A releaser that is itself stuck does not free them.
        g.acquire(th(4), 2, 1200 * MS);
        g.block(th(4), 1, 1200 * MS);
        assert!(g.is_stuck(th(1)));
    }

    #[test]
    fn a_running_thread_taking_a_count_resolves_a_deadlock() {
        let mut g = WaitGraph::new(200 * MS);
        ring(&mut g, 2, true);
        g.tick(300 * MS);
        g.acquire(th(9), 1, 320 * MS);
        assert_eq!(
            g.tick(400 * MS),
            [GraphChange::Resolved {
                id: 1,
                resolved_ns: 320 * MS
            }]
        );
    }

    #[test]
    fn waiting_on_a_resource_nobody_holds_is_never_stuck() {
        let mut g = WaitGraph::new(200 * MS);
        assert!(!g.block(th(1), 7, 0));
        assert!(g.sweep().is_empty());
        assert!(g.tick(1000 * MS).is_empty());
    }

    #[test]
    fn a_thread_waiting_for_what_it_holds_is_stuck() {
        let mut g = WaitGraph::new(200 * MS);
        g.acquire(th(1), 7, 0);
        assert!(g.block(th(1), 7, 0));
        assert_eq!(detected(&g.tick(200 * MS)), [(1, vec![1])]);
    }

    #[test]
    fn a_releaser_blocking_elsewhere_is_found_by_the_sweep() {
        // 5 and 6 wait for each other, but 6's resource also has 7 as a
        // releaser; 7 and 8 then deadlock on their own. 5 and 6 are stuck
        // now too, though no edge from 7 or 8 reaches them.
        let mut g = WaitGraph::new(200 * MS);
        g.acquire(th(5), 50, 0);
        g.acquire(th(6), 60, 0);
        g.acquire(th(7), 50, 0);
        g.block(th(5), 60, MS);
        g.block(th(6), 50, MS);
        g.acquire(th(8), 80, 0);
        g.acquire(th(7), 70, 0);
        g.block(th(7), 80, 2 * MS);
        g.block(th(8), 70, 2 * MS);
        let mut cycles: Vec<Vec<u32>> = detected(&g.tick(300 * MS))
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        cycles.sort();
        assert_eq!(cycles, [vec![5, 6], vec![7, 8]]);
    }

    #[test]
    fn channel_senders_as_releasers() {
        // 1 reads a channel only 2 writes to; 2 reads one only 1 writes to.
        let mut g = WaitGraph::new(200 * MS);
        g.set_releasers(10, &[th(2)], 0);
        g.set_releasers(20, &[th(1)], 0);
        g.block(th(1), 10, MS);
        assert!(g.block(th(2), 20, MS));
        // A third writer appears on channel 10: no longer provable.
        g.set_releasers(10, &[th(2), th(3)], 2 * MS);
        assert!(!g.is_stuck(th(1)));
        assert!(g.tick(1000 * MS).is_empty());
    }

    /// 1 and 2 each read a channel only the other's process writes (10 and
    /// 20); each process also has a helper thread (11, 22) that holds the
    /// channel open and sleeps.
    fn pipes_with_idle_helpers(g: &mut WaitGraph<u64>) {
        g.set_releasers(10, &[th(2)], 0);
        g.set_idle_releasers(10, &[Thread::new(2, 22)]);
        g.set_releasers(20, &[th(1)], 0);
        g.set_idle_releasers(20, &[Thread::new(1, 11)]);
        g.block(th(1), 10, MS);
        g.block(th(2), 20, 2 * MS);
    }

    #[test]
    fn idle_releasers_do_not_keep_a_cycle_from_being_a_deadlock() {
        let mut g = WaitGraph::new(200 * MS);
        pipes_with_idle_helpers(&mut g);
        assert!(g.is_stuck(th(1)) && g.is_stuck(th(2)));
        let mut asked = Vec::new();
        let changes = g.tick_with(300 * MS, |t| {
            asked.push(t);
            true
        });
        asked.sort();
        assert_eq!(
            asked,
            [Thread::new(1, 11), Thread::new(2, 22)],
            "asked again"
        );
        assert_eq!(detected(&changes), [(1, vec![1, 2])]);
        let GraphChange::Detected { cycle, .. } = &changes[0] else {
            unreachable!()
        };
        assert_eq!(g.idle_threads(cycle, 1), [11]);
        assert_eq!(g.idle_threads(cycle, 2), [22]);
        assert_eq!(g.idle_threads(cycle, 3), Vec::<u32>::new());
        // The same helpers as plain releasers: they may send.
        let mut g = WaitGraph::new(200 * MS);
        g.set_releasers(10, &[th(2), Thread::new(2, 22)], 0);
        g.set_releasers(20, &[th(1), Thread::new(1, 11)], 0);
        g.block(th(1), 10, MS);
        assert!(!g.block(th(2), 20, 2 * MS));
        assert!(g.tick(300 * MS).is_empty());
    }

    #[test]
    fn an_idle_releaser_awake_at_the_threshold_keeps_the_cycle_from_being_reported() {
        let mut g = WaitGraph::new(200 * MS);
        pipes_with_idle_helpers(&mut g);
        assert_eq!(g.candidates(), 1);
        // 22 runs now: it may send on 10, so 1 may be freed.
        let changes = g.tick_with(300 * MS, |t| t.tid != 22);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(g.candidates(), 0);
        assert!(g.releasers(10).any(|t| t == Thread::new(2, 22)));
        assert_eq!(g.idle_releasers(10).count(), 0);
        assert!(!g.is_stuck(th(1)));
        assert!(g.tick(1000 * MS).is_empty(), "not found again");
    }

    #[test]
    fn plain_tick_takes_idle_releasers_as_idle() {
        let mut g = WaitGraph::new(200 * MS);
        pipes_with_idle_helpers(&mut g);
        assert_eq!(detected(&g.tick(300 * MS)), [(1, vec![1, 2])]);
    }

    #[test]
    fn a_deadlock_through_idle_releasers_resolves_when_a_helper_sends() {
        let mut g = WaitGraph::new(200 * MS);
        pipes_with_idle_helpers(&mut g);
        assert_eq!(detected(&g.tick_with(300 * MS, |_| true)).len(), 1);
        // 22 wrote on 10: 1's receive returned.
        g.unblock(th(1), 1000 * MS);
        assert_eq!(
            g.tick_with(1050 * MS, |_| panic!("nothing to confirm")),
            [GraphChange::Resolved {
                id: 1,
                resolved_ns: 1000 * MS
            }]
        );
    }

    /// A random graph from operations, checked at every step: the
    /// incremental check agrees with the sweep for every thread, and every
    /// cycle the sweep finds is stuck.
    fn ops() -> impl Strategy<Value = Vec<(u8, u32, u64)>> {
        proptest::collection::vec((0u8..5, 0u32..40, 0u64..30), 1..300)
    }

    proptest! {
        #[test]
        fn incremental_agrees_with_the_sweep_on_random_graphs(ops in ops()) {
            let mut g = WaitGraph::new(0);
            for (i, &(op, t, r)) in ops.iter().enumerate() {
                let ts = i as u64;
                match op {
                    0 | 1 => {
                        let stuck = g.block(th(t), r, ts);
                        prop_assert_eq!(stuck, g.sweep().contains(&th(t)), "block {} on {}", t, r);
                    }
                    2 => { g.unblock(th(t), ts); }
                    3 => g.acquire(th(t), r, ts),
                    _ => { g.release(th(t), r, ts); }
                }
            }
            let swept: std::collections::BTreeSet<Thread> = g.sweep().into_iter().collect();
            for t in 0..40 {
                prop_assert_eq!(g.is_stuck(th(t)), swept.contains(&th(t)), "thread {}", t);
            }
            let changes = g.tick(u64::MAX);
            for (_, cycle) in g.deadlocks() {
                for m in cycle {
                    prop_assert!(swept.contains(&m.thread));
                }
            }
            // Every stuck thread leads to a reported cycle.
            prop_assert_eq!(swept.is_empty(), changes.is_empty());
        }
    }

    #[test]
    fn a_large_random_graph_agrees_with_the_sweep_throughout() {
        // 400 groups of 8 threads and 8 resources (a closure spanning
        // thousands of threads is rarely all blocked), 60,000 operations
        // from a fixed generator (splitmix64), checked every 5,000.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move |bound: u64| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        };
        let mut g = WaitGraph::new(0);
        let mut stuck_seen = 0;
        for i in 0..60_000u64 {
            let group = next(400);
            let t = th((group * 8 + next(8)) as u32);
            let r = group * 8 + next(8);
            match next(40) {
                0..=13 => g.acquire(t, r, i),
                14..=31 => {
                    g.block(t, r, i);
                }
                32..=35 => {
                    g.release(t, r, i);
                }
                36..=38 => {
                    g.unblock(t, i);
                }
                _ => {
                    g.process_exited(t.pid, i);
                }
            }
            if i % 5000 == 4999 {
                let swept: std::collections::HashSet<Thread> = g.sweep().into_iter().collect();
                stuck_seen += swept.len();
                for pid in 0..3200 {
                    assert_eq!(
                        g.is_stuck(th(pid)),
                        swept.contains(&th(pid)),
                        "thread {pid} at {i}"
                    );
                }
                // Deadlocks that broke since are resolved by the tick; the
                // rest, and the new ones, are all stuck.
                let changes = g.tick(i);
                for (_, cycle) in g.deadlocks() {
                    assert!(cycle.iter().all(|m| swept.contains(&m.thread)));
                }
                assert_eq!(
                    swept.is_empty(),
                    g.deadlocks().next().is_none(),
                    "{changes:?}"
                );
            }
        }
        assert!(
            stuck_seen > 100,
            "the generator made deadlocks: {stuck_seen}"
        );
    }

    #[test]
    fn a_large_graph_of_many_rings_finds_each_ring_once() {
        let mut g = WaitGraph::new(0);
        // 1000 rings of 50 threads, every fifth left open.
        let mut closed = 0;
        for k in 0..1000u32 {
            let base = k * 50;
            for i in 0..50 {
                g.acquire(th(base + i), u64::from(base + i), 0);
            }
            for i in 0..49 {
                g.block(th(base + i), u64::from(base + i + 1), 1);
            }
            if k % 5 != 0 {
                g.block(th(base + 49), u64::from(base), 1);
                closed += 1;
            }
        }
        assert_eq!(g.sweep().len(), closed * 50);
        assert_eq!(detected(&g.tick(10)).len(), closed);
    }
}
