//! The Unix-socket transport between real processes: delivery, order, and
//! a peer killed mid-stream on either side.

use std::time::{Duration, Instant};

use ipc_lib::channel::{RecvError, SendError};
use ipc_lib::socket::{SocketReceiver, SocketSender};
use ipc_lib::transport::{MessageReceiver, MessageSender};

use crate::child::nums;
use crate::support::{
    open_when_ready, pattern, size_of_msg, spawn, unique_name, wait_bounded, PATIENCE,
};

/// The child's side of these tests (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Sends N messages of the pattern, sizes up to MAX, then leaves.
        "sock-send-n" => {
            let [n, max] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_when_ready(|| SocketSender::builder(name).open());
            for i in 0..n {
                tx.send(&pattern(i, size_of_msg(i, max as usize)))
                    .map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        // Waits DELAY ms, then sends N messages of the pattern (sizes up
        // to 64).
        "sock-send-after" => {
            let [delay, n] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_when_ready(|| SocketSender::builder(name).open());
            std::thread::sleep(Duration::from_millis(delay));
            for i in 0..n {
                tx.send(&pattern(i, size_of_msg(i, 64)))
                    .map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        // Sends until the receiver is gone (the parent kills it).
        "sock-send-forever" => {
            let mut tx = open_when_ready(|| SocketSender::builder(name).open());
            for i in 0.. {
                match tx.send(&pattern(i, size_of_msg(i, 64))) {
                    Ok(_) => {}
                    Err(SendError::Disconnected) => return Ok(()),
                    Err(e) => return Err(format!("send {i}: {e}")),
                }
            }
            Ok(())
        }
        // Receives and checks messages until killed.
        "sock-recv-forever" => {
            let mut rx = SocketReceiver::builder(name)
                .max_message_size(64)
                .create()
                .map_err(|e| e.to_string())?;
            for i in 0.. {
                let got = rx.recv().map_err(|e| format!("recv {i}: {e}"))?;
                if got != pattern(i, size_of_msg(i, 64)) {
                    return Err(format!("message {i} differs"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

#[test]
fn messages_from_child_processes_arrive_intact_and_in_order() {
    let name = unique_name("sock-c2p");
    let mut rx = SocketReceiver::builder(&name)
        .max_message_size(1000)
        .create()
        .unwrap();
    let n = 5_000u64;
    let mut children: Vec<_> = (0..3)
        .map(|_| spawn("sock-send-n", &name, &format!("{n},1000")))
        .collect();
    // Each child's messages come in its own order, under its own pid.
    let mut next = std::collections::HashMap::<u64, u64>::new();
    let mut buf = Vec::new();
    for _ in 0..3 * n {
        let id = rx.recv_into(&mut buf, Some(PATIENCE)).unwrap();
        let i = next.entry(id >> 32).or_default();
        assert_eq!(buf, pattern(*i, size_of_msg(*i, 1000)), "message {i}");
        *i += 1;
    }
    let pids: std::collections::HashSet<u64> = children.iter().map(|c| c.id().into()).collect();
    assert_eq!(
        next.keys()
            .copied()
            .collect::<std::collections::HashSet<_>>(),
        pids
    );
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    for c in &mut children {
        assert!(wait_bounded(c, PATIENCE).success());
    }
}

#[test]
fn sender_killed_mid_stream_gives_disconnected() {
    let name = unique_name("sock-killtx");
    let mut rx = SocketReceiver::builder(&name)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut child = spawn("sock-send-forever", &name, "");
    for i in 0..500 {
        assert_eq!(
            rx.recv_timeout(PATIENCE).unwrap(),
            pattern(i, size_of_msg(i, 64))
        );
    }
    child.kill().unwrap();
    // Whatever it sent before dying is delivered, in order, then the end.
    let deadline = Instant::now() + PATIENCE;
    let mut i = 500;
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(got) => assert_eq!(got, pattern(i, size_of_msg(i, 64))),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("after {i} messages: {e}"),
        }
        i += 1;
        assert!(Instant::now() < deadline, "never disconnected");
    }
    let _ = child.wait();
}

#[test]
fn receiver_killed_mid_stream_fails_the_sender() {
    let name = unique_name("sock-killrx");
    let mut child = spawn("sock-recv-forever", &name, "");
    let mut tx = open_when_ready(|| SocketSender::builder(&name).open());
    for i in 0..200 {
        tx.send_timeout(&pattern(i, size_of_msg(i, 64)), PATIENCE)
            .unwrap();
    }
    child.kill().unwrap();
    let _ = child.wait();
    let mut i = 200;
    let err = loop {
        match tx.send_timeout(&pattern(i, size_of_msg(i, 64)), PATIENCE) {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SendError::Disconnected), "{err:?}");
}
