//! The live feed's vocabulary: what a recording tells its subscribers (the
//! TUI, `ipcscope report --live`), and what a replay rebuilds from a
//! database so the same screens can show it.
//!
//! A subscriber first gets a [`Frame::Hello`] and a full [`Snapshot`], then
//! [`Delta`]s that it applies with [`Snapshot::apply`]. Every entry in a
//! delta replaces the entry with the same key whole, so applying is
//! idempotent and order within a delta does not matter. A subscriber too
//! slow to take every delta is sent a fresh snapshot when it catches up:
//! it sees coarser updates, and ingest never waits for it.
//!
//! On the wire a frame is a little-endian `u32` length and that many bytes
//! of JSON ([`encode_frame`], [`decode_frame`]). JSON because the model uses
//! internally tagged enums ([`ChannelId`]) and because `socat` and `jq` can
//! read it; frames are small (aggregates, not events in bulk).

use serde::{Deserialize, Serialize};

use crate::{ChannelId, ChannelKind, Event};

/// Bumped when a frame's meaning changes; a subscriber refuses others.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest frame a subscriber accepts: a hostile or broken peer cannot
/// make it allocate more.
pub const MAX_FRAME: usize = 16 << 20;

/// Latency (or wait) percentiles in nanoseconds; all 0 when `count` is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One bar of a histogram: `count` values at most `upper_ns` (and above the
/// previous bucket's bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub upper_ns: u64,
    pub count: u64,
}

/// Rates over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub events_per_s: f64,
    pub messages_per_s: f64,
    pub bytes_per_s: f64,
}

/// What happened in one second of the session: the sparkline's points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Monotonic ns at the start of the second.
    pub start_ns: u64,
    pub events: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// Counts since the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub events: u64,
    pub messages: u64,
    pub bytes: u64,
    pub processes: u64,
    pub channels: u64,
    pub waits: u64,
    pub signals: u64,
    /// Events lost, all sources together; [`Snapshot::drops`] splits them.
    pub drops: u64,
    /// Events analysed (and counted above) but not yet stored: how far
    /// the disk is behind a live recording. 0 in a replay.
    #[serde(default)]
    pub unstored: u64,
}

/// A process seen in the session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exited: bool,
    /// The latest name it gave itself (prctl, or an argv rewrite such as
    /// `postgres: checkpointer`): what its operator knows it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Process {
    /// Its title if it gave itself one, else its comm.
    pub fn name(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.comm)
    }
}

/// Latency of one window, with its histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// The last second.
    pub last_1s: Percentiles,
    /// The last ten seconds.
    pub last_10s: Percentiles,
    /// The whole session.
    pub session: Percentiles,
    /// The session's histogram, log-spaced buckets, empty ones left out.
    pub histogram: Vec<Bucket>,
}

/// One recent message on a channel (the drill-down's list).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSample {
    pub sent_ns: u64,
    pub latency_ns: u64,
    pub size: u64,
    pub sender_pid: u32,
    pub receiver_pid: u32,
    /// The first bytes, only when payload capture was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Vec<u8>>,
}

/// Everything known about one IPC object that carries messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// `channels.id` in the session's database: the key deltas replace by.
    pub id: i64,
    pub channel: ChannelId,
    pub senders: Vec<u32>,
    pub receivers: Vec<u32>,
    /// Who sent to whom: the (sender, receiver) pids of its paired
    /// messages, in the order first seen. A socket's two ends both send and
    /// receive, and only these say which way each message went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<(u32, u32)>,
    pub messages: u64,
    pub bytes: u64,
    pub rate_1s: Rates,
    pub rate_10s: Rates,
    pub latency: Latency,
    /// Messages sent and not yet received, where that can be known.
    pub queue_depth: Option<u64>,
    /// The newest paired messages, oldest first (a bounded tail).
    pub recent: Vec<MessageSample>,
}

/// Waits on one semaphore, futex, lock or blocking read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStats {
    /// `channels.id`: the key deltas replace by.
    pub id: i64,
    pub channel: ChannelId,
    pub waits: u64,
    /// Threads blocked on it right now.
    pub waiting_now: u32,
    pub total_ns: u64,
    pub latency: Latency,
    /// The processes that have waited on it, in the order first seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiters: Vec<u32>,
    /// The processes holding a count of it now. Only a semaphore or lock
    /// used as a lock has holders: one posted by a thread that holds no
    /// count is a signal, and whoever last took it holds nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
}

/// Signals from one process to another, by number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalStats {
    /// 0 when the kernel sent it (a timer, a child's end, a fault, a
    /// write to a closed pipe): no process did.
    pub sender_pid: u32,
    pub target_pid: u32,
    pub signo: u32,
    pub count: u64,
    pub delivered: u64,
    /// Generate to deliver.
    pub latency: Percentiles,
    /// Why the kernel sent it, when it did: `timer`, `child`, `fault`,
    /// `pipe` or `kernel` (as `signals.cause`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl SignalStats {
    /// The key deltas replace by.
    pub fn key(&self) -> (u32, u32, u32) {
        (self.sender_pid, self.target_pid, self.signo)
    }
}

