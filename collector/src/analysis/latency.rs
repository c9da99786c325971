//! Latency over sliding windows: HDR histograms for the whole session and
//! for each of the last seconds.
//!
//! Windows are made of whole seconds of event time (`ts_ns / 1e9`): the
//! last second is the last *complete* one before `now`, the last ten the
//! ten complete ones before it. A window then always covers the same span,
//! so its figures do not jump as a second starts filling, at the cost of
//! showing a value at most a second late. Values arrive out of order (each
//! process's ring is drained on its own), so a value lands in the second
//! its timestamp names, whenever it comes.
//!
//! Values are nanoseconds kept to 3 significant figures. Histograms grow
//! to the largest value they hold and stop at [`MAX_TRACKED_NS`]; larger
//! values are counted there, while `min` and `max` stay exact.

use hdrhistogram::Histogram;
use ipc_events::live::{Bucket, Latency, Percentiles};

/// The largest value a histogram resolves (one hour): bounds its memory.
pub const MAX_TRACKED_NS: u64 = 3_600_000_000_000;
/// Significant figures kept: 0.1% resolution.
pub const SIGFIGS: u8 = 3;
/// The first histogram bucket holds values below this; each next bucket
/// doubles the bound.
pub const FIRST_BUCKET_NS: u64 = 128;

const NS_PER_S: u64 = 1_000_000_000;
/// Seconds kept: the ten of the longer window and the one filling now.
const SLOTS: usize = 11;

fn histogram() -> Histogram<u64> {
    // Only a sigfig above 5 is refused.
    Histogram::new(SIGFIGS).expect("3 significant figures is a valid histogram")
}

