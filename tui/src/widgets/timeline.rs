//! The replay timeline: play state, speed, position and a bar.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::Widget;

use crate::format;
use crate::timeline::{MarkKind, Timeline};

/// Draws a [`Timeline`] on one line:
/// `▶ 2x +3.000s ━━━━━●──────── +10.000s`.
#[derive(Clone, Copy, Debug)]
pub struct TimelineBar<'a> {
    timeline: &'a Timeline,
}

impl<'a> TimelineBar<'a> {
    /// The bar for `timeline`.
    pub fn new(timeline: &'a Timeline) -> Self {
        TimelineBar { timeline }
    }
}

impl Widget for TimelineBar<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.is_empty() {
            return;
        }
        let t = self.timeline;
        let (start, end) = t.span();
        let state = if t.playing() { "▶" } else { "⏸" };
        let head = format!(
            "{state} {}x {} ",
            t.speed(),
            format::offset(t.cursor(), start)
        );
        let tail = format!(" {}", format::offset(end, start));
        let width = usize::from(area.width);
        let (x, _) = buf.set_stringn(area.x, area.y, &head, width, Style::new().fg(Color::Green));
        let bar_width = width
            .saturating_sub(head.chars().count() + tail.chars().count())
            .max(1);
        let at =
            |ratio: f64| ((ratio * (bar_width - 1) as f64).round() as usize).min(bar_width - 1);
        let done = at(t.ratio());
        let bar = format!("{}●{}", "━".repeat(done), "─".repeat(bar_width - 1 - done));
        let room = |x: u16| usize::from(area.right().saturating_sub(x));
        let bar_x = x;
        let (x, _) = buf.set_stringn(x, area.y, bar, room(x), Style::new().fg(Color::Cyan));
        buf.set_stringn(x, area.y, tail, room(x), Style::new());
        // Marks over the bar, but never over the knob.
        for mark in t.marks() {
            let pos = at(t.ratio_of(mark.at_ns));
            let Ok(offset) = u16::try_from(pos) else {
                continue;
            };
            let (symbol, color) = match mark.kind {
                MarkKind::Deadlock => ("◆", Color::Red),
                MarkKind::Drop => ("!", Color::Yellow),
            };
            if pos != done && bar_x + offset < x {
                buf.set_string(bar_x + offset, area.y, symbol, Style::new().fg(color));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Mark;

    #[test]
    fn deadlocks_and_drops_are_marked_on_the_bar() {
        let s = 1_000_000_000;
        let mut t = Timeline::new((0, 10 * s)).with_marks(vec![
            Mark {
                at_ns: 2 * s,
                kind: MarkKind::Deadlock,
            },
            Mark {
                at_ns: 8 * s,
                kind: MarkKind::Drop,
            },
        ]);
        t.seek(-5);
        let mut buf = Buffer::empty(Rect::new(0, 0, 40, 1));
        TimelineBar::new(&t).render(buf.area, &mut buf);
        let line: String = (0..40).map(|x| buf[(x, 0)].symbol()).collect();
        assert_eq!(line, "⏸ 1x +5.000s ━━━◆━━━━━●────!─── +10.000s");
    }

    #[test]
    fn the_knob_sits_at_the_cursor() {
        let s = 1_000_000_000;
        let mut t = Timeline::new((0, 10 * s));
        t.seek(-5);
        t.toggle_play();
        let mut buf = Buffer::empty(Rect::new(0, 0, 40, 1));
        TimelineBar::new(&t).render(buf.area, &mut buf);
        let mut expected = Buffer::with_lines(["▶ 1x +5.000s ━━━━━━━━━●──────── +10.000s"]);
        expected.set_style(Rect::new(0, 0, 13, 1), Style::new().fg(Color::Green));
        expected.set_style(Rect::new(13, 0, 18, 1), Style::new().fg(Color::Cyan));
        assert_eq!(buf, expected);
    }
}
