use std::os::unix::process::CommandExt;

use crate::{ipcscope, is_root, query, run, stderr};

#[test]
fn a_non_sqlite_file_gets_one_clear_line_and_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    std::fs::copy("/etc/passwd", &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let out = run(&["query", "--db", path.to_str().unwrap(), "select 1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("not an SQLite database"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no -wal/-shm created"
    );
}

/// A database in `dir` holding one session of `true`.
fn recorded(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let db = dir.join(name);
    let out = run(&[
        "record",
        "--db",
        db.to_str().unwrap(),
        "--no-ebpf",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    db
}

#[test]
fn query_cannot_modify_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded(dir.path(), "a.db");
    let db_s = db.to_str().unwrap();
    let out = run(&["query", "--db", db_s, "delete from sessions"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("readonly"), "{}", stderr(&out));
    assert_eq!(query(&db, "select count(*) as n from sessions")[0]["n"], 1);
}

#[test]
fn statements_with_different_columns_are_one_clear_error_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded(dir.path(), "a.db");
    let db_s = db.to_str().unwrap();
    for format in ["table", "csv", "json"] {
        let out = run(&[
            "query",
            "--db",
            db_s,
            "--format",
            format,
            "select 1 as x; select 2 as y, 3 as z",
        ]);
        // It used to panic (index out of bounds, status 101).
        assert_eq!(out.status.code(), Some(1), "{format}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{format}: {err}");
        assert!(err.contains("run one statement at a time"), "{err}");
    }
    // Statements that agree on their columns are one table.
    let out = run(&[
        "query",
        "--db",
        db_s,
        "--format",
        "json",
        "select 1 as x; select 2 as x",
    ]);
    assert_eq!(crate::stdout(&out).trim(), r#"[{"x":1},{"x":2}]"#);
}

/// A recorded program whose name is a terminal command (it retitled the
/// terminal of whoever ran `report`, `sessions` or `query`): every text
/// output shows it escaped.
#[test]
fn a_program_named_with_terminal_escapes_reaches_no_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    let evil = dir.path().join("\x1b]0;pwned\x07\u{9b}2J");
    std::fs::copy("/bin/true", &evil).unwrap();
    assert!(run(&[
        "record",
        "--db",
        db_s,
        "--no-ebpf",
        "--",
        evil.to_str().unwrap()
    ])
    .status
    .success());
    for args in [
        vec!["report", "--db", db_s],
        vec!["sessions", "--db", db_s],
        vec![
            "query",
            "--db",
            db_s,
            "select command, exe, comm from sessions, processes",
        ],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = crate::stdout(&out);
        assert!(text.contains("pwned"), "{args:?} shows the name: {text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed a control character: {text:?}"
        );
    }
}

/// `export -o` named the recording itself and left it at 0 bytes, or its
/// WAL and corrupted it: an export never writes over what it reads, and
/// what it writes is its owner's alone.
#[test]
fn export_never_writes_over_the_recording_and_writes_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = recorded(dir.path(), "x.db");
    let db_s = db.to_str().unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let before = std::fs::read(&db).unwrap();
    let wal = format!("{db_s}-wal");
    let relative = format!(
        "{}/../{}/x.db",
        dir.path().display(),
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    for target in [
        db_s,
        wal.as_str(),
        link.to_str().unwrap(),
        relative.as_str(),
    ] {
        let out = run(&["export", "--db", db_s, "--format", "jsonl", "-o", target]);
        assert!(!out.status.success(), "{target}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{target}: {err}");
        assert!(err.contains("that is the recording itself"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), before, "{target}: untouched");
    }
    let good = dir.path().join("events.jsonl");
    let out = run(&[
        "export",
        "--db",
        db_s,
        "--format",
        "jsonl",
        "-o",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&good).unwrap().lines().count() > 0);
    // Nothing partial left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn bad_sql_and_missing_sessions_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    let missing = run(&["sessions", "--db", db_s]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no such database"),
        "{}",
        stderr(&missing)
    );
    assert!(!db.exists(), "reading must not create a database");

    assert!(run(&["record", "--db", db_s, "--no-ebpf", "--", "true"])
        .status
        .success());
    let bad = run(&["query", "--db", db_s, "selec nonsense"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("syntax error"), "{}", stderr(&bad));
    let no_session = run(&["report", "--db", db_s, "--session", "42"]);
    assert!(
        stderr(&no_session).contains("no session 42"),
        "{}",
        stderr(&no_session)
    );
}

#[test]
fn record_without_privileges_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut cmd = ipcscope();
    cmd.args(["record", "--db", db.to_str().unwrap(), "--", "true"]);
    if is_root() {
        // Run as nobody: no capabilities at all.
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("CAP_BPF") && err.contains("--no-ebpf"),
        "{err}"
    );
    assert!(
        !db.exists(),
        "nothing is created when the probes cannot load"
    );
}

#[test]
fn a_recorder_killed_mid_session_leaves_a_readable_unfinished_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    // A command that outlives the recorder; its argument makes it findable.
    let marker = format!("{}", 4000 + std::process::id() % 1000);
    let mut recorder = ipcscope()
        .args(["record", "--db", db_s, "--no-ebpf", "--", "sleep", &marker])
        .spawn()
        .unwrap();
    // Wait (bounded) until the session and the command's start are committed.
    let mut committed = false;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if db.exists() {
            let out = run(&[
                "query",
                "--db",
                db_s,
                "--format",
                "json",
                "select count(*) as n from processes",
            ]);
            if out.status.success() && crate::stdout(&out).contains("\"n\":1") {
                committed = true;
                break;
            }
        }
    }
    recorder.kill().unwrap(); // SIGKILL: no chance to finish anything
    recorder.wait().unwrap();
    let _ = std::process::Command::new("pkill")
        .args(["-x", "-f", &format!("sleep {marker}")])
        .status();
    assert!(
        committed,
        "the session's first rows were committed while recording"
    );

    let sessions = run(&["sessions", "--db", db_s]);
    assert!(sessions.status.success(), "{}", stderr(&sessions));
    assert!(
        crate::stdout(&sessions).contains("unfinished"),
        "{}",
        crate::stdout(&sessions)
    );
    let row = &query(
        &db,
        "select ended_at, exit_status, event_count from sessions",
    )[0];
    assert!(
        row["ended_at"].is_null() && row["exit_status"].is_null(),
        "{row}"
    );
    assert!(
        row["event_count"].as_i64().unwrap() >= 2,
        "the start and exec were stored: {row}"
    );
    assert!(run(&["report", "--db", db_s]).status.success());
}
