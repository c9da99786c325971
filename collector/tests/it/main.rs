//! collector's integration tests: real SQLite files, real processes and,
//! where the machine allows it (CI runs as root), the real eBPF probes.

mod ebpf;
mod ebpf_truth;
mod lib_ring;
mod replay;
mod retention;
mod store;
