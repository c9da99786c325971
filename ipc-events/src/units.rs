//! Human units, one definition for every place a figure is shown (the
//! dashboard, `report`, `report --live`): durations in ns/µs/ms/s, sizes
//! and rates in decimal (SI) units, as throughput figures usually are,
//! three significant digits.

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

/// A signed duration: a negative one (a clock that says a message was
/// received before it was sent) keeps its sign rather than hiding.
pub fn signed_duration_ns(ns: i64) -> String {
    match ns {
        n if n < 0 => format!("-{}", duration_ns(n.unsigned_abs())),
        n => duration_ns(n as u64),
    }
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

/// A Linux signal number by its name: `"SIGURG"`, `"SIGRTMIN+3"`, and
/// `"signal N"` for a number Linux does not define.
pub fn signal_name(signo: u32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    // glibc keeps 32 and 33 for its threads; SIGRTMIN is 34 to programs.
    const RTMIN: u32 = 34;
    const RTMAX: u32 = 64;
    match signo {
        1..=31 => NAMES[signo as usize - 1].to_owned(),
        RTMIN => "SIGRTMIN".to_owned(),
        n @ 35..=RTMAX => format!("SIGRTMIN+{}", n - RTMIN),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_as_linux_names_them() {
        assert_eq!(signal_name(10), "SIGUSR1");
        assert_eq!(signal_name(23), "SIGURG");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIGRTMIN");
        assert_eq!(signal_name(35), "SIGRTMIN+1");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(99), "signal 99");
    }

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
}