/// An IPC object something waits for, as `deadlocks.cycle` names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// `channels.id`, when the object is in the database.
    pub channel_id: Option<i64>,
    pub kind: ChannelKind,
    pub name: String,
}

/// One thread of a deadlock cycle; the cycle's next member holds (or is the
/// only possible sender on) what this one waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleMember {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub waits_for: Resource,
    /// The other threads of this process that could have ended a wait in
    /// the cycle but were idle (asleep, in a timed wait, blocked on
    /// something else) when it was confirmed: not blocked in the cycle,
    /// and not counted as able to break it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_threads: Vec<u32>,
}

/// A cycle of threads each waiting for the next, blocked past the threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlock {
    /// `deadlocks.id` once stored; the key deltas replace by.
    pub id: i64,
    pub detected_ns: u64,
    /// Set when the cycle broke (a process killed, a timeout).
    pub resolved_ns: Option<u64>,
    pub cycle: Vec<CycleMember>,
}

/// Two locks taken in opposite orders by different threads: a deadlock
/// waiting to happen, even if this run did not hang.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOrderInversion {
    /// Held while `second` was taken by `first_pid`...
    pub first: Resource,
    pub second: Resource,
    pub first_pid: u32,
    /// ...and `second` held while `first` was taken by `second_pid`.
    pub second_pid: u32,
    /// When the second order was first seen: the inversion was found.
    pub seen_ns: u64,
    /// When the first order was first seen.
    #[serde(default)]
    pub first_seen_ns: u64,
}

/// Events lost by one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCount {
    /// `drops.source`: `ebpf_ring`, `lib_ring`, `ingest`, `decode`.
    pub source: String,
    pub count: u64,
}

/// The whole state of a session at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub session_id: i64,
    pub session_name: String,
    /// Whether a recording is still feeding this session.
    pub live: bool,
    /// Monotonic ns when the session started, and of this state.
    pub started_ns: u64,
    pub now_ns: u64,
    pub totals: Totals,
    pub rate_1s: Rates,
    /// The last 60 seconds, oldest first.
    pub seconds: Vec<Second>,
    pub processes: Vec<Process>,
    pub channels: Vec<ChannelStats>,
    pub waits: Vec<WaitStats>,
    pub signals: Vec<SignalStats>,
    pub deadlocks: Vec<Deadlock>,
    pub inversions: Vec<LockOrderInversion>,
    pub drops: Vec<DropCount>,
    /// The newest events, oldest first (at most [`Snapshot::RECENT_EVENTS`]).
    pub recent_events: Vec<Event>,
}

/// What changed since the previous frame: whole entries, replaced by key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub live: bool,
    pub now_ns: u64,
    pub totals: Totals,
    pub rate_1s: Rates,
    /// Seconds that are new or still filling (the newest replaces the last).
    pub seconds: Vec<Second>,
    pub processes: Vec<Process>,
    pub channels: Vec<ChannelStats>,
    pub waits: Vec<WaitStats>,
    pub signals: Vec<SignalStats>,
    pub deadlocks: Vec<Deadlock>,
    pub inversions: Vec<LockOrderInversion>,
    /// All drop counts (a handful of sources, so always whole).
    pub drops: Vec<DropCount>,
    /// Events since the previous frame, oldest first.
    pub events: Vec<Event>,
}

/// One message of the live feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Frame {
    /// First frame on a connection.
    Hello {
        version: u32,
        session_id: i64,
    },
    Snapshot(Box<Snapshot>),
    Delta(Box<Delta>),
    /// The recording ended; nothing follows.
    End {
        exit_status: Option<i32>,
    },
}

impl Snapshot {
    /// How many recent events a snapshot keeps.
    pub const RECENT_EVENTS: usize = 2000;
    /// How many seconds of history a snapshot keeps.
    pub const SECONDS: usize = 60;

    /// Brings this state up to date with a delta.
    pub fn apply(&mut self, delta: Delta) {
        self.live = delta.live;
        self.now_ns = delta.now_ns;
        self.totals = delta.totals;
        self.rate_1s = delta.rate_1s;
        for second in delta.seconds {
            match self.seconds.last_mut() {
                Some(last) if last.start_ns == second.start_ns => *last = second,
                Some(last) if last.start_ns > second.start_ns => {}
                _ => self.seconds.push(second),
            }
        }
        trim_front(&mut self.seconds, Self::SECONDS);
        replace_by(&mut self.processes, delta.processes, |p| p.pid);
        replace_by(&mut self.channels, delta.channels, |c| c.id);
        replace_by(&mut self.waits, delta.waits, |w| w.id);
        replace_by(&mut self.signals, delta.signals, SignalStats::key);
        replace_by(&mut self.deadlocks, delta.deadlocks, |d| d.id);
        replace_by(&mut self.inversions, delta.inversions, |i| {
            (i.first.clone(), i.second.clone())
        });
        self.drops = delta.drops;
        self.recent_events.extend(delta.events);
        trim_front(&mut self.recent_events, Self::RECENT_EVENTS);
    }

