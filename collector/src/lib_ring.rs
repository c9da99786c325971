//! The collector's side of the ipc-lib event rings.
//!
//! `record` listens on a Unix socket in the abstract namespace, whose name
//! it passes to the command in [`SOCKET_ENV`] (as `@name`). Each ipc-lib
//! process connects once and sends its ring's memfd; the collector checks
//! who is calling (`SO_PEERCRED`: the recording user, or a process below
//! the recorder or a followed process, whatever user it switched to: see
//! [`Admission`]), that the memfd is sealed against
//! shrinking (otherwise a process could truncate it under our mapping and
//! crash us with SIGBUS), and the ring header, then maps it and drains it
//! every millisecond. The connection stays open while the process lives, so
//! its end is seen at once and its ring drained a last time.
//!
//! The writer may be buggy or hostile. [`RingReader`] reads every position
//! and length once into locals, checks it, and copies records out before
//! decoding: garbage costs that process its ring (detached, counted), never
//! the collector, and never another process's data.
//!
//! A ring has a lane per writing thread (`ipc_events::ring`); each drain
//! reads every lane. Records stamped with the raw TSC are converted to
//! CLOCK_MONOTONIC here ([`tsc`]), so that every event leaves this module
//! on the clock the probes stamp with.

mod tsc;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_events::raw::{drop_source, RAW_EVENT_SIZE};
pub use ipc_events::ring::SOCKET_ENV;
use ipc_events::ring::{
    clock, ring_len, Hello, Lane, RingHeader, ACCEPTED, COMMITTED, HEADER_SIZE, HELLO_SIZE,
    LEN_MASK, MAGIC, MAX_RING_BYTES, MIN_CAPACITY, PADDING, READY, SHARED_LANE, SLOT_HEADER,
    VERSION,
};
use ipc_events::{decode, Event, EventKind, Source};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::monotonic_ns;
use crate::sockdiag;
use crate::store::{Ingest, IngestError, ReadThrough};

