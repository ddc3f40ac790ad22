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

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use super::split::{byte_index_at_utf16, utf16_len};

/// One message's worth of a reply: Telegram HTML, and the same text without markup for
/// when Telegram refuses the HTML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    pub html: String,
    pub plain: String,
}

/// Renders `markdown` and cuts it into pieces whose visible text is at most `limit` UTF-16
/// units (a `limit` under 2 is taken as 2: a character outside the BMP needs two).
///
/// Always returns at least one piece, and no piece is empty, except for blank `markdown`:
/// then the one piece is empty, as there is nothing to send. Markdown that renders to
/// nothing visible (only a link reference definition, an empty fence) is sent as its source
/// text rather than lost.
pub fn render(markdown: &str, limit: usize) -> Vec<Piece> {
    let limit = limit.max(2);
    let layout = layout(markdown);
    if layout.text.is_empty() {
        return vec![Piece::default()];
    }
    let mut pieces: Vec<Piece> = cut(&layout.text, limit)
        .into_iter()
        .map(|range| layout.piece(range))
        .collect();
    if pieces.is_empty() {
        // `cut` always keeps the last, non-blank piece; this only guards that promise.
        pieces.push(Piece::default());
    }
    pieces
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

/// Escapes text for Telegram's HTML, outside tags: the gateway's own words sent with the
/// HTML parse mode.
pub fn escape(text: &str) -> String {
    escape_as(text, false)
}

/// Escapes text for Telegram's HTML: `&`, `<`, `>`, and `"` inside an attribute.
fn escape_as(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Byte ranges of `text` (already free of trailing whitespace) for the pieces, each at
/// most `limit` UTF-16 units. The whitespace at a cut belongs to neither side, except the
/// indentation of the line the next piece starts with, which code needs.
fn cut(text: &str, limit: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        if utf16_len(rest) <= limit {
            if !rest.trim().is_empty() {
                ranges.push(start..text.len());
            }
            break;
        }
        let window = &rest[..byte_index_at_utf16(rest, limit)];
        // Below half the allowance a separator would make a stub of a message; a hard cut
        // is better then.
        let floor = window.len() / 2;
        let at = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&i| i >= floor && i > 0))
            .unwrap_or(window.len());
        let head = window[..at].trim_end();
        if !head.trim_start().is_empty() {
            ranges.push(start..start + head.len());
        }
        let tail = &rest[at..];
        let gap = tail.len() - tail.trim_start().len();
        let skip = match tail[..gap].rfind('\n') {
            Some(newline) => newline + 1,
            None => gap,
        };
        start += at + skip;
    }
    ranges
}

/// Lays out `markdown`; falls back to its source when it renders to nothing visible.
fn layout(markdown: &str) -> Layout {
    // A "\r" would count against the limit and show nothing.
    let markdown = markdown.replace("\r\n", "\n");
    let mut options = Options::empty();
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TABLES);
    let mut writer = Writer::default();
    for event in Parser::new_ext(&markdown, options) {
        writer.event(event);
    }
    let mut layout = writer.finish();
    if layout.text.trim().is_empty() {
        let source = markdown.trim();
        layout = Layout {
            text: source.to_string(),
            runs: vec![Run {
                range: 0..source.len(),
                styles: Vec::new(),
            }],
        };
        if source.is_empty() {
            layout.runs.clear();
        }
    }
    layout
}

/// Turns pulldown-cmark's events into a [`Layout`]. Line breaks between blocks are kept
/// pending until the next visible text, so nothing trails and nothing leads.
#[derive(Default)]
struct Writer {
    out: Layout,
    styles: Vec<Style>,
    next_id: u32,
    /// Newlines owed before the next text.
    pending: usize,
    /// The current list item's bullet or number, until its first text.
    marker: Option<String>,
    /// One per open list item: the indentation that lines its text up under its marker.
    indents: Vec<String>,
    /// One per open list: the next item's number, or `None` for bullets.
    lists: Vec<Option<u64>>,
    /// One per open tag that may add a style (some are dropped where Telegram forbids
    /// nesting): whether it did.
    pushed: Vec<bool>,
    /// One per open image: its link if it has one, and the text length at its start.
    images: Vec<(Option<String>, usize)>,
    code_block: Option<CodeBlock>,
    table: Table,
}

