//! Broadcast: one publisher, any number of subscribers in any processes,
//! each subscriber receiving every message (publish/subscribe over shared
//! memory), with tokio's `broadcast` lag policy.
//!
//! A broadcast is a named shared-memory object (`/dev/shm/NAME`, 0600)
//! holding the newest `capacity` messages in fixed slots ([`layout`]).
//!
//! - [`Publisher::publish`] never waits for anyone: it writes over the
//!   oldest message. Subscribers do not register, so one that is slow,
//!   stopped or SIGKILLed costs the publisher and the others nothing.
//! - A [`Subscriber`] that falls more than `capacity` messages behind
//!   gets [`RecvError::Lagged`] with exactly how many it missed, and its
//!   next receive returns the oldest message still held. A read that the
//!   publisher overtook midway (a torn read) is caught by the slot's
//!   seqlock stamps and is lag too, never data.
//! - A subscriber starts with the first message published after it joined
//!   ([`Start::New`], the default), the newest already published
//!   ([`Start::Latest`]) or the oldest still held ([`Start::Oldest`]).
//! - When the publisher leaves or dies (seen as a channel sees a dead
//!   peer: a pidfd, checked every 20 ms while waiting), subscribers get
//!   [`RecvError::Disconnected`] once they have read everything it
//!   published. A publisher killed mid-publish loses only that message.
//! - Each slot carries the channel frame's checksum: a slot damaged by
//!   another writer is [`RecvError::Corrupt`] for that message only (slots
//!   are fixed, so the next one is found without trusting this one).
//! - Every publish is traced as a `msg_send` on an `ipclib_broadcast`, every
//!   delivery as a `msg_recv` with the same message id, and a lag as a
//!   `drop` of the messages missed (source `lagged`).
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::broadcast::{Publisher, Start, Subscriber};
//!
//! let name = format!("doc-broadcast-{}", std::process::id());
//! let mut publisher = Publisher::builder(&name).capacity(64).max_message_size(256).create()?;
//! // In other processes (here the same one):
//! let mut a = Subscriber::builder(&name).open()?;
//! let mut b = Subscriber::builder(&name).start(Start::Oldest).open()?;
//! publisher.publish(b"tick")?;
//! assert_eq!(a.recv_timeout(Duration::from_secs(5))?, b"tick");
//! assert_eq!(b.recv_timeout(Duration::from_secs(5))?, b"tick");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "tokio")]
mod aio;
pub mod layout;
mod publisher;
mod subscriber;

#[cfg(feature = "tokio")]
pub use aio::AsyncSubscriber;
pub use layout::Layout;
pub use publisher::{Publisher, PublisherBuilder};
pub use subscriber::{Start, Subscriber, SubscriberBuilder};

pub use crate::channel::{CodecError, Corruption, OpenError};

