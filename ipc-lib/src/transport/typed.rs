//! Typed ends: an end of any channel with its message type stated once.
//!
//! [`TypedSender<T, S>`] and [`TypedReceiver<T, R>`] wrap a byte end `S` /
//! `R` and move `T`s instead of byte slices. One generic pair rather than a
//! `Sender<T>` per transport: the wrapping is the same over the
//! shared-memory [`Sender`](crate::channel::Sender) (the default, so
//! `TypedSender<Job>` is the common case), a
//! [`SocketSender`](crate::socket::SocketSender), and the async ends, so it
//! is written once, and `Sender` stays the byte end it is everywhere in the
//! crate. The blocking methods exist for every end of
//! [`MessageSender`] / [`MessageReceiver`]; the async ones for the ends that
//! have async forms.
//!
//! A typed send is the byte end's send of the value encoded as
//! `send_value` encodes it, and a typed receive the byte end's receive
//! decoded as `recv_value` decodes it (one codec for the crate): typed and
//! untyped ends of one channel interoperate, and each typed operation is
//! traced exactly as the byte operation it wraps, with the same message id.
//!
//! A message that does not decode as `T` is [`RecvError::Decode`], naming
//! its id, the type, and what the codec found wrong; it is consumed, and
//! the next receive returns the next message.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{MessageReceiver, MessageSender};
use crate::channel::{Receiver, RecvError, SendError, Sender};
use crate::codec::{decode, encode_into};

/// A sending end that sends `T`s: [`Sender::into_typed`] (or `From`) on
/// the byte end `S`, which [`into_inner`](Self::into_inner) gives back.
///
/// ```
/// use ipc_lib::channel::{Receiver, Sender, TypedReceiver, TypedSender};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Job { id: u32, path: String }
///
/// let name = format!("doc-typed-ends-{}", std::process::id());
/// let mut rx: TypedReceiver<Job> = Receiver::builder(&name).create()?.into_typed();
/// let mut tx: TypedSender<Job> = Sender::builder(&name).open()?.into_typed();
/// tx.send(&Job { id: 7, path: "/tmp/x".into() })?;
/// assert_eq!(rx.recv()?, Job { id: 7, path: "/tmp/x".into() });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedSender<T: ?Sized, S = Sender> {
    inner: S,
    /// The encoding of the last value sent, kept for its allocation.
    scratch: Vec<u8>,
    /// Holds no `T`: only sends borrowed ones.
    _type: PhantomData<fn(&T)>,
}

/// A receiving end that receives `T`s: [`Receiver::into_typed`] (or
/// `From`) on the byte end `R`, which [`into_inner`](Self::into_inner)
/// gives back.
///
/// A message that is not a `T` is [`RecvError::Decode`] and is consumed;
/// the receive after it returns the next message:
///
/// ```
/// use ipc_lib::channel::{Receiver, RecvError, Sender, TypedReceiver};
///
/// let name = format!("doc-typed-decode-{}", std::process::id());
/// let mut rx: TypedReceiver<String> = Receiver::builder(&name).create()?.into_typed();
/// let mut tx = Sender::builder(&name).open()?;
/// let bad = tx.send(&[0xff])?;
/// tx.send_value("fine")?;
/// match rx.recv() {
///     Err(RecvError::Decode { msg_id, .. }) => assert_eq!(msg_id, bad),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(rx.recv()?, "fine");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedReceiver<T, R = Receiver> {
    inner: R,
    /// The last message's bytes, kept for its allocation.
    buf: Vec<u8>,
    /// Holds no `T`: only returns them.
    _type: PhantomData<fn() -> T>,
}

impl<T: ?Sized, S> TypedSender<T, S> {
    /// Wraps the byte end `inner`.
    pub fn new(inner: S) -> Self {
        TypedSender {
            inner,
            scratch: Vec::new(),
            _type: PhantomData,
        }
    }

