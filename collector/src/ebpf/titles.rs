//! Process titles that no tracepoint sees: a process that rewrites its
//! argv in place, as servers do to say what each worker is
//! (`postgres: checkpointer`), changes what `/proc/PID/cmdline` and `ps`
//! show without a syscall. The probes see the other kind of renaming
//! (`prctl(PR_SET_NAME)`, `task_rename`); this reads the command lines of
//! the processes the probes follow every [`SCAN_EVERY`] and reports each
//! change as a `process_title` event from the collector.
//!
//! A process's first command line is its baseline and is not reported:
//! read at its exec (as soon as the exec's event passes through the pump),
//! inherited from its parent at a fork (a forked child shows its parent's
//! memory until it writes its own), or, for a process followed from the
//! middle of its life (`-p`), the first time a scan reads it. An exec the
//! pump has not seen yet is told from a rewrite by the address of the
//! argument area (`arg_start` in `/proc/PID/stat`), which a new program
//! moves and a rewrite does not.
//!
//! Bounded: at most [`MAX_PER_SCAN`] processes are read per scan (more
//! are taken in turns), at most [`MAX_KNOWN`] are remembered, at most
//! [`MAX_CMDLINE`] bytes of a command line are read, and a process that
//! is gone is forgotten.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use ipc_events::raw::MAX_TITLE;
use ipc_events::{Event, EventKind, Source};

/// How often the followed processes' command lines are read.
pub const SCAN_EVERY: Duration = Duration::from_millis(500);
/// The most processes one scan reads.
pub const MAX_PER_SCAN: usize = 256;
/// The most processes whose title is remembered; others get a baseline
/// only once some are forgotten.
pub const MAX_KNOWN: usize = 4096;
/// The most bytes of a command line read: a title is at most
/// [`MAX_TITLE`], and some command lines are megabytes long.
const MAX_CMDLINE: u64 = 4096;

/// What the scanner knows of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// The title last read (the baseline until a change is reported).
    title: String,
    /// Where its argument area starts, `None` if `/proc` did not say.
    arg_start: Option<u64>,
}

/// One reading of a process in `/proc`.
#[derive(Debug)]
struct Reading {
    seen: Seen,
    comm: String,
}

/// Finds the processes whose command line changed since their exec.
#[derive(Debug, Default)]
pub struct TitleScanner {
    known: HashMap<u32, Seen>,
    /// The last pid of the last scan, when it could not read them all:
    /// the next starts after it.
    cursor: u32,
}

impl TitleScanner {
    /// Follows the process tree the probes report: an exec sets a new
    /// baseline (read now, under `proc`, the procfs root), a fork gives
    /// the child its parent's, an exit forgets the process.
    pub fn observe(&mut self, event: &Event, proc: &Path) {
        match event.kind {
            EventKind::ProcessExec => {
                self.known.remove(&event.pid);
                if self.known.len() < MAX_KNOWN {
                    if let Some(reading) = read(proc, event.pid) {
                        self.known.insert(event.pid, reading.seen);
                    }
                }
            }
            EventKind::ProcessStart => {
                // A thread's start is not reported; `aux` is the parent.
                let parent = u32::try_from(event.aux).unwrap_or(0);
                if let Some(seen) = self.known.get(&parent).cloned() {
                    if self.known.len() < MAX_KNOWN {
                        self.known.insert(event.pid, seen);
                    }
                }
            }
            EventKind::ProcessExit => {
                self.known.remove(&event.pid);
            }
            _ => {}
        }
    }

    /// Reads the command lines of `followed` and of the processes already
    /// known (at most [`MAX_PER_SCAN`] of them), appending a
    /// `process_title` stamped `now_ns` to `out` for each that changed.
    pub fn scan(&mut self, followed: &[u32], proc: &Path, now_ns: u64, out: &mut Vec<Event>) {
        let mut pids: Vec<u32> = followed.iter().chain(self.known.keys()).copied().collect();
        pids.sort_unstable();
        pids.dedup();
        let start = pids.partition_point(|&p| p <= self.cursor);
        let batch: Vec<u32> = pids[start..]
            .iter()
            .chain(&pids[..start])
            .take(MAX_PER_SCAN)
            .copied()
            .collect();
        self.cursor = match batch.last() {
            Some(&last) if pids.len() > MAX_PER_SCAN => last,
            _ => 0,
        };
        for pid in batch {
            let Some(reading) = read(proc, pid) else {
                // Gone, or a zombie with nothing left to show.
                self.known.remove(&pid);
                continue;
            };
            let room = self.known.len() < MAX_KNOWN;
            match self.known.get_mut(&pid) {
                // The same program: a changed title is news.
                Some(seen)
                    if same_program(seen, &reading.seen) && seen.title != reading.seen.title =>
                {
                    seen.title.clone_from(&reading.seen.title);
                    out.push(title_event(pid, reading, now_ns));
                }
                Some(seen) if same_program(seen, &reading.seen) => {}
                // A new program the pump has not told of yet.
                Some(seen) => *seen = reading.seen,
                // First sight: the baseline.
                None if room => {
                    self.known.insert(pid, reading.seen);
                }
                None => {}
            }
        }
    }
}

