//! Lock-order inversions across processes, as lockdep and helgrind find
//! them: taking B while holding A in one thread, and A while holding B in
//! another, is a deadlock waiting for the wrong interleaving, even when
//! this run never hung.
//!
//! Each thread's held locks are kept in order; acquiring one records the
//! order "held -> acquired" for every lock held, with who did it first.
//! The reverse order seen from another thread is an inversion, reported
//! once per unordered pair of locks. One thread taking both orders is not
//! reported: it cannot deadlock with itself that way.

use std::hash::Hash;

use super::waitgraph::Thread;
use super::FastMap;

/// Who first took `second` while holding `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    pub thread: Thread,
    pub ts_ns: u64,
}

/// Two locks taken in both orders by different threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inversion<R> {
    /// Held while `second` was taken, by `first_order.thread`...
    pub first: R,
    pub second: R,
    pub first_order: Order,
    /// ...and `second` held while `first` was taken, by this thread: the
    /// acquisition that revealed the inversion.
    pub second_order: Order,
}

/// Orders seen so far; `R` is the caller's lock key.
#[derive(Debug)]
pub struct LockOrder<R> {
    held: FastMap<Thread, Vec<R>>,
    /// First thread seen taking `.1` while holding `.0`.
    orders: FastMap<(R, R), Order>,
    /// Pairs reported, in the order the revealing acquisition took them;
    /// both orders are looked up, so each unordered pair is reported once.
    reported: FastMap<(R, R), ()>,
}

impl<R> Default for LockOrder<R> {
    fn default() -> Self {
        LockOrder {
            held: FastMap::default(),
            orders: FastMap::default(),
            reported: FastMap::default(),
        }
    }
}

impl<R: Copy + Eq + Hash> LockOrder<R> {
    /// No orders seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `thread` took `lock` at `ts_ns`. Returns the inversions this order
    /// completes, each pair once in the recording.
    pub fn acquire(&mut self, thread: Thread, lock: R, ts_ns: u64) -> Vec<Inversion<R>> {
        let mut found = Vec::new();
        let held = self.held.entry(thread).or_default();
        for &h in held.iter() {
            if h == lock {
                continue;
            }
            let this = Order { thread, ts_ns };
            self.orders.entry((h, lock)).or_insert(this);
            let Some(&reverse) = self.orders.get(&(lock, h)) else {
                continue;
            };
            if reverse.thread == thread {
                continue;
            }
            if self.reported.contains_key(&(h, lock)) || self.reported.contains_key(&(lock, h)) {
                continue;
            }
            self.reported.insert((lock, h), ());
            found.push(Inversion {
                first: lock,
                second: h,
                first_order: reverse,
                second_order: this,
            });
        }
        held.push(lock);
        found
    }

    /// `thread` let go of one hold of `lock`.
    pub fn release(&mut self, thread: Thread, lock: R) {
        if let Some(held) = self.held.get_mut(&thread) {
            if let Some(i) = held.iter().rposition(|&h| h == lock) {
                held.remove(i);
            }
            if held.is_empty() {
                self.held.remove(&thread);
            }
        }
    }

    /// `lock` turned out not to be a lock (posted by a thread that did not
    /// hold it): it is held by nobody from now on.
    pub fn forget(&mut self, lock: R) {
        self.held.retain(|_, held| {
            held.retain(|&h| h != lock);
            !held.is_empty()
        });
    }

    /// Every thread of `pid` is gone; the orders it showed stay known.
    pub fn process_exited(&mut self, pid: u32) {
        self.held.retain(|t, _| t.pid != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u8 = 1;
    const B: u8 = 2;
    const C: u8 = 3;

    fn t(pid: u32) -> Thread {
        Thread::new(pid, pid)
    }

    fn take(o: &mut LockOrder<u8>, pid: u32, first: u8, second: u8, ts: u64) -> usize {
        assert!(o.acquire(t(pid), first, ts).is_empty());
        let n = o.acquire(t(pid), second, ts + 1).len();
        o.release(t(pid), second);
        o.release(t(pid), first);
        n
    }

    #[test]
    fn opposite_orders_in_two_processes_are_reported_once() {
        let mut o = LockOrder::new();
        assert_eq!(take(&mut o, 1, A, B, 10), 0);
        assert!(o.acquire(t(2), B, 20).is_empty());
        let inv = o.acquire(t(2), A, 21);
        assert_eq!(
            inv,
            [Inversion {
                first: A,
                second: B,
                first_order: Order {
                    thread: t(1),
                    ts_ns: 11
                },
                second_order: Order {
                    thread: t(2),
                    ts_ns: 21
                },
            }]
        );
        o.release(t(2), A);
        o.release(t(2), B);
        // Again, either way round: already reported.
        assert_eq!(take(&mut o, 2, B, A, 30), 0);
        assert_eq!(take(&mut o, 3, A, B, 40), 0);
    }

    #[test]
    fn the_same_order_everywhere_is_fine() {
        let mut o = LockOrder::new();
        for pid in 1..5 {
            assert_eq!(take(&mut o, pid, A, B, 10 * u64::from(pid)), 0);
        }
        // Nesting three deep in one order, too.
        assert!(o.acquire(t(9), A, 1).is_empty());
        assert!(o.acquire(t(9), B, 2).is_empty());
        assert!(o.acquire(t(9), C, 3).is_empty());
    }

    #[test]
    fn one_thread_taking_both_orders_is_not_an_inversion() {
        let mut o = LockOrder::new();
        assert_eq!(take(&mut o, 1, A, B, 10), 0);
        assert_eq!(take(&mut o, 1, B, A, 20), 0);
    }

    #[test]
    fn released_and_forgotten_locks_are_not_held() {
        let mut o = LockOrder::new();
        o.acquire(t(1), A, 1);
        o.release(t(1), A);
        assert!(o.acquire(t(1), B, 2).is_empty());
        o.acquire(t(2), B, 3);
        o.forget(B);
        assert!(o.acquire(t(2), A, 4).is_empty(), "B no longer held by 2");
        o.process_exited(1);
        assert_eq!(take(&mut o, 3, A, B, 5), 0);
    }
}
