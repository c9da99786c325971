//! `ipcscope report`: what a session did, from the schema contract alone.
//!
//! Each section is one SQL query over the documented tables, so what the
//! report shows is exactly what a user could ask `ipcscope query` for, and
//! the JSON form is those same rows.

use ipc_events::live::Snapshot;
use ipc_events::units::{bytes, signed_duration_ns};
use serde_json::{Map, Value as Json};
use sqlx::SqliteConnection;

use crate::query::{self, printable, QueryError, Table, Value};
use crate::store::SessionId;

/// The report's sections: (name, SQL with one `?1` for the session id).
const SECTIONS: &[(&str, &str)] = &[
    (
        "session",
        "SELECT id, name, command, host, started_at, coalesce(ended_at, 'unfinished') AS ended_at,
                end_mono_ns - start_mono_ns AS duration_ns, exit_status, sources, event_count
         FROM sessions WHERE id = ?1",
    ),
    (
        "processes",
        "SELECT p.pid, p.ppid, p.comm, p.title, p.exe, p.started_ns - s.start_mono_ns AS started_at_ns,
                p.exited_ns - p.started_ns AS lifetime_ns, p.exit_status
         FROM processes p JOIN sessions s ON s.id = p.session_id
         WHERE p.session_id = ?1 ORDER BY p.started_ns, p.id",
    ),
    (
        "events",
        "SELECT source, kind, count(*) AS count FROM events WHERE session_id = ?1
         GROUP BY source, kind ORDER BY count DESC, kind",
    ),
    (
        // Every channel with traffic, whether or not its other end was
        // traced. `sends` and `receives` are the events the sources saw;
        // `messages` and `bytes` the correlation stage's messages, each
        // once (a message whose other end is not traced included, so a
        // server followed with -p shows its traffic), `paired` those with
        // both ends. All five are the `traffic` table's, which the writer
        // adds up as it stores the rows they count: a session whose
        // oldest raw rows were removed (`record --max-db-size`) still
        // shows its whole traffic. Latency percentiles are the `latency`
        // table's (the analysis's HDR histograms over the whole session,
        // the figures the dashboard shows): unknown where nothing paired,
        // or where a killed recording never wrote them. A socket or file
        // that carries an ipc-lib object is counted under that object.
        "channels",
        "WITH t AS (
             SELECT channel_id, sum(sends) AS sends, sum(receives) AS receives,
                    sum(messages) AS messages, sum(paired) AS paired, sum(bytes) AS bytes
             FROM traffic WHERE session_id = ?1
             GROUP BY channel_id HAVING sum(sends) + sum(receives) > 0)
         SELECT c.kind, c.name, t.sends, t.receives, t.messages, t.paired, t.bytes,
                l.p50_ns, l.p99_ns, l.max_ns,
                CAST(t.messages * 1e9 / nullif(s.end_mono_ns - s.start_mono_ns, 0) AS INTEGER) AS msgs_per_s,
                CAST(t.bytes * 1e9 / nullif(s.end_mono_ns - s.start_mono_ns, 0) AS INTEGER) AS bytes_per_s
         FROM t JOIN channels c ON c.id = t.channel_id AND c.carries_channel_id IS NULL
         JOIN sessions s ON s.id = ?1
         LEFT JOIN latency l ON l.session_id = ?1 AND l.what = 'message' AND l.channel_id = t.channel_id
         ORDER BY max(t.sends, t.receives) DESC, c.id LIMIT 50",
    ),
    (
        "waits",
        "SELECT c.kind, c.name, count(*) AS waits, sum(w.end_ns - w.start_ns) AS total_ns,
                max(w.end_ns - w.start_ns) AS max_ns, sum(w.end_ns IS NULL) AS still_blocked
         FROM waits w LEFT JOIN channels c ON c.id = w.channel_id
         WHERE w.session_id = ?1 GROUP BY w.channel_id ORDER BY total_ns DESC LIMIT 10",
    ),
    (
        "signals",
        "SELECT signo, sender_pid, cause, target_pid, count(*) AS count,
                max(delivered_ns - generated_ns) AS max_latency_ns
         FROM signals WHERE session_id = ?1
         GROUP BY signo, sender_pid, cause, target_pid ORDER BY count DESC LIMIT 20",
    ),
    (
        "deadlocks",
        "SELECT d.detected_ns - s.start_mono_ns AS detected_at_ns,
                d.resolved_ns - d.detected_ns AS lasted_ns, d.cycle
         FROM deadlocks d JOIN sessions s ON s.id = d.session_id
         WHERE d.session_id = ?1 ORDER BY d.detected_ns",
    ),
    (
        // Deadlocks that did not happen this time: two locks taken in both
        // orders by different processes.
        "inversions",
        "SELECT f.kind || ' ' || f.name AS first, i.first_pid,
                s2.kind || ' ' || s2.name AS second, i.second_pid,
                i.first_seen_ns - s.start_mono_ns AS first_seen_at_ns,
                i.second_seen_ns - s.start_mono_ns AS inverted_at_ns
         FROM lock_order_inversions i JOIN sessions s ON s.id = i.session_id
         LEFT JOIN channels f ON f.id = i.first_channel_id
         LEFT JOIN channels s2 ON s2.id = i.second_channel_id
         WHERE i.session_id = ?1 ORDER BY i.second_seen_ns",
    ),
    (
        "drops",
        "SELECT source, sum(count) AS count FROM drops WHERE session_id = ?1
         GROUP BY source ORDER BY source",
    ),
];

