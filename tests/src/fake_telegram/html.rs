//! Telegram's `parse_mode=HTML`, parsed the way the Bot API parses it, so the fake refuses
//! exactly the markup Telegram refuses and measures the text Telegram would show.
//!
//! This follows tdlib's `parse_html` (`td/telegram/MessageEntity.cpp`), which the Bot API
//! server runs: the same tags (case-insensitive start tags, case-sensitive end tags, `</>`
//! closing whatever is open), the same attribute rules, the same error texts and byte
//! offsets. It departs in one place, on purpose: tdlib keeps a `&` that starts no known
//! entity (`Q&A`, `&nbsp;`) as typed, although the Bot API documentation says every `&`
//! must be escaped. Sending one is always a forgotten escape, and Telegram then shows the
//! user something else whenever the text happens to read as an entity (`&lt;` arrives as
//! `<`), so the fake refuses it instead, with a description that says it is the fake's
//! rule. Nesting rules Telegram enforces by silently dropping entities (a `<b>` inside
//! `<code>`) are not errors there and are not here.

/// The tags the Bot API accepts (documentation, "HTML style"; tdlib's list).
const TAGS: [&str; 17] = [
    "a",
    "b",
    "strong",
    "i",
    "em",
    "s",
    "strike",
    "del",
    "u",
    "ins",
    "tg-spoiler",
    "tg-emoji",
    "tg-time",
    "span",
    "pre",
    "code",
    "blockquote",
];

/// tdlib's `is_space`: the NUL that ends a C string counts, which is how its loops stop at
/// the end of the text.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\0' | 0x0b)
}

