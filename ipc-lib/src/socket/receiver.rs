//! The receiving end: a listening socket, an accept thread, and an epoll
//! set over the connected senders.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};

use super::frame::{split_call, Header, CALL, DATA, HEADER_LEN, HELLO};
use super::{address, os, sys, Conn, DEFAULT_MAX_MESSAGE_SIZE, MAX_MESSAGE_LIMIT};
use crate::channel::{OpenError, RecvError};
use crate::trace::{self, Op};
use crate::transport::MessageReceiver;

/// Builds a [`SocketReceiver`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SocketReceiverBuilder {
    name: String,
    max_message_size: usize,
}

impl SocketReceiverBuilder {
    /// The largest message, in bytes (at most
    /// [`MAX_MESSAGE_LIMIT`](super::MAX_MESSAGE_LIMIT)). Default 64 KiB.
    /// Senders learn it when they connect and refuse larger messages.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Binds the channel's name and starts accepting senders; fails if a
    /// live receiver holds the name.
    pub fn create(self) -> Result<SocketReceiver, OpenError> {
        let (name, addr) = address(&self.name)?;
        let max = self.max_message_size;
        if max == 0 || max > MAX_MESSAGE_LIMIT {
            return Err(OpenError::InvalidLayout {
                name,
                reason: format!(
                    "maximum message size {max} is not between 1 and {MAX_MESSAGE_LIMIT} bytes"
                ),
            });
        }
        let listener = sys::seqpacket().map_err(os(&name, "socket"))?;
        match sys::bind_listen(&listener, &addr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(OpenError::AlreadyExists { name })
            }
            Err(e) => return Err(os(&name, "bind")(e)),
        }
        sys::set_nonblocking(&listener).map_err(os(&name, "fcntl"))?;
        // Set on the listener too, so that connections waiting to be
        // accepted have it for what they queue meanwhile.
        sys::set_passcred(&listener).map_err(os(&name, "SO_PASSCRED"))?;
        let shared = Arc::new(Shared {
            listener,
            epoll: sys::Epoll::new().map_err(os(&name, "epoll_create1"))?,
            stop: sys::eventfd().map_err(os(&name, "eventfd"))?,
            state: Mutex::new(Accepted::default()),
            max,
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ipc-lib-accept".into())
                .spawn(move || shared.accept_loop())
                .map_err(os(&name, "spawning the accept thread"))?
        };
        Ok(SocketReceiver {
            #[cfg(feature = "tokio")]
            registration: None,
            name,
            shared,
            acceptor: Some(acceptor),
            conns: HashMap::new(),
            frames: 0,
            accept: &[DATA],
            buf: vec![0; HEADER_LEN + max],
        })
    }
}

/// What the accept thread hands over to the receiver.
#[derive(Debug, Default)]
struct Accepted {
    /// Connections accepted and registered in epoll that the receiver has
    /// not taken yet, each with its serial number.
    new: Vec<(u64, Conn)>,
    /// Senders accepted so far; the next serial number.
    count: u64,
}

#[derive(Debug)]
struct Shared {
    listener: OwnedFd,
    epoll: sys::Epoll,
    /// Written on drop to end the accept thread.
    stop: OwnedFd,
    state: Mutex<Accepted>,
    max: usize,
}

impl Shared {
    fn accepted(&self) -> std::sync::MutexGuard<'_, Accepted> {
        // The state is a list and a counter, valid after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accept_loop(&self) {
        loop {
            match sys::poll_two(self.listener.as_raw_fd(), self.stop.as_raw_fd()) {
                Ok((_, true)) => return,
                Ok((true, false)) => self.accept_pending(),
                Ok((false, false)) => {}
                Err(e) => {
                    tracing::error!(target: "ipc_lib", "socket accept thread stops: poll: {e}");
                    return;
                }
            }
        }
    }

    /// Accepts every pending connection, greets it and registers it. Holds
    /// the state lock throughout, so a receiver that finds no connection
    /// and nothing pending under the lock knows none is in flight.
    fn accept_pending(&self) {
        let mut state = self.accepted();
        loop {
            let fd = match sys::accept(&self.listener) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and the like: that one connection is lost to
                // its sender, who sees the end of stream.
                Err(e) => {
                    tracing::warn!(target: "ipc_lib", "socket accept failed: {e}");
                    return;
                }
            };
            match self.greet(fd) {
                Ok(conn) => {
                    state.count += 1;
                    let serial = state.count;
                    state.new.push((serial, conn));
                }
                Err(e) => tracing::warn!(target: "ipc_lib", "socket sender refused: {e}"),
            }
        }
    }

    fn greet(&self, fd: OwnedFd) -> io::Result<Conn> {
        let (peer_pid, uid) = sys::peer_cred(&fd)?;
        sys::set_passcred(&fd)?;
        if uid != sys::euid() {
            return Err(io::Error::other(format!(
                "pid {peer_pid} runs as uid {uid}, not as this process's"
            )));
        }
        let hello = Header {
            magic: HELLO,
            len: 0,
            msg_id: self.max as u64,
            reply_to: 0,
        };
        match sys::send_parts(fd.as_raw_fd(), &hello.encode(), &[]) {
            // A sender that already left still had its say: what it sent
            // before leaving is queued here and must be read.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
            r => r.map(drop)?,
        }
        self.epoll.add(fd.as_raw_fd())?;
        Ok(Conn { fd, peer_pid })
    }
}

