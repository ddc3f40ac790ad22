//! What the user is asked to allow: the whole arguments of a tool call, shown exactly as
//! the worker will parse and pass them on (pretty-printed, with every character that
//! could hide text escaped), or why they cannot be asked about at all (not JSON, a key
//! named twice, too long for one message).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{MAX_ARGUMENTS_BYTES, texts};
use crate::html::Piece;
use crate::telegram::split::{MESSAGE_LIMIT, utf16_len};

/// Why a tool call is denied without asking the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unaskable {
    /// The arguments are not one JSON value (the parser's words).
    NotJson(String),
    /// An object in them names a key twice (the parser's words, naming the key).
    RepeatedKey(String),
    /// The question would not fit in one message: `chars` is what it would show.
    TooLong { chars: usize },
    /// The job has [`super::MAX_WAITING`] questions waiting already.
    TooManyWaiting,
}

impl Unaskable {
    /// What the model reads, inside the worker's "the user could not be asked" result.
    pub fn for_model(&self) -> String {
        texts::unaskable_for_model(self)
    }

    pub(super) fn for_chat(&self) -> String {
        texts::unaskable_for_chat(self)
    }
}

/// The question for a call of `tool` with `arguments`, showing all of them; or why it
/// cannot be asked.
pub fn question(tool: &str, arguments: &str, timeout: Duration) -> Result<Piece, Unaskable> {
    if arguments.len() > MAX_ARGUMENTS_BYTES {
        return Err(Unaskable::TooLong {
            chars: arguments.chars().count(),
        });
    }
    let shown = shown_arguments(arguments)?;
    let question = texts::question(tool, &shown, timeout);
    // What the user sees is the plain text (the HTML shows the same characters): all of
    // it must fit, or the user would allow what they could not see.
    let chars = utf16_len(&question.plain);
    if chars > MESSAGE_LIMIT {
        return Err(Unaskable::TooLong { chars });
    }
    Ok(question)
}

/// The arguments as the question shows them: the value the worker will parse and pass on,
/// pretty-printed, with what could hide text escaped.
fn shown_arguments(arguments: &str) -> Result<String, Unaskable> {
    let text = arguments.trim();
    // The worker calls a tool with no arguments as with an empty object.
    if text.is_empty() {
        return Ok("{}".into());
    }
    if let Err(e) = serde_json::from_str::<UniqueKeys>(text) {
        return Err(if e.is_data() {
            Unaskable::RepeatedKey(e.to_string())
        } else {
            Unaskable::NotJson(e.to_string())
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Unaskable::NotJson(e.to_string()))?;
    let pretty =
        serde_json::to_string_pretty(&value).map_err(|e| Unaskable::NotJson(e.to_string()))?;
    Ok(reveal(&pretty))
}

/// Walks a JSON text and fails on the first object that names a key twice: `serde_json`
/// silently keeps the last, so a question could show one value and the tool get another.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        // Keys come unescaped, so `"a"` and `"\u0061"` are the same key, as for the parser.
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key {key:?} appears twice"
                )));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(UniqueKeys)
    }
}

/// `pretty` (JSON from `serde_json`) with every character that shows as nothing, moves
/// text around or passes for a space written as a `\u` escape: the same JSON value, but
/// nothing in a string can hide or reorder what the user reads. Outside strings the text
/// holds only ASCII, so every such character is inside one, where an escape is valid.
fn reveal(pretty: &str) -> String {
    let mut shown = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if hides_text(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                shown.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Control and format characters, invisible fillers, and whitespace other than the
/// space and the newlines of the layout.
fn hides_text(c: char) -> bool {
    if c == ' ' || c == '\n' {
        return false;
    }
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c as u32,
            0x00AD
                | 0x034F
                | 0x061C
                | 0x115F..=0x1160
                | 0x17B4..=0x17B5
                | 0x180B..=0x180F
                | 0x200B..=0x200F
                | 0x202A..=0x202E
                | 0x2060..=0x206F
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFEFF
                | 0xFFA0
                | 0xFFF0..=0xFFFB
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE0FFF
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_at_any_depth_is_refused() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"x": [{"b": 1}, {"c": {"d": 1, "d": 1}}]}"#,
            r#"{"a": 1, "\u0061": 2}"#,
        ] {
            assert!(
                matches!(shown_arguments(text), Err(Unaskable::RepeatedKey(_))),
                "{text}"
            );
        }
        assert!(shown_arguments(r#"{"a": {"a": 1}, "b": [{"a": 2}]}"#).is_ok());
        assert!(matches!(
            shown_arguments(r#"{"a": "#),
            Err(Unaskable::NotJson(_))
        ));
        assert_eq!(shown_arguments("  ").as_deref(), Ok("{}"));
    }

    #[test]
    fn characters_that_hide_text_are_shown_as_escapes() {
        let shown = shown_arguments("{\"c\": \"rm\u{202e}fr- \u{200b}x\u{a0}y\u{e0041}\"}")
            .unwrap_or_default();
        assert_eq!(
            shown,
            "{\n  \"c\": \"rm\\u202efr- \\u200bx\\u00a0y\\udb40\\udc41\"\n}"
        );
        // The same value as before, so what is shown is what runs.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shown).ok(),
            serde_json::from_str("{\"c\": \"rm\u{202e}fr- \u{200b}x\u{a0}y\u{e0041}\"}").ok()
        );
    }

    #[test]
    fn the_question_shows_everything_or_is_not_asked() {
        let timeout = Duration::from_secs(30);
        let fits = format!(r#"{{"a": "{}"}}"#, "x".repeat(3500));
        let q = question("t.t", &fits, timeout).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(q.plain.contains(&"x".repeat(3500)));
        assert!(utf16_len(&q.plain) <= MESSAGE_LIMIT);
        let over = format!(r#"{{"a": "{}"}}"#, "x".repeat(4100));
        assert!(matches!(
            question("t.t", &over, timeout),
            Err(Unaskable::TooLong { .. })
        ));
        let huge = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_ARGUMENTS_BYTES));
        assert!(matches!(
            question("t.t", &huge, timeout),
            Err(Unaskable::TooLong { .. })
        ));
    }
}
