//! Zero-copy ends: messages written in place into the ring by
//! `Sender::loan` and read where they lie through `Receiver::borrow`,
//! across processes; loans given up, senders killed holding one, lent
//! messages that a filling sender must not overwrite, lent frames
//! damaged in place, and the trace they leave (the same as copying
//! sends and receives).

use std::io::Read;
use std::time::{Duration, Instant};

use ipc_lib::channel::layout::{frame_checksum, frame_size, len_word, HEADER_SIZE, OFFSET_HEAD};
use ipc_lib::channel::{Corruption, Mode, Receiver, RecvError, SendError, Sender, WhenFull};

use crate::child::nums;
use crate::support::{
    capture_ops, open_sender, pattern, size_of_msg, spawn, unique_name, wait_bounded, Hostile,
    NameGuard, TracedOp, PATIENCE,
};

/// The child processes' roles.
pub fn play(role: &str, name: &str, arg: &str) -> Result<(), String> {
    match role {
        // Sends N messages of the pattern (sizes up to MAX) through loans,
        // waiting for room as `send` does, then leaves.
        "loan-n" => {
            let [n, max] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_sender(name);
            for i in 0..n {
                let msg = pattern(i, size_of_msg(i, max as usize));
                let mut loan = tx.loan(msg.len()).map_err(|e| format!("loan {i}: {e}"))?;
                loan.copy_from_slice(&msg);
                loan.send();
            }
            Ok(())
        }
        // Sends N messages of exactly LEN bytes (the pattern) through
        // loans, then leaves.
        "loan-fixed" => {
            let [n, len] = nums(arg)[..] else {
                return Err(format!("bad arg {arg:?}"));
            };
            let mut tx = open_sender(name);
            for i in 0..n {
                let mut loan = tx
                    .loan(len as usize)
                    .map_err(|e| format!("loan {i}: {e}"))?;
                loan.copy_from_slice(&pattern(i, len as usize));
                loan.send();
            }
            Ok(())
        }
        // Multi-producer: sends "ready", then takes a loan of LEN bytes,
        // writes half of it, and holds it until killed (or until the
        // parent closes our stdin).
        "loan-hold" => {
            let len = nums(arg).first().copied().unwrap_or(1000) as usize;
            let mut tx = open_sender(name);
            tx.send(b"ready").map_err(|e| format!("ready: {e}"))?;
            let mut loan = tx.loan(len).map_err(|e| format!("loan: {e}"))?;
            loan[..len / 2].fill(0xAB);
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

fn receiver(name: &str, capacity: usize, max: usize, mode: Mode) -> Receiver {
    Receiver::builder(name)
        .capacity(capacity)
        .max_message_size(max)
        .mode(mode)
        .unlink_on_drop(false)
        .create()
        .unwrap()
}

#[test]
fn loaned_messages_from_another_process_arrive_whole_and_in_order() {
    // A ring of a few frames, not a multiple of any of them: frames wrap
    // around its end at ever different places, so loans staged privately
    // and lent messages copied out are crossed too.
    const N: u64 = 3000;
    const MAX: u64 = 300;
    for mode in [Mode::Spsc, Mode::Mpsc] {
        let name = unique_name("loan-n");
        let _g = NameGuard(name.clone());
        let mut rx = receiver(&name, 4000, MAX as usize, mode);
        let mut child = spawn("loan-n", &name, &format!("{N},{MAX}"));
        for i in 0..N {
            let want = pattern(i, size_of_msg(i, MAX as usize));
            // Every other message lent, the others copied out.
            let got = if i % 2 == 0 {
                let msg = rx.borrow_timeout(PATIENCE).unwrap();
                assert_eq!(msg.len(), want.len());
                msg.to_vec()
            } else {
                rx.recv_timeout(PATIENCE).unwrap()
            };
            assert_eq!(got, want, "{mode:?} message {i}");
        }
        assert!(matches!(
            rx.borrow_timeout(PATIENCE),
            Err(RecvError::Disconnected)
        ));
        assert!(wait_bounded(&mut child, PATIENCE).success());
        assert_eq!(rx.skipped(), 0);
    }
}

#[test]
fn a_lent_message_holds_off_a_sender_that_fills_the_ring() {
    // Messages of one size: were the lent message's space given back
    // early, the sender's next frame would land exactly on it.
    const N: u64 = 200;
    const LEN: u64 = 150;
    let name = unique_name("loan-hold-off");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 2048, LEN as usize, Mode::Spsc);
    let mut child = spawn("loan-fixed", &name, &format!("{N},{LEN}"));
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), pattern(0, LEN as usize));
    let want = pattern(1, LEN as usize);
    let msg = rx.borrow_timeout(PATIENCE).unwrap();
    assert_eq!(msg.to_vec(), want);
    // Long enough for the sender to fill the rest of the ring many times
    // over, were it let: it must wait for the lent message's space.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(msg.to_vec(), want, "the lent message was overwritten");
    drop(msg);
    for i in 2..N {
        let got = rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(got, pattern(i, LEN as usize), "message {i}");
    }
    assert!(wait_bounded(&mut child, PATIENCE).success());
}

