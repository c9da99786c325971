//! What a storage layout costs: the same paired sends and receives written
//! by a rusqlite loop (the floor: nothing but SQLite's own work) into
//! candidate layouts, side by side in one run, each measured in events
//! stored per second and bytes on disk per event: `current` is the schema
//! `record` writes (every migration: a `messages` row holding both its
//! events, found by time through spans of ids), `schema-10` the one before
//! it (the same rows, two more indexes), `schema-9` the one before that
//! (two `events` rows and a `messages` row), the others what a further
//! change would buy.
//!
//!     cargo bench -p collector --bench layout -- [EVENTS] [RUNS]
//!
//! Each run checks that every layout holds every message. Defaults:
//! 2,000,000 events (1,000,000 messages), 3 runs; medians.

use std::time::{Duration, Instant};

use rusqlite::{params_from_iter, Connection};

mod common;

/// One paired message: a send and its receive.
#[derive(Clone, Copy)]
struct Message {
    sent_ns: i64,
    received_ns: i64,
    sender: (i64, i64),
    receiver: (i64, i64),
    channel: i64,
    size: i64,
    msg_id: i64,
}

fn messages(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let t = 1_000_000 + i as i64 * 1_000;
            Message {
                sent_ns: t,
                received_ns: t + 500 + (i as i64 % 97) * 13,
                sender: (100 + (i % 8) as i64, 200 + (i % 8) as i64),
                receiver: (300 + (i % 8) as i64, 400 + (i % 8) as i64),
                channel: 1 + (i % 16) as i64,
                size: 64 + (i % 512) as i64,
                msg_id: i as i64 + 1,
            }
        })
        .collect()
}

/// Rows to insert: each a kind of row (its table, or `folded`: a
/// `messages` row with the folded layout's columns) and its values.
type Rows = Vec<(&'static str, Vec<Option<i64>>)>;

/// A layout: its tables, and the rows one message makes in them.
struct Layout {
    name: &'static str,
    what: &'static str,
    schema: fn(&Connection),
    rows: fn(&Message) -> Rows,
    /// Counts the messages it holds, to check it holds every one.
    count: &'static str,
    /// Whether each transaction also stores the spans of its messages'
    /// ids (migration 11), as the writer does: a span by send and one by
    /// receipt per transaction here, whose messages all lie within one.
    spans: bool,
}

/// A `messages` row holding both ends' events, as `record` stores it.
fn folded_row(m: &Message) -> Rows {
    let (_, mut values) = message_row(m);
    // ends (both), each end's source and duration; results, aux and
    // payloads NULL: the size, 0, none.
    values.extend([Some(3), Some(2), Some(1_000), Some(2), Some(2_000)]);
    vec![("folded", values)]
}

fn migrations(conn: &Connection) {
    migrations_to(conn, u32::MAX);
}

fn migrations_to(conn: &Connection, last: u32) {
    common::migrate(conn, last);
    // What `messages` refers to (its foreign keys are checked, as sqlx
    // has them on).
    conn.execute_batch(
        "INSERT INTO sessions (command, host, started_at, sources, start_mono_ns, recorder_pid)
         VALUES ('b', 'b', 'b', 'b', 0, 0)",
    )
    .unwrap();
    for c in 1..=16 {
        conn.execute(
            "INSERT INTO channels (id, session_id, kind, name) VALUES (?1, 1, 'unix_stream', ?1)",
            [c],
        )
        .unwrap();
    }
}

/// The two `events` rows of a message, as `record` stores them.
fn event_rows(m: &Message) -> Rows {
    let row = |ts, (pid, tid): (i64, i64), kind| {
        vec![
            Some(1),
            Some(ts),
            Some(pid),
            Some(tid),
            Some(2),
            Some(kind),
            Some(m.channel),
            Some(m.size),
            None,
            Some(m.size),
            None,
            Some(0),
        ]
    };
    vec![
        ("events", row(m.sent_ns, m.sender, 1)),
        ("events", row(m.received_ns, m.receiver, 2)),
    ]
}

/// A `messages` row as `record` stores it.
fn message_row(m: &Message) -> (&'static str, Vec<Option<i64>>) {
    (
        "messages",
        vec![
            Some(1),
            Some(m.channel),
            Some(m.msg_id),
            Some(m.sender.0),
            Some(m.sender.1),
            Some(m.receiver.0),
            Some(m.receiver.1),
            Some(m.sent_ns),
            Some(m.received_ns),
            Some(m.received_ns - m.sent_ns),
            Some(m.size),
        ],
    )
}

const EVENT_COLUMNS: &str = "(session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, \
                             size, msg_id, result, duration_ns, aux)";
const MESSAGE_COLUMNS: &str = "(session_id, channel_id, msg_id, sender_pid, sender_tid, \
                               receiver_pid, receiver_tid, sent_ns, received_ns, latency_ns, size)";

fn columns(table: &str) -> &'static str {
    match table {
        "events" => EVENT_COLUMNS,
        "messages" => MESSAGE_COLUMNS,
        "folded" => {
            "(session_id, channel_id, msg_id, sender_pid, sender_tid, receiver_pid, \
              receiver_tid, sent_ns, received_ns, latency_ns, size, ends, send_source_code, \
              send_duration_ns, recv_source_code, recv_duration_ns)"
        }
        // One row per message, both ends: the receive's time as a delta.
        _ => {
            "(session_id, channel_id, msg_id, sender_pid, sender_tid, receiver_pid, \
              receiver_tid, sent_ns, latency_ns, size)"
        }
    }
}

