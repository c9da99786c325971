//! The single writer: ingest batches in, multi-row INSERTs out.
//!
//! Events pass through the correlation stage ([`Correlator`]) on their way
//! in, in time order; what is stored is its facts, and the writer computes
//! nothing of its own: it is a sink.
//!
//! Sources hand over `Vec<Event>` batches through a bounded channel, so a
//! burst is absorbed in memory up to a limit and then pushes back (or, with
//! [`Ingest::try_send`], is counted as dropped) instead of growing without
//! bound. One task owns the connection: it gathers rows until
//! `rows_per_tx` or `flush_interval` after the first unflushed row, then
//! writes them in one transaction of multi-row `INSERT ... VALUES`
//! statements. Each sqlx statement costs tens of microseconds however small,
//! so rows must share statements to reach a million a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipc_events::{ChannelId, Event};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Sqlite, SqliteConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::retention::Retention;
use super::{traffic, SessionId, Store, StoreError};
use crate::correlate::{
    ChannelRef, Correlator, DropFact, Paired, ProcessFact, SignalFact, Unpaired, Wait, WaitFact,
};

/// Columns bound per `events` row; SQLite allows 32766 parameters per
/// statement, which bounds rows per statement.
const EVENT_COLUMNS: usize = 13;
const MAX_PARAMS: usize = 32766;

/// How the writer batches.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Batches the ingest channel holds before senders wait.
    pub queue_batches: usize,
    /// Rows per multi-row INSERT statement.
    pub rows_per_statement: usize,
    /// Rows that trigger a commit before the interval is up.
    pub rows_per_tx: usize,
    /// Longest time a row waits to be committed: what a crash can lose.
    pub flush_interval: Duration,
    /// Where each correlated batch goes (the analysis), if anywhere, as
    /// soon as its channels have ids. Bounded: analysis that falls behind
    /// holds the writer back rather than see a partial stream.
    pub observer: Option<mpsc::Sender<Correlated>>,
    /// The recorder's own process, whose activity is not the user's.
    pub recorder_pid: Option<u32>,
    /// Keep the database under this many bytes by removing the session's
    /// oldest raw rows (`record --max-db-size`; see `retention`).
    pub max_db_bytes: Option<u64>,
}

/// One transaction's worth of the correlation stage's facts, for the
/// analysis, with channels named by their `channels.id`. Handed over once
/// the transaction has given its channels their ids, before the events are
/// stored: the analysis does not wait for the disk.
#[derive(Debug, Default)]
pub struct Correlated {
    /// Shared with the writer, which stores them meanwhile.
    pub events: Arc<Vec<Event>>,
    /// `channels.id` of each event's object, index for index.
    pub channel_ids: Vec<Option<i64>>,
    /// Sends paired with receives, keyed by `channels.id`.
    pub messages: Vec<Paired<i64>>,
    pub signals: Vec<SignalFact>,
    /// Events the ingest queue refused since the previous batch.
    pub ingest_dropped: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_batches: 256,
            rows_per_statement: 500,
            rows_per_tx: 50_000,
            flush_interval: Duration::from_millis(50),
            observer: None,
            recorder_pid: None,
            max_db_bytes: None,
        }
    }
}

/// What the writer did, returned when it finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub events: u64,
    pub transactions: u64,
    /// Events refused by [`Ingest::try_send`] because the queue was full;
    /// also stored in `drops` with source `ingest`.
    pub ingest_dropped: u64,
    /// The session's oldest events removed to keep the database under
    /// [`WriterConfig::max_db_bytes`] (in `drops` as `retention`), and in
    /// how many chunks.
    pub retention_removed: u64,
    pub retention_chunks: u64,
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the writer has stopped")]
    Closed,
}

/// The sending side of the writer: cheap to clone, one per source.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Vec<Event>>,
    dropped: Arc<AtomicU64>,
    /// Inodes of the recorder's own sockets and rings, for the writer to hand the
    /// correlation stage before it correlates what it holds.
    own_sockets: Arc<Mutex<Vec<u64>>>,
}

impl Ingest {
    /// An `Ingest` whose batches go to the returned receiver instead of a
    /// writer, bounded at `queue_batches` as [`WriterConfig::queue_batches`]
    /// bounds the writer's queue. For running a source with nothing stored
    /// behind it: the channel benchmark drains ipc-lib rings through the
    /// real [`RingListener`](crate::lib_ring::RingListener) this way, so
    /// that what it measures is tracing, not SQLite.
    pub fn detached(queue_batches: usize) -> (Ingest, mpsc::Receiver<Vec<Event>>) {
        let (tx, rx) = mpsc::channel(queue_batches.max(1));
        (Ingest::new(tx), rx)
    }

    fn new(tx: mpsc::Sender<Vec<Event>>) -> Ingest {
        Ingest {
            tx,
            dropped: Arc::default(),
            own_sockets: Arc::default(),
        }
    }

    /// Says that the socket or memfd of inode `inode` is the recorder's
    /// own (an ipc-lib process's connection to it, or its event ring):
    /// what goes through it is the recorder's plumbing, not the user's
    /// IPC. Takes effect for every event not yet written, which includes
    /// those of the last `REORDER_NS`.
    pub fn own_object(&self, inode: u64) {
        lock(&self.own_sockets).push(inode);
    }

