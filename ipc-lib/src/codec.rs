//! The one encoding of typed messages: postcard (compact, varint-encoded),
//! with the error each end reports. Every typed send and receive in the
//! crate (`send_value` / `recv_value` on any end, the typed ends of
//! [`transport`](crate::transport), rpc requests) goes through these
//! functions, so the transports cannot drift apart on the wire.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{CodecError, RecvError, SendError};

/// Encodes `value` into `buf`, replacing what it held (so a caller can
/// keep one buffer for every send).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), SendError> {
    let mut out = std::mem::take(buf);
    out.clear();
    *buf = postcard::to_extend(value, out).map_err(|e| SendError::Encode(CodecError::from(e)))?;
    Ok(())
}

/// Encodes `value` into a new buffer.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SendError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes message `msg_id` as a `T`: [`RecvError::Decode`] naming the
/// message, the type and what the codec found wrong when it is not one.
pub(crate) fn decode<T: DeserializeOwned>(buf: &[u8], msg_id: u64) -> Result<T, RecvError> {
    decode_bytes(buf).map_err(|source| RecvError::Decode {
        msg_id,
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes `buf` as a `T`, for callers whose bytes are not a channel
/// message (an rpc reply) and who wrap the error their own way.
pub(crate) fn decode_bytes<T: DeserializeOwned>(buf: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(buf).map_err(CodecError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_holds_only_the_last_value() {
        let mut buf = Vec::new();
        encode_into("a longer first value", &mut buf).unwrap();
        encode_into(&7u8, &mut buf).unwrap();
        assert_eq!(buf, [7]);
        assert_eq!(decode::<u8>(&buf, 1).unwrap(), 7);
    }

    #[test]
    fn a_decode_error_names_the_message_and_the_type() {
        let err = decode::<(u32, String)>(&[0xff], 42).unwrap_err();
        let RecvError::Decode {
            msg_id, type_name, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*msg_id, 42);
        assert_eq!(*type_name, "(u32, alloc::string::String)");
        assert_eq!(
            err.to_string(),
            "message 42 does not decode as (u32, alloc::string::String)"
        );
        // What the codec found wrong is the error's source.
        assert!(std::error::Error::source(&err).is_some());
    }
}
