//! Analysis: what the recorded events mean, computed as they arrive.
//!
//! The writer stores events and pairs messages; the analysis turns that
//! stream into the aggregates the live feed serves and the rows `report`
//! shows: latency histograms over sliding windows ([`latency`]), rates
//! ([`throughput`]), the wait-for graph that finds deadlocks
//! ([`waitgraph`]) and lock-order inversions that are deadlocks waiting to
//! happen ([`lockorder`]). [`Analyzer`] ties them together and is the one
//! thing the recording pipeline calls.
//!
//! Everything here is plain state with no I/O, no clock and no async: time
//! is whatever the caller says, so tests replay synthetic sequences and get
//! exact answers.

mod analyzer;
pub mod latency;
pub mod lockorder;
pub mod throughput;
pub mod waitgraph;

pub use analyzer::{
    Analyzer, AnalyzerConfig, DeadlockChange, LatencyOf, ProcessRates, SessionLatency,
};

pub(crate) use crate::fast_map::FastMap;
