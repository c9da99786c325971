//! Two processes over a shared-memory channel.
//!
//! ```text
//! cargo run -p ipc-lib --example producer_consumer -- --messages 100000 --size 64
//! ```
//!
//! The producer creates the channel, starts a consumer (this program again,
//! with a hidden `--consumer NAME`), and sends N messages of BYTES bytes
//! whose content is derived from their index. The consumer checks every
//! message's content and order and reports through its exit status; the
//! producer exits 0 only when the consumer says all N arrived intact.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::{layout::frame_size, OpenError, Receiver, RecvError, SendError, Sender};

#[derive(Parser)]
#[command(about = "Send N messages to a consumer process over a shared-memory channel")]
struct Args {
    /// How many messages to send.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Sleep this many microseconds after each message: a steady rate the
    /// recorder keeps up with, for runs that must lose no event.
    #[arg(long, default_value_t = 0)]
    pause_us: u64,
    /// Send this many messages a second, on a fixed schedule (a late
    /// message is followed at once by the next): a sustained load for soaks.
    #[arg(long, conflicts_with = "pause_us")]
    rate: Option<u64>,
    /// Run as the consumer of this channel (the producer passes it).
    #[arg(long, hide = true)]
    consumer: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.consumer {
        Some(name) => consume(name, args.messages, args.size),
        None => produce(
            args.messages,
            args.size,
            match args.rate {
                Some(rate) => Pace::Rate(rate.max(1)),
                None => Pace::Pause(Duration::from_micros(args.pause_us)),
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = if args.consumer.is_some() {
                "consumer"
            } else {
                "producer"
            };
            eprintln!("producer_consumer ({role}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Message `i`: its index, then words from a generator seeded by it, so a
/// message that is out of order, cut short or altered does not match.
fn fill(i: u64, buf: &mut [u8]) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&i.to_le_bytes()[..n]);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf[n..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// How the producer spaces its messages.
enum Pace {
    /// This long after each (zero: back to back).
    Pause(Duration),
    /// Messages a second, each due at its slot in a fixed schedule.
    Rate(u64),
}

fn produce(messages: u64, size: usize, pace: Pace) -> Result<()> {
    let name = format!("producer-consumer-{}", std::process::id());
    // The name must outlive our end: with few or small messages we may be
    // done, and closed, before the consumer has even opened the channel. It
    // is removed once the consumer has exited instead.
    let mut tx = Sender::builder(&name)
        .capacity((1 << 20).max(frame_size(size) * 8))
        .max_message_size(size)
        .unlink_on_drop(false)
        .create()
        .with_context(|| format!("creating channel {name}"))?;
    let _remove = RemoveOnDrop(&name);

    let exe = std::env::current_exe().context("finding this program's path")?;
    let mut consumer = Command::new(exe)
        .args(["--consumer", &name])
        .args(["--messages", &messages.to_string()])
        .args(["--size", &size.to_string()])
        .spawn()
        .context("starting the consumer")?;

    let started = Instant::now();
    let mut msg = vec![0u8; size];
    for i in 0..messages {
        fill(i, &mut msg);
        // Waits in slices so a consumer that never attaches (it failed to
        // start) ends the run instead of hanging it.
        loop {
            match tx.send_timeout(&msg, Duration::from_millis(200)) {
                Ok(_) => break,
                Err(SendError::Timeout) => {
                    if let Some(status) = consumer.try_wait()? {
                        bail!("consumer exited ({status}) after {i} messages were sent");
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("sending message {i}")),
            }
        }
        match pace {
            Pace::Pause(pause) if !pause.is_zero() => std::thread::sleep(pause),
            Pace::Pause(_) => {}
            Pace::Rate(rate) => {
                let due = started + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
                if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(ahead);
                }
            }
        }
    }
    // Closing our end is how the consumer learns the stream is complete.
    drop(tx);
    let status = consumer.wait().context("waiting for the consumer")?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("consumer reported failure ({status})");
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{messages} messages of {size} bytes delivered intact in {:.1} ms \
         ({:.0} msg/s, {:.1} MB/s)",
        secs * 1e3,
        messages as f64 / secs,
        (messages as f64 * size as f64) / secs / 1e6,
    );
    Ok(())
}

struct RemoveOnDrop<'a>(&'a str);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = ipc_lib::channel::remove(self.0);
    }
}

fn consume(name: &str, messages: u64, size: usize) -> Result<()> {
    let mut rx = Receiver::builder(name).open().map_err(|e| match e {
        OpenError::NotFound { .. } => anyhow::anyhow!("channel {name} is gone"),
        e => e.into(),
    })?;
    let mut got = Vec::with_capacity(size);
    let mut want = vec![0u8; size];
    for i in 0..messages {
        rx.recv_into(&mut got, Some(Duration::from_secs(30)))
            .with_context(|| format!("receiving message {i} of {messages}"))?;
        fill(i, &mut want);
        if got != want {
            bail!(
                "message {i} differs: {} bytes, expected {size}{}",
                got.len(),
                if got.len() == size {
                    " with other content"
                } else {
                    ""
                }
            );
        }
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Err(RecvError::Disconnected) => Ok(()),
        Ok(extra) => bail!("an extra message of {} bytes after {messages}", extra.len()),
        Err(e) => Err(e).context("waiting for the producer to close"),
    }
}
