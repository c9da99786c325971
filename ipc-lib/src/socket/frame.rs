//! The bytes of one socket frame: a 24-byte header, then the payload.
//!
//! ```text
//! offset  size  field
//!      0     4  magic     what the frame is (DATA, CALL, REPLY, FAULT,
//!                         PANIC, HELLO)
//!      4     4  len       payload bytes that follow the header
//!      8     8  msg_id    the message id (HELLO: the receiver's maximum
//!                         message size)
//!     16     8  reply_to  REPLY / FAULT / PANIC: the msg_id of the request
//!                         answered; 0 otherwise
//! ```
//!
//! A CALL (an rpc request naming the method it calls) is a DATA frame
//! whose payload starts with the method's name: one byte of length (1 to
//! 255), then the name in UTF-8, then the request. A server that predates
//! CALL refuses the frame (an unknown magic) rather than take the name for
//! part of the request.
//!
//! All little-endian. SOCK_SEQPACKET keeps one frame per datagram, so the
//! header's `len` must equal the datagram's length less the header: the
//! receiver checks that, the magic, the maximum, and that ids are not 0,
//! before it believes a word of the frame.

use crate::channel::Corruption;

/// Header bytes before the payload.
pub(crate) const HEADER_LEN: usize = 24;

/// A message on a channel, or a request to an rpc server ("IPCD").
pub(crate) const DATA: u32 = u32::from_le_bytes(*b"IPCD");
/// A request to an rpc server that names its method ("IPCM").
pub(crate) const CALL: u32 = u32::from_le_bytes(*b"IPCM");
/// An rpc server's answer ("IPCR").
pub(crate) const REPLY: u32 = u32::from_le_bytes(*b"IPCR");
/// An rpc server could not handle the request ("IPCF"); the payload is the
/// reason, in UTF-8.
pub(crate) const FAULT: u32 = u32::from_le_bytes(*b"IPCF");
/// An rpc server's handler panicked on the request ("IPCP"); the payload
/// is the panic's message, in UTF-8. A client that predates it refuses
/// the frame (an unknown magic) rather than take it for a reply.
pub(crate) const PANIC: u32 = u32::from_le_bytes(*b"IPCP");
/// The receiver's greeting to a new sender ("IPCH"), carrying its maximum
/// message size in `msg_id`.
pub(crate) const HELLO: u32 = u32::from_le_bytes(*b"IPCH");

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub magic: u32,
    pub len: u32,
    pub msg_id: u64,
    pub reply_to: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.msg_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.reply_to.to_le_bytes());
        b
    }

    /// Decodes and checks the header of a datagram whose real length was
    /// `real_len` (more than `bytes` holds when it was cut short): one of
    /// the `accept`ed magics, a payload of at most `max` bytes that fills
    /// the datagram exactly, a nonzero id.
    pub(crate) fn check(
        bytes: &[u8],
        real_len: usize,
        accept: &[u32],
        max: usize,
    ) -> Result<Header, Corruption> {
        let Some(b) = bytes.get(..HEADER_LEN) else {
            return Err(Corruption::Truncated {
                size: HEADER_LEN as u64,
                available: real_len as u64,
            });
        };
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(w)
        };
        let h = Header {
            magic: word(0..4) as u32,
            len: word(4..8) as u32,
            msg_id: word(8..16),
            reply_to: word(16..24),
        };
        if !accept.contains(&h.magic) {
            return Err(Corruption::Marker { found: h.magic });
        }
        if h.len as usize > max {
            return Err(Corruption::Length {
                len: u64::from(h.len),
                max: max as u64,
            });
        }
        let size = HEADER_LEN + h.len as usize;
        if size != real_len {
            return Err(Corruption::Truncated {
                size: size as u64,
                available: real_len as u64,
            });
        }
        if h.msg_id == 0 {
            return Err(Corruption::ZeroId);
        }
        Ok(h)
    }
}

/// The payload of a CALL frame: `method`'s length and name, then `body`.
/// `None`: the name is empty or longer than a byte can say.
pub(crate) fn call_payload(method: &str, body: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(method.len()).ok().filter(|&l| l > 0)?;
    let mut payload = Vec::with_capacity(1 + method.len() + body.len());
    payload.push(len);
    payload.extend_from_slice(method.as_bytes());
    payload.extend_from_slice(body);
    Some(payload)
}

