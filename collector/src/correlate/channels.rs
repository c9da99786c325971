//! Naming IPC objects: one [`ChannelRef`] per object, and one per
//! connection for sockets, from the connection's first byte.
//!
//! The probes name a socket by the inodes of its two ends, read when a
//! syscall enters. A connection's first bytes are often sent before the
//! server has `accept()`ed it: the other end has no inode yet, so those
//! events name one end only. Each end is remembered with the channel it
//! belongs to, so whichever end is seen first, and however much of its
//! peer is known then, every event of a connection lands on one channel.

use std::collections::{HashMap, HashSet};

use crate::fast_map::FastMap;

use ipc_events::{ChannelId, ChannelKind, Event};

/// A channel of this session, numbered densely from 0 in order of first
/// sight: what the correlator's facts name channels by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelRef(pub u32);

impl ChannelRef {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// One channel: its identity and, for a socket, the inodes of its ends
/// as far as they are known (0: not yet).
#[derive(Debug)]
struct Channel {
    id: ChannelId,
    ends: [u64; 2],
}

/// What an event's object resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// The event touches no object.
    None,
    /// The recorder's own plumbing (an ipc-lib process handing its ring
    /// over): not the user's IPC.
    Own,
    Channel(ChannelRef),
}

/// Every channel of a session.
#[derive(Debug, Default)]
pub struct Channels {
    refs: HashMap<ChannelId, ChannelRef>,
    channels: Vec<Channel>,
    /// (kind, inode of one end) -> the connection's channel.
    ends: FastMap<(ChannelKind, u64), ChannelRef>,
    /// Socket inodes of the recorder's own.
    own: HashSet<u64>,
}

/// A channel's identity changed: a one-ended socket channel whose other
/// end became known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub channel: ChannelRef,
    pub id: ChannelId,
}

impl Channels {
    /// The socket or memfd of inode `inode` is the recorder's own: events
    /// through it (or through its peer) are not the user's.
    pub fn own_object(&mut self, inode: u64) {
        self.own.insert(inode);
    }

    /// The identity of channel `r`.
    pub fn id(&self, r: ChannelRef) -> &ChannelId {
        &self.channels[r.index()].id
    }

    /// The inodes of a socket channel's ends, in the order they were
    /// first seen (0: not yet known). The first is always known.
    pub fn ends(&self, r: ChannelRef) -> [u64; 2] {
        self.channels[r.index()].ends
    }

    /// The channel `event` went through. New channels are appended to
    /// `new`, renamed ones to `renamed`.
    pub fn resolve(
        &mut self,
        event: &Event,
        new: &mut Vec<(ChannelRef, ChannelId)>,
        renamed: &mut Vec<Renamed>,
    ) -> Resolved {
        let Some(id) = &event.channel else {
            return Resolved::None;
        };
        if let (ChannelId::Numeric { kind, a, b }, Some(end)) = (id, event.endpoint) {
            if kind.is_socket() {
                let peer = if end == *a { *b } else { *a };
                if self.own.contains(&end) || self.own.contains(&peer) {
                    return Resolved::Own;
                }
                return Resolved::Channel(self.socket(*kind, end, peer, new, renamed));
            }
        }
        if let ChannelId::Named {
            kind: ChannelKind::Shm,
            name,
        } = id
        {
            if memfd_inode(name).is_some_and(|i| self.own.contains(&i)) {
                return Resolved::Own;
            }
        }
        Resolved::Channel(self.named(id, new))
    }

    fn named(&mut self, id: &ChannelId, new: &mut Vec<(ChannelRef, ChannelId)>) -> ChannelRef {
        if let Some(&r) = self.refs.get(id) {
            return r;
        }
        self.add(id.clone(), [0, 0], new)
    }

    fn add(
        &mut self,
        id: ChannelId,
        ends: [u64; 2],
        new: &mut Vec<(ChannelRef, ChannelId)>,
    ) -> ChannelRef {
        let r = ChannelRef(self.channels.len() as u32);
        self.refs.insert(id.clone(), r);
        new.push((r, id.clone()));
        self.channels.push(Channel { id, ends });
        r
    }

