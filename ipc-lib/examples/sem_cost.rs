//! What an uncontended semaphore acquire + release and a region access
//! cost, in nanoseconds per operation (run with `--release`; tracing is
//! off unless `ipcscope record` runs this).
//!
//! ```text
//! cargo run --release -p ipc-lib --example sem_cost -- --iterations 2000000
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use ipc_lib::region::Region;
use ipc_lib::sem::Semaphore;

#[derive(Parser)]
#[command(about = "Time uncontended semaphore and region operations")]
struct Args {
    /// Operations per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
}

fn main() -> Result<()> {
    let n = Args::parse().iterations.max(1);
    let name = format!("sem-cost-{}", std::process::id());
    let sem = Semaphore::builder(&name)
        .initial(1)
        .unlink_on_drop(true)
        .create()
        .with_context(|| format!("creating semaphore {name}"))?;
    let region = Region::builder(format!("{name}-region"))
        .size(64)
        .unlink_on_drop(true)
        .create()
        .context("creating the region")?;

    let per_op = |started: Instant| started.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for _ in 0..n {
        drop(sem.wait());
    }
    println!("wait + release (uncontended): {:.1} ns per pair", per_op(t));

    let t = Instant::now();
    for _ in 0..n {
        let p = sem.wait();
        p.forget();
        sem.post()?;
    }
    println!(
        "wait + forget + post:         {:.1} ns per triple",
        per_op(t)
    );

    let t = Instant::now();
    for i in 0..n {
        region.write_value(8, i)?;
    }
    println!("region write_value::<u64>:    {:.1} ns", per_op(t));

    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(region.read_value::<u64>(8)?);
    }
    println!("region read_value::<u64>:     {:.1} ns", per_op(t));
    anyhow::ensure!(sum == (n - 1).wrapping_mul(n), "read back {sum}");
    anyhow::ensure!(sem.count() == 1, "count {} after the runs", sem.count());
    Ok(())
}
