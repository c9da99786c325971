//! The correlation stage: the one place that names channels and
//! processes and turns events into facts.
//!
//! Every event of a recording passes through one [`Correlator`], in time
//! order, whatever its source. It names the object the event touched (a
//! [`ChannelRef`]: one per IPC object, one per connection for sockets),
//! pairs sends with receives, wait begins with their ends, signal
//! generations with their deliveries, and follows processes; an
//! operation that both sources saw becomes one fact. What comes out, per
//! batch, is [`Facts`]: everything downstream (the store, the analysis,
//! and through them the report and the dashboard) consumes these facts
//! and pairs nothing itself.
//!
//! Pure: no I/O and no clock of its own, so it is tested on plain event
//! sequences.

mod channels;
mod lib_objects;
mod pairing;
mod waits;

use std::collections::{HashMap, VecDeque};

use ipc_events::raw::drop_source;

use crate::fast_map::FastMap;
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

pub use channels::{ChannelRef, Renamed};
pub use pairing::{
    awaits_delivery, kills_by_default, signal_result, FanOutPairer, Framing, IdPairer,
    MessagePairer, Paired, Side, SignalPairer, Unpaired, MAX_UNPAIRED, MAX_UNPAIRED_IDS, SIGKILL,
};
pub use waits::{Wait, WaitFact};

use channels::{Channels, Resolved};
use lib_objects::LibObjects;
use waits::Waits;

/// A generated signal, as the session's `signals` rows record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// Names the signal in its later delivery.
    pub id: u64,
    /// The process that sent it; None when the kernel did (timers,
    /// SIGCHLD, SIGPIPE, faults).
    pub sender: Option<u32>,
    pub target: u32,
    pub signo: u32,
    pub generated_ns: u64,
    /// Why the kernel sent it, when it did: `timer`, `child`, `fault`,
    /// `pipe` or `kernel`.
    pub cause: Option<&'static str>,
}

/// What a batch did to the session's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalFact {
    Generated(Signal),
    /// A signal generated earlier (perhaps in this batch) was delivered.
    Delivered {
        signal: Signal,
        delivered_ns: u64,
    },
}

/// What a batch did to the session's processes. A pid names one process
/// at a time: a start (or the first sight of a process whose start was
/// not seen) begins a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessFact {
    Started {
        pid: u32,
        ppid: Option<u32>,
        comm: Option<String>,
        exe: Option<String>,
        started_ns: Option<u64>,
    },
    /// The process ran a new program.
    Exec {
        pid: u32,
        comm: Option<String>,
        exe: Option<String>,
    },
    Exited {
        pid: u32,
        exited_ns: u64,
        /// As a shell reports it (128+N for a death by signal N), when
        /// the source knows it.
        status: Option<i32>,
    },
    /// The process renamed itself (prctl, or rewriting its argv as
    /// servers do).
    Titled { pid: u32, title: String, ts_ns: u64 },
}

/// Events lost before they reached the correlator, as `drops` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropFact {
    /// A `drops.source` name.
    pub source: &'static str,
    pub count: u64,
    pub ts_ns: u64,
}

/// One batch of facts.
#[derive(Debug, Default)]
pub struct Facts {
    /// The events to store, in time order. The recorder's own plumbing
    /// is left out.
    pub events: Vec<Event>,
    /// Each event's channel, index for index.
    pub channels: Vec<Option<ChannelRef>>,
    /// Whether each event is one source's sight of an operation that the
    /// facts count under another's (a socket message that ipc-lib also
    /// reported, a futex wait inside an ipc-lib wait), index for index:
    /// stored as seen, analysed once.
    pub shadowed: Vec<bool>,
    /// Channels first seen in this batch, in the order of their refs.
    pub new_channels: Vec<(ChannelRef, ChannelId)>,
    /// Channels whose identity grew (a socket's other end became known).
    pub renamed: Vec<Renamed>,
    pub messages: Vec<Paired<ChannelRef>>,
    /// Messages with one end known: their other end is not traced (or
    /// their events were lost). Sent ones as soon as that is certain (at
    /// the latest when the recording ends); received ones only where no
    /// sender was ever seen, so no byte is counted twice.
    pub one_ended: Vec<Unpaired<ChannelRef>>,
    /// Kernel objects found to carry an ipc-lib object, as (kernel
    /// object, ipc-lib object): a socket under an ipc-lib socket channel,
    /// the `/dev/shm` file of an ipc-lib channel, semaphore or region.
    /// What goes through them is that object's, already counted there.
    pub carried: Vec<(ChannelRef, ChannelRef)>,
    pub waits: Vec<WaitFact>,
    pub signals: Vec<SignalFact>,
    pub processes: Vec<ProcessFact>,
    pub drops: Vec<DropFact>,
}

