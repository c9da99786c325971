//! Waits of unmodified programs, recorded through the real binary and the
//! real probes: SysV semaphores (`semop`, `semtimedop`) contended by two
//! processes, and a futex (a process-shared POSIX semaphore), checked in
//! the database by exact counts, durations and `waits` rows; and a wait
//! still blocked when the recording ends.

use serde_json::json;

use crate::ebpf_ipc::{parent_and_child, record_python_with};
use crate::{need_root, query};

/// The SysV semaphore workload. `pingpong K`: the parent posts the
/// semaphore and takes it; its child then blocks on it K times, each time
/// until the parent (seeing it blocked, GETNCNT) waits 20 ms and posts;
/// the child posts it back and the parent takes it again. `stuck 0`: a
/// child blocks on it (semtimedop, 5 s) and the command exits meanwhile.
/// Prints the key and id.
const SEMS: &str = r#"
import ctypes, os, sys, time

mode, k = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_RMID, GETVAL, GETNCNT = 0o1000, 0, 12, 14

class SemBuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]

def check(rc, what):
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc

key = 0x5e70000 + os.getpid()
sem = check(libc.semget(key, 1, IPC_CREAT | 0o600), "semget")
print(hex(key), sem, flush=True)
def op(delta):
    b = SemBuf(0, delta, 0)
    check(libc.semop(sem, ctypes.byref(b), 1), "semop")
def until(cmd, value):
    # Bounded: a lost wakeup fails the run instead of hanging it.
    for _ in range(10000):
        if check(libc.semctl(sem, 0, cmd), "semctl") == value:
            return
        time.sleep(0.001)
    sys.exit(4)

if mode == "stuck":
    # The child blocks (with a timeout, so it cannot outlive the test
    # for long) and the recorded command exits while it still waits.
    if os.fork() == 0:
        b = SemBuf(0, -1, 0)
        timeout = (ctypes.c_long * 2)(5, 0)
        libc.semtimedop(sem, ctypes.byref(b), 1, timeout)
        libc.semctl(sem, 0, IPC_RMID)
        os._exit(0)
    until(GETNCNT, 1)
    sys.exit(0)

op(1)   # a post: the semaphore is free
op(-1)  # the parent holds it
pid = os.fork()
if pid == 0:
    for i in range(k):
        op(-1)  # blocks until the parent lets go
        op(1)
        until(GETVAL, 0)  # the parent took it back
    os._exit(0)
for i in range(k):
    until(GETNCNT, 1)  # the child is blocked on it
    time.sleep(0.02)
    op(1)
    op(-1)
_, status = os.waitpid(pid, 0)
libc.semctl(sem, 0, IPC_RMID)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// Holds a `multiprocessing.Lock` (a process-shared POSIX semaphore,
/// whose waits are futex waits) for `hold` seconds while a forked child
/// tries to take it.
const FUTEX: &str = r#"
import multiprocessing, os, sys, time

hold = float(sys.argv[1])
lock = multiprocessing.Lock()  # a process-shared POSIX semaphore: a futex
lock.acquire()
pid = os.fork()
if pid == 0:
    lock.acquire()  # blocks in the kernel until the parent releases
    os._exit(0)
time.sleep(hold)
lock.release()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// The parent holds a process-shared priority-inheritance pthread mutex
/// for `hold` seconds while its forked child tries to lock it. Exits 5 or
/// 6 if the mutex cannot be made or taken.
const PI_MUTEX: &str = r#"
import ctypes, mmap, os, sys, time

