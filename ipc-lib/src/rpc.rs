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
//! A request is a DATA frame like any channel message, or a CALL frame
//! when it names the method it calls ([`Client::call_method`]); a reply is
//! a REPLY frame (or a FAULT, when the server could not handle the
//! request, or a PANIC, when its handler panicked) whose header carries
//! the request's message id.
//!
//! A handler that panics (in [`Server::serve`], [`serve_values`],
//! [`serve_routes`] or `serve_routes_async`) answers its request: the
//! client's call returns [`CallError::HandlerPanicked`] with the panic's
//! message, and the server goes on serving the others. (Not in a program
//! built with `panic = "abort"`, where a panic ends the process.) A
//! client that stops reading its replies holds up no other: a reply waits
//! for room in its socket at most the server's
//! [`reply_timeout`](ServerBuilder::reply_timeout), blocking or async.
//!
//! [`serve_values`]: Server::serve_values
//! [`serve_routes`]: Server::serve_routes
//!
//! A server answers one request at a time with [`Server::serve`], or
//! routes requests by method to the handlers of a [`Routes`] table with
//! [`Server::serve_routes`], on as many worker threads as it is given
//! (async: [`AsyncRoutes`] and `serve_routes_async`, each request a task
//! of its own). A call to a method the table lacks gets a fault that says
//! so and names the methods there are. Tracing: the request's
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

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipc_events::{ChannelKind, EventKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{CodecError, Corruption, OpenError, RecvError, SendError};
use crate::codec::{decode, decode_bytes, encode};
use crate::socket::frame::{
    call_payload, split_call, Header, CALL, DATA, FAULT, HEADER_LEN, PANIC, REPLY,
};
use crate::socket::{next_id, sys, Conn, Received, SocketReceiver, SocketReceiverBuilder, Wait};
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
    /// The server's handler panicked on the request; `message` is the
    /// panic's. The server goes on serving.
    #[error("the server's handler panicked: {message}")]
    HandlerPanicked { message: String },
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
    /// [`Client::call_method`]: a method name is 1 to 255 bytes.
    #[error("method name {method:?} is not 1 to 255 bytes")]
    MethodName { method: String },
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

    /// How long a reply may wait for room in a client's socket (blocking
    /// or async, [`Server::reply_async`]), after which it fails with
    /// [`SendError::Timeout`]: a client that stops reading its replies
    /// holds up no other for longer. Default [`DEFAULT_REPLY_TIMEOUT`].
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Binds the server's name; fails if a live server holds it.
    pub fn create(self) -> Result<Server, OpenError> {
        let mut socket = self.socket.create()?;
        socket.accept_calls();
        Ok(Server {
            name: Arc::from(socket.name()),
            socket,
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
    method: Option<String>,
    payload: Vec<u8>,
}

impl Request {
    /// The request as received: a CALL frame's payload split into its
    /// method and the request proper.
    fn new(r: Received, mut payload: Vec<u8>) -> Result<Request, RecvError> {
        let method = if r.header.magic == CALL {
            // The receiver checked the frame; this cannot fail.
            let (method, body) =
                split_call(&payload).map_err(|reason| RecvError::Corrupt { pos: 0, reason })?;
            let (method, skip) = (method.to_owned(), payload.len() - body.len());
            payload.drain(..skip);
            Some(method)
        } else {
            None
        };
        Ok(Request {
            id: r.header.msg_id,
            fd: r.fd,
            serial: r.serial,
            method,
            payload,
        })
    }

    /// The request's message id (the client's pid in the high 32 bits).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The method it calls ([`Client::call_method`]); `None` for a plain
    /// [`Client::call`].
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
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
    /// The socket's name, shared with answers sent from other threads and
    /// tasks.
    name: Arc<str>,
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
        Request::new(r, payload)
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
        self.answer(request, FAULT, fault_body(reason, max))
    }

    /// Answers `request` with the panic its handler raised.
    fn panicked(&mut self, request: &Request, message: &str) -> Result<u64, SendError> {
        log_panic(self.name(), request.id, message);
        let max = self.socket.max_message_size();
        self.answer(request, PANIC, fault_body(message, max))
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
        self.answerer().send(conn, request.id, magic, body, wait)
    }

    /// What answers need of the server, for a reply sent from here or
    /// from a worker thread.
    fn answerer(&self) -> Answerer {
        Answerer {
            name: Arc::clone(&self.name),
            pid: self.pid,
            max: self.socket.max_message_size(),
        }
    }

    /// Answers requests with `handler`, one at a time, until every client
    /// that came has left; returns how many were answered. A client that
    /// sends garbage, leaves before its answer or stops reading answers is
    /// logged (the `tracing` crate, target `ipc_lib`) and does not stop
    /// the loop; nor does a handler that panics: its request is answered
    /// with the panic ([`CallError::HandlerPanicked`]), and `handler`
    /// serves the next one in whatever state the panic left it. The
    /// method a call names, if any, goes unread: one handler answers them
    /// all ([`serve_routes`](Self::serve_routes) routes by method).
    pub fn serve(&mut self, mut handler: impl FnMut(&[u8]) -> Vec<u8>) -> Result<u64, RecvError> {
        self.serve_with(|server, req| match caught(|| handler(req.payload())) {
            Ok(response) => server.reply(req, &response),
            Err(panic) => server.panicked(req, &panic),
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
            Ok(value) => match caught(|| handler(value)) {
                Ok(response) => server.reply_value(req, &response),
                Err(panic) => server.panicked(req, &panic),
            },
            Err(e) => server.fault(req, &chain(&e)),
        })
    }

    fn serve_with(
        &mut self,
        mut answer: impl FnMut(&mut Server, &Request) -> Result<u64, SendError>,
    ) -> Result<u64, RecvError> {
        let mut answered = 0;
        self.each_request(|server, req| {
            let r = answer(server, &req);
            answered += u64::from(delivered(server.name(), req.id, r));
        })?;
        Ok(answered)
    }

    /// Answers requests by method with the handlers of `routes` (see
    /// [`Routes`]), on `workers` threads (at least one), so that a slow
    /// request holds up no other while a worker is free; until every
    /// client that came has left. Returns how many were answered. A
    /// request that names no method, or one `routes` lacks, is answered
    /// with a fault that says so; one whose handler panics, with the
    /// panic ([`CallError::HandlerPanicked`]), and its worker goes on.
    /// Otherwise as [`serve`](Self::serve).
    pub fn serve_routes(&mut self, routes: &Routes, workers: usize) -> Result<u64, RecvError> {
        let answered = AtomicU64::new(0);
        let (jobs, queue) = std::sync::mpsc::channel::<(Request, Arc<Conn>)>();
        let queue = Mutex::new(queue);
        let reply_timeout = self.reply_timeout;
        let answerer = &self.answerer();
        std::thread::scope(|scope| {
            for _ in 0..workers.max(1) {
                let work = || {
                    // The lock is held only to take a job, not to do it.
                    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    while let Ok((req, conn)) = next() {
                        // The deadline runs from when the answer is ready.
                        let wait = Wait::timeout(reply_timeout);
                        let outcome = caught(|| routes.table.find(&req).and_then(|h| h(&req)));
                        let r = answerer.answer(&conn, req.id, &outcome, wait);
                        let n = u64::from(delivered(&answerer.name, req.id, r));
                        answered.fetch_add(n, Ordering::Relaxed);
                    }
                };
                std::thread::Builder::new()
                    .name("ipc-lib-rpc".into())
                    .spawn_scoped(scope, work)
                    .map_err(|source| RecvError::Os {
                        op: "starting an rpc worker thread",
                        source,
                    })?;
            }
            let received = self.each_request(|server, req| {
                match server.socket.conn(req.fd, req.serial) {
                    // Only a closed queue refuses a job, and the workers
                    // keep it open while this loop runs.
                    Some(conn) => drop(jobs.send((req, Arc::clone(conn)))),
                    None => drop(delivered(
                        server.name(),
                        req.id,
                        Err(SendError::Disconnected),
                    )),
                }
            });
            // The workers finish the jobs queued, then see the queue close.
            drop(jobs);
            received
        })?;
        Ok(answered.into_inner())
    }

    /// Hands each request to `handle` until every client that came has
    /// left. A client that sends garbage is cut off and logged.
    fn each_request(
        &mut self,
        mut handle: impl FnMut(&mut Server, Request),
    ) -> Result<(), RecvError> {
        loop {
            match self.next_request(None) {
                Ok(req) => handle(self, req),
                Err(RecvError::Disconnected) => return Ok(()),
                Err(e @ RecvError::Corrupt { .. }) => {
                    tracing::warn!(target: "ipc_lib", server = self.name(), "client cut off: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether an answer was delivered; logs one that was not.
fn delivered(server: &str, request: u64, r: Result<u64, SendError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                target: "ipc_lib",
                server,
                request,
                "reply not delivered: {e}"
            );
            false
        }
    }
}

/// A fault's reason as sent: one too long to send is cut at a character
/// boundary, so the client learns of the failure either way.
fn fault_body(reason: &str, max: usize) -> &[u8] {
    let mut end = reason.len().min(max);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// A handler's answer (the reply's bytes, or a fault's reason), or the
/// message of the panic that ended it.
type Outcome = Result<Answer, String>;

/// Runs a handler, catching a panic as its message. A handler's state may
/// be left half changed by its panic, as it would be for a panic caught
/// anywhere else; the server serves on all the same (its own state is
/// untouched: no lock is held, nothing half sent).
fn caught<T>(handler: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).map_err(|p| panic_message(&*p))
}

/// A panic's message, as `panic!` and the standard library raise them.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_owned()
    }
}

fn log_panic(server: &str, request: u64, message: &str) {
    tracing::error!(target: "ipc_lib", server, request, "handler panicked: {message}");
}

/// What sending an answer needs of the server.
#[derive(Clone)]
struct Answerer {
    name: Arc<str>,
    pid: u32,
    max: usize,
}

impl Answerer {
    /// Sends what a handler came to, whatever it was, waiting for room as
    /// `wait` says.
    fn answer(
        &self,
        conn: &Conn,
        request: u64,
        outcome: &Outcome,
        wait: Wait,
    ) -> Result<u64, SendError> {
        let (magic, body) = self.frame(request, outcome);
        self.send(conn, request, magic, body, wait)
    }

    /// The frame an outcome is answered with (a panic is logged here).
    fn frame<'o>(&self, request: u64, outcome: &'o Outcome) -> (u32, &'o [u8]) {
        match outcome {
            Ok(Ok(reply)) => (REPLY, reply),
            Ok(Err(fault)) => (FAULT, fault_body(fault, self.max)),
            Err(panic) => {
                log_panic(&self.name, request, panic);
                (PANIC, fault_body(panic, self.max))
            }
        }
    }

    /// Sends a REPLY, FAULT or PANIC (`magic`) to request `request` on
    /// `conn`, traced, waiting for room as `wait` says; returns the
    /// answer's id.
    fn send(
        &self,
        conn: &Conn,
        request: u64,
        magic: u32,
        body: &[u8],
        wait: Wait,
    ) -> Result<u64, SendError> {
        let id = next_id(self.pid);
        let head = Header {
            magic,
            len: 0,
            msg_id: id,
            reply_to: request,
        };
        let at = conn.send_frame(head, body, wait, self.max)?;
        trace_reply(
            EventKind::MsgSend,
            &self.name,
            body.len(),
            id,
            request,
            Some(at),
        );
        Ok(id)
    }
}

/// The handlers of a routing table by method name, and the fault for a
/// request that finds none.
struct Table<H> {
    handlers: BTreeMap<String, H>,
}

impl<H> Default for Table<H> {
    fn default() -> Self {
        Table {
            handlers: BTreeMap::new(),
        }
    }
}

impl<H> Table<H> {
    fn find(&self, req: &Request) -> Result<&H, String> {
        let Some(method) = req.method() else {
            return Err(
                "the request names no method, and this server routes calls by \
                        method (Client::call_method)"
                    .into(),
            );
        };
        self.handlers.get(method).ok_or_else(|| {
            let known: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
            // The name came from the client: quoted and escaped.
            format!("no method {method:?} here; there are: {}", known.join(", "))
        })
    }
}

/// A handler's answer: the reply's bytes, or a fault's reason.
type Answer = Result<Vec<u8>, String>;

/// A routed handler, typed or not, as [`Routes`] keeps it.
type Handler = Box<dyn Fn(&Request) -> Answer + Send + Sync>;

/// An async handler's answer, to come.
#[cfg(feature = "tokio")]
type AnswerFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

/// A routed async handler, as [`AsyncRoutes`] keeps it.
#[cfg(feature = "tokio")]
type AsyncHandler = Box<dyn Fn(&Request) -> AnswerFuture + Send + Sync>;

/// Async handlers by method name for [`Server::serve_routes_async`]: each
/// takes a request's bytes and gives a future of the reply's, run as a
/// task of its own.
///
/// ```
/// use std::time::Duration;
/// use ipc_lib::rpc::{AsyncRoutes, Client, Server};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-async-routes-{}", std::process::id());
/// let mut server = Server::builder(&name).create()?;
/// let routes = AsyncRoutes::new().route_value("double", |x: u32| async move { x * 2 });
/// let serving = tokio::spawn(async move { server.serve_routes_async(&routes).await });
/// let mut client = Client::connect(&name)?;
/// let wait = Duration::from_secs(5);
/// let doubled: u32 = client.call_method_value_async("double", &21u32, wait).await?;
/// assert_eq!(doubled, 42);
/// drop(client);
/// assert_eq!(serving.await??, 1);
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tokio")]
#[derive(Default)]
pub struct AsyncRoutes {
    table: Table<AsyncHandler>,
}

#[cfg(feature = "tokio")]
impl std::fmt::Debug for AsyncRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.table.handlers.keys()).finish()
    }
}

