//! Frames off a byte stream: for a dashboard attached to a recording
//! through a socket, where the live feed arrives as
//! [`ipc_events::live::encode_frame`] wrote it (a length, then JSON).

use std::io::{self, Read};
use std::sync::mpsc::Sender;

use ipc_events::live::{decode_frame, frame_len, Frame, FrameError};

/// Why reading the feed stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReadFramesError {
    /// The stream failed (not a clean end between frames).
    #[error("reading live-feed frame {index}")]
    Io {
        /// Frames read before it.
        index: u64,
        #[source]
        source: io::Error,
    },
    /// A frame that is too large or not valid.
    #[error("live-feed frame {index}")]
    Frame {
        /// Frames read before it.
        index: u64,
        #[source]
        source: FrameError,
    },
    /// The stream ended inside a frame.
    #[error("live-feed frame {index} cut short: {got} of its {of} {part} bytes")]
    Cut {
        /// Frames read before it.
        index: u64,
        /// `"header"` or `"body"`.
        part: &'static str,
        /// Bytes of that part that came, and the bytes it has.
        got: usize,
        of: usize,
    },
}

/// Reads frames from `stream` and sends them on `frames` until the stream
/// ends cleanly (between two frames) or the dashboard hangs up; returns
/// how many frames were sent. Run it on the feed thread that
/// [`crate::run_live`]'s receiver is fed from; when it fails, its sender
/// drops, the dashboard says the feed was lost, and the error is the
/// caller's to report. A length over [`ipc_events::live::MAX_FRAME`] is
/// refused before anything is allocated; how long a read may wait is the
/// stream's to bound (a socket's read timeout).
pub fn read_frames(mut stream: impl Read, frames: &Sender<Frame>) -> Result<u64, ReadFramesError> {
    let mut sent = 0;
    let mut body = Vec::new();
    loop {
        let io = |source| ReadFramesError::Io {
            index: sent,
            source,
        };
        let cut = |part, got, of| ReadFramesError::Cut {
            index: sent,
            part,
            got,
            of,
        };
        let mut header = [0; 4];
        match fill(&mut stream, &mut header).map_err(io)? {
            0 => return Ok(sent),
            4 => {}
            got => return Err(cut("header", got, 4)),
        }
        let len = frame_len(header).map_err(|source| ReadFramesError::Frame {
            index: sent,
            source,
        })?;
        body.resize(len, 0);
        let got = fill(&mut stream, &mut body).map_err(io)?;
        if got < len {
            return Err(cut("body", got, len));
        }
        let frame = decode_frame(&body).map_err(|source| ReadFramesError::Frame {
            index: sent,
            source,
        })?;
        if frames.send(frame).is_err() {
            // The dashboard quit: not an error, just the end.
            return Ok(sent);
        }
        sent += 1;
    }
}