/// Why a ring was refused or detached.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("registration from pid {pid} (uid {uid}) refused: not the recording user ({ours}), nor a process the recording started or follows")]
    Stranger { pid: u32, uid: u32, ours: u32 },
    #[error("registration message malformed ({0} bytes, no fd, or wrong magic/version)")]
    BadHello(usize),
    #[error("ring protocol version {found}, where this recorder speaks {expected}: record with the ipcscope release that matches the process's ipc-lib")]
    Version { found: u32, expected: u32 },
    #[error("ring memfd is not sealed against shrinking")]
    NotSealed,
    #[error("ring header invalid: {0}")]
    BadHeader(&'static str),
    #[error("ring corrupted: {0}")]
    Corrupt(&'static str),
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> RingError {
    move |source| RingError::Io { action, source }
}

/// A mapped ring and the consumer's position in each of its lanes.
pub struct RingReader {
    base: NonNull<u8>,
    len: usize,
    /// Bytes in each lane's data area.
    capacity: u64,
    /// The owner, from SO_PEERCRED: every event must carry this pid.
    pid: u32,
    /// Per lane, our own copy of the tail (the header's copy is writable
    /// by the owner) and of the refusals counted so far.
    lanes: Vec<LaneCursor>,
    buf: Vec<u8>,
    /// Per drain: which of its events carry a raw TSC reading.
    tsc_events: Vec<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
struct LaneCursor {
    tail: u64,
    dropped_seen: u64,
}

// SAFETY: the mapping is process-wide memory owned by this value; nothing
// in it is tied to the thread that created it.
unsafe impl Send for RingReader {}

/// What one drain found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainStats {
    pub events: u64,
    /// Records that failed to decode or claimed another pid.
    pub rejected: u64,
    /// New refusals the owner counted because its ring was full.
    pub ring_full: u64,
}

impl RingReader {
    /// Maps `fd` after checking its seals, size and header.
    pub fn map(fd: &OwnedFd, pid: u32) -> Result<RingReader, RingError> {
        let raw = fd.as_raw_fd();
        // SAFETY: plain fcntl on an fd we own.
        let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RingError::NotSealed);
        }
        // SAFETY: fstat writes into the zeroed struct we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(io_err("fstat of the ring")(io::Error::last_os_error()));
        }
        let len = usize::try_from(st.st_size).unwrap_or(usize::MAX);
        if len < HEADER_SIZE + MIN_CAPACITY as usize || len > MAX_RING_BYTES {
            return Err(RingError::BadHeader("size out of range"));
        }
        // SAFETY: mapping `len` bytes of a file that is at least that long
        // and sealed against shrinking, so every byte stays backed.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io_err("mapping the ring")(io::Error::last_os_error()));
        }
        let mut reader = RingReader {
            base: NonNull::new(base.cast()).ok_or(RingError::BadHeader("null mapping"))?,
            len,
            capacity: 0,
            pid,
            lanes: Vec::new(),
            buf: Vec::with_capacity(512),
            tsc_events: Vec::new(),
        };
        let header = reader.header();
        // Read each field once; the owner can change them at any time.
        let (magic, version, capacity, lanes) = (
            // SAFETY: the header lies within the mapping (len >= HEADER_SIZE);
            // volatile because another process writes this memory.
            unsafe { ptr::read_volatile(&header.magic) },
            unsafe { ptr::read_volatile(&header.version) },
            unsafe { ptr::read_volatile(&header.capacity) },
            unsafe { ptr::read_volatile(&header.lanes) },
        );
        if magic != MAGIC {
            return Err(RingError::BadHeader("wrong magic"));
        }
        if version != VERSION {
            return Err(RingError::Version {
                found: version,
                expected: VERSION,
            });
        }
        if ring_len(lanes, capacity) != Some(len) {
            return Err(RingError::BadHeader(
                "lanes and capacity do not match the memfd's size",
            ));
        }
        reader.capacity = u64::from(capacity);
        reader.lanes = (0..lanes)
            .map(|i| LaneCursor {
                tail: reader.lane(i).header().tail.load(Ordering::Acquire),
                dropped_seen: 0,
            })
            .collect();
        // Its first pair before any of this ring's TSC readings.
        tsc::start();
        Ok(reader)
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned,
        // and lives as long as self; RingHeader is integers and atomics,
        // valid for any bit pattern.
        unsafe { &*self.base.as_ptr().cast::<RingHeader>() }
    }

    fn lane(&self, i: u32) -> Lane {
        // SAFETY: map() checked that the mapping holds exactly
        // self.lanes.len() lanes of self.capacity bytes, and i is below
        // that count wherever this is called; the mapping lives as long
        // as self.
        unsafe { Lane::new(self.base.as_ptr(), self.capacity as u32, i) }
    }

    /// Copies every committed record of every lane out, decodes it into
    /// `out` (TSC readings converted to CLOCK_MONOTONIC), frees its space,
    /// and adds what it found to `stats`. An error means the ring's
    /// structure is beyond repair; what came before it is in `out` and
    /// `stats` all the same.
    pub fn drain(&mut self, out: &mut Vec<Event>, stats: &mut DrainStats) -> Result<(), RingError> {
        self.tsc_events.clear();
        let mut result = Ok(());
        for i in 0..self.lanes.len() as u32 {
            result = self.drain_lane(i, out, stats);
            if result.is_err() {
                break;
            }
        }
        // A pair every drain, after its records are read (so that it comes
        // after each of their readings), and whether or not they hold any:
        // pairs stay a millisecond apart while rings are drained, and no
        // reading is interpolated across a stretch long enough for a
        // change in the kernel's rate (NTP) to show.
        let converted = tsc::with_calibration(|calibration| {
            for &i in &self.tsc_events {
                out[i].ts_ns = calibration.to_ns(out[i].ts_ns);
            }
        });
        if converted.is_none() && !self.tsc_events.is_empty() {
            // No TSC on this machine to convert by: the owner wrote
            // readings of a counter it cannot have.
            let lost = self.tsc_events.len() as u64;
            stats.rejected += lost;
            stats.events -= lost;
            let mut tsc_events = self.tsc_events.iter().peekable();
            let mut index = 0;
            out.retain(|_| {
                let keep = tsc_events.next_if_eq(&&index).is_none();
                index += 1;
                keep
            });
        }
        result
    }

    fn drain_lane(
        &mut self,
        lane_index: u32,
        out: &mut Vec<Event>,
        stats: &mut DrainStats,
    ) -> Result<(), RingError> {
        let lane = self.lane(lane_index);
        let cursor = &mut self.lanes[lane_index as usize];
        let head = lane.header().head.load(Ordering::Acquire);
        if head < cursor.tail || head - cursor.tail > self.capacity {
            return Err(RingError::Corrupt("head outside the ring"));
        }
        let data = lane.data();
        while cursor.tail < head {
            let off = (cursor.tail & (self.capacity - 1)) as usize;
            // SAFETY: off < capacity and is 8-aligned (we only ever advance
            // by checked multiples of 8), so the word is inside the mapping
            // and aligned for an AtomicU32.
            let word = unsafe { &*data.add(off).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if word & COMMITTED == 0 {
                break; // a producer is still writing this one
            }
            let len = (word & LEN_MASK) as usize;
            let padding = word & PADDING != 0;
            if len < SLOT_HEADER
                || !len.is_multiple_of(8)
                || off + len > self.capacity as usize
                || cursor.tail + len as u64 > head
                || (!padding && len < SLOT_HEADER + RAW_EVENT_SIZE)
            {
                return Err(RingError::Corrupt("record length"));
            }
            if !padding {
                self.buf.clear();
                self.buf.resize(len, 0);
                // SAFETY: [off, off + len) is inside the data area
                // (checked above); copying into our own buffer first means
                // the owner cannot change bytes under the decoder.
                unsafe { ptr::copy_nonoverlapping(data.add(off), self.buf.as_mut_ptr(), len) };
                let (slot, record) = self.buf.split_at(SLOT_HEADER);
                let clock_word = u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]);
                match decode(Source::Lib, record) {
                    Ok((event, _))
                        if event.pid == self.pid
                            && matches!(clock_word, clock::MONOTONIC_NS | clock::TSC) =>
                    {
                        if clock_word == clock::TSC {
                            self.tsc_events.push(out.len());
                        }
                        out.push(event);
                        stats.events += 1;
                    }
                    // Bad bytes, a clock we do not know or another
                    // process's pid: this record is lost and counted, the
                    // ring's framing is still sound.
                    Ok(_) | Err(_) => stats.rejected += 1,
                }
            }
            // The shared lane's writers reserve (move `head`) before they
            // write, so a later lap could read stale bytes below `head` as
            // a commit word: zeroed. An owned lane's writer moves `head`
            // only past committed records, so nothing stale is ever read
            // there, and leaving the bytes as they are spares the writer
            // fetching lines this core dirtied (a third of an event's
            // cost in the emission bench).
            if lane_index == SHARED_LANE {
                // SAFETY: the same checked range, slot header included.
                unsafe { ptr::write_bytes(data.add(off), 0, len) };
            }
            cursor.tail += len as u64;
        }
        lane.header().tail.store(cursor.tail, Ordering::Release);
        let dropped = lane.header().dropped.load(Ordering::Relaxed);
        // A hostile owner can rewind its counter (count only growth) or
        // scribble a huge one (which would swamp every honest count).
        if dropped > cursor.dropped_seen {
            let grew = dropped - cursor.dropped_seen;
            if grew > MAX_REFUSALS_PER_DRAIN {
                return Err(RingError::Corrupt("drop counter jumped"));
            }
            stats.ring_full += grew;
            cursor.dropped_seen = dropped;
        }
        Ok(())
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The most refusals one drain believes. A process refuses records no
/// faster than it can call ipc-lib, some tens of millions a second, and
/// drains come every millisecond (seconds apart at worst): a larger jump is
/// a scribbled counter.
const MAX_REFUSALS_PER_DRAIN: u64 = 1 << 32;

