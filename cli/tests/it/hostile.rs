//! A hostile ipc-lib process under `record`: it registers its event ring
//! like any other, then forges records in another process's name and
//! scribbles garbage over the ring while an honest producer and consumer
//! run beside it. The hostile process is this test binary run again in the
//! role [`ROLE`] names.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ipc_events::raw::{chan, kind, RawEvent};
use ipc_events::ring::{self, clock, Lane, RingHeader, SHARED_LANE};

use crate::{example, ipcscope, monotonic_ns, query, Recorder};

/// Set in the hostile process's environment: run [`scribble`].
const ROLE: &str = "IPCSCOPE_IT_HOSTILE";
/// The pid whose name the hostile process forges.
const FORGE: &str = "IPCSCOPE_IT_FORGE";
/// Forged records carry these message ids, on a channel of this name.
const FORGED_IDS: u64 = 0xBAD0_0000;
const FORGERIES: u64 = 500;
const FORGED_NAME: &str = "forged";
const HONEST_MESSAGES: u64 = 3000;

#[test]
fn a_hostile_ring_writer_loses_its_own_ring_and_nothing_else() {
    if std::env::var_os(ROLE).is_some() {
        scribble();
        return;
    }
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let _turn = crate::flood_turn();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hostile.db");
    // This very test, by its libtest name, as the hostile process.
    let test = concat!(
        module_path!(),
        "::a_hostile_ring_writer_loses_its_own_ring_and_nothing_else"
    )
    .split_once("::")
    .unwrap()
    .1;
    let script = format!(
        r#""$0" --messages {HONEST_MESSAGES} --size 100 --pause-us 200 & p=$!
        {FORGE}=$p {ROLE}=1 "$1" --exact {test} --nocapture --test-threads 1 || exit 101
        wait $p"#
    );
    let mut recorder = Recorder::spawn(
        ipcscope()
            .args(["record", "--no-ebpf", "--db"])
            .arg(&db)
            .args(["--", "sh", "-c", &script])
            .arg(&example)
            .arg(std::env::current_exe().unwrap())
            .env("XDG_RUNTIME_DIR", dir.path())
            .stderr(Stdio::piped()),
    );
    let err_reader = recorder.read_stderr();
    // Neither crashed nor hung: the recording ends when its command does.
    let status = recorder.wait(Duration::from_secs(120));
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("detached: ring corrupted"),
        "the scribbled ring was detached: {err}"
    );

    // The honest processes' data is whole ...
    let honest = query(
        &db,
        "select e.kind, count(*) as n, count(distinct e.msg_id) as ids
         from events e join channels c on c.id = e.channel_id
         where c.name like 'producer-consumer-%' group by e.kind order by e.kind",
    );
    assert_eq!(
        honest,
        serde_json::json!([
            {"kind": "msg_recv", "n": HONEST_MESSAGES, "ids": HONEST_MESSAGES},
            {"kind": "msg_send", "n": HONEST_MESSAGES, "ids": HONEST_MESSAGES},
        ])
    );
    // ... and nothing was stored in its name that it did not do.
    let forged = query(
        &db,
        &format!(
            "select (select count(*) from events where msg_id >= {FORGED_IDS}
                     and msg_id < {FORGED_IDS} + {FORGERIES}) as events,
                    (select count(*) from channels where name = '{FORGED_NAME}') as channels"
        ),
    );
    assert_eq!(forged, serde_json::json!([{"events": 0, "channels": 0}]));
    // Every refused record is counted, the detach too; no ring was full.
    let drops = query(
        &db,
        "select source, sum(count) as n from drops group by source order by source",
    );
    let decode = drops
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == "decode")
        .unwrap_or_else(|| panic!("no decode drops: {drops}"));
    assert!(
        decode["n"].as_u64().unwrap() > FORGERIES,
        "each forgery and the detach counted: {drops}"
    );
    assert_eq!(drops.as_array().unwrap().len(), 1, "{drops}");
}

