//! Payload capture (`record --payload-bytes N`): off by default; on, each
//! message event keeps exactly the first N bytes of the message, on a
//! Unix socket (send, sendmsg and write; recv, recvmsg and read), a POSIX
//! message queue and a SysV queue.

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
