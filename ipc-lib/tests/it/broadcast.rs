//! Broadcast between real processes: every subscriber gets every message,
//! a slow one lags by an exact count and carries on, a killed one
//! disturbs nobody, late joiners start where they asked, the publisher's
//! death ends the stream after its last message, and damaged or torn
//! slots never come out as data.
//!
//! Subscribers tell the parent they have joined through an ipc-lib
//! multi-producer channel (`NAME-ack`): subscribing writes nothing into a
//! broadcast, so there is nothing else for the parent to see.

use std::io::{Read, Write};
use std::process::Child;
use std::time::{Duration, Instant};

use ipc_lib::broadcast::{layout, Publisher, RecvError, Start, Subscriber};
use ipc_lib::channel::{Mode, Receiver, Sender};

use crate::child::nums;
use crate::support::{
    capture_ops, open_when_ready, pattern, size_of_msg, spawn, unique_name, wait_bounded, Hostile,
    NameGuard, PATIENCE,
};

const MAX: usize = 200;

fn subscribe(name: &str, start: Start) -> Subscriber {
    open_when_ready(|| Subscriber::builder(name).start(start).open())
}

/// Tells the parent this process has subscribed. The sender is kept
/// until the role ends: the parent's channel would be disconnected once
/// every sender that attached had left.
fn ack(name: &str) -> Result<Sender, String> {
    let mut tx = open_when_ready(|| Sender::builder(format!("{name}-ack")).open());
    tx.send(b"joined").map_err(|e| e.to_string())?;
    Ok(tx)
}

fn start_of(code: u64) -> Start {
    match code {
        1 => Start::Latest,
        2 => Start::Oldest,
        _ => Start::New,
    }
}

/// Receives messages FIRST..END (exclusive) of the pattern in order, no
/// lag allowed, then expects Disconnected.
fn verify(sub: &mut Subscriber, first: u64, end: u64) -> Result<(), String> {
    for i in first..end {
        let got = sub
            .recv_timeout(PATIENCE)
            .map_err(|e| format!("message {i}: {e}"))?;
        if got != pattern(i, size_of_msg(i, MAX)) {
            return Err(format!("message {i} differs ({} bytes)", got.len()));
        }
    }
    match sub.recv_timeout(PATIENCE) {
        Err(RecvError::Disconnected) => Ok(()),
        other => Err(format!("after message {}: {other:?}", end - 1)),
    }
}

