//! What a recording exposes, and to whom: its files and sockets are its
//! user's alone, and another user gets nothing through them even when the
//! permissions are opened up.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{example, ipcscope, monotonic_ns, need_root, query, stderr, Recorder};

/// uid and gid of `nobody`: another user every Linux machine has.
const NOBODY: u32 = 65534;

/// A recording whose command hands out its pid and the ring socket's
/// path, then waits to be released: its sockets stay up as long as the
/// test needs.
struct Held {
    recorder: Recorder,
    /// The command's shell.
    shell: u32,
    /// The ipc-lib ring socket, as `IPCSCOPE_SOCKET` names it.
    socket: String,
    db: PathBuf,
    go: PathBuf,
    stderr: JoinHandle<String>,
}

impl Held {
    /// Records into `dir`, with the sockets under `dir/run`, with the
    /// probes when `ebpf`; once released, the command runs `then`.
    fn start(dir: &Path, ebpf: bool, then: &str) -> Held {
        Held::start_in(dir, &dir.join("db").join("held.db"), ebpf, then)
    }

    /// [`Held::start`], recording into `db`.
    fn start_in(dir: &Path, db: &Path, ebpf: bool, then: &str) -> Held {
        let run = dir.join("run");
        std::fs::create_dir(&run).unwrap();
        // Open to all: only the recorder's own directories may keep
        // another user out.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = db.to_owned();
        let socket_file = dir.join("socket");
        let go = dir.join("go");
        let script = format!(
            r#"
            echo "$$ $IPCSCOPE_SOCKET" > "$0.part" && mv "$0.part" "$0"
            while [ ! -e "$1" ]; do sleep 0.05; done
            {then}
            "#
        );
        let mut command = ipcscope();
        command.arg("record");
        if !ebpf {
            command.arg("--no-ebpf");
        }
        let mut recorder = Recorder::spawn(
            command
                .arg("--db")
                .arg(&db)
                .args(["--", "sh", "-c", &script])
                .arg(&socket_file)
                .arg(&go)
                .env("XDG_RUNTIME_DIR", &run)
                .stderr(Stdio::piped()),
        );
        let stderr = recorder.read_stderr();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (shell, socket) = loop {
            if let Ok(said) = std::fs::read_to_string(&socket_file) {
                let (pid, path) = said.trim().split_once(' ').unwrap();
                break (pid.parse().unwrap(), path.to_owned());
            }
            assert!(Instant::now() < deadline, "the command never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        Held {
            recorder,
            shell,
            socket,
            db,
            go,
            stderr,
        }
    }

    /// Lets the command end; the recorder's stderr once it has.
    fn finish(mut self) -> String {
        std::fs::write(&self.go, b"").unwrap();
        let status = self.recorder.wait(Duration::from_secs(60));
        let err = self.stderr.join().unwrap();
        assert!(status.success(), "{status}: {err}");
        err
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn a_recordings_database_and_sockets_are_its_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let held = Held::start(dir.path(), false, "");
    let live = query(&held.db, "select live_socket from sessions")[0]["live_socket"]
        .as_str()
        .map(PathBuf::from)
        .expect("a running recording names its live-feed socket");
    // SAFETY: geteuid has no preconditions.
    let us = unsafe { libc::geteuid() };
    // The journal files hold committed events until a checkpoint: they
    // need guarding as much as the database.
    let db = held.db.to_str().unwrap();
    for file in [db.to_owned(), format!("{db}-wal"), format!("{db}-shm")] {
        assert_eq!(mode(Path::new(&file)), 0o600, "{file}");
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), us, "{file}");
    }
    assert_eq!(mode(held.db.parent().unwrap()), 0o700);
    assert_eq!(mode(&live), 0o600);
    assert_eq!(mode(live.parent().unwrap()), 0o700);
    assert_ne!(
        live.parent(),
        Some(dir.path().join("run").as_path()),
        "the live socket has a directory of its own"
    );
    // The ring socket has no file for permissions to guard: it is in the
    // abstract namespace, and who may register is checked on each caller
    // (the tests below).
    assert!(
        held.socket.starts_with("@ipcscope-rings-"),
        "{}",
        held.socket
    );
    held.finish();
}

