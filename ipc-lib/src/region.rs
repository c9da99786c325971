//! Named shared-memory regions: a fixed number of bytes several processes
//! map, read and write by offset, every access traced with its offset and
//! length.
//!
//! ```text
//! offset 0    header (HEADER_SIZE bytes), written once by the creator,
//!             magic last: magic u64, version u32, reserved u32,
//!             size u64 (data bytes), header_size u64
//! offset 64   data: `size` bytes
//! ```
//!
//! The data starts 64 bytes into a page-aligned mapping, so a data offset
//! aligned to N <= 64 is an address aligned to N.
//!
//! Every access goes through atomics (relaxed, word-sized where the range
//! allows): other processes write the same bytes concurrently, and a plain
//! `memcpy` racing with them would be undefined behaviour. A read that races
//! with a write may see a mix of old and new bytes (never invalid memory);
//! ordering between processes is the job of a lock, e.g. a
//! [`Semaphore`](crate::sem::Semaphore), whose acquire and release order the
//! accesses made under it.

use std::mem::size_of;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use ipc_events::{ChannelKind, EventKind};

use crate::channel::OpenError;
use crate::shm::{self, Mapping, OpenHow};
use crate::trace::{self, Op};

/// The first word of every region: `IPCSREGN` in little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSREGN");
/// The layout described in this module. Any change to it bumps this.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes before the data.
pub const HEADER_SIZE: usize = 64;
/// The largest region (1 TiB): a hostile header cannot ask for an absurd
/// mapping.
pub const MAX_SIZE: usize = 1 << 40;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    /// Version in the low half; the high half is reserved (zero).
    version: AtomicU64,
    size: AtomicU64,
    header_size: AtomicU64,
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);

/// Why a read or write was refused. Nothing was read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The range does not lie within the region.
    #[error("{len} bytes at offset {offset} do not fit in region {name:?} of {size} bytes")]
    OutOfRange {
        name: String,
        offset: usize,
        len: usize,
        size: usize,
    },
    /// A typed access at an offset not aligned for its type.
    #[error(
        "offset {offset} in region {name:?} is not a multiple of {align}, the alignment of {ty}"
    )]
    Misaligned {
        name: String,
        offset: usize,
        align: usize,
        ty: &'static str,
    },
}

mod sealed {
    pub trait Sealed {}
}

/// Plain values a region can hold: every bit pattern is a valid value, and
/// there are no padding bytes, so any bytes read from shared memory make
/// one and every byte of one is initialised. Sealed: implemented for the
/// primitive integers and floats and arrays of them, for which that is
/// known to hold.
///
/// # Safety
///
/// Implementors must be `#[repr]`-stable types with no padding and no
/// invalid bit patterns.
pub unsafe trait Plain: Copy + sealed::Sealed + 'static {}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        // SAFETY: a primitive integer or float: no padding, every bit
        // pattern valid.
        unsafe impl Plain for $t {}
    )*};
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

impl<T: Plain, const N: usize> sealed::Sealed for [T; N] {}
// SAFETY: an array of plain values has no padding between elements (its
// size is N * size_of::<T>()) and is valid for any bit pattern if T is.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// Checks that `len` bytes at `offset` lie within `size` bytes.
pub(crate) fn in_bounds(offset: usize, len: usize, size: usize) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// How a byte range splits for copying: `head` single bytes up to the first
/// 8-aligned offset, `words` whole 8-byte words, `tail` single bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub head: usize,
    pub words: usize,
    pub tail: usize,
}

pub(crate) fn split(offset: usize, len: usize) -> Split {
    let head = ((8 - offset % 8) % 8).min(len);
    let words = (len - head) / 8;
    Split {
        head,
        words,
        tail: len - head - words * 8,
    }
}

/// A named shared-memory region, mapped into this process.
///
/// ```
/// use ipc_lib::region::Region;
///
/// let name = format!("doc-region-{}", std::process::id());
/// let a = Region::builder(&name).size(4096).create()?; // the name goes with `a`
/// let b = Region::builder(&name).open()?; // another process, usually
/// a.write(100, b"hello")?;
/// let mut buf = [0u8; 5];
/// b.read(100, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// a.write_value(8, 42u64)?;
/// assert_eq!(b.read_value::<u64>(8)?, 42);
/// assert!(b.read(4094, &mut buf).is_err()); // runs past the end: an error
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Region {
    map: Mapping,
    size: usize,
    name: String,
}

