//! The sending end: one connected socket.

use std::time::Duration;

use super::{Conn, Wait};
use crate::channel::{OpenError, SendError, WhenFull};
use crate::transport::MessageSender;

/// Builds a [`SocketSender`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SocketSenderBuilder {
    name: String,
    when_full: WhenFull,
    wait: Duration,
}

impl SocketSenderBuilder {
    /// What `send` does when the socket is full. Default
    /// [`WhenFull::Block`].
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// How long `open` waits for a receiver to listen at the name, and
    /// for it to greet the connection (at least 2 s for that). Default
    /// [`DEFAULT_OPEN_WAIT`](crate::DEFAULT_OPEN_WAIT) (5 s);
    /// `Duration::ZERO` fails at once if none listens.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Connects to the channel's receiver, waiting for one as
    /// [`wait`](Self::wait) says: [`OpenError::NotFound`] when none
    /// listened in time, [`OpenError::NotOwner`] when it runs as another
    /// user.
    pub fn open(self) -> Result<SocketSender, OpenError> {
        let opened = crate::patience::block(Conn::opening(&self.name, self.wait)?)?;
        Ok(self.finish(opened))
    }

    /// [`open`](Self::open) for async code (feature `tokio`): waits as
    /// long, with the same errors, for the receiver to listen (naps on
    /// tokio's timer, so it needs a runtime with time enabled) and to
    /// greet the connection (on tokio's reactor), never blocking the
    /// thread. Cancel safe: a dropped future leaves nothing open.
    #[cfg(feature = "tokio")]
    pub async fn open_async(self) -> Result<SocketSender, OpenError> {
        let opened = crate::patience::wait(Conn::opening(&self.name, self.wait)?).await?;
        Ok(self.finish(opened))
    }

    fn finish(self, (conn, name, max): (Conn, String, usize)) -> SocketSender {
        SocketSender {
            #[cfg(feature = "tokio")]
            registration: None,
            name,
            conn,
            max,
            pid: std::process::id(),
            when_full: self.when_full,
        }
    }
}

/// The sending end of a socket channel. Sends are through
/// [`MessageSender`]: `send`, `try_send`, `send_timeout`, `send_value`.
///
/// A receiver that closed its end or died makes sends fail with
/// [`SendError::Disconnected`] (the kernel reports it; no signal is
/// raised). After `fork`, a child must open its own sender: ids carry the
/// pid of the process that opened it.
#[derive(Debug)]
pub struct SocketSender {
    /// The socket registered with tokio, made on first async use. Before
    /// `conn`, so it is dropped (deregistered) before the socket closes.
    #[cfg(feature = "tokio")]
    registration: Option<crate::asyncio::Registration>,
    name: String,
    conn: Conn,
    max: usize,
    pid: u32,
    when_full: WhenFull,
}

impl SocketSender {
    /// Starts building the sending end of socket channel `name`.
    pub fn builder(name: impl Into<String>) -> SocketSenderBuilder {
        SocketSenderBuilder {
            name: name.into(),
            when_full: WhenFull::default(),
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    /// The channel's name, as traced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest message the receiver takes.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// The receiver's process id.
    pub fn receiver_pid(&self) -> u32 {
        self.conn.peer_pid
    }

    fn send_inner(&mut self, msg: &[u8], wait: Wait) -> Result<u64, SendError> {
        self.conn.send_message(
            super::frame::DATA,
            &self.name,
            self.pid,
            msg,
            wait,
            self.max,
        )
    }
}

#[cfg(feature = "tokio")]
impl SocketSender {
    /// [`send`](MessageSender::send) for async code: waits for room
    /// without blocking the thread.
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        use crate::asyncio;
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        let fd = self.conn.fd.as_raw_fd();
        // SAFETY: the registration lives in self.registration or in this
        // call, and self.registration is declared (so dropped) before the
        // field that owns fd.
        let reg = unsafe { asyncio::take(&mut self.registration, fd, Interest::WRITABLE) }
            .map_err(|source| SendError::Os {
                op: "tokio register",
                source,
            })?;
        let r = asyncio::retry(
            &reg,
            Interest::WRITABLE,
            || match self.send_inner(msg, Wait::No) {
                Err(SendError::Full) => Ok(None),
                r => r.map(Some),
            },
            |source| SendError::Os {
                op: "tokio ready",
                source,
            },
        )
        .await;
        self.registration = Some(reg);
        r
    }

    /// [`send_value`](MessageSender::send_value) for async code.
    pub async fn send_value_async<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<u64, SendError> {
        let buf = crate::codec::encode(value)?;
        self.send_async(&buf).await
    }
}

impl MessageSender for SocketSender {
    fn send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        let wait = match self.when_full {
            WhenFull::Block => Wait::Until(None),
            WhenFull::Error => Wait::No,
        };
        self.send_inner(msg, wait)
    }

    fn try_send(&mut self, msg: &[u8]) -> Result<u64, SendError> {
        self.send_inner(msg, Wait::No)
    }

    fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<u64, SendError> {
        self.send_inner(msg, Wait::timeout(timeout))
    }
}
