//! The `traffic` table: each channel's sends, receives, messages and bytes
//! per second, added up in the transaction that stores their rows.
//!
//! These are the figures `report` shows for a channel. They are kept apart
//! from `events` and `messages` so that removing the oldest raw rows (see
//! [`super::retention`]) takes nothing from a session's totals. A
//! transaction covers well under a second of most recordings, so its
//! share is a handful of rows: counted here in memory first, then one
//! upsert adds them to what earlier transactions stored.

use ipc_events::{Event, EventKind};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, SqliteConnection};

use super::StoreError;
use crate::correlate::{ChannelRef, Paired, Unpaired};
use crate::fast_map::FastMap;

/// What one channel carried in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    sends: i64,
    receives: i64,
    messages: i64,
    paired: i64,
    bytes: i64,
}

/// The second of a CLOCK_MONOTONIC stamp (see migrations/0009_traffic.sql).
fn second(ts_ns: u64) -> i64 {
    (ts_ns / 1_000_000_000) as i64
}

/// One transaction's traffic, by (`channels.id`, second).
#[derive(Debug, Default)]
pub(super) struct Tally {
    rows: FastMap<(i64, i64), Counts>,
}

impl Tally {
    fn at(&mut self, channel: i64, ts_ns: u64) -> &mut Counts {
        self.rows.entry((channel, second(ts_ns))).or_default()
    }

    /// Counts the sends and receives among `events`, each on its
    /// `channels.id` (`channel_ids`, index for index), as `events` stores
    /// them.
    pub(super) fn events(&mut self, events: &[Event], channel_ids: &[Option<i64>]) {
        for (e, channel) in events.iter().zip(channel_ids) {
            let send = match e.kind {
                EventKind::MsgSend => true,
                EventKind::MsgRecv => false,
                _ => continue,
            };
            let Some(channel) = *channel else {
                continue;
            };
            let counts = self.at(channel, e.ts_ns);
            counts.sends += i64::from(send);
            counts.receives += i64::from(!send);
        }
    }

    /// Counts messages as `messages` stores them: each at its receipt, or
    /// at its only known end, with the size stored there.
    pub(super) fn messages(
        &mut self,
        paired: &[Paired<i64>],
        one_ended: &[Unpaired<ChannelRef>],
        channels: &[i64],
    ) {
        for m in paired {
            let counts = self.at(m.channel, m.recv.ts_ns);
            counts.messages += 1;
            counts.paired += 1;
            counts.bytes += m.send.size as i64;
        }
        for m in one_ended {
            let counts = self.at(channels[m.channel.0 as usize], m.side.ts_ns);
            counts.messages += 1;
            counts.bytes += m.side.size as i64;
        }
    }

    /// Adds the tally to the session's `traffic` rows, in the transaction
    /// that stores what it counts.
    pub(super) async fn store(
        self,
        conn: &mut SqliteConnection,
        session: i64,
    ) -> Result<(), StoreError> {
        let mut rows: Vec<_> = self.rows.into_iter().collect();
        // In key order: neighbours in the table's b-tree.
        rows.sort_unstable_by_key(|(key, _)| *key);
        for rows in rows.chunks(ROWS_PER_STATEMENT) {
            upsert(conn, session, rows).await?;
        }
        Ok(())
    }
}

/// Columns bound per `traffic` row; rows per statement stay under SQLite's
/// 32766 parameters.
const COLUMNS: usize = 8;
const ROWS_PER_STATEMENT: usize = 4000;

async fn upsert(
    conn: &mut SqliteConnection,
    session: i64,
    rows: &[((i64, i64), Counts)],
) -> Result<(), StoreError> {
    const HEAD: &str = "INSERT INTO traffic (session_id, channel_id, second, sends, receives, \
                        messages, paired, bytes) VALUES ";
    const ROW: &str = "(?,?,?,?,?,?,?,?)";
    const TAIL: &str = " ON CONFLICT (session_id, channel_id, second) DO UPDATE SET \
                        sends = sends + excluded.sends, receives = receives + excluded.receives, \
                        messages = messages + excluded.messages, \
                        paired = paired + excluded.paired, bytes = bytes + excluded.bytes";
    const ACTION: &str = "adding up traffic";
    debug_assert_eq!(ROW.matches('?').count(), COLUMNS);
    let mut sql = String::with_capacity(HEAD.len() + rows.len() * (ROW.len() + 1) + TAIL.len());
    sql.push_str(HEAD);
    let mut args = SqliteArguments::default();
    args.reserve(rows.len() * COLUMNS, 0);
    for (i, ((channel, second), c)) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
        bind(&mut args, session, (*channel, *second), c)
            .map_err(|e| StoreError::sql(ACTION)(sqlx::Error::Encode(e)))?;
    }
    sql.push_str(TAIL);
    sqlx::query_with(&sql, args)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql(ACTION))?;
    Ok(())
}

fn bind(
    args: &mut SqliteArguments<'_>,
    session: i64,
    (channel, second): (i64, i64),
    c: &Counts,
) -> Result<(), sqlx::error::BoxDynError> {
    args.add(session)?;
    args.add(channel)?;
    args.add(second)?;
    args.add(c.sends)?;
    args.add(c.receives)?;
    args.add(c.messages)?;
    args.add(c.paired)?;
    args.add(c.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::Side;
    use ipc_events::Source;

    fn side(ts_ns: u64, size: u64) -> Side {
        Side {
            pid: 1,
            tid: 1,
            ts_ns,
            size,
        }
    }

    #[test]
    fn sends_receives_and_messages_are_counted_per_channel_and_second() {
        let event = |ts: u64, kind: EventKind| Event::new(ts, 1, 1, Source::Lib, kind);
        let s = 1_000_000_000;
        let events = [
            event(10, EventKind::MsgSend),
            event(20, EventKind::MsgRecv),
            event(s + 5, EventKind::MsgSend),
            // On no channel, or not a message: not traffic.
            event(30, EventKind::MsgSend),
            event(40, EventKind::SemPost),
        ];
        let ids = [Some(7), Some(7), Some(7), None, Some(7)];
        let mut tally = Tally::default();
        tally.events(&events, &ids);
        let paired = [Paired {
            channel: 7,
            send: side(10, 64),
            recv: side(s + 1, 64),
            msg_id: None,
        }];
        // Sent in second 0, never received: counted where it was sent.
        let one_ended = [Unpaired {
            channel: ChannelRef(0),
            side: side(50, 8),
            sent: true,
            msg_id: None,
        }];
        tally.messages(&paired, &one_ended, &[9]);
        let mut rows: Vec<_> = tally.rows.into_iter().collect();
        rows.sort_by_key(|(k, _)| *k);
        let counts = |sends, receives, messages, paired, bytes| Counts {
            sends,
            receives,
            messages,
            paired,
            bytes,
        };
        assert_eq!(
            rows,
            [
                ((7, 0), counts(1, 1, 0, 0, 0)),
                ((7, 1), counts(1, 0, 1, 1, 64)),
                ((9, 0), counts(0, 0, 1, 0, 8)),
            ]
        );
    }
}
