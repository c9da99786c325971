//! Named shared-memory objects as every ipc-lib object uses them: the name
//! check, creating one (mode 0600, never half-made), attaching to someone
//! else's (same owner only; waited for, bounded, until it exists and its
//! creator has sized and initialised it), and unmapping. Channels, regions
//! and semaphores each put their own header on top; what they share lives
//! here so they cannot drift apart.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::channel::OpenError;
use crate::patience::{Opening, Patience, Step};

/// No ipc-lib object is larger (a channel's data area is at most 1 TiB, a
/// region's too): a bigger one is refused before it is mapped.
pub(crate) const MAX_OBJECT: usize = 1 << 41;

/// How a builder finds its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenHow {
    Create,
    Open,
    OpenOrCreate,
}

/// `name` (with or without one leading `/`) as the path shm_open takes.
pub(crate) fn shm_name(name: &str) -> Result<CString, OpenError> {
    let bare = display_name(name);
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

/// Runs `create`, `attach` or the one then the other, per `how`, as an
/// [`Opening`] whose output says whether this open created the object.
///
/// `attach` makes one attempt and answers [`OpenError::NotFound`] or
/// [`OpenError::NotInitialized`] (their `waited` is not read) when the
/// object is not there or not ready yet; the opening tries it again,
/// within `wait` for a name that does not exist and within
/// [`Patience::for_ready`] for a creator that has not finished, and
/// reports how long it waited.
pub(crate) fn opening<'a, T>(
    name: &'a str,
    how: OpenHow,
    wait: Duration,
    create: impl FnMut() -> Result<T, OpenError> + 'a,
    attach: impl FnMut() -> Result<T, OpenError> + 'a,
) -> impl Opening<Output = (T, bool)> + 'a {
    OpenWith {
        name,
        how,
        patience: Patience::new(wait),
        create,
        attach,
    }
}

/// See [`opening`].
struct OpenWith<'a, C, A> {
    name: &'a str,
    how: OpenHow,
    patience: Patience,
    create: C,
    attach: A,
}

impl<T, C, A> Opening for OpenWith<'_, C, A>
where
    C: FnMut() -> Result<T, OpenError>,
    A: FnMut() -> Result<T, OpenError>,
{
    type Output = (T, bool);

    fn name(&self) -> &str {
        self.name
    }

    fn step(&mut self) -> Step<(T, bool)> {
        let attached = match self.how {
            OpenHow::Create => return Step::Done((self.create)().map(|t| (t, true))),
            OpenHow::Open => (self.attach)(),
            OpenHow::OpenOrCreate => match (self.create)() {
                Err(OpenError::AlreadyExists { .. }) => (self.attach)(),
                other => return Step::Done(other.map(|t| (t, true))),
            },
        };
        let p = &mut self.patience;
        match attached {
            Err(OpenError::NotFound { name, .. }) => {
                // open_or_create: the name went away between the two
                // attempts (its creator dropped it); creating it is this
                // call's job, so that is a race to retry, not a wait.
                let limit = match self.how {
                    OpenHow::OpenOrCreate => p.for_ready(),
                    _ => p.for_name(),
                };
                match p.next_nap(limit) {
                    Some(nap) => Step::Nap(nap),
                    None => Step::Done(Err(OpenError::NotFound {
                        name,
                        waited: limit,
                    })),
                }
            }
            Err(OpenError::NotInitialized { name, .. }) => match p.next_nap(p.for_ready()) {
                Some(nap) => Step::Nap(nap),
                None => Step::Done(Err(OpenError::NotInitialized {
                    name,
                    waited: p.for_ready(),
                })),
            },
            other => Step::Done(other.map(|t| (t, false))),
        }
    }
}

/// Whether the name exists now (whoever owns it). For an open that may
/// not create and must not wait either.
pub(crate) fn exists(name: &str, path: &CString) -> Result<bool, OpenError> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: shm_open just returned this fd and nothing else owns it;
        // dropping it closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        // Another user's name (EACCES) exists all the same.
        Some(libc::EACCES) => Ok(true),
        _ => Err(OpenError::Os {
            name: name.to_owned(),
            op: "shm_open",
            source: e,
        }),
    }
}

