//! Writing answers, well-formed or not. This is the part no server library would do for
//! us: a head that promises a `Content-Length` the body never reaches, a chunked body that
//! stops without its last chunk, a reset (RST) instead of an answer, a connection held open
//! and silent. So heads and bodies are written byte by byte here, and each misbehaviour
//! decides how its connection ends.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::Next;

/// After answering, how long we keep reading so the client sees our FIN before any RST.
const LINGER_AFTER_ANSWER: Duration = Duration::from_secs(2);

/// How the server answers one request, including the ways a real server misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A normal answer. `Content-Length` is always added, and `Connection: close` when the
    /// connection ends after it (any such headers given here are replaced).
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Never answer; hold the connection until the client goes away or the server stops.
    Hang,
    /// Reset the connection (RST) without writing a single byte.
    Reset,
    /// Send the head with `Content-Length: declared_len`, then only `body_prefix`, then close.
    /// The close is a FIN, not an RST: an RST can make the client's kernel throw away the
    /// head and prefix it already received, which would turn a body error into a connect
    /// error.
    PartialBodyThenReset {
        status: u16,
        headers: Vec<(String, String)>,
        declared_len: usize,
        body_prefix: Vec<u8>,
    },
    /// Like [`Response::PartialBodyThenReset`] but keep the connection open afterwards, so
    /// the client waits for the rest of the body forever.
    PartialBodyThenHang {
        status: u16,
        headers: Vec<(String, String)>,
        declared_len: usize,
        body_prefix: Vec<u8>,
    },
    /// A body in `Transfer-Encoding: chunked`, one HTTP chunk per [`Chunk`], each written
    /// after its own delay (server-sent events and other streams). With `complete` the
    /// terminating empty chunk follows and the connection is kept like after a
    /// [`Response::Full`]; without it the connection is closed (a FIN) right after the last
    /// chunk: a stream that breaks off.
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Chunk>,
        complete: bool,
    },
}

/// One piece of a [`Response::Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Wait this long after the previous write (the head, for the first chunk).
    pub after: Duration,
    pub data: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) -> Self {
        Response::Full {
            status,
            headers,
            body: body.into(),
        }
    }

    /// A response with `Content-Type: application/json`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(
            status,
            vec![("Content-Type".into(), "application/json".into())],
            value.to_string(),
        )
    }

    /// A response with the given content type and body.
    pub fn with_type(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response::new(
            status,
            vec![("Content-Type".into(), content_type.into())],
            body,
        )
    }
}

/// Writes `response` (or does what it says instead) and says whether the connection may
/// carry another request.
pub(super) async fn answer(
    conn: &mut BufReader<TcpStream>,
    response: Response,
    keep_alive: bool,
) -> Next {
    match response {
        Response::Full {
            status,
            headers,
            body,
        } => match write_full(conn, status, &headers, &body, keep_alive).await {
            Ok(()) if keep_alive => return Next::KeepAlive,
            Ok(()) => linger(conn).await,
            Err(_) => {}
        },
        Response::Hang => until_closed(conn).await,
        Response::Reset => {
            // Zero linger turns the close into an RST.
            let _ = conn.get_ref().set_zero_linger();
        }
        Response::PartialBodyThenReset {
            status,
            headers,
            declared_len,
            body_prefix,
        } => {
            if write_partial(conn, status, &headers, declared_len, &body_prefix)
                .await
                .is_ok()
            {
                linger(conn).await;
            }
        }
        Response::PartialBodyThenHang {
            status,
            headers,
            declared_len,
            body_prefix,
        } => {
            if write_partial(conn, status, &headers, declared_len, &body_prefix)
                .await
                .is_ok()
            {
                until_closed(conn).await;
            }
        }
        Response::Stream {
            status,
            headers,
            chunks,
            complete,
        } => {
            let keep_alive = keep_alive && complete;
            let (mut reader, mut writer) = conn.get_mut().split();
            let written = tokio::select! {
                r = write_stream(&mut writer, status, &headers, &chunks, complete, keep_alive) => r,
                // Between slow chunks a client that left would otherwise go unnoticed
                // until the next write.
                _ = peer_closed(&mut reader) => return Next::Close,
            };
            match written {
                Ok(()) if keep_alive => return Next::KeepAlive,
                Ok(()) => linger(conn).await,
                Err(_) => {}
            }
        }
    }
    Next::Close
}

/// The 400 for a request that could not be read; the connection ends after it.
pub(super) async fn bad_request<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, why: &io::Error) {
    let body = format!("bad request: {why}\n");
    let _ = write_full(conn, 400, &[], body.as_bytes(), false).await;
    linger(conn).await;
}

