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
mod ebpf_waits;
mod faults;
mod lib_trace;
mod record;
mod tui;

use std::path::Path;
use std::process::{Command, Output};

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

/// `query --format json` parsed.
pub fn query(db: &Path, sql: &str) -> serde_json::Value {
    let out = run(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
        sql,
    ]);
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
