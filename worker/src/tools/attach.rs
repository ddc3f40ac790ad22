//! Files back to the user, the worker's half: the job's output directory, the built-in
//! `attach_file` tool the model names a file it made with, and the files MCP tools return
//! as content (images, embedded resources) written there.
//!
//! The worker only names files: it never reads one a tool made, and never follows a link.
//! What goes to the chat is the gateway's decision, after it opened each named file
//! itself without following links and checked what it found (`hermes_gateway`'s
//! `files_back`), so a tool that names `/etc/passwd` through a symlink, or a file too
//! large for Telegram, gets nothing sent. The checks here only spare the model a wasted
//! answer: a name that is not in the directory, or a file that does not exist, is an
//! error result it can act on.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use serde_json::{Value, json};

/// The built-in tool's function name (no `__`: no MCP server's tool can take it).
pub const ATTACH: &str = "attach_file";
/// The most files one answer names; the gateway's own bound (`telegram.max_send_files`)
/// is lower, and says so in the chat.
pub const MAX_FILES: usize = 64;
/// The largest file the worker writes from a tool's content: Telegram's upload limit.
pub const MAX_FILE_BYTES: usize = 50 * 1024 * 1024;

/// The job's output directory and the files named for the chat so far.
pub struct Output {
    dir: PathBuf,
    files: Mutex<Vec<String>>,
}

impl Output {
    pub fn new(dir: PathBuf) -> Output {
        Output {
            dir,
            files: Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files named for the chat, in order, and none any more.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The OpenAI function definition of `attach_file`.
    pub fn definition(&self) -> Value {
        json!({"type": "function", "function": {
            "name": ATTACH,
            "description": format!(
                "Sends a file you made (a chart, a CSV, an image, a document) to the user \
                 after your answer. Have a tool write it into the directory {} (`out` in \
                 the tools' working directory) first, then call this with its name. Up to \
                 50 MB; JPEG, PNG and WebP images are shown as photos.",
                self.dir.display()
            ),
            "parameters": {
                "type": "object",
                "properties": {"path": {
                    "type": "string",
                    "description": "The file's name in that directory (or its full path)."
                }},
                "required": ["path"],
            },
        }})
    }

    /// One call of `attach_file` with the model's `arguments`: whether it worked, and what
    /// the model reads.
    pub fn attach(&self, arguments: &serde_json::Map<String, Value>) -> (bool, String) {
        let Some(path) = arguments.get("path").and_then(Value::as_str) else {
            return (
                false,
                "error: give the file as {\"path\": \"name\"}.".to_string(),
            );
        };
        let Some(name) = self.name_in_dir(path) else {
            return (
                false,
                format!(
                    "error: {path:?} is not a file directly in {}. Write the file there \
                     first, then attach it by its name.",
                    self.dir.display()
                ),
            );
        };
        // lstat: a link is named as it is; the gateway refuses it, and says so.
        if std::fs::symlink_metadata(self.dir.join(&name)).is_err() {
            return (
                false,
                format!(
                    "error: there is no file {name:?} in {}. Write it there first.",
                    self.dir.display()
                ),
            );
        }
        match self.name(name.clone()) {
            Ok(()) => (
                true,
                format!("{name} will be sent to the user after your answer."),
            ),
            Err(why) => (false, format!("error: {why}")),
        }
    }

    /// The file's name when `path` is one directly in the directory: a bare name, or the
    /// directory's path (or `out/`, as the tools see it) followed by one.
    fn name_in_dir(&self, path: &str) -> Option<String> {
        let path = Path::new(path);
        let rest = path
            .strip_prefix(&self.dir)
            .or_else(|_| path.strip_prefix("out"))
            .unwrap_or(path);
        let mut components = rest.components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) => name.to_str().map(str::to_string),
            _ => None,
        }
    }

    /// Adds `name` to the files for the chat (once).
    fn name(&self, name: String) -> Result<(), String> {
        let mut files = self.lock();
        if files.contains(&name) {
            return Ok(());
        }
        if files.len() >= MAX_FILES {
            return Err(format!("no more than {MAX_FILES} files go with one answer"));
        }
        files.push(name);
        Ok(())
    }

