//! The analysis's costs: the wait-for graph's incremental check per
//! arriving edge (chains of 1 to 64 threads), its full sweep over 100,000
//! edges, a tick that confirms deadlocks in that graph, and the analyzer's
//! ingest cost per event on a plausible mix.
//!
//!     cargo bench -p collector --bench waitgraph -- [RUNS]
//!
//! Each figure is the median over RUNS runs (default 5). Under `cargo
//! test --all-targets` (no `--bench`) it runs small sizes once, as a smoke
//! test that every path works, and still checks what it measures.

use std::hint::black_box;
use std::time::{Duration, Instant};

use collector::analysis::waitgraph::{GraphChange, Thread, WaitGraph, DEFAULT_THRESHOLD_NS};
use collector::analysis::{Analyzer, AnalyzerConfig};
use collector::clock::monotonic_ns;
use collector::correlate::{Paired, Side};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

const MS: u64 = 1_000_000;

fn th(n: u32) -> Thread {
    Thread::new(n, n)
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<u64>, q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The shape of the graph an arriving edge is checked in.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A chain of `n` blocked threads ending at a running one: not stuck.
    Open,
    /// The edge closes a ring of `n`: stuck, and its cycle (already known
    /// after the first sample) is looked up.
    Closing,
    /// A ring of `n` whose last resource also has a running holder: the
    /// first-releaser walk finds a cycle but passed a shared resource, and
    /// the rest of the check finds the way out through its other holder.
    SharedEnd,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Open => "open chain",
            Shape::Closing => "closing a ring (check + known cycle)",
            Shape::SharedEnd => "ring with a running co-holder (walk + rest of the check)",
        }
    }
}

/// The edge measured is thread 1 blocking, and its check walks `n`
/// threads. Returns the p99 of `samples` arrivals, in ns.
fn incremental_p99(n: u32, samples: usize, shape: Shape) -> u64 {
    let mut g: WaitGraph<u64> = WaitGraph::new(200 * MS);
    let target = match shape {
        // Thread i holds resource i; threads 2..n wait for the next one's,
        // thread n runs; thread 1 waits for resource 2.
        Shape::Open => {
            for i in 2..=n {
                g.acquire(th(i), u64::from(i), 0);
            }
            for i in 2..n {
                g.block(th(i), u64::from(i + 1), 1);
            }
            2
        }
        // Thread i holds resource i and waits for resource i - 1; thread 1
        // waits for resource n.
        Shape::Closing | Shape::SharedEnd => {
            for i in 1..=n {
                g.acquire(th(i), u64::from(i), 0);
            }
            for i in 2..=n {
                g.block(th(i), u64::from(i - 1), 1);
            }
            if shape == Shape::SharedEnd {
                g.acquire(th(u32::MAX), 1, 0);
            }
            u64::from(n)
        }
    };
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let stuck = g.block(th(1), target, 2);
        times.push(start.elapsed().as_nanos() as u64);
        assert_eq!(stuck, shape == Shape::Closing, "chain of {n}");
        g.unblock(th(1), 3);
    }
    percentile(times, 0.99)
}

/// Rings of 64 threads (each holding one resource and waiting for the
/// next's), every other one left open: `edges` hold and wait edges.
fn big_graph(edges: u32) -> (WaitGraph<u64>, usize) {
    let mut g = WaitGraph::new(200 * MS);
    let threads = edges / 2;
    let mut stuck = 0;
    for ring in 0..threads / 64 {
        let base = ring * 64 + 1;
        for i in 0..64 {
            g.acquire(th(base + i), u64::from(base + i), 0);
        }
        let closed = ring % 2 == 0;
        for i in 0..64 {
            let next = if i == 63 {
                if closed {
                    base
                } else {
                    // Waits on something nobody holds.
                    u32::MAX
                }
            } else {
                base + i + 1
            };
            g.block(th(base + i), u64::from(next), 1);
        }
        if closed {
            stuck += 64;
        }
    }
    (g, stuck)
}

fn sweep_ms(edges: u32) -> f64 {
    let (mut g, stuck) = big_graph(edges);
    let start = Instant::now();
    let found = black_box(g.sweep()).len();
    let elapsed = start.elapsed();
    assert_eq!(found, stuck);
    elapsed.as_secs_f64() * 1e3
}

