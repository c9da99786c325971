//! The real probes against real processes.
//!
//! These need BPF (root, or CAP_BPF + CAP_PERFMON), which CI has. Where the
//! probes cannot be loaded they fail with the loader's reason; they never
//! skip, so a machine that silently lost BPF cannot pass.
//!
//! The test binary runs tests on several threads, and while this process is
//! registered as a launcher, children that other tests spawn are followed
//! too: every assertion picks events by pid.

use std::process::{Child, Command};
use std::time::Duration;

use collector::ebpf::{ProbeConfig, Probes};
use ipc_events::{ChannelKind, Event, EventKind};
use tokio::time::Instant;

/// Bound on every wait for events; generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn load_probes() -> Probes {
    Probes::load(&ProbeConfig::default()).unwrap_or_else(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        panic!("the eBPF probes must load here (root or CAP_BPF+CAP_PERFMON): {reason}")
    })
}

/// Spawns `args` with this process registered as a launcher, the way
/// `ipcscope record` does, so the child and everything it forks is followed.
fn spawn_followed(probes: &mut Probes, args: &[&str]) -> Child {
    let me = std::process::id();
    probes.track(me, true).expect("track this process");
    let child = Command::new(args[0]).args(&args[1..]).spawn();
    probes.untrack(me).expect("untrack this process");
    child.expect("spawn the child")
}

/// Reads events into `events` until `done` holds or [`WAIT`] passes;
/// returns whether `done` held.
pub(crate) async fn read_until(
    probes: &mut Probes,
    events: &mut Vec<Event>,
    done: impl Fn(&[Event]) -> bool,
) -> bool {
    let deadline = Instant::now() + WAIT;
    while !done(events) {
        match tokio::time::timeout_at(deadline, probes.read_into(events)).await {
            Ok(read) => {
                let stats = read.expect("read the ring buffer");
                assert_eq!(stats.decode_errors, 0, "every sample must decode");
            }
            Err(_elapsed) => return false,
        }
    }
    true
}

fn find(events: &[Event], kind: EventKind, pid: u32) -> Option<&Event> {
    events.iter().find(|e| e.kind == kind && e.pid == pid)
}

fn involving(events: &[Event], pids: &[u32]) -> Vec<String> {
    events
        .iter()
        .filter(|e| pids.contains(&e.pid) || pids.iter().any(|&p| e.aux == u64::from(p)))
        .map(|e| format!("{e:?}"))
        .collect()
}