    /// Hands over a batch, waiting while the queue is full.
    pub async fn send(&self, batch: Vec<Event>) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).await.map_err(|_| IngestError::Closed)
    }

    /// Hands over a batch without waiting; when the queue is full the batch
    /// is counted as dropped (stored in `drops`), never lost silently.
    pub fn try_send(&self, batch: Vec<Event>) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(IngestError::Closed),
        }
    }
}

/// The writer task; [`WriterHandle::finish`] flushes and stops it once every
/// [`Ingest`] clone has been dropped.
#[derive(Debug)]
pub struct WriterHandle {
    join: JoinHandle<Result<WriterStats, StoreError>>,
}

impl WriterHandle {
    /// Waits for the writer to drain its queue and commit. Drop every
    /// [`Ingest`] first, or this waits for them.
    pub async fn finish(self) -> Result<WriterStats, StoreError> {
        match self.join.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Starts the writer for one session.
pub async fn spawn_writer(
    store: &Store,
    session: SessionId,
    config: WriterConfig,
) -> Result<(Ingest, WriterHandle), StoreError> {
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::sql("acquiring the writer's connection"))?;
    let retention = match config.max_db_bytes {
        Some(limit) => Some(Retention::start(&mut conn, limit).await?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
    let ingest = Ingest::new(tx);
    let writer = Writer {
        conn,
        session,
        rows_per_statement: config
            .rows_per_statement
            .clamp(1, MAX_PARAMS / EVENT_COLUMNS),
        correlator: Correlator::new(config.recorder_pid),
        channels: Vec::new(),
        processes: HashMap::new(),
        wait_rows: HashMap::new(),
        signal_rows: HashMap::new(),
        dropped: Arc::clone(&ingest.dropped),
        own_sockets: Arc::clone(&ingest.own_sockets),
        dropped_stored: 0,
        stats: WriterStats::default(),
        full_insert_sql: String::new(),
        observer: config.observer.clone(),
        retention,
    };
    let join = tokio::spawn(writer.run(rx, config));
    Ok((ingest, WriterHandle { join }))
}

struct Writer {
    conn: PoolConnection<Sqlite>,
    session: SessionId,
    rows_per_statement: usize,
    correlator: Correlator,
    /// `channels.id` of each of the correlator's channels, by ref.
    channels: Vec<i64>,
    /// `processes.id` of the live process of each pid.
    processes: HashMap<u32, i64>,
    /// `waits.id` of each wait stored while still open, by the
    /// correlator's wait id.
    wait_rows: HashMap<u64, i64>,
    /// `signals.id` of each generated signal, by the correlator's id,
    /// until it is delivered.
    signal_rows: HashMap<u64, i64>,
    dropped: Arc<AtomicU64>,
    own_sockets: Arc<Mutex<Vec<u64>>>,
    dropped_stored: u64,
    stats: WriterStats,
    /// The INSERT for a full statement, built once: sqlx caches prepared
    /// statements by their text.
    full_insert_sql: String,
    observer: Option<mpsc::Sender<Correlated>>,
    retention: Option<Retention>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<Event>>,
        config: WriterConfig,
    ) -> Result<WriterStats, StoreError> {
        self.full_insert_sql = insert_sql(self.rows_per_statement);
        let mut pending: Vec<Event> = Vec::with_capacity(config.rows_per_tx);
        let mut deadline: Option<Instant> = None;
        loop {
            let received = match deadline {
                // None: the flush interval is up.
                Some(at) => timeout_at(at, rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            };
            match received {
                Some(Some(mut batch)) => {
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + config.flush_interval);
                    }
                    pending.append(&mut batch);
                    if pending.len() < config.rows_per_tx {
                        continue;
                    }
                }
                // Every sender is gone: write what is left and stop.
                Some(None) => {
                    let held = pending.len() as u64;
                    if let Err(e) = self.flush(&mut pending, true).await {
                        return self.count_the_rest(e, held, rx).await;
                    }
                    return Ok(self.stats);
                }
                None => {}
            }
            let held = pending.len() as u64;
            if let Err(e) = self.flush(&mut pending, false).await {
                return self.count_the_rest(e, held, rx).await;
            }
            // Events held back for ordering are written on the next round
            // even if nothing else comes.
            deadline = (!pending.is_empty()).then(|| Instant::now() + config.flush_interval);
        }
    }

    /// After a failed commit (a full disk, a lock held past the busy
    /// timeout) nothing more can be stored consistently: the failed
    /// transaction's facts are gone from the correlator, and later facts
    /// would refer to rows it never wrote. So the rest is counted: the
    /// `lost` events held when it failed and all that still comes, stored
    /// (if the database takes that much) as one `drops` row of source
    /// `storage`, so the session says how much it lacks.
    async fn count_the_rest(
        mut self,
        error: StoreError,
        mut lost: u64,
        mut rx: mpsc::Receiver<Vec<Event>>,
    ) -> Result<WriterStats, StoreError> {
        while let Some(batch) = rx.recv().await {
            lost += batch.len() as u64;
        }
        // Batches refused by a full queue were never received: theirs too.
        lost += self.dropped.load(Ordering::Relaxed) - self.dropped_stored;
        let now = crate::clock::monotonic_ns();
        if let Err(e) = insert_drop(&mut self.conn, self.session.0, "storage", lost, now).await {
            tracing::warn!("recording the {lost} events not stored: {e}");
        }
        Err(error)
    }

    /// Writes what `pending` holds in time order, except (unless `last`)
    /// events too recent to be sure nothing older is still on its way,
    /// which stay in `pending`.
    async fn flush(&mut self, pending: &mut Vec<Event>, last: bool) -> Result<(), StoreError> {
        let held = hold_back(pending, last, crate::clock::monotonic_ns());
        self.make_room(pending.len()).await;
        let result = self.write(pending, last).await;
        pending.extend(held);
        if last && result.is_ok() {
            self.make_room(0).await;
        }
        result
    }

    /// Keeps the size limit, if there is one: room for `coming` events
    /// before a transaction, and after the last. What is stored is
    /// stored: a removal that fails (and is rolled back) leaves the
    /// recording going without retention, and says so.
    async fn make_room(&mut self, coming: usize) {
        let Some(retention) = self.retention.as_mut() else {
            return;
        };
        let kept = retention
            .make_room(&mut self.conn, self.session.0, coming, &mut self.stats)
            .await;
        if let Err(e) = kept {
            crate::note!("ipcscope: removing old events to keep --max-db-size failed, so the database may grow past it from now on: {e}");
            self.retention = None;
        }
    }

    /// Correlates and stores `pending`; with `last`, the recording's end,
    /// also what will now never pair.
    async fn write(&mut self, pending: &mut Vec<Event>, last: bool) -> Result<(), StoreError> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let new_drops = dropped - self.dropped_stored;
        if pending.is_empty() && new_drops == 0 && !last {
            return Ok(());
        }
        if new_drops > 0 {
            // Whole batches were refused: message positions are lost.
            self.correlator.lost();
        }
        for inode in lock(&self.own_sockets).drain(..) {
            self.correlator.own_object(inode);
        }
        for event in pending.drain(..) {
            self.correlator.push(event);
        }
        let mut facts = match last {
            true => self.correlator.finish(),
            false => self.correlator.take(),
        };
        if new_drops > 0 {
            facts.drops.push(DropFact {
                source: "ingest",
                count: new_drops,
                ts_ns: crate::clock::monotonic_ns(),
            });
        }
        let session = self.session.0;
        let mut tx = sqlx::Connection::begin(&mut *self.conn)
            .await
            .map_err(StoreError::sql("starting a transaction"))?;

        // Channels and processes first: events refer to them.
        for (r, id) in &facts.new_channels {
            debug_assert_eq!(r.0 as usize, self.channels.len());
            self.channels.push(channel_id(&mut tx, session, id).await?);
        }
        for renamed in &facts.renamed {
            rename_channel(
                &mut tx,
                self.channels[renamed.channel.0 as usize],
                &renamed.id,
            )
            .await?;
        }
        for &(socket, lib) in &facts.carried {
            sqlx::query("UPDATE channels SET carries_channel_id = ? WHERE id = ?")
                .bind(self.channels[lib.0 as usize])
                .bind(self.channels[socket.0 as usize])
                .execute(&mut *tx)
                .await
                .map_err(StoreError::sql(
                    "linking an object to the ipc-lib one it carries",
                ))?;
        }
        for fact in &facts.processes {
            track_process(&mut tx, &mut self.processes, session, fact).await?;
        }
        let channel_ids: Vec<Option<i64>> = facts
            .channels
            .iter()
            .map(|r| r.map(|r| self.channels[r.0 as usize]))
            .collect();
        let messages: Vec<Paired<i64>> = facts
            .messages
            .iter()
            .map(|m| Paired {
                channel: self.channels[m.channel.0 as usize],
                send: m.send,
                recv: m.recv,
                msg_id: m.msg_id,
            })
            .collect();
        let events = Arc::new(std::mem::take(&mut facts.events));
        if let Some(observer) = &self.observer {
            // What one source saw of an operation counted under another's
            // is analysed once: under no object of its own.
            let analysed = channel_ids
                .iter()
                .zip(&facts.shadowed)
                .map(|(id, &shadowed)| id.filter(|_| !shadowed))
                .collect();
            let correlated = Correlated {
                events: Arc::clone(&events),
                channel_ids: analysed,
                messages: messages.clone(),
                signals: facts.signals.clone(),
                ingest_dropped: new_drops,
            };
            // A closed observer (the analysis stopped) leaves storing
            // unaffected.
            let _ = observer.send(correlated).await;
        }

        // Pipelined: sqlx executes a statement on its worker thread, so
        // while statement k runs there, this task encodes the arguments of
        // statement k+1 (join! polls the execute first, which hands it to
        // the worker, then runs the encoding to completion).
        let chunks: Vec<(&[Event], &[Option<i64>])> = events
            .chunks(self.rows_per_statement)
            .zip(channel_ids.chunks(self.rows_per_statement))
            .collect();
        let mut next = chunks.first().map(|c| encode(session, *c)).transpose()?;
        for i in 0..chunks.len() {
            let Some(args) = next.take() else { break };
            let partial;
            let sql = if chunks[i].0.len() == self.rows_per_statement {
                &self.full_insert_sql
            } else {
                partial = insert_sql(chunks[i].0.len());
                &partial
            };
            let execute = sqlx::query_with(sql, args).execute(&mut *tx);
            let encode_next = async { chunks.get(i + 1).map(|c| encode(session, *c)).transpose() };
            let (done, encoded) = tokio::join!(execute, encode_next);
            done.map_err(StoreError::sql("inserting events"))?;
            next = encoded?;
        }
        for rows in messages.chunks(MESSAGE_ROWS_PER_STATEMENT) {
            insert_messages(&mut tx, session, rows).await?;
        }
        for rows in facts.one_ended.chunks(MESSAGE_ROWS_PER_STATEMENT) {
            insert_one_ended(&mut tx, session, rows, &self.channels).await?;
        }
        write_waits(
            &mut tx,
            session,
            &facts.waits,
            &self.channels,
            &mut self.wait_rows,
        )
        .await?;
        for fact in &facts.signals {
            store_signal(&mut tx, session, fact, &mut self.signal_rows).await?;
        }
        for d in &facts.drops {
            insert_drop(&mut tx, session, d.source, d.count, d.ts_ns).await?;
        }
        let mut traffic = traffic::Tally::default();
        traffic.events(&events, &channel_ids);
        traffic.messages(&messages, &facts.one_ended, &self.channels);
        traffic.store(&mut tx, session).await?;
        sqlx::query("UPDATE sessions SET event_count = event_count + ? WHERE id = ?")
            .bind(events.len() as i64)
            .bind(session)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql("counting events"))?;
        tx.commit()
            .await
            .map_err(StoreError::sql("committing events"))?;

