//! The dashboard on sample data, in a real terminal: for trying the keys
//! and for end-to-end runs (tmux) before a recorder feeds it.
//!
//! `cargo run -p tui --features test-data --example sample` shows a live
//! feed (a thread sending deltas for 60 s, then the end);
//! `... --example sample -- --replay` replays a 30 s sample session;
//! `... -- --heavy` feeds 500 channels and 100,000 events a second (the
//! load the frame-time target is set for; `?` shows the frame times).

use std::sync::mpsc;
use std::time::Duration;

use ipc_events::live::{Delta, Frame, PROTOCOL_VERSION};
use ipc_events::{Event, EventKind, Source};
use tui::test_data::{large_snapshot, snapshot_with_deadlock, SampleSession};
use tui::Options;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--replay") {
        return tui::run_replay(SampleSession::new(30), Options::default());
    }
    let heavy = std::env::args().any(|a| a == "--heavy");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || feed(&tx, heavy));
    tui::run_live(rx, Options::default())
}

/// Ten deltas a second for a minute; a deadlock from 20 s to 25 s. Stops
/// when the dashboard hangs up. `heavy`: 500 channels, and 10,000 events a
/// delta.
fn feed(tx: &mpsc::Sender<Result<Frame, String>>, heavy: bool) {
    let (base, events) = if heavy {
        (large_snapshot(500), 10_000)
    } else {
        (snapshot_with_deadlock(false), 20)
    };
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        session_id: base.session_id,
    };
    if tx.send(Ok(hello)).is_err()
        || tx
            .send(Ok(Frame::Snapshot(Box::new(base.clone()))))
            .is_err()
    {
        return;
    }
    for tick in 1..=600u64 {
        std::thread::sleep(Duration::from_millis(100));
        let now = base.now_ns + tick * 100_000_000;
        let mut jobs = base.channels[0].clone();
        jobs.messages += tick * 120;
        let mut deadlock = snapshot_with_deadlock((200..250).contains(&tick)).deadlocks;
        deadlock.retain(|_| tick >= 200);
        let delta = Delta {
            live: true,
            now_ns: now,
            totals: base.totals,
            rate_1s: base.rate_1s,
            channels: vec![jobs],
            deadlocks: deadlock,
            events: (0..events)
                .map(|i| {
                    let mut e = Event::new(now + i, 101, 101, Source::Lib, EventKind::MsgSend);
                    e.comm = "producer".to_owned();
                    e
                })
                .collect(),
            ..Delta::default()
        };
        if tx.send(Ok(Frame::Delta(Box::new(delta)))).is_err() {
            return;
        }
    }
    let _ = tx.send(Ok(Frame::End {
        exit_status: Some(0),
    }));
}
