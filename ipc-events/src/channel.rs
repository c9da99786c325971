//! IPC objects: what a message, wait or access went through.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::raw::{chan, SYSV_KEY_UNKNOWN};

/// Defines an enum together with its raw code and its stable name, once, so
/// the three can never drift apart.
macro_rules! coded_enum {
    ($(#[$meta:meta])* $name:ident, $err:ident, $what:literal {
        $($(#[$vmeta:meta])* $variant:ident = $code:expr, $text:literal;)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        #[doc = concat!("A raw ", $what, " code or name that this build does not know.")]
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        #[error("unknown {what} {value:?}", what = $what, value = self.0)]
        pub struct $err(pub String);

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The raw code used in [`crate::raw::RawEvent`].
            pub const fn code(self) -> u16 {
                match self { $($name::$variant => $code,)+ }
            }

            /// The stable name stored in the database and shown to users.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The variant for a raw code.
            pub fn from_code(code: u16) -> Result<Self, $err> {
                match code {
                    $(c if c == $code => Ok($name::$variant),)+
                    other => Err($err(other.to_string())),
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($err(other.to_owned())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use coded_enum;

coded_enum! {
    /// The kind of an IPC object; the values of `channels.kind`.
    ChannelKind, UnknownChannelKind, "channel kind" {
        Pipe = chan::PIPE, "pipe";
        Fifo = chan::FIFO, "fifo";
        UnixStream = chan::UNIX_STREAM, "unix_stream";
        UnixDgram = chan::UNIX_DGRAM, "unix_dgram";
        UnixSeqpacket = chan::UNIX_SEQPACKET, "unix_seqpacket";
        TcpLoopback = chan::TCP_LOOPBACK, "tcp_loopback";
        Mq = chan::MQ, "mq";
        SysvMsg = chan::SYSV_MSG, "sysv_msg";
        Shm = chan::SHM, "shm";
        Sem = chan::SEM, "sem";
        SysvSem = chan::SYSV_SEM, "sysv_sem";
        Futex = chan::FUTEX, "futex";
        IpclibChannel = chan::IPCLIB_CHANNEL, "ipclib_channel";
        IpclibShm = chan::IPCLIB_SHM, "ipclib_shm";
        IpclibSem = chan::IPCLIB_SEM, "ipclib_sem";
        SysvShm = chan::SYSV_SHM, "sysv_shm";
        IpclibBroadcast = chan::IPCLIB_BROADCAST, "ipclib_broadcast";
        IpclibQueue = chan::IPCLIB_QUEUE, "ipclib_queue";
    }
}

impl ChannelKind {
    /// Socket kinds: identified by the inodes (or ports) of both ends.
    pub const fn is_socket(self) -> bool {
        matches!(
            self,
            ChannelKind::UnixStream
                | ChannelKind::UnixDgram
                | ChannelKind::UnixSeqpacket
                | ChannelKind::TcpLoopback
        )
    }

    /// Kinds whose identity is a name string rather than numbers.
    pub const fn is_named(self) -> bool {
        matches!(
            self,
            ChannelKind::Mq
                | ChannelKind::Shm
                | ChannelKind::Sem
                | ChannelKind::IpclibChannel
                | ChannelKind::IpclibShm
                | ChannelKind::IpclibSem
                | ChannelKind::IpclibBroadcast
                | ChannelKind::IpclibQueue
        )
    }
}

/// The identity of one IPC object.
///
/// Two events touch the same object exactly when their `ChannelId`s are
/// equal, so constructors canonicalise: both ends of a socket pair give the
/// same id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelId {
    /// Identified by numbers (inodes, keys, addresses, ports).
    Numeric {
        #[serde(rename = "type")]
        kind: ChannelKind,
        a: u64,
        b: u64,
    },
    /// Identified by a name.
    Named {
        #[serde(rename = "type")]
        kind: ChannelKind,
        name: String,
    },
}

impl ChannelId {
    /// A numerically identified object. Socket-like kinds are symmetric, so
    /// the pair is ordered to make both ends agree.
    pub fn numeric(kind: ChannelKind, a: u64, b: u64) -> Self {
        let (a, b) = if kind.is_socket() && b != 0 && b < a {
            (b, a)
        } else {
            (a, b)
        };
        ChannelId::Numeric { kind, a, b }
    }

    /// A named object.
    pub fn named(kind: ChannelKind, name: impl Into<String>) -> Self {
        ChannelId::Named {
            kind,
            name: name.into(),
        }
    }

    pub fn kind(&self) -> ChannelKind {
        match self {
            ChannelId::Numeric { kind, .. } | ChannelId::Named { kind, .. } => *kind,
        }
    }

    /// The name shown to users and stored in `channels.name`: the object's
    /// own name where it has one, else the form `ls -l /proc/PID/fd` uses.
    pub fn name(&self) -> String {
        match self {
            ChannelId::Named { name, .. } => name.clone(),
            ChannelId::Numeric { kind, a, b } => match kind {
                ChannelKind::Pipe | ChannelKind::Fifo => format!("{kind}:[{a}]"),
                ChannelKind::UnixStream | ChannelKind::UnixDgram | ChannelKind::UnixSeqpacket => {
                    if *b == 0 {
                        format!("socket:[{a}]")
                    } else {
                        format!("socket:[{a}]<->[{b}]")
                    }
                }
                ChannelKind::TcpLoopback => format!("127.0.0.1:{a}<->127.0.0.1:{b}"),
                ChannelKind::SysvMsg | ChannelKind::SysvShm => {
                    format!("{} id={b}", sysv_key(*a))
                }
                ChannelKind::SysvSem => {
                    format!("{} id={} sem={}", sysv_key(*a), b & 0xffff_ffff, b >> 32)
                }
                ChannelKind::Futex if *b == 0 => format!("futex:{a:#x}"),
                ChannelKind::Futex => format!("futex:{a:#x}@{b}"),
                other => format!("{other}:{a}:{b}"),
            },
        }
    }
}

/// A SysV key as `ipcs` shows it, or `key=?` when the probes never learnt
/// it.
fn sysv_key(key: u64) -> String {
    if key == SYSV_KEY_UNKNOWN {
        "key=?".to_owned()
    } else {
        format!("key={key:#x}")
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_and_names_round_trip() {
        for kind in ChannelKind::ALL {
            assert_eq!(ChannelKind::from_code(kind.code()), Ok(*kind));
            assert_eq!(kind.as_str().parse::<ChannelKind>(), Ok(*kind));
        }
        assert!(ChannelKind::from_code(0).is_err());
        assert!("socket".parse::<ChannelKind>().is_err());
    }

    #[test]
    fn both_ends_of_a_socket_pair_are_one_channel() {
        let a = ChannelId::numeric(ChannelKind::UnixStream, 10, 20);
        let b = ChannelId::numeric(ChannelKind::UnixStream, 20, 10);
        assert_eq!(a, b);
        assert_eq!(a.name(), "socket:[10]<->[20]");
        // Pipes are not symmetric: a and b mean different things there.
        assert_ne!(
            ChannelId::numeric(ChannelKind::SysvMsg, 2, 1),
            ChannelId::numeric(ChannelKind::SysvMsg, 1, 2)
        );
    }

    #[test]
    fn names_follow_proc_fd_forms() {
        assert_eq!(
            ChannelId::numeric(ChannelKind::Pipe, 4242, 0).name(),
            "pipe:[4242]"
        );
        assert_eq!(
            ChannelId::named(ChannelKind::Mq, "/jobs").to_string(),
            "mq /jobs"
        );
        assert_eq!(
            ChannelId::numeric(ChannelKind::SysvSem, 0x5e7, 3 | (2 << 32)).name(),
            "key=0x5e7 id=3 sem=2"
        );
        assert_eq!(
            ChannelId::numeric(ChannelKind::SysvMsg, SYSV_KEY_UNKNOWN, 9).name(),
            "key=? id=9"
        );
    }
}
