//! Where the gateway's log goes: the journal itself under systemd, readable lines on a
//! terminal or a file otherwise.
//!
//! Under systemd, stderr is a stream into the journal, which stamps every line and gives
//! it one priority: a timestamped text line would show two times, and every line would
//! weigh the same, so `journalctl -p warning` could not pick out the warnings. So when
//! stderr *is* the journal stream systemd set up (`$JOURNAL_STREAM` names its device and
//! inode; a child that inherited the variable but writes elsewhere is not fooled), events
//! go to journald natively (`tracing-journald`): the priority from the level, and every
//! field as a journal field of the same name in capitals, without a prefix
//! (`chat_id` → `CHAT_ID=`), so `journalctl CHAT_ID=42` finds one chat's lines. The field
//! names the gateway logs with are listed in `FIELDS` (checked by a test).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The structured fields of the gateway's log lines, each with the journal field it
/// becomes. A field not listed here is a test failure (`every_logged_field_is_listed`), so
/// the journal's vocabulary is decided here, once.
#[cfg(test)]
const FIELDS: &[(&str, &str)] = &[
    ("chat_id", "CHAT_ID"),
    ("user_id", "USER_ID"),
    ("job_id", "JOB_ID"),
    ("worker_pid", "WORKER_PID"),
    ("provider", "PROVIDER"),
    ("update_id", "UPDATE_ID"),
    ("rows", "ROWS"),
    ("message_id", "MESSAGE_ID"),
    ("slot", "SLOT"),
    ("spare", "SPARE"),
    ("class", "CLASS"),
    ("file", "FILE"),
    ("pid", "PID"),
    ("run", "RUN"),
    ("mode", "MODE"),
    ("workers", "WORKERS"),
    ("telegram", "TELEGRAM"),
    ("bot", "BOT"),
    ("allowed_users", "ALLOWED_USERS"),
    ("providers", "PROVIDERS"),
    ("pgid", "PGID"),
    ("event", "EVENT"),
    ("status", "STATUS"),
    ("reply", "REPLY"),
    ("done_at", "DONE_AT"),
    ("conversation", "CONVERSATION"),
    ("elapsed_ms", "ELAPSED_MS"),
    ("attempt", "ATTEMPT"),
    ("failures", "FAILURES"),
    ("signal", "SIGNAL"),
    ("tool", "TOOL"),
    ("schedule", "SCHEDULE"),
    ("late", "LATE"),
    ("next_at", "NEXT_AT"),
];

