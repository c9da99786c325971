//! Wake latency of a select: a process asleep in `Select::wait` woken by a
//! message another process sends, from the sender's clock reading just
//! before its send to the selecting process's clock reading just after
//! `wait` returns (CLOCK_MONOTONIC, one clock for both processes).
//!
//! ```text
//! cargo bench -p ipc-lib --bench select_wake            # 10,000 rounds
//! cargo bench -p ipc-lib --bench select_wake -- N       # N rounds
//! ```
//!
//! Three cases, each its own round trip per message (the peer, this binary
//! again with `--peer`, waits for a "go", sleeps 200 µs so the selecting
//! side is asleep, then sends its clock reading):
//!
//! - `recv`: a plain blocking `recv` (spins 0), the baseline;
//! - `recv async`: an async receive on a current-thread tokio runtime;
//! - `select futex`: a receiver and a semaphore: one `futex_waitv`;
//! - `select mixed`: a receiver and a process exit: poll on a pidfd and
//!   the helper thread's eventfd, the helper in `futex_waitv`.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipc_lib::channel::{Receiver, Sender};
use ipc_lib::select::{Process, Select, Source};
use ipc_lib::sem::Semaphore;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("--peer") {
        peer(&args[1], &args[2])
    } else {
        let rounds = args
            .iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(10_000usize);
        run(rounds)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("select_wake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Receives "go" on `go`, sleeps, sends the clock on `data`, until `go`
/// is disconnected.
fn peer(data: &str, go: &str) -> Result<()> {
    let mut tx = Sender::builder(data).open()?;
    let mut rx = Receiver::builder(go).open()?;
    while rx.recv().is_ok() {
        std::thread::sleep(Duration::from_micros(200));
        tx.send(&now_ns().to_le_bytes())?;
    }
    Ok(())
}

fn run(rounds: usize) -> Result<()> {
    let sleeper = Command::new("sleep").arg("600").spawn()?;
    let exit = Process::from_child(&sleeper)?;
    let r = (|| {
        for case in ["recv", "recv async", "select futex", "select mixed"] {
            let lat = case_latencies(case, rounds, &exit)?;
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
            println!(
                "{case:<14} {rounds} rounds: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                p(0.5),
                p(0.99),
                p(1.0)
            );
        }
        Ok(())
    })();
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    r
}

fn case_latencies(case: &str, rounds: usize, exit: &Process) -> Result<Vec<u64>> {
    let tag = format!(
        "select-wake-{}-{}",
        std::process::id(),
        case.replace(' ', "-")
    );
    let (data, go) = (format!("{tag}-data"), format!("{tag}-go"));
    let mut rx = Receiver::builder(&data).spins(0).create()?;
    let mut tx = Sender::builder(&go).create()?;
    let sem = Semaphore::builder(format!("{tag}-sem")).create()?;
    let peer = Command::new(std::env::current_exe()?)
        .args(["--peer", &data, &go])
        .stdin(Stdio::null())
        .spawn()
        .context("starting the peer")?;
    let mut select = Select::new();
    let mut lat = Vec::with_capacity(rounds);
    if case == "recv async" {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let mut rx = rx.into_async();
        for _ in 0..rounds {
            tx.send(b"go")?;
            let msg = rt.block_on(rx.recv())?;
            let woke = now_ns();
            lat.push(woke.saturating_sub(u64::from_le_bytes(msg[..8].try_into()?)));
        }
        return finish(tx, peer, lat);
    }
    for _ in 0..rounds {
        tx.send(b"go")?;
        let msg = match case {
            "recv" => rx.recv()?,
            _ => {
                let ready = if case == "select futex" {
                    select.wait(&mut [(&sem).into(), (&mut rx).into()], None)?
                } else {
                    select.wait(&mut [Source::from(exit), (&mut rx).into()], None)?
                };
                let woke = now_ns();
                if ready != 1 {
                    bail!("source {ready} ready, not the receiver");
                }
                let msg = rx.try_recv()?;
                lat.push(woke.saturating_sub(u64::from_le_bytes(msg[..8].try_into()?)));
                continue;
            }
        };
        let woke = now_ns();
        lat.push(woke.saturating_sub(u64::from_le_bytes(msg[..8].try_into()?)));
    }
    finish(tx, peer, lat)
}

/// Lets the peer go and sorts the latencies.
fn finish(tx: Sender, mut peer: Child, mut lat: Vec<u64>) -> Result<Vec<u64>> {
    drop(tx);
    peer.wait()?;
    lat.sort_unstable();
    Ok(lat)
}
