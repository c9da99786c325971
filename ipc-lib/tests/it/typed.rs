//! The typed ends (`TypedSender` / `TypedReceiver`) between real
//! processes: structs across the process boundary, a message that is not
//! one, and the async ends under tokio.

use std::time::Duration;

use ipc_lib::channel::{Receiver, RecvError, Sender, TypedReceiver, TypedSender};
use ipc_lib::socket::{SocketReceiver, SocketSender};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

use crate::child::nums;
use crate::support::{
    capture_ops, open_receiver, open_sender, open_when_ready, spawn, unique_name, wait_bounded,
    NameGuard, PATIENCE,
};

/// A message with some shape: nested, variable-length, an enum.
#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Job {
    id: u64,
    path: String,
    args: Vec<String>,
    priority: Priority,
    deadline_ms: Option<u32>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone, Copy)]
enum Priority {
    Low,
    High { boost: u8 },
}

/// Job `i`, the same in both processes.
fn job(i: u64) -> Job {
    Job {
        id: i,
        path: format!("/var/spool/jobs/{i}"),
        args: (0..i % 5).map(|a| format!("--arg{a}")).collect(),
        priority: if i.is_multiple_of(3) {
            Priority::High { boost: i as u8 }
        } else {
            Priority::Low
        },
        deadline_ms: i.is_multiple_of(2).then_some(i as u32 * 10),
    }
}

