//! Whole screens at 80x24 (and bigger, and smaller) through `TestBackend`.

use ipc_events::live::{DropCount, Frame, Snapshot};
use ratatui::style::Color;
use tui::action::Action;
use tui::app::{App, Screen};
use tui::test_data::{large_snapshot, snapshot_with_deadlock};

use crate::{lines, live, render, text};

fn on(app: &mut App, screen: Screen) -> String {
    app.update(Action::GoTo(screen));
    text(&render(app, 80, 24))
}

#[test]
fn overview_at_80x24() {
    let app = live(snapshot_with_deadlock(false));
    assert_eq!(
        lines(&render(&app, 80, 24)),
        [
            "1 Overview 2 Channels 3 Topology 4 Waits 5 Signals 6 Events                 LIVE",
            "┌Session 7 demo────────────────────────────────────────────────────────────────┐",
            "│events/s 2.58k   messages/s 1.29k   bytes/s 82.7 kB/s                         │",
            "│processes 3  channels 3  messages 12.9k  drops 0                              │",
            "└──────────────────────────────────────────────────────────────────────────────┘",
            "┌messages/s, last 30 s (peak 1.27k)────────────────────────────────────────────┐",
            "│                      ▁▂▃▄▅▆▇█                                                │",
            "│              ▁▂▃▄▅▆▇█████████                                                │",
            "│     ▁▂▃▄▅▆▆▇█████████████████                                                │",
            "│▄▅▆▇██████████████████████████                                                │",
            "│██████████████████████████████                                                │",
            "└──────────────────────────────────────────────────────────────────────────────┘",
            "┌Top channels (msg/s)──────────────────────────────────────────────────────────┐",
            "│Channel                                         msg/s    bytes/s     p99      │",
            "│jobs (ipclib_channel)                           1.20k    76.8 kB/s   8.00 µs  │",
            "│results (ipclib_channel)                        90       5.76 kB/s   12.0 µs  │",
            "│pipe:[4242] (pipe)                              2.0      128 B/s     16.0 µs  │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "│                                                                              │",
            "└──────────────────────────────────────────────────────────────────────────────┘",
            "                                                                   ? help q quit",
        ]
    );
}

#[test]
fn the_deadlock_banner_shows_exactly_while_one_is_active() {
    let active = render(&live(snapshot_with_deadlock(true)), 80, 24);
    let banner = &lines(&active)[1];
    assert!(
        banner.starts_with(" DEADLOCK (1 active) since +20.000s: producer 101 ─[sem /slots]→"),
        "{banner}"
    );
    assert_eq!(active[(0, 1)].bg, Color::Red);
    assert_eq!(active[(79, 1)].bg, Color::Red, "the whole line is red");
    // The Waits tab turns red too, so other screens point at it.
    let waits_tab = text(&active).find("4 Waits").unwrap();
    assert_eq!(active[(waits_tab as u16, 0)].fg, Color::Red);

    let resolved = render(&live(snapshot_with_deadlock(false)), 80, 24);
    assert!(!text(&resolved).contains("DEADLOCK"));
    assert_ne!(resolved[(waits_tab as u16, 0)].fg, Color::Red);
}

#[test]
fn lost_events_show_in_red_with_their_sources() {
    let mut s = snapshot_with_deadlock(false);
    s.totals.drops = 12;
    s.drops = vec![
        DropCount {
            source: "ebpf_ring".to_owned(),
            count: 10,
        },
        DropCount {
            source: "lib_ring".to_owned(),
            count: 2,
        },
        DropCount {
            source: "ingest".to_owned(),
            count: 0,
        },
    ];
    let buf = render(&live(s), 80, 24);
    let line = &lines(&buf)[3];
    assert!(
        line.contains("drops 12 (ebpf_ring 10, lib_ring 2)"),
        "{line}"
    );
    let x = line.find("12 (").unwrap();
    let x = line[..x].chars().count() as u16;
    assert_eq!(buf[(x, 3)].fg, Color::Red);
}

