//! Reading one request off a connection: the head through `httparse` (hyper's own parser,
//! so the fakes accept exactly what a hyper server would), the body by `Content-Length` or
//! de-chunked. The chunk framing around `httparse::parse_chunk_size` is written here
//! because hyper's chunked decoder is not public and no crate in the lock offers one.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// As many headers as hyper's server takes by default; a request with more is refused.
const MAX_HEADERS: usize = 100;

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

pub(super) fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One line with its line end; `None` at a clean EOF.
async fn read_raw_line<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *conn)
        .take(MAX_HEAD_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(bad_data("line too long or truncated"));
    }
    Ok(Some(line))
}

/// One line without its CRLF; `None` at a clean EOF.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Option<String>> {
    let Some(mut line) = read_raw_line(conn).await? else {
        return Ok(None);
    };
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad_data("non-UTF-8 line"))
}

/// The head of the next request, its body left unread; `Ok(None)` if the client closed
/// without sending one. Only the head's bytes are taken from `conn`: a body, or a pipelined
/// request, stays in its buffer.
async fn read_head<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let available = conn.fill_buf().await?;
        if available.is_empty() {
            // httparse skips empty lines before the request line, as RFC 9112 asks, so a
            // client that sent only those sent nothing.
            return if head.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                Ok(None)
            } else {
                Err(bad_data("EOF inside the request head"))
            };
        }
        let before = head.len();
        head.extend_from_slice(available);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let request = owned(&parsed)?;
                conn.consume(len - before);
                return Ok(Some(request));
            }
            Ok(httparse::Status::Partial) => {
                conn.consume(head.len() - before);
                if head.len() > MAX_HEAD_BYTES {
                    return Err(bad_data("request head too large"));
                }
            }
            Err(e) => return Err(bad_data(format!("bad request head: {e}"))),
        }
    }
}

/// A parsed head as a [`Request`] without a body yet.
fn owned(parsed: &httparse::Request<'_, '_>) -> io::Result<Request> {
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad_data("incomplete request line"));
    };
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| bad_data(format!("non-UTF-8 value of header {:?}", h.name)))?;
            Ok((h.name.to_string(), value.trim().to_string()))
        })
        .collect::<io::Result<_>>()?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        version: format!("HTTP/1.{minor}"),
        headers,
        body: Vec::new(),
    })
}

/// Parse one request; `Ok(None)` if the client closed without sending anything.
pub(super) async fn read_request<S>(conn: &mut S) -> io::Result<Option<Request>>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let Some(mut req) = read_head(conn).await? else {
        return Ok(None);
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

/// A `Transfer-Encoding: chunked` body, de-chunked; trailers are read and dropped.
pub(super) async fn read_chunked<R: AsyncBufRead + Unpin>(conn: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_raw_line(conn)
            .await?
            .ok_or_else(|| bad_data("EOF in chunk size"))?;
        let size = match httparse::parse_chunk_size(&line) {
            Ok(httparse::Status::Complete((_, size))) => size,
            _ => {
                let line = String::from_utf8_lossy(&line);
                return Err(bad_data(format!("bad chunk size {:?}", line.trim_end())));
            }
        };
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
        let size = usize::try_from(size)
            .ok()
            .filter(|size| body.len().saturating_add(*size) <= MAX_BODY_BYTES)
            .ok_or_else(|| bad_data("body too large"))?;
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
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::super::tests::{echo_server, raw};

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

    /// httparse sees a head that arrives in pieces as partial until its end; what follows
    /// the head (here the body) is left for the body reader.
    #[tokio::test]
    async fn a_head_in_pieces_after_empty_lines_is_read_whole() {
        let srv = echo_server().await;
        let mut c = TcpStream::connect(srv.addr()).await.unwrap();
        for piece in [
            &b"\r\nPOST /sp"[..],
            b"lit HTTP/1.1\r\nConnection: cl",
            b"ose\r\nContent-Length: 2\r\n\r",
            b"\nok",
        ] {
            c.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nPOST /split ok"), "{text}");
    }
}
