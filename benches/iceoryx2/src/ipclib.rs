//! ipc-lib's shared-memory channel, used as its README shows: bytes sent
//! from the caller's buffer, received into the caller's buffer; or, zero
//! copy, written into a loan (`Sender::loan`) and read from a borrowed
//! message (`Receiver::borrow`) in place. Zero-copy writes and reads only
//! the message number, as iceoryx2's zero-copy case does; ipc-lib still
//! checksums the whole frame on both sides (the sender at `Loan::send`,
//! the receiver before it lends the message).

use anyhow::{ensure, Context, Result};
use ipc_lib::channel::{Receiver, RecvError, Sender};

use crate::ends::{self, read_stamp, stamp, Rx, Tx};
use crate::procs::{Peer, PATIENCE};
use crate::{Measure, Run, Subject, Wait, RING};

struct IpcTx {
    tx: Sender,
    /// The sender's own buffer when copying; `None`: zero-copy.
    msg: Option<Vec<u8>>,
    size: usize,
}

impl Tx for IpcTx {
    fn send(&mut self, n: u64) -> Result<()> {
        match &mut self.msg {
            Some(msg) => {
                stamp(msg, n);
                self.tx.send(msg)?;
            }
            None => {
                let mut loan = self.tx.loan(self.size)?;
                stamp(&mut loan, n);
                loan.send();
            }
        }
        Ok(())
    }
}

struct IpcRx {
    rx: Receiver,
    wait: Wait,
    buf: Vec<u8>,
    size: usize,
    zero_copy: bool,
}

impl IpcRx {
    /// Zero-copy: the number read from the message where it lies.
    fn borrow(&mut self) -> Result<u64> {
        let msg = match self.wait {
            Wait::Spin => loop {
                match self.rx.try_borrow() {
                    Ok(msg) => break msg,
                    Err(RecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => return Err(e.into()),
                }
            },
            Wait::Block => self.rx.borrow()?,
        };
        ensure!(
            msg.len() == self.size,
            "a message of {} bytes, expected {}",
            msg.len(),
            self.size
        );
        let mut n = [0; 8];
        msg.read(0, &mut n);
        Ok(u64::from_le_bytes(n))
    }
}

impl Rx for IpcRx {
    fn recv(&mut self) -> Result<u64> {
        if self.zero_copy {
            return self.borrow();
        }
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
        zero_copy: run.subject == Subject::IpcLibZeroCopy,
    })
}

/// Opens the sending end of `name`, waiting for the other process to
/// create it.
fn sender(name: &str, run: &Run) -> Result<IpcTx> {
    let tx = Sender::builder(name).wait(PATIENCE).open()?;
    Ok(IpcTx {
        tx,
        msg: (run.subject == Subject::IpcLib).then(|| vec![0x5a; run.size]),
        size: run.size,
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
