//! The session store: one SQLite file (WAL, sqlx), any number of sessions.
//!
//! Opening is careful because the file may not be ours: before anything
//! opens it for writing, [`inspect`] reads its header bytes and, through a
//! read-only connection, its schema version. Only a file that is ours and
//! older than this build is migrated; anything else is refused with an error
//! that leaves it byte-for-byte untouched.

mod fold;
mod header;
mod retention;
pub(crate) mod rows;
mod spans;
mod stage;
mod traffic;
mod watermark;
mod writer;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;

use crate::analysis::{LatencyOf, SessionLatency};
use ipc_events::live::LockOrderInversion;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};

pub use header::{Header, APPLICATION_ID};
pub use retention::{parse_size, SizeError, DROP_SOURCE as RETENTION_DROP_SOURCE, MIN_DB_BYTES};
pub use watermark::{Batch, ReadThrough};
pub use writer::{
    spawn_writer, Correlated, Ingest, IngestError, WriterConfig, WriterHandle, WriterStats,
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a span of message ids lasts at most, exclusive (migration 11):
/// a span's `to_ns - from_ns` is always less. The writer cuts its spans
/// to it, and the readers rely on it to find a time slice's spans through
/// their index by start.
pub(crate) const SPAN_NS: i64 = 1_000_000_000;

/// The FROM and WHERE of a read of the messages whose time (`received_ns`
/// when `by_received`, else `sent_ns`) may lie in `[?2, ?3)` in session
/// `?1`: `table` (`messages` or a view of the events its rows hold) as
/// `alias`, joined with the spans that overlap the slice on `id` (its
/// column of the message's id). Each message once: a session's spans of
/// one kind cover disjoint ids. The caller still filters by time: a span
/// holds other times too.
pub(crate) fn spanned(table: &str, alias: &str, id: &str, by_received: bool) -> (String, String) {
    (
        format!(
            "message_spans s JOIN {table} {alias} ON {alias}.{id} BETWEEN s.first_id AND s.last_id"
        ),
        // `+`: the session is not what to look rows up by (SQLite would
        // take the index by channel, which starts with it, over the ids).
        format!(
            "s.session_id = ?1 AND s.by_received = {} AND s.from_ns > ?2 - {SPAN_NS} \
             AND s.from_ns < ?3 AND s.to_ns >= ?2 AND +{alias}.session_id = ?1",
            u8::from(by_received)
        ),
    )
}

/// A SELECT of `columns` (over `e`, an event, and what `join` adds) of
/// the events of session `?1` stamped in `[?2, ?3)`, then `order`
/// (ORDER BY and LIMIT over the output columns' names): the rows of
/// `event_rows` through their index by time, and the sends and receives
/// that `messages` rows hold (migration 10) through the spans of their
/// ids (migration 11). Ordered by `ts_ns`, SQLite sorts the slice's rows.
pub(crate) fn events_between(columns: &str, join: &str, order: &str) -> String {
    const IN_SLICE: &str = "e.ts_ns >= ?2 AND e.ts_ns < ?3";
    let rows =
        format!("SELECT {columns} FROM event_rows e {join} WHERE e.session_id = ?1 AND {IN_SLICE}");
    let held = [("message_sends", false), ("message_receives", true)].map(|(view, by)| {
        let (from, spans) = spanned(view, "e", "message_id", by);
        format!("SELECT {columns} FROM {from} {join} WHERE {spans} AND {IN_SLICE}")
    });
    format!("{rows} UNION ALL {} {order}", held.join(" UNION ALL "))
}

/// The stamps of the session's oldest and newest events: the ends of
/// `event_rows`' index by time, and of the spans of `messages` (every
/// stamp a message row holds is in one of its spans, or is an event's in
/// `event_rows`). `None` for a session without events.
pub(crate) async fn event_span_ns(
    conn: &mut SqliteConnection,
    session: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    // The newest span of a kind starts at most a span's length before
    // the one that ends last.
    let (oldest, newest): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
        "SELECT min(lo), max(hi) FROM (
             SELECT min(ts_ns) AS lo, max(ts_ns) AS hi FROM event_rows WHERE session_id = ?1
             UNION ALL
             SELECT (SELECT min(from_ns) FROM message_spans
                     WHERE session_id = ?1 AND by_received = k),
                    (SELECT max(to_ns) FROM message_spans
                     WHERE session_id = ?1 AND by_received = k
                       AND from_ns > (SELECT max(from_ns) FROM message_spans
                                      WHERE session_id = ?1 AND by_received = k) - {SPAN_NS})
             FROM (SELECT 0 AS k UNION ALL SELECT 1))"
    ))
    .bind(session)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::sql(
        "finding the session's oldest and newest events",
    ))?;
    Ok(oldest.zip(newest))
}