/// A mapped shared-memory object. It hands out raw bytes only; the owner
/// decides how they are viewed (always through atomics: other processes
/// write them concurrently and are not bound by Rust's aliasing rules).
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    path: CString,
    unlink_on_drop: bool,
}

// SAFETY: the mapping is process-wide and its owners reach its bytes only
// through atomics, so moving or sharing the pointer between threads is as
// safe as sharing those atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates `path` exclusively with mode 0600, sized `size` bytes (zero
    /// filled). On any failure the name is removed again, so no half-made
    /// object is left for an opener to find.
    pub(crate) fn create(name: &str, path: CString, size: usize) -> Result<Mapping, OpenError> {
        let os = |op: &'static str| {
            let source = io::Error::last_os_error();
            OpenError::Os {
                name: name.to_owned(),
                op,
                source,
            }
        };
        let size_off = libc::off_t::try_from(size).map_err(|_| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason: format!("{size} bytes is too large for a shared-memory object"),
        })?;
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
        let unlink = |e: OpenError| {
            // SAFETY: as for shm_open above.
            unsafe { libc::shm_unlink(path.as_ptr()) };
            e
        };
        // SAFETY: a valid fd and a size that fits off_t (checked above).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size_off) } != 0 {
            return Err(unlink(os("ftruncate")));
        }
        let ptr = map(&fd, size).map_err(|source| {
            unlink(OpenError::Os {
                name: name.to_owned(),
                op: "mmap",
                source,
            })
        })?;
        Ok(Mapping {
            ptr,
            len: size,
            path,
            unlink_on_drop: false,
        })
    }

    /// Opens and maps an existing `path`, one attempt, for
    /// [`open_with`] to retry. Refuses another user's object, and one
    /// larger than `max` bytes (`what` names the kind of object in that
    /// error). Returns the mapping and the magic word at its offset 0
    /// (every ipc-lib header starts with it), which its creator stores last
    /// with Release: non-zero, the header is complete.
    ///
    /// Not there: [`OpenError::NotFound`]. There but smaller than `min`
    /// bytes or without its magic (the creator makes the name, then sizes
    /// it, then writes the header): [`OpenError::NotInitialized`], never a
    /// corrupt header.
    pub(crate) fn attach(
        name: &str,
        path: CString,
        min: usize,
        max: usize,
        what: &str,
    ) -> Result<(Mapping, u64), OpenError> {
        let os = |op: &'static str, source: io::Error| OpenError::Os {
            name: name.to_owned(),
            op,
            source,
        };
        // `open_with` fills in how long it waited.
        let not_yet = || OpenError::NotInitialized {
            name: name.to_owned(),
            waited: Duration::ZERO,
        };
        debug_assert!(min >= std::mem::size_of::<AtomicU64>());
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => OpenError::NotFound {
                    name: name.to_owned(),
                    waited: Duration::ZERO,
                },
                _ => os("shm_open", e),
            });
        }
        // SAFETY: shm_open just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(&fd).map_err(|e| os("fstat", e))?;
        // SAFETY: geteuid cannot fail and touches no memory.
        let uid = unsafe { libc::geteuid() };
        if st.st_uid != uid {
            // Another user's object could be truncated under us (SIGBUS)
            // or rewritten at will; refuse it rather than trust it.
            return Err(OpenError::NotOwner {
                name: name.to_owned(),
                owner: st.st_uid,
                uid,
            });
        }
        let size = st.st_size as u64;
        if size < min as u64 {
            return Err(not_yet());
        }
        if size > max as u64 {
            return Err(OpenError::CorruptHeader {
                name: name.to_owned(),
                reason: format!("object of {size} bytes is larger than any {what}"),
            });
        }
        let size = size as usize;
        let ptr = map(&fd, size).map_err(|e| os("mmap", e))?;
        let mapping = Mapping {
            ptr,
            len: size,
            path,
            unlink_on_drop: false,
        };
        // SAFETY: the mapping is at least `min` >= 8 bytes, page-aligned
        // (so aligned for a u64) and lives until `mapping` is dropped,
        // after this borrow; an atomic accepts any bits and concurrent
        // writers.
        let magic = unsafe { mapping.ptr.cast::<AtomicU64>().as_ref() }.load(Ordering::Acquire);
        if magic == 0 {
            return Err(not_yet());
        }
        Ok((mapping, magic))
    }

    /// The first byte; page-aligned.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Removes the name when this mapping is dropped (the creator's choice).
    pub(crate) fn set_unlink_on_drop(&mut self, yes: bool) {
        self.unlink_on_drop = yes;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no
        // reference into the mapping outlives `self` (they all borrow it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if self.unlink_on_drop {
            // SAFETY: a NUL-terminated name that outlives the call. Failure
            // (someone removed it already) is fine.
            unsafe { libc::shm_unlink(self.path.as_ptr()) };
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

/// Removes an object's name: `Ok(false)` when there was none. Mappings
/// already made stay valid.
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

/// The open methods every named-object builder has, written once: each
/// builder has `unlink_on_drop: bool` and `wait: Duration` fields, an
/// `opening(&self, OpenHow)` giving the [`Opening`] that finds or makes
/// its object, and a `finish(self, opened)` that turns what it found into
/// the handle (claims its place, checks what only it can check; never
/// waits). The blocking and async opens run the same opening.
macro_rules! open_methods {
    ($object:ty, $what:literal) => {
        /// Whether dropping the handle that created the object removes its
        /// name (mappings others already hold stay valid; handles that
        /// opened it never remove it). Default true, as for every ipc-lib
        /// object: see [`crate::remove`] for names a killed process left.
        pub fn unlink_on_drop(mut self, yes: bool) -> Self {
            self.unlink_on_drop = yes;
            self
        }

        #[doc = concat!("How long `open` waits for the ", $what, " to be created, \
            and its creator to finish setting it up (at least 2 s for that). \
            Default [`DEFAULT_OPEN_WAIT`](crate::DEFAULT_OPEN_WAIT) (5 s); \
            `Duration::ZERO` fails at once if the name does not exist.")]
        pub fn wait(mut self, wait: std::time::Duration) -> Self {
            self.wait = wait;
            self
        }

        #[doc = concat!("Creates a new ", $what, "; fails if the name exists.")]
        pub fn create(self) -> Result<$object, OpenError> {
            self.open_how(OpenHow::Create)
        }

        #[doc = concat!("Opens an existing ", $what, ", waiting for its creator as \
            [`wait`](Self::wait) says: [`OpenError::NotFound`] when the name \
            did not appear in time.")]
        pub fn open(self) -> Result<$object, OpenError> {
            self.open_how(OpenHow::Open)
        }

        #[doc = concat!("Opens the ", $what, ", creating it first if the name does not exist.")]
        pub fn open_or_create(self) -> Result<$object, OpenError> {
            self.open_how(OpenHow::OpenOrCreate)
        }

        #[doc = concat!("[`open`](Self::open) for async code (feature `tokio`): \
            waits for the ", $what, "'s creator as long as `open` does, with \
            the same errors, between tries that never block (naps on \
            tokio's timer, so it needs a runtime with time enabled, as \
            `#[tokio::main]` gives). Cancel safe: a dropped future leaves \
            nothing open.")]
        #[cfg(feature = "tokio")]
        pub async fn open_async(self) -> Result<$object, OpenError> {
            self.open_how_async(OpenHow::Open).await
        }

        #[doc = concat!("[`open_or_create`](Self::open_or_create) for async code, \
            as [`open_async`](Self::open_async).")]
        #[cfg(feature = "tokio")]
        pub async fn open_or_create_async(self) -> Result<$object, OpenError> {
            self.open_how_async(OpenHow::OpenOrCreate).await
        }

        fn open_how(self, how: OpenHow) -> Result<$object, OpenError> {
            let opened = crate::patience::block(self.opening(how)?)?;
            self.finish(opened)
        }

        #[cfg(feature = "tokio")]
        async fn open_how_async(self, how: OpenHow) -> Result<$object, OpenError> {
            let opened = crate::patience::wait(self.opening(how)?).await?;
            self.finish(opened)
        }
    };
}
pub(crate) use open_methods;

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
}
