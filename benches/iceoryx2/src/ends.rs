//! What every transport provides, and the measuring loops written once
//! over it, so that every subject is timed by the same code.
//!
//! Every message carries its number in its first 8 bytes: a receiver
//! checks it, so a lost, repeated or reordered message fails the run
//! instead of flattering it.

use std::time::Instant;

use anyhow::{ensure, Result};

/// A sending end.
pub trait Tx {
    /// Sends message number `n`, waiting for room if need be.
    fn send(&mut self, n: u64) -> Result<()>;
}

/// A receiving end.
pub trait Rx {
    /// Waits for the next message (as the end was built to wait) and
    /// returns its number.
    fn recv(&mut self) -> Result<u64>;
}

/// Writes `n` into the message's first 8 bytes.
pub fn stamp(msg: &mut [u8], n: u64) {
    msg[..8].copy_from_slice(&n.to_le_bytes());
}

/// The number a message of `size` bytes carries.
pub fn read_stamp(msg: &[u8], size: usize) -> Result<u64> {
    ensure!(
        msg.len() == size,
        "a message of {} bytes, expected {size}",
        msg.len()
    );
    let mut n = [0; 8];
    n.copy_from_slice(&msg[..8]);
    Ok(u64::from_le_bytes(n))
}

/// Untimed round trips before the timed ones (page faults, caches, branch
/// history, a sleeping peer waking up).
fn warm_up(trips: u64) -> u64 {
    trips / 10
}

/// The driver's side of a ping-pong: `trips` timed round trips after the
/// warm-up; returns the p50 and p99 round trip in ns. Each sample includes
/// one clock read (about 20 ns here), the same for every subject.
pub fn ping_pong(tx: &mut impl Tx, rx: &mut impl Rx, trips: u64) -> Result<Vec<f64>> {
    let warm = warm_up(trips);
    for n in 0..warm {
        trip(tx, rx, n)?;
    }
    let mut samples = Vec::with_capacity(trips as usize);
    let mut last = Instant::now();
    for n in warm..warm + trips {
        trip(tx, rx, n)?;
        let now = Instant::now();
        samples.push((now - last).as_nanos() as u64);
        last = now;
    }
    samples.sort_unstable();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)] as f64;
    Ok(vec![at(50), at(99)])
}

fn trip(tx: &mut impl Tx, rx: &mut impl Rx, n: u64) -> Result<()> {
    tx.send(n)?;
    let back = rx.recv()?;
    ensure!(back == n, "sent message {n}, message {back} came back");
    Ok(())
}

/// The peer's side of a ping-pong of `trips` timed round trips: sends every
/// message back.
pub fn echo(rx: &mut impl Rx, tx: &mut impl Tx, trips: u64) -> Result<()> {
    for n in 0..warm_up(trips) + trips {
        let got = rx.recv()?;
        ensure!(got == n, "expected message {n}, got {got}");
        tx.send(n)?;
    }
    Ok(())
}

/// The sending side of a stream.
pub fn send_all(tx: &mut impl Tx, count: u64) -> Result<()> {
    for n in 0..count {
        tx.send(n)?;
    }
    Ok(())
}

/// The receiving side of a stream: messages a second, timed from the first
/// one received, so that starting the peer is not counted.
pub fn receive_rate(rx: &mut impl Rx, count: u64) -> Result<f64> {
    ensure!(count >= 2, "a rate needs at least two messages");
    let first = rx.recv()?;
    ensure!(first == 0, "the first message is number {first}");
    let start = Instant::now();
    for n in 1..count {
        let got = rx.recv()?;
        ensure!(got == n, "expected message {n}, got {got}");
    }
    Ok((count - 1) as f64 / start.elapsed().as_secs_f64())
}
