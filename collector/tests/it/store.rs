//! The store against real SQLite files with the real migrations.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use collector::store::{
    inspect, schema_version, spawn_writer, Ingest, Inspection, NewSession, OpenMode, SessionId,
    Store, StoreError, WriterConfig, WriterHandle,
};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

fn new_session() -> NewSession {
    NewSession {
        name: Some("t".into()),
        command: "true".into(),
        host: "h".into(),
        started_at: "2026-11-22T00:00:00.000Z".into(),
        sources: "ebpf".into(),
        start_mono_ns: 1,
        recorder_pid: 1,
    }
}

fn send(ts: u64, pid: u32, channel: &ChannelId, msg: u64) -> Event {
    let mut e = Event::new(ts, pid, pid, Source::Lib, EventKind::MsgSend);
    e.channel = Some(channel.clone());
    e.size = 64;
    e.msg_id = Some(msg);
    e
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn new_database_is_owner_only_and_at_the_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "database must be owner-only");
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o777,
        0o700,
        "a directory we create must be owner-only"
    );
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    store.close().await;
    assert_eq!(
        inspect(&path).await.unwrap(),
        Inspection::Ours {
            version: schema_version()
        }
    );
}

/// The columns DESIGN.md promises users; a migration that renamed one would
/// break their scripts.
#[tokio::test]
async fn every_contract_column_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    let contract: &[(&str, &[&str])] = &[
        (
            "sessions",
            &[
                "id",
                "name",
                "command",
                "host",
                "started_at",
                "ended_at",
                "exit_status",
                "sources",
            ],
        ),
        (
            "processes",
            &[
                "session_id",
                "pid",
                "ppid",
                "comm",
                "exe",
                "started_ns",
                "exited_ns",
            ],
        ),
        ("channels", &["id", "session_id", "kind", "name"]),
        (
            "events",
            &[
                "id",
                "session_id",
                "ts_ns",
                "pid",
                "tid",
                "source",
                "kind",
                "channel_id",
                "size",
                "msg_id",
            ],
        ),
        (
            "messages",
            &[
                "session_id",
                "channel_id",
                "msg_id",
                "sender_pid",
                "sender_tid",
                "receiver_pid",
                "receiver_tid",
                "sent_ns",
                "received_ns",
                "latency_ns",
                "size",
            ],
        ),
        (
            "waits",
            &[
                "session_id",
                "pid",
                "tid",
                "channel_id",
                "start_ns",
                "end_ns",
                "waker_pid",
            ],
        ),
        (
            "signals",
            &[
                "session_id",
                "sender_pid",
                "target_pid",
                "signo",
                "generated_ns",
                "delivered_ns",
            ],
        ),
        (
            "deadlocks",
            &["session_id", "detected_ns", "resolved_ns", "cycle"],
        ),
        ("drops", &["session_id", "source", "count", "ts_ns"]),
        (
            "traffic",
            &[
                "session_id",
                "channel_id",
                "second",
                "sends",
                "receives",
                "messages",
                "paired",
                "bytes",
            ],
        ),
    ];
    for (table, columns) in contract {
        let have: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM pragma_table_xinfo('{table}')"))
                .fetch_all(store.pool())
                .await
                .unwrap();
        for column in *columns {
            assert!(
                have.iter().any(|h| h == column),
                "{table}.{column} missing; have {have:?}"
            );
        }
    }
}

