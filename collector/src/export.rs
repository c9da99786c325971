//! `ipcscope export`: a session's events for other tools.

use std::io::Write;

use futures_util::TryStreamExt;
use serde_json::{Map, Value as Json};
use sqlx::{Row, SqliteConnection};

use crate::query::{decode_row, QueryError};
use crate::store::SessionId;

/// Writes one JSON object per event, in time order, streaming: a session of
/// any size exports in constant memory.
pub async fn jsonl(
    conn: &mut SqliteConnection,
    session: SessionId,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let mut rows = sqlx::query(
        "SELECT e.ts_ns, e.pid, e.tid, e.source, e.kind, c.kind AS channel_kind,
                c.name AS channel_name, e.size, e.msg_id, e.result, e.duration_ns, e.aux,
                e.payload
         FROM events e LEFT JOIN channels c ON c.id = e.channel_id
         WHERE e.session_id = ? ORDER BY e.ts_ns, e.id",
    )
    .bind(session.0)
    .fetch(conn);
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
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
}
