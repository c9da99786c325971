//! The decoded event every consumer reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::channel::{coded_enum, ChannelId};
use crate::raw::kind;

coded_enum! {
    /// What happened; the values of `events.kind`.
    EventKind, UnknownEventKind, "event kind" {
        MsgSend = kind::MSG_SEND, "msg_send";
        MsgRecv = kind::MSG_RECV, "msg_recv";
        ShmMap = kind::SHM_MAP, "shm_map";
        ShmUnmap = kind::SHM_UNMAP, "shm_unmap";
        ShmRead = kind::SHM_READ, "shm_read";
        ShmWrite = kind::SHM_WRITE, "shm_write";
        SemWaitBegin = kind::SEM_WAIT_BEGIN, "sem_wait_begin";
        SemWaitEnd = kind::SEM_WAIT_END, "sem_wait_end";
        SemPost = kind::SEM_POST, "sem_post";
        FutexWait = kind::FUTEX_WAIT, "futex_wait";
        FutexWake = kind::FUTEX_WAKE, "futex_wake";
        LockAcquire = kind::LOCK_ACQUIRE, "lock_acquire";
        LockRelease = kind::LOCK_RELEASE, "lock_release";
        SignalGenerate = kind::SIGNAL_GENERATE, "signal_generate";
        SignalDeliver = kind::SIGNAL_DELIVER, "signal_deliver";
        SignalHandle = kind::SIGNAL_HANDLE, "signal_handle";
        ProcessStart = kind::PROCESS_START, "process_start";
        ProcessExec = kind::PROCESS_EXEC, "process_exec";
        ProcessExit = kind::PROCESS_EXIT, "process_exit";
        Drop = kind::DROP, "drop";
        RecvWaitBegin = kind::RECV_WAIT_BEGIN, "recv_wait_begin";
        RecvWaitEnd = kind::RECV_WAIT_END, "recv_wait_end";
        ProcessTitle = kind::PROCESS_TITLE, "process_title";
        FutexWaitBegin = kind::FUTEX_WAIT_BEGIN, "futex_wait_begin";
    }
}

impl EventKind {
    /// Kinds that must name the IPC object they touched.
    pub const fn needs_channel(self) -> bool {
        matches!(
            self,
            EventKind::MsgSend
                | EventKind::MsgRecv
                | EventKind::ShmMap
                | EventKind::ShmUnmap
                | EventKind::ShmRead
                | EventKind::ShmWrite
                | EventKind::SemWaitBegin
                | EventKind::SemWaitEnd
                | EventKind::SemPost
                | EventKind::FutexWait
                | EventKind::FutexWaitBegin
                | EventKind::FutexWake
                | EventKind::LockAcquire
                | EventKind::LockRelease
                | EventKind::RecvWaitBegin
                | EventKind::RecvWaitEnd
        )
    }
}

/// Where an event came from; the values of `events.source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An ipc-lib process's event ring: exact, with message ids.
    Lib,
    /// The eBPF probes: unmodified processes.
    Ebpf,
    /// The collector itself (drop records, process bookkeeping).
    Collector,
}

impl Source {
    pub const ALL: &'static [Source] = &[Source::Lib, Source::Ebpf, Source::Collector];

    /// The code stored in `events.source_code`.
    pub const fn code(self) -> u8 {
        match self {
            Source::Lib => 1,
            Source::Ebpf => 2,
            Source::Collector => 3,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Lib => "lib",
            Source::Ebpf => "ebpf",
            Source::Collector => "collector",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened, from any source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds: the clock the kernel probes see.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The task's command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    pub source: Source,
    pub kind: EventKind,
    /// The IPC object touched, for kinds that touch one.
    pub channel: Option<ChannelId>,
    /// Bytes moved (messages, accesses) or events counted (drops).
    pub size: u64,
    /// The id carried in an ipc-lib frame, which pairs a receive with its
    /// send exactly.
    pub msg_id: Option<u64>,
    /// Return value, or a negative errno.
    pub result: i64,
    /// How long a blocking call blocked.
    pub duration_ns: Option<u64>,
    /// Kind-specific value; see [`crate::raw::kind`].
    pub aux: u64,
    /// The process a signal was sent to (`signal_generate`; the raw
    /// record's `obj`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// For a `signal_generate` from the probes: the signal's `si_code`,
    /// which says whether a process sent it (`SI_USER` 0, `SI_TKILL` -6,
    /// `SI_QUEUE` -1...) or the kernel did (`SI_KERNEL` 0x80, `SI_TIMER`
    /// -2, positive codes such as `CLD_EXITED`): only in the first case
    /// is the event's `pid` its sender. `None` when unknown (ipc-lib's
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub si_code: Option<i32>,
    /// For an event on a socket: the inode of the end it went through. The
    /// channel names both ends in a fixed order, so this is what tells the
    /// two directions apart (the raw record's `obj`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u64>,
    /// A path the event names that is not an IPC object: the program a
    /// process executed, or a process's new title (`process_title`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The first bytes of the message, only when payload capture was asked
    /// for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Vec<u8>>,
    /// For a `recv_wait_begin`: every thread (pid, tid) that could end the
    /// wait by sending, as the collector found them in `/proc` when it saw
    /// the wait: the threads of the processes holding the other end open
    /// for writing. Empty when anyone might send (a queue, an unconnected
    /// datagram socket). Analysis input, not stored in `events`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releasers: Vec<(u32, u32)>,
    /// For a `recv_wait_begin`: the other threads of those processes that
    /// were idle when the collector looked (asleep, in a timed wait, or
    /// blocked in a call the probes do not follow), left out of
    /// `releasers`: they do not keep the wait from being part of a
    /// deadlock, and a deadlock through it names them. Analysis input,
    /// not stored in `events`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_releasers: Vec<(u32, u32)>,
}

impl Event {
    /// An event with the given identity and no object, size or result; the
    /// starting point for sources that fill in the rest.
    pub fn new(ts_ns: u64, pid: u32, tid: u32, source: Source, kind: EventKind) -> Self {
        Event {
            ts_ns,
            pid,
            tid,
            comm: String::new(),
            source,
            kind,
            channel: None,
            size: 0,
            msg_id: None,
            result: 0,
            duration_ns: None,
            aux: 0,
            target_pid: None,
            si_code: None,
            endpoint: None,
            path: None,
            payload: None,
            releasers: Vec::new(),
            idle_releasers: Vec::new(),
        }
    }
}
