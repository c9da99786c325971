//! Async (tokio) channel ends: the same channel, received from and sent to
//! without ever blocking a runtime worker thread (see `crate::rt` for how
//! and why).

use std::io;
use std::sync::atomic::AtomicU32;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{RecvError, SendError};
use super::receiver::{Borrowed, Receiver};
use super::sender::Sender;
use crate::codec::decode;
use crate::rt::{self, Receive, Wait, WATCHER_OP};

/// The receiving end of a channel, for async code: [`Receiver::into_async`].
///
/// Cancel safe: dropping a [`recv`](AsyncReceiver::recv) future loses no
/// message (it only ever sleeps with nothing taken). A waiting receive
/// holds no thread: the process's watcher thread sleeps for it (see
/// `crate::rt`).
#[derive(Debug)]
pub struct AsyncReceiver {
    rx: Receiver,
}

impl Receive for Receiver {
    type Error = RecvError;
    fn attempt_into(&mut self, msg: &mut Vec<u8>, check: bool) -> Result<Option<u64>, RecvError> {
        self.attempt(msg, check)
    }
    fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        Receiver::wake_words(self)
    }
    fn wake_ready(&self) -> bool {
        Receiver::wake_ready(self)
    }
    fn os(op: &'static str, source: io::Error) -> RecvError {
        RecvError::Os { op, source }
    }
}

impl Receiver {
    /// This end, for async code.
    pub fn into_async(self) -> AsyncReceiver {
        AsyncReceiver { rx: self }
    }
}

/// A receive that lends the message it finds ([`AsyncReceiver::borrow`]).
struct Lending<'a> {
    rx: &'a mut Receiver,
}

impl Wait for Lending<'_> {
    type Output = u64;
    type Error = RecvError;
    fn attempt(&mut self, check: bool) -> Result<Option<u64>, RecvError> {
        self.rx.attempt_lend(check)
    }
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>) {
        let (word, waiters) = self.rx.wake_words();
        (word, waiters, None)
    }
    fn ready(&self) -> bool {
        self.rx.wake_ready()
    }
    fn no_watcher(source: io::Error) -> RecvError {
        RecvError::Os {
            op: WATCHER_OP,
            source,
        }
    }
}

impl AsyncReceiver {
    /// Waits for the next message and lends it where it lies, as
    /// [`Receiver::borrow`] does. Cancel safe as [`recv`](Self::recv):
    /// the message is lent in the same step that finds it.
    pub async fn borrow(&mut self) -> Result<Borrowed<'_>, RecvError> {
        rt::wait(&mut Lending { rx: &mut self.rx }).await?;
        Ok(self.rx.lent())
    }

    /// Waits for the next message, as [`Receiver::recv`] does.
    pub async fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        rt::wait(&mut self.rx).await.map(|(msg, _)| msg)
    }

    /// Waits for the next message and decodes it as `T`, as
    /// [`Receiver::recv_value`] does. Cancel safe as [`recv`](Self::recv).
    pub async fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let (msg, id) = rt::wait(&mut self.rx).await?;
        decode(&msg, id)
    }
}

/// The sending end of a channel, for async code: [`Sender::into_async`].
///
/// Cancel safe: a [`send`](AsyncSender::send) future dropped before it
/// finished sent nothing (it only ever sleeps with nothing sent).
#[derive(Debug)]
pub struct AsyncSender {
    tx: Sender,
}

impl Sender {
    /// This end, for async code.
    pub fn into_async(self) -> AsyncSender {
        AsyncSender { tx: self }
    }
}

/// One message waiting for room.
struct Sending<'a> {
    tx: &'a mut Sender,
    msg: &'a [u8],
}

impl Wait for Sending<'_> {
    type Output = u64;
    type Error = SendError;
    fn attempt(&mut self, check: bool) -> Result<Option<u64>, SendError> {
        self.tx.attempt(self.msg, check)
    }
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>) {
        let (word, waiters) = self.tx.wake_words();
        (word, waiters, None)
    }
    fn ready(&self) -> bool {
        self.tx.wake_ready(self.msg.len())
    }
    fn no_watcher(source: io::Error) -> SendError {
        SendError::Os {
            op: WATCHER_OP,
            source,
        }
    }
}

impl AsyncSender {
    /// Sends one message, waiting for room as [`Sender::send`] does;
    /// returns its message id.
    pub async fn send(&mut self, msg: Vec<u8>) -> Result<u64, SendError> {
        let tx = &mut self.tx;
        rt::wait(&mut Sending { tx, msg: &msg }).await
    }

    /// Encodes `value` and sends it, as [`Sender::send_value`] does.
    pub async fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        let msg = self.tx.encode(value)?;
        self.send(msg).await
    }
}
