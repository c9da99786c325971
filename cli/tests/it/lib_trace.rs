//! ipc-lib processes traced through `record`: the rings, end to end.

use std::path::PathBuf;

use crate::{example, query, stderr};

fn producer_consumer() -> Option<PathBuf> {
    example("producer_consumer")
}

/// Records the example with `args`, `IPCSCOPE_RING_BYTES` set when given;
/// returns its stderr after checking it succeeded.
fn record_example(
    example: &PathBuf,
    db: &std::path::Path,
    args: &[&str],
    ring_bytes: Option<&str>,
) -> String {
    let mut cmd = crate::ipcscope();
    cmd.args(["record", "--db", db.to_str().unwrap(), "--no-ebpf", "--"])
        .arg(example)
        .args(args);
    if let Some(bytes) = ring_bytes {
        cmd.env("IPCSCOPE_RING_BYTES", bytes);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// A broadcast's publish is received once per subscriber: each delivery
/// is a message of its own, paired with the one publish (before, a
/// publish paired with one subscriber's receive and the others' were left
/// with no sender).
#[test]
fn every_delivery_of_a_broadcast_is_paired_with_its_publish() {
    let Some(example) = example("broadcast") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // A capacity above the ticks: no subscriber can lag, so every publish
    // reaches all three.
    record_example(
        &example,
        &db,
        &[
            "--subscribers",
            "3",
            "--messages",
            "500",
            "--capacity",
            "1024",
        ],
        None,
    );
    let channel = "(select id from channels where kind = 'ipclib_broadcast')";
    let events = query(
        &db,
        &format!(
            "select kind, count(*) as n, count(distinct pid) as pids from events
             where channel_id = {channel} group by kind order by kind"
        ),
    );
    assert_eq!(
        events,
        serde_json::json!([
            {"kind": "msg_recv", "n": 1500, "pids": 3},
            {"kind": "msg_send", "n": 500, "pids": 1},
        ])
    );
    let messages = query(
        &db,
        &format!(
            "select count(*) as n, count(latency_ns) as paired, count(distinct msg_id) as ids,
                    count(distinct receiver_pid) as receivers, min(latency_ns) >= 0 as ordered
             from messages where channel_id = {channel}"
        ),
    );
    assert_eq!(
        messages,
        serde_json::json!([{"n": 1500, "paired": 1500, "ids": 500, "receivers": 3, "ordered": 1}])
    );
}

/// A queue's job is received when it is acknowledged: each push pairs
/// with the one acknowledged delivery, and a delivery whose worker died
/// holding the job is a `redelivered` drop, not a message.
#[test]
fn every_push_of_a_queue_is_paired_with_its_acknowledgement_and_redeliveries_are_counted() {
    let Some(example) = example("work_queue") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // The first of two workers SIGKILLs itself holding the first job.
    record_example(
        &example,
        &db,
        &["--workers", "2", "--jobs", "300", "--crash"],
        None,
    );
    let queue = "(select id from channels where kind = 'ipclib_queue')";
    // 300 jobs and the survivor's stop; the dead worker acked nothing,
    // so every ack is the survivor's, one of them a second delivery.
    let events = query(
        &db,
        &format!(
            "select kind, count(*) as n, count(distinct msg_id) as ids,
                    count(distinct pid) as pids, sum(aux = 2) as second
             from events where channel_id = {queue} group by kind order by kind"
        ),
    );
    assert_eq!(
        events,
        serde_json::json!([
            {"kind": "drop", "n": 1, "ids": 1, "pids": 1, "second": 0},
            {"kind": "msg_recv", "n": 301, "ids": 301, "pids": 1, "second": 1},
            {"kind": "msg_send", "n": 301, "ids": 301, "pids": 1, "second": 0},
        ])
    );
    let messages = query(
        &db,
        &format!(
            "select count(*) as n, count(latency_ns) as paired, min(latency_ns) >= 0 as ordered
             from messages where channel_id = {queue}"
        ),
    );
    assert_eq!(
        messages,
        serde_json::json!([{"n": 301, "paired": 301, "ordered": 1}])
    );
    // The drop names the job that went round again, lost by a death.
    let redelivered = query(
        &db,
        &format!(
            "select d.result as result, r.aux as delivery from events d
             join events r on r.msg_id = d.msg_id and r.channel_id = d.channel_id
             where d.channel_id = {queue} and d.kind = 'drop' and r.kind = 'msg_recv'"
        ),
    );
    assert_eq!(
        redelivered,
        serde_json::json!([{"result": -i64::from(libc::EOWNERDEAD), "delivery": 2}])
    );
    assert_eq!(
        query(
            &db,
            "select source, sum(count) as n from drops group by source"
        ),
        serde_json::json!([{"source": "redelivered", "n": 1}])
    );
}

#[test]
fn every_send_and_receive_of_an_ipc_lib_channel_is_stored_and_paired_by_id() {
    let Some(example) = producer_consumer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    record_example(
        &example,
        &db,
        &["--messages", "3000", "--size", "100"],
        None,
    );
    let kinds = query(
        &db,
        "select kind, count(*) as n, count(distinct msg_id) as ids, sum(size) as bytes,
                count(distinct pid) as pids
         from events where source = 'lib' group by kind order by kind",
    );
    assert_eq!(
        kinds,
        serde_json::json!([
            {"kind": "msg_recv", "n": 3000, "ids": 3000, "bytes": 300000, "pids": 1},
            {"kind": "msg_send", "n": 3000, "ids": 3000, "bytes": 300000, "pids": 1},
        ])
    );
    // Every id sent is received exactly once, by the other process, later.
    let pairs = query(
        &db,
        "select count(*) as n, sum(r.ts_ns >= s.ts_ns) as ordered, sum(r.pid != s.pid) as across
         from events s join events r on r.msg_id = s.msg_id and r.channel_id = s.channel_id
         where s.kind = 'msg_send' and r.kind = 'msg_recv'",
    );
    assert_eq!(
        pairs,
        serde_json::json!([{"n": 3000, "ordered": 3000, "across": 3000}])
    );
    assert_eq!(
        query(
            &db,
            "select kind, count(*) as n from channels group by kind"
        ),
        serde_json::json!([{"kind": "ipclib_channel", "n": 1}])
    );
    assert_eq!(
        query(&db, "select count(*) as n from drops"),
        serde_json::json!([{"n": 0}])
    );
}

#[test]
fn a_full_ipc_lib_ring_counts_exactly_what_it_drops() {
    let Some(example) = producer_consumer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // The smallest ring against a fast burst: it must overflow.
    let out = crate::ipcscope()
        .args(["record", "--db", db.to_str().unwrap(), "--no-ebpf", "--"])
        .arg(&example)
        .args(["--messages", "50000", "--size", "8"])
        .env("IPCSCOPE_RING_BYTES", "4096")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DROPPED lib_ring"),
        "record says so: {}",
        stderr(&out)
    );
    let row = &query(
        &db,
        "select (select count(*) from events where source = 'lib') as stored,
                (select coalesce(sum(count), 0) from drops where source = 'lib_ring') as dropped",
    )[0];
    let (stored, dropped) = (
        row["stored"].as_u64().unwrap(),
        row["dropped"].as_u64().unwrap(),
    );
    assert!(
        dropped > 0,
        "a 4 KiB ring cannot hold 100,000 events unread: {row}"
    );
    assert_eq!(
        stored + dropped,
        100_000,
        "every event is stored or counted: {row}"
    );
}

#[test]
fn rpc_requests_and_replies_over_sockets_are_paired_and_ordered() {
    let Some(example) = example("rpc") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    record_example(&example, &db, &["--calls", "500"], None);
    // Requests one way, replies the other, each message received once by
    // the other process and never before it was sent.
    assert_eq!(
        query(
            &db,
            "select count(*) as n, count(distinct msg_id) as ids,
                    sum(latency_ns >= 0) as ordered, sum(receiver_pid != sender_pid) as across
             from messages"
        ),
        serde_json::json!([{"n": 1000, "ids": 1000, "ordered": 1000, "across": 1000}])
    );
    // Each reply's send names, in aux, a request sent before it.
    assert_eq!(
        query(
            &db,
            "select count(*) as n from events r
             join events q on q.msg_id = r.aux and q.kind = 'msg_send' and q.aux = 0
             where r.kind = 'msg_send' and r.aux != 0 and q.ts_ns <= r.ts_ns"
        ),
        serde_json::json!([{"n": 500}])
    );
}

/// Without the probes, every ipc-lib process is known from its ring and
/// the recorder: parent, start time, and how it ended (3, and 137 for
/// SIGKILL), each process once, with the role it gave itself.
#[test]
fn ipc_lib_processes_have_parent_start_exit_status_and_role_without_ebpf() {
    let Some(example) = example("roles") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    record_example(&example, &db, &[], None);
    let procs = query(
        &db,
        "select p.pid, p.ppid, p.title, p.exit_status,
                p.started_ns >= s.start_mono_ns as after_start,
                p.started_ns <= p.exited_ns as before_exit,
                p.ppid = s.recorder_pid as from_recorder
         from processes p join sessions s on s.id = p.session_id
         order by p.title",
    );
    let rows = procs.as_array().unwrap();
    assert_eq!(rows.len(), 3, "one row per process: {procs}");
    let (parent, one, two) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(parent["title"], "parent", "{procs}");
    assert_eq!(parent["from_recorder"], 1, "{procs}");
    assert_eq!(parent["exit_status"], 0, "{procs}");
    for (worker, title, status) in [(one, "worker-1", 3), (two, "worker-2", 137)] {
        assert_eq!(worker["title"], title, "{procs}");
        assert_eq!(worker["ppid"], parent["pid"], "{procs}");
        assert_eq!(worker["exit_status"], status, "{procs}");
        assert_eq!(worker["before_exit"], 1, "{procs}");
    }
    assert_eq!(parent["after_start"], 1, "{procs}");
    // /proc gives a start to the clock tick (10 ms): a worker's may be
    // rounded to before its parent's, never by more than a tick.
    let order = query(
        &db,
        "select count(*) as n from processes w join processes p on w.ppid = p.pid
         where w.started_ns + 10000000 < p.started_ns",
    );
    assert_eq!(order, serde_json::json!([{"n": 0}]));
    // Each start, exec and exit told once, by one source.
    let told = query(
        &db,
        "select count(*) as n from events
         where kind in ('process_start', 'process_exec', 'process_exit')
         group by pid, kind having count(*) > 1",
    );
    assert_eq!(told, serde_json::json!([]));
    let lifecycle = query(
        &db,
        "select kind, count(*) as n from events
         where kind in ('process_start', 'process_exit', 'process_title')
         group by kind order by kind",
    );
    assert_eq!(
        lifecycle,
        serde_json::json!([
            {"kind": "process_exit", "n": 3},
            {"kind": "process_start", "n": 3},
            {"kind": "process_title", "n": 3},
        ])
    );
}
