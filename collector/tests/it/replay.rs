//! Replay's index against the analysis it was built from: every position
//! shows what a fresh analysis shows there.

use collector::replay::Replay;
use collector::store::{spawn_writer, NewSession, OpenMode, SessionId, Store, WriterConfig};
use ipc_events::live::Snapshot;
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
const BASE: u64 = 10 * S;

fn lib(ts: u64, pid: u32, kind: EventKind, channel: &ChannelId) -> Event {
    let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
    e.comm = format!("p{pid}");
    e.channel = Some(channel.clone());
    e
}

fn message(events: &mut Vec<Event>, ts: u64, channel: &ChannelId, id: u64, latency: u64) {
    for (at, pid, kind) in [
        (ts, 10, EventKind::MsgSend),
        (ts + latency, 20, EventKind::MsgRecv),
    ] {
        let mut e = lib(at, pid, kind, channel);
        e.size = 64;
        e.msg_id = Some(id);
        events.push(e);
    }
}

/// Six seconds: a steady channel, a burst in the first second only (its
/// windows empty later), two processes deadlocked on two semaphores from
/// +3 s until one exits at +4.5 s, and a signal.
fn session_events() -> Vec<Event> {
    let steady = ChannelId::named(ChannelKind::IpclibChannel, "steady");
    let burst = ChannelId::named(ChannelKind::IpclibChannel, "burst");
    let mut events = Vec::new();
    for i in 0..600 {
        message(&mut events, BASE + i * 10 * MS, &steady, i + 1, 2 * MS);
    }
    for i in 0..300 {
        message(&mut events, BASE + i * 3 * MS, &burst, i + 1, 50_000);
    }
    let (a, b) = (
        ChannelId::named(ChannelKind::IpclibSem, "a"),
        ChannelId::named(ChannelKind::IpclibSem, "b"),
    );
    for (at, pid, first, second) in [
        (BASE + 3 * S, 100, &a, &b),
        (BASE + 3 * S + MS, 200, &b, &a),
    ] {
        events.push(lib(at, pid, EventKind::SemWaitEnd, first));
        events.push(lib(at + 10, pid, EventKind::SemWaitBegin, second));
    }
    let mut exit = Event::new(
        BASE + 4_500 * MS,
        200,
        200,
        Source::Ebpf,
        EventKind::ProcessExit,
    );
    exit.comm = "p200".into();
    events.push(exit);
    let mut kill = Event::new(
        BASE + 2 * S,
        10,
        10,
        Source::Ebpf,
        EventKind::SignalGenerate,
    );
    kill.aux = 10;
    kill.target_pid = Some(20);
    events.push(kill);
    let mut got = Event::new(
        BASE + 2 * S + 5 * MS,
        20,
        20,
        Source::Ebpf,
        EventKind::SignalDeliver,
    );
    got.aux = 10;
    events.push(got);
    events.sort_by_key(|e| e.ts_ns);
    events
}

/// A finished session of [`session_events`], stored by the real writer.
async fn recorded(dir: &std::path::Path) -> (std::path::PathBuf, SessionId) {
    let path = dir.join("r.db");
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    let session = store
        .begin_session(&NewSession {
            name: Some("replay".into()),
            command: "true".into(),
            host: "h".into(),
            started_at: "2026-12-07T00:00:00.000Z".into(),
            sources: "lib,ebpf".into(),
            start_mono_ns: BASE,
            recorder_pid: 1,
        })
        .await
        .unwrap();
    let (ingest, writer) = spawn_writer(&store, session, WriterConfig::default())
        .await
        .unwrap();
    ingest.send(session_events()).await.unwrap();
    drop(ingest);
    writer.finish().await.unwrap();
    store
        .finish_session(session, "2026-12-07T00:00:06.000Z", BASE + 6 * S, Some(0))
        .await
        .unwrap();
    store.close().await;
    (path, session)
}

async fn replay(path: &std::path::Path, session: SessionId) -> Replay {
    let store = Store::open(path, OpenMode::Existing).await.unwrap();
    Replay::open(store, session).await.unwrap()
}

