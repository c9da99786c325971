//! Message channels between processes over a Unix socket, for processes
//! that should not share memory. The same API as the shared-memory
//! [`channel`](crate::channel) (through
//! [`MessageSender`](crate::transport::MessageSender) /
//! [`MessageReceiver`](crate::transport::MessageReceiver)) and the same
//! error enums.
//!
//! - The [`SocketReceiver`] binds a SOCK_SEQPACKET socket at
//!   `\0ipcscope/NAME` in the abstract namespace and accepts any number of
//!   [`SocketSender`]s, in any process of the same user. SOCK_SEQPACKET
//!   keeps message boundaries and order and has the kernel report a peer
//!   that is gone (end of stream, `EPIPE`), so nothing of that needs a
//!   protocol of its own.
//! - Why the abstract namespace rather than a 0600 socket in a 0700
//!   directory: its name disappears with the last descriptor, so a process
//!   killed with SIGKILL leaves nothing behind to clean up or to make the
//!   next `create` fail. Its one weakness is that it has no file
//!   permissions; both ends check instead that the other runs as the same
//!   user (`SO_PEERCRED`), and drop it otherwise.
//! - Each frame is a 24-byte header (magic, length, message id, reply-to;
//!   see [`frame`]) and the payload, sent with one `sendmsg` (no copy into
//!   a frame buffer). The receiver checks every header: garbage from a
//!   hostile peer is a [`RecvError::Corrupt`] and that peer's connection is
//!   closed; other senders are not affected.
//! - Message ids are unique per channel across senders and processes: the
//!   sender's pid in the high 32 bits, a per-process sequence in the low
//!   32. Both ends trace `msg_send` / `msg_recv` on an `ipclib_channel`
//!   with the name and that id, as the shared-memory channel does, so the
//!   collector pairs them the same way.
//! - A receiver greets each new sender with its maximum message size, so a
//!   message too large is refused by the sender ([`SendError::TooLarge`]),
//!   whole. The greeting comes from a small accept thread, so that a
//!   sender's `open` never waits for the receiver to call `recv`.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::socket::{SocketReceiver, SocketSender};
//! use ipc_lib::transport::{MessageReceiver, MessageSender};
//!
//! let name = format!("doc-socket-{}", std::process::id());
//! let mut rx = SocketReceiver::builder(&name).max_message_size(1024).create()?;
//! let mut tx = SocketSender::builder(&name).open()?;
//! for i in 0..10u32 {
//!     tx.send(&i.to_le_bytes())?;
//! }
//! for i in 0..10u32 {
//!     assert_eq!(rx.recv_timeout(Duration::from_secs(5))?, i.to_le_bytes());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod frame;
mod receiver;
mod sender;
pub(crate) mod sys;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub(crate) use receiver::Received;
pub use receiver::{SocketReceiver, SocketReceiverBuilder};
pub use sender::{SocketSender, SocketSenderBuilder};

use crate::channel::{OpenError, SendError};
use crate::patience::{Opening, Patience, Step};
use frame::{Header, HEADER_LEN, HELLO};

/// The largest message a socket channel may be built for. The kernel
/// refuses a datagram larger than the sender's send buffer (`wmem_default`,
/// 208 KiB unless the machine is tuned), and only privileged processes may
/// raise that.
pub const MAX_MESSAGE_LIMIT: usize = 192 * 1024;

/// Default largest message, as for the shared-memory channel.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// How long a send may wait for room in the socket.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    No,
    Until(Option<Instant>),
}

impl Wait {
    pub(crate) fn timeout(t: Duration) -> Wait {
        Wait::Until(Instant::now().checked_add(t))
    }
}

/// The next message id of this process: its pid above a sequence shared by
/// every sender in it (so two senders in one process never collide). The
/// sequence skips 0, which is never an id; it wraps after 2^32 messages.
pub(crate) fn next_id(pid: u32) -> u64 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let mut seq = SEQ.fetch_add(1, Ordering::Relaxed);
    if seq == 0 {
        seq = SEQ.fetch_add(1, Ordering::Relaxed);
    }
    (u64::from(pid) << 32) | u64::from(seq)
}

