//! Semaphores across real processes: counting, timeouts, contention, the
//! holders table, and a holder killed while holding.

use std::io::Read;
use std::time::{Duration, Instant};

use ipc_lib::region::Region;
use ipc_lib::sem::{PostError, Semaphore, WaitError, HOLDER_SLOTS};

use ipc_lib::OpenError;

use crate::support::{
    capture_ops, open_when_ready, spawn, unique_name, wait_bounded, Hostile, NameGuard, PATIENCE,
};

/// The region beside semaphore `name`.
fn region_name(name: &str) -> String {
    format!("{name}-data")
}

/// Child roles for these tests; `None` when `role` is not one of them.
pub fn role(role: &str, name: &str, arg: &str) -> Option<Result<(), String>> {
    Some(match role {
        // Takes a count and holds it until stdin closes (or it is killed).
        "sem-hold" => (|| {
            let sem = open_when_ready(|| Semaphore::builder(name).open());
            let _permit = sem.wait_timeout(PATIENCE).map_err(|e| e.to_string())?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        })(),
        // N increments of the counter at offset 0 of the region, each a
        // plain read then write under the semaphore.
        "sem-increment" => (|| {
            let n: u64 = arg.parse().map_err(|_| format!("bad arg {arg:?}"))?;
            let sem = open_when_ready(|| Semaphore::builder(name).open());
            let r = open_when_ready(|| Region::builder(region_name(name)).open());
            increment(&sem, &r, n)
        })(),
        _ => return None,
    })
}

fn increment(sem: &Semaphore, r: &Region, n: u64) -> Result<(), String> {
    for _ in 0..n {
        let permit = sem.wait_timeout(PATIENCE).map_err(|e| e.to_string())?;
        let v: u64 = r.read_value(0).map_err(|e| e.to_string())?;
        // Widen the window a lost update needs.
        std::hint::spin_loop();
        r.write_value(0, v + 1).map_err(|e| e.to_string())?;
        permit.release().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits until the table names `pid` as a holder.
fn wait_for_holder(sem: &Semaphore, pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while !sem.holders().iter().any(|h| h.pid == pid) {
        assert!(Instant::now() < deadline, "pid {pid} never took the count");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn counts_are_taken_released_forgotten_and_posted() {
    let name = unique_name("sem-count");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).initial(3).create().unwrap();
    let other = Semaphore::builder(&name).open().unwrap();
    let a = sem.try_wait().unwrap();
    let b = other.try_wait().unwrap();
    let c = sem.wait_timeout(Duration::ZERO).unwrap();
    assert_eq!(sem.count(), 0);
    assert_eq!(other.try_wait().unwrap_err(), WaitError::WouldBlock);
    let holders = sem.holders();
    assert_eq!(holders.len(), 3);
    assert!(holders.iter().all(|h| h.pid == std::process::id()));
    let slots: Vec<_> = [&a, &b, &c].iter().map(|p| p.slot().unwrap()).collect();
    assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);

    drop(a);
    assert_eq!(other.count(), 1);
    b.release().unwrap();
    assert_eq!(other.count(), 2);
    c.forget();
    assert_eq!(sem.count(), 2, "a forgotten count stays taken");
    assert!(sem.holders().is_empty());
    sem.post().unwrap();
    assert_eq!(other.count(), 3);
    assert_eq!(sem.owner_deaths(), 0);
}

#[test]
fn a_full_count_refuses_a_post() {
    let name = unique_name("sem-full");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name)
        .initial(u32::MAX)
        .create()
        .unwrap();
    assert_eq!(sem.post(), Err(PostError::Overflow { max: u32::MAX }));
    assert_eq!(sem.count(), u32::MAX);
}

#[test]
fn more_holders_than_slots_are_counted_but_not_named() {
    let name = unique_name("sem-slots");
    let _g = NameGuard(name.clone());
    let n = HOLDER_SLOTS as u32 + 3;
    let sem = Semaphore::builder(&name).initial(n).create().unwrap();
    let permits: Vec<_> = (0..n).map(|_| sem.try_wait().unwrap()).collect();
    assert_eq!(sem.holders().len(), HOLDER_SLOTS);
    assert_eq!(permits.iter().filter(|p| p.slot().is_none()).count(), 3);
    drop(permits);
    assert_eq!(sem.count(), n);
    assert!(sem.holders().is_empty());
}

#[test]
fn a_timed_wait_gives_up_and_traces_why() {
    let name = unique_name("sem-timeout");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).create().unwrap();
    let started = Instant::now();
    let (r, ops) = capture_ops(|| sem.wait_timeout(Duration::from_millis(60)));
    assert_eq!(r.unwrap_err(), WaitError::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(60));
    let kinds: Vec<_> = ops.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, ["sem_wait_begin", "sem_wait_end"]);
    assert_eq!(ops[1].result, -i64::from(libc::ETIMEDOUT));
    assert!(ops[1].duration_ns >= 60_000_000, "{:?}", ops[1]);
    assert!(ops
        .iter()
        .all(|o| o.channel == "ipclib_sem" && o.name == name));
    assert_eq!(sem.count(), 0, "a timed-out wait takes nothing");
}

