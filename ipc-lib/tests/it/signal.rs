//! Signals between real processes: sent, handled as a stream, with the
//! sender's pid.

use ipc_lib::signal::{self, Signal, Signals, SIGTERM, SIGUSR1, SIGUSR2};
use ipc_lib::socket::{SocketReceiver, SocketSender};
use ipc_lib::transport::{MessageReceiver, MessageSender};

use crate::child::nums;
use crate::support::{open_when_ready, spawn, unique_name, wait_bounded, PATIENCE};

/// The child's side of these tests (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Reports each SIGUSR1/SIGUSR2/SIGTERM it gets as (signo, sender)
        // on socket channel NAME, after a first "ready"; ends after
        // SIGTERM.
        "sig-report" => {
            let mut signals =
                Signals::new(&[SIGUSR1, SIGUSR2, SIGTERM]).map_err(|e| e.to_string())?;
            let mut tx = open_when_ready(|| SocketSender::builder(name).open());
            tx.send(b"ready").map_err(|e| e.to_string())?;
            loop {
                let d = signals.recv_timeout(PATIENCE).map_err(|e| e.to_string())?;
                tx.send_value(&(d.signal.number(), d.sender_pid))
                    .map_err(|e| e.to_string())?;
                if d.signal == SIGTERM {
                    return Ok(());
                }
            }
        }
        // Sends signal SIGNO to its parent, after DELAY ms if given.
        "sig-to-parent" => {
            let v = nums(arg);
            let signo = v.first().copied().unwrap_or(0) as i32;
            std::thread::sleep(std::time::Duration::from_millis(
                v.get(1).copied().unwrap_or(0),
            ));
            let s = Signal::new(signo).map_err(|e| e.to_string())?;
            // SAFETY: getppid cannot fail.
            let parent = unsafe { libc::getppid() } as u32;
            signal::send(parent, s).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

#[test]
fn signals_sent_to_a_child_reach_its_stream_with_our_pid() {
    let name = unique_name("sig-report");
    let mut rx = SocketReceiver::builder(&name).create().unwrap();
    let mut child = spawn("sig-report", &name, "");
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"ready");
    let me = std::process::id();
    // One at a time: standard signals merge while pending.
    for s in [SIGUSR1, SIGUSR2, SIGUSR1, SIGTERM] {
        signal::send(child.id(), s).unwrap();
        let got: (i32, Option<u32>) = rx.recv_value_timeout(PATIENCE).unwrap();
        assert_eq!(got, (s.number(), Some(me)));
    }
    // SIGTERM was handled, not fatal: the child ends cleanly.
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn a_signal_from_a_child_names_the_child() {
    // A real-time signal no other test in this process takes.
    let s = Signal::new(libc::SIGRTMIN() + 10).unwrap();
    let mut signals = Signals::new(&[s]).unwrap();
    let mut child = spawn("sig-to-parent", "", &s.number().to_string());
    // The blocking iterator form.
    let got = signals.forever().next().unwrap();
    assert_eq!(got.signal, s);
    assert_eq!(got.sender_pid, Some(child.id()));
    assert!(wait_bounded(&mut child, PATIENCE).success());
}