/// A tick that sweeps the changed graph and confirms every closed ring:
/// (ms, deadlocks).
fn tick_ms(edges: u32) -> (f64, usize) {
    let (mut g, stuck) = big_graph(edges);
    let start = Instant::now();
    let changes = black_box(g.tick(300 * MS));
    let elapsed = start.elapsed();
    assert_eq!(changes.len(), stuck / 64);
    (elapsed.as_secs_f64() * 1e3, changes.len())
}

/// Real time from a deadlock's threshold passing to its detection: two
/// threads deadlock `phase` after the ticking started, and the caller
/// ticks every `period` (on a fixed schedule, as the live feed does) or,
/// with `None`, at `next_due`. Returns the lag in ns.
fn detection_lag_ns(threshold_ns: u64, period: Option<Duration>, phase: Duration) -> u64 {
    let mut g: WaitGraph<u64> = WaitGraph::new(threshold_ns);
    let start = monotonic_ns();
    std::thread::sleep(phase);
    let formed = monotonic_ns();
    g.acquire(th(1), 1, formed);
    g.acquire(th(2), 2, formed);
    g.block(th(1), 2, formed);
    g.block(th(2), 1, formed);
    let due = formed + threshold_ns;
    let mut ticks = 0u64;
    loop {
        let next = match period {
            Some(p) => {
                ticks += 1;
                start + ticks * p.as_nanos() as u64
            }
            None => g.next_due().expect("the cycle is a candidate"),
        };
        std::thread::sleep(Duration::from_nanos(next.saturating_sub(monotonic_ns())));
        let now = monotonic_ns();
        if let Some(GraphChange::Detected { .. }) = g.tick(now).first() {
            assert!(now >= due, "detected before the threshold");
            return now - due;
        }
    }
}

/// Messages over 16 ipc-lib channels between 8 processes, with a
/// semaphore taken and posted around every fourth message, one contended
/// wait in eight of those: (batches of events with channel ids, pairs).
type Batch = (Vec<Event>, Vec<Option<i64>>, Vec<Paired<i64>>);

fn workload(n: usize) -> Vec<Batch> {
    let channels: Vec<ChannelId> = (0..16)
        .map(|i| ChannelId::named(ChannelKind::IpclibChannel, format!("ch{i}")))
        .collect();
    let sem = ChannelId::named(ChannelKind::IpclibSem, "lock");
    let mut out = Vec::new();
    let mut batch: Batch = (Vec::new(), Vec::new(), Vec::new());
    // Events so far, and messages.
    let (mut i, mut m) = (0u64, 0u64);
    while (i as usize) < n {
        let ts = 1_000_000_000 + i * 1000;
        let ch = (m % 16) as usize;
        let (sender, receiver) = (100 + (m % 8) as u32, 200 + (m % 8) as u32);
        m += 1;
        let mut push = |e: Event, id: i64| {
            batch.0.push(e);
            batch.1.push(Some(id));
        };
        let mut send = Event::new(ts, sender, sender, Source::Lib, EventKind::MsgSend);
        send.comm = "producer".into();
        send.channel = Some(channels[ch].clone());
        send.size = 256;
        send.msg_id = Some(i + 1);
        let mut recv = send.clone();
        recv.kind = EventKind::MsgRecv;
        recv.ts_ns = ts + 500;
        recv.pid = receiver;
        recv.tid = receiver;
        push(send, ch as i64 + 1);
        push(recv, ch as i64 + 1);
        let side = |pid, ts_ns| Side {
            pid,
            tid: pid,
            ts_ns,
            size: 256,
        };
        batch.2.push(Paired {
            channel: ch as i64 + 1,
            send: side(sender, ts),
            recv: side(receiver, ts + 500),
            msg_id: Some(i + 1),
        });
        i += 2;
        if m % 4 == 0 {
            let sem_event = |kind, ts_ns| {
                let mut e = Event::new(ts_ns, sender, sender, Source::Lib, kind);
                e.comm = "producer".into();
                e.channel = Some(sem.clone());
                e
            };
            if m % 32 == 0 {
                push(sem_event(EventKind::SemWaitBegin, ts + 10), 100);
                i += 1;
            }
            push(sem_event(EventKind::SemWaitEnd, ts + 20), 100);
            push(sem_event(EventKind::SemPost, ts + 30), 100);
            i += 2;
        }
        if batch.0.len() >= 1024 {
            out.push(std::mem::take(&mut batch));
        }
    }
    if !batch.0.is_empty() {
        out.push(batch);
    }
    out
}

