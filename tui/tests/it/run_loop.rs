//! The run loop on a `TestBackend`: a live feed over a real channel from a
//! real thread, and a replay over an in-memory session.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::anyhow;
use ipc_events::live::{Delta, Frame, Snapshot, PROTOCOL_VERSION};
use ipc_events::{Event, EventKind, Source};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use tui::app::{App, FeedState, Screen};
use tui::run::{drive, Feed, Input, Inputs, LiveFeed, ReplayFeed};
use tui::test_data::{snapshot_with_deadlock, SampleSession, START_NS};
use tui::{Options, ReplaySource};

use crate::text;

const S: u64 = 1_000_000_000;

/// Keys a test types, one frame each (a `None` is a frame without keys).
/// Running out is an error, so a test that forgets to quit fails instead
/// of hanging.
struct Script {
    /// Joined before the first key, so every frame it sends is queued.
    producer: Option<JoinHandle<()>>,
    steps: VecDeque<Option<KeyCode>>,
    /// Each key is followed by a frame without keys, so it gets drawn.
    gap: bool,
}

impl Script {
    fn new(keys: &[KeyCode]) -> Self {
        Script {
            producer: None,
            steps: keys.iter().map(|k| Some(*k)).collect(),
            gap: false,
        }
    }
}

impl Inputs for Script {
    fn next(&mut self, _timeout: Duration) -> anyhow::Result<Option<Input>> {
        if let Some(p) = self.producer.take() {
            p.join()
                .map_err(|_| anyhow!("the producer thread panicked"))?;
        }
        if std::mem::take(&mut self.gap) {
            return Ok(None);
        }
        self.gap = true;
        match self.steps.pop_front() {
            Some(Some(code)) => Ok(Some(Input::Key(KeyEvent::new(code, KeyModifiers::NONE)))),
            Some(None) => Ok(None),
            None => Err(anyhow!("the test's key script ran out before it quit")),
        }
    }
}

fn terminal() -> Terminal<TestBackend> {
    Terminal::new(TestBackend::new(80, 24)).unwrap()
}

fn delta(i: u64) -> Delta {
    let base = snapshot_with_deadlock(false);
    let mut jobs = base.channels[0].clone();
    jobs.messages += i;
    Delta {
        live: true,
        now_ns: base.now_ns + i * S / 10,
        totals: base.totals,
        channels: vec![jobs],
        events: (0..100)
            .map(|j| {
                Event::new(
                    base.now_ns + i * S / 10 + j,
                    101,
                    101,
                    Source::Lib,
                    EventKind::MsgSend,
                )
            })
            .collect(),
        ..Delta::default()
    }
}

#[test]
fn a_live_feed_from_another_thread_is_applied_and_its_end_shown() {
    let (tx, rx) = mpsc::channel();
    let producer = std::thread::spawn(move || {
        let frames = [
            Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id: 7,
            },
            Frame::Snapshot(Box::new(snapshot_with_deadlock(false))),
        ]
        .into_iter()
        .chain((1..=30).map(|i| Frame::Delta(Box::new(delta(i)))))
        .chain([Frame::End {
            exit_status: Some(0),
        }]);
        for f in frames {
            tx.send(Ok(f)).unwrap();
        }
    });
    let mut script = Script::new(&[KeyCode::Tab, KeyCode::Enter, KeyCode::Char('q')]);
    script.producer = Some(producer);
    let mut term = terminal();
    let mut app = App::live();
    drive(
        &mut term,
        &mut app,
        &mut LiveFeed::new(rx),
        &mut script,
        &Options::default(),
    )
    .unwrap();

    assert_eq!(
        app.feed(),
        FeedState::Ended {
            exit_status: Some(0)
        }
    );
    let s = app.view().unwrap();
    assert_eq!(s.channels[0].messages, 12_030, "every delta applied");
    assert_eq!(s.recent_events.len(), Snapshot::RECENT_EVENTS);
    assert_eq!(
        s.recent_events.last().unwrap().ts_ns,
        delta(30).events.last().unwrap().ts_ns,
        "the newest events kept"
    );
    assert_eq!(app.screen(), Screen::Channels);
    let screen = text(term.backend().buffer());
    assert!(
        screen.contains("jobs (ipclib_channel) (Esc back)"),
        "{screen}"
    );
    assert!(screen.contains("recording ended (exit 0)"));
    assert!(
        app.frame_times.quantile(0.99).is_some(),
        "frames were timed"
    );
}

