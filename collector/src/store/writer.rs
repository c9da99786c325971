//! The single writer: correlated batches in, multi-row INSERTs out.
//!
//! Sources hand over `Vec<Event>` batches through a bounded channel to the
//! correlation stage ([`Stage`](super::stage)), which pairs and names them
//! and hands its facts to the analysis and to this writer side by side; the
//! writer computes nothing of its own: it is a sink. A burst is absorbed in
//! memory up to a limit and then pushes back (or, with [`Ingest::try_send`],
//! is counted as dropped) instead of growing without bound.
//!
//! One thread owns the connection: it gathers what the stage has handed
//! over until `rows_per_tx` rows, or `flush_interval` after the first, then
//! writes them in one transaction of multi-row `INSERT ... VALUES`
//! statements, the hot ones (events, messages, waits) bound in place
//! through SQLite's C API ([`Rows`]) rather than boxed into sqlx arguments.
//! A writer that falls behind holds more batches at once, so its
//! transactions grow and cost less per row.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipc_events::{ChannelId, Event};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::LockedSqliteHandle;
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::retention::Retention;
use super::rows::Rows;
use super::stage::{Stage, Stored};
use super::watermark::{Batch, ReadThrough, Watermarks};
use super::{traffic, Reserve, SessionId, Store, StoreError};
use crate::correlate::{
    ChannelRef, Correlator, Paired, ProcessFact, SignalFact, Unpaired, Wait, WaitFact,
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
    /// Longest time a row waits in the writer before its transaction
    /// starts: with `correlate_every`, what a crash can lose.
    pub flush_interval: Duration,
    /// How often the correlation stage correlates what has come and hands
    /// it on: with the 10 ms reorder hold-back, how fresh the analysis is.
    pub correlate_every: Duration,
    /// Events correlated but not yet committed beyond which a batch's rows
    /// are counted as dropped (`ingest`) instead of queued: the bound on
    /// the writer's memory when the disk cannot keep up.
    pub max_unstored: u64,
    /// Waits this long before each commit: a slow disk, simulated for the
    /// benchmarks that show the analysis does not wait for one.
    pub commit_delay: Duration,
    /// Where each correlated batch goes (the analysis), if anywhere, ahead
    /// of the writer. Bounded: analysis that falls behind holds the
    /// correlation stage back rather than see a partial stream.
    pub observer: Option<mpsc::Sender<Correlated>>,
    /// The recorder's own process, whose activity is not the user's.
    pub recorder_pid: Option<u32>,
    /// Keep the database under this many bytes by removing the session's
    /// oldest raw rows (`record --max-db-size`; see `retention`).
    pub max_db_bytes: Option<u64>,
}

/// One batch of the correlation stage's facts, for the analysis, with
/// channels named by their `channels.id`. Handed over as the writer is
/// given the same batch: the analysis does not wait for the disk.
#[derive(Debug, Default)]
pub struct Correlated {
    /// Shared with the writer, which stores them meanwhile.
    pub events: Arc<Vec<Event>>,
    /// `channels.id` of each event's object, index for index.
    pub channel_ids: Vec<Option<i64>>,
    /// Sends paired with receives, keyed by `channels.id`.
    pub messages: Vec<Paired<i64>>,
    pub signals: Vec<SignalFact>,
    /// Events the ingest queue refused since the previous batch, and this
    /// batch's own if the writer's queue had no room for them.
    pub ingest_dropped: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_batches: 256,
            rows_per_statement: 500,
            rows_per_tx: 50_000,
            flush_interval: Duration::from_millis(20),
            correlate_every: super::stage::CORRELATE_EVERY,
            // About 2 s at 500,000 events/s; some 300 bytes each held.
            max_unstored: 1_000_000,
            commit_delay: Duration::ZERO,
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
    /// Events refused by [`Ingest::try_send`] because the queue was full,
    /// or correlated while the writer's queue was full; stored in `drops`
    /// with source `ingest`.
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
    tx: mpsc::Sender<Batch>,
    dropped: Arc<AtomicU64>,
    /// Inodes of the recorder's own sockets and rings, for the writer to hand the
    /// correlation stage before it correlates what it holds.
    own_sockets: Arc<Mutex<Vec<u64>>>,
    /// How far each source has read, for the stage to wait for the
    /// slowest.
    watermarks: Arc<Watermarks>,
}