/// Whether two readings are of one program: an exec moves the argument
/// area. Unknown (no permission to see it) is taken as the same.
fn same_program(a: &Seen, b: &Seen) -> bool {
    match (a.arg_start, b.arg_start) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn title_event(pid: u32, reading: Reading, now_ns: u64) -> Event {
    let mut event = Event::new(now_ns, pid, pid, Source::Collector, EventKind::ProcessTitle);
    event.comm = reading.comm;
    event.path = Some(reading.seen.title);
    event
}

/// Process `pid`'s title and the facts beside it; `None` when it is gone
/// or shows no command line (a zombie, a kernel thread).
fn read(proc: &Path, pid: u32) -> Option<Reading> {
    let dir = proc.join(pid.to_string());
    let mut cmdline = Vec::new();
    std::fs::File::open(dir.join("cmdline"))
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut cmdline)
        .ok()?;
    let title = title_of(&cmdline);
    if title.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    let (comm, arg_start) = parse_stat(&stat);
    Some(Reading {
        seen: Seen { title, arg_start },
        comm,
    })
}

/// A command line as a title: its NUL-separated arguments joined by
/// spaces (a rewritten one is often a title padded with NULs), trailing
/// whitespace dropped, at most [`MAX_TITLE`] bytes cut on a character
/// boundary. Bytes that are not UTF-8 are replaced.
pub fn title_of(cmdline: &[u8]) -> String {
    let spaced: Vec<u8> = cmdline
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    let text = String::from_utf8_lossy(&spaced);
    let mut title = text.trim_end();
    if title.len() > MAX_TITLE {
        let mut end = MAX_TITLE;
        while !title.is_char_boundary(end) {
            end -= 1;
        }
        title = title[..end].trim_end();
    }
    title.to_owned()
}

