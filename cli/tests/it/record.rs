use std::io::Write;
use std::process::Stdio;

use crate::{ipcscope, need_root, query, run, stderr, stdout};

#[test]
fn record_passes_the_exit_status_through_and_stores_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    // --no-ebpf: this must work for any user; the eBPF path is tested below.
    let out = run(&[
        "record",
        "--db",
        db_s,
        "--no-ebpf",
        "--name",
        "three",
        "--",
        "sh",
        "-c",
        "sleep 0.2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));

    let sessions = run(&["sessions", "--db", db_s]);
    assert!(sessions.status.success());
    let listing = stdout(&sessions);
    assert!(listing.contains("sh -c 'sleep 0.2; exit 3'"), "{listing}");
    assert!(
        listing.contains("three") && listing.contains("done"),
        "{listing}"
    );

    assert_eq!(
        query(&db, "select count(*) as n from sessions"),
        serde_json::json!([{"n": 1}])
    );
    let row = &query(&db, "select exit_status, end_mono_ns - start_mono_ns as d, ended_at is not null as ended from sessions")[0];
    assert_eq!(row["exit_status"], 3);
    assert_eq!(row["ended"], 1);
    assert!(
        row["d"].as_i64().unwrap() >= 200_000_000,
        "duration covers the 0.2 s sleep: {row}"
    );
    let procs = query(&db, "select comm, exit_status from processes");
    assert_eq!(procs, serde_json::json!([{"comm": "sh", "exit_status": 3}]));
}

#[test]
fn record_passes_stdio_through_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut child = ipcscope()
        .args([
            "record",
            "--db",
            db.to_str().unwrap(),
            "--no-ebpf",
            "--",
            "sh",
            "-c",
            "cat; echo to-stderr >&2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "line one\nline two\n",
        "stdout must carry only the command's output"
    );
    assert!(stderr(&out).starts_with("to-stderr\n"), "{}", stderr(&out));
}

#[test]
fn a_signal_death_exits_128_plus_n() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let out = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--no-ebpf",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(out.status.code(), Some(128 + 15));
    assert_eq!(
        query(&db, "select exit_status from sessions")[0]["exit_status"],
        143
    );
}

#[test]
fn ebpf_record_follows_every_descendant() {
    if !need_root("ebpf_record_follows_every_descendant") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // sh forks a subshell that runs two children: a tree three deep.
    let script = "(sleep 0.05 & /bin/true; wait); exit 0";
    let out = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    let procs = query(
        &db,
        "select p.pid, p.ppid, p.comm, p.exe, p.started_ns is not null as started,
                p.exited_ns > p.started_ns as exited
         from processes p order by p.started_ns",
    );
    let procs = procs.as_array().unwrap();
    let comms: Vec<&str> = procs
        .iter()
        .map(|p| p["comm"].as_str().unwrap_or(""))
        .collect();
    assert!(
        comms.contains(&"sleep") && comms.contains(&"true"),
        "{procs:?}"
    );
    assert!(
        procs.len() >= 4,
        "sh, the subshell, sleep and true: {procs:?}"
    );
    for p in procs {
        assert_eq!(p["started"], 1, "{p}");
        assert_eq!(p["exited"], 1, "every process exited after it started: {p}");
    }
    // Every process but the first has its parent in the session: the tree
    // is complete, nothing joined late.
    let pids: Vec<i64> = procs.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    for p in &procs[1..] {
        assert!(
            pids.contains(&p["ppid"].as_i64().unwrap()),
            "orphan in the tree: {p}"
        );
    }
    let sleep = procs.iter().find(|p| p["comm"] == "sleep").unwrap();
    assert!(
        sleep["exe"].as_str().unwrap().ends_with("/sleep"),
        "{sleep}"
    );
    assert_eq!(
        query(&db, "select sources from sessions")[0]["sources"],
        "ebpf,lib"
    );
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);
}

#[test]
fn report_and_export_describe_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    let out = run(&["record", "--db", db_s, "--no-ebpf", "--", "true"]);
    assert!(out.status.success());

    let report = run(&["report", "--db", db_s]);
    assert!(report.status.success(), "{}", stderr(&report));
    let text = stdout(&report);
    for section in [
        "== session",
        "== processes",
        "== channels",
        "== waits",
        "== signals",
        "== deadlocks",
        "== drops",
    ] {
        assert!(text.contains(section), "missing {section}:\n{text}");
    }
    let json = run(&["report", "--db", db_s, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["session"]["command"], "true");
    assert_eq!(json["processes"][0]["comm"], "true");

    let export = run(&["export", "--db", db_s, "--format", "jsonl"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let lines: Vec<serde_json::Value> = stdout(&export)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let stored = query(&db, "select count(*) as n from events")[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(lines.len() as u64, stored);
    assert!(
        lines.iter().any(|l| l["kind"] == "process_exit"),
        "{lines:?}"
    );
}

#[test]
fn doctor_reports_on_this_machine() {
    let out = run(&["doctor"]);
    let text = stdout(&out);
    assert!(
        text.contains("tracefs") && text.contains("btf") && text.contains("ebpf probes"),
        "{text}"
    );
    if need_root("doctor_reports_on_this_machine") {
        assert!(
            out.status.success(),
            "as root on this kind of machine everything needed works:\n{text}"
        );
    }
}

/// `query`'s table format rounded a timestamp to `1841 s`, so a user who
/// copied it into the next query got the wrong number (issue 17): points
/// in time are printed exactly, durations in units, and `--raw` prints
/// every number as stored.
#[test]
fn query_prints_timestamps_exactly_and_raw_every_number_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    let out = run(&["record", "--db", db_s, "--no-ebpf", "--", "sleep", "0.3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sql = "select start_mono_ns, end_mono_ns - start_mono_ns as duration_ns from sessions";
    let stored = &query(&db, sql)[0];
    let (start, duration) = (
        stored["start_mono_ns"].as_i64().unwrap(),
        stored["duration_ns"].as_i64().unwrap(),
    );
    let cells = |args: &[&str]| -> Vec<String> {
        let out = run(args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .nth(2)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let shown = cells(&["query", "--db", db_s, sql]);
    assert_eq!(shown[0], start.to_string());
    assert!(shown[1..].join(" ").ends_with("ms"), "{shown:?}");
    let raw = cells(&["query", "--db", db_s, "--raw", sql]);
    assert_eq!(raw, [start.to_string(), duration.to_string()]);
}

/// The report named signals by number: a server's latch wake-ups read as
/// `23` (issue 17). They are named as Linux names them, the number beside.
#[test]
fn report_names_signals() {
    if !need_root("report_names_signals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    // SIGURG is ignored by default: the shell lives on.
    let out = run(&[
        "record",
        "--db",
        db_s,
        "--",
        "sh",
        "-c",
        "kill -URG $$; true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = run(&["report", "--db", db_s]);
    assert!(report.status.success(), "{}", stderr(&report));
    let text = stdout(&report);
    let signals = &text[text.find("== signals").expect("a signals section")..];
    assert!(signals.contains("SIGURG (23)"), "{signals}");
    assert_eq!(
        query(&db, "select count(*) as n from signals where signo = 23"),
        serde_json::json!([{"n": 1}]),
        "stored as its number"
    );
}
