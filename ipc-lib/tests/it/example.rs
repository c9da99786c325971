//! The `producer_consumer` example, run as users run it.

use std::path::PathBuf;
use std::process::Command;

/// `cargo build --examples` puts the examples beside the test binaries
/// (`target/<profile>/examples`); `cargo xtask test` does that first.
/// (`cargo test` builds them too, but only under hashed names.)
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[test]
fn producer_consumer_delivers_every_message_intact() {
    let Some(bin) = example("producer_consumer") else {
        // Skipped only outside CI, when the examples were not built.
        assert!(
            std::env::var_os("CI").is_none(),
            "producer_consumer example not built"
        );
        eprintln!("producer_consumer example not built; skipped");
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