/// How often rings are drained.
const DRAIN_EVERY: Duration = Duration::from_millis(1);

/// Whose rings the recorder takes.
///
/// The recording user's; and, since a command may switch users on its way
/// (`setpriv --reuid`, `sudo -u`, a server dropping root), every process
/// below the recorder (so below the command it started) or below a process
/// it follows, found by walking parents in `/proc` from the caller's pid.
/// Anyone else is a stranger, refused before a byte of theirs is read.
#[derive(Debug, Clone)]
pub struct Admission {
    uid: u32,
    roots: Vec<u32>,
}

impl Admission {
    /// The recording user's processes, and those below `roots`.
    pub fn new(roots: Vec<u32>) -> Admission {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Admission { uid, roots }
    }

    /// The recorder's own user and descendants only.
    pub fn this_process() -> Admission {
        Admission::new(vec![std::process::id()])
    }

    fn check(&self, pid: u32, uid: u32) -> Result<(), RingError> {
        if uid == self.uid || self.is_below_a_root(pid) {
            return Ok(());
        }
        Err(RingError::Stranger {
            pid,
            uid,
            ours: self.uid,
        })
    }

    /// Walks up from `pid`. The caller is connected and waiting for us, so
    /// its pid is its own while we look (a process that exits right after
    /// connecting and whose pid is reused at once below a root would pass:
    /// a stranger cannot arrange that). A process orphaned to init is no
    /// longer below the recorder and is refused.
    fn is_below_a_root(&self, pid: u32) -> bool {
        // Deeper than any real process tree; bounds a walk over a /proc
        // that changes under it.
        const MAX_DEPTH: usize = 4096;
        let mut at = pid;
        for _ in 0..MAX_DEPTH {
            if self.roots.contains(&at) {
                return true;
            }
            match crate::ebpf::targets::parent(at) {
                Some(parent) if parent > 1 && parent != at => at = parent,
                _ => return false,
            }
        }
        false
    }
}

