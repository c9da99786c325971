//! A named segment of fixed slots behind a header: the broadcast's and the
//! work queue's, whose bytes differ only in their header past its first
//! 128 bytes and in what a new segment starts with. Creating one,
//! attaching to and checking someone else's, and finding a slot live here
//! once, so the two cannot drift apart; each kind's `layout.rs` says what
//! its header and slots mean.
//!
//! ```text
//! offset 0      header (H::SIZE bytes; starts with `Prefix`)
//! H::SIZE       slot 0, slot 1, ... slot capacity-1, each slot_size() bytes
//! ```

use std::ffi::CString;
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::channel::layout::FRAME_HEADER_SIZE;
use crate::channel::OpenError;
use crate::patience::Opening;
use crate::shm::{self, Mapping, OpenHow};

/// The largest message (a slot stays within a 32-bit length).
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Bytes one slot takes for messages of at most `max` bytes: a channel
/// frame (`crate::channel::layout`) whose first word each kind uses for
/// its own state.
pub const fn slot_size(max: usize) -> usize {
    FRAME_HEADER_SIZE + max.div_ceil(8) * 8
}

/// The first 128 bytes of every slot segment's header: what an opener
/// checks before it trusts the rest. Each kind's header reserves them as
/// its first field; only `Segment` reads and writes them. Every field is
/// an atomic: other processes write any byte at any time.
#[repr(C)]
pub(crate) struct Prefix {
    magic: AtomicU64,
    version: AtomicU32,
    _pad_v: AtomicU32,
    capacity: AtomicU64,
    max_message: AtomicU64,
    header_size: AtomicU64,
    _pad0: [AtomicU64; 11],
}

const _: () = assert!(size_of::<Prefix>() == 128);

/// What makes a slot segment a broadcast or a queue: its header type and
/// the constants of its layout.
///
/// # Safety
///
/// `Self` is `#[repr(C)]`, made of atomics only (any bits are valid and
/// other processes' writes are no data race), starts with a [`Prefix`],
/// is at most `SIZE` bytes and has an alignment of at most 8; `SIZE` is a
/// multiple of 8. `Segment` views the first `SIZE` bytes of a mapping as
/// `Self`, and the first 128 as the `Prefix`, on that promise.
pub(crate) unsafe trait SlotHeader: Sized {
    /// What the segment is, in errors: "queue", "broadcast".
    const KIND: &'static str;
    /// What a slot holds, in the capacity check's error: "jobs".
    const UNIT: &'static str;
    /// The first word of every segment of this kind.
    const MAGIC: u64;
    /// Bumped on any change to the bytes; other versions are refused.
    const VERSION: u32;
    /// Bytes before slot 0.
    const SIZE: usize;
    /// The most slots a segment of this kind may have.
    const MAX_CAPACITY: usize;
    /// Slots of a new segment when the builder named none.
    const DEFAULT_CAPACITY: usize;
    /// Largest message of a new segment when the builder named none (4
    /// KiB, as every builder documents).
    const DEFAULT_MAX_MESSAGE: usize = 4096;

    /// Writes what a new, zero-filled segment holds besides its prefix;
    /// runs before the magic is stored, so no opener sees it half done.
    /// Nothing by default: all zeros is the kind's empty state.
    fn init(_seg: &Segment<Self>) {}
}

/// What a builder asked for; `None` is taken from an existing segment, or
/// defaulted when creating one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LayoutRequest {
    pub capacity: Option<usize>,
    pub max_message_size: Option<usize>,
}

/// Whether `capacity` slots for messages of `max` bytes make a segment of
/// kind `H` (the reason if not).
pub(crate) fn check<H: SlotHeader>(capacity: usize, max: usize) -> Result<(), String> {
    if capacity == 0 || capacity > H::MAX_CAPACITY {
        return Err(format!(
            "capacity {capacity} is not between 1 and {} {}",
            H::MAX_CAPACITY,
            H::UNIT
        ));
    }
    if max > MAX_MESSAGE_SIZE {
        return Err(format!(
            "max message size {max} exceeds the limit of {MAX_MESSAGE_SIZE}"
        ));
    }
    let size = (capacity as u128) * (slot_size(max) as u128);
    if size > shm::MAX_OBJECT as u128 {
        return Err(format!(
            "{capacity} slots of {} bytes exceed the limit of {} bytes",
            slot_size(max),
            shm::MAX_OBJECT
        ));
    }
    Ok(())
}

/// Bytes of a whole segment of kind `H`.
pub(crate) const fn segment_size<H: SlotHeader>(capacity: usize, max: usize) -> usize {
    H::SIZE + capacity * slot_size(max)
}

/// A mapped slot segment of kind `H`.
pub(crate) struct Segment<H> {
    map: Mapping,
    /// The shape, as created or as read once on attach: later changes to
    /// the header by anyone are never read again.
    pub capacity: usize,
    pub max_message_size: usize,
    slot_words: usize,
    header: PhantomData<H>,
}