#[test]
fn events_the_disk_has_not_caught_up_with_show_in_yellow() {
    let mut s = snapshot_with_deadlock(false);
    let stored = render(&live(s.clone()), 110, 24);
    assert!(!lines(&stored)[3].contains("not yet stored"));
    // A transaction in flight (0.2 s at the snapshot's 2,584 events/s) is
    // no news.
    s.totals.unstored = 500;
    let in_flight = render(&live(s.clone()), 110, 24);
    assert!(!lines(&in_flight)[3].contains("not yet stored"));
    s.totals.unstored = 250_000;
    let buf = render(&live(s), 110, 24);
    let line = &lines(&buf)[3];
    assert!(
        line.contains("not yet stored 250k (96.7 s behind)"),
        "{line}"
    );
    let x = line.find("250k").unwrap();
    let x = line[..x].chars().count() as u16;
    assert_eq!(buf[(x, 3)].fg, Color::Yellow);
}

#[test]
fn every_screen_shows_its_content_at_80x24() {
    let mut app = live(snapshot_with_deadlock(true));
    let channels = on(&mut app, Screen::Channels);
    assert!(channels.contains("Channels 3 · sort msg/s · window 10s"));
    assert!(channels
        .contains("jobs (ipclib_chann 101→102     1.20k  76.8 kB/s  2.00 µs 8.00 µs 20.0 µs 1"));

    let topology = on(&mut app, Screen::Topology);
    assert!(
        topology.contains("101 producer     → 102 consumer"),
        "{topology}"
    );

    let waits = on(&mut app, Screen::Waits);
    assert!(
        waits.contains("/slots (sem)                  300     1    12.0 ms"),
        "{waits}"
    );
    assert!(
        waits.contains("Waits on /slots (sem)"),
        "the selected row's histogram"
    );
    assert!(waits.contains("ACTIVE for 10.0 s (detected +20.000s)"));
    assert!(waits.contains("producer 101 ─[sem /slots]→ consumer 102 ─[sem /items]→ producer 101"));

    let signals = on(&mut app, Screen::Signals);
    assert!(
        signals.contains("100 demo      102 consumer SIGUSR1    4      4      3.00 µs"),
        "{signals}"
    );

    let events = on(&mut app, Screen::Events);
    assert!(events.contains("Events (50 of the last 50)"));
    assert!(
        events.contains("+4.900s    102     102     consumer   msg_recv"),
        "the log follows the newest event"
    );
}

#[test]
fn the_drill_down_shows_histogram_latency_and_payloads() {
    let mut app = live(snapshot_with_deadlock(false));
    app.update(Action::GoTo(Screen::Channels));
    app.update(Action::Enter);
    let screen = on(&mut app, Screen::Channels);
    assert!(screen.contains("jobs (ipclib_channel) (Esc back)"));
    assert!(screen.contains("101 producer → 102 consumer   12.0k messages, 768 kB, queue 1"));
    assert!(screen.contains("≤4.00 µs ██████████████████████  6.67k"));
    assert!(screen.contains("Latency over time (µs)"));
    assert!(screen.contains("+4.000s    101→102       64 B     5.00 µs   job 4."));
    app.update(Action::Back);
    assert!(on(&mut app, Screen::Channels).contains("Snd→Rcv"));
}

#[test]
fn the_event_filter_narrows_the_log_and_shows_in_the_footer() {
    let mut app = live(snapshot_with_deadlock(false));
    app.update(Action::GoTo(Screen::Events));
    app.update(Action::StartFilter);
    for c in "pid:101 kind:send".chars() {
        app.update(Action::FilterChar(c));
    }
    let typing = text(&render(&app, 80, 24));
    assert!(typing.contains("/pid:101 kind:send█"));
    app.update(Action::FilterCommit);
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("Events (25 of the last 50)"));
    assert!(!screen.contains("consumer"));
    assert!(screen.contains("filter: pid:101 kind:send"));

    app.update(Action::StartFilter);
    app.update(Action::FilterChar(' '));
    for c in "tid:1".chars() {
        app.update(Action::FilterChar(c));
    }
    let screen = text(&render(&app, 80, 24));
    assert!(
        screen.contains(
            "/pid:101 kind:send tid:1█ unknown field \"tid\": use pid: comm: kind: chan:"
        ),
        "{screen}"
    );
}