/// The analysis names drops as the `drops` table does.
pub(crate) use crate::correlate::drop_source_name;

/// The schema version this build writes: the newest migration's number
/// (each migration sets `user_version` to its own number).
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Why a database could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: no such database (record a session first, or pass --db)")]
    Missing { path: PathBuf },
    /// The file exists but holds no ipcscope data yet: a recording may be
    /// creating it right now, so a command that reads must not.
    #[error("{path}: no ipcscope data in it yet (a recording may be starting); left untouched")]
    Empty { path: PathBuf },
    #[error("{path}: not a regular file but {kind}; left untouched")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: not an SQLite database (the file does not start with the SQLite header); left untouched")]
    NotSqlite { path: PathBuf },
    #[error("{path}: truncated SQLite database: its header describes {expected} bytes but the file has {actual}; left untouched")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: an SQLite database, but not an ipcscope one (application_id {application_id:#x}); left untouched")]
    NotOurs { path: PathBuf, application_id: u32 },
    #[error("{path}: schema version {found} is newer than this ipcscope supports ({supported}); use a newer ipcscope. The file was left untouched")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read the database: {}", describe_sql(error))]
    Unreadable { path: PathBuf, error: sqlx::Error },
    #[error("{path}: migrating the schema failed: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {action}: {}", describe_sql(error))]
    Sql {
        action: &'static str,
        error: sqlx::Error,
    },
}

/// An sqlx error in one line. Its own Display repeats the database's
/// message (once in its text, once as its source), and these errors are
/// printed with their whole chain; so the chain ends here instead.
pub(crate) fn describe_sql(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLite code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

impl StoreError {
    pub(crate) fn sql(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |error| StoreError::Sql { action, error }
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspection {
    /// No file, or an empty one: ours to create.
    New,
    /// An ipcscope database at this schema version (may be older).
    Ours { version: i64 },
}

/// Decides, without writing a byte, whether `path` is ours to open.
pub async fn inspect(path: &Path) -> Result<Inspection, StoreError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inspection::New),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.into(),
                action: "cannot stat",
                source,
            })
        }
    };
    if !meta.is_file() {
        // Opening a FIFO blocks until a writer comes; a directory or a
        // device is no database either.
        return Err(StoreError::NotAFile {
            path: path.into(),
            kind: file_kind(&meta.file_type()),
        });
    }
    if meta.len() == 0 {
        return Ok(Inspection::New);
    }
    let header = Header::read(path).map_err(|source| StoreError::Io {
        path: path.into(),
        action: "cannot read",
        source,
    })?;
    let Some(header) = header else {
        return Err(StoreError::NotSqlite { path: path.into() });
    };
    // With a WAL beside it the main file may be shorter than its header
    // says: a checkpoint writes page 1 before the pages that extend the
    // file, and a recorder killed mid-checkpoint leaves it so, with every
    // page still in the WAL. SQLite recovers that; only judge the length
    // when there is no WAL to recover from.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_pending = fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if let Some(expected) = header.described_len().filter(|_| !wal_pending) {
        if expected > meta.len() {
            return Err(StoreError::Truncated {
                path: path.into(),
                expected,
                actual: meta.len(),
            });
        }
    }

    // The header can lag behind a WAL file that was never checkpointed, so
    // ask SQLite itself, read-only.
    let unreadable = |error| StoreError::Unreadable {
        path: path.into(),
        error,
    };
    let mut conn = connect_read_only(path).await?;
    let application_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut conn)
        .await
        .map_err(unreadable)?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .map_err(unreadable)?;
    // sqlx creates its bookkeeping table before the migration that sets
    // the application id: a file with only that is one being created.
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE tbl_name != '_sqlx_migrations'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(unreadable)?;
    conn.close().await.map_err(unreadable)?;

    if application_id as u32 != APPLICATION_ID {
        // An SQLite file with nothing in it (as `sqlite3 x.db ''` leaves),
        // or one another recorder is creating, is as good as new; anything
        // else belongs to someone else.
        if tables == 0 {
            return Ok(Inspection::New);
        }
        return Err(StoreError::NotOurs {
            path: path.into(),
            application_id: application_id as u32,
        });
    }
    if version > schema_version() {
        return Err(StoreError::TooNew {
            path: path.into(),
            found: version,
            supported: schema_version(),
        });
    }
    Ok(Inspection::Ours { version })
}

