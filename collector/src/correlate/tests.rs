use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};

use super::*;

fn stream(ts: u64, kind: EventKind, pid: u32, end: u64, peer: u64, size: u64) -> Event {
    let mut e = Event::new(ts, pid, pid, Source::Ebpf, kind);
    e.channel = Some(ChannelId::numeric(ChannelKind::UnixStream, end, peer));
    e.endpoint = Some(end);
    e.size = size;
    e
}

fn run(events: Vec<Event>) -> Facts {
    let mut c = Correlator::new(None);
    for e in events {
        c.push(e);
    }
    c.take()
}

/// (sender, receiver, sent, received, size) of each message.
fn messages(f: &Facts) -> Vec<(u32, u32, u64, u64, u64)> {
    f.messages
        .iter()
        .map(|m| {
            (
                m.send.pid,
                m.recv.pid,
                m.send.ts_ns,
                m.recv.ts_ns,
                m.send.size,
            )
        })
        .collect()
}

#[test]
fn a_connection_pairs_both_ways_from_its_first_byte() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // Client 1 on end 10 sends 100 bytes before server worker 2 accepted
    // (no peer inode yet), then 50 more; the worker (end 20) reads 150 and
    // answers 7, which the client reads.
    let f = run(vec![
        stream(1, S, 1, 10, 0, 100),
        stream(2, S, 1, 10, 20, 50),
        stream(3, R, 2, 20, 10, 150),
        stream(4, S, 2, 20, 10, 7),
        stream(5, R, 1, 10, 20, 7),
    ]);
    assert_eq!(f.new_channels.len(), 1, "{:?}", f.new_channels);
    assert!(f.channels.iter().all(|c| *c == Some(ChannelRef(0))));
    assert_eq!(
        messages(&f),
        [(1, 2, 1, 3, 100), (1, 2, 2, 3, 50), (2, 1, 4, 5, 7)]
    );
}

#[test]
fn a_receive_after_its_peer_closed_still_pairs() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // The client sent and closed: the worker's read no longer names it.
    let f = run(vec![stream(1, S, 1, 10, 20, 8), stream(2, R, 2, 20, 0, 8)]);
    assert_eq!(messages(&f), [(1, 2, 1, 2, 8)]);
}

#[test]
fn only_one_traced_end_still_makes_one_channel_per_connection() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // A server's worker traced with -p, its clients not: each connection
    // is a channel of its own, none paired (the other side is unseen),
    // and nobody is shown sending to themselves.
    let f = run(vec![
        stream(1, R, 2, 20, 10, 5),
        stream(2, S, 2, 20, 10, 9),
        stream(3, R, 3, 21, 11, 5),
        stream(4, S, 3, 21, 11, 9),
    ]);
    assert_eq!(f.new_channels.len(), 2);
    assert!(f.messages.is_empty());
}

#[test]
fn the_recorders_sockets_and_threads_are_not_the_users() {
    let mut c = Correlator::new(Some(99));
    c.own_object(20);
    c.push(stream(1, EventKind::MsgSend, 1, 10, 20, 24));
    let mut futex = Event::new(2, 99, 100, Source::Ebpf, EventKind::FutexWaitBegin);
    futex.channel = Some(ChannelId::numeric(ChannelKind::Futex, 0x10, 99));
    c.push(futex);
    let f = c.take();
    assert!(f.events.is_empty(), "{:?}", f.events);
    assert!(f.new_channels.is_empty());
    assert!(f.waits.is_empty());
}

fn lib_sem(ts: u64, kind: EventKind, tid: u32) -> Event {
    let mut e = Event::new(ts, 5, tid, Source::Lib, kind);
    e.channel = Some(ChannelId::named(ChannelKind::IpclibSem, "lock"));
    e
}

