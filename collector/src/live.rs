//! The live feed: a recording serves its aggregates to subscribers (the
//! TUI, `ipcscope report --live`) over an owner-only Unix socket.
//!
//! Protocol and model: [`ipc_events::live`]. A subscriber gets a `Hello`
//! and a full snapshot, then a delta every tick (10 Hz). Ingest never waits
//! for a subscriber: each subscriber has at most one frame in flight, written
//! without blocking; a subscriber that has not taken its frame by the next
//! tick misses that tick's delta and is sent a fresh snapshot once it has
//! caught up, so a slow one sees coarser updates and a stuck one costs one
//! buffered frame.
//!
//! Only the recording user may subscribe: the socket is 0600 in a 0700
//! directory, and each connection's `SO_PEERCRED` uid is checked as well
//! (the directory could be somebody else's choice, e.g. `--live-dir`).

use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc_events::live::{
    decode_frame, encode_frame, frame_len, Delta, Frame, FrameError, Snapshot, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::clock::monotonic_ns;

/// How often subscribers get a delta.
pub const TICK: Duration = Duration::from_millis(100);

/// What the feed serves: the analysis state of the recording.
pub trait FeedSource: Send {
    /// The whole state now.
    fn snapshot(&mut self, now_ns: u64) -> Snapshot;
    /// What changed since the previous call.
    fn delta(&mut self, now_ns: u64) -> Delta;
}

impl FeedSource for crate::analysis::Analyzer {
    fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        crate::analysis::Analyzer::snapshot(self, now_ns)
    }
    fn delta(&mut self, now_ns: u64) -> Delta {
        crate::analysis::Analyzer::delta(self, now_ns)
    }
}

/// Why the feed could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{path}: {action}: {error}")]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    #[error("{path}: no recording is serving a live feed there (it ended, or was killed)")]
    NotLive { path: PathBuf },
    #[error("{path}: the live feed speaks protocol {found}, this ipcscope {PROTOCOL_VERSION}; use matching versions")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: the live feed sent {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("{path}: {error}")]
    Frame { path: PathBuf, error: FrameError },
    /// The socket, its directory or the process serving it is not this
    /// user's: not a recording of ours, whatever it says.
    #[error("{path}: {what}, not this user's (uid {ours}); not connecting to it")]
    Stranger {
        path: PathBuf,
        what: String,
        ours: u32,
    },
}

/// How long the feed's last frames may take, to all subscribers together.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// How long a feed may stay silent before a subscriber gives up on it: a
/// recorder sends a delta ten times a second, or a snapshot at once.
pub const FEED_SILENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The listening side, bound by the recorder.
#[derive(Debug)]
pub struct LiveFeed {
    listener: UnixListener,
    path: PathBuf,
    dir: PathBuf,
}

