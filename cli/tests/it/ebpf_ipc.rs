//! IPC of unmodified programs, recorded through the real binary and the
//! real probes: messages over pipes, FIFOs and Unix sockets, and signals
//! between processes, checked in the database by exact counts, sizes and
//! pids.
//!
//! The workloads are small python3 programs (python3 is on every machine
//! of this project's kind). They are run by the interpreter's real path:
//! a version-manager shim (pyenv's is a bash script) would add processes
//! and pipes of its own to the recording.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::json;

use crate::{need_root, query, run, stderr};

/// Messages each workload sends.
const N: u64 = 50;

/// Sends `n` messages of known sizes from a parent to its forked child
/// over the IPC object named by `mode`, through every syscall the probes
/// follow: write/writev/read/readv on pipes and FIFOs, send (sendto),
/// sendmsg, recv (recvfrom), recvmsg and write/read on sockets. It also
/// writes and reads a regular file and writes /dev/null, neither of which
/// is IPC. Over a socket, the child then replies with 4 bytes. Exits 3 if
/// the child did not receive every byte.
pub const MESSAGES: &str = r#"
import os, socket, sys, tempfile

mode, n, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = lambda i: 1 + (i * 97) % 2000
msg = lambda i: bytes([65 + i % 26]) * size(i)

with tempfile.TemporaryFile(dir=workdir) as f:
    for i in range(n):
        os.write(f.fileno(), msg(i))
    os.lseek(f.fileno(), 0, 0)
    while os.read(f.fileno(), 4096):
        pass
null = os.open("/dev/null", os.O_WRONLY)
os.write(null, b"x" * 10)
os.close(null)

if mode == "pipe":
    rx, tx = os.pipe()
elif mode == "fifo":
    path = os.path.join(workdir, "fifo")
    os.mkfifo(path)
else:
    kind = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET,
            "dgram": socket.SOCK_DGRAM}[mode]
    tx, rx = socket.socketpair(socket.AF_UNIX, kind)

pid = os.fork()
if pid == 0:
    if mode == "fifo":
        rx = os.open(path, os.O_RDONLY)
    got = 0
    for i in range(n):
        want, how = size(i), i % 3
        if mode in ("pipe", "fifo"):
            if how == 1:
                got += os.readv(rx, [bytearray(want)])
            else:
                got += len(os.read(rx, want))
        elif mode == "stream":
            # Stream reads may return less than asked; WAITALL makes each
            # message one call.
            flags = socket.MSG_WAITALL
            b = rx.recv(want, flags) if how != 1 else rx.recvmsg(want, 0, flags)[0]
            got += len(b)
        elif how == 0:
            got += len(rx.recv(want))
        elif how == 1:
            got += len(rx.recvmsg(want)[0])
        else:
            got += len(os.read(rx.fileno(), want))
    if mode not in ("pipe", "fifo"):
        # A reply the other way, which must not be mixed up with the
        # messages: pairing keeps the two directions of a socket apart.
        rx.send(b"done")
    os._exit(0 if got == sum(size(i) for i in range(n)) else 3)

if mode == "fifo":
    tx = os.open(path, os.O_WRONLY)
