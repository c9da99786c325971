//! Helpers shared by the integration tests: unique names, child processes,
//! message patterns, and a "hostile writer" view of a channel segment.

use std::ffi::CString;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_lib::channel::{OpenError, Receiver, Sender};

pub const ROLE_VAR: &str = "IPCLIB_IT_ROLE";
pub const NAME_VAR: &str = "IPCLIB_IT_NAME";
pub const ARG_VAR: &str = "IPCLIB_IT_ARG";

/// Long enough for a loaded CI machine, short enough that a broken test
/// fails rather than hangs.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A channel name no other test, process or run uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ipclib-it-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the name whatever happens to the test (a child killed before it
/// could clean up leaves it behind otherwise).
pub struct NameGuard(pub String);

impl Drop for NameGuard {
    fn drop(&mut self) {
        let _ = ipc_lib::channel::remove(&self.0);
    }
}

/// Starts this test binary again as a child playing `role` on channel
/// `name`.
pub fn spawn(role: &str, name: &str, arg: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args([
            "--exact",
            "child::role_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, role)
        .env(NAME_VAR, name)
        .env(ARG_VAR, arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}

/// Waits for a child's exit, bounded; kills it if it overstays.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Retries `open` while the channel does not exist yet (the child creating
/// it is still starting).
pub fn open_when_ready<T>(mut open: impl FnMut() -> Result<T, OpenError>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match open() {
            Ok(t) => return t,
            Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("open failed: {e}"),
        }
    }
}

pub fn open_sender(name: &str) -> Sender {
    open_when_ready(|| Sender::builder(name).open())
}

pub fn open_receiver(name: &str) -> Receiver {
    open_when_ready(|| Receiver::builder(name).open())
}

/// The size of message `i` when sizes vary up to `max`.
pub fn size_of_msg(i: u64, max: usize) -> usize {
    ((i.wrapping_mul(2_654_435_761) >> 7) as usize) % (max + 1)
}

/// Message `i`'s content: its index, then a stream seeded by it, so a
/// message out of order, truncated or altered is caught.
pub fn pattern(i: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&i.to_le_bytes()[..len.min(8)]);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// A test's own mapping of a channel segment, to play the hostile writer:
/// it writes whatever it likes, with atomic stores so the test itself has no
/// data race with the channel ends in the same process.
pub struct Hostile {
    ptr: *mut u8,
    len: usize,
}

impl Hostile {
    pub fn map(name: &str) -> Hostile {
        let path = CString::new(format!("/{name}")).unwrap();
        // SAFETY: a NUL-terminated path; the fd is closed below.
        let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR, 0) };
        assert!(
            fd >= 0,
            "shm_open {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: zeroed stat is valid for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a writable stat.
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        let len = st.st_size as usize;
        // SAFETY: a fresh shared mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: the mapping keeps its own reference to the object.
        unsafe { libc::close(fd) };
        assert_ne!(p, libc::MAP_FAILED);
        Hostile { ptr: p.cast(), len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "offset {off}");
        // SAFETY: in bounds and 8-aligned (page-aligned mapping); the
        // mapping lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off).cast()) }
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::SeqCst)
    }

    pub fn write_u64(&self, off: usize, v: u64) {
        self.word(off).store(v, Ordering::SeqCst)
    }

    /// Writes a 32-bit value into one half of its aligned word.
    pub fn write_u32(&self, off: usize, v: u32) {
        let base = off & !7;
        let shift = (off - base) * 8;
        let w = self.read_u64(base);
        let mask = 0xFFFF_FFFFu64 << shift;
        self.write_u64(base, (w & !mask) | (u64::from(v) << shift));
    }

    /// XORs one byte, leaving the rest of its word alone.
    pub fn flip_byte(&self, off: usize, mask: u8) {
        let base = off & !7;
        let shift = (off - base) * 8;
        self.word(base)
            .fetch_xor(u64::from(mask) << shift, Ordering::SeqCst);
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; no reference outlives
        // `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: only raw atomics are reached through the pointer.
unsafe impl Send for Hostile {}
// SAFETY: as above.
unsafe impl Sync for Hostile {}

/// One traced operation as ipc-lib reports it to `tracing` subscribers:
/// the same fields it writes into the recorder's ring.
#[derive(Clone, Debug, Default)]
pub struct TracedOp {
    pub kind: String,
    pub channel: String,
    pub name: String,
    pub size: u64,
    pub msg_id: u64,
    pub obj: u64,
    pub obj2: u64,
    pub aux: u64,
    pub result: i64,
    pub duration_ns: u64,
}

impl tracing::field::Visit for TracedOp {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "kind" => self.kind = value.to_owned(),
            "channel" => self.channel = value.to_owned(),
            "name" => self.name = value.to_owned(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "size" => self.size = value,
            "msg_id" => self.msg_id = value,
            "obj" => self.obj = value,
            "obj2" => self.obj2 = value,
            "aux" => self.aux = value,
            "duration_ns" => self.duration_ns = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "result" {
            self.result = value;
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

/// A `tracing` subscriber that keeps ipc-lib's operations.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<TracedOp>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == "ipc_lib"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut op = TracedOp::default();
        event.record(&mut op);
        if let Ok(mut ops) = self.0.lock() {
            ops.push(op);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `f` on this thread and returns what it returned with every ipc-lib
/// operation it traced, in order.
pub fn capture_ops<T>(f: impl FnOnce() -> T) -> (T, Vec<TracedOp>) {
    // tracing caches each callsite's interest process-wide. With a single
    // registered dispatcher, a callsite first reached on another test's
    // thread (no subscriber there) is cached as "never" and this capture
    // would see nothing. A second dispatcher that lives for the whole run
    // makes tracing ask every live one, and it always says yes to ipc_lib.
    static KEEP: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    KEEP.get_or_init(|| tracing::Dispatch::new(Capture::default()));
    let cap = Capture::default();
    let out = tracing::subscriber::with_default(cap.clone(), || {
        // Both dispatchers are registered by now, so this asks them both:
        // it undoes a "never" cached in the instant before they were.
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let ops = cap.0.lock().map(|v| v.clone()).unwrap_or_default();
    (out, ops)
}

/// Captures ipc-lib's operations from every thread of this process (a
/// child's: in the test harness, other tests' threads would mix in) and
/// returns a way to read what was captured so far.
pub fn capture_process_wide() -> impl Fn() -> Vec<TracedOp> {
    let cap = Capture::default();
    tracing::subscriber::set_global_default(cap.clone()).expect("no subscriber set yet");
    move || cap.0.lock().map(|v| v.clone()).unwrap_or_default()
}