    /// The byte end, for what only it does (its name, its layout).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The byte end. Bytes sent through it reach the receiver between the
    /// typed messages, and must decode as whatever it expects.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The byte end back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<T: Serialize + ?Sized, S: MessageSender> TypedSender<T, S> {
    /// Sends `value` and returns its message id; on a full channel blocks
    /// or returns [`SendError::Full`], as the byte end was built.
    pub fn send(&mut self, value: &T) -> Result<u64, SendError> {
        encode_into(value, &mut self.scratch)?;
        self.inner.send(&self.scratch)
    }

    /// Sends `value` if there is room now.
    pub fn try_send(&mut self, value: &T) -> Result<u64, SendError> {
        encode_into(value, &mut self.scratch)?;
        self.inner.try_send(&self.scratch)
    }

    /// Sends `value`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<u64, SendError> {
        encode_into(value, &mut self.scratch)?;
        self.inner.send_timeout(&self.scratch, timeout)
    }
}

impl<T, R> TypedReceiver<T, R> {
    /// Wraps the byte end `inner`.
    pub fn new(inner: R) -> Self {
        TypedReceiver {
            inner,
            buf: Vec::new(),
            _type: PhantomData,
        }
    }

    /// The byte end, for what only it does (its name, its counters).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The byte end, to receive a message that is not a `T`.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The byte end back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<T: DeserializeOwned, R: MessageReceiver> TypedReceiver<T, R> {
    /// Waits for the next message and decodes it.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let id = self.inner.recv_into(&mut self.buf, None)?;
        decode(&self.buf, id)
    }

    /// [`recv`](Self::recv), giving up with [`RecvError::Timeout`] after
    /// `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvError> {
        let id = self.inner.recv_into(&mut self.buf, Some(timeout))?;
        decode(&self.buf, id)
    }

    /// Takes the next message if one is waiting ([`RecvError::Empty`] if
    /// not) and decodes it.
    pub fn try_recv(&mut self) -> Result<T, RecvError> {
        let id = self.inner.try_recv_into(&mut self.buf)?;
        decode(&self.buf, id)
    }
}

/// `into_typed` on each byte end: the same as `From`, but reads left to
/// right and needs no trait in scope.
macro_rules! into_typed {
    ($($end:ty => $typed:ident<T: [$($bound:tt)*]>;)*) => {$(
        impl $end {
            #[doc = concat!("This end, sending or receiving `T`s: a [`", stringify!($typed),
                "`] (see there). [`", stringify!($typed), "::into_inner`] gives it back.")]
            pub fn into_typed<T: $($bound)*>(self) -> $typed<T, Self> {
                $typed::new(self)
            }
        }
    )*};
}

/// The async shared-memory ends (`tokio` feature): [`AsyncSender`] /
/// [`AsyncReceiver`], made typed by `into_typed` as the blocking ones are.
///
/// [`AsyncSender`]: crate::channel::AsyncSender
/// [`AsyncReceiver`]: crate::channel::AsyncReceiver
#[cfg(feature = "tokio")]
mod aio {
    use super::*;
    use crate::channel::{AsyncReceiver, AsyncSender};

    impl<T: Serialize + ?Sized> TypedSender<T, AsyncSender> {
        /// Sends `value`, waiting for room without blocking a runtime
        /// thread, as [`AsyncSender::send_value`] does (it is that call);
        /// returns its message id.
        ///
        /// Not cancel safe, as [`AsyncSender::send`] is not: a future
        /// dropped while it waits for room may or may not have sent the
        /// value. (The value is encoded before any wait, so a dropped
        /// future never leaves half a message.)
        pub async fn send(&mut self, value: &T) -> Result<u64, SendError> {
            self.inner.send_value(value).await
        }
    }

    impl<T: DeserializeOwned> TypedReceiver<T, AsyncReceiver> {
        /// Waits for the next message, without blocking a runtime thread,
        /// and decodes it, as [`AsyncReceiver::recv_value`] does (it is
        /// that call).
        ///
        /// Cancel safe, as [`AsyncReceiver::recv`] is: a message that
        /// arrives while the future waits is kept in the end (not in the
        /// future) for the next `recv`, and the decoding follows the
        /// taking of the message with no `.await` between them, so a
        /// dropped future never holds a message it took.
        pub async fn recv(&mut self) -> Result<T, RecvError> {
            self.inner.recv_value().await
        }
    }