/// Checks a channel name (a leading `/` is dropped, as for shared memory)
/// and returns it with its socket address.
pub(crate) fn address(name: &str) -> Result<(String, sys::Address), OpenError> {
    let shown = name.strip_prefix('/').unwrap_or(name);
    let invalid = |reason| OpenError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if shown.is_empty() {
        return Err(invalid("empty"));
    }
    if shown.len() > sys::MAX_NAME {
        return Err(invalid("longer than 98 bytes"));
    }
    if shown.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    Ok((shown.to_owned(), sys::Address::new(shown)))
}

fn os<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |source| OpenError::Os {
        name: name.to_owned(),
        op,
        source,
    }
}

/// A connection being made ([`Conn::opening`]).
pub(crate) struct ConnOpening {
    shown: String,
    addr: sys::Address,
    patience: Patience,
    /// A socket connected to the receiver and waiting for its greeting,
    /// and the receiver's pid.
    connected: Option<(OwnedFd, u32)>,
}

impl ConnOpening {
    /// No receiver at the name (yet): another try after a nap, or
    /// `NotFound` once the wait for the name is spent.
    fn again(&mut self) -> Step<(Conn, String, usize)> {
        let limit = self.patience.for_name();
        match self.patience.next_nap(limit) {
            Some(nap) => Step::Nap(nap),
            None => Step::Done(Err(OpenError::NotFound {
                name: self.shown.clone(),
                waited: limit,
            })),
        }
    }

