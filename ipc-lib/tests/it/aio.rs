//! The async (tokio) API on a current-thread runtime: while a wait is
//! pending the one runtime thread keeps running other tasks, which it could
//! not if the wait blocked it; dropped waits lose nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipc_lib::channel::{Receiver, RecvError, Sender};
use ipc_lib::sem::Semaphore;
use tokio::time::timeout;

use crate::support::{
    capture_process_wide, open_sender, open_when_ready, pattern, size_of_msg, spawn, unique_name,
    wait_bounded, NameGuard, PATIENCE,
};

/// Child roles for these tests; `None` when `role` is not one of them.
pub fn role(role: &str, name: &str, arg: &str) -> Option<Result<(), String>> {
    Some(match role {
        // Posts once after ARG milliseconds.
        "sem-post-after" => (|| {
            let ms = arg.parse().map_err(|_| format!("bad arg {arg:?}"))?;
            let sem = open_when_ready(|| Semaphore::builder(name).open());
            std::thread::sleep(Duration::from_millis(ms));
            sem.post().map_err(|e| e.to_string())
        })(),
        // Drops an async wait, then checks that the trace says the wait
        // ended, and why.
        "sem-drop-async-wait" => dropped_wait_is_traced(name),
        // Creates N channels NAME-0.. and waits on each with an async
        // receive, all at once on one thread; posts NAME-ready once they
        // all sleep, then checks that each receives its index.
        "many-async-recvs" => arg
            .parse()
            .map_err(|_| format!("bad arg {arg:?}"))
            .and_then(|n| many_waiting_receives(name, n)),
        _ => return None,
    })
}

fn dropped_wait_is_traced(name: &str) -> Result<(), String> {
    let captured = capture_process_wide();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let sem = Semaphore::builder(name).open().map_err(|e| e.to_string())?;
    let timed_out = rt.block_on(async {
        timeout(Duration::from_millis(20), sem.wait_async())
            .await
            .is_err()
    });
    if !timed_out {
        return Err("the wait took a count that no one posted".into());
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let ops = captured();
        let ends: Vec<_> = ops.iter().filter(|o| o.kind == "sem_wait_end").collect();
        match ends[..] {
            [end] if end.result == -i64::from(libc::ECANCELED) => return Ok(()),
            [] if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return Err(format!("traced: {ops:?}")),
        }
    }
}

/// The threads of this process now.
fn threads() -> Result<usize, String> {
    std::fs::read_dir("/proc/self/task")
        .map(Iterator::count)
        .map_err(|e| format!("/proc/self/task: {e}"))
}

fn many_waiting_receives(name: &str, n: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let before = threads()?;
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut rx = Receiver::builder(format!("{name}-{i}"))
                .create()
                .map_err(|e| e.to_string())?
                .into_async();
            tasks.push(tokio::spawn(
                async move { timeout(PATIENCE, rx.recv()).await },
            ));
        }
        // Time for every receive to find its channel empty and sleep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let added = threads()? - before;
        let ready = Semaphore::builder(format!("{name}-ready"))
            .create()
            .map_err(|e| e.to_string())?;
        ready.post().map_err(|e| e.to_string())?;
        for (i, task) in (0..n).zip(tasks) {
            match task.await {
                Ok(Ok(Ok(msg))) if msg == i.to_le_bytes() => {}
                other => return Err(format!("receive {i}: {other:?}")),
            }
        }
        // One watcher thread sleeps for up to 127 waits; the blocking pool
        // took one thread per wait.
        if added > 2 {
            return Err(format!("{added} threads added while {n} receives waited"));
        }
        Ok(())
    })
}

/// A task that counts 2 ms ticks: proof that the runtime thread is free.
fn ticker() -> Arc<AtomicU64> {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    ticks
}