/// ns per event through `Analyzer::correlated`, and a delta at the end.
/// The analyzer's costs on the workload: (ns per event through
/// `Analyzer::correlated`, µs for a snapshot, µs for a delta), the feed's
/// two reads, taken in the workload's last second so windows are full.
fn ingest_ns(n: usize) -> (f64, f64, f64) {
    let batches = workload(n);
    let events: usize = batches.iter().map(|b| b.0.len()).sum();
    let last_ns = batches
        .last()
        .and_then(|b| b.0.last())
        .map_or(0, |e| e.ts_ns);
    let mut a = Analyzer::new(1, "bench", 0, AnalyzerConfig::default());
    let start = Instant::now();
    for (events, ids, pairs) in batches {
        a.correlated(&events, &ids, &pairs, &[], 0);
    }
    let per_event = start.elapsed().as_nanos() as f64 / events as f64;
    let now = last_ns + 1_000_000_000;
    let start = Instant::now();
    let snap = a.snapshot(now);
    let snapshot_us = start.elapsed().as_secs_f64() * 1e6;
    assert_eq!(snap.totals.events as usize, events, "every event counted");
    assert_eq!(snap.channels.len(), 16);
    assert!(a.tick(now).is_empty(), "no deadlock in this mix");
    let start = Instant::now();
    let delta = black_box(a.delta(now));
    let delta_us = start.elapsed().as_secs_f64() * 1e6;
    assert_eq!(delta.channels.len(), 16, "all were active in the window");
    (per_event, snapshot_us, delta_us)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let runs = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(if benching { 5 } else { 1 });
    let (samples, edges, events) = if benching {
        (20_000, 100_000, 2_000_000)
    } else {
        (200, 2_000, 20_000)
    };

    for shape in [Shape::Open, Shape::Closing, Shape::SharedEnd] {
        let what = shape.describe();
        let mut line = format!("incremental check p99, {what}, median of {runs}:");
        for n in [1u32, 2, 4, 8, 16, 32, 64] {
            let p99 = median(
                (0..runs)
                    .map(|_| incremental_p99(n, samples, shape))
                    .collect(),
            );
            line.push_str(&format!(" n={n} {p99} ns;"));
        }
        println!("{line}");
    }
    let sweeps: Vec<f64> = (0..runs).map(|_| sweep_ms(edges)).collect();
    let fastest = sweeps.iter().copied().fold(f64::INFINITY, f64::min);
    let sweep = median(sweeps);
    println!(
        "full sweep of {edges} edges: {sweep:.2} ms (median of {runs}; fastest {fastest:.2} ms)"
    );
    let ticks: Vec<(f64, usize)> = (0..runs).map(|_| tick_ms(edges)).collect();
    let deadlocks = ticks[0].1;
    let tick = median(ticks.into_iter().map(|t| t.0).collect());
    println!(
        "tick that sweeps {edges} edges and confirms {deadlocks} deadlocks: {tick:.2} ms (median of {runs})"
    );
    let threshold = if benching {
        DEFAULT_THRESHOLD_NS
    } else {
        20 * MS
    };
    // Phases spread over the tick period: 0, 37, 74, 11, 48 ms...
    let phase = |run: usize| Duration::from_millis((run as u64 * 37) % 100);
    let tick_10hz: Vec<u64> = (0..runs)
        .map(|run| detection_lag_ns(threshold, Some(Duration::from_millis(100)), phase(run)))
        .collect();
    let at_due: Vec<u64> = (0..runs)
        .map(|run| detection_lag_ns(threshold, None, phase(run)))
        .collect();
    println!(
        "detection after a {} ms threshold: ticking at 10 Hz max {:.1} ms, median {:.1} ms; ticking at next_due max {} us (of {runs})",
        threshold / MS,
        *tick_10hz.iter().max().expect("runs >= 1") as f64 / 1e6,
        median(tick_10hz) as f64 / 1e6,
        at_due.iter().max().expect("runs >= 1") / 1000,
    );
    let costs: Vec<(f64, f64, f64)> = (0..runs).map(|_| ingest_ns(events)).collect();
    let ingest = median(costs.iter().map(|c| c.0).collect());
    let snapshot = median(costs.iter().map(|c| c.1).collect());
    let delta = median(costs.iter().map(|c| c.2).collect());
    println!(
        "analyzer ingest: {ingest:.0} ns/event over {events} events; then a snapshot {snapshot:.0} us, a delta {delta:.0} us (16 channels, 2000 recent events; median of {runs})"
    );
}
