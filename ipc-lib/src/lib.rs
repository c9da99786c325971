//! ipc-lib: the instrumented IPC library applications link (channels,
//! shared-memory regions, semaphores, signals, request/response), whose
//! every operation is traced exactly into ipcscope.
//!
//! Empty until its issue lands: nothing here yet, and nothing pretends.
