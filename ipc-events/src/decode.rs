//! Raw records to [`Event`]s, with every length and value checked.
//!
//! The bytes come from outside this process (the kernel, or a traced
//! process's ring that it may have scribbled on), so nothing in them is
//! trusted: a short, truncated or corrupted record is a [`DecodeError`],
//! never a panic or a read out of bounds.

use std::ptr;

use crate::channel::{ChannelId, ChannelKind};
use crate::event::{Event, EventKind, Source};
use crate::raw::{
    chan, record_len, shm_origin, RawEvent, MAX_NAME, MAX_PAYLOAD, RAW_EVENT_SIZE, SI_CODE_KNOWN,
    WAIT_BEGUN,
};

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record too short: {len} bytes, a record header is {RAW_EVENT_SIZE}")]
    Short { len: usize },
    #[error("record truncated: header announces {needed} bytes, {available} present")]
    Truncated { needed: usize, available: usize },
    #[error("unknown event kind code {0}")]
    UnknownKind(u16),
    #[error("unknown channel kind code {0}")]
    UnknownChannelKind(u16),
    #[error("event kind {kind} needs an IPC object and the record names none")]
    MissingChannel { kind: EventKind },
    #[error("channel kind {kind} is identified by name and the record carries none")]
    MissingName { kind: ChannelKind },
    #[error("object name of {len} bytes exceeds the limit of {MAX_NAME}")]
    NameTooLong { len: usize },
    #[error("object name is not UTF-8")]
    NameNotUtf8,
    #[error("payload of {len} bytes exceeds the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge { len: usize },
}

/// Decodes the record at the start of `bytes`.
///
/// Returns the event and the number of bytes the record occupies, padding
/// included (at most `bytes.len()`), so a caller walking a stream of records
/// knows where the next one starts.
pub fn decode(source: Source, bytes: &[u8]) -> Result<(Event, usize), DecodeError> {
    if bytes.len() < RAW_EVENT_SIZE {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    // SAFETY: the check above guarantees RAW_EVENT_SIZE readable bytes, and
    // read_unaligned makes no alignment assumption about the slice. RawEvent
    // is plain integers, so every bit pattern is a valid value.
    let raw: RawEvent = unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) };

    let name_len = usize::from(raw.name_len);
    let data_len = usize::from(raw.data_len);
    if name_len > MAX_NAME {
        return Err(DecodeError::NameTooLong { len: name_len });
    }
    if data_len > MAX_PAYLOAD {
        return Err(DecodeError::PayloadTooLarge { len: data_len });
    }
    let needed = RAW_EVENT_SIZE + name_len + data_len;
    if bytes.len() < needed {
        return Err(DecodeError::Truncated {
            needed,
            available: bytes.len(),
        });
    }

    let name = &bytes[RAW_EVENT_SIZE..RAW_EVENT_SIZE + name_len];
    let data = &bytes[RAW_EVENT_SIZE + name_len..needed];
    let event = decode_parts(source, &raw, name, data)?;
    Ok((event, record_len(name_len, data_len).min(bytes.len())))
}