hold = float(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
# A process-shared priority-inheritance mutex in shared memory: its
# futex word holds the owner's tid, and a contended lock is FUTEX_LOCK_PI.
shared = mmap.mmap(-1, 64)
mutex = ctypes.c_char.from_buffer(shared)
attr = ctypes.create_string_buffer(8)
PTHREAD_PROCESS_SHARED, PTHREAD_PRIO_INHERIT = 1, 1
for rc in (libc.pthread_mutexattr_init(attr),
           libc.pthread_mutexattr_setpshared(attr, PTHREAD_PROCESS_SHARED),
           libc.pthread_mutexattr_setprotocol(attr, PTHREAD_PRIO_INHERIT),
           libc.pthread_mutex_init(ctypes.byref(mutex), attr)):
    if rc != 0:
        sys.exit(5)
if libc.pthread_mutex_lock(ctypes.byref(mutex)) != 0:
    sys.exit(6)
pid = os.fork()
if pid == 0:
    rc = libc.pthread_mutex_lock(ctypes.byref(mutex))  # blocks: held by the parent
    libc.pthread_mutex_unlock(ctypes.byref(mutex))
    os._exit(rc)
time.sleep(hold)
libc.pthread_mutex_unlock(ctypes.byref(mutex))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// How the probes write a `semop` of one operation `sem_op` on semaphore
/// 0 in `aux` (ipc_events::raw::kind::SEM_WAIT_BEGIN).
fn semop_aux(sem_op: i16) -> u64 {
    (u64::from(sem_op as u16) << 16) | (1 << 32)
}

#[test]
fn sysv_semaphore_waits_and_posts_are_captured_exactly() {
    if !need_root("sysv_semaphore_waits_and_posts_are_captured_exactly") {
        return;
    }
    const K: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), SEMS, &["pingpong", &K.to_string()], &[]);
    let (parent, child) = parent_and_child(&db);
    let (key, id) = printed.trim().split_once(' ').unwrap();

    let channels = query(
        &db,
        "select id, kind, name from channels where kind != 'pipe'",
    );
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert_eq!(channels[0]["kind"], "sysv_sem");
    assert_eq!(channels[0]["name"], format!("key={key} id={id} sem=0"));
    let ch = channels[0]["id"].as_i64().unwrap();

    let (post, wait) = (semop_aux(1), semop_aux(-1));
    let events = query(
        &db,
        &format!(
            "select pid, kind, aux, count(*) as n, sum(result = 0) as ok from events
             where channel_id = {ch} group by pid, kind, aux order by pid = {parent} desc, kind"
        ),
    );
    let row = |pid: i64, kind: &str, aux: u64, n: u64| json!({"pid": pid, "kind": kind, "aux": aux, "n": n, "ok": n});
    assert_eq!(
        events,
        json!([
            row(parent, "sem_post", post, K + 1),
            row(parent, "sem_wait_begin", wait, K + 1),
            row(parent, "sem_wait_end", wait, K + 1),
            row(child, "sem_post", post, K),
            row(child, "sem_wait_begin", wait, K),
            row(child, "sem_wait_end", wait, K),
        ])
    );

    // A waits row per wait, closed, from its begin to its end; the
    // child's each blocked at least the 20 ms the parent held on, and
    // ended after a post of the parent's.
    let waits = query(
        &db,
        &format!(
            "select w.pid, count(*) as n, sum(w.end_ns > w.start_ns) as closed,
                    sum(w.end_ns - w.start_ns >= 20000000) as blocked,
                    sum(exists (select 1 from events b where b.kind = 'sem_wait_begin'
                                and b.tid = w.tid and b.ts_ns = w.start_ns)) as from_begin,
                    sum(exists (select 1 from events p where p.kind = 'sem_post'
                                and p.pid = {parent} and p.ts_ns between w.start_ns and w.end_ns))
                        as woken_by_post
             from waits w where w.channel_id = {ch} group by w.pid order by w.pid = {parent} desc"
        ),
    );
    assert_eq!(
        waits[1],
        json!({"pid": child, "n": K, "closed": K, "blocked": K, "from_begin": K, "woken_by_post": K})
    );
    assert_eq!(waits[0]["n"], K + 1, "{waits}");
    assert_eq!(waits[0]["closed"], K + 1, "{waits}");
    assert_eq!(waits[0]["from_begin"], K + 1, "{waits}");
    assert_eq!(query(&db, "select count(*) as n from drops")[0]["n"], 0);
}

#[test]
fn a_wait_blocked_when_recording_ends_stays_open() {
    if !need_root("a_wait_blocked_when_recording_ends_stays_open") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(dir.path(), SEMS, &["stuck", "0"], &[]);
    let (_, child) = parent_and_child(&db);
    let waits = query(
        &db,
        "select w.pid, w.end_ns, c.kind from waits w join channels c on c.id = w.channel_id",
    );
    assert_eq!(
        waits,
        json!([{"pid": child, "end_ns": null, "kind": "sysv_sem"}]),
        "the child is known to be blocked though its call never returned"
    );
    let ends = query(
        &db,
        "select count(*) as n from events where kind = 'sem_wait_end'",
    );
    assert_eq!(ends[0]["n"], 0);
}

#[test]
fn a_contended_futex_wait_is_captured_with_its_duration() {
    if !need_root("a_contended_futex_wait_is_captured_with_its_duration") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(dir.path(), FUTEX, &["0.2"], &[]);
    let (parent, child) = parent_and_child(&db);

    // Exactly one long wait: the child's, on a shared futex (no owning
    // pid in its name), begun and ended.
    let long = query(
        &db,
        "select e.pid, c.kind, c.name, e.ts_ns - e.duration_ns as began, e.ts_ns as ended
         from events e join channels c on c.id = e.channel_id
         where e.kind = 'futex_wait' and e.result = 0 and e.duration_ns >= 150000000",
    );
    let long = long.as_array().unwrap();
    assert_eq!(long.len(), 1, "{long:?}");
    assert_eq!(long[0]["pid"], child);
    assert_eq!(long[0]["kind"], "futex");
    let name = long[0]["name"].as_str().unwrap();
    assert!(
        name.starts_with("futex:0x") && !name.contains('@'),
        "{name}"
    );

    let begun = query(
        &db,
        &format!(
            "select e.ts_ns from events e join channels c on c.id = e.channel_id
             where e.kind = 'futex_wait_begin' and e.pid = {child} and c.name = '{name}'
               and e.result = 0"
        ),
    );
    let begun = begun[0]["ts_ns"].as_i64().unwrap();
    assert_eq!(
        long[0]["began"], begun,
        "the begin record is the call's entry"
    );
    let waits = query(
        &db,
        &format!(
            "select w.pid, w.start_ns, w.end_ns from waits w
             join channels c on c.id = w.channel_id
             where c.name = '{name}' and w.end_ns - w.start_ns >= 150000000"
        ),
    );
    assert_eq!(
        waits,
        json!([{"pid": child, "start_ns": begun, "end_ns": long[0]["ended"]}])
    );
    let parents = query(
        &db,
        &format!("select count(*) as n from waits where pid = {parent} and end_ns - start_ns >= 150000000"),
    );
    assert_eq!(parents[0]["n"], 0);
}

