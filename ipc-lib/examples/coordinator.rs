//! A coordinator waiting on several things at once: a results channel its
//! workers send on, and the workers' exits.
//!
//! ```text
//! cargo run -p ipc-lib --example coordinator -- --workers 4 --items 1000
//! ```
//!
//! The coordinator creates a multi-producer results channel, starts W
//! workers (this program again, with a hidden `--worker NAME`), each of
//! which sends I results and exits; a worker given `--crash-one` exits
//! early, without its results. One `Select` waits on the channel and
//! every live worker's exit: a result is counted, an exit is reaped and
//! reported at once (no polling, no thread per worker). It exits 0 when
//! every worker exited cleanly and every result came.

use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::{Mode, Receiver, RecvError, Sender};
use ipc_lib::select::{Process, Select, SelectError, Source};

#[derive(Parser)]
struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Results each worker sends.
    #[arg(long, default_value_t = 1000)]
    items: u64,
    /// The last worker exits with status 3 before sending anything.
    #[arg(long)]
    crash_one: bool,
    #[arg(long, hide = true)]
    worker: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    index: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match &args.worker {
        Some(name) => worker(name, &args),
        None => coordinate(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn worker(name: &str, args: &Args) -> Result<()> {
    ipc_lib::set_role(&format!("worker-{}", args.index));
    if args.crash_one && args.index + 1 == args.workers {
        std::process::exit(3);
    }
    let mut tx = Sender::builder(name).open()?;
    for i in 0..args.items {
        tx.send_value(&(args.index, i))?;
    }
    Ok(())
}

struct Worker {
    child: Child,
    exit: Process,
    index: u32,
}

fn coordinate(args: &Args) -> Result<()> {
    ipc_lib::set_role("coordinator");
    let name = format!("coordinator-results-{}", std::process::id());
    let mut results = Receiver::builder(&name).mode(Mode::Mpsc).create()?;
    let exe = std::env::current_exe()?;
    let mut workers = (0..args.workers)
        .map(|index| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--worker", &name, "--index", &index.to_string()])
                .args(["--workers", &args.workers.to_string()])
                .args(["--items", &args.items.to_string()]);
            if args.crash_one {
                cmd.arg("--crash-one");
            }
            let child = cmd.spawn().context("starting a worker")?;
            let exit = Process::from_child(&child)?;
            Ok(Worker { child, exit, index })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut received = 0u64;
    let mut failed = Vec::new();
    let mut select = Select::new();
    // Between one worker leaving the channel and the next attaching, the
    // channel reads Disconnected, which is "ready" for ever: it is left
    // out of the wait until the next exit (whose worker's messages, if
    // any, are then read).
    let mut quiet = false;
    loop {
        // The channel first (unless quiet), then every live worker.
        let first_worker = usize::from(!quiet);
        let ready = {
            let mut sources: Vec<Source<'_>> = Vec::new();
            if !quiet {
                sources.push((&mut results).into());
            }
            sources.extend(workers.iter().map(|w| Source::from(&w.exit)));
            match select.wait(&mut sources, Some(Duration::from_secs(20))) {
                Ok(i) => i,
                Err(SelectError::Timeout) => bail!("nothing happened for 20 s"),
                Err(e) => return Err(e.into()),
            }
        };
        if ready < first_worker {
            match results.try_recv_value::<(u32, u64)>() {
                Ok(_) => received += 1,
                Err(RecvError::Disconnected) => quiet = true,
                Err(RecvError::Empty) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        quiet = false;
        let mut w = workers.swap_remove(ready - first_worker);
        // Exited: the wait reaps it without blocking.
        let status = w.child.wait()?;
        println!("worker-{} (pid {}) exited: {status}", w.index, w.exit.pid());
        if !status.success() {
            failed.push(w.index);
        }
        if workers.is_empty() {
            // What the last ones sent before exiting is still in the ring.
            while results.try_recv_value::<(u32, u64)>().is_ok() {
                received += 1;
            }
            break;
        }
    }
    let expected = u64::from(args.workers - failed.len() as u32) * args.items;
    println!("{received} results of {expected} expected; workers failed: {failed:?}");
    if received != expected {
        bail!("{received} results, expected {expected}");
    }
    if !failed.is_empty() && !args.crash_one {
        bail!("workers {failed:?} failed");
    }
    Ok(())
}
