//! Events: the scrolling log of recent events, filterable with `/`.

use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Row;
use ratatui::Frame;

use super::{block, header, TableView};
use crate::app::{App, Screen};
use crate::format;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.event_rows();
    let start = app.view().map_or(0, |s| s.started_ns);
    let total = app.view().map_or(0, |s| s.recent_events.len());
    TableView {
        block: block(format!("Events ({} of the last {total})", rows.len())),
        head: Some(header(&[
            "Time", "PID", "TID", "Comm", "Kind", "Channel", "Size", "Result",
        ])),
        widths: &[
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(15),
            Constraint::Min(10),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
        len: rows.len(),
        selected: Some(app.selected(Screen::Events)),
    }
    .render(frame, area, |i| {
        let e = rows[i];
        let result = match e.duration_ns {
            Some(d) if e.result >= 0 => format::duration_ns(d),
            _ => e.result.to_string(),
        };
        Row::new(vec![
            format::offset(e.ts_ns, start),
            e.pid.to_string(),
            e.tid.to_string(),
            e.comm.clone(),
            e.kind.to_string(),
            e.channel.as_ref().map_or(String::new(), |c| c.name()),
            format::bytes(e.size),
            result,
        ])
    });
}
