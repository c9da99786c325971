//! The `ipcscope` binary as a user runs it: real processes, real database
//! files and, where the machine allows (CI runs as root), the real probes.

mod bad_input;
mod demo;
mod ebpf_deadlocks;
mod ebpf_ipc;
mod ebpf_payload;
mod ebpf_queues;
mod ebpf_shm;
mod ebpf_targets;
mod ebpf_truth;
mod ebpf_waits;
mod faults;
mod hostile;
mod lib_trace;
mod real_server;
mod record;
mod redis;
mod retention;
mod security;
mod tui;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Held by the tests whose workload runs as fast as the CPU allows (the
/// demo, floods): each counts on the recorder keeping up, which on a
/// 2-core machine it cannot while another such workload runs beside it.
/// Those tests take turns; the rest still run in parallel.
static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn flood_turn() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked holding it leaves nothing to repair.
    FLOODS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Compiles C `source` into `dir` as `name` with the system's cc (gcc is
/// on every machine of this project's kind): unmodified workloads in C.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("cc runs");
    assert!(out.status.success(), "cc failed: {}", stderr(&out));
    exe
}

pub fn ipcscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipcscope"))
}

pub fn run(args: &[&str]) -> Output {
    ipcscope().args(args).output().expect("ipcscope runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `query --format json`, as it ran.
fn query_json(db: &Path, sql: &str) -> Output {
    run(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
        sql,
    ])
}

/// `query --format json` parsed.
pub fn query(db: &Path, sql: &str) -> serde_json::Value {
    let out = query_json(db, sql);
    assert!(out.status.success(), "query failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("query prints JSON")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Tests that need the probes: they run as root (CI always is) and fail
/// there; elsewhere they are skipped with a message, never passed silently.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{test}: CI must run as root so the eBPF tests run"
    );
    eprintln!("{test}: SKIPPED, not root (the eBPF probes need it)");
    false
}

/// An ipc-lib example, which `cargo build --examples` (run first by `cargo
/// xtask test`) puts beside this test binary (target/<profile>/examples).
/// Missing is a failure in CI, a skip with a message elsewhere.
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").is_err(),
        "{} not built: run `cargo build --examples` first, as `cargo xtask test` does",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} not built (cargo test --workspace builds it)",
        path.display()
    );
    None
}

/// `sql`'s first row, once the database answers it with `ready` true;
/// the recording may not have created the file, or committed, yet.
pub fn poll_row(
    db: &Path,
    sql: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
    patience: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + patience;
    loop {
        let out = query_json(db, sql);
        if out.status.success() {
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if ready(&rows[0]) {
                return rows[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: not ready after {patience:?}: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A recorder in a process group of its own, so that what it started can
/// be killed with it however it dies.
pub struct Recorder(pub Child);

impl Recorder {
    pub fn spawn(command: &mut Command) -> Recorder {
        Recorder(
            command
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("ipcscope runs"),
        )
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Reads the recorder's stderr (spawned with `Stdio::piped()`) as it
    /// comes, so that a chatty recorder never blocks on a full pipe; the
    /// thread ends when every holder of the pipe has closed it.
    pub fn read_stderr(&mut self) -> JoinHandle<String> {
        let mut pipe = self.0.stderr.take().expect("stderr was piped");
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
            err
        })
    }

    /// Waits for the recorder to end by itself.
    pub fn wait(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the recording still runs after {patience:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the group is the one the
        // recorder leads, which it keeps while this value lives.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Whether process `pid` is gone (a zombie waiting to be reaped counts).
pub fn gone(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// CLOCK_MONOTONIC now: the clock every event's `ts_ns` is on.
pub use collector::clock::monotonic_ns;
