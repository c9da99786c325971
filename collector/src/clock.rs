//! Clocks: events carry CLOCK_MONOTONIC nanoseconds, the clock
//! `bpf_ktime_get_ns` reads, so user-space stamps must use it too.

use std::time::SystemTime;

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock now as RFC 3339 UTC with milliseconds, for `sessions`.
pub fn wall_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