#[cfg(feature = "tokio")]
impl AsyncRoutes {
    /// An empty table.
    pub fn new() -> AsyncRoutes {
        AsyncRoutes::default()
    }

    /// Answers calls to `method` with the bytes `handler`'s future gives.
    /// A second handler for one method replaces the first.
    pub fn route<F>(
        mut self,
        method: impl Into<String>,
        handler: impl Fn(Vec<u8>) -> F + Send + Sync + 'static,
    ) -> AsyncRoutes
    where
        F: std::future::Future<Output = Vec<u8>> + Send + 'static,
    {
        let h = move |req: &Request| -> AnswerFuture {
            let reply = handler(req.payload().to_vec());
            Box::pin(async move { Ok(reply.await) })
        };
        self.table.handlers.insert(method.into(), Box::new(h));
        self
    }

    /// [`route`](Self::route) with a typed request and reply (postcard);
    /// a request that does not decode as `Req` gets a fault.
    pub fn route_value<Req, Resp, F>(
        mut self,
        method: impl Into<String>,
        handler: impl Fn(Req) -> F + Send + Sync + 'static,
    ) -> AsyncRoutes
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: std::future::Future<Output = Resp> + Send + 'static,
    {
        let h = move |req: &Request| -> AnswerFuture {
            match req.value::<Req>() {
                Ok(value) => {
                    let reply = handler(value);
                    Box::pin(async move { encode(&reply.await).map_err(|e| chain(&e)) })
                }
                Err(e) => Box::pin(std::future::ready(Err(chain(&e)))),
            }
        };
        self.table.handlers.insert(method.into(), Box::new(h));
        self
    }
}

