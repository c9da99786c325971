//! What the probes say about "who", checked on the decoded events: the
//! `si_code` that tells a signal a process sent from one the kernel
//! generated, and the titles processes give themselves (`prctl`, and an
//! argv rewritten in place, which the collector's title scanner reads).
//! The stored side of these is the cli's `ebpf_truth` tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use collector::ebpf::titles::{self, TitleScanner};
use collector::ebpf::Probes;
use ipc_events::{Event, EventKind, Source};

use crate::ebpf::{load_probes, read_until};

/// `si_code` values (`<asm-generic/siginfo.h>`).
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;
const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;
const CLD_DUMPED: i32 = 3;
const SEGV_MAPERR: i32 = 1;

/// Four signals of known origin, each waited for before the next: a
/// SIGALRM from an interval timer (the kernel's, in whatever task the
/// timer interrupt finds running), a SIGCHLD from a child's exit (raised
/// in the exiting child), a SIGPIPE from a write to a pipe nobody reads,
/// and a SIGUSR1 that the parent `kill()`s a second child with. A third
/// child dies of a fault (SIGSEGV). Prints the pid of each child.
const SIGNALS: &str = r#"
import ctypes, os, signal, sys, time

got = []
for s in (signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE):
    signal.signal(s, lambda signo, frame: got.append(signo))
def wait_for(signo):
    for _ in range(2000):
        if signo in got:
            return
        time.sleep(0.005)
    sys.exit(4)

signal.setitimer(signal.ITIMER_REAL, 0.05)
wait_for(signal.SIGALRM)

child = os.fork()
if child == 0:
    os._exit(0)
wait_for(signal.SIGCHLD)
os.waitpid(child, 0)

r, w = os.pipe()
os.close(r)
try:
    os.write(w, b"x")
except BrokenPipeError:
    pass
wait_for(signal.SIGPIPE)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
listener = os.fork()
if listener == 0:
    signal.sigwait({signal.SIGUSR1})
    os._exit(0)
os.kill(listener, signal.SIGUSR1)
os.waitpid(listener, 0)

faulter = os.fork()
if faulter == 0:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctypes.string_at(0)  # a read of address 0: SIGSEGV, SEGV_MAPERR
    os._exit(0)
os.waitpid(faulter, 0)
print(child, listener, faulter, flush=True)
"#;

/// Names its main thread with `prctl(PR_SET_NAME)`, then has a second
/// thread name itself (a thread's name, not the process's title).
const PRCTL: &str = include_str!("../fixtures/prctl_title.py");

/// Waits 0.3 s (its exec's command line is read meanwhile), writes a
/// title over its argv area (as postgres and setproctitle do), then
/// sleeps `argv[1]` seconds so the title can be read.
pub const ARGV_TITLE_C: &str = include_str!("../fixtures/argv_title.c");

/// Compiles C `source` into `dir` as `name`, with the system's cc.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("cc runs (gcc is on every machine of this project's kind)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Spawns `command` followed by the probes, with its stdout piped.
fn spawn_followed_piped(probes: &mut Probes, command: &mut Command) -> Child {
    let me = std::process::id();
    probes.track(me, true).expect("track this process");
    let child = command.stdout(Stdio::piped()).spawn();
    probes.untrack(me).expect("untrack this process");
    child.expect("spawn the workload")
}

/// `python3 -c SCRIPT`, by the interpreter's real path: a version
/// manager's shim (pyenv's is a bash script) would fork processes and
/// raise signals of its own in the workload's pid.
fn python(script: &str) -> Command {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let exe = PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    let mut c = Command::new(exe);
    c.args(["-c", script]);
    c
}

fn exited(pid: u32) -> impl Fn(&[Event]) -> bool {
    move |events: &[Event]| {
        events
            .iter()
            .any(|e| e.kind == EventKind::ProcessExit && e.pid == pid)
    }
}

