//! ipc-lib objects as the probes see them.
//!
//! An ipc-lib channel, semaphore or region named `NAME` lives in
//! `/dev/shm/NAME`. The probes see that file mapped (`shm_map` on the
//! `shm` channel `/dev/shm/NAME`, at an address) and, when a thread
//! sleeps in a blocking ipc-lib operation, futex waits on words inside
//! that mapping. Both are the ipc-lib object seen from below: the mapping
//! is linked to it (it carries the object, as a socket carries an ipc-lib
//! socket channel), and a futex word inside it is the object itself.

use std::collections::HashMap;

use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

use super::ChannelRef;

/// Where a process mapped a shared-memory file.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    len: u64,
    /// The name under `/dev/shm`.
    name: String,
}

#[derive(Debug, Default)]
pub struct LibObjects {
    /// ipc-lib objects by name.
    objects: HashMap<String, ChannelRef>,
    /// `shm` channels of files under `/dev/shm`, by name.
    files: HashMap<String, ChannelRef>,
    /// Per process, its mappings of files under `/dev/shm`.
    maps: HashMap<u32, Vec<Mapping>>,
}

/// The most mappings kept per process (the probes sample 16).
const MAX_MAPPINGS: usize = 64;

fn is_lib_object(kind: ChannelKind) -> bool {
    matches!(
        kind,
        ChannelKind::IpclibChannel
            | ChannelKind::IpclibSem
            | ChannelKind::IpclibShm
            | ChannelKind::IpclibBroadcast
            | ChannelKind::IpclibQueue
    )
}

impl LibObjects {
    /// Learns from `event`, on channel `r`: an ipc-lib object's name, or
    /// a `/dev/shm` file mapped. Returns a link (file channel, ipc-lib
    /// object) when one is found.
    pub fn saw(&mut self, event: &Event, r: ChannelRef) -> Option<(ChannelRef, ChannelRef)> {
        match event.channel.as_ref()? {
            ChannelId::Named { kind, name } if is_lib_object(*kind) => {
                if self.objects.contains_key(name) {
                    return None;
                }
                self.objects.insert(name.clone(), r);
                self.files.get(name).map(|&file| (file, r))
            }
            ChannelId::Named {
                kind: ChannelKind::Shm,
                name,
            } if event.source == Source::Ebpf => {
                let bare = name.strip_prefix("/dev/shm/")?;
                match event.kind {
                    EventKind::ShmMap => {
                        let maps = self.maps.entry(event.pid).or_default();
                        if maps.len() < MAX_MAPPINGS {
                            maps.push(Mapping {
                                start: event.aux,
                                len: event.size,
                                name: bare.to_owned(),
                            });
                        }
                    }
                    EventKind::ShmUnmap => {
                        if let Some(maps) = self.maps.get_mut(&event.pid) {
                            maps.retain(|m| m.start != event.aux);
                        }
                    }
                    _ => {}
                }
                if self.files.contains_key(bare) {
                    return None;
                }
                self.files.insert(bare.to_owned(), r);
                self.objects.get(bare).map(|&lib| (r, lib))
            }
            _ => None,
        }
    }

    /// The ipc-lib object whose memory holds the futex word `event`
    /// waits on or wakes, if any.
    pub fn futex_owner(&self, event: &Event) -> Option<ChannelRef> {
        if event.source != Source::Ebpf
            || !matches!(
                event.kind,
                EventKind::FutexWaitBegin | EventKind::FutexWait | EventKind::FutexWake
            )
        {
            return None;
        }
        let Some(ChannelId::Numeric {
            kind: ChannelKind::Futex,
            a: addr,
            ..
        }) = &event.channel
        else {
            return None;
        };
        let mapping = self
            .maps
            .get(&event.pid)?
            .iter()
            .find(|m| (m.start..m.start.saturating_add(m.len)).contains(addr))?;
        self.objects.get(&mapping.name).copied()
    }

    /// Process `pid` exited: its mappings are gone.
    pub fn exited(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }
}
