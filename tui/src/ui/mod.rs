//! Drawing: the frame around every screen (tabs, timeline, footer, help)
//! and one file per screen. Nothing here changes state.

mod channels;
mod event;
mod events;
mod footer;
mod help;
mod overview;
mod pick;
mod process;
mod signals;
mod topology;
mod waits;

use std::ops::Range;

use ratatui::layout::{Alignment, Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table, TableState, Tabs};
use ratatui::Frame;

use crate::app::{App, FeedState, Screen};
use crate::widgets::timeline::TimelineBar;

/// Rows of the frame around the body: tabs and footer.
const CHROME_ROWS: u16 = 2;

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let replay_rows = u16::from(app.timeline().is_some());
    let [tabs, body, timeline, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(replay_rows),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, tabs, app);
    match app.view() {
        // A process view covers the screen it was opened from, which
        // stays as it was underneath for Esc to go back to.
        Some(_) if app.process().is_some() => process::draw(frame, body, app),
        Some(_) => match app.screen() {
            Screen::Overview => overview::draw(frame, body, app),
            Screen::Channels => channels::draw(frame, body, app),
            Screen::Topology => topology::draw(frame, body, app),
            Screen::Waits => waits::draw(frame, body, app),
            Screen::Signals => signals::draw(frame, body, app),
            Screen::Events => events::draw(frame, body, app),
        },
        None => draw_waiting(frame, body, app),
    }
    if let Some(t) = app.timeline() {
        frame.render_widget(TimelineBar::new(t), timeline);
    }
    footer::draw(frame, footer, app);
    if let (Screen::Events, Some(e), Some(s), None) =
        (app.screen(), app.event_detail(), app.view(), app.process())
    {
        event::draw(frame, body, e, s.started_ns);
    }
    if let Some(p) = app.pick() {
        pick::draw(frame, body, app, p);
    }
    if app.help_shown() {
        help::draw(frame, body, app);
    }
}

/// The body rows a screen has for its table, for PgUp/PgDn: the terminal
/// height less the chrome, a border pair and a header row.
pub fn page_rows(height: u16, replay: bool) -> usize {
    usize::from(height.saturating_sub(CHROME_ROWS + u16::from(replay) + 3))
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let deadlocked = app
        .view()
        .is_some_and(|s| s.active_deadlocks().next().is_some());
    let titles = Screen::ALL.iter().enumerate().map(|(i, s)| {
        let style = if *s == Screen::Waits && deadlocked {
            // Every screen points at the deadlock, not just the overview.
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        Line::styled(format!("{} {}", i + 1, s.title()), style)
    });
    let [left, right] = Layout::horizontal([Constraint::Min(0), Constraint::Length(9)]).areas(area);
    frame.render_widget(
        Tabs::new(titles)
            .select(app.screen().index())
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .padding("", "")
            .divider(" "),
        left,
    );
    let (mode, colour) = match (app.timeline().is_some(), app.feed(), app.paused()) {
        (true, _, _) => ("REPLAY", Color::Cyan),
        (false, _, true) => ("PAUSED", Color::Yellow),
        (false, FeedState::Waiting, _) => ("WAITING", Color::Yellow),
        (false, FeedState::Running, _) => ("LIVE", Color::Green),
        (false, FeedState::Ended { .. }, _) => ("ENDED", Color::Blue),
        (false, FeedState::Lost, _) => ("LOST", Color::Red),
    };
    frame.render_widget(
        Paragraph::new(mode)
            .alignment(Alignment::Right)
            .style(Style::new().fg(colour).add_modifier(Modifier::BOLD)),
        right,
    );
}

fn draw_waiting(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let text = if app.timeline().is_some() {
        "Loading the recorded session…"
    } else if app.feed() == FeedState::Lost {
        "The live feed closed before sending a snapshot."
    } else {
        "Waiting for the recording's first snapshot…"
    };
    let [mid] = Layout::vertical([Constraint::Length(1)])
        .flex(ratatui::layout::Flex::Center)
        .areas(area);
    frame.render_widget(Paragraph::new(text).alignment(Alignment::Center), mid);
}

/// A `width` x `height` area centred in `area`, cleared for a popup to
/// draw on; smaller where `area` is.
fn popup(frame: &mut Frame<'_>, area: Rect, width: u16, height: u16) -> Rect {
    let [popup] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(popup);
    frame.render_widget(Clear, popup);
    popup
}

/// A bordered block with a title.
fn block(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered().title(title.into())
}

/// The header row style of every table.
fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD))
}

/// The rows of a `len`-row table that fit `height` lines with `selected`
/// in view, so a table builds only the rows it shows (the event log has
/// thousands).
fn visible(len: usize, selected: usize, height: usize) -> Range<usize> {
    if len <= height {
        return 0..len;
    }
    let start = (selected + 1).saturating_sub(height).min(len - height);
    start..start + height
}

/// A table of which only the rows on screen are built.
struct TableView<'a> {
    block: Block<'a>,
    /// The header row; none where rows carry their own (the process
    /// view's sections, a pick list).
    head: Option<Row<'a>>,
    widths: &'a [Constraint],
    len: usize,
    /// The row to highlight, if the screen has a selection.
    selected: Option<usize>,
}

impl<'a> TableView<'a> {
    /// Renders, calling `row(i)` for the visible rows only.
    fn render(self, frame: &mut Frame<'_>, area: Rect, row: impl Fn(usize) -> Row<'a>) {
        // Borders and the header row.
        let chrome = 2 + u16::from(self.head.is_some());
        let height = usize::from(area.height.saturating_sub(chrome));
        let range = visible(self.len, self.selected.unwrap_or(0), height);
        let first = range.start;
        let rows: Vec<Row<'a>> = range.map(row).collect();
        let mut table = Table::new(rows, self.widths.to_vec())
            .block(self.block)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        if let Some(head) = self.head {
            table = table.header(head);
        }
        let selected = self.selected.map(|s| s.saturating_sub(first));
        let mut state = TableState::default().with_selected(selected);
        frame.render_stateful_widget(table, area, &mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visible_window_keeps_the_selection_in_view() {
        assert_eq!(visible(5, 4, 10), 0..5);
        assert_eq!(visible(100, 0, 10), 0..10);
        assert_eq!(visible(100, 50, 10), 41..51);
        assert_eq!(visible(100, 99, 10), 90..100);
        assert_eq!(
            visible(100, 500, 10),
            90..100,
            "a stale selection stays in range"
        );
    }
}
