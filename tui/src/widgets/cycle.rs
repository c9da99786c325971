//! A deadlock cycle drawn as a path: each thread, the resource it waits
//! for, and the thread that holds it, back to the first.

use ipc_events::live::{CycleMember, Deadlock};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

/// `producer 101 ─[sem /slots]→ consumer 102 ─[sem /items]→ producer 101`.
pub fn cycle_path(d: &Deadlock) -> Line<'static> {
    let thread = |m: &CycleMember| {
        let who = if m.tid == m.pid {
            format!("{} {}", m.comm, m.pid)
        } else {
            format!("{} {}/{}", m.comm, m.pid, m.tid)
        };
        Span::styled(who, Style::new().add_modifier(Modifier::BOLD))
    };
    let mut spans = Vec::with_capacity(d.cycle.len() * 2 + 1);
    for m in &d.cycle {
        spans.push(thread(m));
        spans.push(Span::styled(
            format!(" ─[{} {}]→ ", m.waits_for.kind, m.waits_for.name),
            Style::new().fg(Color::Yellow),
        ));
    }
    match d.cycle.first() {
        // Closing the loop on the first thread is what makes it a cycle.
        Some(first) => spans.push(thread(first)),
        None => spans.push(Span::raw("(empty cycle)")),
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::snapshot_with_deadlock;

    #[test]
    fn the_path_returns_to_its_first_thread() {
        let d = &snapshot_with_deadlock(true).deadlocks[0];
        let line = cycle_path(d);
        assert_eq!(
            line.to_string(),
            "producer 101 ─[sem /slots]→ consumer 102 ─[sem /items]→ producer 101"
        );
        assert_eq!(line.spans[1].style.fg, Some(Color::Yellow));
    }

    #[test]
    fn threads_other_than_the_main_one_show_their_tid() {
        let mut d = snapshot_with_deadlock(true).deadlocks.remove(0);
        d.cycle[1].tid = 777;
        assert!(cycle_path(&d).to_string().contains("consumer 102/777"));
        d.cycle.clear();
        assert_eq!(cycle_path(&d).to_string(), "(empty cycle)");
    }
}