/// A probe-seen futex wait's begin (`result` None) or end.
fn futex(ts: u64, tid: u32, result: Option<i64>) -> Event {
    let kind = match result {
        None => EventKind::FutexWaitBegin,
        Some(_) => EventKind::FutexWait,
    };
    let mut e = Event::new(ts, 5, tid, Source::Ebpf, kind);
    e.channel = Some(ChannelId::numeric(ChannelKind::Futex, 0x7f00, 0));
    if let Some(result) = result {
        e.result = result;
        e.duration_ns = Some(1);
    }
    e
}

#[test]
fn an_ipc_lib_wait_and_the_futex_waits_under_it_are_one_wait() {
    let mut end = lib_sem(40, EventKind::SemWaitEnd, 6);
    end.duration_ns = Some(30);
    let f = run(vec![
        lib_sem(10, EventKind::SemWaitBegin, 6),
        futex(11, 6, None),
        futex(20, 6, Some(0)),
        futex(21, 6, None),
        futex(39, 6, Some(0)),
        end,
        // A futex wait of the same thread outside any ipc-lib wait is a
        // wait of its own.
        futex(50, 6, None),
        futex(60, 6, Some(0)),
    ]);
    let waits: Vec<(u64, Option<u64>, Option<ChannelRef>)> = f
        .waits
        .iter()
        .map(|w| match w {
            WaitFact::Whole(w) => (w.start_ns, w.end_ns, w.channel),
            other => panic!("{other:?}"),
        })
        .collect();
    let sem = f.channels[0];
    let futex_ref = f.channels[1];
    assert_eq!(waits, [(10, Some(40), sem), (50, Some(60), futex_ref)]);
}

fn generate(ts: u64, source: Source, pid: u32, target: u32, signo: u64) -> Event {
    let mut e = Event::new(ts, pid, pid, source, EventKind::SignalGenerate);
    e.target_pid = Some(target);
    e.aux = signo;
    e
}

