//! What a recorder killed with SIGKILL loses: `ipcscope record --no-ebpf`
//! of `producer_consumer --rate` (an ipc-lib channel, 64-byte messages on a
//! fixed schedule, so an event is emitted every few tens of microseconds),
//! killed at a random moment one to three seconds in. The loss of a run is
//! the time from the kill back to the newest event stored: what the
//! database misses of a workload that never paused.
//!
//!     cargo build --release -p ipc-lib --example producer_consumer
//!     cargo bench -p cli --bench kill_loss -- [RUNS] [MESSAGES_PER_SECOND]
//!
//! With `IPCSCOPE_BEFORE=/path/to/ipcscope` (another build), runs alternate
//! between that build and this one, and both medians are printed.
//!
//! Defaults: 10 runs each, 20,000 messages a second.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector::clock::monotonic_ns;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let runs: usize = args.next().map_or(10, |a| a.parse().expect("RUNS"));
    let rate: u64 = args
        .next()
        .map_or(20_000, |a| a.parse().expect("MESSAGES_PER_SECOND"));
    let producer = example("producer_consumer");
    let this = PathBuf::from(env!("CARGO_BIN_EXE_ipcscope"));
    let mut builds = vec![("this build", this)];
    if let Some(before) = std::env::var_os("IPCSCOPE_BEFORE") {
        builds.insert(0, ("before", PathBuf::from(before)));
    }
    let mut losses = vec![Vec::new(); builds.len()];
    let mut seed = monotonic_ns() | 1;
    for run in 0..runs {
        for (i, (label, ipcscope)) in builds.iter().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let wait = Duration::from_millis(1000 + seed % 2000);
            let ms = loss(ipcscope, &producer, rate, wait);
            println!("run {run} {label}: killed {wait:?} in, {ms:.1} ms lost");
            losses[i].push(ms);
        }
    }
    println!(
        "\n{runs} runs each at {rate} messages/s ({} events/s):",
        2 * rate
    );
    for ((label, _), mut l) in builds.iter().zip(losses) {
        l.sort_by(f64::total_cmp);
        println!(
            "  {label}: median {:.1} ms, max {:.1} ms, min {:.1} ms",
            l[l.len() / 2],
            l[l.len() - 1],
            l[0]
        );
    }
}

/// One run: ms from the kill back to the newest event stored.
fn loss(ipcscope: &Path, producer: &Path, rate: u64, wait: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("killed.db");
    // Its own process group: the workload outlives a killed recorder and
    // goes with the group.
    let mut recorder = Command::new(ipcscope)
        .args(["record", "--no-ebpf", "--db"])
        .arg(&db)
        .arg("--")
        .arg(producer)
        .args(["--messages", "1000000000000", "--size", "64", "--rate"])
        .arg(rate.to_string())
        .env("XDG_RUNTIME_DIR", dir.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ipcscope runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while newest(ipcscope, &db).is_none() {
        assert!(Instant::now() < deadline, "no event stored in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(wait);
    let killed = monotonic_ns();
    // SAFETY: kill has no memory effects; the pid is our unreaped child,
    // the group the one it leads.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGKILL) };
    recorder.wait().unwrap();
    // SAFETY: as above; the group outlives its leader.
    unsafe { libc::kill(-(recorder.id() as i32), libc::SIGKILL) };
    let last = newest(ipcscope, &db).expect("the database still opens");
    // Killed, the producer never removed its channel.
    let out = Command::new(ipcscope)
        .args(["query", "--format", "csv", "--db"])
        .arg(&db)
        .arg("select name from channels")
        .output()
        .unwrap();
    for name in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let _ = ipc_lib::channel::remove(name.trim());
    }
    killed.saturating_sub(last) as f64 / 1e6
}

/// The newest event's stamp, once there is one.
fn newest(ipcscope: &Path, db: &Path) -> Option<u64> {
    let out = Command::new(ipcscope)
        .args(["query", "--format", "csv", "--db"])
        .arg(db)
        .arg("select max(ts_ns) from events")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// An example built beside this bench (target/release/examples).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release -p ipc-lib --example {name}` first",
        path.display()
    );
    path
}
