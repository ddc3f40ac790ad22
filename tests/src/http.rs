//! A deliberately small HTTP/1.1 server shared by the fake Telegram and provider servers.
//!
//! It is written by hand instead of on hyper/axum because the interesting test cases are the
//! ones a well-behaved server library refuses to produce: a server that never answers, that
//! resets the connection, that promises a body it never finishes, or that stops listening and
//! comes back on the same port. Every connection carries exactly one request and is closed
//! after the answer (`Connection: close`), so each request is one TCP connection a test can
//! reason about.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{
        AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
        BufReader,
    },
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// The future a [`Handler`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the server calls once per request.
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<Response> + Send + Sync>;

/// Caps that keep a confused client from making a test eat all memory.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// After answering, how long we keep reading so the client sees our FIN before any RST.
const LINGER_AFTER_ANSWER: Duration = Duration::from_secs(2);

/// One parsed HTTP request. The body has already been de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target exactly as sent, query string included.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

/// How the server answers one request, including the ways a real server misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A normal answer. `Content-Length` and `Connection: close` are always added (any such
    /// headers given here are replaced), and the connection is closed afterwards.
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

/// A running server on `127.0.0.1`. Dropping it (or [`HttpServer::shutdown`]) closes the
/// listener and every connection, including hanging ones.
pub struct HttpServer {
    addr: SocketAddr,
    handler: Handler,
    /// `true` (or the sender being dropped) tells every task to stop.
    shutdown: watch::Sender<bool>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

struct Stats {
    accepted: AtomicUsize,
    /// A watch channel rather than an atomic so tests can wait for a count.
    open: watch::Sender<usize>,
}

impl HttpServer {
    /// Bind `127.0.0.1:0` and serve every request with `handler`.
    ///
    /// Panics if the socket cannot be bound: this is test scaffolding.
    pub async fn start<F, Fut>(handler: F) -> HttpServer
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let server = HttpServer {
            addr,
            handler,
            shutdown: watch::Sender::new(false),
            acceptor: Mutex::new(None),
            stats: Arc::new(Stats {
                accepted: AtomicUsize::new(0),
                open: watch::Sender::new(0),
            }),
        };
        server.spawn_acceptor(listener);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop listening. When this returns the listening socket is closed, so new connections
    /// get `ECONNREFUSED`. Connections already accepted keep being served.
    pub async fn refuse_connections(&self) {
        let task = self.acceptor.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // A JoinHandle resolves only after the task's future, and the listener it owns,
            // has been dropped.
            let _ = task.await;
        }
    }

    /// Listen again on the same port after [`HttpServer::refuse_connections`]. No-op if
    /// already listening. Panics if the port cannot be re-bound within a few seconds.
    pub async fn accept_connections(&self) {
        if self.is_listening() {
            return;
        }
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // Another socket can briefly hold the port (e.g. a client that the kernel
                // gave it as an ephemeral source port); that is not an event we could wait
                // for, so retry for a bounded time.
                Err(e) if attempts < 200 => {
                    attempts += 1;
                    if attempts == 1 {
                        eprintln!("http: re-binding {} failed ({e}), retrying", self.addr);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("http: cannot re-bind {}: {e}", self.addr),
            }
        };
        self.spawn_acceptor(listener);
    }