/// The child's side (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    let v = nums(arg);
    match (role, &v[..]) {
        // Subscribes from START, says so, then checks messages FIRST..END
        // and Disconnected.
        ("bc-verify", &[start, first, end]) => {
            let mut sub = subscribe(name, start_of(start));
            let _ack = ack(name)?;
            verify(&mut sub, first, end)
        }
        // Subscribes, says so, waits for our stdin to close (the parent
        // publishes meanwhile), then expects a lag of MISSED and the
        // messages from MISSED to END.
        ("bc-lag", &[missed, end]) => {
            let mut sub = subscribe(name, Start::New);
            let _ack = ack(name)?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            match sub.try_recv() {
                Err(RecvError::Lagged { missed: m }) if m == missed => {}
                other => return Err(format!("wanted a lag of {missed}: {other:?}")),
            }
            verify(&mut sub, missed, end)?;
            if sub.missed() != missed {
                return Err(format!("missed() says {}", sub.missed()));
            }
            Ok(())
        }
        // Subscribes, says so, and reads until killed.
        ("bc-forever", _) => {
            let mut sub = subscribe(name, Start::New);
            let _ack = ack(name)?;
            loop {
                match sub.recv() {
                    Ok(_) => std::thread::sleep(Duration::from_micros(300)),
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
        }
        // Creates the broadcast, publishes N messages, then holds it open
        // until killed.
        ("bc-publish-and-hold", &[cap, n]) => {
            let mut p = Publisher::builder(name)
                .capacity(cap as usize)
                .max_message_size(MAX)
                .create()
                .map_err(|e| e.to_string())?;
            for i in 0..n {
                p.publish(&pattern(i, size_of_msg(i, MAX)))
                    .map_err(|e| e.to_string())?;
            }
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        }
        // Creates the broadcast and publishes the pattern as fast as it
        // can, N messages, then leaves.
        ("bc-flood", &[cap, n, max]) => {
            let mut p = Publisher::builder(name)
                .capacity(cap as usize)
                .max_message_size(max as usize)
                .unlink_on_drop(false)
                .create()
                .map_err(|e| e.to_string())?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            for i in 0..n {
                p.publish(&pattern(i, max as usize))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        _ => Err(format!("bad role or arg: {role} {arg:?}")),
    }
}

/// The acknowledgement channel, and a wait for `n` subscribers' acks.
fn acks(name: &str) -> (Receiver, NameGuard) {
    let ack = format!("{name}-ack");
    let rx = Receiver::builder(&ack)
        .mode(Mode::Mpsc)
        .max_message_size(64)
        .create()
        .unwrap();
    (rx, NameGuard(ack))
}

fn await_joined(rx: &mut Receiver, n: usize) {
    for _ in 0..n {
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"joined");
    }
}

fn publisher(name: &str, cap: usize) -> Publisher {
    Publisher::builder(name)
        .capacity(cap)
        .max_message_size(MAX)
        .create()
        .unwrap()
}

fn publish_range(p: &mut Publisher, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(p.publish(&pattern(i, size_of_msg(i, MAX))).unwrap(), i + 1);
    }
}

fn assert_success(children: &mut [Child]) {
    for c in children {
        let status = wait_bounded(c, PATIENCE);
        assert!(status.success(), "child {}: {status}", c.id());
    }
}

#[test]
fn three_subscriber_processes_each_receive_every_message_in_order() {
    let name = unique_name("bc-three");
    let (mut ackrx, _ack) = acks(&name);
    let mut p = publisher(&name, 4096);
    let _guard = NameGuard(name.clone());
    let n = 3000;
    let mut kids: Vec<Child> = (0..3)
        .map(|_| spawn("bc-verify", &name, &format!("0,0,{n}")))
        .collect();
    await_joined(&mut ackrx, 3);
    publish_range(&mut p, 0..n);
    drop(p);
    assert_success(&mut kids);
}

#[test]
fn a_slow_subscriber_lags_by_the_exact_count_and_carries_on() {
    let name = unique_name("bc-lag");
    let (mut ackrx, _ack) = acks(&name);
    let mut p = publisher(&name, 16);
    let _guard = NameGuard(name.clone());
    let mut slow = spawn("bc-lag", &name, "84,100");
    await_joined(&mut ackrx, 1);
    publish_range(&mut p, 0..100);
    drop(slow.stdin.take());
    drop(p);
    assert_success(std::slice::from_mut(&mut slow));
}

#[test]
fn a_subscriber_killed_mid_read_disturbs_neither_the_publisher_nor_the_others() {
    let name = unique_name("bc-kill");
    let (mut ackrx, _ack) = acks(&name);
    let mut p = publisher(&name, 4096);
    let _guard = NameGuard(name.clone());
    let n = 2000;
    let mut victim = spawn("bc-forever", &name, "");
    let mut kids: Vec<Child> = (0..2)
        .map(|_| spawn("bc-verify", &name, &format!("0,0,{n}")))
        .collect();
    await_joined(&mut ackrx, 3);
    let publish = |p: &mut Publisher, range: std::ops::Range<u64>| {
        for i in range {
            p.publish(&pattern(i, size_of_msg(i, MAX))).unwrap();
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    publish(&mut p, 0..n / 2);
    // Mid-stream: reading, or asleep on the futex between messages (it
    // sleeps 300 µs after each).
    victim.kill().unwrap();
    assert!(!victim.wait().unwrap().success());
    publish(&mut p, n / 2..n);
    drop(p);
    assert_success(&mut kids);
}

#[test]
fn late_subscribers_start_new_latest_or_oldest() {
    let name = unique_name("bc-late");
    let (mut ackrx, _ack) = acks(&name);
    let mut p = publisher(&name, 32);
    let _guard = NameGuard(name.clone());
    publish_range(&mut p, 0..10);
    let mut kids = vec![
        spawn("bc-verify", &name, "0,10,20"),
        spawn("bc-verify", &name, "1,9,20"),
        spawn("bc-verify", &name, "2,0,20"),
    ];
    await_joined(&mut ackrx, 3);
    publish_range(&mut p, 10..20);
    drop(p);
    assert_success(&mut kids);
}

#[test]
fn the_publisher_dying_gives_disconnected_after_its_last_message() {
    let name = unique_name("bc-death");
    let _guard = NameGuard(name.clone());
    let mut publisher = spawn("bc-publish-and-hold", &name, "64,40");
    let mut sub = subscribe(&name, Start::Oldest);
    // Everything published and unread, then the publisher killed.
    let deadline = Instant::now() + PATIENCE;
    while sub.pending() < 40 {
        assert!(
            Instant::now() < deadline,
            "only {} published",
            sub.pending()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    publisher.kill().unwrap();
    publisher.wait().unwrap();
    verify(&mut sub, 0, 40).unwrap();
    // And it stays so.
    assert!(matches!(sub.try_recv(), Err(RecvError::Disconnected)));
}

/// Where message `seq`'s slot starts in the segment.
fn slot_offset(p: &Publisher, seq: u64) -> usize {
    let l = p.layout();
    layout::HEADER_SIZE + (seq % l.capacity as u64) as usize * layout::slot_size(l.max_message_size)
}

#[test]
fn a_damaged_slot_is_an_error_for_that_message_only() {
    let name = unique_name("bc-corrupt");
    let mut p = publisher(&name, 8);
    let mut sub = Subscriber::builder(&name).open().unwrap();
    publish_range(&mut p, 0..4);
    let h = Hostile::map(&name);
    // A payload byte of message 1, and the stamp of message 2 made one
    // no publish writes (an older message's).
    h.flip_byte(slot_offset(&p, 1) + 34, 0x10);
    h.write_u64(slot_offset(&p, 2), 2);
    assert_eq!(sub.try_recv().unwrap(), pattern(0, size_of_msg(0, MAX)));
    assert!(matches!(
        sub.try_recv(),
        Err(RecvError::Corrupt { seq: 1, .. })
    ));
    assert!(matches!(
        sub.try_recv(),
        Err(RecvError::Corrupt { seq: 2, .. })
    ));
    assert_eq!(sub.try_recv().unwrap(), pattern(3, size_of_msg(3, MAX)));
    assert!(matches!(sub.try_recv(), Err(RecvError::Empty)));
}

#[test]
fn a_slot_being_written_over_is_lag_never_data() {
    let name = unique_name("bc-torn");
    let mut p = publisher(&name, 8);
    let mut sub = Subscriber::builder(&name).open().unwrap();
    publish_range(&mut p, 0..3);
    // As if the publisher, 8 messages on, had begun writing message 9
    // over message 1's slot while we read it: the odd stamp of message 9.
    let h = Hostile::map(&name);
    h.write_u64(slot_offset(&p, 1), 2 * 9 + 1);
    assert_eq!(sub.try_recv().unwrap(), pattern(0, size_of_msg(0, MAX)));
    // Messages 1 (overwritten) and, with the count still at 3, none else.
    assert!(matches!(
        sub.try_recv(),
        Err(RecvError::Lagged { missed: 1 })
    ));
    assert_eq!(sub.try_recv().unwrap(), pattern(2, size_of_msg(2, MAX)));
}

#[test]
fn a_flooding_publisher_never_hands_out_a_torn_message() {
    // A small broadcast of large messages written over as fast as another
    // process can: every message a reader gets is whole, and what it gets
    // plus what it is told it missed is everything.
    let name = unique_name("bc-flood");
    let _guard = NameGuard(name.clone());
    let (cap, n, max) = (4u64, 20_000u64, 4096usize);
    let mut flood = spawn("bc-flood", &name, &format!("{cap},{n},{max}"));
    let mut sub = subscribe(&name, Start::Oldest);
    let go = flood.stdin.take();
    let _ = go.map(|mut g| g.write_all(b"go"));
    let (mut got, mut missed, mut last) = (0u64, 0u64, None::<u64>);
    loop {
        let mut buf = Vec::new();
        match sub.recv_into(&mut buf, Some(PATIENCE)) {
            Ok(id) => {
                let i = id - 1;
                assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
                assert_eq!(buf, pattern(i, max), "message {i}");
                last = Some(i);
                got += 1;
            }
            Err(RecvError::Lagged { missed: m }) => missed += m,
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got + missed, n, "{got} received, {missed} missed");
    assert_success(std::slice::from_mut(&mut flood));
}

#[test]
fn publishes_deliveries_and_lags_are_traced() {
    let name = unique_name("bc-trace");
    let (_, ops) = capture_ops(|| {
        let mut p = publisher(&name, 2);
        let mut sub = Subscriber::builder(&name).open().unwrap();
        p.publish(b"one").unwrap();
        assert_eq!(sub.try_recv().unwrap(), b"one");
        for m in [b"a", b"b", b"c"] {
            p.publish(m).unwrap();
        }
        assert!(matches!(
            sub.try_recv(),
            Err(RecvError::Lagged { missed: 1 })
        ));
    });
    let ops: Vec<_> = ops
        .iter()
        .filter(|o| o.channel == "ipclib_broadcast")
        .map(|o| (o.kind.as_str(), o.size, o.msg_id, o.aux))
        .collect();
    assert_eq!(
        ops,
        [
            ("msg_send", 3, 1, 0),
            ("msg_recv", 3, 1, 0),
            ("msg_send", 1, 2, 0),
            ("msg_send", 1, 3, 0),
            ("msg_send", 1, 4, 0),
            ("drop", 1, 0, ipc_events::raw::drop_source::LAGGED),
        ]
    );
}

#[test]
fn an_async_subscriber_waits_without_holding_the_runtime() {
    let name = unique_name("bc-async");
    let mut p = publisher(&name, 8);
    let sub = Subscriber::builder(&name).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        p.publish(b"late").unwrap();
        p
    });
    rt.block_on(async {
        let mut sub = sub.into_async();
        let ticks = tokio::spawn(async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
        assert_eq!(got.unwrap(), b"late");
        // The runtime's one thread ran the other task meanwhile.
        assert!(ticks.is_finished());
        drop(t.join().unwrap());
        assert!(matches!(
            tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap(),
            Err(RecvError::Disconnected)
        ));
    });
}