/// How far apart ipc-lib's record of a signal send and the probes' sight
/// of the same `kill` may be stamped: ipc-lib stamps it just before the
/// call.
const SIGNAL_FUSE_NS: u64 = 10_000_000;
/// How many sends of one (thread, target, signo) one source reported
/// alone are kept for the other's record to fuse with (a program may call
/// `kill` itself as well as through ipc-lib).
const UNFUSED_SIGNALS_PER_SENDER: usize = 32;
/// Past this many (thread, target, signo) keys, those whose latest send
/// is older than [`UNFUSED_SIGNAL_HORIZON_NS`] are forgotten.
const MAX_UNFUSED_SIGNALS: usize = 1 << 16;
const UNFUSED_SIGNAL_HORIZON_NS: u64 = 10_000_000_000;

/// How close a probe-seen socket send or receive and ipc-lib's own record
/// of it are: ipc-lib stamps a send just before its `sendmsg` and a
/// receive just after its `recvmsg`, on the same thread.
const LIB_SOCKET_FUSE_NS: u64 = 1_000_000;

/// The correlation stage of one session.
#[derive(Debug)]
pub struct Correlator {
    /// The recorder's own process: its activity is not the user's.
    recorder_pid: Option<u32>,
    channels: Channels,
    messages: MessagePairer<(ChannelRef, u64)>,
    framed: IdPairer<ChannelRef>,
    broadcasts: FanOutPairer<ChannelRef>,
    waits: Waits,
    signals: SignalPairer<Signal>,
    next_signal: u64,
    /// Signal sends one source reported and the other has not, per
    /// (sending thread, target, signo), with their time: the same `kill`
    /// is one signal, whichever source's record is correlated first.
    unfused_signals: HashMap<(u32, u32, u32), VecDeque<(Source, u64)>>,
    /// Processes alive now.
    live: FastMap<u32, ()>,
    /// Processes that use ipc-lib: only their sockets may carry its
    /// channels.
    lib_pids: FastMap<u32, ()>,
    /// Per thread, its latest ipc-lib message and its latest probe-seen
    /// socket message not known to carry one: (time, channel, kind).
    lib_op: FastMap<u32, (u64, ChannelRef, EventKind)>,
    socket_op: FastMap<u32, (u64, ChannelRef, EventKind)>,
    /// Kernel objects that carry an ipc-lib object.
    carried: FastMap<ChannelRef, ChannelRef>,
    lib_objects: LibObjects,
    facts: Facts,
}

impl Correlator {
    pub fn new(recorder_pid: Option<u32>) -> Self {
        Correlator {
            recorder_pid,
            channels: Channels::default(),
            messages: MessagePairer::new(),
            framed: IdPairer::default(),
            broadcasts: FanOutPairer::default(),
            waits: Waits::default(),
            signals: SignalPairer::new(),
            next_signal: 0,
            unfused_signals: HashMap::new(),
            live: FastMap::default(),
            lib_pids: FastMap::default(),
            lib_op: FastMap::default(),
            socket_op: FastMap::default(),
            carried: FastMap::default(),
            lib_objects: LibObjects::default(),
            facts: Facts::default(),
        }
    }

    /// The socket or memfd of inode `inode` is the recorder's own.
    pub fn own_object(&mut self, inode: u64) {
        self.channels.own_object(inode);
    }