#[tokio::test]
async fn signals_say_whether_a_process_or_the_kernel_sent_them() {
    let mut probes = load_probes();
    let mut workload = spawn_followed_piped(&mut probes, &mut python(SIGNALS));
    let main = workload.id();
    let mut line = String::new();
    BufReader::new(workload.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(workload.wait().unwrap().success(), "the workload failed");
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let [child, listener, faulter] = pids[..] else {
        panic!("the workload printed {line:?}");
    };
    let mut events = Vec::new();
    assert!(read_until(&mut probes, &mut events, exited(main)).await);

    let generated = |signo: u64, target: u32| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| {
                e.kind == EventKind::SignalGenerate
                    && e.aux == signo
                    && e.target_pid == Some(target)
            })
            .collect()
    };
    let one = |signo: libc::c_int, target: u32| -> &Event {
        let found = generated(signo as u64, target);
        assert_eq!(found.len(), 1, "signal {signo} to {target}: {found:#?}");
        found[0]
    };
    // The timer's: the kernel's, whoever was running.
    assert_eq!(one(libc::SIGALRM, main).si_code, Some(SI_KERNEL));
    // Each child's exit: raised in the child, sent by the kernel.
    let chld: Vec<(u32, Option<i32>)> = generated(libc::SIGCHLD as u64, main)
        .iter()
        .map(|e| (e.pid, e.si_code))
        .collect();
    assert_eq!(
        chld[..2],
        [(child, Some(CLD_EXITED)), (listener, Some(CLD_EXITED))],
        "{chld:?}"
    );
    // Killed by its fault, with or without a core (a pipe core_pattern
    // dumps whatever the limit).
    assert!(
        chld[2] == (faulter, Some(CLD_KILLED)) || chld[2] == (faulter, Some(CLD_DUMPED)),
        "{chld:?}"
    );
    // A write with no reader: the kernel raises SIGPIPE in the writer as
    // if it had sent it itself (send_sig(SIGPIPE, current, 0), no info:
    // SI_USER), so the writer is named as its own sender.
    let pipe = one(libc::SIGPIPE, main);
    assert_eq!((pipe.si_code, pipe.pid), (Some(SI_USER), main));
    // A kill(): SI_USER, and the event's pid is the sender.
    let usr1 = one(libc::SIGUSR1, listener);
    assert_eq!((usr1.si_code, usr1.pid), (Some(SI_USER), main));
    // A fault: the kernel's, with the fault's own code.
    let segv = one(libc::SIGSEGV, faulter);
    assert_eq!((segv.si_code, segv.pid), (Some(SEGV_MAPERR), faulter));
}

#[tokio::test]
async fn a_process_naming_itself_is_a_title_and_its_exec_and_threads_are_not() {
    let mut probes = load_probes();
    let mut workload = spawn_followed_piped(&mut probes, &mut python(PRCTL));
    let pid = workload.id();
    assert!(workload.wait().unwrap().success());
    let mut events = Vec::new();
    assert!(read_until(&mut probes, &mut events, exited(pid)).await);
    let titles: Vec<(&str, &str, Source)> = events
        .iter()
        .filter(|e| e.kind == EventKind::ProcessTitle && e.pid == pid)
        .map(|e| (e.path.as_deref().unwrap_or(""), e.comm.as_str(), e.source))
        .collect();
    // Not the exec's "python3", not the thread's "thread-y".
    assert_eq!(titles, [("renamed-x", "renamed-x", Source::Ebpf)]);
}

#[tokio::test]
async fn a_rewritten_argv_is_a_title_and_the_exec_command_line_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c(dir.path(), "argv-title", ARGV_TITLE_C);
    let mut probes = load_probes();
    let mut workload = spawn_followed_piped(
        &mut probes,
        Command::new(&exe).args(["1.5", "padding-padding-padding"]),
    );
    let pid = workload.id();
    // The pump's part: the process's exec sets its baseline, then scans.
    let mut scanner = TitleScanner::default();
    let mut events = Vec::new();
    let mut titles_seen = Vec::new();
    let proc = Path::new("/proc");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut observed = 0;
    while workload.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the workload hangs");
        probes.read_into(&mut events).await.expect("read the ring");
        for e in &events[observed..] {
            scanner.observe(e, proc);
        }
        observed = events.len();
        let followed = probes.tracked_pids(titles::MAX_KNOWN);
        scanner.scan(&followed, proc, 0, &mut titles_seen);
        tokio::time::sleep(titles::SCAN_EVERY / 5).await;
    }
    assert!(workload.wait().unwrap().success(), "no room for the title");
    let titles: Vec<&str> = titles_seen
        .iter()
        .filter(|e| e.pid == pid)
        .map(|e| e.path.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(titles, ["truth-title: worker"]);
}
