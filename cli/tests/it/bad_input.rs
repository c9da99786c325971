use std::os::unix::process::CommandExt;

use crate::{ipcscope, is_root, query, run, stderr, stdout};

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
    // Said once (it was said three times over).
    assert_eq!(
        stderr(&bad).matches("syntax error").count(),
        1,
        "{}",
        stderr(&bad)
    );
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

/// A directory's entries and each file's bytes: what "untouched" means
/// for a recording and what lies beside it. But for what SQLite creates
/// beside a WAL database for any reader that may (with the database's
/// owner), which holds no data: its shared-memory index (`-shm`) and an
/// empty `-wal`.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().into_string().unwrap(), bytes)
        })
        .filter(|(name, bytes)| {
            !(name.ends_with("-shm") || name.ends_with("-wal") && bytes.is_empty())
        })
        .collect();
    files.sort();
    files
}

/// Compared by their digest: a failure prints names, not whole databases.
fn digest(files: &[(String, Vec<u8>)]) -> Vec<(String, u64)> {
    use std::hash::{Hash, Hasher};
    files
        .iter()
        .map(|(name, bytes)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            (name.clone(), h.finish())
        })
        .collect()
}

/// `query "vacuum into '/some/dir/copy.db'"` wrote a 0644 copy of a 0600
/// recording anywhere, over an existing file too (issue 15): a read-only
/// connection still writes other files. Each way to is refused before it
/// runs, in one line, and nothing anywhere changes.
#[test]
fn query_writes_no_file_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    std::fs::create_dir(&rec).unwrap();
    let db = recorded(&rec, "a.db");
    let db_s = db.to_str().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let existing = elsewhere.join("existing.db");
    std::fs::write(&existing, b"someone's file").unwrap();
    let fresh = elsewhere.join("copy.db");
    let recording = digest(&snapshot(&rec));
    let outside = digest(&snapshot(&elsewhere));
    for sql in [
        format!("vacuum into '{}'", fresh.display()),
        format!("vacuum into '{}'", existing.display()),
        format!("attach '{}' as x", fresh.display()),
        format!(
            "attach '{}' as x; create table x.t(a); insert into x.t values (1)",
            fresh.display()
        ),
        format!("pragma temp_store_directory = '{}'", elsewhere.display()),
        "pragma journal_mode = delete".to_owned(),
        "pragma wal_checkpoint(truncate)".to_owned(),
    ] {
        let out = run(&["query", "--db", db_s, &sql]);
        assert!(!out.status.success(), "{sql}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{sql}: {err}");
        assert!(
            err.contains("`query` only reads the recording"),
            "{sql}: {err}"
        );
        assert_eq!(digest(&snapshot(&elsewhere)), outside, "{sql}");
        assert_eq!(digest(&snapshot(&rec)), recording, "{sql}");
    }
    // Reading, and describing the schema, still work.
    let out = run(&["query", "--db", db_s, "pragma table_info(sessions)"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("started_at"));
}

/// Read commands on a recording the reader cannot write (a read-only
/// copy, another user's readable file) failed with "attempt to write a
/// readonly database" (issue 15). They read it, and leave no file behind.
#[test]
fn a_recording_the_reader_cannot_write_is_read_and_left_as_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let made = dir.path().join("made");
    std::fs::create_dir(&made).unwrap();
    let db = recorded(&made, "a.db");
    let shelf = dir.path().join("shelf");
    std::fs::create_dir(&shelf).unwrap();
    let kept = shelf.join("a.db");
    std::fs::copy(&db, &kept).unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&shelf, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = digest(&snapshot(&shelf));
    let kept_s = kept.to_str().unwrap();
    for args in [
        vec!["sessions", "--db", kept_s],
        vec!["report", "--db", kept_s],
        vec![
            "query",
            "--db",
            kept_s,
            "select count(*) as n from sessions",
        ],
        vec!["export", "--db", kept_s, "--format", "jsonl"],
    ] {
        let mut command = ipcscope();
        command.args(&args).current_dir("/");
        // Root may write anywhere: read as a user who may not.
        if is_root() {
            command.uid(65534).gid(65534);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).is_empty(), "{args:?}");
        assert_eq!(digest(&snapshot(&shelf)), before, "{args:?}");
    }
}

/// `--db` naming a FIFO blocked for ever (issue 15): opening one waits for
/// a writer. Every command refuses it at once, in one line.
#[test]
fn a_fifo_named_as_the_database_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f.db");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo_s = fifo.to_str().unwrap();
    for args in [
        vec!["record", "--no-ebpf", "--db", fifo_s, "--", "true"],
        vec!["query", "--db", fifo_s, "select 1"],
        vec!["report", "--db", fifo_s],
    ] {
        let mut child = ipcscope()
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} blocked on the FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        assert!(!status.success(), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("not a regular file but a FIFO"),
            "{args:?}: {err}"
        );
    }
}

/// `export | head` ended with a doubled "Broken pipe" error and status 1
/// (issue 15): a reader that has seen enough is no failure.
#[test]
fn an_export_whose_reader_leaves_ends_quietly() {
    use std::io::BufRead;
    let Some(example) = crate::example("producer_consumer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let out = ipcscope()
        .args(["record", "--no-ebpf", "--db"])
        .arg(&db)
        .arg("--")
        .arg(&example)
        .args(["--messages", "5000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = ipcscope()
        .args(["export", "--db", db.to_str().unwrap(), "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    // The pipe is closed here, with most of 10,000 events still to write
    // (more than a pipe buffer holds).
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}: {}", out.status, stderr(&out));
    assert_eq!(stderr(&out), "");
}
