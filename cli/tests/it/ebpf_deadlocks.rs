//! Deadlocks of unmodified programs, found through the real probes: two
//! processes each blocked reading a pipe that only the other writes, and
//! two processes each holding one SysV semaphore and waiting for the
//! other's. Each must give one `deadlocks` row naming both processes and
//! both resources, within a second of the cycle closing, resolved when one
//! of them gives up.

use serde_json::Value;

use crate::ebpf_ipc::{parent_and_child, record_python_with};
use crate::{need_root, query};

/// The parent reads pipe A, which only the child writes; the child reads
/// pipe B, which only the parent writes. Neither writes first. After
/// `hold` seconds the parent gives up (SIGALRM) and closes B, so the
/// child's read ends (end of file) and both exit 0.
const PIPES: &str = r#"
import os, signal, sys

hold = float(sys.argv[1])

class GaveUp(Exception):
    pass

def give_up(*_):
    raise GaveUp

a_r, a_w = os.pipe()
b_r, b_w = os.pipe()
signal.signal(signal.SIGALRM, give_up)
pid = os.fork()
if pid == 0:
    os.close(a_r)
    os.close(b_w)
    os._exit(0 if os.read(b_r, 1) == b"" else 3)
os.close(a_w)
os.close(b_r)
signal.setitimer(signal.ITIMER_REAL, hold)
try:
    os.read(a_r, 1)
    sys.exit(4)
except GaveUp:
    pass
os.close(b_w)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// The pipe deadlock again, between processes that each also run an idle
/// helper thread, as real programs do: the parent's sleeps (`time.sleep`,
/// clock_nanosleep), the child's waits on an event with a timeout (a
/// futex). Each helper prints `helper PID TID` and holds its process's
/// descriptors like any thread.
///
/// `MODE END HOLD`: MODE `pipe` uses two pipes, `socket` two Unix stream
/// socket pairs (one read end each, distinct objects). END `give_up`: the
/// parent gives up after HOLD seconds (SIGALRM, which the helpers block)
/// and closes its write end, so the child's read ends (end of file).
/// END `helper`: the parent's helper wakes after HOLD seconds and writes
/// a byte to the child, breaking the cycle; the child then writes one to
/// the parent. END `busy`: as `give_up`, but the parent's helper runs
/// (hashing, in a loop) instead of sleeping. Both exit 0.
const HELPED: &str = r#"
import hashlib, os, signal, socket, sys, threading, time

mode, end, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])

class GaveUp(Exception):
    pass

def give_up(*_):
    raise GaveUp

def helper(kind, then=None):
    # SIGALRM is the main thread's: a helper must not take it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    # One write per line: the two processes share stdout, and print()
    # may split a line into several writes that interleave.
    os.write(1, f"helper {os.getpid()} {threading.get_native_id()}\n".encode())
    if then is not None:
        time.sleep(hold)
        then()
    elif kind == "spin":
        # Busy without holding the GIL (hashlib lets it go for large
        # inputs), so the main thread still reaches its read at once.
        data = bytes(1 << 24)
        while True:
            hashlib.sha256(data).digest()
    elif kind == "sleep":
        while True:
            time.sleep(10)
    else:
        idle = threading.Event()
        while True:
            idle.wait(10)

def start(kind, then=None):
    threading.Thread(target=helper, args=(kind, then), daemon=True).start()

# Each process reads one object and writes the other's.
if mode == "pipe":
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
else:
    a0, a1 = (s.detach() for s in socket.socketpair())
    b0, b1 = (s.detach() for s in socket.socketpair())
    a_r, a_w, b_r, b_w = a0, a1, b1, b0
signal.signal(signal.SIGALRM, give_up)
pid = os.fork()
if pid == 0:
    os.close(a_r)
    os.close(b_w)
    start("wait")
    got = os.read(b_r, 1)
    if end == "helper":
        os.write(a_w, b"y")
        os._exit(0 if got == b"x" else 3)
    os._exit(0 if got == b"" else 3)
