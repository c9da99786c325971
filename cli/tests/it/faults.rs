//! Faults the recorder must survive with a clear word and an intact
//! database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    example, gone, ipcscope, monotonic_ns, need_root, poll_row, query, run, stderr, stdout,
    Recorder,
};

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

/// A disk that fills during the recording: storing stops with one clear
/// error, the command runs on and `record` exits with its status (issue 15:
/// it exited 1 and left the session "unfinished"), the session is ended,
/// and every event that could not be stored is counted in `drops`.
#[test]
fn a_full_disk_stops_storing_with_a_clear_error_and_leaves_a_sound_database() {
    if !need_root("a_full_disk_stops_storing_with_a_clear_error_and_leaves_a_sound_database") {
        return;
    }
    let _turn = crate::flood_turn();
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
    assert!(out.status.success(), "the demo's own status: {err}");
    assert!(
        err.contains("database or disk is full")
            && err.contains("what was committed before is intact")
            && err.contains("session 1 is incomplete; the command exited with status 0"),
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
    let sessions = query(
        &db,
        "select id, ended_at is not null as ended, exit_status from sessions",
    );
    assert_eq!(
        sessions,
        serde_json::json!([{"id": 1, "ended": 1, "exit_status": 0}])
    );
    let lost = count(
        &db,
        "select coalesce(sum(count), 0) as n from drops where source = 'storage'",
    );
    assert!(lost > 0, "the events not stored are counted");
    let listed = run(&["sessions", "--db", db.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stdout(&listed).contains(&lost.to_string()),
        "the session lists its losses: {}",
        stdout(&listed)
    );
}

/// The disk full before anything is written: one line, and no 0-byte
/// file left that every later reader would call "no data yet".
#[test]
fn a_disk_full_from_the_start_leaves_no_empty_database() {
    if !need_root("a_disk_full_from_the_start_leaves_no_empty_database") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _disk = SmallDisk::mount(dir.path(), "64k");
    std::fs::write(dir.path().join("filler"), vec![0u8; 64 * 1024]).unwrap_or(());
    let db = dir.path().join("none.db");
    let out = run(&[
        "record",
        "--no-ebpf",
        "--db",
        db.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("disk is full"), "{err}");
    assert!(!db.exists(), "an empty database was left behind");
}

/// A command that cannot be started leaves no session behind (issue 15: an
/// "unfinished" one was left); one that the kernel refuses only at exec
/// time ends its session as a shell reports it, 126.
#[test]
fn a_command_that_cannot_run_leaves_no_unfinished_session() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let db_s = db.to_str().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    for (command, why) in [
        ("/nonexistent/program", "No such file or directory"),
        ("no-such-command-anywhere", "no such command in PATH"),
        (plain.to_str().unwrap(), "not executable"),
        (dir.path().to_str().unwrap(), "it is a directory"),
    ] {
        let out = run(&["record", "--no-ebpf", "--db", db_s, "--", command]);
        assert!(!out.status.success(), "{command}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{command}: {err}");
        assert!(
            err.contains(&format!("cannot run {command}: {why}")),
            "{err}"
        );
        assert!(!db.exists(), "{command}: a database was created");
    }
    // Executable, but no format the kernel knows: found only by exec.
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\x7fELF and then nothing").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&[
        "record",
        "--no-ebpf",
        "--db",
        db_s,
        "--",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Exec format error"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        query(
            &db,
            "select ended_at is not null as ended, exit_status from sessions"
        ),
        serde_json::json!([{"ended": 1, "exit_status": 126}])
    );
}

#[test]
fn a_recorder_killed_mid_session_leaves_every_committed_event_and_an_unfinished_session() {
    let _turn = crate::flood_turn();
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
    // The writer commits every 50 ms (sooner when rows pile up), so at a
    // rate it keeps up with a kill loses under 100 ms of events (measured
    // by the kill_loss bench with a release build). The demo here is a
    // debug build on a 2-core machine that runs the demo too: the writer
    // falls behind and what is queued for it is lost as well, 250-550 ms.
    // Two seconds leave such a machine room and still fail a recorder that
    // lost commits it had made, or one that commits only now and then.
    let lost_ms = (killed_ns - last) / 1_000_000;
    eprintln!("the last event stored was {lost_ms} ms before the kill");
    assert!(
        lost_ms < 2000,
        "the last event stored is {lost_ms} ms older than the kill"
    );
}

