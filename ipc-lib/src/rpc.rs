//! Request/response between processes: a [`Server`] answers the
//! [`Client`]s that [`call`](Client::call) it, each reply paired with its
//! request.
//!
//! It runs over the Unix-socket transport ([`socket`](crate::socket)), not
//! over shared-memory channels: a socket connection goes both ways, so a
//! reply returns on the connection its request came in on, with no reply
//! channel per client to create, name and clean up; and a server that dies
//! ends every client's connection, so a call in progress fails at once
//! ([`CallError::Disconnected`]) instead of waiting out its timeout.
//!
//! A request is a DATA frame like any channel message; a reply is a REPLY
//! frame (or a FAULT, when the server could not handle the request) whose
//! header carries the request's message id. Tracing: the request's
//! `msg_send` / `msg_recv` pair as channel messages do; the reply's
//! `msg_send` / `msg_recv` carry the reply's own id and, in `aux`, the
//! request's id, so the collector pairs the reply with its request too.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::rpc::{Client, Server};
//!
//! let name = format!("doc-rpc-{}", std::process::id());
//! let mut server = Server::builder(&name).create()?;
//! let t = std::thread::spawn(move || server.serve_values(|x: u32| x * 2));
//! let mut client = Client::connect(&name)?;
//! let doubled: u32 = client.call_value(&21u32, Duration::from_secs(5))?;
//! assert_eq!(doubled, 42);
//! drop(client);
//! // The server's loop ends when every client has left.
//! assert_eq!(t.join().unwrap()?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{CodecError, Corruption, OpenError, RecvError, SendError};
use crate::codec::{decode, decode_bytes, encode};
use crate::socket::frame::{Header, FAULT, HEADER_LEN, REPLY};
use crate::socket::{next_id, sys, Conn, SocketReceiver, SocketReceiverBuilder, Wait};
use crate::trace::{self, Op};

/// How long a server waits for room to send a reply by default: a client
/// that stops reading its replies must not stall every other client.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request could not be sent (too large, not encodable, ...).
    #[error("could not send the request")]
    Send(#[source] SendError),
    /// No reply within the timeout. A reply that arrives later is
    /// discarded by the next call (see [`Client::late_replies`]).
    #[error("no reply within the timeout")]
    Timeout,
    /// The server closed the connection or died.
    #[error("the server is gone")]
    Disconnected,
    /// The server's reply frame failed validation.
    #[error("corrupt reply: {0}")]
    Corrupt(#[source] Corruption),
    /// A reply to a request this client never made (or not yet).
    #[error("reply to request {reply_to:#x} while waiting for {request:#x}")]
    UnexpectedReply { request: u64, reply_to: u64 },
    /// The server could not handle the request, and said why.
    #[error("the server could not handle the request: {message}")]
    Remote { message: String },
    /// A typed call got a reply that does not decode as the type asked for.
    #[error("the reply does not decode as the requested type")]
    Decode(#[source] CodecError),
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl From<SendError> for CallError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Disconnected => CallError::Disconnected,
            SendError::Timeout => CallError::Timeout,
            e => CallError::Send(e),
        }
    }
}

/// Builds a [`Server`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ServerBuilder {
    socket: SocketReceiverBuilder,
    reply_timeout: Duration,
}

impl ServerBuilder {
    /// The largest request, and the largest reply, in bytes. Default
    /// 64 KiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.socket = self.socket.max_message_size(bytes);
        self
    }

    /// How long a reply may wait for room in a client's socket. Default
    /// [`DEFAULT_REPLY_TIMEOUT`].
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Binds the server's name; fails if a live server holds it.
    pub fn create(self) -> Result<Server, OpenError> {
        Ok(Server {
            socket: self.socket.create()?,
            pid: std::process::id(),
            reply_timeout: self.reply_timeout,
        })
    }
}

/// One request, to answer with [`Server::reply`] (or
/// [`fault`](Server::fault)).
#[derive(Debug)]
pub struct Request {
    id: u64,
    fd: RawFd,
    serial: u64,
    payload: Vec<u8>,
}

impl Request {
    /// The request's message id (the client's pid in the high 32 bits).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the request as `T`.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        decode(&self.payload, self.id)
    }
}

/// The answering side: any number of clients connect to it by name.
#[derive(Debug)]
pub struct Server {
    socket: SocketReceiver,
    pid: u32,
    reply_timeout: Duration,
}