/// Options for creating or opening a [`Region`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RegionBuilder {
    name: String,
    size: Option<usize>,
    unlink_on_drop: bool,
    wait: Duration,
}

impl RegionBuilder {
    /// Data bytes. Required to create; when opening, the existing region
    /// must have exactly this size ([`OpenError::LayoutMismatch`] if not).
    pub fn size(mut self, bytes: usize) -> Self {
        self.size = Some(bytes);
        self
    }

    shm::open_methods!(Region, "region");

    fn opening(
        &self,
        how: OpenHow,
    ) -> Result<impl crate::patience::Opening<Output = (Region, bool)> + '_, OpenError> {
        let path = shm::shm_name(&self.name)?;
        let name = shm::display_name(&self.name);
        let attach_path = path.clone();
        let size = self.size;
        let attach = move || Region::attach(name, attach_path.clone(), size);
        let create = move || match (how, size) {
            // Without a size nothing can be created, so only an existing
            // region will do (and open_or_create does not wait for one);
            // missing, it is the size that is wanted.
            (OpenHow::OpenOrCreate, None) => Err(match shm::exists(name, &path)? {
                true => OpenError::AlreadyExists {
                    name: name.to_owned(),
                },
                false => no_size(name),
            }),
            _ => Region::create(name, path.clone(), size),
        };
        Ok(shm::opening(name, how, self.wait, create, attach))
    }

    fn finish(self, (mut region, created): (Region, bool)) -> Result<Region, OpenError> {
        region
            .map
            .set_unlink_on_drop(created && self.unlink_on_drop);
        trace::emit_op(Op {
            size: region.size as u64,
            ..Op::new(EventKind::ShmMap, ChannelKind::IpclibShm, &region.name)
        });
        Ok(region)
    }
}

fn no_size(name: &str) -> OpenError {
    OpenError::InvalidLayout {
        name: name.to_owned(),
        reason: "a new region needs a size".into(),
    }
}

impl Region {
    /// Starts creating or opening the region called `name`.
    pub fn builder(name: impl Into<String>) -> RegionBuilder {
        RegionBuilder {
            name: name.into(),
            size: None,
            unlink_on_drop: true,
            wait: crate::DEFAULT_OPEN_WAIT,
        }
    }

