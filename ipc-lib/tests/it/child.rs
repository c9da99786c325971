//! The other process in cross-process tests: this binary, re-executed with
//! a role (see `support::spawn`). Each role reports through its exit status:
//! 0 when everything it checked held, 1 with a message on stderr when not.

use std::io::Read;
use std::time::Duration;

use ipc_lib::channel::{Mode, Receiver, RecvError, SendError};

use crate::support::{
    open_receiver, open_sender, pattern, size_of_msg, ARG_VAR, NAME_VAR, PATIENCE, ROLE_VAR,
};

#[test]
fn role_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        // An ordinary test run: there is no role to play.
        return;
    };
    let name = std::env::var(NAME_VAR).unwrap_or_default();
    let arg = std::env::var(ARG_VAR).unwrap_or_default();
    let result = play(&role, &name, &arg);
    if let Err(e) = &result {
        eprintln!("child {role} on {name}: {e}");
    }
    std::process::exit(i32::from(result.is_err()));
}

pub fn nums(arg: &str) -> Vec<u64> {
    arg.split(',').filter_map(|s| s.parse().ok()).collect()
}

fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Sends N messages of the pattern, sizes up to MAX, then leaves.
        "send-n" => {
            let [n, max] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_sender(name);
            for i in 0..n {
                tx.send(&pattern(i, size_of_msg(i, max as usize)))
                    .map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        // Multi-producer: sends its TAG alone to say it is attached, waits
        // for the parent to close our stdin, then sends N messages tagged
        // with TAG (a byte) and their index, so the receiver can check each
        // sender's order.
        "send-tagged" => {
            let [tag, n, max] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_sender(name);
            tx.send(&[tag as u8]).map_err(|e| format!("hello: {e}"))?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            for i in 0..n {
                let mut m = vec![tag as u8];
                m.extend_from_slice(&i.to_le_bytes());
                m.extend_from_slice(&pattern(i, size_of_msg(i, max as usize - 9)));
                tx.send(&m).map_err(|e| format!("send {i}: {e}"))?;
            }
            Ok(())
        }
        // Sends until the receiver is gone; the parent kills us first.
        "send-forever" => {
            let max = nums(arg).first().copied().unwrap_or(64) as usize;
            let mut tx = open_sender(name);
            for i in 0.. {
                match tx.send(&pattern(i, size_of_msg(i, max))) {
                    Ok(_) => {}
                    Err(SendError::Disconnected) => return Ok(()),
                    Err(e) => return Err(format!("send {i}: {e}")),
                }
            }
            Ok(())
        }
        // Sends "ready", then holds its end open until killed or until the
        // parent closes our stdin.
        "send-ready-and-hold" => {
            let mut tx = open_sender(name);
            tx.send(b"ready").map_err(|e| e.to_string())?;
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            Ok(())
        }
        // Receives N messages, checking each, then expects Disconnected.
        "recv-verify-n" => {
            let [n, max] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut rx = open_receiver(name);
            for i in 0..n {
                let got = rx
                    .recv_timeout(PATIENCE)
                    .map_err(|e| format!("recv {i}: {e}"))?;
                if got != pattern(i, size_of_msg(i, max as usize)) {
                    return Err(format!("message {i} differs ({} bytes)", got.len()));
                }
            }
            match rx.recv_timeout(PATIENCE) {
                Err(RecvError::Disconnected) => Ok(()),
                other => Err(format!("after {n} messages: {other:?}")),
            }
        }
        // Receives and checks messages until killed.
        "recv-forever" => {
            let max = nums(arg).first().copied().unwrap_or(64) as usize;
            let mut rx = open_receiver(name);
            for i in 0.. {
                let got = rx.recv().map_err(|e| format!("recv {i}: {e}"))?;
                if got != pattern(i, size_of_msg(i, max)) {
                    return Err(format!("message {i} differs"));
                }
                // Slow enough that the parent sees us mid-stream.
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        }
        // Expects exactly these messages (comma-separated), then
        // Disconnected.
        "recv-expect" => {
            let mut rx = open_receiver(name);
            for want in arg.split(',') {
                let got = rx
                    .recv_timeout(PATIENCE)
                    .map_err(|e| format!("waiting for {want:?}: {e}"))?;
                if got != want.as_bytes() {
                    return Err(format!(
                        "got {:?}, wanted {want:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
            match rx.recv_timeout(PATIENCE) {
                Err(RecvError::Disconnected) => Ok(()),
                other => Err(format!("after the expected messages: {other:?}")),
            }
        }
        // Creates a channel of the given layout and holds it until the
        // parent closes our stdin.
        "create-and-hold" => {
            let v = nums(arg);
            let [cap, max, mode] = v[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mode = if mode == 2 { Mode::Mpsc } else { Mode::Spsc };
            let _rx = Receiver::builder(name)
                .capacity(cap as usize)
                .max_message_size(max as usize)
                .mode(mode)
                .create()
                .map_err(|e| e.to_string())?;
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            Ok(())
        }
        bc if bc.starts_with("bc-") => crate::broadcast::play(bc, name, arg),
        queue if queue.starts_with("queue-") => crate::queue::play(queue, name, arg),
        sock if sock.starts_with("sock-") => crate::socket::play(sock, name, arg),
        rpc if rpc.starts_with("rpc-") => crate::rpc::play(rpc, name, arg),
        sig if sig.starts_with("sig-") => crate::signal::play(sig, name, arg),
        death if death.starts_with("death-") => crate::sender_deaths::play(death, name, arg),
        patient if patient.starts_with("patient-") => crate::patient::play(patient, name, arg),
        sel if sel.starts_with("select-") => crate::select::play(sel, name, arg),
        typed if typed.starts_with("typed-") => crate::typed::play(typed, name, arg),
        loan if loan.starts_with("loan-") => crate::loan::play(loan, name, arg),
        other => crate::region::role(other, name, arg)
            .or_else(|| crate::sem::role(other, name, arg))
            .or_else(|| crate::aio::role(other, name, arg))
            .unwrap_or_else(|| Err(format!("unknown role {other:?}"))),
    }
}
