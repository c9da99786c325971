//! Typed ends between two processes: a dispatcher sends `Job`s, a worker
//! answers each with a `Done`, and neither touches a byte.
//!
//! ```text
//! cargo run -p ipc-lib --example typed_jobs -- --jobs 10000
//! cargo run -p ipc-lib --example typed_jobs -- --jobs 10000 --async
//! ```
//!
//! The dispatcher creates two channels (jobs out, results back), starts a
//! worker (this program again, with a hidden `--worker NAME`), sends N jobs
//! and checks every answer; with `--async` its ends are the tokio ones.
//! It exits 0 only when all N answers came back right.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::{Receiver, RecvError, Sender, TypedReceiver, TypedSender};
use serde::{Deserialize, Serialize};

/// How long the dispatcher waits for any one answer: a worker that died
/// before it opened the results channel would otherwise never be noticed
/// (a receiver waits for a sender that has not come yet).
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u64,
    path: String,
    args: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Done {
    id: u64,
    /// Bytes of path and arguments: work the dispatcher can check.
    bytes: usize,
}

#[derive(Parser)]
#[command(about = "Send N typed jobs to a worker process and check its answers")]
struct Args {
    /// How many jobs to send.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// Use the async (tokio) ends in the dispatcher.
    #[arg(long = "async")]
    use_async: bool,
    /// Run as the worker on these channels (the dispatcher passes it).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.worker {
        Some(name) => work(name),
        None if args.use_async => dispatch_async(args.jobs),
        None => dispatch(args.jobs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("typed_jobs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn job(id: u64) -> Job {
    Job {
        id,
        path: format!("/var/spool/jobs/{id}"),
        args: (0..id % 4).map(|a| format!("--level={a}")).collect(),
    }
}

fn answer(job: &Job) -> Done {
    let bytes = job.path.len() + job.args.iter().map(String::len).sum::<usize>();
    Done { id: job.id, bytes }
}

/// The worker: answers every job until the dispatcher leaves.
fn work(name: &str) -> Result<()> {
    let mut jobs: TypedReceiver<Job> = Receiver::builder(format!("{name}-jobs"))
        .open()
        .context("opening the jobs channel")?
        .into_typed();
    let mut results: TypedSender<Done> = Sender::builder(format!("{name}-results"))
        .open()
        .context("opening the results channel")?
        .into_typed();
    loop {
        match jobs.recv() {
            Ok(job) => results.send(&answer(&job)).context("sending a result")?,
            Err(RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e).context("receiving a job"),
        };
    }
}

/// The channels' names, removed when the dispatcher is done, whichever way.
struct Names(String);

impl Drop for Names {
    fn drop(&mut self) {
        for end in ["jobs", "results"] {
            let _ = ipc_lib::remove(&format!("{}-{end}", self.0));
        }
    }
}

/// The two channels, created by the dispatcher, their names, and its
/// worker.
fn start() -> Result<(Sender, Receiver, Names, std::process::Child)> {
    let name = format!("typed-jobs-{}", std::process::id());
    let names = Names(name.clone());
    // Both names are kept until the dispatcher is done (`Names`): a
    // dispatcher with nothing left to do drops its ends at once, and the
    // names with them, maybe before the worker opened them.
    let jobs = Sender::builder(format!("{name}-jobs"))
        .unlink_on_drop(false)
        .create()
        .context("creating the jobs channel")?;
    let results = Receiver::builder(format!("{name}-results"))
        .unlink_on_drop(false)
        .create()
        .context("creating the results channel")?;
    let worker = Command::new(std::env::current_exe().context("finding this program")?)
        .args(["--worker", &name])
        .spawn()
        .context("starting the worker")?;
    Ok((jobs, results, names, worker))
}

fn check(i: u64, got: Done) -> Result<()> {
    let want = answer(&job(i));
    if got != want {
        bail!("answer {i} is {got:?}, not {want:?}");
    }
    Ok(())
}

fn finish(n: u64, mut worker: std::process::Child) -> Result<()> {
    let status = worker.wait().context("waiting for the worker")?;
    if !status.success() {
        bail!("the worker failed: {status}");
    }
    println!("{n} jobs, every answer correct");
    Ok(())
}

fn dispatch(n: u64) -> Result<()> {
    let (jobs, results, _names, worker) = start()?;
    let mut jobs: TypedSender<Job> = jobs.into_typed();
    let mut results: TypedReceiver<Done> = results.into_typed();
    // Jobs go out on their own thread: with both channels full, a
    // dispatcher that only sent would wait on a worker waiting on it.
    let sending = std::thread::spawn(move || -> Result<()> {
        for i in 0..n {
            jobs.send(&job(i)).context("sending a job")?;
        }
        Ok(())
    });
    for i in 0..n {
        let got = results.recv_timeout(PATIENCE);
        check(i, got.context("receiving an answer")?)?;
    }
    sending
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    finish(n, worker)
}

fn dispatch_async(n: u64) -> Result<()> {
    let (jobs, results, _names, worker) = start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async {
        let mut jobs: TypedSender<Job, _> = jobs.into_async().into_typed();
        let mut results: TypedReceiver<Done, _> = results.into_async().into_typed();
        let send = async {
            for i in 0..n {
                jobs.send(&job(i)).await.context("sending a job")?;
            }
            drop(jobs);
            anyhow::Ok(())
        };
        let receive = async {
            for i in 0..n {
                let got = tokio::time::timeout(PATIENCE, results.recv())
                    .await
                    .context("waiting for an answer")?;
                check(i, got.context("receiving an answer")?)?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(send, receive).map(|_| ())
    })?;
    finish(n, worker)
}
