//! Reading a recorded session back as the stream the analysis saw live, so
//! a replay shows the same screens as the recording did.
//!
//! The database holds every event with its `channels.id` and every paired
//! message, which is what the writer handed the analysis
//! ([`Correlated`](crate::store::Correlated)); [`Replay`] reads it back in
//! time order through a fresh analysis, once, and keeps the analysis's
//! state at every position of the timeline.

use std::collections::HashMap;
use std::sync::Arc;

use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};
use sqlx::SqliteConnection;

use ipc_events::live::{ChannelStats, Delta, MessageSample, Snapshot};

use crate::analysis::{Analyzer, AnalyzerConfig};
use crate::correlate::{Paired, Side, Signal, SignalFact};
use crate::store::rows::Rows;
use crate::store::{event_span_ns, events_between, spanned, SessionId, Store, StoreError};

/// What a session covers, in monotonic nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub name: String,
    pub start_ns: u64,
    /// The session's end, or its newest event if it never finished.
    pub end_ns: u64,
    pub finished: bool,
}

/// Looks a session up.
pub async fn session_info(
    conn: &mut SqliteConnection,
    session: SessionId,
) -> Result<SessionInfo, StoreError> {
    let (name, command, start, end): (Option<String>, String, i64, Option<i64>) = sqlx::query_as(
        "SELECT name, command, start_mono_ns, end_mono_ns FROM sessions WHERE id = ?",
    )
    .bind(session.0)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::sql("reading the session"))?;
    let newest = event_span_ns(&mut *conn, session.0)
        .await?
        .map(|(_, newest)| newest);
    let start_ns = start.max(0) as u64;
    Ok(SessionInfo {
        id: session,
        name: name.unwrap_or(command),
        start_ns,
        end_ns: end
            .or(newest)
            .map_or(start_ns, |e| (e.max(0) as u64).max(start_ns)),
        finished: end.is_some(),
    })
}

/// Moments of a session worth jumping to, in time order.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    /// When each deadlock was detected.
    pub deadlocks: Vec<u64>,
    /// When events were lost (each `drops` row).
    pub drops: Vec<u64>,
}

impl Marks {
    async fn load(conn: &mut SqliteConnection, session: SessionId) -> Result<Marks, StoreError> {
        Ok(Marks {
            deadlocks: times(
                conn,
                session,
                "SELECT detected_ns FROM deadlocks WHERE session_id = ? ORDER BY detected_ns",
                "reading the deadlocks",
            )
            .await?,
            drops: times(
                conn,
                session,
                "SELECT ts_ns FROM drops WHERE session_id = ? ORDER BY ts_ns",
                "reading the drops",
            )
            .await?,
        })
    }
}

/// The one column of times `sql` selects for `session`.
async fn times(
    conn: &mut SqliteConnection,
    session: SessionId,
    sql: &'static str,
    what: &'static str,
) -> Result<Vec<u64>, StoreError> {
    let times: Vec<i64> = sqlx::query_scalar(sql)
        .bind(session.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::sql(what))?;
    Ok(times.into_iter().map(|t| t.max(0) as u64).collect())
}

/// Channels and process names, read once per replay.
#[derive(Debug, Default)]
pub struct Names {
    channels: HashMap<i64, ChannelId>,
    comms: HashMap<u32, String>,
    /// The latest title of each pid that gave itself one (only the latest
    /// is stored): what its `process_title` events replay as.
    titles: HashMap<u32, String>,
}

impl Names {
    pub async fn load(
        conn: &mut SqliteConnection,
        session: SessionId,
    ) -> Result<Names, StoreError> {
        let mut names = Names::default();
        let channels: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, kind, name FROM channels WHERE session_id = ?")
                .bind(session.0)
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::sql("reading the channels"))?;
        for (id, kind, name) in channels {
            // Numeric identities are not stored, only their rendering; a
            // named id shows the same, and the id is what analysis keys on.
            let Ok(kind) = kind.parse::<ChannelKind>() else {
                continue;
            };
            names.channels.insert(id, ChannelId::named(kind, name));
        }
        let comms: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT pid, comm, title FROM processes WHERE session_id = ? ORDER BY id",
        )
        .bind(session.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::sql("reading the processes"))?;
        for (pid, comm, title) in comms {
            if let Some(comm) = comm {
                names.comms.insert(pid as u32, comm);
            }
            if let Some(title) = title {
                names.titles.insert(pid as u32, title);
            }
        }
        Ok(names)
    }
}

