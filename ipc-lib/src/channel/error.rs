//! One error type per operation: opening an end, sending, receiving.

use std::io;
use std::time::Duration;

use super::layout::Mode;

/// Why a [`Sender`](super::Sender), a [`Receiver`](super::Receiver), a
/// [`Region`](crate::region::Region) or a
/// [`Semaphore`](crate::sem::Semaphore) could not be created or opened.
/// Each is a named shared-memory object, hence the shared error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name cannot be a shared-memory object name.
    #[error("invalid ipc-lib object name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The requested shape (channel capacity and message size, region
    /// size, semaphore count) cannot make the object.
    #[error("invalid layout for {name:?}: {reason}")]
    InvalidLayout { name: String, reason: String },
    /// `create` was asked for and the name is taken.
    #[error("{name:?} already exists")]
    AlreadyExists { name: String },
    /// `open` was asked for and there is no such name: nothing created it
    /// within `waited` (the builder's `wait`; zero when it did not wait).
    /// For a socket channel or an rpc server: nothing listens at the name.
    #[error("{name:?} does not exist{}", waited_note(*.waited))]
    NotFound { name: String, waited: Duration },
    /// The object belongs to another user, who could rewrite or truncate it
    /// at will.
    #[error("{name:?} belongs to uid {owner}, not to this process's uid {uid}")]
    NotOwner { name: String, owner: u32, uid: u32 },
    /// The object does not start with the magic of the `kind` asked for
    /// (`channel`, `region`, `semaphore`): it is something else, or was
    /// overwritten.
    #[error("{name:?} is not an ipc-lib {kind} (magic {found:#018x})")]
    BadMagic {
        name: String,
        kind: &'static str,
        found: u64,
    },
    /// The object was made by a build with another layout.
    #[error("{name:?} has layout version {found}, this library speaks version {expected}")]
    VersionMismatch {
        name: String,
        found: u32,
        expected: u32,
    },
    /// The existing object's shape differs from the one asked for.
    #[error("{name:?} exists with {field} {found}, but {expected} was asked for")]
    LayoutMismatch {
        name: String,
        field: &'static str,
        expected: u64,
        found: u64,
    },
    /// The existing channel is single-producer and multi-producer was asked
    /// for, or the reverse.
    #[error("channel {name:?} exists as {found}, but {expected} was asked for")]
    ModeMismatch {
        name: String,
        expected: Mode,
        found: Mode,
    },
    /// The header's fields contradict each other or the object's size.
    #[error("{name:?} has a corrupt header: {reason}")]
    CorruptHeader { name: String, reason: String },
    /// The name exists but its creator did not finish setting it up within
    /// `waited` (it may have died while doing so); for a socket channel or
    /// an rpc server, its receiver did not greet the connection in time.
    #[error("{name:?} was not initialized by its creator within {waited:?}")]
    NotInitialized { name: String, waited: Duration },
    /// The end asked for is taken by a live process.
    #[error("channel {name:?} already has a {role} attached (pid {pid})")]
    PeerAttached {
        name: String,
        role: &'static str,
        pid: u32,
    },
    /// Every sender slot of a multi-producer channel is held by a live
    /// process.
    #[error("channel {name:?} has no free sender slot (all {max} are taken)")]
    NoSenderSlot { name: String, max: usize },
    /// A system call failed.
    #[error("{op} failed for {name:?}")]
    Os {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The end of [`OpenError::NotFound`]'s message: how long the open waited.
fn waited_note(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" (nothing created it within {waited:?})")
    }
}

/// Why a message was not sent. Nothing of the message is in the channel
/// after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than the channel's maximum; it is refused
    /// whole, never truncated.
    #[error("message of {len} bytes exceeds the channel's maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The channel is full and the sender was built with
    /// [`WhenFull::Error`](super::WhenFull::Error), or `try_send` was used.
    #[error("channel is full")]
    Full,
    /// `send_timeout` waited its whole timeout for space.
    #[error("timed out waiting for space in the channel")]
    Timeout,
    /// The receiver closed its end or its process died.
    #[error("the receiver is gone")]
    Disconnected,
    /// The consumer position in shared memory is impossible; someone wrote
    /// over the header.
    #[error("channel state is corrupt: {0}")]
    Corrupt(#[source] Corruption),
    /// The value could not be serialized.
    #[error("could not encode the message")]
    Encode(#[source] CodecError),
    /// A system call failed in a way that says nothing about the peer
    /// (socket transport: e.g. the kernel is out of buffers).
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// `try_recv`: no message is waiting.
    #[error("channel is empty")]
    Empty,
    /// `recv_timeout`: no message arrived within the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The channel is empty and no sender is attached: each one closed its
    /// end or died. Messages sent before that are all delivered first.
    #[error("every sender is gone")]
    Disconnected,
    /// The next frame failed validation: it was damaged in shared memory.
    /// The channel cannot be read any further (the frame's length cannot be
    /// trusted, so the next frame cannot be found) and every later receive
    /// returns this error again. (A frame left unfinished by a sender that
    /// died is not damage: it is stepped over, see
    /// [`Receiver::skipped`](super::Receiver::skipped).)
    #[error("corrupt frame at position {pos}: {reason}")]
    Corrupt {
        pos: u64,
        #[source]
        reason: Corruption,
    },
    /// A typed receive got a message that does not decode as the type asked
    /// for. The message is consumed; the channel stays usable, and the next
    /// receive returns the next message.
    #[error("message {msg_id} does not decode as {type_name}")]
    Decode {
        /// The message's id, as its send and receive were traced.
        msg_id: u64,
        /// The type asked for (`std::any::type_name`, for people to read).
        type_name: &'static str,
        /// What the codec found wrong.
        #[source]
        source: CodecError,
    },
    /// A system call failed in a way that says nothing about the senders
    /// (socket transport: e.g. the kernel is out of memory).
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What exactly was wrong with a frame or a position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The other end's position is behind ours or more than a ring ahead.
    #[error("positions out of order: head {head}, tail {tail}, capacity {capacity}")]
    Positions { head: u64, tail: u64, capacity: u64 },
    /// The frame's commit word does not name this position.
    #[error("commit word {found:#018x} does not match the frame's position")]
    Commit { found: u64 },
    /// The frame's marker is wrong.
    #[error("frame marker {found:#010x} is not the frame marker")]
    Marker { found: u32 },
    /// The frame announces more bytes than any message may have.
    #[error("frame length {len} exceeds the maximum message size {max}")]
    Length { len: u64, max: u64 },
    /// The frame runs past the data the producer published.
    #[error("frame of {size} bytes runs past the {available} published bytes")]
    Truncated { size: u64, available: u64 },
    /// The payload or the header words do not match the checksum.
    #[error("checksum mismatch: frame says {stored:#018x}, contents give {computed:#018x}")]
    Checksum { stored: u64, computed: u64 },
    /// Message id 0 is never issued.
    #[error("message id 0")]
    ZeroId,
    /// An rpc call's method name is empty, runs past its frame, or is not
    /// UTF-8.
    #[error("malformed method name in an rpc call")]
    MethodName,
}

/// The binary codec's error (postcard), kept opaque so the codec can change
/// without changing this API.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CodecError(#[from] postcard::Error);