        self.stats.events += events.len() as u64;
        self.stats.transactions += 1;
        self.stats.ingest_dropped = dropped;
        self.dropped_stored = dropped;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A list of numbers cannot be left half-changed by a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long an event is held back so that events from other sources that
/// happened before it, but arrive later, are written (and paired) first.
/// Each ipc-lib ring and the kernel ring is drained separately, every
/// millisecond, so a signal's handling can arrive before its sending.
const REORDER_NS: u64 = 10_000_000;
/// Events stamped further than this in the future are not real times (a
/// broken or hostile writer): holding them back would hold them forever.
const FUTURE_NS: u64 = 1_000_000_000;

/// Sorts `pending` by time and takes out the events to write later: those
/// stamped within [`REORDER_NS`] of `now_ns` (none when `last`).
fn hold_back(pending: &mut Vec<Event>, last: bool, now_ns: u64) -> Vec<Event> {
    pending.sort_by_key(|e| e.ts_ns);
    if last {
        return Vec::new();
    }
    let from = pending.partition_point(|e| e.ts_ns <= now_ns.saturating_sub(REORDER_NS));
    let to = pending.partition_point(|e| e.ts_ns <= now_ns.saturating_add(FUTURE_NS));
    pending.drain(from..to).collect()
}

/// The arguments of one multi-row INSERT. Built directly and sized once:
/// chaining Query::bind moves the whole query per value, which showed in
/// profiles.
fn encode<'q>(
    session: i64,
    (events, channels): (&'q [Event], &[Option<i64>]),
) -> Result<SqliteArguments<'q>, StoreError> {
    let mut args = SqliteArguments::default();
    args.reserve(events.len() * EVENT_COLUMNS, 0);
    for (e, channel) in events.iter().zip(channels) {
        bind_event(&mut args, session, e, *channel)
            .map_err(|e| StoreError::sql("encoding an event")(sqlx::Error::Encode(e)))?;
    }
    Ok(args)
}

