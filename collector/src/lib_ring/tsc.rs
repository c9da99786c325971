//! Raw time-stamp counter readings from ipc-lib rings, turned into the
//! CLOCK_MONOTONIC nanoseconds every event carries.
//!
//! ipc-lib stamps events with `rdtsc` where the TSC is invariant and the
//! kernel keeps time with it (see `ipc_events::ring::clock::TSC`): a third
//! of what `clock_gettime` costs. Every process on the machine reads the
//! same counter, so the collector alone calibrates it: it takes (TSC,
//! CLOCK_MONOTONIC) pairs as it drains, each pair a clock read between two
//! counter reads (the tightest of a few tries), and converts a reading by
//! linear interpolation between the pairs around it.
//!
//! Pairs are a millisecond apart while rings are drained (every drain takes
//! one, whether its records hold TSC readings or not; one taken sooner
//! after the one before replaces the newest), so a
//! conversion is off by a pair's own error (half its TSC window, some
//! nanoseconds) plus how far the kernel's rate wanders within a
//! millisecond (NTP slews it by at most 500 ppm: half a microsecond, and
//! in practice nanoseconds). A drain takes its pair after reading its
//! records, so every honest reading falls between two pairs. One
//! calibration serves every ring and converts monotonically, so readings
//! keep their order whichever rings they came from; only a newest pair
//! replaced between two conversions can move a reading, by the pairs'
//! own error (tens of nanoseconds, far below the gap between a send's
//! stamp and its receive's). Readings outside the pairs
//! (only a broken or hostile writer makes them) are extrapolated along
//! the whole span, saturating: never a panic, never another process's
//! problem.

use std::collections::VecDeque;
use std::sync::Mutex;

/// One reading of both clocks at (about) the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub tsc: u64,
    pub ns: u64,
}

/// Pairs closer than this replace the newest rather than add to the
/// history.
const MIN_SPACING_NS: u64 = 1_000_000;
/// Pairs kept besides the first: at least four seconds of history at
/// [`MIN_SPACING_NS`]. A reading older than all of them (a thread that
/// stamped an event and then did not run for seconds) is interpolated
/// between the first pair and the oldest kept.
const MAX_PAIRS: usize = 4096;

/// The pairs a conversion interpolates between: the first ever taken,
/// then the latest [`MAX_PAIRS`], both coordinates strictly increasing.
#[derive(Debug, Clone)]
pub struct Calibration {
    pairs: VecDeque<Pair>,
}

impl Calibration {
    pub fn new(first: Pair) -> Calibration {
        Calibration {
            pairs: VecDeque::from([first]),
        }
    }

    /// The latest pair.
    pub fn newest(&self) -> Pair {
        self.pairs[self.pairs.len() - 1]
    }

    /// Adds a pair taken after every other; one that does not move both
    /// clocks forward is ignored.
    pub fn push(&mut self, pair: Pair) {
        let newest = self.newest();
        if pair.tsc <= newest.tsc || pair.ns <= newest.ns {
            return;
        }
        let n = self.pairs.len();
        if n >= 3 && newest.ns - self.pairs[n - 2].ns < MIN_SPACING_NS {
            self.pairs[n - 1] = pair;
            return;
        }
        self.pairs.push_back(pair);
        if self.pairs.len() > MAX_PAIRS + 1 {
            // Keep the first: the long segment for very old readings.
            if let Some(first) = self.pairs.pop_front() {
                self.pairs.pop_front();
                self.pairs.push_front(first);
            }
        }
    }

    /// `tsc` in CLOCK_MONOTONIC nanoseconds.
    pub fn to_ns(&self, tsc: u64) -> u64 {
        let first = self.pairs[0];
        let newest = self.newest();
        if self.pairs.len() == 1 {
            // No rate known yet: only a reading of this very moment
            // converts, anything else is clamped to it.
            return first.ns;
        }
        if tsc < first.tsc {
            let back = scale(first.tsc - tsc, first, newest);
            return first.ns.saturating_sub(back);
        }
        if tsc >= newest.tsc {
            let ahead = scale(tsc - newest.tsc, first, newest);
            return newest.ns.saturating_add(ahead);
        }
        // The first pair after tsc; 1 <= i < len since first.tsc <= tsc <
        // newest.tsc.
        let i = self.pairs.partition_point(|p| p.tsc <= tsc);
        let (a, b) = (self.pairs[i - 1], self.pairs[i]);
        a.ns + scale(tsc - a.tsc, a, b)
    }
}

