//! Opens that wait for their creator (issue 18): an opener started before
//! the process that creates its object, an open whose creator never comes,
//! and an object found half made by its creator; blocking and async.

use std::any::Any;
use std::ffi::CString;
use std::future::Future;
use std::io::Read;
use std::time::{Duration, Instant};

use ipc_lib::broadcast::{Publisher, Subscriber};
use ipc_lib::queue::{Consumer, Producer};
use ipc_lib::region::{self, Region};
use ipc_lib::rpc::{Client, Server};
use ipc_lib::sem::Semaphore;
use ipc_lib::socket::{SocketReceiver, SocketSender};
use ipc_lib::{OpenError, Receiver, Sender, DEFAULT_OPEN_WAIT};

use crate::support::{spawn, unique_name, wait_bounded, Hostile, NameGuard, PATIENCE};

/// How long after it starts the late creator creates its object.
const LATE: Duration = Duration::from_millis(300);

/// The child's side of these tests (see `child::play`).
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    let e = |e: OpenError| e.to_string();
    match role {
        // Sleeps LATE, creates an object of kind ARG, and holds it until
        // the parent closes our stdin.
        "patient-create-late" => {
            std::thread::sleep(LATE);
            let held: Box<dyn std::any::Any> = match arg {
                "channel" => Box::new(Receiver::builder(name).create().map_err(e)?),
                "region" => Box::new(Region::builder(name).size(4096).create().map_err(e)?),
                "sem" => Box::new(Semaphore::builder(name).create().map_err(e)?),
                "socket" => Box::new(SocketReceiver::builder(name).create().map_err(e)?),
                "rpc" => Box::new(Server::builder(name).create().map_err(e)?),
                other => return Err(format!("unknown kind {other:?}")),
            };
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
            Ok(())
        }
        // Opens region NAME with the default wait and checks what its
        // creator wrote.
        "patient-open-region" => {
            let r = Region::builder(name).open().map_err(e)?;
            let v: u64 = r.read_value(0).map_err(|e| e.to_string())?;
            match (r.len(), v) {
                (4096, 42) => Ok(()),
                other => Err(format!("region of {} bytes holding {v}", other.0)),
            }
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

/// Starts a creator of `kind` that creates it LATE after it starts, opens
/// it at once with `open` (the default wait), and checks the open waited
/// for it.
fn open_before_creator<T>(kind: &str, open: impl FnOnce(&str) -> Result<T, OpenError>) {
    let name = unique_name(&format!("patient-{kind}"));
    let _g = NameGuard(name.clone());
    let mut creator = spawn("patient-create-late", &name, kind);
    let started = Instant::now();
    let opened = open(&name);
    let waited = started.elapsed();
    drop(creator.stdin.take());
    let status = wait_bounded(&mut creator, PATIENCE);
    if let Err(e) = opened {
        panic!("{kind}: open failed after {waited:?}: {e}");
    }
    assert!(status.success(), "{kind}: creator failed");
    // The creator sleeps LATE before creating: the open began first.
    assert!(waited >= LATE, "{kind}: opened after {waited:?}");
}

#[test]
fn a_channel_sender_opened_before_its_creator_waits_for_it() {
    open_before_creator("channel", |n| Sender::builder(n).open());
}

#[test]
fn a_region_opened_before_its_creator_waits_for_it() {
    open_before_creator("region", |n| Region::builder(n).open());
}

#[test]
fn a_semaphore_opened_before_its_creator_waits_for_it() {
    open_before_creator("sem", |n| Semaphore::builder(n).open());
}

#[test]
fn a_socket_sender_opened_before_its_receiver_waits_for_it() {
    open_before_creator("socket", |n| SocketSender::builder(n).open());
}

#[test]
fn an_rpc_client_connecting_before_its_server_waits_for_it() {
    open_before_creator("rpc", Client::connect);
}

#[test]
fn an_open_whose_creator_never_comes_says_what_and_how_long() {
    let wait = Duration::from_millis(400);
    type Open = fn(&str, Duration) -> Result<(), OpenError>;
    let opens: [(&str, Open); 6] = [
        ("sender", |n, w| Sender::builder(n).wait(w).open().map(drop)),
        ("receiver", |n, w| {
            Receiver::builder(n).wait(w).open().map(drop)
        }),
        ("region", |n, w| Region::builder(n).wait(w).open().map(drop)),
        ("sem", |n, w| Semaphore::builder(n).wait(w).open().map(drop)),
        ("socket", |n, w| {
            SocketSender::builder(n).wait(w).open().map(drop)
        }),
        ("rpc", |n, w| Client::connect_timeout(n, w).map(drop)),
    ];
    for (kind, open) in opens {
        let name = unique_name(&format!("patient-never-{kind}"));
        let started = Instant::now();
        let err = open(&name, wait).unwrap_err();
        let took = started.elapsed();
        match &err {
            OpenError::NotFound { name: n, waited } if *n == name && *waited == wait => {}
            other => panic!("{kind}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&name) && msg.contains("400ms"),
            "{kind}: {msg}"
        );
        assert!(took >= wait, "{kind}: gave up after {took:?}");
        // Which wait applied (the builder's, not the default), not speed.
        assert!(took < DEFAULT_OPEN_WAIT, "{kind}: gave up after {took:?}");
    }
}

/// Makes `name` as a creator does first: the name alone, empty, mode
/// 0600; returns its descriptor, for sizing it later.
fn bare_object(name: &str) -> std::fs::File {
    use std::os::fd::FromRawFd;
    let path = CString::new(format!("/{name}")).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::shm_open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

#[test]
fn a_region_found_half_made_is_waited_for_until_its_creator_finishes() {
    let name = unique_name("patient-half");
    let _g = NameGuard(name.clone());
    let file = bare_object(&name);
    let mut opener = spawn("patient-open-region", &name, "");
    // The opener finds the name with no bytes, then bytes and no header.
    // The header comes later than the old fixed wait for it (2 s), within
    // the default wait (5 s).
    std::thread::sleep(LATE);
    file.set_len((region::HEADER_SIZE + 4096) as u64).unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    let h = Hostile::map(&name);
    h.write_u64(region::HEADER_SIZE, 42);
    h.write_u64(8, u64::from(region::LAYOUT_VERSION));
    h.write_u64(16, 4096);
    h.write_u64(24, region::HEADER_SIZE as u64);
    // Last, as a creator does: the magic says the header is complete.
    h.write_u64(0, region::MAGIC);
    assert!(wait_bounded(&mut opener, PATIENCE).success());
}

#[test]
fn an_object_its_creator_never_finishes_is_not_initialized_after_the_wait() {
    let name = unique_name("patient-unfinished");
    let _g = NameGuard(name.clone());
    let file = bare_object(&name);
    // Longer than the old fixed wait for a header (2 s): the builder's
    // wait is what bounds it now.
    let wait = Duration::from_millis(2500);
    let channel = std::thread::spawn({
        let name = name.clone();
        move || Sender::builder(&name).wait(wait).open().map(drop)
    });
    // Sized, but its header never comes.
    std::thread::sleep(LATE);
    file.set_len(4096 + region::HEADER_SIZE as u64).unwrap();
    let err = Region::builder(&name).wait(wait).open().unwrap_err();
    assert!(
        matches!(&err, OpenError::NotInitialized { name: n, waited } if *n == name && *waited == wait),
        "{err:?}"
    );
    let err = channel.join().unwrap().unwrap_err();
    assert!(
        matches!(&err, OpenError::NotInitialized { waited, .. } if *waited == wait),
        "{err:?}"
    );
}

/// A runtime with one thread: whatever blocks it stops every task.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `open` and, on the same runtime thread, a creator that makes the
/// object LATE after it starts: an async open that blocked its thread
/// would keep the creator from ever running, and give up (`NotFound`).
/// `Send`, as a future `tokio::spawn` takes must be.
fn open_async_before_creator<T, F>(kind: &str, open: F, create: impl FnOnce() -> Box<dyn Any>)
where
    F: Future<Output = Result<T, OpenError>> + Send,
{
    let (opened, created) = one_thread().block_on(async {
        let creator = async {
            tokio::time::sleep(LATE).await;
            create()
        };
        let (opened, created) = tokio::join!(open, creator);
        (opened.map(drop), created)
    });
    drop(created);
    if let Err(e) = opened {
        panic!("{kind}: async open failed: {e}");
    }
}

#[test]
fn async_opens_wait_for_their_creator_without_blocking_the_runtime() {
    let n = |kind: &str| unique_name(&format!("patient-async-{kind}"));
    let name = n("sender");
    open_async_before_creator("sender", Sender::builder(&name).open_async(), || {
        Box::new(Receiver::builder(&name).create().unwrap())
    });
    let name = n("receiver");
    open_async_before_creator("receiver", Receiver::builder(&name).open_async(), || {
        Box::new(Sender::builder(&name).create().unwrap())
    });
    let name = n("region");
    open_async_before_creator("region", Region::builder(&name).open_async(), || {
        Box::new(Region::builder(&name).size(64).create().unwrap())
    });
    let name = n("sem");
    open_async_before_creator("sem", Semaphore::builder(&name).open_async(), || {
        Box::new(Semaphore::builder(&name).create().unwrap())
    });
    let name = n("consumer");
    open_async_before_creator("consumer", Consumer::builder(&name).open_async(), || {
        Box::new(Producer::builder(&name).create().unwrap())
    });
    let name = n("producer");
    open_async_before_creator("producer", Producer::builder(&name).open_async(), || {
        Box::new(Consumer::builder(&name).create().unwrap())
    });
    let name = n("subscriber");
    open_async_before_creator(
        "subscriber",
        Subscriber::builder(&name).open_async(),
        || Box::new(Publisher::builder(&name).create().unwrap()),
    );
    // The socket opens also wait for the receiver's greeting, on the
    // reactor.
    let name = n("socket");
    open_async_before_creator("socket", SocketSender::builder(&name).open_async(), || {
        Box::new(SocketReceiver::builder(&name).create().unwrap())
    });
    let name = n("rpc");
    open_async_before_creator("rpc", Client::connect_async(&name), || {
        Box::new(Server::builder(&name).create().unwrap())
    });
}

#[test]
fn an_async_rpc_client_connecting_before_its_server_process_waits_for_it() {
    open_before_creator("rpc", |n| one_thread().block_on(Client::connect_async(n)));
}

#[test]
fn an_async_open_whose_creator_never_comes_fails_as_the_blocking_one_does() {
    let wait = Duration::from_millis(400);
    let name = |kind: &str| unique_name(&format!("patient-async-never-{kind}"));
    let (names, results) = one_thread().block_on(async {
        let names = [
            name("sender"),
            name("region"),
            name("sem"),
            name("consumer"),
            name("subscriber"),
            name("socket"),
            name("rpc"),
        ];
        let started = Instant::now();
        // All at once, on one thread: each gives up on its own wait.
        let results = tokio::join!(
            Sender::builder(&names[0]).wait(wait).open_async(),
            Region::builder(&names[1]).wait(wait).open_async(),
            Semaphore::builder(&names[2]).wait(wait).open_async(),
            Consumer::builder(&names[3]).wait(wait).open_async(),
            Subscriber::builder(&names[4]).wait(wait).open_async(),
            SocketSender::builder(&names[5]).wait(wait).open_async(),
            Client::connect_timeout_async(&names[6], wait),
        );
        let took = started.elapsed();
        assert!(took >= wait, "gave up after {took:?}");
        assert!(took < DEFAULT_OPEN_WAIT, "gave up after {took:?}");
        let results = [
            results.0.map(drop),
            results.1.map(drop),
            results.2.map(drop),
            results.3.map(drop),
            results.4.map(drop),
            results.5.map(drop),
            results.6.map(drop),
        ];
        (names, results)
    });
    for (name, r) in names.iter().zip(results) {
        match r {
            Err(OpenError::NotFound { name: n, waited }) if n == *name && waited == wait => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    // A zero wait fails at once, as `open`'s does.
    let name = name("zero");
    let r = one_thread().block_on(Sender::builder(&name).wait(Duration::ZERO).open_async());
    assert!(matches!(r, Err(OpenError::NotFound { .. })), "{r:?}");
}

#[test]
fn an_async_open_of_an_object_never_finished_is_not_initialized_after_the_wait() {
    let name = unique_name("patient-async-unfinished");
    let _g = NameGuard(name.clone());
    let file = bare_object(&name);
    file.set_len(4096 + region::HEADER_SIZE as u64).unwrap();
    let wait = Duration::from_millis(2500);
    let (channel, region) = one_thread().block_on(async {
        tokio::join!(
            Sender::builder(&name).wait(wait).open_async(),
            Region::builder(&name).wait(wait).open_async(),
        )
    });
    for err in [
        channel.map(drop).unwrap_err(),
        region.map(drop).unwrap_err(),
    ] {
        assert!(
            matches!(&err, OpenError::NotInitialized { name: n, waited } if *n == name && *waited == wait),
            "{err:?}"
        );
    }
}

#[test]
fn an_async_open_outside_a_runtime_is_an_error_not_a_panic() {
    let name = unique_name("patient-async-no-runtime");
    let open = Sender::builder(&name).open_async();
    let mut open = std::pin::pin!(open);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match open.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(OpenError::Os { .. })) => {}
        other => panic!("{other:?}"),
    }
}
