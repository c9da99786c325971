//! Reading a recorded session back as the stream the analysis saw live, so
//! a replay shows the same screens as the recording did.
//!
//! The database holds every event with its `channels.id` and every paired
//! message, which is what the writer handed the analysis
//! ([`Correlated`]); [`load`] reads one time slice of that back, and
//! [`Replay`] feeds it to a fresh analysis up to any moment.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};
use sqlx::{Row, SqliteConnection};

use ipc_events::live::Snapshot;

use crate::analysis::{Analyzer, AnalyzerConfig};
use crate::correlate::{Paired, Side, Signal, SignalFact};
use crate::store::{Correlated, SessionId, Store, StoreError};

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
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT max(ts_ns) FROM events WHERE session_id = ?")
            .bind(session.0)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::sql("finding the session's newest event"))?;
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
        let times = |sql| sqlx::query_scalar::<_, i64>(sql).bind(session.0);
        let deadlocks =
            times("SELECT detected_ns FROM deadlocks WHERE session_id = ? ORDER BY detected_ns")
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::sql("reading the deadlocks"))?;
        let drops = times("SELECT ts_ns FROM drops WHERE session_id = ? ORDER BY ts_ns")
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::sql("reading the drops"))?;
        let ns = |v: Vec<i64>| v.into_iter().map(|t| t.max(0) as u64).collect();
        Ok(Marks {
            deadlocks: ns(deadlocks),
            drops: ns(drops),
        })
    }
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

/// A `messages` row: channel, msg_id, sender pid and tid, receiver pid and
/// tid, sent, received, size.
type MessageRow = (i64, Option<i64>, i64, i64, i64, i64, i64, i64, i64);

/// The events stamped in `[from_ns, to_ns)` and the messages received in
/// it, as the writer handed them to the analysis.
pub async fn load(
    conn: &mut SqliteConnection,
    session: SessionId,
    names: &Names,
    from_ns: u64,
    to_ns: u64,
) -> Result<Correlated, StoreError> {
    let mut batch = Correlated::default();
    let mut events = Vec::new();
    let mut rows = sqlx::query(
        // A signal's target is kept in `signals`, not `events`.
        "SELECT e.ts_ns, e.pid, e.tid, e.source_code, e.kind_code, e.channel_id, e.size,
                e.msg_id, e.result, e.duration_ns, e.aux, e.payload, s.target_pid
         FROM events e LEFT JOIN signals s
           ON e.kind_code = ? AND s.session_id = e.session_id AND s.generated_ns = e.ts_ns
              AND s.sender_pid = e.pid AND s.signo = e.aux
         WHERE e.session_id = ? AND e.ts_ns >= ? AND e.ts_ns < ? ORDER BY e.ts_ns, e.id",
    )
    .bind(i64::from(EventKind::SignalGenerate.code()))
    .bind(session.0)
    .bind(from_ns as i64)
    .bind(to_ns as i64)
    .fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(StoreError::sql("reading events"))?
    {
        let get = |i: usize| row.try_get::<Option<i64>, _>(i).ok().flatten();
        let Ok(kind) = EventKind::from_code(get(4).unwrap_or(0) as u16) else {
            continue;
        };
        let source = match get(3) {
            Some(1) => Source::Lib,
            Some(2) => Source::Ebpf,
            _ => Source::Collector,
        };
        let pid = get(1).unwrap_or(0) as u32;
        let mut event = Event::new(
            get(0).unwrap_or(0) as u64,
            pid,
            get(2).unwrap_or(0) as u32,
            source,
            kind,
        );
        let channel_id = get(5);
        event.channel = channel_id.and_then(|id| names.channels.get(&id).cloned());
        event.comm = names.comms.get(&pid).cloned().unwrap_or_default();
        if kind == EventKind::ProcessTitle {
            event.path = names.titles.get(&pid).cloned();
        }
        event.size = get(6).unwrap_or(0) as u64;
        event.msg_id = get(7).map(|m| m as u64);
        event.result = get(8).unwrap_or(0);
        event.duration_ns = get(9).map(|d| d as u64);
        event.aux = get(10).unwrap_or(0) as u64;
        event.payload = row.try_get::<Option<Vec<u8>>, _>(11).ok().flatten();
        event.target_pid = get(12).map(|p| p as u32);
        events.push(event);
        batch.channel_ids.push(channel_id);
    }
    drop(rows);
    batch.events = std::sync::Arc::new(events);
    let messages: Vec<MessageRow> = sqlx::query_as(
        "SELECT channel_id, msg_id, sender_pid, sender_tid, receiver_pid, receiver_tid,
                sent_ns, received_ns, size
         FROM messages WHERE session_id = ? AND received_ns >= ? AND received_ns < ?
         ORDER BY received_ns, id",
    )
    .bind(session.0)
    .bind(from_ns as i64)
    .bind(to_ns as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::sql("reading messages"))?;
    batch.messages = messages
        .into_iter()
        .map(
            |(channel, msg_id, spid, stid, rpid, rtid, sent, received, size)| Paired {
                channel,
                send: Side {
                    pid: spid as u32,
                    tid: stid as u32,
                    ts_ns: sent as u64,
                    size: size as u64,
                },
                recv: Side {
                    pid: rpid as u32,
                    tid: rtid as u32,
                    ts_ns: received as u64,
                    size: size as u64,
                },
                msg_id: msg_id.map(|m| m as u64),
            },
        )
        .collect();
    batch.signals = signals(conn, session, from_ns, to_ns).await?;
    Ok(batch)
}