/// One time slice of a session as the writer handed it to the analysis,
/// each kind in time order, signals with the moment they happened.
#[derive(Default)]
struct Timed {
    events: Vec<Event>,
    channel_ids: Vec<Option<i64>>,
    messages: Vec<Paired<i64>>,
    signals: Vec<(u64, SignalFact)>,
}

/// The columns [`read_events`] decodes.
const EVENT_COLUMNS: &str = "e.ts_ns, e.pid, e.tid, e.source_code, e.kind_code, e.channel_id, \
                             e.size, e.msg_id, e.result, e.duration_ns, e.aux, e.payload";

/// Events of `session` stamped in `[a, b)`, then `order` (see
/// [`events_between`]), with their `channels.id`.
async fn read_events(
    conn: &mut SqliteConnection,
    session: SessionId,
    names: &Names,
    order: &str,
    (a, b): (i64, i64),
) -> Result<(Vec<Event>, Vec<Option<i64>>), StoreError> {
    let sql = events_between(EVENT_COLUMNS, "", order);
    let mut events = Vec::new();
    let mut channel_ids = Vec::new();
    // Scoped: the statement (not Send) must be gone before the next await.
    {
        let what = "reading events";
        let mut handle = conn.lock_handle().await.map_err(StoreError::sql(what))?;
        let mut rows = Rows::new(&mut handle, what, &sql, &[session.0, a, b])?;
        while rows.next()? {
            let Ok(kind) = EventKind::from_code(rows.int(4).unwrap_or(0) as u16) else {
                continue;
            };
            let source = match rows.int(3) {
                Some(1) => Source::Lib,
                Some(2) => Source::Ebpf,
                _ => Source::Collector,
            };
            let pid = rows.int(1).unwrap_or(0) as u32;
            let mut event = Event::new(
                rows.int(0).unwrap_or(0) as u64,
                pid,
                rows.int(2).unwrap_or(0) as u32,
                source,
                kind,
            );
            let channel_id = rows.int(5);
            event.channel = channel_id.and_then(|id| names.channels.get(&id).cloned());
            event.comm = names.comms.get(&pid).cloned().unwrap_or_default();
            if kind == EventKind::ProcessTitle {
                event.path = names.titles.get(&pid).cloned();
            }
            event.size = rows.int(6).unwrap_or(0) as u64;
            event.msg_id = rows.int(7).map(|m| m as u64);
            event.result = rows.int(8).unwrap_or(0);
            event.duration_ns = rows.int(9).map(|d| d as u64);
            event.aux = rows.int(10).unwrap_or(0) as u64;
            event.payload = rows.bytes(11);
            events.push(event);
            channel_ids.push(channel_id);
        }
    }
    targets(conn, session, &mut events).await?;
    Ok((events, channel_ids))
}

/// Gives each `signal_generate` event its target, which `signals` keeps,
/// not `events`: one read of the signals generated in the events' span.
/// (A join did it per event row, scanning every signal of the session for
/// each: a demo of 13 million events and 1,054 signals took minutes.)
async fn targets(
    conn: &mut SqliteConnection,
    session: SessionId,
    events: &mut [Event],
) -> Result<(), StoreError> {
    let generated = |e: &&mut Event| e.kind == EventKind::SignalGenerate;
    let span = events
        .iter_mut()
        .filter(generated)
        .fold(None, |span: Option<(u64, u64)>, e| {
            Some(span.map_or((e.ts_ns, e.ts_ns), |(lo, hi)| {
                (lo.min(e.ts_ns), hi.max(e.ts_ns))
            }))
        });
    let Some((from, to)) = span else {
        return Ok(());
    };
    let rows: Vec<(i64, Option<i64>, i64, i64)> = sqlx::query_as(
        "SELECT generated_ns, sender_pid, signo, target_pid FROM signals
         WHERE session_id = ? AND generated_ns BETWEEN ? AND ?",
    )
    .bind(session.0)
    .bind(from as i64)
    .bind(to as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::sql("reading signals' targets"))?;
    let target: HashMap<(u64, u32, u64), u32> = rows
        .into_iter()
        .filter_map(|(at, sender, signo, target)| {
            Some(((at as u64, sender? as u32, signo as u64), target as u32))
        })
        .collect();
    for e in events
        .iter_mut()
        .filter(|e| e.kind == EventKind::SignalGenerate)
    {
        e.target_pid = target.get(&(e.ts_ns, e.pid, e.aux)).copied();
    }
    Ok(())
}