/// What a file that is not a regular one is, for the error that says so.
fn file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// What a store of `path` reads: the file, or its upgraded copy.
fn reads(path: &Path, upgraded: &Option<(i64, Arc<tempfile::TempDir>)>) -> PathBuf {
    match upgraded {
        Some((_, dir)) => dir.path().join(UPGRADED_COPY),
        None => path.to_owned(),
    }
}

/// The upgraded copy's name in its private directory.
const UPGRADED_COPY: &str = "upgraded.db";

/// A copy of the older database at `path`, migrated to this build's
/// schema, in a fresh owner-only temporary directory. `VACUUM INTO` on a
/// read-only connection copies one consistent snapshot (the WAL's
/// committed pages included) without writing to the original.
async fn upgraded_copy(path: &Path) -> Result<tempfile::TempDir, StoreError> {
    let dir = tempfile::Builder::new()
        .prefix("ipcscope-upgrade-")
        .tempdir()
        .map_err(|source| StoreError::Io {
            path: std::env::temp_dir(),
            action: "cannot create a directory for an upgraded copy",
            source,
        })?;
    let copy = dir.path().join(UPGRADED_COPY);
    let unreadable = |error| StoreError::Unreadable {
        path: path.into(),
        error,
    };
    let mut conn = connect_read_only(path).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(copy.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(unreadable)?;
    conn.close().await.map_err(unreadable)?;
    let pool = connect(
        SqliteConnectOptions::new()
            .filename(&copy)
            .journal_mode(SqliteJournalMode::Wal),
    )
    .await
    .map_err(unreadable)?;
    migrate(&pool, path).await?;
    pool.close().await;
    Ok(dir)
}

/// A connection that cannot write to `path`.
async fn connect_read_only(path: &Path) -> Result<SqliteConnection, StoreError> {
    SqliteConnection::connect_with(&read_only_options(path))
        .await
        .map_err(|error| StoreError::Unreadable {
            path: path.into(),
            error,
        })
}

/// Options that cannot write to `path` (nor, through ATTACH, anywhere).
///
/// A WAL database is read through its `-shm` index, which SQLite creates
/// beside the file when it is missing. Where it is missing and cannot be
/// created (a directory this user cannot write, a read-only mount), no
/// recorder is writing the file either, since a writer always has that
/// index open: then, unless a WAL holds pages the file lacks, the file is
/// read as immutable, with no index at all.
fn read_only_options(path: &Path) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .foreign_keys(false);
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let wal_empty = fs::metadata(beside("-wal")).map_or(true, |m| m.len() == 0);
    options.immutable(wal_empty && !beside("-shm").exists() && !may_write(dir))
}

