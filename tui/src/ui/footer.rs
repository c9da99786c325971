//! The last line: the filter being typed or in force, errors, the feed's
//! state and the frame time.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::{App, FeedState};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let red = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let mut left = Vec::new();
    let typing = app.filter_line().0.is_some();
    match app.filter_line() {
        (Some(typing), _) => {
            left.push(Span::styled("/", Style::new().fg(Color::Yellow)));
            left.push(Span::raw(format!("{typing}█ ")));
        }
        (None, text) if !text.is_empty() => {
            left.push(Span::styled(
                format!("filter: {text} "),
                Style::new().fg(Color::Yellow),
            ));
        }
        _ => {}
    }
    if let Some(e) = app.filter_error() {
        left.push(Span::styled(format!("{e} "), red));
    }
    if let Some(status) = app.status() {
        left.push(Span::styled(format!("{status} "), red));
    }
    if let (Some(t), Some(timeline)) = (app.loading(), app.timeline()) {
        let (start, end) = timeline.span();
        // How far the source got, once it said, as a share of the session.
        let read = app.reach().filter(|&r| r < t).map_or(String::new(), |r| {
            let share = (r - start) as f64 / (end - start).max(1) as f64;
            format!(" (read {:.0}%)", share * 100.0)
        });
        left.push(Span::styled(
            format!("loading {}{read}… ", crate::format::offset(t, start)),
            Style::new().fg(Color::Yellow),
        ));
    }
    match app.feed() {
        FeedState::Ended { exit_status } => left.push(Span::styled(
            match exit_status {
                Some(code) => format!("recording ended (exit {code}) "),
                None => "recording ended ".to_owned(),
            },
            Style::new().fg(Color::Blue).add_modifier(Modifier::BOLD),
        )),
        FeedState::Lost => left.push(Span::styled("live feed lost ", red)),
        FeedState::Waiting | FeedState::Running => {}
    }
    let p99 = app.frame_times.quantile(0.99).map_or(String::new(), |d| {
        format!("draw p99 {:.1}ms ", d.as_secs_f64() * 1e3)
    });
    // Which key opens a process here, if the selected row names one.
    let open = match (app.process_choices().is_empty(), app.enter_drills_down()) {
        (true, _) => "",
        (false, true) => "o process ",
        (false, false) => "Enter/o process ",
    };
    // While a filter is typed the whole line is its: the hints can wait.
    let right = if typing {
        String::new()
    } else {
        format!("{p99}{open}? help q quit")
    };
    let [l, r] = Layout::horizontal([
        Constraint::Min(0),
        Constraint::Length(right.chars().count() as u16),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(Line::from(left)), l);
    frame.render_widget(
        Paragraph::new(right)
            .alignment(Alignment::Right)
            .style(Style::new().fg(Color::DarkGray)),
        r,
    );
}