#[test]
fn a_full_ring_refuses_a_loan_while_a_message_is_lent() {
    let name = unique_name("loan-full");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 128, 32, Mode::Spsc);
    let mut tx = Sender::builder(&name)
        .when_full(WhenFull::Error)
        .open()
        .unwrap();
    // Two 64-byte frames fill the ring.
    tx.send(&[1; 32]).unwrap();
    tx.send(&[2; 32]).unwrap();
    let msg = rx.borrow().unwrap();
    // Taken from the receiver, but lent: its space is not free yet.
    let refused = std::thread::scope(|s| {
        s.spawn(|| {
            let full = matches!(tx.try_loan(32), Err(SendError::Full));
            let timed_out = matches!(
                tx.loan_timeout(32, Duration::from_millis(50)),
                Err(SendError::Timeout)
            );
            let send_full = matches!(tx.try_send(&[3; 32]), Err(SendError::Full));
            full && timed_out && send_full
        })
        .join()
        .unwrap()
    });
    assert!(refused);
    assert_eq!(msg.to_vec(), [1; 32]);
    drop(msg);
    let mut loan = tx.try_loan(32).unwrap();
    loan.fill(3);
    loan.send();
    assert_eq!(rx.recv().unwrap(), [2; 32]);
    assert_eq!(rx.recv().unwrap(), [3; 32]);
}

#[test]
fn a_sender_killed_holding_a_loan_is_skipped_and_the_others_go_on() {
    let name = unique_name("loan-killed");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 64 * 1024, 4096, Mode::Mpsc);
    let mut survivor = Sender::builder(&name).open().unwrap();
    let shm = Hostile::map(&name);
    let mut victim = spawn("loan-hold", &name, "3000");
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"ready");
    // The victim's loan is reserved once `head` moves past "ready", the
    // ring's first frame (the survivor has not sent yet). A multi-producer
    // `head` is `position << 3 | slot` (see the layout).
    let past_ready = |head: u64| head >> 6 << 3 > frame_size(5) as u64;
    let deadline = Instant::now() + PATIENCE;
    while !past_ready(shm.read_u64(OFFSET_HEAD)) {
        assert!(Instant::now() < deadline, "the victim never took its loan");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Behind the loan: unreadable while its sender lives.
    survivor.send(b"one").unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvError::Timeout)
    ));
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"one");
    assert_eq!(rx.skipped(), 1);
    // The survivor goes on, loaned or copied, and never noticed.
    for i in 0..100u32 {
        let mut loan = survivor.loan(4).unwrap();
        loan.copy_from_slice(&i.to_le_bytes());
        loan.send();
        survivor.send(b"copied").unwrap();
        let msg = rx.borrow_timeout(PATIENCE).unwrap();
        assert_eq!(msg.to_vec(), i.to_le_bytes());
        drop(msg);
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"copied");
    }
    drop(survivor);
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    assert_eq!(rx.skipped(), 1);
}

