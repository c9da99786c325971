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
}

/// Reads frames from `stream` and sends them on `frames` until the stream
/// ends cleanly (between two frames) or the dashboard hangs up; returns
/// how many frames were sent. Run it on the feed thread that
/// [`crate::run_live`]'s receiver is fed from; when it fails, its sender
/// drops, the dashboard says the feed was lost, and the error is the
/// caller's to report.
pub fn read_frames(mut stream: impl Read, frames: &Sender<Frame>) -> Result<u64, ReadFramesError> {
    let mut sent = 0;
    let mut body = Vec::new();
    loop {
        let io = |source| ReadFramesError::Io {
            index: sent,
            source,
        };
        let mut header = [0; 4];
        match read_exact_or_eof(&mut stream, &mut header).map_err(io)? {
            Filled::Eof => return Ok(sent),
            Filled::All => {}
        }
        let len = frame_len(header).map_err(|source| ReadFramesError::Frame {
            index: sent,
            source,
        })?;
        body.resize(len, 0);
        stream.read_exact(&mut body).map_err(io)?;
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

enum Filled {
    All,
    /// The stream ended before the first byte.
    Eof,
}

/// Like `read_exact`, but a stream that ends before the first byte is a
/// clean end rather than an error (an end mid-buffer still is one).
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<Filled> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(Filled::Eof),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Filled::All)
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
        assert!(matches!(err, ReadFramesError::Io { index: 1, .. }), "{err}");
        assert_eq!(err.to_string(), "reading live-feed frame 1");

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
}