/// `events.kind` and `events.source` are generated from codes in SQL; this
/// is what keeps that SQL and ipc_events from drifting apart.
#[tokio::test]
async fn every_kind_and_source_reads_back_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, writer) = recording(dir.path()).await;
    let pipe = ChannelId::numeric(ChannelKind::Pipe, 1, 0);
    let mut batch = Vec::new();
    for (i, kind) in EventKind::ALL.iter().enumerate() {
        for source in Source::ALL {
            let mut e = Event::new(i as u64, 1, 1, *source, *kind);
            e.channel = kind.needs_channel().then(|| pipe.clone());
            batch.push(e);
        }
    }
    ingest.send(batch.clone()).await.unwrap();
    drop(ingest);
    writer.finish().await.unwrap();
    // Sorted: a message's send and receive are stored in its row and
    // read back through the view after the other events.
    let mut rows: Vec<(String, String)> = sqlx::query_as("SELECT source, kind FROM events")
        .fetch_all(store.pool())
        .await
        .unwrap();
    rows.sort();
    let mut expected: Vec<(String, String)> = batch
        .iter()
        .map(|e| (e.source.as_str().to_owned(), e.kind.as_str().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn writer_stores_events_channels_processes_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let config = WriterConfig {
        rows_per_statement: 7, // odd sizes exercise full and partial statements
        rows_per_tx: 100,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();

    let pipe = ChannelId::numeric(ChannelKind::Pipe, 99, 0);
    let mq = ChannelId::named(ChannelKind::Mq, "/jobs");
    let mut start = Event::new(10, 500, 500, Source::Ebpf, EventKind::ProcessStart);
    start.aux = 1;
    start.comm = "sh".into();
    let mut exec = Event::new(11, 500, 500, Source::Ebpf, EventKind::ProcessExec);
    exec.comm = "worker".into();
    exec.path = Some("/usr/bin/worker".into());
    ingest.send(vec![start, exec]).await.unwrap();
    for batch in 0..10u64 {
        let events = (0..25).map(|i| {
            let ch = if i % 2 == 0 { &pipe } else { &mq };
            send(100 + batch * 25 + i, 500, ch, batch * 25 + i + 1)
        });
        ingest.send(events.collect()).await.unwrap();
    }
    let mut dropped = Event::new(400, 0, 0, Source::Collector, EventKind::Drop);
    dropped.aux = ipc_events::raw::drop_source::EBPF_RING;
    dropped.size = 17;
    let exit = Event::new(500, 500, 500, Source::Ebpf, EventKind::ProcessExit);
    ingest.send(vec![dropped, exit]).await.unwrap();
    drop(ingest);
    let stats = writer.finish().await.unwrap();

    assert_eq!(stats.events, 254);
    assert_eq!(count(&store, "SELECT count(*) FROM events").await, 254);
    assert_eq!(count(&store, "SELECT event_count FROM sessions").await, 254);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM events WHERE kind = 'msg_send'"
        )
        .await,
        250
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(DISTINCT msg_id) FROM events WHERE msg_id IS NOT NULL"
        )
        .await,
        250
    );
    assert_eq!(count(&store, "SELECT count(*) FROM channels").await, 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM events e JOIN channels c ON c.id = e.channel_id WHERE c.kind = 'mq' AND c.name = '/jobs'").await,
        120 // the odd i of each 25: 12 a batch
    );
    let (comm, exe, ppid, started, exited): (String, String, i64, i64, i64) = sqlx::query_as(
        "SELECT comm, exe, ppid, started_ns, exited_ns FROM processes WHERE pid = 500",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (comm.as_str(), exe.as_str(), ppid, started, exited),
        ("worker", "/usr/bin/worker", 1, 10, 500)
    );
    assert_eq!(
        count(
            &store,
            "SELECT sum(count) FROM drops WHERE source = 'ebpf_ring'"
        )
        .await,
        17
    );
}

#[tokio::test]
async fn rows_become_queryable_within_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, writer) = recording(dir.path()).await;
    let pipe = ChannelId::numeric(ChannelKind::Pipe, 1, 0);
    ingest.send(vec![send(1, 2, &pipe, 1)]).await.unwrap();
    // The writer is still running: the row must reach the file on the
    // timer, not only when the writer stops. Bounded poll, no timing claim.
    let mut seen = 0;
    for _ in 0..100 {
        let mut reader = store.read_only().await.unwrap();
        seen = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&mut reader)
            .await
            .unwrap();
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1);
    drop(ingest);
    writer.finish().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_counts_drops_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let config = WriterConfig {
        queue_batches: 1,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
    let pipe = ChannelId::numeric(ChannelKind::Pipe, 1, 0);
    // Nothing yields to the writer between these, so the one-slot queue
    // fills at once and the rest must be counted.
    let mut offered = 0;
    for i in 0..50 {
        ingest.try_send(vec![send(i, 2, &pipe, i + 1)]).unwrap();
        offered += 1;
    }
    drop(ingest);
    let stats = writer.finish().await.unwrap();
    assert!(
        stats.ingest_dropped > 0,
        "a one-slot queue cannot take 50 batches unread"
    );
    assert_eq!(stats.events + stats.ingest_dropped, offered);
    assert_eq!(
        count(
            &store,
            "SELECT sum(count) FROM drops WHERE source = 'ingest'"
        )
        .await as u64,
        stats.ingest_dropped
    );
}

