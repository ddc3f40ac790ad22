//! The local socket workers connect to, and the check that a connection really is the
//! worker the gateway just started.
//!
//! The socket lives in a directory only the gateway's user can enter (0700). Each worker
//! is started with a one-time token; a connection is handed to the supervisor only when
//! its first frame is a [`Hello`](hermes_protocol::Hello) of this protocol version carrying a pending token, and
//! the kernel's peer credentials agree: same user, and the very process the token was
//! issued to. Anything else is answered (when it is a readable handshake) and dropped. A
//! worker forked from the template does not connect here: it is given one end of a socket
//! pair ([`introduced`]).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_protocol::{Connection, FrameError, HandshakeError, handshake};
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use tokio_util::sync::CancellationToken;

/// A worker that has not sent its first frame by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the outcome of a worker's authentication goes: its connection, or why it was
/// refused (so the supervisor gives up on it at once instead of waiting for a timeout).
pub type Connected = Result<Connection<Stream>, AuthRefusal>;

/// Why a connection's claim to be a worker the gateway started does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("unknown or already used token")]
    UnknownToken,
    #[error("peer runs as another user")]
    OtherUser,
    #[error("token issued to pid {issued_to} presented by pid {presented_by:?} (claims {claimed})")]
    WrongProcess {
        issued_to: u32,
        presented_by: Option<u32>,
        claimed: u32,
    },
    /// A worker binary of another build: its messages would not decode here.
    #[error(
        "protocol version mismatch: the worker speaks protocol {theirs}, this gateway {ours}; \
         install hermes-worker from the same build as hermes-gateway (workers.command)"
    )]
    OtherVersion { ours: u32, theirs: u32 },
}

/// Why the listener let a connection go without handing it to the supervisor.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("peer credentials: {0}")]
    PeerCredentials(io::Error),
    #[error("{0}")]
    Refused(AuthRefusal),
    #[error("welcome: {0}")]
    Welcome(FrameError),
    #[error("the supervisor stopped waiting for this worker")]
    NobodyWaiting,
}

struct Pending {
    pid: u32,
    connected: tokio::sync::oneshot::Sender<Connected>,
}

/// Tokens handed out and not yet used, shared by the accept loop and the supervisor.
#[derive(Clone, Default)]
pub struct PendingWorkers(Arc<Mutex<HashMap<String, Pending>>>);

impl PendingWorkers {
    /// Registers a token just issued to the worker `pid`; the receiver gets its connection
    /// once it proves itself. Call right after spawning, before any `.await`, so the entry
    /// exists before the worker can possibly have connected.
    pub fn register(&self, token: &str, pid: u32) -> tokio::sync::oneshot::Receiver<Connected> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock()
            .insert(token.to_string(), Pending { pid, connected: tx });
        rx
    }

    /// Withdraws a token whose worker was given up on.
    pub fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A poisoned map only means another task panicked while holding it; the map itself
        // is still consistent (every operation is a single insert or remove).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker the gateway started failed to authenticate: tell whoever waits for it.
    fn refuse_pid(&self, pid: Option<u32>, reason: &AuthRefusal) {
        let Some(pid) = pid else { return };
        let mut pending = self.lock();
        let token = pending
            .iter()
            .find(|(_, p)| p.pid == pid)
            .map(|(token, _)| token.clone());
        if let Some(entry) = token.and_then(|t| pending.remove(&t)) {
            let _ = entry.connected.send(Err(reason.clone()));
        }
    }

    /// Checks a claimed identity and, when it holds, removes the token and returns where
    /// to deliver the connection. A failed check leaves the token for its rightful owner.
    fn claim(
        &self,
        token: &str,
        claimed_pid: u32,
        peer_pid: Option<u32>,
        peer_uid_ok: bool,
    ) -> Result<tokio::sync::oneshot::Sender<Connected>, AuthRefusal> {
        let mut pending = self.lock();
        let Some(entry) = pending.get(token) else {
            return Err(AuthRefusal::UnknownToken);
        };
        if !peer_uid_ok {
            return Err(AuthRefusal::OtherUser);
        }
        if peer_pid != Some(entry.pid) || claimed_pid != entry.pid {
            return Err(AuthRefusal::WrongProcess {
                issued_to: entry.pid,
                presented_by: peer_pid,
                claimed: claimed_pid,
            });
        }
        pending
            .remove(token)
            .map(|p| p.connected)
            .ok_or(AuthRefusal::UnknownToken)
    }
}

/// Creates the private directory and the socket in it.
pub fn bind(dir: &Path) -> io::Result<(Listener, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(format!("gateway-{}.sock", std::process::id()));
    let name = path.clone().to_fs_name::<GenericFilePath>()?;
    let listener = ListenerOptions::new()
        .name(name)
        .try_overwrite(true)
        .create_tokio()?;
    Ok((listener, path))
}

/// Accepts connections until `stop`, authenticating each in its own task so a silent
/// client cannot hold up the others.
pub async fn accept_loop(listener: Listener, pending: PendingWorkers, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("worker socket accept failed: {e}");
                    // Accept errors (EMFILE, ENFILE) persist for a moment; do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let pending = pending.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(stream, &pending)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => tracing::warn!("worker connection refused: {reason}"),
                Err(_) => tracing::warn!(
                    "worker connection refused: no handshake within {HANDSHAKE_TIMEOUT:?}"
                ),
            }
        });
    }
}

