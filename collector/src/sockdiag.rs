//! Unix socket identities: a socket's own inode, and its peer's through
//! the kernel's `sock_diag` netlink interface (what `ss -x` reads).
//!
//! The recorder uses them to know its own sockets by the inodes the probes
//! report: an ipc-lib process's connection to it has two ends, and the
//! client's end is the only one a traced process touches.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` from `<linux/sock_diag.h>`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_PEER` and `UNIX_DIAG_PEER` from `<linux/unix_diag.h>`.
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;

/// `struct unix_diag_req`.
#[repr(C)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    req: UnixDiagReq,
}

/// `struct unix_diag_msg`: family, type, state, pad, ino, cookie.
const UNIX_DIAG_MSG_SIZE: usize = 16;

/// The inode of the file `fd` is.
pub fn inode(fd: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the borrow's duration; `st` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// The inode of the peer of Unix socket `ino`; None when it has none (or
/// the kernel does not say).
pub fn unix_peer(ino: u64) -> io::Result<Option<u64>> {
    let ino = u32::try_from(ino).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain socket creation; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino,
            show: UDIAG_SHOW_PEER,
            // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
            cookie: [u32::MAX; 2],
        },
    };
    // SAFETY: `request` is a live, initialised repr(C) value of that size.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parse_peer(&buf[..n as usize]))
}

/// The `UNIX_DIAG_PEER` attribute of a `sock_diag` reply.
fn parse_peer(reply: &[u8]) -> Option<u64> {
    let u16_at = |at: usize| Some(u16::from_ne_bytes(reply.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?));
    let header = size_of::<libc::nlmsghdr>();
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY {
        // NLMSG_ERROR: no such socket (it closed), or no diag support.
        return None;
    }
    let end = (u32_at(0)? as usize).min(reply.len());
    let mut at = header + UNIX_DIAG_MSG_SIZE;
    while at + 4 <= end {
        let len = u16_at(at)? as usize;
        if len < 4 {
            return None;
        }
        if u16_at(at + 2)? == UNIX_DIAG_PEER {
            return u32_at(at + 4).map(u64::from).filter(|&p| p != 0);
        }
        at += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn finds_the_peer_of_a_connected_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (ia, ib) = (inode(&a).unwrap(), inode(&b).unwrap());
        assert_ne!(ia, ib);
        assert_eq!(unix_peer(ia).unwrap(), Some(ib));
        assert_eq!(unix_peer(ib).unwrap(), Some(ia));
    }

    #[test]
    fn a_socket_without_a_peer_has_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let ia = inode(&a).unwrap();
        drop(b);
        assert_eq!(unix_peer(ia).unwrap(), None);
        assert_eq!(parse_peer(&[]), None);
        assert_eq!(parse_peer(&[0xff; 64]), None);
    }
}
