//! One process: what it sends and receives on, what it waits on and who
//! waits on what it holds, its signals and its deadlocks; one table, a
//! section per kind of row, each under its own column names.

use std::collections::HashMap;

use ipc_events::units::signal_name;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};
use ratatui::Frame;

use super::channels::who;
use super::{block, header, TableView};
use crate::app::App;
use crate::format;
use crate::process::{Link, Section};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let (Some(s), Some(pid)) = (app.view(), app.process()) else {
        return;
    };
    let comms = app.comms();
    let links = app.process_links();
    let process = s.processes.iter().find(|p| p.pid == pid);
    if process.is_none() && links.is_empty() {
        // A replay moved to before it started, or a feed that restarted
        // without it: say so, and keep following the pid in case it comes.
        frame.render_widget(
            Paragraph::new(format!(
                "Process {pid} is not in the state shown: not seen yet at this \
                 point, or no longer in the feed."
            ))
            .wrap(Wrap { trim: true })
            .block(block(format!("Process {pid} (Esc back)"))),
            area,
        );
        return;
    }
    let mut title = format!("Process {}", who(&comms, pid));
    if let Some(p) = process {
        if p.name() != p.comm {
            title.push_str(&format!(" ({})", p.comm));
        }
        // No traced process has pid 0 for a parent: 0 is the recorder's
        // "not seen start", so it shows as unknown.
        let parent = match p.ppid {
            0 => "–".to_owned(),
            ppid => who(&comms, ppid),
        };
        let state = if p.exited { "exited" } else { "running" };
        title.push_str(&format!(" · parent {parent} · {state}"));
    }
    let w = app.window();
    let block = block(format!("{title} (Esc back)")).title_bottom(format!(
        "window {}; figures are the whole channel's or object's",
        w.label()
    ));
    if links.is_empty() {
        frame.render_widget(
            Paragraph::new("No IPC seen for this process.").block(block),
            area,
        );
        return;
    }

    // Each section's first row is preceded by its column names.
    let mut rows = Vec::with_capacity(links.len() + 7);
    let mut selected = 0;
    for (i, link) in links.iter().enumerate() {
        if i == 0 || links[i - 1].section() != link.section() {
            rows.push(Shown::Section(link.section()));
        }
        if i == app.process_selected() {
            selected = rows.len();
        }
        rows.push(Shown::Link(i));
    }
    let elapsed = app.elapsed_ns();
    TableView {
        block,
        head: None,
        // Units take at most seven columns (see `format`); the rest goes
        // to the channel's name.
        widths: &[
            Constraint::Min(16),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
        len: rows.len(),
        selected: Some(selected),
    }
    .render(frame, area, |i| match rows[i] {
        Shown::Section(section) => header(&columns(section)),
        Shown::Link(i) => Row::new(cells(&links[i], &comms, app, elapsed, s.now_ns)),
    });
}

/// A row of the table: a section's column names, or one of its rows.
#[derive(Clone, Copy)]
enum Shown {
    Section(Section),
    Link(usize),
}

fn columns(section: Section) -> [&'static str; 7] {
    match section {
        Section::Sends => ["Sends on", "to", "msg/s", "messages", "p50", "p99", "max"],
        Section::Receives => [
            "Receives on",
            "from",
            "msg/s",
            "messages",
            "p50",
            "p99",
            "max",
        ],
        Section::WaitsOn => ["Waits on", "held by", "waits", "now", "p50", "p99", "max"],
        Section::Holds => ["Holds", "waited on by", "waits", "now", "p50", "p99", "max"],
        Section::SignalsSent => ["Signals sent", "to", "count", "deliv", "p50", "p99", "max"],
        Section::SignalsReceived => [
            "Signals received",
            "from",
            "count",
            "deliv",
            "p50",
            "p99",
            "max",
        ],
        Section::Deadlocks => [
            "Deadlocked on",
            "held by",
            "state",
            "detected",
            "lasted",
            "",
            "",
        ],
    }
}

/// `"102 consumer"`, `"102 consumer,+2"` for several, `–` for none known.
fn peers(comms: &HashMap<u32, &str>, pids: &[u32]) -> String {
    match pids {
        [] => "–".to_owned(),
        [one] => who(comms, *one),
        [first, rest @ ..] => format!("{},+{}", who(comms, *first), rest.len()),
    }
}

fn cells(
    link: &Link<'_>,
    comms: &HashMap<u32, &str>,
    app: &App,
    elapsed_ns: u64,
    now_ns: u64,
) -> Vec<Cell<'static>> {
    let w = app.window();
    let (what, peer, a, b, latency) = match link {
        Link::Sends {
            channel: c,
            peers: p,
        }
        | Link::Receives {
            channel: c,
            peers: p,
        } => (
            format::channel(&c.channel),
            peers(comms, p),
            format::per_s(w.rates(c, elapsed_ns).messages_per_s),
            format::count(c.messages),
            w.latency(&c.latency),
        ),
        Link::WaitsOn { wait, peers: p } | Link::Holds { wait, peers: p } => (
            format::channel(&wait.channel),
            peers(comms, p),
            format::count(wait.waits),
            wait.waiting_now.to_string(),
            w.latency(&wait.latency),
        ),
        Link::SignalSent(g) | Link::SignalReceived(g) => (
            signal_name(g.signo),
            match link.peers()[..] {
                [pid] => who(comms, pid),
                _ => "kernel".to_owned(),
            },
            format::count(g.count),
            format::count(g.delivered),
            // A signal's latency is kept over the session only.
            &g.latency,
        ),
        Link::Deadlock {
            deadlock: d,
            waits_for,
            holder,
        } => {
            let (state, lasted) = match d.resolved_ns {
                None => (
                    Cell::from("ACTIVE")
                        .style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)),
                    now_ns.saturating_sub(d.detected_ns),
                ),
                Some(r) => ("resolved".into(), r.saturating_sub(d.detected_ns)),
            };
            let start = app.view().map_or(0, |s| s.started_ns);
            return vec![
                format!("{} ({})", waits_for.name, waits_for.kind).into(),
                who(comms, *holder).into(),
                state,
                format::offset(d.detected_ns, start).into(),
                format::duration_ns(lasted).into(),
            ];
        }
    };
    let mut row: Vec<Cell<'static>> = vec![what.into(), peer.into(), a.into(), b.into()];
    row.extend(
        [latency.p50, latency.p99, latency.max].map(|ns| format::latency(latency.count, ns).into()),
    );
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_peers_show_the_first_and_how_many_more() {
        let comms = HashMap::from([(101, "producer")]);
        assert_eq!(peers(&comms, &[]), "–");
        assert_eq!(peers(&comms, &[101]), "101 producer");
        assert_eq!(peers(&comms, &[101, 7, 8]), "101 producer,+2");
    }
}
