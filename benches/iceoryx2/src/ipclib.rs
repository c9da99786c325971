//! ipc-lib's shared-memory channel, used as its README shows: bytes sent
//! from the caller's buffer, received into the caller's buffer.

use anyhow::{Context, Result};
use ipc_lib::channel::{Receiver, RecvError, Sender};

use crate::ends::{self, read_stamp, stamp, Rx, Tx};
use crate::procs::{Peer, PATIENCE};
use crate::{Measure, Run, Wait, RING};

struct IpcTx {
    tx: Sender,
    msg: Vec<u8>,
}

impl Tx for IpcTx {
    fn send(&mut self, n: u64) -> Result<()> {
        stamp(&mut self.msg, n);
        self.tx.send(&self.msg)?;
        Ok(())
    }
}

struct IpcRx {
    rx: Receiver,
    wait: Wait,
    buf: Vec<u8>,
    size: usize,
}

impl Rx for IpcRx {
    fn recv(&mut self) -> Result<u64> {
        match self.wait {
            // Busy-poll as an application writes it: try_recv in a loop.
            Wait::Spin => loop {
                match self.rx.try_recv_into(&mut self.buf) {
                    Ok(_) => break,
                    Err(RecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => return Err(e.into()),
                }
            },
            // The library's own wait: its default spins, then the futex.
            Wait::Block => {
                self.rx.recv_into(&mut self.buf, None)?;
            }
        }
        read_stamp(&self.buf, self.size)
    }
}

/// Sets the receivers' `spins(n)`; unset, the library's default.
const SPINS_ENV: &str = "IPCSCOPE_BENCH_SPINS";
/// Set (to anything), the peer of a blocking latency run busy-polls: the
/// driver's blocking receive then waits for a peer that is always awake.
const PEER_POLLS_ENV: &str = "IPCSCOPE_BENCH_PEER_POLLS";

/// Creates the receiving end of `name`, which the other process opens.
fn receiver(name: &str, run: &Run) -> Result<IpcRx> {
    let mut builder = Receiver::builder(name);
    if let Ok(spins) = std::env::var(SPINS_ENV) {
        let spins = spins
            .parse()
            .with_context(|| format!("{SPINS_ENV}={spins:?}"))?;
        builder = builder.spins(spins);
    }
    let rx = builder.capacity(RING).max_message_size(run.size).create()?;
    Ok(IpcRx {
        rx,
        wait: run.wait,
        buf: Vec::with_capacity(run.size),
        size: run.size,
    })
}

/// Opens the sending end of `name`, waiting for the other process to
/// create it.
fn sender(name: &str, run: &Run) -> Result<IpcTx> {
    let tx = Sender::builder(name).wait(PATIENCE).open()?;
    Ok(IpcTx {
        tx,
        msg: vec![0x5a; run.size],
    })
}

/// Channel `-a` carries driver to peer, `-b` back.
pub fn drive(run: &Run, name: &str) -> Result<Vec<f64>> {
    match run.measure {
        Measure::Latency => {
            let mut rx = receiver(&format!("{name}-b"), run)?;
            let peer = Peer::start(run, name)?;
            let mut tx = sender(&format!("{name}-a"), run)?;
            let figures = ends::ping_pong(&mut tx, &mut rx, run.count)?;
            peer.wait()?;
            Ok(figures)
        }
        Measure::Throughput => {
            let mut rx = receiver(&format!("{name}-a"), run)?;
            let peer = Peer::start(run, name)?;
            let rate = ends::receive_rate(&mut rx, run.count)?;
            peer.wait()?;
            Ok(vec![rate])
        }
    }
}

pub fn peer(run: &Run, name: &str) -> Result<()> {
    match run.measure {
        Measure::Latency => {
            let mut rx = receiver(&format!("{name}-a"), run)?;
            if std::env::var_os(PEER_POLLS_ENV).is_some() {
                rx.wait = Wait::Spin;
            }
            let mut tx = sender(&format!("{name}-b"), run)?;
            ends::echo(&mut rx, &mut tx, run.count)
        }
        Measure::Throughput => {
            let mut tx = sender(&format!("{name}-a"), run)?;
            ends::send_all(&mut tx, run.count)
        }
    }
}
