//! ipc-lib's shared-memory channel against iceoryx2's publish-subscribe
//! and against the raw floors, side by side in one run (issue 18,
//! deliverable 6).
//!
//!     cargo run --release --manifest-path benches/iceoryx2/Cargo.toml            # 5 rounds
//!     cargo run --release --manifest-path benches/iceoryx2/Cargo.toml -- 9       # 9 rounds
//!     cargo run --release --manifest-path benches/iceoryx2/Cargo.toml -- --quick # tiny counts
//!
//! Two cases, each at 64 B and 64 KiB, between two processes, untraced:
//! one-way latency (ping-pong, RTT/2, p50 and p99 of each round trip) and
//! throughput (one sender streams a fixed count to one receiver; messages
//! a second from the first received to the last). Each is run by:
//!
//! - ipc-lib's channel ([`ipclib`]): the receiver spinning on `try_recv`
//!   ("busy-poll"), or in the blocking `recv` (spins, then a futex);
//!   copying (`send(&[u8])`, `recv_into`) and zero-copy (`Sender::loan`,
//!   `Receiver::borrow`: the message number written into the ring and
//!   read from it in place, as iceoryx2's zero-copy case does);
//! - iceoryx2's publish-subscribe ([`iox`]), `ipc::Service`, copying (the
//!   message copied into a loan and out of the sample, as ipc-lib's
//!   `send(&[u8])`/`recv_into` do) and zero-copy (written and read in place);
//!   busy-poll spins on `receive`, blocking waits on an event service's
//!   listener that the sender notifies after each sample;
//! - the floors ([`floor`]): a counter spun in a shared page (a futex for
//!   blocking) with the payload copied in and out, and for throughput a
//!   plain memcpy through a ring in a shared mapping.
//!
//! One run can also be made by hand, its figures printed on one line
//! (p50 and p99 round trip in ns, or messages a second):
//!
//!     bench-iceoryx2 --driver SUBJECT spin|block latency|throughput SIZE COUNT NAME
//!
//! with, in its environment, `IPCSCOPE_BENCH_DRIVER_CPU`/`_PEER_CPU` to
//! pin each process to a CPU, `IPCSCOPE_BENCH_SPINS` for ipc-lib
//! receivers' `spins(n)`, and `IPCSCOPE_BENCH_PEER_POLLS` to have the
//! peer of a blocking ipc-lib latency run busy-poll.
//!
//! Every run is two fresh processes: this program again as the measuring
//! "driver", which starts its "peer". Each round runs every case once; the
//! runs compared with each other run back to back, in reverse order every
//! other round. Figures are medians over rounds; a ratio is the median of
//! each round's ratio, whose two runs were moments apart.
//!
//! It is a crate of its own, outside the root workspace, so that CI never
//! builds iceoryx2.

mod ends;
mod floor;
mod iox;
mod ipclib;
mod procs;
mod report;

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};

/// Message sizes: the small and large message.
const SIZES: [usize; 2] = [64, 64 * 1024];
/// Bytes of buffering every transport gets for a stream: ipc-lib's ring,
/// iceoryx2's subscriber buffer (in samples of the message size) and the
/// floor's ring, so that none of them gets more room to run ahead.
const RING: usize = 1 << 20;

/// Who carries the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subject {
    IpcLib,
    /// ipc-lib's loan and borrow: written and read in place.
    IpcLibZeroCopy,
    IoxCopy,
    IoxZeroCopy,
    Floor,
}

/// How a receiver waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Wait {
    /// Polls without ever sleeping.
    Spin,
    /// Sleeps in the kernel until the sender wakes it.
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Measure {
    /// Round trips: figures are the p50 and p99 round trip, in ns.
    Latency,
    /// One way, as fast as possible: the figure is messages a second.
    Throughput,
}

/// One pair of processes' job: `count` round trips (after a tenth as many
/// untimed) or messages, of `size` bytes.
#[derive(Clone, Copy, Debug)]
struct Run {
    subject: Subject,
    wait: Wait,
    measure: Measure,
    size: usize,
    count: u64,
}

impl Subject {
    const ALL: [Subject; 5] = [
        Subject::IpcLib,
        Subject::IpcLibZeroCopy,
        Subject::IoxCopy,
        Subject::IoxZeroCopy,
        Subject::Floor,
    ];

    fn arg(self) -> &'static str {
        match self {
            Subject::IpcLib => "ipc-lib",
            Subject::IpcLibZeroCopy => "ipc-lib-zero-copy",
            Subject::IoxCopy => "iox-copy",
            Subject::IoxZeroCopy => "iox-zero-copy",
            Subject::Floor => "floor",
        }
    }
}

impl Wait {
    const ALL: [Wait; 2] = [Wait::Spin, Wait::Block];

