//! iceoryx2's publish-subscribe between processes (`ipc::Service`), with a
//! `[u8]` payload of the message's size.
//!
//! - Copying: the sender copies its own buffer into a loaned sample
//!   (`loan_slice_uninit` + `write_from_slice`, what `send_copy` does for a
//!   sized type) and the receiver copies the sample out into its own
//!   buffer: the work ipc-lib's `send(&[u8])` and `recv_into` do.
//! - Zero-copy: the sender writes the message number into the loan in
//!   place and the receiver reads it from the borrowed sample; the other
//!   bytes are neither written nor read, as an application that builds its
//!   message in the loan and reads it where it lies would not copy them.
//!
//! A publish-subscribe receiver cannot sleep; the blocking form is
//! iceoryx2's own pattern for it: an event service beside the data, whose
//! listener the receiver waits on and whose notifier the sender fires
//! after every sample.

use anyhow::{ensure, Context, Result};
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{event, publish_subscribe};

use crate::ends::{self, read_stamp, stamp, Rx, Tx};
use crate::procs::{wait_until, Peer};
use crate::{Measure, Run, Subject, Wait, RING};

type PubSub = publish_subscribe::PortFactory<ipc::Service, [u8], ()>;
type Event = event::PortFactory<ipc::Service>;

/// One direction: the data service, and the event service beside it when
/// receivers block.
struct Lane {
    data: PubSub,
    event: Option<Event>,
}

impl Lane {
    /// Creates (the driver) or opens (the peer, which the driver starts
    /// once its services exist) the lane `name`.
    fn new(node: &Node<ipc::Service>, name: &str, run: &Run, create: bool) -> Result<Lane> {
        let data = node
            .service_builder(&ServiceName::new(name)?)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size((RING / run.size).max(1))
            // A full buffer holds the sender back, as ipc-lib's full ring
            // does, instead of overwriting the oldest sample.
            .enable_safe_overflow(false);
        let data = if create { data.create()? } else { data.open()? };
        let event = match run.wait {
            Wait::Spin => None,
            Wait::Block => {
                let event = node
                    .service_builder(&ServiceName::new(&format!("{name}-event"))?)
                    .event();
                Some(if create {
                    event.create()?
                } else {
                    event.open()?
                })
            }
        };
        Ok(Lane { data, event })
    }

    fn sender(&self, run: &Run) -> Result<IoxTx> {
        let publisher = self
            .data
            .publisher_builder()
            .initial_max_slice_len(run.size)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let notifier = match &self.event {
            Some(e) => Some(e.notifier_builder().create()?),
            None => None,
        };
        Ok(IoxTx {
            publisher,
            notifier,
            msg: (run.subject == Subject::IoxCopy).then(|| vec![0x5a; run.size]),
            size: run.size,
        })
    }

    /// Creates the receiving end once the other process's sender exists.
    /// With the subscriber made first, about one 64 KiB stream in ten never
    /// connected here: the publisher filled the buffer of a connection no
    /// subscriber had opened, then dropped every later sample (see
    /// `IoxTx::send`; iceoryx2 issue 305 is this drop). Made after the
    /// publisher, the subscriber connects as it is created: no failure in
    /// 90 runs.
    fn receiver(&self, run: &Run) -> Result<IoxRx> {
        wait_until("the other process's sender", || self.has_sender())?;
        let listener = match &self.event {
            Some(e) => Some(e.listener_builder().create()?),
            None => None,
        };
        Ok(IoxRx {
            subscriber: self.data.subscriber_builder().create()?,
            listener,
            buf: (run.subject == Subject::IoxCopy).then(|| Vec::with_capacity(run.size)),
            size: run.size,
        })
    }

    fn has_sender(&self) -> bool {
        self.data.dynamic_config().number_of_publishers() == 1
            && self
                .event
                .as_ref()
                .is_none_or(|e| e.dynamic_config().number_of_notifiers() == 1)
    }

    /// Whether the other process's receiver is attached: a sample sent
    /// before would reach no one.
    fn has_receiver(&self) -> bool {
        self.data.dynamic_config().number_of_subscribers() == 1
            && self
                .event
                .as_ref()
                .is_none_or(|e| e.dynamic_config().number_of_listeners() == 1)
    }
}

struct IoxTx {
    publisher: Publisher<ipc::Service, [u8], ()>,
    notifier: Option<Notifier<ipc::Service>>,
    /// The sender's own buffer when copying.
    msg: Option<Vec<u8>>,
    size: usize,
}