/// Decodes a record already split into its header, name and payload (a
/// record the collector builds itself, from the probes' maps). The caller
/// guarantees the lengths; the values are checked as [`decode`] checks
/// them.
pub fn decode_parts(
    source: Source,
    raw: &RawEvent,
    name: &[u8],
    data: &[u8],
) -> Result<Event, DecodeError> {
    let kind = EventKind::from_code(raw.kind).map_err(|_| DecodeError::UnknownKind(raw.kind))?;
    // The probes mark a futex wait's begin by a result no call returns;
    // from here on it is a kind of its own, with no result yet.
    let begun = kind == EventKind::FutexWait && raw.result == WAIT_BEGUN;
    let (kind, result) = match begun {
        true => (EventKind::FutexWaitBegin, 0),
        false => (kind, raw.result),
    };
    let mut path = None;
    let channel = if raw.chan_kind == chan::NONE {
        if kind.needs_channel() {
            return Err(DecodeError::MissingChannel { kind });
        }
        // With no object to name, the name bytes are a path (an exec's
        // program). Paths need not be UTF-8, so they are not rejected.
        if !name.is_empty() {
            path = Some(String::from_utf8_lossy(name).into_owned());
        }
        None
    } else {
        let ckind = ChannelKind::from_code(raw.chan_kind)
            .map_err(|_| DecodeError::UnknownChannelKind(raw.chan_kind))?;
        Some(if ckind.is_named() {
            if name.is_empty() {
                return Err(DecodeError::MissingName { kind: ckind });
            }
            let name = std::str::from_utf8(name).map_err(|_| DecodeError::NameNotUtf8)?;
            if ckind == ChannelKind::Shm && (raw.obj, raw.obj2) != (0, 0) {
                ChannelId::named(ckind, shm_name(name, raw.obj, raw.obj2))
            } else {
                ChannelId::named(ckind, name)
            }
        } else {
            ChannelId::numeric(ckind, raw.obj, raw.obj2)
        })
    };

    let endpoint = channel
        .as_ref()
        .is_some_and(|c| c.kind().is_socket())
        .then_some(raw.obj);
    // Only signal_generate gives obj a meaning without an IPC object, and
    // size (see raw::kind::SIGNAL_GENERATE) the signal's si_code.
    let signal = kind == EventKind::SignalGenerate && raw.chan_kind == chan::NONE;
    let (size, si_code) = if signal && raw.size & SI_CODE_KNOWN != 0 {
        // The low 32 bits are the kernel's int, as is.
        (0, Some(raw.size as u32 as i32))
    } else {
        (raw.size, None)
    };
    let event = Event {
        ts_ns: raw.ts_ns,
        pid: raw.pid,
        tid: raw.tid,
        comm: comm_to_string(&raw.comm),
        source,
        kind,
        channel,
        size,
        msg_id: (raw.msg_id != 0).then_some(raw.msg_id),
        result,
        duration_ns: (raw.duration_ns != 0).then_some(raw.duration_ns),
        aux: raw.aux,
        target_pid: signal.then_some(raw.obj as u32),
        si_code,
        endpoint,
        path,
        payload: (!data.is_empty()).then(|| data.to_vec()),
        releasers: Vec::new(),
        idle_releasers: Vec::new(),
    };
    Ok(event)
}

/// The name of a shared-memory object the probes saw, from its dentry
/// name and what `obj`/`obj2` say it is (see [`shm_origin`]): names a
/// user would recognise, unique per object (two memfds may share a
/// dentry name; their inodes differ).
fn shm_name(dentry: &str, obj: u64, obj2: u64) -> String {
    match obj2 & 0xff {
        shm_origin::DEV_SHM => format!("/dev/shm/{dentry}"),
        shm_origin::ANON => format!("anon:{}@{obj:#x}", obj2 >> 8),
        _ => format!("{dentry}:[{obj}]"),
    }
}

