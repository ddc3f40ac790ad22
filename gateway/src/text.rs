//! Text bounded in bytes: cut where a character ends, never inside one. Below everything
//! that bounds what it keeps or writes (answers, event texts, file names on disk).

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cut_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