/// Handlers by method name for [`Server::serve_routes`]: each takes a
/// request's bytes and gives the reply's.
///
/// ```
/// use std::time::Duration;
/// use ipc_lib::rpc::{CallError, Client, Routes, Server};
///
/// let name = format!("doc-routes-{}", std::process::id());
/// let mut server = Server::builder(&name).create()?;
/// let routes = Routes::new()
///     .route_value("double", |x: u32| x * 2)
///     .route("echo", |req: &[u8]| req.to_vec());
/// let t = std::thread::spawn(move || server.serve_routes(&routes, 4));
/// let mut client = Client::connect(&name)?;
/// let wait = Duration::from_secs(5);
/// assert_eq!(client.call_method_value::<_, u32>("double", &21u32, wait)?, 42);
/// assert_eq!(client.call_method("echo", b"hi", wait)?, b"hi");
/// assert!(matches!(client.call_method("nope", b"", wait), Err(CallError::Remote { .. })));
/// drop(client);
/// assert_eq!(t.join().unwrap()?, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Routes {
    table: Table<Handler>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.table.handlers.keys()).finish()
    }
}

impl Routes {
    /// An empty table.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Answers calls to `method` with `handler`'s bytes. A second handler
    /// for one method replaces the first.
    pub fn route(
        mut self,
        method: impl Into<String>,
        handler: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Routes {
        let h = move |req: &Request| Ok(handler(req.payload()));
        self.table.handlers.insert(method.into(), Box::new(h));
        self
    }

    /// [`route`](Self::route) with a typed request and reply (postcard);
    /// a request that does not decode as `Req` gets a fault.
    pub fn route_value<Req, Resp>(
        mut self,
        method: impl Into<String>,
        handler: impl Fn(Req) -> Resp + Send + Sync + 'static,
    ) -> Routes
    where
        Req: DeserializeOwned,
        Resp: Serialize,
    {
        let h = move |req: &Request| {
            let value = req.value::<Req>().map_err(|e| chain(&e))?;
            encode(&handler(value)).map_err(|e| chain(&e))
        };
        self.table.handlers.insert(method.into(), Box::new(h));
        self
    }
}

#[cfg(feature = "tokio")]
impl Server {
    /// [`next_request`](Self::next_request) for async code (no timeout:
    /// wrap it in `tokio::time::timeout` for one).
    pub async fn next_request_async(&mut self) -> Result<Request, RecvError> {
        let mut payload = Vec::new();
        let r = self.socket.recv_frame_async(&mut payload).await?;
        Request::new(r, payload)
    }