/// Whether this process may create files in `dir` (by its effective ids,
/// and knowing about read-only mounts, as `open` would judge).
fn may_write(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; faccessat reads nothing else.
    unsafe { libc::faccessat(libc::AT_FDCWD, dir.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// Whether opening may create a database that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `record`: create the file (owner-only) when it is missing.
    Create,
    /// Commands that read: a missing file, or one with no ipcscope data
    /// yet, is an error: they never create a schema.
    Existing,
}

/// An open ipcscope database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The file the user named.
    path: PathBuf,
    /// Whether this is `record`'s store, the only one that writes.
    writable: bool,
    /// The schema version of `path` when it is older than this build's:
    /// then `reads` is a copy in this directory, removed with the last clone.
    upgraded: Option<(i64, Arc<tempfile::TempDir>)>,
    /// Room kept for a recording's end on a disk that fills (`record`'s
    /// store only).
    reserve: Reserve,
}

impl Store {
    /// Opens `path`. With [`OpenMode::Create`], for writing: creating it
    /// (mode 0600, in a 0700 directory when the directory is new) or
    /// migrating an older schema as needed. With [`OpenMode::Existing`],
    /// read-only: no byte of the file or of its journal changes, and an
    /// older schema is read through an upgraded private copy.
    pub async fn open(path: &Path, mode: OpenMode) -> Result<Store, StoreError> {
        let inspection = inspect(path).await?;
        match (mode, inspection) {
            (OpenMode::Create, inspection) => Store::open_for_writing(path, inspection).await,
            (OpenMode::Existing, Inspection::Ours { version }) => {
                Store::open_for_reading(path, version).await
            }
            (OpenMode::Existing, Inspection::New) if !path.exists() => {
                Err(StoreError::Missing { path: path.into() })
            }
            // A recorder that has created the file and not yet the schema
            // would find its migrations done under it (and fail); and
            // commands that read must not write.
            (OpenMode::Existing, Inspection::New) => Err(StoreError::Empty { path: path.into() }),
        }
    }

    async fn open_for_reading(path: &Path, version: i64) -> Result<Store, StoreError> {
        let upgraded = match version < schema_version() {
            true => Some((version, Arc::new(upgraded_copy(path).await?))),
            false => None,
        };
        let reads = reads(path, &upgraded);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(read_only_options(&reads))
            .await
            .map_err(|error| StoreError::Unreadable {
                path: path.into(),
                error,
            })?;
        Ok(Store {
            pool,
            path: path.into(),
            writable: false,
            upgraded,
            reserve: Reserve::default(),
        })
    }

    async fn open_for_writing(path: &Path, inspection: Inspection) -> Result<Store, StoreError> {
        let created = inspection == Inspection::New && !path.exists();
        if inspection == Inspection::New {
            create_owner_only(path)?;
        }
        let opened = Store::set_up(path, inspection).await;
        if opened.is_err() && created {
            // A full disk left it empty: no file is better than a 0-byte
            // one that every later reader calls "no data yet". Only while
            // still empty: another opener may have written it meanwhile.
            if fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = fs::remove_file(path);
            }
        }
        opened
    }

    async fn set_up(path: &Path, inspection: Inspection) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(StoreError::sql("building connection options"))?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a power loss may lose the last commits but
            // never corrupts the file, and commits skip an fsync each.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let pool = connect(options)
            .await
            .map_err(|error| StoreError::Unreadable {
                path: path.into(),
                error,
            })?;
        let current = match inspection {
            Inspection::Ours { version } => version,
            Inspection::New => 0,
        };
        if current < schema_version() {
            migrate(&pool, path).await?;
        }
        Ok(Store {
            pool,
            path: path.into(),
            writable: true,
            upgraded: None,
            reserve: Reserve::hold(path),
        })
    }

    /// Frees the room kept beside the database: storing failed (a full
    /// disk), and what is still to store (the count of what was lost, the
    /// session's end) needs it.
    pub fn release_reserve(&self) {
        self.reserve.release();
    }

    pub(crate) fn reserve(&self) -> Reserve {
        self.reserve.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of a file opened for reading that is older than
    /// this build's, read through an upgraded copy.
    pub fn upgraded_from(&self) -> Option<i64> {
        self.upgraded.as_ref().map(|(version, _)| *version)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A connection that cannot write: for user-supplied SQL, so that a
    /// `query` can never change a recording.
    pub async fn read_only(&self) -> Result<SqliteConnection, StoreError> {
        SqliteConnection::connect_with(&read_only_options(&reads(&self.path, &self.upgraded)))
            .await
            .map_err(|error| StoreError::Unreadable {
                path: self.path.clone(),
                error,
            })
    }

    /// Starts a session row; the writer and [`Store::finish_session`] fill
    /// in the rest.
    pub async fn begin_session(&self, info: &NewSession) -> Result<SessionId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sessions (name, command, host, started_at, sources, start_mono_ns, recorder_pid)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&info.name)
        .bind(&info.command)
        .bind(&info.host)
        .bind(&info.started_at)
        .bind(&info.sources)
        .bind(info.start_mono_ns as i64)
        .bind(i64::from(info.recorder_pid))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::sql("creating the session"))?;
        Ok(SessionId(id))
    }

    /// Marks a session finished.
    pub async fn finish_session(
        &self,
        session: SessionId,
        ended_at: &str,
        end_mono_ns: u64,
        exit_status: Option<i32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET ended_at = ?, end_mono_ns = ?, exit_status = ? WHERE id = ?",
        )
        .bind(ended_at)
        .bind(end_mono_ns as i64)
        .bind(exit_status)
        .bind(session.0)
        .execute(&self.pool)
        .await
        .map_err(StoreError::sql("finishing the session"))?;
        Ok(())
    }

    /// Records the exit status of a process the recorder waited for itself
    /// (the probes see exits but not statuses).
    pub async fn set_exit_status(
        &self,
        session: SessionId,
        pid: u32,
        status: i32,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE processes SET exit_status = ?
             WHERE id = (SELECT max(id) FROM processes WHERE session_id = ? AND pid = ?)",
        )
        .bind(status)
        .bind(session.0)
        .bind(i64::from(pid))
        .execute(&self.pool)
        .await
        .map_err(StoreError::sql("storing an exit status"))?;
        Ok(())
    }

    /// Records (or, with `None`, clears) where a session's live feed is
    /// served.
    pub async fn set_live_socket(
        &self,
        session: SessionId,
        path: Option<&Path>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET live_socket = ? WHERE id = ?")
            .bind(path.map(|p| p.to_string_lossy().into_owned()))
            .bind(session.0)
            .execute(&self.pool)
            .await
            .map_err(StoreError::sql("recording the live-feed socket"))?;
        Ok(())
    }

    /// The newest session still being recorded that serves a live feed (or
    /// that one session, if given), and where.
    pub async fn live_socket(
        &self,
        session: Option<SessionId>,
    ) -> Result<Option<(SessionId, PathBuf)>, StoreError> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, live_socket FROM sessions
             WHERE live_socket IS NOT NULL AND ended_at IS NULL AND (?1 IS NULL OR id = ?1)
             ORDER BY id DESC LIMIT 1",
        )
        .bind(session.map(|s| s.0))
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::sql("looking for a live recording"))?;
        Ok(row.map(|(id, path)| (SessionId(id), PathBuf::from(path))))
    }

    /// Stores a detected deadlock; returns its `deadlocks.id`. `cycle` is
    /// the JSON array the schema documents.
    pub async fn insert_deadlock(
        &self,
        session: SessionId,
        detected_ns: u64,
        cycle: &str,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO deadlocks (session_id, detected_ns, cycle) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(session.0)
        .bind(detected_ns as i64)
        .bind(cycle)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::sql("recording a deadlock"))
    }

    /// Stores a lock-order inversion the analysis found.
    pub async fn insert_inversion(
        &self,
        session: SessionId,
        inversion: &LockOrderInversion,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lock_order_inversions (session_id, first_channel_id, second_channel_id,
                 first_pid, second_pid, first_seen_ns, second_seen_ns)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(session.0)
        .bind(inversion.first.channel_id)
        .bind(inversion.second.channel_id)
        .bind(i64::from(inversion.first_pid))
        .bind(i64::from(inversion.second_pid))
        .bind(inversion.first_seen_ns as i64)
        .bind(inversion.seen_ns as i64)
        .execute(&self.pool)
        .await
        .map_err(StoreError::sql("recording a lock-order inversion"))?;
        Ok(())
    }

    /// Stores the session's latency distributions as `latency` rows, in
    /// one transaction.
    pub async fn insert_latencies(
        &self,
        session: SessionId,
        latencies: &[SessionLatency],
    ) -> Result<(), StoreError> {
        const STORING: &str = "storing the session's latency";
        let mut tx = self.pool.begin().await.map_err(StoreError::sql(STORING))?;
        for l in latencies {
            let (what, channel, sender, receiver, signo) = match l.of {
                LatencyOf::Channel { channel_id } => {
                    ("message", Some(channel_id), None, None, None)
                }
                LatencyOf::Pair {
                    channel_id,
                    sender_pid,
                    receiver_pid,
                } => (
                    "pair",
                    Some(channel_id),
                    Some(sender_pid),
                    Some(receiver_pid),
                    None,
                ),
                LatencyOf::Wait { channel_id } => ("wait", Some(channel_id), None, None, None),
                LatencyOf::Signal {
                    sender_pid,
                    target_pid,
                    signo,
                } => (
                    "signal",
                    None,
                    Some(sender_pid),
                    Some(target_pid),
                    Some(signo),
                ),
            };
            let p = &l.latency;
            sqlx::query(
                "INSERT INTO latency (session_id, what, channel_id, sender_pid, receiver_pid,
                     signo, count, min_ns, p50_ns, p90_ns, p99_ns, p999_ns, max_ns)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(session.0)
            .bind(what)
            .bind(channel)
            .bind(sender)
            .bind(receiver)
            .bind(signo)
            .bind(p.count as i64)
            .bind(p.min as i64)
            .bind(p.p50 as i64)
            .bind(p.p90 as i64)
            .bind(p.p99 as i64)
            .bind(p.p999 as i64)
            .bind(p.max as i64)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql(STORING))?;
        }
        tx.commit().await.map_err(StoreError::sql(STORING))
    }

    /// Stores a session's replay index (`replay_index` rows: position,
    /// time, whether a keyframe, JSON state) in one transaction, in place
    /// of any it had.
    pub async fn insert_replay_index(
        &self,
        session: SessionId,
        version: i64,
        positions: impl IntoIterator<Item = (u64, bool, String)>,
    ) -> Result<(), StoreError> {
        const STORING: &str = "storing the session's replay index";
        let mut tx = self.pool.begin().await.map_err(StoreError::sql(STORING))?;
        sqlx::query("DELETE FROM replay_index WHERE session_id = ?")
            .bind(session.0)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql(STORING))?;
        for (position, (at_ns, keyframe, state)) in positions.into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO replay_index (session_id, position, at_ns, keyframe, version, state)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(session.0)
            .bind(position as i64)
            .bind(at_ns as i64)
            .bind(keyframe)
            .bind(version)
            .bind(state)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql(STORING))?;
        }
        tx.commit().await.map_err(StoreError::sql(STORING))
    }

    /// Marks a stored deadlock resolved.
    pub async fn resolve_deadlock(&self, id: i64, resolved_ns: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE deadlocks SET resolved_ns = ? WHERE id = ?")
            .bind(resolved_ns as i64)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::sql("recording a deadlock's end"))?;
        Ok(())
    }

    /// The newest session's id, if any.
    pub async fn latest_session(&self) -> Result<Option<SessionId>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM sessions")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::sql("finding the latest session"))?;
        Ok(id.map(SessionId))
    }

    /// A session's lost events, summed by `drops.source`.
    pub async fn drops_by_source(
        &self,
        session: SessionId,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT source, sum(count) FROM drops WHERE session_id = ? GROUP BY source ORDER BY source",
        )
        .bind(session.0)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sql("summing dropped events"))?;
        Ok(rows
            .into_iter()
            .map(|(s, n)| (s, n.max(0) as u64))
            .collect())
    }

    /// Whether a session with this id exists.
    pub async fn has_session(&self, session: SessionId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM sessions WHERE id = ?")
            .bind(session.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::sql("looking up the session"))?;
        Ok(row.is_some_and(|r| r.len() == 1))
    }

    /// Checkpoints the WAL into the main file, then closes. The checkpoint
    /// runs on a connection taken out of the pool and closed here, awaited:
    /// a pooled connection is handed back by a spawned task, which may not
    /// have run (and closed the SQLite handle) by the time the pool's own
    /// close returns or the process exits.
    ///
    /// A reader in the middle of a long `query` keeps the WAL from being
    /// emptied; the checkpoint does not wait for it (the busy timeout would
    /// hold `record`'s exit for its whole length): it copies what it can
    /// and the rest stays in the WAL, where every reader finds it.
    pub async fn close(self) {
        if !self.writable {
            // A reader's checkpoint would write to the file.
            self.pool.close().await;
            return;
        }
        match self.pool.acquire().await {
            Ok(mut conn) => {
                if let Err(e) = checkpoint(&mut conn).await {
                    // Not fatal: the WAL keeps every committed page. (On a
                    // full disk, the failure that matters was reported.)
                    tracing::debug!("checkpointing {}: {e}", self.path.display());
                }
                if let Err(e) = conn.detach().close().await {
                    tracing::warn!("closing {}: {e}", self.path.display());
                }
            }
            Err(e) => tracing::warn!("checkpointing {}: {e}", self.path.display()),
        }
        self.pool.close().await;
    }
}

