//! Emit to queryable: how long after an event happens a query of the
//! database can see it, at a sustained rate, through the recorder's real
//! path (the writer with its reorder hold-back, batching and commits, and
//! the analysis observing every correlated batch).
//!
//!     cargo bench -p collector --bench freshness -- [EVENTS_PER_S] [SECONDS] [--no-analysis] [--slow-disk]
//!
//! A producer stamps each event with CLOCK_MONOTONIC as it makes it and
//! hands batches of 1,000 to the writer at the rate asked. A reader on its
//! own SQLite connection polls every millisecond for rows that became
//! visible; each row seen is charged the time from its stamp to the start
//! of the poll that found it (an upper bound: it was visible no later).
//! Every 16th row is read, 1/16 of the rows, so the reader's load stays
//! small. Prints the achieved rate and the lag's p50, p99 and max.
//! `--no-analysis` leaves the analysis out, to tell its share from the
//! writer's. With the analysis, also emit to analysed: the time from each
//! event's stamp (every 16th) to the analysis taking it in, which is what
//! the live feed and the deadlock detector can be no fresher than.
//! `--slow-disk` makes the writer wait 50 ms before each commit, as a slow
//! disk would: the analysis must not notice. Events the writer's queue had
//! no room for are counted (`ingest` drops) and printed; the reader then
//! sees the rows that were stored.
//!
//! Defaults: 500,000 events/s for 10 s (issue 5's goal: p99 at most
//! 250 ms at that rate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::analysis::{Analyzer, AnalyzerConfig};
use collector::clock::monotonic_ns;
use collector::store::{spawn_writer, Correlated, NewSession, OpenMode, Store, WriterConfig};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};
use tokio::sync::mpsc;

const BATCH: usize = 1000;
/// Rows read per row made visible: 1 in this many.
const SAMPLE: i64 = 16;

fn session() -> NewSession {
    NewSession {
        name: Some("freshness".into()),
        command: "bench".into(),
        host: "bench".into(),
        started_at: "2026-01-01T00:00:00.000Z".into(),
        sources: "ebpf".into(),
        start_mono_ns: monotonic_ns(),
        recorder_pid: std::process::id(),
    }
}

/// A batch of sends and receives over 16 channels, stamped now.
fn batch(first: u64) -> Vec<Event> {
    (first..first + BATCH as u64)
        .map(|i| {
            let kind = if i % 2 == 0 {
                EventKind::MsgSend
            } else {
                EventKind::MsgRecv
            };
            let mut e = Event::new(monotonic_ns(), 100, 100, Source::Ebpf, kind);
            e.channel = Some(ChannelId::numeric(
                ChannelKind::UnixStream,
                1000 + i / 2 % 16,
                2000 + i / 2 % 16,
            ));
            e.size = 64;
            e.msg_id = Some(i / 2 + 1);
            e.result = 64;
            e
        })
        .collect()
}

