//! The async (tokio) subscriber: the channel's pattern (`channel::aio`),
//! an inline try first and a wait that must sleep moved off the runtime
//! (see `crate::rt` for why).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::subscriber::Subscriber;
use super::{decode, RecvError};
use crate::rt::{AsyncRecv, BlockingRecv};

/// A subscriber for async code: [`Subscriber::into_async`].
///
/// Cancel safe: dropping a [`recv`](AsyncSubscriber::recv) future loses no
/// message; one that arrives as the future is dropped is kept for the next
/// `recv` (as is a lag report).
#[derive(Debug)]
pub struct AsyncSubscriber {
    inner: AsyncRecv<Subscriber>,
}

impl BlockingRecv for Subscriber {
    /// A message and its id.
    type Item = (Vec<u8>, u64);
    type Error = RecvError;
    fn try_next(&mut self) -> Result<(Vec<u8>, u64), RecvError> {
        let mut msg = Vec::new();
        Subscriber::try_recv_into(self, &mut msg).map(|id| (msg, id))
    }
    fn next_timeout(&mut self, timeout: Duration) -> Result<(Vec<u8>, u64), RecvError> {
        let mut msg = Vec::new();
        Subscriber::recv_into(self, &mut msg, Some(timeout)).map(|id| (msg, id))
    }
    fn nothing_yet(error: &RecvError) -> bool {
        matches!(error, RecvError::Empty | RecvError::Timeout)
    }
    fn runtime_shutdown() -> RecvError {
        RecvError::RuntimeShutdown
    }
}

impl Subscriber {
    /// This subscriber, for async code.
    pub fn into_async(self) -> AsyncSubscriber {
        AsyncSubscriber {
            inner: AsyncRecv::new(self),
        }
    }
}

impl AsyncSubscriber {
    /// Waits for the next message, as [`Subscriber::recv`] does.
    pub async fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        self.next().await.map(|(msg, _)| msg)
    }

    /// Waits for the next message and decodes it as `T`.
    pub async fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let (msg, id) = self.next().await?;
        decode(&msg, id)
    }

    async fn next(&mut self) -> Result<(Vec<u8>, u64), RecvError> {
        self.inner.next().await
    }
}