/// Brings the schema up to date. Another process may be migrating the
/// same file at the same time (two recorders starting on one new file, or
/// a reader opening an older one as a recorder upgrades it): each migration
/// is a transaction, so theirs makes ours fail with "already exists" and
/// leaves nothing half done, and running ours again finds it applied.
/// Opens the pool, retrying while another opener holds the lock.
///
/// Room kept on the database's disk for what a recording must still store
/// when the disk fills: a file of [`Reserve::BYTES`] beside the database
/// (`FILE-reserve`, `0600`), removed as soon as storing fails (so that the
/// count of what was lost, the latencies, the session's end and the
/// command's status still fit), and with the store's last clone. Without
/// it, whichever write came first took the disk's last bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reserve(Arc<ReserveFile>);

#[derive(Debug, Default)]
struct ReserveFile(std::sync::Mutex<Option<PathBuf>>);

impl Reserve {
    const BYTES: usize = 256 * 1024;

    /// Best effort: a disk without room for it has none for a recording
    /// either, and says so soon enough. One a killed recorder left behind
    /// is taken over.
    fn hold(db: &Path) -> Reserve {
        let mut path = db.as_os_str().to_owned();
        path.push("-reserve");
        let path = PathBuf::from(path);
        let made = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; Self::BYTES]));
        let kept = match made {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::debug!("no room kept at {}: {e}", path.display());
                let _ = fs::remove_file(&path);
                None
            }
        };
        Reserve(Arc::new(ReserveFile(std::sync::Mutex::new(kept))))
    }

    pub(crate) fn release(&self) {
        let taken = self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(path) = taken {
            let _ = fs::remove_file(path);
        }
    }
}