/// A CALL frame's payload split into its method and its request.
pub(crate) fn split_call(payload: &[u8]) -> Result<(&str, &[u8]), Corruption> {
    let (&len, rest) = payload.split_first().ok_or(Corruption::MethodName)?;
    let len = usize::from(len);
    if len == 0 || len > rest.len() {
        return Err(Corruption::MethodName);
    }
    let (name, body) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| Corruption::MethodName)?;
    Ok((name, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(h: Header, payload: &[u8]) -> Vec<u8> {
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v
    }

    const H: Header = Header {
        magic: DATA,
        len: 3,
        msg_id: 7,
        reply_to: 0,
    };

    #[test]
    fn a_well_formed_frame_decodes_to_its_header() {
        let f = frame(H, b"abc");
        assert_eq!(Header::check(&f, f.len(), &[DATA], 3), Ok(H));
    }

    #[test]
    fn every_lie_in_a_header_is_named() {
        let f = frame(H, b"abc");
        assert_eq!(
            Header::check(&f[..10], 10, &[DATA], 3),
            Err(Corruption::Truncated {
                size: 24,
                available: 10
            })
        );
        assert_eq!(
            Header::check(&f, f.len(), &[REPLY, FAULT], 3),
            Err(Corruption::Marker { found: DATA })
        );
        assert_eq!(
            Header::check(&f, f.len(), &[DATA], 2),
            Err(Corruption::Length { len: 3, max: 2 })
        );
        // The header says 3 bytes; the datagram has 5, or was cut to 1.
        let long = frame(H, b"abcde");
        assert_eq!(
            Header::check(&long, long.len(), &[DATA], 10),
            Err(Corruption::Truncated {
                size: 27,
                available: 29
            })
        );
        assert_eq!(
            Header::check(&f[..25], 25, &[DATA], 10),
            Err(Corruption::Truncated {
                size: 27,
                available: 25
            })
        );
        let zero = frame(Header { msg_id: 0, ..H }, b"abc");
        assert_eq!(
            Header::check(&zero, zero.len(), &[DATA], 3),
            Err(Corruption::ZeroId)
        );
    }

    #[test]
    fn a_call_payload_splits_back_and_malformed_names_are_refused() {
        let p = call_payload("stats", b"req").unwrap();
        assert_eq!(split_call(&p), Ok(("stats", &b"req"[..])));
        assert_eq!(call_payload("", b"x"), None);
        assert_eq!(call_payload(&"m".repeat(256), b"x"), None);
        for bad in [&[][..], &[0, 1], &[5, b'a'], &[2, 0xff, 0xfe]] {
            assert_eq!(split_call(bad), Err(Corruption::MethodName), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever a peer sends, the check answers without panicking, and
        /// says yes only to a frame that is consistent in every field.
        #[test]
        fn any_datagram_is_judged_and_only_consistent_ones_pass(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            cut in 0usize..40,
            max in 0usize..64,
        ) {
            // A datagram of `bytes.len() + cut` bytes of which the buffer
            // kept `bytes`.
            let real = bytes.len() + cut;
            if let Ok(h) = Header::check(&bytes, real, &[DATA, REPLY], max) {
                proptest::prop_assert_eq!(HEADER_LEN + h.len as usize, real);
                proptest::prop_assert!(h.len as usize <= max);
                proptest::prop_assert!(h.msg_id != 0);
                proptest::prop_assert!(h.magic == DATA || h.magic == REPLY);
            }
        }

        #[test]
        fn encoded_headers_check_back(
            len in 0u32..64,
            msg_id in 1u64..,
            reply_to in proptest::prelude::any::<u64>(),
        ) {
            let h = Header { magic: REPLY, len, msg_id, reply_to };
            let f = frame(h, &vec![0; len as usize]);
            proptest::prop_assert_eq!(Header::check(&f, f.len(), &[REPLY], 64), Ok(h));
        }
    }
}
