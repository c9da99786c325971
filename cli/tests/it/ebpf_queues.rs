//! Message queues of unmodified programs, recorded through the real
//! binary and the real probes: POSIX message queues (`mq_send` /
//! `mq_receive`) and SysV message queues (`msgsnd` / `msgrcv`), checked in
//! the database by exact counts, sizes, pids, queue names and pairing.

use serde_json::json;

use crate::ebpf_ipc::{parent_and_child, record_python_with};
use crate::{need_root, query};

/// Messages each workload sends.
const N: u64 = 60;

/// A parent sends `n` messages of known sizes into a new queue while its
/// forked child receives them. POSIX: priorities `i % 3`, and a queue of
/// 10 messages, so the child takes the highest priority first. SysV:
/// types `1 + i % 3`, received lowest type first (`msgtyp` -3). Either
/// way receives come out of send order, and only pairing per priority
/// (type) matches each receive with its send. The SysV child first copies
/// a message with `MSG_COPY`, which leaves it queued and is no receive. Prints the queue's name
/// (mq) or key and id (SysV); exits 3 if the child did not receive every
/// byte.
pub const QUEUES: &str = r#"
import ctypes, errno, os, sys, time

mode, n = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
size = lambda i: 1 + (i * 97) % 2000

def check(rc, what):
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc

if mode == "mq":
    class Attr(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                    ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
    libc.mq_open.restype = ctypes.c_int
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Attr)]
    name = f"/ipcscope-it-{os.getpid()}"
    attr = Attr(0, 10, 2048, 0)
    q = check(libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr)), "mq_open")
    libc.mq_unlink(name.encode())
    print(name, flush=True)
    recv = lambda buf: libc.mq_receive(q, buf, 2048, ctypes.byref(ctypes.c_uint()))
    send = lambda i, m: libc.mq_send(q, m, len(m), i % 3)
else:
    key = 0x1ec0000 + os.getpid()
    q = check(libc.msgget(key, 0o1000 | 0o600), "msgget")  # IPC_CREAT
    print(hex(key), q, flush=True)
    class Msg(ctypes.Structure):
        _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 2048)]
    # Lowest type first: receives reorder the messages across types.
    recv = lambda buf: libc.msgrcv(q, ctypes.byref(buf), 2048, -3, 0)
    def send(i, m):
        msg = Msg(1 + i % 3, m)
        return libc.msgsnd(q, ctypes.byref(msg), len(m), 0)

pid = os.fork()
if pid == 0:
    got = 0
    buf = ctypes.create_string_buffer(2048) if mode == "mq" else Msg()
    if mode != "mq":
        # A copy of the first message (MSG_COPY | IPC_NOWAIT), which
        # stays queued: not a receive. Kernels without MSG_COPY say ENOSYS.
        for _ in range(10000):
            if libc.msgrcv(q, ctypes.byref(buf), 2048, 0, 0o40000 | 0o4000) >= 0:
                break
            if ctypes.get_errno() != errno.ENOMSG:
                break
            time.sleep(0.001)
    for i in range(n):
        got += check(recv(buf), "receive")
    os._exit(0 if got == sum(size(i) for i in range(n)) else 3)
for i in range(n):
    check(send(i, bytes([65 + i % 26]) * size(i)), "send")
_, status = os.waitpid(pid, 0)
if mode != "mq":
    libc.msgctl(q, 0, None)  # IPC_RMID
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// Records the queue workload in `mode` and checks every message, as the
/// channel named `name` (given what the workload printed) of `kind`.
fn queue_messages_are_captured_and_paired(
    mode: &str,
    kind: &str,
    name: impl Fn(&str) -> String,
    priority: impl Fn(u64) -> u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), QUEUES, &[mode, &N.to_string()], &[]);
    let (parent, child) = parent_and_child(&db);
    let sizes: Vec<u64> = (0..N).map(|i| 1 + (i * 97) % 2000).collect();
    let total: u64 = sizes.iter().sum();

    // The queue, by its name; the only other channel is the pipe the
    // test reads the workload's output from.
    let channels = query(
        &db,
        "select id, kind, name from channels where kind != 'pipe'",
    );
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert_eq!(channels[0]["kind"], kind, "{mode}");
    assert_eq!(channels[0]["name"], name(printed.trim()), "{mode}");
    let ch = channels[0]["id"].as_i64().unwrap();
    let groups = query(
        &db,
        &format!(
            "select pid, kind, count(*) as n, sum(size) as bytes from events
             where kind in ('msg_send', 'msg_recv') and channel_id = {ch}
             group by pid, kind order by kind desc"
        ),
    );
    assert_eq!(
        groups,
        json!([
            {"pid": parent, "kind": "msg_send", "n": N, "bytes": total},
            {"pid": child, "kind": "msg_recv", "n": N, "bytes": total},
        ]),
        "{mode}"
    );
    // Sends in order, with their sizes (from the length argument: the
    // call returns 0) and priorities (types).
    let sends = query(
        &db,
        &format!(
            "select size, aux, result from events
             where kind = 'msg_send' and channel_id = {ch} order by ts_ns"
        ),
    );
    let expected: Vec<_> = (0..N)
        .map(|i| json!({"size": sizes[i as usize], "aux": priority(i), "result": 0}))
        .collect();
    assert_eq!(sends, json!(expected), "{mode}");
    // Receives: the return value is the size; every call took time.
    let odd = query(
        &db,
        &format!(
            "select count(*) as n from events
             where kind in ('msg_send', 'msg_recv') and channel_id = {ch}
               and (duration_ns is null or (kind = 'msg_recv' and result != size))"
        ),
    );
    assert_eq!(odd[0]["n"], 0, "{mode}");

    // Pairing: every message from the parent to the child, after it was
    // sent, and taken by a receive of exactly its size and priority.
    let messages = query(
        &db,
        &format!(
            "select sender_pid, receiver_pid, count(*) as n, sum(size) as bytes,
                    sum(latency_ns > 0 and latency_ns = received_ns - sent_ns) as sane
             from messages where channel_id = {ch} group by sender_pid, receiver_pid"
        ),
    );
    assert_eq!(
        messages,
        json!([{"sender_pid": parent, "receiver_pid": child, "n": N, "bytes": total, "sane": N}]),
        "{mode}"
    );
    let matched = query(
        &db,
        &format!(
            "select count(*) as n from messages m
             join events s on s.kind = 'msg_send' and s.ts_ns = m.sent_ns
                          and s.tid = m.sender_tid and s.channel_id = {ch}
             join events r on r.kind = 'msg_recv' and r.ts_ns = m.received_ns
                          and r.tid = m.receiver_tid and r.channel_id = {ch}
             where m.channel_id = {ch} and r.size = s.size and r.aux = s.aux
               and m.size = s.size"
        ),
    );
    assert_eq!(
        matched[0]["n"], N,
        "{mode}: each receive paired with its own send"
    );
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);
}

