//! `ipcscope demo`: a built-in multi-process workload on ipc-lib, recorded
//! like any other command.
//!
//! The recorder runs `ipcscope __demo` (the *conductor*), which starts every
//! role as a process of its own (`ipcscope __demo-role ROLE`), lets them run
//! until it is told to stop (SIGTERM from the recorder, or `--duration`),
//! then stops them. Every role that acts on a peer plays one round at
//! least, so even `--duration 0` shows every kind of IPC. Roles die with
//! the conductor (`PR_SET_PDEATHSIG`), so a killed demo leaves no strays;
//! the IPC names carry the conductor's pid so two demos never meet.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use ipc_lib::channel::{Mode, Receiver, RecvError, SendError, Sender, WhenFull};
use ipc_lib::rpc::{CallError, Client, Server};
use ipc_lib::sem::WaitError;
use ipc_lib::signal::{self, SignalError, Signals, SIGUSR1};
use ipc_lib::socket::{SocketReceiver, SocketSender};
use ipc_lib::transport::{MessageReceiver, MessageSender};
use ipc_lib::{Region, Semaphore};

/// One process of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Sends paced bursts of jobs into the shared-memory job channel.
    Producer,
    /// Takes jobs from the job channel.
    Consumer,
    /// Sends status updates over a Unix-socket channel.
    Reporter,
    /// Collects the status updates.
    Collector,
    /// Answers requests (request/response over a socket).
    Server,
    /// Calls the server.
    Client,
    /// Increments a shared counter under a semaphore.
    Counter,
    /// Waits for signals.
    Listener,
    /// Signals the listener.
    Signaller,
    /// Takes lock A, then lock B.
    LockerA,
    /// Takes lock B, then lock A: with `LockerA`, a deadlock.
    LockerB,
}

/// What the conductor starts, in order: whoever creates an object comes
/// before those that open it.
const ROLES: &[Role] = &[
    Role::Consumer,
    Role::Producer,
    Role::Producer,
    Role::Collector,
    Role::Reporter,
    Role::Server,
    Role::Client,
    Role::Counter,
    Role::Counter,
    Role::Counter,
    Role::Listener,
    Role::Signaller,
];

/// Added with `--deadlock`.
const DEADLOCKERS: &[Role] = &[Role::LockerA, Role::LockerB];

/// Every shared-memory object the demo creates, removed when it ends.
const SHM_OBJECTS: &[&str] = &["jobs", "counter", "counter-lock", "lock-a", "lock-b"];

/// Set by SIGTERM/SIGINT: time to stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

fn install_stop_handlers() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
}