    /// Events were lost before they got here: byte positions of the
    /// channels seen so far no longer line up.
    pub fn lost(&mut self) {
        self.messages.lost();
        self.take_unpaired();
    }

    /// The recording ended: closes the last batch, in which every send
    /// and receive still waiting for its other side is a message with one
    /// end known.
    pub fn finish(&mut self) -> Facts {
        self.messages.finish();
        self.framed.finish(&mut self.facts.one_ended);
        self.broadcasts.finish(&mut self.facts.one_ended);
        self.take_unpaired();
        self.take()
    }

    fn take_unpaired(&mut self) {
        let unpaired = self.messages.take_unpaired();
        self.facts
            .one_ended
            .extend(unpaired.into_iter().map(|u| Unpaired {
                channel: u.channel.0,
                side: u.side,
                sent: u.sent,
                msg_id: u.msg_id,
            }));
    }

    /// Takes `event`, the next in time order.
    pub fn push(&mut self, event: Event) {
        if self.recorder_pid == Some(event.pid)
            && event.source == Source::Ebpf
            && !self.sent_by_the_kernel_to_another(&event)
        {
            return;
        }
        let facts = &mut self.facts;
        // A futex word in an ipc-lib object's memory is that object.
        let channel = match self.lib_objects.futex_owner(&event) {
            Some(lib) => Some(lib),
            None => match self
                .channels
                .resolve(&event, &mut facts.new_channels, &mut facts.renamed)
            {
                Resolved::Own => return,
                Resolved::None => None,
                Resolved::Channel(r) => Some(r),
            },
        };
        if let Some(link) = channel.and_then(|r| self.lib_objects.saw(&event, r)) {
            self.carry(link.0, link.1);
        }
        let mut shadowed = matches!(event.kind, EventKind::FutexWait | EventKind::FutexWaitBegin)
            && event.source == Source::Ebpf
            && self.waits.in_lib_wait(event.pid, event.tid);
        match event.kind {
            EventKind::MsgSend | EventKind::MsgRecv => {
                if self.waits.ends_receive(&event, channel) {
                    self.waits.event(&event, channel);
                }
                if let Some(r) = channel {
                    if self.carries_lib_message(&event, r) {
                        shadowed = true;
                    } else {
                        self.message(&event, r);
                    }
                }
            }
            EventKind::ProcessStart | EventKind::ProcessExec => self.process(&event),
            EventKind::ProcessExit => {
                self.process(&event);
                self.waits.process_exited(event.pid, event.ts_ns);
            }
            EventKind::ProcessTitle => {
                if let Some(title) = &event.path {
                    self.facts.processes.push(ProcessFact::Titled {
                        pid: event.pid,
                        title: title.clone(),
                        ts_ns: event.ts_ns,
                    });
                }
            }
            EventKind::SemWaitBegin
            | EventKind::SemWaitEnd
            | EventKind::SemPost
            | EventKind::FutexWaitBegin
            | EventKind::FutexWait
            | EventKind::FutexWake
            | EventKind::RecvWaitBegin
            | EventKind::RecvWaitEnd => self.waits.event(&event, channel),
            EventKind::SignalGenerate => self.signal_generated(&event),
            // A handler running is a delivery for sources that see no
            // delivery (ipc-lib alone); after a delivery it pairs with
            // nothing.
            EventKind::SignalDeliver | EventKind::SignalHandle => {
                if let Some(signal) = self.signals.delivered(event.pid, event.aux as u32) {
                    self.facts.signals.push(SignalFact::Delivered {
                        signal,
                        delivered_ns: event.ts_ns,
                    });
                }
            }
            EventKind::Drop => {
                if matches!(event.aux, drop_source::EBPF_RING | drop_source::DECODE) {
                    // Probe events were lost: positions in the channels
                    // seen so far no longer line up.
                    self.lost();
                }
                self.facts.drops.push(DropFact {
                    source: drop_source_name(event.aux),
                    count: event.size,
                    ts_ns: event.ts_ns,
                });
            }
            _ => {}
        }
        shadowed |= channel.is_some_and(|r| self.carried.contains_key(&r));
        self.facts.events.push(event);
        self.facts.channels.push(channel);
        self.facts.shadowed.push(shadowed);
    }

