//! The first exchange on a new connection, both sides of it: the worker introduces itself
//! with a [`Hello`] (the protocol version first, then the one-time token the gateway gave
//! it) and the gateway answers with a [`Welcome`].
//!
//! The version leads the first frame and is read before the rest, so a peer of another
//! version is told so plainly instead of failing to decode a `Hello` whose layout changed;
//! `Welcome` keeps one layout across versions, so such a worker can still read why it was
//! turned away. What the gateway checks between the two frames (the token, the peer's
//! credentials) is the gateway's business; the shape of the exchange is here.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{self, CodecError};
use crate::connection::Connection;
use crate::frame::FrameError;
use crate::wire::{PROTOCOL_VERSION, Secret};

/// The first frame a worker sends. `version` must stay the first field.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub token: Secret,
    pub pid: u32,
}

/// The gateway's answer to [`Hello`]. Its layout must stay stable across versions, so a
/// worker of another version can still read why it was turned away.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Welcome {
    Accepted,
    Rejected { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("not a hermes handshake: {0}")]
    Undecodable(#[source] CodecError),
    /// The gateway turned this worker away.
    #[error("the gateway refused this worker: {reason}")]
    Rejected { reason: String },
    #[error("handshake: {0}")]
    Frame(#[from] FrameError),
}

/// The worker's side: introduces this process with `token` and waits for the answer.
pub async fn introduce<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    token: &Secret,
) -> Result<(), HandshakeError> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        token: token.clone(),
        pid: std::process::id(),
    };
    conn.write_frame(&hello).await?;
    match conn.read_frame::<Welcome>().await? {
        Welcome::Accepted => Ok(()),
        Welcome::Rejected { reason } => Err(HandshakeError::Rejected { reason }),
    }
}

/// The gateway's side, first half: the peer's [`Hello`]. A first frame that is not a
/// `Hello` of this version is answered with why and refused here.
pub async fn receive_hello<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
) -> Result<Hello, HandshakeError> {
    match conn.read_payload_with(decode_hello).await? {
        Ok(hello) => Ok(hello),
        Err(e) => {
            refuse(conn, &e.to_string()).await;
            Err(e)
        }
    }
}

/// The gateway's side, second half, when the peer is who it claims to be.
pub async fn accept<S: AsyncWrite + Unpin>(conn: &mut Connection<S>) -> Result<(), FrameError> {
    conn.write_frame(&Welcome::Accepted).await
}

/// The gateway's side, second half, when it is not: the peer is told `reason` if it still
/// listens.
pub async fn refuse<S: AsyncWrite + Unpin>(conn: &mut Connection<S>, reason: &str) {
    let _ = conn
        .write_frame(&Welcome::Rejected {
            reason: reason.to_string(),
        })
        .await;
}

/// Decodes a handshake payload, reading the version before anything else.
pub(crate) fn decode_hello(payload: &[u8]) -> Result<Hello, HandshakeError> {
    let theirs: u32 = codec::prefix_from_bytes(payload).map_err(HandshakeError::Undecodable)?;
    if theirs != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    codec::from_bytes(payload).map_err(HandshakeError::Undecodable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32) -> Vec<u8> {
        codec::to_bytes(&Hello {
            version,
            token: Secret::new("t0k3n"),
            pid: 42,
        })
        .unwrap()
    }

    #[test]
    fn hello_of_this_version_decodes() {
        let h = decode_hello(&hello(PROTOCOL_VERSION)).unwrap();
        assert_eq!(h.token.expose(), "t0k3n");
        assert_eq!(h.pid, 42);
    }

    #[test]
    fn hello_of_another_version_is_a_mismatch_not_garbage() {
        match decode_hello(&hello(PROTOCOL_VERSION + 1)) {
            Err(HandshakeError::VersionMismatch { ours, theirs }) => {
                assert_eq!(ours, PROTOCOL_VERSION);
                assert_eq!(theirs, PROTOCOL_VERSION + 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_hello_is_undecodable() {
        assert!(matches!(
            decode_hello(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(HandshakeError::Undecodable(_))
        ));
        assert!(matches!(
            decode_hello(&[]),
            Err(HandshakeError::Undecodable(_))
        ));
    }

    /// Both sides over one socket pair: accepted, refused, and a worker of another version
    /// told why.
    #[tokio::test]
    async fn both_sides_agree() {
        let token = Secret::new("t0k3n");
        for verdict in [None, Some("authentication failed")] {
            let (a, b) = tokio::io::duplex(1024);
            let (mut worker, mut gateway) = (Connection::new(a), Connection::new(b));
            let gateway_side = async {
                let hello = receive_hello(&mut gateway).await.unwrap();
                assert_eq!(hello.token.expose(), "t0k3n");
                assert_eq!(hello.pid, std::process::id());
                match verdict {
                    None => accept(&mut gateway).await.unwrap(),
                    Some(reason) => refuse(&mut gateway, reason).await,
                }
            };
            let (introduced, ()) = tokio::join!(introduce(&mut worker, &token), gateway_side);
            match (verdict, introduced) {
                (None, Ok(())) => {}
                (Some(why), Err(HandshakeError::Rejected { reason })) => assert_eq!(reason, why),
                (verdict, other) => panic!("{verdict:?}: {other:?}"),
            }
        }

        let (a, b) = tokio::io::duplex(1024);
        let (mut worker, mut gateway) = (Connection::new(a), Connection::new(b));
        let newer = Hello {
            version: PROTOCOL_VERSION + 1,
            token,
            pid: 1,
        };
        worker.write_frame(&newer).await.unwrap();
        assert!(matches!(
            receive_hello(&mut gateway).await,
            Err(HandshakeError::VersionMismatch { .. })
        ));
        match worker.read_frame::<Welcome>().await.unwrap() {
            Welcome::Rejected { reason } => assert!(reason.contains("version"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
