//! A deliberately small HTTP/1.1 server shared by the fake Telegram and provider servers.
//!
//! It is written by hand instead of on hyper/axum because the interesting test cases are the
//! ones a well-behaved server library refuses to produce: a server that never answers, that
//! resets the connection, that promises a body it never finishes, or that stops listening and
//! comes back on the same port.
//!
//! Connections are persistent as in HTTP/1.1: after a normal answer the server waits for
//! the next request on the same connection, as real Telegram and real providers do, unless
//! the client asked to close (`Connection: close`, or HTTP/1.0 without `keep-alive`). Every
//! misbehaviour (hang, reset, partial body, broken stream) ends its connection, and so does
//! a request the server cannot parse. When the server stops listening
//! ([`HttpServer::refuse_connections`]) it also closes the connections it kept open, like a
//! server that went away: idle ones at once, busy ones after their answer.

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
/// How long [`HttpServer::refuse_connections`] waits for idle kept-alive connections to
/// close. They close as soon as their task runs; this only bounds a stuck runtime.
const CLOSE_IDLE_WAIT: Duration = Duration::from_secs(5);

/// One parsed HTTP request. The body has already been de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target exactly as sent, query string included.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`, as sent.
    pub version: String,
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
    /// Connections waiting for their next request, so that stopping to listen can wait
    /// until they are closed.
    idle: watch::Sender<usize>,
    /// Bumped each time the server stops listening: connections accepted before that are
    /// not kept after their current request.
    epoch: watch::Sender<u64>,
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
                idle: watch::Sender::new(0),
                epoch: watch::Sender::new(0),
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
    /// get `ECONNREFUSED`, and so is every kept-alive connection that was waiting for a next
    /// request. A request already in progress (a long poll, a hanging answer) is still
    /// served; its connection closes after the answer.
    pub async fn refuse_connections(&self) {
        let task = self.acceptor.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // A JoinHandle resolves only after the task's future, and the listener it owns,
            // has been dropped.
            let _ = task.await;
        }
        self.stats.epoch.send_modify(|e| *e += 1);
        let mut idle = self.stats.idle.subscribe();
        let _ = tokio::time::timeout(CLOSE_IDLE_WAIT, idle.wait_for(|&n| n == 0)).await;
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

    /// TCP connections accepted since start. A kept-alive connection counts once however
    /// many requests it carries.
    pub fn connections_accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open on the server side: busy, hanging, or kept alive and
    /// waiting for a next request.
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
                        let accepted_in = *stats.epoch.borrow();
                        let guard = OpenGuard::new(stats.clone());
                        let handler = handler.clone();
                        let mut stop = stop.clone();
                        let stats = stats.clone();
                        tokio::spawn(async move {
                            let _guard = guard;
                            tokio::select! {
                                _ = serve_connection(stream, handler, &stats, accepted_in) => {}
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

/// Counts a connection as idle while it lives.
struct IdleGuard<'a>(&'a Stats);

impl<'a> IdleGuard<'a> {
    fn new(stats: &'a Stats) -> Self {
        stats.idle.send_modify(|n| *n += 1);
        IdleGuard(stats)
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.idle.send_modify(|n| *n -= 1);
    }
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    Close,
}

async fn serve_connection(stream: TcpStream, handler: Handler, stats: &Stats, accepted_in: u64) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    let mut epoch = stats.epoch.subscribe();
    loop {
        {
            let _idle = IdleGuard::new(stats);
            // Counted as idle before looking at the epoch, so a refusal either sees this
            // connection idle and waits for it, or this connection sees the refusal.
            let ready = tokio::select! {
                // The first byte of the next request, not consumed.
                r = conn.fill_buf() => matches!(r, Ok(b) if !b.is_empty()),
                _ = epoch.wait_for(|&e| e != accepted_in) => false,
            };
            if !ready {
                return;
            }
        }
        match serve_request(&mut conn, &handler).await {
            Next::KeepAlive if *epoch.borrow() == accepted_in => {}
            Next::KeepAlive => {
                // The answer went out without `Connection: close`; closing now is what a
                // server that stops does between requests.
                let _ = conn.shutdown().await;
                return;
            }
            Next::Close => return,
        }
    }
}

/// Reads one request from `conn` and answers it; says whether the connection may carry
/// another one.
async fn serve_request(conn: &mut BufReader<TcpStream>, handler: &Handler) -> Next {
    let req = match read_request(conn).await {
        Ok(Some(req)) => req,
        Ok(None) => return Next::Close,
        Err(e) => {
            let body = format!("bad request: {e}\n");
            let _ = write_full(conn, 400, &[], body.as_bytes(), false).await;
            linger(conn).await;
            return Next::Close;
        }
    };
    let keep_alive = wants_keep_alive(&req);
    // If the client gives up while the handler is still thinking (a long poll, a scripted
    // delay), drop the handler: it would answer nobody, and a real server notices too.
    let response = tokio::select! {
        r = handler(req) => r,
        _ = until_closed_or_more(conn) => return Next::Close,
    };
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

/// HTTP/1.1 keeps a connection unless told to close; HTTP/1.0 closes unless told to keep.
fn wants_keep_alive(req: &Request) -> bool {
    let connection = |token: &str| {
        req.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.version.eq_ignore_ascii_case("HTTP/1.0") {
        connection("keep-alive")
    } else {
        !connection("close")
    }
}

/// Resolves when the client closes while it has no request outstanding. Bytes that arrive
/// instead (a pipelined request) are left in the buffer for the next read, and closing is
/// then no longer watched.
async fn until_closed_or_more(conn: &mut BufReader<TcpStream>) {
    match conn.fill_buf().await {
        Ok([]) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
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
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_data(format!("bad request line {request_line:?}")));
    };
    let (method, path, version) = (method.to_string(), path.to_string(), version.to_string());

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
        version,
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
                "/stream" | "/broken-stream" => Response::Stream {
                    status: 200,
                    headers: vec![("Content-Type".into(), "text/plain".into())],
                    chunks: ["one ", "", "two ", "three"]
                        .iter()
                        .map(|piece| Chunk {
                            after: STREAM_EVERY,
                            data: piece.as_bytes().to_vec(),
                        })
                        .collect(),
                    complete: req.path_only() == "/stream",
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

    /// One response from a kept-alive connection: the head and the (de-chunked) body.
    async fn read_response(conn: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
        let mut head = String::new();
        loop {
            let line = read_line(conn).await.unwrap().expect("a response head");
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push_str("\r\n");
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let body = if header("transfer-encoding").as_deref() == Some("chunked") {
            read_chunked(conn).await.unwrap()
        } else {
            let len: usize = header("content-length").unwrap().parse().unwrap();
            let mut body = vec![0; len];
            conn.read_exact(&mut body).await.unwrap();
            body
        };
        (head, body)
    }

    const T: Duration = Duration::from_secs(5);
    const STREAM_EVERY: Duration = Duration::from_millis(40);

    #[tokio::test]
    async fn content_length_and_chunked_bodies() {
        let srv = echo_server().await;
        let out = raw(
            srv.addr(),
            b"POST /x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
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
            b"POST /c HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
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
        let out = raw(addr, b"GET /again HTTP/1.0\r\n\r\n").await.unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("GET /again "));
    }

    #[tokio::test]
    async fn a_connection_carries_requests_until_the_client_closes_it() {
        let srv = echo_server().await;
        let mut c = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
        for i in 0..3 {
            let req = format!("POST /k{i} HTTP/1.1\r\nContent-Length: 1\r\n\r\n{i}");
            c.get_mut().write_all(req.as_bytes()).await.unwrap();
            let (head, body) = read_response(&mut c).await;
            assert!(!head.contains("Connection: close"), "{head}");
            assert_eq!(body, format!("POST /k{i} {i}").into_bytes());
        }
        // Two requests in one write (pipelined) are answered in order.
        c.get_mut()
            .write_all(b"GET /p1 HTTP/1.1\r\n\r\nGET /p2 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut c).await.1, b"GET /p1 ");
        assert_eq!(read_response(&mut c).await.1, b"GET /p2 ");
        c.get_mut()
            .write_all(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut c).await;
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_eq!(body, b"GET /last ");
        let mut rest = Vec::new();
        tokio::time::timeout(T, c.read_to_end(&mut rest))
            .await
            .expect("the server closes after Connection: close")
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(srv.connections_accepted(), 1);
        assert!(srv.wait_for_open_connections(0, T).await);

        // HTTP/1.0 closes unless asked to keep the connection.
        let out = raw(srv.addr(), b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Connection: close\r\n")
        );
        let mut c = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
        c.get_mut()
            .write_all(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut c).await;
        assert!(srv.wait_for_open_connections(1, T).await);
        drop(c);
        assert!(srv.wait_for_open_connections(0, T).await);
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

    #[tokio::test]
    async fn refusing_connections_closes_idle_ones_and_busy_ones_after_their_answer() {
        let srv = HttpServer::start(|req: Request| async move {
            if req.path_only() == "/slow" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Response::with_type(200, "text/plain", req.path.clone())
        })
        .await;
        let mut idle = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
        idle.get_mut()
            .write_all(b"GET /a HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut idle).await;
        let mut busy = BufReader::new(TcpStream::connect(srv.addr()).await.unwrap());
        busy.get_mut()
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(srv.wait_for_open_connections(2, T).await);
        srv.refuse_connections().await;
        let mut rest = Vec::new();
        tokio::time::timeout(T, idle.read_to_end(&mut rest))
            .await
            .expect("the idle connection is closed")
            .unwrap();
        assert!(rest.is_empty());
        // The request in progress is still answered, then its connection ends.
        let (_, body) = read_response(&mut busy).await;
        assert_eq!(body, b"/slow");
        tokio::time::timeout(T, busy.read_to_end(&mut rest))
            .await
            .expect("the busy connection is closed after its answer")
            .unwrap();
        assert!(srv.wait_for_open_connections(0, T).await);
    }
}
