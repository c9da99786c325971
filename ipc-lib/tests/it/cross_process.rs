//! Two real processes on one channel: delivery, order, peer death, limits.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_lib::channel::{Mode, Receiver, RecvError, SendError, Sender, WhenFull};

use crate::support::{pattern, size_of_msg, spawn, unique_name, wait_bounded, NameGuard, PATIENCE};

#[test]
fn messages_from_a_child_process_arrive_intact_and_in_order() {
    let name = unique_name("c2p");
    let _g = NameGuard(name.clone());
    // A small ring, so the sender blocks and the ring wraps many times.
    let mut rx = Receiver::builder(&name)
        .capacity(16 * 1024)
        .max_message_size(1000)
        .create()
        .unwrap();
    let n = 20_000u64;
    let mut child = spawn("send-n", &name, &format!("{n},1000"));
    let mut buf = Vec::new();
    let mut last_id = 0;
    for i in 0..n {
        let id = rx
            .recv_into(&mut buf, Some(PATIENCE))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(buf, pattern(i, size_of_msg(i, 1000)), "message {i}");
        assert!(id > last_id, "ids increase: {id} after {last_id}");
        last_id = id;
    }
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn messages_to_a_child_process_arrive_intact_and_in_order() {
    let name = unique_name("p2c");
    let _g = NameGuard(name.clone());
    let mut tx = Sender::builder(&name)
        .capacity(8 * 1024)
        .max_message_size(500)
        .create()
        .unwrap();
    let n = 20_000u64;
    let mut child = spawn("recv-verify-n", &name, &format!("{n},500"));
    for i in 0..n {
        tx.send_timeout(&pattern(i, size_of_msg(i, 500)), PATIENCE)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    drop(tx);
    // The child checked content and order and reports through its status.
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn sender_killed_mid_stream_gives_disconnected() {
    let name = unique_name("killtx");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name)
        .capacity(4096)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut child = spawn("send-forever", &name, "64");
    let mut i = 0u64;
    while i < 500 {
        let got = rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(got, pattern(i, size_of_msg(i, 64)));
        i += 1;
    }
    child.kill().unwrap();
    // Not reaped yet: a zombie must count as dead too.
    let deadline = Instant::now() + PATIENCE;
    let end = loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(got) => {
                // What it sent before dying is delivered, intact.
                assert_eq!(got, pattern(i, size_of_msg(i, 64)));
                i += 1;
            }
            Err(e) => break e,
        }
        assert!(
            Instant::now() < deadline,
            "still receiving after {PATIENCE:?}"
        );
    };
    assert!(matches!(end, RecvError::Disconnected), "{end}");
    child.wait().unwrap();
}

#[test]
fn sender_killed_wakes_a_receiver_asleep_in_recv() {
    let name = unique_name("killsleep");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).spins(0).create().unwrap();
    let mut child = spawn("send-ready-and-hold", &name, "");
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"ready");
    let (done_tx, done_rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        // No timeout: only the death check can end this call.
        done_tx.send(rx.recv()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    let r = done_rx
        .recv_timeout(PATIENCE)
        .expect("recv() still blocked after the sender died");
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    t.join().unwrap();
    child.wait().unwrap();
}

#[test]
fn receiver_killed_mid_stream_gives_disconnected_to_a_blocked_sender() {
    let name = unique_name("killrx");
    let _g = NameGuard(name.clone());
    let mut tx = Sender::builder(&name)
        .capacity(4096)
        .max_message_size(64)
        .when_full(WhenFull::Block)
        .create()
        .unwrap();
    let mut child = spawn("recv-forever", &name, "64");
    let mut i = 0u64;
    for _ in 0..300 {
        tx.send_timeout(&pattern(i, size_of_msg(i, 64)), PATIENCE)
            .unwrap();
        i += 1;
    }
    child.kill().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        // Blocking sends: the ring fills, then only the death check ends
        // the wait.
        let r = loop {
            match tx.send(&pattern(i, size_of_msg(i, 64))) {
                Ok(_) => i += 1,
                Err(e) => break e,
            }
        };
        done_tx.send(r).unwrap();
    });
    let r = done_rx
        .recv_timeout(PATIENCE)
        .expect("send() still blocked after the receiver died");
    assert!(matches!(r, SendError::Disconnected), "{r}");
    t.join().unwrap();
    child.wait().unwrap();
}

#[test]
fn oversized_message_is_an_error_and_nothing_of_it_arrives() {
    let name = unique_name("oversize");
    let _g = NameGuard(name.clone());
    // The child may open the channel after we are done and gone; the guard
    // removes the name instead.
    let mut tx = Sender::builder(&name)
        .capacity(4096)
        .max_message_size(16)
        .unlink_on_drop(false)
        .create()
        .unwrap();
    let mut child = spawn("recv-expect", &name, "a,exactly-16-bytes,b");
    tx.send(b"a").unwrap();
    for len in [17, 4096, 1 << 20] {
        match tx.send(&vec![b'x'; len]) {
            Err(SendError::TooLarge { len: l, max: 16 }) => assert_eq!(l, len),
            other => panic!("{len} bytes: {other:?}"),
        }
    }
    tx.send(b"exactly-16-bytes").unwrap();
    tx.send(b"b").unwrap();
    drop(tx);
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn senders_in_several_processes_share_a_multi_producer_channel() {
    let name = unique_name("mpsc");
    let _g = NameGuard(name.clone());
    let max = 200;
    let mut rx = Receiver::builder(&name)
        .capacity(8 * 1024)
        .max_message_size(max)
        .mode(Mode::Mpsc)
        .create()
        .unwrap();
    let n = 3000u64;
    let mut children: Vec<_> = (0..3)
        .map(|tag| spawn("send-tagged", &name, &format!("{tag},{n},{max}")))
        .collect();
    // Disconnected means that no sender is attached *now*, so a sender
    // that finished before a slow-starting one attached would end the
    // stream: every sender says hello before any of them starts.
    let mut buf = Vec::new();
    let mut hellos = [false; 3];
    for _ in 0..3 {
        rx.recv_into(&mut buf, Some(PATIENCE)).expect("hello");
        assert_eq!(buf.len(), 1, "a hello is the tag alone");
        hellos[buf[0] as usize] = true;
    }
    assert_eq!(hellos, [true; 3]);
    for c in &mut children {
        drop(c.stdin.take());
    }
    let mut next = [0u64; 3];
    for k in 0..3 * n {
        rx.recv_into(&mut buf, Some(PATIENCE))
            .unwrap_or_else(|e| panic!("message {k}: {e}"));
        let tag = buf[0] as usize;
        let i = u64::from_le_bytes(buf[1..9].try_into().unwrap());
        assert_eq!(i, next[tag], "sender {tag} out of order");
        assert_eq!(buf[9..], pattern(i, size_of_msg(i, max - 9)));
        next[tag] += 1;
    }
    for c in &mut children {
        assert!(wait_bounded(c, PATIENCE).success());
    }
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
}
