//! Payload capture (`record --payload-bytes N`): off by default; on, each
//! message event keeps exactly the first N bytes of the message, on a
//! Unix socket (send, sendmsg and write; recv, recvmsg and read), a POSIX
//! message queue and a SysV queue; for the vectored calls (writev, readv,
//! sendmsg, recvmsg), the bytes of their iovecs in order.

use std::collections::HashMap;

use crate::ebpf_ipc::{record_python_with, MESSAGES};
use crate::ebpf_queues::QUEUES;
use crate::{need_root, query};

/// Messages each workload sends. Their sizes, `1 + (i * 97) % 2000`, are
/// all different, so a size names its message.
const N: u64 = 30;
/// Bytes kept per message.
const KEEP: usize = 16;

/// Message `i` of the workloads: `size(i)` times the letter `A + i % 26`.
fn message(i: u64) -> Vec<u8> {
    vec![b'A' + (i % 26) as u8; (1 + (i * 97) % 2000) as usize]
}

/// The message events on the channel of `kind`, as (kind, size,
/// payload); the payload as hex, or null.
fn payloads(db: &std::path::Path, kind: &str) -> Vec<(String, u64, Option<String>)> {
    let rows = query(
        db,
        &format!(
            "select e.kind, e.size,
                    case when e.payload is null then null else hex(e.payload) end as payload
             from events e
             join channels c on c.id = e.channel_id
             where c.kind = '{kind}' and e.kind in ('msg_send', 'msg_recv') order by e.ts_ns"
        ),
    );
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["size"].as_u64().unwrap(),
                r["payload"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Records `script args` with and without `--payload-bytes 16`, and
/// checks the events on the channel of `kind`: no payload by default,
/// else the first 16 bytes of each message, sends and receives alike.
/// `extra` are messages the workload sends besides the N.
fn payload_is_kept_only_when_asked(script: &str, args: &[&str], kind: &str, extra: &[&[u8]]) {
    let mut by_size: HashMap<u64, Vec<u8>> = (0..N)
        .map(|i| (message(i).len() as u64, message(i)))
        .collect();
    for m in extra {
        assert!(by_size.insert(m.len() as u64, m.to_vec()).is_none());
    }
    let events = 2 * (N + extra.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(dir.path(), script, args, &[]);
    let off = payloads(&db, kind);
    assert_eq!(off.len() as u64, events, "{kind}: {off:?}");
    assert!(
        off.iter().all(|(_, _, p)| p.is_none()),
        "{kind}: off by default"
    );

    let dir = tempfile::tempdir().unwrap();
    let keep = KEEP.to_string();
    let (db, _) = record_python_with(dir.path(), script, args, &["--payload-bytes", &keep]);
    let on = payloads(&db, kind);
    assert_eq!(on.len() as u64, events, "{kind}: {on:?}");
    for (event, size, payload) in &on {
        let message = &by_size[size];
        let expected = hex(&message[..message.len().min(KEEP)]);
        assert_eq!(
            payload.as_deref(),
            Some(expected.as_str()),
            "{kind} {event} of {size} bytes"
        );
    }
}

#[test]
fn unix_socket_payload_is_kept_only_when_asked() {
    if need_root("unix_socket_payload_is_kept_only_when_asked") {
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir.path().to_str().unwrap().to_owned();
        // The child's reply goes back over the same socket.
        payload_is_kept_only_when_asked(
            MESSAGES,
            &["seqpacket", &N.to_string(), &workdir],
            "unix_seqpacket",
            &[b"done"],
        );
    }
}

#[test]
fn message_queue_payload_is_kept_only_when_asked() {
    if need_root("message_queue_payload_is_kept_only_when_asked") {
        payload_is_kept_only_when_asked(QUEUES, &["mq", &N.to_string()], "mq", &[]);
        payload_is_kept_only_when_asked(QUEUES, &["sysv", &N.to_string()], "sysv_msg", &[]);
    }
}

/// Vectored calls in one process, each checked for its payload: writev
/// of 3 buffers on a pipe read back by readv into 3 of other sizes (the
/// last bigger than what is left, which must not be captured), writev of
/// more iovecs than the probes follow, and sendmsg of 3 buffers on a
/// seqpacket socket pair received by recvmsg into 3, then into 2 with
/// the message longer than the capture limit.
const VECTORED: &str = r#"
import os, socket

rx, tx = os.pipe()
assert os.writev(tx, [b"pipe-", b"writev-", b"three!"]) == 18
assert os.readv(rx, [bytearray(4), bytearray(6), bytearray(64)]) == 18
assert os.writev(tx, [b"%02d," % i for i in range(20)]) == 60
assert os.readv(rx, [bytearray(60)]) == 60

tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
assert tx.sendmsg([b"sock", b"-sendmsg-", b"three-buffers"]) == 26
assert rx.recvmsg_into([bytearray(10), bytearray(3), bytearray(100)])[0] == 26
assert tx.sendmsg([b"x" * 40, b"y" * 40, b"z" * 40]) == 120
assert rx.recvmsg_into([bytearray(50), bytearray(100)])[0] == 120
"#;

#[test]
fn vectored_payloads_are_their_iovecs_bytes_in_order() {
    if !need_root("vectored_payloads_are_their_iovecs_bytes_in_order") {
        return;
    }
    const LIMIT: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(
        dir.path(),
        VECTORED,
        &[],
        &["--payload-bytes", &LIMIT.to_string()],
    );
    let rows = query(
        &db,
        "select c.kind as chan, e.kind, e.size,
                case when e.payload is null then null else hex(e.payload) end as payload
         from events e join channels c on c.id = e.channel_id
         where e.kind in ('msg_send', 'msg_recv') order by e.ts_ns",
    );
    let got: Vec<(String, String, u64, Option<String>)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["chan"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                r["size"].as_u64().unwrap(),
                r["payload"].as_str().map(str::to_owned),
            )
        })
        .collect();

    let numbered: Vec<u8> = (0..20)
        .flat_map(|i| format!("{i:02},").into_bytes())
        .collect();
    let long = [[b'x'; 40], [b'y'; 40], [b'z'; 40]].concat();
    // The capture keeps up to LIMIT bytes of what the call moved; of a
    // writev's 20 iovecs it keeps the first 16 (MAX_IOVECS in the
    // probes): 48 of its 60 bytes, a payload shorter than the message.
    let expected: Vec<(String, String, u64, Option<String>)> = [
        ("pipe", "msg_send", 18, &b"pipe-writev-three!"[..]),
        ("pipe", "msg_recv", 18, b"pipe-writev-three!"),
        ("pipe", "msg_send", 60, &numbered[..48]),
        ("pipe", "msg_recv", 60, &numbered),
        (
            "unix_seqpacket",
            "msg_send",
            26,
            b"sock-sendmsg-three-buffers",
        ),
        (
            "unix_seqpacket",
            "msg_recv",
            26,
            b"sock-sendmsg-three-buffers",
        ),
        ("unix_seqpacket", "msg_send", 120, &long[..LIMIT]),
        ("unix_seqpacket", "msg_recv", 120, &long[..LIMIT]),
    ]
    .iter()
    .map(|(chan, kind, size, bytes)| (chan.to_string(), kind.to_string(), *size, Some(hex(bytes))))
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn probe_options_out_of_range_or_without_probes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let db = db.to_str().unwrap();
    for (args, error) in [
        (
            vec![
                "record",
                "--db",
                db,
                "--payload-bytes",
                "4097",
                "--",
                "true",
            ],
            "4097 is not in 0..=4096",
        ),
        (
            vec![
                "record",
                "--db",
                db,
                "--payload-bytes",
                "lots",
                "--",
                "true",
            ],
            "invalid value 'lots' for '--payload-bytes <N>'",
        ),
        (
            vec![
                "record",
                "--db",
                db,
                "--no-ebpf",
                "--payload-bytes",
                "16",
                "--",
                "true",
            ],
            "--no-ebpf turns off",
        ),
        (
            vec!["record", "--db", db, "--kernel-ring-kib", "2", "--", "true"],
            "2 is not in 4..=1048576",
        ),
        (
            vec![
                "record",
                "--db",
                db,
                "--no-ebpf",
                "--kernel-ring-kib",
                "64",
                "--",
                "true",
            ],
            "--no-ebpf turns off",
        ),
    ] {
        let out = crate::run(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = crate::stderr(&out);
        assert!(stderr.contains(error), "{args:?}: {stderr}");
    }
    assert!(!std::path::Path::new(db).exists());
}
