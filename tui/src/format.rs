//! What the screens show beyond the shared units: offsets, channel and
//! signal names, payloads. The units themselves (durations, sizes, rates,
//! counts, in at most about seven columns so a table fits an 80-column
//! terminal) are `ipc_events::units`, which `report` uses too.

pub use ipc_events::units::{bytes, bytes_per_s, count, duration_ns, per_s};

/// A latency or wait percentile `ns` out of `count` values, or `–` when
/// there were none (nothing paired in the window, or only one end of the
/// channel traced): unknown, never `0 ns`.
pub fn latency(count: u64, ns: u64) -> String {
    match count {
        0 => "–".to_owned(),
        _ => duration_ns(ns),
    }
}

/// A monotonic timestamp relative to the session's start: `"+12.345s"`.
/// Events from before the start (clock skew between sources) show as
/// negative rather than wrapping around.
pub fn offset(ts_ns: u64, start_ns: u64) -> String {
    let (sign, d) = if ts_ns >= start_ns {
        ('+', ts_ns - start_ns)
    } else {
        ('-', start_ns - ts_ns)
    };
    format!(
        "{sign}{}.{:03}s",
        d / 1_000_000_000,
        d % 1_000_000_000 / 1_000_000
    )
}

/// A channel for a table cell: its name first, since a narrow column cuts
/// the end off, then its kind: `"jobs (ipclib_channel)"`.
pub fn channel(c: &ipc_events::ChannelId) -> String {
    format!("{} ({})", c.name(), c.kind())
}

/// A payload prefix: printable ASCII as itself, anything else as `.`, the
/// way `hexdump -C` shows its right column. Control bytes from another
/// process must never reach the terminal.
pub fn payload(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_latency_is_unknown_not_zero() {
        assert_eq!(latency(0, 0), "–");
        assert_eq!(latency(3, 0), "0 ns");
        assert_eq!(latency(3, 1_500), "1.50 µs");
    }

    #[test]
    fn offsets_are_signed_and_millisecond_precise() {
        assert_eq!(offset(12_345_678_901, 0), "+12.345s");
        assert_eq!(offset(1_000, 2_000_000_000), "-1.999s");
    }

    #[test]
    fn payloads_have_no_control_bytes() {
        assert_eq!(payload(b"hi \x1b[2J\x00\xff!"), "hi .[2J..!");
    }
}