/// The receiving end of a socket channel; any number of
/// [`SocketSender`](super::SocketSender)s, in any processes of this user,
/// send to it.
///
/// Receives are through [`MessageReceiver`]: `recv`, `recv_timeout`,
/// `try_recv`, `recv_value`, ... Every message received traces a
/// `msg_recv` with the id its sender traced.
#[derive(Debug)]
pub struct SocketReceiver {
    /// The epoll set registered with tokio, made on first async use; before
    /// `shared`, so it is deregistered before the set closes.
    #[cfg(feature = "tokio")]
    registration: Option<crate::asyncio::Registration>,
    name: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// Open connections by descriptor, with their serial numbers. Shared
    /// with an rpc server's workers, which reply on them.
    conns: HashMap<RawFd, (u64, Arc<Conn>)>,
    /// Frames received, the position a [`RecvError::Corrupt`] reports.
    frames: u64,
    /// The frames taken: DATA, and CALL too for an rpc server.
    accept: &'static [u32],
    buf: Vec<u8>,
}

/// A frame taken from a connection: its header, and which connection (by
/// descriptor and serial number, so a reply cannot reach a later
/// connection that reused the descriptor).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub header: Header,
    pub fd: RawFd,
    pub serial: u64,
}

impl SocketReceiver {
    /// Starts building the receiving end of socket channel `name` (at most
    /// 98 bytes; a leading `/` is dropped).
    pub fn builder(name: impl Into<String>) -> SocketReceiverBuilder {
        SocketReceiverBuilder {
            name: name.into(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The channel's name, as traced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest message senders may send.
    pub fn max_message_size(&self) -> usize {
        self.shared.max
    }

    /// Senders connected now (as far as this end has seen).
    pub fn senders(&mut self) -> usize {
        self.take_new();
        self.conns.len()
    }

    /// Takes rpc calls (CALL frames) as well as plain requests: for an rpc
    /// server, whose channel is no plain one.
    pub(crate) fn accept_calls(&mut self) {
        self.accept = &[DATA, CALL];
    }

    /// The connection a frame came from, if it is still open.
    pub(crate) fn conn(&self, fd: RawFd, serial: u64) -> Option<&Arc<Conn>> {
        self.conns
            .get(&fd)
            .filter(|(s, _)| *s == serial)
            .map(|(_, c)| c)
    }

    fn take_new(&mut self) {
        let new = std::mem::take(&mut self.shared.accepted().new);
        for (serial, conn) in new {
            self.conns
                .insert(conn.fd.as_raw_fd(), (serial, Arc::new(conn)));
        }
    }

    fn close(&mut self, fd: RawFd) {
        self.shared.epoll.delete(fd);
        self.conns.remove(&fd);
    }

    /// Whether no sender is connected, none is on its way in, and at least
    /// one came: nothing can arrive any more until a new one connects.
    fn disconnected(&mut self) -> bool {
        let state = self.shared.accepted();
        if !self.conns.is_empty() || !state.new.is_empty() || state.count == 0 {
            return false;
        }
        // A sender that connected and left before the accept thread saw it
        // still has its messages in the backlog.
        let pending = sys::poll_one(
            std::os::fd::AsFd::as_fd(&self.shared.listener),
            libc::POLLIN,
            Some(Duration::ZERO),
        );
        !matches!(pending, Ok(r) if r != 0)
    }

    /// For [`crate::select`]: the descriptor that turns readable when a
    /// connection has a frame (or ended), and whether a receive would
    /// return at once now (something to read, or `Disconnected`).
    pub(crate) fn select_fd(&self) -> RawFd {
        self.shared.epoll.raw()
    }

    pub(crate) fn select_ready(&mut self) -> bool {
        let fd = self.shared.epoll.raw();
        // SAFETY: the epoll descriptor is owned by `shared`, which outlives
        // this borrow.
        let epoll = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if matches!(sys::poll_one(epoll, libc::POLLIN, Some(Duration::ZERO)), Ok(r) if r != 0) {
            return true;
        }
        self.take_new();
        self.conns.is_empty() && self.disconnected()
    }

    /// Takes the next DATA frame into `out`, waiting until `deadline`
    /// (`Some(now)`: not at all). `Empty` when not waiting, `Timeout` when
    /// the deadline passed.
    fn next_frame(
        &mut self,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
        waiting: bool,
    ) -> Result<Received, RecvError> {
        loop {
            // With no connection left, epoll would wait for nothing.
            if self.conns.is_empty() {
                self.take_new();
                if self.disconnected() {
                    return Err(RecvError::Disconnected);
                }
            }
            let left = sys::remaining(deadline);
            let ready = self
                .shared
                .epoll
                .wait_one(left)
                .map_err(|source| RecvError::Os {
                    op: "epoll_wait",
                    source,
                })?;
            let Some(fd) = ready else {
                if sys::remaining(deadline) == Some(Duration::ZERO) {
                    return Err(if waiting {
                        RecvError::Timeout
                    } else {
                        RecvError::Empty
                    });
                }
                continue;
            };
            if !self.conns.contains_key(&fd) {
                self.take_new();
            }
            let Some(&(serial, _)) = self.conns.get(&fd) else {
                // Closed by us already; epoll forgot it with the close.
                continue;
            };
            match sys::recv_trunc(fd, &mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    self.close(fd);
                    return Err(RecvError::Os { op: "recv", source });
                }
                Ok(sys::Datagram::End) => self.close(fd),
                Ok(sys::Datagram::Bytes(n)) => {
                    let got = n.min(self.buf.len());
                    let checked = Header::check(&self.buf[..got], n, self.accept, self.shared.max)
                        .and_then(|h| {
                            if h.magic == CALL {
                                split_call(&self.buf[HEADER_LEN..got])?;
                            }
                            Ok(h)
                        });
                    match checked {
                        Ok(header) => {
                            out.clear();
                            out.extend_from_slice(&self.buf[HEADER_LEN..got]);
                            self.frames += 1;
                            return Ok(Received { header, fd, serial });
                        }
                        Err(reason) => {
                            // A peer that sent one bad frame cannot be
                            // trusted with the next.
                            self.close(fd);
                            return Err(self.corrupt(reason));
                        }
                    }
                }
            }
        }
    }

    fn corrupt(&self, reason: crate::channel::Corruption) -> RecvError {
        RecvError::Corrupt {
            pos: self.frames,
            reason,
        }
    }

    /// [`next_frame`](Self::next_frame), traced as a channel receive.
    pub(crate) fn recv_frame(
        &mut self,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
        waiting: bool,
    ) -> Result<Received, RecvError> {
        let r = self.next_frame(out, deadline, waiting)?;
        trace::emit_op(Op {
            size: out.len() as u64,
            msg_id: r.header.msg_id,
            ..Op::new(EventKind::MsgRecv, ChannelKind::IpclibChannel, &self.name)
        });
        Ok(r)
    }
}

#[cfg(feature = "tokio")]
impl SocketReceiver {
    /// [`recv_frame`](Self::recv_frame) for async code: waits on the
    /// reactor, never blocking the thread.
    pub(crate) async fn recv_frame_async(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<Received, RecvError> {
        use crate::asyncio;
        use tokio::io::Interest;

        let fd = self.shared.epoll.raw();
        let os = |op| move |source| RecvError::Os { op, source };
        // SAFETY: the registration lives in self.registration or in this
        // call, and self.registration is declared (so dropped) before the
        // field that owns fd.
        let reg = unsafe { asyncio::take(&mut self.registration, fd, Interest::READABLE) }
            .map_err(os("tokio register"))?;
        let r = asyncio::retry(
            &reg,
            Interest::READABLE,
            || match self.recv_frame(out, Some(Instant::now()), false) {
                Err(RecvError::Empty) => Ok(None),
                r => r.map(Some),
            },
            os("tokio ready"),
        )
        .await;
        self.registration = Some(reg);
        r
    }

    /// [`recv`](MessageReceiver::recv) for async code.
    pub async fn recv_async(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_frame_async(&mut out).await.map(|_| out)
    }

    /// [`recv_value`](MessageReceiver::recv_value) for async code.
    pub async fn recv_value_async<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<T, RecvError> {
        let mut out = Vec::new();
        let r = self.recv_frame_async(&mut out).await?;
        crate::codec::decode(&out, r.header.msg_id)
    }
}

impl MessageReceiver for SocketReceiver {
    fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<u64, RecvError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        Ok(self.recv_frame(out, deadline, true)?.header.msg_id)
    }

    fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<u64, RecvError> {
        Ok(self
            .recv_frame(out, Some(Instant::now()), false)?
            .header
            .msg_id)
    }
}

impl Drop for SocketReceiver {
    fn drop(&mut self) {
        sys::eventfd_signal(&self.shared.stop);
        if let Some(t) = self.acceptor.take() {
            // The thread only polls and accepts; it ends at the signal.
            let _ = t.join();
        }
    }
}
