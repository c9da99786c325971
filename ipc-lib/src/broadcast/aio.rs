//! The async (tokio) subscriber: the channel's pattern (`channel::aio`),
//! an inline try first and a wait that must sleep handed to the process's
//! watcher thread (see `crate::rt`).

use std::io;
use std::sync::atomic::AtomicU32;

use serde::de::DeserializeOwned;

use super::subscriber::Subscriber;
use super::{decode, RecvError};
use crate::rt::{self, Receive};

/// A subscriber for async code: [`Subscriber::into_async`].
///
/// Cancel safe: dropping a [`recv`](AsyncSubscriber::recv) future loses no
/// message, nor a lag report (it only ever sleeps with nothing taken).
#[derive(Debug)]
pub struct AsyncSubscriber {
    sub: Subscriber,
}

impl Receive for Subscriber {
    type Error = RecvError;
    fn attempt_into(&mut self, msg: &mut Vec<u8>, check: bool) -> Result<Option<u64>, RecvError> {
        self.attempt(msg, check)
    }
    fn wake_words(&self) -> (&AtomicU32, &AtomicU32) {
        Subscriber::wake_words(self)
    }
    fn wake_ready(&self) -> bool {
        Subscriber::wake_ready(self)
    }
    fn os(op: &'static str, source: io::Error) -> RecvError {
        RecvError::Os { op, source }
    }
}

impl Subscriber {
    /// This subscriber, for async code.
    pub fn into_async(self) -> AsyncSubscriber {
        AsyncSubscriber { sub: self }
    }
}

impl AsyncSubscriber {
    /// Waits for the next message, as [`Subscriber::recv`] does.
    pub async fn recv(&mut self) -> Result<Vec<u8>, RecvError> {
        rt::wait(&mut self.sub).await.map(|(msg, _)| msg)
    }

    /// Waits for the next message and decodes it as `T`.
    pub async fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let (msg, id) = rt::wait(&mut self.sub).await?;
        decode(&msg, id)
    }
}