/// Removes an ipc-lib channel when dropped.
struct RemoveChannel(String);

impl Drop for RemoveChannel {
    fn drop(&mut self) {
        let _ = ipc_lib::channel::remove(&self.0);
    }
}

/// A stored count.
fn count(db: &Path, sql: &str) -> u64 {
    query(db, sql)[0]["n"].as_u64().unwrap()
}

#[test]
fn a_sender_killed_mid_stream_loses_nothing_it_sent_and_the_recording_goes_on() {
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let _turn = crate::flood_turn();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let pid_file = dir.path().join("producer.pid");
    let go = dir.path().join("go");
    // A producer that would run for hours, at a rate the recorder keeps up
    // with (so every event is stored and any gap is a loss); once it is
    // killed and the test says so, a second, complete run: the recording
    // must still be taking events.
    let script = r#"
        "$0" --messages 1000000000 --size 200 --pause-us 20 &
        echo $! > "$1"
        wait $!
        while [ ! -e "$2" ]; do sleep 0.05; done
        exec "$0" --messages 2000 --size 200
    "#;
    let mut recorder = Recorder::spawn(
        ipcscope()
            .args(["record", "--no-ebpf", "--db"])
            .arg(&db)
            .args(["--", "sh", "-c", script])
            .arg(&example)
            .arg(&pid_file)
            .arg(&go)
            .env("XDG_RUNTIME_DIR", dir.path())
            .stderr(Stdio::piped()),
    );
    // The consumer, orphaned, may hold the pipe open after the recorder.
    let err_reader = recorder.read_stderr();
    let patience = Duration::from_secs(60);
    let deadline = Instant::now() + patience;
    let producer: u64 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the producer never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    poll_row(
        &db,
        &format!("select count(*) as n from events where pid = {producer} and kind = 'msg_send'"),
        |row| row["n"].as_u64().is_some_and(|n| n >= 2000),
        patience,
    );
    // Killed, it never removes its channel.
    let _channel = RemoveChannel(format!("producer-consumer-{producer}"));
    // SAFETY: kill has no memory effects; the producer cannot be reaped
    // (and its pid reused) before its parent, the script, sees it die.
    assert_eq!(unsafe { libc::kill(producer as i32, libc::SIGKILL) }, 0);
    let consumers = query(
        &db,
        "select distinct pid from events where kind = 'msg_recv'",
    );
    let consumer = match consumers.as_array().unwrap().as_slice() {
        [only] => only["pid"].as_u64().unwrap(),
        other => panic!("one consumer expected: {other:?}"),
    };
    // The receiver learns of the death and ends: it does not hang.
    let deadline = Instant::now() + patience;
    while !gone(consumer) {
        assert!(
            Instant::now() < deadline,
            "the consumer still waits {patience:?} after its producer died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&go, b"").unwrap();
    let status = recorder.wait(Duration::from_secs(120));
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status}: {err}");

    // The consumer says how many messages it took before the end.
    let received: u64 = err
        .lines()
        .find_map(|l| {
            l.strip_prefix("producer_consumer (consumer): receiving message ")?
                .split_once(' ')?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the consumer reported no count: {err}"));
    assert!(
        err.contains("every sender is gone"),
        "the consumer saw its producer die, not a damaged message: {err}"
    );
    assert_eq!(
        count(&db, "select count(*) as n from drops"),
        0,
        "nothing lost to full rings: any gap below is the crash's"
    );
    let channel = format!("(select id from channels where name = 'producer-consumer-{producer}')");
    // Every message the consumer took is stored as received ...
    assert_eq!(
        count(
            &db,
            &format!(
                "select count(distinct msg_id) as n from events
                 where pid = {consumer} and kind = 'msg_recv' and channel_id = {channel}"
            )
        ),
        received
    );
    // ... and as sent, but perhaps the last: a sender killed after
    // publishing a message and before recording it leaves no record of
    // that one send (the receive is recorded all the same).
    let unsent = query(
        &db,
        &format!(
            "select r.msg_id from events r
             where r.kind = 'msg_recv' and r.channel_id = {channel}
               and not exists (select 1 from events s where s.kind = 'msg_send'
                               and s.channel_id = r.channel_id and s.msg_id = r.msg_id)"
        ),
    );
    let last_received = query(
        &db,
        &format!("select max(msg_id) as id from events where kind = 'msg_recv' and channel_id = {channel}"),
    );
    assert!(
        unsent.as_array().unwrap().is_empty()
            || unsent == serde_json::json!([{"msg_id": last_received[0]["id"]}]),
        "received but never recorded as sent: {unsent}"
    );
    // The sends stored are one unbroken run: none lost, up to the crash.
    let sends = query(
        &db,
        &format!(
            "select count(*) as n, count(distinct msg_id) as ids,
                    max(msg_id) - min(msg_id) + 1 as span
             from events where pid = {producer} and kind = 'msg_send'"
        ),
    );
    assert_eq!(sends[0]["n"], sends[0]["ids"], "{sends}");
    assert_eq!(sends[0]["n"], sends[0]["span"], "{sends}");
    // What was published before the death is all delivered, so the
    // receives are the sends, and perhaps that one unrecorded send more.
    let sent = sends[0]["n"].as_u64().unwrap();
    assert!(
        received == sent || received == sent + 1,
        "{received} received, {sends}"
    );

    // After the crash, the second run was recorded whole and paired.
    let second = query(
        &db,
        &format!(
            "select count(*) as n from messages m join channels c on c.id = m.channel_id
             where c.name like 'producer-consumer-%' and c.name != 'producer-consumer-{producer}'
               and m.received_ns is not null and m.sent_ns is not null"
        ),
    );
    assert_eq!(
        second,
        serde_json::json!([{"n": 2000}]),
        "{err}\n{}",
        query(
            &db,
            "select c.name, e.pid, e.kind, count(*) as n from events e
             join channels c on c.id = e.channel_id group by 1, 2, 3"
        )
    );
    assert_eq!(
        query(
            &db,
            "select exit_status, ended_at is not null as ended from sessions"
        ),
        serde_json::json!([{"exit_status": 0, "ended": 1}])
    );
}

#[test]
fn a_kernel_ring_overflow_counts_every_lost_event_and_the_recording_goes_on() {
    if !need_root("a_kernel_ring_overflow_counts_every_lost_event_and_the_recording_goes_on") {
        return;
    }
    const FLOOD: u64 = 60_000;
    const AFTER: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("overflow.db");
    let refused = run(&[
        "record",
        "--kernel-ring-kib",
        "5",
        "--db",
        db.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("must be a power of two"),
        "{}",
        stderr(&refused)
    );
    // A flood into a 4 KiB kernel ring (about 40 records): FLOOD one-byte
    // writes into a pipe whose reader (sleep) never reads, so the writes
    // are the only IPC events and their number is exact. Then, once the
    // ring has drained, AFTER writes paced far below what the ring holds,
    // each by a dd of its own: every one must be stored.
    let script = format!(
        "dd if=/dev/zero bs=1 count={FLOOD} status=none | sleep 1
         sleep 0.3
         for i in $(seq {AFTER}); do dd if=/dev/zero bs=1 count=1 status=none; sleep 0.02; done | sleep 2"
    );
    let out = run(&[
        "record",
        "--kernel-ring-kib",
        "4",
        "--db",
        db.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("DROPPED ebpf_ring"),
        "the summary says so: {err}"
    );

    let writes = query(
        &db,
        "select pid, count(*) as n from events
         where kind = 'msg_send' and size = 1
           and pid in (select pid from processes where comm = 'dd')
         group by pid order by n desc",
    );
    let writes: Vec<u64> = writes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    let dropped = query(
        &db,
        "select coalesce(sum(count), 0) as n from drops where source = 'ebpf_ring'",
    )[0]["n"]
        .as_u64()
        .unwrap();
    let flood_stored = writes.first().copied().unwrap_or(0);
    assert!(
        dropped > 0,
        "a 4 KiB ring cannot take {FLOOD} writes at full speed"
    );
    // Each write is stored or counted as lost. The count may also hold a
    // few process events (the flood's dd exiting into a full ring), never
    // fewer than the writes missing.
    assert!(
        flood_stored + dropped >= FLOOD && flood_stored + dropped <= FLOOD + 10,
        "{flood_stored} of {FLOOD} writes stored, {dropped} events counted lost"
    );
    // After the flood, nothing lost: the recording went on.
    assert_eq!(
        writes[1..],
        vec![1; AFTER as usize],
        "one write by each later dd: {writes:?}"
    );
}