/// The recorder's feed broke mid-stream (a frame cut short, a recorder
/// gone silent): the dashboard said "live feed lost" and never why (issue
/// 17). The reason stays on screen until the user quits.
#[test]
fn a_feed_that_fails_says_why_on_the_dashboard() {
    let (tx, rx) = mpsc::channel();
    for item in [
        Ok(Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: 7,
        }),
        Ok(Frame::Snapshot(Box::new(snapshot_with_deadlock(false)))),
        Err("live feed: frame 3 cut short: 2 of its 4 header bytes".to_owned()),
    ] {
        tx.send(item).unwrap();
    }
    let mut term = terminal();
    let mut app = App::live();
    drive(
        &mut term,
        &mut app,
        &mut LiveFeed::new(rx),
        &mut Script::new(&[KeyCode::Char('1'), KeyCode::Char('q')]),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(app.feed(), FeedState::Lost);
    let screen = text(term.backend().buffer());
    assert!(screen.contains("frame 3 cut short"), "{screen}");
    assert!(screen.lines().next().unwrap().contains("LOST"), "{screen}");
}

#[test]
fn a_feed_of_another_protocol_version_is_a_clear_error() {
    let (tx, rx) = mpsc::channel();
    tx.send(Ok(Frame::Hello {
        version: PROTOCOL_VERSION + 1,
        session_id: 1,
    }))
    .unwrap();
    let err = drive(
        &mut terminal(),
        &mut App::live(),
        &mut LiveFeed::new(rx),
        &mut Script::new(&[]),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the live feed speaks protocol version 2, this dashboard version 1"
    );
}

#[test]
fn a_replay_shows_the_state_at_the_cursor_as_it_seeks() {
    let mut session = SampleSession::new(30);
    session.fail_at = Some(1);
    let mut app = App::replay(session.span());
    let mut script = Script::new(&[
        KeyCode::Home,
        KeyCode::Char(']'),
        KeyCode::End,
        KeyCode::Home,
        KeyCode::Right,
        KeyCode::Char('q'),
    ]);
    let mut term = terminal();
    let asked = std::sync::Arc::clone(&session.asked);
    let mut feed = ReplayFeed::new(session).unwrap();
    drive(
        &mut term,
        &mut app,
        &mut feed,
        &mut script,
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        *asked.lock().unwrap(),
        [30, 0, 10, 30, 0, 1],
        "the whole session first, then one load per cursor move"
    );
    // The failed load at 1 s leaves the state at 0 s on screen, and says why.
    assert_eq!(app.view().unwrap().channels[0].messages, 0);
    let screen = text(term.backend().buffer());
    assert!(screen.contains("replay: database is locked"), "{screen}");
    assert!(screen.contains("⏸ 1x +1.000s"));
}

#[test]
fn a_playing_replay_moves_with_the_clock() {
    let session = SampleSession::new(30);
    let mut app = App::replay(session.span());
    // Play at 2x for a dozen 50 ms frames: over half a second of session
    // time, far from the 30 s end even on a slow machine.
    let mut script = Script::new(&[KeyCode::Char('+'), KeyCode::Char(' ')]);
    script.steps.extend([None; 6]);
    script.steps.push_back(Some(KeyCode::Char('q')));
    let opts = Options {
        redraw: Duration::from_millis(50),
    };
    let mut inputs = Slow(script);
    drive(
        &mut terminal(),
        &mut app,
        &mut ReplayFeed::new(session).unwrap(),
        &mut inputs,
        &opts,
    )
    .unwrap();
    let t = app.timeline().unwrap();
    assert_eq!(t.speed(), 2.0);
    assert!(t.playing());
    assert!(t.cursor() > START_NS + S / 2, "the cursor moved");
}

/// A script that, like a real keyboard, lets time pass when idle.
struct Slow(Script);

impl Inputs for Slow {
    fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Input>> {
        let next = self.0.next(timeout)?;
        if next.is_none() {
            std::thread::sleep(timeout);
        }
        Ok(next)
    }
}

#[test]
fn every_screen_follows_the_replay_cursor() {
    let session = SampleSession::new(30);
    let mut app = App::replay(session.span());
    let mut feed = ReplayFeed::new(session).unwrap();
    let mut at = |app: &mut App, action: Option<tui::action::Action>| {
        if let Some(a) = action {
            app.update(a);
        }
        feed.pump(app).unwrap();
        crate::text(&crate::render(app, 80, 24))
    };
    use tui::action::Action::{GoTo, Seek};
    let whole = at(&mut app, None);
    assert!(
        whole.contains("━● +30.000s"),
        "it opens at the end:\n{whole}"
    );
    let start = at(&mut app, Some(Seek(-30)));
    assert!(start.contains("⏸ 1x +0.000s ●"));
    assert!(!start.contains("DEADLOCK"));
    let during = at(&mut app, Some(Seek(22)));
    assert!(
        during.contains(" DEADLOCK (1 active) since +20.000s"),
        "{during}"
    );
    let waits = at(&mut app, Some(GoTo(Screen::Waits)));
    assert!(waits.contains("ACTIVE for 2.00 s"), "{waits}");
    let after = at(&mut app, Some(Seek(5)));
    assert!(after.contains("resolved after 5.00 s"), "{after}");
    let channels = at(&mut app, Some(GoTo(Screen::Channels)));
    assert_eq!(app.view().unwrap().channels[0].messages, 2_700);
    assert!(channels.contains("Channels 3 · sort"), "{channels}");
}

