//! One event opened from the log: every field, and its payload.

use ipc_events::Event;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::{block, popup};
use crate::format;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, e: &Event, start_ns: u64) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let fields = [
        ("time", format::offset(e.ts_ns, start_ns)),
        ("process", format!("{} pid {} tid {}", e.comm, e.pid, e.tid)),
        ("source", e.source.to_string()),
        ("kind", e.kind.to_string()),
        ("channel", opt(e.channel.as_ref().map(format::channel))),
        ("size", format::bytes(e.size)),
        ("message id", opt(e.msg_id.map(|m| m.to_string()))),
        ("result", e.result.to_string()),
        ("blocked", opt(e.duration_ns.map(format::duration_ns))),
        ("aux", format!("{:#x}", e.aux)),
        ("target pid", opt(e.target_pid.map(|p| p.to_string()))),
        ("endpoint", opt(e.endpoint.map(|i| format!("inode {i}")))),
        // ratatui drops control characters from cell text, so a path
        // with escapes in it cannot reach the terminal as one.
        ("path", opt(e.path.clone())),
        ("payload", opt(e.payload.as_deref().map(format::payload))),
    ];
    let lines: Vec<Line<'_>> = fields
        .into_iter()
        .map(|(name, value)| {
            Line::from(vec![
                Span::styled(format!("{name:<11}"), Style::new().fg(Color::Cyan)),
                Span::raw(value),
            ])
        })
        .collect();
    let at = popup(frame, area, 70, lines.len() as u16 + 2);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block("Event (Enter: its process, Esc closes)")),
        at,
    );
}
