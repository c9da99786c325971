//! The run loop: feed -> [`App`] -> draw, at a steady redraw rate, with
//! keys read in between. [`run_live`] and [`run_replay`] set up the real
//! terminal around [`drive`], which works on any backend (the tests use
//! ratatui's `TestBackend`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipc_events::live::{Frame, Snapshot};
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEvent};
use ratatui::Terminal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::SigId;

use crate::action::{map_key, Action};
use crate::app::App;
use crate::term::{Keyboard, KeyboardState, TerminalGuard};
use crate::ui;

/// How the dashboard runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time between redraws; 50 ms (20 Hz) by default.
    pub redraw: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redraw: Duration::from_millis(50),
        }
    }
}

/// A recorded session the dashboard can show at any moment of.
pub trait ReplaySource {
    /// The session's first and last timestamps (monotonic ns).
    fn span(&self) -> (u64, u64);
    /// The session's state as of `t_ns`, as the live feed would have shown
    /// it then; `None` while loading has not reached `t_ns`.
    fn snapshot_at(&mut self, t_ns: u64) -> anyhow::Result<Option<Snapshot>>;
    /// Loads a little more of the session (a call should take well under
    /// a second, so a seek to what is loaded waits at most that long).
    /// Sources that answer every moment from the start leave the default.
    fn load_more(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// How far loading reaches: every moment up to it answers at once.
    fn loaded_until(&self) -> u64 {
        self.span().1
    }
    /// Moments worth jumping to: deadlocks detected, events lost.
    fn marks(&self) -> Vec<crate::timeline::Mark> {
        Vec::new()
    }
}

/// Where the dashboard's state comes from; one step per frame.
pub trait Feed {
    /// Brings `app` up to date; an error ends the dashboard.
    fn pump(&mut self, app: &mut App) -> anyhow::Result<()>;
}

/// The live feed: frames a caller's thread sends, or why it could read no
/// more of them.
pub struct LiveFeed {
    frames: Receiver<Result<Frame, String>>,
    closed: bool,
}

impl LiveFeed {
    /// The longest one frame spends applying frames, so a feed faster than
    /// the dashboard delays the next redraw by at most this much.
    const BUDGET: Duration = Duration::from_millis(25);

    /// A feed of the frames a caller's thread sends on `frames`; an `Err`
    /// says why the feed failed, which the dashboard shows until the user
    /// quits (a feed that just stops is "lost", without a reason).
    pub fn new(frames: Receiver<Result<Frame, String>>) -> Self {
        LiveFeed {
            frames,
            closed: false,
        }
    }
}

impl Feed for LiveFeed {
    fn pump(&mut self, app: &mut App) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.closed && start.elapsed() < Self::BUDGET {
            match self.frames.try_recv() {
                Ok(Ok(frame)) => app.on_frame(frame)?,
                Ok(Err(why)) => {
                    self.closed = true;
                    app.on_feed_failed(&why);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    app.on_feed_closed();
                }
            }
        }
        Ok(())
    }
}

/// A replay: moves the cursor with the wall clock and loads the state at
/// it on a thread of its own, so that keys (`q` above all) and drawing
/// never wait for a load, however big the session.
pub struct ReplayFeed {
    requests: Sender<u64>,
    results: Receiver<Loaded>,
    /// The position asked for and not answered yet.
    loading: Option<u64>,
    last: Instant,
}

/// What the loader thread tells the dashboard.
enum Loaded {
    /// The state at a position asked for.
    Answer(u64, anyhow::Result<Snapshot>),
    /// Loading reached this far; the state there, while the position asked
    /// for is further on.
    Progress(u64, Option<Snapshot>),
}

impl ReplayFeed {
    /// How long a frame waits for a load before it draws without it: a
    /// quick source's answer shows in the frame that asked for it.
    const PATIENCE: Duration = Duration::from_millis(20);
    /// How often a long load shows how far it got.
    const PROGRESS: Duration = Duration::from_millis(250);

    /// A replay of `source`, loaded by a thread that lives as long as this
    /// feed (or until the load it is in returns).
    pub fn new<S: ReplaySource + Send + 'static>(source: S) -> anyhow::Result<Self> {
        let (requests, asked) = mpsc::channel::<u64>();
        let (answers, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("replay-loader".into())
            .spawn(move || load_as_asked(source, &asked, &answers))
            .context("starting the replay loader")?;
        Ok(ReplayFeed {
            requests,
            results,
            loading: None,
            last: Instant::now(),
        })
    }
}