/// A seek applies up to 31 deltas to a keyframe: the result must be the
/// keyframe the analysis would have made there, at every position, or a
/// replay shows channels whose windows never emptied, deadlocks that never
/// resolved, processes that never exited.
#[tokio::test]
async fn every_position_of_a_replay_is_what_a_full_snapshot_there_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (path, session) = recorded(dir.path()).await;
    let mut deltas = replay(&path, session).await;
    let mut whole = replay(&path, session).await.keyframe_every(1);
    let mut seen = Vec::new();
    // Every tick position (each holds what was stamped up to it), then
    // moments between them, out of order.
    let ticks = (1..=60).map(|k| BASE + k * 100 * MS - 1);
    let between = [BASE + 4_567 * MS, BASE + 250 * MS, BASE + 3_333 * MS, BASE];
    for t in ticks.chain(between) {
        let a = deltas.load_until(t).await.unwrap();
        let b = whole.load_until(t).await.unwrap();
        assert_eq!(a, b, "at +{} ms", (t - BASE) / MS);
        seen.push((t, a));
    }
    assert!(deltas.complete() && whole.complete());

    let at = |t: u64| -> &Snapshot { &seen.iter().find(|(at, _)| *at == t).unwrap().1 };
    let burst = |s: &Snapshot| {
        s.channels
            .iter()
            .find(|c| c.channel.to_string().contains("burst"))
            .cloned()
    };
    // A channel's newest messages, as the drill-down lists them.
    let end = at(BASE + 6_000 * MS - 1);
    let steady = end
        .channels
        .iter()
        .find(|c| c.channel.to_string().contains("steady"));
    let recent = &steady.expect("the steady channel").recent;
    assert_eq!(recent.len(), 32);
    assert_eq!(recent.last().unwrap().sent_ns, BASE + 599 * 10 * MS);
    assert!(recent
        .iter()
        .all(|m| m.latency_ns == 2 * MS && (m.sender_pid, m.receiver_pid) == (10, 20)));
    // A signal's target, which `signals` keeps, on its event.
    let kill = end
        .recent_events
        .iter()
        .find(|e| e.kind == EventKind::SignalGenerate);
    assert_eq!(
        kill.expect("the kill is a recent event").target_pid,
        Some(20)
    );
    // The burst's messages stay counted, its last second empties.
    let late = at(BASE + 5_000 * MS - 1);
    let b = burst(late).expect("the burst channel is listed");
    assert_eq!(b.messages, 300);
    assert_eq!(b.rate_1s.messages_per_s, 0.0, "{:?}", b.rate_1s);
    assert!(
        burst(at(BASE + 2_000 * MS - 1))
            .unwrap()
            .latency
            .last_10s
            .count
            > 0
    );
    // The deadlock: confirmed 200 ms after it formed, gone when p200 exits.
    assert_eq!(at(BASE + 3_100 * MS - 1).active_deadlocks().count(), 0);
    assert_eq!(at(BASE + 3_400 * MS - 1).active_deadlocks().count(), 1);
    assert_eq!(at(BASE + 4_600 * MS - 1).active_deadlocks().count(), 0);
    assert_eq!(at(BASE + 4_600 * MS - 1).deadlocks.len(), 1);
    // Between positions, the state is the last position's, with the events
    // stamped up to it.
    let mid = at(BASE + 4_567 * MS);
    assert_eq!(mid.now_ns, BASE + 4_500 * MS - 1);
    assert!(mid.recent_events.iter().all(|e| e.ts_ns <= mid.now_ns));
    let stamped = session_events()
        .iter()
        .filter(|e| e.ts_ns <= mid.now_ns)
        .count();
    assert_eq!(
        mid.recent_events.len(),
        stamped.min(Snapshot::RECENT_EVENTS)
    );
    assert_eq!(
        at(BASE).recent_events.len(),
        2,
        "the first message's send and the burst's"
    );
}

/// Moments already indexed answer at once, before the rest is loaded; a
/// later one waits for loading.
#[tokio::test]
async fn a_replay_answers_what_it_has_loaded_and_says_when_it_has_not() {
    let dir = tempfile::tempdir().unwrap();
    let (path, session) = recorded(dir.path()).await;
    let mut r = replay(&path, session).await;
    assert_eq!(r.loaded_ns(), BASE, "the start is indexed on opening");
    assert!(r.snapshot_at(BASE).await.unwrap().is_some());
    assert!(r.snapshot_at(BASE + 6 * S).await.unwrap().is_none());
    r.load_more().await.unwrap();
    let reached = r.loaded_ns();
    assert!(
        reached > BASE && !r.complete(),
        "one chunk, not all: {reached}"
    );
    let s = r.snapshot_at(reached).await.unwrap().unwrap();
    assert_eq!(s.now_ns, reached);
    assert!(!s.live, "a replay is never live");
    let end = r.load_until(BASE + 6 * S).await.unwrap();
    assert!(r.complete());
    assert_eq!(end.now_ns, BASE + 6 * S);
    assert_eq!(end.totals.messages, 900);
}

/// `record` stores the index when a session ends: a replay then opens
/// complete and shows at every position what indexing it anew shows. An
/// index that does not read (a damaged row) is found when shown, and the
/// replay indexes the session itself.
#[tokio::test]
async fn a_stored_index_opens_complete_and_shows_what_indexing_anew_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (path, session) = recorded(dir.path()).await;
    let mut anew = replay(&path, session).await;
    let store = Store::open(&path, OpenMode::Create).await.unwrap();
    collector::replay::store_index(&store, session)
        .await
        .unwrap();

    let mut stored = replay(&path, session).await;
    assert!(stored.complete(), "opened complete");
    assert_eq!(stored.loaded_ns(), BASE + 6 * S);
    for t in (0..=60)
        .map(|k| BASE + k * 100 * MS)
        .chain([BASE + 6 * S, BASE + 4_567 * MS])
    {
        let a = anew.load_until(t).await.unwrap();
        let b = stored.snapshot_at(t).await.unwrap().expect("indexed");
        assert!(a == b, "at +{} ms: {a:?}\n!=\n{b:?}", (t - BASE) / MS);
    }

    sqlx::query("UPDATE replay_index SET state = '{' WHERE position = 3")
        .execute(store.pool())
        .await
        .unwrap();
    let mut damaged = replay(&path, session).await;
    assert!(damaged.complete(), "read when shown, so found damaged then");
    let t = BASE + 350 * MS;
    assert_eq!(damaged.snapshot_at(t).await.unwrap(), None, "damaged");
    assert!(!damaged.complete(), "indexed anew");
    let a = damaged.load_until(t).await.unwrap();
    assert!(a == anew.load_until(t).await.unwrap());
    let end = damaged.load_until(BASE + 6 * S).await.unwrap();
    assert!(end == anew.load_until(BASE + 6 * S).await.unwrap());

    // An index in another format (a newer ipcscope's) is not read at all.
    sqlx::query("UPDATE replay_index SET version = version + 1")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(!replay(&path, session).await.complete());
}