#[derive(Default)]
struct CodeBlock {
    /// No text yet: leading blank lines are dropped.
    fresh: bool,
    /// Newlines inside the block owed before its next text; trailing ones are dropped.
    newlines: usize,
}

#[derive(Default)]
struct Table {
    in_head: bool,
    cell: usize,
}

impl Writer {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => self.text(&text),
            Event::Code(code) => {
                let pushed = self.open(Kind::Code);
                self.text(&code);
                self.close(pushed);
            }
            // Raw HTML from the model is shown, not interpreted: Telegram would refuse
            // most tags, and the model means them as text more often than not.
            Event::Html(html) | Event::InlineHtml(html) => self.text(&html),
            Event::SoftBreak | Event::HardBreak => self.pending += 1,
            Event::Rule => {
                self.block_break(2);
                self.text("———");
                self.block_break(2);
            }
            // Not enabled in the options; kept as text should that ever change.
            Event::InlineMath(text) | Event::DisplayMath(text) => self.text(&text),
            Event::FootnoteReference(label) => self.text(&format!("[^{label}]")),
            Event::TaskListMarker(done) => self.text(if done { "[x] " } else { "[ ] " }),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph | Tag::HtmlBlock => self.block_break(1),
            Tag::Heading { .. } => {
                self.block_break(1);
                self.open_pushed(Kind::Bold);
            }
            Tag::BlockQuote(_) => {
                self.block_break(1);
                self.open_pushed(Kind::Quote);
            }
            Tag::CodeBlock(kind) => {
                self.block_break(1);
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => sanitize_language(&info),
                    CodeBlockKind::Indented => None,
                };
                self.open(Kind::Pre(lang));
                self.code_block = Some(CodeBlock {
                    fresh: true,
                    newlines: 0,
                });
            }
            Tag::List(first) => {
                self.block_break(1);
                self.lists.push(first);
            }
            Tag::Item => {
                if self.marker.is_some() {
                    // An item whose first content is a nested item: its marker gets a
                    // line of its own.
                    self.flush(false);
                }
                self.block_break(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(number)) => {
                        let marker = format!("{number}. ");
                        *number = number.saturating_add(1);
                        marker
                    }
                    _ => "• ".to_string(),
                };
                self.indents.push(" ".repeat(marker.chars().count()));
                self.marker = Some(marker);
            }
            Tag::Table(_) => self.block_break(1),
            Tag::TableHead => {
                self.block_break(1);
                self.table = Table {
                    in_head: true,
                    cell: 0,
                };
            }
            Tag::TableRow => {
                self.block_break(1);
                self.table.cell = 0;
            }
            Tag::TableCell => {
                if self.table.cell > 0 {
                    self.flush(false);
                    self.push(" | ", self.block_styles());
                }
                self.table.cell += 1;
                let bold = self.table.in_head && self.open(Kind::Bold);
                self.pushed.push(bold);
            }
            Tag::Emphasis => self.open_pushed(Kind::Italic),
            Tag::Strong => self.open_pushed(Kind::Bold),
            Tag::Strikethrough => self.open_pushed(Kind::Strike),
            Tag::Link { dest_url, .. } => {
                if link_allowed(&dest_url, &["http:", "https:", "tg:", "mailto:"]) {
                    self.open_pushed(Kind::Link(dest_url.to_string()));
                } else {
                    self.pushed.push(false);
                }
            }
            Tag::Image { dest_url, .. } => {
                let link =
                    link_allowed(&dest_url, &["http:", "https:"]).then(|| dest_url.to_string());
                let pushed = match &link {
                    Some(url) => self.open(Kind::Link(url.clone())),
                    None => false,
                };
                self.pushed.push(pushed);
                self.images.push((link, self.out.text.len()));
            }
            // Footnotes, definition lists, metadata, super- and subscript are not enabled;
            // their text still comes through as text.
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph | TagEnd::HtmlBlock => self.block_break(2),
            TagEnd::Heading(_) | TagEnd::BlockQuote(_) => {
                self.close_pushed();
                self.block_break(2);
            }
            TagEnd::CodeBlock => {
                self.code_block = None;
                self.styles.pop();
                self.block_break(2);
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.block_break(if self.lists.is_empty() { 2 } else { 1 });
            }
            TagEnd::Item => {
                if self.marker.is_some() {
                    // An empty item still shows its bullet.
                    self.flush(false);
                }
                self.indents.pop();
                self.block_break(1);
            }
            TagEnd::TableHead => {
                self.table.in_head = false;
                self.block_break(1);
            }
            TagEnd::TableRow => self.block_break(1),
            TagEnd::Table => self.block_break(2),
            TagEnd::TableCell
            | TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Link => self.close_pushed(),
            TagEnd::Image => {
                if let Some((Some(url), len_at_start)) = self.images.pop()
                    && self.out.text.len() == len_at_start
                {
                    // No alt text: the address is all there is to show.
                    self.text(&url);
                }
                self.close_pushed();
            }
            _ => {}
        }
    }

    /// Opens a style unless Telegram forbids it here: the same style twice, a link in a
    /// link, a quote in a quote. Returns whether it did.
    fn open(&mut self, kind: Kind) -> bool {
        let same =
            |style: &Style| std::mem::discriminant(&style.kind) == std::mem::discriminant(&kind);
        if !matches!(kind, Kind::Pre(_)) && self.styles.iter().any(same) {
            return false;
        }
        self.next_id = self.next_id.wrapping_add(1);
        self.styles.push(Style {
            id: self.next_id,
            kind,
        });
        true
    }

    fn close(&mut self, pushed: bool) {
        if pushed {
            self.styles.pop();
        }
    }

    fn open_pushed(&mut self, kind: Kind) {
        let pushed = self.open(kind);
        self.pushed.push(pushed);
    }

    fn close_pushed(&mut self) {
        let pushed = self.pushed.pop().unwrap_or(false);
        self.close(pushed);
    }

    /// At least `newlines` line breaks before the next text (none at the very start).
    fn block_break(&mut self, newlines: usize) {
        self.pending = self.pending.max(newlines);
    }

    fn text(&mut self, text: &str) {
        if self.code_block.is_some() {
            self.code_text(text);
            return;
        }
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.pending += 1;
            }
            if !line.is_empty() {
                self.flush(false);
                self.push(line, self.styles.clone());
            }
        }
    }

    /// Code keeps its lines and indentation as they are: no list indentation is added,
    /// and its newlines stay inside the block.
    fn code_text(&mut self, text: &str) {
        for (i, line) in text.split('\n').enumerate() {
            let Some(block) = self.code_block.as_mut() else {
                return;
            };
            if i > 0 && !block.fresh {
                block.newlines += 1;
            }
            if line.is_empty() {
                continue;
            }
            let owed = std::mem::take(&mut block.newlines);
            if std::mem::replace(&mut block.fresh, false) {
                self.flush(true);
            } else {
                self.push(&"\n".repeat(owed), self.styles.clone());
            }
            self.push(line, self.styles.clone());
        }
    }

    /// Writes what is owed before new text: the pending line breaks, then the list
    /// marker or the indentation that lines a continuation up under it.
    fn flush(&mut self, code: bool) {
        if self.pending > 0 {
            self.trim_trailing_spaces();
            if !self.out.text.is_empty() {
                // Outside whatever ends here, inside whatever goes on (a quote's
                // paragraphs stay one quote).
                let last = self.out.runs.last().map_or(&[][..], |run| &run.styles[..]);
                let shared = self.styles[..common_prefix(last, &self.styles)].to_vec();
                self.push(&"\n".repeat(self.pending), shared);
            }
            self.pending = 0;
        }
        let at_line_start = self.out.text.is_empty() || self.out.text.ends_with('\n');
        let prefix = match self.marker.take() {
            Some(marker) => {
                let outer = self.indents.len().saturating_sub(1);
                format!("{}{marker}", self.indents[..outer].concat())
            }
            None if at_line_start && !code => self.indents.concat(),
            None => String::new(),
        };
        self.push(&prefix, self.block_styles());
    }

    /// The styles a marker, indentation or separator may carry: only an enclosing quote.
    fn block_styles(&self) -> Vec<Style> {
        self.styles
            .iter()
            .take_while(|style| style.kind == Kind::Quote)
            .cloned()
            .collect()
    }

    fn push(&mut self, text: &str, styles: Vec<Style>) {
        if text.is_empty() {
            return;
        }
        let start = self.out.text.len();
        self.out.text.push_str(text);
        let end = self.out.text.len();
        match self.out.runs.last_mut() {
            Some(last) if last.styles == styles => last.range.end = end,
            _ => self.out.runs.push(Run {
                range: start..end,
                styles,
            }),
        }
    }

    /// Drops spaces a line would end with (a marker's, an empty cell's separator): they
    /// show nothing and count against the limit.
    fn trim_trailing_spaces(&mut self) {
        let end = self.out.text.trim_end_matches(' ').len();
        self.truncate(end);
    }

    fn truncate(&mut self, end: usize) {
        self.out.text.truncate(end);
        self.out.runs.retain(|run| run.range.start < end);
        if let Some(last) = self.out.runs.last_mut() {
            last.range.end = last.range.end.min(end);
        }
    }

    fn finish(mut self) -> Layout {
        let end = self.out.text.trim_end().len();
        self.truncate(end);
        self.out
    }
}

