//! The analyzer: every stored event and paired message in, the live
//! feed's state and deadlock rows out.
//!
//! The recording pipeline feeds it the correlation stage's facts, in the
//! writer's order, as soon as their channels have rows and before their
//! events are stored ([`Analyzer::correlated`], or [`Analyzer::event`] and
//! [`Analyzer::message`] one by one), calls [`Analyzer::tick`] on the live
//! feed's tick to learn of deadlocks found and resolved (to store as
//! `deadlocks` rows), then [`Analyzer::delta`] for subscribers. Ingest is a
//! few hash lookups per event and allocates only for things seen for the
//! first time (a process, a channel, a thread that waits).
//!
//! Wiring, with the writer's per-batch observer and the live feed's
//! `FeedSource` (the analyzer behind the feed's `Arc<Mutex<_>>`):
//!
//! ```text
//! // On each batch from the writer, before it stores it:
//! analyzer.correlated(&c.events, &c.channel_ids, &c.messages, &c.signals, c.ingest_dropped);
//! // Every 100 ms (or at analyzer.next_due()), before the feed's delta:
//! for change in analyzer.tick(monotonic_ns()) {
//!     match change {
//!         // INSERT INTO deadlocks (session_id, detected_ns, cycle), with
//!         // cycle = serde_json::to_string(&d.cycle); remember d.id -> row.
//!         DeadlockChange::Detected(d) => {}
//!         // UPDATE deadlocks SET resolved_ns = ? WHERE id = row of `id`.
//!         DeadlockChange::Resolved { id, resolved_ns } => {}
//!         // INSERT INTO lock_order_inversions.
//!         DeadlockChange::Inversion(inversion) => {}
//!     }
//! }
//! // FeedSource::snapshot / delta: Analyzer::snapshot / Analyzer::delta.
//! ```
//!
//! Semaphores (ipc-lib's, and later the probes' futex and SysV waits in
//! the same shape) feed the wait-for graph: a wait begin blocks the thread
//! on the semaphore, a successful end makes it a holder, a post by a
//! holder gives its count back. A semaphore posted by a thread holding no
//! count of it is a signal, not a lock: from then on it has no holders, so
//! it never makes a deadlock or a lock-order inversion out of a thread
//! that merely waits for an event.

use std::collections::VecDeque;

use ipc_events::live::{
    ChannelStats, CycleMember, Deadlock, Delta, DropCount, LockOrderInversion, MessageSample,
    Percentiles, Process, Rates, Resource, SignalStats, Snapshot, Totals, WaitStats,
};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind};

use super::latency::WindowedHistogram;
use super::lockorder::{Inversion, LockOrder};
use super::throughput::Throughput;
use super::waitgraph::{GraphChange, Member, Thread, WaitGraph, DEFAULT_THRESHOLD_NS};
use super::FastMap;
use crate::correlate::{Paired, SignalFact};

/// What `SemPost` carries in `result` when it reclaimed a dead holder's
/// count (`-EOWNERDEAD`); the dead process's exit ends its holds.
const EOWNERDEAD: i64 = -130;
const NS_PER_S: u64 = 1_000_000_000;
/// Seconds after its last activity that a thing's windows still change:
/// the ten-second window, and the second it empties in.
const WINDOW_TAIL_S: u64 = 11;

/// How the analyzer behaves.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    /// How long every member of a cycle must be blocked before it is a
    /// deadlock.
    pub deadlock_threshold_ns: u64,
    /// Paired messages kept per channel for the drill-down.
    pub recent_messages: usize,
    /// Events kept for a snapshot, and the most one delta carries.
    pub recent_events: usize,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            deadlock_threshold_ns: DEFAULT_THRESHOLD_NS,
            recent_messages: 32,
            recent_events: Snapshot::RECENT_EVENTS,
        }
    }
}

/// A deadlock found or ended, for the `deadlocks` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlockChange {
    /// Insert a row: `detected_ns`, and `cycle` as
    /// `serde_json::to_string(&deadlock.cycle)`. `deadlock.id` names it in
    /// this session's live feed and in a later `Resolved`.
    Detected(Deadlock),
    /// Set `resolved_ns` on the row of deadlock `id`.
    Resolved { id: i64, resolved_ns: u64 },
    /// A lock-order inversion, a deadlock that did not happen this time:
    /// insert a `lock_order_inversions` row.
    Inversion(LockOrderInversion),
}

/// One of the session's latency distributions, as a `latency` row stores
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLatency {
    pub of: LatencyOf,
    pub latency: Percentiles,
}

/// What a [`SessionLatency`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LatencyOf {
    /// Send to receive, every message on a channel.
    Channel { channel_id: i64 },
    /// Send to receive between one sender and one receiver on a channel.
    Pair {
        channel_id: i64,
        sender_pid: u32,
        receiver_pid: u32,
    },
    /// How long waits on an object lasted.
    Wait { channel_id: i64 },
    /// Generate to deliver, one signal from one process to another.
    Signal {
        sender_pid: u32,
        target_pid: u32,
        signo: u32,
    },
}

/// A channel that carries messages.
#[derive(Debug)]
struct ChannelState {
    channel: ChannelId,
    senders: Vec<u32>,
    receivers: Vec<u32>,
    /// (sender, receiver) of its paired messages, first seen first.
    pairs: Vec<(u32, u32)>,
    sends: u64,
    recvs: u64,
    bytes: u64,
    paired: u64,
    rate: Throughput,
    latency: WindowedHistogram,
    recent: VecDeque<MessageSample>,
    changed: u64,
}

/// Something waited on: a semaphore, futex or lock.
#[derive(Debug)]
struct WaitState {
    channel: ChannelId,
    waits: u64,
    waiting_now: u32,
    total_ns: u64,
    latency: WindowedHistogram,
    /// Whether holders are tracked: false once posted by a non-holder.
    lock_like: bool,
    /// The processes that waited on it, in the order first seen.
    waiters: Vec<u32>,
    last_ns: u64,
    changed: u64,
}

/// A process: what the feed shows, and its traffic.
#[derive(Debug)]
struct ProcessState {
    info: Process,
    changed: u64,
    rate: Throughput,
}

/// A process's traffic: all its events, and the messages it sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessRates {
    pub pid: u32,
    pub rate_1s: Rates,
    pub rate_10s: Rates,
}

#[derive(Debug, Default)]
struct SignalState {
    count: u64,
    delivered: u64,
    /// Why the kernel sent it (the latest one's), when it did.
    cause: Option<&'static str>,
    latency: WindowedHistogram,
    changed: u64,
}

/// The whole analysis of one session. Sums of sizes and durations, which
/// traced processes report, saturate rather than overflow.
#[derive(Debug)]
pub struct Analyzer {
    config: AnalyzerConfig,
    session_id: i64,
    session_name: String,
    started_ns: u64,
    live: bool,
    /// Bumped per input; entries remember the value when they changed.
    seq: u64,
    totals: Totals,
    rate: Throughput,
    processes: FastMap<u32, ProcessState>,
    /// Names of threads that took part in waits: deadlock members.
    comms: FastMap<Thread, String>,
    seen_channels: FastMap<i64, ()>,
    channels: FastMap<i64, ChannelState>,
    pairs: FastMap<(i64, u32, u32), WindowedHistogram>,
    /// Messages on channels no event named (the caller's ordering bug).
    unattributed_messages: u64,
    waits: FastMap<i64, WaitState>,
    /// Per (sender, target, signo); sender 0 is the kernel.
    signals: FastMap<(u32, u32, u32), SignalState>,
    /// The wait-for graph. Its resources are channel ids, except that a
    /// blocked receive waits on one end of a channel (the two directions
    /// of a socket pair have different senders): those get keys of their
    /// own, negative so they never meet a channel id.
    graph: WaitGraph<i64>,
    /// (channel id, end read through) -> graph key of a blocked receive.
    recv_keys: FastMap<(i64, u64), i64>,
    /// Graph key of a blocked receive -> its channel id.
    recv_channels: FastMap<i64, i64>,
    lock_order: LockOrder<i64>,
    deadlocks: Vec<(Deadlock, u64)>,
    inversions: Vec<LockOrderInversion>,
    inversions_sent: usize,
    /// Inversions [`Analyzer::tick`] has handed out to be stored.
    inversions_stored: usize,
    drops: Vec<DropCount>,
    recent: VecDeque<Event>,
    /// Events in `recent` no delta has carried yet.
    unsent_events: usize,
    /// `seq` and time of the previous delta.
    sent_seq: u64,
    sent_ns: Option<u64>,
}

