//! Snapshots for the tests and the render bench: real [`Snapshot`] values
//! of the shape a recording produces (several processes, channels of
//! several kinds, waits, signals, a deadlock, a tail of events), built
//! deterministically so rendered screens can be compared.

use ipc_events::live::{
    Bucket, ChannelStats, CycleMember, Deadlock, DropCount, Latency, MessageSample, Percentiles,
    Process, Rates, Resource, Second, SignalStats, Snapshot, Totals, WaitStats,
};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

use crate::ReplaySource;

const S: u64 = 1_000_000_000;
/// When the sample session started (monotonic ns).
pub const START_NS: u64 = 1_000 * S;

/// Percentiles scaled from one base latency.
pub fn percentiles(count: u64, base_ns: u64) -> Percentiles {
    Percentiles {
        count,
        min: base_ns / 2,
        p50: base_ns,
        p90: base_ns * 2,
        p99: base_ns * 4,
        p999: base_ns * 8,
        max: base_ns * 10,
    }
}

fn latency(count: u64, base_ns: u64) -> Latency {
    Latency {
        last_1s: percentiles(count.min(100), base_ns),
        last_10s: percentiles(count.min(1000), base_ns),
        session: percentiles(count, base_ns),
        histogram: [(1, 4), (2, 10), (4, 3), (10, 1)]
            .iter()
            .map(|&(m, share)| Bucket {
                upper_ns: base_ns * m,
                count: count * share / 18,
            })
            .collect(),
    }
}

/// An ipc-lib channel `name` from pid 101 to pid 102 with `messages` sent
/// and `msg_rate` messages a second over the last second and ten.
pub fn channel(id: i64, name: &str, messages: u64, msg_rate: f64) -> ChannelStats {
    let rates = Rates {
        events_per_s: msg_rate * 2.0,
        messages_per_s: msg_rate,
        bytes_per_s: msg_rate * 64.0,
    };
    ChannelStats {
        id,
        channel: ChannelId::named(ChannelKind::IpclibChannel, name),
        senders: vec![101],
        receivers: vec![102],
        pairs: vec![(101, 102)],
        messages,
        bytes: messages * 64,
        rate_1s: rates,
        rate_10s: rates,
        latency: latency(messages, 1_000 * (id as u64 + 1)),
        queue_depth: Some(id as u64),
        recent: (0..5)
            .map(|i| MessageSample {
                sent_ns: START_NS + i * S,
                latency_ns: 1_000 * (i + 1),
                size: 64,
                sender_pid: 101,
                receiver_pid: 102,
                payload: (i % 2 == 0).then(|| format!("job {i}\n").into_bytes()),
            })
            .collect(),
    }
}

fn process(pid: u32, ppid: u32, comm: &str) -> Process {
    Process {
        pid,
        ppid,
        comm: comm.to_owned(),
        exited: false,
        title: None,
    }
}

fn resource(channel_id: i64, kind: ChannelKind, name: &str) -> Resource {
    Resource {
        channel_id: Some(channel_id),
        kind,
        name: name.to_owned(),
    }
}

/// A small session: producer (101) -> consumer (102) over a channel and a
/// pipe, results back over another channel, two semaphores (each waited on
/// by one and held by the other), a signal from their parent to the
/// consumer, 50 events, and a deadlock between 101 and 102 that is still
/// active when `active`.
pub fn snapshot_with_deadlock(active: bool) -> Snapshot {
    let mut pipe = channel(3, "", 40, 2.0);
    pipe.channel = ChannelId::numeric(ChannelKind::Pipe, 4242, 0);
    pipe.queue_depth = None;
    let mut results = channel(2, "results", 900, 90.0);
    results.senders = vec![102];
    results.receivers = vec![101];
    results.pairs = vec![(102, 101)];
    for m in &mut results.recent {
        (m.sender_pid, m.receiver_pid) = (102, 101);
    }
    let channels = vec![channel(1, "jobs", 12_000, 1_200.0), results, pipe];
    let sem = |id, name: &str, waits, now, waiter, holder| WaitStats {
        id,
        channel: ChannelId::named(ChannelKind::Sem, name),
        waits,
        waiting_now: now,
        total_ns: waits * 40_000,
        latency: latency(waits, 20_000),
        waiters: vec![waiter],
        holders: vec![holder],
    };
    let events: Vec<Event> = (0..50u64)
        .map(|i| {
            let (pid, kind) = if i % 2 == 0 {
                (101, EventKind::MsgSend)
            } else {
                (102, EventKind::MsgRecv)
            };
            let mut e = Event::new(START_NS + i * S / 10, pid, pid, Source::Lib, kind);
            e.comm = if pid == 101 { "producer" } else { "consumer" }.to_owned();
            e.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "jobs"));
            e.size = 64;
            e.msg_id = Some(i / 2);
            e
        })
        .collect();
    Snapshot {
        session_id: 7,
        session_name: "demo".to_owned(),
        live: true,
        started_ns: START_NS,
        now_ns: START_NS + 30 * S,
        totals: Totals {
            events: 25_880,
            messages: 12_940,
            bytes: 828_160,
            processes: 3,
            channels: 3,
            waits: 320,
            signals: 4,
            drops: 0,
            unstored: 0,
        },
        rate_1s: Rates {
            events_per_s: 2_584.0,
            messages_per_s: 1_292.0,
            bytes_per_s: 82_688.0,
        },
        seconds: (0..30)
            .map(|i| Second {
                start_ns: START_NS + i * S,
                events: 800 + 60 * i,
                messages: 400 + 30 * i,
                bytes: (400 + 30 * i) * 64,
            })
            .collect(),
        processes: vec![
            process(100, 1, "demo"),
            process(101, 100, "producer"),
            process(102, 100, "consumer"),
        ],
        channels,
        waits: vec![
            sem(10, "/slots", 300, 1, 101, 102),
            sem(11, "/items", 20, 0, 102, 101),
        ],
        signals: vec![SignalStats {
            sender_pid: 100,
            target_pid: 102,
            signo: 10,
            count: 4,
            delivered: 4,
            latency: percentiles(4, 3_000),
            cause: None,
        }],
        deadlocks: vec![Deadlock {
            id: 1,
            detected_ns: START_NS + 20 * S,
            resolved_ns: (!active).then_some(START_NS + 25 * S),
            cycle: vec![
                CycleMember {
                    pid: 101,
                    tid: 101,
                    comm: "producer".to_owned(),
                    waits_for: resource(10, ChannelKind::Sem, "/slots"),
                    idle_threads: Vec::new(),
                },
                CycleMember {
                    pid: 102,
                    tid: 102,
                    comm: "consumer".to_owned(),
                    waits_for: resource(11, ChannelKind::Sem, "/items"),
                    idle_threads: Vec::new(),
                },
            ],
        }],
        inversions: Vec::new(),
        drops: vec![DropCount {
            source: "ebpf_ring".to_owned(),
            count: 0,
        }],
        recent_events: events,
    }
}

