//! Shared memory of unmodified programs, recorded through the real binary
//! and the real probes: a POSIX shm object (`shm_open`), a memfd, a SysV
//! segment and anonymous shared memory, each written by one process and
//! read by another, checked in the database by pids, names, mappings and
//! the page-fault samples of each access.

use serde_json::json;

use crate::ebpf_ipc::{parent_and_child, record_python_with};
use crate::{need_root, query};

/// Pages in each segment.
const PAGES: u64 = 5;
const PAGE: u64 = 4096;

/// The parent makes a segment of `pages` pages of the kind `mode` names
/// and writes one byte to each page; its forked child then maps the same
/// segment anew (or, for anonymous memory, uses the mapping it inherited)
/// and reads every page back. Prints the segment's name (POSIX, memfd) or
/// key and id (SysV); exits 3 if the child did not read what was written.
const SEGMENTS: &str = r#"
import ctypes, mmap, os, sys

mode, pages = sys.argv[1], int(sys.argv[2])
size = pages * 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]

def check(rc, what):
    if rc == -1 or rc == ctypes.c_void_p(-1).value:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc

if mode == "posix":
    import _posixshmem
    name = f"/ipcscope-it-{os.getpid()}"
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, size)
    print(name, flush=True)
    attach = lambda: mmap.mmap(fd, size)
elif mode == "memfd":
    fd = os.memfd_create("ipcscope-it")
    os.ftruncate(fd, size)
    attach = lambda: mmap.mmap(fd, size)
elif mode == "anon":
    m = mmap.mmap(-1, size)
    attach = lambda: m
else:
    key = 0x5e0000 + os.getpid()
    sid = check(libc.shmget(key, size, 0o1000 | 0o600), "shmget")  # IPC_CREAT
    print(hex(key), sid, flush=True)
    class Segment:
        def __init__(self):
            self.addr = check(libc.shmat(sid, None, 0), "shmat")
        def __setitem__(self, i, v):
            ctypes.memset(self.addr + i, v, 1)
        def __getitem__(self, i):
            return ctypes.string_at(self.addr + i, 1)[0]
        def close(self):
            check(libc.shmdt(self.addr), "shmdt")
    attach = Segment

m = attach()
for p in range(pages):
    m[p * 4096] = 1 + p
pid = os.fork()
if pid == 0:
    r = attach()
    ok = all(r[p * 4096] == 1 + p for p in range(pages))
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
m.close()
if mode == "posix":
    _posixshmem.shm_unlink(name)