impl Analyzer {
    /// The analysis of session `session_id`, started at monotonic
    /// `started_ns`.
    pub fn new(
        session_id: i64,
        session_name: impl Into<String>,
        started_ns: u64,
        config: AnalyzerConfig,
    ) -> Self {
        Analyzer {
            graph: WaitGraph::new(config.deadlock_threshold_ns),
            config,
            session_id,
            session_name: session_name.into(),
            started_ns,
            live: true,
            seq: 0,
            totals: Totals::default(),
            rate: Throughput::new(),
            processes: FastMap::default(),
            comms: FastMap::default(),
            seen_channels: FastMap::default(),
            channels: FastMap::default(),
            pairs: FastMap::default(),
            unattributed_messages: 0,
            waits: FastMap::default(),
            signals: FastMap::default(),
            recv_keys: FastMap::default(),
            recv_channels: FastMap::default(),
            lock_order: LockOrder::new(),
            deadlocks: Vec::new(),
            inversions: Vec::new(),
            inversions_sent: 0,
            inversions_stored: 0,
            drops: Vec::new(),
            recent: VecDeque::new(),
            unsent_events: 0,
            sent_seq: 0,
            sent_ns: None,
        }
    }

    /// How many events the writer has not yet stored; shown with the
    /// totals, so a disk that cannot keep up is seen, not hidden.
    pub fn set_unstored(&mut self, events: u64) {
        self.totals.unstored = events;
    }

    /// The recording ended: snapshots and deltas say so, and a snapshot's
    /// windows count its last second as complete, however short.
    pub fn finish(&mut self) {
        self.live = false;
    }

    /// Where a snapshot taken at `now_ns` ends its windows (the last
    /// second, the last ten): at `now_ns` while recording, where the second
    /// under way is still filling and left out; once the recording ended,
    /// at the next whole second, so that its last second counts (a short
    /// session's only one: without it, every rate and latency of a session
    /// that lasted under a second read as none).
    fn windows_end(&self, now_ns: u64) -> u64 {
        const S: u64 = 1_000_000_000;
        match self.live {
            true => now_ns,
            false => now_ns.div_ceil(S).saturating_mul(S),
        }
    }

    /// One correlated batch: events with their `channels.id` (index for
    /// index; a missing id counts as none), the messages and signals the
    /// correlation stage made of them, and events the ingest queue refused
    /// since the previous batch. The events are kept as the feed's recent
    /// events.
    pub fn correlated(
        &mut self,
        events: &[Event],
        channel_ids: &[Option<i64>],
        messages: &[Paired<i64>],
        signals: &[SignalFact],
        ingest_dropped: u64,
    ) {
        debug_assert_eq!(events.len(), channel_ids.len());
        for (i, e) in events.iter().enumerate() {
            self.event(e, channel_ids.get(i).copied().flatten());
        }
        for m in messages {
            self.message(m);
        }
        for s in signals {
            self.signal(s);
        }
        if ingest_dropped > 0 {
            self.dropped("ingest", ingest_dropped);
        }
        self.keep_events(events);
    }

    /// Adds events to the recent list that snapshots and deltas show: the
    /// last few of them, copied (the writer stores the batch meanwhile).
    pub fn keep_events(&mut self, events: &[Event]) {
        let cap = self.config.recent_events;
        let skip = events.len().saturating_sub(cap);
        self.unsent_events = (self.unsent_events + events.len() - skip).min(cap);
        self.recent.extend(events[skip..].iter().cloned());
        while self.recent.len() > cap {
            self.recent.pop_front();
        }
    }

    /// One stored event; `channel_id` is its object's `channels.id`.
    pub fn event(&mut self, e: &Event, channel_id: Option<i64>) {
        self.seq += 1;
        let seq = self.seq;
        self.totals.events += 1;
        self.rate.record(e.ts_ns, 1, 0, 0);
        // A drop record is the collector's, about a source: no process.
        if e.kind != EventKind::Drop {
            self.saw_process(e);
        }
        if let Some(id) = channel_id {
            if self.seen_channels.insert(id, ()).is_none() {
                self.totals.channels += 1;
            }
        }
        let thread = Thread::new(e.pid, e.tid);
        match (e.kind, channel_id, &e.channel) {
            (EventKind::MsgSend | EventKind::MsgRecv, Some(id), Some(ch)) => {
                let c = self.channels.entry(id).or_insert_with(|| ChannelState {
                    channel: ch.clone(),
                    senders: Vec::new(),
                    receivers: Vec::new(),
                    pairs: Vec::new(),
                    sends: 0,
                    recvs: 0,
                    bytes: 0,
                    paired: 0,
                    rate: Throughput::new(),
                    latency: WindowedHistogram::new(),
                    recent: VecDeque::new(),
                    changed: seq,
                });
                c.changed = seq;
                if e.kind == EventKind::MsgSend {
                    c.sends += 1;
                    c.bytes = c.bytes.saturating_add(e.size);
                    c.rate.record(e.ts_ns, 1, 1, e.size);
                    add_pid(&mut c.senders, e.pid);
                    self.totals.messages += 1;
                    self.totals.bytes = self.totals.bytes.saturating_add(e.size);
                    self.rate.record(e.ts_ns, 0, 1, e.size);
                } else {
                    c.recvs += 1;
                    c.rate.record(e.ts_ns, 1, 0, 0);
                    add_pid(&mut c.receivers, e.pid);
                    // The receive the thread was blocked in returned.
                    let waited_here = self
                        .graph
                        .waiting(thread)
                        .is_some_and(|(res, _)| self.recv_channels.get(&res) == Some(&id));
                    if waited_here {
                        self.end_wait(thread, e.ts_ns, e.duration_ns);
                    }
                }
            }
            (EventKind::RecvWaitBegin, Some(id), Some(ch)) => {
                self.name_thread(thread, &e.comm);
                self.waits.entry(id).or_insert_with(|| WaitState {
                    channel: ch.clone(),
                    waits: 0,
                    waiting_now: 0,
                    total_ns: 0,
                    latency: WindowedHistogram::new(),
                    lock_like: false,
                    waiters: Vec::new(),
                    last_ns: 0,
                    changed: seq,
                });
                self.recv_blocked(e, thread, id);
            }
            (EventKind::RecvWaitEnd, Some(id), _) => {
                let key = self.recv_keys.get(&(id, e.endpoint.unwrap_or(0)));
                let since = e.ts_ns.saturating_sub(e.duration_ns.unwrap_or(0));
                if key.is_some_and(|&k| self.graph.waiting(thread) == Some((k, since))) {
                    self.end_wait(thread, e.ts_ns, e.duration_ns);
                }
            }
            (
                EventKind::SemWaitBegin
                | EventKind::SemWaitEnd
                | EventKind::SemPost
                | EventKind::FutexWait
                | EventKind::LockAcquire
                | EventKind::LockRelease,
                Some(id),
                Some(ch),
            ) => {
                self.name_thread(thread, &e.comm);
                self.waits.entry(id).or_insert_with(|| WaitState {
                    channel: ch.clone(),
                    waits: 0,
                    waiting_now: 0,
                    total_ns: 0,
                    latency: WindowedHistogram::new(),
                    lock_like: true,
                    waiters: Vec::new(),
                    last_ns: 0,
                    changed: seq,
                });
                self.wait_event(e, thread, id);
            }
            (EventKind::ProcessExit, _, _) => self.process_exited(e),
            (EventKind::Drop, _, _) => self.dropped(drop_name(e.aux), e.size),
            _ => {}
        }
    }

