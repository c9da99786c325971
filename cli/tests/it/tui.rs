//! The dashboard in a real terminal: tmux runs it, `capture-pane` reads
//! the screen, `send-keys` types.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{query, run, stderr};

/// A tmux server of the test's own, killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in a 100x30 terminal; `None` (a skip) without tmux
    /// outside CI.
    fn start(tag: &str, command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "tmux is missing (cargo xtask setup installs it)"
            );
            eprintln!("SKIPPED: tmux is not installed");
            return None;
        }
        let tmux = Tmux {
            socket: format!("ipcscope-test-{tag}-{}", std::process::id()),
        };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-x", "100", "-y", "30", command])
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session");
        Some(tmux)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        let out = self.cmd().args(["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self.cmd().arg("send-keys").args(keys).status().unwrap();
        assert!(status.success(), "tmux send-keys {keys:?}");
    }

    /// Waits until the screen shows every one of `texts`.
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {texts:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// Waits for the exit status the tmux command line writes to `path`.
fn exit_status(path: &Path) -> i32 {
    number_in(path, "the dashboard did not exit")
}

/// Waits for the number a tmux command line writes to `path`; `missing`
/// says what went wrong if it never comes.
fn number_in(path: &Path, missing: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return n;
        }
        assert!(Instant::now() < deadline, "{missing}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process the test started through tmux, killed when the test ends if
/// it is still there: a dashboard that missed its terminal's hangup spins
/// at full CPU for ever.
struct Stray(libc::pid_t);

impl Stray {
    fn alive(&self) -> bool {
        // Gone, or a zombie: "pid (comm) Z ...".
        std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|stat| {
            !stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z'))
        })
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill has no memory effects; the pid is the test's
            // own ipcscope, still running (checked just above).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

fn ipcscope_in(dir: &Path, args: &str) -> (String, PathBuf) {
    let status = dir.join("status");
    let line = format!(
        "{} {args}; echo $? > {}",
        env!("CARGO_BIN_EXE_ipcscope"),
        status.display()
    );
    (line, status)
}

#[test]
fn a_recorded_session_replays_on_every_screen_and_q_quits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let db = db.to_str().unwrap();
    let out = run(&[
        "demo",
        "--no-ebpf",
        "--no-tui",
        "--deadlock",
        "--duration",
        "2s",
        "--db",
        db,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let (line, status) = ipcscope_in(dir.path(), &format!("tui --db {db}"));
    let Some(tmux) = Tmux::start("replay", &line) else {
        return;
    };
    tmux.wait_for(&["1 Overview", "2 Channels", "REPLAY"]);
    // It opens at the end of the session, without a key: everything that
    // happened is on screen, the conductor and its fourteen roles.
    tmux.wait_for(&["Session 1 demo", "processes 15"]);
    tmux.keys(&["2"]);
    tmux.wait_for(&["-jobs", "-squares", "-status"]);
    tmux.keys(&["4"]);
    tmux.wait_for(&["-counter-lock", "demo-locker-a", "demo-locker-b"]);
    tmux.keys(&["5"]);
    tmux.wait_for(&["demo-signaller", "demo-listener", "SIGUSR1"]);
    // The deadlock is marked on the timeline; `n` from the start jumps to
    // the moment it was detected.
    tmux.wait_for(&["◆"]);
    tmux.keys(&["1", "Home", "n"]);
    let detected = query(
        std::path::Path::new(db),
        "select d.detected_ns - s.start_mono_ns as at from deadlocks d, sessions s",
    )[0]["at"]
        .as_u64()
        .unwrap();
    let at = format!(
        "⏸ 1x +{}.{:03}s",
        detected / 1_000_000_000,
        detected % 1_000_000_000 / 1_000_000
    );
    tmux.wait_for(&["DEADLOCK (1 active)", &at]);
    tmux.keys(&["q"]);
    assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
}

#[test]
fn the_demo_on_the_live_dashboard_shows_its_deadlock_and_q_ends_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let db_arg = db.to_str().unwrap();
    let (line, status) = ipcscope_in(
        dir.path(),
        &format!("demo --no-ebpf --deadlock --db {db_arg}"),
    );
    let Some(tmux) = Tmux::start("live", &line) else {
        return;
    };
    let screen = tmux.wait_for(&["LIVE", "DEADLOCK", "demo-locker-"]);
    assert!(
        screen.contains("-jobs"),
        "the busiest channel is listed:\n{screen}"
    );
    tmux.keys(&["q"]);
    assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
    // Quitting ended the recording, which stored what the dashboard showed.
    assert_eq!(
        query(
            &db,
            "select count(*) as n, count(ended_at) as ended from sessions"
        ),
        serde_json::json!([{"n": 1, "ended": 1}])
    );
    assert_eq!(
        query(&db, "select count(*) as n from deadlocks"),
        serde_json::json!([{"n": 1}])
    );
}

#[test]
fn closing_the_terminal_ends_a_recording_on_the_dashboard_as_q_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hangup.db");
    let pid = dir.path().join("pid");
    let status = dir.path().join("status");
    // The shell ignores SIGHUP and stays to write the exit status. The
    // kernel sends SIGHUP on a hangup only to the session leader (this
    // shell), so ipcscope gets none: it must see the hangup on the
    // terminal itself, where crossterm alone would read end-of-file for
    // ever. The inner shell writes ipcscope's pid, then becomes it.
    let line = format!(
        "trap '' HUP; sh -c 'echo $$ > {pid}; exec {exe} record --tui --no-ebpf --db {db} -- sleep 60'; echo $? > {status}",
        pid = pid.display(),
        exe = env!("CARGO_BIN_EXE_ipcscope"),
        db = db.display(),
        status = status.display(),
    );
    let Some(tmux) = Tmux::start("hangup", &line) else {
        return;
    };
    let _ipcscope = Stray(number_in(&pid, "ipcscope never started"));
    tmux.wait_for(&["LIVE"]);
    let killed = tmux.cmd().arg("kill-server").status().unwrap();
    assert!(killed.success(), "tmux kill-server");

    // As after q: the recording ended, the command got SIGTERM, and
    // ipcscope exited with its status, 128+15.
    let code = number_in(&status, "ipcscope did not end when its terminal closed");
    assert_eq!(code, 143);
    assert_eq!(
        query(
            &db,
            "select count(*) as n, count(ended_at) as ended, exit_status from sessions"
        ),
        serde_json::json!([{"n": 1, "ended": 1, "exit_status": 143}])
    );
}

/// `record --tui -p PID` wrote "following 1 processes" into the dashboard,
/// which stayed shifted for the whole recording (issue 17): the dashboard
/// owns the terminal, and the recorder's notes go to the log beside the
/// database.
#[test]
fn the_dashboard_owns_the_terminal_and_notes_go_to_the_log() {
    if !crate::need_root("the_dashboard_owns_the_terminal_and_notes_go_to_the_log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("follow.db");
    let mut target = Command::new("sleep").arg("60").spawn().unwrap();
    let (line, status) = ipcscope_in(
        dir.path(),
        &format!("record --tui --db {} -p {}", db.display(), target.id()),
    );
    let Some(tmux) = Tmux::start("owns", &line) else {
        target.kill().unwrap();
        target.wait().unwrap();
        return;
    };
    let screen = tmux.wait_for(&["LIVE"]);
    // Give a stray line time to land, then look again.
    std::thread::sleep(Duration::from_millis(500));
    let screen = format!("{screen}\n{}", tmux.screen());
    tmux.keys(&["q"]);
    let code = exit_status(&status);
    target.kill().unwrap();
    target.wait().unwrap();
    assert!(!screen.contains("ipcscope:"), "{screen}");
    assert!(
        screen
            .lines()
            .next()
            .is_some_and(|l| l.contains("1 Overview")),
        "the tabs are the first line:\n{screen}"
    );
    assert_eq!(code, 0, "{}", tmux.screen());
    let log = std::fs::read_to_string(dir.path().join("follow.db.output.log")).unwrap();
    assert!(
        log.contains("ipcscope: following 1 processes; Ctrl-C to stop"),
        "{log}"
    );
}

/// Waits until the screen shows every one of `texts` and none of `not`;
/// how long that took.
fn settles(tmux: &Tmux, texts: &[&str], not: &str) -> Duration {
    let start = Instant::now();
    loop {
        let screen = tmux.screen();
        if texts.iter().all(|t| screen.contains(t)) && !screen.contains(not) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the screen never showed {texts:?} without {not:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the replay's timeline (`⏸ 1x +5.150s ━━━● +5.150s`) has its
/// cursor at the session's end.
fn at_the_end(screen: &str) -> bool {
    screen.lines().filter(|l| l.starts_with('⏸')).any(|l| {
        let offsets: Vec<&str> = l
            .split_whitespace()
            .filter(|w| w.starts_with('+') && w.ends_with('s'))
            .collect();
        offsets.len() == 2 && offsets[0] == offsets[1]
    })
}

/// Takes the session's stored replay index away, as a recording cut short
/// or made by an older ipcscope has none.
fn without_index(db: &Path) {
    use collector::store::{OpenMode, Store};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(db, OpenMode::Create).await.unwrap();
        sqlx::query("DELETE FROM replay_index")
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
    });
}

/// Replay froze on real sessions (issue 17: End took seconds, `q` went
/// unanswered while it loaded). On a demo of half a million events:
/// indexed when the recording ended, the dashboard opens on the whole
/// session without a key, with latencies on Channels, and answers Home
/// and End within a second; without that index, it quits at once by `q`
/// or SIGTERM as it opens, while it indexes the session.
#[test]
fn a_big_replay_opens_whole_answers_at_once_and_quits_while_loading() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let db = db.to_str().unwrap();
    let out = run(&[
        "demo",
        "--no-ebpf",
        "--no-tui",
        "--duration",
        "5s",
        "--db",
        db,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = query(Path::new(db), "select count(*) as n from events")[0]["n"]
        .as_u64()
        .unwrap();
    assert!(events > 300_000, "a big session: {events} events");
    let positions = query(Path::new(db), "select count(*) as n from replay_index")[0]["n"]
        .as_u64()
        .unwrap();
    assert!(
        positions > 50,
        "record indexed the session: {positions} positions"
    );

    let (line, status) = ipcscope_in(dir.path(), &format!("tui --db {db}"));
    let Some(tmux) = Tmux::start("big", &line) else {
        return;
    };
    // The whole session, no key pressed, nothing to load.
    let opened = settles(&tmux, &["Session 1 demo", "-jobs"], "loading");
    assert!(at_the_end(&tmux.screen()), "{}", tmux.screen());
    assert!(opened < Duration::from_secs(5), "opening took {opened:?}");
    tmux.keys(&["2"]);
    // The screen's title: the tab bar reads "2 Channels 3 Topology" on
    // every screen, so "Channels 3" alone matched before the key was read
    // (a loaded machine showed the overview's busiest-channels row).
    let screen = tmux.wait_for(&["Channels 3 · sort"]);
    let jobs = screen
        .lines()
        .find(|l| l.contains("-jobs"))
        .unwrap_or_else(|| panic!("no jobs row:\n{screen}"));
    // p50, p99 and max of a channel whose every message was received.
    let latencies = jobs.matches(" µs").count() + jobs.matches(" ms").count();
    assert!(latencies >= 3, "latencies are shown: {jobs}");
    assert!(!jobs.contains("0 ns") && !jobs.contains('–'), "{jobs}");
    let home = {
        tmux.keys(&["Home"]);
        settles(&tmux, &["+0.000s"], "loading")
    };
    let to_end = {
        tmux.keys(&["End"]);
        let start = Instant::now();
        settles(&tmux, &["⏸"], "loading");
        while !at_the_end(&tmux.screen()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                tmux.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    assert!(home < Duration::from_secs(1), "Home took {home:?}");
    assert!(to_end < Duration::from_secs(1), "End took {to_end:?}");
    tmux.keys(&["q"]);
    assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
    drop(tmux);

    without_index(Path::new(db));
    for quit in ["q", "SIGTERM"] {
        let pid = dir.path().join(format!("pid-{quit}"));
        let status = dir.path().join(format!("status-{quit}"));
        // The inner shell writes ipcscope's pid, then becomes it.
        let line = format!(
            "sh -c 'echo $$ > {pid}; exec {exe} tui --db {db}'; echo $? > {status}",
            pid = pid.display(),
            exe = env!("CARGO_BIN_EXE_ipcscope"),
            status = status.display(),
        );
        let Some(tmux) = Tmux::start(&format!("big-{quit}"), &line) else {
            return;
        };
        let ipcscope = Stray(number_in(&pid, "ipcscope never started"));
        // As soon as it shows: indexing half a million events takes well
        // under a second now, so it may be done already; the tui crate's
        // tests hold a load open to quit in the middle of it.
        let screen = tmux.wait_for(&["REPLAY"]);
        eprintln!(
            "{quit} with the load {}",
            match screen.contains("loading") {
                true => "under way",
                false => "done",
            }
        );
        let asked = Instant::now();
        match quit {
            "q" => tmux.keys(&["q"]),
            _ => {
                // SAFETY: kill has no memory effects; the pid is this
                // test's ipcscope, still running.
                assert_eq!(unsafe { libc::kill(ipcscope.0, libc::SIGTERM) }, 0);
            }
        }
        assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{quit} while loading took {:?}",
            asked.elapsed()
        );
    }
}

/// A server's processes all read `postgres` and its latch wake-ups `23`
/// (issue 17). Recorded through the probes, a program that retitles
/// itself and sends itself SIGURG is shown by its title, the signal by its
/// name.
#[test]
fn the_dashboard_names_processes_by_title_and_signals_by_name() {
    if !crate::need_root("the_dashboard_names_processes_by_title_and_signals_by_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("urg.db");
    let db = db.to_str().unwrap();
    let program = "import ctypes, os, signal, time
ctypes.CDLL(None).prctl(15, b'urg-server', 0, 0, 0)
time.sleep(0.2)
os.kill(os.getpid(), signal.SIGURG)
if os.fork() == 0:
    os._exit(0)
os.wait()
time.sleep(0.2)";
    let out = run(&["record", "--db", db, "--", "python3", "-c", program]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (line, status) = ipcscope_in(dir.path(), &format!("tui --db {db}"));
    let Some(tmux) = Tmux::start("names", &line) else {
        return;
    };
    tmux.wait_for(&["REPLAY", "Session 1"]);
    tmux.keys(&["5"]);
    let screen = tmux.wait_for(&["SIGURG"]);
    assert!(screen.contains("urg-server"), "{screen}");
    // Its child ending: the kernel's SIGCHLD, and why.
    assert!(screen.contains("kernel:child"), "{screen}");
    tmux.keys(&["q"]);
    assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
}

/// A recorder's live feed that broke inside a frame: the dashboard said
/// "LOST" and never why, the CLI's feed thread dropped the error (issue
/// 17). Served here by the test, as a recorder serves it.
#[test]
fn a_live_feed_that_breaks_says_why_on_the_dashboard() {
    use collector::store::{NewSession, OpenMode, Store};
    use ipc_events::live::{encode_frame, Frame, Snapshot, PROTOCOL_VERSION};
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let sock = dir.path().join("feed.sock");
    let session = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&db, OpenMode::Create).await.unwrap();
        let session = store
            .begin_session(&NewSession {
                name: Some("broken".into()),
                command: "true".into(),
                host: "h".into(),
                started_at: "2026-12-07T00:00:00.000Z".into(),
                sources: "lib".into(),
                start_mono_ns: 1,
                recorder_pid: std::process::id(),
            })
            .await
            .unwrap();
        store.set_live_socket(session, Some(&sock)).await.unwrap();
        store.close().await;
        session
    });
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: session.0,
        };
        let snapshot = Frame::Snapshot(Box::new(Snapshot {
            session_id: session.0,
            session_name: "broken".into(),
            live: true,
            ..Snapshot::default()
        }));
        stream.write_all(&encode_frame(&hello)).unwrap();
        stream.write_all(&encode_frame(&snapshot)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // Two bytes of the next frame's four-byte header, then the end.
        stream.write_all(&[0, 0]).unwrap();
    });
    let (line, status) = ipcscope_in(dir.path(), &format!("tui --db {}", db.display()));
    let Some(tmux) = Tmux::start("broken", &line) else {
        return;
    };
    let screen = tmux.wait_for(&["LOST", "cut short"]);
    assert!(screen.contains("Session 1 broken"), "{screen}");
    server.join().unwrap();
    tmux.keys(&["q"]);
    assert_eq!(exit_status(&status), 0, "{}", tmux.screen());
}
