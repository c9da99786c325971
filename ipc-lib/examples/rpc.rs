//! A server process and a client doing request/response.
//!
//! ```text
//! cargo run -p ipc-lib --example rpc -- --calls 10000
//! ```
//!
//! The client starts the server (this program again, with a hidden
//! `--serve NAME`), makes N calls, each a job of a few numbers, checks every
//! answer against its own computation of it, and prints the round-trip
//! times. It exits 0 only when every answer was right and the server, which
//! counts the calls it answered, agrees on their number.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::OpenError;
use ipc_lib::rpc::{Client, Server};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Request/response between a client and a server process")]
struct Args {
    /// How many calls to make.
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Run as the server under this name (the client passes it).
    #[arg(long, hide = true)]
    serve: Option<String>,
}

/// A request: sum and fold these numbers.
#[derive(Serialize, Deserialize)]
struct Job {
    seq: u64,
    numbers: Vec<u32>,
}

/// The answer: which job, the sum and a running hash of the numbers.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Answer {
    seq: u64,
    sum: u64,
    hash: u64,
}

fn work(job: &Job) -> Answer {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for n in &job.numbers {
        hash = (hash ^ u64::from(*n)).wrapping_mul(0x100_0000_01b3);
    }
    Answer {
        seq: job.seq,
        sum: job.numbers.iter().map(|n| u64::from(*n)).sum(),
        hash,
    }
}

fn job(seq: u64) -> Job {
    let len = (seq % 32) as usize;
    Job {
        seq,
        numbers: (0..len as u64)
            .map(|k| (seq.wrapping_mul(2_654_435_761) ^ k) as u32)
            .collect(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.serve {
        Some(name) => serve(name, args.calls),
        None => client(args.calls),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = if args.serve.is_some() {
                "server"
            } else {
                "client"
            };
            eprintln!("rpc ({role}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(name: &str, calls: u64) -> Result<()> {
    let mut server = Server::builder(name)
        .create()
        .with_context(|| format!("creating server {name:?}"))?;
    let answered = server.serve_values(|j: Job| work(&j)).context("serving")?;
    if answered != calls {
        bail!("answered {answered} calls, the client said it would make {calls}");
    }
    Ok(())
}

fn client(calls: u64) -> Result<()> {
    let name = format!("rpc-example-{}", std::process::id());
    let exe = std::env::current_exe().context("finding this program")?;
    let mut server = Command::new(exe)
        .args(["--serve", &name, "--calls", &calls.to_string()])
        .spawn()
        .context("starting the server")?;
    let connected = connect(&name);
    let result = connected.and_then(|mut c| run(&mut c, calls));
    // The server ends when we leave (our client is dropped by now);
    // bounded, in case it hangs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.try_wait().context("waiting for the server")? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            bail!("the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    result?;
    if !status.success() {
        bail!("the server failed: {status}");
    }
    Ok(())
}

/// Connects once the server is up (it may still be starting).
fn connect(name: &str) -> Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(name) {
            Ok(c) => return Ok(c),
            Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e).context("connecting to the server"),
        }
    }
}

fn run(client: &mut Client, calls: u64) -> Result<()> {
    let mut rtt = Vec::with_capacity(calls as usize);
    for seq in 0..calls {
        let job = job(seq);
        let t = Instant::now();
        let answer: Answer = client
            .call_value(&job, Duration::from_secs(10))
            .with_context(|| format!("call {seq}"))?;
        rtt.push(t.elapsed());
        let want = work(&job);
        if answer != want {
            bail!("call {seq}: got {answer:?}, expected {want:?}");
        }
    }
    rtt.sort_unstable();
    let pct = |p: usize| rtt.get((rtt.len() * p / 100).min(rtt.len().saturating_sub(1)));
    if let (Some(p50), Some(p99)) = (pct(50), pct(99)) {
        println!(
            "{calls} calls, every answer correct; round trip p50 {:.1} us, p99 {:.1} us",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
