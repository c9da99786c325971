//! What `record` follows besides a command: running processes (`-p PID`,
//! with the descendants they have and those they fork) and every process
//! (`--all`), until they exit or the recorder is interrupted. Real
//! processes, the real binary, the real probes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ebpf_ipc::python;
use crate::{ipcscope, need_root, query};

/// Messages each of the two writers sends.
const N: u64 = 20;

/// A parent and the child it forked at once, sharing a pipe; the parent
/// prints the child's pid and waits for the file `go`. Then it writes N
/// messages of 100 bytes, forks a second child that writes N of 50, and
/// waits for both; the first child reads everything. Exits 3 if the
/// reader missed bytes, 4 if `go` never came.
const TARGET: &str = r#"
import os, sys, time

n, go = int(sys.argv[1]), sys.argv[2]
rx, tx = os.pipe()
pid = os.fork()
def wait_for_go():
    for _ in range(20000):  # bounded: at most 20 s for the recorder
        if os.path.exists(go):
            return
        time.sleep(0.001)
    sys.exit(4)

if pid == 0:
    # Forked before the recording: followed as a descendant already
    # there. It reads only once recorded: a call already in progress
    # when following starts is not seen.
    os.close(tx)
    wait_for_go()
    got = 0
    while True:
        b = os.read(rx, 65536)
        if not b:
            break
        got += len(b)
    os._exit(0 if got == n * 150 else 3)
os.close(rx)
print(pid, flush=True)
wait_for_go()
for i in range(n):
    os.write(tx, b"x" * 100)
late = os.fork()
if late == 0:
    # Forked during the recording: followed by the probes themselves.
    for i in range(n):
        os.write(tx, b"y" * 50)
    os._exit(0)
os.waitpid(late, 0)
os.close(tx)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

/// The workload, started outside any recording, and the pid of the child
/// it forked before printing it.
fn start_target(dir: &Path) -> (Child, i64) {
    let go = dir.join("go");
    start_python(TARGET, &[N.to_string().as_ref(), go.as_os_str()])
}

/// A python3 `script` with `args`, started outside any recording, and the
/// pid its first line of output names.
pub(crate) fn start_python(script: &str, args: &[&std::ffi::OsStr]) -> (Child, i64) {
    let mut target = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(target.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (target, line.trim().parse().unwrap())
}

/// `ipcscope record ARGS`, returned once it says it follows the
/// processes.
pub(crate) fn start_recorder(args: &[&str]) -> Child {
    let mut recorder = ipcscope()
        .arg("record")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = recorder.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("recorder: {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("Ctrl-C to stop") => return recorder,
            Ok(_) => {}
            Err(e) => {
                let _ = recorder.kill();
                panic!("the recorder did not start following: {e}");
            }
        }
    }
}