for i in range(n):
    m, how = msg(i), i % 3
    if mode in ("pipe", "fifo"):
        if how == 1:
            os.writev(tx, [m[:len(m) // 2], m[len(m) // 2:]])
        else:
            os.write(tx, m)
    elif how == 0:
        tx.send(m)
    elif how == 1:
        tx.sendmsg([m])
    else:
        os.write(tx.fileno(), m)
if mode not in ("pipe", "fifo"):
    assert tx.recv(4) == b"done"
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// `n` writes of known sizes into a pipe, read by the child only after
/// the writer closed it, in 4 KiB reads: each read takes several writes,
/// and reads split writes.
const PIPE_BULK: &str = r#"
import os, signal, sys

n = int(sys.argv[1])
# The child reads only once told that every write is done; blocked
# before the fork, the signal cannot be missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
rx, tx = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(tx)
    os.read(rx, 0)  # not a message: nothing moved
    signal.sigwait({signal.SIGUSR1})
    total = 0
    while True:
        b = os.read(rx, 4096)
        if not b:
            break
        total += len(b)
    os._exit(0 if total == sum(1 + (i * 97) % 2000 for i in range(n)) else 3)
os.close(rx)
for i in range(n):
    os.write(tx, b"x" * (1 + (i * 97) % 2000))
os.close(tx)
os.kill(pid, signal.SIGUSR1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// The parent sends `k` SIGUSR1 to its child, each after the child has
/// answered the previous one with a SIGUSR2 (so none are merged); the
/// child sends one SIGUSR2 more first, to say it is ready.
const SIGNALS: &str = r#"
import os, signal, sys, time

k = int(sys.argv[1])
got = [0]
def handler(signo, frame):
    got[0] += 1
def wait_for(count):
    while got[0] < count:
        time.sleep(0.001)
signal.signal(signal.SIGUSR1, handler)
signal.signal(signal.SIGUSR2, handler)
parent = os.getpid()
pid = os.fork()
if pid == 0:
    # Python drops a signal that arrives between fork and its after-fork
    # reset, so the parent sends nothing before this.
    os.kill(parent, signal.SIGUSR2)
    for i in range(k):
        wait_for(i + 1)
        os.kill(parent, signal.SIGUSR2)
    os._exit(0)
wait_for(1)
for i in range(k):
    os.kill(pid, signal.SIGUSR1)
    wait_for(i + 2)
os.waitpid(pid, 0)
"#;

/// The python3 interpreter itself, past any shim.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed: the IPC workloads are python3 programs");
        assert!(out.status.success(), "python3 does not run: {out:?}");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Records `python3 SCRIPT ARGS` into a new database in `dir`.
fn record_python(dir: &Path, script: &str, args: &[&str]) -> PathBuf {
    record_python_with(dir, script, args, &[]).0
}

/// Records `python3 SCRIPT ARGS` with the `record` options `opts` into a
/// new database in `dir`; returns it and what the workload printed.
pub fn record_python_with(
    dir: &Path,
    script: &str,
    args: &[&str],
    opts: &[&str],
) -> (PathBuf, String) {
    let db = dir.join("ipc.db");
    let file = dir.join("workload.py");
    std::fs::write(&file, script).unwrap();
    let mut argv = vec!["record", "--db", db.to_str().unwrap()];
    argv.extend_from_slice(opts);
    argv.extend_from_slice(&["--", python().to_str().unwrap(), file.to_str().unwrap()]);
    argv.extend_from_slice(args);
    let out = run(&argv);
    assert!(
        out.status.success(),
        "the workload failed under record: {}",
        stderr(&out)
    );
    (db, crate::stdout(&out))
}

/// The recorded command's pid and its one child's.
pub fn parent_and_child(db: &Path) -> (i64, i64) {
    let procs = query(db, "select pid, ppid from processes order by started_ns");
    let procs = procs.as_array().unwrap();
    assert_eq!(procs.len(), 2, "python3 and its forked child: {procs:?}");
    let parent = procs[0]["pid"].as_i64().unwrap();
    assert_eq!(procs[1]["ppid"], parent, "{procs:?}");
    (parent, procs[1]["pid"].as_i64().unwrap())
}

/// Records the message workload over `mode` and checks that exactly its
/// messages were captured, on one channel of `kind`.
fn messages_are_captured_exactly(mode: &str, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().to_str().unwrap().to_owned();
    let db = record_python(dir.path(), MESSAGES, &[mode, &N.to_string(), &workdir]);
    let (parent, child) = parent_and_child(&db);
    let total: u64 = (0..N).map(|i| 1 + (i * 97) % 2000).sum();

    // Every message event, grouped: exactly one channel, sent on by the
    // parent and received on by the child; nothing from the regular file
    // or /dev/null.
    let groups = query(
        &db,
        "select e.pid, e.kind, c.kind as channel_kind, count(*) as n, sum(e.size) as bytes,
                count(distinct e.channel_id) as channels
         from events e left join channels c on c.id = e.channel_id
         where e.kind in ('msg_send', 'msg_recv')
         group by e.pid, e.kind, c.kind order by e.kind desc, n desc",
    );
    let mut expected = vec![
        json!({"pid": parent, "kind": "msg_send", "channel_kind": kind, "n": N, "bytes": total, "channels": 1}),
        json!({"pid": child, "kind": "msg_recv", "channel_kind": kind, "n": N, "bytes": total, "channels": 1}),
    ];
    let socket = kind.starts_with("unix_");
    if socket {
        expected.insert(1, json!({"pid": child, "kind": "msg_send", "channel_kind": kind, "n": 1, "bytes": 4, "channels": 1}));
        expected.push(json!({"pid": parent, "kind": "msg_recv", "channel_kind": kind, "n": 1, "bytes": 4, "channels": 1}));
    }
    assert_eq!(groups, json!(expected), "{mode}");
    let channels = query(&db, "select kind, name from channels");
    let channels = channels.as_array().unwrap();
    assert_eq!(channels.len(), 1, "one channel per object: {channels:?}");
    let name = channels[0]["name"].as_str().unwrap();
    if socket {
        assert!(
            name.starts_with("socket:[") && name.contains("]<->["),
            "both ends of the socket pair, named by inode: {name}"
        );
    } else {
        assert!(name.starts_with(&format!("{kind}:[")), "{name}");
    }

    // Sizes come from the return values, one event per call; every call
    // took a measurable time, and a receive never precedes the first send.
    let sizes = query(
        &db,
        &format!(
            "select size from events where kind = 'msg_send' and pid = {parent} order by ts_ns"
        ),
    );
    let sizes: Vec<u64> = sizes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .collect();
    let expected_sizes: Vec<u64> = (0..N).map(|i| 1 + (i * 97) % 2000).collect();
    assert_eq!(
        sizes, expected_sizes,
        "{mode}: sends in order, with their sizes"
    );
    let odd = query(
        &db,
        "select count(*) as n from events e
         where e.kind in ('msg_send', 'msg_recv')
           and (e.duration_ns is null or e.result != e.size or e.tid != e.pid
                or (e.kind = 'msg_recv' and e.ts_ns < (select min(ts_ns) from events where kind = 'msg_send')))",
    );
    assert_eq!(odd[0]["n"], 0, "{mode}");
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);

    // Pairing: every message, and over a socket the reply, from its
    // sender to its receiver, with a latency that is never negative.
    let messages = query(
        &db,
        &format!(
            "select sender_pid, receiver_pid, count(*) as n, sum(size) as bytes,
                count(distinct channel_id) as channels,
                sum(latency_ns >= 0 and latency_ns = received_ns - sent_ns) as sane
         from messages group by sender_pid, receiver_pid order by sender_pid = {parent} desc"
        ),
    );
    let mut expected = vec![
        json!({"sender_pid": parent, "receiver_pid": child, "n": N, "bytes": total, "channels": 1, "sane": N}),
    ];
    if socket {
        expected.push(json!({"sender_pid": child, "receiver_pid": parent, "n": 1, "bytes": 4, "channels": 1, "sane": 1}));
    }
    assert_eq!(messages, json!(expected), "{mode}");
    // Each message is paired with the receive of the same size: every
    // read here takes exactly one message.
    let sizes = query(
        &db,
        &format!("select size from messages where sender_pid = {parent} order by sent_ns"),
    );
    let sizes: Vec<u64> = sizes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, expected_sizes, "{mode}");
}

#[test]
fn pipe_messages_are_captured_exactly() {
    if need_root("pipe_messages_are_captured_exactly") {
        messages_are_captured_exactly("pipe", "pipe");
    }
}

#[test]
fn fifo_messages_are_captured_exactly() {
    if need_root("fifo_messages_are_captured_exactly") {
        messages_are_captured_exactly("fifo", "fifo");
    }
}

#[test]
fn unix_stream_messages_are_captured_exactly() {
    if need_root("unix_stream_messages_are_captured_exactly") {
        messages_are_captured_exactly("stream", "unix_stream");
    }
}

#[test]
fn unix_seqpacket_messages_are_captured_exactly() {
    if need_root("unix_seqpacket_messages_are_captured_exactly") {
        messages_are_captured_exactly("seqpacket", "unix_seqpacket");
    }
}

#[test]
fn unix_dgram_messages_are_captured_exactly() {
    if need_root("unix_dgram_messages_are_captured_exactly") {
        messages_are_captured_exactly("dgram", "unix_dgram");
    }
}

#[test]
fn pipe_bytes_are_paired_whatever_the_reads() {
    if !need_root("pipe_bytes_are_paired_whatever_the_reads") {
        return;
    }
    // Fewer bytes than a pipe holds (64 KiB), so the writer never blocks.
    const WRITES: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = record_python(dir.path(), PIPE_BULK, &[&WRITES.to_string()]);
    let (parent, child) = parent_and_child(&db);
    let total: u64 = (0..WRITES).map(|i| 1 + (i * 97) % 2000).sum();

    // The child's reads are fewer than the writes, and cover every byte.
    let reads = query(
        &db,
        &format!(
            "select count(*) as n, sum(size) as bytes from events
             where kind = 'msg_recv' and pid = {child}"
        ),
    );
    assert_eq!(reads[0]["bytes"], total);
    assert!(reads[0]["n"].as_u64().unwrap() < WRITES, "{reads}");
    // Yet every write is one message, taken by the read that took its
    // last byte.
    let messages = query(
        &db,
        "select sender_pid, receiver_pid, count(*) as n, sum(size) as bytes,
                sum(received_ns >= sent_ns) as ordered
         from messages group by sender_pid, receiver_pid",
    );
    assert_eq!(
        messages,
        json!([{"sender_pid": parent, "receiver_pid": child, "n": WRITES,
                "bytes": total, "ordered": WRITES}])
    );
    let received_by = query(
        &db,
        &format!(
            "select count(distinct m.received_ns) as reads from messages m
             where m.received_ns in (select ts_ns from events where kind = 'msg_recv' and pid = {child})"
        ),
    );
    assert_eq!(
        received_by[0]["reads"], reads[0]["n"],
        "every read completed a message"
    );
}

#[test]
fn signals_between_processes_are_paired_with_their_delivery() {
    if !need_root("signals_between_processes_are_paired_with_their_delivery") {
        return;
    }
    const K: i64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let db = record_python(dir.path(), SIGNALS, &[&K.to_string()]);
    let (parent, child) = parent_and_child(&db);

    let rows = query(
        &db,
        "select sender_pid, target_pid, signo, count(*) as n,
                sum(delivered_ns >= generated_ns) as delivered_after
         from signals where signo in (10, 12)
         group by sender_pid, target_pid, signo order by signo",
    );
    assert_eq!(
        rows,
        json!([
            {"sender_pid": parent, "target_pid": child, "signo": 10, "n": K, "delivered_after": K},
            {"sender_pid": child, "target_pid": parent, "signo": 12, "n": K + 1, "delivered_after": K + 1},
        ])
    );
    // The raw events behind them: one generation by the sender and one
    // delivery in the target per signal.
    let events = query(
        &db,
        "select kind, pid, aux as signo, count(*) as n from events
         where kind in ('signal_generate', 'signal_deliver') and aux in (10, 12)
         group by kind, pid, aux order by kind, aux",
    );
    assert_eq!(
        events,
        json!([
            {"kind": "signal_deliver", "pid": child, "signo": 10, "n": K},
            {"kind": "signal_deliver", "pid": parent, "signo": 12, "n": K + 1},
            {"kind": "signal_generate", "pid": parent, "signo": 10, "n": K},
            {"kind": "signal_generate", "pid": child, "signo": 12, "n": K + 1},
        ])
    );
    // The child's exit makes the kernel send SIGCHLD, which python3 leaves
    // at its default (ignore): generated, never delivered, and sent by no
    // process.
    let chld = query(
        &db,
        "select sender_pid, target_pid, delivered_ns, cause from signals where signo = 17",
    );
    assert_eq!(
        chld,
        json!([{"sender_pid": null, "target_pid": parent, "delivered_ns": null, "cause": "child"}])
    );
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);
}
