//! The floors: what moving a message between two processes costs with
//! nothing but a shared mapping, libc and the copies themselves.
//!
//! - Latency: two lanes, one each way; a lane is a counter on a cache line
//!   of its own and the payload on the lines after it. The sender copies
//!   the message in and bumps the counter (Release); the receiver spins on
//!   the counter (Acquire), or sleeps on it as a futex when blocking, and
//!   copies the message out. At 64 B that is the spinning floor: two cache
//!   lines cross cores per message.
//! - Throughput: a single-producer ring of fixed slots with a head and a
//!   tail counter, each on its own line: a plain memcpy in and out, both
//!   sides spinning, with no framing, no checksum and no liveness checks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{bail, ensure, Context, Result};

use crate::ends::{self, read_stamp, stamp, Rx, Tx};
use crate::procs::Peer;
use crate::{Measure, Run, Wait, RING};

const LINE: usize = 64;
const PAGE: usize = 4096;

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// A file in /dev/shm, mapped shared: the driver creates it (and removes
/// its name when done), the peer opens it.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// The file's path, when this process created it.
    owned: Option<PathBuf>,
}

impl Mapping {
    fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("/dev/shm/{name}-floor"))
    }

    fn create(name: &str, len: usize) -> Result<Mapping> {
        let path = Mapping::path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // Zero-filled: every counter starts at 0.
        file.set_len(len as u64)?;
        let mut m = Mapping::map(&file, len)?;
        m.owned = Some(path);
        Ok(m)
    }

    fn open(name: &str, len: usize) -> Result<Mapping> {
        let path = Mapping::path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let have = file.metadata()?.len();
        ensure!(
            have == len as u64,
            "{} has {have} bytes, not {len}",
            path.display()
        );
        Mapping::map(&file, len)
    }

    fn map(file: &File, len: usize) -> Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: maps `len` bytes of a file that has exactly `len` bytes;
        // the result is checked against MAP_FAILED. The mapping outlives
        // the descriptor, as mappings do.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        ensure!(
            base != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let base = NonNull::new(base.cast()).context("mmap returned null")?;
        Ok(Mapping {
            base,
            len,
            owned: None,
        })
    }

    /// The bytes `at..at + len`, bounds checked.
    fn bytes(&self, at: usize, len: usize) -> *mut u8 {
        assert!(at + len <= self.len, "{at}+{len} outside the mapping");
        // SAFETY: inside the mapping, as just checked.
        unsafe { self.base.as_ptr().add(at) }
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4));
        // SAFETY: aligned (the mapping is page-aligned) and inside it; the
        // mapping lives as long as self, and an AtomicU32 is valid for any
        // bits and for access from the other process at the same time.
        unsafe { &*self.bytes(at, 4).cast::<AtomicU32>() }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8));
        // SAFETY: as for `u32_at`.
        unsafe { &*self.bytes(at, 8).cast::<AtomicU64>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base and len are what mmap returned and took; no
        // reference into the mapping outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if let Some(path) = &self.owned {
            let _ = std::fs::remove_file(path);
        }
    }
}

// ----- latency: a counter and the payload, one lane each way -----

/// A lane: its counter, then the payload from the next cache line on.
fn lane_len(size: usize) -> usize {
    round_up(LINE + size, PAGE)
}

struct LaneTx<'m> {
    map: &'m Mapping,
    lane: usize,
    wait: Wait,
    msg: Vec<u8>,
}

impl Tx for LaneTx<'_> {
    fn send(&mut self, n: u64) -> Result<()> {
        stamp(&mut self.msg, n);
        let at = self.lane * lane_len(self.msg.len());
        // SAFETY: the payload area of this lane, inside the mapping
        // (`bytes` checks). The receiver reads it only after the Release
        // bump below, and in a ping-pong this side writes the lane again
        // only after the receiver has answered, so after it has read.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.msg.as_ptr(),
                self.map.bytes(at + LINE, self.msg.len()),
                self.msg.len(),
            )
        };
        let seq = self.map.u32_at(at);
        seq.fetch_add(1, Ordering::Release);
        if self.wait == Wait::Block {
            // SAFETY: FUTEX_WAKE uses the address only as a key.
            unsafe { libc::syscall(libc::SYS_futex, seq.as_ptr(), libc::FUTEX_WAKE, 1) };
        }
        Ok(())
    }
}

struct LaneRx<'m> {
    map: &'m Mapping,
    lane: usize,
    wait: Wait,
    seen: u32,
    buf: Vec<u8>,
    size: usize,
}

impl Rx for LaneRx<'_> {
    fn recv(&mut self) -> Result<u64> {
        let at = self.lane * lane_len(self.size);
        let seq = self.map.u32_at(at);
        loop {
            let now = seq.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                break;
            }
            match self.wait {
                Wait::Spin => std::hint::spin_loop(),
                // SAFETY: the word is live and aligned; a null timeout
                // sleeps until woken or the word differs from `now`. A
                // shared futex (no FUTEX_PRIVATE_FLAG): two processes.
                Wait::Block => unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        seq.as_ptr(),
                        libc::FUTEX_WAIT,
                        now,
                        std::ptr::null::<libc::timespec>(),
                    );
                },
            }
        }
        self.buf.clear();
        // SAFETY: the lane's payload, published by the Acquire load above;
        // the buffer has room for `size` bytes after the reserve.
        unsafe {
            self.buf.reserve(self.size);
            std::ptr::copy_nonoverlapping(
                self.map.bytes(at + LINE, self.size),
                self.buf.as_mut_ptr(),
                self.size,
            );
            self.buf.set_len(self.size);
        }
        read_stamp(&self.buf, self.size)
    }
}