/// The language of a fence's info string as Telegram's `class` may carry it: its first
/// word, letters, digits and `_+-` only.
fn sanitize_language(info: &str) -> Option<String> {
    let word = info
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
        .find(|word| !word.is_empty())?;
    let lang: String = word
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
        .collect();
    (!lang.is_empty()).then_some(lang)
}

/// Whether `url` has one of `schemes` (case-insensitive) and nothing Telegram would refuse
/// in a URL: a link it refuses costs the whole message its formatting.
fn link_allowed(url: &str, schemes: &[&str]) -> bool {
    let has_scheme = schemes.iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
            && url.len() > scheme.len()
    });
    has_scheme && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 4096;

    fn one(markdown: &str) -> Piece {
        let pieces = render(markdown, LIMIT);
        assert_eq!(pieces.len(), 1, "{pieces:#?}");
        pieces.into_iter().next().unwrap()
    }

    fn html(markdown: &str) -> String {
        one(markdown).html
    }

    /// Parses `html` as Telegram would: only its tags, properly nested, no empty element,
    /// only its four entities. Returns the visible text.
    fn visible_text(html: &str) -> Result<String, String> {
        let mut open: Vec<(String, usize)> = Vec::new();
        let mut visible = String::new();
        let mut rest = html;
        while let Some(c) = rest.chars().next() {
            match c {
                '<' => {
                    let end = rest.find('>').ok_or("unterminated tag")?;
                    let tag = &rest[1..end];
                    rest = &rest[end + 1..];
                    if let Some(name) = tag.strip_prefix('/') {
                        let (opened, len_at_open) = open.pop().ok_or("close without open")?;
                        if opened != name {
                            return Err(format!("<{opened}> closed by </{name}>"));
                        }
                        if visible.len() == len_at_open {
                            return Err(format!("empty <{name}>"));
                        }
                        continue;
                    }
                    let (name, attrs) = tag.split_once(' ').unwrap_or((tag, ""));
                    let parent = open.last().map(|(name, _)| name.as_str());
                    match (name, attrs) {
                        ("b" | "i" | "u" | "s" | "tg-spoiler" | "pre", "") => {}
                        ("code", "") => {}
                        ("code", class) => {
                            let lang = class
                                .strip_prefix("class=\"language-")
                                .and_then(|c| c.strip_suffix('"'))
                                .ok_or(format!("bad code attribute {class}"))?;
                            if lang.is_empty()
                                || !lang.chars().all(|c| {
                                    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-')
                                })
                            {
                                return Err(format!("bad language {lang}"));
                            }
                            if parent != Some("pre") {
                                return Err("code class outside pre".into());
                            }
                        }
                        ("a", href) => {
                            let url = href
                                .strip_prefix("href=\"")
                                .and_then(|h| h.strip_suffix('"'))
                                .ok_or(format!("bad a attribute {href}"))?;
                            if url.contains(['"', '<', '>']) {
                                return Err(format!("unescaped href {url}"));
                            }
                            if open.iter().any(|(n, _)| n == "a") {
                                return Err("link in a link".into());
                            }
                        }
                        ("blockquote", "") => {
                            if open.iter().any(|(n, _)| n == "blockquote") {
                                return Err("quote in a quote".into());
                            }
                        }
                        _ => return Err(format!("tag not allowed: <{tag}>")),
                    }
                    open.push((name.to_string(), visible.len()));
                }
                '&' => {
                    let (entity, decoded) = [
                        ("&amp;", '&'),
                        ("&lt;", '<'),
                        ("&gt;", '>'),
                        ("&quot;", '"'),
                    ]
                    .into_iter()
                    .find(|(entity, _)| rest.starts_with(entity))
                    .ok_or_else(|| format!("bad entity at {rest:.10}"))?;
                    visible.push(decoded);
                    rest = &rest[entity.len()..];
                }
                '>' => return Err("bare >".into()),
                c => {
                    visible.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        match open.last() {
            Some((name, _)) => Err(format!("<{name}> never closed")),
            None => Ok(visible),
        }
    }

    /// Everything the issue promises about the pieces of any input.
    fn check(markdown: &str, limit: usize) -> Result<(), String> {
        let pieces = render(markdown, limit);
        if pieces.is_empty() {
            return Err("no piece".into());
        }
        let whole = layout(markdown).text;
        let mut at = 0;
        for piece in &pieces {
            let visible =
                visible_text(&piece.html).map_err(|e| format!("{e} in {:?}", piece.html))?;
            if visible != piece.plain {
                return Err(format!("visible {visible:?} != plain {:?}", piece.plain));
            }
            if utf16_len(&piece.plain) > limit.max(2) {
                return Err(format!("over the limit: {:?}", piece.plain));
            }
            if piece.plain.trim().is_empty() && !markdown.trim().is_empty() {
                return Err("empty piece".into());
            }
            // The pieces are the whole text, in order, but for whitespace between them.
            let gap = whole[at..]
                .find(&piece.plain)
                .ok_or("piece not in the text")?;
            if !whole[at..at + gap].trim().is_empty() {
                return Err(format!("lost {:?}", &whole[at..at + gap]));
            }
            at += gap + piece.plain.len();
        }
        if !whole[at..].trim().is_empty() {
            return Err(format!("lost the end {:?}", &whole[at..]));
        }
        Ok(())
    }

    #[test]
    fn bold_italic_and_strikethrough() {
        assert_eq!(
            html("**bold** *italic* _also_ ~~gone~~"),
            "<b>bold</b> <i>italic</i> <i>also</i> <s>gone</s>"
        );
        assert_eq!(html("***both***"), "<i><b>both</b></i>");
    }

    #[test]
    fn inline_code_is_escaped_and_unstyled_inside() {
        assert_eq!(
            html("use `a < b && *c*` here"),
            "use <code>a &lt; b &amp;&amp; *c*</code> here"
        );
    }

    #[test]
    fn fenced_code_carries_its_language() {
        let piece = one("```rust\nfn main() {\n    x < y;\n}\n```");
        assert_eq!(
            piece.html,
            "<pre><code class=\"language-rust\">fn main() {\n    x &lt; y;\n}</code></pre>"
        );
        assert_eq!(piece.plain, "fn main() {\n    x < y;\n}");
    }

    #[test]
    fn code_keeps_its_blank_lines_and_indentation() {
        assert_eq!(
            one("```python\n\ndef f():\n\n\n    return 1\n```").plain,
            "def f():\n\n\n    return 1"
        );
    }

    #[test]
    fn code_without_language_is_a_bare_pre() {
        assert_eq!(html("```\nplain\n```"), "<pre>plain</pre>");
        assert_eq!(
            html("text\n\n    indented\n    code"),
            "text\n\n<pre>indented\ncode</pre>"
        );
    }

    #[test]
    fn language_is_sanitized() {
        assert_eq!(
            html("```c++ {.numberLines}\nx\n```"),
            "<pre><code class=\"language-c++\">x</code></pre>"
        );
        assert_eq!(
            html("```py\"><b>\nx\n```"),
            "<pre><code class=\"language-pyb\">x</code></pre>"
        );
        assert_eq!(html("```\"<>\"\nx\n```"), "<pre>x</pre>");
    }

    #[test]
    fn links_only_for_safe_schemes() {
        assert_eq!(
            html("[docs](https://example.com/?a=1&b=\"2\")"),
            "<a href=\"https://example.com/?a=1&amp;b=&quot;2&quot;\">docs</a>"
        );
        assert_eq!(
            html("[me](tg://user?id=1) [mail](mailto:a@b.c)"),
            "<a href=\"tg://user?id=1\">me</a> <a href=\"mailto:a@b.c\">mail</a>"
        );
        assert_eq!(html("[click](javascript:alert(1))"), "click");
        assert_eq!(html("[rel](/relative/path)"), "rel");
        assert_eq!(
            html("<https://example.com>"),
            "<a href=\"https://example.com\">https://example.com</a>"
        );
    }

    #[test]
    fn a_link_around_code_keeps_both() {
        assert_eq!(
            html("[`Vec::new`](https://doc.rust-lang.org)"),
            "<a href=\"https://doc.rust-lang.org\"><code>Vec::new</code></a>"
        );
    }

    #[test]
    fn images_become_their_alt_text_linked() {
        assert_eq!(
            html("![a cat](https://x.org/cat.png)"),
            "<a href=\"https://x.org/cat.png\">a cat</a>"
        );
        assert_eq!(
            html("![](https://x.org/cat.png)"),
            "<a href=\"https://x.org/cat.png\">https://x.org/cat.png</a>"
        );
        assert_eq!(html("![a cat](data:image/png;base64,AAA)"), "a cat");
        // An image inside a link: one link, not two nested.
        assert_eq!(
            html("[![logo](https://x.org/l.png)](https://x.org)"),
            "<a href=\"https://x.org\">logo</a>"
        );
    }

    #[test]
    fn headings_are_bold_lines() {
        assert_eq!(
            html("# Title\nText\n## Sub *it*\n\nMore"),
            "<b>Title</b>\n\nText\n\n<b>Sub <i>it</i></b>\n\nMore"
        );
    }

    #[test]
    fn paragraphs_are_separated_by_a_blank_line_and_breaks_are_newlines() {
        assert_eq!(
            html("one\ntwo  \nthree\n\n\n\nfour"),
            "one\ntwo\nthree\n\nfour"
        );
    }

    #[test]
    fn bullet_and_nested_lists() {
        assert_eq!(
            html("Items:\n\n- one\n- two\n  - nested *x*\n  - more\n- three"),
            "Items:\n\n• one\n• two\n  • nested <i>x</i>\n  • more\n• three"
        );
    }

    #[test]
    fn an_item_opening_with_a_nested_list_gets_a_bare_bullet() {
        assert_eq!(html("- - a\n  - b"), "•\n  • a\n  • b");
    }

    #[test]
    fn ordered_lists_keep_their_numbers() {
        assert_eq!(html("3. c\n4. d\n   1. inner"), "3. c\n4. d\n   1. inner");
    }

    #[test]
    fn loose_list_items_and_continuations_line_up() {
        assert_eq!(
            html("- first\n  line two\n\n  second para\n- next"),
            "• first\n  line two\n\n  second para\n\n• next"
        );
    }

    #[test]
    fn code_in_a_list_item() {
        assert_eq!(
            html("1. run:\n   ```sh\n   cargo test\n   ```"),
            "1. run:\n<pre><code class=\"language-sh\">cargo test</code></pre>"
        );
    }

    #[test]
    fn blockquotes_stay_one_quote_and_never_nest() {
        assert_eq!(
            html("> first\n>\n> second\n\nafter"),
            "<blockquote>first\n\nsecond</blockquote>\n\nafter"
        );
        assert_eq!(
            html("> outer\n> > inner"),
            "<blockquote>outer\n\ninner</blockquote>"
        );
    }

    #[test]
    fn two_code_blocks_stay_two() {
        assert_eq!(
            html("```\na\n```\n```\nb\n```"),
            "<pre>a</pre>\n\n<pre>b</pre>"
        );
    }

    #[test]
    fn horizontal_rule_is_a_line() {
        assert_eq!(html("above\n\n---\n\nbelow"), "above\n\n———\n\nbelow");
    }

    #[test]
    fn tables_are_lines_of_cells() {
        assert_eq!(
            html("| name | n |\n|---|--:|\n| a & b | 1 |\n| | 2 |"),
            "<b>name</b> | <b>n</b>\na &amp; b | 1\n | 2"
        );
    }

    #[test]
    fn raw_html_is_shown_escaped() {
        assert_eq!(html("x <b>y</b> z"), "x &lt;b&gt;y&lt;/b&gt; z");
        assert_eq!(
            html("<div>\nblock\n</div>\n\nafter"),
            "&lt;div&gt;\nblock\n&lt;/div&gt;\n\nafter"
        );
    }

    #[test]
    fn text_is_escaped() {
        let piece = one("a < b & c > d \"q\"");
        assert_eq!(piece.html, "a &lt; b &amp; c &gt; d \"q\"");
        assert_eq!(piece.plain, "a < b & c > d \"q\"");
    }

    #[test]
    fn trailing_whitespace_is_trimmed() {
        assert_eq!(one("text   \n\n\n").plain, "text");
        assert_eq!(one("```\ncode   \n\n\n```").plain, "code");
    }

    #[test]
    fn unfinished_markdown_renders_while_streaming() {
        assert_eq!(
            html("Here:\n```rust\nfn main() {\n    let x"),
            "Here:\n\n<pre><code class=\"language-rust\">fn main() {\n    let x</code></pre>"
        );
        assert_eq!(html("so **bold"), "so **bold");
        assert_eq!(html("[link](https://exa"), "[link](https://exa");
        assert_eq!(html("- "), "•");
        assert_eq!(html("| a | b |\n|--"), "| a | b |\n|--");
        // An empty fence shows nothing, so its source is shown instead.
        assert_eq!(html("```"), "```");
    }

    #[test]
    fn blank_markdown_is_one_empty_piece() {
        assert_eq!(render("", LIMIT), vec![Piece::default()]);
        assert_eq!(render(" \n\t\n", LIMIT), vec![Piece::default()]);
    }

    #[test]
    fn markdown_with_nothing_visible_is_sent_as_its_source() {
        assert_eq!(
            html("[ref]: https://example.com"),
            "[ref]: https://example.com"
        );
    }

    #[test]
    fn a_long_code_block_is_a_complete_block_in_every_piece() {
        let code: String = (0..500)
            .map(|i| format!("    let x{i} = {i} < 1;\n"))
            .collect();
        assert!(code.len() > 10_000);
        let markdown = format!("Intro.\n\n```rust\n{code}```\n\nOutro.");
        let pieces = render(&markdown, LIMIT);
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        for piece in &pieces[1..pieces.len() - 1] {
            assert!(
                piece
                    .html
                    .starts_with("<pre><code class=\"language-rust\">")
            );
            assert!(piece.html.ends_with("</code></pre>"));
            assert_eq!(visible_text(&piece.html).unwrap(), piece.plain);
            assert!(utf16_len(&piece.plain) <= LIMIT);
            // Cut on a line break, and the next line keeps its indentation.
            assert!(
                piece.plain.starts_with("    let x"),
                "{:?}",
                &piece.plain[..20]
            );
            assert!(piece.plain.ends_with("< 1;"));
        }
        assert!(pieces[0].html.starts_with("Intro.\n\n<pre>"));
        assert!(
            pieces
                .last()
                .unwrap()
                .html
                .ends_with("</code></pre>\n\nOutro.")
        );
        check(&markdown, LIMIT).unwrap();
    }

    #[test]
    fn splitting_prefers_paragraph_breaks() {
        let para = |word: &str, n: usize| vec![word; n].join(" ");
        // A line break and spaces fall later in the allowance than the paragraph break.
        let first = format!("{}\n\n{}", para("alpha", 300), para("beta", 200));
        let markdown = format!(
            "{first}\n\n{}\nline\n{}",
            para("gamma", 150),
            para("delta", 300)
        );
        let pieces = render(&markdown, LIMIT);
        assert_eq!(pieces[0].plain, first);
        assert_eq!(pieces[1].plain.split_whitespace().next(), Some("gamma"));
        check(&markdown, LIMIT).unwrap();
    }

    #[test]
    fn emoji_are_never_cut_in_half() {
        // Each emoji is two UTF-16 units; the allowance is odd.
        let text = "😀".repeat(3000);
        let pieces = render(&text, 4095);
        assert!(pieces.len() >= 2);
        for piece in &pieces {
            assert!(utf16_len(&piece.plain) <= 4095);
        }
        assert_eq!(
            pieces.iter().map(|p| p.plain.as_str()).collect::<String>(),
            text
        );
        assert_eq!(
            render("😀😀😀", 5)
                .into_iter()
                .map(|p| p.plain)
                .collect::<Vec<_>>(),
            ["😀😀", "😀"]
        );
    }

    #[test]
    fn the_limit_counts_visible_text_not_markup() {
        // 4000 visible characters in over 10,000 bytes of HTML: one message.
        let markdown = format!("**{}**", "&<".repeat(2000));
        let pieces = render(&markdown, LIMIT);
        assert_eq!(pieces.len(), 1);
        assert_eq!(utf16_len(&pieces[0].plain), 4000);
    }

    #[test]
    fn a_bold_span_cut_in_two_is_closed_and_reopened() {
        let markdown = format!("**{}**", vec!["word"; 100].join(" "));
        let pieces = render(&markdown, 100);
        assert!(pieces.len() >= 4);
        for piece in &pieces {
            assert!(piece.html.starts_with("<b>") && piece.html.ends_with("</b>"));
            assert!(!piece.plain.starts_with(' ') && !piece.plain.ends_with(' '));
        }
        check(&markdown, 100).unwrap();
    }

    #[test]
    fn a_link_cut_in_two_links_both_halves() {
        let markdown = format!("[{}](https://x.org)", "word ".repeat(30).trim_end());
        for piece in render(&markdown, 60) {
            assert!(piece.html.starts_with("<a href=\"https://x.org\">"));
        }
    }

    #[test]
    fn the_checker_rejects_what_telegram_would() {
        for bad in [
            "<b>x",
            "<b>x</i>",
            "<div>x</div>",
            "a & b",
            "a > b",
            "<b></b>",
            "<a href=x>y</a>",
            "<code class=\"language-x\">y</code>",
            "<blockquote><blockquote>x</blockquote></blockquote>",
        ] {
            assert!(visible_text(bad).is_err(), "{bad}");
        }
        assert_eq!(
            visible_text("<pre><code class=\"language-rust\">a &amp; b</code></pre>"),
            Ok("a & b".to_string())
        );
    }

    /// Fragments a model's Markdown is made of, with the awkward ones over-represented.
    fn markdownish() -> impl Strategy<Value = String> {
        let fragment = prop::sample::select(vec![
            "word",
            "wörd",
            "😀",
            "a < b",
            "&amp;",
            "&",
            " ",
            " ",
            "\n",
            "\n",
            "\n\n",
            "**",
            "*",
            "_",
            "~~",
            "`",
            "```",
            "```rust\n",
            "    ",
            "# ",
            "## ",
            "- ",
            "* ",
            "1. ",
            "  - ",
            "> ",
            "> > ",
            "---\n",
            "[",
            "]",
            "(",
            ")",
            "](https://x.org/a?b&c)",
            "](javascript:x)",
            "![",
            "<b>",
            "</i>",
            "<div>\n",
            "|",
            "| a | b |\n|---|---|\n",
            "\\",
            "\t",
            "\u{a0}",
            "\r\n",
            "https://x.org",
            "<https://y.org>",
            "[ref]: /u\n",
        ]);
        prop::collection::vec(fragment, 0..80).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_text_renders_to_valid_pieces(text in any::<String>(), limit in 0usize..300) {
            prop_assert_eq!(check(&text, limit), Ok(()));
        }

        #[test]
        fn any_markdownish_text_renders_to_valid_pieces(text in markdownish(), limit in 0usize..300) {
            prop_assert_eq!(check(&text, limit), Ok(()));
        }
    }

    proptest! {
        // Long inputs: fewer cases keep the suite quick.
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn markdownish_text_at_telegrams_limit(text in prop::collection::vec(markdownish(), 0..30)) {
            let text = text.concat().repeat(8);
            prop_assert_eq!(check(&text, LIMIT), Ok(()));
        }
    }
}
