//! Blocking waits from wait begin/end events, from either source.
//!
//! A wait is known from its begin, with no end while the thread is
//! blocked (so a thread blocked right now, or deadlocked, shows as one
//! whose wait never ended), and is completed by its end, or by its
//! process's exit (with no waker). An end whose
//! begin was not seen (lost, or before the recording) is a whole wait
//! from its duration; one with no duration took the object without
//! blocking. A blocked receive (`recv_wait_begin`) ends with the
//! receive's message or with its `recv_wait_end`.
//!
//! One operation, one wait: an ipc-lib wait (it says when it begins and
//! ends) sleeps in futex waits that the probes see too; while a thread is
//! in an ipc-lib wait, its futex waits are that wait, not waits of their
//! own.
//!
//! Facts come per batch: a wait that begins and ends within one batch
//! (most do) is one [`WaitFact::Whole`], and only a wait still open when
//! its batch closes is reported open ([`WaitFact::Opened`]) and later
//! [`WaitFact::Closed`].

use std::collections::HashMap;

use ipc_events::{Event, EventKind, Source};

use super::ChannelRef;

/// One blocking wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Names the wait in a later [`WaitFact::Closed`].
    pub id: u64,
    pub pid: u32,
    pub tid: u32,
    pub channel: Option<ChannelRef>,
    pub start_ns: u64,
    /// None while the thread is blocked (or when its end was lost).
    pub end_ns: Option<u64>,
    /// The process whose post or wake ended it, when one did.
    pub waker: Option<u32>,
}

/// What a batch did to the session's waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFact {
    /// A wait, ended, or left open for good (its end was lost).
    Whole(Wait),
    /// A wait still in progress when its batch closed.
    Opened(Wait),
    /// The end of a wait reported [`WaitFact::Opened`] earlier.
    Closed {
        id: u64,
        end_ns: u64,
        waker: Option<u32>,
    },
}

/// A wait whose end is still to come.
#[derive(Debug, Clone, Copy)]
struct OpenWait {
    wait: Wait,
    /// Whether an earlier batch reported it open.
    reported: bool,
    source: Source,
}

#[derive(Debug, Default)]
pub struct Waits {
    /// The wait each thread is blocked in (a thread is in one wait at a
    /// time).
    open: HashMap<(u32, u32), OpenWait>,
    /// The process that last posted (or woke) each object: whose post
    /// ended a wait.
    last_post: HashMap<ChannelRef, u32>,
    next_id: u64,
    /// This batch's facts so far.
    facts: Vec<WaitFact>,
}

impl Waits {
    /// Whether `event` can end a wait of its thread's: it is a message
    /// received on the object the thread was blocked receiving from.
    pub fn ends_receive(&self, event: &Event, channel: Option<ChannelRef>) -> bool {
        event.kind == EventKind::MsgRecv
            && self
                .open
                .get(&(event.pid, event.tid))
                .is_some_and(|w| w.wait.channel == channel)
    }

    /// Whether the thread is in a wait ipc-lib reported.
    pub fn in_lib_wait(&self, pid: u32, tid: u32) -> bool {
        self.open
            .get(&(pid, tid))
            .is_some_and(|w| w.source == Source::Lib)
    }

    pub fn event(&mut self, event: &Event, channel: Option<ChannelRef>) {
        let (pid, tid) = (event.pid, event.tid);
        let in_lib_wait = self.in_lib_wait(pid, tid);
        let begins = match event.kind {
            EventKind::SemPost | EventKind::FutexWake => {
                if let Some(ch) = channel {
                    self.last_post.insert(ch, event.pid);
                }
                return;
            }
            // The futex waits under an ipc-lib wait are that wait.
            EventKind::FutexWaitBegin | EventKind::FutexWait
                if in_lib_wait && event.source == Source::Ebpf =>
            {
                return
            }
            EventKind::SemWaitBegin | EventKind::RecvWaitBegin | EventKind::FutexWaitBegin => true,
            // The end of the blocked receive that began `duration_ns`
            // earlier, and of no later wait of the thread's.
            EventKind::RecvWaitEnd => {
                let start = event.ts_ns.saturating_sub(event.duration_ns.unwrap_or(0));
                if self
                    .open
                    .get(&(pid, tid))
                    .is_none_or(|w| w.wait.start_ns != start)
                {
                    return;
                }
                false
            }
            _ => false,
        };
        if begins {
            self.next_id += 1;
            let begun = OpenWait {
                wait: Wait {
                    id: self.next_id,
                    pid,
                    tid,
                    channel,
                    start_ns: event.ts_ns,
                    end_ns: None,
                    waker: None,
                },
                reported: false,
                source: event.source,
            };
            // A begin left open means its end was lost; it stays open.
            if let Some(lost) = self.open.insert((pid, tid), begun) {
                if !lost.reported {
                    self.facts.push(WaitFact::Whole(lost.wait));
                }
            }
            return;
        }
        // Only a successful wait was ended by somebody's post.
        let waker = (event.result == 0)
            .then(|| channel.and_then(|ch| self.last_post.get(&ch).copied()))
            .flatten();
        let mut wait = match self.open.remove(&(pid, tid)) {
            Some(OpenWait {
                wait,
                reported: true,
                ..
            }) => {
                self.facts.push(WaitFact::Closed {
                    id: wait.id,
                    end_ns: event.ts_ns,
                    waker,
                });
                return;
            }
            Some(open) => open.wait,
            None => match event.duration_ns.filter(|&d| d > 0) {
                Some(waited) => {
                    self.next_id += 1;
                    Wait {
                        id: self.next_id,
                        pid,
                        tid,
                        channel,
                        start_ns: event.ts_ns.saturating_sub(waited),
                        end_ns: None,
                        waker: None,
                    }
                }
                None => return,
            },
        };
        wait.end_ns = Some(event.ts_ns);
        wait.waker = waker;
        self.facts.push(WaitFact::Whole(wait));
    }

    /// Process `pid` exited: its threads' waits ended then, by nobody's
    /// post (a deadlocked process killed, a server stopped while blocked).
    /// Left open, they read as still blocked for good.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64) {
        let ended: Vec<(u32, u32)> = self.open.keys().filter(|k| k.0 == pid).copied().collect();
        for key in ended {
            let Some(open) = self.open.remove(&key) else {
                continue;
            };
            self.facts.push(match open.reported {
                true => WaitFact::Closed {
                    id: open.wait.id,
                    end_ns: ts_ns,
                    waker: None,
                },
                false => WaitFact::Whole(Wait {
                    end_ns: Some(ts_ns),
                    ..open.wait
                }),
            });
        }
    }

    /// Closes the batch: waits still open are reported open (once).
    pub fn take(&mut self) -> Vec<WaitFact> {
        for open in self.open.values_mut().filter(|w| !w.reported) {
            open.reported = true;
            self.facts.push(WaitFact::Opened(open.wait));
        }
        std::mem::take(&mut self.facts)
    }
}