/// How far back from a moment [`newest_events`] looks first: a busy
/// session's recent events are in its last milliseconds (each try sorts
/// what it finds).
const LOOK_BACK_NS: i64 = 1_000_000;

/// The newest [`Snapshot::RECENT_EVENTS`] events stamped at or before
/// `at_ns`, oldest first: what the live feed showed as recent then.
async fn newest_events(
    conn: &mut SqliteConnection,
    session: SessionId,
    names: &Names,
    at_ns: u64,
) -> Result<Vec<Event>, StoreError> {
    // Slices back from `at_ns`, each longer than the one before, until one
    // holds enough or reaches the oldest event: a sort of the whole
    // session before `at_ns` would cost a seek its length.
    let Some((oldest, _)) = event_span_ns(conn, session.0).await? else {
        return Ok(Vec::new());
    };
    let end = at_ns.saturating_add(1).min(i64::MAX as u64) as i64;
    let order = format!("ORDER BY ts_ns DESC LIMIT {}", Snapshot::RECENT_EVENTS);
    let mut back = LOOK_BACK_NS;
    loop {
        let from = end.saturating_sub(back);
        let (mut events, _) = read_events(conn, session, names, &order, (from, end)).await?;
        let found = events.len() as i64;
        let wanted = Snapshot::RECENT_EVENTS as i64;
        if found >= wanted || from <= oldest {
            events.reverse();
            return Ok(events);
        }
        // As far back again as the events found so far say it takes (a
        // quarter more), at least twice as far.
        back = back.saturating_mul((wanted * 5 / 4 / found.max(1)).clamp(2, 1024));
    }
}

/// The newest messages of channel `channel_id` received at or before
/// `at_ns`, oldest first, as many as the live analysis keeps for the
/// drill-down, as it makes them.
async fn newest_messages(
    conn: &mut SqliteConnection,
    session: SessionId,
    channel_id: i64,
    at_ns: u64,
) -> Result<Vec<MessageSample>, StoreError> {
    let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sent_ns, received_ns, size, sender_pid, receiver_pid FROM messages
         WHERE session_id = ? AND channel_id = ? AND received_ns <= ?
         ORDER BY received_ns DESC, id DESC LIMIT ?",
    )
    .bind(session.0)
    .bind(channel_id)
    .bind(at_ns as i64)
    .bind(AnalyzerConfig::default().recent_messages as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::sql("reading a channel's newest messages"))?;
    Ok(rows
        .into_iter()
        .rev()
        .map(|(sent, received, size, sender, receiver)| MessageSample {
            sent_ns: sent as u64,
            latency_ns: received.saturating_sub(sent).max(0) as u64,
            size: size as u64,
            sender_pid: sender as u32,
            receiver_pid: receiver as u32,
            payload: None,
        })
        .collect())
}

/// The events stamped in `[from_ns, to_ns)` and the messages received and
/// signals generated or delivered in it.
async fn load(
    conn: &mut SqliteConnection,
    session: SessionId,
    names: &Names,
    from_ns: u64,
    to_ns: u64,
) -> Result<Timed, StoreError> {
    // Put in time order here, not by SQLite: they come in three runs in
    // order (`event_rows` by its index, the sends and receives messages
    // hold by their spans), which SQLite sorted through a b-tree of each.
    let (mut events, mut channel_ids) =
        read_events(conn, session, names, "", (from_ns as i64, to_ns as i64)).await?;
    crate::time_order::sort_by_time(&mut events, |a, b| channel_ids.swap(a, b));
    let (from, spans) = spanned("messages", "m", "id", true);
    // Scoped: the statement (not Send) must be gone before the next await.
    let messages = {
        let what = "reading messages";
        let mut handle = conn.lock_handle().await.map_err(StoreError::sql(what))?;
        let mut rows = Rows::new(
            &mut handle,
            what,
            &format!(
                "SELECT m.channel_id, m.msg_id, m.sender_pid, m.sender_tid, m.receiver_pid,
                        m.receiver_tid, m.sent_ns, m.received_ns, m.size, m.id
                 FROM {from} WHERE {spans} AND m.received_ns >= ?2 AND m.received_ns < ?3"
            ),
            &[session.0, from_ns as i64, to_ns as i64],
        )?;
        let mut messages = Vec::new();
        while rows.next()? {
            let int = |i| rows.int(i).unwrap_or(0);
            let size = int(8) as u64;
            let side = |pid: i64, tid: i64, ts: i64| Side {
                pid: pid as u32,
                tid: tid as u32,
                ts_ns: ts as u64,
                size,
            };
            let paired = Paired {
                channel: int(0),
                send: side(int(2), int(3), int(6)),
                recv: side(int(4), int(5), int(7)),
                msg_id: rows.int(1).map(|m| m as u64),
            };
            messages.push((int(9), paired));
        }
        // By receipt, then id, as they were paired.
        messages.sort_by_key(|(id, m)| (m.recv.ts_ns, *id));
        messages.into_iter().map(|(_, m)| m).collect()
    };
    Ok(Timed {
        events,
        channel_ids,
        messages,
        signals: signals(conn, session, from_ns, to_ns).await?,
    })
}