    fn arg(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Block => "block",
        }
    }
}

impl Measure {
    const ALL: [Measure; 2] = [Measure::Latency, Measure::Throughput];

    fn arg(self) -> &'static str {
        match self {
            Measure::Latency => "latency",
            Measure::Throughput => "throughput",
        }
    }
}

fn from_arg<T: Copy>(all: &[T], arg: fn(T) -> &'static str, given: &str) -> Result<T> {
    all.iter()
        .copied()
        .find(|&t| arg(t) == given)
        .with_context(|| format!("unknown {given:?}"))
}

impl Run {
    /// The arguments that hand this run to a driver or peer process.
    fn args(&self) -> [String; 5] {
        [
            self.subject.arg().into(),
            self.wait.arg().into(),
            self.measure.arg().into(),
            self.size.to_string(),
            self.count.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Result<Run> {
        let [subject, wait, measure, size, count] = args else {
            bail!("expected SUBJECT WAIT MEASURE SIZE COUNT, got {args:?}");
        };
        let subject = from_arg(&Subject::ALL, Subject::arg, subject)?;
        let wait = from_arg(&Wait::ALL, Wait::arg, wait)?;
        let measure = from_arg(&Measure::ALL, Measure::arg, measure)?;
        let size: usize = size.parse().context("SIZE")?;
        // Every message carries its number in its first 8 bytes.
        ensure!(size >= 8, "messages of at least 8 bytes");
        Ok(Run {
            subject,
            wait,
            measure,
            size,
            count: count.parse().context("COUNT")?,
        })
    }

    fn label(&self) -> String {
        format!(
            "{} {} {} {} B",
            self.subject.arg(),
            self.measure.arg(),
            self.wait.arg(),
            self.size
        )
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(procs::DRIVER) => procs::driver_main(&args[1..]),
        Some(procs::PEER) => procs::peer_main(&args[1..]),
        _ => orchestrate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iceoryx2 bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The figures of every run, round by round: `[round][figure]` per key.
type Figures = HashMap<(Subject, Wait, Measure, usize), Vec<Vec<f64>>>;

fn orchestrate(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(if quick { 1 } else { 5 })
        .max(1);
    let load_before = load_average();
    let mut figures = Figures::new();
    let mut serial = 0u32;
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        let mut groups = plan(quick);
        if round % 2 == 1 {
            groups.reverse();
            groups.iter_mut().for_each(|g| g.reverse());
        }
        for run in groups.into_iter().flatten() {
            serial += 1;
            let name = format!("ipcscope-iox-{}-{serial}", std::process::id());
            let got = procs::run_driver(&run, &name).with_context(|| run.label())?;
            figures
                .entry((run.subject, run.wait, run.measure, run.size))
                .or_default()
                .push(got);
        }
    }
    let load_after = load_average();
    if quick {
        println!("quick run: tiny counts, the figures measure nothing");
    }
    println!("load average (1, 5, 15 min) before: {load_before}; after: {load_after}");
    report::print(&figures, rounds);
    Ok(())
}

/// One round: groups of runs compared with each other, each group run
/// back to back.
fn plan(quick: bool) -> Vec<Vec<Run>> {
    let mut groups = Vec::new();
    for size in SIZES {
        for measure in Measure::ALL {
            for wait in Wait::ALL {
                let group = Subject::ALL
                    .into_iter()
                    // A blocking stream has no floor worth the name: a
                    // futex wake per message is just the blocking case
                    // again without the library.
                    .filter(|&s| {
                        !(s == Subject::Floor
                            && measure == Measure::Throughput
                            && wait == Wait::Block)
                    })
                    .map(|subject| Run {
                        subject,
                        wait,
                        measure,
                        size,
                        count: count(measure, wait, size, quick),
                    })
                    .collect();
                groups.push(group);
            }
        }
    }
    groups
}

/// Round trips or messages per run: a whole round of 30 runs took about
/// 30 s here (38 with ipc-lib's zero-copy runs).
fn count(measure: Measure, wait: Wait, size: usize, quick: bool) -> u64 {
    let n = match (measure, wait, size <= 1024) {
        (Measure::Latency, Wait::Spin, true) => 50_000,
        (Measure::Latency, Wait::Spin, false) => 10_000,
        (Measure::Latency, Wait::Block, _) => 5_000,
        (Measure::Throughput, Wait::Spin, true) => 1_000_000,
        // iceoryx2 makes a syscall per message here (the notification).
        (Measure::Throughput, Wait::Block, true) => 200_000,
        (Measure::Throughput, _, false) => 20_000,
    };
    if quick {
        n / 100
    } else {
        n
    }
}

/// The machine's load, for the record: the runs share it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
