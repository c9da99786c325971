//! A latency histogram as horizontal bars, one bucket a line: the bound,
//! a bar scaled to the fullest bucket, and the count.

use ipc_events::live::Bucket;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::Widget;

use crate::format;

/// The buckets of a [`ipc_events::live::Latency`] histogram.
#[derive(Clone, Copy, Debug)]
pub struct Histogram<'a> {
    buckets: &'a [Bucket],
}

impl<'a> Histogram<'a> {
    /// A histogram of `buckets`, fastest first.
    pub fn new(buckets: &'a [Bucket]) -> Self {
        Histogram { buckets }
    }
}

/// `"≤" + "20.0 µs"` and a space: the widest bound label.
const LABEL: usize = 9;
/// A space and `"12.3k"`.
const COUNT: usize = 6;

impl Widget for Histogram<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            buf.set_stringn(
                area.x,
                area.y,
                "no samples",
                area.width.into(),
                Style::new(),
            );
            return;
        }
        let rows = usize::from(area.height);
        // Too many buckets for the area: show the slowest ones, where the
        // tail that matters lives.
        let shown = &self.buckets[self.buckets.len().saturating_sub(rows)..];
        let fullest = shown.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        let bar_width = usize::from(area.width).saturating_sub(LABEL + COUNT + 1);
        for (row, bucket) in shown.iter().enumerate() {
            let y = area.y + row as u16;
            let label = format!(
                "≤{:>w$} ",
                format::duration_ns(bucket.upper_ns),
                w = LABEL - 2
            );
            let (x, _) = buf.set_stringn(area.x, y, &label, area.width.into(), Style::new());
            // Round up so a bucket with any samples shows at least a sliver.
            let len = (bucket.count as u128 * bar_width as u128).div_ceil(fullest as u128) as usize;
            let bar = "█".repeat(len.min(bar_width));
            let (x, _) = buf.set_stringn(
                x,
                y,
                format!("{bar:<bar_width$} "),
                usize::from(area.right().saturating_sub(x)),
                Style::new().fg(Color::Cyan),
            );
            buf.set_stringn(
                x,
                y,
                format!("{:>COUNT$}", format::count(bucket.count)),
                usize::from(area.right().saturating_sub(x)),
                Style::new(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(buckets: &[Bucket], w: u16, h: u16) -> Buffer {
        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
        Histogram::new(buckets).render(buf.area, &mut buf);
        buf
    }

    #[test]
    fn bars_scale_to_the_fullest_bucket() {
        let buckets = [
            Bucket {
                upper_ns: 1_000,
                count: 10,
            },
            Bucket {
                upper_ns: 2_000_000,
                count: 5,
            },
            Bucket {
                upper_ns: 4_000_000,
                count: 1,
            },
        ];
        let mut expected = Buffer::with_lines([
            "≤1.00 µs █████████     10",
            "≤2.00 ms █████          5",
            "≤4.00 ms █              1",
        ]);
        for y in 0..3 {
            for x in 9..19 {
                expected[(x, y)].set_fg(Color::Cyan);
            }
        }
        assert_eq!(render(&buckets, 25, 3), expected);
    }

    #[test]
    fn a_short_area_keeps_the_slowest_buckets() {
        let buckets: Vec<_> = (1..=4)
            .map(|i| Bucket {
                upper_ns: i * 1_000,
                count: 1,
            })
            .collect();
        let buf = render(&buckets, 20, 2);
        let first: String = (0..9).map(|x| buf[(x, 0)].symbol()).collect();
        assert_eq!(first, "≤3.00 µs ");
    }

    #[test]
    fn no_buckets_says_so() {
        let buf = render(&[], 12, 1);
        assert_eq!(buf, Buffer::with_lines(["no samples  "]));
    }
}
