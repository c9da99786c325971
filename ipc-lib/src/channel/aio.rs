//! Async (tokio) channel ends: the same channel, received from and sent to
//! without ever blocking a runtime worker thread (see `crate::rt` for how
//! and why).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use super::error::{RecvError, SendError};
use super::receiver::Receiver;
use super::sender::Sender;
use crate::codec::decode;
use crate::rt::{off_runtime, AsyncRecv, BlockingRecv, CANCEL_SLICE};

/// The receiving end of a channel, for async code: [`Receiver::into_async`].
///
/// Cancel safe: dropping a [`recv`](AsyncReceiver::recv) future loses no
/// message; one that arrives as the future is dropped is kept for the next
/// `recv`.
#[derive(Debug)]
pub struct AsyncReceiver {
    inner: AsyncRecv<Receiver>,
}

impl BlockingRecv for Receiver {
    /// A message and its id.
    type Item = (Vec<u8>, u64);
    type Error = RecvError;
    fn try_next(&mut self) -> Result<(Vec<u8>, u64), RecvError> {
        let mut msg = Vec::new();
        Receiver::try_recv_into(self, &mut msg).map(|id| (msg, id))
    }
    fn next_timeout(&mut self, timeout: Duration) -> Result<(Vec<u8>, u64), RecvError> {
        let mut msg = Vec::new();
        Receiver::recv_into(self, &mut msg, Some(timeout)).map(|id| (msg, id))
    }
    fn nothing_yet(error: &RecvError) -> bool {
        matches!(error, RecvError::Empty | RecvError::Timeout)
    }
    fn runtime_shutdown() -> RecvError {
        RecvError::RuntimeShutdown
    }
}

impl Receiver {
    /// This end, for async code.
    pub fn into_async(self) -> AsyncReceiver {
        AsyncReceiver {
            inner: AsyncRecv::new(self),
        }
    }
}

impl AsyncReceiver {
    /// Waits for the next message, as [`Receiver::recv`] does.
    pub async fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        self.next().await.map(|(msg, _)| msg)
    }

    /// Waits for the next message and decodes it as `T`, as
    /// [`Receiver::recv_value`] does. Cancel safe as [`recv`](Self::recv).
    pub async fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let (msg, id) = self.next().await?;
        decode(&msg, id)
    }

    async fn next(&mut self) -> Result<(Vec<u8>, u64), RecvError> {
        self.inner.next().await
    }
}

/// The sending end of a channel, for async code: [`Sender::into_async`].
///
/// Not cancel safe: a [`send`](AsyncSender::send) future dropped while it
/// waits for room may or may not have sent its message.
#[derive(Debug)]
pub struct AsyncSender {
    tx: Arc<Mutex<Sender>>,
}

impl Sender {
    /// This end, for async code.
    pub fn into_async(self) -> AsyncSender {
        AsyncSender {
            tx: Arc::new(Mutex::new(self)),
        }
    }
}

impl AsyncSender {
    /// Sends one message, waiting for room as [`Sender::send`] does;
    /// returns its message id.
    pub async fn send(&mut self, msg: Vec<u8>) -> Result<u64, SendError> {
        let tx = self.tx.clone().lock_owned().await;
        send_locked(tx, msg).await
    }

    /// Encodes `value` and sends it, as [`Sender::send_value`] does.
    pub async fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, SendError> {
        let mut tx = self.tx.clone().lock_owned().await;
        let msg = tx.encode(value)?;
        send_locked(tx, msg).await
    }
}

/// Sends `msg` on the locked sender, waiting for room off the runtime.
async fn send_locked(
    mut tx: tokio::sync::OwnedMutexGuard<Sender>,
    msg: Vec<u8>,
) -> Result<u64, SendError> {
    match tx.try_send(&msg) {
        Err(SendError::Full) => {}
        other => return other,
    }
    off_runtime(move |cancelled: &AtomicBool| {
        while !cancelled.load(Ordering::Acquire) {
            match tx.send_timeout(&msg, CANCEL_SLICE) {
                Err(SendError::Timeout) => {}
                other => return Some(other),
            }
        }
        None
    })
    .await
    .flatten()
    // `None` inside is a cancelled wait, which only dropping the future
    // causes; outside, the runtime shut down.
    .unwrap_or(Err(SendError::RuntimeShutdown))
}
