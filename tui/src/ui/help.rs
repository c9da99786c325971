//! The `?` overlay: key bindings and the measured frame time.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, popup};
use crate::action;
use crate::app::App;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let keys = action::help(app.timeline().is_some());
    let mut lines: Vec<Line<'_>> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<20}"), Style::new().fg(Color::Yellow)),
                Span::raw(*what),
            ])
        })
        .collect();
    let q = |q| {
        app.frame_times.quantile(q).map_or("-".to_owned(), |d| {
            format!("{:.2} ms", d.as_secs_f64() * 1e3)
        })
    };
    lines.push(Line::from(format!(
        "frame time: median {}, p99 {}",
        q(0.5),
        q(0.99)
    )));
    let at = popup(frame, area, 76, lines.len() as u16 + 2);
    frame.render_widget(Paragraph::new(lines).block(block("Help (Esc closes)")), at);
}