#[tokio::test(flavor = "current_thread")]
async fn wait_async_leaves_the_runtime_free_until_another_process_posts() {
    let name = unique_name("aio-sem");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).create().unwrap();
    let ticks = ticker();
    let mut child = spawn("sem-post-after", &name, "300");
    let permit = timeout(PATIENCE, sem.wait_async())
        .await
        .expect("the child's post arrives")
        .unwrap();
    // 300 ms of 2 ms ticks, with ample slack for a loaded machine: a wait
    // that blocked the only runtime thread would leave this at 0 or 1.
    let n = ticks.load(Ordering::Relaxed);
    assert!(n >= 20, "only {n} ticks while waiting");
    assert!(wait_bounded(&mut child, PATIENCE).success());
    assert_eq!(sem.holders().len(), 1);
    drop(permit);
    assert_eq!(sem.count(), 1);
    // The fast path: a count is there, so no thread hop is needed.
    let again = sem.wait_async().await.unwrap();
    again.forget();
    assert_eq!(sem.count(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_wait_async_takes_no_count() {
    let name = unique_name("aio-cancel");
    let _g = NameGuard(name.clone());
    let sem = Semaphore::builder(&name).create().unwrap();
    assert!(timeout(Duration::from_millis(30), sem.wait_async())
        .await
        .is_err());
    sem.post().unwrap();
    // The dropped wait took nothing and left no waiter behind to take
    // the count later.
    assert_eq!(sem.count(), 1);
    assert!(sem.holders().is_empty());
    assert!(sem.try_wait().is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn async_ends_exchange_messages_with_blocking_processes() {
    // A child sends; we receive asynchronously.
    let name = unique_name("aio-recv");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name)
        .capacity(16 * 1024)
        .max_message_size(1000)
        .create()
        .unwrap()
        .into_async();
    let ticks = ticker();
    let n = 3000u64;
    let mut child = spawn("send-n", &name, &format!("{n},1000"));
    for i in 0..n {
        let got = timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, pattern(i, size_of_msg(i, 1000)), "message {i}");
    }
    assert!(matches!(
        timeout(PATIENCE, rx.recv()).await.unwrap(),
        Err(RecvError::Disconnected)
    ));
    assert!(wait_bounded(&mut child, PATIENCE).success());
    assert!(ticks.load(Ordering::Relaxed) > 0);

    // We send asynchronously into a small channel, so sends wait for room;
    // the child checks every message.
    let name = unique_name("aio-send");
    let _g = NameGuard(name.clone());
    let mut tx = Sender::builder(&name)
        .capacity(4 * 1024)
        .max_message_size(500)
        .create()
        .unwrap()
        .into_async();
    let mut child = spawn("recv-verify-n", &name, &format!("{n},500"));
    for i in 0..n {
        timeout(PATIENCE, tx.send(pattern(i, size_of_msg(i, 500))))
            .await
            .unwrap()
            .unwrap();
    }
    drop(tx);
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_recv_loses_no_message() {
    let name = unique_name("aio-recv-cancel");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap().into_async();
    let mut tx = Sender::builder(&name).open().unwrap();
    let n = 40u64;
    // Messages sent around the moment receives are dropped: each lands in
    // the channel or in a wait that was abandoned, never nowhere.
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(i % 7));
            tx.send(&i.to_le_bytes()).unwrap();
        }
    });
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while (got.len() as u64) < n && tokio::time::Instant::now() < deadline {
        let short = Duration::from_millis(got.len() as u64 % 4);
        if let Ok(r) = timeout(short, rx.recv()).await {
            got.push(u64::from_le_bytes(r.unwrap().try_into().unwrap()));
        }
    }
    sender.join().unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