fn bind_event<'q>(
    args: &mut SqliteArguments<'q>,
    session: i64,
    e: &'q Event,
    channel: Option<i64>,
) -> Result<(), sqlx::error::BoxDynError> {
    args.add(session)?;
    args.add(e.ts_ns as i64)?;
    args.add(i64::from(e.pid))?;
    args.add(i64::from(e.tid))?;
    args.add(i64::from(e.source.code()))?;
    args.add(i64::from(e.kind.code()))?;
    args.add(channel)?;
    args.add(e.size as i64)?;
    args.add(e.msg_id.map(|m| m as i64))?;
    args.add(e.result)?;
    args.add(e.duration_ns.map(|d| d as i64))?;
    args.add(e.aux as i64)?;
    args.add(e.payload.as_deref())?;
    Ok(())
}

fn insert_sql(rows: usize) -> String {
    const HEAD: &str = "INSERT INTO events (session_id, ts_ns, pid, tid, source_code, kind_code, \
                        channel_id, size, msg_id, result, duration_ns, aux, payload) VALUES ";
    const ROW: &str = "(?,?,?,?,?,?,?,?,?,?,?,?,?)";
    debug_assert_eq!(ROW.matches('?').count(), EVENT_COLUMNS);
    let mut sql = String::with_capacity(HEAD.len() + rows * (ROW.len() + 1));
    sql.push_str(HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    sql
}

async fn channel_id(
    conn: &mut SqliteConnection,
    session: i64,
    channel: &ChannelId,
) -> Result<i64, StoreError> {
    // The upsert's no-op update makes RETURNING yield the id of a row that
    // an earlier run of this session (or another writer) already inserted.
    sqlx::query_scalar(
        "INSERT INTO channels (session_id, kind, name) VALUES (?, ?, ?)
         ON CONFLICT (session_id, kind, name) DO UPDATE SET kind = excluded.kind
         RETURNING id",
    )
    .bind(session)
    .bind(channel.kind().as_str())
    .bind(channel.name())
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::sql("recording a channel"))
}

