//! Markdown to [`Layout`]: pulldown-cmark's events become the visible text and the styles
//! over each run of it, with the blocks laid out as Telegram shows plain text (blank lines
//! between paragraphs, bullets and numbers for lists, cells joined with `|`), and nothing
//! Telegram would refuse (a link in a link, a quote in a quote, a scheme it forbids).
//!
//! Every step is bounded by the size of its input (invariant 9): a list nested a thousand
//! deep is indented no further than [`MAX_INDENT_LEVELS`] levels, so no line's indentation
//! grows with the nesting, and no step looks back over what was already laid out.

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use super::safety::{link_allowed, sanitize_language};
use super::{Kind, Layout, Run, Style, common_prefix};

/// Items nested deeper than this many levels stand beside the first item past them:
/// deeper indentation tells a reader
/// nothing more, and indenting each level by all the outer ones made a few KB of nested
/// `- ` markers into megabytes of spaces (thousands of messages).
pub(super) const MAX_INDENT_LEVELS: usize = 4;

/// Lays out `markdown` (line ends already `\n`).
pub(super) fn lay_out(markdown: &str) -> Layout {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TABLES);
    let mut writer = Writer::default();
    for event in Parser::new_ext(markdown, options) {
        writer.event(event);
    }
    writer.finish()
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
    /// One per open list item, the outermost [`MAX_INDENT_LEVELS`] only: the width that
    /// lines its text up under its marker.
    indents: Vec<usize>,
    /// Open list items past [`MAX_INDENT_LEVELS`]: they are not indented any further.
    deeper_items: usize,
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
                if self.indents.len() < MAX_INDENT_LEVELS {
                    self.indents.push(marker.chars().count());
                } else {
                    self.deeper_items += 1;
                }
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
                // Not `tg:`: a model talked into it by a web page could offer a proxy
                // setup or a join link one tap away.
                if link_allowed(&dest_url, &["http:", "https:", "mailto:"]) {
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
                if self.deeper_items > 0 {
                    self.deeper_items -= 1;
                } else {
                    self.indents.pop();
                }
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
                // Past the kept depth every item stands where the first one past it does.
                let outer = if self.deeper_items > 0 {
                    self.indents.len()
                } else {
                    self.indents.len().saturating_sub(1)
                };
                let width: usize = self.indents[..outer].iter().sum();
                format!("{}{marker}", " ".repeat(width))
            }
            None if at_line_start && !code => " ".repeat(self.indents.iter().sum()),
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

    /// Cuts the text back to `end`: only the runs at the end are touched, so trimming
    /// after every line costs nothing however long the answer is.
    fn truncate(&mut self, end: usize) {
        self.out.text.truncate(end);
        while self
            .out
            .runs
            .last()
            .is_some_and(|run| run.range.start >= end)
        {
            self.out.runs.pop();
        }
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