#[test]
fn help_lists_the_keys_and_the_replay_adds_its_timeline() {
    let mut app = live(snapshot_with_deadlock(false));
    app.update(Action::ToggleHelp);
    let help = text(&render(&app, 80, 24));
    assert!(help.contains("Help (Esc closes)"));
    assert!(help.contains("q / Ctrl-C"));
    assert!(help.contains("frame time: median -, p99 -"));
    assert!(!help.contains("seek ten seconds"));

    let mut replay = App::replay((0, 10_000_000_000));
    replay.set_replay_snapshot(0, snapshot_with_deadlock(false));
    replay.update(Action::ToggleHelp);
    let screen = text(&render(&replay, 80, 24));
    assert!(screen.contains("seek ten seconds"));
    assert!(screen.contains("REPLAY"));
    assert!(
        screen.contains("━━● +10.000s"),
        "the timeline row, at the end:\n{screen}"
    );
}

#[test]
fn without_data_the_screen_says_what_it_waits_for() {
    let mut app = App::live();
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("Waiting for the recording's first snapshot…"));
    assert!(screen.contains("WAITING"));
    app.on_feed_closed();
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("The live feed closed before sending a snapshot."));
    assert!(screen.contains("live feed lost"));
}

#[test]
fn the_end_of_the_recording_is_shown() {
    let mut app = live(snapshot_with_deadlock(false));
    app.on_frame(Frame::End {
        exit_status: Some(0),
    })
    .unwrap();
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("recording ended (exit 0)"));
    assert!(screen.contains("ENDED"));
}

#[test]
fn a_bigger_terminal_shows_more_and_a_tiny_one_does_not_break() {
    let mut app = live(large_snapshot(300));
    app.update(Action::GoTo(Screen::Channels));
    let big = text(&render(&app, 200, 60));
    assert!(
        big.contains("chan-299 (ipclib_channel)"),
        "full names at 200 columns"
    );
    assert_eq!(big.matches("(ipclib_channel)").count(), 60 - 2 - 3);
    for screen in Screen::ALL {
        app.update(Action::GoTo(screen));
        for (w, h) in [(1, 1), (20, 5), (80, 24), (300, 100)] {
            render(&app, w, h);
        }
    }
}

#[test]
fn control_bytes_from_another_process_never_reach_the_terminal() {
    let mut s = snapshot_with_deadlock(false);
    for e in &mut s.recent_events {
        e.comm = "evil\x1b[2J\x07".to_owned();
    }
    s.channels[0].recent[1].payload = Some(b"\x1b]0;pwned\x07".to_vec());
    let mut app = live(s);
    for screen in [Screen::Events, Screen::Channels] {
        app.update(Action::GoTo(screen));
        if screen == Screen::Channels {
            app.update(Action::Enter);
        }
        let buf = render(&app, 120, 40);
        let all = text(&buf);
        assert!(!all.contains('\x1b') && !all.contains('\x07'), "{all:?}");
    }
}

#[test]
fn pausing_and_the_latency_window_show_in_the_frame() {
    let mut app = live(snapshot_with_deadlock(false));
    app.update(Action::TogglePause);
    let paused = text(&render(&app, 80, 24));
    assert!(paused.lines().next().unwrap().ends_with("PAUSED"));

    // 10 s -> session: jobs averages 12,000 messages over 30 s.
    app.update(Action::NextWindow);
    let channels = on(&mut app, Screen::Channels);
    assert!(channels.contains("window session"), "{channels}");
    assert!(
        channels.contains("101→102     400    25.6 kB/s"),
        "{channels}"
    );
}

#[test]
fn enter_on_the_log_opens_the_event_with_every_field() {
    let mut s = snapshot_with_deadlock(false);
    let last = s.recent_events.last_mut().unwrap();
    last.path = Some("/usr/bin/evil\x1b[2J".to_owned());
    last.payload = Some(b"ping\x00".to_vec());
    last.duration_ns = Some(1_500);
    let mut app = live(s);
    app.update(Action::GoTo(Screen::Events));
    app.update(Action::Enter);
    let screen = text(&render(&app, 80, 24));
    assert!(
        screen.contains("Event (Enter: its process, Esc closes)"),
        "{screen}"
    );
    assert!(screen.contains("process    consumer pid 102 tid 102"));
    assert!(screen.contains("channel    jobs (ipclib_channel)"));
    assert!(screen.contains("message id 24"));
    assert!(screen.contains("blocked    1.50 µs"));
    assert!(screen.contains("payload    ping."));
    assert!(
        screen.contains("path       /usr/bin/evil[2J"),
        "the escape is dropped"
    );
    app.update(Action::Back);
    assert!(!text(&render(&app, 80, 24)).contains("Event (Enter: its process, Esc closes)"));
}

