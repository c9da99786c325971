//! A hostile writer scribbles on the segment: every receive either returns
//! a message that was sent or an error. Never a panic, never a read outside
//! the segment, never a wrong message passed off as good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipc_lib::channel::layout::{
    frame_checksum, frame_size, len_word, FRAME_HEADER_SIZE, HEADER_SIZE, OFFSET_HEAD, OFFSET_TAIL,
};
use ipc_lib::channel::{Corruption, Receiver, RecvError, SendError, Sender};
use proptest::prelude::*;

use crate::support::{
    pattern, size_of_msg, spawn, unique_name, wait_bounded, Hostile, NameGuard, PATIENCE,
};

struct Setup {
    _guard: NameGuard,
    tx: Sender,
    rx: Receiver,
    shm: Hostile,
}

fn setup(tag: &str, capacity: usize, max: usize) -> Setup {
    let name = unique_name(tag);
    let guard = NameGuard(name.clone());
    let rx = Receiver::builder(&name)
        .capacity(capacity)
        .max_message_size(max)
        .unlink_on_drop(false)
        .create()
        .unwrap();
    let tx = Sender::builder(&name).open().unwrap();
    let shm = Hostile::map(&name);
    Setup {
        _guard: guard,
        tx,
        rx,
        shm,
    }
}

/// Byte offset of word `k` of the frame at stream position `pos`.
fn frame_word(capacity: usize, pos: usize, k: usize) -> usize {
    HEADER_SIZE + (pos + 8 * k) % capacity
}

fn corrupt_reason(r: Result<Vec<u8>, RecvError>) -> Corruption {
    match r {
        Err(RecvError::Corrupt { reason, .. }) => reason,
        other => panic!("expected a corrupt-frame error, got {other:?}"),
    }
}

#[test]
fn payload_corrupted_after_a_child_sent_it_is_a_checksum_error() {
    let name = unique_name("childcorrupt");
    let _g = NameGuard(name.clone());
    let cap = 4096;
    let mut rx = Receiver::builder(&name)
        .capacity(cap)
        .max_message_size(64)
        .create()
        .unwrap();
    let mut child = spawn("send-n", &name, "5,64");
    assert!(wait_bounded(&mut child, PATIENCE).success());

    // Find the first frame with a payload and flip one of its bytes.
    let shm = Hostile::map(&name);
    let mut pos = 0;
    let mut target = None;
    for i in 0..5u64 {
        let len = size_of_msg(i, 64);
        if len > 0 {
            target = Some((i, pos));
            break;
        }
        pos += frame_size(len);
    }
    let (k, at) = target.expect("a message with a payload");
    shm.flip_byte(HEADER_SIZE + at + FRAME_HEADER_SIZE, 0x5a);

    for i in 0..k {
        assert_eq!(rx.try_recv().unwrap(), pattern(i, size_of_msg(i, 64)));
    }
    let reason = corrupt_reason(rx.try_recv());
    assert!(matches!(reason, Corruption::Checksum { .. }), "{reason}");
    // The channel cannot be read past a bad frame: the error stays.
    assert!(matches!(
        corrupt_reason(rx.try_recv()),
        Corruption::Checksum { .. }
    ));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(10)),
        Err(RecvError::Corrupt { .. })
    ));
}

#[test]
fn a_length_beyond_the_maximum_is_refused() {
    let mut s = setup("len", 4096, 256);
    s.tx.send(b"hello").unwrap();
    s.shm.write_u64(frame_word(4096, 0, 1), len_word(u32::MAX));
    let reason = corrupt_reason(s.rx.try_recv());
    assert!(matches!(reason, Corruption::Length { .. }), "{reason}");
}

#[test]
fn a_length_past_the_published_bytes_is_refused() {
    let mut s = setup("trunc", 4096, 1024);
    s.tx.send(b"hello").unwrap();
    s.shm.write_u64(frame_word(4096, 0, 1), len_word(1000));
    let reason = corrupt_reason(s.rx.try_recv());
    assert!(matches!(reason, Corruption::Truncated { .. }), "{reason}");
}