/// One row per message holding both ends, the receive's time as the
/// latency: what `events` (a view) would derive its send and receive rows
/// from.
fn pair_row(m: &Message) -> Rows {
    vec![(
        "pairs",
        vec![
            Some(1),
            Some(m.channel),
            Some(m.msg_id),
            Some(m.sender.0),
            Some(m.sender.1),
            Some(m.receiver.0),
            Some(m.receiver.1),
            Some(m.sent_ns),
            Some(m.received_ns - m.sent_ns),
            Some(m.size),
        ],
    )]
}

const PAIRS: &str = "CREATE TABLE pairs (
    id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, channel_id INTEGER NOT NULL,
    msg_id INTEGER, sender_pid INTEGER, sender_tid INTEGER, receiver_pid INTEGER,
    receiver_tid INTEGER, sent_ns INTEGER NOT NULL, latency_ns INTEGER, size INTEGER NOT NULL)";

fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            name: "current",
            what: "a messages row holding both ends' events (events a view), found by time \
                   through spans of ids, every index of today's schema (foreign keys on, as \
                   sqlx has them)",
            schema: migrations,
            rows: folded_row,
            count: "SELECT count(*) FROM messages",
            spans: true,
        },
        Layout {
            name: "schema-10",
            what: "the same rows, found by time through two indexes on messages (by receipt \
                   and by send) instead of spans",
            schema: |c| migrations_to(c, 10),
            rows: folded_row,
            count: "SELECT count(*) FROM messages",
            spans: false,
        },
        Layout {
            name: "schema-9",
            what: "two events rows and a messages row per message, every index of schema 9",
            schema: |c| migrations_to(c, 9),
            rows: |m| {
                let mut rows = event_rows(m);
                rows.push(message_row(m));
                rows
            },
            count: "SELECT count(*) FROM messages",
            spans: false,
        },
        Layout {
            name: "pairs",
            what: "one row per message holding both ends, ids in time order, no index",
            schema: |c| c.execute_batch(PAIRS).unwrap(),
            rows: pair_row,
            count: "SELECT count(*) FROM pairs",
            spans: false,
        },
        Layout {
            name: "pairs+channel",
            what: "pairs, plus an index by (session, channel, sent_ns) for a channel's messages",
            schema: |c| {
                c.execute_batch(PAIRS).unwrap();
                c.execute_batch(
                    "CREATE INDEX pairs_by_channel ON pairs(session_id, channel_id, sent_ns)",
                )
                .unwrap();
            },
            rows: pair_row,
            count: "SELECT count(*) FROM pairs",
            spans: false,
        },
    ]
}

