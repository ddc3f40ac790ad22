//! A deliberately small HTTP/1.1 server shared by the fake Telegram and provider servers.
//!
//! The interesting test cases are the ones a well-behaved server library refuses to
//! produce: a server that never answers, that resets the connection, that promises a body
//! it never finishes, that breaks off a stream, or that stops listening and comes back on
//! the same port. They happen on the same kept-alive connection as the ordinary answers
//! before them, so one connection handler must do both, and hyper's server (which owns the
//! connection and writes only well-formed answers) cannot be that handler.
//!
//! What is not ours comes from hyper's own stack: `httparse` (hyper's parser) reads the
//! request head and chunk-size lines, and the `http` crate names the status codes. What is
//! written by hand, and why:
//! - the connection loop in this file: accepting, keep-alive and pipelining, counting open
//!   and idle connections, and refusing then accepting again on the same port, which
//!   tests script and wait on;
//! - the body framing in `request`: reading `Content-Length` bytes, and the chunk loop
//!   around `httparse::parse_chunk_size` (hyper's decoder is not public, and no crate in
//!   the lock offers one);
//! - everything written back, in `response`: heads and bodies byte by byte, because the
//!   misbehaviours are wrong bytes (a `Content-Length` the body never reaches, a chunked
//!   body without its last chunk) or no bytes (an RST, a silent connection).
//!
//! Connections are persistent as in HTTP/1.1: after a normal answer the server waits for
//! the next request on the same connection, as real Telegram and real providers do, unless
//! the client asked to close (`Connection: close`, or HTTP/1.0 without `keep-alive`). Every
//! misbehaviour (hang, reset, partial body, broken stream) ends its connection, and so does
//! a request the server cannot parse. When the server stops listening
//! ([`HttpServer::refuse_connections`]) it also closes the connections it kept open, like a
//! server that went away: idle ones at once, busy ones after their answer.

mod request;
mod response;

pub use request::Request;
pub use response::{Chunk, Response};

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use request::read_request;

/// The future a [`Handler`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the server calls once per request.
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<Response> + Send + Sync>;

/// Caps that keep a confused client from making a test eat all memory.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long [`HttpServer::refuse_connections`] waits for idle kept-alive connections to
/// close. They close as soon as their task runs; this only bounds a stuck runtime.
const CLOSE_IDLE_WAIT: Duration = Duration::from_secs(5);

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
            response::bad_request(conn, &e).await;
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
    response::answer(conn, response, keep_alive).await
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

#[cfg(test)]
mod tests {
    use super::request::{read_chunked, read_line};
    use super::*;
    use std::io;
    use tokio::io::AsyncReadExt;

    pub(super) async fn echo_server() -> HttpServer {
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
    pub(super) async fn raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// One response from a kept-alive connection: the head and the (de-chunked) body.
    pub(super) async fn read_response(conn: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
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

    pub(super) const T: Duration = Duration::from_secs(5);
    pub(super) const STREAM_EVERY: Duration = Duration::from_millis(40);

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