    into_typed! {
        AsyncSender => TypedSender<T: [?Sized + Serialize]>;
        AsyncReceiver => TypedReceiver<T: [DeserializeOwned]>;
    }

    /// The socket ends' async forms, named as theirs are (`*_async`, beside
    /// the blocking methods of the same end).
    impl<T: Serialize + ?Sized> TypedSender<T, crate::socket::SocketSender> {
        /// [`send`](Self::send) for async code, as
        /// [`SocketSender::send_async`](crate::socket::SocketSender::send_async)
        /// (which it calls). Cancel safe: the value goes out whole (one
        /// datagram) in a step that does not wait, after which the future
        /// is done; one dropped while it waits for room has sent nothing.
        pub async fn send_async(&mut self, value: &T) -> Result<u64, SendError> {
            encode_into(value, &mut self.scratch)?;
            self.inner.send_async(&self.scratch).await
        }
    }

    impl<T: DeserializeOwned> TypedReceiver<T, crate::socket::SocketReceiver> {
        /// [`recv`](Self::recv) for async code, as
        /// [`SocketReceiver::recv_value_async`](crate::socket::SocketReceiver::recv_value_async)
        /// (which it is). Cancel safe: a message is taken from the socket
        /// only in a step that does not wait, and decoded in the same step.
        pub async fn recv_async(&mut self) -> Result<T, RecvError> {
            self.inner.recv_value_async().await
        }
    }
}

impl<T: ?Sized, S> From<S> for TypedSender<T, S> {
    fn from(inner: S) -> Self {
        TypedSender::new(inner)
    }
}

impl<T, R> From<R> for TypedReceiver<T, R> {
    fn from(inner: R) -> Self {
        TypedReceiver::new(inner)
    }
}

