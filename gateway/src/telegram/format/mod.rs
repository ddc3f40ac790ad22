//! The model's Markdown as Telegram HTML, cut into messages.
//!
//! Models answer in Markdown, and Telegram shows `**bold**` and fenced code as literal
//! asterisks and backticks unless the text is sent with a parse mode. Telegram's HTML mode
//! is the forgiving one (MarkdownV2 refuses a message over one unescaped `.`), but it knows
//! only a handful of tags and counts its 4096 limit on the text left after the tags are
//! parsed. So the Markdown is first laid out as visible text plus the styles over each run
//! of it; the cut is chosen on that text (paragraph, line, space, else anywhere between
//! characters); and every piece opens the styles active at its start and closes them at its
//! end, so a code block or bold span cut in two is well formed in both messages. Each piece
//! also carries its visible text, which the sender falls back to if Telegram still refuses
//! the HTML.

use std::ops::Range;

use super::split::{Cutter, utf16_len};
use crate::html::escape_as;
pub use crate::html::{Piece, escape};
use crate::replies;

mod markdown;
mod safety;
#[cfg(test)]
mod tests;

/// The most messages one answer becomes. An answer is at most 64 KiB of text, but a
/// model's Markdown can lay out far longer (or be cut very fine), and a chat flooded with
/// hundreds of messages is not an answer; past this the last message ends with a note.
pub const MAX_PIECES: usize = 10;

/// Renders `markdown` and cuts it into at most [`MAX_PIECES`] pieces whose visible text is
/// at most `limit` UTF-16 units (a `limit` under 2 is taken as 2: a character outside the
/// BMP needs two). Time and memory are linear in the length of `markdown`.
///
/// Always returns at least one piece, and no piece is empty, except for blank `markdown`:
/// then the one piece is empty, as there is nothing to send. Markdown that renders to
/// nothing visible (only a link reference definition, an empty fence) is sent as its source
/// text rather than lost. An answer that needs more pieces is cut in the last one, which
/// ends with a note saying so (when the limit leaves room for it).
pub fn render(markdown: &str, limit: usize) -> Vec<Piece> {
    let limit = limit.max(2);
    let layout = layout(markdown);
    if layout.text.is_empty() {
        return vec![Piece::default()];
    }
    let mut cutter = Cutter::new(&layout.text);
    let mut pieces = Vec::new();
    while pieces.len() + 1 < MAX_PIECES {
        match cutter.next_piece(limit) {
            Some(range) => pieces.push(layout.piece(range)),
            None => break,
        }
    }
    if pieces.len() + 1 == MAX_PIECES {
        let note = replies::answer_too_many_messages(MAX_PIECES);
        let room = limit.saturating_sub(utf16_len(&note));
        if cutter.rest_fits(limit) || room < 2 {
            pieces.extend(cutter.next_piece(limit).map(|range| layout.piece(range)));
        } else if let Some(range) = cutter.next_piece(room) {
            let mut last = layout.piece(range);
            last.html.push_str(&escape(&note));
            last.plain.push_str(&note);
            pieces.push(last);
        }
    }
    if pieces.is_empty() {
        // The cutter always keeps the last, non-blank piece; this only guards that promise.
        pieces.push(Piece::default());
    }
    pieces
}

/// Markdown longer than this is rendered on the blocking pool by [`render_off_thread`]:
/// the worst 64 KiB answer takes milliseconds (docs/BENCHMARKS.md, the render row), and
/// the gateway's one thread polls Telegram and serves every chat (invariant 9). Shorter
/// text takes microseconds.
const RENDER_INLINE_BYTES: usize = 4 * 1024;

/// [`render`], on the blocking pool when `markdown` is long. None if rendering panicked
/// (the caller still has the text to send).
pub async fn render_off_thread(markdown: &str, limit: usize) -> Option<Vec<Piece>> {
    if markdown.len() <= RENDER_INLINE_BYTES {
        return Some(render(markdown, limit));
    }
    let owned = markdown.to_string();
    match tokio::task::spawn_blocking(move || render(&owned, limit)).await {
        Ok(pieces) => Some(pieces),
        Err(e) => {
            tracing::error!("rendering an answer failed: {e}");
            None
        }
    }
}

/// The rendered reply: its visible text, and the styles over each run of that text.
#[derive(Debug, Default)]
struct Layout {
    text: String,
    /// Contiguous, in order, covering `text` exactly.
    runs: Vec<Run>,
}

#[derive(Debug)]
struct Run {
    range: Range<usize>,
    /// Outermost first. Two runs share an open tag exactly when their stacks share a prefix.
    styles: Vec<Style>,
}

/// One open formatting span. The id tells two adjacent code blocks (or quotes) apart, so
/// the blank line between them does not melt them into one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Style {
    id: u32,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Bold,
    Italic,
    Strike,
    Code,
    /// A code block, with its sanitized language if one was given.
    Pre(Option<String>),
    Link(String),
    Quote,
}

impl Kind {
    fn open_tag(&self) -> String {
        match self {
            Kind::Bold => "<b>".into(),
            Kind::Italic => "<i>".into(),
            Kind::Strike => "<s>".into(),
            Kind::Code => "<code>".into(),
            Kind::Pre(None) => "<pre>".into(),
            Kind::Pre(Some(lang)) => format!("<pre><code class=\"language-{lang}\">"),
            Kind::Link(href) => format!("<a href=\"{}\">", escape_as(href, true)),
            Kind::Quote => "<blockquote>".into(),
        }
    }

    fn close_tag(&self) -> &'static str {
        match self {
            Kind::Bold => "</b>",
            Kind::Italic => "</i>",
            Kind::Strike => "</s>",
            Kind::Code => "</code>",
            Kind::Pre(None) => "</pre>",
            Kind::Pre(Some(_)) => "</code></pre>",
            Kind::Link(_) => "</a>",
            Kind::Quote => "</blockquote>",
        }
    }
}

impl Layout {
    /// The piece showing `range` of the text, with every style open over it opened at its
    /// start and closed at its end.
    fn piece(&self, range: Range<usize>) -> Piece {
        let mut html = String::new();
        let mut open: &[Style] = &[];
        let first = self
            .runs
            .partition_point(|run| run.range.end <= range.start);
        for run in &self.runs[first..] {
            if run.range.start >= range.end {
                break;
            }
            let from = run.range.start.max(range.start);
            let to = run.range.end.min(range.end);
            if from >= to {
                continue;
            }
            let shared = common_prefix(open, &run.styles);
            for style in open[shared..].iter().rev() {
                html.push_str(style.kind.close_tag());
            }
            for style in &run.styles[shared..] {
                html.push_str(&style.kind.open_tag());
            }
            html.push_str(&escape_as(&self.text[from..to], false));
            open = &run.styles;
        }
        for style in open.iter().rev() {
            html.push_str(style.kind.close_tag());
        }
        Piece {
            html,
            plain: self.text[range].to_string(),
        }
    }
}

fn common_prefix(a: &[Style], b: &[Style]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Lays out `markdown`; falls back to its source when it renders to nothing visible.
fn layout(markdown: &str) -> Layout {
    // A "\r" would count against the limit and show nothing.
    let markdown = markdown.replace("\r\n", "\n");
    let layout = markdown::lay_out(&markdown);
    if !layout.text.trim().is_empty() {
        return layout;
    }
    let source = markdown.trim();
    Layout {
        text: source.to_string(),
        runs: if source.is_empty() {
            Vec::new()
        } else {
            vec![Run {
                range: 0..source.len(),
                styles: Vec::new(),
            }]
        },
    }
}