impl LiveFeed {
    /// Binds `live.sock` in a new 0700 directory under `runtime_dir`.
    pub fn bind(runtime_dir: &Path) -> Result<LiveFeed, LiveError> {
        let dir = runtime_dir.join(format!(
            "ipcscope-live-{}-{}",
            std::process::id(),
            monotonic_ns()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "creating the live-feed directory"))?;
        let path = dir.join("live.sock");
        let listener =
            UnixListener::bind(&path).map_err(io_err(&path, "binding the live-feed socket"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&path, "restricting the live-feed socket"))?;
        Ok(LiveFeed {
            listener,
            path,
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves subscribers until `stop` carries a value (the command's exit
    /// status, if it has one), then tells them the recording ended.
    pub async fn run<S: FeedSource>(
        self,
        session_id: i64,
        source: Arc<Mutex<S>>,
        mut stop: watch::Receiver<Option<Option<i32>>>,
    ) {
        let mut subscribers: Vec<Subscriber> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let exit_status = loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match check_peer(&stream) {
                        Ok(()) => subscribers.push(Subscriber::new(stream, session_id)),
                        Err(e) => tracing::warn!("live-feed subscriber refused: {e}"),
                    },
                    Err(e) => tracing::warn!("accepting a live-feed subscriber: {e}"),
                },
                _ = tick.tick() => {
                    let now = monotonic_ns();
                    // The source's lock is held only to compute, never while
                    // writing to a subscriber.
                    let delta = encode_frame(&Frame::Delta(Box::new(lock(&source).delta(now))));
                    subscribers.retain_mut(|s| s.tick(&delta, || {
                        encode_frame(&Frame::Snapshot(Box::new(lock(&source).snapshot(now))))
                    }));
                },
                changed = stop.changed() => {
                    let status = *stop.borrow();
                    match (changed, status) {
                        (_, Some(exit_status)) => break exit_status,
                        // The recorder went away without saying how it ended.
                        (Err(_), None) => break None,
                        (Ok(()), None) => {}
                    }
                }
            }
        };
        // A last full state, then the end: best effort, to every subscriber
        // at once within one bound, so stuck subscribers cannot hold the
        // recorder up, however many there are.
        let now = monotonic_ns();
        let last = encode_frame(&Frame::Snapshot(Box::new(lock(&source).snapshot(now))));
        let end = encode_frame(&Frame::End { exit_status });
        let mut writes = tokio::task::JoinSet::new();
        for mut s in subscribers {
            // Whatever of the frame in flight is unwritten goes first.
            s.out.extend_from_slice(&last);
            s.out.extend_from_slice(&end);
            writes.spawn(async move {
                let _ = s.stream.write_all(&s.out[s.at..]).await;
            });
        }
        let _ = tokio::time::timeout(LAST_WORDS, async {
            while writes.join_next().await.is_some() {}
        })
        .await;
        // Dropping the set abandons the writes still stuck.
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn lock<S>(source: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    // A panic elsewhere poisoned it; the aggregates are still the best
    // there is, and the feed must not take the recording down.
    source.lock().unwrap_or_else(|p| p.into_inner())
}

/// Only the recording's own user may watch it.
fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let ours = our_uid();
    if cred.uid() != ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "uid {} (pid {:?}) is not the recording's uid {ours}",
                cred.uid(),
                cred.pid()
            ),
        ));
    }
    Ok(())
}

