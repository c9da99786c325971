//! The event vocabulary of ipcscope.
//!
//! Every source (the eBPF probes, the ipc-lib event rings, the collector
//! itself) speaks in [`Event`]s, and every consumer (correlator, analyzers,
//! store, live feed, TUI) reads them. This crate holds that vocabulary and
//! nothing else: no I/O, so producers and consumers depend on it and not on
//! each other.
//!
//! [`raw`] is `no_std` and holds the `#[repr(C)]` records that cross the
//! kernel boundary and the ipc-lib ring. Everything else needs the `std`
//! feature, which the eBPF programs leave off.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod raw;

#[cfg(feature = "std")]
mod channel;
#[cfg(feature = "std")]
mod decode;
#[cfg(feature = "std")]
mod event;
#[cfg(feature = "std")]
pub mod live;
#[cfg(feature = "std")]
pub mod ring;
#[cfg(feature = "std")]
pub mod units;

#[cfg(feature = "std")]
pub use channel::{ChannelId, ChannelKind, UnknownChannelKind};
#[cfg(feature = "std")]
pub use decode::{decode, decode_all, decode_parts, encode, DecodeError};
#[cfg(feature = "std")]
pub use event::{Event, EventKind, Source, UnknownEventKind};