/// A `signals` row: id, sender, target, signo, generated, delivered,
/// cause.
type SignalRow = (i64, Option<i64>, i64, i64, i64, Option<i64>, Option<String>);

/// The signals generated or delivered in `[from_ns, to_ns)`, in time
/// order with that time, as the correlation stage handed them to the
/// analysis.
async fn signals(
    conn: &mut SqliteConnection,
    session: SessionId,
    from_ns: u64,
    to_ns: u64,
) -> Result<Vec<(u64, SignalFact)>, StoreError> {
    let rows: Vec<SignalRow> = sqlx::query_as(
        "SELECT id, sender_pid, target_pid, signo, generated_ns, delivered_ns, cause FROM signals
         WHERE session_id = ?1 AND ((generated_ns >= ?2 AND generated_ns < ?3)
                                    OR (delivered_ns >= ?2 AND delivered_ns < ?3))",
    )
    .bind(session.0)
    .bind(from_ns as i64)
    .bind(to_ns as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::sql("reading signals"))?;
    let in_slice = |t: i64| (from_ns as i64..to_ns as i64).contains(&t);
    let mut facts: Vec<(u64, SignalFact)> = Vec::new();
    for (id, sender, target, signo, generated, delivered, cause) in rows {
        let signal = Signal {
            id: id as u64,
            sender: sender.map(|p| p as u32),
            target: target as u32,
            signo: signo as u32,
            generated_ns: generated as u64,
            cause: cause.as_deref().and_then(crate::correlate::signal_cause),
        };
        if in_slice(generated) {
            facts.push((generated as u64, SignalFact::Generated(signal)));
        }
        if let Some(at) = delivered.filter(|&d| in_slice(d)) {
            let delivered_ns = at as u64;
            facts.push((
                delivered_ns,
                SignalFact::Delivered {
                    signal,
                    delivered_ns,
                },
            ));
        }
    }
    facts.sort_by_key(|(t, _)| *t);
    Ok(facts)
}

/// How often the analysis is ticked: deadlocks are confirmed at ticks, so
/// this is how late a replay may show one.
const TICK_NS: u64 = 100_000_000;
/// The most positions the index keeps; a longer session keeps one per
/// `span / MAX_POSITIONS` (in whole ticks), so its memory stays bounded.
const MAX_POSITIONS: u64 = 4_000;
/// Positions per keyframe: a seek clones one snapshot and applies at most
/// this many deltas.
const KEYFRAME_EVERY: usize = 32;
/// How many events one read aims for: big enough that a read's fixed cost
/// does not count, small enough that a seek asked for meanwhile waits
/// little.
const CHUNK_EVENTS: u64 = 50_000;
/// The channels a replay lists newest messages for (the drill-down's), the
/// busiest first: one read each per moment shown.
const RECENT_MESSAGES_OF: usize = 256;