os.close(a_w)
os.close(b_r)
if end == "helper":
    start("sleep", lambda: os.write(b_w, b"x"))
    if os.read(a_r, 1) != b"y":
        sys.exit(4)
else:
    start("spin" if end == "busy" else "sleep")
    signal.setitimer(signal.ITIMER_REAL, hold)
    try:
        os.read(a_r, 1)
        sys.exit(4)
    except GaveUp:
        pass
    os.close(b_w)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// A set of two SysV semaphores, both free. The parent takes 0, its child
/// takes 1 and then waits for 0; once the child is blocked the parent
/// waits for 1, for at most `hold` seconds (semtimedop). Then it gives up
/// and releases 0, the child gets it, and both exit 0. Prints the key and
/// id. With `helpers`, each process also runs an idle helper thread
/// (asleep in `time.sleep`) and prints `helper PID TID` after that line.
const SEMS: &str = r#"
import ctypes, os, sys, threading, time

hold = float(sys.argv[1])
helpers = sys.argv[2:] == ["helpers"]

def helper():
    # One write per line: the two processes share stdout, and print()
    # may split a line into several writes that interleave.
    os.write(1, f"helper {os.getpid()} {threading.get_native_id()}\n".encode())
    while True:
        time.sleep(10)

def start_helper():
    if helpers:
        threading.Thread(target=helper, daemon=True).start()
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_RMID, GETNCNT, SETALL = 0o1000, 0, 14, 17
EAGAIN = 11

class SemBuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]

class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

def check(rc, what):
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc

key = 0x5e80000 + os.getpid()
sem = check(libc.semget(key, 2, IPC_CREAT | 0o600), "semget")
check(libc.semctl(sem, 0, SETALL, (ctypes.c_ushort * 2)(1, 1)), "SETALL")
print(hex(key), sem, flush=True)

def op(num, delta, timeout=None):
    b = SemBuf(num, delta, 0)
    if timeout is None:
        return check(libc.semop(sem, ctypes.byref(b), 1), "semop")
    t = Timespec(int(timeout), int((timeout % 1) * 1e9))
    return libc.semtimedop(sem, ctypes.byref(b), 1, ctypes.byref(t))

op(0, -1)
pid = os.fork()
start_helper()
if pid == 0:
    op(1, -1)
    op(0, -1)  # held by the parent: blocks until it gives up
    op(0, 1)
    op(1, 1)
    os._exit(0)
for _ in range(10000):  # bounded: until the child is blocked on 0
    if check(libc.semctl(sem, 0, GETNCNT), "GETNCNT") == 1:
        break
    time.sleep(0.001)
else:
    sys.exit(5)
if op(1, -1, timeout=hold) != -1 or ctypes.get_errno() != EAGAIN:
    sys.exit(6)  # it should have timed out: the child holds 1
op(0, 1)
_, status = os.waitpid(pid, 0)
libc.semctl(sem, 0, IPC_RMID)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// How long the workloads stay deadlocked, in seconds: well past the
/// 200 ms threshold.
const HOLD: &str = "1.5";

