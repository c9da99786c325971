//! Retention (`record --max-db-size`): a long recording keeps the
//! database under a size by removing its own oldest raw rows.
//!
//! Before each transaction, once the previous one is committed, the writer
//! asks SQLite how many bytes of the file are in use (pages less free
//! pages: header fields, no scan). When those and the room the coming
//! events need (at the session's bytes per event so far, and at least a
//! chunk, an eighth of the limit) would pass the limit, it removes the
//! session's oldest `events` a chunk at a time, with the `messages`
//! received up to the chunk's last event, and counts each chunk in
//! `drops` (source `retention`); once more after the last commit. Every
//! aggregate stays whole: `traffic`, `latency`, `waits`, `signals`,
//! `deadlocks`, `processes`, `channels`, `drops`. SQLite reuses the freed
//! pages for what comes next, so the file stops growing; a passive
//! checkpoint after each removal, and a journal size limit, keep the WAL
//! beside it from growing either.
//!
//! Events are removed by time: a chunk ends at the stamp of the session's
//! `count`-th oldest event left (in `event_rows` or held by a message row,
//! see migrations 10 and 11), and everything of the session stamped up to
//! it goes.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::SqliteConnection;

use super::writer::WriterStats;
use super::StoreError;

/// The smallest limit `record` accepts: the schema, a session's
/// aggregates and a few chunks of events need room.
pub const MIN_DB_BYTES: u64 = 1 << 20;

/// The share of the limit removed at a time: big enough that removals are
/// rare (one every few seconds at 100,000 events/s under a 20 MiB limit),
/// small enough that the file keeps most of what it may.
const CHUNK_DIVISOR: u64 = 8;

/// Removals in one check at most: a database filled by other sessions
/// (which retention never touches) must not hold the writer up for long;
/// the next commit goes on.
const CHUNKS_PER_CHECK: u32 = 16;

/// A session's retention state, owned by its writer.
#[derive(Debug)]
pub(super) struct Retention {
    limit: u64,
    chunk: u64,
    /// Every event of the session stamped up to this is removed.
    removed_to: i64,
    /// Said once, when only other sessions' rows and aggregates are left.
    said_full: bool,
}