fn lanes<'m>(map: &'m Mapping, run: &Run, to: usize, from: usize) -> (LaneTx<'m>, LaneRx<'m>) {
    let tx = LaneTx {
        map,
        lane: to,
        wait: run.wait,
        msg: vec![0x5a; run.size],
    };
    let rx = LaneRx {
        map,
        lane: from,
        wait: run.wait,
        seen: 0,
        buf: Vec::with_capacity(run.size),
        size: run.size,
    };
    (tx, rx)
}

// ----- throughput: a ring of slots -----

const HEAD: usize = 0;
const TAIL: usize = LINE;
const SLOTS_AT: usize = 2 * LINE;

/// The ring's slot stride and slot count for messages of `size` bytes.
fn ring_shape(size: usize) -> (usize, u64) {
    let stride = round_up(size, LINE);
    (stride, (RING / stride).max(2) as u64)
}

fn ring_len(size: usize) -> usize {
    let (stride, slots) = ring_shape(size);
    SLOTS_AT + stride * slots as usize
}

struct RingTx<'m> {
    map: &'m Mapping,
    head: u64,
    msg: Vec<u8>,
}

impl Tx for RingTx<'_> {
    fn send(&mut self, n: u64) -> Result<()> {
        let (stride, slots) = ring_shape(self.msg.len());
        let tail = self.map.u64_at(TAIL);
        while self.head - tail.load(Ordering::Acquire) >= slots {
            std::hint::spin_loop();
        }
        stamp(&mut self.msg, n);
        let at = SLOTS_AT + (self.head % slots) as usize * stride;
        // SAFETY: a free slot (the receiver's tail is past it), inside the
        // mapping; the receiver reads it only after the Release below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.msg.as_ptr(),
                self.map.bytes(at, self.msg.len()),
                self.msg.len(),
            )
        };
        self.head += 1;
        self.map.u64_at(HEAD).store(self.head, Ordering::Release);
        Ok(())
    }
}

struct RingRx<'m> {
    map: &'m Mapping,
    tail: u64,
    buf: Vec<u8>,
    size: usize,
}

impl Rx for RingRx<'_> {
    fn recv(&mut self) -> Result<u64> {
        let (stride, slots) = ring_shape(self.size);
        let head = self.map.u64_at(HEAD);
        while head.load(Ordering::Acquire) == self.tail {
            std::hint::spin_loop();
        }
        let at = SLOTS_AT + (self.tail % slots) as usize * stride;
        self.buf.clear();
        // SAFETY: a slot the sender published (Acquire above) and will not
        // write again until the tail below passes it.
        unsafe {
            self.buf.reserve(self.size);
            std::ptr::copy_nonoverlapping(
                self.map.bytes(at, self.size),
                self.buf.as_mut_ptr(),
                self.size,
            );
            self.buf.set_len(self.size);
        }
        self.tail += 1;
        self.map.u64_at(TAIL).store(self.tail, Ordering::Release);
        read_stamp(&self.buf, self.size)
    }
}

fn map_len(run: &Run) -> Result<usize> {
    match (run.measure, run.wait) {
        (Measure::Latency, _) => Ok(2 * lane_len(run.size)),
        (Measure::Throughput, Wait::Spin) => Ok(ring_len(run.size)),
        (Measure::Throughput, Wait::Block) => bail!("no floor for a blocking stream"),
    }
}

/// Lane 0 carries driver to peer, lane 1 back.
pub fn drive(run: &Run, name: &str) -> Result<Vec<f64>> {
    let map = Mapping::create(name, map_len(run)?)?;
    let peer = Peer::start(run, name)?;
    let figures = match run.measure {
        Measure::Latency => {
            let (mut tx, mut rx) = lanes(&map, run, 0, 1);
            ends::ping_pong(&mut tx, &mut rx, run.count)?
        }
        Measure::Throughput => {
            let mut rx = RingRx {
                map: &map,
                tail: 0,
                buf: Vec::with_capacity(run.size),
                size: run.size,
            };
            vec![ends::receive_rate(&mut rx, run.count)?]
        }
    };
    peer.wait()?;
    Ok(figures)
}

pub fn peer(run: &Run, name: &str) -> Result<()> {
    let map = Mapping::open(name, map_len(run)?)?;
    match run.measure {
        Measure::Latency => {
            let (mut tx, mut rx) = lanes(&map, run, 1, 0);
            ends::echo(&mut rx, &mut tx, run.count)
        }
        Measure::Throughput => {
            let mut tx = RingTx {
                map: &map,
                head: 0,
                msg: vec![0x5a; run.size],
            };
            ends::send_all(&mut tx, run.count)
        }
    }
}
