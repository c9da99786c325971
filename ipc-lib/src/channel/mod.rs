//! Message channels between processes over a named shared-memory segment.
//!
//! A channel is a ring of frames in a POSIX shared-memory object
//! (`/dev/shm/NAME`, created with mode 0600). One process holds the
//! [`Receiver`]; one [`Sender`] ([`Mode::Spsc`], the default and fastest) or
//! up to [`layout::MAX_SENDERS`] of them ([`Mode::Mpsc`]) write into it.
//! Either end may create the channel; the other opens it by name.
//!
//! - Messages are byte slices ([`Sender::send`]) or any serde value
//!   ([`Sender::send_value`], encoded with postcard). A message larger than
//!   the channel's maximum is refused whole ([`SendError::TooLarge`]).
//!   An application that moves one type says so once:
//!   [`Sender::into_typed`] gives a [`TypedSender<T>`] whose `send` takes a
//!   `&T`, [`Receiver::into_typed`] a [`TypedReceiver<T>`] whose `recv`
//!   returns a `T`, with the same encoding and tracing.
//! - Zero-copy: [`Sender::loan`] lends the room for a message inside the
//!   ring (a [`Loan`], a `&mut [u8]`) and [`Loan::send`] publishes it;
//!   [`Receiver::borrow`] lends the next message where it lies (a
//!   [`Borrowed`], checked in place and kept from the senders until it is
//!   dropped). Traced as `send` and `recv` are.
//! - A full channel blocks the sender or returns [`SendError::Full`], as the
//!   sender was built ([`WhenFull`]).
//! - [`Receiver::recv`] spins while spinning has lately caught messages
//!   ([`ReceiverBuilder::spins`]) and then sleeps on a futex; a sender
//!   wakes it with a syscall only when it actually sleeps, so a busy
//!   channel makes none. [`Receiver::try_recv`] and [`Receiver::recv_timeout`] are
//!   the non-blocking and bounded forms.
//! - A peer that dies is noticed (pidfd; see `crate::sys::PeerWatch` for why):
//!   the receiver gets [`RecvError::Disconnected`] after draining what was
//!   sent, the sender [`SendError::Disconnected`]. Blocked ends check every
//!   20 ms, so nobody waits forever on a dead process.
//! - In a [`Mode::Mpsc`] channel a sender may die at any instruction of a
//!   send, even with its frame reserved and half written: that message is
//!   lost, the others are not. The receiver steps over the unfinished frame
//!   (after a 20 ms liveness slice), counts it ([`Receiver::skipped`]) and
//!   traces it as a `drop`; the other senders never notice.
//! - The other process can write anything into the segment at any time.
//!   Every frame is checked on a private copy (marker, length, bounds,
//!   checksum); damage is a [`RecvError::Corrupt`], never a panic, an
//!   out-of-bounds read or undefined behaviour.
//! - With the `tokio` feature, `Receiver::into_async` and
//!   `Sender::into_async` give ends whose `recv`/`send` are futures that
//!   never block a runtime worker thread (see `AsyncReceiver`).
//! - Every send and receive is traced (`msg_send` / `msg_recv` on an
//!   `ipclib_channel`), with the message id from the frame, so ipcscope
//!   pairs each receive with its send exactly.
//!
//! [`layout`] documents the bytes of the segment.
//!
//! ```
//! use std::time::Duration;
//! use ipc_lib::channel::{Receiver, Sender};
//!
//! let name = format!("doc-channel-{}", std::process::id());
//! // In one process:
//! let mut rx = Receiver::builder(&name)
//!     .capacity(64 * 1024)
//!     .max_message_size(1024)
//!     .create()?;
//! // In another (here the same one, for the example):
//! let mut tx = Sender::builder(&name).open()?;
//!
//! for i in 0..10u32 {
//!     tx.send(&i.to_le_bytes())?;
//! }
//! for i in 0..10u32 {
//!     assert_eq!(rx.recv_timeout(Duration::from_secs(5))?, i.to_le_bytes());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The options both ends' builders share, written once. Each builder has
/// `name: String`, `req: LayoutRequest`, `unlink_on_drop: bool`, `wait:
/// Duration` and a `finish(self, (Segment, bool)) -> Result<$end,
/// OpenError>` that takes its place in the segment found or made; the
/// open methods are every named object's (`shm::open_methods`).
macro_rules! builder_options {
    ($end:ty) => {
        /// Bytes in the ring (rounded up to a multiple of 8). Default 1 MiB,
        /// or four of the largest frames if that is more.
        pub fn capacity(mut self, bytes: usize) -> Self {
            self.req.capacity = Some(bytes);
            self
        }

        /// The largest message, in bytes. Default 64 KiB (less for small
        /// rings).
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.req.max_message_size = Some(bytes);
            self
        }

        /// Single- or multi-producer. Default [`Mode::Spsc`] when creating.
        pub fn mode(mut self, mode: Mode) -> Self {
            self.req.mode = Some(mode);
            self
        }

        crate::shm::open_methods!($end, "channel");

        fn opening(
            &self,
            how: OpenHow,
        ) -> Result<impl crate::patience::Opening<Output = (Segment, bool)> + '_, OpenError> {
            Segment::opening(&self.name, how, &self.req, self.wait)
        }
    };
}