#[test]
fn another_users_process_outside_the_recording_cannot_hand_the_recorder_a_ring() {
    if !need_root("another_users_process_outside_the_recording_cannot_hand_the_recorder_a_ring") {
        return;
    }
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = runnable_by_anyone(dir.path(), &example);
    let held = Held::start(dir.path(), false, "");

    // Started here, not by the recording: only SO_PEERCRED and the
    // process tree stand between the other user and the recorder.
    let run_as = |uid: Option<u32>| {
        let mut command = Command::new(&exe);
        command
            .args(["--messages", "300"])
            .env("IPCSCOPE_SOCKET", &held.socket)
            .current_dir("/");
        if let Some(id) = uid {
            command.uid(id).gid(id);
        }
        let child = command.stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        // Refused or not, the application runs on: tracing never fails it.
        assert!(out.status.success(), "{}", stderr(&out));
        (pid, stderr(&out))
    };
    let (theirs, told) = run_as(Some(NOBODY));
    // The stranger is told, by ipc-lib, that it is not traced.
    assert!(
        told.contains("ipc-lib: not tracing") && told.contains("the recorder refused this process"),
        "{told}"
    );
    // Ours, through the same socket: the refusal above is the stranger's.
    let (ours, _) = run_as(None);
    let db = held.db.clone();
    let err = held.finish();
    assert_eq!(stored_messages(&db, ours), serde_json::json!([{"n": 600}]));
    assert_eq!(
        stored_messages(&db, theirs),
        serde_json::json!([{"n": 0}]),
        "uid {NOBODY}'s events were stored"
    );
    assert_eq!(
        query(
            &db,
            &format!("select count(*) as n from processes where pid = {theirs}")
        ),
        serde_json::json!([{"n": 0}])
    );
    assert!(
        err.contains(&format!(
            "registration from pid {theirs} (uid {NOBODY}) refused: not the recording user (0), nor a process the recording started or follows"
        )),
        "{err}"
    );
}