/// A heavy snapshot for the render bench: `channels` channels among 50
/// processes, full histograms and message tails, and
/// [`Snapshot::RECENT_EVENTS`] events.
pub fn large_snapshot(channels: usize) -> Snapshot {
    let mut s = snapshot_with_deadlock(true);
    s.processes = (0..50)
        .map(|i| process(1000 + i, 100, &format!("worker-{i}")))
        .collect();
    s.channels = (0..channels)
        .map(|i| {
            let mut c = channel(
                i as i64,
                &format!("chan-{i}"),
                1_000 * i as u64,
                i as f64 * 3.0,
            );
            c.senders = vec![1000 + (i % 50) as u32];
            c.receivers = vec![1000 + ((i + 7) % 50) as u32, 1000 + ((i + 13) % 50) as u32];
            c.recent = (0..64)
                .map(|j| c.recent[j % c.recent.len()].clone())
                .collect();
            c
        })
        .collect();
    s.waits = (0..channels / 4)
        .map(|i| WaitStats {
            id: 10_000 + i as i64,
            channel: ChannelId::numeric(ChannelKind::Futex, 0x7f00_0000 + i as u64 * 8, 0),
            waits: i as u64 * 10,
            waiting_now: (i % 3) as u32,
            total_ns: i as u64 * 1_000_000,
            latency: latency(i as u64 * 10, 5_000),
            waiters: Vec::new(),
            holders: Vec::new(),
        })
        .collect();
    let template = s.recent_events.clone();
    s.recent_events = (0..Snapshot::RECENT_EVENTS)
        .map(|i| {
            let mut e = template[i % template.len()].clone();
            e.ts_ns = START_NS + i as u64 * 1_000;
            e
        })
        .collect();
    s
}

/// A recorded session in memory: [`snapshot_with_deadlock`] at every whole
/// second for `seconds`, the `jobs` channel at 100 messages a second, the
/// deadlock active from 20 s to 25 s. Every position asked for is logged,
/// and `fail_at` makes one second fail as a database error would.
#[derive(Debug)]
pub struct SampleSession {
    seconds: u64,
    /// The second whose load fails, if any.
    pub fail_at: Option<u64>,
    /// The whole seconds asked for, in order (shared: the replay loads
    /// on a thread of its own).
    pub asked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl SampleSession {
    /// A session `seconds` long that never fails.
    pub fn new(seconds: u64) -> Self {
        SampleSession {
            seconds,
            fail_at: None,
            asked: Default::default(),
        }
    }
}

impl ReplaySource for SampleSession {
    fn span(&self) -> (u64, u64) {
        (START_NS, START_NS + self.seconds * S)
    }

    fn snapshot_at(&mut self, t_ns: u64) -> anyhow::Result<Option<Snapshot>> {
        let (start, end) = self.span();
        if !(start..=end).contains(&t_ns) {
            anyhow::bail!("{t_ns} is outside the session ({start}..={end})");
        }
        let sec = (t_ns - start) / S;
        self.asked.lock().unwrap().push(sec);
        if self.fail_at == Some(sec) {
            anyhow::bail!("database is locked");
        }
        let mut s = snapshot_with_deadlock((20..25).contains(&sec));
        s.deadlocks.retain(|_| sec >= 20);
        s.live = false;
        s.now_ns = t_ns;
        s.channels[0].messages = sec * 100;
        s.seconds.truncate(sec as usize);
        s.recent_events.retain(|e| e.ts_ns <= t_ns);
        Ok(Some(s))
    }
}