#[tokio::test]
async fn follows_a_launched_process_tree_from_start_to_exit() {
    let mut probes = load_probes();
    let me = std::process::id();
    let mut events = Vec::new();

    // A child that forks a grandchild (dash forks for a command that is
    // not the script's last).
    let mut child = spawn_followed(&mut probes, &["sh", "-c", r#"sh -c "exit 0"; true"#]);
    let child_pid = child.id();
    assert!(child.wait().expect("wait for the child").success());

    let grandchild = |events: &[Event]| {
        events
            .iter()
            .find(|e| e.kind == EventKind::ProcessStart && e.aux == u64::from(child_pid))
            .map(|e| e.pid)
    };
    let complete = |events: &[Event]| {
        grandchild(events).is_some_and(|g| {
            [child_pid, g]
                .iter()
                .all(|&p| find(events, EventKind::ProcessExit, p).is_some())
        })
    };
    let finished = read_until(&mut probes, &mut events, complete).await;
    let grandchild_pid = grandchild(&events);
    let seen = involving(&events, &[me, child_pid, grandchild_pid.unwrap_or(0)]);
    assert!(
        finished,
        "no complete child + grandchild lifecycle within {WAIT:?}; saw: {seen:#?}"
    );
    let grandchild_pid = grandchild_pid.unwrap_or_default();

    let start = find(&events, EventKind::ProcessStart, child_pid).expect("child start");
    assert_eq!(start.aux, u64::from(me), "child's parent: {seen:#?}");
    assert_eq!(start.tid, child_pid);
    for pid in [child_pid, grandchild_pid] {
        let exec = find(&events, EventKind::ProcessExec, pid)
            .unwrap_or_else(|| panic!("no exec for {pid}: {seen:#?}"));
        let path = exec.path.as_deref().unwrap_or_default();
        assert!(path.ends_with("sh"), "exec path of {pid} is {path:?}");
        assert_eq!(exec.comm, "sh", "comm after exec of {pid}");
        assert!(exec.channel.is_none());

        let exit = find(&events, EventKind::ProcessExit, pid).expect("exit");
        assert!(
            exit.ts_ns >= exec.ts_ns,
            "exit of {pid} before its exec: {seen:#?}"
        );
    }
    // A launcher is not itself reported.
    assert!(
        events.iter().all(|e| e.pid != me),
        "the launcher's own events were reported: {seen:#?}"
    );
    assert_eq!(probes.kernel_drops().expect("read DROPS"), 0);
}

#[tokio::test]
async fn an_untracked_process_produces_no_events() {
    let mut probes = load_probes();
    let mut events = Vec::new();

    // This process was tracked and is no longer: what it spawns now must
    // cost the kernel a lookup and nothing more.
    spawn_followed(&mut probes, &["true"])
        .wait()
        .expect("wait for the followed child");
    let mut untracked = Command::new("sh")
        .args(["-c", r#"sh -c "exit 0"; true"#])
        .spawn()
        .expect("spawn the untracked child");
    let untracked_pid = untracked.id();
    untracked.wait().expect("wait for the untracked child");
    // Untracking what is not tracked is not an error (a process that exited
    // has already left the map).
    probes
        .untrack(std::process::id())
        .expect("untrack a pid that is not tracked");

    // The ring is ordered: once a marker that started after the untracked
    // process ended has been read, anything the untracked one produced
    // would have been read before it.
    let mut marker = spawn_followed(&mut probes, &["true"]);
    let marker_pid = marker.id();
    marker.wait().expect("wait for the marker");
    let got_marker = read_until(&mut probes, &mut events, |events| {
        find(events, EventKind::ProcessExit, marker_pid).is_some()
    })
    .await;
    assert!(
        got_marker,
        "the marker process {marker_pid} was not reported within {WAIT:?}"
    );

    let leaked = involving(&events, &[untracked_pid]);
    assert!(
        leaked.is_empty(),
        "untracked process {untracked_pid} produced events: {leaked:#?}"
    );
}

#[tokio::test]
async fn reports_pipe_messages_and_signals_with_their_objects() {
    let mut probes = load_probes();
    let mut events = Vec::new();

    // A pipeline: a subshell writes "hello\n" into a pipe, cat reads it
    // and writes it to /dev/null (a character device: not a message).
    // Then the shell signals itself, with a handler installed.
    let mut child = spawn_followed(
        &mut probes,
        &[
            "sh",
            "-c",
            r#"echo hello | cat >/dev/null; trap "true" USR1; kill -USR1 $$"#,
        ],
    );
    let sh = child.id();
    assert!(child.wait().expect("wait for the child").success());
    let finished = read_until(&mut probes, &mut events, |events| {
        find(events, EventKind::ProcessExit, sh).is_some()
    })
    .await;
    let pids: Vec<u32> = std::iter::once(sh)
        .chain(
            events
                .iter()
                .filter(|e| e.kind == EventKind::ProcessStart && e.aux == u64::from(sh))
                .map(|e| e.pid),
        )
        .collect();
    let seen = involving(&events, &pids);
    assert!(finished, "the shell's exit was not reported: {seen:#?}");

    let messages: Vec<&Event> = events
        .iter()
        .filter(|e| {
            pids.contains(&e.pid) && matches!(e.kind, EventKind::MsgSend | EventKind::MsgRecv)
        })
        .collect();
    assert_eq!(messages.len(), 2, "one write, one read: {seen:#?}");
    let (send, recv) = (messages[0], messages[1]);
    assert_eq!(send.kind, EventKind::MsgSend, "{seen:#?}");
    assert_eq!(recv.kind, EventKind::MsgRecv, "{seen:#?}");
    assert_eq!((send.size, recv.size), (6, 6));
    assert_eq!(send.result, 6);
    assert_ne!(send.pid, recv.pid, "writer and reader are two processes");
    assert_eq!(recv.comm, "cat");
    let channel = send.channel.as_ref().expect("a send names its channel");
    assert_eq!(channel.kind(), ChannelKind::Pipe);
    assert!(channel.name().starts_with("pipe:["), "{channel}");
    assert_eq!(recv.channel.as_ref(), Some(channel), "one pipe, both ends");
    assert!(recv.ts_ns >= send.ts_ns);
    assert!(send.duration_ns.is_some() && recv.duration_ns.is_some());

    let generated = events
        .iter()
        .find(|e| e.kind == EventKind::SignalGenerate && e.aux == 10)
        .unwrap_or_else(|| panic!("no SIGUSR1 generated: {seen:#?}"));
    assert_eq!((generated.pid, generated.target_pid), (sh, Some(sh)));
    assert_eq!(generated.result, 0, "queued");
    let delivered = events
        .iter()
        .find(|e| e.kind == EventKind::SignalDeliver && e.aux == 10)
        .unwrap_or_else(|| panic!("no SIGUSR1 delivered: {seen:#?}"));
    assert_eq!(delivered.pid, sh);
    assert!(delivered.ts_ns >= generated.ts_ns);
    assert_eq!(probes.kernel_drops().expect("read DROPS"), 0);
}
