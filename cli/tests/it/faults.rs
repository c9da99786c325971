//! Faults the recorder must survive with a clear word and an intact
//! database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{ipcscope, monotonic_ns, need_root, poll_row, query, run, stderr, Recorder};

/// A tmpfs of `size` mounted for the test's lifetime.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_storing_with_a_clear_error_and_leaves_a_sound_database() {
    if !need_root("a_full_disk_stops_storing_with_a_clear_error_and_leaves_a_sound_database") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _disk = SmallDisk::mount(dir.path(), "2m");
    let db = dir.path().join("full.db");
    // The demo writes tens of thousands of events a second: 2 MiB lasts
    // well under the three seconds it runs.
    let out = run(&[
        "demo",
        "--no-ebpf",
        "--duration",
        "3s",
        "--db",
        db.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a full disk must fail the recording: {err}"
    );
    assert!(
        err.contains("database or disk is full")
            && err.contains("what was committed before is intact"),
        "{err}"
    );
    assert_eq!(
        err.matches("disk is full").count(),
        1,
        "said once, not once per layer: {err}"
    );
    assert_eq!(
        query(&db, "pragma integrity_check"),
        serde_json::json!([{"integrity_check": "ok"}])
    );
    let sessions = query(&db, "select id, ended_at from sessions");
    assert_eq!(sessions, serde_json::json!([{"id": 1, "ended_at": null}]));
    let listed = run(&["sessions", "--db", db.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("unfinished"),
        "the session that could not be finished shows as such"
    );
}

#[test]
fn a_recorder_killed_mid_session_leaves_every_committed_event_and_an_unfinished_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("killed.db");
    // The sockets a killed recorder cannot remove go with the test's
    // directory.
    let runtime = tempfile::tempdir().unwrap();
    // The demo's roles emit ipc-lib events at a steady, paced rate; the
    // duration only bounds a run whose kill went wrong.
    let mut recorder = Recorder::spawn(
        ipcscope()
            .args([
                "demo",
                "--no-ebpf",
                "--no-tui",
                "--duration",
                "120s",
                "--db",
            ])
            .arg(&db)
            .env("XDG_RUNTIME_DIR", runtime.path()),
    );
    let patience = Duration::from_secs(60);
    let first = poll_row(
        &db,
        "select min(ts_ns) as first from events where source = 'lib'",
        |row| row["first"].is_u64(),
        patience,
    )["first"]
        .as_u64()
        .unwrap();
    // Well into the session: three seconds of the workload's events past
    // the first ones stored, longer than the loss the check below allows.
    let before = poll_row(
        &db,
        "select count(*) as n, max(ts_ns) as last from events",
        |row| {
            row["last"]
                .as_u64()
                .is_some_and(|l| l > first + 3_000_000_000)
        },
        patience,
    );
    // Killed wherever the writer is: between commits or inside one.
    let killed_ns = monotonic_ns();
    // SAFETY: kill has no memory effects; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(recorder.pid(), libc::SIGKILL) }, 0);
    let status = recorder.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let conductor = query(
        &db,
        &format!("select pid from processes where ppid = {}", recorder.pid()),
    );
    // The demo's processes and shared-memory objects outlive the
    // recorder; they are this test's to remove.
    drop(recorder);
    if let Some(pid) = conductor[0]["pid"].as_u64() {
        for entry in std::fs::read_dir("/dev/shm").unwrap().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .contains(&format!("ipcscope-demo-{pid}-"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    assert_eq!(
        query(&db, "pragma integrity_check"),
        serde_json::json!([{"integrity_check": "ok"}])
    );
    let sessions = query(&db, "select id, ended_at, exit_status from sessions");
    assert_eq!(
        sessions,
        serde_json::json!([{"id": 1, "ended_at": null, "exit_status": null}])
    );
    let listed = run(&["sessions", "--db", db.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("unfinished"),
        "the killed recording shows as unfinished"
    );
    let after = query(&db, "select count(*) as n, max(ts_ns) as last from events");
    let (n_before, n_after) = (
        before["n"].as_u64().unwrap(),
        after[0]["n"].as_u64().unwrap(),
    );
    let last = after[0]["last"].as_u64().unwrap();
    assert!(
        n_after >= n_before,
        "{n_before} events were committed before the kill, {n_after} are left"
    );
    assert!(
        last <= killed_ns,
        "an event stamped after the recorder died: the stamps are not CLOCK_MONOTONIC"
    );
    // The writer commits every 100 ms (sooner when rows pile up), so what
    // is lost is that much of the events, plus what was on its way from
    // the rings and the commit in progress: 250-550 ms here, with a debug
    // build on a loaded machine. Two seconds leave such a machine room and
    // still fail a recorder that lost commits it had made, or one that
    // commits only now and then.
    let lost_ms = (killed_ns - last) / 1_000_000;
    eprintln!("the last event stored was {lost_ms} ms before the kill");
    assert!(
        lost_ms < 2000,
        "the last event stored is {lost_ms} ms older than the kill"
    );
}