#[test]
fn posix_mq_messages_are_captured_and_paired() {
    if need_root("posix_mq_messages_are_captured_and_paired") {
        queue_messages_are_captured_and_paired("mq", "mq", str::to_owned, |i| i % 3);
    }
}

#[test]
fn sysv_msg_messages_are_captured_and_paired() {
    if need_root("sysv_msg_messages_are_captured_and_paired") {
        queue_messages_are_captured_and_paired(
            "sysv",
            "sysv_msg",
            |printed| {
                let (key, id) = printed.split_once(' ').unwrap();
                format!("key={key} id={id}")
            },
            |i| 1 + i % 3,
        );
    }
}

/// stress-ng's POSIX mq stressor, recorded: the sends captured are the
/// bogo ops stress-ng reports (one `mq_send` each), and every receive
/// (stress-ng kills its receiver when done, so some messages may still
/// be queued) is paired, after its send, with a send of the same bytes
/// (kept as payload at both ends). stress-ng gives each message a random
/// priority, so receives come far out of send order: pairing in plain
/// send order would receive messages before they were sent.
#[test]
fn stress_ng_mq_sends_match_its_own_count_and_pair_exactly() {
    if !need_root("stress_ng_mq_sends_match_its_own_count_and_pair_exactly") {
        return;
    }
    const OPS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sn.db");
    let yaml = dir.path().join("sn.yaml");
    let out = crate::run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--payload-bytes",
        "8",
        "--",
        "stress-ng",
        "--mq",
        "1",
        "--mq-ops",
        &OPS.to_string(),
        // Metrics are written to the YAML report only when asked for.
        "--metrics-brief",
        "--yaml",
        yaml.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", crate::stderr(&out));
    // `- stressor: mq` then, a line or more below, `bogo-ops: N`.
    let yaml = std::fs::read_to_string(&yaml).unwrap();
    let after = &yaml[yaml.find("stressor: mq").expect("stress-ng reports mq")..];
    let reported: u64 = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("bogo-ops:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(reported, OPS);

    let channels = query(&db, "select id, name from channels where kind = 'mq'");
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert!(
        channels[0]["name"].as_str().unwrap().starts_with('/'),
        "{channels}"
    );
    let ch = channels[0]["id"].as_i64().unwrap();
    let counts = query(
        &db,
        &format!(
            "select kind, count(*) as n, count(distinct pid) as pids, sum(length(payload) = 8) as kept
             from events where channel_id = {ch} group by kind order by kind"
        ),
    );
    let recvs = counts[0]["n"].as_u64().unwrap();
    assert_eq!(counts[0]["kind"], "msg_recv");
    assert!(recvs > 0 && recvs <= OPS, "{counts}");
    assert_eq!(
        counts[1],
        json!({"kind": "msg_send", "n": OPS, "pids": 1, "kept": OPS})
    );
    let paired = query(
        &db,
        &format!(
            "select count(*) as n, sum(m.latency_ns > 0) as after,
                    sum(s.payload = r.payload) as same,
                    count(distinct s.aux) > 1 as priorities
             from messages m
             join events s on s.kind = 'msg_send' and s.ts_ns = m.sent_ns
                          and s.tid = m.sender_tid and s.channel_id = {ch}
             join events r on r.kind = 'msg_recv' and r.ts_ns = m.received_ns
                          and r.tid = m.receiver_tid and r.channel_id = {ch}
             where m.channel_id = {ch}"
        ),
    );
    assert_eq!(
        paired,
        json!([{"n": recvs, "after": recvs, "same": recvs, "priorities": 1}])
    );
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);
}