/// A recorded session, analysed once from start to end (in the background,
/// a chunk per [`Replay::load_more`]) into an index of its state at every
/// position, so that showing any moment, forwards or back, is a lookup:
/// what the dashboard's timeline shows.
///
/// A position is a tick of the analysis (every 100 ms, or coarser so that a
/// session has at most [`MAX_POSITIONS`]), each mark, and the end. The
/// index holds a full snapshot every [`KEYFRAME_EVERY`] positions and the
/// deltas the analysis made in between, as the live feed sends them; the
/// newest events of a position are read from the database when asked for,
/// not kept.
pub struct Replay {
    /// Kept for as long as the replay reads through `conn` (an older
    /// database's upgraded copy lives as long as its store).
    _store: Store,
    conn: SqliteConnection,
    info: SessionInfo,
    names: Arc<Names>,
    marks: Marks,
    /// The index this replay built (or is building).
    index: Vec<Keyframe>,
    /// The index stored with the session, when it has one: where its
    /// positions are; their states are read when shown.
    stored: Option<Vec<StoredPosition>>,
    keyframe_every: usize,
    /// The analysis under way; `None` once the index is complete.
    pass: Option<Pass>,
}

/// A full state and the deltas that follow it, each at its position
/// (`now_ns`).
struct Keyframe {
    snapshot: Snapshot,
    deltas: Vec<Delta>,
}

/// A position of a stored index.
struct StoredPosition {
    position: i64,
    at_ns: u64,
    keyframe: bool,
}

/// The one forward pass that builds the index.
struct Pass {
    analyzer: Analyzer,
    /// Everything stamped before this has been fed.
    fed_ns: u64,
    /// How far the next read reaches: adapted so that a read brings about
    /// [`CHUNK_EVENTS`] however dense or sparse the session is.
    chunk_ns: u64,
    /// Ticks between two positions.
    position_every: u64,
    ticks_since_position: u64,
    /// Marks not reached yet, soonest last.
    stops: Vec<u64>,
    /// The pass's own connection, while no read is under way on it.
    reader: Option<SqliteConnection>,
    /// The next slice, `[from, to)`, read beside the analysis of this one.
    ahead: Option<(u64, u64, Reading)>,
}

/// A read-only connection for a replay's reads.
async fn connection(store: &Store) -> Result<SqliteConnection, StoreError> {
    let mut conn = store.read_only().await?;
    // The session is read once from end to end, then at any moment:
    // mapped, its pages are not copied on every read, and a larger cache
    // keeps the time index's inner pages between reads.
    for pragma in [
        "PRAGMA mmap_size = 1073741824",
        "PRAGMA cache_size = -32768",
    ] {
        sqlx::query(pragma)
            .execute(&mut conn)
            .await
            .map_err(StoreError::sql("setting up the replay's reads"))?;
    }
    Ok(conn)
}

fn reader_died(e: tokio::task::JoinError) -> StoreError {
    StoreError::Sql {
        action: "reading the session for its replay index",
        error: sqlx::Error::Protocol(format!("the reader stopped: {e}")),
    }
}

/// A slice being read on the pass's connection, which it hands back.
type Reading = tokio::task::JoinHandle<(SqliteConnection, Result<Timed, StoreError>)>;

impl Replay {
    pub async fn open(store: Store, session: SessionId) -> Result<Replay, StoreError> {
        let mut conn = connection(&store).await?;
        let info = session_info(&mut conn, session).await?;
        let names = Arc::new(Names::load(&mut conn, session).await?);
        let marks = Marks::load(&mut conn, session).await?;
        let stored = stored_positions(&mut conn, &info).await?;
        let mut replay = Replay {
            _store: store,
            conn,
            info,
            names,
            marks,
            index: Vec::new(),
            stored,
            keyframe_every: KEYFRAME_EVERY,
            pass: None,
        };
        if replay.stored.is_none() {
            replay.start_pass();
        }
        Ok(replay)
    }

    /// Starts indexing the session from its start.
    fn start_pass(&mut self) {
        let info = &self.info;
        let mut stops: Vec<u64> = (self.marks.deadlocks.iter().chain(&self.marks.drops))
            .copied()
            .filter(|&t| (info.start_ns..info.end_ns).contains(&t))
            .collect();
        stops.sort_unstable_by(|a, b| b.cmp(a));
        stops.dedup();
        let ticks = (info.end_ns - info.start_ns) / TICK_NS + 1;
        self.pass = Some(Pass {
            analyzer: Analyzer::new(
                info.id.0,
                info.name.clone(),
                info.start_ns,
                AnalyzerConfig {
                    // A position's newest events and each channel's newest
                    // messages are read when it is shown: kept at every
                    // position, they were four fifths of the index.
                    recent_events: 0,
                    recent_messages: 0,
                    ..AnalyzerConfig::default()
                },
            ),
            fed_ns: info.start_ns,
            chunk_ns: TICK_NS,
            position_every: ticks.div_ceil(MAX_POSITIONS).max(1),
            ticks_since_position: 0,
            stops,
            reader: None,
            ahead: None,
        });
        self.stored = None;
        self.index.clear();
        // The start, before anything happened: Home answers at once.
        self.record_position(self.info.start_ns, true);
    }