/// A socket channel first stored with one end named gets its full name.
async fn rename_channel(
    conn: &mut SqliteConnection,
    row: i64,
    channel: &ChannelId,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE channels SET name = ? WHERE id = ?")
        .bind(channel.name())
        .bind(row)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql("naming a channel"))?;
    Ok(())
}

/// The `processes` row of what `fact` says; `live` holds the row of each
/// pid's current process.
async fn track_process(
    conn: &mut SqliteConnection,
    live: &mut HashMap<u32, i64>,
    session: i64,
    fact: &ProcessFact,
) -> Result<(), StoreError> {
    match fact {
        ProcessFact::Started {
            pid,
            ppid,
            comm,
            exe,
            started_ns,
        } => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO processes (session_id, pid, ppid, comm, exe, started_ns)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(session)
            .bind(i64::from(*pid))
            .bind(ppid.map(i64::from))
            .bind(comm.as_deref())
            .bind(exe.as_deref())
            .bind(started_ns.map(|t| t as i64))
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::sql("recording a process"))?;
            live.insert(*pid, id);
        }
        ProcessFact::Exec { pid, comm, exe } => {
            let Some(id) = live.get(pid) else {
                return Ok(());
            };
            sqlx::query(
                "UPDATE processes SET comm = coalesce(?, comm), exe = coalesce(?, exe) WHERE id = ?",
            )
            .bind(comm.as_deref())
            .bind(exe.as_deref())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sql("recording an exec"))?;
        }
        ProcessFact::Exited {
            pid,
            exited_ns,
            status,
        } => {
            let Some(id) = live.remove(pid) else {
                return Ok(());
            };
            sqlx::query(
                "UPDATE processes SET exited_ns = ?, exit_status = coalesce(?, exit_status)
                 WHERE id = ?",
            )
            .bind(*exited_ns as i64)
            .bind(*status)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sql("recording an exit"))?;
        }
        ProcessFact::Titled { pid, title, ts_ns } => {
            let Some(id) = live.get(pid) else {
                return Ok(());
            };
            sqlx::query("UPDATE processes SET title = ?, title_ns = ? WHERE id = ?")
                .bind(title)
                .bind(*ts_ns as i64)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::sql("recording a title"))?;
        }
    }
    Ok(())
}

/// `messages` rows per INSERT: 11 parameters each.
const MESSAGE_ROWS_PER_STATEMENT: usize = 500;

async fn insert_messages(
    conn: &mut SqliteConnection,
    session: i64,
    rows: &[Paired<i64>],
) -> Result<(), StoreError> {
    const HEAD: &str = "INSERT INTO messages (session_id, channel_id, msg_id, sender_pid, \
                        sender_tid, receiver_pid, receiver_tid, sent_ns, received_ns, \
                        latency_ns, size) VALUES ";
    insert_rows(conn, HEAD, 11, rows, "inserting messages", |args, row| {
        args.add(session)?;
        args.add(row.channel)?;
        args.add(row.msg_id.map(|m| m as i64))?;
        args.add(i64::from(row.send.pid))?;
        args.add(i64::from(row.send.tid))?;
        args.add(i64::from(row.recv.pid))?;
        args.add(i64::from(row.recv.tid))?;
        args.add(row.send.ts_ns as i64)?;
        args.add(row.recv.ts_ns as i64)?;
        // Signed: a negative latency would show a mis-pairing, not hide it.
        args.add(row.recv.ts_ns as i64 - row.send.ts_ns as i64)?;
        args.add(row.send.size as i64)?;
        Ok(())
    })
    .await
}

/// Messages with one end known: the other end's columns and the latency
/// are NULL (unknown, not 0).
async fn insert_one_ended(
    conn: &mut SqliteConnection,
    session: i64,
    rows: &[Unpaired<ChannelRef>],
    channels: &[i64],
) -> Result<(), StoreError> {
    const HEAD: &str = "INSERT INTO messages (session_id, channel_id, msg_id, sender_pid, \
                        sender_tid, receiver_pid, receiver_tid, sent_ns, received_ns, size) VALUES ";
    insert_rows(conn, HEAD, 10, rows, "inserting messages", |args, row| {
        let known = (
            Some(i64::from(row.side.pid)),
            Some(i64::from(row.side.tid)),
            Some(row.side.ts_ns as i64),
        );
        let unknown = (None::<i64>, None::<i64>, None::<i64>);
        let (sender, receiver) = match row.sent {
            true => (known, unknown),
            false => (unknown, known),
        };
        args.add(session)?;
        args.add(channels[row.channel.0 as usize])?;
        args.add(row.msg_id.map(|m| m as i64))?;
        args.add(sender.0)?;
        args.add(sender.1)?;
        args.add(receiver.0)?;
        args.add(receiver.1)?;
        args.add(sender.2)?;
        args.add(receiver.2)?;
        args.add(row.side.size as i64)?;
        Ok(())
    })
    .await
}