/// The recorder's registration socket.
pub struct RingListener {
    listener: UnixListener,
    address: String,
    admission: Admission,
    /// The command `record` started, once it has: its start and exit are
    /// the recorder's to report (it spawned it and reaps it), so its ring
    /// reports neither again.
    command: Option<watch::Receiver<Option<u32>>>,
}

impl RingListener {
    /// Binds a socket in the abstract namespace: it has no file, so a
    /// command that switches users can still reach it (no directory
    /// permission stands in its way), and whom it lets in is decided by
    /// `admission` alone. The name is unique even among recorders of one
    /// pid in turn.
    pub fn bind(admission: Admission) -> Result<RingListener, RingError> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ipcscope-rings-{}-{}", std::process::id(), monotonic_ns());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(io_err("naming the ring socket"))?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
            .map_err(io_err("binding the ring socket"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("binding the ring socket"))?;
        let listener =
            UnixListener::from_std(listener).map_err(io_err("binding the ring socket"))?;
        Ok(RingListener {
            listener,
            address: format!("@{name}"),
            admission,
            command: None,
        })
    }

    /// Names the command whose start and exit the caller reports itself,
    /// as soon as it has been spawned.
    pub fn with_command(mut self, command: watch::Receiver<Option<u32>>) -> RingListener {
        self.command = Some(command);
        self
    }

    /// The value of [`SOCKET_ENV`] that leads here: `@` and the abstract
    /// name.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Accepts rings and feeds their events to `ingest` until `stop` turns
    /// true, then drains every ring one last time.
    ///
    /// Each registering process is reported: its comm and executable, as a
    /// `process_exec` that the store merges with what it already knows;
    /// with `lifecycle`, for recordings where no other source sees
    /// processes start and end, as a `process_start` (parent and start
    /// time from `/proc`) and, once its ring closes, a `process_exit`
    /// with its status where the kernel tells it (see [`pump`]). The
    /// command named by [`RingListener::with_command`] is left to its
    /// spawner.
    pub async fn run(self, ingest: Ingest, mut stop: watch::Receiver<bool>, lifecycle: bool) {
        let mut rings = JoinSet::new();
        let ring_stop = stop.clone();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        own_sockets(&stream, &ingest);
                        // Each caller registers in a task of its own, in
                        // bounded time: one that connects and says nothing
                        // must not hold up the others, nor the end.
                        let (ingest, stop) = (ingest.clone(), ring_stop.clone());
                        let admission = self.admission.clone();
                        let command = self.command.clone();
                        rings.spawn(async move {
                            let registered = register(&stream, &admission, &ingest);
                            match tokio::time::timeout(REGISTER_TIMEOUT, registered).await {
                                Ok(Ok((reader, seen, read))) => {
                                    let told = match lifecycle {
                                        true if is_command(&seen, command).await => Told::Elsewhere,
                                        true => Told::Here,
                                        false => Told::Exec,
                                    };
                                    pump(reader, seen, stream, ingest, read, stop, told).await;
                                }
                                Ok(Err(e)) => tracing::warn!("ipc-lib ring refused: {e}"),
                                Err(_) => tracing::warn!(
                                    "ipc-lib ring refused: no registration within {REGISTER_TIMEOUT:?}"
                                ),
                            }
                        });
                    }
                    Err(e) => tracing::warn!("accepting an ipc-lib registration: {e}"),
                },
                () = stopped(&mut stop) => break,
            }
        }
        while rings.join_next().await.is_some() {}
    }
}

