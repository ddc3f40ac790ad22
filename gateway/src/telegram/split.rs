//! Splitting a long reply into messages Telegram accepts.
//!
//! Telegram counts a message's length in UTF-16 code units and refuses anything over
//! 4096 ("message is too long"), so a long answer is cut before sending: at a paragraph
//! break if one falls in the second half of the allowance, else at a line break, else at a
//! space, else wherever the limit falls (never inside a character).
//!
//! The cut is one pass over the text: each piece looks at most one allowance ahead, never
//! at the whole rest, so an answer of any length costs time in proportion to its length
//! (invariant 9: rendering never stalls the parent).

use std::ops::Range;

/// Telegram's limit for one text message, in UTF-16 code units.
pub const MESSAGE_LIMIT: usize = 4096;

/// Splits `text` into pieces of at most `limit` UTF-16 code units each (a `limit` under 2
/// is taken as 2: a character outside the BMP needs two). Always at least one piece.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let text = text.trim_end();
    let mut pieces: Vec<String> = cut(text, limit.max(2))
        .into_iter()
        .map(|range| text[range].to_string())
        .collect();
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    pieces
}

/// Byte ranges of `text` (already free of trailing whitespace) for the pieces, each at
/// most `limit` UTF-16 units: [`Cutter`] run to the end.
pub fn cut(text: &str, limit: usize) -> Vec<Range<usize>> {
    let mut cutter = Cutter::new(text);
    std::iter::from_fn(|| cutter.next_piece(limit)).collect()
}

/// Cuts a text (already free of trailing whitespace) front to back, one piece at a time,
/// each at a paragraph break, a line break, a space, else anywhere between characters. The
/// whitespace at a cut belongs to neither side, except the indentation of the line the
/// next piece starts with, which code needs. Blank pieces are left out. Also what
/// [`super::format`] cuts the visible text of an answer with, where the last piece it
/// allows may need a smaller limit than the others (room for a note).
pub struct Cutter<'a> {
    text: &'a str,
    start: usize,
}

impl<'a> Cutter<'a> {
    pub fn new(text: &'a str) -> Self {
        Cutter { text, start: 0 }
    }

    /// Whether what is left fits in one piece of `limit` units.
    pub fn rest_fits(&self, limit: usize) -> bool {
        let rest = &self.text[self.start..];
        byte_index_at_utf16(rest, limit) == rest.len()
    }

    /// The next non-blank piece of at most `limit` units (under 2 taken as 2), or None at
    /// the end.
    pub fn next_piece(&mut self, limit: usize) -> Option<Range<usize>> {
        let limit = limit.max(2);
        while self.start < self.text.len() {
            let start = self.start;
            let rest = &self.text[start..];
            let fits = byte_index_at_utf16(rest, limit);
            if fits == rest.len() {
                self.start = self.text.len();
                return (!rest.trim().is_empty()).then_some(start..self.text.len());
            }
            let window = &rest[..fits];
            // Below half the allowance a separator would make a stub of a message; a hard
            // cut is better then.
            let floor = window.len() / 2;
            let at = ["\n\n", "\n", " "]
                .iter()
                .find_map(|sep| window.rfind(sep).filter(|&i| i >= floor && i > 0))
                .unwrap_or(window.len());
            let head = window[..at].trim_end();
            let tail = &rest[at..];
            let gap = tail.len() - tail.trim_start().len();
            let skip = match tail[..gap].rfind('\n') {
                Some(newline) => newline + 1,
                None => gap,
            };
            // `at` is past the first character (a limit of 2 holds any character), so
            // every round moves on.
            self.start = start + at + skip;
            if !head.trim_start().is_empty() {
                return Some(start..start + head.len());
            }
        }
        None
    }
}

pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The largest char boundary whose prefix is at most `units` UTF-16 code units long; a
/// surrogate pair is one char, so it is never split. Looks at no more than `units`
/// characters.
fn byte_index_at_utf16(s: &str, units: usize) -> usize {
    let mut count = 0;
    for (i, c) in s.char_indices() {
        count += c.len_utf16();
        if count > units {
            return i;
        }
    }
    s.len()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_message("hello", MESSAGE_LIMIT), vec!["hello"]);
    }

    #[test]
    fn pieces_respect_the_limit_in_utf16_units() {
        // Each emoji is two UTF-16 units: 3000 of them are 6000 units.
        let text = "😀".repeat(3000);
        let pieces = split_message(&text, MESSAGE_LIMIT);
        assert!(pieces.len() >= 2);
        for p in &pieces {
            assert!(utf16_len(p) <= MESSAGE_LIMIT);
        }
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn prefers_paragraph_then_line_breaks() {
        let para = "a".repeat(3000);
        let text = format!("{para}\n\n{para}\nline\n{para}");
        let pieces = split_message(&text, MESSAGE_LIMIT);
        assert_eq!(pieces[0], para);
        for p in &pieces {
            assert!(utf16_len(p) <= MESSAGE_LIMIT);
        }
    }

    #[test]
    fn nothing_is_lost_but_separator_whitespace() {
        let words: Vec<String> = (0..3000).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let pieces = split_message(&text, 1000);
        assert_eq!(pieces.join(" "), text);
    }
}