/// One multi-row INSERT: `head` (`INSERT INTO t (a, b) VALUES `), then a
/// group of `columns` placeholders for each of `rows`, which `bind` binds.
async fn insert_rows<T>(
    conn: &mut SqliteConnection,
    head: &str,
    columns: usize,
    rows: &[T],
    action: &'static str,
    bind: impl Fn(&mut SqliteArguments<'_>, &T) -> Result<(), sqlx::error::BoxDynError>,
) -> Result<(), StoreError> {
    let group = format!("({})", vec!["?"; columns].join(","));
    let mut sql = String::with_capacity(head.len() + rows.len() * (group.len() + 1));
    sql.push_str(head);
    let mut args = SqliteArguments::default();
    args.reserve(rows.len() * columns, 0);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&group);
        bind(&mut args, row).map_err(|e| StoreError::sql(action)(sqlx::Error::Encode(e)))?;
    }
    sqlx::query_with(&sql, args)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql(action))?;
    Ok(())
}

/// `waits` rows per INSERT: 7 parameters each.
const WAIT_ROWS_PER_STATEMENT: usize = 1000;

/// Stores a batch's waits: whole ones in multi-row INSERTs (a semaphore or
/// futex flood is otherwise a statement per wait, ten times slower than
/// the events themselves), a wait still open with a statement of its own
/// (its row is completed when it ends), and the ends of those.
async fn write_waits(
    conn: &mut SqliteConnection,
    session: i64,
    facts: &[WaitFact],
    channels: &[i64],
    open_rows: &mut HashMap<u64, i64>,
) -> Result<(), StoreError> {
    const HEAD: &str =
        "INSERT INTO waits (session_id, pid, tid, channel_id, start_ns, end_ns, waker_pid) VALUES ";
    let channel = |w: &Wait| w.channel.map(|r| channels[r.0 as usize]);
    let whole: Vec<&Wait> = facts
        .iter()
        .filter_map(|f| match f {
            WaitFact::Whole(w) => Some(w),
            _ => None,
        })
        .collect();
    for rows in whole.chunks(WAIT_ROWS_PER_STATEMENT) {
        insert_rows(conn, HEAD, 7, rows, "recording waits", |args, w| {
            args.add(session)?;
            args.add(i64::from(w.pid))?;
            args.add(i64::from(w.tid))?;
            args.add(channel(w))?;
            args.add(w.start_ns as i64)?;
            args.add(w.end_ns.map(|e| e as i64))?;
            args.add(w.waker.map(i64::from))?;
            Ok(())
        })
        .await?;
    }
    for fact in facts {
        match fact {
            WaitFact::Whole(_) => {}
            WaitFact::Opened(w) => {
                let row: i64 = sqlx::query_scalar(
                    "INSERT INTO waits (session_id, pid, tid, channel_id, start_ns)
                     VALUES (?, ?, ?, ?, ?) RETURNING id",
                )
                .bind(session)
                .bind(i64::from(w.pid))
                .bind(i64::from(w.tid))
                .bind(channel(w))
                .bind(w.start_ns as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(StoreError::sql("recording a wait"))?;
                open_rows.insert(w.id, row);
            }
            WaitFact::Closed { id, end_ns, waker } => {
                let Some(row) = open_rows.remove(id) else {
                    continue;
                };
                sqlx::query("UPDATE waits SET end_ns = ?, waker_pid = ? WHERE id = ?")
                    .bind(*end_ns as i64)
                    .bind(waker.map(i64::from))
                    .bind(row)
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::sql("ending a wait"))?;
            }
        }
    }
    Ok(())
}

/// A `signals` row for a generated signal, and its delivery time when it
/// is delivered; `rows` holds the rows of signals still waiting for one.
async fn store_signal(
    conn: &mut SqliteConnection,
    session: i64,
    fact: &SignalFact,
    rows: &mut HashMap<u64, i64>,
) -> Result<(), StoreError> {
    match fact {
        SignalFact::Generated(s) => {
            let row: i64 = sqlx::query_scalar(
                "INSERT INTO signals (session_id, sender_pid, target_pid, signo, generated_ns,
                                      cause)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(session)
            .bind(s.sender.map(i64::from))
            .bind(i64::from(s.target))
            .bind(i64::from(s.signo))
            .bind(s.generated_ns as i64)
            .bind(s.cause)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::sql("recording a signal"))?;
            rows.insert(s.id, row);
        }
        SignalFact::Delivered {
            signal,
            delivered_ns,
        } => {
            let Some(row) = rows.remove(&signal.id) else {
                return Ok(());
            };
            sqlx::query("UPDATE signals SET delivered_ns = ? WHERE id = ?")
                .bind(*delivered_ns as i64)
                .bind(row)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::sql("recording a signal's delivery"))?;
        }
    }
    Ok(())
}