    /// Closes the batch and hands over its facts.
    pub fn take(&mut self) -> Facts {
        let mut facts = std::mem::take(&mut self.facts);
        facts.waits = self.waits.take();
        facts
    }

    /// Whether `event`, on channel `r`, is one ipc-lib also reported: a
    /// probe-seen message on a socket that carries an ipc-lib channel (or
    /// is found to now, from the thread's ipc-lib message beside it), or
    /// that ipc-lib message itself when the probes saw its socket first.
    fn carries_lib_message(&mut self, event: &Event, r: ChannelRef) -> bool {
        let kind = self.channels.id(r).kind();
        let close = |(at, _, k): &(u64, ChannelRef, EventKind)| {
            *k == event.kind && event.ts_ns.abs_diff(*at) <= LIB_SOCKET_FUSE_NS
        };
        if event.source == Source::Lib && kind == ChannelKind::IpclibChannel {
            self.lib_pids.insert(event.pid, ());
            match self.socket_op.remove(&event.tid).filter(close) {
                Some((_, socket, _)) => self.carry(socket, r),
                None => {
                    self.lib_op.insert(event.tid, (event.ts_ns, r, event.kind));
                }
            }
            return false;
        }
        if event.source != Source::Ebpf || !kind.is_socket() {
            return false;
        }
        if self.carried.contains_key(&r) {
            return true;
        }
        if !self.lib_pids.contains_key(&event.pid) {
            // Not an ipc-lib process (yet): its first socket message may
            // come before its first ipc-lib one, but the peer's send, seen
            // by ipc-lib first, links the socket before this matters.
            return false;
        }
        match self.lib_op.remove(&event.tid).filter(close) {
            Some((_, lib, _)) => {
                self.carry(r, lib);
                true
            }
            None => {
                self.socket_op
                    .insert(event.tid, (event.ts_ns, r, event.kind));
                false
            }
        }
    }

    fn carry(&mut self, socket: ChannelRef, lib: ChannelRef) {
        if self.carried.insert(socket, lib).is_none() {
            self.facts.carried.push((socket, lib));
        }
    }

    fn message(&mut self, event: &Event, r: ChannelRef) {
        let side = Side {
            pid: event.pid,
            tid: event.tid,
            ts_ns: event.ts_ns,
            size: event.size,
        };
        let send = event.kind == EventKind::MsgSend;
        if let Some(id) = event.msg_id {
            let (out, one_ended) = (&mut self.facts.messages, &mut self.facts.one_ended);
            // A broadcast's publish is received once per subscriber.
            let broadcast = event
                .channel
                .as_ref()
                .is_some_and(|c| c.kind() == ChannelKind::IpclibBroadcast);
            match (broadcast, send) {
                (true, true) => self.broadcasts.send(r, id, side, out, one_ended),
                (true, false) => self.broadcasts.recv(r, id, side, out, one_ended),
                (false, true) => self.framed.send(r, id, side, out, one_ended),
                (false, false) => self.framed.recv(r, id, side, out, one_ended),
            }
            return;
        }
        let Some((key, framing)) = self.direction(event, r) else {
            return;
        };
        let mut paired = Vec::new();
        if send {
            self.messages.send((r, key), framing, side, &mut paired);
        } else {
            self.messages.recv((r, key), framing, side, &mut paired);
        }
        self.facts
            .messages
            .extend(paired.into_iter().map(|p| Paired {
                channel: p.channel.0,
                send: p.send,
                recv: p.recv,
                msg_id: p.msg_id,
            }));
        self.take_unpaired();
    }