/// `ticks` in nanoseconds at the rate between pairs `a` and `b` (`b`
/// after `a` in both clocks), rounded to nearest, saturating.
fn scale(ticks: u64, a: Pair, b: Pair) -> u64 {
    let (dt, dn) = (u128::from(b.tsc - a.tsc), u128::from(b.ns - a.ns));
    let ns = (u128::from(ticks) * dn + dt / 2) / dt;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Both clocks now: CLOCK_MONOTONIC between two TSC reads, the tightest
/// of a few tries (a try that was interrupted or preempted is wide), the
/// TSC taken at the middle. `None` where there is no TSC.
pub fn sample() -> Option<Pair> {
    #[cfg(target_arch = "x86_64")]
    {
        use ipc_events::ring::tsc;
        let mut best: Option<(u64, Pair)> = None;
        for _ in 0..5 {
            let before = tsc();
            let ns = crate::clock::monotonic_ns();
            let after = tsc();
            let window = after.wrapping_sub(before);
            if after < before || best.is_some_and(|(w, _)| w <= window) {
                continue;
            }
            let pair = Pair {
                tsc: before + window / 2,
                ns,
            };
            best = Some((window, pair));
        }
        best.map(|(_, pair)| pair)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The collector's one calibration, shared by every ring.
static CALIBRATION: Mutex<Option<Calibration>> = Mutex::new(None);

/// Starts the calibration if it has not started: before a ring is
/// accepted, so that its first pair comes before any of its readings.
pub fn start() {
    let mut calibration = CALIBRATION.lock().unwrap_or_else(|e| e.into_inner());
    if calibration.is_none() {
        *calibration = sample().map(Calibration::new);
    }
}

/// Takes a pair now and hands the calibration, that pair included, to
/// `f`: for a drain's records, read before this call. `None` when this
/// machine has no TSC, and `f` was not called.
pub fn with_calibration<R>(f: impl FnOnce(&Calibration) -> R) -> Option<R> {
    let pair = sample()?;
    let mut calibration = CALIBRATION.lock().unwrap_or_else(|e| e.into_inner());
    let calibration = calibration.get_or_insert_with(|| Calibration::new(pair));
    calibration.push(pair);
    Some(f(calibration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 2.5 GHz counter started 1 s before the monotonic clock's zero.
    fn at(ns: u64) -> Pair {
        Pair {
            tsc: 2_500_000_000 + ns * 5 / 2,
            ns,
        }
    }

    /// A counter whose rate against the monotonic clock changes every
    /// millisecond (2.5 then 2 ticks per ns), as a slewed clock's does.
    fn wavy(ns: u64) -> u64 {
        let ms = ns / 1_000_000;
        let whole: u64 = (0..ms)
            .map(|m| {
                if m.is_multiple_of(2) {
                    2_500_000
                } else {
                    2_000_000
                }
            })
            .sum();
        let part = ns % 1_000_000;
        whole
            + if ms.is_multiple_of(2) {
                part * 5 / 2
            } else {
                part * 2
            }
    }

    #[test]
    fn each_reading_is_interpolated_between_the_pairs_around_it() {
        let mut c = Calibration::new(Pair {
            tsc: wavy(0),
            ns: 0,
        });
        for ms in 1..20 {
            let ns = ms * 1_000_000;
            c.push(Pair { tsc: wavy(ns), ns });
        }
        for ns in [1, 999_998, 1_000_002, 7_654_320, 18_999_998] {
            assert_eq!(c.to_ns(wavy(ns)), ns);
        }
    }

    #[test]
    fn readings_between_pairs_are_interpolated_exactly() {
        let mut c = Calibration::new(at(1_000_000));
        for ms in 2..50 {
            c.push(at(ms * 1_000_000));
        }
        for ns in [1_000_000, 1_234_568, 17_000_002, 48_999_998, 49_000_000] {
            assert_eq!(c.to_ns(at(ns).tsc), ns);
        }
        // Beyond the pairs, along the same rate.
        assert_eq!(c.to_ns(at(60_000_000).tsc), 60_000_000);
        assert_eq!(c.to_ns(at(2_000).tsc), 2_000);
    }

    #[test]
    fn close_pairs_replace_the_newest_and_old_ones_give_way() {
        let mut c = Calibration::new(at(0));
        c.push(at(1_000_000));
        c.push(at(2_000_000));
        c.push(at(2_000_500));
        c.push(at(2_001_000));
        assert_eq!(c.pairs.len(), 4);
        assert_eq!(c.newest(), at(2_001_000));
        for ms in 3..(MAX_PAIRS as u64 + 100) {
            c.push(at(ms * 1_000_000));
        }
        assert_eq!(c.pairs.len(), MAX_PAIRS + 1);
        assert_eq!(c.pairs[0], at(0), "the first pair stays");
        assert_eq!(c.to_ns(at(500_000).tsc), 500_000);
    }

    #[test]
    fn pairs_that_do_not_move_forward_are_ignored() {
        let mut c = Calibration::new(at(5_000_000));
        c.push(at(4_000_000));
        c.push(Pair {
            tsc: at(6_000_000).tsc,
            ns: 5_000_000,
        });
        assert_eq!(c.pairs.len(), 1);
        assert_eq!(c.to_ns(12345), 5_000_000, "no rate yet: clamped");
    }

    #[test]
    fn the_machines_tsc_converts_to_its_monotonic_clock() {
        let Some(first) = sample() else {
            return; // no TSC here
        };
        let mut c = Calibration::new(first);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.push(sample().unwrap());
        let mid = sample().unwrap();
        let converted = c.to_ns(mid.tsc);
        // Extrapolated by a few ms along a 20 ms rate; each pair's error
        // is tens of ns.
        assert!(
            converted.abs_diff(mid.ns) < 1_000,
            "{converted} vs {}",
            mid.ns
        );
    }

    proptest! {
        /// Whatever the pairs and readings (a hostile ring chooses the
        /// readings), conversion never panics, and a later reading never
        /// converts to an earlier time.
        #[test]
        fn conversion_is_total_and_monotone(
            pairs in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..40),
            mut readings in proptest::collection::vec(any::<u64>(), 1..40),
        ) {
            let mut pairs: Vec<Pair> = pairs.into_iter().map(|(tsc, ns)| Pair { tsc, ns }).collect();
            pairs.sort_by_key(|p| p.tsc);
            let mut c = Calibration::new(pairs[0]);
            for p in &pairs[1..] {
                c.push(*p);
            }
            readings.sort_unstable();
            let converted: Vec<u64> = readings.iter().map(|&r| c.to_ns(r)).collect();
            prop_assert!(converted.windows(2).all(|w| w[0] <= w[1]), "{converted:?}");
        }
    }
}