async fn authenticate(stream: Stream, pending: &PendingWorkers) -> Result<(), Dropped> {
    let mut conn = Connection::new(stream);
    let hello = handshake::receive_hello(&mut conn).await;
    let creds = conn
        .get_ref()
        .peer_creds()
        .map_err(Dropped::PeerCredentials)?;
    let peer_pid = creds.pid().and_then(|p| u32::try_from(p).ok());
    let hello = match hello {
        Ok(hello) => hello,
        // A worker of another version was told why; the supervisor waiting for it is
        // told too, at once, rather than after the connect timeout.
        Err(HandshakeError::VersionMismatch { ours, theirs }) => {
            let refusal = AuthRefusal::OtherVersion { ours, theirs };
            pending.refuse_pid(peer_pid, &refusal);
            return Err(Dropped::Refused(refusal));
        }
        Err(e) => return Err(e.into()),
    };
    let peer_uid_ok = creds.euid() == Some(nix::unistd::geteuid().as_raw());
    match pending.claim(hello.token.expose(), hello.pid, peer_pid, peer_uid_ok) {
        Ok(deliver) => {
            handshake::accept(&mut conn)
                .await
                .map_err(Dropped::Welcome)?;
            deliver.send(Ok(conn)).map_err(|_| Dropped::NobodyWaiting)
        }
        Err(refusal) => {
            handshake::refuse(&mut conn, "authentication failed").await;
            pending.refuse_pid(peer_pid, &refusal);
            Err(Dropped::Refused(refusal))
        }
    }
}

/// A forked worker's connection: the gateway's end of a socket pair whose other end went
/// to that worker alone (through the template), so there is no peer to check; its hello
/// must still be of this protocol version and carry its token and pid. `None` when what
/// came was no hello (the worker is then given up on as never connected).
pub async fn introduced(stream: Stream, token: String, pid: u32) -> Option<Connected> {
    let mut conn = Connection::new(stream);
    let hello = match handshake::receive_hello(&mut conn).await {
        Ok(hello) => hello,
        Err(HandshakeError::VersionMismatch { ours, theirs }) => {
            return Some(Err(AuthRefusal::OtherVersion { ours, theirs }));
        }
        Err(e) => {
            tracing::warn!(worker_pid = pid, "a forked worker's hello: {e}");
            return None;
        }
    };
    if hello.token.expose() != token {
        handshake::refuse(&mut conn, "authentication failed").await;
        return Some(Err(AuthRefusal::UnknownToken));
    }
    if hello.pid != pid {
        handshake::refuse(&mut conn, "authentication failed").await;
        return Some(Err(AuthRefusal::WrongProcess {
            issued_to: pid,
            presented_by: Some(pid),
            claimed: hello.pid,
        }));
    }
    match handshake::accept(&mut conn).await {
        Ok(()) => Some(Ok(conn)),
        Err(e) => {
            tracing::warn!(worker_pid = pid, "welcome to a forked worker: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_claimed_once_and_only_by_its_process() {
        let pending = PendingWorkers::default();
        let _rx = pending.register("t", 42);
        assert_eq!(
            pending.claim("nope", 42, Some(42), true).err(),
            Some(AuthRefusal::UnknownToken)
        );
        assert!(pending.claim("t", 42, Some(43), true).is_err());
        assert!(pending.claim("t", 41, Some(42), true).is_err());
        assert_eq!(
            pending.claim("t", 42, Some(42), false).err(),
            Some(AuthRefusal::OtherUser)
        );
        assert!(pending.claim("t", 42, Some(42), true).is_ok());
        assert!(pending.claim("t", 42, Some(42), true).is_err());
    }

    /// A forked worker's end of a socket pair, introducing itself with `token`; the
    /// gateway's end, for [`introduced`].
    fn pair_with_worker(token: &'static str) -> (Stream, tokio::task::JoinHandle<bool>) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let stream = |s: std::os::unix::net::UnixStream| -> Stream {
            s.set_nonblocking(true).expect("non-blocking");
            interprocess::os::unix::uds_local_socket::tokio::Stream::try_from(
                std::os::fd::OwnedFd::from(s),
            )
            .expect("a tokio stream")
            .into()
        };
        let worker = stream(theirs);
        let introducing = tokio::spawn(async move {
            let mut conn = Connection::new(worker);
            handshake::introduce(&mut conn, &hermes_protocol::Secret::new(token))
                .await
                .is_ok()
        });
        (stream(ours), introducing)
    }

    #[tokio::test]
    async fn a_forked_worker_is_welcomed_with_its_own_token_and_pid_only() {
        let me = std::process::id();
        let (ours, worker) = pair_with_worker("right");
        assert!(matches!(
            introduced(ours, "right".into(), me).await,
            Some(Ok(_))
        ));
        assert!(worker.await.is_ok_and(|welcomed| welcomed));

        let (ours, worker) = pair_with_worker("wrong");
        assert_eq!(
            introduced(ours, "right".into(), me).await.map(|c| c.err()),
            Some(Some(AuthRefusal::UnknownToken))
        );
        assert!(worker.await.is_ok_and(|welcomed| !welcomed));

        let (ours, worker) = pair_with_worker("right");
        assert_eq!(
            introduced(ours, "right".into(), me + 1)
                .await
                .map(|c| c.err()),
            Some(Some(AuthRefusal::WrongProcess {
                issued_to: me + 1,
                presented_by: Some(me + 1),
                claimed: me,
            }))
        );
        assert!(worker.await.is_ok_and(|welcomed| !welcomed));
    }

    #[test]
    fn a_refused_worker_is_reported_to_its_waiter() {
        let pending = PendingWorkers::default();
        let mut rx = pending.register("t", 42);
        pending.refuse_pid(Some(7), &AuthRefusal::UnknownToken);
        assert!(
            rx.try_recv().is_err(),
            "another pid must not affect this worker"
        );
        pending.refuse_pid(Some(42), &AuthRefusal::OtherUser);
        assert!(matches!(rx.try_recv(), Ok(Err(AuthRefusal::OtherUser))));
    }
}