async fn insert_drop(
    conn: &mut SqliteConnection,
    session: i64,
    source: &str,
    count: u64,
    ts_ns: u64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO drops (session_id, source, count, ts_ns) VALUES (?, ?, ?, ?)")
        .bind(session)
        .bind(source)
        .bind(count as i64)
        .bind(ts_ns as i64)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql("recording dropped events"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewSession, OpenMode};
    use ipc_events::{ChannelKind, EventKind, Source};

    fn session() -> NewSession {
        NewSession {
            name: None,
            command: "t".into(),
            host: "h".into(),
            started_at: "2026-11-22T00:00:00.000Z".into(),
            sources: "ebpf".into(),
            start_mono_ns: 0,
            recorder_pid: 1,
        }
    }

    fn signal(ts: u64, kind: EventKind, pid: u32, target: Option<u32>, signo: u64) -> Event {
        let mut e = Event::new(ts, pid, pid, Source::Ebpf, kind);
        e.aux = signo;
        e.target_pid = target;
        e
    }

    fn message(ts: u64, kind: EventKind, pid: u32, end: u64, size: u64) -> Event {
        let mut e = Event::new(ts, pid, pid, Source::Ebpf, kind);
        e.channel = Some(ChannelId::numeric(ChannelKind::UnixStream, 10, 20));
        e.endpoint = Some(end);
        e.size = size;
        e.result = size as i64;
        e
    }

    /// Writes each batch in its own transaction (a row per flush), then
    /// returns the store.
    async fn write(dir: &std::path::Path, batches: Vec<Vec<Event>>) -> Store {
        let store = Store::open(&dir.join("w.db"), OpenMode::Create)
            .await
            .unwrap();
        let session = store.begin_session(&session()).await.unwrap();
        let config = WriterConfig {
            rows_per_tx: 1,
            ..WriterConfig::default()
        };
        let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
        for batch in batches {
            ingest.send(batch).await.unwrap();
        }
        drop(ingest);
        writer.finish().await.unwrap();
        store
    }

    #[test]
    fn recent_events_wait_for_their_elders_and_the_rest_go_in_time_order() {
        let now = 100 * REORDER_NS;
        let at = |ts: u64| Event::new(ts, 1, 1, Source::Lib, EventKind::MsgSend);
        let times = |v: &[Event]| v.iter().map(|e| e.ts_ns).collect::<Vec<_>>();
        let future = now + 2 * FUTURE_NS;
        let mut pending = vec![at(now - 1), at(5), at(future), at(now - REORDER_NS), at(3)];
        let held = hold_back(&mut pending, false, now);
        assert_eq!(times(&pending), [3, 5, now - REORDER_NS, future]);
        assert_eq!(times(&held), [now - 1]);
        let mut pending = vec![at(now - 1), at(5)];
        assert!(
            hold_back(&mut pending, true, now).is_empty(),
            "the last flush writes all"
        );
        assert_eq!(times(&pending), [5, now - 1]);
    }

    #[tokio::test]
    async fn waits_rows_open_when_a_wait_begins_and_close_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sem = |ts: u64, kind: EventKind, pid: u32, result: i64| {
            let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
            e.channel = Some(ChannelId::named(ChannelKind::IpclibSem, "s"));
            e.result = result;
            e
        };
        let store = write(
            dir.path(),
            vec![
                // Uncontended: no wait.
                vec![sem(1, EventKind::SemWaitEnd, 7, 0)],
                // 8 blocks, 7 posts, 8 takes it: woken by 7.
                vec![sem(2, EventKind::SemWaitBegin, 8, 0)],
                vec![
                    sem(3, EventKind::SemPost, 7, 0),
                    sem(4, EventKind::SemWaitEnd, 8, 0),
                ],
                // 9 gives up: nobody woke it.
                vec![sem(5, EventKind::SemWaitBegin, 9, 0)],
                vec![sem(6, EventKind::SemWaitEnd, 9, -110)],
                // 10 is still blocked when the recording ends.
                vec![sem(7, EventKind::SemWaitBegin, 10, 0)],
            ],
        )
        .await;
        let rows: Vec<(i64, i64, Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT pid, start_ns, end_ns, waker_pid FROM waits ORDER BY id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                (8, 2, Some(4), Some(7)),
                (9, 5, Some(6), None),
                (10, 7, None, None)
            ]
        );
    }

    #[tokio::test]
    async fn waits_are_the_same_whether_their_events_share_a_transaction_or_not() {
        let sem = |ts: u64, kind: EventKind, pid: u32, result: i64| {
            let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
            e.channel = Some(ChannelId::named(ChannelKind::IpclibSem, "s"));
            e.result = result;
            e.duration_ns = Some(1);
            e
        };
        let events = vec![
            sem(1, EventKind::SemWaitEnd, 7, 0),
            sem(2, EventKind::SemWaitBegin, 8, 0),
            sem(3, EventKind::SemPost, 7, 0),
            sem(4, EventKind::SemWaitEnd, 8, 0),
            // 11's first wait lost its end: that row stays open.
            sem(5, EventKind::SemWaitBegin, 11, 0),
            sem(6, EventKind::SemWaitBegin, 11, 0),
            sem(7, EventKind::SemWaitEnd, 11, -110),
            sem(8, EventKind::SemWaitBegin, 10, 0),
        ];
        let mut seen = Vec::new();
        for batches in [
            vec![events.clone()],
            events.iter().map(|e| vec![e.clone()]).collect(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = write(dir.path(), batches).await;
            let rows: Vec<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT pid, start_ns, end_ns, waker_pid FROM waits ORDER BY pid, start_ns",
            )
            .fetch_all(store.pool())
            .await
            .unwrap();
            seen.push(rows);
        }
        let expected = [
            (7, 0, Some(1), None),
            (8, 2, Some(4), Some(7)),
            (10, 8, None, None),
            (11, 5, None, None),
            (11, 6, Some(7), None),
        ];
        assert_eq!(seen[0], expected, "one transaction");
        assert_eq!(seen[1], expected, "a transaction per event");
    }

    #[tokio::test]
    async fn signals_rows_get_their_delivery_across_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let g = EventKind::SignalGenerate;
        let d = EventKind::SignalDeliver;
        let mut merged = signal(3, g, 5, Some(6), 10);
        merged.result = crate::correlate::signal_result::ALREADY_PENDING;
        let store = write(
            dir.path(),
            vec![
                vec![signal(1, g, 5, Some(6), 10), merged],
                // A delivery in a later transaction than its generation.
                vec![signal(4, d, 6, None, 10)],
                vec![signal(5, g, 6, Some(5), 12)],
                // A delivery nothing was generated for: no row.
                vec![signal(6, d, 6, None, 14)],
            ],
        )
        .await;
        let rows: Vec<(i64, i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT sender_pid, target_pid, signo, generated_ns, delivered_ns
             FROM signals ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                (5, 6, 10, 1, Some(4)),
                (5, 6, 10, 3, None),
                (6, 5, 12, 5, None)
            ]
        );
    }

    #[tokio::test]
    async fn socket_messages_are_paired_per_direction() {
        let dir = tempfile::tempdir().unwrap();
        let (send, recv) = (EventKind::MsgSend, EventKind::MsgRecv);
        let store = write(
            dir.path(),
            vec![
                // 7 on end 10 sends 8 bytes to end 20; 8 on end 20 answers 3.
                vec![message(1, send, 7, 10, 8), message(2, send, 8, 20, 3)],
                vec![message(3, recv, 8, 20, 5), message(4, recv, 7, 10, 3)],
                vec![message(5, recv, 8, 20, 3)],
            ],
        )
        .await;
        let rows: Vec<(i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT sender_pid, receiver_pid, sent_ns, received_ns, latency_ns, size
             FROM messages ORDER BY received_ns",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(rows, [(8, 7, 2, 4, 2, 3), (7, 8, 1, 5, 4, 8)]);
    }

    fn wait(ts: u64, kind: EventKind, tid: u32, result: i64, duration: Option<u64>) -> Event {
        let mut e = Event::new(ts, 7, tid, Source::Ebpf, kind);
        e.channel = Some(ChannelId::numeric(ChannelKind::Futex, 0x1000, 0));
        e.result = result;
        e.duration_ns = duration;
        e
    }

    #[tokio::test]
    async fn waits_open_at_their_begin_and_close_at_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let (b, f) = (EventKind::FutexWaitBegin, EventKind::FutexWait);
        let store = write(
            dir.path(),
            vec![
                vec![wait(10, b, 1, 0, None)],
                // Its end in a later transaction; thread 2 never returns.
                vec![wait(30, f, 1, 0, Some(20)), wait(40, b, 2, 0, None)],
                // An end whose begin was never seen: a whole row.
                vec![wait(100, f, 3, -110, Some(25))],
            ],
        )
        .await;
        let rows: Vec<(i64, i64, Option<i64>)> =
            sqlx::query_as("SELECT tid, start_ns, end_ns FROM waits ORDER BY tid")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, [(1, 10, Some(30)), (2, 40, None), (3, 75, Some(100))]);
    }

    #[tokio::test]
    async fn queue_messages_pair_in_order_per_priority() {
        let dir = tempfile::tempdir().unwrap();
        let queued = |ts: u64, kind: EventKind, pid: u32, size: u64, prio: u64| {
            let mut e = Event::new(ts, pid, pid, Source::Ebpf, kind);
            e.channel = Some(ChannelId::named(ChannelKind::Mq, "/q"));
            e.size = size;
            e.aux = prio;
            e
        };
        let (send, recv) = (EventKind::MsgSend, EventKind::MsgRecv);
        let store = write(
            dir.path(),
            vec![vec![
                queued(1, send, 5, 10, 0),
                queued(2, send, 5, 20, 7),
                queued(3, send, 5, 30, 0),
                // The highest priority first, then the rest in order.
                queued(4, recv, 6, 20, 7),
                queued(5, recv, 6, 10, 0),
                queued(6, recv, 6, 30, 0),
            ]],
        )
        .await;
        let rows: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT sent_ns, received_ns, size FROM messages ORDER BY sent_ns")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, [(1, 5, 10), (2, 4, 20), (3, 6, 30)]);
    }
}