/// The loader thread: answers the newest position asked for as soon as the
/// source has it, and loads the rest of the session meanwhile, so that
/// moments already loaded answer at once however far another load has to
/// go. Ends when the feed is dropped.
fn load_as_asked(mut source: impl ReplaySource, asked: &Receiver<u64>, answers: &Sender<Loaded>) {
    let end = source.span().1;
    let mut wanted: Option<u64> = None;
    // Why loading stopped, told to every later position it cannot reach.
    let mut failed: Option<String> = None;
    let mut shown = Instant::now();
    loop {
        let done = failed.is_some() || source.loaded_until() >= end;
        if wanted.is_none() && done {
            match asked.recv() {
                Ok(t) => wanted = Some(t),
                Err(_) => return,
            }
        }
        // Only the newest position matters: those the cursor passed while
        // a load ran are skipped.
        loop {
            match asked.try_recv() {
                Ok(t) => wanted = Some(t),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if let Some(t) = wanted {
            let answer = match (source.snapshot_at(t), &failed) {
                (Ok(Some(s)), _) => Some(Ok(s)),
                (Ok(None), Some(why)) => Some(Err(anyhow::anyhow!("{why}"))),
                (Ok(None), None) => None,
                (Err(e), _) => Some(Err(e)),
            };
            if let Some(answer) = answer {
                wanted = None;
                if answers.send(Loaded::Answer(t, answer)).is_err() {
                    return;
                }
                continue;
            }
        }
        if done {
            continue;
        }
        if let Err(e) = source.load_more() {
            failed = Some(format!("{e:#}"));
            continue;
        }
        if shown.elapsed() >= ReplayFeed::PROGRESS {
            shown = Instant::now();
            let reach = source.loaded_until();
            // What there is so far, while the position asked for is not.
            let state = match wanted {
                Some(_) => source.snapshot_at(reach).ok().flatten(),
                None => None,
            };
            if answers.send(Loaded::Progress(reach, state)).is_err() {
                return;
            }
        }
    }
}

impl Feed for ReplayFeed {
    fn pump(&mut self, app: &mut App) -> anyhow::Result<()> {
        let now = Instant::now();
        app.tick(now - self.last);
        self.last = now;
        if let Some(t) = app.replay_wants() {
            if self.loading != Some(t) {
                self.requests
                    .send(t)
                    .map_err(|_| anyhow::anyhow!("the replay loader stopped"))?;
                self.loading = Some(t);
            }
        }
        let mut wait = if self.loading.is_some() {
            Self::PATIENCE
        } else {
            Duration::ZERO
        };
        loop {
            match self.results.recv_timeout(wait) {
                Ok(Loaded::Answer(t, loaded)) => {
                    if self.loading == Some(t) {
                        self.loading = None;
                    }
                    match loaded {
                        Ok(s) => app.set_replay_snapshot(t, s),
                        Err(e) => app.set_replay_error(t, &e),
                    }
                }
                Ok(Loaded::Progress(reach, state)) => app.set_replay_progress(reach, state),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the replay loader stopped")
                }
            }
            wait = Duration::ZERO;
        }
        app.set_loading(self.loading);
        Ok(())
    }
}

/// What the user did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal changed size (or something else worth a redraw).
    Redraw,
    /// A signal asked the program to end, or the terminal hung up.
    Quit,
}

/// Where keys come from.
pub trait Inputs {
    /// The next input, waiting at most `timeout`.
    fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Input>>;
}

/// The real terminal's keyboard, and the signals that ask a program to
/// end: SIGTERM, SIGHUP, SIGQUIT and a SIGINT sent with `kill` (raw mode
/// makes Ctrl-C a key). Each becomes [`Input::Quit`], so the dashboard
/// ends through its normal path and the terminal is restored; without
/// this their default action would kill the process in raw mode.
///
/// A terminal that hangs up is a quit too, found on the terminal itself:
/// SIGHUP reaches only the session leader, and the rest of the foreground
/// group when that leader exits, so a dashboard under a shell that stays
/// (or ignores SIGHUP) may never get one.
pub struct TerminalInputs {
    stop: Arc<AtomicBool>,
    handlers: Vec<SigId>,
    keyboard: Keyboard,
}

impl TerminalInputs {
    /// Signals that end the dashboard.
    pub const SIGNALS: [i32; 4] = [SIGTERM, SIGHUP, SIGQUIT, SIGINT];

    /// Starts listening for the quitting signals, until dropped, and
    /// watching the terminal keys are read from.
    pub fn new() -> anyhow::Result<Self> {
        let keyboard = Keyboard::open().context("opening the terminal for input")?;
        Self::with_keyboard(keyboard)
    }