/// Every session in the database, newest last.
const SESSIONS: &str = "SELECT s.id, s.name, s.command, s.started_at,
        CASE WHEN s.ended_at IS NULL THEN 'unfinished' ELSE 'done' END AS state,
        s.end_mono_ns - s.start_mono_ns AS duration_ns, s.exit_status, s.event_count AS events,
        (SELECT coalesce(sum(d.count), 0) FROM drops d WHERE d.session_id = s.id) AS dropped,
        s.sources
    FROM sessions s ORDER BY s.id";

/// The `sessions` listing.
pub async fn sessions(conn: &mut SqliteConnection) -> Result<Table, QueryError> {
    query::run(conn, SESSIONS).await
}

/// A report: every section's rows, in order.
#[derive(Debug, Clone)]
pub struct Report {
    pub sections: Vec<(&'static str, Table)>,
}

/// Builds the report for `session`.
pub async fn build(conn: &mut SqliteConnection, session: SessionId) -> Result<Report, QueryError> {
    let mut sections = Vec::with_capacity(SECTIONS.len());
    for (name, sql) in SECTIONS {
        let rows = sqlx::query(sql)
            .bind(session.0)
            .fetch_all(&mut *conn)
            .await
            .map_err(QueryError::Sql)?;
        sections.push((*name, query::from_rows(&rows).map_err(QueryError::Sql)?));
    }
    Ok(Report { sections })
}

impl Report {
    /// `{"session": {...}, "processes": [...], ...}`.
    pub fn to_json(&self) -> String {
        let mut obj = Map::new();
        for (name, table) in &self.sections {
            let rows = table.to_json_rows();
            let value = if *name == "session" {
                rows.into_iter().next().unwrap_or(Json::Null)
            } else {
                Json::Array(rows)
            };
            obj.insert((*name).to_owned(), value);
        }
        Json::Object(obj).to_string()
    }

    /// Sections as aligned tables, with durations and sizes humanised.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, table) in &self.sections {
            out.push_str(&format!("== {name}\n"));
            if table.rows.is_empty() {
                out.push_str("(none)\n\n");
                continue;
            }
            let mut table = table.clone();
            humanise(&mut table);
            if *name == "session" {
                // One row: a column of "key  value" pairs reads better.
                let width = table.columns.iter().map(String::len).max().unwrap_or(0);
                for (col, val) in table.columns.iter().zip(&table.rows[0]) {
                    out.push_str(&format!("{col:width$}  {}\n", printable(&val.to_text())));
                }
                out.push('\n');
            } else {
                out.push_str(&table.to_aligned());
                out.push('\n');
            }
        }
        out
    }
}