impl Tx for IoxTx {
    fn send(&mut self, n: u64) -> Result<()> {
        let mut loan = self.publisher.loan_slice_uninit(self.size)?;
        let sample = match &mut self.msg {
            Some(msg) => {
                stamp(msg, n);
                loan.write_from_slice(msg)
            }
            None => {
                for (byte, b) in loan.payload_mut().iter_mut().zip(n.to_le_bytes()) {
                    byte.write(b);
                }
                // SAFETY: the loan lies in iceoryx2's data segment, a
                // shared mapping the kernel filled with zeros and earlier
                // samples wrote over: every byte of it is initialized
                // memory, only not by this loan, and nobody reads past the
                // 8 bytes written above.
                unsafe { loan.assume_init() }
            }
        };
        // 0 when the subscriber is not connected: iceoryx2 then drops the
        // sample once the buffer is full, and says so only in a debug log.
        let delivered = sample.send()?;
        ensure!(
            delivered == 1,
            "message {n} reached {delivered} subscribers"
        );
        if let Some(notifier) = &self.notifier {
            notifier.notify()?;
        }
        Ok(())
    }
}

struct IoxRx {
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    listener: Option<Listener<ipc::Service>>,
    /// The receiver's own buffer when copying.
    buf: Option<Vec<u8>>,
    size: usize,
}

impl Rx for IoxRx {
    fn recv(&mut self) -> Result<u64> {
        loop {
            if let Some(sample) = self.subscriber.receive()? {
                return match &mut self.buf {
                    Some(buf) => {
                        buf.clear();
                        buf.extend_from_slice(sample.payload());
                        read_stamp(buf, self.size)
                    }
                    None => read_stamp(sample.payload(), self.size),
                };
            }
            match &self.listener {
                // Takes every notification that is pending, so a later
                // wait sleeps until the next sample's.
                Some(listener) => {
                    listener.blocking_wait(|_| {})?;
                }
                None => std::hint::spin_loop(),
            }
        }
    }
}

fn node() -> Result<Node<ipc::Service>> {
    // Errors only, unless IOX2_LOG_LEVEL says otherwise.
    set_log_level_from_env_or(LogLevel::Error);
    NodeBuilder::new()
        .create::<ipc::Service>()
        .context("creating the iceoryx2 node")
}

/// Lane `/a` carries driver to peer, `/b` back. Each process makes its
/// senders first: a receiver waits for the sender it hears, and a sender
/// sends only once its receiver is there.
pub fn drive(run: &Run, name: &str) -> Result<Vec<f64>> {
    let node = node()?;
    let a = Lane::new(&node, &format!("{name}/a"), run, true)?;
    match run.measure {
        Measure::Latency => {
            let b = Lane::new(&node, &format!("{name}/b"), run, true)?;
            let mut tx = a.sender(run)?;
            let peer = Peer::start(run, name)?;
            let mut rx = b.receiver(run)?;
            wait_until("the peer's receiver", || a.has_receiver())?;
            let figures = ends::ping_pong(&mut tx, &mut rx, run.count)?;
            // Lets the peer go (see `peer`).
            drop(rx);
            peer.wait()?;
            Ok(figures)
        }
        Measure::Throughput => {
            let peer = Peer::start(run, name)?;
            let mut rx = a.receiver(run)?;
            let rate = ends::receive_rate(&mut rx, run.count)?;
            drop(rx);
            peer.wait()?;
            Ok(vec![rate])
        }
    }
}

pub fn peer(run: &Run, name: &str) -> Result<()> {
    let node = node()?;
    let a = Lane::new(&node, &format!("{name}/a"), run, false)?;
    // The publisher stays until the driver has every sample (below).
    let (out, _publisher) = match run.measure {
        Measure::Latency => {
            let b = Lane::new(&node, &format!("{name}/b"), run, false)?;
            let mut tx = b.sender(run)?;
            let mut rx = a.receiver(run)?;
            // The driver's receiver is there before its first message.
            ends::echo(&mut rx, &mut tx, run.count)?;
            (b, tx)
        }
        Measure::Throughput => {
            let mut tx = a.sender(run)?;
            wait_until("the driver's receiver", || a.has_receiver())?;
            ends::send_all(&mut tx, run.count)?;
            (a, tx)
        }
    };
    // A subscriber discards the samples a departed publisher left
    // undelivered (iceoryx2 warns "a sender disconnected with undelivered
    // data"); the driver drops its subscriber once it has them all.
    wait_until("the driver's last receive", || {
        out.data.dynamic_config().number_of_subscribers() == 0
    })
}
