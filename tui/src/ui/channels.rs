//! Channels: the sortable table, and the drill-down into one channel
//! (histogram, latency over time, recent messages).

use std::collections::HashMap;

use ipc_events::live::ChannelStats;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph, Row};
use ratatui::Frame;

use super::{block, header, TableView};
use crate::app::{App, Screen};
use crate::format;
use crate::widgets::histogram::Histogram;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    match app.detail_channel() {
        Some(c) => draw_detail(frame, area, app, c),
        None => draw_table(frame, area, app),
    }
}

/// `"101 producer"`, or the bare pid of a process not (yet) known. The
/// pid first: a narrow column cuts the end, and a name (a title such as
/// `postgres: checkpointer`) can be cut where a pid cannot.
pub(super) fn who(comms: &HashMap<u32, &str>, pid: u32) -> String {
    match comms.get(&pid) {
        Some(comm) => format!("{pid} {comm}"),
        None => pid.to_string(),
    }
}

/// `"101,+2"`: the first pid and how many more.
fn pids(p: &[u32]) -> String {
    match p {
        [] => "-".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first},+{}", rest.len()),
    }
}

fn draw_table(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.channel_rows();
    let (sort, reversed) = app.sort();
    let w = app.window();
    let elapsed = app.elapsed_ns();
    let title = format!(
        "Channels {} · sort {}{} · window {}",
        rows.len(),
        sort.label(),
        if reversed { " ↑" } else { "" },
        w.label()
    );
    TableView {
        block: block(title),
        head: Some(header(&[
            "Channel",
            "Snd→Rcv",
            "msg/s",
            "bytes/s",
            "p50",
            "p99",
            "max",
            "queue",
        ])),
        widths: &[
            Constraint::Min(14),
            Constraint::Length(11),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(5),
        ],
        len: rows.len(),
        selected: Some(app.selected(Screen::Channels)),
    }
    .render(frame, area, |i| {
        let c = rows[i];
        let r = w.rates(c, elapsed);
        let l = w.latency(&c.latency);
        Row::new(vec![
            format::channel(&c.channel),
            format!("{}→{}", pids(&c.senders), pids(&c.receivers)),
            format::per_s(r.messages_per_s),
            format::bytes_per_s(r.bytes_per_s),
            format::latency(l.count, l.p50),
            format::latency(l.count, l.p99),
            format::latency(l.count, l.max),
            c.queue_depth.map_or("-".to_owned(), |q| q.to_string()),
        ])
    });
}

fn draw_detail(frame: &mut Frame<'_>, area: Rect, app: &App, c: &ChannelStats) {
    let comms = app.comms();
    let list = |p: &[u32]| {
        p.iter()
            .map(|&pid| who(&comms, pid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let [info, graphs, recent] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Min(4),
    ])
    .areas(area);
    let pct = |name: &str, p: &ipc_events::live::Percentiles| {
        format!(
            "{name:<8} p50 {:<8} p99 {:<8} max {:<8} n {}",
            format::latency(p.count, p.p50),
            format::latency(p.count, p.p99),
            format::latency(p.count, p.max),
            format::count(p.count)
        )
    };
    let lines = vec![
        Line::from(format!(
            "{} → {}   {} messages, {}, queue {}",
            list(&c.senders),
            list(&c.receivers),
            format::count(c.messages),
            format::bytes(c.bytes),
            c.queue_depth.map_or("-".to_owned(), |q| q.to_string())
        )),
        Line::from(pct("1s", &c.latency.last_1s)),
        Line::from(pct("10s", &c.latency.last_10s)),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(block(format!("{} (Esc back)", format::channel(&c.channel)))),
        info,
    );

    let [hist, chart] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(graphs);
    let hist_block = block("Latency histogram (session)");
    frame.render_widget(Histogram::new(&c.latency.histogram), hist_block.inner(hist));
    frame.render_widget(hist_block, hist);
    draw_latency_chart(frame, chart, app, c);

    let start = app.view().map_or(0, |s| s.started_ns);
    TableView {
        block: block("Recent messages, newest first"),
        head: Some(header(&["Sent", "From→To", "Size", "Latency", "Payload"])),
        widths: &[
            Constraint::Length(10),
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Min(10),
        ],
        len: c.recent.len(),
        selected: None,
    }
    .render(frame, recent, |i| {
        let m = &c.recent[c.recent.len() - 1 - i];
        Row::new(vec![
            format::offset(m.sent_ns, start),
            format!("{}→{}", m.sender_pid, m.receiver_pid),
            format::bytes(m.size),
            format::duration_ns(m.latency_ns),
            m.payload.as_deref().map_or("-".to_owned(), format::payload),
        ])
    });
}

/// Latency of each recent message against when it was sent.
fn draw_latency_chart(frame: &mut Frame<'_>, area: Rect, app: &App, c: &ChannelStats) {
    let start = app.view().map_or(0, |s| s.started_ns);
    let points: Vec<(f64, f64)> = c
        .recent
        .iter()
        .map(|m| {
            (
                m.sent_ns.saturating_sub(start) as f64 / 1e9,
                m.latency_ns as f64 / 1e3,
            )
        })
        .collect();
    let x0 = points.first().map_or(0.0, |p| p.0);
    let x1 = points.last().map_or(1.0, |p| p.0).max(x0 + 1e-3);
    let y1 = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let chart = Chart::new(vec![Dataset::default()
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(Color::Yellow))
        .data(&points)])
    .block(block("Latency over time (µs)"))
    .x_axis(
        Axis::default()
            .bounds([x0, x1])
            .labels([format!("+{x0:.1}s"), format!("+{x1:.1}s")]),
    )
    .y_axis(
        Axis::default()
            .bounds([0.0, y1])
            .labels(["0".to_owned(), format!("{y1:.0}")]),
    );
    frame.render_widget(chart, area);
}