/// Resolves when the peer closes, without consuming anything it sends.
async fn peer_closed(reader: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut byte = [0u8; 1];
    match reader.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Read and discard until the peer closes (EOF or error). A client that half-closes after
/// its request would count as gone; HTTP clients do not do that.
async fn until_closed<R: AsyncRead + Unpin>(conn: &mut R) {
    let mut scratch = [0u8; 1024];
    loop {
        match conn.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Half-close and wait (bounded) for the client to close, so that closing our socket does not
/// turn into an RST that could destroy the answer in flight.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S) {
    let _ = conn.shutdown().await;
    let _ = tokio::time::timeout(LINGER_AFTER_ANSWER, until_closed(conn)).await;
}

async fn write_full<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = head(status, headers, Length::Known(body.len()), keep_alive);
    out.extend_from_slice(body);
    conn.write_all(&out).await?;
    conn.flush().await
}

async fn write_partial<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: u16,
    headers: &[(String, String)],
    declared_len: usize,
    prefix: &[u8],
) -> io::Result<()> {
    let mut out = head(status, headers, Length::Known(declared_len), false);
    out.extend_from_slice(prefix);
    conn.write_all(&out).await?;
    conn.flush().await
}

async fn write_stream<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: u16,
    headers: &[(String, String)],
    chunks: &[Chunk],
    complete: bool,
    keep_alive: bool,
) -> io::Result<()> {
    conn.write_all(&head(status, headers, Length::Chunked, keep_alive))
        .await?;
    conn.flush().await?;
    for chunk in chunks {
        tokio::time::sleep(chunk.after).await;
        // An empty chunk would end the body early.
        if chunk.data.is_empty() {
            continue;
        }
        let mut out = format!("{:x}\r\n", chunk.data.len()).into_bytes();
        out.extend_from_slice(&chunk.data);
        out.extend_from_slice(b"\r\n");
        conn.write_all(&out).await?;
        conn.flush().await?;
    }
    if complete {
        conn.write_all(b"0\r\n\r\n").await?;
        conn.flush().await?;
    }
    Ok(())
}

/// How a response head announces its body.
enum Length {
    Known(usize),
    Chunked,
}

fn head(status: u16, headers: &[(String, String)], length: Length, keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let managed = ["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|m| k.eq_ignore_ascii_case(m));
        if !managed {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    match length {
        Length::Known(n) => out.push_str(&format!("Content-Length: {n}\r\n")),
        Length::Chunked => out.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The reason phrase hyper would send (the `http` crate's), and one for 529, which the
/// providers' overload answers use and the registry does not name.
fn reason(status: u16) -> &'static str {
    match status {
        529 => "Site Overloaded",
        _ => ::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Status"),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, BufReader},
        net::TcpStream,
    };

    use super::super::tests::{STREAM_EVERY, T, echo_server, raw, read_response};

    #[tokio::test]
    async fn reset_and_partial_bodies() {
        let srv = echo_server().await;
        // RST before anything: either an error or an empty read, never data.
        match raw(srv.addr(), b"GET /reset HTTP/1.1\r\n\r\n").await {
            Ok(out) => assert!(out.is_empty()),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
        let out = raw(srv.addr(), b"GET /partial HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 100\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[tokio::test]
    async fn misbehaviour_ends_a_kept_alive_connection() {
        let srv = echo_server().await;
        for fault in ["/partial", "/reset", "/broken-stream"] {
            let mut c = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
            c.get_mut()
                .write_all(b"GET /fine HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.1, b"GET /fine ");
            c.get_mut()
                .write_all(format!("GET {fault} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut rest = Vec::new();
            let end = tokio::time::timeout(T, c.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("{fault} did not end the connection"));
            let text = String::from_utf8_lossy(&rest);
            match fault {
                "/partial" => assert!(text.ends_with("\r\n\r\nabc"), "{text}"),
                "/reset" => assert!(end.is_err() || rest.is_empty(), "{text}"),
                _ => {
                    assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
                    assert!(text.ends_with("5\r\nthree\r\n"), "{text}");
                }
            }
        }
        assert_eq!(srv.connections_accepted(), 3);
        assert!(srv.wait_for_open_connections(0, T).await);
    }

    #[tokio::test]
    async fn a_stream_writes_each_chunk_after_its_delay() {
        let srv = echo_server().await;
        let mut c = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
        let started = tokio::time::Instant::now();
        c.get_mut()
            .write_all(b"GET /stream HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert_eq!(body, b"one two three");
        assert!(started.elapsed() >= STREAM_EVERY * 4);
        // A complete stream keeps the connection.
        c.get_mut()
            .write_all(b"GET /after HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut c).await.1, b"GET /after ");

        // A client that leaves mid-stream ends it.
        c.get_mut()
            .write_all(b"GET /stream HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(srv.wait_for_open_connections(1, T).await);
        drop(c);
        assert!(srv.wait_for_open_connections(0, T).await);
        assert_eq!(srv.connections_accepted(), 1);
    }
}