fn our_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The live-feed socket at `path` and its directory are this user's, and
/// only this user can write the directory.
fn check_owned(path: &Path) -> Result<(), LiveError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ours = our_uid();
    let stranger = |what: String| LiveError::Stranger {
        path: path.into(),
        what,
        ours,
    };
    let socket = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Err(LiveError::NotLive { path: path.into() }),
    };
    if !socket.file_type().is_socket() {
        return Err(stranger("it is not a socket".into()));
    }
    if socket.uid() != ours {
        return Err(stranger(format!(
            "the socket belongs to uid {}",
            socket.uid()
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = std::fs::symlink_metadata(dir).map_err(|error| LiveError::Io {
        path: path.into(),
        action: "reading the live feed's directory",
        error,
    })?;
    if dir_meta.uid() != ours || dir_meta.mode() & 0o022 != 0 {
        return Err(stranger(format!(
            "its directory belongs to uid {} with mode {:o}",
            dir_meta.uid(),
            dir_meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// The process serving the feed runs as this user (`SO_PEERCRED`).
fn check_server(stream: &StdUnixStream, path: &Path) -> Result<(), LiveError> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; all zeroes is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow; `cred` and `len` are valid
    // for the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(LiveError::Io {
            path: path.into(),
            action: "asking who serves the live feed",
            error: io::Error::last_os_error(),
        });
    }
    let ours = our_uid();
    if cred.uid != ours {
        return Err(LiveError::Stranger {
            path: path.into(),
            what: format!("it is served by uid {} (pid {})", cred.uid, cred.pid),
            ours,
        });
    }
    Ok(())
}

/// One connection and the bytes not yet written to it.
struct Subscriber {
    stream: UnixStream,
    out: Vec<u8>,
    /// Written up to here.
    at: usize,
    /// It missed a delta (or is new): send a snapshot when it can take one.
    needs_snapshot: bool,
}

impl Subscriber {
    fn new(stream: UnixStream, session_id: i64) -> Self {
        Subscriber {
            stream,
            out: encode_frame(&Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id,
            }),
            at: 0,
            needs_snapshot: true,
        }
    }

    /// Queues this tick's frame if the previous one is gone, and writes what
    /// the socket takes without waiting. Returns false when the subscriber
    /// has gone.
    fn tick(&mut self, delta: &[u8], snapshot: impl FnOnce() -> Vec<u8>) -> bool {
        if !self.flush() {
            return false;
        }
        if self.at < self.out.len() {
            // Still writing an earlier frame: this delta is skipped, so the
            // next frame it gets must be whole.
            self.needs_snapshot = true;
            return true;
        }
        self.out.clear();
        self.at = 0;
        if self.needs_snapshot {
            self.out.extend_from_slice(&snapshot());
            self.needs_snapshot = false;
        } else {
            self.out.extend_from_slice(delta);
        }
        self.flush()
    }

    /// Writes without blocking; false when the peer has gone.
    fn flush(&mut self) -> bool {
        while self.at < self.out.len() {
            match self.stream.try_write(&self.out[self.at..]) {
                Ok(0) => return false,
                Ok(n) => self.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A subscription to a recording's live feed (blocking; run it on a thread
/// of its own).
#[derive(Debug)]
pub struct Subscription {
    stream: StdUnixStream,
    path: PathBuf,
    session_id: i64,
}

impl Subscription {
    /// Connects and reads the `Hello`. Only to a socket that this user
    /// owns, in a directory only this user can write, served by a process
    /// of this user's: a socket someone else put at a recording's path
    /// (after the recorder died and its directory went) is not followed;
    /// and never waiting longer than [`FEED_SILENCE`] for a frame.
    pub fn connect(path: &Path) -> Result<Subscription, LiveError> {
        check_owned(path)?;
        let stream = StdUnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                LiveError::NotLive { path: path.into() }
            }
            _ => LiveError::Io {
                path: path.into(),
                action: "connecting to the live feed",
                error: source,
            },
        })?;
        check_server(&stream, path)?;
        stream
            .set_read_timeout(Some(FEED_SILENCE))
            .map_err(|error| LiveError::Io {
                path: path.into(),
                action: "bounding reads of the live feed",
                error,
            })?;
        let mut sub = Subscription {
            stream,
            path: path.into(),
            session_id: 0,
        };
        match sub.next_frame()? {
            Some(Frame::Hello {
                version,
                session_id,
            }) => {
                if version != PROTOCOL_VERSION {
                    return Err(LiveError::Version {
                        path: path.into(),
                        found: version,
                    });
                }
                sub.session_id = session_id;
                Ok(sub)
            }
            Some(other) => Err(sub.protocol(format!("{} before its hello", frame_name(&other)))),
            None => Err(LiveError::NotLive { path: path.into() }),
        }
    }

    pub fn session_id(&self) -> i64 {
        self.session_id
    }

    /// The next frame; `None` when the recorder closed the connection
    /// between two frames. A connection closed inside a frame, a length
    /// over [`ipc_events::live::MAX_FRAME`] (refused before anything is
    /// allocated), a frame that is not valid and a feed silent for
    /// [`FEED_SILENCE`] are errors saying which.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LiveError> {
        let mut header = [0u8; 4];
        match self.fill(&mut header) {
            Ok(0) => return Ok(None),
            Ok(4) => {}
            Ok(got) => {
                return Err(self.protocol(format!("a frame header cut short ({got} of 4 bytes)")))
            }
            Err((0, e)) if silent(&e) => {
                return Err(self.protocol(format!("nothing for {}s", FEED_SILENCE.as_secs())));
            }
            Err((got, e)) if silent(&e) => {
                return Err(self.protocol(format!(
                    "nothing for {}s, {got} of 4 bytes into a frame header",
                    FEED_SILENCE.as_secs()
                )));
            }
            Err((_, e)) => return Err(self.io("reading the live feed", e)),
        }
        let len = frame_len(header).map_err(|source| self.frame(source))?;
        let mut body = vec![0; len];
        match self.fill(&mut body) {
            Ok(got) if got == len => {}
            Ok(got) => {
                return Err(self.protocol(format!(
                    "a frame cut short (announced {len} bytes, sent {got})"
                )))
            }
            Err((got, e)) if silent(&e) => {
                return Err(self.protocol(format!(
                    "nothing for {}s, {got} of {len} bytes into a frame",
                    FEED_SILENCE.as_secs()
                )));
            }
            Err((_, e)) => return Err(self.io("reading the live feed", e)),
        }
        decode_frame(&body)
            .map(Some)
            .map_err(|source| self.frame(source))
    }

    /// Reads until `buf` is full or the feed closes; how much was read, or
    /// the error with how much was read before it. Unlike `read_exact`, a
    /// close after some bytes is told apart from a close before any: the
    /// first ends a frame's header cut short, the second ends the feed.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, (usize, io::Error)> {
        let mut got = 0;
        while got < buf.len() {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((got, e)),
            }
        }
        Ok(got)
    }

    fn io(&self, action: &'static str, error: io::Error) -> LiveError {
        LiveError::Io {
            path: self.path.clone(),
            action,
            error,
        }
    }

    fn frame(&self, error: FrameError) -> LiveError {
        LiveError::Frame {
            path: self.path.clone(),
            error,
        }
    }

    fn protocol(&self, what: String) -> LiveError {
        LiveError::Protocol {
            path: self.path.clone(),
            what,
        }
    }
}

/// A read that timed out: the feed was silent for [`FEED_SILENCE`].
fn silent(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello { .. } => "a hello",
        Frame::Snapshot(_) => "a snapshot",
        Frame::Delta(_) => "a delta",
        Frame::End { .. } => "an end",
    }
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> LiveError {
    let path = path.to_path_buf();
    move |source| LiveError::Io {
        path,
        action,
        error: source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::live::Totals;

    /// A source whose every delta counts one more event.
    #[derive(Default)]
    struct Counting {
        events: u64,
        snapshots: u64,
    }

    impl FeedSource for Counting {
        fn snapshot(&mut self, now_ns: u64) -> Snapshot {
            self.snapshots += 1;
            Snapshot {
                session_id: 9,
                now_ns,
                totals: Totals {
                    events: self.events,
                    ..Totals::default()
                },
                ..Snapshot::default()
            }
        }
        fn delta(&mut self, now_ns: u64) -> Delta {
            self.events += 1;
            Delta {
                now_ns,
                totals: Totals {
                    events: self.events,
                    ..Totals::default()
                },
                ..Delta::default()
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_gets_hello_snapshot_deltas_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let feed = LiveFeed::bind(dir.path()).unwrap();
        let path = feed.path().to_owned();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let source = Arc::new(Mutex::new(Counting::default()));
        let (stop_tx, stop_rx) = watch::channel(None);
        let server = tokio::spawn(feed.run(9, Arc::clone(&source), stop_rx));

        let frames = tokio::task::spawn_blocking(move || {
            let mut sub = Subscription::connect(&path).unwrap();
            assert_eq!(sub.session_id(), 9);
            let mut state = match sub.next_frame().unwrap() {
                Some(Frame::Snapshot(s)) => *s,
                other => panic!("expected a snapshot, got {other:?}"),
            };
            let mut deltas = 0;
            loop {
                match sub.next_frame().unwrap() {
                    Some(Frame::Delta(d)) => {
                        state.apply(*d);
                        deltas += 1;
                    }
                    Some(Frame::Snapshot(s)) => state = *s,
                    Some(Frame::End { exit_status }) => return (state, deltas, exit_status),
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        tokio::time::sleep(TICK * 5).await;
        stop_tx.send(Some(Some(3))).unwrap();
        server.await.unwrap();
        let (state, deltas, exit_status) = frames.await.unwrap();
        assert!(deltas >= 2, "only {deltas} deltas in five ticks");
        assert_eq!(exit_status, Some(3));
        let events = lock(&source).events;
        assert_eq!(
            state.totals.events, events,
            "the last snapshot holds the final totals"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_never_reads_costs_one_frame_and_never_blocks_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let feed = LiveFeed::bind(dir.path()).unwrap();
        let path = feed.path().to_owned();
        let source = Arc::new(Mutex::new(Counting::default()));
        let (stop_tx, stop_rx) = watch::channel(None);
        let server = tokio::spawn(feed.run(9, Arc::clone(&source), stop_rx));

        // Connected and never read from: its socket buffer fills.
        let _stuck = StdUnixStream::connect(&path).unwrap();
        let reader_path = path.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut sub = Subscription::connect(&reader_path).unwrap();
            let mut frames = 0;
            while let Some(frame) = sub.next_frame().unwrap() {
                frames += 1;
                if matches!(frame, Frame::End { .. }) {
                    break;
                }
            }
            frames
        });
        tokio::time::sleep(TICK * 6).await;
        stop_tx.send(Some(None)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the feed finished despite a stuck subscriber")
            .unwrap();
        let frames = reader.await.unwrap();
        assert!(
            frames >= 4,
            "the reading subscriber kept getting frames: {frames}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_user_cannot_subscribe_even_through_open_permissions() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "this test needs root (to run a subscriber as another uid), and CI runs as root"
            );
            eprintln!("skipped: needs root to run a subscriber as another uid");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let feed = LiveFeed::bind(dir.path()).unwrap();
        let path = feed.path().to_owned();
        // Open the directory and socket to everyone, so that only the
        // SO_PEERCRED check stands between the other user and the feed.
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let source = Arc::new(Mutex::new(Counting::default()));
        let (stop_tx, stop_rx) = watch::channel(None);
        let server = tokio::spawn(feed.run(9, source, stop_rx));

        let script = "import socket,sys\n\
                      s=socket.socket(socket.AF_UNIX)\n\
                      s.settimeout(5)\n\
                      s.connect(sys.argv[1])\n\
                      print(len(s.recv(4096)))";
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output()
            .await
            .expect("python3 runs (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "uid 65534 connected, and must be closed on without a byte"
        );
        stop_tx.send(Some(None)).unwrap();
        server.await.unwrap();
    }

    /// A real feed socket that sends `bytes` to its one subscriber, then
    /// hangs up; `subscriber` runs against it.
    fn served<T>(bytes: Vec<u8>, subscriber: impl FnOnce(&Path) -> T) -> T {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut stream, _) = listener.accept().unwrap();
            // The subscriber may stop reading at an error and close.
            let _ = stream.write_all(&bytes);
        });
        let out = subscriber(&path);
        server.join().unwrap();
        out
    }

    /// A feed that sends `bytes` and hangs up, and what a subscriber makes
    /// of it.
    fn subscribe_to(bytes: Vec<u8>) -> LiveError {
        let result: Result<(), LiveError> = served(bytes, |path| {
            Subscription::connect(path).and_then(|mut sub| loop {
                if sub.next_frame()?.is_none() {
                    break Err(sub.protocol("nothing wrong".into()));
                }
            })
        });
        result.unwrap_err()
    }

    #[test]
    fn a_broken_or_hostile_feed_is_a_precise_error() {
        let hello = encode_frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: 1,
        });
        let huge = [hello.clone(), u32::MAX.to_le_bytes().to_vec()].concat();
        assert!(
            matches!(
                subscribe_to(huge),
                LiveError::Frame {
                    error: FrameError::TooLarge(_),
                    ..
                }
            ),
            "a frame over the limit is refused before anything is allocated"
        );
        let garbage = [hello.clone(), 3u32.to_le_bytes().to_vec(), b"{{{".to_vec()].concat();
        assert!(matches!(
            subscribe_to(garbage),
            LiveError::Frame {
                error: FrameError::Malformed(_),
                ..
            }
        ));
        let cut = [hello, 100u32.to_le_bytes().to_vec(), b"{".to_vec()].concat();
        let err = subscribe_to(cut);
        assert!(
            err.to_string()
                .contains("a frame cut short (announced 100 bytes, sent 1)"),
            "{err}"
        );
        let future = encode_frame(&Frame::Hello {
            version: PROTOCOL_VERSION + 1,
            session_id: 1,
        });
        assert!(matches!(subscribe_to(future), LiveError::Version { .. }));
        let headless = encode_frame(&Frame::End { exit_status: None });
        let err = subscribe_to(headless);
        assert!(err.to_string().contains("an end before its hello"), "{err}");
    }

    #[test]
    fn a_silent_feed_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(FEED_SILENCE + std::time::Duration::from_secs(1));
            drop(stream);
        });
        let err = Subscription::connect(&path).unwrap_err();
        assert!(err.to_string().contains("sent nothing for 5s"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_feed_in_a_directory_others_can_write_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Subscription::connect(&path).unwrap_err();
        assert!(matches!(err, LiveError::Stranger { .. }), "{err}");
        assert!(err.to_string().contains("mode 777"), "{err}");
    }

    #[test]
    fn a_feed_socket_another_user_owns_is_not_followed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").is_err(), "CI runs as root");
            eprintln!("SKIPPED: giving a socket to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::os::unix::fs::lchown(&path, Some(65534), Some(65534)).unwrap();
        let err = Subscription::connect(&path).unwrap_err();
        assert!(
            err.to_string().contains("the socket belongs to uid 65534"),
            "{err}"
        );
    }

    #[test]
    fn connecting_where_nothing_listens_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = Subscription::connect(&dir.path().join("live.sock")).unwrap_err();
        assert!(matches!(err, LiveError::NotLive { .. }), "{err}");
        assert!(err.to_string().contains("no recording is serving"));
    }

    #[test]
    fn a_feed_cut_inside_a_frame_header_is_an_error_not_an_end() {
        let hello = encode_frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: 1,
        });
        let cut = [hello, vec![7, 0]].concat();
        let err = subscribe_to(cut);
        assert!(
            err.to_string()
                .contains("a frame header cut short (2 of 4 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn a_feed_that_dribbles_its_frames_is_read_whole() {
        let frames = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id: 4,
            },
            Frame::Snapshot(Box::new(Snapshot {
                session_id: 4,
                session_name: "slow".into(),
                ..Snapshot::default()
            })),
            Frame::Delta(Box::default()),
            Frame::End {
                exit_status: Some(0),
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut stream, _) = listener.accept().unwrap();
            // A byte at a time, each its own write after a pause, and
            // one longer pause inside a header: every read comes up
            // short, and must be put back together.
            for (i, byte) in bytes.iter().enumerate() {
                let pause = if i == 2 { 50_000 } else { 100 };
                std::thread::sleep(Duration::from_micros(pause));
                stream.write_all(&[*byte]).unwrap();
            }
        });
        let mut sub = Subscription::connect(&path).unwrap();
        let mut read = vec![Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: sub.session_id(),
        }];
        while let Some(frame) = sub.next_frame().unwrap() {
            read.push(frame);
        }
        server.join().unwrap();
        assert_eq!(read, frames);
    }

    /// Property tests: a subscriber against feeds that send anything at
    /// all, from random bytes to real frame streams with one thing broken.
    mod hostile {
        use super::*;
        use ipc_events::live::MAX_FRAME;
        use proptest::prelude::*;
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        /// The system allocator, noting the largest single allocation
        /// made by a thread while it is being watched ([`largest_allocation`]).
        /// It serves every test in this binary; unwatched threads pay
        /// one thread-local read per allocation.
        struct Watching;

        thread_local! {
            static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
        }

        fn note(size: usize) {
            // `try_with`: allocations can happen while a thread's locals
            // are being torn down.
            let _ = LARGEST.try_with(|l| {
                if let Some(largest) = l.get() {
                    l.set(Some(largest.max(size)));
                }
            });
        }

        // SAFETY: every call is passed to the system allocator unchanged;
        // `note` allocates nothing (a const-initialised thread local).
        unsafe impl GlobalAlloc for Watching {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: the caller's contract, passed on.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: Watching = Watching;

        /// Runs `f`, and the largest single allocation this thread made in it.
        fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
            LARGEST.with(|l| l.set(Some(0)));
            let out = f();
            (out, LARGEST.with(|l| l.take()).unwrap_or(0))
        }

        /// What a subscriber made of a feed: the frames it read (the hello
        /// first), then how it stopped (`None`: a clean end).
        #[derive(Debug)]
        struct Outcome {
            frames: Vec<Frame>,
            error: Option<LiveError>,
            largest_allocation: usize,
        }

        /// A real feed socket that sends `bytes`, then hangs up.
        fn subscribe(bytes: Vec<u8>) -> Outcome {
            let ((frames, error), largest_allocation) = served(bytes, |path| {
                largest_allocation(|| {
                    let mut sub = match Subscription::connect(path) {
                        Ok(sub) => sub,
                        Err(e) => return (Vec::new(), Some(e)),
                    };
                    let mut frames = vec![Frame::Hello {
                        version: PROTOCOL_VERSION,
                        session_id: sub.session_id(),
                    }];
                    loop {
                        match sub.next_frame() {
                            Ok(Some(frame)) => frames.push(frame),
                            Ok(None) => return (frames, None),
                            Err(e) => return (frames, Some(e)),
                        }
                    }
                })
            });
            Outcome {
                frames,
                error,
                largest_allocation,
            }
        }

        fn frame() -> impl Strategy<Value = Frame> {
            prop_oneof![
                (
                    prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
                    any::<i64>()
                )
                    .prop_map(|(version, session_id)| Frame::Hello {
                        version,
                        session_id
                    }),
                (any::<i64>(), ".{0,40}").prop_map(|(session_id, session_name)| {
                    Frame::Snapshot(Box::new(Snapshot {
                        session_id,
                        session_name,
                        ..Snapshot::default()
                    }))
                }),
                any::<u64>().prop_map(|now_ns| Frame::Delta(Box::new(Delta {
                    now_ns,
                    ..Delta::default()
                }))),
                any::<Option<i32>>().prop_map(|exit_status| Frame::End { exit_status }),
            ]
        }

        /// A feed as a recorder sends it (a hello, then anything), or,
        /// one time in four, frames in any order.
        fn frames() -> impl Strategy<Value = Vec<Frame>> {
            let ours = Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id: 1,
            };
            prop_oneof![
                3 => proptest::collection::vec(frame(), 0..6).prop_map(move |rest| {
                    std::iter::once(ours.clone()).chain(rest).collect()
                }),
                1 => proptest::collection::vec(frame(), 0..6),
            ]
        }

        /// One thing broken in a stream of frames.
        #[derive(Clone, Debug)]
        enum Break {
            /// A byte XORed with a nonzero mask.
            Flip { at: Spot, mask: u8 },
            /// The stream ends early.
            Cut { at: Spot },
            /// A frame's length header says something else.
            Length { frame: usize, len: u32 },
            /// Random bytes inserted.
            Insert { at: Spot, bytes: Vec<u8> },
        }

        /// A place in a stream: a frame (wrapping), and an offset into it
        /// (wrapping to its length, its end included), near its start
        /// (in the length header) half the time.
        #[derive(Clone, Copy, Debug)]
        struct Spot {
            frame: usize,
            offset: usize,
        }

        fn spot() -> impl Strategy<Value = Spot> {
            (any::<usize>(), prop_oneof![0usize..6, any::<usize>()])
                .prop_map(|(frame, offset)| Spot { frame, offset })
        }

        impl Spot {
            /// The byte offset in a stream whose frames start at `starts`
            /// (the last entry is where the stream ends).
            fn resolve(self, starts: &[usize]) -> usize {
                let frames = starts.len() - 1;
                if frames == 0 {
                    return 0;
                }
                let i = self.frame % frames;
                starts[i] + self.offset % (starts[i + 1] - starts[i] + 1)
            }
        }

        fn broken() -> impl Strategy<Value = Break> {
            let len = prop_oneof![
                Just(u32::MAX),
                Just(MAX_FRAME as u32 + 1),
                any::<u32>(),
                0u32..600,
            ];
            prop_oneof![
                (spot(), 1u8..).prop_map(|(at, mask)| Break::Flip { at, mask }),
                spot().prop_map(|at| Break::Cut { at }),
                (any::<usize>(), len).prop_map(|(frame, len)| Break::Length { frame, len }),
                (spot(), proptest::collection::vec(any::<u8>(), 1..16))
                    .prop_map(|(at, bytes)| Break::Insert { at, bytes }),
            ]
        }

        /// Where each frame starts in the stream, and where the last ends.
        fn starts(frames: &[Frame]) -> Vec<usize> {
            let mut at = 0;
            let mut starts = vec![0];
            for f in frames {
                at += encode_frame(f).len();
                starts.push(at);
            }
            starts
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever a feed sends, the subscriber stops with an error or
            /// a clean end, and allocates no more than the frame limit.
            #[test]
            fn random_bytes_are_an_error_or_an_end(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                prefix in proptest::option::of(any::<[u8; 4]>()),
            ) {
                // With a length header of any value in front, some of the
                // streams announce frames of every size.
                let bytes = prefix.map_or(bytes.clone(), |p| [p.to_vec(), bytes].concat());
                let out = subscribe(bytes);
                prop_assert!(out.largest_allocation <= MAX_FRAME, "{out:?}");
            }

            /// A recorder's stream with one thing broken: every frame before
            /// the break is read as sent, then comes a clean end or an error
            /// saying what broke; a length over the limit allocates nothing
            /// of its size; a stream cut short is an error naming the cut.
            #[test]
            fn a_broken_feed_yields_its_frames_then_a_precise_error(
                frames in frames(),
                broken in broken(),
            ) {
                let starts = starts(&frames);
                let mut bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
                let total = bytes.len();
                // The stream is sound up to here...
                let sound_to;
                match &broken {
                    Break::Flip { at, mask } => {
                        sound_to = at.resolve(&starts);
                        prop_assume!(sound_to < total);
                        bytes[sound_to] ^= mask;
                    }
                    Break::Cut { at } => {
                        sound_to = at.resolve(&starts);
                        bytes.truncate(sound_to);
                    }
                    Break::Length { frame, len } => {
                        prop_assume!(!frames.is_empty());
                        let i = frame % frames.len();
                        prop_assume!(*len as usize != starts[i + 1] - starts[i] - 4);
                        sound_to = starts[i];
                        bytes[sound_to..sound_to + 4].copy_from_slice(&len.to_le_bytes());
                    }
                    Break::Insert { at, bytes: more } => {
                        sound_to = at.resolve(&starts);
                        bytes.splice(sound_to..sound_to, more.iter().copied());
                    }
                }
                // ...so these frames are read as they were sent.
                let whole = starts[1..].iter().take_while(|&&end| end <= sound_to).count();
                let out = subscribe(bytes);
                prop_assert!(out.largest_allocation <= MAX_FRAME, "{out:?}");
                let text = out.error.as_ref().map(ToString::to_string);

                // The first frame must be our hello.
                match frames.first() {
                    Some(Frame::Hello { version, .. }) if whole >= 1 && *version != PROTOCOL_VERSION => {
                        prop_assert!(
                            matches!(out.error, Some(LiveError::Version { found, .. }) if found == *version),
                            "{out:?}"
                        );
                        return Ok(());
                    }
                    Some(Frame::Hello { .. }) => {}
                    Some(other) if whole >= 1 => {
                        let before = format!("{} before its hello", frame_name(other));
                        prop_assert!(text.as_ref().is_some_and(|t| t.contains(&before)), "{out:?}");
                        return Ok(());
                    }
                    _ => {}
                }
                prop_assert!(out.frames.len() >= whole.min(1), "{out:?}");
                if !out.frames.is_empty() {
                    prop_assert_eq!(&out.frames[1..whole.max(1)], &frames[1..whole.max(1)]);
                }
                match broken {
                    Break::Cut { .. } if whole == 0 && sound_to == 0 => {
                        prop_assert!(matches!(out.error, Some(LiveError::NotLive { .. })), "{out:?}");
                    }
                    Break::Cut { .. } if starts.contains(&sound_to) => {
                        // Cut between two frames: a clean end.
                        prop_assert!(out.error.is_none(), "{out:?}");
                        prop_assert_eq!(&out.frames, &frames[..whole]);
                    }
                    Break::Cut { .. } => {
                        let into = sound_to - starts[whole];
                        let cut = if into < 4 {
                            format!("a frame header cut short ({into} of 4 bytes)")
                        } else {
                            let len = starts[whole + 1] - starts[whole] - 4;
                            format!("a frame cut short (announced {len} bytes, sent {})", into - 4)
                        };
                        prop_assert!(text.as_ref().is_some_and(|t| t.contains(&cut)), "{out:?}");
                        prop_assert_eq!(out.frames.len(), whole, "{:?}", out);
                    }
                    Break::Length { len, .. } if len as usize > MAX_FRAME => {
                        prop_assert!(
                            matches!(
                                out.error,
                                Some(LiveError::Frame { error: FrameError::TooLarge(l), .. }) if l == len as usize
                            ),
                            "{out:?}"
                        );
                        prop_assert_eq!(out.frames.len(), whole, "{:?}", out);
                        // Refused before its body was allocated: what was
                        // allocated is the size of the small frames sent.
                        prop_assert!(out.largest_allocation < 1 << 20, "{out:?}");
                    }
                    Break::Length { .. } if out.frames.len() == whole => {
                        // Too short, the JSON is cut; too long, it runs
                        // into the next frame or past the end. (Once in a
                        // while it takes in one byte that JSON reads as
                        // whitespace, and the frame passes, the stream
                        // out of step from there.)
                        prop_assert!(
                            matches!(
                                &out.error,
                                Some(LiveError::Frame { error: FrameError::Malformed(_), .. })
                            ) || text.as_ref().is_some_and(|t| t.contains("cut short")),
                            "{out:?}"
                        );
                    }
                    Break::Length { .. } => {}
                    Break::Flip { .. } | Break::Insert { .. } => {}
                }
            }
        }
    }
}