/// Values no sane recorder sends, but a broken or hostile peer might:
/// nothing of it may panic or reach the terminal raw.
pub fn hostile_snapshot() -> Snapshot {
    let mut s = snapshot_with_deadlock(true);
    s.started_ns = u64::MAX - 5;
    s.now_ns = 3;
    s.session_name = "名前🦀".repeat(50);
    s.rate_1s.events_per_s = f64::NAN;
    s.rate_1s.messages_per_s = f64::INFINITY;
    s.rate_1s.bytes_per_s = -1.0;
    s.totals.drops = u64::MAX;
    s.drops[0].count = u64::MAX;
    for sec in &mut s.seconds {
        sec.messages = u64::MAX - sec.start_ns % 7;
    }
    for c in &mut s.channels {
        c.senders.clear();
        c.receivers = vec![u32::MAX; 40];
        c.messages = u64::MAX;
        c.rate_10s.messages_per_s = f64::NEG_INFINITY;
        c.latency.session.max = u64::MAX;
        c.latency.histogram.iter_mut().for_each(|b| {
            b.count = u64::MAX;
            b.upper_ns = u64::MAX;
        });
        for m in &mut c.recent {
            m.sent_ns = u64::MAX;
            m.latency_ns = u64::MAX;
            m.payload = Some(vec![0xff; 10_000]);
        }
    }
    s.channels[0].recent.clear();
    s.channels[1].latency.histogram.clear();
    s.deadlocks[0].cycle.clear();
    s.deadlocks[0].detected_ns = u64::MAX;
    s.waits[0].latency.histogram.clear();
    s.signals[0].signo = u32::MAX;
    for e in &mut s.recent_events {
        e.comm = "\u{202e}🦀\u{0}".repeat(20);
        e.ts_ns = 0;
        e.result = i64::MIN;
        e.duration_ns = Some(u64::MAX);
    }
    s
}

#[test]
fn a_hostile_snapshot_renders_everywhere_without_panicking() {
    let mut app = live(hostile_snapshot());
    for screen in Screen::ALL {
        for enter in [false, true] {
            app.update(Action::GoTo(screen));
            if enter {
                app.update(Action::Enter);
            }
            for (w, h) in [(1, 1), (10, 3), (80, 24), (250, 80)] {
                let buf = render(&app, w, h);
                assert!(!text(&buf).contains('\0'), "{screen:?} {w}x{h}");
            }
            app.update(Action::Back);
        }
    }
    app.update(Action::ToggleHelp);
    render(&app, 80, 24);
    let mut replay = App::replay((u64::MAX, 0));
    replay.set_replay_snapshot(u64::MAX, hostile_snapshot());
    render(&replay, 80, 24);
}

/// Two lockers blocked for the whole session, their waits never finished:
/// the Waits screen read `total 0 ns` for them (issue 17). Nothing finished
/// is unknown, not 0.
#[test]
fn a_wait_nobody_finished_has_no_total() {
    let mut s = snapshot_with_deadlock(true);
    s.waits[1].waits = 0;
    s.waits[1].total_ns = 0;
    s.waits[1].waiting_now = 1;
    s.waits[1].latency.session.count = 0;
    s.waits[1].latency.last_10s.count = 0;
    s.waits[1].latency.last_1s.count = 0;
    let mut app = live(s);
    let waits = on(&mut app, Screen::Waits);
    let row = waits
        .lines()
        .find(|l| l.contains("/items (sem)"))
        .unwrap_or_else(|| panic!("{waits}"));
    assert!(!row.contains("0 ns"), "{row}");
    assert_eq!(row.matches('–').count(), 4, "total, p50, p99, max: {row}");
}

/// A kernel-sent signal reads as "kernel" and nothing more; it says why
/// the kernel sent it, as `signals.cause` does (issue 17).
#[test]
fn a_signal_the_kernel_sent_says_why() {
    let mut s = snapshot_with_deadlock(false);
    let mut chld = s.signals[0].clone();
    (chld.sender_pid, chld.signo, chld.cause) = (0, 17, Some("child".to_owned()));
    s.signals.push(chld);
    let signals = on(&mut live(s), Screen::Signals);
    assert!(
        signals.contains("kernel:child  102 consumer SIGCHLD"),
        "{signals}"
    );
}