/// Issue 18: a waiting async receive held a blocking-pool thread.
#[test]
fn sixty_four_async_receives_wait_at_once_without_a_thread_each() {
    let name = unique_name("aio-many");
    let n = 64;
    let mut child = spawn("many-async-recvs", &name, &n.to_string());
    let ready = open_when_ready(|| Semaphore::builder(format!("{name}-ready")).open());
    ready.wait_timeout(PATIENCE).unwrap().forget();
    for i in 0..n {
        let mut tx = open_sender(&format!("{name}-{i}"));
        tx.send(&u64::to_le_bytes(i)).unwrap();
    }
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_send_sent_nothing() {
    let name = unique_name("aio-send-cancel");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name)
        .capacity(4096)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut tx = Sender::builder(&name).open().unwrap().into_async();
    // Fill the channel: the send that finds no room is dropped.
    let mut sent = 0u64;
    while let Ok(r) = timeout(
        Duration::from_millis(20),
        tx.send(sent.to_le_bytes().to_vec()),
    )
    .await
    {
        r.unwrap();
        sent += 1;
    }
    // Room now, for the dropped send too, had it been kept somewhere.
    for i in 0..sent {
        assert_eq!(rx.try_recv().unwrap(), i.to_le_bytes());
    }
    assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    tx.send(b"after".to_vec()).await.unwrap();
    assert_eq!(rx.try_recv().unwrap(), b"after");
}

#[test]
fn an_abandoned_async_wait_ends_and_is_traced_as_cancelled() {
    let name = unique_name("aio-cancel-trace");
    let _g = NameGuard(name.clone());
    let _sem = Semaphore::builder(&name).create().unwrap();
    let mut child = spawn("sem-drop-async-wait", &name, "");
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

/// `send_value`/`recv_value` existed only on the blocking ends (issue
/// 18): typed values through the async ends, and a message that is not
/// one a decode error naming its id, after which the channel goes on.
#[tokio::test(flavor = "current_thread")]
async fn async_ends_send_and_receive_typed_values() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Job {
        id: u32,
        path: String,
    }
    let name = unique_name("aio-typed");
    let _g = NameGuard(name.clone());
    let mut rx = Receiver::builder(&name).create().unwrap().into_async();
    let mut tx = Sender::builder(&name).open().unwrap().into_async();
    for id in 0..100 {
        let job = Job {
            id,
            path: format!("/jobs/{id}"),
        };
        timeout(PATIENCE, tx.send_value(&job))
            .await
            .unwrap()
            .unwrap();
        let got: Job = timeout(PATIENCE, rx.recv_value()).await.unwrap().unwrap();
        assert_eq!(got, job);
    }
    let not_a_job = tx.send(vec![0xff; 3]).await.unwrap();
    match timeout(PATIENCE, rx.recv_value::<Job>()).await.unwrap() {
        Err(RecvError::Decode { msg_id, .. }) => assert_eq!(msg_id, not_a_job),
        other => panic!("{other:?}"),
    }
    tx.send_value(&Job {
        id: 7,
        path: "/x".into(),
    })
    .await
    .unwrap();
    let got: Job = rx.recv_value().await.unwrap();
    assert_eq!(got.id, 7);
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_consumer_takes_jobs_pushed_while_it_waits_and_a_dropped_wait_takes_none() {
    use ipc_lib::queue::{Consumer, Producer};
    let name = unique_name("aio-queue");
    let _g = NameGuard(name.clone());
    let mut producer = Producer::builder(&name)
        .capacity(8)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut consumer = Consumer::builder(&name).open().unwrap().into_async();
    // A wait given up before any job came took none: the job pushed
    // next is the next one handed out, on its first delivery.
    assert!(timeout(Duration::from_millis(30), consumer.next())
        .await
        .is_err());
    producer.push(b"first").unwrap();
    let job = timeout(PATIENCE, consumer.next()).await.unwrap().unwrap();
    assert_eq!((job.payload(), job.deliveries()), (&b"first"[..], 1));
    job.ack().unwrap();
    // A job pushed from another thread while the consumer sleeps.
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        producer.push(b"second").unwrap();
        producer
    });
    let job = timeout(PATIENCE, consumer.next()).await.unwrap().unwrap();
    assert_eq!(job.payload(), b"second");
    job.ack().unwrap();
    drop(pusher.join().unwrap());
}
