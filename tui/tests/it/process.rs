//! The process view: drawn at 80x24 and 110x32, following its pid as the
//! state moves on, and what it says when the pid is gone.

use ipc_events::live::Frame;
use ratatui::style::{Color, Modifier};
use tui::action::Action;
use tui::app::{App, Screen};
use tui::test_data::snapshot_with_deadlock;

use crate::{lines, live, render, text};

fn press(app: &mut App, actions: &[Action]) {
    for a in actions {
        app.update(*a);
    }
}

/// The consumer (102), opened from the Signals screen: the target of the
/// one signal there.
fn open_consumer(app: &mut App) {
    press(
        app,
        &[
            Action::GoTo(Screen::Signals),
            Action::Enter,
            Action::Down,
            Action::Enter,
        ],
    );
    assert_eq!(app.process(), Some(102));
}

#[test]
fn the_view_shows_what_a_process_does_and_with_whom_at_80x24() {
    let mut app = live(snapshot_with_deadlock(true));
    open_consumer(&mut app);
    let buf = render(&app, 80, 24);
    assert_eq!(
        lines(&buf),
        [
            "1 Overview 2 Channels 3 Topology 4 Waits 5 Signals 6 Events                 LIVE",
            "┌Process 102 consumer · parent 100 demo · running (Esc back)───────────────────┐",
            "│Sends on             to              msg/s    messages p50     p99     max    │",
            "│results (ipclib_chan 101 producer    90       900      3.00 µs 12.0 µs 30.0 µs│",
            "│Receives on          from            msg/s    messages p50     p99     max    │",
            "│jobs (ipclib_channel 101 producer    1.20k    12.0k    2.00 µs 8.00 µs 20.0 µs│",
            "│pipe:[4242] (pipe)   101 producer    2.0      40       4.00 µs 16.0 µs 40.0 µs│",
            "│Waits on             held by         waits    now      p50     p99     max    │",
            "│/items (sem)         101 producer    20       0        20.0 µs 80.0 µs 200 µs │",
            "│Holds                waited on by    waits    now      p50     p99     max    │",
            "│/slots (sem)         101 producer    300      1        20.0 µs 80.0 µs 200 µs │",
            "│Signals received     from            count    deliv    p50     p99     max    │",
            "│SIGUSR1              100 demo        4        4        3.00 µs 12.0 µs 30.0 µs│",
            "│Deadlocked on        held by         state    detected lasted                 │",
            "│/items (sem)         101 producer    ACTIVE   +20.000s 10.0 s                 │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "└window 10s; figures are the whole channel's or object's───────────────────────┘",
            "                                                   Enter/o process ? help q quit",
        ]
    );
    // The first row is selected, not its section's column names.
    assert!(buf[(1, 3)].modifier.contains(Modifier::REVERSED));
    assert!(!buf[(1, 2)].modifier.contains(Modifier::REVERSED));
    let active = lines(&buf)[14].find("ACTIVE").unwrap();
    let x = lines(&buf)[14][..active].chars().count() as u16;
    assert_eq!(buf[(x, 14)].fg, Color::Red);

    app.update(Action::Back);
    let signals = text(&render(&app, 80, 24));
    assert!(signals.contains("Signals by sender, target and number: 1"));
}

#[test]
fn at_110x32_names_are_whole_and_every_size_draws() {
    let mut s = snapshot_with_deadlock(false);
    s.processes[2].title = Some("consumer: draining".to_owned());
    s.processes[2].exited = true;
    s.processes[2].ppid = 0;
    let mut app = live(s);
    open_consumer(&mut app);
    let screen = text(&render(&app, 110, 32));
    assert!(
        screen.contains("Process 102 consumer: draining (consumer) · parent – · exited (Esc back)"),
        "{screen}"
    );
    assert!(screen.contains("results (ipclib_channel)"));
    assert!(
        screen.contains("/items (sem)                                       101 producer    resolved +20.000s 5.00 s"),
        "{screen}"
    );
    for (w, h) in [(1, 1), (10, 3), (40, 10), (80, 24), (110, 32)] {
        render(&app, w, h);
    }
}