#[test]
fn a_loan_given_up_sends_nothing_and_spends_no_id() {
    for mode in [Mode::Spsc, Mode::Mpsc] {
        let name = unique_name("loan-drop");
        let _g = NameGuard(name.clone());
        let mut rx = receiver(&name, 4096, 256, mode);
        let mut tx = Sender::builder(&name).open().unwrap();
        let first = tx.send(b"first").unwrap();
        let mut loan = tx.loan(200).unwrap();
        loan.fill(0xEE);
        drop(loan);
        // Leaked rather than dropped: given up at the sender's next call.
        let mut leaked = tx.loan(100).unwrap();
        leaked.fill(0xDD);
        std::mem::forget(leaked);
        let second = tx.send(b"second").unwrap();
        assert_eq!(second, first + 1, "{mode:?}");
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"first");
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"second");
        // Many given up, many times the ring's size: each one's space
        // comes back (a multi-producer one's once the receiver has looked
        // past it).
        for _ in 0..100 {
            drop(tx.try_loan(200).unwrap());
            assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
        }
        let mut loan = tx.loan(5).unwrap();
        loan.copy_from_slice(b"third");
        assert_eq!(loan.send(), second + 1);
        let msg = rx.borrow_timeout(PATIENCE).unwrap();
        assert_eq!(
            (msg.to_vec(), msg.msg_id()),
            (b"third".to_vec(), second + 1)
        );
        drop(msg);
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
        assert_eq!(rx.skipped(), 0);
        // A sender dropped while its loan is leaked gives it up too.
        std::mem::forget(tx.loan(10).unwrap());
        drop(tx);
        assert!(matches!(
            rx.recv_timeout(PATIENCE),
            Err(RecvError::Disconnected)
        ));
    }
}

#[test]
fn a_lent_frame_damaged_in_place_is_a_checksum_error() {
    // Sent by a copy and by a loan; damaged in the payload's first word,
    // in a middle one (past AVX-512's 256-byte steps), and in the last,
    // partial one.
    for (loaned, at) in [
        (false, 0),
        (true, 0),
        (false, 700),
        (true, 700),
        (true, 1000),
    ] {
        let name = unique_name("loan-corrupt");
        let _g = NameGuard(name.clone());
        let mut rx = receiver(&name, 4096, 2048, Mode::Spsc);
        let mut tx = Sender::builder(&name).open().unwrap();
        let shm = Hostile::map(&name);
        let msg = pattern(7, 1003);
        if loaned {
            let mut loan = tx.loan(msg.len()).unwrap();
            loan.copy_from_slice(&msg);
            loan.send();
        } else {
            tx.send(&msg).unwrap();
        }
        // The frame is the ring's first: its payload follows its 32-byte
        // header.
        shm.flip_byte(HEADER_SIZE + 32 + at, 0x20);
        match rx.try_borrow() {
            Err(RecvError::Corrupt {
                reason: Corruption::Checksum { .. },
                ..
            }) => {}
            Err(e) => panic!("loaned {loaned}, at {at}: {e}"),
            Ok(m) => panic!("loaned {loaned}, at {at}: lent {} bytes", m.len()),
        };
    }
}

/// The fields a recording keeps of a traced operation.
fn recorded(ops: &[TracedOp]) -> Vec<(String, String, u64, u64)> {
    ops.iter()
        .map(|o| (o.kind.clone(), o.name.clone(), o.size, o.msg_id))
        .collect()
}

