//! The named shared-memory segment under a channel: creating it, opening and
//! validating someone else's, mapping and unmapping.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::OpenError;
use super::layout::{self, Header, Layout, Mode, HEADER_SIZE, LAYOUT_VERSION, MAGIC};

/// How long an opener waits for a creator that has made the name but not
/// yet sized or initialized it.
const INIT_WAIT: Duration = Duration::from_secs(2);

/// How a builder finds its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenHow {
    Create,
    Open,
    OpenOrCreate,
}

/// What the caller asked the layout to be; `None` fields are taken from an
/// existing channel, or defaulted when creating one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LayoutRequest {
    pub capacity: Option<usize>,
    pub max_message_size: Option<usize>,
    pub mode: Option<Mode>,
}

/// Defaults for a new channel: room for 16 of the largest messages.
pub(crate) const DEFAULT_CAPACITY: usize = 1 << 20;
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

impl LayoutRequest {
    fn for_create(&self) -> Layout {
        let capacity = self.capacity.unwrap_or(match self.max_message_size {
            Some(max) => DEFAULT_CAPACITY.max(layout::frame_size(max).saturating_mul(4)),
            None => DEFAULT_CAPACITY,
        });
        // Rounded up so every frame is whole words; `check` rejects what is
        // still unusable.
        let capacity = capacity.div_ceil(8).saturating_mul(8);
        let max_message_size = self
            .max_message_size
            .unwrap_or(DEFAULT_MAX_MESSAGE.min(capacity.saturating_sub(layout::FRAME_HEADER_SIZE)));
        Layout {
            capacity,
            max_message_size,
            mode: self.mode.unwrap_or(Mode::Spsc),
        }
    }
}

/// A mapped channel segment. Every access to its bytes goes through
/// atomics: the other processes that map it are not bound by Rust's
/// aliasing rules.
#[derive(Debug)]
pub(crate) struct Segment {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
    shm_name: CString,
    unlink_on_drop: bool,
}

// SAFETY: the mapping is process-wide, and everything reachable through
// `Segment` is atomics (`Header` and `[AtomicU64]`), so sharing or moving the
// pointer between threads is as safe as sharing those atomics.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` hands out only shared references to atomics.
unsafe impl Sync for Segment {}

/// `name` (with or without one leading `/`) as the path shm_open takes.
pub(crate) fn shm_name(name: &str) -> Result<CString, OpenError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let invalid = |reason: &'static str| OpenError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if bare.is_empty() {
        return Err(invalid("it is empty"));
    }
    if bare.len() > 250 {
        return Err(invalid("it is longer than 250 bytes"));
    }
    if bare.contains('/') {
        return Err(invalid("it contains '/' after the first character"));
    }
    if bare == "." || bare == ".." {
        return Err(invalid("it is '.' or '..'"));
    }
    CString::new(format!("/{bare}")).map_err(|_| invalid("it contains a NUL byte"))
}