impl<T: ?Sized, S: fmt::Debug> fmt::Debug for TypedSender<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSender")
            .field("type", &std::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T, R: fmt::Debug> fmt::Debug for TypedReceiver<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedReceiver")
            .field("type", &std::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

into_typed! {
    Sender => TypedSender<T: [?Sized + Serialize]>;
    Receiver => TypedReceiver<T: [DeserializeOwned]>;
    crate::socket::SocketSender => TypedSender<T: [?Sized + Serialize]>;
    crate::socket::SocketReceiver => TypedReceiver<T: [DeserializeOwned]>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{SocketReceiver, SocketSender};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
    struct Job {
        id: u32,
        path: String,
        weights: Vec<f64>,
    }

    fn job(id: u32) -> Job {
        Job {
            id,
            path: format!("/jobs/{id}"),
            weights: vec![f64::from(id) / 2.0],
        }
    }

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ipclib-unit-typed-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    const PATIENCE: Duration = Duration::from_secs(20);

    fn channel_pair(tag: &str) -> (Sender, Receiver) {
        let name = unique(tag);
        let rx = Receiver::builder(&name).capacity(4096).create().unwrap();
        let tx = Sender::builder(&name).open().unwrap();
        (tx, rx)
    }

    #[test]
    fn typed_ends_round_trip_values_with_the_byte_ends_ids() {
        let (tx, rx) = channel_pair("round");
        let mut tx: TypedSender<Job> = tx.into_typed();
        let mut rx: TypedReceiver<Job> = rx.into_typed();
        for id in 0..50 {
            tx.send(&job(id)).unwrap();
            assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(id));
        }
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
        tx.try_send(&job(50)).unwrap();
        tx.send_timeout(&job(51), PATIENCE).unwrap();
        assert_eq!(rx.try_recv().unwrap(), job(50));
        assert_eq!(rx.recv().unwrap(), job(51));
        // Back to the byte ends, which carry on from the same channel.
        let (mut tx, mut rx) = (tx.into_inner(), rx.into_inner());
        let id = tx.send_value(&job(52)).unwrap();
        let mut bytes = Vec::new();
        assert_eq!(rx.recv_into(&mut bytes, Some(PATIENCE)).unwrap(), id);
        assert_eq!(decode::<Job>(&bytes, id).unwrap(), job(52));
    }

    #[test]
    fn typed_and_untyped_ends_share_one_encoding() {
        let (mut tx, rx) = channel_pair("interop");
        let mut rx = TypedReceiver::<Job>::from(rx);
        tx.send_value(&job(1)).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(1));
        let mut tx = TypedSender::<Job>::from(tx);
        tx.send(&job(2)).unwrap();
        let got: Job = rx.get_mut().recv_value_timeout(PATIENCE).unwrap();
        assert_eq!(got, job(2));
        // Unsized values, as send_value takes them.
        let mut tx = tx.into_inner().into_typed::<str>();
        let mut rx = rx.into_inner().into_typed::<String>();
        tx.send("unsized").unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), "unsized");
    }

    #[test]
    fn a_message_that_is_not_a_t_is_a_decode_error_and_the_next_one_arrives() {
        let (mut tx, rx) = channel_pair("garbage");
        let mut rx: TypedReceiver<Job> = rx.into_typed();
        let garbage = tx.send(&[0xff, 0xff, 0xff]).unwrap();
        tx.send_value(&job(9)).unwrap();
        match rx.recv_timeout(PATIENCE) {
            Err(RecvError::Decode {
                msg_id, type_name, ..
            }) => {
                assert_eq!(msg_id, garbage);
                assert!(type_name.ends_with("Job"), "{type_name}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(9));
        // The same from try_recv.
        tx.send(&[]).unwrap();
        tx.send_value(&job(10)).unwrap();
        assert!(matches!(rx.try_recv(), Err(RecvError::Decode { .. })));
        assert_eq!(rx.try_recv().unwrap(), job(10));
    }

    #[test]
    fn a_value_too_large_for_the_channel_is_refused_whole() {
        let name = unique("big");
        let rx = Receiver::builder(&name)
            .capacity(4096)
            .max_message_size(16)
            .create()
            .unwrap();
        let mut rx: TypedReceiver<String> = rx.into_typed();
        let mut tx = Sender::builder(&name).open().unwrap().into_typed::<str>();
        assert!(matches!(
            tx.send(&"x".repeat(16)),
            Err(SendError::TooLarge { len: 17, max: 16 })
        ));
        tx.send("small").unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), "small");
    }

    #[test]
    fn the_socket_transport_has_the_same_typed_ends() {
        let name = unique("socket");
        let rx = SocketReceiver::builder(&name).create().unwrap();
        let mut rx: TypedReceiver<Job, _> = rx.into_typed();
        let tx = SocketSender::builder(&name).open().unwrap();
        let mut tx: TypedSender<Job, _> = tx.into_typed();
        for id in 0..20 {
            tx.send(&job(id)).unwrap();
            assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(id));
        }
        let garbage = tx.get_mut().send(&[0xff]).unwrap();
        tx.send(&job(20)).unwrap();
        match rx.recv_timeout(PATIENCE) {
            Err(RecvError::Decode { msg_id, .. }) => assert_eq!(msg_id, garbage),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), job(20));
    }

    #[cfg(feature = "tokio")]
    #[tokio::test(flavor = "current_thread")]
    async fn the_socket_transport_has_typed_async_forms() {
        let name = unique("socket-async");
        let rx = SocketReceiver::builder(&name).create().unwrap();
        let mut rx: TypedReceiver<Job, _> = rx.into_typed();
        let tx = SocketSender::builder(&name).open().unwrap();
        let mut tx: TypedSender<Job, _> = tx.into_typed();
        for id in 0..20 {
            tx.send_async(&job(id)).await.unwrap();
            assert_eq!(rx.recv_async().await.unwrap(), job(id));
        }
        tx.get_mut().send(&[0xff]).unwrap();
        tx.send_async(&job(20)).await.unwrap();
        assert!(matches!(
            rx.recv_async().await,
            Err(RecvError::Decode { .. })
        ));
        assert_eq!(rx.recv_async().await.unwrap(), job(20));
    }
}