/// The one deadlock of the session: checks that its cycle is exactly the
/// two processes, each waiting for a resource of `kind`, the two distinct,
/// detected within a second of the cycle closing (the later of the two
/// waits' starts) and resolved after it; returns the resource names.
fn one_deadlock(db: &std::path::Path, kind: &str) -> Vec<String> {
    let (parent, child) = parent_and_child(db);
    let deadlocks = query(db, "select detected_ns, resolved_ns, cycle from deadlocks");
    let rows = deadlocks.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{deadlocks}");
    let cycle: Value = serde_json::from_str(rows[0]["cycle"].as_str().unwrap()).unwrap();
    let members = cycle.as_array().unwrap();
    let mut pids: Vec<i64> = members.iter().map(|m| m["pid"].as_i64().unwrap()).collect();
    pids.sort();
    let mut expected = vec![parent, child];
    expected.sort();
    assert_eq!(pids, expected, "{cycle}");
    assert!(
        members.iter().all(|m| m["waits_for"]["kind"] == kind),
        "{cycle}"
    );
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["waits_for"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2, "two different resources: {cycle}");

    // Both waits are stored, from their starts, and ended.
    let waits = query(
        db,
        &format!(
            "select w.pid, w.start_ns, w.end_ns from waits w join channels c on c.id = w.channel_id
             where c.kind = '{kind}' and w.end_ns - w.start_ns > 1000000000 order by w.pid"
        ),
    );
    let waits = waits.as_array().unwrap();
    assert_eq!(waits.len(), 2, "one long wait each: {waits:?}");
    let closed = waits
        .iter()
        .map(|w| w["start_ns"].as_i64().unwrap())
        .max()
        .unwrap();
    let detected = rows[0]["detected_ns"].as_i64().unwrap();
    assert!(
        detected > closed && detected - closed < 1_000_000_000,
        "detected {} ms after the cycle closed",
        (detected - closed) / 1_000_000
    );
    let resolved = rows[0]["resolved_ns"].as_i64().expect("resolved");
    assert!(resolved > detected, "{deadlocks}");
    assert_eq!(
        query(db, "select count(*) as n from drops"),
        serde_json::json!([{"n": 0}])
    );
    names
}

#[test]
fn two_processes_reading_each_others_pipe_are_a_deadlock() {
    if !need_root("two_processes_reading_each_others_pipe_are_a_deadlock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(dir.path(), PIPES, &[HOLD], &[]);
    let names = one_deadlock(&db, "pipe");
    assert!(names.iter().all(|n| n.starts_with("pipe:[")), "{names:?}");
}

#[test]
fn two_processes_crossing_sysv_semaphores_are_a_deadlock() {
    if !need_root("two_processes_crossing_sysv_semaphores_are_a_deadlock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), SEMS, &[HOLD], &[]);
    let (key, id) = printed.trim().split_once(' ').unwrap();
    let names = one_deadlock(&db, "sysv_sem");
    assert_eq!(
        names,
        [
            format!("key={key} id={id} sem=0"),
            format!("key={key} id={id} sem=1")
        ]
    );
}

/// The helper threads a workload printed (`helper PID TID`), by pid.
fn helpers(printed: &str) -> std::collections::BTreeMap<i64, i64> {
    printed
        .lines()
        .filter_map(|l| l.strip_prefix("helper "))
        .map(|l| {
            let (pid, tid) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), tid.parse().unwrap())
        })
        .collect()
}

/// The one deadlock's cycle names, for each member, its process's idle
/// helper thread as not blocked.
fn names_idle_helpers(db: &std::path::Path, printed: &str) {
    let helpers = helpers(printed);
    assert_eq!(helpers.len(), 2, "a helper in each process: {printed}");
    let cycle = query(db, "select cycle from deadlocks");
    let cycle: Value = serde_json::from_str(cycle[0]["cycle"].as_str().unwrap()).unwrap();
    for m in cycle.as_array().unwrap() {
        let helper = helpers[&m["pid"].as_i64().unwrap()];
        assert_eq!(m["idle_threads"], serde_json::json!([helper]), "{cycle}");
    }
}

/// The HELPED workload over `via` (`pipe` or `socket`): one deadlock on
/// objects of `kind`, named `prefix…`, each member's idle helper named.
fn helped_deadlock(via: &str, kind: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), HELPED, &[via, "give_up", HOLD], &[]);
    let names = one_deadlock(&db, kind);
    assert!(names.iter().all(|n| n.starts_with(prefix)), "{names:?}");
    names_idle_helpers(&db, &printed);
}

