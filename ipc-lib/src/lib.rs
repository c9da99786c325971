//! ipc-lib: the IPC library applications link (channels, broadcasts, work
//! queues, shared-memory regions, semaphores, signals, request/response), whose every operation
//! is traced exactly into ipcscope.
//!
//! Tracing sits in [`trace`]: each operation writes one record into a
//! per-process shared-memory ring that a running `ipcscope record` maps, so
//! no event costs a syscall, and with no recorder attached an event costs
//! one relaxed atomic load.
//!
//! Every object is a named shared-memory object (see `shm`), so they share
//! one [`OpenError`] and one [`remove`]. Every `open` of an object another
//! process creates (channel ends, regions, semaphores, socket senders,
//! rpc clients) waits for it, up to [`DEFAULT_OPEN_WAIT`] unless its
//! builder's `wait` says otherwise (see `patience`): processes start in
//! no particular order. With the `tokio` feature each such open has an
//! async form (`open_async`, `Client::connect_async`) that waits as long,
//! with the same errors, without blocking a runtime thread. And every
//! object's name is removed when the handle
//! that created it is dropped, unless its builder's `unlink_on_drop(false)`
//! says otherwise: a name outliving its creator is a file left in
//! /dev/shm that makes the next run's `create` fail (`AlreadyExists`),
//! while the processes still using the object lose nothing (their
//! mappings stay valid).

#[cfg(feature = "tokio")]
mod asyncio;
pub mod broadcast;
pub mod channel;
mod codec;
mod patience;
pub mod queue;
pub mod region;
pub mod rpc;
#[cfg(feature = "tokio")]
mod rt;
pub mod select;
pub mod sem;
mod shm;
pub mod signal;
mod slots;
pub mod socket;
mod spin;
mod sys;
pub mod trace;
pub mod transport;

pub use channel::{remove, OpenError, Receiver, Sender};
pub use patience::DEFAULT_OPEN_WAIT;
pub use region::Region;
pub use sem::Semaphore;
pub use trace::set_role;
pub use transport::{TypedReceiver, TypedSender};

/// The README's Rust snippets (its "Tracing your own programs with
/// ipc-lib" section), compiled and run as doc tests of this crate, so that
/// none of them can stop compiling or stop being true unnoticed.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeSnippets;