    /// Keeps a full snapshot every `n` positions (at least 1) from here
    /// on: more memory, fewer deltas per seek.
    pub fn keyframe_every(mut self, n: usize) -> Self {
        self.keyframe_every = n.max(1);
        self
    }

    /// When deadlocks were detected and events lost.
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// How far the index reaches: any moment up to this answers at once.
    pub fn loaded_ns(&self) -> u64 {
        if let Some(last) = self.stored.as_ref().and_then(|p| p.last()) {
            return last.at_ns;
        }
        let last = self.index.last().expect("the start is always indexed");
        last.deltas
            .last()
            .map_or(last.snapshot.now_ns, |d| d.now_ns)
    }

    /// Whether the whole session is indexed.
    pub fn complete(&self) -> bool {
        self.pass.is_none()
    }

    /// Analyses the next part of the session into the index (about
    /// [`CHUNK_EVENTS`] events); nothing once it is complete.
    pub async fn load_more(&mut self) -> Result<(), StoreError> {
        let Some(pass) = &mut self.pass else {
            return Ok(());
        };
        let end = self.info.end_ns + 1;
        let from = pass.fed_ns;
        let (to, batch) = match pass.ahead.take() {
            Some((ahead_from, to, reading)) if ahead_from == from => {
                let (conn, batch) = reading.await.map_err(reader_died)?;
                pass.reader = Some(conn);
                (to, batch?)
            }
            _ => {
                let conn = match pass.reader.as_mut() {
                    Some(conn) => conn,
                    None => pass.reader.insert(connection(&self._store).await?),
                };
                let to = from.saturating_add(pass.chunk_ns).min(end);
                (to, load(conn, self.info.id, &self.names, from, to).await?)
            }
        };
        let read = batch.events.len() as u64;
        // Aim the next read at CHUNK_EVENTS, never below one tick.
        pass.chunk_ns = match read {
            0 => pass.chunk_ns.saturating_mul(8),
            n => (pass.chunk_ns as u128 * CHUNK_EVENTS as u128 / n as u128) as u64,
        }
        .clamp(TICK_NS, 1_000 * TICK_NS);
        // The next slice is read while this one is analysed: reading is
        // about half of the pass.
        if let (true, Some(mut conn)) = (to < end, pass.reader.take()) {
            let next = to.saturating_add(pass.chunk_ns).min(end);
            let (session, names) = (self.info.id, Arc::clone(&self.names));
            let reading = tokio::spawn(async move {
                let batch = load(&mut conn, session, &names, to, next).await;
                (conn, batch)
            });
            pass.ahead = Some((to, next, reading));
        }
        let mut slice = Slice::new(&batch);
        // Stop at every tick, mark and the end within [from, to).
        loop {
            let pass = self.pass.as_mut().expect("the pass runs");
            let next_tick = (pass.fed_ns - self.info.start_ns) / TICK_NS * TICK_NS
                + TICK_NS
                + self.info.start_ns;
            // A position at `t` holds everything stamped up to `t`.
            let mark = pass.stops.last().map(|&t| t + 1);
            let stop = next_tick.min(mark.unwrap_or(u64::MAX)).min(end);
            if stop > to {
                slice.feed(&mut pass.analyzer, to);
                pass.fed_ns = to;
                return Ok(());
            }
            slice.feed(&mut pass.analyzer, stop);
            pass.fed_ns = stop;
            pass.analyzer.tick(stop);
            let at = stop - 1;
            let positioned = if stop == end {
                pass.analyzer.finish();
                true
            } else if mark == Some(stop) {
                pass.stops.pop();
                true
            } else {
                pass.ticks_since_position += 1;
                pass.ticks_since_position >= pass.position_every
            };
            if positioned {
                pass.ticks_since_position = 0;
                self.record_position(at, stop == end);
            }
            if stop == end {
                self.pass = None;
                return Ok(());
            }
        }
    }