/// Decodes every record in a stream, stopping at the first bad one: after a
/// corrupted length nothing further in the stream can be located reliably.
pub fn decode_all(
    source: Source,
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<Event, DecodeError>> + '_ {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || bytes.is_empty() {
            return None;
        }
        match decode(source, bytes) {
            Ok((event, used)) => {
                bytes = &bytes[used..];
                Some(Ok(event))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// The kernel's comm: up to 16 bytes, NUL-terminated unless full. Invalid
/// UTF-8 (a process may name itself anything) is replaced, not rejected.
fn comm_to_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Encodes an event as a raw record, the inverse of [`decode`]. Used by the
/// user-space producers (ipc-lib) and by tests of everything that decodes.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    let (chan_kind, obj, obj2, name): (u16, u64, u64, &[u8]) = match &event.channel {
        None => (
            chan::NONE,
            event.target_pid.map_or(0, u64::from),
            0,
            event.path.as_deref().unwrap_or("").as_bytes(),
        ),
        // The end the event went through comes first, as the probes write it.
        Some(ChannelId::Numeric { kind, a, b }) if event.endpoint == Some(*b) => {
            (kind.code(), *b, *a, &[])
        }
        Some(ChannelId::Numeric { kind, a, b }) => (kind.code(), *a, *b, &[]),
        Some(ChannelId::Named { kind, name }) => (kind.code(), 0, 0, name.as_bytes()),
    };
    let size = match event.si_code {
        Some(code) if event.kind == EventKind::SignalGenerate && event.channel.is_none() => {
            SI_CODE_KNOWN | u64::from(code as u32)
        }
        _ => event.size,
    };
    let name = &name[..name.len().min(MAX_NAME)];
    let data = event.payload.as_deref().unwrap_or(&[]);
    let data = &data[..data.len().min(MAX_PAYLOAD)];
    let mut comm = [0u8; 16];
    let c = event.comm.as_bytes();
    let n = c.len().min(15);
    comm[..n].copy_from_slice(&c[..n]);
    let (kind, result) = match event.kind {
        EventKind::FutexWaitBegin => (EventKind::FutexWait.code(), WAIT_BEGUN),
        other => (other.code(), event.result),
    };
    let raw = RawEvent {
        ts_ns: event.ts_ns,
        pid: event.pid,
        tid: event.tid,
        kind,
        chan_kind,
        // Both fit: clamped to MAX_NAME and MAX_PAYLOAD above.
        name_len: name.len() as u16,
        data_len: data.len() as u16,
        obj,
        obj2,
        size,
        msg_id: event.msg_id.unwrap_or(0),
        result,
        duration_ns: event.duration_ns.unwrap_or(0),
        aux: event.aux,
        comm,
    };
    let start = out.len();
    // SAFETY: RawEvent is repr(C) plain integers with no padding (size
    // assertion in raw.rs), so viewing it as RAW_EVENT_SIZE bytes is sound.
    let header =
        unsafe { std::slice::from_raw_parts(ptr::from_ref(&raw).cast::<u8>(), RAW_EVENT_SIZE) };
    out.extend_from_slice(header);
    out.extend_from_slice(name);
    out.extend_from_slice(data);
    out.resize(start + record_len(name.len(), data.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::kind;
    use proptest::prelude::*;

    fn sample() -> Event {
        let mut e = Event::new(5_000, 42, 43, Source::Lib, EventKind::MsgSend);
        e.comm = "producer".into();
        e.channel = Some(ChannelId::named(ChannelKind::IpclibChannel, "jobs"));
        e.size = 64;
        e.msg_id = Some(7);
        e.payload = Some(b"hello".to_vec());
        e
    }

    #[test]
    fn a_begun_futex_wait_is_a_kind_of_its_own_with_no_marker() {
        let raw = RawEvent {
            kind: crate::raw::kind::FUTEX_WAIT,
            chan_kind: chan::FUTEX,
            obj: 0x7f00,
            result: WAIT_BEGUN,
            ..RawEvent::default()
        };
        let (e, _) = decode(Source::Ebpf, &raw_bytes(raw)).unwrap();
        assert_eq!((e.kind, e.result), (EventKind::FutexWaitBegin, 0));
        let mut bytes = Vec::new();
        encode(&e, &mut bytes);
        assert_eq!(decode(Source::Ebpf, &bytes).unwrap().0, e);
        // Its end keeps the call's result.
        let end = RawEvent {
            result: -110,
            ..raw
        };
        let (e, _) = decode(Source::Ebpf, &raw_bytes(end)).unwrap();
        assert_eq!((e.kind, e.result), (EventKind::FutexWait, -110));
    }

    #[test]
    fn encoded_event_decodes_to_itself() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        assert_eq!(buf.len() % 8, 0);
        let (event, used) = decode(Source::Lib, &buf).unwrap();
        assert_eq!(event, sample());
        assert_eq!(used, buf.len());
    }

    #[test]
    fn a_signal_keeps_its_target() {
        let mut e = Event::new(1, 2, 3, Source::Ebpf, EventKind::SignalGenerate);
        e.aux = 10;
        e.target_pid = Some(77);
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert_eq!(decode(Source::Ebpf, &buf).unwrap().0, e);
    }

    #[test]
    fn a_signal_from_the_probes_says_who_sent_it() {
        // SI_USER, SI_KERNEL, SI_TIMER, CLD_EXITED, and the extremes a
        // sigqueueinfo caller may choose.
        for code in [0, 0x80, -2, 1, -6, i32::MIN, i32::MAX] {
            let raw = RawEvent {
                kind: kind::SIGNAL_GENERATE,
                obj: 77,
                obj2: 78,
                size: SI_CODE_KNOWN | u64::from(code as u32),
                aux: 14,
                ..RawEvent::default()
            };
            let e = decode(Source::Ebpf, &raw_bytes(raw)).unwrap().0;
            assert_eq!(e.si_code, Some(code));
            assert_eq!(e.target_pid, Some(77));
            // The code is not a size.
            assert_eq!(e.size, 0);
            let mut again = Vec::new();
            encode(&e, &mut again);
            assert_eq!(decode(Source::Ebpf, &again).unwrap().0, e);
        }
    }

    #[test]
    fn a_signal_without_the_known_bit_has_no_code() {
        // What ipc-lib's traced sends look like: unknown is not SI_USER.
        let raw = RawEvent {
            kind: kind::SIGNAL_GENERATE,
            obj: 77,
            size: 0,
            ..RawEvent::default()
        };
        let e = decode(Source::Lib, &raw_bytes(raw)).unwrap().0;
        assert_eq!(e.si_code, None);
        // Other kinds never read a code out of size.
        let raw = RawEvent {
            kind: kind::PROCESS_EXIT,
            size: SI_CODE_KNOWN,
            ..RawEvent::default()
        };
        let e = decode(Source::Ebpf, &raw_bytes(raw)).unwrap().0;
        assert_eq!((e.si_code, e.size), (None, SI_CODE_KNOWN));
    }

    #[test]
    fn a_process_title_rides_in_the_name_bytes() {
        let mut e = Event::new(1, 2, 2, Source::Ebpf, EventKind::ProcessTitle);
        e.comm = "renamed-x".into();
        e.path = Some("renamed-x".into());
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert_eq!(decode(Source::Ebpf, &buf).unwrap().0, e);
        let mut title = Event::new(1, 2, 2, Source::Collector, EventKind::ProcessTitle);
        title.path = Some("postgres: checkpointer".into());
        buf.clear();
        encode(&title, &mut buf);
        assert_eq!(decode(Source::Collector, &buf).unwrap().0, title);
    }

    #[test]
    fn a_futex_wake_names_the_futex_it_woke() {
        let raw = RawEvent {
            kind: kind::FUTEX_WAKE,
            chan_kind: chan::FUTEX,
            obj: 0x7f00_0000_1000,
            obj2: 4242,
            result: 2,
            ..RawEvent::default()
        };
        let e = decode(Source::Ebpf, &raw_bytes(raw)).unwrap().0;
        assert_eq!(
            e.channel,
            Some(ChannelId::numeric(
                ChannelKind::Futex,
                0x7f00_0000_1000,
                4242
            ))
        );
        assert_eq!((e.result, e.si_code, e.target_pid), (2, None, None));
    }

    #[test]
    fn a_socket_event_keeps_the_end_it_went_through() {
        for (obj, obj2) in [(20, 10), (10, 20)] {
            let raw = RawEvent {
                kind: kind::MSG_SEND,
                chan_kind: chan::UNIX_STREAM,
                obj,
                obj2,
                size: 5,
                ..RawEvent::default()
            };
            let bytes = raw_bytes(raw);
            let (e, _) = decode(Source::Ebpf, &bytes).unwrap();
            assert_eq!(
                e.channel,
                Some(ChannelId::numeric(ChannelKind::UnixStream, 10, 20))
            );
            assert_eq!(e.endpoint, Some(obj));
            let mut again = Vec::new();
            encode(&e, &mut again);
            assert_eq!(decode(Source::Ebpf, &again).unwrap().0, e);
        }
    }

    #[test]
    fn shared_memory_from_the_probes_is_named_as_users_know_it() {
        let named = |obj, obj2, dentry: &[u8]| {
            let raw = RawEvent {
                kind: kind::SHM_WRITE,
                chan_kind: chan::SHM,
                name_len: dentry.len() as u16,
                obj,
                obj2,
                ..RawEvent::default()
            };
            decode_parts(Source::Ebpf, &raw, dentry, &[])
                .unwrap()
                .channel
                .unwrap()
                .name()
        };
        assert_eq!(named(77, shm_origin::DEV_SHM, b"jobs"), "/dev/shm/jobs");
        assert_eq!(named(77, shm_origin::FILE, b"memfd:buf"), "memfd:buf:[77]");
        assert_eq!(
            named(0x7f00_0000_1000, shm_origin::ANON | (4242 << 8), b"anon"),
            "anon:4242@0x7f0000001000"
        );
        // What encode writes (obj and obj2 0) keeps its name as it is.
        assert_eq!(named(0, 0, b"/dev/shm/jobs"), "/dev/shm/jobs");
    }

    #[test]
    fn exec_path_rides_in_the_name_bytes() {
        let mut e = Event::new(1, 2, 2, Source::Ebpf, EventKind::ProcessExec);
        e.comm = "sh".into();
        e.path = Some("/usr/bin/sh".into());
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert_eq!(decode(Source::Ebpf, &buf).unwrap().0, e);
    }

    #[test]
    fn short_record_is_an_error() {
        assert_eq!(
            decode(Source::Ebpf, &[0u8; 95]),
            Err(DecodeError::Short { len: 95 })
        );
        assert_eq!(
            decode(Source::Ebpf, &[]),
            Err(DecodeError::Short { len: 0 })
        );
    }

    #[test]
    fn truncated_name_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        let cut = RAW_EVENT_SIZE + 2;
        assert_eq!(
            decode(Source::Lib, &buf[..cut]),
            Err(DecodeError::Truncated {
                needed: RAW_EVENT_SIZE + 4 + 5,
                available: cut
            })
        );
    }

    fn raw_bytes(raw: RawEvent) -> Vec<u8> {
        let mut e = Event::new(0, 0, 0, Source::Ebpf, EventKind::ProcessStart);
        e.comm.clear();
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        // SAFETY: buf holds at least RAW_EVENT_SIZE bytes; write_unaligned
        // makes no alignment assumption.
        unsafe { ptr::write_unaligned(buf.as_mut_ptr().cast::<RawEvent>(), raw) };
        buf
    }

    #[test]
    fn corrupted_codes_are_errors() {
        let bad_kind = RawEvent {
            kind: 999,
            ..RawEvent::default()
        };
        assert_eq!(
            decode(Source::Ebpf, &raw_bytes(bad_kind)),
            Err(DecodeError::UnknownKind(999))
        );
        let bad_chan = RawEvent {
            kind: kind::MSG_SEND,
            chan_kind: 77,
            ..RawEvent::default()
        };
        assert_eq!(
            decode(Source::Ebpf, &raw_bytes(bad_chan)),
            Err(DecodeError::UnknownChannelKind(77))
        );
        let no_chan = RawEvent {
            kind: kind::MSG_RECV,
            ..RawEvent::default()
        };
        assert_eq!(
            decode(Source::Ebpf, &raw_bytes(no_chan)),
            Err(DecodeError::MissingChannel {
                kind: EventKind::MsgRecv
            })
        );
        let unnamed = RawEvent {
            kind: kind::MSG_SEND,
            chan_kind: chan::MQ,
            ..RawEvent::default()
        };
        assert_eq!(
            decode(Source::Ebpf, &raw_bytes(unnamed)),
            Err(DecodeError::MissingName {
                kind: ChannelKind::Mq
            })
        );
        let huge = RawEvent {
            kind: kind::MSG_SEND,
            data_len: u16::MAX,
            ..RawEvent::default()
        };
        assert_eq!(
            decode(Source::Ebpf, &raw_bytes(huge)),
            Err(DecodeError::PayloadTooLarge {
                len: usize::from(u16::MAX)
            })
        );
    }

    #[test]
    fn decode_all_walks_records_and_stops_at_corruption() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        let mut second = sample();
        second.payload = None;
        second.msg_id = Some(8);
        encode(&second, &mut buf);
        let first_len = record_len(4, 5);
        let all: Vec<_> = decode_all(Source::Lib, &buf).collect();
        assert_eq!(all, vec![Ok(sample()), Ok(second)]);

        buf[first_len + 16] = 0xff; // the second record's kind
        let all: Vec<_> = decode_all(Source::Lib, &buf).collect();
        assert_eq!(all.len(), 2);
        assert!(matches!(all[1], Err(DecodeError::UnknownKind(_))));
    }

    proptest! {
        // Whatever the bytes, decode returns; it never panics or reads past
        // the slice, and what it claims to use lies within the input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((_, used)) = decode(Source::Ebpf, &bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert!(used >= RAW_EVENT_SIZE);
            }
            let _ = decode_all(Source::Ebpf, &bytes).count();
        }

        // Records that get past the first checks: known and unknown kind
        // and channel codes, every other field arbitrary (names and
        // payloads of any bytes and length, truncated or with trailing
        // bytes). Decoding returns an event or an error, and an event says
        // what the header said.
        #[test]
        fn records_with_any_field_values_decode_or_are_errors(
            words in proptest::array::uniform8(any::<u64>()),
            ids in (any::<u32>(), any::<u32>(), 0u16..48, 0u16..24),
            name_len in 0u16..300, data_len in 0u16..600, result in any::<i64>(),
            comm in proptest::array::uniform16(any::<u8>()),
            tail in proptest::collection::vec(any::<u8>(), 0..1000),
        ) {
            let (pid, tid, kind, chan_kind) = ids;
            let [ts_ns, obj, obj2, size, msg_id, duration_ns, aux, _] = words;
            let raw = RawEvent {
                ts_ns, pid, tid, kind, chan_kind, name_len, data_len, obj, obj2, size, msg_id,
                result, duration_ns, aux, comm,
            };
            let mut bytes = raw_bytes(raw);
            bytes.truncate(RAW_EVENT_SIZE);
            bytes.extend_from_slice(&tail);
            if let Ok((event, used)) = decode(Source::Ebpf, &bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert!(RAW_EVENT_SIZE + usize::from(name_len) + usize::from(data_len) <= bytes.len());
                // A begun futex wait is a kind of its own, without the
                // marker; every other record keeps its kind and result.
                if kind == crate::raw::kind::FUTEX_WAIT && result == WAIT_BEGUN {
                    prop_assert_eq!((event.kind, event.result), (EventKind::FutexWaitBegin, 0));
                } else {
                    prop_assert_eq!((event.kind.code(), event.result), (kind, result));
                }
                prop_assert_eq!((event.ts_ns, event.pid, event.tid), (ts_ns, pid, tid));
                // A signal from the probes carries its si_code in size.
                let signal = kind == crate::raw::kind::SIGNAL_GENERATE && chan_kind == chan::NONE;
                if signal && size & SI_CODE_KNOWN != 0 {
                    prop_assert_eq!((event.size, event.si_code), (0, Some(size as u32 as i32)));
                } else {
                    prop_assert_eq!((event.size, event.si_code), (size, None));
                }
                prop_assert_eq!(event.payload.map_or(0, |p| p.len()), usize::from(data_len));
            }
        }

        #[test]
        fn any_valid_record_round_trips(
            ts in any::<u64>(), pid in any::<u32>(), size in any::<u64>(),
            msg in 1u64.., name in "[a-z/]{1,40}", data in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut e = Event::new(ts, pid, pid, Source::Lib, EventKind::MsgRecv);
            e.channel = Some(ChannelId::named(ChannelKind::Mq, name));
            e.size = size;
            e.msg_id = Some(msg);
            e.payload = Some(data);
            let mut buf = Vec::new();
            encode(&e, &mut buf);
            let (back, used) = decode(Source::Lib, &buf).unwrap();
            prop_assert_eq!(back, e);
            prop_assert_eq!(used, buf.len());
        }
    }
}
