//! A real server nobody here wrote: Redis from Debian's packages (which
//! `cargo xtask setup` installs), on a Unix socket, under its own
//! benchmark client, recorded whole and with `-p` on the server alone.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ebpf_targets::{start_recorder, wait_bounded};
use crate::{need_root, query, run, stderr, stdout};

/// The shell that runs one Redis server on socket `$1` and stops it.
const SERVER: &str = "redis-server --port 0 --unixsocket \"$1\" --save '' --appendonly no";

fn benchmark(sock: &Path) -> std::process::Output {
    Command::new("redis-benchmark")
        .args(["-s", sock.to_str().unwrap(), "-n", "4000", "-c", "4"])
        .args(["-t", "set,get", "-q"])
        .output()
        .expect("redis-benchmark runs (cargo xtask setup installs redis-tools)")
}

/// Waits for the server's socket, at most 10 s.
fn wait_for(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "redis-server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn shutdown(sock: &Path) {
    let _ = Command::new("redis-cli")
        .args(["-s", sock.to_str().unwrap(), "shutdown", "nosave"])
        .output();
}

/// Bytes the traced ends moved on Unix stream sockets, and the bytes of
/// `messages`: all of them, and those paired.
fn stream_bytes(db: &Path) -> serde_json::Value {
    query(
        db,
        "select (select sum(e.size) from events e join channels c on c.id = e.channel_id
                 where c.kind = 'unix_stream' and e.kind = 'msg_send') as sent,
                (select sum(e.size) from events e join channels c on c.id = e.channel_id
                 where c.kind = 'unix_stream' and e.kind = 'msg_recv') as received,
                (select sum(m.size) from messages m join channels c on c.id = m.channel_id
                 where c.kind = 'unix_stream') as in_messages,
                (select coalesce(sum(m.size), 0) from messages m join channels c
                 on c.id = m.channel_id
                 where c.kind = 'unix_stream' and m.latency_ns is not null) as paired,
                (select count(*) from messages where sender_pid = receiver_pid) as to_self,
                (select count(*) from drops) as drops",
    )
}

#[test]
fn redis_and_its_benchmark_recorded_whole_pair_every_byte() {
    if !need_root("redis_and_its_benchmark_recorded_whole_pair_every_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, sock) = (dir.path().join("redis.db"), dir.path().join("r.sock"));
    let script = format!(
        "{SERVER} >/dev/null & for i in $(seq 500); do [ -S \"$1\" ] && break; sleep 0.02; done
         redis-benchmark -s \"$1\" -n 4000 -c 4 -t set,get -q >/dev/null; rc=$?
         redis-cli -s \"$1\" shutdown nosave; wait; exit $rc"
    );
    let out = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
        "sh",
        sock.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = stream_bytes(&db);
    let sent = bytes[0]["sent"].as_i64().unwrap();
    assert!(sent > 100_000, "{bytes}");
    // Both ends traced: every byte sent is in a paired message, once.
    assert_eq!(
        bytes,
        json!([{"sent": sent, "received": sent, "in_messages": sent, "paired": sent,
                "to_self": 0, "drops": 0}])
    );
    // A connection per benchmark client and test, and redis-cli's.
    let connections = query(
        &db,
        "select count(*) as n from channels where kind = 'unix_stream'",
    );
    assert!(connections[0]["n"].as_i64().unwrap() >= 9, "{connections}");
}

#[test]
fn a_running_redis_recorded_with_p_shows_every_connection_with_its_bytes() {
    if !need_root("a_running_redis_recorded_with_p_shows_every_connection_with_its_bytes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, sock) = (dir.path().join("redis-p.db"), dir.path().join("r.sock"));
    let mut server: Child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket", sock.to_str().unwrap()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (cargo xtask setup installs redis-server)");
    wait_for(&sock);
    let pid = server.id().to_string();
    let mut recorder = start_recorder(&["--db", db.to_str().unwrap(), "-p", &pid]);
    let bench = benchmark(&sock);
    assert!(bench.status.success(), "{}", stderr(&bench));
    shutdown(&sock);
    let _ = server.wait();
    assert_eq!(wait_bounded(&mut recorder, "the recorder"), 0);
    // Only the server traced: every byte it moved is a message whose
    // other end (the benchmark) is unknown, none paired, none to itself.
    let bytes = stream_bytes(&db);
    let traced = bytes[0]["sent"].as_i64().unwrap() + bytes[0]["received"].as_i64().unwrap();
    assert!(traced > 100_000, "{bytes}");
    assert_eq!(
        bytes,
        json!([{"sent": bytes[0]["sent"], "received": bytes[0]["received"],
                "in_messages": traced, "paired": 0, "to_self": 0, "drops": 0}])
    );
    let report = run(&["report", "--db", db.to_str().unwrap(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    let listed = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "unix_stream" && c["p99_ns"].is_null())
        .count();
    assert!(listed >= 8, "{report}");
}
