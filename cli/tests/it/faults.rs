//! Faults the recorder must survive with a clear word and an intact
//! database.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{need_root, query, run, stderr};

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
