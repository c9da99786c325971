//! The async (tokio) consumer: a wait that must sleep holds no thread;
//! the process's watcher thread sleeps for it (see `crate::rt`).

use std::io;
use std::sync::atomic::AtomicU32;

use serde::de::DeserializeOwned;

use super::consumer::{decoded, Consumer, Job};
use super::TakeError;
use crate::rt::{self, Wait, WATCHER_OP};

/// A consumer for async code: [`Consumer::into_async`].
///
/// Cancel safe: dropping a [`next`](AsyncConsumer::next) future loses no
/// job (it only ever sleeps with nothing taken).
#[derive(Debug)]
pub struct AsyncConsumer {
    consumer: Consumer,
}

impl Wait for Consumer {
    type Output = Job;
    type Error = TakeError;
    fn attempt(&mut self, _check: bool) -> Result<Option<Job>, TakeError> {
        // `take` looks for dead consumers' jobs itself, once a liveness
        // slice has passed.
        self.take()
    }
    fn sleep_on(&self) -> (&AtomicU32, &AtomicU32, Option<u32>) {
        let (word, waiters) = self.wake_words();
        (word, waiters, None)
    }
    fn ready(&self) -> bool {
        self.job_ready()
    }
    fn no_watcher(source: io::Error) -> TakeError {
        TakeError::Os {
            op: WATCHER_OP,
            source,
        }
    }
}

impl Consumer {
    /// This consumer, for async code.
    pub fn into_async(self) -> AsyncConsumer {
        AsyncConsumer { consumer: self }
    }
}

impl AsyncConsumer {
    /// Waits for the next job, as [`Consumer::next`] does.
    pub async fn next(&mut self) -> Result<Job, TakeError> {
        rt::wait(&mut self.consumer).await
    }

    /// Waits for the next job and decodes it as `T`, as
    /// [`Consumer::next_value`] does.
    pub async fn next_value<T: DeserializeOwned>(&mut self) -> Result<(Job, T), TakeError> {
        rt::wait(&mut self.consumer).await.and_then(decoded)
    }
}