#[test]
fn a_wrong_marker_or_commit_word_is_refused() {
    let mut s = setup("marker", 4096, 64);
    s.tx.send(b"hello").unwrap();
    let w = s.shm.read_u64(frame_word(4096, 0, 1));
    s.shm.write_u64(frame_word(4096, 0, 1), w ^ (1 << 40));
    assert!(matches!(
        corrupt_reason(s.rx.try_recv()),
        Corruption::Marker { .. }
    ));

    let mut s = setup("commit", 4096, 64);
    s.tx.send(b"hello").unwrap();
    s.shm.write_u64(frame_word(4096, 0, 0), 12345);
    assert!(matches!(
        corrupt_reason(s.rx.try_recv()),
        Corruption::Commit { .. }
    ));
}

#[test]
fn a_forged_frame_with_id_zero_is_refused() {
    let mut s = setup("zeroid", 4096, 64);
    s.tx.send(b"hello").unwrap();
    // A well-formed frame in every other respect, checksum included.
    s.shm.write_u64(frame_word(4096, 0, 2), 0);
    s.shm
        .write_u64(frame_word(4096, 0, 3), frame_checksum(5, 0, b"hello"));
    assert_eq!(corrupt_reason(s.rx.try_recv()), Corruption::ZeroId);
}

#[test]
fn a_producer_position_out_of_range_is_refused() {
    let mut s = setup("head", 4096, 64);
    s.tx.send(b"hello").unwrap();
    s.shm.write_u64(OFFSET_HEAD, 4096 * 3);
    assert!(matches!(
        corrupt_reason(s.rx.try_recv()),
        Corruption::Positions { .. }
    ));
}

#[test]
fn a_consumer_position_ahead_of_the_producer_is_a_send_error() {
    let mut s = setup("tail", 256, 64);
    s.shm.write_u64(OFFSET_TAIL, 1 << 30);
    // The sender reads the tail when its cached view says full.
    let err = (0..100)
        .find_map(|_| s.tx.try_send(&[1; 64]).err())
        .expect("a send error within 100 sends");
    assert!(
        matches!(err, SendError::Corrupt(Corruption::Positions { .. })),
        "{err}"
    );
}

#[test]
fn a_scribbler_running_alongside_cannot_crash_either_end() {
    let name = unique_name("scribble");
    let _g = NameGuard(name.clone());
    let cap = 2048;
    let mut rx = Receiver::builder(&name)
        .capacity(cap)
        .max_message_size(128)
        .create()
        .unwrap();
    let mut tx = Sender::builder(&name).open().unwrap();
    let shm = Arc::new(Hostile::map(&name));
    let stop = Arc::new(AtomicBool::new(false));

    let scribbler = {
        let (shm, stop) = (shm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut x = 0x1234_5678_9abc_def1u64;
            let words = (shm.len() - HEADER_SIZE) / 8;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = HEADER_SIZE + (x as usize % words) * 8;
                shm.write_u64(off, x.rotate_left(17));
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.try_send(&pattern(i, size_of_msg(i, 128)));
                i += 1;
            }
        })
    };
    let mut received = 0u64;
    let mut errors = 0u64;
    let until = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < until {
        match rx.try_recv() {
            Ok(m) => {
                // Whatever passes validation is a message that was sent.
                let i = u64::from_le_bytes({
                    let mut b = [0; 8];
                    b[..m.len().min(8)].copy_from_slice(&m[..m.len().min(8)]);
                    b
                });
                if m.len() >= 8 {
                    assert_eq!(m, pattern(i, m.len()));
                }
                received += 1;
            }
            Err(RecvError::Empty) => {}
            Err(_) => errors += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    sender.join().unwrap();
    assert!(received + errors > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random words anywhere in the data area and in the positions: every
    /// receive and send afterwards returns, Ok or Err.
    #[test]
    fn random_damage_gives_errors_not_panics(
        sends in 0usize..12,
        damage in proptest::collection::vec((0usize..(512 / 8 + 2), any::<u64>()), 1..20),
    ) {
        let cap = 512;
        let mut s = setup("fuzz", cap, 128);
        for i in 0..sends as u64 {
            let _ = s.tx.try_send(&pattern(i, size_of_msg(i, 128)));
        }
        for (slot, value) in damage {
            let off = match slot {
                n if n == cap / 8 => OFFSET_HEAD,
                n if n == cap / 8 + 1 => OFFSET_TAIL,
                n => HEADER_SIZE + n * 8,
            };
            s.shm.write_u64(off, value);
        }
        for _ in 0..20 {
            let _ = s.rx.try_recv();
            let _ = s.tx.try_send(b"after");
        }
        let _ = s.rx.recv_timeout(Duration::from_millis(1));
        let _ = s.tx.send_timeout(b"after", Duration::from_millis(1));
    }
}
