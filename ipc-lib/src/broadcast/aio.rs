//! The async (tokio) subscriber: the channel's pattern (`channel::aio`),
//! an inline try first and a wait that must sleep moved off the runtime
//! (see `crate::rt` for why).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::subscriber::Subscriber;
use super::{decode, RecvError};
use crate::rt::{off_runtime, CANCEL_SLICE};

/// A subscriber for async code: [`Subscriber::into_async`].
///
/// Cancel safe: dropping a [`recv`](AsyncSubscriber::recv) future loses no
/// message; one that arrives as the future is dropped is kept for the next
/// `recv` (as is a lag report).
#[derive(Debug)]
pub struct AsyncSubscriber {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    sub: Subscriber,
    received: Option<Result<(Vec<u8>, u64), RecvError>>,
}

impl Subscriber {
    /// This subscriber, for async code.
    pub fn into_async(self) -> AsyncSubscriber {
        AsyncSubscriber {
            state: Arc::new(Mutex::new(State {
                sub: self,
                received: None,
            })),
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
        loop {
            let mut state = self.state.clone().lock_owned().await;
            if let Some(r) = state.received.take() {
                return r;
            }
            let mut msg = Vec::new();
            match state.sub.try_recv_into(&mut msg) {
                Err(RecvError::Empty) => {}
                other => return other.map(|id| (msg, id)),
            }
            let done = off_runtime(move |cancelled: &AtomicBool| {
                while !cancelled.load(Ordering::Acquire) {
                    match state.sub.recv_into(&mut msg, Some(CANCEL_SLICE)) {
                        Err(RecvError::Timeout) => {}
                        other => {
                            state.received = Some(other.map(|id| (msg, id)));
                            return;
                        }
                    }
                }
            });
            if done.await.is_none() {
                return Err(RecvError::RuntimeShutdown);
            }
        }
    }
}
