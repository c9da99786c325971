//! `select`: one wait over channel receivers, queue consumers, semaphores,
//! rpc servers and process exits, each woken from another process.

use std::io::Read;
use std::time::Duration;

use ipc_lib::channel::{Receiver, RecvError};
use ipc_lib::queue::{Consumer, Producer, TakeError};
use ipc_lib::rpc::{Client, Server};
use ipc_lib::select::{Process, Select, SelectError, Source};
use ipc_lib::sem::Semaphore;

use crate::support::{
    open_sender, open_when_ready, spawn, unique_name, wait_bounded, NameGuard, PATIENCE,
};

/// How long a child waits before it acts: long enough that the parent is
/// asleep in the select by then (the tests pass either way).
const DELAY_MS: u64 = 100;

pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    let delay = Duration::from_millis(
        arg.split(',')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DELAY_MS),
    );
    std::thread::sleep(delay);
    match role {
        // Sends one message on channel NAME, then stays attached until
        // stdin closes (so what the parent sees is the message, not a
        // sender leaving).
        "select-send" => {
            let mut tx = open_sender(name);
            tx.send(b"hello").map_err(|e| e.to_string())?;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        }
        // Posts semaphore NAME once.
        "select-post" => {
            let sem = open_when_ready(|| Semaphore::builder(name).open());
            sem.post().map_err(|e| e.to_string())
        }
        // Calls rpc server NAME with "ping", expects "pong".
        "select-call" => {
            let mut c = Client::connect_timeout(name, PATIENCE).map_err(|e| e.to_string())?;
            let r = c.call(b"ping", PATIENCE).map_err(|e| e.to_string())?;
            if r != b"pong" {
                return Err(format!("reply {r:?}"));
            }
            Ok(())
        }
        // Pushes one job on queue NAME.
        "select-push" => {
            let mut producer = open_when_ready(|| Producer::builder(name).open());
            producer.push(b"job").map(drop).map_err(|e| e.to_string())
        }
        // Takes a job from queue NAME, posts semaphore NAME-taken and
        // works on it until killed.
        "select-take-hang" => {
            let mut consumer = open_when_ready(|| Consumer::builder(name).open());
            let taken = open_when_ready(|| Semaphore::builder(format!("{name}-taken")).open());
            let job = consumer.next_timeout(PATIENCE).map_err(|e| e.to_string())?;
            taken.post().map_err(|e| e.to_string())?;
            std::thread::sleep(PATIENCE);
            drop(job);
            Err("was not killed".into())
        }
        // Exits after the delay.
        "select-exit" => Ok(()),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// A child that sleeps long: a process source that never becomes ready
/// during a test. Killed and reaped on drop.
struct Sleeper(std::process::Child, Process);

impl Sleeper {
    fn new() -> Sleeper {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let p = Process::from_child(&child).unwrap();
        Sleeper(child, p)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn idle_sem(tag: &str) -> Semaphore {
    Semaphore::builder(unique_name(tag)).create().unwrap()
}

#[test]
fn wakes_on_a_message_from_another_process() {
    let name = unique_name("sel-msg");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let sem = idle_sem("sel-msg-sem");
    let mut child = spawn("select-send", &name, "");
    let mut select = Select::new();
    // Shared-memory sources only: one futex_waitv.
    let got = select.wait(&mut [(&sem).into(), (&mut rx).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 1);
    assert_eq!(rx.try_recv().unwrap(), b"hello");
    // Nothing taken by the select, nothing more there: a short wait times
    // out.
    let again = select.wait(
        &mut [(&sem).into(), (&mut rx).into()],
        Some(Duration::from_millis(50)),
    );
    assert!(matches!(again, Err(SelectError::Timeout)), "{again:?}");
    drop(child.stdin.take());
    assert!(wait_bounded(&mut child, PATIENCE).success());
    // The sender left: the receiver is ready, and says Disconnected.
    let got = select.wait(&mut [(&sem).into(), (&mut rx).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 1);
    assert!(matches!(rx.try_recv(), Err(RecvError::Disconnected)));
}

#[test]
fn wakes_on_a_message_while_also_waiting_on_a_process() {
    let name = unique_name("sel-mixed");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let sleeper = Sleeper::new();
    let mut child = spawn("select-send", &name, "");
    // A descriptor and a shared-memory word: the helper-thread path.
    let got = ipc_lib::select::select(&mut [(&sleeper.1).into(), (&mut rx).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 1);
    assert_eq!(rx.try_recv().unwrap(), b"hello");
    drop(child.stdin.take());
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn wakes_on_a_job_pushed_by_another_process() {
    let name = unique_name("sel-queue");
    let mut producer = Producer::builder(&name).create().unwrap();
    let mut consumer = Consumer::builder(&name).open().unwrap();
    let sem = idle_sem("sel-queue-sem");
    let sleeper = Sleeper::new();
    let mut select = Select::new();
    // Shared-memory sources only (one futex_waitv), then with a
    // descriptor (the helper thread).
    for with_process in [false, true] {
        let mut child = spawn("select-push", &name, "");
        let got = if with_process {
            let sources = &mut [(&sleeper.1).into(), (&sem).into(), (&mut consumer).into()];
            select.wait(sources, Some(PATIENCE))
        } else {
            select.wait(&mut [(&sem).into(), (&mut consumer).into()], Some(PATIENCE))
        };
        assert_eq!(got.unwrap(), if with_process { 2 } else { 1 });
        // Taken by nobody but us: the job is there for try_next.
        let job = consumer.try_next().unwrap();
        assert_eq!(job.payload(), b"job");
        job.ack().unwrap();
        assert!(wait_bounded(&mut child, PATIENCE).success());
    }
    let got = select.wait(
        &mut [(&mut consumer).into()],
        Some(Duration::from_millis(50)),
    );
    assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
    // A job given back (dropped unacknowledged) is ready at once.
    producer.push(b"again").unwrap();
    drop(consumer.try_next().unwrap());
    let got = select.wait(&mut [(&mut consumer).into()], Some(Duration::ZERO));
    assert_eq!(got.unwrap(), 0);
    let job = consumer.try_next().unwrap();
    assert_eq!((job.payload(), job.deliveries()), (&b"again"[..], 2));
    job.ack().unwrap();
}

#[test]
fn wakes_on_a_job_whose_consumer_process_was_killed() {
    let name = unique_name("sel-queue-kill");
    let mut producer = Producer::builder(&name).create().unwrap();
    let taken = Semaphore::builder(format!("{name}-taken"))
        .create()
        .unwrap();
    let mut consumer = Consumer::builder(&name).open().unwrap();
    let id = producer.push(b"work").unwrap();
    let mut child = spawn("select-take-hang", &name, "0");
    taken.wait_timeout(PATIENCE).unwrap().forget();
    let mut select = Select::new();
    // The job is the child's: nothing to take.
    let got = select.wait(
        &mut [(&mut consumer).into()],
        Some(Duration::from_millis(60)),
    );
    assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Nobody pushes, nobody wakes the word: the select finds the dead
    // consumer's job when it asks, once a liveness slice.
    let got = select.wait(&mut [(&mut consumer).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 0);
    let job = consumer.try_next().unwrap();
    assert_eq!((job.id(), job.deliveries()), (id, 2));
    job.ack().unwrap();
    assert!(matches!(consumer.try_next(), Err(TakeError::Empty)));
}

#[test]
fn wakes_on_a_semaphore_post_from_another_process() {
    let name = unique_name("sel-sem");
    let sem = Semaphore::builder(&name).create().unwrap();
    let other = idle_sem("sel-sem-other");
    let sleeper = Sleeper::new();
    let mut child = spawn("select-post", &name, "");
    let mut select = Select::new();
    let got = select.wait(
        &mut [(&other).into(), (&sleeper.1).into(), (&sem).into()],
        Some(PATIENCE),
    );
    assert_eq!(got.unwrap(), 2);
    // Not taken by the select: the count is there for try_wait.
    assert_eq!(sem.count(), 1);
    sem.try_wait().unwrap().forget();
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn wakes_on_an_rpc_request() {
    let name = unique_name("sel-rpc");
    let mut server = Server::builder(&name).create().unwrap();
    let sem = idle_sem("sel-rpc-sem");
    let mut child = spawn("select-call", &name, "");
    let mut select = Select::new();
    let got = select.wait(&mut [(&sem).into(), (&mut server).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 1);
    let req = server.next_request(Some(Duration::ZERO)).unwrap();
    assert_eq!(req.payload(), b"ping");
    server.reply(&req, b"pong").unwrap();
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn wakes_on_a_child_exiting() {
    let name = unique_name("sel-exit");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let sleeper = Sleeper::new();
    let mut child = spawn("select-exit", &name, "");
    let exit = Process::from_child(&child).unwrap();
    let mut select = Select::new();
    let got = select.wait(
        &mut [(&mut rx).into(), (&sleeper.1).into(), (&exit).into()],
        Some(PATIENCE),
    );
    assert_eq!(got.unwrap(), 2);
    assert!(exit.has_exited());
    // Exited, not yet reaped: the wait returns at once.
    assert!(child.wait().unwrap().success());
}

#[test]
fn times_out_with_nothing_ready() {
    let name = unique_name("sel-none");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let sem = idle_sem("sel-none-sem");
    let sleeper = Sleeper::new();
    let mut select = Select::new();
    for sources in [
        &mut [(&mut rx).into(), (&sem).into(), (&sleeper.1).into()][..],
        &mut [(&sleeper.1).into()][..],
    ] {
        let got = select.wait(sources, Some(Duration::from_millis(60)));
        assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
    }
    let got = select.wait(&mut [(&sem).into()], Some(Duration::from_millis(60)));
    assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
    assert!(matches!(
        select.wait(&mut [], None),
        Err(SelectError::NoSources)
    ));
}

#[test]
fn readiness_from_before_the_call_is_seen_at_once() {
    let name = unique_name("sel-before");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let mut tx = ipc_lib::Sender::builder(&name).open().unwrap();
    let sem = idle_sem("sel-before-sem");
    let sleeper = Sleeper::new();
    let mut select = Select::new();
    tx.send(b"early").unwrap();
    // A zero timeout still looks once.
    let got = select.wait(
        &mut [(&sem).into(), (&sleeper.1).into(), (&mut rx).into()],
        Some(Duration::ZERO),
    );
    assert_eq!(got.unwrap(), 2);
    assert_eq!(rx.try_recv().unwrap(), b"early");
    sem.post().unwrap();
    let got = select.try_ready(&mut [(&mut rx).into(), (&sleeper.1).into(), (&sem).into()]);
    assert_eq!(got, Some(2));
    // Both ready: turns alternate, neither starves.
    tx.send(b"also").unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            select
                .wait(&mut [(&mut rx).into(), (&sem).into()], Some(Duration::ZERO))
                .unwrap(),
        );
    }
    assert!(seen.contains(&0) && seen.contains(&1), "{seen:?}");
}

#[test]
fn one_ready_among_sixty_four_receivers() {
    let base = unique_name("sel-64");
    let names: Vec<String> = (0..64).map(|i| format!("{base}-{i}")).collect();
    let _guards: Vec<_> = names.iter().cloned().map(NameGuard).collect();
    let mut rxs: Vec<Receiver> = names
        .iter()
        .map(|n| Receiver::builder(n).create().unwrap())
        .collect();
    let mut child = spawn("select-send", &names[37], "");
    let mut select = Select::new();
    let mut sources: Vec<Source<'_>> = rxs.iter_mut().map(Source::from).collect();
    assert_eq!(select.wait(&mut sources, Some(PATIENCE)).unwrap(), 37);
    drop(sources);
    assert_eq!(rxs[37].try_recv().unwrap(), b"hello");
    drop(child.stdin.take());
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn too_many_shared_memory_sources_are_refused() {
    let sems: Vec<Semaphore> = (0..128)
        .map(|i| idle_sem(&format!("sel-many-{i}")))
        .collect();
    let mut sources: Vec<Source<'_>> = sems.iter().map(Source::from).collect();
    let got = Select::new().wait(&mut sources, Some(Duration::ZERO));
    assert!(
        matches!(got, Err(SelectError::TooManySources { count: 128, .. })),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_select_wakes_on_a_message_and_on_an_exit() {
    let name = unique_name("sel-async");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap();
    let sem = idle_sem("sel-async-sem");
    let mut sender = spawn("select-send", &name, "");
    let mut select = Select::new();
    let got = select
        .wait_async(&mut [(&sem).into(), (&mut rx).into()])
        .await;
    assert_eq!(got.unwrap(), 1);
    assert_eq!(rx.try_recv().unwrap(), b"hello");

    let mut child = spawn("select-exit", &name, "");
    let exit = Process::from_child(&child).unwrap();
    let got = select
        .wait_async(&mut [(&mut rx).into(), (&sem).into(), (&exit).into()])
        .await;
    assert_eq!(got.unwrap(), 2);
    assert!(wait_bounded(&mut child, PATIENCE).success());

    // Dropped mid-wait: nothing taken, and the next wait still works.
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        select.wait_async(&mut [(&mut rx).into(), (&sem).into()]),
    )
    .await;
    assert!(cut.is_err());
    sem.post().unwrap();
    let got = select
        .wait_async(&mut [(&mut rx).into(), (&sem).into()])
        .await;
    assert_eq!(got.unwrap(), 1);
    drop(sender.stdin.take());
    assert!(wait_bounded(&mut sender, PATIENCE).success());
}

#[tokio::test(flavor = "current_thread")]
async fn async_select_wakes_on_a_job() {
    let name = unique_name("sel-async-queue");
    let _producer = Producer::builder(&name).create().unwrap();
    let mut consumer = Consumer::builder(&name).open().unwrap();
    let sem = idle_sem("sel-async-queue-sem");
    let mut child = spawn("select-push", &name, "");
    let mut select = Select::new();
    let got = select
        .wait_async(&mut [(&sem).into(), (&mut consumer).into()])
        .await;
    assert_eq!(got.unwrap(), 1);
    let job = consumer.try_next().unwrap();
    assert_eq!(job.payload(), b"job");
    job.ack().unwrap();
    assert!(wait_bounded(&mut child, PATIENCE).success());
}