#[test]
fn a_signal_ipc_lib_sent_and_the_kernel_saw_is_one_signal() {
    let mut deliver = Event::new(30, 8, 8, Source::Ebpf, EventKind::SignalDeliver);
    deliver.aux = 10;
    let mut handle = Event::new(31, 8, 8, Source::Lib, EventKind::SignalHandle);
    handle.aux = 10;
    let f = run(vec![
        generate(10, Source::Lib, 7, 8, 10),
        generate(11, Source::Ebpf, 7, 8, 10),
        deliver,
        handle,
        // Sent by a process without ipc-lib: one signal too.
        generate(40, Source::Ebpf, 9, 8, 12),
    ]);
    let generated: Vec<_> = f
        .signals
        .iter()
        .filter_map(|s| match s {
            SignalFact::Generated(s) => Some((s.sender, s.target, s.signo, s.generated_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(generated, [(Some(7), 8, 10, 10), (Some(9), 8, 12, 40)]);
    let delivered: Vec<_> = f
        .signals
        .iter()
        .filter_map(|s| match s {
            SignalFact::Delivered {
                signal,
                delivered_ns,
            } => Some((signal.generated_ns, *delivered_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [(10, 30)]);
}

/// Each signal's (sender, generated_ns).
fn generated(f: &Facts) -> Vec<(Option<u32>, u64)> {
    f.signals
        .iter()
        .filter_map(|s| match s {
            SignalFact::Generated(s) => Some((s.sender, s.generated_ns)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_signal_ipc_lib_reported_after_the_probes_is_still_one_signal() {
    // ipc-lib's ring drained late: its records of two kills come after
    // the probes' (of the same thread, target and signo), each just
    // before its twin, and a raw `kill` of the program's own in between
    // has no twin.
    let mut c = Correlator::new(None);
    for e in [
        generate(11, Source::Ebpf, 7, 8, 10),
        generate(5_000_000, Source::Ebpf, 7, 8, 10),
        generate(21, Source::Ebpf, 7, 8, 10),
    ] {
        c.push(e);
    }
    let first = c.take();
    c.push(generate(10, Source::Lib, 7, 8, 10));
    c.push(generate(20, Source::Lib, 7, 8, 10));
    let late = c.take();
    assert_eq!(generated(&first).len(), 3);
    assert_eq!(generated(&late), []);
    // A second kill by the same source is a second signal, however close.
    let f = run(vec![
        generate(10, Source::Lib, 7, 8, 10),
        generate(12, Source::Lib, 7, 8, 10),
        generate(13, Source::Ebpf, 7, 8, 10),
        generate(14, Source::Ebpf, 7, 8, 10),
        generate(15, Source::Ebpf, 7, 8, 10),
    ]);
    assert_eq!(generated(&f), [(Some(7), 10), (Some(7), 12), (Some(7), 15)]);
}

#[test]
fn a_timer_signal_raised_while_the_recorder_ran_is_the_users() {
    // The recorder (pid 99) was the current task when the timer fired
    // for process 7; its own activity, and a signal it sent, stay out.
    let mut c = Correlator::new(Some(99));
    let mut timer = generate(10, Source::Ebpf, 99, 7, 14);
    timer.si_code = Some(0x80);
    let mut own_timer = generate(11, Source::Ebpf, 99, 99, 14);
    own_timer.si_code = Some(0x80);
    let mut sent = generate(12, Source::Ebpf, 99, 7, 15);
    sent.si_code = Some(0);
    for e in [timer, own_timer, sent] {
        c.push(e);
    }
    let f = c.take();
    let signals: Vec<_> = f
        .signals
        .iter()
        .filter_map(|s| match s {
            SignalFact::Generated(s) => Some((s.sender, s.target, s.signo, s.cause)),
            _ => None,
        })
        .collect();
    assert_eq!(signals, [(None, 7, 14, Some("timer"))]);
}

#[test]
fn processes_start_change_and_end_with_their_status() {
    let mut start = Event::new(1, 7, 7, Source::Ebpf, EventKind::ProcessStart);
    start.aux = 1;
    let mut exec = Event::new(2, 7, 7, Source::Ebpf, EventKind::ProcessExec);
    exec.comm = "srv".into();
    exec.path = Some("/bin/srv".into());
    let mut exit = Event::new(3, 7, 7, Source::Ebpf, EventKind::ProcessExit);
    exit.aux = 9; // killed by SIGKILL
    let mut unknown = Event::new(5, 8, 8, Source::Collector, EventKind::ProcessExit);
    unknown.result = -61;
    let mut first_sight = Event::new(4, 8, 8, Source::Collector, EventKind::ProcessExec);
    first_sight.comm = "cli".into();
    let f = run(vec![start, exec, exit, first_sight, unknown]);
    assert_eq!(
        f.processes,
        [
            ProcessFact::Started {
                pid: 7,
                ppid: Some(1),
                comm: None,
                exe: None,
                started_ns: Some(1)
            },
            ProcessFact::Exec {
                pid: 7,
                comm: Some("srv".into()),
                exe: Some("/bin/srv".into())
            },
            ProcessFact::Exited {
                pid: 7,
                exited_ns: 3,
                status: Some(137)
            },
            ProcessFact::Started {
                pid: 8,
                ppid: None,
                comm: Some("cli".into()),
                exe: None,
                started_ns: None
            },
            ProcessFact::Exited {
                pid: 8,
                exited_ns: 5,
                status: None
            },
        ]
    );
}

#[test]
fn wait_statuses_read_as_a_shell_reports_them() {
    assert_eq!(wait_status_to_shell(3 << 8), 3);
    assert_eq!(wait_status_to_shell(9), 137);
    assert_eq!(wait_status_to_shell(0x80 | 11), 139, "core dumped");
    assert_eq!(wait_status_to_shell(0), 0);
}

fn seqpacket(ts: u64, kind: EventKind, pid: u32, end: u64, peer: u64) -> Event {
    let mut e = stream(ts, kind, pid, end, peer, 24);
    e.channel = Some(ChannelId::numeric(ChannelKind::UnixSeqpacket, end, peer));
    e
}

fn lib_message(ts: u64, kind: EventKind, pid: u32, id: u64) -> Event {
    let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
    e.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "squares"));
    e.msg_id = Some(id);
    e.size = 8;
    e
}

#[test]
fn an_ipc_lib_socket_channel_and_its_kernel_socket_are_counted_once() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // ipc-lib stamps a send before its sendmsg, a receive after recvmsg.
    let f = run(vec![
        lib_message(10, S, 1, 1),
        seqpacket(11, S, 1, 10, 20),
        seqpacket(20, R, 2, 20, 10),
        lib_message(21, R, 2, 1),
        lib_message(30, S, 1, 2),
        seqpacket(31, S, 1, 10, 20),
        seqpacket(40, R, 2, 20, 10),
        lib_message(41, R, 2, 2),
    ]);
    let lib = f.channels[0].unwrap();
    let socket = f.channels[1].unwrap();
    assert_eq!(f.carried, [(socket, lib)]);
    assert_eq!(f.messages.len(), 2, "{:?}", f.messages);
    assert!(f.messages.iter().all(|m| m.channel == lib));
}

#[test]
fn a_signal_the_kernel_sent_has_no_process_sender_but_a_cause() {
    let with_code = |pid: u32, target: u32, signo: u64, code: i32| {
        let mut e = generate(1, Source::Ebpf, pid, target, signo);
        e.si_code = Some(code);
        e
    };
    let f = run(vec![
        with_code(3, 7, 14, 0x80), // SIGALRM from setitimer
        with_code(9, 7, 17, 1),    // SIGCHLD: CLD_EXITED, raised in the child
        with_code(7, 7, 13, 0),    // SIGPIPE: no siginfo, "from itself"
        with_code(7, 7, 11, 1),    // SIGSEGV: SEGV_MAPERR
        with_code(8, 7, 10, 0),    // kill(7, SIGUSR1) from 8
        with_code(8, 7, 34, -1),   // sigqueue
    ]);
    let got: Vec<_> = f
        .signals
        .iter()
        .filter_map(|s| match s {
            SignalFact::Generated(s) => Some((s.sender, s.cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            (None, Some("timer")),
            (None, Some("child")),
            (None, Some("pipe")),
            (None, Some("fault")),
            (Some(8), None),
            (Some(8), None),
        ]
    );
}

#[test]
fn an_ipc_lib_objects_file_and_futex_words_are_that_object() {
    let mut map = Event::new(1, 5, 5, Source::Ebpf, EventKind::ShmMap);
    map.channel = Some(ChannelId::named(ChannelKind::Shm, "/dev/shm/jobs"));
    map.aux = 0x7f00_0000;
    map.size = 1 << 20;
    let recv = lib_message(2, EventKind::MsgRecv, 5, 1);
    let mut lib = recv.clone();
    lib.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "jobs"));
    let in_it = |ts: u64, result: Option<i64>| {
        let mut e = futex(ts, 5, result);
        e.channel = Some(ChannelId::numeric(ChannelKind::Futex, 0x7f00_0040, 0));
        e
    };
    let mut outside = futex(6, 5, None);
    outside.channel = Some(ChannelId::numeric(ChannelKind::Futex, 0x1000, 0));
    let mut again = map.clone();
    again.pid = 6;
    let f = run(vec![
        map,
        lib,
        in_it(3, None),
        in_it(5, Some(0)),
        outside,
        again,
    ]);
    let (file, jobs) = (f.channels[0].unwrap(), f.channels[1].unwrap());
    assert_eq!(f.carried, [(file, jobs)]);
    // The futex words inside the mapping are the channel: a wait on it.
    assert_eq!(f.channels[2], Some(jobs));
    assert_eq!(f.channels[3], Some(jobs));
    assert_ne!(f.channels[4], Some(jobs));
    // The map came before anything named the object: it was the file's
    // then. What goes through the file after the link is the object's.
    assert_eq!(f.shadowed, [false, false, false, false, false, true]);
    assert!(f.waits.iter().any(
        |w| matches!(w, WaitFact::Whole(w) if w.channel == Some(jobs) && w.end_ns == Some(5))
    ));
}

#[test]
fn a_wait_for_the_answer_begun_before_the_accept_still_pairs() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // Client end 10 sends and blocks reading before worker end 20 exists:
    // both its calls entered with no peer inode.
    let f = run(vec![
        stream(1, S, 1, 10, 0, 8),
        stream(2, R, 2, 20, 10, 8),
        stream(3, S, 2, 20, 10, 4),
        stream(4, R, 1, 10, 0, 4),
    ]);
    assert_eq!(messages(&f), [(1, 2, 1, 2, 8), (2, 1, 3, 4, 4)]);
}

#[test]
fn with_one_end_traced_every_message_has_its_known_end() {
    use EventKind::{MsgRecv as R, MsgSend as S};
    // Only the client (end 10) is traced; its worker is not.
    let mut c = Correlator::new(None);
    for e in [
        stream(1, S, 1, 10, 0, 8),
        stream(2, R, 1, 10, 0, 4),
        stream(3, S, 1, 10, 20, 6),
        stream(4, R, 1, 10, 20, 2),
    ] {
        c.push(e);
    }
    let f = c.finish();
    assert!(f.messages.is_empty());
    let mut one: Vec<_> = f
        .one_ended
        .iter()
        .map(|u| (u.sent, u.side.pid, u.side.size))
        .collect();
    one.sort();
    assert_eq!(
        one,
        [(false, 1, 2), (false, 1, 4), (true, 1, 6), (true, 1, 8)]
    );
}

/// Two deadlocked lockers killed at the end of the demo read as blocked
/// for good: `waits.end_ns` NULL after their processes were gone. A wait
/// ends with its process, without a waker, whether its begin came in the
/// same batch or was reported open in an earlier one.
#[test]
fn a_wait_ends_when_its_process_exits() {
    let exit = |ts| Event::new(ts, 5, 5, Source::Ebpf, EventKind::ProcessExit);
    let mut c = Correlator::new(None);
    c.push(lib_sem(10, EventKind::SemWaitBegin, 6));
    let open = c.take().waits;
    let [WaitFact::Opened(w)] = open[..] else {
        panic!("{open:?}")
    };
    c.push(lib_sem(20, EventKind::SemWaitBegin, 7));
    c.push(exit(30));
    let ended = c.take().waits;
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(ended.contains(&WaitFact::Closed {
        id: w.id,
        end_ns: 30,
        waker: None
    }));
    assert!(ended.iter().any(|f| matches!(
        f,
        WaitFact::Whole(Wait {
            tid: 7,
            start_ns: 20,
            end_ns: Some(30),
            waker: None,
            ..
        })
    )));
    // Nothing of pid 5 is left open to report again.
    c.push(exit(40));
    assert_eq!(c.take().waits, []);
}

/// A message ipc-lib stepped over because its sender died mid-write is a
/// drop of its own kind, not an `unknown` one.
#[test]
fn a_message_lost_with_its_sender_is_a_sender_died_drop() {
    let mut lost = Event::new(9, 5, 5, Source::Lib, EventKind::Drop);
    lost.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "jobs"));
    lost.aux = ipc_events::raw::drop_source::SENDER_DIED;
    lost.size = 1;
    let f = run(vec![lost]);
    let drops: Vec<(&str, u64)> = f.drops.iter().map(|d| (d.source, d.count)).collect();
    assert_eq!(drops, [("sender_died", 1)]);
}