/// Per channel and second: (sends, receives) counted from `events`,
/// (messages, paired, bytes) from `messages`, and the same five from
/// `traffic`; what `report` read from the first two it reads from the third.
async fn traffic_both_ways(store: &Store) -> (Vec<[i64; 7]>, Vec<[i64; 7]>) {
    let counted: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT channel_id, second, sum(sends), sum(receives), sum(messages), sum(paired),
                sum(bytes)
         FROM (SELECT channel_id, ts_ns / 1000000000 AS second, kind = 'msg_send' AS sends,
                      kind = 'msg_recv' AS receives, 0 AS messages, 0 AS paired, 0 AS bytes
               FROM events WHERE kind IN ('msg_send', 'msg_recv')
               UNION ALL
               SELECT channel_id, coalesce(received_ns, sent_ns) / 1000000000, 0, 0, 1,
                      latency_ns IS NOT NULL, size
               FROM messages)
         GROUP BY channel_id, second ORDER BY channel_id, second",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let stored: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT channel_id, second, sends, receives, messages, paired, bytes
         FROM traffic ORDER BY channel_id, second",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let rows = |v: Vec<(i64, i64, i64, i64, i64, i64, i64)>| {
        v.into_iter()
            .map(|r| [r.0, r.1, r.2, r.3, r.4, r.5, r.6])
            .collect()
    };
    (rows(counted), rows(stored))
}

/// ipc-lib traffic on two channels over three seconds: sends, their
/// receives (one never comes), in batches that split seconds across
/// transactions.
fn two_channels_three_seconds() -> Vec<Vec<Event>> {
    let a = ChannelId::named(ChannelKind::IpclibChannel, "a");
    let b = ChannelId::named(ChannelKind::IpclibChannel, "b");
    let recv = |ts: u64, channel: &ChannelId, msg: u64| {
        let mut e = send(ts, 2, channel, msg);
        e.kind = EventKind::MsgRecv;
        e
    };
    let mut events = Vec::new();
    for i in 0..300u64 {
        let ts = 1_000_000_000 + i * 10_000_000; // 100 a second
        let channel = if i % 3 == 0 { &b } else { &a };
        events.push(send(ts, 1, channel, i + 1));
        if i != 150 {
            events.push(recv(ts + 1_000_000, channel, i + 1));
        }
    }
    events.chunks(37).map(<[Event]>::to_vec).collect()
}