/// Parses `text` as Telegram does under `parse_mode=HTML`: the text the user would see, or
/// why Telegram refuses it (what follows `Bad Request: can't parse entities: `).
pub fn parse(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    // Past the end reads as NUL, as in tdlib's NUL-terminated `CSlice`.
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut out = String::with_capacity(text.len());
    let mut open: Vec<Open> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'&' {
            match entity(bytes, i) {
                Entity::Char(ch, next) => {
                    out.push(ch);
                    i = next;
                    continue;
                }
                Entity::Surrogate => {
                    return Err(
                        "Text contains invalid Unicode characters after decoding HTML \
                                entities, check for unmatched surrogate code units"
                            .into(),
                    );
                }
                Entity::Unknown(end) => {
                    return Err(format!(
                        "unsupported HTML entity \"{}\" at byte offset {i} (the fake's rule: \
                         Telegram would show it as typed; escape & as &amp;)",
                        String::from_utf8_lossy(&bytes[i..end])
                    ));
                }
            }
        }
        if c != b'<' {
            // Copy the whole character: `i` only ever stops at ASCII bytes.
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
            continue;
        }

        let begin = i;
        i += 1;
        if at(i) != b'/' {
            while !is_space(at(i)) && at(i) != b'>' {
                i += 1;
            }
            if i >= bytes.len() {
                return Err(format!("Unclosed start tag at byte offset {begin}"));
            }
            let tag = text[begin + 1..i].to_ascii_lowercase();
            if !TAGS.contains(&tag.as_str()) {
                return Err(format!(
                    "Unsupported start tag \"{tag}\" at byte offset {begin}"
                ));
            }
            let mut argument = String::new();
            while at(i) != b'>' {
                while i < bytes.len() && is_space(at(i)) {
                    i += 1;
                }
                if at(i) == b'>' {
                    break;
                }
                let name_begin = i;
                while !is_space(at(i)) && !matches!(at(i), b'=' | b'>' | b'/' | b'"' | b'\'') {
                    i += 1;
                }
                let name = &text[name_begin..i];
                if name.is_empty() {
                    return Err(format!(
                        "Empty attribute name in the tag \"{tag}\" at byte offset {begin}"
                    ));
                }
                while i < bytes.len() && is_space(at(i)) {
                    i += 1;
                }
                if at(i) != b'=' {
                    if i >= bytes.len() {
                        return Err(format!(
                            "Unclosed start tag \"{tag}\" at byte offset {begin}"
                        ));
                    }
                    // A bare attribute: only `<blockquote expandable>` means anything.
                    if tag == "blockquote" && name == "expandable" {
                        argument = "1".into();
                    }
                    continue;
                }
                i += 1;
                while i < bytes.len() && is_space(at(i)) {
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(format!(
                        "Unclosed start tag \"{tag}\" at byte offset {begin}"
                    ));
                }
                let value = if at(i) != b'"' && at(i) != b'\'' {
                    // A name token: letters, digits, periods and hyphens, case-insensitive.
                    let token_begin = i;
                    while at(i).is_ascii_alphanumeric() || at(i) == b'.' || at(i) == b'-' {
                        i += 1;
                    }
                    if !is_space(at(i)) && at(i) != b'>' {
                        return Err(format!(
                            "Unexpected end of name token at byte offset {token_begin}"
                        ));
                    }
                    text[token_begin..i].to_ascii_lowercase()
                } else {
                    let quote = at(i);
                    i += 1;
                    let mut value = String::new();
                    while i < bytes.len() && at(i) != quote {
                        if at(i) == b'&'
                            && let Entity::Char(ch, next) = entity(bytes, i)
                        {
                            value.push(ch);
                            i = next;
                            continue;
                        }
                        let len = text[i..].chars().next().map_or(1, char::len_utf8);
                        value.push_str(&text[i..i + len]);
                        i += len;
                    }
                    if at(i) == quote {
                        i += 1;
                    }
                    value
                };
                if i >= bytes.len() {
                    return Err(format!("Unclosed start tag at byte offset {begin}"));
                }
                match (tag.as_str(), name) {
                    ("a", "href") | ("tg-emoji", "emoji-id") | ("tg-time", "unix") => {
                        argument = value
                    }
                    ("code", "class") => {
                        if let Some(language) = value.strip_prefix("language-") {
                            argument = language.to_string();
                        }
                    }
                    ("span", "class") => {
                        if let Some(class) = value.strip_prefix("tg-") {
                            argument = class.to_string();
                        }
                    }
                    ("blockquote", "expandable") => argument = "1".into(),
                    _ => {}
                }
            }
            if tag == "span" && argument != "spoiler" {
                return Err(format!(
                    "Tag \"span\" must have class \"tg-spoiler\" at byte offset {begin}"
                ));
            }
            open.push(Open {
                tag,
                argument,
                start: out.len(),
            });
            // Past the `>`.
            i += 1;
        } else {
            let Some(top) = open.pop() else {
                return Err(format!("Unexpected end tag at byte offset {begin}"));
            };
            while !is_space(at(i)) && at(i) != b'>' {
                i += 1;
            }
            let end_name = &text[begin + 2..i];
            while i < bytes.len() && is_space(at(i)) {
                i += 1;
            }
            if at(i) != b'>' {
                return Err(format!("Unclosed end tag at byte offset {begin}"));
            }
            // Compared as written: tdlib lowercases only the start tag.
            if !end_name.is_empty() && end_name != top.tag {
                return Err(format!(
                    "Unmatched end tag at byte offset {begin}, expected \"</{}>\", found \"</{end_name}>\"",
                    top.tag
                ));
            }
            if top.tag == "tg-emoji"
                && out.len() > top.start
                && top.argument.parse::<i64>().is_err()
            {
                return Err("Invalid custom emoji identifier specified".into());
            }
            i += 1;
        }
    }
    if let Some(top) = open.last() {
        return Err(format!(
            "Can't find end tag corresponding to start tag \"{}\"",
            top.tag
        ));
    }
    Ok(out)
}

struct Open {
    tag: String,
    argument: String,
    /// Where its content starts in the visible text.
    start: usize,
}

enum Entity {
    /// The character, and the byte after the entity (and its `;`, if any).
    Char(char, usize),
    /// A numeric entity for half of a UTF-16 surrogate pair: Telegram refuses the text.
    Surrogate,
    /// Not an entity Telegram knows; the byte where its name ends.
    Unknown(usize),
}

