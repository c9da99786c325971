//! `record --max-db-size`: a recording that writes ten times the limit
//! keeps the file under it, and loses none of its aggregates.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{example, ipcscope, query, run, stderr, stdout, Recorder};

const MIB: u64 = 1 << 20;

/// Size of `path`, 0 while it does not exist.
fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// About 4.8 million events (2.4 million messages) into a 20 MiB database
/// (which holds some 420,000 of them: more than ten times as many are
/// written), at a pace the recorder keeps up with, so that the workload's
/// own count is the recording's. The file is watched as it
/// grows; the traffic `report` shows must be the workload's, although all
/// but the newest tenth of the raw rows is gone.
#[test]
fn a_recording_ten_times_the_limit_stays_under_it_and_reports_its_whole_traffic() {
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let _turn = crate::flood_turn();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kept.db");
    let wal = dir.path().join("kept.db-wal");
    const MESSAGES: u64 = 2_400_000;
    const SIZE: u64 = 64;
    const LIMIT: u64 = 20 * MIB;
    const CHUNK: u64 = LIMIT / 8;
    let mut command = ipcscope();
    command
        .args(["record", "--no-ebpf", "--max-db-size", "20MiB", "--db"])
        .arg(&db)
        .arg("--")
        .arg(&example)
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--size", &SIZE.to_string(), "--rate", "64000"])
        // A bigger ring than the default rides out a pause of the
        // recorder on this shared 2-core machine: any event lost would
        // make the counts below the ring's, not retention's.
        .env("IPCSCOPE_RING_BYTES", (64 * MIB).to_string())
        .stderr(Stdio::piped());
    let mut recorder = Recorder::spawn(&mut command);
    let err_reader = recorder.read_stderr();

    // The file's size as it grows, every 100 ms: (seconds, file, WAL).
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let status = loop {
        samples.push((started.elapsed().as_secs_f64(), size(&db), size(&wal)));
        if let Some(status) = recorder.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the recording still runs after 180 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status}: {err}");
    samples.push((started.elapsed().as_secs_f64(), size(&db), size(&wal)));
    for (at, file, wal) in samples.iter().step_by(10) {
        eprintln!(
            "{at:6.1} s  file {:6.2} MiB  wal {:5.2} MiB",
            *file as f64 / MIB as f64,
            *wal as f64 / MIB as f64
        );
    }
    let largest = |pick: fn(&(f64, u64, u64)) -> u64| samples.iter().map(pick).max().unwrap();
    let (file_max, wal_max) = (largest(|s| s.1), largest(|s| s.2));
    eprintln!(
        "largest: file {file_max} bytes, WAL {wal_max} bytes; at the end: file {} bytes",
        size(&db)
    );
    assert!(
        file_max <= LIMIT + CHUNK && size(&db) <= LIMIT + CHUNK,
        "the file passed the limit by more than a chunk: {file_max} bytes at most, {} at the end",
        size(&db)
    );
    // The WAL is not part of the limit, but must not grow with the
    // recording either: a checkpoint's worth (4 MiB) and a transaction.
    assert!(wal_max <= 12 * MIB, "the WAL grew to {wal_max} bytes");
    assert!(
        err.contains("retention on") && err.contains("retention removed the oldest"),
        "record says what it does and did: {err}"
    );

    // Every event written is stored or counted as removed, and the
    // workload wrote at least ten times what was kept.
    let row = &query(
        &db,
        "select s.event_count as seen,
                (select count(*) from events) as stored,
                (select coalesce(sum(count), 0) from drops where source = 'retention') as removed,
                (select count(*) from drops where source = 'retention') as chunks,
                (select count(*) from drops where source != 'retention') as lost
         from sessions s",
    )[0];
    let n = |k: &str| row[k].as_u64().unwrap();
    assert_eq!(n("stored") + n("removed"), n("seen"), "{row}");
    assert!(n("seen") >= 2 * MESSAGES, "{row}");
    assert!(
        n("removed") * 10 >= n("seen") * 9 && n("chunks") >= 10,
        "the workload wrote at least 10x what the file kept: {row}"
    );
    assert_eq!(n("lost"), 0, "no event lost other than by retention: {row}");

    // The channel's traffic is the workload's, from `traffic` and in the
    // report, although most of its `events` and `messages` are gone.
    let traffic = query(
        &db,
        "select sum(sends) as sends, sum(receives) as receives, sum(messages) as messages,
                sum(paired) as paired, sum(bytes) as bytes
         from traffic t join channels c on c.id = t.channel_id
         where c.kind = 'ipclib_channel'",
    );
    let all = serde_json::json!([{"sends": MESSAGES, "receives": MESSAGES,
        "messages": MESSAGES, "paired": MESSAGES, "bytes": MESSAGES * SIZE}]);
    assert_eq!(traffic, all);
    let raw = &query(
        &db,
        "select (select count(*) from messages) as messages,
                (select count(*) from events where kind = 'msg_send') as sends",
    )[0];
    assert!(
        raw["messages"].as_u64().unwrap() < MESSAGES / 5,
        "the raw rows were removed: {raw}"
    );
    let out = run(&["report", "--db", db.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let channels = report["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{report}");
    for (column, expected) in [
        ("sends", MESSAGES),
        ("receives", MESSAGES),
        ("messages", MESSAGES),
        ("paired", MESSAGES),
        ("bytes", MESSAGES * SIZE),
    ] {
        assert_eq!(channels[0][column], expected, "{column}: {}", channels[0]);
    }
    assert_eq!(
        report["drops"],
        serde_json::json!([{"source": "retention", "count": n("removed")}])
    );
}

#[test]
fn a_limit_too_small_or_not_a_size_is_refused_before_recording() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let record = |size: &str| {
        let out = ipcscope()
            .args(["record", "--no-ebpf", "--max-db-size", size, "--db"])
            .arg(&db)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{size}");
        stderr(&out)
    };
    let err = record("20XB");
    assert!(err.contains("unknown unit \"XB\""), "{err}");
    let err = record("100kB");
    assert!(err.contains("too small; give at least 1MiB"), "{err}");
    assert!(!db.exists(), "nothing recorded");
}