#[tokio::test]
async fn traffic_adds_up_what_events_and_messages_hold_across_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let config = WriterConfig {
        rows_per_tx: 20,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
    for batch in two_channels_three_seconds() {
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    let stats = writer.finish().await.unwrap();
    assert!(stats.transactions > 10, "{stats:?}");
    let (counted, stored) = traffic_both_ways(&store).await;
    assert_eq!(stored, counted);
    // Two channels, each in seconds 1, 2 and 3; message 150 never received.
    assert_eq!(stored.len(), 6, "{stored:?}");
    let total = |i: usize| stored.iter().map(|r| r[i]).sum::<i64>();
    assert_eq!([2, 3, 4, 5, 6].map(total), [300, 299, 300, 299, 300 * 64]);
}

#[tokio::test]
async fn an_older_database_gains_the_traffic_of_its_sessions() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    // The same traffic recorded by this build and by one at schema 8.
    let new = Store::open(&dir.path().join("new.db"), OpenMode::Create)
        .await
        .unwrap();
    let session = new.begin_session(&new_session()).await.unwrap();
    let (ingest, writer) = spawn_writer(&new, session, WriterConfig::default())
        .await
        .unwrap();
    for batch in two_channels_three_seconds() {
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    writer.finish().await.unwrap();
    let (_, recorded) = traffic_both_ways(&new).await;
    new.close().await;

    let path = dir.path().join("v8.db");
    std::fs::copy(dir.path().join("new.db"), &path).unwrap();
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    // Back to schema 8: no traffic table, as that build left its files.
    back_to_schema_9(&pool).await;
    sqlx::query(
        "DROP TABLE traffic; DELETE FROM _sqlx_migrations WHERE version = 9;
         PRAGMA user_version = 8;",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
    let (counted, migrated) = traffic_both_ways(&store).await;
    assert_eq!(migrated, counted);
    assert_eq!(
        migrated, recorded,
        "the migration counts as the writer does"
    );
}

/// Turns a database of this build into one as the build at schema 10 left
/// it: messages found by time through two indexes, no spans.
async fn back_to_schema_10(pool: &sqlx::SqlitePool) {
    let views: String = include_str!("../../../migrations/0010_compact_messages.sql")
        .split("CREATE VIEW")
        .skip(1)
        .map(|view| format!("CREATE VIEW{}", view.split("PRAGMA").next().unwrap()))
        .collect();
    sqlx::raw_sql(&format!(
        "DROP VIEW events; DROP VIEW message_sends; DROP VIEW message_receives; {views}
         DROP TABLE message_spans;
         CREATE INDEX messages_by_session_received ON messages(session_id, received_ns);
         CREATE INDEX messages_by_session_sent ON messages(session_id, sent_ns);
         DELETE FROM _sqlx_migrations WHERE version = 11; PRAGMA user_version = 10;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Turns a database of this build into one as the build at schema 9 left
/// it: every event a row of the `events` table, messages without the
/// columns of their ends.
async fn back_to_schema_9(pool: &sqlx::SqlitePool) {
    const COLUMNS: &str = "session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, \
                           size, msg_id, result, duration_ns, aux, payload";
    back_to_schema_10(pool).await;
    let mut sql = format!(
        "INSERT INTO event_rows ({COLUMNS}) SELECT {COLUMNS} FROM message_sends
         UNION ALL SELECT {COLUMNS} FROM message_receives;
         DROP VIEW events; DROP VIEW message_sends; DROP VIEW message_receives;
         DROP INDEX messages_by_session_sent;
         ALTER TABLE event_rows RENAME TO events;"
    );
    for end in ["send", "recv"] {
        for column in ["source_code", "duration_ns", "result", "aux", "payload"] {
            sql += &format!("ALTER TABLE messages DROP COLUMN {end}_{column};");
        }
    }
    sql += "ALTER TABLE messages DROP COLUMN ends;
            DELETE FROM _sqlx_migrations WHERE version = 10; PRAGMA user_version = 9;";
    sqlx::raw_sql(&sql).execute(pool).await.unwrap();
}

/// Every column of every event of `pool`'s database, in one order.
async fn all_events(pool: &sqlx::SqlitePool) -> Vec<Vec<Option<i64>>> {
    let rows: Vec<sqlx::sqlite::SqliteRow> = sqlx::query(
        "SELECT session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, size, msg_id,
                result, duration_ns, aux, length(payload)
         FROM events ORDER BY ts_ns, kind_code, pid",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| (0..13).map(|i| sqlx::Row::get(r, i)).collect())
        .collect()
}

#[tokio::test]
async fn the_events_a_message_row_holds_read_back_as_the_rows_they_were() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let (ingest, writer) = spawn_writer(&store, session, WriterConfig::default())
        .await
        .unwrap();
    let mut batches = two_channels_three_seconds();
    // Ends that are not the usual: a payload, an aux, a result that is not
    // the size, a duration.
    let odd = &mut batches[1][3];
    odd.payload = Some(vec![1, 2, 3]);
    odd.aux = 9;
    odd.result = -4;
    odd.duration_ns = Some(1234);
    for batch in batches {
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    writer.finish().await.unwrap();
    // Most are held by their message (the rest were paired in the batch
    // after their own).
    let held = count(&store, "SELECT count(*) FROM message_sends").await
        + count(&store, "SELECT count(*) FROM message_receives").await;
    let rows = count(&store, "SELECT count(*) FROM event_rows").await;
    assert!(held > 8 * rows, "{held} held, {rows} rows");
    let odd_held = "SELECT count(*) FROM events WHERE aux = 9 AND id >= 1 << 40";
    assert_eq!(count(&store, odd_held).await, 1);
    let recorded = all_events(store.pool()).await;
    assert_eq!(recorded.len(), 599);
    store.close().await;

    // The same file at schema 9, every event a row of its own, migrated.
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    back_to_schema_9(&pool).await;
    assert_eq!(all_events(&pool).await, recorded);
    pool.close().await;
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
    assert_eq!(all_events(store.pool()).await, recorded);
}

/// The stamps and kinds of session 1's events as an export gives them,
/// and as a scan of the whole `events` view does, each sorted.
async fn exported_and_scanned(pool: &sqlx::SqlitePool) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    let mut conn = pool.acquire().await.unwrap();
    let mut out = Vec::new();
    collector::export::jsonl(&mut conn, collector::store::SessionId(1), &mut out)
        .await
        .unwrap();
    let exported: Vec<(i64, String)> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["ts_ns"].as_i64().unwrap(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let scanned = sqlx::query_as("SELECT ts_ns, kind FROM events WHERE session_id = 1")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    (exported, scanned)
}

#[tokio::test]
async fn every_event_is_found_by_time_through_the_spans_of_message_ids() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let config = WriterConfig {
        rows_per_tx: 20,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
    let mut batches = two_channels_three_seconds();
    // A message sent at the start and received 2.5 s later, stored among
    // messages sent and received then: its send is far out of the order
    // of the ids around it.
    let slow = ChannelId::named(ChannelKind::IpclibChannel, "slow");
    batches[0].push(send(1_000_000_000, 3, &slow, 1));
    let mut late = send(3_500_000_000, 4, &slow, 1);
    late.kind = EventKind::MsgRecv;
    let last = batches.len() - 1;
    batches[last].push(late);
    for batch in batches {
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    writer.finish().await.unwrap();
    let slow_latency = "SELECT latency_ns FROM messages WHERE sender_pid = 3";
    assert_eq!(count(&store, slow_latency).await, 2_500_000_000);

    let (exported, mut scanned) = exported_and_scanned(store.pool()).await;
    assert!(
        exported.windows(2).all(|w| w[0].0 <= w[1].0),
        "in time order"
    );
    let mut sorted = exported.clone();
    sorted.sort();
    scanned.sort();
    assert_eq!(scanned.len(), 601);
    let missed: Vec<_> = scanned
        .iter()
        .filter(|e| sorted.binary_search(e).is_err())
        .collect();
    assert!(
        missed.is_empty(),
        "{} not exported: {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
    assert_eq!(sorted.len(), scanned.len(), "every event once");
    store.close().await;

    // The same file as the build at schema 10 left it, migrated: the
    // migration makes the spans of the messages already there.
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    back_to_schema_10(&pool).await;
    pool.close().await;
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
    let (migrated, _) = exported_and_scanned(store.pool()).await;
    assert_eq!(migrated, exported);
}

/// A plain SQLite connection standing in for another program, waiting for
/// locks as a well-behaved one would.
fn sqlite_shell(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn assert_untouched(path: &Path, before: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), before, "file was modified");
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        assert!(!Path::new(&side).exists(), "{suffix} file was created");
    }
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    let bytes =
        b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
            .repeat(3);
    std::fs::write(&path, &bytes).unwrap();
    for mode in [OpenMode::Create, OpenMode::Existing] {
        let err = Store::open(&path, mode).await.unwrap_err();
        assert!(matches!(err, StoreError::NotSqlite { .. }), "{err}");
    }
    assert_untouched(&path, &bytes);
}

#[tokio::test]
async fn a_truncated_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    store.close().await;
    // Make the page count in the header trustworthy (checkpointed, not WAL).
    let conn = sqlite_shell(&path);
    conn.execute_batch("PRAGMA journal_mode = DELETE;").unwrap();
    drop(conn);
    let full = std::fs::read(&path).unwrap();
    let cut = full[..full.len() / 2].to_vec();
    std::fs::write(&path, &cut).unwrap();
    let err = Store::open(&path, OpenMode::Existing).await.unwrap_err();
    assert!(matches!(err, StoreError::Truncated { .. }), "{err}");
    assert_untouched(&path, &cut);
}

/// A recorder killed mid-checkpoint leaves the main file shorter than its
/// header says, with the pages in the WAL: that database is fine, not
/// truncated.
#[tokio::test]
async fn a_short_main_file_with_its_wal_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    store.close().await;
    // Keep the WAL (no checkpoint on close), grow the database inside it,
    // then cut the main file back as an interrupted checkpoint would leave
    // it: page 1 rewritten with the new size, the rest not yet written.
    let conn = sqlite_shell(&path);
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
        .unwrap();
    let grown: Vec<u8> = {
        conn.execute_batch(
            "CREATE TABLE scratch (x BLOB); INSERT INTO scratch VALUES (zeroblob(200000));",
        )
        .unwrap();
        let before = std::fs::read(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
            .unwrap();
        let after = std::fs::read(&path).unwrap();
        assert!(after.len() > before.len());
        let mut short = after[..before.len()].to_vec();
        short[..100].copy_from_slice(&after[..100]);
        short
    };
    std::mem::forget(conn); // a killed process does not close cleanly
    std::fs::write(&path, &grown).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL still holds the pages"
    );
    let store = Store::open(&path, OpenMode::Existing).await.unwrap();
    assert!(store.has_session(session).await.unwrap());
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    store.close().await;
    let conn = sqlite_shell(&path);
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = DELETE; PRAGMA user_version = {};",
        schema_version() + 1
    ))
    .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, OpenMode::Existing).await.unwrap_err();
    match err {
        StoreError::TooNew {
            found, supported, ..
        } => {
            assert_eq!((found, supported), (schema_version() + 1, schema_version()))
        }
        other => panic!("expected TooNew, got {other}"),
    }
    assert_untouched(&path, &before);
}

#[tokio::test]
async fn someone_elses_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let conn = sqlite_shell(&path);
    conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, OpenMode::Create).await.unwrap_err();
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
    assert_untouched(&path, &before);
}