impl Ingest {
    /// An `Ingest` whose batches go to the returned receiver instead of a
    /// writer, bounded at `queue_batches` as [`WriterConfig::queue_batches`]
    /// bounds the writer's queue. For running a source with nothing stored
    /// behind it: the channel benchmark drains ipc-lib rings through the
    /// real [`RingListener`](crate::lib_ring::RingListener) this way, so
    /// that what it measures is tracing, not SQLite.
    pub fn detached(queue_batches: usize) -> (Ingest, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(queue_batches.max(1));
        (Ingest::new(tx), rx)
    }

    fn new(tx: mpsc::Sender<Batch>) -> Ingest {
        Ingest {
            tx,
            dropped: Arc::default(),
            own_sockets: Arc::default(),
            watermarks: Arc::default(),
        }
    }

    /// Registers a source that drains a ring of its own and has nothing
    /// stamped before `read_through` (0: it may have anything): until it is
    /// dropped, events are correlated only up to the time it has read
    /// through (at most [`MAX_WAIT_NS`](super::watermark::MAX_WAIT_NS)
    /// behind), so that its events are paired with other sources' in time
    /// order even when its task runs late.
    pub fn source(&self, read_through: u64) -> ReadThrough {
        self.watermarks.source(read_through)
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
    pub async fn send(&self, events: Vec<Event>) -> Result<(), IngestError> {
        self.send_batch(Batch::from(events)).await
    }

    /// Hands over a batch (one [`ReadThrough::batch`] made, or plain
    /// events), waiting while the queue is full.
    pub async fn send_batch(&self, batch: Batch) -> Result<(), IngestError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).await.map_err(|_| IngestError::Closed)
    }

    /// Hands over a batch without waiting; when the queue is full the batch
    /// is counted as dropped (stored in `drops`), never lost silently.
    pub fn try_send(&self, events: Vec<Event>) -> Result<(), IngestError> {
        self.try_send_batch(Batch::from(events))
    }

    /// [`Ingest::send_batch`] without waiting, as [`Ingest::try_send`].
    pub fn try_send_batch(&self, batch: Batch) -> Result<(), IngestError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => {
                // Counted instead of stored: its source's mark moves past
                // it as if the stage had it.
                let events = batch.taken_in();
                self.dropped
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(IngestError::Closed),
        }
    }
}

/// The correlation stage and the writer; [`WriterHandle::finish`] waits
/// for both once every [`Ingest`] clone has been dropped.
#[derive(Debug)]
pub struct WriterHandle {
    stage: JoinHandle<Result<(), StoreError>>,
    writer: JoinHandle<Result<WriterStats, StoreError>>,
    unstored: Arc<AtomicU64>,
}

