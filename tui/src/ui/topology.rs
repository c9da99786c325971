//! Topology: who talks to whom, as an adjacency list of sender -> receiver
//! edges over each channel, busiest first.
//!
//! An adjacency view rather than a drawn graph: it stays readable at 80
//! columns with hundreds of channels, where a node-and-edge drawing would
//! not.

use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Row;
use ratatui::Frame;

use super::channels::who;
use super::{block, header, TableView};
use crate::app::{App, Screen};
use crate::format;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let edges = app.edges();
    let comms = app.comms();
    let w = app.window();
    let elapsed = app.elapsed_ns();
    TableView {
        block: block(format!(
            "Topology: {} edges (volumes are per channel, window {})",
            edges.len(),
            w.label()
        )),
        head: Some(header(&[
            "From", "To", "Via", "msg/s", "bytes/s", "messages",
        ])),
        widths: &[
            Constraint::Length(16),
            Constraint::Length(16),
            Constraint::Min(12),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(8),
        ],
        len: edges.len(),
        selected: Some(app.selected(Screen::Topology)),
    }
    .render(frame, area, |i| {
        let e = &edges[i];
        let r = w.rates(e.channel, elapsed);
        Row::new(vec![
            who(&comms, e.from),
            format!("→ {}", who(&comms, e.to)),
            format::channel(&e.channel.channel),
            format::per_s(r.messages_per_s),
            format::bytes_per_s(r.bytes_per_s),
            format::count(e.channel.messages),
        ])
    });
}