impl Drop for ReserveFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` without waiting for readers: a
/// reader in the middle of a long `query` keeps what it reads in the WAL,
/// and the checkpoint copies the rest (the busy timeout would otherwise
/// hold the caller for the reader's whole length).
async fn checkpoint(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// busy_timeout does not cover the connection setup: `journal_mode = WAL`
/// reads under a shared lock and then needs an exclusive one, and SQLite
/// answers SQLITE_BUSY at once, without the busy handler, when another
/// connection waits for the same upgrade (it would deadlock otherwise).
/// Several recorders creating one new file meet exactly that.
async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    const PATIENCE: Duration = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        match SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
        {
            Err(error) if is_busy(&error) && start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            result => return result,
        }
    }
}

/// SQLITE_BUSY or one of its extended codes (the low byte is the primary).
fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(_) if attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => {
                return Err(StoreError::Migrate {
                    path: path.into(),
                    source,
                })
            }
        }
    }
}

/// A session's id (`sessions.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub i64);

/// What is known when a recording starts.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub name: Option<String>,
    pub command: String,
    pub host: String,
    pub started_at: String,
    pub sources: String,
    pub start_mono_ns: u64,
    pub recorder_pid: u32,
}

/// Creates an empty file only its owner can read, and its directory
/// (owner-only) when missing: recordings can hold payloads and command lines.
fn create_owner_only(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                path: dir.into(),
                action: "cannot create the database directory",
                source,
            })?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            path: path.into(),
            action: "cannot create the database",
            source,
        })?;
    Ok(())
}

/// The default database: `$XDG_DATA_HOME/ipcscope/ipcscope.db`, falling back
/// to `~/.local/share/ipcscope/ipcscope.db`.
pub fn default_db_path() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("ipcscope").join("ipcscope.db"))
}
