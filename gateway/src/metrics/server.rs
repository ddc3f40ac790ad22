//! The metrics endpoint: `GET /metrics` over plain HTTP/1.x on a TCP address or a Unix
//! socket, for a scraper the operator runs.
//!
//! It runs on the gateway's own thread, so nothing a scraper does may hold that thread or
//! anything else: at most [`MAX_CONNECTIONS`] at once (more are closed at once), a request
//! must arrive within [`IO_TIMEOUT`] and fit in [`MAX_REQUEST`], the answer is rendered
//! whole before the first byte is written (no lock is held while a slow reader reads) and
//! must be taken within [`IO_TIMEOUT`], and every connection is closed after one answer.
//! A hand-written server of about a hundred lines rather than an HTTP library: the parent's
//! dependencies stay what polling Telegram needs.

use std::sync::Arc;
use std::time::Duration;

use hermes_config::MetricsListen;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Scrapes served at once; a scraper needs one.
pub const MAX_CONNECTIONS: usize = 4;
/// For the request to arrive, and again for the answer to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A request head larger than this is refused.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Renders the page at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds `listen`; the endpoint serves until `stop`. A bind that fails is the caller's to
/// report: the gateway runs on without metrics rather than not at all.
pub async fn start(
    listen: &MetricsListen,
    render: Render,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = match listen {
        MetricsListen::Tcp(addr) => Listener::Tcp(tokio::net::TcpListener::bind(addr).await?),
        MetricsListen::Unix(path) => {
            // A socket left by a previous run of this instance (the state is one
            // gateway's alone, by its lock).
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            Listener::Unix(tokio::net::UnixListener::bind(path)?)
        }
    };
    tokio::spawn(accept_loop(listener, render, stop));
    Ok(())
}

async fn accept_loop(listener: Listener, render: Render, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = accept(&listener) => accepted,
        };
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("metrics endpoint: accept failed: {e}");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the bound the connection is dropped (closed) at once.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            match conn {
                Conn::Tcp(s) => serve(s, &render).await,
                Conn::Unix(s) => serve(s, &render).await,
            }
            drop(permit);
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    Ok(match listener {
        Listener::Tcp(l) => Conn::Tcp(l.accept().await?.0),
        Listener::Unix(l) => Conn::Unix(l.accept().await?.0),
    })
}

/// One request, one answer, closed.
async fn serve(mut stream: impl AsyncRead + AsyncWrite + Unpin, render: &Render) {
    let Ok(Some(head)) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let first = head.lines().next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let response = match (method, path) {
        (Some("GET"), "/metrics") => answer(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &render(),
        ),
        (Some("GET"), _) => answer("404 Not Found", "text/plain", "try /metrics\n"),
        _ => answer("405 Method Not Allowed", "text/plain", "GET only\n"),
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The request head (up to the blank line), or None when it is too large, not text, or
/// the peer closed first.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(head).ok();
        }
        if head.len() > MAX_REQUEST {
            return None;
        }
    }
}

fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