    /// Deadlocks that have not resolved.
    pub fn active_deadlocks(&self) -> impl Iterator<Item = &Deadlock> {
        self.deadlocks.iter().filter(|d| d.resolved_ns.is_none())
    }
}

/// Replaces entries whose key matches an incoming one, appends the rest.
fn replace_by<T, K: PartialEq>(have: &mut Vec<T>, incoming: Vec<T>, key: impl Fn(&T) -> K) {
    for new in incoming {
        match have.iter_mut().find(|old| key(old) == key(&new)) {
            Some(old) => *old = new,
            None => have.push(new),
        }
    }
}

fn trim_front<T>(v: &mut Vec<T>, keep: usize) {
    if v.len() > keep {
        v.drain(..v.len() - keep);
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("live-feed frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("live-feed frame is not valid: {0}")]
    Malformed(serde_json::Error),
}

/// A frame as it goes on the wire: length, then JSON.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut out = vec![0; 4];
    // Serialising these plain structs to a Vec cannot fail: no maps with
    // non-string keys, no I/O.
    serde_json::to_writer(&mut out, frame).expect("live frames always serialise");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// The length a frame header announces, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// A frame's JSON body (without its length header).
pub fn decode_frame(body: &[u8]) -> Result<Frame, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    serde_json::from_slice(body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A subscriber reads whatever a broken or hostile peer sends:
        /// decoding it is an error or a frame, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = frame_len(bytes.get(..4).map_or([0; 4], |h| h.try_into().unwrap()));
            let _ = decode_frame(&bytes);
        }

        /// Valid JSON of the wrong shape is an error too, not a panic.
        #[test]
        fn mangled_frames_are_errors_or_frames(cut in 0usize..400, flip in any::<u8>()) {
            let mut bytes = encode_frame(&Frame::Snapshot(Box::new(Snapshot {
                channels: vec![channel(1, 3)],
                ..Snapshot::default()
            })));
            let body = &mut bytes[4..];
            let at = cut % body.len();
            body[at] ^= flip;
            let _ = decode_frame(body);
            let _ = decode_frame(&body[..at]);
        }
    }

    fn channel(id: i64, messages: u64) -> ChannelStats {
        ChannelStats {
            id,
            channel: ChannelId::named(ChannelKind::IpclibChannel, format!("c{id}")),
            senders: vec![1],
            receivers: vec![2],
            pairs: vec![(1, 2)],
            messages,
            bytes: messages * 64,
            rate_1s: Rates::default(),
            rate_10s: Rates::default(),
            latency: Latency::default(),
            queue_depth: Some(0),
            recent: Vec::new(),
        }
    }

    #[test]
    fn deltas_replace_entries_by_key_and_append_new_ones() {
        let mut s = Snapshot {
            channels: vec![channel(1, 10), channel(2, 20)],
            ..Snapshot::default()
        };
        s.apply(Delta {
            channels: vec![channel(2, 25), channel(3, 1)],
            seconds: vec![Second {
                start_ns: 5,
                messages: 1,
                ..Second::default()
            }],
            ..Delta::default()
        });
        s.apply(Delta {
            seconds: vec![Second {
                start_ns: 5,
                messages: 7,
                ..Second::default()
            }],
            ..Delta::default()
        });
        let counts: Vec<_> = s.channels.iter().map(|c| (c.id, c.messages)).collect();
        assert_eq!(counts, [(1, 10), (2, 25), (3, 1)]);
        assert_eq!(
            s.seconds.len(),
            1,
            "a filling second is replaced, not added"
        );
        assert_eq!(s.seconds[0].messages, 7);
    }

    #[test]
    fn history_and_events_stay_bounded() {
        let mut s = Snapshot::default();
        for i in 0..(Snapshot::SECONDS as u64 + 10) {
            s.apply(Delta {
                seconds: vec![Second {
                    start_ns: i,
                    ..Second::default()
                }],
                events: vec![
                    Event::new(i, 1, 1, crate::Source::Lib, crate::EventKind::MsgSend);
                    100
                ],
                ..Delta::default()
            });
        }
        assert_eq!(s.seconds.len(), Snapshot::SECONDS);
        assert_eq!(s.seconds[0].start_ns, 10, "the oldest seconds go first");
        assert_eq!(s.recent_events.len(), Snapshot::RECENT_EVENTS);
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_errors() {
        let frame = Frame::Snapshot(Box::new(Snapshot {
            session_id: 7,
            channels: vec![channel(1, 3)],
            ..Snapshot::default()
        }));
        let bytes = encode_frame(&frame);
        let len = frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(decode_frame(&bytes[4..]).unwrap(), frame);

        assert!(matches!(
            frame_len((MAX_FRAME as u32 + 1).to_le_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            decode_frame(b"{\"frame\":\"nope\"}"),
            Err(FrameError::Malformed(_))
        ));
    }
}
