//! Frame time under load: a large session (hundreds of channels, a full
//! event tail) taking in 100,000 events a second at the run loop's 20 Hz,
//! drawn off-screen. A frame is what the run loop times: apply the frame's
//! delta, then draw.
//!
//! `cargo bench -p tui --bench render` prints, per backend (ratatui's
//! `TestBackend`, and crossterm's writing its escape sequences to a sink),
//! size and screen, the median and p99 frame time.

use std::io;
use std::time::{Duration, Instant};

use ipc_events::live::{Delta, Frame};
use ipc_events::{Event, EventKind, Source};
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};
use tui::action::Action;
use tui::app::{App, Screen};
use tui::test_data::large_snapshot;
use tui::timing::quantile;

const CHANNELS: usize = 500;
const EVENTS_PER_S: usize = 100_000;
const FRAMES_PER_S: usize = 20;
const FRAMES: usize = 200;

/// One frame's worth of feed: its share of the events, and every tenth
/// channel changed.
fn delta(app: &App, frame: usize) -> Delta {
    let s = app.view().expect("the bench starts from a snapshot");
    let now = s.now_ns + frame as u64 * 50_000_000;
    let template = &s.recent_events[0];
    Delta {
        live: true,
        now_ns: now,
        totals: s.totals,
        rate_1s: s.rate_1s,
        channels: s
            .channels
            .iter()
            .skip(frame % 10)
            .step_by(10)
            .map(|c| {
                let mut c = c.clone();
                c.messages += 1;
                c
            })
            .collect(),
        events: (0..EVENTS_PER_S / FRAMES_PER_S)
            .map(|i| {
                let mut e = Event::new(
                    now + i as u64,
                    template.pid,
                    template.tid,
                    Source::Lib,
                    EventKind::MsgSend,
                );
                e.comm.clone_from(&template.comm);
                e.channel.clone_from(&template.channel);
                e
            })
            .collect(),
        ..Delta::default()
    }
}

/// Times `FRAMES` frames of `app` on `term`: apply a delta, then draw.
fn frames<B: Backend>(term: &mut Terminal<B>, app: &mut App) -> Vec<Duration>
where
    B::Error: std::fmt::Debug,
{
    let mut times = Vec::with_capacity(FRAMES);
    for frame in 0..FRAMES {
        // Building the delta is the feed thread's work, not ours.
        let d = delta(app, frame);
        let start = Instant::now();
        app.on_frame(Frame::Delta(Box::new(d)))
            .expect("deltas apply");
        term.draw(|f| tui::ui::draw(f, app))
            .expect("drawing into memory");
        times.push(start.elapsed());
    }
    times
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn main() {
    println!(
        "{CHANNELS} channels, {EVENTS_PER_S} events/s in {FRAMES_PER_S} deltas/s, {FRAMES} frames per row"
    );
    println!(
        "{:<10} {:<20} {:>7} {:>10} {:>10}",
        "backend", "screen", "size", "median", "p99"
    );
    let mut all = Vec::new();
    for backend in ["test", "crossterm"] {
        for (w, h) in [(80, 24), (200, 60)] {
            for (name, screen, setup) in [
                ("overview", Screen::Overview, ""),
                ("channels", Screen::Channels, ""),
                ("channel drill-down", Screen::Channels, "enter"),
                ("topology", Screen::Topology, ""),
                ("waits", Screen::Waits, ""),
                ("signals", Screen::Signals, ""),
                ("events", Screen::Events, ""),
                ("events, filtered", Screen::Events, "comm:prod kind:send"),
            ] {
                let mut app = App::live();
                app.on_frame(Frame::Snapshot(Box::new(large_snapshot(CHANNELS))))
                    .expect("a snapshot is always accepted");
                app.update(Action::GoTo(screen));
                match setup {
                    "" => {}
                    "enter" => app.update(Action::Enter),
                    text => {
                        app.update(Action::StartFilter);
                        text.chars().for_each(|c| app.update(Action::FilterChar(c)));
                        app.update(Action::FilterCommit);
                    }
                }
                let times = if backend == "test" {
                    let mut term = Terminal::new(TestBackend::new(w, h)).expect("a test backend");
                    frames(&mut term, &mut app)
                } else {
                    // The real backend's escape sequences, written to a
                    // sink: the terminal's own cost is all that is left out.
                    let opts = TerminalOptions {
                        viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
                    };
                    let mut term = Terminal::with_options(CrosstermBackend::new(io::sink()), opts)
                        .expect("a crossterm backend on a sink");
                    frames(&mut term, &mut app)
                };
                println!(
                    "{backend:<10} {name:<20} {:>7} {:>8.3}ms {:>8.3}ms",
                    format!("{w}x{h}"),
                    ms(quantile(&times, 0.5)),
                    ms(quantile(&times, 0.99))
                );
                all.extend(times);
            }
        }
    }
    println!(
        "{:<10} {:<20} {:>7} {:>8.3}ms {:>8.3}ms",
        "all",
        "",
        "",
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.99))
    );
}