#[cfg(feature = "tokio")]
mod aio;
mod crc64;
mod error;
pub mod layout;
mod receiver;
pub(crate) mod ring;
mod segment;
mod sender;

/// The typed ends, here too because shared memory is their default
/// transport: `channel::TypedSender<Job>` wraps a [`Sender`].
pub use crate::transport::{TypedReceiver, TypedSender};
#[cfg(feature = "tokio")]
pub use aio::{AsyncReceiver, AsyncSender};
pub use error::{CodecError, Corruption, OpenError, RecvError, SendError};
pub use layout::{Layout, Mode};
pub use receiver::{Borrowed, Receiver, ReceiverBuilder};
pub use sender::{Loan, Sender, SenderBuilder, WhenFull};

/// Removes the name of a channel (or of any ipc-lib object: region,
/// semaphore), as the creating end does when it is dropped. Ends already
/// attached keep working; nothing new can open it. Returns whether the name
/// existed.
///
/// For names left behind by a process that was killed before it could
/// clean up.
pub fn remove(name: &str) -> Result<bool, OpenError> {
    crate::shm::unlink(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A name no other test, and no other run of this test, uses.
    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ipclib-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn pair(tag: &str, capacity: usize, max: usize) -> (Sender, Receiver) {
        let name = unique(tag);
        let rx = Receiver::builder(&name)
            .capacity(capacity)
            .max_message_size(max)
            .create()
            .unwrap();
        let tx = Sender::builder(&name).open().unwrap();
        (tx, rx)
    }

    #[test]
    fn messages_arrive_in_order_with_increasing_ids() {
        let (mut tx, mut rx) = pair("order", 4096, 100);
        let mut ids = Vec::new();
        for i in 0..300u32 {
            let msg = vec![i as u8; (i % 100) as usize];
            ids.push(tx.send(&msg).unwrap());
            let mut got = Vec::new();
            let id = rx.try_recv_into(&mut got).unwrap();
            assert_eq!(got, msg);
            assert_eq!(id, *ids.last().unwrap());
        }
        assert_eq!(ids[0], 1);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn oversized_message_is_refused_whole() {
        let (mut tx, mut rx) = pair("big", 4096, 64);
        assert!(matches!(
            tx.send(&[0; 65]),
            Err(SendError::TooLarge { len: 65, max: 64 })
        ));
        tx.send(&[1; 64]).unwrap();
        assert_eq!(rx.try_recv().unwrap(), vec![1; 64]);
        assert!(matches!(rx.try_recv(), Err(RecvError::Empty)));
    }

    #[test]
    fn full_channel_errors_or_times_out_as_chosen() {
        let name = unique("full");
        let mut rx = Receiver::builder(&name)
            .capacity(128)
            .max_message_size(32)
            .create()
            .unwrap();
        let mut tx = Sender::builder(&name)
            .when_full(WhenFull::Error)
            .open()
            .unwrap();
        // Each 32-byte message takes a 64-byte frame: two fit.
        tx.send(&[1; 32]).unwrap();
        tx.send(&[2; 32]).unwrap();
        assert!(matches!(tx.send(&[3; 32]), Err(SendError::Full)));
        assert!(matches!(
            tx.send_timeout(&[3; 32], Duration::from_millis(30)),
            Err(SendError::Timeout)
        ));
        assert_eq!(rx.recv().unwrap(), vec![1; 32]);
        tx.send(&[3; 32]).unwrap();
        assert_eq!(rx.recv().unwrap(), vec![2; 32]);
        assert_eq!(rx.recv().unwrap(), vec![3; 32]);
    }

    #[test]
    fn blocked_sender_resumes_when_the_receiver_drains() {
        let (mut tx, mut rx) = pair("block", 256, 64);
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                tx.send(&i.to_le_bytes()).unwrap();
            }
        });
        for i in 0..1000u32 {
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(10)).unwrap(),
                i.to_le_bytes()
            );
        }
        t.join().unwrap();
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    }

    #[test]
    fn sleeping_receiver_is_woken_by_a_send() {
        let name = unique("wake");
        let mut rx = Receiver::builder(&name).spins(0).create().unwrap();
        let mut tx = Sender::builder(&name).open().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(b"late").unwrap();
            tx
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"late");
        drop(t.join().unwrap());
    }

    #[test]
    fn typed_values_round_trip_and_mismatches_are_decode_errors() {
        let (mut tx, mut rx) = pair("typed", 4096, 256);
        tx.send_value(&(7u32, "seven".to_string(), vec![1.5f64]))
            .unwrap();
        let v: (u32, String, Vec<f64>) = rx.recv_value().unwrap();
        assert_eq!(v, (7, "seven".into(), vec![1.5]));
        tx.send(&[0xff]).unwrap();
        assert!(matches!(
            rx.try_recv_value::<String>(),
            Err(RecvError::Decode { .. })
        ));
        // A decode failure consumes the message but leaves the channel fine.
        tx.send_value("ok").unwrap();
        assert_eq!(rx.try_recv_value::<String>().unwrap(), "ok");
    }

    #[test]
    fn second_sender_on_a_single_producer_channel_is_refused() {
        let (tx, _rx) = pair("twice", 4096, 64);
        let err = Sender::builder(tx.name()).open().unwrap_err();
        assert!(
            matches!(err, OpenError::PeerAttached { role: "sender", .. }),
            "{err}"
        );
        // Once the first one leaves, a new sender may attach.
        let name = tx.name().to_owned();
        drop(tx);
        Sender::builder(&name).open().unwrap();
    }

    #[test]
    fn receiver_leaving_disconnects_the_sender() {
        let (mut tx, rx) = pair("rxgone", 4096, 64);
        tx.send(b"x").unwrap();
        drop(rx);
        assert!(matches!(tx.send(b"y"), Err(SendError::Disconnected)));
    }

    #[test]
    fn creator_removes_the_name_when_dropped() {
        let name = unique("unlink");
        let rx = Receiver::builder(&name).create().unwrap();
        assert!(matches!(
            Receiver::builder(&name).create(),
            Err(OpenError::AlreadyExists { .. })
        ));
        drop(rx);
        assert!(matches!(
            Sender::builder(&name).wait(Duration::ZERO).open(),
            Err(OpenError::NotFound { .. })
        ));
        assert!(!remove(&name).unwrap());
    }

    /// A pid no process has: a child that exited and was reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// A multi-producer channel with a live sender, and the channel's
    /// header as a sender in another process sees it.
    fn mpsc_pair(tag: &str) -> (Sender, Receiver, segment::Segment) {
        let name = unique(tag);
        let rx = Receiver::builder(&name)
            .capacity(4096)
            .max_message_size(64)
            .mode(Mode::Mpsc)
            .create()
            .unwrap();
        let tx = Sender::builder(&name).open().unwrap();
        let req = Default::default();
        let opening =
            segment::Segment::opening(&name, segment::OpenHow::Open, &req, Duration::ZERO);
        let (seg, _) = crate::patience::block(opening.unwrap()).unwrap();
        (tx, rx, seg)
    }

    /// Plays a sender in `slot`, process `pid`, that claimed the
    /// reservation word `from` for a frame of `size` bytes; with `reserve`,
    /// its compare-and-swap then took the frame. Returns the new head word.
    fn forge_claim(
        h: &layout::Header,
        slot: usize,
        pid: u32,
        from: u64,
        size: u64,
        reserve: bool,
    ) -> u64 {
        use layout::{resv, slot as state};
        use std::sync::atomic::Ordering::SeqCst;
        let s = &h.senders[slot];
        s.state_pid.store(state::pack(state::ATTACHED, pid), SeqCst);
        s.claim_size.store(size, SeqCst);
        s.claim.store(from + 1, SeqCst);
        h.slots_used.fetch_max(slot as u32 + 1, SeqCst);
        let to = resv::pack(resv::pos(from) + size, slot);
        if reserve {
            h.head.compare_exchange(from, to, SeqCst, SeqCst).unwrap();
        }
        to
    }

    #[test]
    fn a_frame_left_by_a_dead_sender_is_skipped_and_counted() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut tx, mut rx, seg) = mpsc_pair("abandon");
        let h = seg.header();
        tx.send(b"before").unwrap();
        // A sender in another process reserved a frame and was killed
        // before committing it; the live sender's next message lands
        // behind it.
        let from = h.head.load(SeqCst);
        forge_claim(h, 5, dead_pid(), from, layout::frame_size(8) as u64, true);
        tx.send(b"after").unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"before");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"after");
        assert_eq!(rx.skipped(), 1);
        // The same through try_recv, which checks every so many polls.
        let from = h.head.load(SeqCst);
        forge_claim(h, 6, dead_pid(), from, layout::frame_size(64) as u64, true);
        tx.send(b"again").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            match rx.try_recv() {
                Err(RecvError::Empty) if std::time::Instant::now() < deadline => {}
                other => break other,
            }
        };
        assert_eq!(got.unwrap(), b"again");
        assert_eq!(rx.skipped(), 2);
        // And through receives whose timeouts are shorter than the slice
        // after which the receiver looks for dead senders.
        let from = h.head.load(SeqCst);
        forge_claim(h, 7, dead_pid(), from, layout::frame_size(1) as u64, true);
        tx.send(b"third").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            match rx.recv_timeout(Duration::from_millis(2)) {
                Err(RecvError::Timeout) if std::time::Instant::now() < deadline => {}
                other => break other,
            }
        };
        assert_eq!(got.unwrap(), b"third");
        assert_eq!(rx.skipped(), 3);
        drop(tx);
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    }

    #[test]
    fn a_frame_whose_dead_sender_was_the_last_is_skipped_before_disconnected() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut tx, mut rx, seg) = mpsc_pair("abandon-last");
        let h = seg.header();
        tx.send(b"one").unwrap();
        let from = h.head.load(SeqCst);
        forge_claim(h, 3, dead_pid(), from, layout::frame_size(20) as u64, true);
        tx.send(b"two").unwrap();
        drop(tx);
        assert_eq!(rx.recv().unwrap(), b"one");
        assert_eq!(rx.recv().unwrap(), b"two");
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
        assert_eq!(rx.skipped(), 1);
    }

    /// Two dead senders claim the same frame: the one whose
    /// compare-and-swap took it, and one that lost the race for it. The
    /// owner's size is skipped, whatever says so: `head` itself, the claim
    /// of the sender reserving after it, or the commit word of the next
    /// frame.
    #[test]
    fn of_two_dead_claims_on_a_frame_its_owners_size_is_skipped() {
        use layout::frame_size;
        use std::sync::atomic::Ordering::SeqCst;
        let cases = [("head", 8), ("claim", 24), ("commit", 8), ("commit", 40)];
        // The loser looked at before the owner, and after.
        for ((evidence, loser_size), loser_slot) in cases.into_iter().flat_map(|c| [(c, 4), (c, 6)])
        {
            let (mut tx, mut rx, seg) = mpsc_pair("two-dead");
            let h = seg.header();
            let from = h.head.load(SeqCst);
            let loser_frame = frame_size(loser_size) as u64;
            forge_claim(h, loser_slot, dead_pid(), from, loser_frame, false);
            let owned = forge_claim(h, 5, dead_pid(), from, frame_size(16) as u64, true);
            match evidence {
                "head" => {}
                // A live sender (this process) claimed the owner's word and
                // reserved after it, and is still writing.
                "claim" => {
                    forge_claim(h, 8, std::process::id(), owned, 64, true);
                }
                _ => {
                    tx.send(b"after").unwrap();
                }
            }
            let got = rx.recv_timeout(Duration::from_millis(200));
            match evidence {
                "commit" => assert_eq!(got.unwrap(), b"after", "{evidence} {loser_slot}"),
                _ => assert!(matches!(got, Err(RecvError::Timeout)), "{got:?}"),
            }
            assert_eq!(rx.skipped(), 1, "{evidence} {loser_size} {loser_slot}");
        }
    }

    #[test]
    fn a_frame_whose_sender_lives_is_waited_for() {
        use std::sync::atomic::Ordering::SeqCst;
        let (_tx, mut rx, seg) = mpsc_pair("alive");
        let h = seg.header();
        let from = h.head.load(SeqCst);
        // A dead sender lost the race for the frame to a live one (this
        // process), which is still writing it.
        forge_claim(h, 2, dead_pid(), from, 40, false);
        forge_claim(h, 3, std::process::id(), from, 48, true);
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvError::Timeout)
        ));
        assert_eq!(rx.skipped(), 0);
    }

    #[test]
    fn a_sender_dead_before_reserving_costs_nothing_and_frees_its_slot() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut tx, mut rx, seg) = mpsc_pair("unreserved");
        let h = seg.header();
        let from = h.head.load(SeqCst);
        // Killed after claiming, before its compare-and-swap.
        forge_claim(h, 1, dead_pid(), from, 40, false);
        tx.send(b"x").unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"x");
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvError::Timeout)
        ));
        assert_eq!(rx.skipped(), 0);
        // The receiver is past what it claimed: its slot goes to the next
        // sender to open.
        let _tx2 = Sender::builder(tx.name()).open().unwrap();
        let (_, pid) = layout::slot::unpack(h.senders[1].state_pid.load(SeqCst));
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn multi_producer_senders_interleave_without_loss() {
        let name = unique("mpsc");
        let mut rx = Receiver::builder(&name)
            .capacity(1024)
            .max_message_size(64)
            .mode(Mode::Mpsc)
            .create()
            .unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let mut tx = Sender::builder(&name).open().unwrap();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let mut m = vec![t];
                        m.extend_from_slice(&i.to_le_bytes());
                        tx.send(&m).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        let mut ids = std::collections::HashSet::new();
        for _ in 0..2000 {
            let mut m = Vec::new();
            let id = rx.recv_into(&mut m, Some(Duration::from_secs(10))).unwrap();
            assert!(ids.insert(id));
            let t = m[0] as usize;
            let i = u32::from_le_bytes(m[1..5].try_into().unwrap());
            // Each sender's messages stay in its own order.
            assert_eq!(i, next[t]);
            next[t] += 1;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(RecvError::Disconnected)
        ));
    }
}
