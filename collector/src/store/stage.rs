//! The correlation stage's task: ingest batches in, facts out, to the
//! analysis and to the writer side by side.
//!
//! It runs ahead of the writer, so the live feed and deadlock detection see
//! events tens of milliseconds after they happen however slow the disk is.
//! The writer follows on a queue bounded by events not yet stored
//! ([`WriterConfig::max_unstored`]): past that, a batch's events and
//! messages are counted as dropped (source `ingest`) instead of queued, and
//! only what later facts refer to (processes, channels, open waits,
//! signals) still goes to the writer. Memory stays bounded, the sources
//! never wait for the disk, and the loss is stored and shown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc_events::Event;
use sqlx::pool::PoolConnection;
use sqlx::Sqlite;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::fold::{fold, Ends};
use super::watermark::{Batch, Watermarks};
use super::writer::{channel_id, lock, Correlated, WriterConfig};
use super::{SessionId, StoreError};
use crate::correlate::{Correlator, DropFact, Facts, Paired, WaitFact};

/// What the writer stores of one correlated batch.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Shared with the analysis, which has them meanwhile.
    pub events: Arc<Vec<Event>>,
    /// `channels.id` of each event's object, index for index.
    pub channel_ids: Vec<Option<i64>>,
    pub messages: Vec<Paired<i64>>,
    /// The events each message's row holds, message for message.
    pub ends: Vec<Ends>,
    /// Whether each event is held by a message's row (and so not stored as
    /// an `event_rows` row), index for index.
    pub folded: Vec<bool>,
    /// `channels.id` of the channels first seen in this batch, in the
    /// order of their refs: rows the stage has stored already.
    pub new_channels: Vec<i64>,
    /// The rest of the correlation stage's facts (its events, channels and
    /// messages taken out above).
    pub facts: Facts,
}

pub(super) struct Stage {
    pub session: SessionId,
    /// For channel rows only: the analysis names channels by their
    /// `channels.id`, so the stage stores each new one itself, a short
    /// statement (that waits at most for the writer's current
    /// transaction) once per channel.
    pub conn: PoolConnection<Sqlite>,
    pub correlator: Correlator,
    /// `channels.id` of each of the correlator's channels, by ref.
    pub channels: Vec<i64>,
    /// Events [`Ingest::try_send`](super::Ingest::try_send) refused, and
    /// how many of them are already in the facts.
    pub dropped: Arc<AtomicU64>,
    pub dropped_told: u64,
    pub own_sockets: Arc<Mutex<Vec<u64>>>,
    pub watermarks: Arc<Watermarks>,
    pub observer: Option<mpsc::Sender<Correlated>>,
    pub writer: mpsc::UnboundedSender<Stored>,
    /// Events handed to the writer and not yet committed.
    pub unstored: Arc<AtomicU64>,
    pub max_unstored: u64,
}

impl Stage {
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        config: WriterConfig,
    ) -> Result<(), StoreError> {
        let mut pending: Vec<Event> = Vec::with_capacity(config.rows_per_tx);
        let Err((error, lost)) = self.correlate_all(&mut rx, &config, &mut pending).await else {
            return Ok(());
        };
        // A channel row could not be stored (a full disk, a lock held past
        // the busy timeout): later facts would name channels that have no
        // row. As the writer does after a failed commit, the rest is
        // counted (`storage`), so the sources never see the recorder stop
        // and the session says how much it lacks.
        let mut lost = lost + pending.len() as u64;
        while let Some(batch) = rx.recv().await {
            lost += batch.taken_in().len() as u64;
        }
        lost += self.dropped.load(Ordering::Relaxed) - self.dropped_told;
        let facts = Facts {
            drops: vec![DropFact {
                source: "storage",
                count: lost,
                ts_ns: crate::clock::monotonic_ns(),
            }],
            ..Facts::default()
        };
        let _ = self.writer.send(Stored {
            facts,
            ..Stored::default()
        });
        Err(error)
    }

    /// Correlates what comes until every sender is gone; on a failure,
    /// returns it with the number of events it lost.
    async fn correlate_all(
        &mut self,
        rx: &mut mpsc::Receiver<Batch>,
        config: &WriterConfig,
        pending: &mut Vec<Event>,
    ) -> Result<(), (StoreError, u64)> {
        let mut deadline: Option<Instant> = None;
        loop {
            let received = match deadline {
                // None: time to correlate what has come.
                Some(at) => timeout_at(at, rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            };
            match received {
                Some(Some(batch)) => {
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + config.correlate_every);
                    }
                    pending.append(&mut batch.taken_in());
                    if pending.len() < config.rows_per_tx {
                        continue;
                    }
                }
                // Every sender is gone: correlate what is left and stop.
                Some(None) => return self.flush(pending, true).await,
                None => {}
            }
            self.flush(pending, false).await?;
            // Events held back for ordering are correlated on the next
            // round even if nothing else comes.
            deadline = (!pending.is_empty()).then(|| Instant::now() + config.correlate_every);
        }
    }

    /// Correlates what `pending` holds in time order, except (unless
    /// `last`) events too recent to be sure nothing older is still on its
    /// way, which stay in `pending`.
    async fn flush(
        &mut self,
        pending: &mut Vec<Event>,
        last: bool,
    ) -> Result<(), (StoreError, u64)> {
        let now = crate::clock::monotonic_ns();
        let read_through = self.watermarks.read_through(now);
        let held = hold_back(pending, last, read_through, now);
        let result = self.correlate(pending, last).await;
        pending.extend(held);
        result
    }

    /// Correlates `pending` and hands the facts on; with `last`, the
    /// recording's end, also what will now never pair.
    async fn correlate(
        &mut self,
        pending: &mut Vec<Event>,
        last: bool,
    ) -> Result<(), (StoreError, u64)> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let refused = dropped - self.dropped_told;
        self.dropped_told = dropped;
        if pending.is_empty() && refused == 0 && !last {
            return Ok(());
        }
        if refused > 0 {
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
        let mut new_channels = Vec::with_capacity(facts.new_channels.len());
        for (r, id) in std::mem::take(&mut facts.new_channels) {
            debug_assert_eq!(r.0 as usize, self.channels.len());
            let row = channel_id(&mut self.conn, self.session.0, &id)
                .await
                .map_err(|e| (e, facts.events.len() as u64))?;
            self.channels.push(row);
            new_channels.push(row);
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

        // Past the writer's budget the batch's rows are not queued: the
        // analysis still sees them, the database says they are missing.
        let rows = events.len() as u64;
        let over = self.unstored.load(Ordering::Relaxed) + rows > self.max_unstored;
        let ingest_dropped = refused + if over { rows } else { 0 };
        if ingest_dropped > 0 {
            facts.drops.push(DropFact {
                source: "ingest",
                count: ingest_dropped,
                ts_ns: crate::clock::monotonic_ns(),
            });
        }

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
                ingest_dropped,
            };
            // A closed observer (the analysis stopped) leaves storing
            // unaffected.
            let _ = observer.send(correlated).await;
        }

        let stored = match over {
            false => {
                self.unstored.fetch_add(rows, Ordering::Relaxed);
                let (ends, folded) = fold(&events, &channel_ids, &messages);
                Stored {
                    events,
                    channel_ids,
                    messages,
                    ends,
                    folded,
                    new_channels,
                    facts,
                }
            }
            true => {
                facts.one_ended.clear();
                facts.waits.retain(|w| !matches!(w, WaitFact::Whole(_)));
                Stored {
                    new_channels,
                    facts,
                    ..Stored::default()
                }
            }
        };
        // A writer that failed counts what it is sent instead of storing
        // it, until the stage stops; one that is gone has returned its
        // error already.
        let _ = self.writer.send(stored);
        Ok(())
    }
}