// By hand: a derive would require `H: Debug`, and a header's live atomics
// are no part of what a segment is.
impl<H: SlotHeader> std::fmt::Debug for Segment<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("kind", &H::KIND)
            .field("map", &self.map)
            .field("capacity", &self.capacity)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl<H: SlotHeader> Segment<H> {
    /// Creates, opens or either, as channels do (`shm::opening`).
    pub(crate) fn opening<'a>(
        name: &'a str,
        how: OpenHow,
        req: &'a LayoutRequest,
        wait: Duration,
    ) -> Result<impl Opening<Output = (Self, bool)> + 'a, OpenError> {
        let path = shm::shm_name(name)?;
        let name = shm::display_name(name);
        let attach_path = path.clone();
        Ok(shm::opening(
            name,
            how,
            wait,
            move || Self::create(name, path.clone(), req),
            move || Self::attach(name, attach_path.clone(), req),
        ))
    }

    fn create(name: &str, path: CString, req: &LayoutRequest) -> Result<Self, OpenError> {
        let capacity = req.capacity.unwrap_or(H::DEFAULT_CAPACITY);
        let max = req.max_message_size.unwrap_or(H::DEFAULT_MAX_MESSAGE);
        check::<H>(capacity, max).map_err(|reason| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason,
        })?;
        let map = Mapping::create(name, path, segment_size::<H>(capacity, max))?;
        let seg = Self::new(map, capacity, max);
        H::init(&seg);
        let p = seg.prefix();
        p.version.store(H::VERSION, Ordering::Relaxed);
        p.capacity.store(capacity as u64, Ordering::Relaxed);
        p.max_message.store(max as u64, Ordering::Relaxed);
        p.header_size.store(H::SIZE as u64, Ordering::Relaxed);
        // Last, so an opener that sees it sees the rest.
        p.magic.store(H::MAGIC, Ordering::Release);
        Ok(seg)
    }

    fn attach(name: &str, path: CString, req: &LayoutRequest) -> Result<Self, OpenError> {
        let (map, magic) = Mapping::attach(name, path, H::SIZE, shm::MAX_OBJECT, H::KIND)?;
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        if magic != H::MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                kind: H::KIND,
                found: magic,
            });
        }
        // SAFETY: as in `prefix`; the borrow ends before `map` moves.
        let p = unsafe { map.ptr().cast::<Prefix>().as_ref() };
        let version = p.version.load(Ordering::Relaxed);
        if version != H::VERSION {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                found: version,
                expected: H::VERSION,
            });
        }
        let header_size = p.header_size.load(Ordering::Relaxed);
        if header_size != H::SIZE as u64 {
            return Err(corrupt(format!(
                "header size {header_size}, expected {}",
                H::SIZE
            )));
        }
        let capacity = usize::try_from(p.capacity.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        let max = usize::try_from(p.max_message.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        check::<H>(capacity, max).map_err(corrupt)?;
        if segment_size::<H>(capacity, max) != map.len() {
            return Err(corrupt(format!(
                "{capacity} slots of {} bytes do not fill the object's {} bytes",
                slot_size(max),
                map.len()
            )));
        }
        let mismatch = |field: &'static str, expected: usize, found: usize| {
            Err(OpenError::LayoutMismatch {
                name: name.to_owned(),
                field,
                expected: expected as u64,
                found: found as u64,
            })
        };
        if let Some(want) = req.capacity.filter(|&c| c != capacity) {
            return mismatch("capacity", want, capacity);
        }
        if let Some(want) = req.max_message_size.filter(|&m| m != max) {
            return mismatch("max message size", want, max);
        }
        Ok(Self::new(map, capacity, max))
    }

    fn new(map: Mapping, capacity: usize, max_message_size: usize) -> Self {
        Segment {
            map,
            capacity,
            max_message_size,
            slot_words: slot_size(max_message_size) / 8,
            header: PhantomData,
        }
    }

    pub(crate) fn set_unlink_on_drop(&mut self, yes: bool) {
        self.map.set_unlink_on_drop(yes);
    }

    fn prefix(&self) -> &Prefix {
        // SAFETY: the mapping is at least H::SIZE bytes (create sized it
        // so, attach checked it), which hold a `Prefix` first (the
        // `SlotHeader` promise), page-aligned and alive as long as `self`;
        // `Prefix` is atomics only.
        unsafe { self.map.ptr().cast::<Prefix>().as_ref() }
    }

    pub(crate) fn header(&self) -> &H {
        // SAFETY: the mapping is at least H::SIZE bytes (create sized it
        // so, attach checked it), page-aligned, lives as long as `self`,
        // and `H` fits in H::SIZE bytes of atomics only (`SlotHeader`'s
        // promise): any bits are valid and other processes' writes are no
        // data race.
        unsafe { self.map.ptr().cast::<H>().as_ref() }
    }

    /// The words of the slot that message or position `n` lives in.
    pub(crate) fn slot(&self, n: u64) -> &[AtomicU64] {
        let i = (n % self.capacity as u64) as usize;
        // SAFETY: slot i < capacity spans [H::SIZE + i * slot bytes,
        // + slot bytes), inside the mapping, whose size is exactly
        // segment_size() (checked on attach, made so on create); H::SIZE
        // and slot sizes are multiples of 8 and the mapping page-aligned,
        // so the words are aligned; atomics accept any bits and concurrent
        // writers; the slice borrows `self`, so it dies before the mapping.
        unsafe {
            std::slice::from_raw_parts(
                self.map
                    .ptr()
                    .as_ptr()
                    .add(H::SIZE + i * self.slot_words * 8)
                    .cast::<AtomicU64>(),
                self.slot_words,
            )
        }
    }
}
