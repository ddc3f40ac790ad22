//! A new worker's HTTP client, used once while the worker waits for its first job.
//!
//! Timed inside the worker, a fresh worker's first provider request took about 210 µs
//! longer than a later one (docs/BENCHMARKS.md, "Latency rows side by side"): about 80 µs
//! is the new connection, which only a request to the provider itself could open early
//! (and the provider would count it), and about 130 µs is the client's own first use. In
//! `per-request` mode every job is a new worker's first, so that part is paid here
//! instead, before the job: one request to a listener of this process on 127.0.0.1, which
//! reads it, answers and closes. A job that arrives first is not kept waiting for it
//! (`serve` reads frames meanwhile). Measured in the benchmark's side-by-side latency rows,
//! six runs each way: per-request's p50 over pool's went from 0.17-0.35 ms (median 0.29)
//! to 0.14-0.21 ms (median 0.165); throughput did not move (479 and 481 messages/s).
//!
//! With an HTTP proxy in the environment the request would go to the proxy, so there is
//! no warm-up then.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longer than the exchange ever takes on loopback; only a stuck one is cut.
const LIMIT: Duration = Duration::from_secs(1);

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 2\r\nconnection: close\r\n\r\n{}";

/// Sends `client` one request to a listener of this process and reads its answer; whether
/// it did. A failure only means the first job pays for the first use, as without this.
pub async fn http_client(client: &reqwest::Client) -> bool {
    if proxied() {
        return false;
    }
    let Ok(listener) = TcpListener::bind(("127.0.0.1", 0)).await else {
        return false;
    };
    let Ok(address) = listener.local_addr() else {
        return false;
    };
    let answer = async {
        // Whoever connects first gets the same fixed answer: nothing of this worker's is in
        // it.
        if let Ok((mut stream, _)) = listener.accept().await {
            if read_request(&mut stream).await.is_some() {
                let _ = stream.write_all(ANSWER).await;
            }
            let _ = stream.shutdown().await;
        }
    };
    let ask = async {
        let body = serde_json::json!({"model": "warm-up", "messages": []});
        match client
            .post(format!("http://{address}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response.json::<serde_json::Value>().await.is_ok(),
            Err(_) => false,
        }
    };
    tokio::time::timeout(LIMIT, async { tokio::join!(answer, ask).1 })
        .await
        .unwrap_or(false)
}

/// Whether the environment names a proxy for plain HTTP, which reqwest would send this
/// request to.
fn proxied() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Reads one request (headers, then as many body bytes as `content-length` says), so that
/// the answer does not meet unread bytes and reset the connection.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..n]);
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            if request.len() > 16 * 1024 {
                return None;
            }
            continue;
        };
        let headers = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length: usize = headers
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if request.len() >= end + 4 + length {
            return Some(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_client_gets_the_listeners_answer() {
        let client = reqwest::Client::new();
        let expected = !super::proxied();
        assert_eq!(super::http_client(&client).await, expected);
        assert_eq!(super::http_client(&client).await, expected, "a second time");
    }
}