    fn wait_event(&mut self, e: &Event, thread: Thread, id: i64) {
        match e.kind {
            EventKind::SemWaitBegin => {
                self.end_wait(thread, e.ts_ns, None);
                self.graph.block(thread, id, e.ts_ns);
                if let Some(w) = self.touch_wait(id, e.ts_ns) {
                    w.waiting_now += 1;
                    add_pid(&mut w.waiters, thread.pid);
                }
            }
            EventKind::SemWaitEnd => {
                self.end_wait(thread, e.ts_ns, e.duration_ns);
                if e.result == 0 {
                    self.acquired(thread, id, e.ts_ns);
                }
            }
            EventKind::SemPost | EventKind::LockRelease => {
                if self.graph.release(thread, id, e.ts_ns) {
                    self.lock_order.release(thread, id);
                } else if e.kind == EventKind::SemPost && e.result != EOWNERDEAD {
                    // Posted by a thread that holds none: used as a
                    // signal, so its holders prove nothing.
                    let was_lock = self
                        .touch_wait(id, e.ts_ns)
                        .is_some_and(|w| std::mem::replace(&mut w.lock_like, false));
                    if was_lock {
                        self.graph.set_releasers(id, &[], e.ts_ns);
                        self.lock_order.forget(id);
                    }
                }
            }
            EventKind::LockAcquire => {
                if let Some(d) = e.duration_ns {
                    self.count_wait(id, thread, e.ts_ns, d);
                }
                self.acquired(thread, id, e.ts_ns);
            }
            // The probes see a futex wait once, when it ends.
            EventKind::FutexWait => {
                if let Some(d) = e.duration_ns {
                    self.count_wait(id, thread, e.ts_ns, d);
                }
            }
            _ => {}
        }
        self.touch_wait(id, e.ts_ns);
    }

    /// `thread` has been blocked receiving on channel `id` since the
    /// event's time; the event names who could send.
    fn recv_blocked(&mut self, e: &Event, thread: Thread, id: i64) {
        let next = -(self.recv_keys.len() as i64) - 1;
        let key = *self
            .recv_keys
            .entry((id, e.endpoint.unwrap_or(0)))
            .or_insert(next);
        self.recv_channels.insert(key, id);
        self.end_wait(thread, e.ts_ns, None);
        self.graph.block(thread, key, e.ts_ns);
        let releasers: Vec<Thread> = e
            .releasers
            .iter()
            .map(|&(pid, tid)| Thread::new(pid, tid))
            .collect();
        self.graph.set_releasers(key, &releasers, e.ts_ns);
        let idle: Vec<Thread> = e
            .idle_releasers
            .iter()
            .map(|&(pid, tid)| Thread::new(pid, tid))
            .collect();
        self.graph.set_idle_releasers(key, &idle);
        if let Some(w) = self.touch_wait(key, e.ts_ns) {
            w.waiting_now += 1;
            add_pid(&mut w.waiters, thread.pid);
        }
    }

    /// The state of what `id` names (a graph key: a blocked receive's
    /// counts under its channel's), marked changed at `ts_ns`. Every id
    /// the graph knows was first seen in a wait event, which created it.
    fn touch_wait(&mut self, id: i64, ts_ns: u64) -> Option<&mut WaitState> {
        let id = self.recv_channels.get(&id).copied().unwrap_or(id);
        let seq = self.seq;
        let w = self.waits.get_mut(&id)?;
        w.changed = seq;
        w.last_ns = w.last_ns.max(ts_ns);
        Some(w)
    }

    /// A wait by `thread` on `id` ended after `duration_ns`. Waits seen
    /// only when they end (a futex, a lock taken after blocking) name
    /// their waiter here; a blocked one was named when it began.
    fn count_wait(&mut self, id: i64, thread: Thread, ts_ns: u64, duration_ns: u64) {
        self.totals.waits += 1;
        if let Some(w) = self.touch_wait(id, ts_ns) {
            add_pid(&mut w.waiters, thread.pid);
            w.waits += 1;
            w.total_ns = w.total_ns.saturating_add(duration_ns);
            w.latency.record(ts_ns, duration_ns);
        }
    }

    /// `thread`'s wait (on whatever it waited for) ended at `ts_ns`.
    fn end_wait(&mut self, thread: Thread, ts_ns: u64, duration_ns: Option<u64>) {
        let Some((res, since)) = self.graph.waiting(thread) else {
            return;
        };
        self.graph.unblock(thread, ts_ns);
        if let Some(w) = self.touch_wait(res, ts_ns) {
            w.waiting_now = w.waiting_now.saturating_sub(1);
        }
        self.count_wait(
            res,
            thread,
            ts_ns,
            duration_ns.unwrap_or(ts_ns.saturating_sub(since)),
        );
    }

    fn acquired(&mut self, thread: Thread, id: i64, ts_ns: u64) {
        if !self.touch_wait(id, ts_ns).is_some_and(|w| w.lock_like) {
            return;
        }
        self.graph.acquire(thread, id, ts_ns);
        for inv in self.lock_order.acquire(thread, id, ts_ns) {
            self.inversion(inv);
        }
    }

    /// A current holder of semaphore `channel_id`, as ipc-lib names one at
    /// a wait begin. Used when the analysis has seen no holder (the count
    /// was taken before the recording started).
    pub fn holder_hint(&mut self, channel_id: i64, holder: Thread, ts_ns: u64) {
        let lock_like = self.waits.get(&channel_id).is_some_and(|w| w.lock_like);
        if lock_like && self.graph.releasers(channel_id).next().is_none() {
            self.graph.acquire(holder, channel_id, ts_ns);
            // Its holders changed: the next delta carries them.
            self.touch_wait(channel_id, ts_ns);
        }
    }

    fn inversion(&mut self, inv: Inversion<i64>) {
        let (Some(first), Some(second)) = (self.resource(inv.first), self.resource(inv.second))
        else {
            return;
        };
        self.inversions.push(LockOrderInversion {
            first,
            second,
            first_pid: inv.first_order.thread.pid,
            second_pid: inv.second_order.thread.pid,
            seen_ns: inv.second_order.ts_ns,
            first_seen_ns: inv.first_order.ts_ns,
        });
    }

    fn resource(&self, id: i64) -> Option<Resource> {
        let id = self.recv_channels.get(&id).copied().unwrap_or(id);
        let channel = self
            .waits
            .get(&id)
            .map(|w| &w.channel)
            .or_else(|| self.channels.get(&id).map(|c| &c.channel))?;
        Some(Resource {
            channel_id: Some(id),
            kind: channel.kind(),
            name: channel.name(),
        })
    }

    fn name_thread(&mut self, thread: Thread, comm: &str) {
        match self.comms.get_mut(&thread) {
            Some(c) if c == comm => {}
            Some(c) => comm.clone_into(c),
            None => {
                self.comms.insert(thread, comm.to_owned());
            }
        }
    }

    fn saw_process(&mut self, e: &Event) {
        let seq = self.seq;
        let p = match self.processes.get_mut(&e.pid) {
            Some(p) => {
                let info = &mut p.info;
                let renamed = e.kind == EventKind::ProcessExec || info.comm.is_empty();
                if renamed && !e.comm.is_empty() && info.comm != e.comm {
                    e.comm.clone_into(&mut info.comm);
                    p.changed = seq;
                }
                if e.kind == EventKind::ProcessStart {
                    info.ppid = e.aux as u32;
                    p.changed = seq;
                }
                if let (EventKind::ProcessTitle, Some(title)) = (e.kind, &e.path) {
                    if info.title.as_ref() != Some(title) {
                        info.title = Some(title.clone());
                        p.changed = seq;
                    }
                }
                p
            }
            None => {
                self.totals.processes += 1;
                let info = Process {
                    pid: e.pid,
                    ppid: if e.kind == EventKind::ProcessStart {
                        e.aux as u32
                    } else {
                        0
                    },
                    comm: e.comm.clone(),
                    exited: false,
                    title: (e.kind == EventKind::ProcessTitle)
                        .then(|| e.path.clone())
                        .flatten(),
                };
                self.processes.entry(e.pid).or_insert(ProcessState {
                    info,
                    changed: seq,
                    rate: Throughput::new(),
                })
            }
        };
        let (messages, bytes) = match e.kind {
            EventKind::MsgSend => (1, e.size),
            _ => (0, 0),
        };
        p.rate.record(e.ts_ns, 1, messages, bytes);
    }