#[test]
fn loans_and_borrows_trace_what_sends_and_receives_trace() {
    let lens = [0usize, 5, 64, 3000];
    for mode in [Mode::Spsc, Mode::Mpsc] {
        let name = unique_name("loan-trace");
        let _g = NameGuard(name.clone());
        let (copied, loaned) = {
            let mut rx = receiver(&name, 64 * 1024, 4096, mode);
            let mut tx = Sender::builder(&name).open().unwrap();
            let (_, copied) = capture_ops(|| {
                for &len in &lens {
                    tx.send(&pattern(1, len)).unwrap();
                    rx.recv().unwrap();
                }
            });
            let (_, loaned) = capture_ops(|| {
                // Given up: no trace.
                drop(tx.loan(100).unwrap());
                for &len in &lens {
                    let mut loan = tx.loan(len).unwrap();
                    loan.copy_from_slice(&pattern(1, len));
                    loan.send();
                    rx.borrow().unwrap();
                }
            });
            (copied, loaned)
        };
        let (copied, loaned) = (recorded(&copied), recorded(&loaned));
        assert_eq!(copied.len(), 2 * lens.len(), "{copied:?}");
        // Message ids go on from where the copies left them.
        let shifted: Vec<_> = copied
            .into_iter()
            .map(|(k, n, size, id)| (k, n, size, id + lens.len() as u64))
            .collect();
        assert_eq!(loaned, shifted, "{mode:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_borrow_waits_for_a_message_without_copying_it() {
    let name = unique_name("loan-async");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 4096, 256, Mode::Spsc).into_async();
    let mut tx = Sender::builder(&name).open().unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let mut loan = tx.loan(3).unwrap();
        loan.copy_from_slice(b"abc");
        loan.send();
        tx
    });
    let msg = tokio::time::timeout(PATIENCE, rx.borrow())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.to_vec(), b"abc");
    assert_eq!(msg.get(1), Some(b'b'));
    assert_eq!(msg.get(3), None);
    drop(msg);
    drop(sender.join().unwrap());
}

#[test]
fn a_loan_given_up_does_not_make_a_select_ready() {
    use ipc_lib::select::{Select, SelectError};
    let name = unique_name("loan-select");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 4096, 256, Mode::Mpsc);
    let mut tx = Sender::builder(&name).open().unwrap();
    // A skip frame is committed, but holds no message.
    drop(tx.loan(100).unwrap());
    let mut select = Select::new();
    let got = select.wait(&mut [(&mut rx).into()], Some(Duration::from_millis(50)));
    assert!(matches!(got, Err(SelectError::Timeout)), "{got:?}");
    tx.send(b"x").unwrap();
    let got = select.wait(&mut [(&mut rx).into()], Some(PATIENCE));
    assert_eq!(got.unwrap(), 0);
    assert_eq!(rx.try_recv().unwrap(), b"x");
}

#[test]
fn a_loaned_frame_is_laid_out_as_a_copied_one() {
    // Frames of 64 bytes in a ring of 128: the third lands where the
    // first lay, on bytes that are not zero.
    let name = unique_name("loan-layout");
    let _g = NameGuard(name.clone());
    let mut rx = receiver(&name, 128, 32, Mode::Spsc);
    let mut tx = Sender::builder(&name).open().unwrap();
    let shm = Hostile::map(&name);
    for _ in 0..2 {
        tx.send(&[0xFF; 32]).unwrap();
        rx.recv().unwrap();
    }
    let mut loan = tx.loan(5).unwrap();
    loan.copy_from_slice(b"hello");
    let id = loan.send();
    // As the layout says, and as `send` writes it: the length word, the
    // id, the checksum of the message zero-padded, the payload's last
    // word zero-padded.
    let word = |k: usize| shm.read_u64(HEADER_SIZE + 8 * k);
    assert_eq!(word(1), len_word(5));
    assert_eq!(word(2), id);
    assert_eq!(word(3), frame_checksum(5, id, b"hello"));
    let mut padded = [0u8; 8];
    padded[..5].copy_from_slice(b"hello");
    assert_eq!(word(4), u64::from_ne_bytes(padded));
    assert_eq!(rx.recv().unwrap(), b"hello");
}
