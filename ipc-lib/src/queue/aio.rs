//! The async (tokio) consumer: the channel's pattern (`crate::rt`), an
//! inline try first and a wait that must sleep moved off the runtime.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::consumer::{decoded, Consumer, Job};
use super::TakeError;
use crate::rt::{AsyncRecv, BlockingRecv};

/// A consumer for async code: [`Consumer::into_async`].
///
/// Cancel safe: dropping a [`next`](AsyncConsumer::next) future loses no
/// job; one handed out as the future is dropped is kept for the next
/// `next`.
#[derive(Debug)]
pub struct AsyncConsumer {
    inner: AsyncRecv<Consumer>,
}

impl BlockingRecv for Consumer {
    type Item = Job;
    type Error = TakeError;
    fn try_next(&mut self) -> Result<Job, TakeError> {
        Consumer::try_next(self)
    }
    fn next_timeout(&mut self, timeout: Duration) -> Result<Job, TakeError> {
        Consumer::next_timeout(self, timeout)
    }
    fn nothing_yet(error: &TakeError) -> bool {
        matches!(error, TakeError::Empty | TakeError::Timeout)
    }
    fn runtime_shutdown() -> TakeError {
        TakeError::RuntimeShutdown
    }
}

impl Consumer {
    /// This consumer, for async code.
    pub fn into_async(self) -> AsyncConsumer {
        AsyncConsumer {
            inner: AsyncRecv::new(self),
        }
    }
}

impl AsyncConsumer {
    /// Waits for the next job, as [`Consumer::next`] does.
    pub async fn next(&mut self) -> Result<Job, TakeError> {
        self.inner.next().await
    }

    /// Waits for the next job and decodes it as `T`, as
    /// [`Consumer::next_value`] does.
    pub async fn next_value<T: DeserializeOwned>(&mut self) -> Result<(Job, T), TakeError> {
        self.inner.next().await.and_then(decoded)
    }
}