/// Installs the log: the journal when stderr is systemd's journal stream, else text lines
/// on stderr (coloured on a terminal). `HERMES_LOG` filters (default `info`).
pub fn init() {
    let filter =
        || EnvFilter::try_from_env("HERMES_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal_stream()
        && let Ok(journal) = tracing_journald::layer()
    {
        // One of several bots on the host (the template unit sets HERMES_INSTANCE): its
        // lines carry the bot's name, as `SyslogIdentifier=` gives its stderr's.
        let journal = match crate::instances::from_env() {
            Some(name) => journal.with_syslog_identifier(format!("hermes-gateway-{name}")),
            None => journal,
        };
        tracing_subscriber::registry()
            .with(filter())
            .with(journal.with_field_prefix(None))
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// True when `$JOURNAL_STREAM` names the file stderr is.
fn stderr_is_journal_stream() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    names_file(&stream.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// `$JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn names_file(stream: &str, dev: u64, ino: u64) -> bool {
    stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        .is_some_and(|named| named == (dev, ino))
}

/// The journal field `tracing-journald` writes for a field named `name`, with no prefix
/// configured: '.' becomes '_', leading '_' go (journald reserves them), only ASCII
/// letters, digits and '_' are kept, in capitals.
#[cfg(test)]
fn journal_name(name: &str) -> String {
    name.replace('.', "_")
        .trim_start_matches('_')
        .chars()
        .filter(|c| *c == '_' || c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Captures the events logged on this thread, for tests that check what the log says.
#[cfg(test)]
pub mod capture {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    #[derive(Debug, Clone)]
    pub struct Line {
        pub level: Level,
        pub message: String,
        pub fields: Vec<(String, String)>,
    }

    impl Line {
        pub fn field(&self, name: &str) -> Option<String> {
            self.fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[derive(Clone, Default)]
    struct Sink {
        lines: Arc<Mutex<Vec<Line>>>,
        changed: Arc<tokio::sync::Notify>,
    }

    /// The captured log; capturing stops when it is dropped.
    pub struct Captured {
        sink: Sink,
        _guard: tracing::subscriber::DefaultGuard,
    }

    impl Captured {
        pub fn lines(&self) -> Vec<Line> {
            self.sink.lines.lock().unwrap().clone()
        }

        /// The first line containing `text`, waiting up to 10 s (of tokio's clock).
        pub async fn wait_for(&self, text: &str) -> Option<Line> {
            let find = || self.lines().into_iter().find(|l| l.message.contains(text));
            let wait = async {
                loop {
                    let changed = self.sink.changed.notified();
                    if let Some(line) = find() {
                        return line;
                    }
                    changed.await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), wait)
                .await
                .ok()
        }
    }

    pub fn capture() -> Captured {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::registry().with(sink.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        // Other tests, on other threads and with no subscriber, may be registering the same
        // call sites right now; recomputing their interest makes sure this one is counted.
        tracing::callsite::rebuild_interest_cache();
        Captured {
            sink,
            _guard: guard,
        }
    }

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Sink {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut visitor = Fields::default();
            event.record(&mut visitor);
            self.lines.lock().unwrap().push(Line {
                level: *event.metadata().level(),
                message: visitor.message,
                fields: visitor.fields,
            });
            self.changed.notify_waiters();
        }
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        fields: Vec<(String, String)>,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            } else {
                self.fields
                    .push((field.name().to_string(), format!("{value:?}")));
            }
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.message = value.to_string();
            } else {
                self.fields
                    .push((field.name().to_string(), value.to_string()));
            }
        }
    }
}

#[cfg(test)]
pub use capture::capture;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        assert!(names_file("2049:123456", 2049, 123456));
        assert!(!names_file("2049:123456", 2049, 123457));
        assert!(!names_file("2049:123456", 2050, 123456));
        assert!(!names_file("", 0, 0));
        assert!(!names_file("garbage", 0, 0));
    }

    #[test]
    fn the_journal_fields_are_the_documented_capitals() {
        for (field, journal) in FIELDS {
            assert_eq!(&journal_name(field), journal, "{field}");
        }
        for (field, journal) in [
            ("chat_id", "CHAT_ID"),
            ("job_id", "JOB_ID"),
            ("worker_pid", "WORKER_PID"),
            ("provider", "PROVIDER"),
        ] {
            assert!(FIELDS.contains(&(field, journal)), "{field} is not listed");
        }
    }

    /// Every field any `tracing::…!` call in the gateway's sources names is one of
    /// [`FIELDS`]: a line logged with `chat = …` would reach the journal as `CHAT=`, and
    /// `journalctl CHAT_ID=42` would miss it.
    #[test]
    fn every_logged_field_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut unknown = Vec::new();
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in logged_fields(&text) {
                if !FIELDS.iter().any(|(f, _)| *f == name) {
                    unknown.push(format!("{}: {name}", file.display()));
                }
            }
        }
        assert!(unknown.is_empty(), "fields not in FIELDS: {unknown:#?}");
        // The scanner itself finds fields in each form tracing takes them.
        assert_eq!(
            logged_fields(
                "tracing::warn!(chat_id = 1, %job_id, ?event, worker_pid = self.pid, \"x = {y}\");"
            ),
            ["chat_id", "job_id", "event", "worker_pid"]
        );
    }

    fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    /// The field names of the `tracing` macro calls in `text`: what stands before the
    /// message's format string.
    fn logged_fields(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        for level in ["error", "warn", "info", "debug", "trace"] {
            let call = format!("tracing::{level}!(");
            for (at, _) in text.match_indices(&call) {
                let args = &text[at + call.len()..];
                for piece in top_level_args(args) {
                    let name = match piece.split_once('=') {
                        Some((name, _)) => name.trim(),
                        None => piece.trim().trim_start_matches(['%', '?']),
                    };
                    if !name.is_empty()
                        && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                    {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names
    }

    /// The comma-separated arguments of a macro call before its first string literal
    /// (the message), split at depth 0 only.
    fn top_level_args(args: &str) -> Vec<&str> {
        let mut pieces = Vec::new();
        let (mut depth, mut start) = (0usize, 0);
        for (i, c) in args.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    pieces.push(&args[start..i]);
                    return pieces;
                }
                ')' | ']' | '}' => depth -= 1,
                '"' if depth == 0 => return pieces,
                ',' if depth == 0 => {
                    pieces.push(&args[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        pieces.push(&args[start..]);
        pieces
    }
}
