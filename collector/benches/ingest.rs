//! Ingest throughput: synthetic events through the real writer path (sqlx,
//! the production schema and indexes) beside a baseline that drives the
//! same SQLite library directly (rusqlite on the same libsqlite3-sys) with
//! the same schema, pragmas and statement shape. Runs alternate so both see
//! the same machine; medians are reported.
//!
//!     cargo bench -p collector --bench ingest -- [EVENTS] [RUNS]
//!
//! It also checks what it measures: both databases must hold every event.
//!
//! Then a breakdown of the recording path by stage, each timed alone on
//! the same events in this run, one thread, per event: decoding the
//! kernel's records, correlation, analysis, and storage (the writer's
//! time above, of which SQLite's own is the baseline's).
//!
//! Defaults: 10,000,000 events, 3 runs each.

use std::time::{Duration, Instant};

mod common;

use collector::store::{spawn_writer, NewSession, OpenMode, Store, WriterConfig};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

const BATCH: usize = 1024;

/// A plausible mix: sends and receives over 16 channels, a few processes.
fn events(n: usize) -> Vec<Vec<Event>> {
    let channels: Vec<ChannelId> = (0..16)
        .map(|i| ChannelId::numeric(ChannelKind::UnixStream, 1000 + i, 2000 + i))
        .collect();
    let mut batches = Vec::with_capacity(n / BATCH + 1);
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        let kind = if i % 2 == 0 {
            EventKind::MsgSend
        } else {
            EventKind::MsgRecv
        };
        let mut e = Event::new(
            1_000_000 + i as u64 * 500,
            100 + (i % 8) as u32,
            200 + (i % 8) as u32,
            Source::Ebpf,
            kind,
        );
        e.channel = Some(channels[(i / 2) % channels.len()].clone());
        // A message's receive returns what its send wrote.
        e.size = 64 + (i / 2 % 512) as u64;
        e.msg_id = Some(i as u64 / 2 + 1);
        e.result = e.size as i64;
        batch.push(e);
        if batch.len() == BATCH {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

fn session() -> NewSession {
    NewSession {
        name: Some("bench".into()),
        command: "bench".into(),
        host: "bench".into(),
        started_at: "2026-01-01T00:00:00.000Z".into(),
        sources: "ebpf".into(),
        start_mono_ns: 0,
        recorder_pid: std::process::id(),
    }
}

/// The real path: Store::open (migrations), one session, the writer task.
fn run_sqlx(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    batches: Vec<Vec<Event>>,
) -> Duration {
    let expected: usize = batches.iter().map(Vec::len).sum();
    rt.block_on(async {
        let path = dir.join("sqlx.db");
        let store = Store::open(&path, OpenMode::Create).await.unwrap();
        let session = store.begin_session(&session()).await.unwrap();
        let start = Instant::now();
        // As fast as the writer takes them: no budget (nothing counted as
        // dropped for being ahead of the disk); the producer waits instead
        // while a million events are not yet stored, so memory stays bounded.
        let config = WriterConfig {
            max_unstored: u64::MAX,
            ..WriterConfig::default()
        };
        let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
        let unstored = writer.unstored();
        for batch in batches {
            while unstored.load(std::sync::atomic::Ordering::Relaxed) > 1_000_000 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            ingest.send(batch).await.unwrap();
        }
        drop(ingest);
        let stats = writer.finish().await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(
            stats.events as usize, expected,
            "the writer stored every event"
        );
        let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(
            messages as usize,
            expected / 2,
            "the writer paired every send"
        );
        store.close().await;
        elapsed
    })
}

/// The baseline: the same layout (every migration; a `messages` row per
/// pair holding both its events, as the writer stores a pair correlated in
/// one batch) and statement shape through rusqlite.
fn run_baseline(dir: &std::path::Path, batches: &[Vec<Event>]) -> Duration {
    let path = dir.join("baseline.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; PRAGMA temp_store = memory;",
    )
    .unwrap();
    // The same layout: every table and index the writer fills.
    common::migrate(&conn, u32::MAX);
    conn.execute("INSERT INTO sessions (command, host, started_at, sources, start_mono_ns, recorder_pid) VALUES ('b','b','b','b',0,0)", [])
        .unwrap();
    conn.execute_batch(
        "INSERT INTO channels (session_id, kind, name) VALUES (1, 'unix_stream', 'x')",
    )
    .unwrap();
    let rows_per_statement = WriterConfig::default().rows_per_statement;
    let rows_per_tx = WriterConfig::default().rows_per_tx;
    const COLUMNS: usize = 22;
    let message_sql = |rows: usize| {
        let mut s = String::from(
            "INSERT INTO messages (session_id, channel_id, msg_id, sender_pid, sender_tid, \
             receiver_pid, receiver_tid, sent_ns, received_ns, latency_ns, size, ends, \
             send_source_code, send_duration_ns, send_result, send_aux, send_payload, \
             recv_source_code, recv_duration_ns, recv_result, recv_aux, recv_payload) VALUES ",
        );
        let group = format!("({})", vec!["?"; COLUMNS].join(","));
        s.push_str(&vec![group; rows].join(","));
        s
    };
    let start = Instant::now();
    let all: Vec<&Event> = batches.iter().flatten().collect();
    for tx_rows in all.chunks(rows_per_tx) {
        let tx = conn.transaction().unwrap();
        // Each send paired with the receive after it, as the correlation
        // stage pairs them.
        let pairs: Vec<(&Event, &Event)> = tx_rows.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        for chunk in pairs.chunks(rows_per_statement) {
            let text = message_sql(chunk.len());
            let mut stmt = tx.prepare_cached(&text).unwrap();
            let mut i = 1;
            for (send, recv) in chunk {
                stmt.raw_bind_parameter(i, 1i64).unwrap();
                stmt.raw_bind_parameter(i + 1, 1i64).unwrap();
                stmt.raw_bind_parameter(i + 2, send.msg_id.map(|m| m as i64))
                    .unwrap();
                stmt.raw_bind_parameter(i + 3, send.pid).unwrap();
                stmt.raw_bind_parameter(i + 4, send.tid).unwrap();
                stmt.raw_bind_parameter(i + 5, recv.pid).unwrap();
                stmt.raw_bind_parameter(i + 6, recv.tid).unwrap();
                stmt.raw_bind_parameter(i + 7, send.ts_ns as i64).unwrap();
                stmt.raw_bind_parameter(i + 8, recv.ts_ns as i64).unwrap();
                stmt.raw_bind_parameter(i + 9, recv.ts_ns as i64 - send.ts_ns as i64)
                    .unwrap();
                stmt.raw_bind_parameter(i + 10, send.size as i64).unwrap();
                stmt.raw_bind_parameter(i + 11, 3i64).unwrap();
                // Each end: its source and duration; result, aux and
                // payload the usual (NULL).
                for (at, end) in [(i + 12, send), (i + 17, recv)] {
                    stmt.raw_bind_parameter(at, end.source.code()).unwrap();
                    stmt.raw_bind_parameter(at + 1, end.duration_ns.map(|d| d as i64))
                        .unwrap();
                    for p in at + 2..at + 5 {
                        stmt.raw_bind_parameter(p, None::<i64>).unwrap();
                    }
                }
                i += COLUMNS;
            }
            stmt.raw_execute().unwrap();
        }
        // The spans of the transaction's message ids, by send and by
        // receipt, as the writer stores them (one of each: the messages of
        // a transaction here lie within a second).
        let last = tx.last_insert_rowid();
        let first = last - pairs.len() as i64 + 1;
        let bounds = |ts: fn(&(&Event, &Event)) -> u64| {
            let (lo, hi) = pairs
                .iter()
                .map(ts)
                .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
            (lo as i64, hi as i64)
        };
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO message_spans (session_id, by_received, from_ns, to_ns, first_id, \
                 last_id) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap();
        for (by_received, (from, to)) in [(0, bounds(|p| p.0.ts_ns)), (1, bounds(|p| p.1.ts_ns))] {
            stmt.execute([by_received, from, to, first, last]).unwrap();
        }
        drop(stmt);
        tx.commit().unwrap();
    }
    let elapsed = start.elapsed();
    let stored: usize = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, all.len(), "the baseline stored every event");
    let messages: usize = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(messages, all.len() / 2, "the baseline paired every send");
    elapsed
}

/// Per-event time of decoding, correlation and analysis, each stage alone.
fn stages(batches: &[Vec<Event>]) -> [Duration; 3] {
    use collector::analysis::{Analyzer, AnalyzerConfig};
    use collector::correlate::{Correlator, Paired};
    use ipc_events::raw::{chan, kind, RawEvent};

    // The kernel's record of each event, as the probes write it.
    let records: Vec<RawEvent> = batches
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| RawEvent {
            ts_ns: e.ts_ns,
            pid: e.pid,
            tid: e.tid,
            kind: match e.kind {
                EventKind::MsgSend => kind::MSG_SEND,
                _ => kind::MSG_RECV,
            },
            chan_kind: chan::UNIX_STREAM,
            obj: 1000 + (i / 2 % 16) as u64,
            obj2: 2000 + (i / 2 % 16) as u64,
            size: e.size,
            result: e.result,
            comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            ..RawEvent::default()
        })
        .collect();
    let start = Instant::now();
    for r in &records {
        // SAFETY: RawEvent is repr(C) with no padding (ipc-events asserts
        // its size), so its bytes are initialised; the slice lives no
        // longer than `r`.
        let bytes = unsafe {
            std::slice::from_raw_parts((r as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
        };
        std::hint::black_box(ipc_events::decode(Source::Ebpf, bytes).unwrap());
    }
    let decode = start.elapsed();

    let mut correlator = Correlator::new(None);
    let mut facts = Vec::with_capacity(batches.len());
    let start = Instant::now();
    for batch in batches {
        for e in batch {
            correlator.push(e.clone());
        }
        facts.push(correlator.take());
    }
    let correlation = start.elapsed();

    // The analysis's inputs as the stage makes them: channels by id.
    let inputs: Vec<_> = facts
        .iter()
        .map(|f| {
            let ids: Vec<Option<i64>> = f
                .channels
                .iter()
                .map(|c| c.map(|c| i64::from(c.0)))
                .collect();
            let messages: Vec<Paired<i64>> = f
                .messages
                .iter()
                .map(|m| Paired {
                    channel: i64::from(m.channel.0),
                    send: m.send,
                    recv: m.recv,
                    msg_id: m.msg_id,
                })
                .collect();
            (ids, messages)
        })
        .collect();
    let mut analyzer = Analyzer::new(1, "bench", 0, AnalyzerConfig::default());
    let start = Instant::now();
    for (f, (ids, messages)) in facts.iter().zip(&inputs) {
        analyzer.correlated(&f.events, ids, messages, &f.signals, 0);
    }
    let analysis = start.elapsed();
    [decode, correlation, analysis]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, as a smoke test of both paths: keep that small.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut nums = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let n = nums
        .next()
        .unwrap_or(if benching { 10_000_000 } else { 20_000 });
    let runs = nums.next().unwrap_or(if benching { 3 } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut by_stage = Vec::new();
    for run in 0..runs {
        let batches = events(n);
        by_stage.push(stages(&batches));
        let dir = tempfile::tempdir().unwrap();
        let b = run_baseline(dir.path(), &batches);
        let o = run_sqlx(&rt, dir.path(), batches);
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "run {}: writer {:.0} rows/s ({:.2?}), baseline {:.0} rows/s ({:.2?}), time ratio {:.2}",
            run + 1, rate(o), o, rate(b), b, o.as_secs_f64() / b.as_secs_f64()
        );
        ours.push(o);
        base.push(b);
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "median of {runs}, {n} events: writer {:.0} rows/s, baseline (rusqlite) {:.0} rows/s, writer/baseline time {:.2}",
        n as f64 / o.as_secs_f64(),
        n as f64 / b.as_secs_f64(),
        o.as_secs_f64() / b.as_secs_f64()
    );
    let per_event = |d: Duration| d.as_nanos() as f64 / n as f64;
    let stage = |k: usize| per_event(median(by_stage.iter().map(|s| s[k]).collect()));
    println!(
        "per event, median of {runs}, one thread each: decode {:.0} ns, correlation {:.0} ns, \
         analysis {:.0} ns, storage {:.0} ns (of which SQLite, the baseline's, {:.0} ns)",
        stage(0),
        stage(1),
        stage(2),
        per_event(o),
        per_event(b),
    );
}