    /// Which direction of channel `r` a probe-seen send or receive belongs
    /// to, and how it frames messages. A socket's two directions are told
    /// apart by whether the sending end is the end first seen: a send
    /// knows its own end, and a receive that its sender is the other one,
    /// even before the peer has an inode (a client's first request, and
    /// its wait for the answer, both come before the server's accept).
    /// Pipes and FIFOs have one direction; message queues are keyed by
    /// priority (POSIX) or `mtype` (SysV), the event's `aux`: a queue is
    /// FIFO within each, whichever one a receiver asks for. None for what
    /// is not paired (an unconnected datagram socket's messages go to an
    /// address, whose other end is not known).
    fn direction(&self, event: &Event, r: ChannelRef) -> Option<(u64, Framing)> {
        if event.source != Source::Ebpf {
            return None;
        }
        let kind = event.channel.as_ref()?.kind();
        let framing = match kind {
            ChannelKind::Mq | ChannelKind::SysvMsg => return Some((event.aux, Framing::Records)),
            ChannelKind::Pipe | ChannelKind::Fifo => return Some((0, Framing::Bytes)),
            ChannelKind::UnixStream => Framing::Bytes,
            ChannelKind::UnixDgram | ChannelKind::UnixSeqpacket => Framing::Records,
            _ => return None,
        };
        let end = event.endpoint?;
        let [first, second] = self.channels.ends(r);
        if kind == ChannelKind::UnixDgram && second == 0 {
            return None;
        }
        let from_first = match event.kind {
            EventKind::MsgSend => end == first,
            _ => end != first,
        };
        Some((u64::from(from_first), framing))
    }

    fn process(&mut self, event: &Event) {
        let pid = event.pid;
        let comm = (!event.comm.is_empty()).then(|| event.comm.clone());
        let live = self.live.contains_key(&pid);
        let fact = match (event.kind, live) {
            // A start, or the first sight of a process whose start was not
            // seen.
            (EventKind::ProcessStart, _) | (EventKind::ProcessExec, false) => {
                let start = event.kind == EventKind::ProcessStart;
                self.live.insert(pid, ());
                ProcessFact::Started {
                    pid,
                    ppid: start.then_some(event.aux as u32),
                    comm,
                    exe: event.path.clone(),
                    started_ns: start.then_some(event.ts_ns),
                }
            }
            (EventKind::ProcessExec, true) => ProcessFact::Exec {
                pid,
                comm,
                exe: event.path.clone(),
            },
            (EventKind::ProcessExit, true) => {
                self.live.remove(&pid);
                self.signals.exited(pid);
                self.lib_objects.exited(pid);
                ProcessFact::Exited {
                    pid,
                    exited_ns: event.ts_ns,
                    // `result` says whether the source knew the status.
                    status: (event.result == 0).then(|| wait_status_to_shell(event.aux as i32)),
                }
            }
            // An exit of a process never seen starting: it predates
            // tracking, and its row would say nothing but its pid.
            _ => {
                if event.kind == EventKind::ProcessExit {
                    self.signals.exited(pid);
                }
                return;
            }
        };
        self.facts.processes.push(fact);
    }

    /// Whether `event` is the second record of a `kill` another source
    /// reported already. Either may be correlated first: ipc-lib stamps
    /// its record earlier, but its ring may be drained later than the
    /// reorder hold-back (a loaded machine), and a signal counted twice
    /// would also be delivered twice.
    fn fuses_signal(&mut self, event: &Event, target: u32, signo: u32) -> bool {
        if !matches!(event.source, Source::Ebpf | Source::Lib) {
            return false;
        }
        let key = (event.tid, target, signo);
        let sends = self.unfused_signals.entry(key).or_default();
        // The other source's closest record, if close enough.
        let twin = (sends.iter().enumerate())
            .filter(|(_, &(source, _))| source != event.source)
            .map(|(i, &(_, at))| (event.ts_ns.abs_diff(at), i))
            .min()
            .filter(|&(apart, _)| apart <= SIGNAL_FUSE_NS);
        if let Some((_, i)) = twin {
            sends.remove(i);
            return true;
        }
        if sends.len() == UNFUSED_SIGNALS_PER_SENDER {
            sends.pop_front();
        }
        sends.push_back((event.source, event.ts_ns));
        if self.unfused_signals.len() > MAX_UNFUSED_SIGNALS {
            // Senders quiet for a while: a late twin comes within the
            // hold-back's order, not seconds later.
            let horizon = event.ts_ns.saturating_sub(UNFUSED_SIGNAL_HORIZON_NS);
            self.unfused_signals
                .retain(|_, sends| sends.back().is_some_and(|&(_, at)| at >= horizon));
        }
        false
    }