/// A live snapshot as text, for `report --live`: the totals, the busiest
/// channels, waits, and every deadlock.
pub fn live_text(s: &Snapshot) -> String {
    let t = &s.totals;
    let state = if s.live { "recording" } else { "ended" };
    let mut out = format!(
        "session {} {:?}: {state}, {}\n\
         events {} ({:.0}/s)  messages {} ({:.0}/s, {}/s)  processes {}  channels {}  drops {}\n\n",
        s.session_id,
        s.session_name,
        signed_duration_ns(s.now_ns.saturating_sub(s.started_ns) as i64),
        t.events,
        s.rate_1s.events_per_s,
        t.messages,
        s.rate_1s.messages_per_s,
        bytes(s.rate_1s.bytes_per_s as u64),
        t.processes,
        t.channels,
        t.drops,
    );
    let mut channels: Vec<_> = s.channels.iter().collect();
    channels.sort_by_key(|c| std::cmp::Reverse(c.messages));
    let mut table = Table {
        columns: [
            "kind",
            "name",
            "messages",
            "msgs_per_s",
            "bytes_per_s",
            "p50_ns",
            "p99_ns",
            "max_ns",
            "depth",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for c in channels.iter().take(LIVE_CHANNELS) {
        let lat = &c.latency.session;
        // No paired message, no latency: unknown, not 0.
        let known = |v: u64| match lat.count {
            0 => Value::Null,
            _ => Value::Integer(v as i64),
        };
        table.rows.push(vec![
            Value::Text(c.channel.kind().to_string()),
            Value::Text(c.channel.name()),
            Value::Integer(c.messages as i64),
            Value::Integer(c.rate_1s.messages_per_s.round() as i64),
            Value::Integer(c.rate_1s.bytes_per_s.round() as i64),
            known(lat.p50),
            known(lat.p99),
            known(lat.max),
            c.queue_depth
                .map_or(Value::Null, |d| Value::Integer(d as i64)),
        ]);
    }
    humanise(&mut table);
    out.push_str(&table.to_aligned());
    if channels.len() > LIVE_CHANNELS {
        out.push_str(&format!(
            "... and {} more channels\n",
            channels.len() - LIVE_CHANNELS
        ));
    }
    for w in s.waits.iter().filter(|w| w.waiting_now > 0) {
        out.push_str(&format!(
            "waiting now: {} on {} (p99 wait {})\n",
            w.waiting_now,
            printable(&w.channel.to_string()),
            signed_duration_ns(w.latency.session.p99 as i64)
        ));
    }
    for d in &s.deadlocks {
        let status = match d.resolved_ns {
            None => "DEADLOCK".to_owned(),
            Some(at) => format!(
                "deadlock (resolved after {})",
                signed_duration_ns(at.saturating_sub(d.detected_ns) as i64)
            ),
        };
        let path: Vec<String> = d
            .cycle
            .iter()
            .map(|m| {
                format!(
                    "{} {} waits for {} {}",
                    m.pid, m.comm, m.waits_for.kind, m.waits_for.name
                )
            })
            .collect();
        out.push_str(&format!("{status}: {}\n", printable(&path.join(" -> "))));
    }
    for i in &s.inversions {
        let line = format!(
            "lock order inversion: pid {} takes {} then {}, pid {} the other way round",
            i.first_pid, i.first.name, i.second.name, i.second_pid
        );
        out.push_str(&printable(&line));
        out.push('\n');
    }
    out
}

/// Channels `live_text` lists, busiest first.
const LIVE_CHANNELS: usize = 10;

/// The schema's points in time (CLOCK_MONOTONIC nanoseconds): a reader
/// copies them into the next query, so they are never rounded.
const INSTANTS: [&str; 16] = [
    "ts_ns",
    "start_ns",
    "end_ns",
    "sent_ns",
    "received_ns",
    "generated_ns",
    "delivered_ns",
    "detected_ns",
    "resolved_ns",
    "started_ns",
    "exited_ns",
    "title_ns",
    "first_seen_ns",
    "second_seen_ns",
    "start_mono_ns",
    "end_mono_ns",
];

/// Durations (`*_ns` but the schema's points in time, which stay exact),
/// sizes (`bytes*`) and signals (`SIGURG (23)`) as a person reads them, and
/// an unknown (NULL) as
/// `–`, never as 0 or a blank that reads as one.
pub fn humanise(table: &mut Table) {
    unknowns_shown(table);
    for (i, col) in table.columns.iter().enumerate() {
        let format: fn(i64) -> String = if col.ends_with("_ns") && !INSTANTS.contains(&col.as_str())
        {
            signed_duration_ns
        } else if col == "signo" {
            |n| match u32::try_from(n) {
                Ok(signo) => format!("{} ({n})", ipc_events::units::signal_name(signo)),
                Err(_) => n.to_string(),
            }
        } else if col == "bytes" {
            |n| bytes(n.max(0) as u64)
        } else if col == "bytes_per_s" {
            |n| format!("{}/s", bytes(n.max(0) as u64))
        } else {
            continue;
        };
        for row in &mut table.rows {
            if let Value::Integer(v) = row[i] {
                row[i] = Value::Text(format(v));
            }
        }
    }
}

/// An unknown (NULL) as `–`, every value else as stored.
pub fn unknowns_shown(table: &mut Table) {
    for row in &mut table.rows {
        for cell in row.iter_mut().filter(|c| matches!(c, Value::Null)) {
            *cell = Value::Text("–".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_snapshot_shows_channels_busiest_first_and_every_deadlock() {
        use ipc_events::live::{
            ChannelStats, CycleMember, Deadlock, Latency, Percentiles, Rates, Resource,
        };
        use ipc_events::{ChannelId, ChannelKind};
        let channel = |id: i64, name: &str, messages: u64| ChannelStats {
            id,
            channel: ChannelId::named(ChannelKind::IpclibChannel, name),
            senders: vec![10],
            receivers: vec![11],
            pairs: vec![(10, 11)],
            messages,
            bytes: messages * 64,
            rate_1s: Rates::default(),
            rate_10s: Rates::default(),
            latency: Latency {
                session: Percentiles {
                    count: messages,
                    p50: 1500,
                    p99: 9000,
                    max: 20_000,
                    ..Percentiles::default()
                },
                ..Latency::default()
            },
            queue_depth: Some(3),
            recent: Vec::new(),
        };
        let member = |pid: u32, sem: &str| CycleMember {
            pid,
            tid: pid,
            comm: format!("locker-{pid}"),
            waits_for: Resource {
                channel_id: None,
                kind: ChannelKind::IpclibSem,
                name: sem.into(),
            },
            idle_threads: Vec::new(),
        };
        let snapshot = Snapshot {
            session_id: 4,
            session_name: "demo".into(),
            live: true,
            channels: vec![channel(1, "quiet", 5), channel(2, "busy", 500)],
            deadlocks: vec![Deadlock {
                id: 1,
                detected_ns: 0,
                resolved_ns: None,
                cycle: vec![member(20, "a"), member(21, "b")],
            }],
            ..Snapshot::default()
        };
        let text = live_text(&snapshot);
        let busy = text.find("busy").expect("busy channel listed");
        let quiet = text.find("quiet").expect("quiet channel listed");
        assert!(busy < quiet, "busiest first:\n{text}");
        assert!(
            text.contains("1.50 µs") && text.contains("9.00 µs"),
            "{text}"
        );
        assert!(
            text.contains("DEADLOCK: 20 locker-20 waits for ipclib_sem a -> 21 locker-21 waits for ipclib_sem b"),
            "{text}"
        );
    }
}