/// The comm and `arg_start` (field 48) of a `/proc/PID/stat` line: `pid
/// (comm) state ...`, where comm may hold spaces and parentheses, so the
/// fields are counted from the last `)`. `arg_start` reads 0 to those not
/// allowed to see it, which is taken as unknown.
fn parse_stat(stat: &str) -> (String, Option<u64>) {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (String::new(), None);
    };
    let comm = stat.get(open + 1..close).unwrap_or_default().to_owned();
    // Field 3 (state) is the first after the `)`.
    let arg_start = stat[close + 1..]
        .split_whitespace()
        .nth(48 - 3)
        .and_then(|f| f.parse::<u64>().ok())
        .filter(|&a| a != 0);
    (comm, arg_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_reads_as_its_arguments_joined_by_spaces() {
        assert_eq!(title_of(b"python3\0-c\0print(1)\0"), "python3 -c print(1)");
        // A rewritten argv: the title, then the rest of the area blanked.
        assert_eq!(
            title_of(b"postgres: checkpointer   \0\0\0\0"),
            "postgres: checkpointer"
        );
        assert_eq!(title_of(b""), "");
        assert_eq!(title_of(b"\0\0"), "");
        // Not UTF-8: replaced, not refused.
        assert_eq!(title_of(b"a\xffb\0"), "a\u{fffd}b");
    }

    #[test]
    fn a_long_title_is_cut_on_a_character_boundary() {
        let long = "x".repeat(MAX_TITLE + 100);
        assert_eq!(title_of(long.as_bytes()).len(), MAX_TITLE);
        // A two-byte character straddling the limit is left out whole.
        let straddle = format!("{}é", "x".repeat(MAX_TITLE - 1));
        let title = title_of(straddle.as_bytes());
        assert_eq!(title, "x".repeat(MAX_TITLE - 1));
        let fits = format!("{}é", "x".repeat(MAX_TITLE - 2));
        assert_eq!(title_of(fits.as_bytes()), fits);
    }

    #[test]
    fn stat_gives_comm_and_argument_area_whatever_the_comm() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737488347000".into();
        let rest = fields.join(" ");
        let stat = format!("42 (a (b) c) {rest}\n");
        assert_eq!(
            parse_stat(&stat),
            ("a (b) c".to_owned(), Some(140_737_488_347_000))
        );
        // Hidden (0) or missing is unknown.
        fields[48 - 3] = "0".into();
        let stat = format!("42 (x) {}", fields.join(" "));
        assert_eq!(parse_stat(&stat).1, None);
        assert_eq!(parse_stat("42 (x) S 1"), ("x".to_owned(), None));
        assert_eq!(parse_stat("garbage"), (String::new(), None));
    }

    /// A fake procfs with one process.
    fn write_proc(root: &Path, pid: u32, cmdline: &[u8], arg_start: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = arg_start.to_string();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (worker) {}\n", fields.join(" ")),
        )
        .unwrap();
    }

    fn exec(pid: u32) -> Event {
        Event::new(1, pid, pid, Source::Ebpf, EventKind::ProcessExec)
    }

    fn titles(out: &[Event]) -> Vec<(u32, &str)> {
        out.iter()
            .map(|e| (e.pid, e.path.as_deref().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn a_rewritten_command_line_is_reported_once_and_the_exec_one_never() {
        let proc = tempfile::tempdir().unwrap();
        let mut scanner = TitleScanner::default();
        write_proc(proc.path(), 10, b"server\0--workers\x002\0", 1000);
        scanner.observe(&exec(10), proc.path());
        let mut out = Vec::new();
        scanner.scan(&[10], proc.path(), 5, &mut out);
        assert!(out.is_empty(), "the exec's command line is the baseline");

        write_proc(proc.path(), 10, b"server: idle\0\0\0\0\0\0\0\0", 1000);
        scanner.scan(&[10], proc.path(), 6, &mut out);
        scanner.scan(&[10], proc.path(), 7, &mut out);
        assert_eq!(titles(&out), [(10, "server: idle")]);
        assert_eq!(
            (
                out[0].source,
                out[0].kind,
                out[0].ts_ns,
                out[0].comm.as_str()
            ),
            (Source::Collector, EventKind::ProcessTitle, 6, "worker")
        );

        // A new program (its argument area moved) before the pump told of
        // its exec: a new baseline, not a title.
        out.clear();
        write_proc(proc.path(), 10, b"other\0", 2000);
        scanner.scan(&[10], proc.path(), 8, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_forked_child_that_renames_itself_is_reported() {
        let proc = tempfile::tempdir().unwrap();
        let mut scanner = TitleScanner::default();
        write_proc(proc.path(), 10, b"postgres\0-D\0/data\0", 1000);
        scanner.observe(&exec(10), proc.path());
        let mut start = Event::new(2, 11, 11, Source::Ebpf, EventKind::ProcessStart);
        start.aux = 10;
        scanner.observe(&start, proc.path());
        // The child renamed itself before any scan read it.
        write_proc(proc.path(), 11, b"postgres: checkpointer\0\0\0", 1000);
        let mut out = Vec::new();
        scanner.scan(&[], proc.path(), 5, &mut out);
        assert_eq!(titles(&out), [(11, "postgres: checkpointer")]);
    }

    #[test]
    fn a_process_first_seen_by_a_scan_is_a_baseline_and_a_gone_one_is_forgotten() {
        let proc = tempfile::tempdir().unwrap();
        let mut scanner = TitleScanner::default();
        write_proc(proc.path(), 20, b"already: renamed\0", 1000);
        let mut out = Vec::new();
        scanner.scan(&[20], proc.path(), 5, &mut out);
        assert!(out.is_empty());
        std::fs::remove_dir_all(proc.path().join("20")).unwrap();
        scanner.scan(&[20], proc.path(), 6, &mut out);
        assert!(scanner.known.is_empty());
        // An exit forgets too.
        write_proc(proc.path(), 21, b"x\0", 1000);
        scanner.observe(&exec(21), proc.path());
        scanner.observe(
            &Event::new(3, 21, 21, Source::Ebpf, EventKind::ProcessExit),
            proc.path(),
        );
        assert!(scanner.known.is_empty());
    }

    #[test]
    fn a_scan_reads_a_bounded_number_and_takes_the_rest_in_turns() {
        let proc = tempfile::tempdir().unwrap();
        let mut scanner = TitleScanner::default();
        let n = MAX_PER_SCAN as u32 + 10;
        let pids: Vec<u32> = (100..100 + n).collect();
        for &pid in &pids {
            write_proc(proc.path(), pid, b"a\0", 1000);
        }
        let mut out = Vec::new();
        scanner.scan(&pids, proc.path(), 5, &mut out);
        assert_eq!(scanner.known.len(), MAX_PER_SCAN);
        scanner.scan(&pids, proc.path(), 6, &mut out);
        assert_eq!(scanner.known.len(), pids.len());
        for &pid in &pids {
            write_proc(proc.path(), pid, b"b\0", 1000);
        }
        scanner.scan(&pids, proc.path(), 7, &mut out);
        scanner.scan(&pids, proc.path(), 8, &mut out);
        let mut seen: Vec<u32> = out.iter().map(|e| e.pid).collect();
        seen.sort_unstable();
        assert_eq!(seen, pids, "every process once, over two scans");
    }
}
