//! tui: the ratatui dashboard of live and recorded sessions.
//!
//! It sits at the end of the data flow: the collector's live feed (or a
//! replay source over a recorded database) hands it
//! [`ipc_events::live::Frame`]s or [`ipc_events::live::Snapshot`]s, and it
//! draws them. It never reaches back up the chain, and does not depend on
//! the collector: callers feed it through [`run_live`] (a channel of
//! frames) or [`run_replay`] (a [`ReplaySource`]).
//!
//! Inside, ratatui's state/view split: [`app::App`] holds all state with no
//! I/O, [`action`] turns keys into actions, [`ui`] draws, one screen or
//! widget per file, [`process`] gathers what one process does for its
//! view; [`run`] is the loop and [`term`] the terminal's setup
//! and restore.

pub mod action;
pub mod app;
pub mod filter;
pub mod format;
pub mod process;
pub mod run;
pub mod term;
#[cfg(any(test, feature = "test-data"))]
pub mod test_data;
pub mod timeline;
pub mod timing;
pub mod ui;
pub mod widgets;
pub mod wire;

/// The ratatui this crate draws with: [`ui::draw`] takes its `Frame`.
pub use ratatui;
pub use run::{run_live, run_replay, Options, ReplaySource};
pub use term::TerminalGuard;
pub use wire::read_frames;