/// Reads until `buf` is full or the stream ends; how much was read.
/// Unlike `read_exact`, it says how far a stream that ended early got,
/// which tells a clean end (before a frame) from a cut one.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::snapshot_with_deadlock;
    use ipc_events::live::{encode_frame, PROTOCOL_VERSION};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id: 7,
            },
            Frame::Snapshot(Box::new(snapshot_with_deadlock(true))),
            Frame::End {
                exit_status: Some(0),
            },
        ]
    }

    #[test]
    fn frames_cross_a_real_socket_in_order() {
        let (mut tx_sock, rx_sock) = UnixStream::pair().unwrap();
        rx_sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let writer = std::thread::spawn(move || {
            for f in frames() {
                // Dribble each frame in two writes: reads must reassemble.
                let bytes = encode_frame(&f);
                let (a, b) = bytes.split_at(bytes.len() / 2);
                tx_sock.write_all(a).unwrap();
                tx_sock.write_all(b).unwrap();
            }
        });
        let (tx, rx) = mpsc::channel();
        assert_eq!(read_frames(rx_sock, &tx).unwrap(), 3);
        writer.join().unwrap();
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), frames());
    }

    #[test]
    fn broken_streams_are_precise_errors() {
        let (tx, _rx) = mpsc::channel();
        let good = encode_frame(&frames()[0]);

        let mut cut = good.clone();
        cut.extend_from_slice(&good[..good.len() - 1]);
        let err = read_frames(&cut[..], &tx).unwrap_err();
        let body = good.len() - 4;
        assert!(
            matches!(err, ReadFramesError::Cut { index: 1, part: "body", got, of } if got == body - 1 && of == body),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "live-feed frame 1 cut short: {} of its {body} body bytes",
                body - 1
            )
        );

        let mut cut = good.clone();
        cut.extend_from_slice(&good[..3]);
        let err = read_frames(&cut[..], &tx).unwrap_err();
        assert_eq!(
            err.to_string(),
            "live-feed frame 1 cut short: 3 of its 4 header bytes"
        );

        let huge = u32::MAX.to_le_bytes();
        let err = read_frames(&huge[..], &tx).unwrap_err();
        assert!(matches!(
            err,
            ReadFramesError::Frame {
                index: 0,
                source: FrameError::TooLarge(_)
            }
        ));

        let mut junk = 3u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"{x}");
        let err = read_frames(&junk[..], &tx).unwrap_err();
        assert!(matches!(
            err,
            ReadFramesError::Frame {
                source: FrameError::Malformed(_),
                ..
            }
        ));
        assert_eq!(
            read_frames(&[][..], &tx).unwrap(),
            0,
            "an empty stream is a clean end"
        );
    }

    #[test]
    fn a_dashboard_that_quit_ends_the_read() {
        let (tx, rx) = mpsc::channel();
        drop(rx);
        let bytes: Vec<u8> = frames().iter().flat_map(encode_frame).collect();
        assert_eq!(read_frames(&bytes[..], &tx).unwrap(), 0);
    }

    #[test]
    fn a_feed_that_dribbles_its_frames_is_read_whole() {
        let (mut tx_sock, rx_sock) = UnixStream::pair().unwrap();
        rx_sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Small frames: a byte at a time takes a while.
        let small = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                session_id: 4,
            },
            Frame::Snapshot(Box::new(ipc_events::live::Snapshot {
                session_id: 4,
                session_name: "slow".into(),
                ..Default::default()
            })),
            Frame::Delta(Box::default()),
            Frame::End {
                exit_status: Some(0),
            },
        ];
        let bytes: Vec<u8> = small.iter().flat_map(encode_frame).collect();
        let writer = std::thread::spawn(move || {
            // A byte at a time, each its own write after a pause, and one
            // longer pause inside a header: every read comes up short.
            for (i, byte) in bytes.iter().enumerate() {
                let pause = if i == 2 { 50_000 } else { 100 };
                std::thread::sleep(Duration::from_micros(pause));
                tx_sock.write_all(&[*byte]).unwrap();
            }
        });
        let (tx, rx) = mpsc::channel();
        assert_eq!(read_frames(rx_sock, &tx).unwrap(), 4);
        writer.join().unwrap();
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), small);
    }

    /// Property tests: the reader, and the dashboard behind it, against
    /// streams of anything at all, from random bytes to real frame
    /// streams with one thing broken.
    mod hostile {
        use super::*;
        use crate::app::{App, FeedError};
        use ipc_events::live::{Delta, Snapshot, MAX_FRAME};
        use proptest::prelude::*;
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        /// The system allocator, noting the largest single allocation
        /// made by a thread while it is being watched ([`largest_allocation`]).
        /// It serves every test in this binary; unwatched threads pay
        /// one thread-local read per allocation.
        struct Watching;

        thread_local! {
            static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
        }

        fn note(size: usize) {
            // `try_with`: allocations can happen while a thread's locals
            // are being torn down.
            let _ = LARGEST.try_with(|l| {
                if let Some(largest) = l.get() {
                    l.set(Some(largest.max(size)));
                }
            });
        }

        // SAFETY: every call is passed to the system allocator unchanged;
        // `note` allocates nothing (a const-initialised thread local).
        unsafe impl GlobalAlloc for Watching {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: the caller's contract, passed on.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: Watching = Watching;

        /// What the reader made of a stream, and what the dashboard made of
        /// the frames it passed on.
        #[derive(Debug)]
        struct Outcome {
            frames: Vec<Frame>,
            result: Result<u64, ReadFramesError>,
            largest_allocation: usize,
            dashboard: Result<(), FeedError>,
        }

        fn read(bytes: &[u8]) -> Outcome {
            let (tx, rx) = mpsc::channel();
            LARGEST.with(|l| l.set(Some(0)));
            let result = read_frames(bytes, &tx);
            let largest_allocation = LARGEST.with(|l| l.take()).unwrap_or(0);
            drop(tx);
            let frames: Vec<Frame> = rx.iter().collect();
            let mut app = App::live();
            let dashboard = frames.iter().try_for_each(|f| app.on_frame(f.clone()));
            app.on_feed_closed();
            Outcome {
                frames,
                result,
                largest_allocation,
                dashboard,
            }
        }

        fn frame() -> impl Strategy<Value = Frame> {
            prop_oneof![
                (
                    prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
                    any::<i64>()
                )
                    .prop_map(|(version, session_id)| Frame::Hello {
                        version,
                        session_id
                    }),
                (any::<i64>(), ".{0,40}").prop_map(|(session_id, session_name)| {
                    Frame::Snapshot(Box::new(Snapshot {
                        session_id,
                        session_name,
                        ..Snapshot::default()
                    }))
                }),
                any::<u64>().prop_map(|now_ns| Frame::Delta(Box::new(Delta {
                    now_ns,
                    ..Delta::default()
                }))),
                any::<Option<i32>>().prop_map(|exit_status| Frame::End { exit_status }),
            ]
        }

        /// One thing broken in a stream of frames.
        #[derive(Clone, Debug)]
        enum Break {
            /// A byte XORed with a nonzero mask.
            Flip { at: Spot, mask: u8 },
            /// The stream ends early.
            Cut { at: Spot },
            /// A frame's length header says something else.
            Length { frame: usize, len: u32 },
            /// Random bytes inserted.
            Insert { at: Spot, bytes: Vec<u8> },
        }

        /// A place in a stream: a frame (wrapping), and an offset into it
        /// (wrapping to its length, its end included), near its start
        /// (in the length header) half the time.
        #[derive(Clone, Copy, Debug)]
        struct Spot {
            frame: usize,
            offset: usize,
        }

        fn spot() -> impl Strategy<Value = Spot> {
            (any::<usize>(), prop_oneof![0usize..6, any::<usize>()])
                .prop_map(|(frame, offset)| Spot { frame, offset })
        }

        impl Spot {
            /// The byte offset in a stream whose frames start at `starts`
            /// (the last entry is where the stream ends).
            fn resolve(self, starts: &[usize]) -> usize {
                let frames = starts.len() - 1;
                if frames == 0 {
                    return 0;
                }
                let i = self.frame % frames;
                starts[i] + self.offset % (starts[i + 1] - starts[i] + 1)
            }
        }

        fn broken() -> impl Strategy<Value = Break> {
            let len = prop_oneof![
                Just(u32::MAX),
                Just(MAX_FRAME as u32 + 1),
                any::<u32>(),
                0u32..600,
            ];
            prop_oneof![
                (spot(), 1u8..).prop_map(|(at, mask)| Break::Flip { at, mask }),
                spot().prop_map(|at| Break::Cut { at }),
                (any::<usize>(), len).prop_map(|(frame, len)| Break::Length { frame, len }),
                (spot(), proptest::collection::vec(any::<u8>(), 1..16))
                    .prop_map(|(at, bytes)| Break::Insert { at, bytes }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Whatever a stream holds, the reader stops with an error or a
            /// clean end and allocates no more than the frame limit, and
            /// the dashboard takes what it passed on without panicking.
            #[test]
            fn random_bytes_are_an_error_or_an_end(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                prefix in proptest::option::of(any::<[u8; 4]>()),
            ) {
                let bytes = prefix.map_or(bytes.clone(), |p| [p.to_vec(), bytes].concat());
                let out = read(&bytes);
                prop_assert!(out.largest_allocation <= MAX_FRAME, "{out:?}");
                if let Ok(n) = out.result {
                    prop_assert_eq!(n as usize, out.frames.len());
                }
            }

            /// Real frames (hellos of any version, anywhere, any number)
            /// with one thing broken: every frame before the break is read
            /// as sent, then comes a clean end or an error saying what
            /// broke; a length over the limit allocates nothing of its
            /// size; a stream cut short is an error naming the cut; and
            /// the dashboard refuses a hello of another version.
            #[test]
            fn a_broken_stream_yields_its_frames_then_a_precise_error(
                frames in proptest::collection::vec(frame(), 0..6),
                broken in broken(),
            ) {
                let mut starts = vec![0];
                for f in &frames {
                    starts.push(starts.last().unwrap() + encode_frame(f).len());
                }
                let mut bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
                let total = bytes.len();
                // The stream is sound up to here...
                let sound_to;
                match &broken {
                    Break::Flip { at, mask } => {
                        sound_to = at.resolve(&starts);
                        prop_assume!(sound_to < total);
                        bytes[sound_to] ^= mask;
                    }
                    Break::Cut { at } => {
                        sound_to = at.resolve(&starts);
                        bytes.truncate(sound_to);
                    }
                    Break::Length { frame, len } => {
                        prop_assume!(!frames.is_empty());
                        let i = frame % frames.len();
                        prop_assume!(*len as usize != starts[i + 1] - starts[i] - 4);
                        sound_to = starts[i];
                        bytes[sound_to..sound_to + 4].copy_from_slice(&len.to_le_bytes());
                    }
                    Break::Insert { at, bytes: more } => {
                        sound_to = at.resolve(&starts);
                        bytes.splice(sound_to..sound_to, more.iter().copied());
                    }
                }
                // ...so these frames are read as they were sent.
                let whole = starts[1..].iter().take_while(|&&end| end <= sound_to).count();
                let out = read(&bytes);
                prop_assert!(out.largest_allocation <= MAX_FRAME, "{out:?}");
                prop_assert!(out.frames.len() >= whole, "{out:?}");
                prop_assert_eq!(&out.frames[..whole], &frames[..whole]);
                if let Some(Frame::Hello { version, .. }) = frames[..whole]
                    .iter()
                    .find(|f| matches!(f, Frame::Hello { version, .. } if *version != PROTOCOL_VERSION))
                {
                    // Unless the dashboard stopped earlier, at a delta
                    // before any snapshot.
                    prop_assert!(
                        matches!(
                            out.dashboard,
                            Err(FeedError::Version { got }) if got == *version
                        ) || matches!(out.dashboard, Err(FeedError::DeltaBeforeSnapshot)),
                        "{out:?}"
                    );
                }
                let index = whole as u64;
                match broken {
                    Break::Cut { .. } if starts.contains(&sound_to) => {
                        // Cut between two frames: a clean end.
                        prop_assert_eq!(out.result.ok(), Some(index));
                    }
                    Break::Cut { .. } => {
                        let into = sound_to - starts[whole];
                        let (part, got, of) = if into < 4 {
                            ("header", into, 4)
                        } else {
                            ("body", into - 4, starts[whole + 1] - starts[whole] - 4)
                        };
                        prop_assert!(
                            matches!(
                                out.result,
                                Err(ReadFramesError::Cut { index: i, part: p, got: g, of: o })
                                    if i == index && p == part && g == got && o == of
                            ),
                            "{out:?}"
                        );
                    }
                    Break::Length { len, .. } if len as usize > MAX_FRAME => {
                        prop_assert!(
                            matches!(
                                out.result,
                                Err(ReadFramesError::Frame { index: i, source: FrameError::TooLarge(l) })
                                    if i == index && l == len as usize
                            ),
                            "{out:?}"
                        );
                        // Refused before its body was allocated: what was
                        // allocated is the size of the small frames sent.
                        prop_assert!(out.largest_allocation < 1 << 20, "{out:?}");
                    }
                    Break::Length { .. } if out.frames.len() == whole => {
                        // Too short, the JSON is cut; too long, it runs
                        // into the next frame or past the end. (Once in a
                        // while it takes in one byte that JSON reads as
                        // whitespace, and the frame passes, the stream out
                        // of step from there.)
                        prop_assert!(
                            matches!(
                                out.result,
                                Err(ReadFramesError::Frame { index: i, source: FrameError::Malformed(_) }
                                    | ReadFramesError::Cut { index: i, part: "body", .. })
                                    if i == index
                            ),
                            "{out:?}"
                        );
                    }
                    Break::Length { .. } | Break::Flip { .. } | Break::Insert { .. } => {
                        if let Ok(n) = out.result {
                            prop_assert_eq!(n as usize, out.frames.len());
                        }
                    }
                }
            }
        }
    }
}