/// How long a caller has to send its registration once connected.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells the correlation stage that both ends of an accepted connection
/// are the recorder's: the probes see the client's `sendmsg` of its ring,
/// which is plumbing, not the user's IPC. The client may have sent before
/// this accept, when its end had no peer inode yet, so its own inode is
/// looked up too.
fn own_sockets(stream: &UnixStream, ingest: &Ingest) {
    let Ok(ours) = sockdiag::inode(stream) else {
        return;
    };
    let mut inodes = vec![ours];
    match sockdiag::unix_peer(ours) {
        Ok(Some(client)) => inodes.push(client),
        Ok(None) => {}
        Err(e) => tracing::debug!("finding an ipc-lib client's socket: {e}"),
    }
    for inode in inodes {
        ingest.own_object(inode);
    }
}

/// Checks the caller and takes its ring, with the mark its events are
/// correlated by: from the moment it was told [`READY`], before it made
/// the ring.
async fn register(
    stream: &UnixStream,
    admission: &Admission,
    ingest: &Ingest,
) -> Result<(RingReader, Seen, ReadThrough), RingError> {
    let cred = stream
        .peer_cred()
        .map_err(io_err("reading the peer's credentials"))?;
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or(RingError::BadHello(0))?;
    admission.check(pid, cred.uid())?;
    // Held back from here until the ring is known as ours (below): the
    // probes see the process map it once it reads READY.
    let read = ingest.source(monotonic_ns());
    stream
        .try_write(&[READY])
        .map_err(io_err("answering the connection"))?;
    let (hello, fd) = loop {
        stream
            .readable()
            .await
            .map_err(io_err("waiting for the registration"))?;
        // Through try_io, so that a spurious wake-up clears the readiness
        // rather than spinning on it.
        match stream.try_io(Interest::READABLE, || recv_with_fd(stream.as_raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => break other.map_err(io_err("receiving the registration"))?,
        }
    };
    let Some(fd) = fd else {
        return Err(RingError::BadHello(hello.len()));
    };
    match Hello::from_bytes(&hello) {
        Some(h) if h.magic == MAGIC && h.version == VERSION && h.pid == pid => {}
        Some(h) if h.magic == MAGIC && h.version != VERSION => {
            return Err(RingError::Version {
                found: h.version,
                expected: VERSION,
            })
        }
        _ => return Err(RingError::BadHello(hello.len())),
    }
    // The probes see the ring's pages touched: the recorder's plumbing.
    if let Ok(inode) = sockdiag::inode(&fd) {
        ingest.own_object(inode);
    }
    let reader = RingReader::map(&fd, pid)?;
    // Read while the caller certainly is who it says: it waits for our
    // answer, so its pid cannot have been reused yet.
    let seen = Seen::read(pid);
    // The caller waits for this before it goes on (and may exit): it
    // cannot block, a fresh socket's buffer is empty.
    stream
        .try_write(&[ACCEPTED])
        .map_err(io_err("answering the registration"))?;
    Ok((reader, seen, read))
}

/// Who reports a ring owner's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// Its ring: start and exit, no other source sees them.
    Here,
    /// Another source (the probes) reports its start and exit; the ring
    /// adds its comm and executable, for a process they did not follow.
    Exec,
    /// The command, whose spawner reports all of it.
    Elsewhere,
}

/// What the kernel says of a registering process, read while it waits for
/// the recorder's answer.
#[derive(Debug)]
struct Seen {
    pid: u32,
    /// From `/proc/PID/stat`: `None` if it could not be read.
    ppid: Option<u32>,
    started_ns: Option<u64>,
    /// Tells when the process has ended and, once its parent has reaped
    /// it, how (`PIDFD_GET_INFO`); `None` where pidfds are not to be had.
    pidfd: Option<OwnedFd>,
}

impl Seen {
    fn read(pid: u32) -> Seen {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let (ppid, ticks) = stat.as_deref().and_then(parse_stat).unzip();
        Seen {
            pid,
            ppid,
            started_ns: ticks.and_then(crate::clock::boot_ticks_to_monotonic_ns),
            pidfd: open_pidfd(pid),
        }
    }
}

