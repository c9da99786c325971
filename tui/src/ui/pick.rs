//! The list of processes a row names, when it names several: the user
//! picks the one to open.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::Row;
use ratatui::Frame;

use super::channels::who;
use super::{block, popup, TableView};
use crate::app::{App, Pick};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, pick: &Pick) {
    let comms = app.comms();
    let names: Vec<String> = pick.choices.iter().map(|c| who(&comms, c.pid)).collect();
    let name_w = widest(names.iter().map(String::as_str));
    let role_w = widest(pick.choices.iter().map(|c| c.role.as_str()));
    let title = "Open which process? (Enter opens, Esc cancels)";
    // Wide enough for its title and its longest row, with the borders.
    let w = name_w
        .saturating_add(1)
        .saturating_add(role_w)
        .max(widest([title].into_iter()))
        .saturating_add(2);
    let rows = u16::try_from(pick.choices.len()).unwrap_or(u16::MAX);
    let at = popup(frame, area, w, rows.saturating_add(2));
    TableView {
        block: block(title),
        head: None,
        widths: &[Constraint::Length(name_w), Constraint::Min(0)],
        len: pick.choices.len(),
        selected: Some(pick.selected),
    }
    .render(frame, at, |i| {
        Row::new(vec![names[i].clone(), pick.choices[i].role.clone()])
    });
}

/// The terminal columns the widest of `texts` takes.
fn widest<'a>(texts: impl Iterator<Item = &'a str>) -> u16 {
    let cols = texts.map(|t| Span::raw(t).width()).max().unwrap_or(0);
    u16::try_from(cols).unwrap_or(u16::MAX)
}
