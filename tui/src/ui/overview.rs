//! Overview: totals, the throughput sparkline, the busiest channels, and a
//! red banner while a deadlock is active.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Sparkline};
use ratatui::Frame;

use super::{block, header, TableView};
use crate::app::App;
use crate::format;
use crate::widgets::cycle::cycle_path;

/// How far behind the writer must be, at the last second's rate, for the
/// overview to say so.
const UNSTORED_WARN_NS: u64 = 500_000_000;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(s) = app.view() else {
        return;
    };
    let active: Vec<_> = s.active_deadlocks().collect();
    let [banner, totals, spark, top] = Layout::vertical([
        Constraint::Length(u16::from(!active.is_empty())),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Min(3),
    ])
    .areas(area);

    if let Some(d) = active.first() {
        let mut spans = vec![Span::raw(format!(
            " DEADLOCK ({} active) since {}: ",
            active.len(),
            format::offset(d.detected_ns, s.started_ns)
        ))];
        spans.extend(
            cycle_path(d)
                .spans
                .into_iter()
                .map(|sp| Span::raw(sp.content)),
        );
        frame.render_widget(
            Paragraph::new(Line::from(spans)).style(
                Style::new()
                    .bg(Color::Red)
                    .fg(Color::White)
                    .add_modifier(Modifier::BOLD),
            ),
            banner,
        );
    }

    let t = &s.totals;
    let label = |l: &'static str| Span::styled(l, Style::new().fg(Color::Cyan));
    let drops = if t.drops > 0 {
        // Lost events are never silent: how many, and where they were lost.
        let by_source: Vec<String> = s
            .drops
            .iter()
            .filter(|d| d.count > 0)
            .map(|d| format!("{} {}", d.source, format::count(d.count)))
            .collect();
        Span::styled(
            format!("{} ({})", format::count(t.drops), by_source.join(", ")),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    } else {
        Span::raw("0")
    };
    let mut lines = vec![
        Line::from(vec![
            label("events/s "),
            Span::raw(format!("{:<8}", format::per_s(s.rate_1s.events_per_s))),
            label("messages/s "),
            Span::raw(format!("{:<8}", format::per_s(s.rate_1s.messages_per_s))),
            label("bytes/s "),
            Span::raw(format::bytes_per_s(s.rate_1s.bytes_per_s)),
        ]),
        Line::from(vec![
            label("processes "),
            Span::raw(format!("{}  ", t.processes)),
            label("channels "),
            Span::raw(format!("{}  ", t.channels)),
            label("messages "),
            Span::raw(format!("{}  ", format::count(t.messages))),
            label("drops "),
            drops,
        ]),
    ];
    // The disk is behind: what is shown is ahead of what is stored. A
    // transaction in flight always holds a few tens of milliseconds of
    // events; only a lag of half a second or more is worth a warning.
    let behind_ns = match s.rate_1s.events_per_s {
        r if r > 0.0 => (t.unstored as f64 / r * 1e9) as u64,
        _ => u64::MAX,
    };
    if t.unstored > 0 && behind_ns >= UNSTORED_WARN_NS {
        let behind = match behind_ns {
            u64::MAX => String::new(),
            ns => format!(" ({} behind)", format::duration_ns(ns)),
        };
        lines[1].spans.extend([
            Span::raw("  "),
            label("not yet stored "),
            Span::styled(
                format!("{}{behind}", format::count(t.unstored)),
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ),
        ]);
    }
    let title = format!("Session {} {}", s.session_id, s.session_name);
    frame.render_widget(Paragraph::new(lines).block(block(title)), totals);

    let data: Vec<u64> = s.seconds.iter().map(|sec| sec.messages).collect();
    let peak = data.iter().max().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(block(format!(
                "messages/s, last {} s (peak {})",
                data.len(),
                format::count(peak)
            )))
            .data(&data)
            .style(Style::new().fg(Color::Green)),
        spark,
    );

    let rows = app.channel_rows();
    let elapsed = app.elapsed_ns();
    let w = app.window();
    TableView {
        block: block(format!("Top channels ({})", app.sort().0.label())),
        head: Some(header(&["Channel", "msg/s", "bytes/s", "p99"])),
        widths: &[
            Constraint::Min(20),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(9),
        ],
        len: rows.len(),
        selected: None,
    }
    .render(frame, top, |i| {
        let c = rows[i];
        let r = w.rates(c, elapsed);
        Row::new(vec![
            format::channel(&c.channel),
            format::per_s(r.messages_per_s),
            format::bytes_per_s(r.bytes_per_s),
            {
                let l = w.latency(&c.latency);
                format::latency(l.count, l.p99)
            },
        ])
    });
}