/// The parent pid (field 4) and start time in clock ticks since boot
/// (field 22) of a `/proc/PID/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 is the state, 4 the parent.
    let ppid = fields.nth(1)?.parse().ok()?;
    // Fields 5 to 21 come between.
    let starttime = fields.nth(17)?.parse().ok()?;
    Some((ppid, starttime))
}

/// Whether the registering process is the command, whose life its
/// spawner reports. The command registers after `record` has its pid in
/// all but theory (it must exec, load and reach its first traced
/// operation first); a child of the recorder registering before that pid
/// is known waits for it, briefly.
async fn is_command(seen: &Seen, command: Option<watch::Receiver<Option<u32>>>) -> bool {
    let Some(mut command) = command else {
        return false;
    };
    if seen.ppid != Some(std::process::id()) {
        return false;
    }
    let known = tokio::time::timeout(REGISTER_TIMEOUT, command.wait_for(Option::is_some)).await;
    matches!(known, Ok(Ok(pid)) if *pid == Some(seen.pid))
}

fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a descriptor the kernel just gave us, owned by no one else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct pidfd_info` as of Linux 6.15 (`PIDFD_INFO_SIZE_VER0`): the
/// fields up to `exit_code`. The kernel takes the size from the ioctl
/// number, so this prefix is all it fills.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}
const _: () = assert!(size_of::<PidfdInfo>() == 64);

/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)` for the 64 bytes of
/// [`PidfdInfo`]; libc has no binding yet.
const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// The wait status of the process behind `pidfd`, once it has exited and
/// been reaped (by its parent, or by `record` as subreaper); `None`
/// before that, and on kernels before 6.15, which do not keep it.
fn reaped_status(pidfd: &OwnedFd) -> Option<i32> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most size_of::<PidfdInfo>() bytes, the
    // size its number encodes, into `info`, which lives across the call.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    (rc == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// How often a process whose ring has closed is checked for having been
/// reaped, which is when its status becomes known.
const REAP_POLL: Duration = Duration::from_millis(5);

/// The wait status of a process whose ring has closed, waiting for its
/// parent to reap it until the recording stops (one last look then);
/// `None` when it was not reaped by then, or the kernel does not say.
async fn exit_status(pidfd: Option<&OwnedFd>, stop: &mut watch::Receiver<bool>) -> Option<i32> {
    let pidfd = pidfd?;
    let mut poll = tokio::time::interval(REAP_POLL);
    loop {
        if let Some(status) = reaped_status(pidfd) {
            return Some(status);
        }
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            _ = poll.tick() => {}
            () = stopped(stop) => {}
        }
    }
}