#[tokio::test]
async fn a_missing_database_is_an_error_for_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    let err = Store::open(&path, OpenMode::Existing).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openers_racing_to_create_one_database_all_succeed() {
    // Before their fixes, each race below failed this test within 400
    // rounds (at rounds 1 and 184): a BUSY while setting WAL mode, and a
    // file holding only sqlx's bookkeeping table taken for someone else's.
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("race-{round}.db"));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { Store::open(&path, OpenMode::Create).await })
            })
            .collect();
        for open in opens {
            let store = open.await.unwrap().unwrap();
            assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
        }
    }
}

#[tokio::test]
async fn a_database_being_created_is_left_to_its_creator() {
    // What a recorder leaves between creating the file and its schema: a
    // reader that migrated it there made the recorder's migrations fail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    std::fs::write(&path, b"").unwrap();
    let err = Store::open(&path, OpenMode::Existing).await.unwrap_err();
    assert!(matches!(err, StoreError::Empty { .. }), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left untouched");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
}

#[tokio::test]
async fn sessions_are_found_by_id_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    assert_eq!(store.latest_session().await.unwrap(), None);
    let a = store.begin_session(&new_session()).await.unwrap();
    let b = store.begin_session(&new_session()).await.unwrap();
    assert_eq!(store.latest_session().await.unwrap(), Some(b));
    assert!(store.has_session(a).await.unwrap());
    assert!(!store.has_session(SessionId(b.0 + 1)).await.unwrap());
}

