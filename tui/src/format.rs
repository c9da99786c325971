//! Human units for the screens: durations, byte sizes, rates and counts in
//! at most about seven columns, so a table fits an 80-column terminal.

/// A duration in nanoseconds: `"850 ns"`, `"1.2 µs"`, `"34.0 ms"`, `"2.50 s"`.
pub fn duration_ns(ns: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "µs")];
    for (scale, unit) in UNITS {
        if ns >= scale {
            return scaled(ns as f64 / scale as f64, unit);
        }
    }
    format!("{ns} ns")
}

/// A byte count: `"512 B"`, `"3.4 kB"`, `"1.0 GB"` (decimal units, as
/// throughput figures usually are).
pub fn bytes(n: u64) -> String {
    si(n as f64, "B")
}

/// A byte rate: `"3.4 MB/s"`.
pub fn bytes_per_s(rate: f64) -> String {
    format!("{}/s", si(rate, "B"))
}

/// A count: `"999"`, `"12.3k"`, `"4.5M"`.
pub fn count(n: u64) -> String {
    si(n as f64, "")
}

/// A rate of things per second, without the unit: `"0.5"`, `"120"`,
/// `"12.3k"`.
pub fn per_s(rate: f64) -> String {
    if rate > 0.0 && rate < 10.0 {
        // Small rates matter (one message a second is not zero).
        return format!("{rate:.1}");
    }
    si(rate, "")
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

/// A signal number as its name where it has a common one.
pub fn signal(signo: u32) -> String {
    let name = match signo {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        28 => "SIGWINCH",
        n if (34..=64).contains(&n) => return format!("SIGRTMIN+{}", n - 34),
        n => return format!("signal {n}"),
    };
    name.to_owned()
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

/// `v` scaled by thousands with a unit prefix.
fn si(v: f64, unit: &str) -> String {
    const PREFIXES: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let sep = if unit.is_empty() { "" } else { " " };
    if !v.is_finite() || v < 0.0 {
        // Rates come from another process; never print "NaN B/s".
        return format!("?{sep}{unit}");
    }
    for (scale, prefix) in PREFIXES {
        if v >= scale {
            let prefix = if unit.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}{unit}")
            };
            return scaled_sep(v / scale, sep, &prefix);
        }
    }
    format!("{}{sep}{unit}", v.round() as u64)
}

/// Three significant digits, so columns stay narrow.
fn scaled(v: f64, unit: &str) -> String {
    scaled_sep(v, " ", unit)
}

fn scaled_sep(v: f64, sep: &str, unit: &str) -> String {
    if v >= 100.0 {
        format!("{v:.0}{sep}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{sep}{unit}")
    } else {
        format!("{v:.2}{sep}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_the_largest_unit_that_fits() {
        assert_eq!(duration_ns(0), "0 ns");
        assert_eq!(duration_ns(850), "850 ns");
        assert_eq!(duration_ns(1_234), "1.23 µs");
        assert_eq!(duration_ns(34_000_000), "34.0 ms");
        assert_eq!(duration_ns(2_500_000_000), "2.50 s");
        assert_eq!(duration_ns(u64::MAX), "18446744074 s");
    }

    #[test]
    fn bytes_rates_and_counts_use_decimal_prefixes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3_400), "3.40 kB");
        assert_eq!(bytes_per_s(3_400_000.0), "3.40 MB/s");
        assert_eq!(count(999), "999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(4_500_000), "4.50M");
        assert_eq!(per_s(0.5), "0.5");
        assert_eq!(per_s(0.0), "0");
        assert_eq!(per_s(120.0), "120");
    }

    #[test]
    fn nonsense_rates_from_a_peer_print_as_unknown() {
        assert_eq!(bytes_per_s(f64::NAN), "? B/s");
        assert_eq!(per_s(-1.0), "?");
        assert_eq!(per_s(f64::INFINITY), "?");
    }

    #[test]
    fn offsets_are_signed_and_millisecond_precise() {
        assert_eq!(offset(12_345_678_901, 0), "+12.345s");
        assert_eq!(offset(1_000, 2_000_000_000), "-1.999s");
    }

    #[test]
    fn signals_have_names_and_payloads_have_no_control_bytes() {
        assert_eq!(signal(10), "SIGUSR1");
        assert_eq!(signal(35), "SIGRTMIN+1");
        assert_eq!(signal(99), "signal 99");
        assert_eq!(payload(b"hi \x1b[2J\x00\xff!"), "hi .[2J..!");
    }
}