impl Retention {
    /// Retention for a session about to be written on `conn`, under
    /// `limit` bytes.
    pub(super) async fn start(conn: &mut SqliteConnection, limit: u64) -> Result<Self, StoreError> {
        let chunk = limit / CHUNK_DIVISOR;
        // The WAL is cut back to a chunk each time it starts over.
        sqlx::query(&format!("PRAGMA journal_size_limit = {chunk}"))
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sql("limiting the journal's size"))?;
        Ok(Retention {
            limit,
            chunk,
            removed_to: i64::MIN,
            said_full: false,
        })
    }

    /// Makes room for the `coming` events of the next transaction: while
    /// the bytes in use and the room they need (at the session's bytes
    /// per event so far, or a chunk if that is more) pass the limit,
    /// removes the session's oldest events a chunk at a time, counting
    /// them in `stats`.
    pub(super) async fn make_room(
        &mut self,
        conn: &mut SqliteConnection,
        session: i64,
        coming: usize,
        stats: &mut WriterStats,
    ) -> Result<(), StoreError> {
        let mut used = used_bytes(conn).await?;
        let mut chunks = 0;
        loop {
            let stored = stats.events - stats.retention_removed;
            // The bytes in use per stored event, and half as much again: a
            // transaction's messages need not be half its events (a burst
            // of receives completes earlier sends), and its share of a
            // transaction varied from 0.85 to 1.3 times the average here.
            let needed = (u128::from(coming as u64) * u128::from(used) * 3)
                .div_ceil(u128::from(stored.max(1)) * 2) as u64;
            let needed = needed.max(self.chunk).min(self.limit / 2);
            tracing::trace!(used, coming, needed, stored, "retention check");
            if used + needed <= self.limit || chunks == CHUNKS_PER_CHECK {
                break;
            }
            // A chunk's bytes, in the session's events (at least one).
            let count = (u128::from(stored) * u128::from(self.chunk))
                .div_ceil(u128::from(used.max(1))) as u64;
            let started = Instant::now();
            let Some(removed) = self.remove_oldest(conn, session, count.max(1)).await? else {
                if !self.said_full {
                    self.said_full = true;
                    crate::note!(
                        "ipcscope: the database is over --max-db-size ({} in use) with none of this session's raw events left to remove: other sessions or the aggregates fill it",
                        ipc_events::units::bytes(used)
                    );
                }
                break;
            };
            let before = used;
            used = used_bytes(conn).await?;
            stats.retention_removed += removed;
            stats.retention_chunks += 1;
            chunks += 1;
            log_removal(removed, before.saturating_sub(used), started.elapsed());
        }
        if chunks > 0 {
            // The removals' pages into the file, so the WAL can start over.
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *conn)
                .await
                .map_err(StoreError::sql("checkpointing after removing old events"))?;
        }
        Ok(())
    }

    /// Removes the session's oldest events (about `count`, all in one
    /// chunk: those stamped up to the `count`-th oldest left), with the
    /// messages received by then, and counts them in `drops`; returns how
    /// many events, or `None` when none is left.
    async fn remove_oldest(
        &mut self,
        conn: &mut SqliteConnection,
        session: i64,
        count: u64,
    ) -> Result<Option<u64>, StoreError> {
        const REMOVING: &str = "removing the oldest events";
        let Some((oldest, newest)) = super::event_span_ns(conn, session).await? else {
            return Ok(None);
        };
        let from = oldest.max(self.removed_to.saturating_add(1));
        if from > newest {
            return Ok(None);
        }
        // The chunk ends at the `count`-th oldest event left: looked for in
        // a slice from the oldest, twice as long each time it holds fewer
        // (each try sorts its slice; the whole session would be sorted at
        // once otherwise). Fewer than a chunk left: the rest.
        let sql = super::events_between("e.ts_ns", "", "ORDER BY ts_ns LIMIT 1 OFFSET ?4");
        let mut slice = super::SPAN_NS;
        let end = loop {
            let to = from.saturating_add(slice);
            let found = sqlx::query_scalar::<_, i64>(&sql)
                .bind(session)
                .bind(from)
                .bind(to)
                .bind(count as i64 - 1)
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::sql(REMOVING))?;
            match found {
                Some(end) => break end,
                None if to > newest => break newest,
                None => slice = slice.saturating_mul(2),
            }
        };
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(StoreError::sql(REMOVING))?;
        let rows = sqlx::query("DELETE FROM event_rows WHERE session_id = ?1 AND ts_ns <= ?2")
            .bind(session)
            .bind(end)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql(REMOVING))?
            .rows_affected();
        // A message is as old as its receipt, or its send when its receiver
        // is unknown: each found through the spans of that time from the
        // last removal's end on (everything before it went then); the
        // events it holds go with it, counted as they go.
        let mut held = 0;
        for (by_received, oldest) in [
            (true, "m.received_ns < ?3"),
            (false, "m.received_ns IS NULL AND m.sent_ns < ?3"),
        ] {
            let (spans, within) = super::spanned("messages", "m", "id", by_received);
            let sql = format!(
                "DELETE FROM messages WHERE id IN (
                     SELECT m.id FROM {spans} WHERE {within} AND {oldest})
                 RETURNING (ends & 1) + (ends >> 1 & 1)"
            );
            let mut ends = sqlx::query_scalar::<_, Option<i64>>(&sql)
                .bind(session)
                .bind(from)
                .bind(end.saturating_add(1))
                .fetch(&mut *tx);
            while let Some(n) = ends
                .try_next()
                .await
                .map_err(StoreError::sql("removing the oldest messages"))?
            {
                held += n.unwrap_or(0);
            }
        }
        // Spans by receipt that ended by then hold nothing any more. A span
        // by send may still hold a message received later: it goes once
        // its ids are all gone.
        sqlx::query(&format!(
            "DELETE FROM message_spans
             WHERE session_id = ?1 AND from_ns > ?2 - {span} AND from_ns <= ?3
               AND (by_received = 1 AND to_ns <= ?3
                    OR by_received = 0 AND NOT EXISTS (
                        SELECT 1 FROM messages WHERE id BETWEEN first_id AND last_id))",
            span = super::SPAN_NS
        ))
        .bind(session)
        .bind(from)
        .bind(end)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sql("removing the oldest messages' spans"))?;
        let removed = rows + held as u64;
        sqlx::query("INSERT INTO drops (session_id, source, count, ts_ns) VALUES (?, ?, ?, ?)")
            .bind(session)
            .bind(DROP_SOURCE)
            .bind(removed as i64)
            .bind(end)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql("counting the removed events"))?;
        tx.commit().await.map_err(StoreError::sql(REMOVING))?;
        self.removed_to = end;
        Ok(Some(removed))
    }
}