fn recv_with_fd(socket: RawFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut bytes = vec![0u8; HELLO_SIZE];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg points at live buffers for the duration of the call;
    // MSG_CMSG_CLOEXEC keeps received fds out of any child we spawn.
    let n = unsafe {
        libc::recvmsg(
            socket,
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    bytes.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within them, and SCM_RIGHTS data is an array of ints.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<i32>();
                for i in 0..count {
                    // Every fd received is owned now, so extras get closed.
                    fds.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let fd = if fds.len() == 1 { fds.pop() } else { None };
    Ok((bytes, fd))
}

/// Drains one ring every [`DRAIN_EVERY`] until its process disconnects or
/// recording stops, then once more.
///
/// With [`Told::Here`], the process's start and exit are reported too: its
/// exit when its ring closes (which it does as it exits), with the status
/// its parent reaps, where the kernel tells it before the recording ends.
async fn pump(
    mut reader: RingReader,
    seen: Seen,
    stream: UnixStream,
    ingest: Ingest,
    read: ReadThrough,
    mut stop: watch::Receiver<bool>,
    told: Told,
) {
    let pid = seen.pid;
    let lifecycle = told == Told::Here;
    if told != Told::Elsewhere
        && ingest
            .send(vec![process_seen(&seen, lifecycle)])
            .await
            .is_err()
    {
        return;
    }
    // None once the ring is read to the end.
    let mut read = Some(read);
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = false;
    let mut eof = [0u8; 1];
    while !last {
        tokio::select! {
            _ = tick.tick() => {}
            // The process never writes after registering, so the socket
            // turns readable when it has gone (EOF). Readiness can be
            // spurious: only EOF or a real error ends the ring.
            _ = stream.readable() => {
                last = match stream.try_read(&mut eof) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
            }
            () = stopped(&mut stop) => last = true,
        }
        let mut events = Vec::new();
        let mut stats = DrainStats::default();
        let drained_at = monotonic_ns();
        let result = reader.drain(&mut events, &mut stats);
        if stats.rejected > 0 {
            events.push(drop_event(pid, drop_source::DECODE, stats.rejected));
        }
        if stats.ring_full > 0 {
            events.push(drop_event(pid, drop_source::LIB_RING, stats.ring_full));
        }
        if let Err(e) = result {
            tracing::warn!("ipc-lib ring of pid {pid} detached: {e}");
            events.push(drop_event(pid, drop_source::DECODE, 1));
            last = true;
        }
        // Gone when its socket says so, even if the recording is stopping
        // at the same moment (its end may be why it stops).
        let gone = last && matches!(stream.try_read(&mut eof), Ok(0));
        if gone && lifecycle {
            let mut exit = Event::new(
                monotonic_ns(),
                pid,
                pid,
                Source::Collector,
                EventKind::ProcessExit,
            );
            // Stamped when the ring closed; how it ended comes later, when
            // its parent reaps it. Sent after what its ring held, which is
            // then stored without waiting for that.
            if send(
                &ingest,
                read.as_ref(),
                std::mem::take(&mut events),
                drained_at,
            )
            .await
            .is_err()
            {
                return;
            }
            // Its ring is read to the end: waiting for its parent holds
            // no other source's events back.
            read = None;
            match exit_status(seen.pidfd.as_ref(), &mut stop).await {
                Some(status) => exit.aux = u64::from(status as u32),
                None => exit.result = -i64::from(libc::ENODATA),
            }
            events.push(exit);
        }
        if send(&ingest, read.as_ref(), events, drained_at)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Hands over what a drain that began at `drained_at` read, moving the
/// ring's mark if it still has one.
async fn send(
    ingest: &Ingest,
    read: Option<&ReadThrough>,
    events: Vec<Event>,
    drained_at: u64,
) -> Result<(), IngestError> {
    match read {
        Some(read) => ingest.send_batch(read.batch(events, drained_at)).await,
        None => ingest.send(events).await,
    }
}

/// A registering process as the store knows processes: its comm and
/// executable, read from /proc while it is certainly alive (it is still
/// connected); with `lifecycle`, as its start (parent and start time),
/// when /proc told them.
fn process_seen(seen: &Seen, lifecycle: bool) -> Event {
    let pid = seen.pid;
    let mut e = match (lifecycle, seen.ppid, seen.started_ns) {
        (true, Some(ppid), Some(started_ns)) => {
            let mut e = Event::new(
                started_ns,
                pid,
                pid,
                Source::Collector,
                EventKind::ProcessStart,
            );
            e.aux = u64::from(ppid);
            e
        }
        _ => Event::new(
            monotonic_ns(),
            pid,
            pid,
            Source::Collector,
            EventKind::ProcessExec,
        ),
    };
    e.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    e.path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    e
}

/// Resolves once `stop` holds true (or its sender is gone). The guard
/// `wait_for` returns is not Send, so it must not outlive this.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn drop_event(pid: u32, source: u64, count: u64) -> Event {
    let mut e = Event::new(monotonic_ns(), pid, pid, Source::Collector, EventKind::Drop);
    e.aux = source;
    e.size = count;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1 2";
        assert_eq!(parse_stat(stat), Some((7, 123456)));
        assert_eq!(parse_stat("42 (x) S 7"), None);
    }

    #[test]
    fn a_registering_process_is_known_by_parent_start_and_exit() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _; exit 3"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let before = monotonic_ns();
        let seen = Seen::read(child.id());
        assert_eq!(seen.ppid, Some(std::process::id()));
        // To the clock tick, and not before this test began by more.
        let started = seen.started_ns.unwrap();
        assert!(started <= before && before - started < 60_000_000_000);
        let pidfd = seen.pidfd.expect("pidfd_open works here");
        assert_eq!(reaped_status(&pidfd), None, "alive");
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(reaped_status(&pidfd), Some(3 << 8));
    }
}
