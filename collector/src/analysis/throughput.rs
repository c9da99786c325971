//! Throughput: events, messages and bytes per second of event time, the
//! rates over the last complete second and ten seconds, and the last
//! minute second by second (the sparkline).
//!
//! Windows are whole seconds, as in [`super::latency`]: a rate is the
//! count of complete seconds divided by their number, so it does not dip
//! each time a second starts.

use ipc_events::live::{Rates, Second};

const NS_PER_S: u64 = 1_000_000_000;
/// Seconds of history kept: the snapshot's minute and the one filling.
pub const HISTORY: usize = ipc_events::live::Snapshot::SECONDS + 1;

/// Counts per second of one thing (a channel, a process, the session).
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Indexed by second modulo [`HISTORY`]; `start_ns` says which second
    /// a slot holds (`u64::MAX`: none yet).
    slots: Vec<Second>,
    /// The first second anything was counted in.
    first: Option<u64>,
    /// The newest second counted in.
    newest: u64,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput {
            slots: vec![
                Second {
                    start_ns: u64::MAX,
                    ..Second::default()
                };
                HISTORY
            ],
            first: None,
            newest: 0,
        }
    }
}

impl Throughput {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts what happened at `ts_ns`. Something older than the history
    /// is left out of the windows (the totals elsewhere still have it).
    pub fn record(&mut self, ts_ns: u64, events: u64, messages: u64, bytes: u64) {
        let second = ts_ns / NS_PER_S;
        let start_ns = second * NS_PER_S;
        if second + (HISTORY as u64) <= self.newest {
            return;
        }
        self.newest = self.newest.max(second);
        self.first = Some(self.first.map_or(second, |f| f.min(second)));
        let slot = &mut self.slots[(second % HISTORY as u64) as usize];
        if slot.start_ns != start_ns {
            *slot = Second {
                start_ns,
                ..Second::default()
            };
        }
        // Counts come from traced processes: saturate, never overflow.
        slot.events = slot.events.saturating_add(events);
        slot.messages = slot.messages.saturating_add(messages);
        slot.bytes = slot.bytes.saturating_add(bytes);
    }

    /// Second `second`'s counts (zero when nothing happened then).
    fn second(&self, second: u64) -> Second {
        let start_ns = second * NS_PER_S;
        let slot = self.slots[(second % HISTORY as u64) as usize];
        if slot.start_ns == start_ns {
            slot
        } else {
            Second {
                start_ns,
                ..Second::default()
            }
        }
    }

    /// Mean rates over the `n` complete seconds before `now_ns`.
    pub fn rates(&self, now_ns: u64, n: u64) -> Rates {
        let now = now_ns / NS_PER_S;
        let (mut events, mut messages, mut bytes) = (0u128, 0u128, 0u128);
        for s in now.saturating_sub(n)..now {
            let c = self.second(s);
            events += u128::from(c.events);
            messages += u128::from(c.messages);
            bytes += u128::from(c.bytes);
        }
        let n = n.max(1) as f64;
        Rates {
            events_per_s: events as f64 / n,
            messages_per_s: messages as f64 / n,
            bytes_per_s: bytes as f64 / n,
        }
    }

    /// The last second's rates.
    pub fn rate_1s(&self, now_ns: u64) -> Rates {
        self.rates(now_ns, 1)
    }

    /// The last ten seconds' rates.
    pub fn rate_10s(&self, now_ns: u64) -> Rates {
        self.rates(now_ns, 10)
    }

    /// Seconds from `from_ns` (clamped to the first one counted and to the
    /// history kept) up to the one holding `now_ns`, oldest first; the
    /// last one may still be filling.
    pub fn seconds(&self, from_ns: u64, now_ns: u64) -> Vec<Second> {
        let Some(first) = self.first else {
            return Vec::new();
        };
        let now = now_ns / NS_PER_S;
        let oldest = now.saturating_sub(HISTORY as u64 - 2);
        let from = (from_ns / NS_PER_S).max(first).max(oldest);
        (from..=now).map(|s| self.second(s)).collect()
    }

    /// The last minute, up to the second holding `now_ns`.
    pub fn history(&self, now_ns: u64) -> Vec<Second> {
        self.seconds(0, now_ns)
    }

    /// Whether anything was counted in the windows that `now_ns` shows or
    /// will show as they roll: such a thing's rates still change.
    pub fn active_since(&self, since_ns: u64) -> bool {
        let since = since_ns / NS_PER_S;
        self.slots
            .iter()
            .any(|s| s.start_ns != u64::MAX && s.start_ns / NS_PER_S >= since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_S;

    #[test]
    fn rates_cover_complete_seconds() {
        let mut t = Throughput::new();
        for i in 0..10 {
            t.record(5 * S + i, 1, 1, 100);
        }
        t.record(6 * S, 1, 0, 0);
        assert_eq!(t.rate_1s(5 * S + 999).events_per_s, 0.0, "5 is filling");
        let r = t.rate_1s(6 * S + 1);
        assert_eq!(
            (r.events_per_s, r.messages_per_s, r.bytes_per_s),
            (10.0, 10.0, 1000.0)
        );
        assert_eq!(t.rate_10s(7 * S).events_per_s, 1.1);
        assert_eq!(t.rate_10s(16 * S).events_per_s, 0.1, "5 has left");
        assert_eq!(t.rate_10s(17 * S).events_per_s, 0.0);
    }

    #[test]
    fn history_is_a_minute_with_empty_seconds_filled_in() {
        let mut t = Throughput::new();
        t.record(2 * S, 1, 0, 0);
        t.record(4 * S, 2, 0, 0);
        let h = t.history(4 * S + 10);
        let got: Vec<_> = h.iter().map(|s| (s.start_ns / S, s.events)).collect();
        assert_eq!(got, [(2, 1), (3, 0), (4, 2)]);
        let h = t.history(100 * S);
        assert_eq!(h.len(), ipc_events::live::Snapshot::SECONDS);
        assert_eq!(h.last().unwrap().start_ns, 100 * S);
        assert!(h.iter().all(|s| s.events == 0));
        // Only the seconds asked for.
        assert_eq!(t.seconds(3 * S, 4 * S).len(), 2);
    }

    #[test]
    fn late_counts_land_in_their_second_and_stale_ones_are_left_out() {
        let mut t = Throughput::new();
        t.record(100 * S, 1, 0, 0);
        t.record(99 * S, 1, 0, 0);
        t.record(10 * S, 1, 0, 0);
        assert_eq!(t.rate_10s(101 * S).events_per_s, 0.2);
        assert!(t.active_since(95 * S));
        assert!(!t.active_since(101 * S));
    }
}