    /// One connect, on a fresh socket (one whose connect failed is in no
    /// state to try again): `None` when no receiver listens at the name.
    fn connect(&self) -> Result<Option<(OwnedFd, u32)>, OpenError> {
        let shown = &self.shown;
        let fd = sys::seqpacket().map_err(os(shown, "socket"))?;
        match sys::connect(&fd, &self.addr) {
            Ok(()) => {}
            // No socket bound at the name (ENOENT would be a path's; the
            // abstract namespace answers ECONNREFUSED), or one bound and
            // not yet listening.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT)) => {
                return Ok(None)
            }
            Err(e) => return Err(os(shown, "connect")(e)),
        }
        let (peer_pid, owner) = sys::peer_cred(&fd).map_err(os(shown, "SO_PEERCRED"))?;
        let uid = sys::euid();
        if owner != uid {
            return Err(OpenError::NotOwner {
                name: shown.clone(),
                owner,
                uid,
            });
        }
        sys::set_nonblocking(&fd).map_err(os(shown, "fcntl"))?;
        sys::set_passcred(&fd).map_err(os(shown, "SO_PASSCRED"))?;
        Ok(Some((fd, peer_pid)))
    }

    /// One look for the receiver's greeting on a connected socket:
    /// `Ok(None)` when it has not come yet.
    fn greeting(&self, fd: &OwnedFd) -> Result<Option<Greeting>, OpenError> {
        let shown = &self.shown;
        let mut buf = [0u8; HEADER_LEN + 1];
        match sys::recv_trunc(fd.as_raw_fd(), &mut buf) {
            // The receiver closed the connection before greeting us: it
            // went away (a receiver refuses only other users, and we
            // checked it is ours). Another may take its name.
            Ok(sys::Datagram::End) => Ok(Some(Greeting::Gone)),
            Ok(sys::Datagram::Bytes(n)) => {
                let got = buf.len().min(n);
                let h = Header::check(&buf[..got], n, &[HELLO], 0).map_err(|reason| {
                    OpenError::CorruptHeader {
                        name: shown.clone(),
                        reason: format!("bad greeting from the receiver: {reason}"),
                    }
                })?;
                let max = h.msg_id;
                if max > MAX_MESSAGE_LIMIT as u64 {
                    return Err(OpenError::CorruptHeader {
                        name: shown.clone(),
                        reason: format!(
                            "receiver announces a maximum message size of {max} bytes, \
                             over the limit of {MAX_MESSAGE_LIMIT}"
                        ),
                    });
                }
                Ok(Some(Greeting::Max(max as usize)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(os(shown, "recv")(e)),
        }
    }
}

/// What a receiver said first.
enum Greeting {
    /// Its maximum message size.
    Max(usize),
    /// Nothing: it closed the connection.
    Gone,
}

impl Opening for ConnOpening {
    type Output = (Conn, String, usize);

    fn name(&self) -> &str {
        &self.shown
    }

    fn step(&mut self) -> Step<(Conn, String, usize)> {
        let (fd, peer_pid) = match self.connected.take() {
            Some(c) => c,
            None => match self.connect() {
                Ok(Some(c)) => c,
                Ok(None) => return self.again(),
                Err(e) => return Step::Done(Err(e)),
            },
        };
        match self.greeting(&fd) {
            Ok(Some(Greeting::Max(max))) => {
                let conn = Conn { fd, peer_pid };
                Step::Done(Ok((conn, self.shown.clone(), max)))
            }
            Ok(Some(Greeting::Gone)) => self.again(),
            Ok(None) => {
                let until = self.patience.ready_deadline();
                if sys::remaining(until) == Some(Duration::ZERO) {
                    return Step::Done(Err(OpenError::NotInitialized {
                        name: self.shown.clone(),
                        waited: self.patience.for_ready(),
                    }));
                }
                let raw = fd.as_raw_fd();
                self.connected = Some((fd, peer_pid));
                Step::Readable { fd: raw, until }
            }
            Err(e) => Step::Done(Err(e)),
        }
    }
}

/// One connected socket and the pid of the process at its other end.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) fd: OwnedFd,
    pub(crate) peer_pid: u32,
}

impl Conn {
    /// Connects to channel `name`, checks the receiver runs as our user and
    /// waits for its greeting, as an [`Opening`] that gives the
    /// connection, the name as traced, and the receiver's maximum message
    /// size. Waits up to `wait` for a receiver to listen at the name,
    /// retrying the connect (a receiver may start after its senders), and
    /// for the greeting within [`Patience::for_ready`].
    pub(crate) fn opening(name: &str, wait: Duration) -> Result<ConnOpening, OpenError> {
        let (shown, addr) = address(name)?;
        Ok(ConnOpening {
            shown,
            addr,
            patience: Patience::new(wait),
            connected: None,
        })
    }

    /// Sends `msg` as a frame of `magic` (DATA, or an rpc's CALL) with a
    /// fresh id from process `pid`, traced as a send on channel `name`;
    /// returns the id. What a channel send and an rpc request share.
    pub(crate) fn send_message(
        &mut self,
        magic: u32,
        name: &str,
        pid: u32,
        msg: &[u8],
        wait: Wait,
        max: usize,
    ) -> Result<u64, SendError> {
        let id = next_id(pid);
        let head = Header {
            magic,
            len: 0,
            msg_id: id,
            reply_to: 0,
        };
        let at = self.send_frame(head, msg, wait, max)?;
        crate::trace::emit_op(crate::trace::Op {
            size: msg.len() as u64,
            msg_id: id,
            at_ns: Some(crate::trace::Stamp::ns(at)),
            ..crate::trace::Op::new(
                ipc_events::EventKind::MsgSend,
                ipc_events::ChannelKind::IpclibChannel,
                name,
            )
        });
        Ok(id)
    }

    /// Sends one frame: `head` (its `len` is set from `body`) and `body`,
    /// waiting for room as `wait` says. `max` is what `TooLarge` reports.
    /// Returns the time (monotonic ns) just before the `sendmsg` that
    /// delivered it, the send's timestamp for tracing.
    pub(crate) fn send_frame(
        &self,
        head: Header,
        body: &[u8],
        wait: Wait,
        max: usize,
    ) -> Result<u64, SendError> {
        let too_large = SendError::TooLarge {
            len: body.len(),
            max,
        };
        if body.len() > max {
            return Err(too_large);
        }
        let head = Header {
            len: body.len() as u32,
            ..head
        }
        .encode();
        loop {
            let at = crate::trace::monotonic_ns();
            let err = match sys::send_parts(self.fd.as_raw_fd(), &head, body) {
                Ok(_) => return Ok(at),
                Err(e) => e,
            };
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {}
                Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => {
                    return Err(SendError::Disconnected)
                }
                // The machine's socket buffers are smaller than the
                // receiver's maximum.
                Some(libc::EMSGSIZE) => return Err(too_large),
                _ => {
                    return Err(SendError::Os {
                        op: "sendmsg",
                        source: err,
                    })
                }
            }
            let deadline = match wait {
                Wait::No => return Err(SendError::Full),
                Wait::Until(d) => d,
            };
            let left = sys::remaining(deadline);
            if left == Some(Duration::ZERO) {
                return Err(SendError::Timeout);
            }
            // Wakes for room, or for the peer hanging up (then the send
            // fails with EPIPE).
            sys::poll_one(self.fd.as_fd(), libc::POLLOUT, left)
                .map_err(|source| SendError::Os { op: "poll", source })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Corruption, RecvError, WhenFull};
    use crate::transport::{MessageReceiver, MessageSender};

    const PATIENCE: Duration = Duration::from_secs(10);

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn pair(tag: &str, max: usize) -> (SocketSender, SocketReceiver) {
        let name = unique(tag);
        let rx = SocketReceiver::builder(&name)
            .max_message_size(max)
            .create()
            .unwrap();
        let tx = SocketSender::builder(&name).open().unwrap();
        (tx, rx)
    }

    /// A raw connection to a receiver, to play a hostile sender.
    fn raw_peer(name: &str) -> OwnedFd {
        let fd = sys::seqpacket().unwrap();
        sys::connect(&fd, &sys::Address::new(name)).unwrap();
        fd
    }

    fn raw_send(fd: &OwnedFd, bytes: &[u8]) {
        sys::send_parts(fd.as_raw_fd(), bytes, &[]).unwrap();
    }

    #[test]
    fn messages_arrive_in_order_with_ids_naming_the_sender() {
        let (mut tx, mut rx) = pair("order", 100);
        let mut last = 0;
        for i in 0..300u32 {
            let msg = vec![i as u8; (i % 100) as usize];
            let id = tx.send(&msg).unwrap();
            assert_eq!(id >> 32, u64::from(std::process::id()));
            assert!(id > last);
            last = id;
            let mut got = Vec::new();
            assert_eq!(rx.recv_into(&mut got, Some(PATIENCE)).unwrap(), id);
            assert_eq!(got, msg);
        }
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    }

    #[test]
    fn typed_values_round_trip_and_mismatches_are_decode_errors() {
        let (mut tx, mut rx) = pair("typed", 256);
        tx.send_value(&(7u32, "seven".to_string())).unwrap();
        let v: (u32, String) = rx.recv_value_timeout(PATIENCE).unwrap();
        assert_eq!(v, (7, "seven".into()));
        tx.send(&[0xff]).unwrap();
        assert!(matches!(
            rx.recv_value_timeout::<String>(PATIENCE),
            Err(RecvError::Decode { .. })
        ));
        tx.send_value("ok").unwrap();
        assert_eq!(rx.recv_value_timeout::<String>(PATIENCE).unwrap(), "ok");
    }

    #[test]
    fn oversized_message_is_refused_whole_by_the_sender() {
        let (mut tx, mut rx) = pair("big", 64);
        assert_eq!(tx.max_message_size(), 64);
        assert!(matches!(
            tx.send(&[0; 65]),
            Err(SendError::TooLarge { len: 65, max: 64 })
        ));
        tx.send(&[1; 64]).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), vec![1; 64]);
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    }

    #[test]
    fn full_socket_errors_or_times_out_as_chosen() {
        let name = unique("full");
        let mut rx = SocketReceiver::builder(&name).create().unwrap();
        let mut tx = SocketSender::builder(&name)
            .when_full(WhenFull::Error)
            .open()
            .unwrap();
        let msg = [7u8; 4096];
        let mut sent = 0u64;
        let full = loop {
            match tx.send(&msg) {
                Ok(_) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the socket never filled");
        };
        assert!(matches!(full, SendError::Full), "{full:?}");
        assert!(matches!(
            tx.send_timeout(&msg, Duration::from_millis(30)),
            Err(SendError::Timeout)
        ));
        for _ in 0..sent {
            assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), msg);
        }
        tx.send(&msg).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), msg);
    }

    #[test]
    fn many_senders_interleave_without_loss_then_disconnect() {
        let name = unique("mpsc");
        let mut rx = SocketReceiver::builder(&name).create().unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let mut tx = SocketSender::builder(&name).open().unwrap();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let mut m = vec![t];
                        m.extend_from_slice(&i.to_le_bytes());
                        tx.send(&m).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        let mut ids = std::collections::HashSet::new();
        for _ in 0..2000 {
            let mut m = Vec::new();
            let id = rx.recv_into(&mut m, Some(PATIENCE)).unwrap();
            assert!(ids.insert(id), "id {id:#x} twice");
            let t = m[0] as usize;
            assert_eq!(u32::from_le_bytes(m[1..5].try_into().unwrap()), next[t]);
            next[t] += 1;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert!(matches!(
            rx.recv_timeout(PATIENCE),
            Err(RecvError::Disconnected)
        ));
    }

    #[test]
    fn receiver_leaving_disconnects_the_sender() {
        let (mut tx, rx) = pair("rxgone", 64);
        tx.send(b"x").unwrap();
        drop(rx);
        assert!(matches!(tx.send(b"y"), Err(SendError::Disconnected)));
        assert!(matches!(
            SocketSender::builder(tx.name()).wait(Duration::ZERO).open(),
            Err(OpenError::NotFound { .. })
        ));
    }

    #[test]
    fn names_are_checked_and_exclusive() {
        let name = unique("names");
        let rx = SocketReceiver::builder(&name).create().unwrap();
        assert!(matches!(
            SocketReceiver::builder(format!("/{name}")).create(),
            Err(OpenError::AlreadyExists { .. })
        ));
        drop(rx);
        // The name is free again the moment its receiver is gone.
        SocketReceiver::builder(&name).create().unwrap();
        for bad in ["", "/", "a\0b", &"x".repeat(99)] {
            assert!(
                matches!(
                    SocketReceiver::builder(bad).create(),
                    Err(OpenError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            SocketReceiver::builder(unique("max"))
                .max_message_size(MAX_MESSAGE_LIMIT + 1)
                .create(),
            Err(OpenError::InvalidLayout { .. })
        ));
    }

    #[test]
    fn a_sender_gone_before_it_was_accepted_is_still_heard() {
        let name = unique("early");
        let mut rx = SocketReceiver::builder(&name).create().unwrap();
        // Whether the accept thread is quicker than the close varies from
        // round to round; either way nothing may be lost.
        for i in 1..=50u64 {
            let peer = raw_peer(&name);
            let head = frame::Header {
                magic: frame::DATA,
                len: 8,
                msg_id: i,
                reply_to: 0,
            };
            sys::send_parts(peer.as_raw_fd(), &head.encode(), &i.to_le_bytes()).unwrap();
            drop(peer);
            let mut got = Vec::new();
            assert_eq!(rx.recv_into(&mut got, Some(PATIENCE)).unwrap(), i);
            assert_eq!(got, i.to_le_bytes());
            assert!(matches!(
                rx.recv_timeout(PATIENCE),
                Err(RecvError::Disconnected)
            ));
        }
    }

    #[test]
    fn garbage_from_one_peer_is_an_error_that_spares_the_others() {
        let (mut tx, mut rx) = pair("hostile", 64);
        let name = rx.name().to_owned();
        let lie = frame::Header {
            magic: frame::DATA,
            len: 50,
            msg_id: 9,
            reply_to: 0,
        };
        let cases: Vec<(Vec<u8>, Corruption)> = vec![
            // Empty: not to be mistaken for the peer leaving.
            (
                Vec::new(),
                Corruption::Truncated {
                    size: 24,
                    available: 0,
                },
            ),
            (
                b"not a frame".to_vec(),
                Corruption::Truncated {
                    size: 24,
                    available: 11,
                },
            ),
            (
                [b"XXXX".as_slice(), &[0; 20]].concat(),
                Corruption::Marker {
                    found: u32::from_le_bytes(*b"XXXX"),
                },
            ),
            (
                lie.encode().to_vec(),
                Corruption::Truncated {
                    size: 74,
                    available: 24,
                },
            ),
            (
                [
                    frame::Header { len: 100, ..lie }.encode().as_slice(),
                    &[0; 100],
                ]
                .concat(),
                Corruption::Length { len: 100, max: 64 },
            ),
            // Far over the receiver's buffer: cut short, and still named.
            (vec![0xAB; 5000], Corruption::Marker { found: 0xABAB_ABAB }),
            (
                frame::Header {
                    len: 0,
                    msg_id: 0,
                    ..lie
                }
                .encode()
                .to_vec(),
                Corruption::ZeroId,
            ),
        ];
        for (bytes, want) in cases {
            let peer = raw_peer(&name);
            raw_send(&peer, &bytes);
            match rx.recv_timeout(PATIENCE) {
                Err(RecvError::Corrupt { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{want:?}: {other:?}"),
            }
            // The hostile peer was cut off; the honest sender is fine.
            assert_eq!(
                sys::recv_trunc(peer.as_raw_fd(), &mut [0; 64]).ok(),
                Some(sys::Datagram::Bytes(24)),
                "greeting"
            );
            assert_eq!(
                sys::send_parts(peer.as_raw_fd(), b"more", &[])
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::EPIPE)
            );
            tx.send(b"honest").unwrap();
            assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"honest");
        }
    }
}