    /// The channel of the connection whose end `end` is, with `peer` its
    /// other end (0: unknown at the time).
    fn socket(
        &mut self,
        kind: ChannelKind,
        end: u64,
        peer: u64,
        new: &mut Vec<(ChannelRef, ChannelId)>,
        renamed: &mut Vec<Renamed>,
    ) -> ChannelRef {
        let known = self.ends.get(&(kind, end)).copied();
        let known_peer = (peer != 0)
            .then(|| self.ends.get(&(kind, peer)).copied())
            .flatten();
        let r = match (known, known_peer) {
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => {
                let r = self.add(ChannelId::numeric(kind, end, peer), [end, peer], new);
                self.ends.insert((kind, end), r);
                if peer != 0 {
                    self.ends.insert((kind, peer), r);
                }
                return r;
            }
        };
        self.ends.entry((kind, end)).or_insert(r);
        if peer != 0 {
            self.ends.entry((kind, peer)).or_insert(r);
        }
        let channel = &mut self.channels[r.index()];
        for e in [end, peer] {
            if e != 0 && !channel.ends.contains(&e) {
                if let Some(slot) = channel.ends.iter_mut().find(|s| **s == 0) {
                    *slot = e;
                }
            }
        }
        let whole = ChannelId::numeric(kind, channel.ends[0], channel.ends[1]);
        // Both ends are named now: the channel takes its full name, unless
        // a channel of that name exists (both ends were first seen apart).
        if whole != channel.id && channel.ends[1] != 0 && !self.refs.contains_key(&whole) {
            self.refs.remove(&channel.id);
            self.refs.insert(whole.clone(), r);
            channel.id = whole.clone();
            renamed.push(Renamed {
                channel: r,
                id: whole,
            });
        }
        r
    }
}

/// The inode of a memfd channel, named `memfd:NAME:[INODE]`.
fn memfd_inode(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("memfd:")?.strip_suffix(']')?;
    rest[rest.rfind(":[")? + 2..].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_events::{EventKind, Source};

    fn on(end: u64, peer: u64) -> Event {
        let mut e = Event::new(1, 1, 1, Source::Ebpf, EventKind::MsgSend);
        e.channel = Some(ChannelId::numeric(ChannelKind::UnixStream, end, peer));
        e.endpoint = Some(end);
        e
    }

    #[test]
    fn a_connection_is_one_channel_from_its_first_byte() {
        let mut c = Channels::default();
        let (mut new, mut renamed) = (Vec::new(), Vec::new());
        // The client (end 10) sends before the server accepted: no peer.
        let first = c.resolve(&on(10, 0), &mut new, &mut renamed);
        // The server's accepted end (20) answers, naming both.
        let reply = c.resolve(&on(20, 10), &mut new, &mut renamed);
        let later = c.resolve(&on(10, 20), &mut new, &mut renamed);
        assert_eq!(first, reply);
        assert_eq!(first, later);
        assert_eq!(new.len(), 1, "one channel");
        let Resolved::Channel(r) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            renamed,
            [Renamed {
                channel: r,
                id: ChannelId::numeric(ChannelKind::UnixStream, 10, 20)
            }]
        );
        assert_eq!(c.ends(r), [10, 20]);
    }

    #[test]
    fn connections_and_other_objects_stay_apart() {
        let mut c = Channels::default();
        let (mut new, mut renamed) = (Vec::new(), Vec::new());
        let a = c.resolve(&on(10, 20), &mut new, &mut renamed);
        let b = c.resolve(&on(30, 40), &mut new, &mut renamed);
        let mut pipe = Event::new(1, 1, 1, Source::Ebpf, EventKind::MsgSend);
        pipe.channel = Some(ChannelId::numeric(ChannelKind::Pipe, 10, 0));
        let p = c.resolve(&pipe, &mut new, &mut renamed);
        assert_ne!(a, b);
        assert_ne!(a, p);
        assert_eq!(new.len(), 3);
        assert!(renamed.is_empty());
    }

    #[test]
    fn the_recorders_own_sockets_are_not_channels() {
        let mut c = Channels::default();
        let (mut new, mut renamed) = (Vec::new(), Vec::new());
        c.own_object(20);
        assert_eq!(
            c.resolve(&on(10, 20), &mut new, &mut renamed),
            Resolved::Own
        );
        c.own_object(34);
        let mut ring = Event::new(1, 1, 1, Source::Ebpf, EventKind::ShmWrite);
        ring.channel = Some(ChannelId::named(
            ChannelKind::Shm,
            "memfd:ipcscope-ring:[34]",
        ));
        assert_eq!(c.resolve(&ring, &mut new, &mut renamed), Resolved::Own);
        ring.channel = Some(ChannelId::named(ChannelKind::Shm, "memfd:mine:[35]"));
        assert!(matches!(
            c.resolve(&ring, &mut new, &mut renamed),
            Resolved::Channel(_)
        ));
        assert_eq!(new.len(), 1);
        assert_eq!(memfd_inode("memfd:a:[b]:[7]"), Some(7));
        assert_eq!(memfd_inode("/dev/shm/x"), None);
    }
}
