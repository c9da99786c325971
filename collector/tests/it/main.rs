//! collector's integration tests: real SQLite files, real processes and,
//! where the machine allows it (CI runs as root), the real eBPF probes.

mod ebpf;
mod lib_ring;
mod store;
