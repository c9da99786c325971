//! The tui crate's integration tests: whole screens through ratatui's
//! `TestBackend`, and the run loop fed by a real channel and a replay
//! source.

mod process;
mod run_loop;
mod screens;

use ipc_events::live::{Frame, Snapshot, PROTOCOL_VERSION};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::Terminal;
use tui::app::App;

/// A live dashboard that has been sent `snapshot`.
pub fn live(snapshot: Snapshot) -> App {
    let mut app = App::live();
    app.on_frame(Frame::Hello {
        version: PROTOCOL_VERSION,
        session_id: snapshot.session_id,
    })
    .unwrap();
    app.on_frame(Frame::Snapshot(Box::new(snapshot))).unwrap();
    app
}

/// Draws `app` on a `w` x `h` test terminal.
pub fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| tui::ui::draw(f, app)).unwrap();
    t.backend().buffer().clone()
}

/// A buffer's text, one string per line (styles left out).
pub fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect())
        .collect()
}

/// The whole screen as one string, for `contains` checks.
pub fn text(buf: &Buffer) -> String {
    lines(buf).join("\n")
}