#[tokio::test]
async fn an_older_database_is_read_upgraded_left_as_it_was_and_migrated_by_a_writer() {
    use sqlx::migrate::Migrator;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    // A database as the build at schema 5 left it: a futex wait's begin
    // stored as a `futex_wait` whose result is the probes' marker.
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    let old = Migrator {
        migrations: collector::store::MIGRATOR
            .iter()
            .filter(|m| m.version <= 5)
            .cloned()
            .collect(),
        ..Migrator::DEFAULT
    };
    old.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, command, host, started_at, sources, start_mono_ns, recorder_pid)
         VALUES (1, 'c', 'h', '2026-01-01T00:00:00Z', 'ebpf', 0, 1);
         INSERT INTO events (session_id, ts_ns, pid, tid, source_code, kind_code, size, result, aux)
         VALUES (1, 10, 7, 7, 2, 10, 0, -9223372036854775808, 0),
                (1, 20, 7, 7, 2, 10, 0, -110, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let files = |dir: &Path| {
        let mut all: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        all.sort();
        all
    };
    let before = files(dir.path());

    // A reader sees this build's schema (a futex wait's begin as one, not
    // as a wait with the probes' marker for a result), through a copy: the
    // file, and what lies beside it, stay as they were (issue 15: `query`
    // migrated an older file in place).
    let expected = [
        ("futex_wait_begin".to_owned(), 0),
        ("futex_wait".to_owned(), -110),
    ];
    let kinds = "SELECT kind, result FROM events ORDER BY ts_ns";
    let store = Store::open(&path, OpenMode::Existing).await.unwrap();
    assert_eq!(store.upgraded_from(), Some(5));
    assert_eq!(count(&store, "PRAGMA user_version").await, schema_version());
    let rows: Vec<(String, i64)> = sqlx::query_as(kinds).fetch_all(store.pool()).await.unwrap();
    assert_eq!(rows, expected);
    let mut conn = store.read_only().await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(kinds).fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows, expected);
    drop(conn);
    store.close().await;
    assert_eq!(files(dir.path()), before);

    // A recorder upgrades the file itself.
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    assert_eq!(store.upgraded_from(), None);
    let rows: Vec<(String, i64)> = sqlx::query_as(kinds).fetch_all(store.pool()).await.unwrap();
    assert_eq!(rows, expected);
    store.close().await;
    let store = Store::open(&path, OpenMode::Existing).await.unwrap();
    assert_eq!(store.upgraded_from(), None);
}