/// How long before the time every source has read through an event is
/// still held back, so that events from other sources that happened before
/// it, but arrive later, are correlated (and paired) first. Each ipc-lib
/// ring and the kernel ring is drained separately, so a signal's handling
/// can arrive before its sending; this margin is for what a source stamps
/// before it writes it (an ipc-lib thread preempted in between).
const REORDER_NS: u64 = 10_000_000;
/// Events stamped further than this in the future are not real times (a
/// broken or hostile writer): holding them back would hold them forever.
const FUTURE_NS: u64 = 1_000_000_000;

/// Sorts `pending` by time and takes out the events to correlate later:
/// those stamped after [`REORDER_NS`] before `read_through`, the time every
/// source has read through (none when `last`).
pub(super) fn hold_back(
    pending: &mut Vec<Event>,
    last: bool,
    read_through: u64,
    now_ns: u64,
) -> Vec<Event> {
    crate::time_order::sort_by_time(pending, |_, _| {});
    if last {
        return Vec::new();
    }
    let from = pending.partition_point(|e| e.ts_ns <= read_through.saturating_sub(REORDER_NS));
    let to = pending.partition_point(|e| e.ts_ns <= now_ns.saturating_add(FUTURE_NS));
    pending.drain(from..to).collect()
}

/// How often the stage correlates what has come: with the reorder
/// hold-back, what bounds how fresh the analysis is.
pub(super) const CORRELATE_EVERY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::{EventKind, Source};

    #[test]
    fn recent_events_wait_for_their_elders_and_the_rest_go_in_time_order() {
        let now = 100 * REORDER_NS;
        let at = |ts: u64| Event::new(ts, 1, 1, Source::Lib, EventKind::MsgSend);
        let times = |v: &[Event]| v.iter().map(|e| e.ts_ns).collect::<Vec<_>>();
        let future = now + 2 * FUTURE_NS;
        let mut pending = vec![at(now - 1), at(5), at(future), at(now - REORDER_NS), at(3)];
        let held = hold_back(&mut pending, false, now, now);
        assert_eq!(times(&pending), [3, 5, now - REORDER_NS, future]);
        assert_eq!(times(&held), [now - 1]);
        // A source that has read only up to 20 ms ago holds back what came
        // after 30 ms ago.
        let behind = now - 2 * REORDER_NS;
        let mut pending = vec![at(now - 1), at(5), at(behind - REORDER_NS - 1)];
        let held = hold_back(&mut pending, false, behind, now);
        assert_eq!(times(&pending), [5, behind - REORDER_NS - 1]);
        assert_eq!(times(&held), [now - 1]);
        let mut pending = vec![at(now - 1), at(5)];
        assert!(
            hold_back(&mut pending, true, now, now).is_empty(),
            "the last flush writes all"
        );
        assert_eq!(times(&pending), [5, now - 1]);
    }
}