/// tdlib's `decode_html_entity`: `&lt;`, `&gt;`, `&amp;`, `&quot;`, and decimal or hex
/// numeric ones, the `;` optional.
fn entity(bytes: &[u8], pos: usize) -> Entity {
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut end = pos + 1;
    let code: u32;
    if at(pos + 1) == b'#' {
        end += 1;
        let radix = if at(pos + 2) == b'x' {
            end += 1;
            16
        } else {
            10
        };
        let mut value: u64 = 0;
        while let Some(digit) = char::from(at(end)).to_digit(radix) {
            // Saturates well above the largest code point, however many digits follow.
            value = (value * u64::from(radix) + u64::from(digit)).min(1 << 32);
            end += 1;
        }
        if value == 0 || value >= 0x10ffff || end - pos >= 10 {
            return Entity::Unknown(end + usize::from(at(end) == b';'));
        }
        code = value as u32;
    } else {
        while at(end).is_ascii_alphabetic() {
            end += 1;
        }
        code = match &bytes[pos + 1..end] {
            b"lt" => '<' as u32,
            b"gt" => '>' as u32,
            b"amp" => '&' as u32,
            b"quot" => '"' as u32,
            _ => return Entity::Unknown(end + usize::from(at(end) == b';')),
        };
    }
    let next = if at(end) == b';' { end + 1 } else { end };
    match char::from_u32(code) {
        Some(ch) => Entity::Char(ch, next),
        None => Entity::Surrogate,
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn what_telegram_accepts_and_shows() {
        for (html, shown) in [
            ("plain > text", "plain > text"),
            (
                "<b>bold</b> <strong>s</strong> <i>i</i><em>e</em>",
                "bold s ie",
            ),
            (
                "<u>u</u><ins>i</ins><s>s</s><strike>k</strike><del>d</del>",
                "uiskd",
            ),
            (
                "<span class=\"tg-spoiler\">a</span><tg-spoiler>b</tg-spoiler>",
                "ab",
            ),
            ("<span class=tg-spoiler>a</span>", "a"),
            ("<a href=\"https://x.org/?a=1&amp;b=2\">link</a>", "link"),
            (
                "<tg-emoji emoji-id=\"5368324170671202286\">👍</tg-emoji>",
                "👍",
            ),
            (
                "<tg-time unix=\"1647531900\" format=\"t\">22:45</tg-time>",
                "22:45",
            ),
            ("<code>x &lt; y</code>", "x < y"),
            ("<pre><code class=\"language-rust\">fn</code></pre>", "fn"),
            (
                "<blockquote>q</blockquote><blockquote expandable>e</blockquote>",
                "qe",
            ),
            ("<B>shouting</b>", "shouting"),
            ("<b>closed by </>", "closed by "),
            ("&lt;&gt;&amp;&quot;&#65;&#x42;&lt", "<>&\"AB<"),
            ("<b>n<i>e<s>s</s>t</i></b>", "nest"),
            ("<b >spaces</b >", "spaces"),
        ] {
            assert_eq!(parse(html).as_deref(), Ok(shown), "{html}");
        }
    }

    #[test]
    fn what_telegram_refuses_with_its_words() {
        for (html, error) in [
            (
                "<foo>x</foo>",
                "Unsupported start tag \"foo\" at byte offset 0",
            ),
            ("a <br> b", "Unsupported start tag \"br\" at byte offset 2"),
            ("1 < 2", "Unsupported start tag \"\" at byte offset 2"),
            ("x <b", "Unclosed start tag at byte offset 2"),
            (
                "<b>x",
                "Can't find end tag corresponding to start tag \"b\"",
            ),
            ("x</b>", "Unexpected end tag at byte offset 1"),
            ("<b>x</b", "Unclosed end tag at byte offset 4"),
            (
                "<b><i>x</b></i>",
                "Unmatched end tag at byte offset 7, expected \"</i>\", found \"</b>\"",
            ),
            (
                "<B>x</B>",
                "Unmatched end tag at byte offset 4, expected \"</b>\", found \"</B>\"",
            ),
            (
                "<span>x</span>",
                "Tag \"span\" must have class \"tg-spoiler\" at byte offset 0",
            ),
            (
                "<a =\"x\">y</a>",
                "Empty attribute name in the tag \"a\" at byte offset 0",
            ),
            (
                "<a href=x/>y</a>",
                "Unexpected end of name token at byte offset 8",
            ),
            ("<a href=\"x\"", "Unclosed start tag at byte offset 0"),
            (
                "<tg-emoji emoji-id=\"abc\">👍</tg-emoji>",
                "Invalid custom emoji identifier specified",
            ),
            (
                "&#xD800;",
                "Text contains invalid Unicode characters after decoding HTML entities, check for unmatched surrogate code units",
            ),
        ] {
            assert_eq!(parse(html), Err(error.to_string()), "{html}");
        }
    }

    #[test]
    fn a_forgotten_escape_is_refused_by_the_fake() {
        for (html, entity) in [
            ("Q & A", "&"),
            ("Q&A", "&A"),
            ("a &nbsp; b", "&nbsp;"),
            ("&apos;", "&apos;"),
            ("&#0;", "&#0;"),
        ] {
            let error = parse(html).unwrap_err();
            assert!(
                error.starts_with(&format!("unsupported HTML entity \"{entity}\"")),
                "{html}: {error}"
            );
        }
    }
}
