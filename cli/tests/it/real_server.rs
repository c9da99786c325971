//! A real server's traffic, recorded three ways: an unmodified forking
//! Unix-stream server in C (shaped like PostgreSQL: a parent that accepts
//! and forks a worker per connection) and a client that opens several
//! connections at once, sending its first request on most of them before
//! the server can have accepted them (`tests/fixtures/forking_server.c`).
//! Both print what they sent, per connection and direction: the ground
//! truth every figure here is checked against.
//!
//! Recorded whole (server and client under `record -- CMD`), with `-p` on
//! the running server only, and with the client only under `record`: in
//! each, every byte sent over a connection must be in a paired `messages`
//! row, on one channel per connection named by both ends' inodes, with
//! the sender and receiver that are known (an untraced end is unknown,
//! never another process), and `report` must list those channels.
//!
//! Each test first checks the raw events against the ground truth (what
//! the probes saw), then collects every failed claim about the facts
//! built from them (messages, channels, report) and fails with all of
//! them at once, so that one run gives the whole picture.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ebpf_targets::{start_recorder, wait_bounded};
use crate::{need_root, query, run, stderr, stdout};

/// The server and client, built with `cc` at test time.
const SOURCE: &str = include_str!("../fixtures/forking_server.c");

/// Connections the client opens at once.
const CONNS: usize = 6;
/// Request/reply rounds on each.
const ROUNDS: usize = 5;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

/// One connection, as the client and its worker told it.
#[derive(Debug)]
struct Conn {
    client_pid: i64,
    client_ino: u64,
    worker_pid: i64,
    worker_ino: u64,
    /// Bytes the client sent (the worker received).
    up: u64,
    /// Bytes the worker sent (the client received).
    down: u64,
}

impl Conn {
    /// Whether a channel name names both ends of this connection.
    fn named_by(&self, name: &str) -> bool {
        name.contains(&format!("[{}]", self.client_ino))
            && name.contains(&format!("[{}]", self.worker_ino))
    }
}

/// The connections the ground-truth file `out` describes, once the
/// client and all its workers have written their lines.
fn ground_truth(out: &Path) -> Vec<Conn> {
    let deadline = Instant::now() + STEP;
    let lines = loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let lines: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split(' ').map(str::to_owned).collect())
            .collect();
        let count = |what: &str| lines.iter().filter(|l| l[0] == what).count();
        if count("client") == CONNS && count("worker") == CONNS {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the workload did not finish: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let num = |s: &String| s.parse::<u64>().unwrap();
    // worker PID ino INODE recv BYTES sent BYTES
    let workers: Vec<&Vec<String>> = lines.iter().filter(|l| l[0] == "worker").collect();
    // client PID conn C ino INODE sent BYTES recv BYTES
    lines
        .iter()
        .filter(|l| l[0] == "client")
        .map(|c| {
            let (up, down) = (num(&c[7]), num(&c[9]));
            // Sizes differ per connection, so the bytes pair them.
            let w: Vec<_> = workers
                .iter()
                .filter(|w| num(&w[5]) == up && num(&w[7]) == down)
                .collect();
            assert_eq!(w.len(), 1, "one worker per connection: {lines:?}");
            Conn {
                client_pid: num(&c[1]) as i64,
                client_ino: num(&c[5]),
                worker_pid: num(&w[0][1]) as i64,
                worker_ino: num(&w[0][3]),
                up,
                down,
            }
        })
        .collect()
}

/// Which side of the connections the recording followed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Traced {
    Both,
    Server,
    Client,
}