impl WriterHandle {
    /// Events correlated (and shown to the analysis) but not yet
    /// committed: how far the disk is behind.
    pub fn unstored(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.unstored)
    }

    /// Waits for the stage and the writer to drain their queues and
    /// commit. Drop every [`Ingest`] first, or this waits for them.
    pub async fn finish(self) -> Result<WriterStats, StoreError> {
        let stage = self.stage.await;
        let writer = match self.writer.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match stage {
            Ok(Ok(())) => writer,
            // The stage's failure comes first: the writer only saw its
            // queue end.
            Ok(Err(e)) => Err(e),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Starts the correlation stage and the writer for one session.
pub async fn spawn_writer(
    store: &Store,
    session: SessionId,
    config: WriterConfig,
) -> Result<(Ingest, WriterHandle), StoreError> {
    let acquire = || async {
        store
            .pool()
            .acquire()
            .await
            .map_err(StoreError::sql("acquiring the writer's connection"))
    };
    let (mut conn, stage_conn) = (acquire().await?, acquire().await?);
    let retention = match config.max_db_bytes {
        Some(limit) => Some(Retention::start(&mut conn, limit).await?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
    let ingest = Ingest::new(tx);
    let (to_writer, from_stage) = mpsc::unbounded_channel();
    let unstored = Arc::new(AtomicU64::new(0));
    let stage = Stage {
        session,
        conn: stage_conn,
        correlator: Correlator::new(config.recorder_pid),
        channels: Vec::new(),
        dropped: Arc::clone(&ingest.dropped),
        dropped_told: 0,
        own_sockets: Arc::clone(&ingest.own_sockets),
        watermarks: Arc::clone(&ingest.watermarks),
        observer: config.observer.clone(),
        writer: to_writer,
        unstored: Arc::clone(&unstored),
        max_unstored: config.max_unstored,
    };
    let writer = Writer {
        conn,
        session,
        rows_per_statement: config
            .rows_per_statement
            .clamp(1, MAX_PARAMS / EVENT_COLUMNS),
        channels: Vec::new(),
        processes: HashMap::new(),
        wait_rows: HashMap::new(),
        signal_rows: HashMap::new(),
        unstored: Arc::clone(&unstored),
        commit_delay: config.commit_delay,
        stats: WriterStats::default(),
        retention,
        reserve: store.reserve(),
    };
    let stage = tokio::spawn(stage.run(rx, config.clone()));
    // A thread of its own: SQLite runs on it (bound in place, not handed
    // to sqlx's worker), tens of milliseconds per transaction that must not
    // hold up the runtime's workers, which drain the sources.
    let runtime = tokio::runtime::Handle::current();
    let writer =
        tokio::task::spawn_blocking(move || runtime.block_on(writer.run(from_stage, config)));
    Ok((
        ingest,
        WriterHandle {
            stage,
            writer,
            unstored,
        },
    ))
}

struct Writer {
    conn: PoolConnection<Sqlite>,
    session: SessionId,
    rows_per_statement: usize,
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
    unstored: Arc<AtomicU64>,
    commit_delay: Duration,
    stats: WriterStats,
    retention: Option<Retention>,
    reserve: Reserve,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Stored>,
        config: WriterConfig,
    ) -> Result<WriterStats, StoreError> {
        while let Some(first) = rx.recv().await {
            // What else comes within the flush interval, or is queued
            // already, shares the transaction.
            let deadline = Instant::now() + config.flush_interval;
            let mut rows = first.events.len();
            let mut batches = vec![first];
            while rows < config.rows_per_tx {
                match timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => {
                        rows += next.events.len();
                        batches.push(next);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            self.make_room(rows).await;
            if let Err(e) = self.write(&batches).await {
                return self.count_the_rest(e, &batches, rx).await;
            }
        }
        self.make_room(0).await;
        Ok(self.stats)
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

    /// After a failed commit (a full disk, a lock held past the busy
    /// timeout) nothing more can be stored consistently: later facts would
    /// refer to rows the failed transaction never wrote. So the rest is
    /// counted: the events of the `failed` batches and all that still
    /// comes, stored (if the database takes that much) as one `drops` row
    /// of source `storage`, so the session says how much it lacks.
    async fn count_the_rest(
        mut self,
        error: StoreError,
        failed: &[Stored],
        mut rx: mpsc::UnboundedReceiver<Stored>,
    ) -> Result<WriterStats, StoreError> {
        let lost_in = |b: &Stored| {
            // Rows the stage already counted as dropped are not counted
            // twice; its count of them is lost with this row, though.
            let ingest: u64 = b
                .facts
                .drops
                .iter()
                .filter(|d| d.source == "ingest")
                .map(|d| d.count)
                .sum();
            b.events.len() as u64 + ingest
        };
        let mut lost: u64 = failed.iter().map(lost_in).sum();
        while let Some(batch) = rx.recv().await {
            lost += lost_in(&batch);
            self.unstored
                .fetch_sub(batch.events.len() as u64, Ordering::Relaxed);
        }
        // A full disk, most likely: the count needs the room kept for it.
        self.reserve.release();
        let now = crate::clock::monotonic_ns();
        if let Err(e) = insert_drop(&mut self.conn, self.session.0, "storage", lost, now).await {
            tracing::warn!("recording the {lost} events not stored: {e}");
        }
        Err(error)
    }

    /// Stores `batches`, in order, in one transaction.
    async fn write(&mut self, batches: &[Stored]) -> Result<(), StoreError> {
        let session = self.session.0;
        let mut tx = sqlx::Connection::begin(&mut *self.conn)
            .await
            .map_err(StoreError::sql("starting a transaction"))?;
        // Channels and processes first: events refer to them.
        for batch in batches {
            let facts = &batch.facts;
            self.channels.extend(&batch.new_channels);
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
        }
        // The rows of every batch together: each statement is prepared
        // once per transaction, not once per batch.
        // Events a message row holds are stored in it, not as rows.
        let rows: Vec<(&Event, Option<i64>)> = batches
            .iter()
            .flat_map(|b| {
                b.events
                    .iter()
                    .zip(b.channel_ids.iter().copied())
                    .zip(&b.folded)
                    .filter(|(_, &folded)| !folded)
                    .map(|(row, _)| row)
            })
            .collect();
        let messages: Vec<MessageRow> = batches
            .iter()
            .flat_map(|b| {
                b.messages
                    .iter()
                    .zip(&b.ends)
                    .map(|(paired, ends)| MessageRow {
                        paired,
                        send: ends[0].map(|i| &b.events[i as usize]),
                        recv: ends[1].map(|i| &b.events[i as usize]),
                    })
            })
            .collect();
        let one_ended: Vec<&Unpaired<ChannelRef>> =
            batches.iter().flat_map(|b| &b.facts.one_ended).collect();
        let whole_waits: Vec<&Wait> = batches
            .iter()
            .flat_map(|b| &b.facts.waits)
            .filter_map(|f| match f {
                WaitFact::Whole(w) => Some(w),
                _ => None,
            })
            .collect();
        // Bound in place through SQLite's C API, on the writer's own
        // thread (see `spawn_writer`); scoped, for the locked handle (not
        // Send) must be gone before the next await.
        {
            let mut handle = tx
                .lock_handle()
                .await
                .map_err(StoreError::sql("inserting events"))?;
            let per = self.rows_per_statement;
            insert_events(&mut handle, session, per, &rows)?;
            insert_messages(&mut handle, session, &messages)?;
            insert_one_ended(&mut handle, session, &one_ended, &self.channels)?;
            insert_spans(&mut handle, session, &messages, &one_ended)?;
            insert_whole_waits(&mut handle, session, &whole_waits, &self.channels)?;
        }
        let mut ingest_dropped = 0;
        for batch in batches {
            let facts = &batch.facts;
            write_open_waits(
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
                if d.source == "ingest" {
                    ingest_dropped += d.count;
                }
            }
        }
        let mut traffic = traffic::Tally::default();
        for batch in batches {
            traffic.events(&batch.events, &batch.channel_ids);
            traffic.messages(&batch.messages, &batch.facts.one_ended, &self.channels);
        }
        traffic.store(&mut tx, session).await?;
        let events: u64 = batches.iter().map(|b| b.events.len() as u64).sum();
        sqlx::query("UPDATE sessions SET event_count = event_count + ? WHERE id = ?")
            .bind(events as i64)
            .bind(session)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql("counting events"))?;
        if !self.commit_delay.is_zero() {
            tokio::time::sleep(self.commit_delay).await;
        }
        tx.commit()
            .await
            .map_err(StoreError::sql("committing events"))?;

        self.unstored.fetch_sub(events, Ordering::Relaxed);
        self.stats.events += events;
        self.stats.transactions += 1;
        self.stats.ingest_dropped += ingest_dropped;
        Ok(())
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A list of numbers cannot be left half-changed by a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) async fn channel_id(
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

/// Rows per multi-row INSERT of messages and waits.
const ROWS_PER_STATEMENT: usize = 500;

const EVENTS_HEAD: &str = "INSERT INTO event_rows (session_id, ts_ns, pid, tid, source_code, \
                           kind_code, channel_id, size, msg_id, result, duration_ns, aux, \
                           payload) VALUES ";

/// Events, each with its object's `channels.id`.
fn insert_events(
    handle: &mut LockedSqliteHandle<'_>,
    session: i64,
    per: usize,
    events: &[(&Event, Option<i64>)],
) -> Result<(), StoreError> {
    let what = "inserting events";
    insert_rows(
        handle,
        what,
        EVENTS_HEAD,
        EVENT_COLUMNS,
        per,
        events.len(),
        |stmt, p, i| {
            let (e, channel) = events[i];
            stmt.int_at(p, Some(session))?;
            stmt.int_at(p + 1, Some(e.ts_ns as i64))?;
            stmt.int_at(p + 2, Some(i64::from(e.pid)))?;
            stmt.int_at(p + 3, Some(i64::from(e.tid)))?;
            stmt.int_at(p + 4, Some(i64::from(e.source.code())))?;
            stmt.int_at(p + 5, Some(i64::from(e.kind.code())))?;
            stmt.int_at(p + 6, channel)?;
            stmt.int_at(p + 7, Some(e.size as i64))?;
            stmt.int_at(p + 8, e.msg_id.map(|m| m as i64))?;
            stmt.int_at(p + 9, Some(e.result))?;
            stmt.int_at(p + 10, e.duration_ns.map(|d| d as i64))?;
            stmt.int_at(p + 11, Some(e.aux as i64))?;
            stmt.blob_at(p + 12, e.payload.as_deref())
        },
    )
}

fn insert_messages(
    handle: &mut LockedSqliteHandle<'_>,
    session: i64,
    rows: &[MessageRow<'_>],
) -> Result<(), StoreError> {
    const HEAD: &str = "INSERT INTO messages (session_id, channel_id, msg_id, sender_pid, \
                        sender_tid, receiver_pid, receiver_tid, sent_ns, received_ns, \
                        latency_ns, size, ends, send_source_code, send_duration_ns, \
                        send_result, send_aux, send_payload, recv_source_code, \
                        recv_duration_ns, recv_result, recv_aux, recv_payload) VALUES ";
    let what = "inserting messages";
    insert_rows(
        handle,
        what,
        HEAD,
        22,
        ROWS_PER_STATEMENT,
        rows.len(),
        |stmt, p, i| {
            let MessageRow { paired, send, recv } = rows[i];
            let size = paired.send.size as i64;
            stmt.int_at(p, Some(session))?;
            stmt.int_at(p + 1, Some(paired.channel))?;
            stmt.int_at(p + 2, paired.msg_id.map(|m| m as i64))?;
            stmt.int_at(p + 3, Some(i64::from(paired.send.pid)))?;
            stmt.int_at(p + 4, Some(i64::from(paired.send.tid)))?;
            stmt.int_at(p + 5, Some(i64::from(paired.recv.pid)))?;
            stmt.int_at(p + 6, Some(i64::from(paired.recv.tid)))?;
            stmt.int_at(p + 7, Some(paired.send.ts_ns as i64))?;
            stmt.int_at(p + 8, Some(paired.recv.ts_ns as i64))?;
            // Signed: a negative latency would show a mis-pairing, not hide it.
            stmt.int_at(
                p + 9,
                Some(paired.recv.ts_ns as i64 - paired.send.ts_ns as i64),
            )?;
            stmt.int_at(p + 10, Some(size))?;
            let ends = i64::from(send.is_some()) | i64::from(recv.is_some()) << 1;
            stmt.int_at(p + 11, (ends != 0).then_some(ends))?;
            bind_end(stmt, p + 12, send, size)?;
            bind_end(stmt, p + 17, recv, size)
        },
    )
}

/// A `messages` row: the paired message, and the events of its ends that
/// the row holds ([`super::fold`]).
#[derive(Clone, Copy)]
struct MessageRow<'a> {
    paired: &'a Paired<i64>,
    send: Option<&'a Event>,
    recv: Option<&'a Event>,
}

/// The five columns of a message end's event from `first` on: its source,
/// duration, and its result, aux and payload where they are not the usual
/// (the message's size, 0, none), which are NULL.
fn bind_end(
    stmt: &Rows<'_>,
    first: c_int,
    end: Option<&Event>,
    size: i64,
) -> Result<(), StoreError> {
    let Some(e) = end else {
        for p in first..first + 4 {
            stmt.int_at(p, None)?;
        }
        return stmt.blob_at(first + 4, None);
    };
    stmt.int_at(first, Some(i64::from(e.source.code())))?;
    stmt.int_at(first + 1, e.duration_ns.map(|d| d as i64))?;
    stmt.int_at(first + 2, (e.result != size).then_some(e.result))?;
    stmt.int_at(first + 3, (e.aux != 0).then_some(e.aux as i64))?;
    stmt.blob_at(first + 4, e.payload.as_deref())
}

/// Messages with one end known: the other end's columns and the latency
/// are NULL (unknown, not 0).
fn insert_one_ended(
    handle: &mut LockedSqliteHandle<'_>,
    session: i64,
    rows: &[&Unpaired<ChannelRef>],
    channels: &[i64],
) -> Result<(), StoreError> {
    const HEAD: &str = "INSERT INTO messages (session_id, channel_id, msg_id, sender_pid, \
                        sender_tid, receiver_pid, receiver_tid, sent_ns, received_ns, size) \
                        VALUES ";
    let what = "inserting messages";
    insert_rows(
        handle,
        what,
        HEAD,
        10,
        ROWS_PER_STATEMENT,
        rows.len(),
        |stmt, p, i| {
            let row = &rows[i];
            let known = [
                Some(i64::from(row.side.pid)),
                Some(i64::from(row.side.tid)),
                Some(row.side.ts_ns as i64),
            ];
            let (sender, receiver) = match row.sent {
                true => (known, [None; 3]),
                false => ([None; 3], known),
            };
            stmt.int_at(p, Some(session))?;
            stmt.int_at(p + 1, Some(channels[row.channel.0 as usize]))?;
            stmt.int_at(p + 2, row.msg_id.map(|m| m as i64))?;
            stmt.int_at(p + 3, sender[0])?;
            stmt.int_at(p + 4, sender[1])?;
            stmt.int_at(p + 5, receiver[0])?;
            stmt.int_at(p + 6, receiver[1])?;
            stmt.int_at(p + 7, sender[2])?;
            stmt.int_at(p + 8, receiver[2])?;
            stmt.int_at(p + 9, Some(row.side.size as i64))
        },
    )
}

/// The spans of the message rows just inserted (`messages`, then
/// `one_ended`, with consecutive ids up to the last one inserted), by
/// which readers find them by time ([`super::spans`]).
fn insert_spans(
    handle: &mut LockedSqliteHandle<'_>,
    session: i64,
    messages: &[MessageRow<'_>],
    one_ended: &[&Unpaired<ChannelRef>],
) -> Result<(), StoreError> {
    let count = messages.len() + one_ended.len();
    if count == 0 {
        return Ok(());
    }
    let first_id = super::rows::last_insert_rowid(handle) - count as i64 + 1;
    let paired = messages
        .iter()
        .map(|m| [Some(m.paired.send.ts_ns), Some(m.paired.recv.ts_ns)]);
    let one_ended = one_ended.iter().map(|row| {
        let t = Some(row.side.ts_ns);
        if row.sent {
            [t, None]
        } else {
            [None, t]
        }
    });
    let times = paired
        .chain(one_ended)
        .map(|ends| ends.map(|t| t.map(|t| t as i64)));
    let spans = super::spans::spans(first_id, times);
    const HEAD: &str = "INSERT INTO message_spans (session_id, by_received, from_ns, to_ns, \
                        first_id, last_id) VALUES ";
    insert_rows(
        handle,
        "recording the spans of messages",
        HEAD,
        6,
        ROWS_PER_STATEMENT,
        spans.len(),
        |stmt, p, i| {
            let s = &spans[i];
            stmt.int_at(p, Some(session))?;
            stmt.int_at(p + 1, Some(i64::from(s.by_received)))?;
            stmt.int_at(p + 2, Some(s.from_ns))?;
            stmt.int_at(p + 3, Some(s.to_ns))?;
            stmt.int_at(p + 4, Some(s.first_id))?;
            stmt.int_at(p + 5, Some(s.last_id))
        },
    )
}

/// Whole waits (begun and ended within the batch) in multi-row INSERTs: a
/// semaphore or futex flood is otherwise a statement per wait, ten times
/// slower than the events themselves.
fn insert_whole_waits(
    handle: &mut LockedSqliteHandle<'_>,
    session: i64,
    whole: &[&Wait],
    channels: &[i64],
) -> Result<(), StoreError> {
    const HEAD: &str =
        "INSERT INTO waits (session_id, pid, tid, channel_id, start_ns, end_ns, waker_pid) VALUES ";
    let what = "recording waits";
    insert_rows(
        handle,
        what,
        HEAD,
        7,
        ROWS_PER_STATEMENT,
        whole.len(),
        |stmt, p, i| {
            let w = whole[i];
            stmt.int_at(p, Some(session))?;
            stmt.int_at(p + 1, Some(i64::from(w.pid)))?;
            stmt.int_at(p + 2, Some(i64::from(w.tid)))?;
            stmt.int_at(p + 3, w.channel.map(|r| channels[r.0 as usize]))?;
            stmt.int_at(p + 4, Some(w.start_ns as i64))?;
            stmt.int_at(p + 5, w.end_ns.map(|e| e as i64))?;
            stmt.int_at(p + 6, w.waker.map(i64::from))
        },
    )
}

/// Inserts `count` rows through multi-row INSERTs of `per` rows each:
/// `head` (`INSERT INTO t (a, b) VALUES `), then a group of `columns`
/// placeholders per row. `bind(statement, first, i)` binds row `i`'s
/// values from parameter `first` on. The full statement is prepared once
/// per call and bound and run again for each group of rows.
fn insert_rows(
    handle: &mut LockedSqliteHandle<'_>,
    what: &'static str,
    head: &str,
    columns: usize,
    per: usize,
    count: usize,
    bind: impl Fn(&Rows<'_>, c_int, usize) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    let per = per.clamp(1, MAX_PARAMS / columns);
    let sql = |rows: usize| {
        let group = format!("({})", vec!["?"; columns].join(","));
        let mut sql = String::with_capacity(head.len() + rows * (group.len() + 1));
        sql.push_str(head);
        sql.push_str(&vec![group; rows].join(","));
        sql
    };
    // Whole statements of `per` rows, then one of the rest.
    let whole = count / per * per;
    for (rows, from, to) in [(per, 0, whole), (count - whole, whole, count)] {
        if from == to {
            continue;
        }
        let mut stmt = Rows::prepare(handle, what, &sql(rows))?;
        for first in (from..to).step_by(rows) {
            for i in 0..rows {
                bind(&stmt, (i * columns) as c_int + 1, first + i)?;
            }
            stmt.execute()?;
        }
    }
    Ok(())
}

/// Stores a batch's waits still open (each with a statement of its own:
/// its row is completed when it ends), and the ends of those.
async fn write_open_waits(
    conn: &mut SqliteConnection,
    session: i64,
    facts: &[WaitFact],
    channels: &[i64],
    open_rows: &mut HashMap<u64, i64>,
) -> Result<(), StoreError> {
    let channel = |w: &Wait| w.channel.map(|r| channels[r.0 as usize]);
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

    /// A disk that cannot keep up: the analysis still sees every event at
    /// once, the writer's queue stays within its budget, and what did not
    /// fit is counted (`ingest`), so stored plus dropped is what came.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_disk_never_holds_back_the_analysis_and_what_it_cannot_take_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db"), OpenMode::Create)
            .await
            .unwrap();
        let session = store.begin_session(&session()).await.unwrap();
        let (observer, mut analysed) = mpsc::channel::<Correlated>(64);
        let config = WriterConfig {
            max_unstored: 2_000,
            commit_delay: Duration::from_secs(2),
            observer: Some(observer),
            ..WriterConfig::default()
        };
        let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
        let unstored = writer.unstored();
        let (send, recv) = (EventKind::MsgSend, EventKind::MsgRecv);
        const BATCHES: u64 = 20;
        let started = std::time::Instant::now();
        for b in 0..BATCHES {
            let batch = (0..500)
                .flat_map(|i| {
                    let ts = 1 + b * 1_000 + 2 * i;
                    [message(ts, send, 7, 10, 8), message(ts + 1, recv, 8, 20, 8)]
                })
                .collect();
            ingest.send(batch).await.unwrap();
        }
        drop(ingest);
        let mut seen = 0;
        let mut dropped_seen = 0;
        while seen < BATCHES * 1_000 {
            let c = tokio::time::timeout(Duration::from_secs(1), analysed.recv())
                .await
                .expect("the analysis is not held back by the 2 s commits")
                .unwrap();
            seen += c.events.len() as u64;
            dropped_seen += c.ingest_dropped;
        }
        let analysed_in = started.elapsed();
        assert!(
            unstored.load(Ordering::Relaxed) <= 2_000,
            "the writer's queue stays within its budget"
        );
        let stats = writer.finish().await.unwrap();
        assert!(
            analysed_in < Duration::from_secs(2),
            "everything analysed before the first commit ({analysed_in:?})"
        );
        assert!(stats.ingest_dropped > 0, "the budget was exceeded");
        assert_eq!(
            stats.ingest_dropped, dropped_seen,
            "the analysis counts the same drops"
        );
        assert_eq!(stats.events + stats.ingest_dropped, BATCHES * 1_000);
        let (rows, counted, dropped): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT event_count FROM sessions),
                    (SELECT sum(count) FROM drops WHERE source = 'ingest')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!((rows as u64, counted as u64), (stats.events, stats.events));
        assert_eq!(dropped as u64, stats.ingest_dropped);
        assert_eq!(unstored.load(Ordering::Relaxed), 0);
    }

    /// A channel row the stage cannot store: the sources still hand over
    /// everything, and all of it is counted as `storage` drops.
    #[tokio::test]
    async fn a_channel_the_stage_cannot_store_counts_the_rest_and_never_stops_the_sources() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db"), OpenMode::Create)
            .await
            .unwrap();
        let session = store.begin_session(&session()).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER no_channels BEFORE INSERT ON channels
             BEGIN SELECT RAISE(FAIL, 'disk full, say'); END",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let (ingest, writer) = spawn_writer(&store, session, WriterConfig::default())
            .await
            .unwrap();
        let (send, recv) = (EventKind::MsgSend, EventKind::MsgRecv);
        for b in 0..10 {
            let batch = vec![
                message(1 + 2 * b, send, 7, 10, 8),
                message(2 + 2 * b, recv, 8, 20, 8),
            ];
            ingest
                .send(batch)
                .await
                .expect("the sources are never refused");
        }
        drop(ingest);
        let error = writer.finish().await.unwrap_err();
        assert!(error.to_string().contains("disk full, say"), "{error}");
        let (stored, lost): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events),
                    (SELECT sum(count) FROM drops WHERE source = 'storage')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!((stored, lost), (0, 20));
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
