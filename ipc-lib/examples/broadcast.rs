//! One publisher, N subscriber processes over a shared-memory broadcast.
//!
//! ```text
//! cargo run -p ipc-lib --example broadcast -- --subscribers 3 --messages 10000
//! ```
//!
//! The publisher creates the broadcast, starts N subscribers (this program
//! again, with a hidden `--subscriber NAME`), waits until each has joined
//! (they say so on a multi-producer channel, since subscribing writes
//! nothing the publisher could see), publishes M typed ticks and leaves.
//! Each subscriber checks the ticks' order, counts what it received and
//! what it was told it missed (a subscriber more than `--capacity` behind
//! lags), and succeeds when the two add up to M; the publisher exits 0
//! when every subscriber did.

use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::broadcast::{Publisher, RecvError, Start, Subscriber};
use ipc_lib::channel::{Mode, Receiver, Sender};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Publish M ticks to N subscriber processes over a shared-memory broadcast")]
struct Args {
    /// Subscriber processes.
    #[arg(long, default_value_t = 3)]
    subscribers: u32,
    /// Ticks to publish.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Ticks the broadcast holds: a subscriber further behind lags.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// Run as a subscriber of this broadcast (the publisher passes it).
    #[arg(long, hide = true)]
    subscriber: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Tick {
    seq: u64,
    note: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.subscriber {
        Some(name) => subscribe(name, args.messages),
        None => publish(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = if args.subscriber.is_some() {
                "subscriber"
            } else {
                "publisher"
            };
            eprintln!("broadcast ({role}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn publish(args: &Args) -> Result<()> {
    let name = format!("ipclib-broadcast-example-{}", std::process::id());
    let mut publisher = Publisher::builder(&name)
        .capacity(args.capacity)
        .max_message_size(256)
        .create()
        .with_context(|| format!("creating broadcast {name}"))?;
    let mut joined = Receiver::builder(format!("{name}-joined"))
        .mode(Mode::Mpsc)
        .max_message_size(16)
        .create()
        .context("creating the join channel")?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut children: Vec<Child> = (0..args.subscribers)
        .map(|_| {
            Command::new(&exe)
                .args(["--subscriber", &name, "--messages"])
                .arg(args.messages.to_string())
                .spawn()
                .context("starting a subscriber")
        })
        .collect::<Result<_>>()?;
    for _ in 0..args.subscribers {
        joined
            .recv_timeout(Duration::from_secs(20))
            .context("waiting for the subscribers to join")?;
    }
    for seq in 0..args.messages {
        publisher.publish_value(&Tick {
            seq,
            note: format!("tick {seq}"),
        })?;
    }
    // Leaving is what tells the subscribers the stream is over.
    drop(publisher);
    let mut failed = 0;
    for child in &mut children {
        if !child.wait().context("waiting for a subscriber")?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} subscribers failed", args.subscribers);
    }
    println!(
        "published {} ticks to {} subscribers",
        args.messages, args.subscribers
    );
    Ok(())
}

fn subscribe(name: &str, messages: u64) -> Result<()> {
    let mut sub = Subscriber::builder(name)
        .start(Start::Oldest)
        .open()
        .with_context(|| format!("subscribing to {name}"))?;
    // Kept until we leave: the publisher's join channel disconnects once
    // every sender that joined has left.
    let mut joined = Sender::builder(format!("{name}-joined"))
        .open()
        .context("opening the join channel")?;
    joined.send(b"joined")?;
    let (mut got, mut next) = (0u64, 0u64);
    loop {
        match sub.recv_value::<Tick>() {
            Ok(tick) => {
                if tick.seq < next || tick.note != format!("tick {}", tick.seq) {
                    bail!(
                        "tick {} out of order or altered (expected {next})",
                        tick.seq
                    );
                }
                next = tick.seq + 1;
                got += 1;
            }
            Err(RecvError::Lagged { .. }) => {}
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e).context("receiving"),
        }
    }
    let missed = sub.missed();
    println!(
        "subscriber {}: {got} ticks received, {missed} missed",
        std::process::id()
    );
    if got + missed != messages {
        bail!("{got} received and {missed} missed of {messages}");
    }
    Ok(())
}