impl Server {
    /// Starts building server `name` (a socket channel name).
    pub fn builder(name: impl Into<String>) -> ServerBuilder {
        ServerBuilder {
            socket: SocketReceiver::builder(name),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// The server's name, as traced.
    pub fn name(&self) -> &str {
        self.socket.name()
    }

    /// The socket requests arrive on, and its descriptor that polls
    /// readable when one has, for [`crate::select`].
    pub(crate) fn socket_mut(&mut self) -> &mut SocketReceiver {
        &mut self.socket
    }

    pub(crate) fn select_fd(&self) -> RawFd {
        self.socket.select_fd()
    }

    /// Waits for the next request (at most `timeout` when given).
    /// [`RecvError::Disconnected`] once every client that came has left;
    /// [`RecvError::Corrupt`] for a client that sent garbage (it is cut off;
    /// the others are not).
    pub fn next_request(&mut self, timeout: Option<Duration>) -> Result<Request, RecvError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut payload = Vec::new();
        let r = self.socket.recv_frame(&mut payload, deadline, true)?;
        Ok(Request {
            id: r.header.msg_id,
            fd: r.fd,
            serial: r.serial,
            payload,
        })
    }

    /// Answers `request` with `response`; returns the reply's id.
    /// [`SendError::Disconnected`] when its client has left.
    pub fn reply(&mut self, request: &Request, response: &[u8]) -> Result<u64, SendError> {
        self.answer(request, REPLY, response)
    }

    /// Answers `request` with `value`, encoded with postcard.
    pub fn reply_value<T: Serialize + ?Sized>(
        &mut self,
        request: &Request,
        value: &T,
    ) -> Result<u64, SendError> {
        self.reply(request, &encode(value)?)
    }

    /// Tells the client its request could not be handled, and why (the
    /// client's call returns [`CallError::Remote`]).
    pub fn fault(&mut self, request: &Request, reason: &str) -> Result<u64, SendError> {
        let max = self.socket.max_message_size();
        // A reason too long to send is cut at a character boundary: the
        // client learns of the failure either way.
        let mut end = reason.len().min(max);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.answer(request, FAULT, &reason.as_bytes()[..end])
    }

    fn answer(&mut self, request: &Request, magic: u32, body: &[u8]) -> Result<u64, SendError> {
        self.answer_with(request, magic, body, Wait::timeout(self.reply_timeout))
    }

    fn answer_with(
        &mut self,
        request: &Request,
        magic: u32,
        body: &[u8],
        wait: Wait,
    ) -> Result<u64, SendError> {
        let conn = self
            .socket
            .conn(request.fd, request.serial)
            .ok_or(SendError::Disconnected)?;
        let id = next_id(self.pid);
        let head = Header {
            magic,
            len: 0,
            msg_id: id,
            reply_to: request.id,
        };
        let max = self.socket.max_message_size();
        let at = conn.send_frame(head, body, wait, max)?;
        trace_reply(
            EventKind::MsgSend,
            self.socket.name(),
            body.len(),
            id,
            request.id,
            Some(at),
        );
        Ok(id)
    }

    /// Answers requests with `handler` until every client that came has
    /// left; returns how many were answered. A client that sends garbage,
    /// leaves before its answer or stops reading answers is logged (the
    /// `tracing` crate, target `ipc_lib`) and does not stop the loop.
    pub fn serve(&mut self, mut handler: impl FnMut(&[u8]) -> Vec<u8>) -> Result<u64, RecvError> {
        self.serve_with(|server, req| {
            let response = handler(req.payload());
            server.reply(req, &response)
        })
    }

    /// [`serve`](Self::serve) with typed requests and responses (postcard).
    /// A request that does not decode as `Req` is answered with a fault.
    pub fn serve_values<Req, Resp>(
        &mut self,
        mut handler: impl FnMut(Req) -> Resp,
    ) -> Result<u64, RecvError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
    {
        self.serve_with(|server, req| match req.value::<Req>() {
            Ok(value) => server.reply_value(req, &handler(value)),
            Err(e) => server.fault(req, &chain(&e)),
        })
    }

    fn serve_with(
        &mut self,
        mut answer: impl FnMut(&mut Server, &Request) -> Result<u64, SendError>,
    ) -> Result<u64, RecvError> {
        let mut answered = 0;
        loop {
            let req = match self.next_request(None) {
                Ok(req) => req,
                Err(RecvError::Disconnected) => return Ok(answered),
                Err(e @ RecvError::Corrupt { .. }) => {
                    tracing::warn!(target: "ipc_lib", server = self.name(), "client cut off: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match answer(self, &req) {
                Ok(_) => answered += 1,
                Err(e) => tracing::warn!(
                    target: "ipc_lib",
                    server = self.name(),
                    request = req.id,
                    "reply not delivered: {e}"
                ),
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl Server {
    /// [`next_request`](Self::next_request) for async code (no timeout:
    /// wrap it in `tokio::time::timeout` for one).
    pub async fn next_request_async(&mut self) -> Result<Request, RecvError> {
        let mut payload = Vec::new();
        let r = self.socket.recv_frame_async(&mut payload).await?;
        Ok(Request {
            id: r.header.msg_id,
            fd: r.fd,
            serial: r.serial,
            payload,
        })
    }

    /// [`reply`](Self::reply) for async code: waits for room in the
    /// client's socket (which only a client that stopped reading lets
    /// fill) without blocking the thread.
    pub async fn reply_async(
        &mut self,
        request: &Request,
        response: &[u8],
    ) -> Result<u64, SendError> {
        use tokio::io::Interest;

        match self.answer_with(request, REPLY, response, Wait::No) {
            Err(SendError::Full) => {}
            r => return r,
        }
        let fd = self
            .socket
            .conn(request.fd, request.serial)
            .ok_or(SendError::Disconnected)?
            .fd
            .as_raw_fd();
        // SAFETY: the connection is only closed by a receive on the
        // server, which needs `&mut self`, held by this call for the
        // registration's whole life.
        let reg = unsafe { crate::asyncio::take(&mut None, fd, Interest::WRITABLE) }.map_err(
            |source| SendError::Os {
                op: "tokio register",
                source,
            },
        )?;
        crate::asyncio::retry(
            &reg,
            Interest::WRITABLE,
            || match self.answer_with(request, REPLY, response, Wait::No) {
                Err(SendError::Full) => Ok(None),
                r => r.map(Some),
            },
            |source| SendError::Os {
                op: "tokio ready",
                source,
            },
        )
        .await
    }
}

#[cfg(feature = "tokio")]
impl Client {
    /// [`call`](Self::call) for async code: never blocks the thread.
    pub async fn call_async(
        &mut self,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        use tokio::io::Interest;

        let fd = self.conn.fd.as_raw_fd();
        let both = Interest::READABLE | Interest::WRITABLE;
        // SAFETY: the registration lives in self.registration or in this
        // call, and self.registration is declared (so dropped) before
        // `conn`, which owns fd.
        let reg = unsafe { crate::asyncio::take(&mut self.registration, fd, both) }.map_err(
            |source| CallError::Os {
                op: "tokio register",
                source,
            },
        )?;
        let os = |source| CallError::Os {
            op: "tokio ready",
            source,
        };
        let exchange = async {
            let id = crate::asyncio::retry(
                &reg,
                Interest::WRITABLE,
                || match self.send_request(request, Wait::No) {
                    Err(CallError::Send(SendError::Full)) => Ok(None),
                    r => r.map(Some),
                },
                os,
            )
            .await?;
            crate::asyncio::retry(&reg, Interest::READABLE, || self.take_reply(id), os).await
        };
        let r = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout));
        self.registration = Some(reg);
        r
    }

    /// [`call_value`](Self::call_value) for async code.
    pub async fn call_value_async<Req, Resp>(
        &mut self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        decode_reply(&self.call_async(&encode(request)?, timeout).await?)
    }
}

fn decode_reply<T: DeserializeOwned>(reply: &[u8]) -> Result<T, CallError> {
    decode_bytes(reply).map_err(CallError::Decode)
}

/// An error and its sources, joined, for a fault message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Traces a reply's send (stamped `at_ns`) or receive (now).
fn trace_reply(
    kind: EventKind,
    name: &str,
    size: usize,
    id: u64,
    request: u64,
    at_ns: Option<u64>,
) {
    trace::emit_op(Op {
        size: size as u64,
        msg_id: id,
        aux: request,
        at_ns,
        ..Op::new(kind, ChannelKind::IpclibChannel, name)
    });
}

/// The calling side: one connection to a server.
#[derive(Debug)]
pub struct Client {
    /// The socket registered with tokio, made on first async use; before
    /// `conn`, so it is deregistered before the socket closes.
    #[cfg(feature = "tokio")]
    registration: Option<crate::asyncio::Registration>,
    name: String,
    conn: Conn,
    max: usize,
    pid: u32,
    buf: Vec<u8>,
    late: u64,
}

impl Client {
    /// Connects to server `name`, waiting up to
    /// [`DEFAULT_OPEN_WAIT`](crate::DEFAULT_OPEN_WAIT) (5 s) for it to
    /// start listening: [`OpenError::NotFound`] when it did not.
    pub fn connect(name: &str) -> Result<Client, OpenError> {
        Self::connect_timeout(name, crate::DEFAULT_OPEN_WAIT)
    }

    /// [`connect`](Self::connect), waiting at most `wait` for the server to
    /// listen (`Duration::ZERO`: not at all) and then for it to greet the
    /// connection (at least 2 s for that).
    pub fn connect_timeout(name: &str, wait: Duration) -> Result<Client, OpenError> {
        let (conn, name, max) = Conn::open(name, wait)?;
        Ok(Client {
            #[cfg(feature = "tokio")]
            registration: None,
            name,
            conn,
            max,
            pid: std::process::id(),
            buf: vec![0; HEADER_LEN + max],
            late: 0,
        })
    }

    /// The server's name, as traced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.conn.peer_pid
    }

    /// Replies that arrived after their call had timed out, discarded.
    pub fn late_replies(&self) -> u64 {
        self.late
    }

    /// Sends `request` and waits at most `timeout` (sending included) for
    /// its reply.
    pub fn call(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now().checked_add(timeout);
        let id = self.send_request(request, Wait::Until(deadline))?;
        loop {
            // Wait first: the reply is hardly ever back already, and a
            // receive that finds nothing would be a wasted syscall.
            let left = sys::remaining(deadline);
            let ready = sys::poll_one(self.conn.fd.as_fd(), libc::POLLIN, left)
                .map_err(|source| CallError::Os { op: "poll", source })?;
            if ready != 0 {
                if let Some(reply) = self.take_reply(id)? {
                    return Ok(reply);
                }
            } else if left == Some(Duration::ZERO) {
                return Err(CallError::Timeout);
            }
        }
    }

    /// Sends one request frame, traced; returns its id.
    fn send_request(&mut self, request: &[u8], wait: Wait) -> Result<u64, CallError> {
        Ok(self
            .conn
            .send_message(&self.name, self.pid, request, wait, self.max)?)
    }

    /// The reply to request `id` if it has come (late replies to earlier
    /// calls are set aside on the way); never waits.
    fn take_reply(&mut self, id: u64) -> Result<Option<Vec<u8>>, CallError> {
        loop {
            let n = match sys::recv_trunc(self.conn.fd.as_raw_fd(), &mut self.buf) {
                Ok(sys::Datagram::End) => return Err(CallError::Disconnected),
                Ok(sys::Datagram::Bytes(n)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(source) => return Err(CallError::Os { op: "recv", source }),
            };
            let got = n.min(self.buf.len());
            let h = Header::check(&self.buf[..got], n, &[REPLY, FAULT], self.max)
                .map_err(CallError::Corrupt)?;
            let body = &self.buf[HEADER_LEN..got];
            // Ids from this process only grow (until the sequence wraps),
            // so an earlier one of ours is a reply to a call that timed out.
            let ours = h.reply_to >> 32 == u64::from(self.pid);
            if h.reply_to != id && !(ours && h.reply_to < id) {
                return Err(CallError::UnexpectedReply {
                    request: id,
                    reply_to: h.reply_to,
                });
            }
            trace_reply(
                EventKind::MsgRecv,
                &self.name,
                body.len(),
                h.msg_id,
                h.reply_to,
                None,
            );
            if h.reply_to != id {
                self.late += 1;
                continue;
            }
            if h.magic == FAULT {
                return Err(CallError::Remote {
                    message: String::from_utf8_lossy(body).into_owned(),
                });
            }
            return Ok(Some(body.to_vec()));
        }
    }

    /// [`call`](Self::call) with a typed request and reply (postcard).
    pub fn call_value<Req, Resp>(
        &mut self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        decode_reply(&self.call(&encode(request)?, timeout)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const PATIENCE: Duration = Duration::from_secs(10);

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "unit-rpc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn a_call_that_timed_out_does_not_confuse_the_next() {
        let name = unique("late");
        let mut server = Server::builder(&name).create().unwrap();
        let t = std::thread::spawn(move || {
            let mut first = true;
            server.serve(|req| {
                if std::mem::take(&mut first) {
                    std::thread::sleep(Duration::from_millis(300));
                }
                req.iter().rev().copied().collect()
            })
        });
        let mut client = Client::connect(&name).unwrap();
        assert!(matches!(
            client.call(b"slow", Duration::from_millis(50)),
            Err(CallError::Timeout)
        ));
        // The slow answer arrives during this call and is set aside.
        assert_eq!(client.call(b"abc", PATIENCE).unwrap(), b"cba");
        assert_eq!(client.late_replies(), 1);
        assert_eq!(client.call(b"", PATIENCE).unwrap(), b"");
        drop(client);
        assert_eq!(t.join().unwrap().unwrap(), 3);
    }

    #[test]
    fn a_request_of_the_wrong_type_gets_a_fault_not_silence() {
        let name = unique("fault");
        let mut server = Server::builder(&name).create().unwrap();
        let t = std::thread::spawn(move || server.serve_values(|s: String| s.len()));
        let mut client = Client::connect(&name).unwrap();
        match client.call(&[0xff, 0xff], PATIENCE) {
            Err(CallError::Remote { message }) => assert!(message.contains("decode"), "{message}"),
            other => panic!("{other:?}"),
        }
        let n: usize = client.call_value("four", PATIENCE).unwrap();
        assert_eq!(n, 4);
        // A reply that is not the type asked for is a decode error.
        assert!(matches!(
            client.call_value::<_, String>("x", PATIENCE),
            Err(CallError::Decode(_))
        ));
        drop(client);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn oversized_requests_and_replies_are_refused_whole() {
        let name = unique("big");
        let mut server = Server::builder(&name)
            .max_message_size(16)
            .create()
            .unwrap();
        let mut client = Client::connect(&name).unwrap();
        assert!(matches!(
            client.call(&[0; 17], PATIENCE),
            Err(CallError::Send(SendError::TooLarge { len: 17, max: 16 }))
        ));
        let t = std::thread::spawn(move || client.call(b"grow", PATIENCE));
        let req = server.next_request(Some(PATIENCE)).unwrap();
        assert_eq!(req.payload(), b"grow");
        assert!(matches!(
            server.reply(&req, &[0; 17]),
            Err(SendError::TooLarge { len: 17, max: 16 })
        ));
        server.reply(&req, &[1; 16]).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), vec![1; 16]);
    }

    #[test]
    fn garbage_or_stray_replies_are_errors() {
        let name = unique("garbage");
        let mut server = Server::builder(&name).create().unwrap();
        let mut client = Client::connect(&name).unwrap();
        let t = std::thread::spawn(move || {
            let a = client.call(b"1", PATIENCE);
            let b = client.call(b"2", PATIENCE);
            (a, b)
        });
        for reply in [b"junk".to_vec(), Vec::new()] {
            let req = server.next_request(Some(PATIENCE)).unwrap();
            let conn = server.socket.conn(req.fd, req.serial).unwrap();
            let bytes = if reply.is_empty() {
                // Well formed, but answering a request nobody made.
                Header {
                    magic: REPLY,
                    len: 0,
                    msg_id: 5,
                    reply_to: req.id + 1,
                }
                .encode()
                .to_vec()
            } else {
                reply
            };
            sys::send_parts(conn.fd.as_raw_fd(), &bytes, &[]).unwrap();
        }
        let (a, b) = t.join().unwrap();
        assert!(
            matches!(
                a,
                Err(CallError::Corrupt(Corruption::Truncated {
                    size: 24,
                    available: 4
                }))
            ),
            "{a:?}"
        );
        assert!(matches!(b, Err(CallError::UnexpectedReply { .. })), "{b:?}");
    }

    #[test]
    fn replying_to_a_client_that_left_is_disconnected() {
        let name = unique("left");
        let mut server = Server::builder(&name).create().unwrap();
        let mut client = Client::connect(&name).unwrap();
        let t = std::thread::spawn(move || client.call(b"bye", Duration::from_millis(1)));
        let req = server.next_request(Some(PATIENCE)).unwrap();
        assert!(matches!(t.join().unwrap(), Err(CallError::Timeout)));
        // The client is gone with its thread; its request is still here.
        assert!(matches!(
            server.next_request(Some(PATIENCE)),
            Err(RecvError::Disconnected)
        ));
        assert!(matches!(
            server.reply(&req, b"too late"),
            Err(SendError::Disconnected)
        ));
    }
}
