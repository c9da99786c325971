//! ipc-lib: the IPC library applications link (channels, shared-memory
//! regions, semaphores, signals, request/response), whose every operation
//! is traced exactly into ipcscope.
//!
//! Tracing sits in [`trace`]: each operation writes one record into a
//! per-process shared-memory ring that a running `ipcscope record` maps, so
//! no event costs a syscall, and with no recorder attached an event costs
//! one relaxed atomic load.
//!
//! Every object is a named shared-memory object (see `shm`), so they share
//! one [`OpenError`] and one [`remove`].

#[cfg(feature = "tokio")]
mod asyncio;
pub mod channel;
pub mod region;
pub mod rpc;
#[cfg(feature = "tokio")]
mod rt;
pub mod sem;
mod shm;
pub mod signal;
pub mod socket;
mod sys;
pub mod trace;
pub mod transport;

pub use channel::{remove, OpenError, Receiver, Sender};
pub use region::Region;
pub use sem::Semaphore;
pub use trace::set_role;
