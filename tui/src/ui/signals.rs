//! Signals: who signalled whom, with what, how often and how fast.

use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Row;
use ratatui::Frame;

use super::channels::who;
use super::{block, header, TableView};
use crate::app::{App, Screen};
use crate::format;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.signal_rows();
    let comms = app.comms();
    TableView {
        block: block(format!(
            "Signals by sender, target and number: {}",
            rows.len()
        )),
        head: Some(header(&[
            "From", "To", "Signal", "count", "deliv", "p50", "p99", "max",
        ])),
        widths: &[
            Constraint::Min(12),
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
        len: rows.len(),
        selected: Some(app.selected(Screen::Signals)),
    }
    .render(frame, area, |i| {
        let g = rows[i];
        Row::new(vec![
            match (g.sender_pid, &g.cause) {
                // Short, to fit the column: `kernel:child`, `kernel:timer`.
                (0, Some(cause)) if cause != "kernel" => format!("kernel:{cause}"),
                (0, _) => "kernel".to_owned(),
                (pid, _) => who(&comms, pid),
            },
            who(&comms, g.target_pid),
            ipc_events::units::signal_name(g.signo),
            format::count(g.count),
            format::count(g.delivered),
            format::latency(g.latency.count, g.latency.p50),
            format::latency(g.latency.count, g.latency.p99),
            format::latency(g.latency.count, g.latency.max),
        ])
    });
}
