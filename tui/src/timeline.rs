//! The replay cursor: where in a recorded session the screens are, and how
//! fast it moves. Pure state; the run loop asks the source for the snapshot
//! at [`Timeline::cursor`].

use std::time::Duration;

/// Replay speeds, slowest first.
pub const SPEEDS: [f64; 9] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const NORMAL_SPEED: usize = 2;

/// A moment worth jumping to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub at_ns: u64,
    pub kind: MarkKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// A deadlock was detected.
    Deadlock,
    /// Events were lost.
    Drop,
}

/// Play, pause, speed and seek over a session's span.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    start_ns: u64,
    end_ns: u64,
    cursor_ns: u64,
    playing: bool,
    speed: usize,
    /// In time order.
    marks: Vec<Mark>,
}

impl Timeline {
    /// A paused timeline at the end of `span` (start, end in monotonic
    /// ns): a replay opens on the whole session, and playing starts it
    /// over. A span that ends before it starts (a broken source) is taken
    /// as empty rather than trusted.
    pub fn new((start_ns, end_ns): (u64, u64)) -> Self {
        let end_ns = end_ns.max(start_ns);
        Timeline {
            start_ns,
            end_ns,
            cursor_ns: end_ns,
            playing: false,
            speed: NORMAL_SPEED,
            marks: Vec::new(),
        }
    }

    /// The timeline with `marks` to show and jump to (those outside the
    /// span are left out).
    pub fn with_marks(mut self, mut marks: Vec<Mark>) -> Self {
        marks.retain(|m| (self.start_ns..=self.end_ns).contains(&m.at_ns));
        marks.sort_by_key(|m| m.at_ns);
        self.marks = marks;
        self
    }

    /// The marks, in time order.
    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// Moves the cursor to the next mark after it, if there is one.
    pub fn to_next_mark(&mut self) {
        if let Some(m) = self.marks.iter().find(|m| m.at_ns > self.cursor_ns) {
            self.cursor_ns = m.at_ns;
        }
    }

    /// Moves the cursor to the last mark before it, if there is one.
    pub fn to_previous_mark(&mut self) {
        if let Some(m) = self.marks.iter().rev().find(|m| m.at_ns < self.cursor_ns) {
            self.cursor_ns = m.at_ns;
        }
    }

    /// Where `at_ns` falls in the span, 0.0..=1.0.
    pub fn ratio_of(&self, at_ns: u64) -> f64 {
        let len = self.end_ns - self.start_ns;
        if len == 0 {
            return 1.0;
        }
        (at_ns.clamp(self.start_ns, self.end_ns) - self.start_ns) as f64 / len as f64
    }

    /// The session's start and end (monotonic ns).
    pub fn span(&self) -> (u64, u64) {
        (self.start_ns, self.end_ns)
    }

    /// The moment shown (monotonic ns).
    pub fn cursor(&self) -> u64 {
        self.cursor_ns
    }

    /// Whether the cursor moves with the clock.
    pub fn playing(&self) -> bool {
        self.playing
    }

    /// The speed factor (1.0 is real time).
    pub fn speed(&self) -> f64 {
        SPEEDS[self.speed]
    }

    /// Plays or pauses; playing from the end starts over.
    pub fn toggle_play(&mut self) {
        if !self.playing && self.cursor_ns >= self.end_ns {
            self.cursor_ns = self.start_ns;
        }
        self.playing = !self.playing;
    }

    /// The next speed up, if there is one.
    pub fn faster(&mut self) {
        self.speed = (self.speed + 1).min(SPEEDS.len() - 1);
    }

    /// The next speed down, if there is one.
    pub fn slower(&mut self) {
        self.speed = self.speed.saturating_sub(1);
    }

    /// Moves the cursor by `secs` (either way), clamped to the span.
    pub fn seek(&mut self, secs: i32) {
        let delta = u64::from(secs.unsigned_abs()) * 1_000_000_000;
        self.cursor_ns = if secs < 0 {
            self.cursor_ns.saturating_sub(delta).max(self.start_ns)
        } else {
            self.cursor_ns.saturating_add(delta).min(self.end_ns)
        };
    }

    /// Moves the cursor to the start.
    pub fn to_start(&mut self) {
        self.cursor_ns = self.start_ns;
    }

    /// Moves the cursor to the end.
    pub fn to_end(&mut self) {
        self.cursor_ns = self.end_ns;
    }

    /// Advances a playing cursor by `wall` real time at the current speed;
    /// stops at the end.
    pub fn advance(&mut self, wall: Duration) {
        if !self.playing {
            return;
        }
        let step = (wall.as_nanos() as f64 * self.speed()) as u64;
        self.cursor_ns = self.cursor_ns.saturating_add(step).min(self.end_ns);
        if self.cursor_ns >= self.end_ns {
            self.playing = false;
        }
    }

    /// How far through the span the cursor is, 0.0..=1.0.
    pub fn ratio(&self) -> f64 {
        self.ratio_of(self.cursor_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn playing_advances_at_speed_and_stops_at_the_end() {
        let mut t = Timeline::new((10 * S, 20 * S));
        assert_eq!(t.cursor(), 20 * S, "it opens on the whole session");
        t.to_start();
        t.advance(Duration::from_secs(1));
        assert_eq!(t.cursor(), 10 * S, "a paused timeline does not move");
        t.toggle_play();
        t.faster();
        t.advance(Duration::from_millis(500));
        assert_eq!(t.cursor(), 11 * S, "half a second at 2x");
        t.advance(Duration::from_secs(60));
        assert_eq!(t.cursor(), 20 * S);
        assert!(!t.playing(), "the end pauses");
        t.toggle_play();
        assert_eq!(t.cursor(), 10 * S, "playing from the end starts over");
    }

    #[test]
    fn seeking_and_speed_stay_in_bounds() {
        let mut t = Timeline::new((S, 5 * S));
        t.seek(-30);
        assert_eq!(t.cursor(), S);
        t.seek(2);
        assert_eq!(t.cursor(), 3 * S);
        t.seek(i32::MAX);
        assert_eq!(t.cursor(), 5 * S);
        t.to_start();
        assert_eq!(t.ratio(), 0.0);
        for _ in 0..20 {
            t.slower();
        }
        assert_eq!(t.speed(), SPEEDS[0]);
        for _ in 0..20 {
            t.faster();
        }
        assert_eq!(t.speed(), 64.0);
    }

    #[test]
    fn marks_are_jumped_to_in_time_order() {
        let mark = |s: u64, kind| Mark { at_ns: s * S, kind };
        let mut t = Timeline::new((0, 10 * S)).with_marks(vec![
            mark(7, MarkKind::Drop),
            mark(3, MarkKind::Deadlock),
            mark(12, MarkKind::Drop),
        ]);
        assert_eq!(t.marks().len(), 2, "one outside the span");
        t.to_next_mark();
        assert_eq!(t.cursor(), 10 * S, "none after the end");
        t.to_previous_mark();
        assert_eq!(t.cursor(), 7 * S);
        t.to_previous_mark();
        assert_eq!(t.cursor(), 3 * S);
        t.to_previous_mark();
        assert_eq!(t.cursor(), 3 * S, "none before the first");
        t.to_next_mark();
        assert_eq!(t.cursor(), 7 * S);
    }

    #[test]
    fn a_backwards_span_is_empty() {
        let t = Timeline::new((5 * S, S));
        assert_eq!(t.span(), (5 * S, 5 * S));
        assert_eq!(t.ratio(), 1.0);
    }
}