#[test]
fn the_view_keeps_its_pid_as_new_snapshots_come() {
    let mut app = live(snapshot_with_deadlock(true));
    open_consumer(&mut app);
    let mut s = snapshot_with_deadlock(true);
    s.channels[1].messages = 4_321;
    s.processes.reverse();
    app.on_frame(Frame::Snapshot(Box::new(s))).unwrap();
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("Process 102 consumer"), "{screen}");
    assert!(screen.contains("results (ipclib_chan 101 producer    90       4.32k"));
}

#[test]
fn a_pid_gone_from_the_state_says_so_and_comes_back_with_it() {
    let s = 1_000_000_000;
    let mut app = App::replay((0, 30 * s));
    app.set_replay_snapshot(30 * s, snapshot_with_deadlock(false));
    open_consumer(&mut app);

    // Earlier in the replay, before the consumer started.
    let mut before = snapshot_with_deadlock(false);
    before.processes.retain(|p| p.pid != 102);
    before.channels.clear();
    before.waits.clear();
    before.signals.clear();
    before.deadlocks.clear();
    app.set_replay_snapshot(5 * s, before);
    for (w, h) in [(80, 24), (110, 32), (20, 5)] {
        render(&app, w, h);
    }
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("Process 102 (Esc back)"), "{screen}");
    assert!(
        screen.contains("Process 102 is not in the state shown: not seen yet at this"),
        "{screen}"
    );
    assert_eq!(app.process(), Some(102), "still following it");

    app.set_replay_snapshot(30 * s, snapshot_with_deadlock(false));
    assert!(text(&render(&app, 80, 24)).contains("results (ipclib_chan 101 producer"));
}

#[test]
fn the_list_names_each_process_and_what_it_is_to_the_row() {
    let mut app = live(snapshot_with_deadlock(false));
    press(&mut app, &[Action::GoTo(Screen::Waits), Action::Enter]);
    let buf = render(&app, 80, 24);
    let all = lines(&buf);
    let at = all
        .iter()
        .position(|l| l.contains("┌Open which process? (Enter opens, Esc cancels)┐"))
        .unwrap_or_else(|| panic!("{}", text(&buf)));
    assert!(
        all[at + 1].contains("│102 consumer holder"),
        "{}",
        all[at + 1]
    );
    assert!(
        all[at + 2].contains("│101 producer waiter"),
        "{}",
        all[at + 2]
    );
    assert!(all[at + 3].contains("└──"));
}

#[test]
fn the_footer_says_which_key_opens_a_process_here() {
    let mut app = live(snapshot_with_deadlock(false));
    let footer = |app: &App| lines(&render(app, 80, 24))[23].trim_start().to_owned();
    assert_eq!(
        footer(&app),
        "? help q quit",
        "no deadlock: nothing to open"
    );
    app.update(Action::GoTo(Screen::Topology));
    assert_eq!(footer(&app), "o process ? help q quit");
    app.update(Action::GoTo(Screen::Signals));
    assert_eq!(footer(&app), "Enter/o process ? help q quit");
    app.update(Action::ToggleHelp);
    let help = text(&render(&app, 80, 24));
    assert!(help.contains("o                   open a process the row names (a list if several)"));
}

#[test]
fn a_hostile_snapshot_s_processes_draw_without_panicking() {
    let mut s = crate::screens::hostile_snapshot();
    s.processes[2].title = Some("\u{202e}🦀\u{0}\x1b[2J".repeat(30));
    let mut app = live(s);
    // The drill-down of a channel whose 40 receivers are all u32::MAX:
    // one process, opened at once.
    press(
        &mut app,
        &[Action::GoTo(Screen::Channels), Action::Enter, Action::Enter],
    );
    assert_eq!(app.process(), Some(u32::MAX));
    for (w, h) in [(1, 1), (10, 3), (80, 24), (250, 80)] {
        render(&app, w, h);
    }
    press(
        &mut app,
        &[Action::Back, Action::GoTo(Screen::Signals), Action::Enter],
    );
    press(&mut app, &[Action::Down, Action::Enter]);
    assert_eq!(app.process(), Some(102));
    for (w, h) in [(1, 1), (10, 3), (80, 24), (250, 80)] {
        let all = text(&render(&app, w, h));
        assert!(!all.contains('\0') && !all.contains('\x1b'), "{all:?}");
    }
}
