//! ipc-lib's integration tests: one binary (see STYLE.md), real processes.
//!
//! Tests that need a second process re-execute this binary with
//! `--exact child::role_entry` and an environment variable naming the role
//! (see `support::spawn`); in an ordinary run that test does nothing.

mod aio;
mod asyncio;
mod broadcast;
mod child;
mod corruption;
mod cross_process;
mod example;
mod loan;
mod open_layout;
mod patient;
mod props;
mod queue;
mod region;
mod rpc;
mod select;
mod sem;
mod sender_deaths;
mod signal;
mod socket;
mod support;
mod trace_lanes;
mod typed;