    fn with_keyboard(keyboard: Keyboard) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = Self::SIGNALS
            .iter()
            .map(|&sig| {
                signal_hook::flag::register(sig, Arc::clone(&stop))
                    .with_context(|| format!("handling signal {sig}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(TerminalInputs {
            stop,
            handlers,
            keyboard,
        })
    }

    /// Whether the terminal has hung up.
    pub fn hung_up(&self) -> bool {
        // An error here means the terminal cannot be watched any more,
        // which is as gone as it gets.
        self.keyboard
            .wait(Duration::ZERO)
            .is_ok_and(|s| s == KeyboardState::HungUp)
    }
}

impl Drop for TerminalInputs {
    fn drop(&mut self) {
        // Stop turning signals into quits once the dashboard is gone.
        // signal-hook keeps its handler installed, so they do not go back
        // to their default action: a SIGHUP that reaches `record --tui`
        // after its terminal closed (when the shell, the session leader,
        // exits) cannot kill it while it stores the session.
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl Inputs for TerminalInputs {
    fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Input>> {
        let deadline = Instant::now() + timeout;
        // The first look takes only what is there already.
        let mut wait = Duration::ZERO;
        let mut keys = true;
        loop {
            // Taken, not just read: each signal asks once.
            if self.stop.swap(false, Ordering::Relaxed) {
                return Ok(Some(Input::Quit));
            }
            // The wait is ours, not crossterm's: it must see a hangup
            // before crossterm reads (see `Keyboard`). A signal cuts it
            // short, so the flag above is seen at once.
            let state = match keys {
                true => self.keyboard.wait(wait),
                false => self.keyboard.wait_for_hangup(wait),
            }
            .context("waiting for terminal input")?;
            if state == KeyboardState::HungUp {
                return Ok(Some(Input::Quit));
            }
            // Events crossterm already holds (one read can bring several
            // keys) or bytes waiting, taken without waiting for more.
            if event::poll(Duration::ZERO).context("polling the terminal for input")? {
                return Ok(match event::read().context("reading terminal input")? {
                    TermEvent::Key(k) => Some(Input::Key(k)),
                    _ => Some(Input::Redraw),
                });
            }
            if state == KeyboardState::Ready {
                // Bytes crossterm leaves unread wait for the next look.
                keys = false;
            }
            wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(None);
            }
        }
    }
}

/// Shows a live recording: `frames` come from a thread the caller owns
/// (which ends the feed by sending [`Frame::End`], or an `Err` saying why it
/// failed, or by dropping its sender). Returns when the user quits, or with
/// an error for a feed it cannot show.
pub fn run_live(frames: Receiver<Result<Frame, String>>, opts: Options) -> anyhow::Result<()> {
    on_terminal(App::live(), &mut LiveFeed::new(frames), opts)
}

/// Replays a recorded session from `source`, with the timeline.
pub fn run_replay(source: impl ReplaySource + Send + 'static, opts: Options) -> anyhow::Result<()> {
    let app = App::replay(source.span()).with_marks(source.marks());
    on_terminal(app, &mut ReplayFeed::new(source)?, opts)
}

fn on_terminal(mut app: App, feed: &mut impl Feed, opts: Options) -> anyhow::Result<()> {
    let _guard = TerminalGuard::enter(io::stdout()).context("setting up the terminal")?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(io::stdout())).context("setting up the terminal")?;
    let mut inputs = TerminalInputs::new()?;
    let shown = drive(&mut terminal, &mut app, feed, &mut inputs, &opts);
    if inputs.hung_up() {
        // The terminal went, and the user with it: the dashboard ends as
        // `q` ends it, and a draw that failed on the dead terminal is part
        // of that ending, not an error. ratatui's `Terminal` would show
        // the cursor on drop and, failing, report it with `eprintln!` on
        // the same dead terminal, which panics; there is nothing left to
        // restore, so it is not dropped.
        std::mem::forget(terminal);
        return Ok(());
    }
    shown
}

/// The loop: pump the feed, draw, wait for keys until the next redraw;
/// until the user quits.
pub fn drive<B>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    feed: &mut impl Feed,
    inputs: &mut impl Inputs,
    opts: &Options,
) -> anyhow::Result<()>
where
    B: Backend,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    loop {
        let started = Instant::now();
        feed.pump(app)?;
        let size = terminal.size().context("reading the terminal size")?;
        app.set_page(ui::page_rows(size.height, app.timeline().is_some()));
        terminal
            .draw(|f| ui::draw(f, app))
            .context("drawing the dashboard")?;
        // A frame's cost is taking in the feed and drawing it.
        app.frame_times.record(started.elapsed());
        let deadline = started + opts.redraw;
        let mut timeout = deadline.saturating_duration_since(Instant::now());
        // Take every key that arrives before the deadline; after one, only
        // those already waiting, so the screen answers at once.
        while let Some(input) = inputs.next(timeout)? {
            match input {
                Input::Key(key) => {
                    if let Some(action) = map_key(key, app.key_context()) {
                        app.update(action);
                    }
                }
                Input::Quit => app.update(Action::Quit),
                Input::Redraw => {}
            }
            if app.should_quit() {
                break;
            }
            timeout = Duration::ZERO;
        }
        if app.should_quit() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_termination_signal_becomes_a_quit() {
        // A pseudo-terminal keeps the test off the real one (and off
        // crossterm's reader, which a signal returns before).
        let (_master, slave) = crate::term::tests::pty();
        let keyboard = Keyboard::new(slave.into());
        let mut inputs = TerminalInputs::with_keyboard(keyboard).unwrap();
        for sig in [SIGTERM, SIGHUP] {
            // SAFETY: raise only delivers a signal to this thread; the
            // handler registered above only sets a flag.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
            assert_eq!(
                inputs.next(Duration::ZERO).unwrap(),
                Some(Input::Quit),
                "signal {sig}"
            );
            assert!(
                !inputs.stop.load(Ordering::Relaxed),
                "one signal, one quit: the loop must not spin on it"
            );
        }
    }
}