/// Waits for `child` to exit, for at most [`STEP`]; kills it and fails
/// past that.
pub(crate) fn wait_bounded(child: &mut Child, what: &str) -> i32 {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks that the workload rooted at `parent` was recorded whole: its
/// three processes, and every message from both writers to the reader.
fn check_workload(db: &Path, parent: i64, reader: i64) {
    let procs = query(
        db,
        &format!(
            "select pid, ppid, exited_ns is not null as exited from processes
             where pid = {parent} or ppid = {parent} order by started_ns, pid"
        ),
    );
    let procs = procs.as_array().unwrap();
    assert_eq!(procs.len(), 3, "{procs:?}");
    assert!(procs.iter().all(|p| p["exited"] == 1), "{procs:?}");
    assert!(procs.iter().any(|p| p["pid"] == reader), "{procs:?}");
    let late = procs
        .iter()
        .find(|p| p["ppid"] == parent && p["pid"] != reader)
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    let messages = query(
        db,
        &format!(
            "select sender_pid, receiver_pid, count(*) as n, sum(size) as bytes,
                    sum(latency_ns >= 0) as ordered
             from messages where sender_pid in ({parent}, {late})
             group by sender_pid, receiver_pid order by sender_pid = {parent} desc"
        ),
    );
    assert_eq!(
        messages,
        json!([
            {"sender_pid": parent, "receiver_pid": reader, "n": N, "bytes": N * 100, "ordered": N},
            {"sender_pid": late, "receiver_pid": reader, "n": N, "bytes": N * 50, "ordered": N},
        ])
    );
}

#[test]
fn record_p_follows_a_running_process_and_its_descendants_until_they_exit() {
    if !need_root("record_p_follows_a_running_process_and_its_descendants_until_they_exit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let (mut target, reader) = start_target(dir.path());
    let parent = i64::from(target.id());
    let mut recorder = start_recorder(&["--db", db.to_str().unwrap(), "-p", &parent.to_string()]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(wait_bounded(&mut target, "the workload"), 0);
    // Every target gone: the recording ends by itself.
    assert_eq!(wait_bounded(&mut recorder, "the recorder"), 0);

    check_workload(&db, parent, reader);
    let session = query(
        &db,
        "select command, ended_at is not null as ended, exit_status from sessions",
    );
    assert_eq!(
        session,
        json!([{"command": format!("-p {parent}"), "ended": 1, "exit_status": null}])
    );
}

#[test]
fn record_all_follows_processes_it_did_not_start_until_interrupted() {
    if !need_root("record_all_follows_processes_it_did_not_start_until_interrupted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("all.db");
    let (mut target, reader) = start_target(dir.path());
    let parent = i64::from(target.id());
    let mut recorder = start_recorder(&["--db", db.to_str().unwrap(), "--all"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(wait_bounded(&mut target, "the workload"), 0);
    // Ctrl-C: the session is finished cleanly.
    // SAFETY: kill has no memory effects; the recorder is our child, not
    // yet reaped.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    assert_eq!(wait_bounded(&mut recorder, "the recorder"), 0);

    check_workload(&db, parent, reader);
    let recorder_pid = i64::from(recorder.id());
    let own = query(
        &db,
        &format!("select count(*) as n from events where pid = {recorder_pid}"),
    );
    assert_eq!(own[0]["n"], 0, "the recorder never records itself");
    let session = query(
        &db,
        "select command, ended_at is not null as ended from sessions",
    );
    assert_eq!(session, json!([{"command": "--all", "ended": 1}]));
}

/// `-p 1` follows everything below init, the recorder included: it
/// listed and recorded itself (issue 15).
#[test]
fn record_p_1_leaves_the_recorder_out() {
    if !need_root("record_p_1_leaves_the_recorder_out") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("init.db");
    let mut recorder = start_recorder(&["--db", db.to_str().unwrap(), "-p", "1"]);
    // Long enough for its threads to wait on futexes many times.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory effects; the recorder is our child, not
    // yet reaped.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    assert_eq!(wait_bounded(&mut recorder, "the recorder"), 0);
    let recorder_pid = recorder.id();
    for table in ["events", "processes", "waits"] {
        let own = query(
            &db,
            &format!("select count(*) as n from {table} where pid = {recorder_pid}"),
        );
        assert_eq!(own[0]["n"], 0, "the recorder in {table}");
    }
}

#[test]
fn record_targets_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let db = db.to_str().unwrap();
    for (args, error) in [
        (vec!["record", "--db", db], "nothing to record"),
        (
            vec!["record", "--db", db, "-p", "4000000000"],
            "-p 4000000000: no such process",
        ),
        (
            vec!["record", "--db", db, "--no-ebpf", "--all"],
            "--no-ebpf",
        ),
        (
            vec!["record", "--db", db, "-p", "1", "--all"],
            "cannot be used with",
        ),
    ] {
        let out = crate::run(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = crate::stderr(&out);
        assert!(stderr.contains(error), "{args:?}: {stderr}");
    }
    assert!(
        !Path::new(db).exists(),
        "no database for a refused recording"
    );
}
