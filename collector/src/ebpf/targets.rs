//! Processes that were running before the probes loaded: the targets of
//! `record -p PID` with the descendants they already have, and every
//! process for `record --all`. The probes follow forks from then on; what
//! existed before is found in `/proc`.

use std::collections::{HashMap, HashSet};
use std::io;

use ipc_events::{Event, EventKind, Source};

use crate::clock::monotonic_ns;

/// Every process in `/proc`, as `(pid, ppid)`. A process that exits while
/// the table is read is left out.
pub(crate) fn process_table() -> io::Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match std::fs::read_to_string(entry.path().join("stat")) {
            Ok(stat) => {
                if let Some(ppid) = stat_ppid(&stat) {
                    out.push((pid, ppid));
                }
            }
            // Gone since the directory was listed.
            Err(e)
                if matches!(e.kind(), io::ErrorKind::NotFound)
                    || e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The parent of a running process, from `/proc` (None once it is gone).
pub(crate) fn parent(pid: u32) -> Option<u32> {
    stat_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The parent pid in a `/proc/PID/stat` line: `pid (comm) state ppid ...`,
/// where comm may hold spaces and parentheses, so fields are counted from
/// the last `)`.
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and every process below them in `table`.
pub(super) fn descendants(table: &[(u32, u32)], roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for &(pid, ppid) in table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        for &child in children.get(&out[i]).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(child) {
                out.push(child);
            }
        }
        i += 1;
    }
    out
}

/// The start and exec of a process that was already running, as the
/// probes would have reported them had they been loaded: its parent,
/// comm and program. Stamped now (`processes.started_ns` is then when the
/// recording began following it). Empty if the process is gone.
pub fn running_process_events(pid: u32) -> Vec<Event> {
    let dir = format!("/proc/{pid}");
    let Ok(stat) = std::fs::read_to_string(format!("{dir}/stat")) else {
        return Vec::new();
    };
    let now = monotonic_ns();
    let comm = std::fs::read_to_string(format!("{dir}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    let mut start = Event::new(now, pid, pid, Source::Collector, EventKind::ProcessStart);
    start.aux = u64::from(stat_ppid(&stat).unwrap_or(0));
    start.comm = comm.clone();
    let mut exec = Event::new(now, pid, pid, Source::Collector, EventKind::ProcessExec);
    exec.comm = comm;
    // Kernel threads have no program; a process may also have exited.
    exec.path = std::fs::read_link(format!("{dir}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    vec![start, exec]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_any_comm() {
        assert_eq!(stat_ppid("42 (sh) S 7 42 42 0 -1"), Some(7));
        assert_eq!(stat_ppid("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(stat_ppid("42 (x"), None);
        assert_eq!(stat_ppid("42 (x) S"), None);
    }

    #[test]
    fn descendants_are_the_whole_subtree_and_only_it() {
        let table = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 11),
            (20, 1),
            (21, 20),
            (13, 10),
        ];
        let mut got = descendants(&table, &[10]);
        got.sort_unstable();
        assert_eq!(got, [10, 11, 12, 13]);
        assert_eq!(descendants(&table, &[99]), [99]);
    }

    #[test]
    fn this_process_is_in_the_table_with_its_parent() {
        let table = process_table().unwrap();
        let me = std::process::id();
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        assert!(table.contains(&(me, parent)), "{me} under {parent}");
        let events = running_process_events(me);
        assert_eq!(events[0].aux, u64::from(parent));
        assert!(events[1]
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with('/')));
        assert!(running_process_events(u32::MAX).is_empty());
    }
}