elif mode == "sysv":
    libc.shmctl(sid, 0, None)  # IPC_RMID
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// Records the segment workload in `mode`, finds its one channel of
/// `kind` and checks its name with `named`, then every access.
fn a_segment_written_by_one_process_is_read_by_another(
    mode: &str,
    kind: &str,
    named: impl Fn(&str, &str, i64) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let (db, printed) = record_python_with(dir.path(), SEGMENTS, &[mode, &PAGES.to_string()], &[]);
    let (parent, child) = parent_and_child(&db);

    let channels = query(
        &db,
        "select id, kind, name from channels where kind in ('shm', 'sysv_shm')",
    );
    let channels = channels.as_array().unwrap();
    assert_eq!(channels.len(), 1, "one segment, one channel: {channels:?}");
    assert_eq!(channels[0]["kind"], kind, "{mode}");
    let name = channels[0]["name"].as_str().unwrap();
    assert!(
        named(name, printed.trim(), parent),
        "{mode}: channel named {name:?}, the workload printed {printed:?}"
    );
    let ch = channels[0]["id"].as_i64().unwrap();

    // The writer's first touch of each page is one write fault: exactly
    // one sample per page, at each page's offset, and nothing read.
    let writes = query(
        &db,
        &format!(
            "select aux as offset, size from events where kind = 'shm_write'
             and channel_id = {ch} and pid = {parent} order by aux"
        ),
    );
    let expected: Vec<_> = (0..PAGES)
        .map(|p| json!({"offset": p * PAGE, "size": PAGE}))
        .collect();
    assert_eq!(writes, json!(expected), "{mode}");
    let others = query(
        &db,
        &format!(
            "select pid, kind, count(*) as n from events
             where channel_id = {ch} and not (kind = 'shm_write' and pid = {parent})
             and kind in ('shm_read', 'shm_write') group by pid, kind"
        ),
    );
    let others = others.as_array().unwrap();
    assert_eq!(others.len(), 1, "{mode}: only the child reads: {others:?}");
    assert_eq!(others[0]["pid"], child, "{mode}");
    assert_eq!(others[0]["kind"], "shm_read", "{mode}");
    // The kernel maps up to 64 KiB around a read fault at once, so a read
    // of every page may fault only once.
    let reads = others[0]["n"].as_u64().unwrap();
    assert!((1..=PAGES).contains(&reads), "{mode}: {reads} reads");

    // Who mapped it: the parent once, mapped and unmapped at one address;
    // the child at least once (what it inherited; its own mapping too,
    // unless it uses the inherited one).
    let maps = query(
        &db,
        &format!(
            "select pid, kind, size, aux as address from events
             where channel_id = {ch} and kind in ('shm_map', 'shm_unmap') and pid = {parent}
             order by ts_ns"
        ),
    );
    let maps = maps.as_array().unwrap();
    assert_eq!(maps.len(), 2, "{mode}: {maps:?}");
    assert_eq!(maps[0]["kind"], "shm_map", "{mode}");
    assert_eq!(maps[1]["kind"], "shm_unmap", "{mode}");
    assert_eq!(maps[0]["size"], PAGES * PAGE, "{mode}");
    assert_eq!(maps[0]["address"], maps[1]["address"], "{mode}");
    let child_maps = query(
        &db,
        &format!(
            "select count(*) as n from events
             where channel_id = {ch} and kind = 'shm_map' and pid = {child}"
        ),
    );
    let child_maps = child_maps[0]["n"].as_u64().unwrap();
    let expected_maps = if mode == "anon" { 1 } else { 2 };
    assert_eq!(child_maps, expected_maps, "{mode}: inherited, then its own");

    let drops = query(&db, "select coalesce(sum(count), 0) as n from drops");
    assert_eq!(drops, json!([{"n": 0}]), "{mode}");
}

#[test]
fn a_posix_shm_object_is_followed_from_write_to_read() {
    if !need_root("a_posix_shm_object_is_followed_from_write_to_read") {
        return;
    }
    a_segment_written_by_one_process_is_read_by_another("posix", "shm", |name, printed, _| {
        name == format!("/dev/shm{printed}")
    });
}

#[test]
fn a_memfd_is_followed_from_write_to_read() {
    if !need_root("a_memfd_is_followed_from_write_to_read") {
        return;
    }
    a_segment_written_by_one_process_is_read_by_another("memfd", "shm", |name, _, _| {
        name.starts_with("memfd:ipcscope-it:[") && name.ends_with(']')
    });
}

#[test]
fn a_sysv_segment_is_followed_from_write_to_read() {
    if !need_root("a_sysv_segment_is_followed_from_write_to_read") {
        return;
    }
    a_segment_written_by_one_process_is_read_by_another("sysv", "sysv_shm", |name, printed, _| {
        let (key, id) = printed.split_once(' ').unwrap();
        name == format!("key={key} id={id}")
    });
}

#[test]
fn anonymous_shared_memory_is_followed_into_a_forked_child() {
    if !need_root("anonymous_shared_memory_is_followed_into_a_forked_child") {
        return;
    }
    a_segment_written_by_one_process_is_read_by_another("anon", "shm", |name, _, parent| {
        name.starts_with(&format!("anon:{parent}@0x"))
    });
}