/// A process that is killed if the test ends before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server, started outside any recording, once it listens.
fn start_server(exe: &Path, sock: &Path, out: &Path) -> KillOnDrop {
    let server = KillOnDrop(
        Command::new(exe)
            .arg("server")
            .arg(sock)
            .arg(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + STEP;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

/// SIGTERM to the server: it stops accepting, waits for its workers and
/// exits 0.
fn stop_server(server: &mut KillOnDrop) {
    // SAFETY: kill has no memory effects; the server is our child, not
    // yet reaped.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_bounded(&mut server.0, "the server"), 0);
}

/// `select SQL` as a number (0 for NULL).
fn number(db: &Path, sql: &str) -> u64 {
    query(db, sql)[0]["n"].as_u64().unwrap_or(0)
}

/// What the probes saw: every byte the traced side sent and received on
/// each connection, in `msg_send`/`msg_recv` events of its processes on
/// unix_stream channels that name its socket. This checks the harness and
/// the probes, not the pairing: it holds today.
fn check_events(db: &Path, conns: &[Conn], traced: Traced) {
    let bytes = |pid: i64, kind: &str, ino: u64| {
        number(
            db,
            &format!(
                "select sum(e.size) as n from events e join channels c on c.id = e.channel_id
                 where c.kind = 'unix_stream' and e.pid = {pid} and e.kind = '{kind}'
                   and c.name like '%[{ino}]%'"
            ),
        )
    };
    for c in conns {
        if traced != Traced::Server {
            assert_eq!(bytes(c.client_pid, "msg_send", c.client_ino), c.up, "{c:?}");
            assert_eq!(
                bytes(c.client_pid, "msg_recv", c.client_ino),
                c.down,
                "{c:?}"
            );
        }
        if traced != Traced::Client {
            assert_eq!(bytes(c.worker_pid, "msg_recv", c.worker_ino), c.up, "{c:?}");
            assert_eq!(
                bytes(c.worker_pid, "msg_send", c.worker_ino),
                c.down,
                "{c:?}"
            );
        }
    }
    let sent: u64 = conns
        .iter()
        .map(|c| match traced {
            Traced::Both => c.up + c.down,
            Traced::Server => c.down,
            Traced::Client => c.up,
        })
        .sum();
    let all = number(
        db,
        "select sum(e.size) as n from events e join channels c on c.id = e.channel_id
         where c.kind = 'unix_stream' and e.kind = 'msg_send'",
    );
    assert_eq!(all, sent, "every unix_stream send is the workload's");
    assert_eq!(
        query(db, "select count(*) as n from drops"),
        json!([{"n": 0}])
    );
}

/// The facts: messages, channels and the report, against the ground
/// truth. Returns every claim that failed.
fn check_facts(db: &Path, conns: &[Conn], traced: Traced) -> Vec<String> {
    let mut failed = Vec::new();
    let total: u64 = conns.iter().map(|c| c.up + c.down).sum();

    // Every byte sent is in a paired message.
    let paired = number(
        db,
        "select sum(m.size) as n from messages m join channels c on c.id = m.channel_id
         where c.kind = 'unix_stream'",
    );
    if paired != total {
        failed.push(format!(
            "{paired} of {total} bytes paired in messages ({:.0}%)",
            paired as f64 * 100.0 / total as f64
        ));
    }

    // One channel per connection. The listening socket carries
    // connections, not bytes: if it is a channel at all, it has no
    // traffic.
    let channels = query(
        db,
        "select c.id, c.name, exists (select 1 from events e where e.channel_id = c.id
                                      and e.kind in ('msg_send', 'msg_recv')) as traffic
         from channels c where c.kind = 'unix_stream' order by c.id",
    );
    let channels = channels.as_array().unwrap();
    let busy: Vec<&Value> = channels.iter().filter(|c| c["traffic"] == 1).collect();
    if busy.len() != conns.len() || channels.len() > conns.len() + 1 {
        let names: Vec<&str> = busy.iter().map(|c| c["name"].as_str().unwrap()).collect();
        failed.push(format!(
            "{} unix_stream channels with traffic (of {} in all) for {} connections: {names:?}",
            busy.len(),
            channels.len(),
            conns.len()
        ));
    }

    // Per connection: its channel, named by both ends, and its bytes in
    // each direction from the sender to the receiver, where known.
    for c in conns {
        let Some(ch) = channels
            .iter()
            .find(|ch| c.named_by(ch["name"].as_str().unwrap()))
        else {
            failed.push(format!(
                "no channel named by both inodes of connection {c:?}"
            ));
            continue;
        };
        let rows = query(
            db,
            &format!(
                "select sender_pid, receiver_pid, sum(size) as bytes from messages
                 where channel_id = {} group by sender_pid, receiver_pid
                 order by sender_pid is null, sender_pid, receiver_pid",
                ch["id"]
            ),
        );
        let (client, worker) = match traced {
            Traced::Both => (json!(c.client_pid), json!(c.worker_pid)),
            Traced::Server => (Value::Null, json!(c.worker_pid)),
            Traced::Client => (json!(c.client_pid), Value::Null),
        };
        let mut expected = vec![
            json!({"sender_pid": client, "receiver_pid": worker, "bytes": c.up}),
            json!({"sender_pid": worker, "receiver_pid": client, "bytes": c.down}),
        ];
        expected.sort_by_key(|r| {
            (
                r["sender_pid"].is_null(),
                r["sender_pid"].as_i64(),
                r["receiver_pid"].as_i64(),
            )
        });
        if rows != json!(expected) {
            failed.push(format!(
                "connection {c:?}, channel {}: messages {rows}, expected {}",
                ch["name"],
                json!(expected)
            ));
        }
    }

    // Nobody sends to itself.
    let to_self = query(
        db,
        "select m.sender_pid, count(*) as n, sum(m.size) as bytes from messages m
         join channels c on c.id = m.channel_id
         where c.kind = 'unix_stream' and m.sender_pid = m.receiver_pid group by m.sender_pid",
    );
    if to_self != json!([]) {
        failed.push(format!("messages a process sent to itself: {to_self}"));
    }

    // The report lists every connection with all its bytes.
    let db_arg = db.to_str().unwrap();
    let text = run(&["report", "--db", db_arg]);
    assert!(text.status.success(), "{}", stderr(&text));
    if stdout(&text).contains("== channels\n(none)") {
        failed.push("report: channels (none)".to_owned());
    }
    let out = run(&["report", "--db", db_arg, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for c in conns {
        let listed = report["channels"].as_array().unwrap().iter().find(|ch| {
            ch["kind"] == "unix_stream" && c.named_by(ch["name"].as_str().unwrap_or(""))
        });
        match listed {
            Some(ch) if ch["bytes"] == c.up + c.down => {}
            Some(ch) => failed.push(format!("report: {ch} for connection {c:?}")),
            None => failed.push(format!("report: no channel for connection {c:?}")),
        }
    }
    failed
}

/// Checks a recording of the workload, failing with every claim that
/// does not hold.
fn check(db: &Path, out: &Path, traced: Traced) {
    let conns = ground_truth(out);
    check_events(db, &conns, traced);
    let failed = check_facts(db, &conns, traced);
    assert!(
        failed.is_empty(),
        "{traced:?}: {} claims failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_forking_server_and_its_client_recorded_whole_pair_every_byte() {
    if !need_root("a_forking_server_and_its_client_recorded_whole_pair_every_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = crate::compile_c(dir.path(), "forking_server", SOURCE);
    let (db, sock, out) = (
        dir.path().join("whole.db"),
        dir.path().join("s.sock"),
        dir.path().join("truth"),
    );
    // The server in the background, the client (which retries until the
    // server listens), then the server stopped once the client is done.
    let script = r#""$0" server "$1" "$2" & sp=$!
"$0" client "$1" "$3" "$4" "$2"; rc=$?
kill $sp; wait $sp; exit $rc"#;
    let out_run = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
        exe.to_str().unwrap(),
        sock.to_str().unwrap(),
        out.to_str().unwrap(),
        &CONNS.to_string(),
        &ROUNDS.to_string(),
    ]);
    assert!(
        out_run.status.success(),
        "the workload failed under record: {}",
        stderr(&out_run)
    );
    check(&db, &out, Traced::Both);
}

#[test]
fn a_running_forking_server_recorded_with_p_pairs_every_byte() {
    if !need_root("a_running_forking_server_recorded_with_p_pairs_every_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = crate::compile_c(dir.path(), "forking_server", SOURCE);
    let (db, sock, out) = (
        dir.path().join("p.db"),
        dir.path().join("s.sock"),
        dir.path().join("truth"),
    );
    let mut server = start_server(&exe, &sock, &out);
    let pid = server.0.id().to_string();
    let mut recorder = KillOnDrop(start_recorder(&["--db", db.to_str().unwrap(), "-p", &pid]));
    let client = Command::new(&exe)
        .arg("client")
        .arg(&sock)
        .args([CONNS.to_string(), ROUNDS.to_string()])
        .arg(&out)
        .output()
        .unwrap();
    assert!(client.status.success(), "client: {}", stderr(&client));
    ground_truth(&out);
    stop_server(&mut server);
    // Its one target gone, the recording ends by itself.
    assert_eq!(wait_bounded(&mut recorder.0, "the recorder"), 0);
    check(&db, &out, Traced::Server);
}

#[test]
fn a_client_of_a_forking_server_recorded_alone_pairs_every_byte() {
    if !need_root("a_client_of_a_forking_server_recorded_alone_pairs_every_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = crate::compile_c(dir.path(), "forking_server", SOURCE);
    let (db, sock, out) = (
        dir.path().join("client.db"),
        dir.path().join("s.sock"),
        dir.path().join("truth"),
    );
    let mut server = start_server(&exe, &sock, &out);
    let recorded = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--",
        exe.to_str().unwrap(),
        "client",
        sock.to_str().unwrap(),
        &CONNS.to_string(),
        &ROUNDS.to_string(),
        out.to_str().unwrap(),
    ]);
    assert!(
        recorded.status.success(),
        "the client failed under record: {}",
        stderr(&recorded)
    );
    ground_truth(&out);
    stop_server(&mut server);
    check(&db, &out, Traced::Client);
}