/// The child's side of these tests (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    let n = || {
        nums(arg)
            .first()
            .copied()
            .ok_or_else(|| format!("bad arg {arg:?}"))
    };
    match role {
        // Sends jobs 0..N through a typed sender, then leaves.
        "typed-send-jobs" => {
            let mut tx: TypedSender<Job> = open_sender(name).into_typed();
            for i in 0..n()? {
                tx.send(&job(i)).map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        // Sends bytes that are no Job through the byte end, then job 1
        // through the typed one.
        "typed-send-garbage-then-job" => {
            let mut tx = open_sender(name);
            tx.send(&[0xff; 7]).map_err(|e| format!("garbage: {e}"))?;
            let mut tx: TypedSender<Job> = tx.into_typed();
            tx.send(&job(1)).map_err(|e| format!("job: {e}"))?;
            Ok(())
        }
        // Receives jobs 0..N through a typed receiver, checking each, then
        // expects Disconnected.
        "typed-recv-jobs" => {
            let n = n()?;
            let mut rx: TypedReceiver<Job> = open_receiver(name).into_typed();
            for i in 0..n {
                let got = rx
                    .recv_timeout(PATIENCE)
                    .map_err(|e| format!("recv {i}: {e}"))?;
                if got != job(i) {
                    return Err(format!("job {i} arrived as {got:?}"));
                }
            }
            match rx.recv_timeout(PATIENCE) {
                Err(RecvError::Disconnected) => Ok(()),
                other => Err(format!("after {n} jobs: {other:?}")),
            }
        }
        // The socket transport: jobs 0..N through a typed socket sender.
        "typed-sock-send-jobs" => {
            let tx = open_when_ready(|| SocketSender::builder(name).open());
            let mut tx: TypedSender<Job, _> = tx.into_typed();
            for i in 0..n()? {
                tx.send(&job(i)).map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        _ => Err(format!("unknown role {role:?}")),
    }
}

#[test]
fn typed_structs_cross_between_processes_both_ways() {
    let n = 2000;
    // Another process sends, we receive.
    let name = unique_name("typed-in");
    let _g = NameGuard(name.clone());
    let mut rx: TypedReceiver<Job> = Receiver::builder(&name)
        .capacity(16 * 1024)
        .create()
        .unwrap()
        .into_typed();
    let mut child = spawn("typed-send-jobs", &name, &n.to_string());
    for i in 0..n {
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(i), "job {i}");
    }
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());

    // We send into a small channel (so sends wait for room), the other
    // process checks.
    let name = unique_name("typed-out");
    let _g = NameGuard(name.clone());
    let mut tx: TypedSender<Job> = Sender::builder(&name)
        .capacity(2 * 1024)
        .create()
        .unwrap()
        .into_typed();
    let mut child = spawn("typed-recv-jobs", &name, &n.to_string());
    for i in 0..n {
        tx.send_timeout(&job(i), PATIENCE).unwrap();
    }
    drop(tx);
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn garbage_from_another_process_is_a_decode_error_then_the_next_job_arrives() {
    let name = unique_name("typed-garbage");
    let _g = NameGuard(name.clone());
    let mut rx: TypedReceiver<Job> = Receiver::builder(&name).create().unwrap().into_typed();
    let mut child = spawn("typed-send-garbage-then-job", &name, "");
    match rx.recv_timeout(PATIENCE) {
        Err(e @ RecvError::Decode { msg_id, .. }) => {
            // The first message the sender sent, and the error says which
            // type it failed to be.
            assert_eq!(msg_id, 1);
            assert!(e.to_string().contains("Job"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(1));
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn typed_socket_ends_cross_between_processes() {
    let name = unique_name("typed-sock");
    let rx = SocketReceiver::builder(&name).create().unwrap();
    let mut rx: TypedReceiver<Job, _> = rx.into_typed();
    let n = 500;
    let mut child = spawn("typed-sock-send-jobs", &name, &n.to_string());
    for i in 0..n {
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(i), "job {i}");
    }
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[tokio::test(flavor = "current_thread")]
async fn async_typed_ends_exchange_structs_with_other_processes() {
    let n = 2000;
    // Another process sends; we receive asynchronously.
    let name = unique_name("typed-aio-in");
    let _g = NameGuard(name.clone());
    let mut rx: TypedReceiver<Job, _> = Receiver::builder(&name)
        .capacity(16 * 1024)
        .create()
        .unwrap()
        .into_async()
        .into_typed();
    let mut child = spawn("typed-send-jobs", &name, &n.to_string());
    for i in 0..n {
        let got = timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, job(i), "job {i}");
    }
    assert!(matches!(
        timeout(PATIENCE, rx.recv()).await.unwrap(),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());

    // We send asynchronously into a small channel, so sends wait for room.
    let name = unique_name("typed-aio-out");
    let _g = NameGuard(name.clone());
    let mut tx: TypedSender<Job, _> = Sender::builder(&name)
        .capacity(2 * 1024)
        .create()
        .unwrap()
        .into_async()
        .into_typed();
    let mut child = spawn("typed-recv-jobs", &name, &n.to_string());
    for i in 0..n {
        timeout(PATIENCE, tx.send(&job(i))).await.unwrap().unwrap();
    }
    drop(tx);
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

/// Typed receives dropped before a message came lose none (the property
/// the byte `AsyncReceiver::recv` has), and a message that is not a Job
/// comes out as a decode error in its turn.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_async_typed_recv_loses_no_message() {
    let name = unique_name("typed-aio-cancel");
    let _g = NameGuard(name.clone());
    let mut rx: TypedReceiver<Job, _> = Receiver::builder(&name)
        .create()
        .unwrap()
        .into_async()
        .into_typed();
    let mut tx = Sender::builder(&name).open().unwrap();
    let n = 40u64;
    let garbage_at = 17;
    let sender = std::thread::spawn(move || {
        let mut garbage_id = 0;
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(i % 7));
            if i == garbage_at {
                garbage_id = tx.send(&[0xff; 3]).unwrap();
            } else {
                tx.send_value(&job(i)).unwrap();
            }
        }
        garbage_id
    });
    let mut got = Vec::new();
    let mut decode_errors = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while (got.len() as u64) < n && tokio::time::Instant::now() < deadline {
        let short = Duration::from_millis(got.len() as u64 % 4);
        match timeout(short, rx.recv()).await {
            Err(_) => {}
            Ok(Ok(j)) => got.push(j.id),
            Ok(Err(RecvError::Decode { msg_id, .. })) => {
                decode_errors.push(msg_id);
                got.push(garbage_at);
            }
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    let garbage_id = sender.join().unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert_eq!(decode_errors, [garbage_id]);
}

/// A typed send and receive are traced as the byte operations they wrap:
/// the same events, sizes and message ids as send_value / recv_value of
/// the same value.
#[test]
fn typed_ends_are_traced_as_the_byte_ends() {
    let name = unique_name("typed-trace");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let mut tx = Sender::builder(&name).open().unwrap();
    let (ids, byte_ops) = capture_ops(|| {
        let sent = tx.send_value(&job(4)).unwrap();
        let got: Job = rx.recv_value_timeout(PATIENCE).unwrap();
        assert_eq!(got, job(4));
        sent
    });
    let mut tx: TypedSender<Job> = tx.into_typed();
    let mut rx: TypedReceiver<Job> = rx.into_typed();
    let (typed_id, typed_ops) = capture_ops(|| {
        let sent = tx.send(&job(4)).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(4));
        sent
    });
    let shape = |ops: &[crate::support::TracedOp]| -> Vec<_> {
        ops.iter()
            .map(|o| (o.kind.clone(), o.channel.clone(), o.name.clone(), o.size))
            .collect()
    };
    assert_eq!(shape(&typed_ops), shape(&byte_ops));
    assert_eq!(
        typed_ops
            .iter()
            .map(|o| o.kind.as_str())
            .collect::<Vec<_>>(),
        ["msg_send", "msg_recv"]
    );
    assert!(byte_ops.iter().all(|o| o.msg_id == ids));
    assert!(typed_ops.iter().all(|o| o.msg_id == typed_id));
    assert_eq!(typed_id, ids + 1);
}