/// Why a message was not published. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message is larger than the broadcast's maximum.
    #[error("message of {len} bytes exceeds the broadcast's maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The value could not be serialized.
    #[error("could not encode the message")]
    Encode(#[source] CodecError),
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// `try_recv`: no new message.
    #[error("no new message")]
    Empty,
    /// `recv_timeout`: none arrived within the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The publisher left or died, and every message it published that
    /// this subscriber could still read has been read.
    #[error("the publisher is gone")]
    Disconnected,
    /// The publisher wrote over `missed` messages this subscriber had not
    /// read. The next receive returns the oldest message still held.
    #[error("lagged behind: {missed} messages were overwritten unread")]
    Lagged { missed: u64 },
    /// Message `seq` (its id is `seq + 1`) was damaged in shared memory.
    /// Only that message is lost: the next receive returns the next one.
    #[error("corrupt slot for message {seq}: {reason}")]
    Corrupt {
        seq: u64,
        #[source]
        reason: Corruption,
    },
    /// A typed receive got a message that does not decode as `type_name`.
    /// The message is consumed.
    #[error("message {msg_id} does not decode as {type_name}")]
    Decode {
        msg_id: u64,
        type_name: &'static str,
        #[source]
        source: CodecError,
    },
    /// A system call failed in a way that says nothing about the
    /// publisher (an async receive: no watcher thread could be started).
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Decodes message `msg_id` as a `T`, with the codec every ipc-lib end
/// uses.
fn decode<T: serde::de::DeserializeOwned>(buf: &[u8], msg_id: u64) -> Result<T, RecvError> {
    crate::codec::decode_bytes(buf).map_err(|source| RecvError::Decode {
        msg_id,
        type_name: std::any::type_name::<T>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ipclib-unit-bc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn publisher(tag: &str, capacity: usize) -> Publisher {
        Publisher::builder(unique(tag))
            .capacity(capacity)
            .max_message_size(64)
            .create()
            .unwrap()
    }

    #[test]
    fn every_subscriber_gets_every_message_with_the_publish_id() {
        let mut p = publisher("every", 8);
        let mut subs: Vec<_> = (0..3)
            .map(|_| Subscriber::builder(p.name()).open().unwrap())
            .collect();
        let ids: Vec<u64> = (0..5u8).map(|i| p.publish(&[i; 3]).unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        for s in &mut subs {
            for i in 0..5u8 {
                let mut out = Vec::new();
                assert_eq!(s.try_recv_into(&mut out).unwrap(), u64::from(i) + 1);
                assert_eq!(out, [i; 3]);
            }
            assert!(matches!(s.try_recv(), Err(RecvError::Empty)));
        }
    }

    #[test]
    fn a_lagging_subscriber_learns_exactly_how_many_it_missed() {
        let mut p = publisher("lag", 4);
        let mut s = Subscriber::builder(p.name()).open().unwrap();
        for i in 0..10u8 {
            p.publish(&[i]).unwrap();
        }
        assert!(matches!(s.try_recv(), Err(RecvError::Lagged { missed: 6 })));
        for i in 6..10u8 {
            assert_eq!(s.try_recv().unwrap(), [i]);
        }
        assert!(matches!(s.try_recv(), Err(RecvError::Empty)));
        assert_eq!(s.missed(), 6);
    }

    #[test]
    fn start_positions_pick_new_latest_or_oldest() {
        let mut p = publisher("start", 4);
        for i in 0..6u8 {
            p.publish(&[i]).unwrap();
        }
        let open = |start| Subscriber::builder(p.name()).start(start).open().unwrap();
        let (mut new, mut latest, mut oldest) =
            (open(Start::New), open(Start::Latest), open(Start::Oldest));
        p.publish(&[6]).unwrap();
        assert_eq!(new.try_recv().unwrap(), [6]);
        assert_eq!(latest.try_recv().unwrap(), [5]);
        // Slot of message 2 was written over by message 6 after the join.
        assert!(matches!(
            oldest.try_recv(),
            Err(RecvError::Lagged { missed: 1 })
        ));
        assert_eq!(oldest.try_recv().unwrap(), [3]);
    }

    #[test]
    fn the_publisher_leaving_disconnects_after_the_last_message() {
        let mut p = publisher("bye", 4);
        let mut s = Subscriber::builder(p.name()).open().unwrap();
        p.publish(b"last").unwrap();
        drop(p);
        assert_eq!(s.recv_timeout(Duration::from_secs(5)).unwrap(), b"last");
        assert!(matches!(
            s.recv_timeout(Duration::from_secs(5)),
            Err(RecvError::Disconnected)
        ));
    }

    #[test]
    fn a_second_publisher_is_refused_while_the_first_lives() {
        let mut p = Publisher::builder(unique("two"))
            .unlink_on_drop(false)
            .create()
            .unwrap();
        assert_eq!(p.publish(b"a").unwrap(), 1);
        let name = p.name().to_owned();
        assert!(matches!(
            Publisher::builder(&name).open(),
            Err(OpenError::PeerAttached { .. })
        ));
        drop(p);
        let mut again = Publisher::builder(&name).open().unwrap();
        // It carries on the numbering.
        assert_eq!(again.publish(b"x").unwrap(), 2);
        drop(again);
        assert!(crate::remove(&name).unwrap());
    }

    #[test]
    fn oversized_messages_are_refused_whole() {
        let mut p = publisher("big", 4);
        assert!(matches!(
            p.publish(&[0; 65]),
            Err(PublishError::TooLarge { len: 65, max: 64 })
        ));
    }
}