/// The stop signals, blocked or not in the calling thread.
fn stop_signals(how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use; all three
    // calls are async-signal-safe, so this may run between fork and exec.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// A role told to stop before the object it opens appeared waits this long
/// for it (its peer is still starting), to play its one round; past it,
/// the peer is taken to have gone, and the role leaves without a round.
const STOPPED_GRACE: Duration = Duration::from_secs(3);

/// The names one demo's IPC objects share.
fn name(demo: u32, object: &str) -> String {
    format!("ipcscope-demo-{demo}-{object}")
}

/// Runs the conductor: every role, until stopped or `duration` is up.
pub fn conduct(
    duration: Option<Duration>,
    deadlock: bool,
    truth: Option<&Path>,
) -> Result<ExitCode> {
    install_stop_handlers();
    let demo = std::process::id();
    let exe = std::env::current_exe().context("finding the ipcscope executable")?;
    let mut children: Vec<(Role, Child)> = Vec::new();
    let roles = ROLES.iter().chain(if deadlock { DEADLOCKERS } else { &[] });
    for &role in roles {
        let mut command = Command::new(&exe);
        command
            .arg("__demo-role")
            .arg(role_name(role))
            .arg(demo.to_string());
        if let Some(truth) = truth {
            command.arg("--truth").arg(truth);
        }
        // A role is stopped with SIGTERM, which kills a process that has
        // no handler yet: one stopped at once (`--duration 0`, or a stop
        // as it starts) would die of it. It starts with the stop signals
        // blocked, so one sent early waits until `run_role` has its
        // handler in place and unblocks them.
        // SAFETY: the closure only calls async-signal-safe functions.
        unsafe {
            command.pre_exec(|| stop_signals(libc::SIG_BLOCK));
        }
        if role == Role::Signaller {
            // The listener was started just before it.
            let listener = children
                .iter()
                .find(|(r, _)| *r == Role::Listener)
                .map(|(_, c)| c.id())
                .context("the signaller needs its listener")?;
            command.arg(listener.to_string());
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the demo's {role:?}"))?;
        children.push((role, child));
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    while !stopping() && duration.is_none_or(|d| started.elapsed() < d) {
        for (role, child) in &mut children {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    failed.push(format!("{role:?} exited with {status}"));
                }
            }
        }
        if !failed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Those that act on a peer stop first, and are gone before their peers
    // are told: a server that stopped first would fail its client's call
    // in flight, a listener that did would fail the signaller's kill.
    for first in [true, false] {
        for (role, child) in children.iter().filter(|(r, _)| acts_on_peer(*r) == first) {
            // Deadlocked processes cannot act on a polite request.
            let signal = match role {
                Role::LockerA | Role::LockerB => libc::SIGKILL,
                _ => libc::SIGTERM,
            };
            // SAFETY: kill has no memory effects; the pid is our unreaped
            // child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
        for (role, child) in children
            .iter_mut()
            .filter(|(r, _)| acts_on_peer(*r) == first)
        {
            let status = child.wait()?;
            let deadlocked = matches!(role, Role::LockerA | Role::LockerB);
            if !status.success() && !deadlocked && failed.is_empty() {
                failed.push(format!("{role:?} exited with {status}"));
            }
        }
    }
    for object in SHM_OBJECTS {
        let _ = ipc_lib::remove(&name(demo, object));
    }
    if !failed.is_empty() {
        bail!("the demo workload failed: {}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `role` calls, sends to or signals another role (which must
/// outlive it), rather than only answering or receiving.
fn acts_on_peer(role: Role) -> bool {
    !matches!(
        role,
        Role::Consumer | Role::Collector | Role::Server | Role::Listener
    )
}

fn role_name(role: Role) -> String {
    role.to_possible_value()
        .expect("roles have names")
        .get_name()
        .to_owned()
}

/// What one role did, by its own count: the workload's truth, to check a
/// recording against.
#[derive(Debug, Default, serde::Serialize)]
struct Tally {
    role: String,
    pid: u32,
    /// The demo object it used (`jobs`, `status`, `squares`, ...).
    object: &'static str,
    /// Messages (or RPC requests and replies) it sent and received.
    sent: u64,
    received: u64,
    /// Semaphore acquisitions.
    acquired: u64,
    /// Signals it sent, and signals it received.
    signals_sent: u64,
    signals_received: u64,
}

impl Tally {
    fn new(object: &'static str) -> Tally {
        Tally {
            object,
            ..Tally::default()
        }
    }
}

/// Runs one role until the conductor stops it; with `truth`, appends
/// what it did there as one JSON line.
pub fn play(role: Role, demo: u32, peer: Option<u32>, truth: Option<&Path>) -> Result<()> {
    let tally = run_role(role, demo, peer)?;
    let Some(path) = truth else {
        return Ok(());
    };
    let line = serde_json::to_string(&Tally {
        role: role_name(role),
        pid: std::process::id(),
        ..tally
    })?;
    // One write of a whole line to a file opened for appending: the
    // roles' lines never interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .with_context(|| format!("writing the demo's truth to {}", path.display()))
}

fn run_role(role: Role, demo: u32, peer: Option<u32>) -> Result<Tally> {
    install_stop_handlers();
    // Blocked by the conductor until now (see `conduct`): a stop sent
    // already is taken here, by the handler.
    stop_signals(libc::SIG_UNBLOCK).context("unblocking the stop signals")?;
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if std::os::unix::process::parent_id() != demo {
        // The conductor died before we set the flag.
        return Ok(Tally::default());
    }
    // Named after the role, so every view of the demo tells them apart.
    let comm = std::ffi::CString::new(format!("demo-{}", role_name(role)))
        .expect("role names have no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel keeps
    // its first 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    match role {
        Role::Producer => producer(demo),
        Role::Consumer => consumer(demo),
        Role::Reporter => reporter(demo),
        Role::Collector => collector(demo),
        Role::Server => server(demo),
        Role::Client => client(demo),
        Role::Counter => counter(demo),
        Role::Listener => listener(),
        Role::Signaller => signaller(peer.context("the signaller needs the listener's pid")?),
        Role::LockerA => locker(demo, "lock-a", "lock-b"),
        Role::LockerB => locker(demo, "lock-b", "lock-a"),
    }
}

/// Sends bursts of jobs: a few hundred at a time, then a pause, so latency
/// and throughput have some shape to show.
fn producer(demo: u32) -> Result<Tally> {
    let name = name(demo, "jobs");
    let mut tally = Tally::new("jobs");
    let Some(mut tx) = retry_open(|| {
        Sender::builder(&name)
            .when_full(WhenFull::Block)
            .wait(Duration::ZERO)
            .open()
    })?
    else {
        return Ok(tally);
    };
    let mut job = [0u8; 256];
    // Every role that acts does one round at least, however soon it is
    // stopped: a demo of any duration shows every kind of IPC.
    loop {
        let n = tally.sent;
        let burst = 200 + (n % 7) * 100;
        for _ in 0..burst {
            let n = tally.sent;
            job[..8].copy_from_slice(&n.to_le_bytes());
            let size = 32 + (n % 8) as usize * 28;
            match tx.send(&job[..size]) {
                Ok(_) => tally.sent += 1,
                Err(SendError::Disconnected) if stopping() => return Ok(tally),
                Err(e) => return Err(e).context("sending a job"),
            }
        }
        if stopping() {
            return Ok(tally);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn consumer(demo: u32) -> Result<Tally> {
    let name = name(demo, "jobs");
    let mut rx = Receiver::builder(&name)
        .mode(Mode::Mpsc)
        .capacity(256 * 1024)
        .max_message_size(4096)
        .create()
        .with_context(|| format!("creating the job channel {name}"))?;
    drain(&mut rx, "a job", "jobs")
}

/// Status updates over a socket channel: a steady trickle.
fn reporter(demo: u32) -> Result<Tally> {
    let name = name(demo, "status");
    let mut tally = Tally::new("status");
    let Some(mut tx) = retry_open(|| SocketSender::builder(&name).wait(Duration::ZERO).open())?
    else {
        return Ok(tally);
    };
    loop {
        let update = format!("status {}: all good", tally.sent);
        match tx.send(update.as_bytes()) {
            Ok(_) => tally.sent += 1,
            Err(SendError::Disconnected) if stopping() => return Ok(tally),
            Err(e) => return Err(e).context("sending a status update"),
        }
        if stopping() {
            return Ok(tally);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn collector(demo: u32) -> Result<Tally> {
    let name = name(demo, "status");
    let mut rx = SocketReceiver::builder(&name)
        .create()
        .with_context(|| format!("creating the status channel {name}"))?;
    drain(&mut rx, "a status update", "status")
}

/// Receives until stopped; the senders leaving first is how a demo ends.
fn drain(rx: &mut impl MessageReceiver, what: &str, object: &'static str) -> Result<Tally> {
    let mut tally = Tally::new(object);
    while !stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(_) => tally.received += 1,
            Err(RecvError::Timeout) => {}
            Err(RecvError::Disconnected) => return Ok(tally),
            Err(e) => return Err(e).with_context(|| format!("receiving {what}")),
        }
    }
    Ok(tally)
}

/// Squares numbers, slowly enough to show in the latency.
fn server(demo: u32) -> Result<Tally> {
    let name = name(demo, "squares");
    let mut server = Server::builder(&name)
        .create()
        .with_context(|| format!("creating the rpc server {name}"))?;
    let mut tally = Tally::new("squares");
    while !stopping() {
        let request = match server.next_request(Some(Duration::from_millis(100))) {
            Ok(r) => r,
            Err(RecvError::Timeout | RecvError::Disconnected) => continue,
            Err(e) => return Err(e).context("taking a request"),
        };
        tally.received += 1;
        let x: u64 = request.value().context("decoding a request")?;
        server
            .reply_value(&request, &x.wrapping_mul(x))
            .context("replying")?;
        tally.sent += 1;
    }
    Ok(tally)
}

fn client(demo: u32) -> Result<Tally> {
    let name = name(demo, "squares");
    let mut tally = Tally::new("squares");
    let Some(mut client) = retry_open(|| Client::connect_timeout(&name, Duration::ZERO))? else {
        return Ok(tally);
    };
    loop {
        let x = tally.received;
        match client.call_value::<u64, u64>(&x, Duration::from_secs(2)) {
            Ok(y) if y == x.wrapping_mul(x) => {
                tally.sent += 1;
                tally.received += 1;
            }
            Ok(y) => bail!("asked for {x} squared, got {y}"),
            Err(CallError::Disconnected) if stopping() => return Ok(tally),
            Err(e) => return Err(e).context("calling the server"),
        }
        if stopping() {
            return Ok(tally);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A read-modify-write of a shared counter that only the lock makes exact.
fn counter(demo: u32) -> Result<Tally> {
    let mut tally = Tally::new("counter-lock");
    let region = retry_open(|| {
        Region::builder(name(demo, "counter"))
            .size(8)
            .open_or_create()
    })?;
    let lock = retry_open(|| {
        Semaphore::builder(name(demo, "counter-lock"))
            .initial(1)
            .open_or_create()
    })?;
    let (Some(region), Some(lock)) = (region, lock) else {
        return Ok(tally);
    };
    loop {
        // The timeout only bounds how long a stop goes unnoticed: on a
        // loaded machine the other counters can hold the lock past it.
        match lock.wait_timeout(Duration::from_millis(100)) {
            Ok(held) => {
                tally.acquired += 1;
                let n: u64 = region.read_value(0).context("reading the counter")?;
                // Hold the lock a little, so the others wait for it.
                std::thread::sleep(Duration::from_micros(200));
                region
                    .write_value(0, n + 1)
                    .context("writing the counter")?;
                drop(held);
            }
            Err(WaitError::Timeout) => {}
            Err(e) => return Err(anyhow::anyhow!("taking the counter lock: {e}")),
        }
        if stopping() {
            return Ok(tally);
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

fn listener() -> Result<Tally> {
    let mut signals = Signals::new(&[SIGUSR1]).context("listening for SIGUSR1")?;
    let mut tally = Tally::new("signals");
    // One round at least: a demo stopped at once still waits for the
    // first signal, as long as the signaller waits for this handler. (A
    // listener that left at the stop was gone before a loaded machine
    // let the signaller see it catch SIGUSR1: no signal at all.)
    let started = Instant::now();
    while !stopping() || (tally.signals_received == 0 && started.elapsed() < STOPPED_GRACE) {
        match signals.recv_timeout(Duration::from_millis(100)) {
            Ok(_) => tally.signals_received += 1,
            Err(SignalError::Timeout) => {}
            Err(e) => return Err(e).context("waiting for a signal"),
        }
    }
    Ok(tally)
}

fn signaller(listener: u32) -> Result<Tally> {
    let mut tally = Tally::new("signals");
    // SIGUSR1 kills a process that does not catch it yet: wait until the
    // listener's handler is in place.
    let started = Instant::now();
    while !catches(listener, libc::SIGUSR1) {
        if stopping() && started.elapsed() > STOPPED_GRACE {
            return Ok(tally);
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the listener (pid {listener}) never started catching SIGUSR1");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        signal::send(listener, SIGUSR1).context("signalling the listener")?;
        tally.signals_sent += 1;
        if stopping() {
            return Ok(tally);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` has a handler for `signo` (its `SigCgt` mask).
fn catches(pid: u32, signo: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signo - 1)) != 0)
}

/// Takes `first`, waits for the other locker to take its own, then takes
/// `second`: in opposite orders, the two never get past this.
fn locker(demo: u32, first: &str, second: &str) -> Result<Tally> {
    let open = |object: &str| {
        retry_open(|| {
            Semaphore::builder(name(demo, object))
                .initial(1)
                .open_or_create()
        })
    };
    let (Some(first), Some(second)) = (open(first)?, open(second)?) else {
        return Ok(Tally::new("locks"));
    };
    let _holding = first.wait();
    // Until the other holds its own (a fixed pause was not enough on a
    // loaded machine: one locker took both before the other started, and
    // there was no deadlock). Reading the count is not traced.
    while second.count() > 0 && !stopping() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _both = second.wait();
    Ok(Tally::new("locks"))
}

/// Opens an object another role creates, waiting for it to appear: for
/// up to 10 s, or once the demo is stopping, [`STOPPED_GRACE`] (`None`: it
/// never did, and the role leaves without a round). Each `open` should try
/// once (`.wait(Duration::ZERO)`), so that a stop is noticed between tries.
fn retry_open<T, E: std::error::Error + Send + Sync + 'static>(
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<Option<T>> {
    let started = Instant::now();
    loop {
        match open() {
            Ok(v) => return Ok(Some(v)),
            Err(_) if stopping() && started.elapsed() > STOPPED_GRACE => return Ok(None),
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e).context("opening a demo object"),
        }
    }
}
