//! A parent and two workers, each labelled with its role
//! (`ipc_lib::set_role`), that end in different ways: for checking what
//! `ipcscope record` knows of processes.
//!
//! ```text
//! cargo run -p ipc-lib --example roles
//! ```
//!
//! The parent (`parent`) starts this program twice more: `worker-1`
//! exits with status 3, `worker-2` says it is ready and waits until the
//! parent kills it with SIGKILL. The parent exits 0 when both ended so.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("--exit") => {
            ipc_lib::set_role("worker-1");
            return ExitCode::from(3);
        }
        Some("--hang") => hang(),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roles: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hang() -> Result<()> {
    ipc_lib::set_role("worker-2");
    println!("ready");
    loop {
        std::thread::park();
    }
}

fn parent() -> Result<()> {
    ipc_lib::set_role("parent");
    let me = std::env::current_exe().context("finding this program")?;
    let mut exits = Command::new(&me)
        .arg("--exit")
        .spawn()
        .context("starting worker-1")?;
    let mut hangs = Command::new(&me)
        .arg("--hang")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting worker-2")?;
    // Killed only once it has labelled itself.
    let mut line = String::new();
    let out = hangs.stdout.take().context("worker-2's stdout")?;
    BufReader::new(out)
        .read_line(&mut line)
        .context("waiting for worker-2")?;
    let first = exits.wait().context("waiting for worker-1")?;
    hangs.kill().context("killing worker-2")?;
    let second = hangs.wait().context("waiting for worker-2")?;
    if first.code() != Some(3) || second.signal() != Some(libc::SIGKILL) {
        bail!("workers ended as {first} and {second}, not 3 and SIGKILL");
    }
    Ok(())
}
