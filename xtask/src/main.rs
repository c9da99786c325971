//! Project automation: `cargo xtask <setup|build|test|demo>`.
//!
//! A fresh machine of the project's kind has Rust (stable and nightly) but
//! not what the eBPF half needs: the nightly `rust-src` component, LLVM 22
//! headers and bpf-linker built against them, and a mounted tracefs. Every
//! command here first runs `setup`, which installs only what is missing, so
//! the README's two commands work on a new machine and cost seconds on a
//! prepared one.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "ipcscope's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, nightly rust-src,
    /// bpf-linker on LLVM 22) and mount tracefs. Idempotent.
    Setup,
    /// Setup, then build everything in release mode, the eBPF object included.
    Build,
    /// Setup, then the whole check: rustfmt, clippy (host and eBPF) and every
    /// test. What CI runs.
    Test,
    /// Setup, build, then `ipcscope demo --deadlock`: a multi-process ipc-lib
    /// workload recorded and shown live on the dashboard (`q` quits). The
    /// main job, end to end.
    Demo {
        /// More arguments for `ipcscope demo`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Debian packages: LLVM 22 and its link dependencies for bpf-linker, and
/// the tools the test suite drives (python3 and cc for the unmodified IPC
/// workloads, sqlite3 to inspect, tmux for the TUI, stress-ng for real IPC
/// load, Redis and its benchmark as a real server nobody here wrote).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "python3",
    "gcc",
    "sqlite3",
    "tmux",
    "stress-ng",
    "redis-server",
    "redis-tools",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    match cli.task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Test => {
            setup()?;
            test()
        }
        Task::Demo { args } => {
            setup()?;
            build()?;
            demo(&args)
        }
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is xtask/; the workspace is its parent.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn setup() -> Result<()> {
    install_apt_packages()?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to the nightly toolchain (needed to build core for BPF)")?;
    install_bpf_linker()?;
    mount_tracefs()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command as root: directly when we are root, else through sudo.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

fn install_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let hint = || {
        format!(
            "installing apt packages failed; as root, run: apt-get update && apt-get install -y {}",
            missing.join(" ")
        )
    };
    run(privileged("apt-get").arg("update").arg("-qq")).with_context(hint)?;
    run(privileged("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(hint)
}

fn install_bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    // Without these it finds the system LLVM 14 and fails to link -lLLVM.
    let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        // --force replaces another version; the steps are PLATFORM.md's.
        .args([
            "install",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .context("building bpf-linker")
}

fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask: tracefs is not mounted at {TRACEFS}; the eBPF probes need it (as root: mount -t tracefs tracefs {TRACEFS})");
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
        .with_context(|| format!("mounting tracefs at {TRACEFS}"))
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release"])).context("building the workspace")
}

fn test() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))
        .context("rustfmt: run `cargo fmt --all`")?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        .context("clippy on the host crates")?;
    run(Command::new("cargo")
        .current_dir("probe-ebpf")
        .args([
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"]))
    .context("clippy on the eBPF crate")?;
    // The end-to-end tests run ipc-lib's examples by path; `cargo test`
    // builds them only under hashed names, `cargo build` under their own.
    run(Command::new("cargo").args(["build", "--examples"])).context("building the examples")?;
    let mut totals = TestTotals::default();
    cargo_test(&["--all-targets"], &mut totals).context("tests")?;
    // Doc examples are tests too; --all-targets leaves them out.
    cargo_test(&["--doc"], &mut totals).context("doc tests")?;
    // One closing line for the whole suite: the last test binary's own
    // summary may be a crate with no tests, which says nothing of the rest.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ARGS`, passing its output through while adding up the
/// `test result:` lines.
fn cargo_test(args: &[&str], totals: &mut TestTotals) -> Result<()> {
    let mut child = Command::new("cargo")
        .arg("test")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count_before(rest, " passed");
            totals.failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// The number just before `label` in "ok. 10 passed; 0 failed; ...".
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .find(label)
        .and_then(|end| summary[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

/// `ipcscope demo` on the dashboard: the built-in multi-process workload,
/// recorded live (eBPF too when root), with the two deadlocking processes;
/// `q` ends it. Extra arguments go to `ipcscope demo` (e.g. `--no-tui
/// --duration 10s`).
fn demo(args: &[String]) -> Result<()> {
    let ipcscope = Path::new("target/release/ipcscope");
    run(Command::new(ipcscope)
        .args(["demo", "--deadlock"])
        .args(args))
    .context("running the demo")?;
    eprintln!(
        "xtask: replay it with `{0} tui`, or ask `{0} report` and `{0} query \"select * from deadlocks\"`",
        ipcscope.display()
    );
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn reads_counts_from_a_cargo_summary() {
        let summary = "ok. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(summary, " passed"), 10);
        assert_eq!(count_before(summary, " failed"), 2);
        assert_eq!(count_before("FAILED. 3 passed; 1 failed;", " passed"), 3);
    }
}