    /// [`reply`](Self::reply) for async code: waits for room in the
    /// client's socket (which only a client that stopped reading lets
    /// fill) without blocking the thread, at most the server's
    /// [`reply_timeout`](ServerBuilder::reply_timeout): then
    /// [`SendError::Timeout`], and the client's call times out.
    pub async fn reply_async(
        &mut self,
        request: &Request,
        response: &[u8],
    ) -> Result<u64, SendError> {
        let conn = self
            .socket
            .conn(request.fd, request.serial)
            .ok_or(SendError::Disconnected)?;
        let answer = self.answerer();
        let wait = answer.send_async(conn, request.id, REPLY, response, self.reply_timeout);
        wait.await
    }

    /// Answers requests by method with the async handlers of `routes`
    /// (see [`AsyncRoutes`]), each request a task of its own, so a slow
    /// one holds up no other; until every client that came has left and
    /// every request taken is answered. Returns how many were answered.
    /// A request that names no method, or one `routes` lacks, gets a
    /// fault that says so; one whose handler panics, the panic
    /// ([`CallError::HandlerPanicked`]). Each task sends its own answer,
    /// waiting for room as [`reply_async`](Self::reply_async) does, so a
    /// client that stopped reading delays only its own answers.
    pub async fn serve_routes_async(&mut self, routes: &AsyncRoutes) -> Result<u64, RecvError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut answered = 0;
        let answerer = self.answerer();
        let timeout = self.reply_timeout;
        let received = loop {
            tokio::select! {
                req = self.next_request_async() => match req {
                    Ok(req) => {
                        let Some(conn) = self.socket.conn(req.fd, req.serial) else {
                            delivered(self.name(), req.id, Err(SendError::Disconnected));
                            continue;
                        };
                        let conn = Arc::clone(conn);
                        // The handler's own part runs here, its future in
                        // the task: a panic in either is the request's.
                        let answer = match routes.table.find(&req) {
                            Ok(handler) => caught(|| handler(&req)),
                            Err(fault) => Ok(Box::pin(std::future::ready(Err(fault))) as AnswerFuture),
                        };
                        let answerer = answerer.clone();
                        tasks.spawn(async move {
                            let outcome = match answer {
                                Ok(answer) => CatchUnwind(answer).await,
                                Err(panic) => Err(panic),
                            };
                            let (magic, body) = answerer.frame(req.id, &outcome);
                            let r = answerer.send_async(&conn, req.id, magic, body, timeout).await;
                            u64::from(delivered(&answerer.name, req.id, r))
                        });
                    }
                    Err(RecvError::Disconnected) => break Ok(()),
                    Err(e @ RecvError::Corrupt { .. }) => {
                        tracing::warn!(target: "ipc_lib", server = self.name(), "client cut off: {e}");
                    }
                    Err(e) => break Err(e),
                },
                Some(done) = tasks.join_next() => answered += self.task_answered(done),
            }
        };
        while let Some(done) = tasks.join_next().await {
            answered += self.task_answered(done);
        }
        received.map(|()| answered)
    }

