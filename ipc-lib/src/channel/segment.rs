//! The named shared-memory segment under a channel: creating it, opening and
//! validating someone else's, mapping and unmapping.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::OpenError;
use super::layout::{self, Header, Layout, Mode, HEADER_SIZE, LAYOUT_VERSION, MAGIC};
use crate::patience::Opening;
use crate::shm::{self, Mapping};
pub(crate) use crate::shm::{display_name, OpenHow};

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
    map: Mapping,
    layout: Layout,
}

impl Segment {
    /// Creates, opens or either, per `how` (an open waiting for the
    /// channel as `wait` says, see [`shm::opening`]), and checks the
    /// layout against `req`. The opening gives the segment and whether it
    /// created it.
    pub(crate) fn opening<'a>(
        name: &'a str,
        how: OpenHow,
        req: &'a LayoutRequest,
        wait: Duration,
    ) -> Result<impl Opening<Output = (Segment, bool)> + 'a, OpenError> {
        let path = shm::shm_name(name)?;
        let name = display_name(name);
        let attach_path = path.clone();
        Ok(shm::opening(
            name,
            how,
            wait,
            move || Self::create(name, path.clone(), req),
            move || Self::attach(name, attach_path.clone(), req),
        ))
    }

    fn create(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let layout = req.for_create();
        layout.check().map_err(|reason| OpenError::InvalidLayout {
            name: name.to_owned(),
            reason,
        })?;
        let map = Mapping::create(name, path, layout.segment_size())?;
        let seg = Segment { map, layout };
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
            .store(crate::sys::random_u64() | 1, Ordering::Relaxed);
        h.next_msg_id.store(1, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    fn attach(name: &str, path: CString, req: &LayoutRequest) -> Result<Segment, OpenError> {
        let (map, magic) = Mapping::attach(
            name,
            path,
            HEADER_SIZE,
            HEADER_SIZE + layout::MAX_CAPACITY,
            "channel",
        )?;
        let mut seg = Segment {
            map,
            // Replaced below once the header is validated; nothing reads it
            // before then.
            layout: Layout {
                capacity: 0,
                max_message_size: 0,
                mode: Mode::Spsc,
            },
        };
        seg.layout = seg.validate(name, req, magic)?;
        Ok(seg)
    }

    /// Reads the creator's header once into locals and checks every field
    /// (`magic` as `attach` read it), against the file and against what
    /// the caller asked for. The layout
    /// returned is the one this process uses from now on: later changes to
    /// the header by anyone are never read again.
    fn validate(&self, name: &str, req: &LayoutRequest, magic: u64) -> Result<Layout, OpenError> {
        let h = self.header();
        if magic != MAGIC {
            return Err(OpenError::BadMagic {
                name: name.to_owned(),
                kind: "channel",
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
        if capacity != (self.map.len() - HEADER_SIZE) as u64 {
            return Err(corrupt(format!(
                "capacity {capacity} does not match the segment's {} data bytes",
                self.map.len() - HEADER_SIZE
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
        self.map.set_unlink_on_drop(yes);
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (checked before
        // mapping), page-aligned, lives as long as `self`, and `Header` is
        // made only of atomics, for which any bit pattern is valid and
        // concurrent writes by other processes are not a data race.
        unsafe { self.map.ptr().cast::<Header>().as_ref() }
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
                self.map.ptr().as_ptr().add(HEADER_SIZE).cast::<AtomicU64>(),
                (self.map.len() - HEADER_SIZE) / 8,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
