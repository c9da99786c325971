//! `ipcscope export`: a session's events for other tools.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use serde_json::{Map, Value as Json};
use sqlx::{Row, SqliteConnection};

use crate::query::{decode_row, QueryError};
use crate::store::{event_span_ns, events_between, SessionId};

/// How much of a session [`jsonl`] reads at a time at first: each slice's
/// rows are sorted by time, so a slice must stay small where events are
/// dense and may grow where they are sparse.
const FIRST_SLICE_NS: i64 = 100_000_000;
/// Rows in a slice past which the next is half as long, and below which
/// (none) it is twice as long, up to [`LONGEST_SLICE_NS`].
const SLICE_ROWS: u64 = 200_000;
const LONGEST_SLICE_NS: i64 = 60_000_000_000;

/// Writes one JSON object per event, in time order, streaming: a session of
/// any size exports in constant memory, a time slice at a time.
pub async fn jsonl(
    conn: &mut SqliteConnection,
    session: SessionId,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let sql = events_between(
        "e.ts_ns, e.pid, e.tid, e.source, e.kind, c.kind AS channel_kind,
         c.name AS channel_name, e.size, e.msg_id, e.result, e.duration_ns, e.aux, e.payload",
        "LEFT JOIN channels c ON c.id = e.channel_id",
        "ORDER BY ts_ns",
    );
    let span = event_span_ns(conn, session.0)
        .await
        .map_err(QueryError::Store)?;
    let mut n = 0;
    if let Some((oldest, newest)) = span {
        let (mut from, mut slice) = (oldest, FIRST_SLICE_NS);
        while from <= newest {
            let to = from.saturating_add(slice);
            let mut rows = sqlx::query(&sql)
                .bind(session.0)
                .bind(from)
                .bind(to)
                .fetch(&mut *conn);
            let mut in_slice = 0;
            while let Some(row) = rows.try_next().await.map_err(QueryError::Sql)? {
                write_object(&row, out)?;
                in_slice += 1;
            }
            n += in_slice;
            from = to;
            slice = match in_slice {
                0 => (slice * 2).min(LONGEST_SLICE_NS),
                r if r > SLICE_ROWS => (slice / 2).max(1),
                _ => slice,
            };
        }
    }
    out.flush()?;
    Ok(n)
}

/// One row as a JSON object on a line of its own.
fn write_object(row: &sqlx::sqlite::SqliteRow, out: &mut impl Write) -> Result<(), ExportError> {
    let values = decode_row(row).map_err(QueryError::Sql)?;
    let obj: Map<String, Json> = row
        .columns()
        .iter()
        .map(|c| sqlx::Column::name(c).to_owned())
        .zip(values.iter().map(|v| v.to_json()))
        // Absent optional fields are left out rather than written as null.
        .filter(|(_, v)| !v.is_null())
        .collect();
    serde_json::to_writer(&mut *out, &obj).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Query(#[from] QueryError),
    // The io::Error is the source: printed once, after this.
    #[error("writing the export failed")]
    Io(#[from] std::io::Error),
    #[error("{out}: that is the recording itself ({db} or its journal); choose another file. Nothing was written")]
    WouldOverwrite { out: PathBuf, db: PathBuf },
    #[error("{path}: {action}: {source}")]
    File {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An export file being written beside where it will go: created new and
/// owner-only (a recording's events, payloads included, are its owner's),
/// renamed into place only when whole, so a failed export leaves what was
/// there before.
pub struct OutputFile {
    path: PathBuf,
    partial: PathBuf,
    file: Option<File>,
}

impl OutputFile {
    /// Refuses a path that is the database `db` or one of its journal
    /// files (by name or, through links, by inode): an export must never
    /// write over what it reads.
    pub fn create(path: &Path, db: &Path) -> Result<OutputFile, ExportError> {
        if is_the_recording(path, db) {
            return Err(ExportError::WouldOverwrite {
                out: path.to_owned(),
                db: db.to_owned(),
            });
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".partial-{}", std::process::id()));
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|source| ExportError::File {
                path: partial.clone(),
                action: "cannot create the export",
                source,
            })?;
        Ok(OutputFile {
            path: path.to_owned(),
            partial,
            file: Some(file),
        })
    }

    pub fn writer(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is open until finish")
    }

    /// Puts the whole export in place.
    pub fn finish(mut self) -> Result<(), ExportError> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        std::fs::rename(&self.partial, &self.path).map_err(|source| ExportError::File {
            path: self.path.clone(),
            action: "cannot put the export in place",
            source,
        })
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not finished: a partial export is not left behind.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Whether `path` names the database `db` or its `-wal`, `-shm` or
/// `-journal` file.
fn is_the_recording(path: &Path, db: &Path) -> bool {
    let canonical = |p: &Path| -> Option<PathBuf> {
        match p.canonicalize() {
            Ok(c) => Some(c),
            // Not there yet: its directory, resolved, and its name.
            Err(_) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                let dir = dir.unwrap_or(Path::new(".")).canonicalize().ok()?;
                Some(dir.join(p.file_name()?))
            }
        }
    };
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let out = canonical(path);
    let out_id = identity(path);
    ["", "-wal", "-shm", "-journal"].iter().any(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let name = PathBuf::from(name);
        (out.is_some() && out == canonical(&name))
            || (out_id.is_some() && out_id == identity(&name))
    })
}