/// Records a value, growing the histogram to hold it. (Saturating
/// recording does not grow an auto-resizing histogram: it clamps to what it
/// tracks so far.) Values are clamped to [`MAX_TRACKED_NS`] before, so
/// growing cannot fail; saturating is the fallback all the same.
fn record(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// One second of values.
#[derive(Debug)]
struct Slot {
    second: u64,
    values: Histogram<u64>,
}

/// A session histogram and the last seconds' ones.
#[derive(Debug)]
pub struct WindowedHistogram {
    session: Histogram<u64>,
    min: u64,
    max: u64,
    /// Indexed by second modulo [`SLOTS`]; allocated on first use.
    slots: Vec<Option<Slot>>,
    /// The 10-second window as last computed, for this `now` second; any
    /// value recorded into a second before it clears this.
    cached: Option<(u64, Percentiles)>,
    scratch: Option<Histogram<u64>>,
}

impl Default for WindowedHistogram {
    fn default() -> Self {
        WindowedHistogram {
            session: histogram(),
            min: u64::MAX,
            max: 0,
            slots: (0..SLOTS).map(|_| None).collect(),
            cached: None,
            scratch: None,
        }
    }
}

impl WindowedHistogram {
    /// Empty: no values, no seconds allocated.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `value_ns` observed at `ts_ns`.
    pub fn record(&mut self, ts_ns: u64, value_ns: u64) {
        self.min = self.min.min(value_ns);
        self.max = self.max.max(value_ns);
        let value = value_ns.min(MAX_TRACKED_NS);
        record(&mut self.session, value);
        let second = ts_ns / NS_PER_S;
        if self.cached.is_some_and(|(now, _)| second < now) {
            self.cached = None;
        }
        let slot = &mut self.slots[(second % SLOTS as u64) as usize];
        match slot {
            Some(s) if s.second == second => record(&mut s.values, value),
            // Older than anything a window still shows: the session has it.
            Some(s) if s.second > second => {}
            _ => {
                let mut values = match slot.take() {
                    Some(mut old) => {
                        old.values.reset();
                        old.values
                    }
                    None => histogram(),
                };
                record(&mut values, value);
                *slot = Some(Slot { second, values });
            }
        }
    }

    /// The whole session's percentiles.
    pub fn session(&self) -> Percentiles {
        self.percentiles_of(&self.session, true)
    }

    /// The last complete second before `now_ns`.
    pub fn last_1s(&self, now_ns: u64) -> Percentiles {
        let now = now_ns / NS_PER_S;
        match self.slot(now.wrapping_sub(1)) {
            Some(h) => self.percentiles_of(h, false),
            None => Percentiles::default(),
        }
    }

    /// The ten complete seconds before `now_ns`.
    pub fn last_10s(&mut self, now_ns: u64) -> Percentiles {
        let now = now_ns / NS_PER_S;
        if let Some((at, p)) = self.cached {
            if at == now {
                return p;
            }
        }
        let mut merged = self.scratch.take().unwrap_or_else(histogram);
        merged.reset();
        for second in now.saturating_sub(10)..now {
            if let Some(h) = self.slot(second) {
                // Auto-resizing histograms of one precision always add.
                let _ = merged.add(h);
            }
        }
        let p = self.percentiles_of(&merged, false);
        self.scratch = Some(merged);
        self.cached = Some((now, p));
        p
    }

    /// Every window, and the session's histogram in log-spaced buckets.
    pub fn latency(&mut self, now_ns: u64) -> Latency {
        Latency {
            last_1s: self.last_1s(now_ns),
            last_10s: self.last_10s(now_ns),
            session: self.session(),
            histogram: self.buckets(),
        }
    }

    /// The session's histogram: bucket k counts values up to
    /// `(FIRST_BUCKET_NS << k) - 1`; empty buckets are left out.
    pub fn buckets(&self) -> Vec<Bucket> {
        if self.session.is_empty() {
            return Vec::new();
        }
        self.session
            .iter_log(FIRST_BUCKET_NS, 2.0)
            .filter(|v| v.count_since_last_iteration() > 0)
            .map(|v| Bucket {
                upper_ns: v.value_iterated_to(),
                count: v.count_since_last_iteration(),
            })
            .collect()
    }

    fn slot(&self, second: u64) -> Option<&Histogram<u64>> {
        match &self.slots[(second % SLOTS as u64) as usize] {
            Some(s) if s.second == second && !s.values.is_empty() => Some(&s.values),
            _ => None,
        }
    }

    /// Percentiles of `h`; the session's min and max are exact, a window's
    /// are the histogram's (within 0.1%).
    fn percentiles_of(&self, h: &Histogram<u64>, exact: bool) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let (min, max) = if exact {
            (self.min, self.max)
        } else {
            (h.min(), h.max())
        };
        // Quantiles are of the tracked range; clamp into the true bounds.
        let q = |q: f64| h.value_at_quantile(q).clamp(min, max);
        Percentiles {
            count: h.len(),
            min,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = NS_PER_S;

    #[test]
    fn windows_show_complete_seconds_and_roll() {
        let mut h = WindowedHistogram::new();
        h.record(10 * S + 5, 100);
        h.record(10 * S + 7, 300);
        h.record(11 * S, 1000);
        // During second 11, the last second is 10.
        let p = h.last_1s(11 * S + 500);
        assert_eq!((p.count, p.min, p.max), (2, 100, 300));
        assert_eq!(h.last_10s(11 * S + 500).count, 2);
        // During 12: second 11 only, both in the 10 s window.
        assert_eq!(h.last_1s(12 * S).count, 1);
        assert_eq!(h.last_10s(12 * S).count, 3);
        // Second 10 leaves the 10 s window when second 21 starts.
        assert_eq!(h.last_10s(20 * S).count, 3);
        assert_eq!(h.last_10s(21 * S).count, 1);
        assert_eq!(h.last_1s(21 * S).count, 0);
        assert_eq!(h.last_10s(30 * S).count, 0);
        assert_eq!(h.session().count, 3);
    }

    #[test]
    fn a_late_value_lands_in_its_own_second() {
        let mut h = WindowedHistogram::new();
        h.record(5 * S, 10);
        assert_eq!(h.last_10s(7 * S).count, 1);
        // Arrives after the window was computed for this second.
        h.record(6 * S, 20);
        assert_eq!(h.last_10s(7 * S).count, 2);
        assert_eq!(h.last_1s(7 * S).max, 20);
        // A value older than the ring is in the session only.
        h.record(30 * S, 1);
        h.record(S, 1);
        assert_eq!(h.session().count, 4);
        assert_eq!(h.last_10s(31 * S).count, 1);
    }

    #[test]
    fn huge_values_are_counted_and_max_stays_exact() {
        let mut h = WindowedHistogram::new();
        h.record(0, 10 * MAX_TRACKED_NS);
        h.record(0, 5);
        let p = h.session();
        assert_eq!((p.count, p.min, p.max), (2, 5, 10 * MAX_TRACKED_NS));
    }

    #[test]
    fn buckets_are_log_spaced_and_hold_every_value() {
        let mut h = WindowedHistogram::new();
        for v in [1, 100, 129, 250, 5000, 5001, 1_000_000] {
            h.record(0, v);
        }
        let b = h.buckets();
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 7);
        assert!(b.windows(2).all(|w| w[0].upper_ns < w[1].upper_ns));
        assert!(b.iter().all(|b| b.count > 0), "empty buckets left out");
        assert_eq!(
            b[0],
            Bucket {
                upper_ns: 127,
                count: 2
            }
        );
        assert_eq!(
            b[1],
            Bucket {
                upper_ns: 255,
                count: 2
            }
        );
        assert_eq!(b.last().unwrap().upper_ns, (FIRST_BUCKET_NS << 13) - 1);
        assert!(h.latency(S).histogram == b);
    }

    /// The nearest-rank percentile of sorted values.
    fn rank(sorted: &[u64], q: f64) -> u64 {
        let r = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[r - 1]
    }

    proptest! {
        #[test]
        fn percentiles_match_a_sort_within_the_resolution(
            values in proptest::collection::vec(1u64..50_000_000_000, 1..2000)
        ) {
            let mut h = WindowedHistogram::new();
            for &v in &values {
                h.record(3 * S, v);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let p = h.session();
            prop_assert_eq!(p.count, values.len() as u64);
            prop_assert_eq!(p.min, sorted[0]);
            prop_assert_eq!(p.max, *sorted.last().unwrap());
            for (got, q) in [(p.p50, 0.5), (p.p90, 0.9), (p.p99, 0.99), (p.p999, 0.999)] {
                let want = rank(&sorted, q);
                let err = got.abs_diff(want) as f64 / want as f64;
                prop_assert!(err <= 1e-3, "q {}: got {} want {}", q, got, want);
            }
            prop_assert_eq!(h.last_1s(4 * S).count, values.len() as u64);
            prop_assert_eq!(h.last_10s(4 * S).p50, h.last_1s(4 * S).p50);
        }
    }
}