/// The `drops.source` of events removed to keep the size limit; its
/// `ts_ns` is the newest removed event's.
pub const DROP_SOURCE: &str = "retention";

fn log_removal(events: u64, freed: u64, took: Duration) {
    tracing::debug!(
        events,
        freed_bytes = freed,
        took_ms = took.as_secs_f64() * 1e3,
        "retention removed a chunk"
    );
}

/// Bytes of the database in use: its pages, less the free ones SQLite
/// will reuse. Read from the header, in memory: no scan.
async fn used_bytes(conn: &mut SqliteConnection) -> Result<u64, StoreError> {
    let used: i64 = sqlx::query_scalar(
        "SELECT (p.page_count - f.freelist_count) * s.page_size
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::sql("measuring the database"))?;
    Ok(used.max(0) as u64)
}

/// Why a size given on the command line is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("no size given (give bytes, or a number and a unit: 20MiB, 1GiB, 500MB)")]
    Empty,
    #[error("{text}: a size cannot be negative")]
    Negative { text: String },
    #[error(
        "{text}: not a number of bytes (give bytes, or a number and a unit: 20MiB, 1GiB, 500MB)"
    )]
    NotANumber { text: String },
    #[error("{text}: unknown unit {unit:?} (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
    UnknownUnit { text: String, unit: String },
    #[error("{text}: too big")]
    TooBig { text: String },
}

/// A size in bytes: plain bytes (`123`), or a number (a fraction allowed:
/// `1.5GiB`) and a unit, SI (`kB`, `MB`, `GB`, `TB`: powers of 1000) or
/// binary (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024), in any case and
/// with or without a space. A fraction of a byte is dropped.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let owned = || text.to_owned();
    if trimmed.starts_with('-') {
        return Err(SizeError::Negative { text: owned() });
    }
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: owned(),
                unit: unit.trim().to_owned(),
            })
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return Err(SizeError::NotANumber { text: owned() });
    }
    let too_big = || SizeError::TooBig { text: owned() };
    let whole: u128 = match whole {
        "" => 0,
        w => w.parse().map_err(|_| too_big())?,
    };
    // The fraction exactly: its digits over their power of ten, so 1.1GB
    // is 1,100,000,000 bytes, not what a float makes of it. Digits past
    // the nineteenth are below a byte for any unit here.
    let fraction = &fraction[..fraction.len().min(19)];
    let fraction_bytes = match fraction {
        "" => 0,
        f => {
            let f_value: u128 = f.parse().map_err(|_| too_big())?;
            f_value * u128::from(multiplier) / 10u128.pow(f.len() as u32)
        }
    };
    let bytes = whole
        .checked_mul(u128::from(multiplier))
        .and_then(|b| b.checked_add(fraction_bytes))
        .ok_or_else(too_big)?;
    u64::try_from(bytes).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_bytes_si_and_binary_units() {
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("123B"), Ok(123));
        assert_eq!(parse_size("64 kib"), Ok(64 << 10));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1.1GB"), Ok(1_100_000_000));
        assert_eq!(parse_size("0.5k"), Ok(500));
        assert_eq!(parse_size(".5KiB"), Ok(512));
    }

    #[test]
    fn what_is_not_a_size_says_why() {
        let message = |text: &str| parse_size(text).unwrap_err().to_string();
        assert_eq!(
            message("20XB"),
            "20XB: unknown unit \"XB\" (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        );
        assert_eq!(message("-1"), "-1: a size cannot be negative");
        assert_eq!(
            message(""),
            "no size given (give bytes, or a number and a unit: 20MiB, 1GiB, 500MB)"
        );
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        for text in ["MiB", ".", "1.2.3", "1..5MB", "x12"] {
            assert!(
                matches!(
                    parse_size(text),
                    Err(SizeError::NotANumber { .. } | SizeError::UnknownUnit { .. })
                ),
                "{text}: {:?}",
                parse_size(text)
            );
        }
        assert!(matches!(
            parse_size("20000000TiB"),
            Err(SizeError::TooBig { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::TooBig { .. })
        ));
    }
}