#[tokio::test]
async fn a_fifo_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for mode in [OpenMode::Create, OpenMode::Existing] {
        let opened =
            tokio::time::timeout(std::time::Duration::from_secs(10), Store::open(&path, mode))
                .await
                .expect("opening a FIFO blocked");
        let err = opened.unwrap_err();
        assert!(
            matches!(err, StoreError::NotAFile { kind: "a FIFO", .. }),
            "{err}"
        );
    }
}

/// A finished session of `events`, ended at `end_ns`, replayed at its end.
async fn replayed_at_the_end(events: Vec<Event>, end_ns: u64) -> ipc_events::live::Snapshot {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let (ingest, writer) = spawn_writer(&store, session, WriterConfig::default())
        .await
        .unwrap();
    ingest.send(events).await.unwrap();
    drop(ingest);
    writer.finish().await.unwrap();
    store
        .finish_session(session, "2026-11-22T00:00:01.000Z", end_ns, Some(0))
        .await
        .unwrap();
    store.close().await;

    let store = Store::open(&path, OpenMode::Existing).await.unwrap();
    let mut replay = collector::replay::Replay::open(store, session)
        .await
        .unwrap();
    let end = replay.info().end_ns;
    let snapshot = replay.load_until(end).await.unwrap();
    assert_eq!(snapshot.now_ns, end, "the cursor is where it was asked");
    snapshot
}

/// A replay names a process by the title it gave itself, as the live feed
/// does (issue 17: every process of a server read `postgres`).
#[tokio::test]
async fn a_replay_names_a_process_by_its_title() {
    let mut start = Event::new(10, 7, 7, Source::Ebpf, EventKind::ProcessStart);
    start.comm = "postgres".into();
    let mut titled = Event::new(20, 7, 7, Source::Ebpf, EventKind::ProcessTitle);
    titled.comm = "postgres".into();
    titled.path = Some("postgres: checkpointer".into());
    let jobs = ChannelId::named(ChannelKind::IpclibChannel, "jobs");
    let snapshot = replayed_at_the_end(vec![start, titled, send(30, 7, &jobs, 1)], 40).await;
    let names: Vec<_> = snapshot.processes.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["postgres: checkpointer"]);
}

