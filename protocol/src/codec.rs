//! The serde format of a frame's payload.
//!
//! postcard 1.x: compact, serde-native and maintained (bincode, the usual alternative, is
//! unmaintained). Nothing outside this module names postcard, so swapping the format is a
//! change to these two functions and the protocol version.

use serde::{Serialize, de::DeserializeOwned};

/// Why a payload could not be turned into a message or back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(#[from] postcard::Error);

pub fn to_bytes<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(message)?)
}

/// Decodes a whole payload: trailing bytes are an error, so a frame means exactly one message.
pub fn from_bytes<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(payload)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(CodecError(postcard::Error::DeserializeBadEncoding))
    }
}

/// Decodes the first value of a payload and ignores the rest. Used only for the protocol
/// version that leads the handshake, so a peer of another version can be told so plainly
/// instead of failing to decode a `Hello` whose layout changed.
pub fn prefix_from_bytes<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    Ok(postcard::take_from_bytes(payload)?.0)
}
