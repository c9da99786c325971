//! Frame times: how long each redraw took, kept for the last few seconds so
//! the footer (and the render bench) can show a median and a p99.

use std::time::Duration;

/// A ring of the most recent frame durations.
#[derive(Clone, Debug)]
pub struct FrameTimes {
    ring: Vec<Duration>,
    next: usize,
}

impl FrameTimes {
    /// How many frames are kept: about 25 s at 10 Hz.
    pub const KEEP: usize = 256;

    /// An empty ring.
    pub fn new() -> Self {
        FrameTimes {
            ring: Vec::with_capacity(Self::KEEP),
            next: 0,
        }
    }

    /// Records one frame's duration, replacing the oldest once full.
    pub fn record(&mut self, d: Duration) {
        if self.ring.len() < Self::KEEP {
            self.ring.push(d);
        } else {
            self.ring[self.next] = d;
        }
        self.next = (self.next + 1) % Self::KEEP;
    }

    /// The `q`-quantile (0.0..=1.0) of the kept frames, nearest rank; `None`
    /// before the first frame.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.ring, q)
    }
}

impl Default for FrameTimes {
    fn default() -> Self {
        Self::new()
    }
}

/// The nearest-rank `q`-quantile of `samples` (which need not be sorted).
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank_of_the_kept_frames() {
        let mut t = FrameTimes::new();
        assert_eq!(t.quantile(0.99), None);
        for ms in 1..=100 {
            t.record(Duration::from_millis(ms));
        }
        assert_eq!(t.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(t.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(t.quantile(1.0), Some(Duration::from_millis(100)));
    }

    #[test]
    fn only_the_newest_frames_count() {
        let mut t = FrameTimes::new();
        t.record(Duration::from_secs(9));
        for _ in 0..FrameTimes::KEEP {
            t.record(Duration::from_millis(1));
        }
        assert_eq!(t.quantile(1.0), Some(Duration::from_millis(1)));
    }
}