/// At the end of a session shorter than a second, every rate and latency
/// of a replay read as none: the windows took only complete seconds, and
/// the recording's last second never completed (issue 17). Once it has
/// ended, its last second counts.
#[tokio::test]
async fn a_replay_at_the_end_of_a_short_session_shows_its_rates_and_latencies() {
    let jobs = ChannelId::named(ChannelKind::IpclibChannel, "jobs");
    // Ten messages in the session's first 200 ms, each received 1 ms after.
    let base = 5_000_000_000;
    let mut events = Vec::new();
    for i in 0..10u64 {
        let at = base + i * 20_000_000;
        events.push(send(at, 7, &jobs, i + 1));
        let mut recv = Event::new(at + 1_000_000, 8, 8, Source::Lib, EventKind::MsgRecv);
        recv.channel = Some(jobs.clone());
        recv.size = 64;
        recv.msg_id = Some(i + 1);
        events.push(recv);
    }
    let snapshot = replayed_at_the_end(events, base + 200_000_000).await;
    let jobs = &snapshot.channels[0];
    assert_eq!(jobs.messages, 10);
    assert_eq!(jobs.latency.last_1s.count, 10, "{:?}", jobs.latency);
    // HDR histograms of 3 significant digits: 1 ms within 0.1%.
    assert!(
        jobs.latency.last_10s.p50.abs_diff(1_000_000) <= 1_000,
        "{:?}",
        jobs.latency
    );
    assert!(jobs.rate_1s.messages_per_s > 0.0, "{:?}", jobs.rate_1s);
}

/// A store in `dir` with a session being written, as `record` has it.
async fn recording(dir: &Path) -> (Store, Ingest, WriterHandle) {
    let store = Store::open(&dir.join("a.db"), OpenMode::Create)
        .await
        .unwrap();
    let session = store.begin_session(&new_session()).await.unwrap();
    let (ingest, writer) = spawn_writer(&store, session, WriterConfig::default())
        .await
        .unwrap();
    (store, ingest, writer)
}

/// A source whose task runs late holds back what the others sent after:
/// ipc-lib's record of a signal, drained 60 ms late, still comes before
/// the probes' sight of its delivery a millisecond later, and pairs with
/// it. (A fixed hold-back of 10 ms correlated the delivery first, with
/// nothing to deliver.)
#[tokio::test]
async fn a_late_source_is_waited_for_and_its_events_pair_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, writer) = recording(dir.path()).await;
    let kernel = ingest.source(0);
    let ring = ingest.source(0);
    let sent_at = collector::clock::monotonic_ns();
    ingest
        .send_batch(ring.batch(Vec::new(), sent_at - 1_000))
        .await
        .unwrap();
    let mut delivery = Event::new(
        sent_at + 1_000_000,
        8,
        8,
        Source::Ebpf,
        EventKind::SignalDeliver,
    );
    delivery.aux = 10;
    let drained_at = collector::clock::monotonic_ns();
    ingest
        .send_batch(kernel.batch(vec![delivery], drained_at))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut generate = Event::new(sent_at, 7, 7, Source::Lib, EventKind::SignalGenerate);
    generate.target_pid = Some(8);
    generate.aux = 10;
    let drained_at = collector::clock::monotonic_ns();
    ingest
        .send_batch(ring.batch(vec![generate], drained_at))
        .await
        .unwrap();
    drop((kernel, ring, ingest));
    writer.finish().await.unwrap();
    let delivered: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT sender_pid, delivered_ns FROM signals")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(delivered, [(7, Some((sent_at + 1_000_000) as i64))]);
}

/// An ipc-lib ring is known as the recorder's only when its registration
/// is handled, which can be tens of milliseconds after the probes saw the
/// process map it. Held from the moment the process was told to make it,
/// that mapping is still known as the recorder's plumbing, not a user's
/// shared memory.
#[tokio::test]
async fn a_ring_mapped_before_its_registration_is_handled_is_still_the_recorders() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, writer) = recording(dir.path()).await;
    let told_ready = collector::clock::monotonic_ns();
    let registration = ingest.source(told_ready);
    let mut map = Event::new(told_ready + 1_000, 7, 7, Source::Ebpf, EventKind::ShmMap);
    map.channel = Some(ChannelId::named(
        ChannelKind::Shm,
        "memfd:ipcscope-ring:[4242]",
    ));
    map.size = 1 << 20;
    ingest.send(vec![map]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    ingest.own_object(4242);
    drop(registration);
    drop(ingest);
    writer.finish().await.unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM channels").await, 0);
}
