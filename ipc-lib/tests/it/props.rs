//! Ring wrap-around and the full and empty edges, against a queue model.
//! Both ends live in this process; the ring is a real segment.

use std::collections::VecDeque;

use ipc_lib::channel::layout::frame_size;
use ipc_lib::channel::{Mode, Receiver, RecvError, SendError, Sender, WhenFull};
use proptest::prelude::*;

use crate::support::{pattern, unique_name, NameGuard};

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    Recv,
}

fn ops(largest: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![(0usize..largest).prop_map(Op::Send), Just(Op::Recv)],
        1..300,
    )
}

fn open(tag: &str, capacity: usize, max: usize, mode: Mode) -> (NameGuard, Sender, Receiver) {
    let name = unique_name(tag);
    let rx = Receiver::builder(&name)
        .capacity(capacity)
        .max_message_size(max)
        .mode(mode)
        .create()
        .unwrap();
    let tx = Sender::builder(&name)
        .when_full(WhenFull::Error)
        .open()
        .unwrap();
    (NameGuard(name), tx, rx)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn ring_behaves_like_a_bounded_queue_of_frames(
        cap_words in 4usize..80,
        max_seed in any::<prop::sample::Index>(),
        mpsc in any::<bool>(),
        ops in ops(200),
    ) {
        let capacity = cap_words * 8;
        let max = max_seed.index(capacity - 32 + 1);
        against_the_model(capacity, max, mpsc, ops)?;
    }

    /// Messages past the size copied word by word (256 bytes), so the
    /// bulk copies in and out run into the ring's end and on from its
    /// start at every offset.
    #[test]
    fn ring_behaves_like_a_bounded_queue_of_large_frames(
        cap_words in 100usize..1200,
        max_seed in any::<prop::sample::Index>(),
        mpsc in any::<bool>(),
        ops in ops(3000),
    ) {
        let capacity = cap_words * 8;
        let max = max_seed.index(capacity - 32 + 1);
        against_the_model(capacity, max, mpsc, ops)?;
    }
}

fn against_the_model(
    capacity: usize,
    max: usize,
    mpsc: bool,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mode = if mpsc { Mode::Mpsc } else { Mode::Spsc };
    let (_g, mut tx, mut rx) = open("prop", capacity, max, mode);

    let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut used = 0usize;
    let mut next_id = 1u64;
    for op in ops {
        match op {
            Op::Send(len) => {
                let msg = pattern(next_id, len);
                match tx.try_send(&msg) {
                    Ok(id) => {
                        prop_assert!(len <= max);
                        prop_assert!(used + frame_size(len) <= capacity);
                        prop_assert_eq!(id, next_id);
                        next_id += 1;
                        used += frame_size(len);
                        model.push_back((id, msg));
                    }
                    Err(SendError::TooLarge { .. }) => prop_assert!(len > max),
                    Err(SendError::Full) => {
                        prop_assert!(len <= max);
                        prop_assert!(
                            used + frame_size(len) > capacity,
                            "full at {used}/{capacity}"
                        );
                    }
                    Err(e) => prop_assert!(false, "send: {e}"),
                }
            }
            Op::Recv => {
                let mut got = Vec::new();
                match rx.try_recv_into(&mut got) {
                    Ok(id) => {
                        let (want_id, want) = model.pop_front().expect("model has a message");
                        prop_assert_eq!(id, want_id);
                        prop_assert_eq!(&got, &want);
                        used -= frame_size(want.len());
                    }
                    Err(RecvError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "recv: {e}"),
                }
            }
        }
    }
    // Drain: what is left comes out in order, then the ring is empty.
    while let Some((want_id, want)) = model.pop_front() {
        let mut got = Vec::new();
        prop_assert_eq!(rx.try_recv_into(&mut got).unwrap(), want_id);
        prop_assert_eq!(got, want);
    }
    prop_assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    Ok(())
}

#[test]
fn frames_that_fill_the_ring_exactly_fit_and_one_more_does_not() {
    for mode in [Mode::Spsc, Mode::Mpsc] {
        // Four 32-byte frames (empty payloads) fill 128 bytes exactly.
        let (_g, mut tx, mut rx) = open("edge", 128, 96, mode);
        for round in 0..10u8 {
            for k in 0..4 {
                tx.try_send(&[])
                    .unwrap_or_else(|e| panic!("{mode} round {round} frame {k}: {e}"));
            }
            assert!(matches!(tx.try_send(&[]), Err(SendError::Full)));
            for _ in 0..4 {
                assert_eq!(rx.try_recv().unwrap(), b"");
            }
            assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
            // A 64-byte frame, then a 72-byte one that runs 8 bytes past
            // the end of the ring and continues at its start; the next
            // round then starts 8 bytes further on.
            tx.try_send(&[round; 32]).unwrap();
            assert_eq!(rx.try_recv().unwrap(), vec![round; 32]);
            tx.try_send(&[round; 40]).unwrap();
            assert_eq!(rx.try_recv().unwrap(), vec![round; 40]);
        }
        // The largest message takes the whole ring.
        tx.try_send(&[7; 96]).unwrap();
        assert!(matches!(tx.try_send(&[]), Err(SendError::Full)));
        assert_eq!(rx.try_recv().unwrap(), vec![7; 96]);
    }
}