    pub fn is_listening(&self) -> bool {
        self.acceptor
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Connections accepted since start.
    pub fn connections_accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open on the server side (including hanging ones).
    pub fn open_connections(&self) -> usize {
        *self.stats.open.borrow()
    }

    /// Wait until exactly `n` connections are open; `false` on timeout. Useful to check that
    /// a client really dropped a hanging request.
    pub async fn wait_for_open_connections(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.stats.open.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&open| open == n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stop listening and close every connection, hanging ones included.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.refuse_connections().await;
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let handler = self.handler.clone();
        let stats = self.stats.clone();
        let mut stop = self.shutdown.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop.wait_for(|&s| s) => return,
                };
                match accepted {
                    Ok((stream, _)) => {
                        stats.accepted.fetch_add(1, Ordering::SeqCst);
                        let guard = OpenGuard::new(stats.clone());
                        let handler = handler.clone();
                        let mut stop = stop.clone();
                        tokio::spawn(async move {
                            let _guard = guard;
                            tokio::select! {
                                _ = serve_connection(stream, handler) => {}
                                _ = stop.wait_for(|&s| s) => {}
                            }
                        });
                    }
                    Err(e) => {
                        // Typically EMFILE; back off a little instead of spinning.
                        eprintln!("http: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        *self.acceptor.lock().unwrap() = Some(task);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.acceptor.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Keeps the open-connection count right however the connection task ends (including being
/// dropped when the runtime shuts down).
struct OpenGuard(Arc<Stats>);

impl OpenGuard {
    fn new(stats: Arc<Stats>) -> Self {
        stats.open.send_modify(|n| *n += 1);
        OpenGuard(stats)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

async fn serve_connection(stream: TcpStream, handler: Handler) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    let req = match read_request(&mut conn).await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(e) => {
            let body = format!("bad request: {e}\n");
            let _ = write_full(&mut conn, 400, &[], body.as_bytes()).await;
            linger(&mut conn).await;
            return;
        }
    };
    // If the client gives up while the handler is still thinking (a long poll, a scripted
    // delay), drop the handler: it would answer nobody, and a real server notices too.
    let response = tokio::select! {
        r = handler(req) => r,
        _ = until_closed(&mut conn) => return,
    };
    match response {
        Response::Full {
            status,
            headers,
            body,
        } => {
            if write_full(&mut conn, status, &headers, &body).await.is_ok() {
                linger(&mut conn).await;
            }
        }
        Response::Hang => until_closed(&mut conn).await,
        Response::Reset => {
            // Zero linger turns the close into an RST.
            let _ = conn.get_ref().set_zero_linger();
            drop(conn);
        }
        Response::PartialBodyThenReset {
            status,
            headers,
            declared_len,
            body_prefix,
        } => {
            if write_partial(&mut conn, status, &headers, declared_len, &body_prefix)
                .await
                .is_ok()
            {
                let _ = conn.shutdown().await;
                linger(&mut conn).await;
            }
        }
        Response::PartialBodyThenHang {
            status,
            headers,
            declared_len,
            body_prefix,
        } => {
            if write_partial(&mut conn, status, &headers, declared_len, &body_prefix)
                .await
                .is_ok()
            {
                until_closed(&mut conn).await;
            }
        }
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
) -> io::Result<()> {
    let mut out = head(status, headers, body.len());
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
    let mut out = head(status, headers, declared_len);
    out.extend_from_slice(prefix);
    conn.write_all(&out).await?;
    conn.flush().await
}

fn head(status: u16, headers: &[(String, String)], content_length: usize) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let managed = ["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|m| k.eq_ignore_ascii_case(m));
        if !managed {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str(&format!(
        "Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    ));
    out.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Status",
    }
}

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One line without its CRLF; `None` at a clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *conn)
        .take(MAX_HEAD_BYTES)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(bad_data("line too long or truncated"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad_data("non-UTF-8 line"))
}

/// Parse one request; `Ok(None)` if the client closed without sending anything.
async fn read_request<S>(conn: &mut S) -> io::Result<Option<Request>>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    // RFC 9112 asks servers to ignore empty lines before the request line.
    let request_line = loop {
        match read_line(conn).await? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_data(format!("bad request line {request_line:?}")));
    };
    let (method, path) = (method.to_string(), path.to_string());

    let mut headers = Vec::new();
    let mut head_bytes = request_line.len() as u64;
    loop {
        let line = read_line(conn)
            .await?
            .ok_or_else(|| bad_data("EOF inside headers"))?;
        if line.is_empty() {
            break;
        }
        head_bytes += line.len() as u64;
        if head_bytes > MAX_HEAD_BYTES {
            return Err(bad_data("headers too large"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad_data(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };

    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        conn.flush().await?;
    }

    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(conn).await?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad_data(format!("bad Content-Length {len:?}")))?;
        if len > MAX_BODY_BYTES {
            return Err(bad_data("body too large"));
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await?;
        req.body = body;
    }
    Ok(Some(req))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn)
            .await?
            .ok_or_else(|| bad_data("EOF in chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad_data(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                match read_line(conn).await? {
                    None => return Ok(body),
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(bad_data("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).await?;
        let crlf = read_line(conn).await?;
        if crlf.as_deref() != Some("") {
            return Err(bad_data("missing CRLF after chunk"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn echo_server() -> HttpServer {
        HttpServer::start(|req: Request| async move {
            match req.path_only() {
                "/hang" => Response::Hang,
                "/reset" => Response::Reset,
                "/partial" => Response::PartialBodyThenReset {
                    status: 200,
                    headers: vec![],
                    declared_len: 100,
                    body_prefix: b"abc".to_vec(),
                },
                "/partial-hang" => Response::PartialBodyThenHang {
                    status: 200,
                    headers: vec![],
                    declared_len: 100,
                    body_prefix: b"abc".to_vec(),
                },
                _ => Response::with_type(
                    200,
                    "text/plain",
                    format!(
                        "{} {} {}",
                        req.method,
                        req.path,
                        String::from_utf8_lossy(&req.body)
                    ),
                ),
            }
        })
        .await
    }

    /// Send raw bytes and read until the server closes.
    async fn raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn content_length_and_chunked_bodies() {
        let srv = echo_server().await;
        let out = raw(
            srv.addr(),
            b"POST /x?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 17\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nPOST /x?q=1 hello"), "{text}");

        let out = raw(
            srv.addr(),
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("POST /c abcde"));

        let out = raw(srv.addr(), b"garbage\r\n\r\n").await.unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 400"));
    }

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
    async fn hanging_connections_end_when_client_leaves_or_server_stops() {
        let srv = echo_server().await;
        let mut c = TcpStream::connect(srv.addr()).await.unwrap();
        c.write_all(b"GET /hang HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(srv.wait_for_open_connections(1, T).await);
        drop(c);
        assert!(srv.wait_for_open_connections(0, T).await);

        let mut c = TcpStream::connect(srv.addr()).await.unwrap();
        c.write_all(b"GET /partial-hang HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(srv.wait_for_open_connections(1, T).await);
        srv.shutdown().await;
        assert!(srv.wait_for_open_connections(0, T).await);
        let mut out = Vec::new();
        tokio::time::timeout(T, c.read_to_end(&mut out))
            .await
            .expect("server closed the hanging connection")
            .ok();
        assert!(String::from_utf8_lossy(&out).ends_with("abc"));
    }

    #[tokio::test]
    async fn refuse_then_accept_on_same_port() {
        let srv = echo_server().await;
        let addr = srv.addr();
        srv.refuse_connections().await;
        assert!(!srv.is_listening());
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        srv.accept_connections().await;
        assert_eq!(srv.addr(), addr);
        let out = raw(addr, b"GET /again HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("GET /again "));
    }
}
