//! The collector: where events from every source meet.
//!
//! Sources (the eBPF probes in `ebpf`, later the ipc-lib rings) produce
//! [`ipc_events::Event`]s; the [`store`] writes them to SQLite through one
//! batching writer; `record` runs a command under observation and ties the
//! two together. Data flows one way: source -> writer -> database, and
//! nothing here reaches back into a source.

pub mod analysis;
pub mod clock;
pub mod correlate;
pub mod ebpf;
pub mod export;
mod fast_map;
pub mod lib_ring;
pub mod live;
pub mod notes;
pub mod platform;
pub mod privileges;
pub mod query;
pub mod record;
pub mod replay;
pub mod report;
pub mod sockdiag;
pub mod store;
mod time_order;
