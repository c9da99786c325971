//! Request/response between real processes: pairing, many clients, a
//! server that dies mid-call, and one whose handler panics.

use std::time::{Duration, Instant};

use ipc_lib::channel::OpenError;
use ipc_lib::rpc::{CallError, Client, Server};

use crate::child::nums;
use crate::support::{open_when_ready, spawn, unique_name, wait_bounded, PATIENCE};

/// The request the tests make: an index and a text.
type Req = (u64, String);
/// Its answer: the index doubled, the text's length and the text reversed.
type Resp = (u64, usize, String);

fn answer((i, s): Req) -> Resp {
    (i * 2, s.len(), s.chars().rev().collect())
}

fn request(i: u64) -> Req {
    (i, format!("request number {i}").repeat((i % 5) as usize))
}

/// Makes `n` calls and checks every answer.
fn call_n(client: &mut Client, n: u64) -> Result<(), String> {
    for i in 0..n {
        let req = request(i);
        let got: Resp = client
            .call_value(&req, PATIENCE)
            .map_err(|e| format!("call {i}: {e}"))?;
        if got != answer(req) {
            return Err(format!("call {i}: wrong answer {got:?}"));
        }
    }
    Ok(())
}

fn connect(name: &str) -> Client {
    open_when_ready(|| Client::connect(name))
}

/// The child's side of these tests (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Serves until its clients leave; exits 0 iff it answered N calls.
        "rpc-serve" => {
            let n = nums(arg).first().copied().unwrap_or(0);
            let mut server = Server::builder(name).create().map_err(|e| e.to_string())?;
            let answered = server
                .serve_values(answer)
                .map_err(|e| format!("serve: {e}"))?;
            if answered != n {
                return Err(format!("answered {answered} calls, expected {n}"));
            }
            Ok(())
        }
        // Serves with a handler that panics on odd indexes; exits 0 iff it
        // answered N calls, panics included.
        "rpc-serve-panicky" => {
            let n = nums(arg).first().copied().unwrap_or(0);
            // The panics are the test's; not noise on its stderr.
            std::panic::set_hook(Box::new(|_| {}));
            let mut server = Server::builder(name).create().map_err(|e| e.to_string())?;
            let answered = server
                .serve_values(|req: Req| {
                    assert!(req.0.is_multiple_of(2), "odd request {}", req.0);
                    answer(req)
                })
                .map_err(|e| format!("serve: {e}"))?;
            if answered != n {
                return Err(format!("answered {answered} calls, expected {n}"));
            }
            Ok(())
        }
        // Takes one request and never answers; the parent kills us.
        "rpc-hang" => {
            let mut server = Server::builder(name).create().map_err(|e| e.to_string())?;
            let _req = server
                .next_request(Some(PATIENCE))
                .map_err(|e| e.to_string())?;
            std::thread::sleep(PATIENCE);
            Err("was not killed".into())
        }
        // Makes N calls, checking each answer.
        "rpc-call-n" => {
            let n = nums(arg).first().copied().unwrap_or(0);
            call_n(&mut connect(name), n)
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

#[test]
fn every_reply_pairs_with_its_request_across_processes() {
    let name = unique_name("rpc-pair");
    let mut server = spawn("rpc-serve", &name, "2000");
    let mut client = connect(&name);
    assert_eq!(client.server_pid(), server.id());
    call_n(&mut client, 2000).unwrap();
    drop(client);
    // The server counted exactly our calls and left when we did.
    assert!(wait_bounded(&mut server, PATIENCE).success());
}

#[test]
fn a_server_answers_many_client_processes() {
    let name = unique_name("rpc-many");
    let mut server = Server::builder(&name).create().unwrap();
    let serving = std::thread::spawn(move || server.serve_values(answer));
    // The loop ends when every client that came has left: our own client,
    // connected first and leaving last, keeps it going until all came.
    let mut own = connect(&name);
    let mut clients: Vec<_> = (0..3).map(|_| spawn("rpc-call-n", &name, "500")).collect();
    for c in &mut clients {
        assert!(wait_bounded(c, PATIENCE).success());
    }
    call_n(&mut own, 10).unwrap();
    drop(own);
    assert_eq!(serving.join().unwrap().unwrap(), 1510);
}

#[test]
fn server_killed_mid_call_fails_the_call_at_once() {
    let name = unique_name("rpc-kill");
    let mut server = spawn("rpc-hang", &name, "");
    let mut client = connect(&name);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        server.kill().unwrap();
        server.wait().unwrap();
    });
    let started = Instant::now();
    let err = client.call(b"anyone?", PATIENCE).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(err, CallError::Disconnected), "{err:?}");
    assert!(started.elapsed() < PATIENCE, "waited out the timeout");
    // And nobody answers any more.
    assert!(matches!(
        client.call(b"again?", PATIENCE),
        Err(CallError::Disconnected)
    ));
    assert!(matches!(
        Client::connect_timeout(&name, Duration::ZERO),
        Err(OpenError::NotFound { .. })
    ));
}

#[test]
fn a_server_process_whose_handler_panics_answers_with_the_panic_and_serves_on() {
    let name = unique_name("rpc-panic");
    let mut server = spawn("rpc-serve-panicky", &name, "100");
    let mut client = connect(&name);
    for i in 0..100 {
        let req = request(i);
        match client.call_value::<_, Resp>(&req, PATIENCE) {
            Ok(got) if i % 2 == 0 => assert_eq!(got, answer(req)),
            Err(CallError::HandlerPanicked { message }) if i % 2 == 1 => {
                assert_eq!(message, format!("odd request {i}"));
            }
            other => panic!("call {i}: {other:?}"),
        }
    }
    drop(client);
    assert!(wait_bounded(&mut server, PATIENCE).success());
}