    /// Writes the files in a tool's `result` (images, embedded resources) into the
    /// directory and names them for the chat; what the model reads about them.
    pub fn keep(&self, result: &CallToolResult) -> Vec<String> {
        let mut notes = Vec::new();
        for (i, block) in result.content.iter().enumerate() {
            let (name, bytes) = match block {
                ContentBlock::Image(image) => (
                    format!("image-{}.{}", i + 1, extension(Some(&image.mime_type))),
                    decode(&image.data),
                ),
                ContentBlock::Resource(r) => match &r.resource {
                    ResourceContents::BlobResourceContents {
                        uri,
                        mime_type,
                        blob,
                        ..
                    } => (name_of(uri, mime_type.as_deref(), i), decode(blob)),
                    ResourceContents::TextResourceContents {
                        uri,
                        mime_type,
                        text,
                        ..
                    } => (
                        name_of(uri, mime_type.as_deref(), i),
                        Ok(text.as_bytes().to_vec()),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            let kept = bytes.and_then(|bytes| self.write(&name, &bytes));
            notes.push(match kept {
                Ok(name) => format!("[{name} will be sent to the user as a file]"),
                Err(why) => format!("[a file of the tool's result was not kept: {why}]"),
            });
        }
        notes
    }

    /// Writes `bytes` as a new file named after `name` (made safe, and unique), and names
    /// it for the chat.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<String, String> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(format!("{name} is over {MAX_FILE_BYTES} bytes"));
        }
        let safe = safe_name(name);
        for n in 0..100 {
            let candidate = match (n, safe.rsplit_once('.')) {
                (0, _) => safe.clone(),
                (n, Some((stem, ext))) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
                (n, _) => format!("{safe}-{n}"),
            };
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.dir.join(&candidate));
            match opened {
                Ok(mut file) => {
                    file.write_all(bytes)
                        .map_err(|e| format!("cannot write {candidate}: {e}"))?;
                    self.name(candidate.clone())?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot write {candidate}: {e}")),
            }
        }
        Err(format!("too many files named like {safe}"))
    }
}

fn decode(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("its content is not base64: {e}"))
}

/// A file name for a resource: the last segment of its URI, else one from its type.
fn name_of(uri: &str, mime_type: Option<&str>, index: usize) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    match path
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && !s.contains(':'))
    {
        Some(last) => last.to_string(),
        None => format!("file-{}.{}", index + 1, extension(mime_type)),
    }
}

fn extension(mime_type: Option<&str>) -> &'static str {
    match mime_type.unwrap_or("") {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/svg+xml" => "svg",
        "text/csv" => "csv",
        "text/markdown" => "md",
        "text/html" => "html",
        "application/json" => "json",
        "application/pdf" => "pdf",
        m if m.starts_with("text/") => "txt",
        _ => "bin",
    }
}

/// A name safe in the directory: no separators, no leading dot, at most 128 bytes.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    let mut end = trimmed.len().min(128);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    match &trimmed[..end] {
        "" => "file".to_string(),
        name => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_names_files_in_the_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::new(dir.path().to_path_buf());
        std::fs::write(dir.path().join("data.csv"), "a,b\n").unwrap();
        let args = |p: &str| json!({"path": p}).as_object().cloned().unwrap();
        assert!(output.attach(&args("data.csv")).0);
        assert!(output.attach(&args("out/data.csv")).0);
        let full = dir.path().join("data.csv").display().to_string();
        assert!(output.attach(&args(&full)).0);
        assert!(!output.attach(&args("../data.csv")).0);
        assert!(!output.attach(&args("/etc/passwd")).0);
        assert!(!output.attach(&args("missing.csv")).0);
        assert_eq!(output.take(), ["data.csv"], "named once");
        assert!(output.take().is_empty());
    }

    #[test]
    fn images_and_resources_of_a_result_become_files() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::new(dir.path().to_path_buf());
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let result = CallToolResult::success(vec![
            ContentBlock::text("done"),
            ContentBlock::image(png, "image/png"),
            ContentBlock::resource(ResourceContents::TextResourceContents {
                uri: "file:///tmp/../report.csv".into(),
                mime_type: Some("text/csv".into()),
                text: "x,y\n".into(),
                meta: None,
            }),
        ]);
        let notes = output.keep(&result);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(output.take(), ["image-2.png", "report.csv"]);
        assert_eq!(
            std::fs::read(dir.path().join("report.csv")).unwrap(),
            b"x,y\n"
        );
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
    }
}
