//! The examples, run as users run them.

use std::path::PathBuf;
use std::process::Command;

/// `cargo build --examples` puts the examples beside the test binaries
/// (`target/<profile>/examples`); `cargo xtask test` does that first.
/// (`cargo test` builds them too, but only under hashed names.)
/// Outside CI, a test whose example was not built is skipped (`None`).
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(std::env::var_os("CI").is_none(), "{name} example not built");
    eprintln!("{name} example not built; skipped");
    None
}

#[test]
fn producer_consumer_delivers_every_message_intact() {
    let Some(bin) = example("producer_consumer") else {
        return;
    };
    for (n, size) in [("3000", "100"), ("200", "70000"), ("1000", "0")] {
        let out = Command::new(&bin)
            .args(["--messages", n, "--size", size])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "--messages {n} --size {size}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn shared_counter_counts_exactly() {
    let Some(bin) = example("shared_counter") else {
        return;
    };
    for (procs, increments) in [("4", "5000"), ("1", "1000"), ("3", "0")] {
        let out = Command::new(&bin)
            .args(["--procs", procs, "--increments", increments])
            .output()
            .unwrap();
        let expected: u64 = procs.parse::<u64>().unwrap() * increments.parse::<u64>().unwrap();
        assert!(
            out.status.success(),
            "--procs {procs} --increments {increments}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("final count: {expected}")
        );
    }
}

#[test]
fn sem_cost_runs_and_checks_its_own_results() {
    let Some(bin) = example("sem_cost") else {
        return;
    };
    let out = Command::new(&bin)
        .args(["--iterations", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ns per pair"));
}

#[test]
fn rpc_example_pairs_every_reply_with_its_call() {
    let Some(bin) = example("rpc") else {
        assert!(std::env::var_os("CI").is_none(), "rpc example not built");
        eprintln!("rpc example not built; skipped");
        return;
    };
    for calls in ["2000", "0"] {
        let out = Command::new(&bin)
            .args(["--calls", calls])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "--calls {calls}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if calls != "0" {
            assert!(
                stdout.contains("2000 calls, every answer correct"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn typed_jobs_example_answers_every_job_blocking_and_async() {
    let Some(bin) = example("typed_jobs") else {
        return;
    };
    for args in [
        &["--jobs", "3000"][..],
        &["--jobs", "3000", "--async"],
        &["--jobs", "0"],
    ] {
        let out = Command::new(&bin).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("jobs, every answer correct"), "{stdout}");
    }
}

#[test]
fn broadcast_example_accounts_for_every_tick_in_every_subscriber() {
    let Some(bin) = example("broadcast") else {
        return;
    };
    for capacity in ["20000", "8"] {
        let out = Command::new(&bin)
            .args([
                "--subscribers",
                "3",
                "--messages",
                "5000",
                "--capacity",
                capacity,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "--capacity {capacity}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("ticks received").count(), 3, "{stdout}");
        if capacity == "20000" {
            assert_eq!(stdout.matches(" 0 missed").count(), 3, "{stdout}");
        }
    }
}

#[test]
fn coordinator_example_counts_every_result_and_sees_a_crashed_worker_at_once() {
    let Some(bin) = example("coordinator") else {
        return;
    };
    for (args, failed) in [
        (
            &["--workers", "4", "--items", "1000"][..],
            "workers failed: []",
        ),
        (
            &["--workers", "4", "--items", "1000", "--crash-one"],
            "workers failed: [3]",
        ),
    ] {
        let out = Command::new(&bin).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(failed), "{args:?}: {stdout}");
    }
}

#[test]
fn work_queue_squares_every_number_though_a_worker_dies_holding_a_job() {
    let Some(bin) = example("work_queue") else {
        return;
    };
    for (workers, jobs, crash) in [("3", "3000", true), ("1", "500", false)] {
        let mut cmd = Command::new(&bin);
        cmd.args(["--workers", workers, "--jobs", jobs]);
        if crash {
            cmd.arg("--crash");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "--workers {workers} --jobs {jobs}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let redelivered = if crash { 1 } else { 0 };
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{jobs} numbers squared by {workers} workers; {redelivered} jobs redelivered")
        );
    }
}