    /// What an answering task came to: 1 when its answer was delivered.
    fn task_answered(&self, done: Result<u64, tokio::task::JoinError>) -> u64 {
        done.unwrap_or_else(|e| {
            // The task catches its handler's panics; this is the runtime
            // shutting down under it.
            tracing::error!(target: "ipc_lib", server = self.name(), "answer not sent: {e}");
            0
        })
    }
}

#[cfg(feature = "tokio")]
impl Answerer {
    /// [`send`](Self::send) for async code: waits for room in the
    /// client's socket on the reactor, at most `timeout` (then
    /// [`SendError::Timeout`]).
    async fn send_async(
        &self,
        conn: &Conn,
        request: u64,
        magic: u32,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u64, SendError> {
        use tokio::io::unix::AsyncFd;
        use tokio::io::Interest;

        match self.send(conn, request, magic, body, Wait::No) {
            Err(SendError::Full) => {}
            r => return r,
        }
        let os = |op| move |source| SendError::Os { op, source };
        // A duplicate of the connection, registered for this wait only:
        // answers to one client may wait at once, each task its own, and
        // the reactor takes a descriptor once.
        let fd = crate::select::dup(conn.fd.as_raw_fd()).map_err(os("dup"))?;
        // SAFETY: the AsyncFd owns the duplicate, so it stays open, naming
        // the same socket, as long as the registration.
        let reg = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }
            .map_err(|e| os("tokio register")(e.into_parts().1))?;
        let room = async {
            loop {
                let mut ready = reg.writable().await.map_err(os("tokio ready"))?;
                match self.send(conn, request, magic, body, Wait::No) {
                    // Not writable after all: wait for the next edge.
                    Err(SendError::Full) => ready.clear_ready(),
                    r => return r,
                }
            }
        };
        tokio::time::timeout(timeout, room)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }
}

/// A future whose panic is caught as its message ([`caught`] for
/// futures), so a task answers its request even when its handler
/// panics.
#[cfg(feature = "tokio")]
struct CatchUnwind<F>(F);