/// Polls `path` until `done`, returning each sampled row's lag in ns.
fn read_lags(path: std::path::PathBuf, done: Arc<AtomicBool>) -> Vec<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let mut lags = Vec::new();
    // Events are rows of `event_rows`, or held by a `messages` row (its
    // send, its receive or both): each table is read past the ids seen,
    // which follow the order rows were committed in. Each row gives the
    // stamps of the events it holds.
    let tables = [
        ("event_rows", "ts_ns, NULL, 1"),
        ("messages", "sent_ns, received_ns, ends"),
    ];
    let mut seen = [0i64; 2];
    let mut statements = tables.map(|(table, columns)| {
        (
            conn.prepare(&format!("SELECT coalesce(max(id), 0) FROM {table}"))
                .unwrap(),
            conn.prepare(&format!(
                "SELECT {columns} FROM {table} WHERE id > ?1 AND id <= ?2 AND id % ?3 = 0"
            ))
            .unwrap(),
        )
    });
    loop {
        // Read before polling: once the writer is done, one last poll sees
        // everything it committed.
        let last = done.load(Ordering::Acquire);
        let polled = monotonic_ns();
        for ((max_id, rows), seen) in statements.iter_mut().zip(&mut seen) {
            let top: i64 = max_id.query_row([], |r| r.get(0)).unwrap();
            if top <= *seen {
                continue;
            }
            let found = rows
                .query_map([*seen, top, SAMPLE], |r| {
                    let ends: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
                    Ok([
                        r.get::<_, Option<i64>>(0)?.filter(|_| ends & 1 != 0),
                        r.get::<_, Option<i64>>(1)?.filter(|_| ends & 2 != 0),
                    ])
                })
                .unwrap();
            for stamps in found {
                lags.extend(
                    stamps
                        .unwrap()
                        .into_iter()
                        .flatten()
                        .map(|ts| polled.saturating_sub(ts as u64)),
                );
            }
            *seen = top;
        }
        if last {
            return lags;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What one run measured.
struct Measured {
    events: u64,
    /// Events the writer's queue had no room for.
    dropped: u64,
    achieved: f64,
    /// Emit to queryable, per sampled stored event.
    queryable: Vec<u64>,
    /// Emit to analysed, per sampled event (empty without the analysis).
    analysed: Vec<u64>,
}

/// Runs one recording's worth at `rate` events/s for `secs` seconds, with
/// the analysis observing or not.
fn run(rate: u64, secs: u64, analysis: bool, slow_disk: bool) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    rt.block_on(async {
        let store = Store::open(&path, OpenMode::Create).await.unwrap();
        let session = store.begin_session(&session()).await.unwrap();
        // The analysis sees every batch as soon as it is correlated, as in
        // `record`.
        let (observer, mut committed) = mpsc::channel::<Correlated>(64);
        let analysing = tokio::spawn(async move {
            let mut a = Analyzer::new(1, "freshness", monotonic_ns(), AnalyzerConfig::default());
            let mut lags = Vec::new();
            while let Some(c) = committed.recv().await {
                let now = monotonic_ns();
                lags.extend(
                    c.events
                        .iter()
                        .filter(|e| e.msg_id.is_some_and(|id| id % SAMPLE as u64 == 0))
                        .map(|e| now.saturating_sub(e.ts_ns)),
                );
                a.correlated(
                    &c.events,
                    &c.channel_ids,
                    &c.messages,
                    &c.signals,
                    c.ingest_dropped,
                );
                a.tick(monotonic_ns());
            }
            lags
        });
        let config = WriterConfig {
            observer: analysis.then_some(observer),
            commit_delay: match slow_disk {
                true => Duration::from_millis(50),
                false => Duration::ZERO,
            },
            ..WriterConfig::default()
        };
        let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || read_lags(path, done))
        };

        let start = Instant::now();
        let per_batch = Duration::from_secs_f64(BATCH as f64 / rate as f64);
        let batches = rate * secs / BATCH as u64;
        for k in 0..batches {
            tokio::time::sleep_until((start + per_batch * k as u32).into()).await;
            ingest.send(batch(k * BATCH as u64)).await.unwrap();
        }
        let elapsed = start.elapsed();
        drop(ingest);
        let stats = writer.finish().await.unwrap();
        let analysed = analysing.await.unwrap();
        done.store(true, Ordering::Release);
        let lags = reader.join().unwrap();
        store.close().await;
        // The stamps the reader should have seen: every sampled row's,
        // counted once the recording is done.
        let sampled: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                &format!(
                    "SELECT (SELECT count(*) FROM event_rows WHERE id % {SAMPLE} = 0)
                          + (SELECT coalesce(sum((ends & 1) + (ends >> 1 & 1)), 0) FROM messages
                             WHERE id % {SAMPLE} = 0)"
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            lags.len() as u64,
            sampled as u64,
            "the reader saw every sampled row"
        );
        let made = batches * BATCH as u64;
        assert_eq!(
            stats.events + stats.ingest_dropped,
            made,
            "the writer stored or counted every event"
        );
        Measured {
            events: made,
            dropped: stats.ingest_dropped,
            achieved: made as f64 / elapsed.as_secs_f64(),
            queryable: lags,
            analysed,
        }
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, as a smoke test: keep that short.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut nums = args.iter().filter_map(|a| a.parse::<u64>().ok());
    let rate = nums
        .next()
        .unwrap_or(if benching { 500_000 } else { 50_000 });
    let secs = nums.next().unwrap_or(if benching { 10 } else { 1 });

    let analysis = !args.iter().any(|a| a == "--no-analysis");
    let slow_disk = args.iter().any(|a| a == "--slow-disk");
    let Measured {
        events,
        dropped,
        achieved,
        queryable: mut lags,
        mut analysed,
    } = run(rate, secs, analysis, slow_disk);
    lags.sort_unstable();
    analysed.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "{events} events asked at {rate}/s for {secs} s{}{}, achieved {achieved:.0}/s, \
         {dropped} not stored (ingest drops); \
         emit to queryable ({} rows sampled): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (goal: p99 at most 250 ms at 500,000/s)",
        if analysis {
            ""
        } else {
            " without the analysis"
        },
        if slow_disk { ", 50 ms per commit" } else { "" },
        lags.len(),
        ms(percentile(&lags, 0.50)),
        ms(percentile(&lags, 0.99)),
        ms(*lags.last().unwrap_or(&0)),
    );
    if analysis {
        println!(
            "emit to analysed ({} events sampled): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            analysed.len(),
            ms(percentile(&analysed, 0.50)),
            ms(percentile(&analysed, 0.99)),
            ms(*analysed.last().unwrap_or(&0)),
        );
    }
}
