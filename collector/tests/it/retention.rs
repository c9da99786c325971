//! Retention through the real writer: the session's oldest rows go, the
//! aggregates and every other session stay.

use collector::store::{spawn_writer, NewSession, OpenMode, SessionId, Store, WriterConfig};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

fn new_session(name: &str) -> NewSession {
    NewSession {
        name: Some(name.into()),
        command: "true".into(),
        host: "h".into(),
        started_at: "2026-11-22T00:00:00.000Z".into(),
        sources: "lib".into(),
        start_mono_ns: 1,
        recorder_pid: 1,
    }
}

/// `messages` sends and their receives on one ipc-lib channel, 10 µs
/// apart, in batches of 1,000 events.
fn traffic(messages: u64) -> Vec<Vec<Event>> {
    let channel = ChannelId::named(ChannelKind::IpclibChannel, "c");
    let mut events = Vec::new();
    for i in 0..messages {
        for (kind, pid, at) in [(EventKind::MsgSend, 1, 0), (EventKind::MsgRecv, 2, 5_000)] {
            let mut e = Event::new(1_000_000_000 + i * 10_000 + at, pid, pid, Source::Lib, kind);
            e.channel = Some(channel.clone());
            e.size = 100;
            e.msg_id = Some(i + 1);
            events.push(e);
        }
    }
    events.chunks(1000).map(<[Event]>::to_vec).collect()
}

async fn record(store: &Store, name: &str, messages: u64, limit: Option<u64>) -> SessionId {
    let session = store.begin_session(&new_session(name)).await.unwrap();
    let config = WriterConfig {
        rows_per_tx: 5_000,
        max_db_bytes: limit,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(store, session, config).await.unwrap();
    for batch in traffic(messages) {
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    let stats = writer.finish().await.unwrap();
    assert_eq!(stats.events, 2 * messages);
    session
}

/// The first row of `sql`, with `?1` the session.
async fn row<T>(store: &Store, sql: &str, session: SessionId) -> T
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(session.0)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_sessions_oldest_rows_go_and_its_traffic_and_other_sessions_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    const LIMIT: u64 = 4 << 20;
    // An earlier session without a limit, then one ten times the limit.
    let earlier = record(&store, "earlier", 5_000, None).await;
    let kept = record(&store, "kept", 200_000, Some(LIMIT)).await;

    let counts = "SELECT (SELECT count(*) FROM events WHERE session_id = ?1),
                         (SELECT count(*) FROM messages WHERE session_id = ?1),
                         (SELECT coalesce(sum(count), 0) FROM drops
                          WHERE session_id = ?1 AND source = 'retention'),
                         (SELECT event_count FROM sessions WHERE id = ?1)";
    assert_eq!(
        row::<(i64, i64, i64, i64)>(&store, counts, earlier).await,
        (10_000, 5_000, 0, 10_000),
        "another session is never touched"
    );
    let (events, messages, removed, written): (i64, i64, i64, i64) =
        row(&store, counts, kept).await;
    assert_eq!(events + removed, written);
    assert!(removed > written * 8 / 10, "{removed} of {written}");
    assert!(messages < 200_000 / 5, "{messages} messages left");
    // What is left is the newest: no event older than a removed one but
    // the send of a message received after it (a message is as old as its
    // receipt, and its events go with it), and no message received before
    // the oldest event left.
    let (oldest_event, oldest_receipt, newest_removed): (i64, i64, i64) = row(
        &store,
        "SELECT (SELECT min(ts_ns) FROM events WHERE session_id = ?1
                 AND NOT (kind = 'msg_send' AND id >= 1 << 40)),
                (SELECT min(received_ns) FROM messages WHERE session_id = ?1),
                (SELECT max(ts_ns) FROM drops WHERE session_id = ?1 AND source = 'retention')",
        kept,
    )
    .await;
    assert!(
        oldest_event > newest_removed && oldest_receipt > newest_removed,
        "{oldest_event} {oldest_receipt} {newest_removed}"
    );

    let traffic = "SELECT sum(sends), sum(receives), sum(paired), sum(bytes)
                   FROM traffic WHERE session_id = ?1";
    assert_eq!(
        row::<(i64, i64, i64, i64)>(&store, traffic, kept).await,
        (200_000, 200_000, 200_000, 200_000 * 100)
    );
    let (page_count, page_size, freelist): (i64, i64, i64) = sqlx::query_as(
        "SELECT p.page_count, s.page_size, f.freelist_count
         FROM pragma_page_count() p, pragma_page_size() s, pragma_freelist_count() f",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let in_use = ((page_count - freelist) * page_size) as u64;
    assert!(
        in_use <= LIMIT && (page_count * page_size) as u64 <= LIMIT + LIMIT / 8,
        "{in_use} bytes in use, {page_count} pages of {page_size}"
    );
    store.close().await;
}
