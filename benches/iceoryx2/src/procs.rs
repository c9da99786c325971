//! The processes of a run: the orchestrator starts a driver per run, the
//! driver starts its peer; each is this program again.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{floor, iox, ipclib, Run, Subject};

pub const DRIVER: &str = "--driver";
pub const PEER: &str = "--peer";

/// The longest any process of a run, or any wait for the other process,
/// may take before it counts as hung.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// ipc-lib traces into a recorder named by this variable; these runs are
/// untraced, also when the bench itself runs under `ipcscope record`.
const SOCKET_ENV: &str = "IPCSCOPE_SOCKET";

/// Runs `run` in a fresh driver process; returns its figures.
pub fn run_driver(run: &Run, name: &str) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = Command::new(exe)
        .arg(DRIVER)
        .args(run.args())
        .arg(name)
        .env_remove(SOCKET_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the driver")?;
    // One short line: it fits the pipe, so the driver never blocks on it
    // and is waited for before the line is read.
    wait_bounded(&mut child).context("the driver")?;
    let mut line = String::new();
    child
        .stdout
        .take()
        .context("the driver's stdout")?
        .read_to_string(&mut line)
        .context("reading the driver's figures")?;
    line.split_whitespace()
        .map(|f| f.parse::<f64>().with_context(|| format!("figure {f:?}")))
        .collect()
}

/// Pins the driver to a CPU (see [`pin_from_env`]).
const DRIVER_CPU_ENV: &str = "IPCSCOPE_BENCH_DRIVER_CPU";
/// Pins the peer to a CPU.
const PEER_CPU_ENV: &str = "IPCSCOPE_BENCH_PEER_CPU";

/// `--driver RUN NAME`: measures the run and prints its figures.
pub fn driver_main(args: &[String]) -> Result<()> {
    die_with_parent()?;
    pin_from_env(DRIVER_CPU_ENV)?;
    let (run, name) = parse(args)?;
    // A traced run would measure the tracer too.
    ensure!(
        !ipc_lib::trace::enabled(),
        "ipc-lib is tracing ({SOCKET_ENV} is set)"
    );
    let figures = match run.subject {
        Subject::IpcLib | Subject::IpcLibZeroCopy => ipclib::drive(&run, name)?,
        Subject::IoxCopy | Subject::IoxZeroCopy => iox::drive(&run, name)?,
        Subject::Floor => floor::drive(&run, name)?,
    };
    let figures: Vec<String> = figures.iter().map(f64::to_string).collect();
    println!("{}", figures.join(" "));
    Ok(())
}

/// `--peer RUN NAME`: the driver's other end.
pub fn peer_main(args: &[String]) -> Result<()> {
    die_with_parent()?;
    pin_from_env(PEER_CPU_ENV)?;
    let (run, name) = parse(args)?;
    match run.subject {
        Subject::IpcLib | Subject::IpcLibZeroCopy => ipclib::peer(&run, name),
        Subject::IoxCopy | Subject::IoxZeroCopy => iox::peer(&run, name),
        Subject::Floor => floor::peer(&run, name),
    }
}

fn parse(args: &[String]) -> Result<(Run, &str)> {
    let Some((name, run)) = args.split_last() else {
        bail!("expected RUN NAME");
    };
    Ok((Run::parse(run)?, name))
}

/// A driver killed for hanging cannot kill its peer, which may be spinning
/// on a core: the kernel does it.
fn die_with_parent() -> Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    ensure!(
        r == 0,
        "prctl(PR_SET_PDEATHSIG): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Pins this process to the CPU that `var` names, if it is set: blocking
/// runs depend on whether the scheduler puts the two processes on one CPU
/// or on two, which it otherwise chooses afresh for every run.
fn pin_from_env(var: &str) -> Result<()> {
    let Ok(value) = std::env::var(var) else {
        return Ok(());
    };
    let cpu: usize = value
        .parse()
        .with_context(|| format!("{var}={value:?}: not a CPU number"))?;
    ensure!(
        cpu < libc::CPU_SETSIZE as usize,
        "{var}={cpu}: beyond the CPU set"
    );
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside
    // it (cpu checked against its size above); sched_setaffinity reads
    // exactly size_of::<cpu_set_t>() bytes of it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        r == 0,
        "{var}={cpu}: sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The driver's peer process, killed if the driver gives up on it.
pub struct Peer(Option<Child>);

impl Peer {
    pub fn start(run: &Run, name: &str) -> Result<Peer> {
        let exe = std::env::current_exe().context("finding this program")?;
        let child = Command::new(exe)
            .arg(PEER)
            .args(run.args())
            .arg(name)
            .stdin(Stdio::null())
            // The driver's stdout carries its figures.
            .stdout(Stdio::null())
            .spawn()
            .context("starting the peer")?;
        Ok(Peer(Some(child)))
    }

    pub fn wait(mut self) -> Result<()> {
        let mut child = self.0.take().context("the peer was waited for already")?;
        wait_bounded(&mut child).context("the peer")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits at most [`PATIENCE`] for `child`; one that fails or hangs is an
/// error (and a hung one is killed).
fn wait_bounded(child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "exited with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {PATIENCE:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits at most [`PATIENCE`] for `ready` to hold, as the other process
/// sets up its end.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        ensure!(Instant::now() < deadline, "{what}: not after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
