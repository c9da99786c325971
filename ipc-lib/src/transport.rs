//! The API both channel transports share, so code can be written once for
//! shared memory ([`channel`](crate::channel)) and Unix sockets
//! ([`socket`](crate::socket)).
//!
//! Two small traits rather than an enum of transports: each transport keeps
//! its own builder (their options differ: a ring has a capacity, a socket
//! has none), and generic code only needs to move messages. The typed and
//! convenience forms are provided methods, written once here over the two
//! primitives each transport implements. [`TypedSender`] and
//! [`TypedReceiver`] wrap any end, so that the message type is stated once.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::socket::{SocketReceiver, SocketSender};
//! use ipc_lib::transport::{MessageReceiver, MessageSender};
//!
//! fn relay(tx: &mut impl MessageSender, rx: &mut impl MessageReceiver) -> u32 {
//!     tx.send_value(&41u32).unwrap();
//!     rx.recv_value_timeout::<u32>(Duration::from_secs(5)).unwrap() + 1
//! }
//!
//! let name = format!("doc-transport-{}", std::process::id());
//! let mut rx = SocketReceiver::builder(&name).create()?;
//! let mut tx = SocketSender::builder(&name).open()?;
//! assert_eq!(relay(&mut tx, &mut rx), 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod typed;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, RecvError, SendError, Sender};
use crate::codec::{decode, encode};

pub use typed::{TypedReceiver, TypedSender};

/// The sending end of a channel, whatever carries it.
pub trait MessageSender {
    /// Sends one message and returns its id; on a full channel blocks or
    /// returns [`SendError::Full`], as the end was built.
    fn send(&mut self, msg: &[u8]) -> Result<u64, SendError>;

    /// Sends one message if there is room now.
    fn try_send(&mut self, msg: &[u8]) -> Result<u64, SendError>;

    /// Sends one message, waiting at most `timeout` for room.
    fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<u64, SendError>;

    /// Serializes `value` with postcard and sends it as
    /// [`send`](Self::send) does.
    fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        self.send(&encode(value)?)
    }

    /// [`send_value`](Self::send_value) that never waits for room.
    fn try_send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        self.try_send(&encode(value)?)
    }
}

/// The receiving end of a channel, whatever carries it.
pub trait MessageReceiver {
    /// Waits for the next message (at most `timeout` when given) and puts
    /// exactly it in `out`; returns its id.
    fn recv_into(&mut self, out: &mut Vec<u8>, timeout: Option<Duration>)
        -> Result<u64, RecvError>;

    /// Takes the next message into `out` if one is waiting
    /// ([`RecvError::Empty`] if not); returns its id.
    fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError>;

    /// Waits for the next message.
    fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, None).map(|_| out)
    }

    /// Waits at most `timeout` for the next message.
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_into(&mut out, Some(timeout)).map(|_| out)
    }

    /// Takes the next message if one is waiting.
    fn try_recv(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.try_recv_into(&mut out).map(|_| out)
    }

    /// Receives one message and decodes it as `T`.
    fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let mut out = Vec::new();
        let id = self.recv_into(&mut out, None)?;
        decode(&out, id)
    }

    /// [`recv_value`](Self::recv_value) with a timeout.
    fn recv_value_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvError> {
        let mut out = Vec::new();
        let id = self.recv_into(&mut out, Some(timeout))?;
        decode(&out, id)
    }

    /// [`recv_value`](Self::recv_value) that never waits.
    fn try_recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let mut out = Vec::new();
        let id = self.try_recv_into(&mut out)?;
        decode(&out, id)
    }
}

impl MessageSender for Sender {
    fn send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        Sender::send(self, msg)
    }

    fn try_send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        Sender::try_send(self, msg)
    }

    fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<u64, SendError> {
        Sender::send_timeout(self, msg, timeout)
    }
}

impl MessageReceiver for Receiver {
    fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<u64, RecvError> {
        Receiver::recv_into(self, out, timeout)
    }

    fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError> {
        Receiver::try_recv_into(self, out)
    }
}