/// Rows per multi-row INSERT and per transaction, as the writer's.
const ROWS_PER_STATEMENT: usize = 500;
const MESSAGES_PER_TX: usize = 25_000;

/// Writes every message into `layout`; returns the time and bytes per event.
fn run(layout: &Layout, dir: &std::path::Path, messages: &[Message]) -> (Duration, f64) {
    let path = dir.join(format!("{}.db", layout.name));
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; \
         PRAGMA temp_store = memory;",
    )
    .unwrap();
    (layout.schema)(&conn);
    let start = Instant::now();
    for chunk in messages.chunks(MESSAGES_PER_TX) {
        let tx = conn.transaction().unwrap();
        // Rows grouped by table, each table's in multi-row statements.
        let mut by_table: Vec<(&str, Vec<Vec<Option<i64>>>)> = Vec::new();
        for m in chunk {
            for (table, values) in (layout.rows)(m) {
                match by_table.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, rows)) => rows.push(values),
                    None => by_table.push((table, vec![values])),
                }
            }
        }
        for (table, rows) in &by_table {
            for group in rows.chunks(ROWS_PER_STATEMENT) {
                let width = group[0].len();
                let placeholders = format!("({})", vec!["?"; width].join(","));
                let sql = format!(
                    "INSERT INTO {} {} VALUES {}",
                    if *table == "folded" {
                        "messages"
                    } else {
                        table
                    },
                    columns(table),
                    vec![placeholders; group.len()].join(",")
                );
                let mut stmt = tx.prepare_cached(&sql).unwrap();
                stmt.execute(params_from_iter(group.iter().flatten()))
                    .unwrap();
            }
        }
        if layout.spans {
            let last: i64 = tx.last_insert_rowid();
            let first = last - chunk.len() as i64 + 1;
            let (sent, received) =
                chunk
                    .iter()
                    .fold(((i64::MAX, i64::MIN), (i64::MAX, i64::MIN)), |(s, r), m| {
                        (
                            (s.0.min(m.sent_ns), s.1.max(m.sent_ns)),
                            (r.0.min(m.received_ns), r.1.max(m.received_ns)),
                        )
                    });
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO message_spans (session_id, by_received, from_ns, to_ns, \
                     first_id, last_id) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                )
                .unwrap();
            for (by_received, (from, to)) in [(0, sent), (1, received)] {
                stmt.execute([by_received, from, to, first, last]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let elapsed = start.elapsed();
    let held: i64 = conn.query_row(layout.count, [], |r| r.get(0)).unwrap();
    assert_eq!(
        held as usize,
        messages.len(),
        "{} holds every message",
        layout.name
    );
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let bytes: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (elapsed, bytes as f64 / (2 * messages.len()) as f64)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, as a smoke test: keep that small.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut nums = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let events = nums
        .next()
        .unwrap_or(if benching { 2_000_000 } else { 20_000 });
    let runs = nums.next().unwrap_or(if benching { 3 } else { 1 });
    let messages = messages(events / 2);
    let layouts = layouts();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); layouts.len()];
    let mut sizes = vec![0.0; layouts.len()];
    for _ in 0..runs {
        // Alternated within each run, so all see the same machine.
        for (i, layout) in layouts.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let (t, b) = run(layout, dir.path(), &messages);
            times[i].push(t);
            sizes[i] = b;
        }
    }
    println!(
        "{events} events ({} messages), median of {runs} runs:",
        messages.len()
    );
    for (i, layout) in layouts.iter().enumerate() {
        times[i].sort();
        let t = times[i][times[i].len() / 2];
        println!(
            "  {:<24} {:>10.0} events/s  {:>5.1} bytes/event  ({})",
            layout.name,
            events as f64 / t.as_secs_f64(),
            sizes[i],
            layout.what
        );
    }
}