/// The name as traced and shown: without the leading `/`.
pub(crate) fn display_name(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

impl Segment {
    /// Creates, opens or either, per `how`, and checks the layout against
    /// `req`. Returns the segment and whether this call created it.
    pub(crate) fn open(
        name: &str,
        how: OpenHow,
        req: &LayoutRequest,
    ) -> Result<(Segment, bool), OpenError> {
        let path = shm_name(name)?;
        let name = display_name(name).to_owned();
        match how {
            OpenHow::Create => Self::create(&name, path, req).map(|s| (s, true)),
            OpenHow::Open => Self::attach(&name, path, req).map(|s| (s, false)),
            OpenHow::OpenOrCreate => match Self::create(&name, path.clone(), req) {
                Err(OpenError::AlreadyExists { .. }) => {
                    Self::attach(&name, path, req).map(|s| (s, false))
                }
                other => other.map(|s| (s, true)),
            },
        }
    }

    fn create(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let layout = req.for_create();
        layout.check().map_err(|reason| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason,
        })?;
        let os = |op: &'static str| {
            let source = io::Error::last_os_error();
            OpenError::Os {
                name: name.to_owned(),
                op,
                source,
            }
        };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::shm_open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::mode_t,
            )
        };
        if fd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::EEXIST) => OpenError::AlreadyExists {
                    name: name.to_owned(),
                },
                _ => os("shm_open"),
            });
        }
        // SAFETY: shm_open just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // From here on a failure must not leave a half-made name behind.
        let unlink = |e: OpenError| {
            // SAFETY: as for shm_open above.
            unsafe { libc::shm_unlink(path.as_ptr()) };
            e
        };
        let size = layout.segment_size();
        // SAFETY: a valid fd and a size that fits off_t (capacity is at most
        // 1 TiB).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(unlink(os("ftruncate")));
        }
        let ptr = map(&fd, size).map_err(|source| {
            unlink(OpenError::Os {
                name: name.to_owned(),
                op: "mmap",
                source,
            })
        })?;
        let seg = Segment {
            ptr,
            len: size,
            layout,
            shm_name: path,
            unlink_on_drop: false,
        };
        let h = seg.header();
        // The file is fresh (zero-filled by ftruncate), so only non-zero
        // fields need writing; magic goes last, with Release, so an opener
        // that sees it sees the rest.
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.mode.store(layout.mode.code(), Ordering::Relaxed);
        h.capacity.store(layout.capacity as u64, Ordering::Relaxed);
        h.max_message
            .store(layout.max_message_size as u64, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u64, Ordering::Relaxed);
        h.commit_key
            .store(super::sys::random_u64() | 1, Ordering::Relaxed);
        h.next_msg_id.store(1, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    fn attach(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let os = |op: &'static str, source: io::Error| OpenError::Os {
            name: name.to_owned(),
            op,
            source,
        };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => OpenError::NotFound {
                    name: name.to_owned(),
                },
                _ => os("shm_open", e),
            });
        }
        // SAFETY: shm_open just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        // The creator makes the name before it sizes the file: wait for the
        // size, bounded.
        let started = Instant::now();
        let st = loop {
            let st = fstat(&fd).map_err(|e| os("fstat", e))?;
            // SAFETY: geteuid cannot fail and touches no memory.
            let uid = unsafe { libc::geteuid() };
            if st.st_uid != uid {
                // Another user's segment could be truncated under us (SIGBUS)
                // or rewritten at will; refuse it rather than trust it.
                return Err(OpenError::NotOwner {
                    name: name.to_owned(),
                    owner: st.st_uid,
                    uid,
                });
            }
            if st.st_size as u64 >= HEADER_SIZE as u64 {
                break st;
            }
            if started.elapsed() > INIT_WAIT {
                return Err(OpenError::NotInitialized {
                    name: name.to_owned(),
                    waited: INIT_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let size = st.st_size as u64;
        if size > (HEADER_SIZE + layout::MAX_CAPACITY) as u64 {
            return Err(OpenError::CorruptHeader {
                name: name.to_owned(),
                reason: format!("segment of {size} bytes is larger than any channel"),
            });
        }
        let size = size as usize;
        let ptr = map(&fd, size).map_err(|e| os("mmap", e))?;
        let mut seg = Segment {
            ptr,
            len: size,
            // Replaced below once the header is validated; nothing reads it
            // before then.
            layout: Layout {
                capacity: 0,
                max_message_size: 0,
                mode: Mode::Spsc,
            },
            shm_name: path,
            unlink_on_drop: false,
        };
        seg.layout = seg.validate(name, req, started)?;
        Ok(seg)
    }

    /// Reads the creator's header once into locals and checks every field,
    /// against the file and against what the caller asked for. The layout
    /// returned is the one this process uses from now on: later changes to
    /// the header by anyone are never read again.
    fn validate(
        &self,
        name: &str,
        req: &LayoutRequest,
        started: Instant,
    ) -> Result<Layout, OpenError> {
        let h = self.header();
        let magic = loop {
            let m = h.magic.load(Ordering::Acquire);
            if m != 0 {
                break m;
            }
            if started.elapsed() > INIT_WAIT {
                return Err(OpenError::NotInitialized {
                    name: name.to_owned(),
                    waited: INIT_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if magic != MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                found: magic,
            });
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        let mode_code = h.mode.load(Ordering::Relaxed);
        let mode = Mode::from_code(mode_code)
            .ok_or_else(|| corrupt(format!("unknown mode {mode_code}")))?;
        let capacity = h.capacity.load(Ordering::Relaxed);
        let max = h.max_message.load(Ordering::Relaxed);
        let header_size = h.header_size.load(Ordering::Relaxed);
        if header_size != HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "header size {header_size}, expected {HEADER_SIZE}"
            )));
        }
        if capacity != (self.len - HEADER_SIZE) as u64 {
            return Err(corrupt(format!(
                "capacity {capacity} does not match the segment's {} data bytes",
                self.len - HEADER_SIZE
            )));
        }
        let layout = Layout {
            capacity: capacity as usize,
            max_message_size: usize::try_from(max).unwrap_or(usize::MAX),
            mode,
        };
        layout.check().map_err(corrupt)?;

        let mismatch =
            |field: &'static str, expected: usize, found: usize| OpenError::LayoutMismatch {
                name: name.to_owned(),
                field,
                expected: expected as u64,
                found: found as u64,
            };
        if let Some(want) = req.capacity {
            if want.div_ceil(8).saturating_mul(8) != layout.capacity {
                return Err(mismatch("capacity", want, layout.capacity));
            }
        }
        if let Some(want) = req.max_message_size {
            if want != layout.max_message_size {
                return Err(mismatch("max message size", want, layout.max_message_size));
            }
        }
        if let Some(want) = req.mode {
            if want != layout.mode {
                return Err(OpenError::ModeMismatch {
                    name: name.to_owned(),
                    expected: want,
                    found: layout.mode,
                });
            }
        }
        Ok(layout)
    }

    /// Removes the name when this segment is dropped (the creator's choice).
    pub(crate) fn set_unlink_on_drop(&mut self, yes: bool) {
        self.unlink_on_drop = yes;
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (checked before
        // mapping), page-aligned, lives as long as `self`, and `Header` is
        // made only of atomics, for which any bit pattern is valid and
        // concurrent writes by other processes are not a data race.
        unsafe { self.ptr.cast::<Header>().as_ref() }
    }

    /// The data area as words.
    pub(crate) fn data(&self) -> &[AtomicU64] {
        // SAFETY: the data area starts HEADER_SIZE (a multiple of 8) bytes
        // into a page-aligned mapping and spans the rest of it, which
        // `validate`/`create` made a multiple of 8 bytes; AtomicU64 accepts
        // any bit pattern and tolerates concurrent writers; the slice lives
        // no longer than the mapping.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(HEADER_SIZE).cast::<AtomicU64>(),
                (self.len - HEADER_SIZE) / 8,
            )
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no
        // reference into the mapping outlives `self` (they all borrow it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if self.unlink_on_drop {
            // SAFETY: a NUL-terminated name that outlives the call. Failure
            // (someone removed it already) is fine.
            unsafe { libc::shm_unlink(self.shm_name.as_ptr()) };
        }
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a writable `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn map(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping of a valid fd; the kernel picks the
    // address, so nothing existing is replaced.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Removes a channel's name (see [`super::remove`]).
pub(crate) fn unlink(name: &str) -> Result<bool, OpenError> {
    let path = shm_name(name)?;
    // SAFETY: a NUL-terminated name that outlives the call.
    if unsafe { libc::shm_unlink(path.as_ptr()) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        _ => Err(OpenError::Os {
            name: display_name(name).to_owned(),
            op: "shm_unlink",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_reach_the_kernel() {
        assert_eq!(shm_name("jobs").unwrap().to_str().unwrap(), "/jobs");
        assert_eq!(shm_name("/jobs").unwrap().to_str().unwrap(), "/jobs");
        for bad in ["", "/", "a/b", "//a", "..", "a\0b"] {
            assert!(
                matches!(shm_name(bad), Err(OpenError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(shm_name(&"x".repeat(251)).is_err());
    }

    #[test]
    fn default_layout_fits_its_largest_message() {
        let l = LayoutRequest::default().for_create();
        assert_eq!(l.capacity, DEFAULT_CAPACITY);
        assert!(l.check().is_ok());
        let small = LayoutRequest {
            capacity: Some(100),
            ..Default::default()
        }
        .for_create();
        assert_eq!(small.capacity, 104);
        assert_eq!(small.max_message_size, 72);
        assert!(small.check().is_ok());
    }
}