    fn process_exited(&mut self, e: &Event) {
        let seq = self.seq;
        if let Some(p) = self.processes.get_mut(&e.pid) {
            p.info.exited = true;
            p.changed = seq;
        }
        // What it held loses a holder: the next delta must say so.
        let held: Vec<i64> = self
            .waits
            .iter()
            .filter(|(&id, w)| w.lock_like && self.graph.releasers(id).any(|t| t.pid == e.pid))
            .map(|(&id, _)| id)
            .collect();
        // Its waits ended with it, as the correlation stage ends them in
        // `waits`: counted, so the dashboard's figures are the table's.
        for (thread, res, since) in self.graph.process_exited(e.pid, e.ts_ns) {
            if let Some(w) = self.touch_wait(res, e.ts_ns) {
                w.waiting_now = w.waiting_now.saturating_sub(1);
            }
            self.count_wait(res, thread, e.ts_ns, e.ts_ns.saturating_sub(since));
        }
        for id in held {
            self.touch_wait(id, e.ts_ns);
        }
        self.lock_order.process_exited(e.pid);
        // Deadlocks already name their members; nothing else needs these.
        self.comms.retain(|t, _| t.pid != e.pid);
    }

    /// A signal the correlation stage saw generated or delivered.
    pub fn signal(&mut self, fact: &SignalFact) {
        self.seq += 1;
        let (signal, delivered_ns) = match *fact {
            SignalFact::Generated(s) => (s, None),
            SignalFact::Delivered {
                signal,
                delivered_ns,
            } => (signal, Some(delivered_ns)),
        };
        let key = (signal.sender.unwrap_or(0), signal.target, signal.signo);
        let s = self.signals.entry(key).or_default();
        s.changed = self.seq;
        s.cause = signal.cause.or(s.cause);
        match delivered_ns {
            None => {
                self.totals.signals += 1;
                s.count += 1;
            }
            Some(at) => {
                s.delivered += 1;
                s.latency.record(at, at.saturating_sub(signal.generated_ns));
            }
        }
    }

    /// `count` events lost by `source` (a `drops.source` name).
    pub fn dropped(&mut self, source: &str, count: u64) {
        self.seq += 1;
        self.totals.drops = self.totals.drops.saturating_add(count);
        match self.drops.iter_mut().find(|d| d.source == source) {
            Some(d) => d.count = d.count.saturating_add(count),
            None => self.drops.push(DropCount {
                source: source.to_owned(),
                count,
            }),
        }
    }

    /// A send paired with its receive. Call it after the events of the
    /// same batch: the channel is known from them. Returns false (and
    /// counts it in `unattributed_messages`) for a channel no event named.
    pub fn message(&mut self, m: &Paired<i64>) -> bool {
        self.seq += 1;
        let id = m.channel;
        let Some(c) = self.channels.get_mut(&id) else {
            self.unattributed_messages += 1;
            return false;
        };
        // The pairers never pair a receive before its send; saturate
        // rather than wrap if a clock ever says otherwise.
        let latency = m.recv.ts_ns.saturating_sub(m.send.ts_ns);
        c.paired += 1;
        c.latency.record(m.recv.ts_ns, latency);
        c.changed = self.seq;
        if self.config.recent_messages > 0 {
            if c.recent.len() == self.config.recent_messages {
                c.recent.pop_front();
            }
            c.recent.push_back(MessageSample {
                sent_ns: m.send.ts_ns,
                latency_ns: latency,
                size: m.send.size,
                sender_pid: m.send.pid,
                receiver_pid: m.recv.pid,
                payload: None,
            });
        }
        let pair = self
            .pairs
            .entry((id, m.send.pid, m.recv.pid))
            .or_insert_with(|| {
                c.pairs.push((m.send.pid, m.recv.pid));
                Default::default()
            });
        pair.record(m.recv.ts_ns, latency);
        true
    }

    /// Confirms and resolves deadlocks as of `now_ns`. Call it on every
    /// feed tick (and before [`Analyzer::delta`]), or at
    /// [`Analyzer::next_due`] for the promptest detection.
    pub fn tick(&mut self, now_ns: u64) -> Vec<DeadlockChange> {
        let mut out = Vec::new();
        // Idle helper threads are checked again, in /proc, before a cycle
        // through them is confirmed; only the probes name any.
        let proc = std::path::Path::new("/proc");
        let still_idle = |t: Thread| crate::ebpf::blocked::thread_idle(proc, t.pid, t.tid);
        for change in self.graph.tick_with(now_ns, still_idle) {
            self.seq += 1;
            match change {
                GraphChange::Detected {
                    id,
                    detected_ns,
                    cycle,
                } => {
                    let d = Deadlock {
                        id: id as i64,
                        detected_ns,
                        resolved_ns: None,
                        cycle: cycle
                            .iter()
                            .map(|m| CycleMember {
                                idle_threads: self.graph.idle_threads(&cycle, m.thread.pid),
                                ..self.cycle_member(m)
                            })
                            .collect(),
                    };
                    self.deadlocks.push((d.clone(), self.seq));
                    out.push(DeadlockChange::Detected(d));
                }
                GraphChange::Resolved { id, resolved_ns } => {
                    let id = id as i64;
                    if let Some((d, changed)) = self.deadlocks.iter_mut().find(|(d, _)| d.id == id)
                    {
                        d.resolved_ns = Some(resolved_ns);
                        *changed = self.seq;
                    }
                    out.push(DeadlockChange::Resolved { id, resolved_ns });
                }
            }
        }
        out.extend(
            self.inversions[self.inversions_stored..]
                .iter()
                .cloned()
                .map(DeadlockChange::Inversion),
        );
        self.inversions_stored = self.inversions.len();
        out
    }

    /// When the earliest pending cycle reaches the threshold.
    pub fn next_due(&self) -> Option<u64> {
        self.graph.next_due()
    }

    fn cycle_member(&self, m: &Member<i64>) -> CycleMember {
        let comm = self
            .comms
            .get(&m.thread)
            .or_else(|| self.processes.get(&m.thread.pid).map(|p| &p.info.comm))
            .cloned()
            .unwrap_or_default();
        let waits_for = self.resource(m.waits_for).unwrap_or(Resource {
            channel_id: Some(m.waits_for),
            kind: ChannelKind::Sem,
            name: String::new(),
        });
        CycleMember {
            pid: m.thread.pid,
            tid: m.thread.tid,
            comm,
            waits_for,
            idle_threads: Vec::new(),
        }
    }

    /// Paired messages on channels no event had named, so not counted
    /// anywhere else: zero when the caller feeds events before messages.
    pub fn unattributed_messages(&self) -> u64 {
        self.unattributed_messages
    }

    /// Inversions found so far.
    pub fn inversions(&self) -> &[LockOrderInversion] {
        &self.inversions
    }

    /// Every latency distribution of the session so far, over the whole
    /// session: per channel, per (channel, sender, receiver), per waited-on
    /// object and per (sender, target, signal). Empty ones are left out.
    pub fn session_latencies(&self) -> Vec<SessionLatency> {
        let channels = self
            .channels
            .iter()
            .map(|(&channel_id, c)| (LatencyOf::Channel { channel_id }, c.latency.session()));
        let pairs = self
            .pairs
            .iter()
            .map(|(&(channel_id, sender_pid, receiver_pid), h)| {
                let of = LatencyOf::Pair {
                    channel_id,
                    sender_pid,
                    receiver_pid,
                };
                (of, h.session())
            });
        let waits = self
            .waits
            .iter()
            .map(|(&channel_id, w)| (LatencyOf::Wait { channel_id }, w.latency.session()));
        let signals = self
            .signals
            .iter()
            .map(|(&(sender_pid, target_pid, signo), s)| {
                let of = LatencyOf::Signal {
                    sender_pid,
                    target_pid,
                    signo,
                };
                (of, s.latency.session())
            });
        let mut out: Vec<SessionLatency> = channels
            .chain(pairs)
            .chain(waits)
            .chain(signals)
            .filter(|(_, latency)| latency.count > 0)
            .map(|(of, latency)| SessionLatency { of, latency })
            .collect();
        out.sort_by_key(|l| l.of);
        out
    }