    /// Adds the pass's state at `at` to the index, as a keyframe if
    /// `whole` (the end: shown whole) or one is due.
    fn record_position(&mut self, at: u64, whole: bool) {
        let analyzer = &mut self.pass.as_mut().expect("the pass runs").analyzer;
        // Taken either way: it resets what the next delta is relative to.
        let mut delta = analyzer.delta(at);
        match self.index.last_mut() {
            Some(k) if !whole && k.deltas.len() < self.keyframe_every => {
                // Shown with the events read at the position, not these.
                delta.events.clear();
                k.deltas.push(delta);
            }
            _ => self.index.push(Keyframe {
                snapshot: analyzer.snapshot(at),
                deltas: Vec::new(),
            }),
        }
    }

    /// The session's state as of `t_ns` (clamped to the session): at the
    /// last position at or before it, with the events up to that position.
    /// `None` while the index does not reach it yet ([`Replay::load_more`]).
    pub async fn snapshot_at(&mut self, t_ns: u64) -> Result<Option<Snapshot>, StoreError> {
        let t = t_ns.clamp(self.info.start_ns, self.info.end_ns);
        let state = match self.stored.is_some() {
            true => match self.stored_state(t).await? {
                Some(state) => Some(state),
                None => {
                    // A stored index that does not read is indexed anew.
                    tracing::warn!(
                        session = self.info.id.0,
                        "the stored replay index is damaged"
                    );
                    self.start_pass();
                    self.built_state(t)
                }
            },
            false => self.built_state(t),
        };
        let Some(mut snapshot) = state else {
            return Ok(None);
        };
        snapshot.live = false;
        let (session, at) = (self.info.id, snapshot.now_ns);
        snapshot.recent_events = newest_events(&mut self.conn, session, &self.names, at).await?;
        // One indexed read a channel: for a session of thousands of
        // connections, the busiest ones only, so a seek stays quick.
        let mut busiest: Vec<&mut ChannelStats> = snapshot.channels.iter_mut().collect();
        busiest.sort_unstable_by_key(|c| std::cmp::Reverse(c.messages));
        for channel in busiest.into_iter().take(RECENT_MESSAGES_OF) {
            channel.recent = newest_messages(&mut self.conn, session, channel.id, at).await?;
        }
        Ok(Some(snapshot))
    }

    /// The state at the last position at or before `t` of the index this
    /// replay built, if it reaches `t`.
    fn built_state(&self, t: u64) -> Option<Snapshot> {
        if t > self.loaded_ns() {
            return None;
        }
        let k = self.index.partition_point(|k| k.snapshot.now_ns <= t) - 1;
        let keyframe = &self.index[k];
        let mut snapshot = keyframe.snapshot.clone();
        for delta in keyframe.deltas.iter().take_while(|d| d.now_ns <= t) {
            snapshot.apply(delta.clone());
        }
        Some(snapshot)
    }

    /// The state at the last position at or before `t` of the stored
    /// index: its keyframe before it and the deltas up to it, read and
    /// applied; `None` if they do not read.
    async fn stored_state(&mut self, t: u64) -> Result<Option<Snapshot>, StoreError> {
        let positions = self.stored.as_ref().expect("a stored index");
        let at = positions.partition_point(|p| p.at_ns <= t).max(1) - 1;
        let from = (0..=at).rev().find(|&i| positions[i].keyframe).unwrap_or(0);
        let rows: Vec<(bool, String)> = sqlx::query_as(
            "SELECT keyframe, state FROM replay_index
             WHERE session_id = ? AND version = ? AND position BETWEEN ? AND ?
             ORDER BY position",
        )
        .bind(self.info.id.0)
        .bind(INDEX_VERSION)
        .bind(positions[from].position)
        .bind(positions[at].position)
        .fetch_all(&mut self.conn)
        .await
        .map_err(StoreError::sql("reading the replay index"))?;
        let mut rows = rows.into_iter();
        let Some(Ok(mut snapshot)) = rows
            .next()
            .filter(|(keyframe, _)| *keyframe)
            .map(|(_, state)| serde_json::from_str::<Snapshot>(&state))
        else {
            return Ok(None);
        };
        for (keyframe, state) in rows {
            match serde_json::from_str::<Delta>(&state) {
                Ok(delta) if !keyframe => snapshot.apply(delta),
                _ => return Ok(None),
            }
        }
        Ok(Some(snapshot))
    }

