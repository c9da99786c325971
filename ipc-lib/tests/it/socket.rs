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
        // Connects with a bare socket and sends garbage of every sort,
        // then leaves.
        "sock-hostile" => {
            let fd = raw_connect(name)?;
            let mut frames: Vec<Vec<u8>> = vec![Vec::new(), b"IPCD".to_vec(), vec![0xff; 100_000]];
            // A plausible header whose length lies.
            let mut lie = b"IPCD".to_vec();
            lie.extend_from_slice(&1000u32.to_le_bytes());
            lie.extend_from_slice(&[1; 16]);
            frames.push(lie);
            for f in frames {
                // SAFETY: f is valid for reads of its length.
                let r = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), libc::MSG_NOSIGNAL) };
                // Cut off after the first: EPIPE is the receiver's answer.
                if r < 0 {
                    break;
                }
            }
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
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

/// A bare SOCK_SEQPACKET connection to socket channel `name`.
fn raw_connect(name: &str) -> Result<i32, String> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = format!("ipcscope/{name}");
    for (d, s) in addr.sun_path[1..].iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + path.len();
    // SAFETY: a valid address of `len` bytes.
    let r = unsafe { libc::connect(fd, (&raw const addr).cast(), len as libc::socklen_t) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(fd)
}

#[test]
fn a_hostile_process_sending_garbage_is_an_error_not_a_panic() {
    let name = unique_name("sock-hostile");
    let mut rx = SocketReceiver::builder(&name)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut honest = SocketSender::builder(&name).open().unwrap();
    let mut child = spawn("sock-hostile", &name, "");
    // The empty datagram is the first thing wrong; the peer is cut off
    // then, and whatever else it sent goes with it.
    match rx.recv_timeout(PATIENCE) {
        Err(RecvError::Corrupt { reason, .. }) => assert_eq!(
            reason,
            ipc_lib::channel::Corruption::Truncated {
                size: 24,
                available: 0
            }
        ),
        other => panic!("{other:?}"),
    }
    assert!(wait_bounded(&mut child, PATIENCE).success());
    assert_eq!(rx.senders(), 1);
    honest.send(b"still here").unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"still here");
    drop(honest);
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
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
