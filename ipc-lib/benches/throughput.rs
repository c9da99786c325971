//! Channel fast-path costs, single- and multi-producer, untraced:
//!
//! - `cost`: one thread sends a batch of 64-byte messages into an empty
//!   ring, then receives them; the time per send and per receive, with no
//!   other process and no cache line crossing cores, so changes to the
//!   protocol's instructions show apart from scheduling noise.
//! - `throughput`: sender processes (this binary again, `--peer`) send as
//!   fast as they can to the bench process, which receives: messages a
//!   second from the first message received to the last.
//!
//! ```text
//! cargo bench -p ipc-lib --bench throughput            # 5 rounds
//! cargo bench -p ipc-lib --bench throughput -- R       # R rounds
//! ```
//!
//! Each round runs every case once, in reverse order every other round;
//! the figures are medians over the rounds.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipc_lib::channel::{Mode, OpenError, Receiver, RecvError, Sender};

const CAPACITY: usize = 1 << 20;
const MAX: usize = 64 * 1024;
/// Messages per batch in `cost`: 64-byte messages take 96-byte frames, so
/// a batch fills about a tenth of the ring.
const BATCH: usize = 1000;
const COST_BATCHES: usize = 2000;

#[derive(Clone, Copy, Debug)]
enum Case {
    Cost(Mode),
    Throughput {
        mode: Mode,
        senders: usize,
        size: usize,
    },
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::Cost(mode) => format!("cost {}", mode_arg(mode)),
            Case::Throughput {
                mode,
                senders,
                size,
            } => format!("throughput {} {senders} sender(s) {size} B", mode_arg(mode)),
        }
    }
}

fn mode_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Spsc => "spsc",
        _ => "mpsc",
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![Case::Cost(Mode::Spsc), Case::Cost(Mode::Mpsc)];
    for size in [64, MAX] {
        for (mode, senders) in [(Mode::Spsc, 1), (Mode::Mpsc, 1), (Mode::Mpsc, 2)] {
            v.push(Case::Throughput {
                mode,
                senders,
                size,
            });
        }
    }
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--peer") => peer(&args[1..]),
        _ => orchestrate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn orchestrate(args: &[String]) -> Result<()> {
    let rounds = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let cases = cases();
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let name = format!("ipclib-bench-{}-{round}-{i}", std::process::id());
            let f = run(cases[i], &name).with_context(|| cases[i].label())?;
            results[i].push(f);
        }
    }
    println!("medians of {rounds} round(s)");
    for (case, figs) in cases.iter().zip(&results) {
        match case {
            Case::Cost(_) => println!(
                "{:<40} send {:>7.1} ns  recv {:>7.1} ns",
                case.label(),
                median(figs.iter().map(|f| f.a)),
                median(figs.iter().map(|f| f.b)),
            ),
            Case::Throughput { size, .. } => {
                let rate = median(figs.iter().map(|f| f.a));
                println!(
                    "{:<40} {:>10.0} msg/s  {:>8.1} MiB/s",
                    case.label(),
                    rate,
                    rate * *size as f64 / (1 << 20) as f64
                )
            }
        }
    }
    Ok(())
}

/// A case's two figures: ns per send and per receive (`cost`), or
/// messages a second (`throughput`, in `a`).
#[derive(Clone, Copy, Debug)]
struct Figures {
    a: f64,
    b: f64,
}

fn median(it: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = it.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn receiver(name: &str, mode: Mode) -> Result<Receiver> {
    Receiver::builder(name)
        .capacity(CAPACITY)
        .max_message_size(MAX)
        .mode(mode)
        .create()
        .context("creating the channel")
}

fn run(case: Case, name: &str) -> Result<Figures> {
    match case {
        Case::Cost(mode) => cost(name, mode),
        Case::Throughput {
            mode,
            senders,
            size,
        } => throughput(name, mode, senders, size),
    }
}

fn cost(name: &str, mode: Mode) -> Result<Figures> {
    let mut rx = receiver(name, mode)?;
    let mut tx = Sender::builder(name).open().context("opening")?;
    let msg = [7u8; 64];
    let mut buf = Vec::with_capacity(64);
    let (mut send, mut recv) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..COST_BATCHES {
        let t = Instant::now();
        for _ in 0..BATCH {
            tx.try_send(&msg).context("send")?;
        }
        let u = Instant::now();
        for _ in 0..BATCH {
            rx.try_recv_into(&mut buf).context("recv")?;
        }
        recv += u.elapsed();
        send += u - t;
    }
    let n = (BATCH * COST_BATCHES) as f64;
    Ok(Figures {
        a: send.as_nanos() as f64 / n,
        b: recv.as_nanos() as f64 / n,
    })
}

fn throughput(name: &str, mode: Mode, senders: usize, size: usize) -> Result<Figures> {
    let total: u64 = if size <= 64 { 2_000_000 } else { 40_000 };
    let each = total / senders as u64;
    let mut rx = receiver(name, mode)?;
    let exe = std::env::current_exe().context("finding this benchmark's executable")?;
    let mut peers = Vec::new();
    for _ in 0..senders {
        peers.push(
            Command::new(&exe)
                .args(["--peer", name, &size.to_string(), &each.to_string()])
                .env_remove("IPCSCOPE_SOCKET")
                .stdin(Stdio::null())
                .spawn()
                .context("starting a peer")?,
        );
    }
    let mut buf = Vec::with_capacity(size);
    let wait = Some(Duration::from_secs(30));
    rx.recv_into(&mut buf, wait).context("first message")?;
    let start = Instant::now();
    for i in 1..each * senders as u64 {
        rx.recv_into(&mut buf, wait)
            .with_context(|| format!("message {i}"))?;
    }
    let elapsed = start.elapsed();
    match rx.recv_timeout(Duration::from_secs(30)) {
        Err(RecvError::Disconnected) => {}
        other => bail!("after the last message: {other:?}"),
    }
    for mut p in peers {
        if !p.wait().context("waiting for a peer")?.success() {
            bail!("a peer failed");
        }
    }
    Ok(Figures {
        a: (each * senders as u64 - 1) as f64 / elapsed.as_secs_f64(),
        b: 0.0,
    })
}

/// `--peer NAME SIZE COUNT`: sends COUNT messages of SIZE bytes.
fn peer(args: &[String]) -> Result<()> {
    let [name, size, count] = args else {
        bail!("usage: --peer NAME SIZE COUNT");
    };
    let size: usize = size.parse().context("SIZE")?;
    let count: u64 = count.parse().context("COUNT")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tx = loop {
        match Sender::builder(name.as_str()).open() {
            Ok(tx) => break tx,
            Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).context("opening the channel"),
        }
    };
    let msg = vec![1u8; size];
    for i in 0..count {
        tx.send(&msg).with_context(|| format!("send {i}"))?;
    }
    Ok(())
}