    /// The state as of `t_ns`, indexing as far as it takes.
    pub async fn load_until(&mut self, t_ns: u64) -> Result<Snapshot, StoreError> {
        loop {
            if let Some(s) = self.snapshot_at(t_ns).await? {
                return Ok(s);
            }
            self.load_more().await?;
        }
    }
}

/// The version of the stored index's format ([`store_index`]): bumped
/// whenever `Snapshot` or `Delta` change in a way older JSON of them does
/// not read as.
const INDEX_VERSION: i64 = 1;

/// Indexes a finished session and stores the index with it (the
/// `replay_index` table), so that its replays open complete: what
/// `record` does once a session has ended.
pub async fn store_index(store: &Store, session: SessionId) -> Result<(), StoreError> {
    let mut replay = Replay::open(store.clone(), session).await?;
    if replay.stored.is_some() {
        replay.start_pass();
    }
    while !replay.complete() {
        replay.load_more().await?;
    }
    let mut rows = Vec::new();
    for k in &replay.index {
        rows.push((k.snapshot.now_ns, true, to_json(&k.snapshot)?));
        for d in &k.deltas {
            rows.push((d.now_ns, false, to_json(d)?));
        }
    }
    store
        .insert_replay_index(session, INDEX_VERSION, rows)
        .await
}

fn to_json(state: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(state).map_err(|e| StoreError::Sql {
        action: "encoding the replay index",
        error: sqlx::Error::Encode(Box::new(e)),
    })
}

/// Where the positions of the session's stored index are, if it has one of
/// this version that spans the session (starting and ending with a
/// keyframe at its start and end); otherwise the replay indexes the
/// session itself.
async fn stored_positions(
    conn: &mut SqliteConnection,
    info: &SessionInfo,
) -> Result<Option<Vec<StoredPosition>>, StoreError> {
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT position, at_ns, keyframe FROM replay_index
         WHERE session_id = ? AND version = ? ORDER BY position",
    )
    .bind(info.id.0)
    .bind(INDEX_VERSION)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::sql("reading the replay index"))?;
    let positions: Vec<StoredPosition> = rows
        .into_iter()
        .map(|(position, at_ns, keyframe)| StoredPosition {
            position,
            at_ns: at_ns.max(0) as u64,
            keyframe,
        })
        .collect();
    let spans = matches!(
        (positions.first(), positions.last()),
        (Some(first), Some(last)) if first.keyframe && first.at_ns == info.start_ns
            && last.keyframe && last.at_ns == info.end_ns
    );
    let ordered = positions.windows(2).all(|w| w[0].at_ns <= w[1].at_ns);
    Ok((spans && ordered).then_some(positions))
}

/// A read batch, fed to the analysis a tick at a time: events by stamp,
/// messages by receipt, signals by when they happened.
struct Slice<'a> {
    batch: &'a Timed,
    events: usize,
    messages: usize,
    signals: usize,
}

impl<'a> Slice<'a> {
    fn new(batch: &'a Timed) -> Self {
        Slice {
            batch,
            events: 0,
            messages: 0,
            signals: 0,
        }
    }

    /// Feeds what happened before `until` and was not fed yet.
    fn feed(&mut self, analyzer: &mut Analyzer, until: u64) {
        let b = self.batch;
        let upto = |from: usize, len: usize, ts: &dyn Fn(usize) -> u64| {
            from + (from..len).take_while(|&i| ts(i) < until).count()
        };
        let e = upto(self.events, b.events.len(), &|i| b.events[i].ts_ns);
        let m = upto(self.messages, b.messages.len(), &|i| {
            b.messages[i].recv.ts_ns
        });
        let s = upto(self.signals, b.signals.len(), &|i| b.signals[i].0);
        let signals: Vec<SignalFact> = b.signals[self.signals..s].iter().map(|(_, f)| *f).collect();
        analyzer.correlated(
            &b.events[self.events..e],
            &b.channel_ids[self.events..e],
            &b.messages[self.messages..m],
            &signals,
            0,
        );
        (self.events, self.messages, self.signals) = (e, m, s);
    }
}