    /// Whether `event` is a signal the kernel raised (a timer's, a
    /// child's exit) for a process other than the recorder while the
    /// recorder happened to be the current task: the user's, though its
    /// `pid` reads as the recorder's.
    fn sent_by_the_kernel_to_another(&self, event: &Event) -> bool {
        let (Some(target), Some(si_code)) = (event.target_pid, event.si_code) else {
            return false;
        };
        event.kind == EventKind::SignalGenerate
            && self.recorder_pid != Some(target)
            && kernel_cause(si_code, event.aux as u32, false).is_some()
    }

    fn signal_generated(&mut self, event: &Event) {
        let Some(target) = event.target_pid else {
            // Only the probes and ipc-lib make these, and both name the
            // target.
            return;
        };
        let signo = event.aux as u32;
        if self.fuses_signal(event, target, signo) {
            return;
        }
        self.next_signal += 1;
        let cause = event
            .si_code
            .and_then(|code| kernel_cause(code, signo, event.pid == target));
        let signal = Signal {
            id: self.next_signal,
            sender: cause.is_none().then_some(event.pid),
            target,
            signo,
            generated_ns: event.ts_ns,
            cause,
        };
        self.facts.signals.push(SignalFact::Generated(signal));
        self.signals.generated(target, signo, event.result, signal);
    }
}

/// Why the kernel sent a signal, from its `si_code`; None when a process
/// sent it (`kill`, `sigqueue`, `tgkill`). The kernel raises SIGPIPE
/// with no siginfo, which reads as sent by the writer to itself.
/// The causes [`kernel_cause`] names, as `signals.cause` stores them.
const CAUSES: [&str; 5] = ["timer", "child", "fault", "pipe", "kernel"];

/// A stored `signals.cause` as the cause it names; `None` for one this
/// build does not know (a newer ipcscope's).
pub fn signal_cause(stored: &str) -> Option<&'static str> {
    CAUSES.into_iter().find(|&c| c == stored)
}

fn kernel_cause(si_code: i32, signo: u32, to_itself: bool) -> Option<&'static str> {
    const SI_USER: i32 = 0;
    const SI_QUEUE: i32 = -1;
    const SI_TIMER: i32 = -2;
    const SI_TKILL: i32 = -6;
    const SIGPIPE: u32 = 13;
    const SIGCHLD: u32 = 17;
    const FAULTS: [u32; 5] = [4, 5, 7, 8, 11]; // ILL, TRAP, BUS, FPE, SEGV
    match si_code {
        SI_USER if signo == SIGPIPE && to_itself => Some("pipe"),
        SI_USER | SI_QUEUE | SI_TKILL => None,
        SI_TIMER => Some("timer"),
        code if code > 0 && signo == SIGCHLD => Some("child"),
        code if code > 0 && code != 0x80 && FAULTS.contains(&signo) => Some("fault"),
        0x80 if signo == 14 || signo == 26 || signo == 27 => Some("timer"),
        _ => Some("kernel"),
    }
}

/// A wait(2) status as a shell reports it: the exit code, or 128+N for a
/// death by signal N.
pub fn wait_status_to_shell(status: i32) -> i32 {
    match status & 0x7f {
        0 => (status >> 8) & 0xff,
        signo => 128 + signo,
    }
}

/// The `drops.source` name for a [`drop_source`] code.
pub fn drop_source_name(code: u64) -> &'static str {
    match code {
        drop_source::EBPF_RING => "ebpf_ring",
        drop_source::LIB_RING => "lib_ring",
        drop_source::INGEST => "ingest",
        drop_source::DECODE => "decode",
        drop_source::SENDER_DIED => "sender_died",
        drop_source::LAGGED => "lagged",
        drop_source::EBPF_SKIPPED => "ebpf_skipped",
        drop_source::REDELIVERED => "redelivered",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
