//! What a recording exposes, and to whom: its files and sockets are its
//! user's alone, and another user gets nothing through them even when the
//! permissions are opened up.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{example, ipcscope, need_root, query, stderr, Recorder};

/// uid and gid of `nobody`: another user every Linux machine has.
const NOBODY: u32 = 65534;

/// A recording whose command hands out the ring socket's path, then
/// waits to be released: its sockets stay up as long as the test needs.
struct Held {
    recorder: Recorder,
    /// The ipc-lib ring socket (`IPCSCOPE_SOCKET`).
    socket: PathBuf,
    db: PathBuf,
    go: PathBuf,
    stderr: JoinHandle<String>,
}

impl Held {
    /// Records into `dir`, with the sockets under `dir/run`.
    fn start(dir: &Path) -> Held {
        let run = dir.join("run");
        std::fs::create_dir(&run).unwrap();
        // Open to all: only the recorder's own directories may keep
        // another user out.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("db").join("held.db");
        let socket_file = dir.join("socket");
        let go = dir.join("go");
        let script = r#"
            echo "$IPCSCOPE_SOCKET" > "$0.part" && mv "$0.part" "$0"
            while [ ! -e "$1" ]; do sleep 0.05; done
        "#;
        let mut recorder = Recorder::spawn(
            ipcscope()
                .args(["record", "--no-ebpf", "--db"])
                .arg(&db)
                .args(["--", "sh", "-c", script])
                .arg(&socket_file)
                .arg(&go)
                .env("XDG_RUNTIME_DIR", &run)
                .stderr(Stdio::piped()),
        );
        let mut pipe = recorder.0.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
            err
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let socket = loop {
            if let Ok(path) = std::fs::read_to_string(&socket_file) {
                break PathBuf::from(path.trim());
            }
            assert!(Instant::now() < deadline, "the command never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        Held {
            recorder,
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
    let held = Held::start(dir.path());
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
    let held = Held::start(dir.path());
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