    /// The whole state at `now_ns`.
    pub fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        let windows = self.windows_end(now_ns);
        let channels = self.channel_stats(windows, |_| true);
        let waits = self.wait_stats(windows, |_| true);
        Snapshot {
            session_id: self.session_id,
            session_name: self.session_name.clone(),
            live: self.live,
            started_ns: self.started_ns,
            now_ns,
            totals: self.totals,
            rate_1s: self.rate.rate_1s(windows),
            seconds: self.rate.history(windows),
            processes: self.process_list(|_| true),
            channels,
            waits,
            signals: self.signal_stats(|_| true),
            deadlocks: self.deadlocks.iter().map(|(d, _)| d.clone()).collect(),
            inversions: self.inversions.clone(),
            drops: self.drops.clone(),
            recent_events: self.recent.iter().cloned().collect(),
        }
    }

    /// What changed since the previous delta (or since the start): entries
    /// that changed, and those whose windows rolled since (a second
    /// started) while they were active in the last ten seconds.
    pub fn delta(&mut self, now_ns: u64) -> Delta {
        let since = self.sent_seq;
        let rolled = self
            .sent_ns
            .is_none_or(|prev| prev / NS_PER_S != now_ns / NS_PER_S);
        let active_from = (now_ns / NS_PER_S).saturating_sub(WINDOW_TAIL_S) * NS_PER_S;
        let changed = |seq: u64| seq > since;
        let channels = self.channel_stats(now_ns, |c| {
            changed(c.changed) || (rolled && c.rate.active_since(active_from))
        });
        let waits = self.wait_stats(now_ns, |w| {
            changed(w.changed) || (rolled && w.last_ns >= active_from)
        });
        let from_ns = self.sent_ns.unwrap_or(0);
        let events = self
            .recent
            .iter()
            .skip(self.recent.len().saturating_sub(self.unsent_events))
            .cloned()
            .collect();
        let delta = Delta {
            live: self.live,
            now_ns,
            totals: self.totals,
            rate_1s: self.rate.rate_1s(now_ns),
            seconds: self.rate.seconds(from_ns, now_ns),
            processes: self.process_list(|seq| seq > since),
            channels,
            waits,
            signals: self.signal_stats(|s| changed(s.changed)),
            deadlocks: self
                .deadlocks
                .iter()
                .filter(|(_, seq)| changed(*seq))
                .map(|(d, _)| d.clone())
                .collect(),
            inversions: self.inversions[self.inversions_sent..].to_vec(),
            drops: self.drops.clone(),
            events,
        };
        self.inversions_sent = self.inversions.len();
        self.unsent_events = 0;
        self.sent_seq = self.seq;
        self.sent_ns = Some(now_ns);
        delta
    }

    fn process_list(&self, include: impl Fn(u64) -> bool) -> Vec<Process> {
        let mut out: Vec<Process> = self
            .processes
            .values()
            .filter(|p| include(p.changed))
            .map(|p| p.info.clone())
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Each process's rates over the last second and ten seconds (the
    /// live model has no place for them yet).
    pub fn process_rates(&self, now_ns: u64) -> Vec<ProcessRates> {
        let mut out: Vec<ProcessRates> = self
            .processes
            .iter()
            .map(|(&pid, p)| ProcessRates {
                pid,
                rate_1s: p.rate.rate_1s(now_ns),
                rate_10s: p.rate.rate_10s(now_ns),
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    fn channel_stats(
        &mut self,
        now_ns: u64,
        include: impl Fn(&ChannelState) -> bool,
    ) -> Vec<ChannelStats> {
        let mut out: Vec<ChannelStats> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| include(c))
            .map(|(&id, c)| ChannelStats {
                id,
                channel: c.channel.clone(),
                senders: c.senders.clone(),
                receivers: c.receivers.clone(),
                pairs: c.pairs.clone(),
                messages: c.sends,
                bytes: c.bytes,
                rate_1s: c.rate.rate_1s(now_ns),
                rate_10s: c.rate.rate_10s(now_ns),
                latency: c.latency.latency(now_ns),
                queue_depth: queue_depth(c),
                recent: c.recent.iter().cloned().collect(),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    fn wait_stats(&mut self, now_ns: u64, include: impl Fn(&WaitState) -> bool) -> Vec<WaitStats> {
        let graph = &self.graph;
        let mut out: Vec<WaitStats> = self
            .waits
            .iter_mut()
            .filter(|(_, w)| include(w))
            .map(|(&id, w)| {
                let mut holders = Vec::new();
                // The releasers of what is not a lock are whoever might
                // post it: not holders.
                if w.lock_like {
                    graph
                        .releasers(id)
                        .for_each(|t| add_pid(&mut holders, t.pid));
                }
                WaitStats {
                    id,
                    channel: w.channel.clone(),
                    waits: w.waits,
                    waiting_now: w.waiting_now,
                    total_ns: w.total_ns,
                    latency: w.latency.latency(now_ns),
                    waiters: w.waiters.clone(),
                    holders,
                }
            })
            .collect();
        out.sort_by_key(|w| w.id);
        out
    }

    fn signal_stats(&self, include: impl Fn(&SignalState) -> bool) -> Vec<SignalStats> {
        let mut out: Vec<SignalStats> = self
            .signals
            .iter()
            .filter(|(_, s)| include(s))
            .map(|(&(sender_pid, target_pid, signo), s)| SignalStats {
                sender_pid,
                target_pid,
                signo,
                count: s.count,
                delivered: s.delivered,
                latency: s.latency.session(),
                cause: s.cause.map(str::to_owned),
            })
            .collect();
        out.sort_by_key(SignalStats::key);
        out
    }
}

/// Messages sent and not yet received, where that can be known: ipc-lib
/// channels and record-oriented kinds count receives exactly; for byte
/// streams a receive may take part of a message, so the sends not yet
/// paired are what is in flight.
fn queue_depth(c: &ChannelState) -> Option<u64> {
    // With one end not traced, what it took (or put in) is unknown.
    if c.senders.is_empty() || c.receivers.is_empty() {
        return None;
    }
    match c.channel.kind() {
        ChannelKind::IpclibChannel
        | ChannelKind::Mq
        | ChannelKind::SysvMsg
        | ChannelKind::UnixDgram
        | ChannelKind::UnixSeqpacket => Some(c.sends.saturating_sub(c.recvs)),
        ChannelKind::Pipe | ChannelKind::Fifo | ChannelKind::UnixStream => {
            Some(c.sends.saturating_sub(c.paired))
        }
        _ => None,
    }
}

fn add_pid(pids: &mut Vec<u32>, pid: u32) {
    if !pids.contains(&pid) {
        pids.push(pid);
    }
}

/// The `drops.source` name of a drop record's `aux`.
fn drop_name(code: u64) -> &'static str {
    crate::store::drop_source_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::Side;
    use ipc_events::raw::drop_source;
    use ipc_events::Source;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn analyzer() -> Analyzer {
        Analyzer::new(1, "t", 0, AnalyzerConfig::default())
    }

    fn sem_event(ts: u64, kind: EventKind, pid: u32, sem: &str, result: i64) -> Event {
        let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
        e.comm = format!("proc{pid}");
        e.channel = Some(ChannelId::named(ChannelKind::IpclibSem, sem));
        e.result = result;
        e
    }

    /// Semaphore names to `channels.id`s, as the writer would give them.
    fn sem_id(sem: &str) -> i64 {
        match sem {
            "a" => 10,
            "b" => 11,
            _ => 12,
        }
    }

    fn feed(a: &mut Analyzer, events: Vec<Event>) {
        let ids: Vec<Option<i64>> = events
            .iter()
            .map(|e| match &e.channel {
                Some(ChannelId::Named { name, .. }) => Some(sem_id(name)),
                Some(_) => Some(1),
                None => None,
            })
            .collect();
        a.correlated(&events, &ids, &[], &[], 0);
    }

    /// pid takes `first`, then blocks on `second`.
    fn take_then_wait(ts: u64, pid: u32, first: &str, second: &str) -> Vec<Event> {
        vec![
            sem_event(ts, EventKind::SemWaitEnd, pid, first, 0),
            sem_event(ts + 1, EventKind::SemWaitBegin, pid, second, 0),
        ]
    }

    /// A server's processes all read `postgres`: the title each gave
    /// itself is what the feed names them by (issue 17).
    #[test]
    fn a_process_that_retitles_itself_is_named_by_its_title() {
        let mut a = analyzer();
        let mut start = Event::new(MS, 7, 7, Source::Ebpf, EventKind::ProcessStart);
        start.comm = "postgres".into();
        let mut titled = Event::new(2 * MS, 7, 7, Source::Ebpf, EventKind::ProcessTitle);
        titled.comm = "postgres".into();
        titled.path = Some("postgres: checkpointer".into());
        feed(&mut a, vec![start]);
        let before = a.snapshot(3 * MS);
        assert_eq!(before.processes[0].name(), "postgres");
        feed(&mut a, vec![titled]);
        let delta = a.delta(4 * MS);
        let changed: Vec<_> = delta.processes.iter().map(|p| p.name()).collect();
        assert_eq!(changed, ["postgres: checkpointer"]);
        assert_eq!(a.snapshot(5 * MS).processes[0].comm, "postgres");
    }

    /// The dashboard's process view says who waits on what and who holds
    /// it; a holder that exits stops holding in the very next delta.
    #[test]
    fn waits_name_their_waiters_and_current_holders() {
        let mut a = analyzer();
        feed(&mut a, take_then_wait(10 * MS, 100, "a", "b"));
        feed(&mut a, take_then_wait(20 * MS, 200, "b", "a"));
        let who = |w: &WaitStats| (w.id, w.waiters.clone(), w.holders.clone());
        let snap = a.snapshot(30 * MS);
        let mut waits: Vec<_> = snap.waits.iter().map(who).collect();
        waits.sort();
        assert_eq!(
            waits,
            [(10, vec![200], vec![100]), (11, vec![100], vec![200])]
        );
        a.delta(30 * MS);

        feed(
            &mut a,
            vec![Event::new(
                40 * MS,
                200,
                200,
                Source::Ebpf,
                EventKind::ProcessExit,
            )],
        );
        let mut waits: Vec<_> = a.delta(50 * MS).waits.iter().map(who).collect();
        waits.sort();
        assert_eq!(
            waits,
            [(10, vec![200], vec![100]), (11, vec![100], vec![])],
            "the waiters stay, as senders do; 200's hold on b is gone"
        );
    }

    /// A wait its process's exit ended counts, as the `waits` table ends
    /// it: a deadlocked locker killed after 2.8 s read as `waits 0`.
    #[test]
    fn a_wait_ended_by_its_process_exiting_counts() {
        let mut a = analyzer();
        feed(&mut a, take_then_wait(10 * MS, 100, "a", "b"));
        let exit = Event::new(310 * MS, 100, 100, Source::Ebpf, EventKind::ProcessExit);
        feed(&mut a, vec![exit]);
        let s = a.snapshot(400 * MS);
        let b = s.waits.iter().find(|w| w.id == 11).unwrap();
        assert_eq!((b.waits, b.waiting_now), (1, 0));
        assert_eq!(b.total_ns, 300 * MS - 1);
    }

    #[test]
    fn two_processes_deadlocked_on_two_semaphores_are_one_deadlock() {
        let mut a = analyzer();
        feed(&mut a, take_then_wait(10 * MS, 100, "a", "b"));
        feed(&mut a, take_then_wait(20 * MS, 200, "b", "a"));
        assert!(a.tick(100 * MS).is_empty(), "not blocked long enough");
        let changes = a.tick(300 * MS);
        assert_eq!(changes.len(), 1);
        let DeadlockChange::Detected(d) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(d.detected_ns, 300 * MS);
        let named: Vec<_> = d
            .cycle
            .iter()
            .map(|m| (m.pid, m.comm.as_str(), m.waits_for.name.as_str()))
            .collect();
        assert_eq!(named, [(100, "proc100", "b"), (200, "proc200", "a")]);
        assert_eq!(d.cycle[0].waits_for.channel_id, Some(11));
        assert_eq!(d.cycle[0].waits_for.kind, ChannelKind::IpclibSem);
        // What the lead stores as `deadlocks.cycle`.
        let json = serde_json::to_string(&d.cycle).unwrap();
        assert!(json.contains(r#""waits_for":{"channel_id":11,"kind":"ipclib_sem","name":"b"}"#));
        assert!(a.tick(400 * MS).is_empty(), "reported once");

        let snap = a.snapshot(400 * MS);
        assert_eq!(snap.active_deadlocks().count(), 1);
        let b = snap.waits.iter().find(|w| w.id == 11).unwrap();
        assert_eq!(b.waiting_now, 1);

        // 200 is killed: its wait ends, and so does the deadlock.
        feed(
            &mut a,
            vec![Event::new(
                500 * MS,
                200,
                200,
                Source::Ebpf,
                EventKind::ProcessExit,
            )],
        );
        assert_eq!(
            a.tick(600 * MS),
            [DeadlockChange::Resolved {
                id: d.id,
                resolved_ns: 500 * MS
            }]
        );
        let delta = a.delta(600 * MS);
        assert_eq!(delta.deadlocks.len(), 1);
        assert_eq!(delta.deadlocks[0].resolved_ns, Some(500 * MS));
        let a_waits = delta.waits.iter().find(|w| w.id == 10).unwrap();
        assert_eq!(a_waits.waiting_now, 0, "the killed waiter no longer waits");
    }

    /// Events come from traced processes, which may write anything into
    /// their rings: any sequence of valid events, in any order, with any
    /// times, results and sizes, must be taken without a panic, and the
    /// state must stay consistent with what was fed.
    fn any_event() -> impl Strategy<Value = (Event, Option<i64>)> {
        (
            0usize..EventKind::ALL.len(),
            prop_oneof![3 => 0u64..5 * S, 1 => any::<u64>()],
            1u32..6,
            0i64..4,
            any::<i64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            1u32..6,
        )
            .prop_map(|(kind, ts, pid, chan, result, size, duration, target)| {
                let kind = EventKind::ALL[kind];
                let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
                e.result = result;
                e.size = size;
                e.duration_ns = duration;
                e.aux = u64::from(target) + 8;
                e.target_pid = Some(target);
                e.msg_id = Some(size);
                let id = (kind.needs_channel() || chan == 0).then_some(chan);
                e.channel = id.map(|c| {
                    let kind = if c % 2 == 0 {
                        ChannelKind::IpclibSem
                    } else {
                        ChannelKind::IpclibChannel
                    };
                    ChannelId::named(kind, format!("o{c}"))
                });
                (e, id)
            })
    }

    proptest! {
        // Each case grows histograms to an hour's range: keep it quick.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_event_sequence_is_taken_without_a_panic(
            events in proptest::collection::vec(any_event(), 0..400),
            now in 0u64..10 * S,
        ) {
            let mut a = analyzer();
            let n = events.len() as u64;
            let (events, ids): (Vec<Event>, Vec<Option<i64>>) = events.into_iter().unzip();
            let drops: u64 = events
                .iter()
                .filter(|e| e.kind == EventKind::Drop)
                .fold(0u64, |sum, e| sum.saturating_add(e.size));
            a.correlated(&events, &ids, &[paired(1, 0)], &[], 0);
            a.tick(now);
            let snap = a.snapshot(now);
            prop_assert_eq!(snap.totals.events, n);
            prop_assert_eq!(snap.totals.drops, drops);
            for d in a.tick(now + 10 * S) {
                if let DeadlockChange::Detected(d) = d {
                    prop_assert!(!d.cycle.is_empty());
                }
            }
            let delta = a.delta(now + 10 * S);
            let mut rebuilt = snap;
            rebuilt.apply(delta);
        }
    }

    #[test]
    fn the_live_feed_can_own_it_on_another_task() {
        fn send<T: Send>() {}
        send::<Analyzer>();
    }

    #[test]
    fn a_holder_named_by_ipc_lib_completes_a_cycle_taken_before_the_recording() {
        let mut a = analyzer();
        // 100 took "a" before anything was recorded; 200 holds "b".
        feed(
            &mut a,
            vec![sem_event(0, EventKind::SemWaitEnd, 200, "b", 0)],
        );
        feed(
            &mut a,
            vec![sem_event(1, EventKind::SemWaitBegin, 200, "a", 0)],
        );
        a.holder_hint(sem_id("a"), Thread::new(100, 100), 1);
        feed(
            &mut a,
            vec![sem_event(2, EventKind::SemWaitBegin, 100, "b", 0)],
        );
        let changes = a.tick(S);
        assert_eq!(changes.len(), 1, "{changes:?}");
        // A hint for a semaphore with a known holder changes nothing.
        a.holder_hint(sem_id("b"), Thread::new(300, 300), 2);
        assert!(a.tick(2 * S).is_empty());
    }

    #[test]
    fn opposite_lock_orders_in_two_processes_are_an_inversion_without_a_hang() {
        let mut a = analyzer();
        let take = |ts, pid, sem| sem_event(ts, EventKind::SemWaitEnd, pid, sem, 0);
        let post = |ts, pid, sem| sem_event(ts, EventKind::SemPost, pid, sem, 0);
        feed(
            &mut a,
            vec![
                take(1, 100, "a"),
                take(2, 100, "b"),
                post(3, 100, "b"),
                post(4, 100, "a"),
            ],
        );
        feed(
            &mut a,
            vec![
                take(5, 200, "b"),
                take(6, 200, "a"),
                post(7, 200, "a"),
                post(8, 200, "b"),
            ],
        );
        let inv = a.inversions();
        assert_eq!(inv.len(), 1);
        assert_eq!((inv[0].first_pid, inv[0].second_pid), (100, 200));
        assert_eq!(inv[0].first.name, "a");
        assert_eq!(inv[0].second.name, "b");
        // Nothing hung: the one change is the inversion, to be stored once.
        let changes = a.tick(10 * S);
        assert!(
            matches!(&changes[..], [DeadlockChange::Inversion(i)] if i.first_seen_ns == 2 && i.seen_ns == 6),
            "{changes:?}"
        );
        assert!(a.tick(11 * S).is_empty(), "stored once");
        assert_eq!(a.delta(10 * S).inversions.len(), 1);
        assert!(a.delta(11 * S).inversions.is_empty(), "sent once");
    }

    #[test]
    fn a_semaphore_used_as_a_signal_never_deadlocks() {
        let mut a = analyzer();
        // 100 waits for an event twice; 200 posts it late the second time.
        feed(
            &mut a,
            vec![
                sem_event(1, EventKind::SemWaitEnd, 100, "c", 0),
                sem_event(2, EventKind::SemWaitBegin, 100, "c", 0),
            ],
        );
        // Until a non-holder posts, it looks like 100 waits for itself.
        feed(&mut a, vec![sem_event(3, EventKind::SemPost, 200, "c", 0)]);
        feed(
            &mut a,
            vec![sem_event(4, EventKind::SemWaitEnd, 100, "c", 0)],
        );
        feed(
            &mut a,
            vec![sem_event(5, EventKind::SemWaitBegin, 100, "c", 0)],
        );
        assert!(a.tick(10 * S).is_empty());
    }

    #[test]
    fn a_wait_that_times_out_counts_and_breaks_the_cycle() {
        let mut a = analyzer();
        feed(&mut a, take_then_wait(0, 100, "a", "b"));
        feed(&mut a, take_then_wait(0, 200, "b", "a"));
        let mut timeout = sem_event(150 * MS, EventKind::SemWaitEnd, 200, "a", -110);
        timeout.duration_ns = Some(150 * MS);
        feed(&mut a, vec![timeout]);
        assert!(a.tick(S).is_empty());
        let snap = a.snapshot(S);
        let w = snap.waits.iter().find(|w| w.id == 10).unwrap();
        assert_eq!((w.waits, w.waiting_now, w.total_ns), (1, 0, 150 * MS));
        assert_eq!(w.latency.session.max, 150 * MS);
    }

    fn msg(ts: u64, kind: EventKind, pid: u32, id: u64) -> Event {
        let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
        e.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "q"));
        e.size = 100;
        e.msg_id = Some(id);
        e
    }

    /// A socket's two ends both send and receive: its senders and
    /// receivers are both processes, and only the pairs say who sent to
    /// whom (issue 17: the topology drew each process sending to itself).
    #[test]
    fn a_channel_names_who_sent_to_whom() {
        let mut a = analyzer();
        let events = vec![
            msg(1, EventKind::MsgSend, 1, 1),
            msg(2, EventKind::MsgRecv, 2, 1),
            msg(3, EventKind::MsgSend, 2, 2),
            msg(4, EventKind::MsgRecv, 1, 2),
            msg(5, EventKind::MsgSend, 1, 3),
            msg(6, EventKind::MsgRecv, 2, 3),
        ];
        let ids = vec![Some(1); events.len()];
        let reply = |send: u64, recv: u64| {
            let mut p = paired(send, recv);
            std::mem::swap(&mut p.send.pid, &mut p.recv.pid);
            p
        };
        a.correlated(
            &events,
            &ids,
            &[paired(1, 2), reply(3, 4), paired(5, 6)],
            &[],
            0,
        );
        let snap = a.snapshot(S);
        let c = &snap.channels[0];
        assert_eq!((c.senders.len(), c.receivers.len()), (2, 2));
        assert_eq!(c.pairs, [(1, 2), (2, 1)]);
    }

    fn paired(send: u64, recv: u64) -> Paired<i64> {
        Paired {
            channel: 1,
            send: Side {
                pid: 1,
                tid: 1,
                ts_ns: send,
                size: 100,
            },
            recv: Side {
                pid: 2,
                tid: 2,
                ts_ns: recv,
                size: 100,
            },
            msg_id: None,
        }
    }

    #[test]
    fn channel_stats_latency_rates_and_queue_depth() {
        let mut a = analyzer();
        let mut events = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..10u64 {
            events.push(msg(S + i * MS, EventKind::MsgSend, 1, i));
        }
        for i in 0..7u64 {
            events.push(msg(S + i * MS + 500, EventKind::MsgRecv, 2, i));
            pairs.push(paired(S + i * MS, S + i * MS + 500 + i));
        }
        let ids = vec![Some(1); events.len()];
        a.correlated(&events, &ids, &pairs, &[], 0);
        let snap = a.snapshot(2 * S);
        let c = &snap.channels[0];
        assert_eq!((c.messages, c.bytes, c.queue_depth), (10, 1000, Some(3)));
        assert_eq!(
            (c.senders.as_slice(), c.receivers.as_slice()),
            (&[1][..], &[2][..])
        );
        assert_eq!(c.rate_1s.messages_per_s, 10.0);
        assert_eq!(c.rate_10s.bytes_per_s, 100.0);
        assert_eq!(c.latency.session.count, 7);
        assert_eq!((c.latency.session.min, c.latency.session.max), (500, 506));
        assert_eq!(c.latency.last_1s.count, 7);
        assert_eq!(c.recent.len(), 7);
        assert_eq!(snap.totals.messages, 10);
        assert_eq!(snap.recent_events.len(), 17);
        let procs = a.process_rates(2 * S);
        let rates: Vec<_> = procs
            .iter()
            .map(|p| (p.pid, p.rate_1s.events_per_s, p.rate_1s.bytes_per_s))
            .collect();
        assert_eq!(rates, [(1, 10.0, 1000.0), (2, 7.0, 0.0)]);
        let stored: Vec<_> = a
            .session_latencies()
            .into_iter()
            .map(|l| (l.of, l.latency.count, l.latency.max))
            .collect();
        assert_eq!(
            stored,
            [
                (LatencyOf::Channel { channel_id: 1 }, 7, 506),
                (
                    LatencyOf::Pair {
                        channel_id: 1,
                        sender_pid: 1,
                        receiver_pid: 2
                    },
                    7,
                    506
                )
            ]
        );
    }

    #[test]
    fn deltas_carry_what_changed_and_applying_them_rebuilds_the_snapshot() {
        let mut a = analyzer();
        let mut snap = a.snapshot(0);
        let mut at = |a: &mut Analyzer, events: Vec<Event>, now: u64| {
            let ids = vec![Some(1); events.len()];
            a.correlated(&events, &ids, &[], &[], 0);
            a.tick(now);
            snap.apply(a.delta(now));
            snap.clone()
        };
        let s1 = at(&mut a, vec![msg(S, EventKind::MsgSend, 1, 1)], S + 100 * MS);
        assert_eq!(s1.channels.len(), 1);
        // Nothing new within the same second: an empty delta.
        let d = a.delta(S + 200 * MS);
        assert!(d.channels.is_empty() && d.events.is_empty() && d.processes.is_empty());
        // The next second rolls the channel's windows: it is sent again.
        let d = a.delta(2 * S);
        assert_eq!(d.channels.len(), 1);
        assert_eq!(d.channels[0].rate_1s.messages_per_s, 1.0);
        // Long after, with no activity, it is not.
        let d = a.delta(30 * S);
        assert!(d.channels.is_empty());
        let s2 = at(&mut a, vec![msg(31 * S, EventKind::MsgSend, 3, 2)], 32 * S);
        let mut want = a.snapshot(32 * S);
        // Rates of things the delta did not resend went quiet in between.
        want.channels
            .iter_mut()
            .for_each(|c| c.rate_10s = s2.channels[0].rate_10s);
        assert_eq!(s2.channels, want.channels);
        assert_eq!(s2.processes, want.processes);
        assert_eq!(s2.totals, want.totals);
        assert_eq!(s2.recent_events, want.recent_events);
    }

    #[test]
    fn a_message_on_a_channel_no_event_named_is_counted_not_lost() {
        let mut a = analyzer();
        assert!(!a.message(&paired(1, 2)));
        assert_eq!(a.unattributed_messages(), 1);
        a.event(&msg(1, EventKind::MsgSend, 1, 1), Some(1));
        assert!(a.message(&paired(1, 2)));
        assert_eq!(a.unattributed_messages(), 1);
    }

    #[test]
    fn drops_and_signals_are_counted() {
        let mut a = analyzer();
        let mut drop = Event::new(5, 0, 0, Source::Collector, EventKind::Drop);
        drop.aux = drop_source::EBPF_RING;
        drop.size = 42;
        let mut generate = Event::new(10, 7, 7, Source::Ebpf, EventKind::SignalGenerate);
        generate.target_pid = Some(8);
        generate.aux = 10;
        let mut deliver = Event::new(25, 8, 8, Source::Ebpf, EventKind::SignalDeliver);
        deliver.aux = 10;
        let signal = crate::correlate::Signal {
            id: 1,
            sender: Some(7),
            target: 8,
            signo: 10,
            generated_ns: 10,
            cause: None,
        };
        let signals = [
            SignalFact::Generated(signal),
            SignalFact::Delivered {
                signal,
                delivered_ns: 25,
            },
        ];
        a.correlated(
            &[drop, generate, deliver],
            &[None, None, None],
            &[],
            &signals,
            3,
        );
        let snap = a.snapshot(S);
        assert_eq!(snap.totals.drops, 45);
        let drops: Vec<_> = snap
            .drops
            .iter()
            .map(|d| (d.source.as_str(), d.count))
            .collect();
        assert_eq!(drops, [("ebpf_ring", 42), ("ingest", 3)]);
        let pids: Vec<u32> = snap.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [7, 8], "a drop record names no process");
        assert_eq!(snap.signals.len(), 1);
        let s = &snap.signals[0];
        assert_eq!(
            (s.sender_pid, s.target_pid, s.count, s.delivered),
            (7, 8, 1, 1)
        );
        assert_eq!(s.latency.max, 15);
    }

    #[test]
    fn recent_events_are_bounded_and_each_delta_carries_new_ones_once() {
        let mut a = Analyzer::new(
            1,
            "t",
            0,
            AnalyzerConfig {
                recent_events: 5,
                ..AnalyzerConfig::default()
            },
        );
        let batch = |n: u64| -> Vec<Event> {
            (0..n)
                .map(|i| Event::new(i, 1, 1, Source::Lib, EventKind::ProcessExec))
                .collect()
        };
        a.correlated(&batch(3), &[None; 3], &[], &[], 0);
        assert_eq!(a.delta(1).events.len(), 3);
        assert!(a.delta(2).events.is_empty());
        a.correlated(&batch(8), &[None; 8], &[], &[], 0);
        assert_eq!(a.delta(3).events.len(), 5, "capped");
        assert_eq!(a.snapshot(3).recent_events.len(), 5);
    }

    /// A `recv_wait_begin` of `pid`'s main thread on end `end` of the
    /// socket pair (10, 20), which the threads `releasers` could end.
    fn recv_blocked(ts: u64, pid: u32, end: u64, releasers: &[u32]) -> Event {
        let mut e = Event::new(ts, pid, pid, Source::Ebpf, EventKind::RecvWaitBegin);
        e.comm = format!("proc{pid}");
        e.channel = Some(ChannelId::numeric(ChannelKind::UnixStream, 10, 20));
        e.endpoint = Some(end);
        e.releasers = releasers.iter().map(|&p| (p, p)).collect();
        e
    }

    /// The socket pair is channel 7.
    fn feed_socket(a: &mut Analyzer, events: Vec<Event>) {
        let ids = vec![Some(7); events.len()];
        a.correlated(&events, &ids, &[], &[], 0);
    }

    #[test]
    fn two_processes_each_reading_what_only_the_other_sends_are_a_deadlock() {
        let mut a = analyzer();
        // Each end of one socket pair is read by one process and held by
        // the other: two resources, though one channel.
        feed_socket(&mut a, vec![recv_blocked(10 * MS, 100, 10, &[200])]);
        feed_socket(&mut a, vec![recv_blocked(20 * MS, 200, 20, &[100])]);
        let changes = a.tick(300 * MS);
        let [DeadlockChange::Detected(d)] = &changes[..] else {
            panic!("{changes:?}")
        };
        let named: Vec<_> = d
            .cycle
            .iter()
            .map(|m| (m.pid, m.waits_for.channel_id, m.waits_for.kind))
            .collect();
        assert_eq!(
            named,
            [
                (100, Some(7), ChannelKind::UnixStream),
                (200, Some(7), ChannelKind::UnixStream)
            ]
        );
        let snap = a.snapshot(300 * MS);
        let w = snap.waits.iter().find(|w| w.id == 7).unwrap();
        assert_eq!(w.waiting_now, 2, "counted under the channel");

        // An end for a receive that began at another time is not this
        // one's: nothing changes.
        let mut stale = recv_blocked(400 * MS, 200, 20, &[]);
        stale.kind = EventKind::RecvWaitEnd;
        stale.duration_ns = Some(100 * MS);
        feed_socket(&mut a, vec![stale.clone()]);
        assert!(a.tick(400 * MS).is_empty());

        // 200's receive returned with a message: the deadlock is over.
        let mut got = Event::new(450 * MS, 200, 200, Source::Ebpf, EventKind::MsgRecv);
        got.channel = stale.channel.clone();
        got.size = 1;
        feed_socket(&mut a, vec![got]);
        let changes = a.tick(450 * MS);
        assert!(
            matches!(changes[..], [DeadlockChange::Resolved { resolved_ns, .. }] if resolved_ns == 450 * MS),
            "{changes:?}"
        );
        // 100's wait ends without a message (end of file).
        stale.pid = 100;
        stale.tid = 100;
        stale.endpoint = Some(10);
        stale.ts_ns = 500 * MS;
        stale.duration_ns = Some(490 * MS);
        feed_socket(&mut a, vec![stale]);
        let snap = a.snapshot(500 * MS);
        let w = snap.waits.iter().find(|w| w.id == 7).unwrap();
        assert_eq!((w.waits, w.waiting_now), (2, 0), "{w:?}");
    }

    #[test]
    fn a_receive_nobody_else_could_end_is_no_deadlock() {
        let mut a = analyzer();
        // No releasers: anyone might send (a queue), or the only writer
        // is the reader itself (the self-pipe trick).
        feed_socket(&mut a, vec![recv_blocked(10 * MS, 100, 10, &[])]);
        feed_socket(&mut a, vec![recv_blocked(20 * MS, 200, 20, &[100])]);
        assert!(a.tick(10_000 * MS).is_empty());
    }
}
