//! Worker stderr, copied into the gateway's log line by line, within bounds.
//!
//! The pipe must always be drained (a worker blocked on a full pipe would hang its job),
//! but a worker writing megabytes must neither grow the gateway's memory nor flood the
//! journal past its rate limit, which would also drop the gateway's own lines. So each line
//! is cut at [`MAX_LINE`] bytes, and lines beyond a token-bucket budget are counted, not
//! logged; the count is logged when the budget allows again and when the pipe closes.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line logged; the rest of it is counted and dropped.
pub const MAX_LINE: usize = 2048;
/// Lines a worker may log in a burst, and per second after it.
const BURST: f64 = 200.0;
const PER_SECOND: f64 = 50.0;

/// Reads `pipe` to its end, logging what the budget allows. Memory use is bounded by one
/// read buffer and one line.
pub async fn pump<R: AsyncRead + Unpin>(mut pipe: R, pid: u32) -> PumpStats {
    let mut sink = LineSink::new(pid, Instant::now());
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => sink.feed(&buf[..n], Instant::now()),
        }
    }
    sink.finish()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PumpStats {
    pub logged: u64,
    pub suppressed: u64,
    pub truncated_bytes: u64,
}

struct LineSink {
    pid: u32,
    line: Vec<u8>,
    cut: u64,
    tokens: f64,
    refilled: Instant,
    stats: PumpStats,
    suppressed_since_report: u64,
}

impl LineSink {
    fn new(pid: u32, now: Instant) -> Self {
        LineSink {
            pid,
            line: Vec::with_capacity(256),
            cut: 0,
            tokens: BURST,
            refilled: now,
            stats: PumpStats::default(),
            suppressed_since_report: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8], now: Instant) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (content, ended) = match chunk.split_last() {
                Some((b'\n', rest)) => (rest, true),
                _ => (chunk, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            let take = content.len().min(room);
            self.line.extend_from_slice(&content[..take]);
            self.cut += (content.len() - take) as u64;
            if ended {
                self.emit(now);
            }
        }
    }

    fn emit(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * PER_SECOND).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if self.suppressed_since_report > 0 {
                tracing::warn!(
                    worker = self.pid,
                    "{} worker stderr lines suppressed (rate limit)",
                    self.suppressed_since_report
                );
                self.suppressed_since_report = 0;
            }
            let text = String::from_utf8_lossy(&self.line);
            if self.cut > 0 {
                tracing::info!(worker = self.pid, "{text} [... {} bytes cut]", self.cut);
            } else {
                tracing::info!(worker = self.pid, "{text}");
            }
            self.stats.logged += 1;
        } else {
            self.stats.suppressed += 1;
            self.suppressed_since_report += 1;
        }
        self.stats.truncated_bytes += self.cut;
        self.line.clear();
        self.cut = 0;
    }

    fn finish(mut self) -> PumpStats {
        if !self.line.is_empty() || self.cut > 0 {
            // Let the final words of a dying worker through even when over budget.
            self.tokens = self.tokens.max(1.0);
            self.emit(self.refilled);
        }
        if self.suppressed_since_report > 0 {
            tracing::warn!(
                worker = self.pid,
                "{} worker stderr lines suppressed (rate limit)",
                self.suppressed_since_report
            );
        }
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn refill_time() -> Duration {
        Duration::from_secs_f64(BURST / PER_SECOND)
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_floods_are_counted() {
        let mut input = Vec::new();
        input.extend_from_slice(&vec![b'x'; 1_000_000]);
        input.push(b'\n');
        for i in 0..10_000 {
            input.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        input.extend_from_slice(b"no newline at the end");
        let stats = pump(&input[..], 1).await;
        assert_eq!(stats.truncated_bytes, 1_000_000 - MAX_LINE as u64);
        assert_eq!(stats.logged + stats.suppressed, 10_002);
        assert!(stats.logged <= BURST as u64 + 2, "{stats:?}");
    }

    #[test]
    fn budget_refills_over_time() {
        let start = Instant::now();
        let mut sink = LineSink::new(1, start);
        for _ in 0..(BURST as usize + 10) {
            sink.feed(b"a\n", start);
        }
        assert_eq!(sink.stats.suppressed, 10);
        sink.feed(b"b\n", start + refill_time());
        assert_eq!(sink.stats.logged, BURST as u64 + 1);
        assert_eq!(sink.suppressed_since_report, 0);
    }
}