/// A copy of `program` in `dir` that any user can run, wherever the build
/// tree is (its directories may be closed to others).
fn runnable_by_anyone(dir: &Path, program: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join(program.file_name().unwrap());
    std::fs::copy(program, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// The events of producer_consumer run as `pid`, on its channel.
fn stored_messages(db: &Path, pid: u32) -> serde_json::Value {
    query(
        db,
        &format!(
            "select count(*) as n from events e join channels c on c.id = e.channel_id
             where c.name = 'producer-consumer-{pid}'"
        ),
    )
}

/// The README's advice, followed: a command started by a root recorder
/// that becomes another user (issue 15: every ipc-lib event was lost and
/// the summary said "nothing dropped"). Its events are all stored, nothing
/// is dropped.
#[test]
fn a_command_that_switches_user_is_still_traced() {
    if !need_root("a_command_that_switches_user_is_still_traced") {
        return;
    }
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = runnable_by_anyone(dir.path(), &example);
    let db = dir.path().join("db").join("switched.db");
    let nobody = NOBODY.to_string();
    let out = ipcscope()
        .args(["record", "--no-ebpf", "--db"])
        .arg(&db)
        .args(["--", "setpriv", "--reuid", &nobody, "--regid", &nobody])
        .arg("--clear-groups")
        .arg(&exe)
        .args(["--messages", "300"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("nothing dropped"), "{err}");
    assert!(!err.contains("ipc-lib"), "{err}");
    let messages = query(
        &db,
        "select count(*) as n from messages m join channels c on c.id = m.channel_id
         where c.name like 'producer-consumer-%' and m.latency_ns is not null",
    );
    assert_eq!(messages, serde_json::json!([{"n": 300}]));
    assert_eq!(
        query(&db, "select count(*) as n from drops"),
        serde_json::json!([{"n": 0}])
    );
}

/// Capability numbers, from `linux/capability.h`.
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_KILL: u32 = 5;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// CapEff, CapPrm and CapBnd from a `/proc/.../status`.
fn capabilities(status: &Path) -> [u64; 3] {
    let text = std::fs::read_to_string(status).unwrap();
    let field = |name: &str| {
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {}", status.display()));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    [field("CapEff:"), field("CapPrm:"), field("CapBnd:")]
}

#[test]
fn record_keeps_only_the_capabilities_it_still_needs_once_the_probes_are_in() {
    if !need_root("record_keeps_only_the_capabilities_it_still_needs_once_the_probes_are_in") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Once released, IPC the probes must still see: a pipe's bytes.
    let held = Held::start(
        dir.path(),
        true,
        "printf 'after the drop' | cat > /dev/null",
    );
    let recorder = held.recorder.pid();
    let kept = [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_KILL]
        .iter()
        .fold(0u64, |set, cap| set | 1 << cap);
    // The drop follows the command's start, which the test has just seen.
    let deadline = Instant::now() + Duration::from_secs(30);
    while capabilities(Path::new(&format!("/proc/{recorder}/status")))[0] != kept {
        assert!(
            Instant::now() < deadline,
            "the recorder still holds {:#x}",
            capabilities(Path::new(&format!("/proc/{recorder}/status")))[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every thread: capabilities are per thread, and the recorder has
    // runtime and SQLite threads besides its main one.
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{recorder}/task")).unwrap() {
        let status = task.unwrap().path().join("status");
        if !status.exists() {
            continue; // ended meanwhile
        }
        threads += 1;
        assert_eq!(
            capabilities(&status),
            [kept; 3],
            "{}: effective, permitted and bounding sets",
            status.display()
        );
    }
    assert!(threads > 1, "only {threads} thread seen");
    for gone in [
        CAP_SYS_ADMIN,
        CAP_BPF,
        CAP_PERFMON,
        CAP_NET_ADMIN,
        CAP_SYS_MODULE,
        CAP_SETPCAP,
        CAP_DAC_OVERRIDE,
    ] {
        assert_eq!(kept & 1 << gone, 0);
    }
    // The command runs as the user ran ipcscope: here, root with all of it.
    let shell = capabilities(Path::new(&format!("/proc/{}/status", held.shell)));
    assert_ne!(shell[0] & 1 << CAP_SYS_ADMIN, 0, "{shell:x?}");
    assert_ne!(shell[0] & 1 << CAP_BPF, 0, "{shell:x?}");

    let dropped_ns = monotonic_ns();
    let db = held.db.clone();
    held.finish();
    // What happened after the drop was recorded: the probes' ring and maps
    // still read, the session stored to its end.
    let after = query(
        &db,
        &format!(
            "select count(*) as n from events e join channels c on c.id = e.channel_id
             where e.source = 'ebpf' and e.kind = 'msg_send' and c.kind = 'pipe'
               and e.size = 14 and e.ts_ns > {dropped_ns}"
        ),
    );
    assert_eq!(after, serde_json::json!([{"n": 1}]));
    assert_eq!(
        query(
            &db,
            "select exit_status, ended_at is not null as ended from sessions"
        ),
        serde_json::json!([{"exit_status": 0, "ended": 1}])
    );
}

#[test]
fn a_database_of_another_user_stays_writable_after_the_drop() {
    if !need_root("a_database_of_another_user_stays_writable_after_the_drop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = home.join("theirs.db");
    let created = ipcscope()
        .args(["record", "--no-ebpf", "--db"])
        .arg(&db)
        .args(["--", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), NOBODY);

    // `sudo ipcscope record --db mine.db`: root, probes, their file. The
    // command outlives the drop and keeps the store busy from both ends
    // (events and, once it ends, the session's last rows).
    let held = Held::start_in(
        dir.path(),
        &db,
        true,
        "printf 'after the drop' | cat > /dev/null",
    );
    let recorder = held.recorder.pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = [
        CAP_SYS_PTRACE,
        CAP_DAC_READ_SEARCH,
        CAP_KILL,
        CAP_DAC_OVERRIDE,
        CAP_CHOWN,
    ]
    .iter()
    .fold(0u64, |set, cap| set | 1 << cap);
    while capabilities(Path::new(&format!("/proc/{recorder}/status")))[0] != kept {
        assert!(
            Instant::now() < deadline,
            "the recorder holds {:#x}",
            capabilities(Path::new(&format!("/proc/{recorder}/status")))[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    held.finish();
    assert_eq!(
        query(
            &db,
            "select count(*) as n, count(ended_at) as ended from sessions"
        ),
        serde_json::json!([{"n": 2, "ended": 2}])
    );
    for file in std::fs::read_dir(&home).unwrap() {
        let file = file.unwrap();
        assert_eq!(
            file.metadata().unwrap().uid(),
            NOBODY,
            "{} is still theirs",
            file.path().display()
        );
    }
}

/// Twenty same-user live subscribers that never read added 10 s to
/// `record`'s exit (500 ms each, one after another), and a long `query` on
/// the file another 10 s, the final checkpoint waiting out the busy timeout
/// (issue 15). Neither holds up the end now, and nothing recorded is lost.
#[test]
fn silent_subscribers_and_a_long_query_do_not_hold_up_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let held = Held::start(dir.path(), false, "printf 'last words' | cat > /dev/null");
    let live = query(&held.db, "select live_socket from sessions")[0]["live_socket"]
        .as_str()
        .map(PathBuf::from)
        .expect("a running recording names its live-feed socket");
    let silent: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&live).unwrap())
        .collect();
    // Reads for minutes, holding a read transaction on the file.
    let mut long_query = ipcscope()
        .args(["query", "--db"])
        .arg(&held.db)
        .arg(
            "with recursive c(x) as (select 1 union all select x + 1 from c)
             select count(*) from c, sessions",
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let db = held.db.clone();
    let start = Instant::now();
    held.finish();
    let took = start.elapsed();
    let query_ran_throughout = long_query.try_wait().unwrap().is_none();
    long_query.kill().unwrap();
    long_query.wait().unwrap();
    drop(silent);
    assert!(query_ran_throughout, "the query ended early: no test");
    // The command's own end takes well under a second; each of the two
    // holds was 10 s.
    assert!(took < Duration::from_secs(5), "record took {took:?} to end");
    assert_eq!(
        query(
            &db,
            "select ended_at is not null as ended, exit_status from sessions"
        ),
        serde_json::json!([{"ended": 1, "exit_status": 0}])
    );
}

/// A process of the command's whose parent exits before it registers (a
/// daemon's double fork) is still the command's: it comes to the recorder,
/// not to init, and is let in whatever user it became.
#[test]
fn an_orphan_of_the_command_is_still_admitted() {
    if !need_root("an_orphan_of_the_command_is_still_admitted") {
        return;
    }
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = runnable_by_anyone(dir.path(), &example);
    let db = dir.path().join("db").join("orphan.db");
    let nobody = NOBODY.to_string();
    // The subshell that starts the producer exits at once; the producer
    // registers 300 ms later, an orphan; the command waits for it.
    let script = r#"( (sleep 0.3; exec "$0" --messages 300) & ); sleep 1.5"#;
    let out = ipcscope()
        .args(["record", "--no-ebpf", "--db"])
        .arg(&db)
        .args(["--", "setpriv", "--reuid", &nobody, "--regid", &nobody])
        .args(["--clear-groups", "sh", "-c", script])
        .arg(&exe)
        .current_dir("/")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("refused"), "{err}");
    assert_eq!(
        query(
            &db,
            "select count(*) as n from messages m join channels c on c.id = m.channel_id
             where c.name like 'producer-consumer-%' and m.latency_ns is not null",
        ),
        serde_json::json!([{"n": 300}])
    );
}
