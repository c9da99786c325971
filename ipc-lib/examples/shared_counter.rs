//! Several processes incrementing one counter in a shared region, under a
//! semaphore used as a lock.
//!
//! ```text
//! cargo run -p ipc-lib --example shared_counter -- --procs 4 --increments 10000
//! ```
//!
//! The parent creates the region and the semaphore (count 1) and starts
//! `--procs` workers (this program again, with a hidden `--worker NAME`).
//! Each worker does `--increments` plain read-then-write increments of the
//! counter, each under the semaphore: the increment itself is not atomic,
//! so only the lock makes the total exact. The parent prints
//! `final count: X` and exits 0 only when X is procs * increments and every
//! worker succeeded.

use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::region::Region;
use ipc_lib::sem::Semaphore;

/// How long a worker waits for the lock before it gives up: far longer
/// than any holder keeps it, so only a hang reaches it.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "N processes increment a shared counter under a semaphore")]
struct Args {
    /// How many worker processes.
    #[arg(long, default_value_t = 4)]
    procs: u32,
    /// Increments per worker.
    #[arg(long, default_value_t = 10_000)]
    increments: u64,
    /// Run as a worker on the objects with this name (the parent passes
    /// it).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.worker {
        Some(name) => work(name, args.increments),
        None => run(args.procs, args.increments),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let role = if args.worker.is_some() {
                "worker"
            } else {
                "parent"
            };
            eprintln!("shared_counter ({role}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn region_name(name: &str) -> String {
    format!("{name}-counter")
}

fn run(procs: u32, increments: u64) -> Result<bool> {
    let expected = u64::from(procs)
        .checked_mul(increments)
        .context("procs * increments overflows a u64")?;
    let name = format!("shared-counter-{}", std::process::id());
    // Both names go when the parent is done; the workers have exited by
    // then (or were killed below).
    let sem = Semaphore::builder(&name)
        .initial(1)
        .unlink_on_drop(true)
        .create()
        .with_context(|| format!("creating semaphore {name}"))?;
    let counter = Region::builder(region_name(&name))
        .size(8)
        .unlink_on_drop(true)
        .create()
        .with_context(|| format!("creating region {}", region_name(&name)))?;

    let exe = std::env::current_exe().context("finding this program's path")?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..procs {
        let child = Command::new(&exe)
            .args(["--worker", &name])
            .args(["--increments", &increments.to_string()])
            .spawn()
            .with_context(|| format!("starting worker {i}"));
        match child {
            Ok(c) => workers.push(c),
            Err(e) => {
                kill_all(&mut workers);
                return Err(e);
            }
        }
    }
    let mut all_ok = true;
    for (i, w) in workers.iter_mut().enumerate() {
        let status = w
            .wait()
            .with_context(|| format!("waiting for worker {i}"))?;
        if !status.success() {
            eprintln!(
                "shared_counter: worker {i} (pid {}) failed: {status}",
                w.id()
            );
            all_ok = false;
        }
    }
    let elapsed = started.elapsed();
    let count: u64 = counter.read_value(0).context("reading the counter")?;
    println!("final count: {count}");
    if sem.owner_deaths() > 0 {
        eprintln!(
            "shared_counter: {} lock holder(s) died holding it",
            sem.owner_deaths()
        );
    }
    eprintln!(
        "{expected} increments by {procs} processes in {:.1} ms ({:.0} ns per increment)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / expected.max(1) as f64
    );
    if count != expected {
        eprintln!("shared_counter: expected {expected}");
    }
    Ok(all_ok && count == expected)
}

fn kill_all(workers: &mut [Child]) {
    for w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

fn work(name: &str, increments: u64) -> Result<bool> {
    let sem = Semaphore::builder(name)
        .open()
        .with_context(|| format!("opening semaphore {name}"))?;
    let counter = Region::builder(region_name(name))
        .size(8)
        .open()
        .with_context(|| format!("opening region {}", region_name(name)))?;
    for i in 0..increments {
        let lock = sem
            .wait_timeout(LOCK_PATIENCE)
            .with_context(|| format!("taking the lock for increment {i}"))?;
        // A read and a separate write: without the lock, two workers would
        // read the same value and one increment would be lost.
        let v: u64 = counter.read_value(0)?;
        counter.write_value(0, v + 1)?;
        lock.release()?;
    }
    if increments > 0 && sem.count() > 1 {
        bail!("the lock's count is {}, more than one", sem.count());
    }
    Ok(true)
}
