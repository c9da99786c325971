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
    /// The ipc-lib ring socket (`IPCSCOPE_SOCKET`).
    socket: PathBuf,
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
                break (pid.parse().unwrap(), PathBuf::from(path));
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
    for socket in [&held.socket, &live] {
        assert_eq!(mode(socket), 0o600, "{}", socket.display());
        assert_eq!(
            mode(socket.parent().unwrap()),
            0o700,
            "{}",
            socket.display()
        );
        assert_ne!(
            socket.parent(),
            Some(dir.path().join("run").as_path()),
            "each socket has a directory of its own"
        );
    }
    held.finish();
}

#[test]
fn another_user_cannot_hand_the_recorder_a_ring_even_through_open_permissions() {
    if !need_root("another_user_cannot_hand_the_recorder_a_ring_even_through_open_permissions") {
        return;
    }
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy the other user can run wherever the build tree is.
    let exe = dir.path().join("producer_consumer");
    std::fs::copy(&example, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let held = Held::start(dir.path(), false, "");
    // Open the socket and its directory to everyone, so that only the
    // SO_PEERCRED check stands between the other user and the recorder.
    std::fs::set_permissions(
        held.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&held.socket, std::fs::Permissions::from_mode(0o777)).unwrap();

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
        pid
    };
    let theirs = run_as(Some(NOBODY));
    // Ours, through the same opened-up socket: the refusal above is the
    // uid's, not the path's.
    let ours = run_as(None);
    let db = held.db.clone();
    let err = held.finish();
    let stored = |pid: u32| {
        query(
            &db,
            &format!(
                "select count(*) as n from events e join channels c on c.id = e.channel_id
                 where c.name = 'producer-consumer-{pid}'"
            ),
        )
    };
    assert_eq!(stored(ours), serde_json::json!([{"n": 600}]));
    assert_eq!(
        stored(theirs),
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
            "registration from uid {NOBODY} refused: only the recording user (0) may register"
        )),
        "{err}"
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
