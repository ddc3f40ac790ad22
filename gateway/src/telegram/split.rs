//! Splitting a long reply into messages Telegram accepts.
//!
//! Telegram counts a message's length in UTF-16 code units and refuses anything over
//! 4096 ("message is too long"), so a long answer is cut before sending: at a paragraph
//! break if one falls in the second half of the allowance, else at a line break, else at a
//! space, else wherever the limit falls (never inside a character).

/// Telegram's limit for one text message, in UTF-16 code units.
pub const MESSAGE_LIMIT: usize = 4096;

/// Splits `text` into pieces of at most `limit` UTF-16 code units each.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut pieces = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > limit {
        let hard = byte_index_at_utf16(rest, limit);
        let window = &rest[..hard];
        let floor = window.len() / 2;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&i| i >= floor && i > 0))
            .unwrap_or(hard);
        let (head, tail) = rest.split_at(cut);
        pieces.push(head.trim_end().to_string());
        rest = tail.trim_start_matches(['\n', ' ']);
    }
    if !rest.trim().is_empty() || pieces.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces.retain(|p| !p.is_empty());
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    pieces
}

pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The largest char boundary whose prefix is at most `units` UTF-16 code units long; a
/// surrogate pair is one char, so it is never split.
pub fn byte_index_at_utf16(s: &str, units: usize) -> usize {
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
