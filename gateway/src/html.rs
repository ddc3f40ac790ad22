//! A message as Telegram's HTML parse mode shows it, and the escaping that keeps text
//! text. Below both the renderer (`telegram::format`) and the words the gateway writes
//! itself (`replies`), which each build pieces, so neither depends on the other for it.

/// One message's worth of a reply: Telegram HTML, and the same text without markup for
/// when Telegram refuses the HTML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    pub html: String,
    pub plain: String,
}

/// Escapes text for Telegram's HTML, outside tags: the gateway's own words sent with the
/// HTML parse mode.
pub fn escape(text: &str) -> String {
    escape_as(text, false)
}

/// Escapes text for Telegram's HTML: `&`, `<`, `>`, and `"` inside an attribute.
pub(crate) fn escape_as(text: &str, attribute: bool) -> String {
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
