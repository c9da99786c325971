//! `ipcscope demo`: a built-in multi-process workload on ipc-lib, recorded
//! like any other command.
//!
//! The recorder runs `ipcscope __demo` (the *conductor*), which starts every
//! role as a process of its own (`ipcscope __demo-role ROLE`), lets them run
//! until it is told to stop (SIGTERM from the recorder, or `--duration`),
//! then stops them. Roles die with the conductor (`PR_SET_PDEATHSIG`), so a
//! killed demo leaves no strays; the IPC names carry the conductor's pid so
//! two demos never meet.

use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use ipc_lib::channel::{Mode, Receiver, RecvError, SendError, Sender, WhenFull};

/// One process of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Sends paced bursts of jobs into the shared-memory job channel.
    Producer,
    /// Takes jobs from the job channel.
    Consumer,
}

/// What the conductor starts: two producers feeding one consumer.
const ROLES: &[Role] = &[Role::Consumer, Role::Producer, Role::Producer];

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

/// The names one demo's IPC objects share.
fn name(demo: u32, object: &str) -> String {
    format!("ipcscope-demo-{demo}-{object}")
}

/// Runs the conductor: every role, until stopped or `duration` is up.
pub fn conduct(duration: Option<Duration>) -> Result<ExitCode> {
    install_stop_handlers();
    let demo = std::process::id();
    let exe = std::env::current_exe().context("finding the ipcscope executable")?;
    // The consumer creates the job channel; the producers retry opening it.
    let mut children: Vec<(Role, Child)> = Vec::new();
    for &role in ROLES {
        let child = Command::new(&exe)
            .arg("__demo-role")
            .arg(
                role.to_possible_value()
                    .expect("roles have names")
                    .get_name(),
            )
            .arg(demo.to_string())
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
    for (_, child) in &mut children {
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for (role, child) in &mut children {
        let status = child.wait()?;
        if !status.success() && failed.is_empty() {
            failed.push(format!("{role:?} exited with {status}"));
        }
    }
    let _ = ipc_lib::channel::remove(&name(demo, "jobs"));
    if !failed.is_empty() {
        bail!("the demo workload failed: {}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one role until the conductor stops it.
pub fn play(role: Role, demo: u32) -> Result<()> {
    install_stop_handlers();
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Named after the role, so every view of the demo tells them apart.
    let comm = std::ffi::CString::new(format!(
        "demo-{}",
        role.to_possible_value()
            .expect("roles have names")
            .get_name()
    ))
    .expect("role names have no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel keeps
    // its first 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    if std::os::unix::process::parent_id() != demo {
        // The conductor died before we set the flag.
        return Ok(());
    }
    match role {
        Role::Producer => producer(demo),
        Role::Consumer => consumer(demo),
    }
}

/// Sends bursts of jobs: a few hundred at a time, then a pause, so latency
/// and throughput have some shape to show.
fn producer(demo: u32) -> Result<()> {
    let name = name(demo, "jobs");
    let mut tx = retry_open(|| Sender::builder(&name).when_full(WhenFull::Block).open())?;
    let mut job = [0u8; 256];
    let mut n: u64 = 0;
    while !stopping() {
        let burst = 200 + (n % 7) * 100;
        for _ in 0..burst {
            job[..8].copy_from_slice(&n.to_le_bytes());
            let size = 32 + (n % 8) as usize * 28;
            match tx.send(&job[..size]) {
                Ok(_) => n += 1,
                Err(SendError::Disconnected) if stopping() => return Ok(()),
                Err(e) => return Err(e).context("sending a job"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn consumer(demo: u32) -> Result<()> {
    let name = name(demo, "jobs");
    let mut rx = Receiver::builder(&name)
        .mode(Mode::Mpsc)
        .capacity(256 * 1024)
        .max_message_size(4096)
        .create()
        .with_context(|| format!("creating the job channel {name}"))?;
    while !stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(_) | Err(RecvError::Timeout) => {}
            // The producers stopped first: they were told to at the same
            // moment, and a failing one says so through its own status.
            Err(RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e).context("receiving a job"),
        }
    }
    Ok(())
}

/// Opens an object another role creates, waiting for it to appear.
fn retry_open<T, E: std::error::Error + Send + Sync + 'static>(
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(v) => return Ok(v),
            Err(_) if Instant::now() < deadline && !stopping() => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e).context("opening a demo object"),
        }
    }
}
