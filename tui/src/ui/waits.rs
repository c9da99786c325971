//! Waits and deadlocks: the most contended objects with the selected one's
//! wait histogram, then active and past deadlocks drawn as paths.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Wrap};
use ratatui::Frame;

use super::{block, header, TableView};
use crate::app::{App, Screen};
use crate::format;
use crate::widgets::cycle::cycle_path;
use crate::widgets::histogram::Histogram;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(s) = app.view() else {
        return;
    };
    let [table, hist, dead] = Layout::vertical([
        Constraint::Percentage(40),
        Constraint::Length(7),
        Constraint::Min(4),
    ])
    .areas(area);

    let rows = app.wait_rows();
    let selected = app.selected(Screen::Waits);
    let w = app.window();
    TableView {
        block: block(format!(
            "Contended objects ({}, window {})",
            rows.len(),
            w.label()
        )),
        head: Some(header(&[
            "Object", "waits", "now", "total", "p50", "p99", "max",
        ])),
        widths: &[
            Constraint::Min(16),
            Constraint::Length(7),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
        len: rows.len(),
        selected: Some(selected),
    }
    .render(frame, table, |i| {
        let r = rows[i];
        let l = w.latency(&r.latency);
        Row::new(vec![
            format::channel(&r.channel),
            format::count(r.waits),
            r.waiting_now.to_string(),
            // Time spent in finished waits: with none finished (those
            // blocked now are not in it), unknown rather than 0 ns.
            format::latency(r.waits, r.total_ns),
            format::latency(l.count, l.p50),
            format::latency(l.count, l.p99),
            format::latency(l.count, l.max),
        ])
    });

    let (title, buckets) = match rows.get(selected) {
        Some(r) => (
            format!("Waits on {}", format::channel(&r.channel)),
            &r.latency.histogram[..],
        ),
        None => ("Waits".to_owned(), &[][..]),
    };
    let hist_block = block(title);
    frame.render_widget(Histogram::new(buckets), hist_block.inner(hist));
    frame.render_widget(hist_block, hist);

    let mut lines = Vec::new();
    // Active first: they are why anyone opens this screen.
    let mut deadlocks: Vec<_> = s.deadlocks.iter().collect();
    deadlocks.sort_by_key(|d| (d.resolved_ns.is_some(), std::cmp::Reverse(d.detected_ns)));
    for d in deadlocks {
        let state = match d.resolved_ns {
            None => Span::styled(
                format!(
                    "ACTIVE for {}",
                    format::duration_ns(s.now_ns.saturating_sub(d.detected_ns))
                ),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Some(r) => Span::raw(format!(
                "resolved after {}",
                format::duration_ns(r.saturating_sub(d.detected_ns))
            )),
        };
        lines.push(Line::from(vec![
            state,
            Span::raw(format!(
                " (detected {})",
                format::offset(d.detected_ns, s.started_ns)
            )),
        ]));
        let mut path = cycle_path(d);
        path.spans.insert(0, Span::raw("  "));
        lines.push(path);
    }
    for inv in &s.inversions {
        lines.push(Line::styled(
            format!(
                "lock order: pid {} took {} then {}; pid {} the other way",
                inv.first_pid, inv.first.name, inv.second.name, inv.second_pid
            ),
            Style::new().fg(Color::Yellow),
        ));
    }
    if lines.is_empty() {
        lines.push(Line::from("no deadlocks"));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(format!("Deadlocks ({})", s.deadlocks.len()))),
        dead,
    );
}
