//! Worker stderr, copied into the gateway's log line by line, within bounds.
//!
//! The pipe must always be drained (a worker blocked on a full pipe would hang its job),
//! but a worker writing megabytes must neither grow the gateway's memory nor flood the
//! journal past its rate limit, which would also drop the gateway's own lines. So each line
//! is cut at [`MAX_LINE`] bytes, and lines beyond a token-bucket budget are counted, not
//! logged. The count is logged within [`REPORT_WITHIN`] of the first line it counts (a
//! timer, not the worker's next line: a pool worker that floods and then goes quiet would
//! otherwise hide its drop until it dies).
//!
//! Each line is logged with the worker's pid (`worker_pid`, `WORKER_PID=` in the journal)
//! at the level the worker wrote it with (a worker under the gateway writes
//! `LEVEL message` without a time), so `journalctl -p warning` sees a worker's warnings.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Level;

/// Longest line logged; the rest of it is counted and dropped.
pub const MAX_LINE: usize = 2048;
/// Lines a worker may log in a burst, and per second after it.
const BURST: f64 = 200.0;
const PER_SECOND: f64 = 50.0;
/// Longest a count of suppressed lines waits before it is logged.
pub const REPORT_WITHIN: Duration = Duration::from_secs(1);

/// Reads `pipe` to its end, logging what the budget allows. Memory use is bounded by one
/// read buffer and one line.
pub async fn pump<R: AsyncRead + Unpin>(mut pipe: R, pid: u32) -> PumpStats {
    let mut sink = LineSink::new(pid, Instant::now());
    let mut buf = [0u8; 8192];
    loop {
        let due = sink.report_due;
        let read = tokio::select! {
            read = pipe.read(&mut buf) => read,
            _ = sleep_until(due) => {
                sink.report_suppressed();
                continue;
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => sink.feed(&buf[..n], Instant::now()),
        }
    }
    sink.finish()
}

/// Sleeps until `due`; never, when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
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
    /// When the count of suppressed lines must be logged at the latest.
    report_due: Option<Instant>,
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
            report_due: None,
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
            self.report_suppressed();
            let text = String::from_utf8_lossy(&self.line);
            let (level, text) = worker_level(&text);
            let pid = self.pid;
            if self.cut > 0 {
                log_at(
                    level,
                    pid,
                    format_args!("{text} [... {} bytes cut]", self.cut),
                );
            } else {
                log_at(level, pid, format_args!("{text}"));
            }
            self.stats.logged += 1;
        } else {
            self.stats.suppressed += 1;
            self.suppressed_since_report += 1;
            self.report_due.get_or_insert(now + REPORT_WITHIN);
        }
        self.stats.truncated_bytes += self.cut;
        self.line.clear();
        self.cut = 0;
    }

    /// Logs how many lines were suppressed since the last report, if any.
    fn report_suppressed(&mut self) {
        self.report_due = None;
        if self.suppressed_since_report > 0 {
            tracing::warn!(
                worker_pid = self.pid,
                "{} worker stderr lines suppressed (rate limit)",
                self.suppressed_since_report
            );
            self.suppressed_since_report = 0;
        }
    }

    fn finish(mut self) -> PumpStats {
        if !self.line.is_empty() || self.cut > 0 {
            // Let the final words of a dying worker through even when over budget.
            self.tokens = self.tokens.max(1.0);
            self.emit(self.refilled);
        }
        self.report_suppressed();
        self.stats
    }
}

/// The level a worker wrote `line` with (its log lines start with the level, as
/// `tracing_subscriber`'s format without time writes them) and the rest of the line.
/// Anything else a worker prints (a panic message, a tool's output) is `INFO`.
fn worker_level(line: &str) -> (Level, &str) {
    let trimmed = line.trim_start();
    let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    let level = match word {
        "ERROR" => Level::ERROR,
        "WARN" => Level::WARN,
        "INFO" => Level::INFO,
        "DEBUG" => Level::DEBUG,
        "TRACE" => Level::TRACE,
        _ => return (Level::INFO, line),
    };
    (level, rest.trim_start())
}