#[test]
fn processes_with_idle_helper_threads_reading_each_others_pipe_are_a_deadlock() {
    if need_root("processes_with_idle_helper_threads_reading_each_others_pipe_are_a_deadlock") {
        helped_deadlock("pipe", "pipe", "pipe:[");
    }
}

#[test]
fn processes_with_idle_helper_threads_reading_each_others_socket_are_a_deadlock() {
    if need_root("processes_with_idle_helper_threads_reading_each_others_socket_are_a_deadlock") {
        helped_deadlock("socket", "unix_stream", "socket:[");
    }
}

#[test]
fn processes_with_idle_helper_threads_crossing_sysv_semaphores_are_a_deadlock() {
    if !need_root("processes_with_idle_helper_threads_crossing_sysv_semaphores_are_a_deadlock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), SEMS, &[HOLD, "helpers"], &[]);
    assert_eq!(helpers(&printed).len(), 2, "{printed}");
    let (key, id) = printed.lines().next().unwrap().split_once(' ').unwrap();
    let names = one_deadlock(&db, "sysv_sem");
    assert_eq!(
        names,
        [
            format!("key={key} id={id} sem=0"),
            format!("key={key} id={id} sem=1")
        ]
    );
}

#[test]
fn a_deadlock_a_helper_thread_breaks_is_reported_then_resolved() {
    if !need_root("a_deadlock_a_helper_thread_breaks_is_reported_then_resolved") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The parent's helper sleeps through the threshold, then writes: the
    // cycle was real while it slept, and ends when it sends. A little
    // over a second, so that both waits outlast the one second
    // one_deadlock takes as long.
    let (db, printed) = record_python_with(dir.path(), HELPED, &["pipe", "helper", "1.2"], &[]);
    one_deadlock(&db, "pipe");
    names_idle_helpers(&db, &printed);
    // Reported while the helper slept, and resolved once the child's read
    // returned the helper's byte (the resolution is stamped with the last
    // change to the cycle seen by the tick that found it broken: the
    // parent's read, or the child's exit, a moment later).
    let (parent, child) = parent_and_child(&db);
    let read_at = |pid: i64| {
        query(
            &db,
            &format!(
                "select e.ts_ns from events e join channels c on c.id = e.channel_id
                 where c.kind = 'pipe' and e.kind = 'msg_recv' and e.pid = {pid} and e.size = 1"
            ),
        )[0]["ts_ns"]
            .as_i64()
            .unwrap()
    };
    let (freed, replied) = (read_at(child), read_at(parent));
    assert!(freed < replied);
    let row = query(&db, "select detected_ns, resolved_ns from deadlocks");
    let detected = row[0]["detected_ns"].as_i64().unwrap();
    let resolved = row[0]["resolved_ns"].as_i64().unwrap();
    assert!(detected < freed, "{row} {freed}");
    assert!(resolved >= freed, "{row} {freed}");
}

#[test]
fn processes_with_a_running_helper_thread_are_not_a_deadlock() {
    if !need_root("processes_with_a_running_helper_thread_are_not_a_deadlock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The parent's helper runs the whole time: it could write to the
    // child at any moment, so the child's wait is not hopeless.
    let (db, _) = record_python_with(dir.path(), HELPED, &["pipe", "busy", HOLD], &[]);
    let (parent, child) = parent_and_child(&db);
    let waits = query(
        &db,
        "select w.pid from waits w join channels c on c.id = w.channel_id
         where c.kind = 'pipe' and w.end_ns - w.start_ns > 400000000 order by w.pid",
    );
    let mut both = [parent, child];
    both.sort();
    assert_eq!(
        waits,
        serde_json::json!([{"pid": both[0]}, {"pid": both[1]}]),
        "both blocked together, well past the threshold"
    );
    assert_eq!(
        query(&db, "select count(*) as n from deadlocks"),
        serde_json::json!([{"n": 0}])
    );
}