/// A same-user process connects to the recorder's ring socket and says
/// nothing, for longer than the whole recording, while an honest producer
/// and consumer start beside it: they register and are stored whole, and
/// the recording ends with its command (issue 15: one silent client held
/// the accept loop, every other ring waited, and `record` waited for it).
#[test]
fn a_silent_client_of_the_ring_socket_holds_up_no_one() {
    let Some(example) = example("producer_consumer") else {
        return;
    };
    let _turn = crate::flood_turn();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("silent.db");
    let silent = "import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ['IPCSCOPE_SOCKET'].replace('@', '\\0', 1))
print('connected', flush=True)
time.sleep(5)";
    // The silent client outlives the command; the recording must not wait
    // for it.
    let script = format!(
        r#"python3 -c "$1" &
        sleep 0.3
        exec "$0" --messages {HONEST_MESSAGES} --size 100 --pause-us 200"#
    );
    let mut recorder = Recorder::spawn(
        ipcscope()
            .args(["record", "--no-ebpf", "--db"])
            .arg(&db)
            .args(["--", "sh", "-c", &script])
            .arg(&example)
            .arg(silent)
            .env("XDG_RUNTIME_DIR", dir.path())
            .stderr(Stdio::piped()),
    );
    let err_reader = recorder.read_stderr();
    // A bound on a hang, far above the workload's second or two.
    let status = recorder.wait(Duration::from_secs(60));
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("no registration within"), "{err}");
    let honest = query(
        &db,
        "select e.kind, count(*) as n from events e join channels c on c.id = e.channel_id
         where c.name like 'producer-consumer-%' group by e.kind order by e.kind",
    );
    assert_eq!(
        honest,
        serde_json::json!([
            {"kind": "msg_recv", "n": HONEST_MESSAGES},
            {"kind": "msg_send", "n": HONEST_MESSAGES},
        ])
    );
    assert_eq!(
        query(&db, "select count(*) as n from drops"),
        serde_json::json!([{"n": 0}])
    );
}

/// The hostile process: attaches like any ipc-lib process, forges, then
/// scribbles.
fn scribble() {
    assert!(ipc_lib::trace::enabled(), "not run under `ipcscope record`");
    let (base, len) = ring_mapping();
    let forge: u32 = std::env::var(FORGE).unwrap().parse().unwrap();
    // SAFETY: the mapping ipc-lib made, live until this process ends.
    let capacity = unsafe { (*base.cast::<RingHeader>()).capacity };
    // SAFETY: that ring's shared lane, which every ring has.
    let lane = unsafe { Lane::new(base, capacity, SHARED_LANE) };
    let header = lane.header();
    for i in 0..FORGERIES {
        let raw = RawEvent {
            ts_ns: monotonic_ns(),
            pid: forge,
            tid: forge,
            kind: kind::MSG_SEND,
            chan_kind: chan::IPCLIB_CHANNEL,
            name_len: FORGED_NAME.len() as u16,
            size: 100,
            msg_id: FORGED_IDS + i,
            ..RawEvent::default()
        };
        // SAFETY: an intact ring that ipc-lib set up; a short name.
        assert!(unsafe {
            ring::write_shared(&lane, &raw, FORGED_NAME.as_bytes(), clock::MONOTONIC_NS)
        });
    }
    // Let the collector take the forgeries: they must be refused one by
    // one, not lost with the ring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while header.tail.load(std::sync::atomic::Ordering::Acquire)
        != header.head.load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "the collector never drained");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Garbage over the shared lane's data and its producer's position, as
    // fast as it can be written, for a while: the collector must detach
    // the ring.
    assert!(lane.capacity() as usize <= len);
    let words = lane.capacity() as usize / 8;
    let mut x = u64::from(std::process::id()) | 1;
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        for _ in 0..1000 {
            // xorshift64: cheap and varied.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let word = (x % words as u64) as usize;
            // SAFETY: word < the lane's data area's length in words.
            unsafe { lane.data().cast::<u64>().add(word).write_volatile(x) };
        }
        header.head.store(x, std::sync::atomic::Ordering::Release);
    }
}

/// This process's ipc-lib ring, found the way any process could find it:
/// in its own memory map.
fn ring_mapping() -> (*mut u8, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("/memfd:ipcscope-ring"))
        .unwrap_or_else(|| panic!("no ring mapped: {maps}"));
    let (start, end) = line.split_once(' ').unwrap().0.split_once('-').unwrap();
    let start = usize::from_str_radix(start, 16).unwrap();
    let end = usize::from_str_radix(end, 16).unwrap();
    (start as *mut u8, end - start)
}
