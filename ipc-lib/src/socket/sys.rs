//! The system calls of the socket transport, each wrapped once with its
//! safety argument: SOCK_SEQPACKET sockets in the abstract namespace,
//! credentials, poll and epoll.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The longest channel name: `sun_path` holds 108 bytes, one is the
/// abstract namespace's leading NUL and 9 are the `ipcscope/` prefix.
pub(crate) const MAX_NAME: usize = 98;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_len(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A socket address in the abstract namespace: `\0ipcscope/NAME`.
pub(crate) struct Address {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Address {
    /// `name` must have been checked: at most [`MAX_NAME`] bytes, no NUL.
    pub(crate) fn new(name: &str) -> Address {
        // SAFETY: sockaddr_un is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_un = unsafe { zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = format!("ipcscope/{name}");
        // sun_path[0] stays 0: the abstract namespace.
        for (dst, src) in addr.sun_path[1..].iter_mut().zip(path.bytes()) {
            *dst = src as libc::c_char;
        }
        let len = size_of::<libc::sa_family_t>() + 1 + path.len().min(MAX_NAME + 9);
        Address {
            addr,
            len: len as libc::socklen_t,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.addr).cast()
    }
}

/// A new SOCK_SEQPACKET socket, close-on-exec.
pub(crate) fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn bind_listen(fd: &OwnedFd, addr: &Address) -> io::Result<()> {
    // SAFETY: addr points at a sockaddr_un of at least addr.len bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len) })?;
    // SAFETY: plain syscall on our own socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(())
}

pub(crate) fn connect(fd: &OwnedFd, addr: &Address) -> io::Result<()> {
    loop {
        // SAFETY: addr points at a sockaddr_un of at least addr.len bytes.
        match cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// Accepts one pending connection without waiting (`WouldBlock` when none).
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed: we do not want the peer's
    // address.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on our own descriptor.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// The pid and uid of the process at the other end (as of its
/// `connect`/`listen`).
pub(crate) fn peer_cred(fd: &OwnedFd) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain old data.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.pid as u32, cred.uid))
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `head` and `body` as one datagram, never raising SIGPIPE and never
/// waiting (the socket may be blocking; `WouldBlock` when it is full).
pub(crate) fn send_parts(fd: RawFd, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    loop {
        // SAFETY: msg names two iovecs over live slices that the kernel
        // only reads.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        match cvt_len(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// What one receive found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Datagram {
    /// A datagram of this real length (MSG_TRUNC: more than the buffer
    /// holds when it was cut short; 0 for an empty one).
    Bytes(usize),
    /// The peer closed its end and everything it sent has been read.
    End,
}

/// Asks the kernel to attach the sender's credentials to every datagram
/// this socket receives. Not for the credentials themselves: a datagram
/// then comes with control data, which tells an empty datagram (garbage
/// from a hostile peer) from the end of the stream, both of which `recv`
/// reports as 0 bytes.
pub(crate) fn set_passcred(fd: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid int option of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// One `recvmsg` without waiting: the real length and whether control
/// data (the credentials) came with it.
fn recvmsg(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<(usize, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    loop {
        // SAFETY: msg names one iovec over buf, valid for writes of its
        // length, and no control buffer.
        let r = unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_DONTWAIT) };
        match cvt_len(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer closed with data of ours unread. The kernel reports
            // that once, ahead of what is still queued for us: read on.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
            // Control data that did not fit our (absent) buffer.
            r => return r.map(|n| (n, msg.msg_flags & libc::MSG_CTRUNC != 0)),
        }
    }
}

/// Receives one datagram into `buf` without waiting (`WouldBlock` when
/// none is there). The socket must have [`set_passcred`].
pub(crate) fn recv_trunc(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    match recvmsg(fd, buf, libc::MSG_TRUNC)? {
        (0, false) => {}
        (n, _) => return Ok(Datagram::Bytes(n)),
    }
    // 0 bytes and no credentials: the end, or an empty datagram queued
    // before the receiving side was accepted (and so before it asked for
    // credentials). Look at what follows without taking it: more data,
    // or nothing yet from a peer still connected, means it was a datagram.
    // Empty datagrams followed by the peer leaving stay indistinguishable
    // from the end; they carry nothing to lose.
    match recvmsg(fd, &mut [], libc::MSG_PEEK | libc::MSG_TRUNC) {
        Ok((0, false)) => Ok(Datagram::End),
        Ok(_) => Ok(Datagram::Bytes(0)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Datagram::Bytes(0)),
        Err(e) => Err(e),
    }
}

/// Milliseconds for poll/epoll: `None` waits forever; a partial
/// millisecond rounds up so a short wait does not spin.
fn millis(timeout: Option<Duration>) -> libc::c_int {
    timeout.map_or(-1, |t| {
        t.as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int
    })
}

/// The time left until `deadline` (`None`: forever); `Some(ZERO)` once it
/// has passed.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Waits for `events` on `fd`; returns the events seen (0 on timeout or a
/// signal: callers re-check their deadline).
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    match cvt(unsafe { libc::poll(&mut p, 1, millis(timeout)) }) {
        Ok(_) => Ok(p.revents),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Waits for either of two descriptors to be readable; returns which.
pub(crate) fn poll_two(a: RawFd, b: RawFd) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds.
    match cvt(unsafe { libc::poll(p.as_mut_ptr(), 2, -1) }) {
        Ok(_) => Ok((p[0].revents != 0, p[1].revents != 0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok((false, false)),
        Err(e) => Err(e),
    }
}

/// An eventfd: one thread tells another to stop.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array; an eventfd write only fails
    // when the counter would overflow, which one write cannot do.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// A level-triggered epoll set; each descriptor is registered with its own
/// number as the event data.
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The epoll descriptor itself, to register with tokio or to poll
    /// (`crate::select`): readable while a connection has something.
    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub(crate) fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: fd as u64,
        };
        // SAFETY: a valid event struct; epoll_ctl is thread-safe.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: RawFd) {
        // SAFETY: DEL ignores the event pointer. Failure means the fd was
        // not registered, which leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// One ready descriptor, or `None` on timeout or a signal.
    /// Level-triggered epoll queues a descriptor still ready at the back,
    /// so taking one at a time serves senders in turn.
    pub(crate) fn wait_one(&self, timeout: Option<Duration>) -> io::Result<Option<RawFd>> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for exactly the one event asked for.
        match cvt(unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, millis(timeout)) }) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(ev.u64 as RawFd)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}
