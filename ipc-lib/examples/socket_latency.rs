//! Round-trip latency of the socket transport and of rpc, against a bare
//! SOCK_SEQPACKET ping-pong between the same two processes, in one run.
//!
//! ```text
//! cargo run --release -p ipc-lib --example socket_latency -- --rounds 20000 --size 64
//! ```
//!
//! Each test starts an echo process (this program again, with a hidden
//! `--echo MODE:NAME`) and times `rounds` round trips of `size` bytes:
//!
//! - `raw`: one connected SOCK_SEQPACKET socket, blocking `send`/`recv`
//!   straight from libc: the floor the kernel sets.
//! - `channel`: a socket channel each way ([`SocketSender`] to the echo's
//!   [`SocketReceiver`], and back), framed, checked and traced.
//! - `rpc`: [`Client::call`] to an echoing [`Server`].

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipc_lib::channel::OpenError;
use ipc_lib::rpc::{Client, Server};
use ipc_lib::socket::{SocketReceiver, SocketSender};
use ipc_lib::transport::{MessageReceiver, MessageSender};

#[derive(Parser)]
#[command(about = "Round trips over the socket transport, rpc and a raw SOCK_SEQPACKET baseline")]
struct Args {
    /// Round trips per test.
    #[arg(long, default_value_t = 20_000)]
    rounds: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Run only these tests (raw, channel, rpc); all three by default.
    /// `--only raw` is a plain syscall ping-pong with no ipc-lib tracing,
    /// what `benches/peers.sh` records under each tracer.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run as the echo process (MODE:NAME).
    #[arg(long, hide = true)]
    echo: Option<String>,
}

const PATIENCE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.echo {
        let (mode, name) = spec.split_once(':').context("--echo MODE:NAME")?;
        return echo(mode, name);
    }
    let tag = std::process::id();
    println!(
        "{} round trips of {} bytes (p50 / p99, microseconds)",
        args.rounds, args.size
    );
    for mode in ["raw", "channel", "rpc"] {
        if !args.only.is_empty() && !args.only.iter().any(|m| m == mode) {
            continue;
        }
        let name = format!("latency-{mode}-{tag}");
        let mut times = run(mode, &name, args.rounds, args.size)
            .with_context(|| format!("{mode} round trips"))?;
        times.sort_unstable();
        let at = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
        println!(
            "{mode:>8}: p50 {:7.2}  p99 {:7.2}",
            at(50).as_secs_f64() * 1e6,
            at(99).as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn start_echo(mode: &str, name: &str) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["--echo", &format!("{mode}:{name}")])
        .spawn()
        .context("starting the echo process")
}

/// Retries `open` while the echo process is still starting.
fn when_ready<T>(mut open: impl FnMut() -> Result<T, OpenError>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match open() {
            Ok(t) => return Ok(t),
            Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run(mode: &str, name: &str, rounds: usize, size: usize) -> Result<Vec<Duration>> {
    let msg = vec![0x5a; size];
    let mut times = Vec::with_capacity(rounds);
    let mut child;
    match mode {
        "raw" => {
            let listener = raw::listen(name)?;
            child = start_echo(mode, name)?;
            let fd = raw::accept(&listener)?;
            let mut buf = vec![0; size + 1];
            for _ in 0..rounds {
                let t = Instant::now();
                raw::send(&fd, &msg)?;
                let n = raw::recv(&fd, &mut buf)?;
                times.push(t.elapsed());
                if buf[..n] != msg[..] {
                    bail!("echo differs");
                }
            }
        }
        "channel" => {
            let mut back = SocketReceiver::builder(format!("{name}-back")).create()?;
            child = start_echo(mode, name)?;
            let mut to = when_ready(|| SocketSender::builder(name).open())?;
            let mut buf = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                to.send(&msg)?;
                back.recv_into(&mut buf, Some(PATIENCE))?;
                times.push(t.elapsed());
                if buf != msg {
                    bail!("echo differs");
                }
            }
        }
        _ => {
            child = start_echo(mode, name)?;
            let mut client = when_ready(|| Client::connect(name))?;
            for _ in 0..rounds {
                let t = Instant::now();
                let got = client.call(&msg, PATIENCE)?;
                times.push(t.elapsed());
                if got != msg {
                    bail!("echo differs");
                }
            }
        }
    }
    // The echo ends when we close our ends (dropped above).
    let status = child.wait()?;
    if !status.success() {
        bail!("echo process failed: {status}");
    }
    Ok(times)
}

fn echo(mode: &str, name: &str) -> Result<()> {
    match mode {
        "raw" => {
            let fd = raw::connect(name)?;
            let mut buf = vec![0; ipc_lib::socket::MAX_MESSAGE_LIMIT];
            loop {
                let n = raw::recv(&fd, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                raw::send(&fd, &buf[..n])?;
            }
        }
        "channel" => {
            let mut from = SocketReceiver::builder(name).create()?;
            let mut back = when_ready(|| SocketSender::builder(format!("{name}-back")).open())?;
            let mut buf = Vec::new();
            loop {
                match from.recv_into(&mut buf, None) {
                    Ok(_) => back.send(&buf)?,
                    Err(ipc_lib::channel::RecvError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
            }
        }
        _ => {
            let mut server = Server::builder(name).create()?;
            server.serve(|req| req.to_vec())?;
            Ok(())
        }
    }
}

/// The baseline: SOCK_SEQPACKET with nothing but libc.
mod raw {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn cvt(r: i64) -> io::Result<usize> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    fn addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = format!("latency-raw/{name}");
        for (d, s) in a.sun_path[1..].iter_mut().zip(path.bytes()) {
            *d = s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + 1 + path.len().min(106);
        (a, len as libc::socklen_t)
    }

    fn socket() -> io::Result<OwnedFd> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
        }
        .into())?;
        // SAFETY: a fresh descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn listen(name: &str) -> io::Result<OwnedFd> {
        let fd = socket()?;
        let (a, len) = addr(name);
        // SAFETY: a valid address of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const a).cast(), len) }.into())?;
        // SAFETY: plain syscall.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1) }.into())?;
        Ok(fd)
    }

    pub fn accept(l: &OwnedFd) -> io::Result<OwnedFd> {
        // SAFETY: null address pointers are allowed.
        let fd = cvt(unsafe {
            libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut())
        }
        .into())?;
        // SAFETY: a fresh descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn connect(name: &str) -> io::Result<OwnedFd> {
        let (a, len) = addr(name);
        let deadline = std::time::Instant::now() + super::PATIENCE;
        loop {
            let fd = socket()?;
            // SAFETY: a valid address of `len` bytes.
            match cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) }.into()) {
                Ok(_) => return Ok(fd),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<usize> {
        // SAFETY: msg is valid for reads of its length.
        cvt(unsafe {
            libc::send(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        } as i64)
    }

    pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        cvt(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as i64)
    }
}