/// Inputs that never run dry, as a stuck signal flag once did.
struct QuitForever;

impl Inputs for QuitForever {
    fn next(&mut self, _timeout: Duration) -> anyhow::Result<Option<Input>> {
        Ok(Some(Input::Quit))
    }
}

#[test]
fn a_quit_ends_the_loop_even_if_inputs_keep_coming() {
    let (_tx, rx) = mpsc::channel();
    drive(
        &mut terminal(),
        &mut App::live(),
        &mut LiveFeed::new(rx),
        &mut QuitForever,
        &Options::default(),
    )
    .unwrap();
}

/// A session whose every load takes longer than any user would wait.
struct Sluggish;

impl ReplaySource for Sluggish {
    fn span(&self) -> (u64, u64) {
        (0, 10_000_000_000)
    }

    fn snapshot_at(&mut self, _: u64) -> anyhow::Result<Option<Snapshot>> {
        std::thread::sleep(Duration::from_secs(10));
        Ok(Some(Snapshot::default()))
    }
}

/// Replay froze on a real session: keys, `q` and SIGTERM went unanswered
/// while it loaded (issue 17). Loads run beside the dashboard, which says
/// it is loading and quits at once.
#[test]
fn a_slow_load_holds_up_neither_keys_nor_quitting() {
    let mut app = App::replay(Sluggish.span());
    let mut term = terminal();
    let mut feed = ReplayFeed::new(Sluggish).unwrap();
    let start = std::time::Instant::now();
    drive(
        &mut term,
        &mut app,
        &mut feed,
        &mut Script::new(&[KeyCode::End, KeyCode::Char('q')]),
        &Options::default(),
    )
    .unwrap();
    // Frames wait at most 20 ms for a load; the bound is for a busy machine.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "quitting took {:?}",
        start.elapsed()
    );
    assert_eq!(app.loading(), Some(10_000_000_000), "the End key was taken");
    let screen = text(term.backend().buffer());
    assert!(screen.contains("loading +10.000s…"), "{screen}");
}

/// A session that loads a second per `load_more`, each taking 100 ms.
struct Gradual {
    loaded_s: u64,
}

impl ReplaySource for Gradual {
    fn span(&self) -> (u64, u64) {
        (0, 10_000_000_000)
    }

    fn snapshot_at(&mut self, t_ns: u64) -> anyhow::Result<Option<Snapshot>> {
        Ok((t_ns <= self.loaded_until()).then(|| Snapshot {
            now_ns: t_ns,
            ..Snapshot::default()
        }))
    }

    fn load_more(&mut self) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(100));
        self.loaded_s += 1;
        Ok(())
    }

    fn loaded_until(&self) -> u64 {
        self.loaded_s * 1_000_000_000
    }
}

/// Pumps `feed` until `done`, for at most `limit`; how long it took.
fn pump_until(
    app: &mut App,
    feed: &mut ReplayFeed,
    limit: Duration,
    done: impl Fn(&App) -> bool,
) -> Duration {
    let start = std::time::Instant::now();
    while !done(app) {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        feed.pump(app).unwrap();
    }
    start.elapsed()
}

/// A replay opens at the end, which a big session reaches only once it is
/// all loaded: meanwhile the screens show what is loaded so far and the
/// footer how far it got, and a moment already loaded answers at once
/// rather than after the rest (issue 17: End took seconds, Home as long).
#[test]
fn while_a_session_loads_what_is_loaded_shows_and_answers_at_once() {
    let mut app = App::replay(Gradual { loaded_s: 0 }.span());
    let mut feed = ReplayFeed::new(Gradual { loaded_s: 0 }).unwrap();
    pump_until(&mut app, &mut feed, Duration::from_secs(5), |a| {
        a.reach().is_some_and(|r| r >= 3_000_000_000)
    });
    assert_eq!(app.loading(), Some(10_000_000_000), "End is still loading");
    let shown = app.view().expect("the state loaded so far is shown").now_ns;
    assert!(shown >= 2_000_000_000, "shown at {shown}");
    let mut term = terminal();
    term.draw(|f| tui::ui::draw(f, &app)).unwrap();
    let screen = text(term.backend().buffer());
    assert!(screen.contains("loading +10.000s (read "), "{screen}");

    app.update(tui::action::Action::SeekStart);
    let home = pump_until(&mut app, &mut feed, Duration::from_secs(5), |a| {
        a.replay_wants().is_none()
    });
    // One load_more (100 ms) may be under way when Home is asked for.
    assert!(home < Duration::from_millis(400), "Home took {home:?}");
    assert_eq!(app.view().unwrap().now_ns, 0);
    app.update(tui::action::Action::SeekEnd);
    pump_until(&mut app, &mut feed, Duration::from_secs(5), |a| {
        a.replay_wants().is_none()
    });
    assert_eq!(app.view().unwrap().now_ns, 10_000_000_000);
}