#[cfg(feature = "tokio")]
impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = &mut self.0;
        match caught(|| std::pin::Pin::new(fut).poll(cx)) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            // Never polled again: the task ends with it.
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
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
        self.exchange_async(None, request, timeout).await
    }

    /// [`call_method`](Self::call_method) for async code.
    pub async fn call_method_async(
        &mut self,
        method: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.exchange_async(Some(method), request, timeout).await
    }

    async fn exchange_async(
        &mut self,
        method: Option<&str>,
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
                || match self.send_request(method, request, Wait::No) {
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

    /// [`call_method_value`](Self::call_method_value) for async code.
    pub async fn call_method_value_async<Req, Resp>(
        &mut self,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let request = encode(request)?;
        decode_reply(&self.call_method_async(method, &request, timeout).await?)
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
        at_ns: at_ns.map(trace::Stamp::ns),
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
        let opened = crate::patience::block(Conn::opening(name, wait)?)?;
        Ok(Client::new(opened))
    }

    /// [`connect`](Self::connect) for async code (feature `tokio`): waits
    /// as long, with the same errors, for the server to listen (naps on
    /// tokio's timer, so it needs a runtime with time enabled) and to
    /// greet the connection (on tokio's reactor), never blocking the
    /// thread. Cancel safe: a dropped future leaves nothing open.
    #[cfg(feature = "tokio")]
    pub async fn connect_async(name: &str) -> Result<Client, OpenError> {
        Self::connect_timeout_async(name, crate::DEFAULT_OPEN_WAIT).await
    }

    /// [`connect_timeout`](Self::connect_timeout) for async code, as
    /// [`connect_async`](Self::connect_async).
    #[cfg(feature = "tokio")]
    pub async fn connect_timeout_async(name: &str, wait: Duration) -> Result<Client, OpenError> {
        let opened = crate::patience::wait(Conn::opening(name, wait)?).await?;
        Ok(Client::new(opened))
    }

    fn new((conn, name, max): (Conn, String, usize)) -> Client {
        Client {
            #[cfg(feature = "tokio")]
            registration: None,
            name,
            conn,
            max,
            pid: std::process::id(),
            buf: vec![0; HEADER_LEN + max],
            late: 0,
        }
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
        self.exchange(None, request, timeout)
    }

    /// [`call`](Self::call) naming the `method` to call (1 to 255 bytes),
    /// for a server that routes requests by method
    /// ([`Server::serve_routes`]).
    pub fn call_method(
        &mut self,
        method: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.exchange(Some(method), request, timeout)
    }

    fn exchange(
        &mut self,
        method: Option<&str>,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now().checked_add(timeout);
        let id = self.send_request(method, request, Wait::Until(deadline))?;
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

    /// Sends one request frame (a CALL when it names a method), traced;
    /// returns its id.
    fn send_request(
        &mut self,
        method: Option<&str>,
        request: &[u8],
        wait: Wait,
    ) -> Result<u64, CallError> {
        let (magic, payload) = match method {
            None => (DATA, None),
            Some(m) => {
                let payload = call_payload(m, request).ok_or_else(|| CallError::MethodName {
                    method: m.to_owned(),
                })?;
                (CALL, Some(payload))
            }
        };
        let msg = payload.as_deref().unwrap_or(request);
        Ok(self
            .conn
            .send_message(magic, &self.name, self.pid, msg, wait, self.max)?)
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
            let h = Header::check(&self.buf[..got], n, &[REPLY, FAULT, PANIC], self.max)
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
            let message = || String::from_utf8_lossy(body).into_owned();
            match h.magic {
                FAULT => return Err(CallError::Remote { message: message() }),
                PANIC => return Err(CallError::HandlerPanicked { message: message() }),
                _ => {}
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

    /// [`call_method`](Self::call_method) with a typed request and reply.
    pub fn call_method_value<Req, Resp>(
        &mut self,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        decode_reply(&self.call_method(method, &encode(request)?, timeout)?)
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

    use std::sync::mpsc;

    /// What a test holds of a "slow" handler: a word when it has begun,
    /// and the gate that lets it answer.
    struct Slow {
        begun: mpsc::Receiver<()>,
        open: mpsc::Sender<()>,
    }

    /// A "slow" handler that says when it begins and answers once its gate
    /// opens, and its side for the test.
    fn slow_handler() -> (impl Fn() -> Vec<u8> + Send + Sync + 'static, Slow) {
        let (began, begun) = mpsc::channel();
        let (open, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let handler = move || {
            let _ = began.send(());
            let opened = gate.lock().unwrap().recv_timeout(PATIENCE).is_ok();
            vec![u8::from(opened)]
        };
        (handler, Slow { begun, open })
    }

    /// Calls "slow", then, while its handler runs, "fast": the fast reply
    /// comes before the slow handler may answer (its gate opens only
    /// after), which a server answering one request at a time cannot do.
    fn fast_is_answered_during_slow(name: &str, slow: Slow) {
        let mut slow_client = Client::connect(name).unwrap();
        let slow_call = std::thread::spawn(move || slow_client.call_method("slow", b"", PATIENCE));
        slow.begun.recv_timeout(PATIENCE).unwrap();
        let mut client = Client::connect(name).unwrap();
        assert_eq!(
            client.call_method("fast", b"now", PATIENCE).unwrap(),
            b"now"
        );
        assert!(!slow_call.is_finished());
        slow.open.send(()).unwrap();
        assert_eq!(slow_call.join().unwrap().unwrap(), [1]);
    }

    #[test]
    fn a_routed_server_with_workers_answers_a_fast_call_during_a_slow_one() {
        let name = unique("workers");
        let mut server = Server::builder(&name).create().unwrap();
        let (slow, test_side) = slow_handler();
        let routes = Routes::new()
            .route("slow", move |_: &[u8]| slow())
            .route("fast", |req: &[u8]| req.to_vec());
        let t = std::thread::spawn(move || server.serve_routes(&routes, 2));
        fast_is_answered_during_slow(&name, test_side);
        assert_eq!(t.join().unwrap().unwrap(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_async_routed_server_answers_a_fast_call_during_a_slow_one() {
        let name = unique("tasks");
        let mut server = Server::builder(&name).create().unwrap();
        let (slow, test_side) = slow_handler();
        let slow = Arc::new(slow);
        let routes = AsyncRoutes::new()
            .route("slow", move |_| {
                // A handler that blocks, on the blocking pool: the gate
                // stands for slow work of any kind.
                let slow = Arc::clone(&slow);
                async move { tokio::task::spawn_blocking(move || slow()).await.unwrap() }
            })
            .route("fast", |req| async move { req });
        let serving = tokio::spawn(async move { server.serve_routes_async(&routes).await });
        tokio::task::spawn_blocking(move || fast_is_answered_during_slow(&name, test_side))
            .await
            .unwrap();
        assert_eq!(serving.await.unwrap().unwrap(), 2);
    }

    #[test]
    fn calls_to_no_method_or_an_unknown_one_get_a_fault_that_says_so() {
        let name = unique("routes");
        let mut server = Server::builder(&name).create().unwrap();
        let routes = Routes::new()
            .route_value("len", |s: String| s.len())
            .route("echo", |req: &[u8]| req.to_vec());
        let t = std::thread::spawn(move || server.serve_routes(&routes, 1));
        let mut client = Client::connect(&name).unwrap();
        let fault = |r: Result<Vec<u8>, CallError>| match r {
            Err(CallError::Remote { message }) => message,
            other => panic!("{other:?}"),
        };
        let unknown = fault(client.call_method("stats\n", b"", PATIENCE));
        assert_eq!(unknown, r#"no method "stats\n" here; there are: echo, len"#);
        assert!(fault(client.call(b"plain", PATIENCE)).contains("names no method"));
        assert!(fault(client.call_method("len", &[0xff], PATIENCE)).contains("decode"));
        let n: usize = client.call_method_value("len", "four", PATIENCE).unwrap();
        assert_eq!(n, 4);
        assert!(matches!(
            client.call_method("", b"", PATIENCE),
            Err(CallError::MethodName { .. })
        ));
        assert_eq!(client.call_method("echo", b"e", PATIENCE).unwrap(), b"e");
        drop(client);
        // Faults are answers too.
        assert_eq!(t.join().unwrap().unwrap(), 5);
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

    /// The panic a panicking handler's call gets, and that the server
    /// answered the next call: what every server's panic tests check.
    fn panics_are_answered_and_serving_goes_on(client: &mut Client, method: Option<&str>) {
        let mut call = |req: &[u8]| match method {
            Some(m) => client.call_method(m, req, PATIENCE),
            None => client.call(req, PATIENCE),
        };
        for _ in 0..2 {
            match call(b"boom") {
                Err(CallError::HandlerPanicked { message }) => {
                    assert_eq!(message, "handler asked to panic on 4 bytes")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(call(b"fine").unwrap(), b"enif");
        }
    }

    /// A handler that panics on "boom" and reverses anything else.
    fn panicky(req: &[u8]) -> Vec<u8> {
        if req == b"boom" {
            panic!("handler asked to panic on {} bytes", req.len());
        }
        req.iter().rev().copied().collect()
    }

    #[test]
    fn a_panicking_handler_answers_its_call_and_the_server_goes_on() {
        let name = unique("panic-serve");
        let mut server = Server::builder(&name).create().unwrap();
        let t = std::thread::spawn(move || server.serve(panicky));
        panics_are_answered_and_serving_goes_on(&mut Client::connect(&name).unwrap(), None);
        // Panics are answers too.
        assert_eq!(t.join().unwrap().unwrap(), 4);

        let name = unique("panic-values");
        let mut server = Server::builder(&name).create().unwrap();
        let t = std::thread::spawn(move || {
            server.serve_values(|v: u32| if v == 0 { panic!("zero") } else { v + 1 })
        });
        let mut client = Client::connect(&name).unwrap();
        assert!(matches!(
            client.call_value::<_, u32>(&0u32, PATIENCE),
            Err(CallError::HandlerPanicked { message }) if message == "zero"
        ));
        assert_eq!(client.call_value::<_, u32>(&1u32, PATIENCE).unwrap(), 2);
        drop(client);
        assert_eq!(t.join().unwrap().unwrap(), 2);
    }

    #[test]
    fn a_panicking_routed_handler_answers_its_call_and_its_worker_goes_on() {
        let name = unique("panic-routes");
        let mut server = Server::builder(&name).create().unwrap();
        let routes = Routes::new().route("rev", panicky);
        // One worker: it must survive the panic for the next call.
        let t = std::thread::spawn(move || server.serve_routes(&routes, 1));
        let mut client = Client::connect(&name).unwrap();
        panics_are_answered_and_serving_goes_on(&mut client, Some("rev"));
        drop(client);
        assert_eq!(t.join().unwrap().unwrap(), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_async_handler_answers_its_call_and_the_server_goes_on() {
        let name = unique("panic-async");
        let mut server = Server::builder(&name).create().unwrap();
        let routes = AsyncRoutes::new()
            // Panics in its future, in the task.
            .route("rev", |req| async move {
                tokio::task::yield_now().await;
                panicky(&req)
            })
            // Panics before it makes its future, in the serving loop.
            .route("rev-now", |req| {
                let reply = panicky(&req);
                async move { reply }
            });
        let serving = tokio::spawn(async move { server.serve_routes_async(&routes).await });
        tokio::task::spawn_blocking(move || {
            // One client for both: the loop ends when the last one leaves.
            let mut client = Client::connect(&name).unwrap();
            panics_are_answered_and_serving_goes_on(&mut client, Some("rev"));
            panics_are_answered_and_serving_goes_on(&mut client, Some("rev-now"));
        })
        .await
        .unwrap();
        assert_eq!(serving.await.unwrap().unwrap(), 8);
    }

    /// A client that calls `method` `n` times and never reads a reply:
    /// they fill its socket. (A `Client` would read them, setting them
    /// aside, at its next call.)
    fn stalled_client(name: &str, method: &str, n: usize) -> Conn {
        let opening = Conn::opening(name, PATIENCE).unwrap();
        let (mut conn, name, max) = crate::patience::block(opening).unwrap();
        let call = call_payload(method, b"").unwrap();
        for _ in 0..n {
            let wait = Wait::timeout(PATIENCE);
            conn.send_message(CALL, &name, std::process::id(), &call, wait, max)
                .unwrap();
        }
        conn
    }

    const BIG: usize = 60 * 1024;

    #[tokio::test(flavor = "current_thread")]
    async fn an_async_reply_to_a_client_that_stopped_reading_times_out() {
        let name = unique("stalled-reply");
        let timeout = Duration::from_millis(200);
        let mut server = Server::builder(&name)
            .reply_timeout(timeout)
            .create()
            .unwrap();
        let _client = stalled_client(&name, "big", 16);
        let replies = async {
            for i in 0.. {
                let req = server.next_request_async().await.unwrap();
                match server.reply_async(&req, &[0; BIG]).await {
                    Ok(_) => {}
                    Err(SendError::Timeout) => return i,
                    Err(e) => panic!("{e}"),
                }
            }
            unreachable!()
        };
        // Bounded, so that a reply that waits for ever fails the test.
        let delivered = tokio::time::timeout(PATIENCE, replies).await.unwrap();
        // Some fitted in the client's socket before it was full.
        assert!(delivered > 0, "{delivered}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_async_server_answers_others_while_a_client_stopped_reading() {
        let name = unique("stalled-others");
        let mut server = Server::builder(&name)
            .reply_timeout(Duration::from_millis(300))
            .create()
            .unwrap();
        let routes = AsyncRoutes::new()
            .route("big", |_| async { vec![0; BIG] })
            .route("echo", |req| async move { req });
        let serving = tokio::spawn(async move { server.serve_routes_async(&routes).await });
        let others = tokio::task::spawn_blocking(move || {
            let stalled = stalled_client(&name, "big", 16);
            let mut client = Client::connect(&name).unwrap();
            for i in 0..20u32 {
                let req = i.to_le_bytes();
                assert_eq!(client.call_method("echo", &req, PATIENCE).unwrap(), req);
            }
            drop(stalled);
        });
        others.await.unwrap();
        // The stalled client's first replies went into its socket; the
        // rest timed out (or found it gone).
        let answered = serving.await.unwrap().unwrap();
        assert!((20..36).contains(&answered), "{answered}");
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
