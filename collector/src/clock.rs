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

/// A process's start as `/proc/PID/stat` gives it (field 22, clock ticks
/// since boot on CLOCK_BOOTTIME) on the events' clock: CLOCK_MONOTONIC
/// nanoseconds, rounded down to the tick (10 ms where USER_HZ is 100, as
/// it is everywhere). The two clocks differ by the time the machine was
/// suspended, read now; `None` for a start before CLOCK_MONOTONIC's zero.
pub fn boot_ticks_to_monotonic_ns(ticks: u64) -> Option<u64> {
    // SAFETY: sysconf reads a constant of the system; no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0)?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every kernel this runs on (2.6.39 on).
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let suspended = boot_now.saturating_sub(monotonic_ns());
    let boot_ns = u128::from(ticks) * 1_000_000_000 / u128::from(hz);
    u64::try_from(boot_ns).ok()?.checked_sub(suspended)
}