/// A `signals` row: id, sender, target, signo, generated, delivered.
type SignalRow = (i64, Option<i64>, i64, i64, i64, Option<i64>);

/// The signals generated or delivered in `[from_ns, to_ns)`, in time
/// order, as the correlation stage handed them to the analysis.
async fn signals(
    conn: &mut SqliteConnection,
    session: SessionId,
    from_ns: u64,
    to_ns: u64,
) -> Result<Vec<SignalFact>, StoreError> {
    let rows: Vec<SignalRow> = sqlx::query_as(
        "SELECT id, sender_pid, target_pid, signo, generated_ns, delivered_ns FROM signals
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
    let mut facts: Vec<(i64, SignalFact)> = Vec::new();
    for (id, sender, target, signo, generated, delivered) in rows {
        let signal = Signal {
            id: id as u64,
            sender: sender.map(|p| p as u32),
            target: target as u32,
            signo: signo as u32,
            generated_ns: generated as u64,
            cause: None,
        };
        if in_slice(generated) {
            facts.push((generated, SignalFact::Generated(signal)));
        }
        if let Some(at) = delivered.filter(|&d| in_slice(d)) {
            let delivered_ns = at as u64;
            facts.push((
                at,
                SignalFact::Delivered {
                    signal,
                    delivered_ns,
                },
            ));
        }
    }
    facts.sort_by_key(|(t, _)| *t);
    Ok(facts.into_iter().map(|(_, f)| f).collect())
}

/// How far the analysis is fed per step: deadlocks are confirmed at step
/// boundaries, so this is how late a replay may show one.
const STEP_NS: u64 = 100_000_000;

/// A recorded session, analysed up to any moment: what the dashboard's
/// timeline shows. Moving forward feeds what happened since; moving back
/// starts the analysis over (it holds no history to rewind).
pub struct Replay {
    store: Store,
    info: SessionInfo,
    names: Names,
    marks: Marks,
    analyzer: Analyzer,
    /// Everything before this has been fed.
    fed_ns: u64,
}

impl Replay {
    pub async fn open(store: Store, session: SessionId) -> Result<Replay, StoreError> {
        let mut conn = store.read_only().await?;
        let info = session_info(&mut conn, session).await?;
        let names = Names::load(&mut conn, session).await?;
        let marks = Marks::load(&mut conn, session).await?;
        Ok(Replay {
            analyzer: fresh_analyzer(&info),
            fed_ns: info.start_ns,
            store,
            info,
            names,
            marks,
        })
    }

    /// When deadlocks were detected and events lost.
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The session's state as of `t_ns` (clamped to the session).
    pub async fn snapshot_at(&mut self, t_ns: u64) -> Result<Snapshot, StoreError> {
        let t = t_ns.clamp(self.info.start_ns, self.info.end_ns);
        if t < self.fed_ns {
            self.analyzer = fresh_analyzer(&self.info);
            self.fed_ns = self.info.start_ns;
        }
        // Up to and including t: the session's last event is at end_ns.
        let until = t + 1;
        let mut conn = self.store.read_only().await?;
        while self.fed_ns < until {
            let to = (self.fed_ns + STEP_NS).min(until);
            let batch = load(&mut conn, self.info.id, &self.names, self.fed_ns, to).await?;
            self.analyzer.correlated(
                &batch.events,
                &batch.channel_ids,
                &batch.messages,
                &batch.signals,
                batch.ingest_dropped,
            );
            self.analyzer.tick(to);
            self.fed_ns = to;
        }
        if t >= self.info.end_ns {
            // The whole recording is in: it is over, as it was when it
            // ended live.
            self.analyzer.finish();
        }
        let mut snapshot = self.analyzer.snapshot(t);
        snapshot.live = false;
        Ok(snapshot)
    }
}

fn fresh_analyzer(info: &SessionInfo) -> Analyzer {
    Analyzer::new(
        info.id.0,
        info.name.clone(),
        info.start_ns,
        AnalyzerConfig::default(),
    )
}
