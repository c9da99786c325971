//! The async (tokio) forms, on a single-threaded runtime: each one waits
//! for another process while a ticker task keeps running, which it could
//! not if the wait blocked the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipc_lib::channel::RecvError;
use ipc_lib::rpc::{Client, Server};
use ipc_lib::signal::{Signal, Signals};
use ipc_lib::socket::{SocketReceiver, SocketSender};

use crate::support::{
    open_when_ready, pattern, size_of_msg, spawn, unique_name, wait_bounded, PATIENCE,
};

/// A task that counts milliseconds as long as it gets to run.
fn ticker() -> Arc<AtomicU64> {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = Arc::clone(&ticks);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    ticks
}

#[tokio::test(flavor = "current_thread")]
async fn async_receive_waits_for_another_process_without_blocking_the_thread() {
    let name = unique_name("async-rx");
    let mut rx = SocketReceiver::builder(&name)
        .max_message_size(64)
        .create()
        .unwrap();
    let ticks = ticker();
    let mut child = spawn("sock-send-after", &name, "300,500");
    let first = tokio::time::timeout(PATIENCE, rx.recv_async())
        .await
        .unwrap()
        .unwrap();
    // Read before this task yields again: the ticker ran during the wait.
    let during = ticks.load(Ordering::Relaxed);
    assert!(during >= 10, "ticker ran only {during} times while waiting");
    assert_eq!(first, pattern(0, size_of_msg(0, 64)));
    for i in 1..500 {
        let got = tokio::time::timeout(PATIENCE, rx.recv_async())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, pattern(i, size_of_msg(i, 64)), "message {i}");
    }
    assert!(matches!(
        tokio::time::timeout(PATIENCE, rx.recv_async())
            .await
            .unwrap(),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[tokio::test(flavor = "current_thread")]
async fn async_send_waits_for_room_without_blocking_the_thread() {
    let name = unique_name("async-tx");
    // The child takes 200 us per message: the socket fills and stays full.
    let mut child = spawn("sock-recv-forever", &name, "");
    let mut tx = open_when_ready(|| SocketSender::builder(&name).open());
    let ticks = ticker();
    for i in 0..3000 {
        tokio::time::timeout(PATIENCE, tx.send_async(&pattern(i, size_of_msg(i, 64))))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    let during = ticks.load(Ordering::Relaxed);
    assert!(during >= 10, "ticker ran only {during} times while sending");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test(flavor = "current_thread")]
async fn async_server_and_client_share_one_thread() {
    let name = unique_name("async-rpc");
    let mut server = Server::builder(&name).create().unwrap();
    // Both ends on this one thread: a blocking wait in either would
    // deadlock the other.
    let serving = tokio::spawn(async move {
        let mut answered = 0u64;
        loop {
            match server.next_request_async().await {
                Ok(req) => {
                    let mut back = req.payload().to_vec();
                    back.reverse();
                    server.reply_async(&req, &back).await.unwrap();
                    answered += 1;
                }
                Err(RecvError::Disconnected) => return answered,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut client = Client::connect(&name).unwrap();
    for i in 0..300u32 {
        let req = format!("call {i}");
        let got = client.call_async(req.as_bytes(), PATIENCE).await.unwrap();
        assert_eq!(got, req.bytes().rev().collect::<Vec<_>>());
    }
    let n: Result<String, _> = client.call_value_async(&"x", PATIENCE).await;
    // The server reversed postcard's bytes: not a string any more.
    assert!(n.is_err());
    drop(client);
    assert_eq!(
        tokio::time::timeout(PATIENCE, serving)
            .await
            .unwrap()
            .unwrap(),
        301
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_signals_arrive_without_blocking_the_thread() {
    // A real-time signal no other test in this process takes.
    let s = Signal::new(libc::SIGRTMIN() + 11).unwrap();
    let mut signals = Signals::new(&[s]).unwrap();
    let ticks = ticker();
    let mut child = spawn("sig-to-parent", "", &format!("{},300", s.number()));
    let got = tokio::time::timeout(PATIENCE, signals.recv_async())
        .await
        .unwrap()
        .unwrap();
    let during = ticks.load(Ordering::Relaxed);
    assert!(during >= 10, "ticker ran only {during} times while waiting");
    assert_eq!(got.signal, s);
    assert_eq!(got.sender_pid, Some(child.id()));
    assert!(wait_bounded(&mut child, PATIENCE).success());
}
