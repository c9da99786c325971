//! Kernel to collector: how many events a second the probes' ring buffer
//! carries into the collector, sustained, and whether the kernel lost any
//! (its own `DROPS` count). Needs root: it loads the real probes.
//!
//!     cargo bench -p collector --bench kernel_ring -- [SECONDS] [GENERATORS]
//!
//! Each generator is this binary again, re-executed, calling
//! `futex(FUTEX_WAIT)` on a word that does not hold the expected value,
//! which returns `EAGAIN` at once: the cheapest traced syscall, and one
//! that makes two events (the wait's begin at the entry, its end at the
//! exit) with no fd to resolve. The collector side is
//! `Probes::read_into`, the recorder's own drain and decoder, counting what
//! it gets instead of storing it. A first round runs the generators
//! untraced for the baseline rate of syscalls; the traced round then
//! reports events drained per second, the generators' syscall rate
//! against the baseline, and the kernel's drop count.
//!
//! Defaults: 60 s, 1 generator (issue 4's goal: at least 2,000,000
//! events/s for 60 s with zero drops).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::ebpf::{ProbeConfig, Probes};

/// Set in a generator's environment: run for this many seconds.
const GENERATOR: &str = "IPCSCOPE_BENCH_FUTEX_GENERATOR";

fn main() {
    if let Ok(secs) = std::env::var(GENERATOR) {
        generate(secs.parse().expect("generator seconds"));
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: u64 = args.first().map_or(60, |s| s.parse().expect("SECONDS"));
    let generators: usize = args.get(1).map_or(1, |s| s.parse().expect("GENERATORS"));

    let base_secs = secs.min(5);
    let mut children = spawn_generators(generators, base_secs);
    go(&mut children);
    let untraced_rate = calls_made(children) as f64 / base_secs as f64;
    println!("untraced: {untraced_rate:.0} futex calls/s ({generators} generators)");

    let mut probes = Probes::load(&ProbeConfig::default()).expect("load the probes (root?)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut children = spawn_generators(generators, secs);
    for child in &children {
        probes.track(child.id(), false).expect("track a generator");
    }
    go(&mut children);
    let mut events = 0u64;
    let mut decode_errors = 0u64;
    let mut buf = Vec::with_capacity(16 * 1024);
    // Drain until the generators are done and the ring stays empty.
    let deadline = Instant::now() + Duration::from_secs(secs + 1);
    runtime.block_on(async {
        loop {
            let stats = probes.read_into(&mut buf).await.expect("read the ring");
            events += stats.events as u64;
            decode_errors += stats.decode_errors;
            buf.clear();
            // read_into returns at least every RING_POLL, so an empty read
            // after the generators stopped means the ring is empty.
            if stats.events == 0 && Instant::now() > deadline {
                break;
            }
        }
    });
    let calls = calls_made(children);
    let drops = probes.kernel_drops().expect("read DROPS");
    let traced_rate = calls as f64 / secs as f64;
    let rate = events as f64 / secs as f64;
    println!(
        "traced:   {traced_rate:.0} futex calls/s ({:.2} of untraced)",
        traced_rate / untraced_rate
    );
    println!(
        "drained:  {events} events in {secs} s = {rate:.0} events/s; \
         kernel drops {drops}; decode errors {decode_errors}"
    );
    println!(
        "expected: {} events (2 per call); goal: >= 2,000,000 events/s with 0 drops: {}",
        calls * 2,
        if rate >= 2_000_000.0 && drops == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// Starts `n` generators that run for `secs` seconds once told to go.
fn spawn_generators(n: usize, secs: u64) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    (0..n)
        .map(|_| {
            Command::new(&exe)
                .env(GENERATOR, secs.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a generator")
        })
        .collect()
}

/// Tells the generators to go (closes their stdin).
fn go(children: &mut [Child]) {
    for child in children {
        drop(child.stdin.take());
    }
}

/// Waits for the generators and sums the calls they made.
fn calls_made(children: Vec<Child>) -> u64 {
    children
        .into_iter()
        .map(|mut child| {
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            child.wait().unwrap();
            line.trim().parse::<u64>().expect("a generator's count")
        })
        .sum()
}

/// The generator: futex waits that fail at once, for `secs` seconds, after
/// stdin closes; prints how many it made.
fn generate(secs: u64) {
    let mut go = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut go);
    let word: u32 = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut calls = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            // SAFETY: FUTEX_WAIT reads the u32 at a valid address; it holds
            // 0, not 1, so the call returns EAGAIN without sleeping.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    &word as *const u32,
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    1u32,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
        calls += 1000;
    }
    let mut out = std::io::stdout();
    writeln!(out, "{calls}").unwrap();
}