/// One worker line at `level`: tracing's macros take the level as a constant.
fn log_at(level: Level, pid: u32, text: std::fmt::Arguments<'_>) {
    match level {
        Level::ERROR => tracing::error!(worker_pid = pid, "{text}"),
        Level::WARN => tracing::warn!(worker_pid = pid, "{text}"),
        Level::INFO => tracing::info!(worker_pid = pid, "{text}"),
        Level::DEBUG => tracing::debug!(worker_pid = pid, "{text}"),
        Level::TRACE => tracing::trace!(worker_pid = pid, "{text}"),
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
        let started = Instant::now();
        let stats = pump(&input[..], 1).await;
        // The budget refills by the real clock while the pump works: on a loaded machine
        // that is a few more lines, never the thousands an unlimited pump would log.
        let refilled = (started.elapsed().as_secs_f64() * PER_SECOND).ceil() as u64;
        assert_eq!(stats.truncated_bytes, 1_000_000 - MAX_LINE as u64);
        assert_eq!(stats.logged + stats.suppressed, 10_002);
        assert!(stats.logged <= BURST as u64 + 2 + refilled, "{stats:?}");
    }

    /// Keeps a second, inert dispatcher registered for the whole process. While a test's
    /// capture is the only one, tracing decides whether a call site is wanted by asking
    /// the default of whichever thread reaches it first (tokio-rs/tracing#3611): another
    /// test pumping without a subscriber then turns the pump's call sites off for good,
    /// and the capture sees nothing. With two registered, every dispatcher is asked.
    fn keep_two_dispatchers() {
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    }

    /// A flood that stops is reported while the pipe stays open and silent (a pool worker
    /// waiting for its next job), within [`REPORT_WITHIN`].
    #[tokio::test(start_paused = true)]
    async fn a_flood_is_reported_within_a_second_though_the_worker_goes_quiet() {
        keep_two_dispatchers();
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let logs = crate::logging::capture();
        let pump = tokio::spawn(pump(reader, 7));
        let flood: Vec<u8> = (0..BURST as usize + 30)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        tokio::io::AsyncWriteExt::write_all(&mut writer, &flood)
            .await
            .unwrap();
        // The writer stays open and writes nothing more: only the pump's timer can bring
        // the count out now.
        let reported = logs.wait_for("30 worker stderr lines suppressed").await;
        let seen = std::time::Instant::now();
        assert!(
            reported.is_some(),
            "no report while the worker was quiet, among {} lines",
            logs.lines().len()
        );
        // The pump stamps lines with the real clock, and the paused clock jumps straight
        // to the pump's deadline: so the report is due at most REPORT_WITHIN after the
        // real moment it was seen, however slowly this machine got there (tokio's timers
        // round up to whole milliseconds).
        let reported_at = tokio::time::Instant::now().into_std();
        assert!(
            reported_at <= seen + REPORT_WITHIN + Duration::from_millis(2),
            "reported {:?} after it was seen",
            reported_at.saturating_duration_since(seen)
        );
        let line = reported.unwrap();
        assert_eq!(line.level, Level::WARN);
        assert_eq!(line.field("worker_pid").as_deref(), Some("7"));
        drop(writer);
        let stats = pump.await.unwrap();
        assert_eq!(stats.suppressed, 30);
        let reports = logs
            .lines()
            .iter()
            .filter(|l| l.message.contains("suppressed"))
            .count();
        assert_eq!(
            reports,
            1,
            "the count was reported once: {:#?}",
            logs.lines()
        );
    }

    /// The count is due [`REPORT_WITHIN`] after the first line it counts: lines dropped
    /// later do not push the report back.
    #[test]
    fn a_count_is_due_a_second_after_the_first_line_it_counts() {
        let start = Instant::now();
        let mut sink = LineSink::new(1, start);
        for _ in 0..BURST as usize {
            sink.feed(b"a\n", start);
        }
        assert_eq!(sink.report_due, None, "nothing dropped yet");
        sink.feed(b"b\n", start);
        assert_eq!(sink.report_due, Some(start + REPORT_WITHIN));
        sink.feed(b"c\n", start + Duration::from_millis(10));
        assert_eq!(sink.stats.suppressed, 2);
        assert_eq!(sink.report_due, Some(start + REPORT_WITHIN));
        sink.report_suppressed();
        assert_eq!((sink.report_due, sink.suppressed_since_report), (None, 0));
    }

    #[test]
    fn a_worker_line_keeps_the_level_it_was_written_with() {
        assert_eq!(
            worker_level(" WARN the transcript does not fit"),
            (Level::WARN, "the transcript does not fit")
        );
        assert_eq!(worker_level("ERROR x"), (Level::ERROR, "x"));
        assert_eq!(worker_level("DEBUG"), (Level::DEBUG, ""));
        assert_eq!(
            worker_level("thread 'main' panicked at"),
            (Level::INFO, "thread 'main' panicked at")
        );
        assert_eq!(worker_level("WARNING: x"), (Level::INFO, "WARNING: x"));
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
