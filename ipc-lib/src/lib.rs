//! ipc-lib
