//! A coordinator and N worker processes sharing one work queue.
//!
//! ```text
//! cargo run -p ipc-lib --example work_queue -- --workers 3 --jobs 10000 --crash
//! ```
//!
//! The coordinator creates the queue and a results channel, starts N
//! workers (this program again, with a hidden `--worker NAME`), pushes M
//! typed jobs (square a number) and one stop job per worker. Each worker
//! takes jobs, sends each result back, then acknowledges the job. With
//! `--crash`, the first worker is started alone and SIGKILLs itself
//! holding the first job, unacknowledged: the queue delivers that job
//! again to one of the others, and the coordinator still gets every
//! result. It exits 0 when every
//! number came back squared and every surviving worker succeeded.

use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::{Mode, Receiver, Sender};
use ipc_lib::queue::{Consumer, Producer};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Square M numbers in N worker processes fed by one shared-memory work queue")]
struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    /// Jobs to push.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// The first worker dies (SIGKILL) holding the first job (and counts
    /// among the workers).
    #[arg(long)]
    crash: bool,
    /// Run as a worker of this queue (the coordinator passes it).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum Task {
    Square(u64),
    Stop,
}

#[derive(Serialize, Deserialize)]
struct Done {
    n: u64,
    square: u64,
}

/// How long anyone waits for the other side before calling it stuck.
const PATIENCE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.worker {
        Some(name) => work(name, args.crash),
        None => coordinate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = if args.worker.is_some() {
                "worker"
            } else {
                "coordinator"
            };
            eprintln!("work_queue ({role}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn coordinate(args: &Args) -> Result<()> {
    ipc_lib::set_role("coordinator");
    let name = format!("ipclib-work-queue-example-{}", std::process::id());
    let mut queue = Producer::builder(&name)
        .capacity(256)
        .max_message_size(64)
        .create()
        .with_context(|| format!("creating queue {name}"))?;
    let mut results = Receiver::builder(format!("{name}-results"))
        .mode(Mode::Mpsc)
        .max_message_size(64)
        .create()
        .context("creating the results channel")?;
    let exe = std::env::current_exe().context("finding this program")?;
    let spawn = |crash: bool| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--worker", &name]);
        if crash {
            cmd.arg("--crash");
        }
        cmd.spawn().context("starting a worker")
    };
    let mut survivors = args.workers;
    if args.crash && args.jobs > 0 {
        // The crashing worker alone gets the first job, and dies with it
        // before the others start: the job is certainly redelivered.
        queue.push_value(&Task::Square(0))?;
        let status = spawn(true)?
            .wait()
            .context("waiting for the crashing worker")?;
        if status.success() {
            bail!("the crashing worker did not crash");
        }
        survivors = survivors.saturating_sub(1);
    }
    let mut workers: Vec<Child> = (0..survivors)
        .map(|_| spawn(false))
        .collect::<Result<_>>()?;
    let mut squared = vec![false; args.jobs as usize];
    // Whether `done` is a number's first result (a worker killed between
    // its result and its ack does the job twice; the result is the same).
    let mut first = |done: Done| -> Result<u64> {
        if done.n >= args.jobs || done.square != done.n * done.n {
            bail!("wrong result for {}: {}", done.n, done.square);
        }
        Ok(u64::from(!std::mem::replace(
            &mut squared[done.n as usize],
            true,
        )))
    };
    let mut received = 0;
    let first_pushed = u64::from(args.crash && args.jobs > 0);
    for n in first_pushed..args.jobs {
        queue.push_value(&Task::Square(n))?;
        while let Ok(done) = results.try_recv_value::<Done>() {
            received += first(done)?;
        }
    }
    while received < args.jobs {
        let done = results
            .recv_value_timeout(PATIENCE)
            .context("waiting for a result")?;
        received += first(done)?;
    }
    for _ in 0..survivors {
        queue.push_value(&Task::Stop)?;
    }
    let mut failed = 0;
    for w in &mut workers {
        if !w.wait().context("waiting for a worker")?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {survivors} workers failed");
    }
    let watcher = Consumer::builder(&name)
        .open()
        .context("opening the queue to read its counts")?;
    println!(
        "{} numbers squared by {} workers; {} jobs redelivered",
        args.jobs,
        args.workers,
        watcher.redelivered()
    );
    Ok(())
}

fn work(name: &str, crash: bool) -> Result<()> {
    ipc_lib::set_role(&format!("worker-{}", std::process::id()));
    let mut queue = Consumer::builder(name)
        .open()
        .with_context(|| format!("opening queue {name}"))?;
    let mut results = Sender::builder(format!("{name}-results"))
        .open()
        .context("opening the results channel")?;
    loop {
        let (job, task) = queue
            .next_value_timeout::<Task>(PATIENCE)
            .context("waiting for a job")?;
        let n = match task {
            Task::Stop => return job.ack().context("acknowledging the stop"),
            Task::Square(n) => n,
        };
        if crash {
            // SAFETY: kill(2) on our own pid, no memory involved; the
            // process ends here, holding `job` unacknowledged.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        results.send_value(&Done { n, square: n * n })?;
        job.ack().context("acknowledging a job")?;
    }
}