#[test]
fn a_waiter_blocks_on_a_holder_in_another_process_and_names_it() {
    let name = unique_name("sem-block");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).initial(1).create().unwrap();
    let mut child = spawn("sem-hold", &name, "");
    let pid = child.id();
    wait_for_holder(&sem, pid);
    assert_eq!(sem.try_wait().unwrap_err(), WaitError::WouldBlock);

    // Let the child go once we are blocked: the wait must end with the
    // count the child released.
    let mut stdin = child.stdin.take();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(stdin.take());
    });
    let (permit, ops) = capture_ops(|| sem.wait_timeout(PATIENCE));
    let permit = permit.unwrap();
    releaser.join().unwrap();
    assert!(wait_bounded(&mut child, PATIENCE).success());

    let begin = &ops[0];
    assert_eq!(begin.kind, "sem_wait_begin");
    assert_eq!((begin.obj, begin.aux), (u64::from(pid), 1), "{begin:?}");
    assert_ne!(begin.obj2, 0, "the holder's thread is named");
    let end = ops.last().unwrap();
    assert_eq!((end.kind.as_str(), end.result), ("sem_wait_end", 0));
    assert!(end.duration_ns > 0);
    assert_eq!(end.aux, permit.slot().unwrap() as u64 + 1);

    // The release is traced as a post from the holder.
    let (_, ops) = capture_ops(|| drop(permit));
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].kind, "sem_post");
    assert_eq!(ops[0].obj, u64::from(std::process::id()));
    assert_eq!(ops[0].result, 0);
}

#[test]
fn an_uncontended_acquire_is_traced_with_no_wait() {
    let name = unique_name("sem-fast");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).initial(1).create().unwrap();
    let (permit, ops) = capture_ops(|| sem.wait());
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0].kind.as_str(), ops[0].duration_ns),
        ("sem_wait_end", 0)
    );
    let (_, ops) = capture_ops(|| sem.post().unwrap());
    assert_eq!((ops[0].kind.as_str(), ops[0].obj), ("sem_post", 0));
    drop(permit);
}

#[test]
fn a_holder_killed_while_holding_is_found_and_its_count_recovered() {
    let name = unique_name("sem-dead");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).initial(1).create().unwrap();
    let mut child = spawn("sem-hold", &name, "");
    let pid = child.id();
    wait_for_holder(&sem, pid);
    // SIGKILL, not reaped until the end: the waiter must see a zombie as
    // dead.
    child.kill().unwrap();
    let (permit, ops) = capture_ops(|| sem.wait_timeout(PATIENCE));
    let permit = permit.expect("the dead holder's count comes back");
    let _ = child.wait();

    assert_eq!(sem.owner_deaths(), 1);
    let holders = sem.holders();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].pid, std::process::id());
    let recovered = ops
        .iter()
        .find(|o| o.kind == "sem_post" && o.result == -i64::from(libc::EOWNERDEAD))
        .unwrap_or_else(|| panic!("no recovery traced: {ops:?}"));
    assert_eq!(recovered.obj, u64::from(pid));
    assert_ne!(recovered.aux, 0);
    assert_eq!(ops.last().unwrap().kind, "sem_wait_end");
    assert_eq!(ops.last().unwrap().result, 0);
    drop(permit);
    assert_eq!(sem.count(), 1);
}

#[test]
fn two_processes_incrementing_under_the_semaphore_lose_nothing() {
    let name = unique_name("sem-contend");
    let _g = NameGuard(name.clone());
    let _g2 = NameGuard(region_name(&name));
    let sem = Semaphore::builder(&name).initial(1).create().unwrap();
    let r = Region::builder(region_name(&name))
        .size(8)
        .create()
        .unwrap();
    let n = 20_000;
    let mut child = spawn("sem-increment", &name, &n.to_string());
    increment(&sem, &r, n).unwrap();
    assert!(wait_bounded(&mut child, PATIENCE).success());
    assert_eq!(r.read_value::<u64>(0).unwrap(), 2 * n);
    assert_eq!(sem.count(), 1);
    assert!(sem.holders().is_empty());
}

#[test]
fn opening_a_missing_taken_or_damaged_semaphore_is_a_precise_error() {
    let name = unique_name("sem-open");
    let _g = NameGuard(name.clone());
    assert!(matches!(
        Semaphore::builder(&name).wait(Duration::ZERO).open(),
        Err(OpenError::NotFound { .. })
    ));
    // Kept after `sem` is dropped, for the damage below.
    let sem = Semaphore::builder(&name)
        .initial(2)
        .unlink_on_drop(false)
        .create()
        .unwrap();
    assert!(matches!(
        Semaphore::builder(&name).create(),
        Err(OpenError::AlreadyExists { .. })
    ));
    // open_or_create opens, and an initial count is then ignored.
    let again = Semaphore::builder(&name)
        .initial(9)
        .open_or_create()
        .unwrap();
    assert_eq!(again.count(), 2);
    drop(sem);

    let hostile = Hostile::map(&name);
    hostile.write_u64(16, 3);
    let err = Semaphore::builder(&name).open().unwrap_err();
    assert!(
        matches!(err, OpenError::CorruptHeader { .. })
            && err.to_string().contains("3 holder slots"),
        "{err}"
    );
    hostile.write_u64(8, 7);
    assert!(matches!(
        Semaphore::builder(&name).open(),
        Err(OpenError::VersionMismatch { found: 7, .. })
    ));
}