    fn create(
        name: &str,
        path: std::ffi::CString,
        size: Option<usize>,
    ) -> Result<Region, OpenError> {
        let invalid = |reason: String| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason,
        };
        let size = size.ok_or_else(|| no_size(name))?;
        if size == 0 || size > MAX_SIZE {
            return Err(invalid(format!(
                "region size {size} is not between 1 and {MAX_SIZE} bytes"
            )));
        }
        let map = Mapping::create(name, path, HEADER_SIZE + size)?;
        let region = Region {
            map,
            size,
            name: name.to_owned(),
        };
        let h = region.header();
        // The file is fresh (zero-filled), so only non-zero fields need
        // writing; magic goes last, with Release, so an opener that sees it
        // sees the rest.
        h.version
            .store(u64::from(LAYOUT_VERSION), Ordering::Relaxed);
        h.size.store(size as u64, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    fn attach(
        name: &str,
        path: std::ffi::CString,
        want: Option<usize>,
    ) -> Result<Region, OpenError> {
        let (map, magic) =
            Mapping::attach(name, path, HEADER_SIZE, shm::MAX_OBJECT, "ipc-lib object")?;
        let mut region = Region {
            map,
            size: 0,
            name: name.to_owned(),
        };
        let h = region.header();
        if magic != MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                kind: "region",
                found: magic,
            });
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != u64::from(LAYOUT_VERSION) {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                expected: LAYOUT_VERSION,
            });
        }
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        let header_size = h.header_size.load(Ordering::Relaxed);
        if header_size != HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "header size {header_size}, expected {HEADER_SIZE}"
            )));
        }
        // Read once: later changes to the header by anyone are never read.
        let size = h.size.load(Ordering::Relaxed);
        let data = (region.map.len() - HEADER_SIZE) as u64;
        // Checked after the magic (the size is final once it is seen), so
        // another kind of object is called that, not a bad size.
        if size != data || size > MAX_SIZE as u64 {
            return Err(corrupt(format!(
                "size {size} does not match the object's {data} data bytes"
            )));
        }
        if let Some(want) = want {
            if want as u64 != size {
                return Err(OpenError::LayoutMismatch {
                    name: name.to_owned(),
                    field: "size",
                    expected: want as u64,
                    found: size,
                });
            }
        }
        region.size = size as usize;
        Ok(region)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (attach waits
        // for that size; create makes more), page-aligned, and lives as
        // long as `self`; `Header` is atomics only, valid for any bits and
        // for concurrent writers.
        unsafe { self.map.ptr().cast::<Header>().as_ref() }
    }

    /// The region's name, without a leading `/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Data bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the region has no data bytes (never, for a valid region).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        if in_bounds(offset, len, self.size) {
            Ok(())
        } else {
            Err(AccessError::OutOfRange {
                name: self.name.clone(),
                offset,
                len,
                size: self.size,
            })
        }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        debug_assert!(offset < self.size);
        // SAFETY: `offset` was bounds-checked against `size`, and the data
        // area spans HEADER_SIZE..HEADER_SIZE + size of the live mapping;
        // AtomicU8 has alignment 1 and tolerates concurrent writers.
        unsafe { AtomicU8::from_ptr(self.map.ptr().as_ptr().add(HEADER_SIZE + offset)) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= self.size);
        // SAFETY: in bounds as for `byte`; `offset` is a multiple of 8 and
        // the data area starts 64 bytes into a page-aligned mapping, so the
        // address is 8-aligned.
        unsafe { AtomicU64::from_ptr(self.map.ptr().as_ptr().add(HEADER_SIZE + offset).cast()) }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, buf.len())?;
        self.copy_out(offset, buf);
        self.traced(EventKind::ShmRead, offset, buf.len());
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.check(offset, data.len())?;
        self.copy_in(offset, data);
        self.traced(EventKind::ShmWrite, offset, data.len());
        Ok(())
    }

    /// Reads a plain value at `offset`, which must be aligned for `T`.
    pub fn read_value<T: Plain>(&self, offset: usize) -> Result<T, AccessError> {
        self.check_typed::<T>(offset)?;
        let n = size_of::<T>();
        let mut value = std::mem::MaybeUninit::<T>::zeroed();
        // SAFETY: the n bytes of `value` are initialised (zeroed) and
        // exclusively ours for the slice's life.
        let bytes = unsafe { std::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), n) };
        self.copy_out(offset, bytes);
        self.traced(EventKind::ShmRead, offset, n);
        // SAFETY: every byte was written above, and any bytes are a valid
        // `T` (`Plain`).
        Ok(unsafe { value.assume_init() })
    }

    /// Writes a plain value at `offset`, which must be aligned for `T`.
    pub fn write_value<T: Plain>(&self, offset: usize, value: T) -> Result<(), AccessError> {
        self.check_typed::<T>(offset)?;
        // SAFETY: `T: Plain` has no padding, so all size_of::<T>() bytes of
        // `value` are initialised; the slice lives no longer than `value`.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&value).cast::<u8>(), size_of::<T>())
        };
        self.copy_in(offset, bytes);
        self.traced(EventKind::ShmWrite, offset, bytes.len());
        Ok(())
    }

    /// Adds `delta` (wrapping) to the `u64` at `offset`, which must be
    /// 8-aligned, in one atomic step visible to every process mapping the
    /// region; returns the value before. A counter many processes bump
    /// without a lock. Traced as a write of the 8 bytes.
    pub fn fetch_add_u64(&self, offset: usize, delta: u64) -> Result<u64, AccessError> {
        self.check_typed::<u64>(offset)?;
        let before = self.word(offset).fetch_add(delta, Ordering::AcqRel);
        self.traced(EventKind::ShmWrite, offset, 8);
        Ok(before)
    }

    /// Stores `new` in the `u64` at `offset` (8-aligned) if it holds
    /// `current`, atomically: `Ok(Ok(current))` when it did, `Ok(Err(v))`
    /// with the value found when it did not. Traced as a write of the 8
    /// bytes when it stored, a read when it did not.
    pub fn compare_exchange_u64(
        &self,
        offset: usize,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, AccessError> {
        self.check_typed::<u64>(offset)?;
        let r =
            self.word(offset)
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire);
        let kind = match r {
            Ok(_) => EventKind::ShmWrite,
            Err(_) => EventKind::ShmRead,
        };
        self.traced(kind, offset, 8);
        Ok(r)
    }

    fn check_typed<T>(&self, offset: usize) -> Result<(), AccessError> {
        self.check(offset, size_of::<T>())?;
        let align = std::mem::align_of::<T>();
        if !offset.is_multiple_of(align) {
            return Err(AccessError::Misaligned {
                name: self.name.clone(),
                offset,
                align,
                ty: std::any::type_name::<T>(),
            });
        }
        Ok(())
    }

    fn copy_out(&self, offset: usize, buf: &mut [u8]) {
        let s = split(offset, buf.len());
        let (head, rest) = buf.split_at_mut(s.head);
        let (words, tail) = rest.split_at_mut(s.words * 8);
        for (i, b) in head.iter_mut().enumerate() {
            *b = self.byte(offset + i).load(Ordering::Relaxed);
        }
        let at = offset + s.head;
        for (i, w) in words.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&self.word(at + i * 8).load(Ordering::Relaxed).to_ne_bytes());
        }
        let at = at + s.words * 8;
        for (i, b) in tail.iter_mut().enumerate() {
            *b = self.byte(at + i).load(Ordering::Relaxed);
        }
    }

    fn copy_in(&self, offset: usize, data: &[u8]) {
        let s = split(offset, data.len());
        let (head, rest) = data.split_at(s.head);
        let (words, tail) = rest.split_at(s.words * 8);
        for (i, b) in head.iter().enumerate() {
            self.byte(offset + i).store(*b, Ordering::Relaxed);
        }
        let at = offset + s.head;
        for (i, w) in words.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.word(at + i * 8)
                .store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        let at = at + s.words * 8;
        for (i, b) in tail.iter().enumerate() {
            self.byte(at + i).store(*b, Ordering::Relaxed);
        }
    }

    fn traced(&self, kind: EventKind, offset: usize, len: usize) {
        trace::emit_op(Op {
            size: len as u64,
            aux: offset as u64,
            ..Op::new(kind, ChannelKind::IpclibShm, &self.name)
        });
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        trace::emit_op(Op {
            size: self.size as u64,
            ..Op::new(EventKind::ShmUnmap, ChannelKind::IpclibShm, &self.name)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_covers_the_range_with_aligned_words(offset in 0usize..1 << 20, len in 0usize..4096) {
            let s = split(offset, len);
            prop_assert_eq!(s.head + s.words * 8 + s.tail, len);
            prop_assert!(s.head < 8 && s.tail < 8);
            if s.words > 0 {
                prop_assert_eq!((offset + s.head) % 8, 0);
            }
        }

        #[test]
        fn bounds_never_overflow(offset: usize, len: usize, size in 0usize..1 << 40) {
            let ok = in_bounds(offset, len, size);
            prop_assert_eq!(ok, (offset as u128 + len as u128) <= size as u128);
        }
    }

    #[test]
    fn short_unaligned_ranges_are_all_head() {
        assert_eq!(
            split(3, 2),
            Split {
                head: 2,
                words: 0,
                tail: 0
            }
        );
        assert_eq!(
            split(3, 20),
            Split {
                head: 5,
                words: 1,
                tail: 7
            }
        );
        assert_eq!(
            split(8, 16),
            Split {
                head: 0,
                words: 2,
                tail: 0
            }
        );
    }
}
