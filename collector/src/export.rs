//! `ipcscope export`: a session's events for other tools.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use serde_json::{Map, Value as Json};
use sqlx::{Row, SqliteConnection};

use crate::query::{decode_row, QueryError};
use crate::store::{events_merged, SessionId};

/// Writes one JSON object per event, in time order, streaming: a session of
/// any size exports in constant memory.
pub async fn jsonl(
    conn: &mut SqliteConnection,
    session: SessionId,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let sql = events_merged(
        "e.ts_ns, e.pid, e.tid, e.source, e.kind, c.kind AS channel_kind,
         c.name AS channel_name, e.size, e.msg_id, e.result, e.duration_ns, e.aux, e.payload",
        "LEFT JOIN channels c ON c.id = e.channel_id",
        "e.session_id = ?1",
        "ORDER BY ts_ns",
    );
    let mut rows = sqlx::query(&sql).bind(session.0).fetch(conn);
    let mut n = 0;
    while let Some(row) = rows.try_next().await.map_err(QueryError::Sql)? {
        let values = decode_row(&row).map_err(QueryError::Sql)?;
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
        n += 1;
    }
    out.flush()?;
    Ok(n)
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