#[test]
fn a_pi_mutex_wait_names_the_owner() {
    if !need_root("a_pi_mutex_wait_names_the_owner") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = record_python_with(dir.path(), PI_MUTEX, &["0.2"], &[]);
    let (parent, child) = parent_and_child(&db);
    // The child's one wait, begun and ended, each naming the parent (a
    // single thread: its tid is its pid) as the mutex's owner, read from
    // the futex word.
    let waits = query(
        &db,
        "select e.pid, e.aux as owner, e.kind = 'futex_wait_begin' as begun,
                e.duration_ns >= 150000000 as long
         from events e join channels c on c.id = e.channel_id
         where c.kind = 'futex' and e.kind in ('futex_wait_begin', 'futex_wait')
         order by e.ts_ns",
    );
    assert_eq!(
        waits,
        json!([
            {"pid": child, "owner": parent, "begun": 1, "long": null},
            {"pid": child, "owner": parent, "begun": 0, "long": 1},
        ])
    );
    // No marker of the probes' in any stored result.
    assert_eq!(
        query(
            &db,
            "select count(*) as n from events where result = -9223372036854775808"
        ),
        json!([{"n": 0}])
    );
    // The parent's unlock handed the mutex over: it woke the child.
    let woke = query(
        &db,
        &format!(
            "select waker_pid from waits where pid = {child} and end_ns - start_ns >= 150000000"
        ),
    );
    assert_eq!(woke, json!([{"waker_pid": parent}]));
}

/// Two processes take two SysV semaphores in opposite orders, a parent
/// first and its child 0.3 s later: never at the same time, so no
/// deadlock, but the order that could deadlock. The semaphores start free
/// through `semctl(SETVAL)`, which takes nobody's count. Prints the key,
/// the id, and the parent's and child's pids.
const INVERTED: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_RMID, SETVAL = 0o1000, 0, 16

class SemBuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]

key = 0x5e90000 + os.getpid()
sem = libc.semget(key, 2, IPC_CREAT | 0o600)
assert sem >= 0
for n in (0, 1):
    assert libc.semctl(sem, n, SETVAL, 1) == 0
def op(num, delta):
    b = SemBuf(num, delta, 0)
    assert libc.semop(sem, ctypes.byref(b), 1) == 0
def take(first, second):
    op(first, -1)
    op(second, -1)
    time.sleep(0.01)
    op(second, 1)
    op(first, 1)
pid = os.fork()
if pid == 0:
    time.sleep(0.3)
    take(1, 0)
    os._exit(0)
take(0, 1)
os.waitpid(pid, 0)
libc.semctl(sem, 0, IPC_RMID)
print(hex(key), sem, os.getpid(), pid)
"#;

#[test]
fn a_lock_order_inversion_is_stored_and_reported_after_the_recording() {
    if !need_root("a_lock_order_inversion_is_stored_and_reported_after_the_recording") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), INVERTED, &[], &[]);
    let words: Vec<&str> = printed.split_whitespace().collect();
    let (key, id, parent, child) = (words[0], words[1], words[2], words[3]);
    let rows = query(
        &db,
        "select f.name as first, s.name as second, i.first_pid, i.second_pid,
                i.second_seen_ns - i.first_seen_ns >= 250000000 as apart
         from lock_order_inversions i
         join channels f on f.id = i.first_channel_id
         join channels s on s.id = i.second_channel_id",
    );
    assert_eq!(
        rows,
        json!([{
            "first": format!("key={key} id={id} sem=0"),
            "second": format!("key={key} id={id} sem=1"),
            "first_pid": parent.parse::<i64>().unwrap(),
            "second_pid": child.parse::<i64>().unwrap(),
            "apart": 1,
        }])
    );
    assert_eq!(
        query(&db, "select count(*) as n from deadlocks"),
        json!([{"n": 0}])
    );
    let report = crate::run(&["report", "--db", db.to_str().unwrap()]);
    let text = crate::stdout(&report);
    let section = &text[text.find("== inversions").expect("an inversions section")..];
    assert!(
        section.contains(&format!("key={key} id={id} sem=0")) && section.contains(parent),
        "{text}"
    );
}
