//! When an answer goes as one rich message (`telegram.rich_messages`, off by default):
//! when it holds a table, which Telegram's HTML cannot show, or is longer than one
//! message, which HTML cuts into several. Rich messages hold up to 32,768 characters
//! ([`RICH_LIMIT`]); a longer answer stays HTML. The request itself is
//! [`super::bot_api::rich`]; the outbox sends it, with the HTML messages as the fallback
//! when Telegram refuses it ([`crate::outbox`]).

use pulldown_cmark::{Event, Options, Parser, Tag};

pub use super::bot_api::rich::RICH_LIMIT;

/// Markdown longer than this is looked at on the blocking pool (invariant 9), as
/// rendering is.
const INLINE_BYTES: usize = 4 * 1024;

/// Whether `markdown`, which renders to `pieces` HTML messages, is better sent as one rich
/// message.
pub async fn wanted(markdown: &str, pieces: usize) -> bool {
    if markdown.trim().is_empty() || markdown.chars().count() > RICH_LIMIT {
        return false;
    }
    if pieces > 1 {
        return true;
    }
    // Every table row starts or holds a pipe: most answers are ruled out here.
    if !markdown.contains('|') {
        return false;
    }
    if markdown.len() <= INLINE_BYTES {
        return has_table(markdown);
    }
    let owned = markdown.to_string();
    tokio::task::spawn_blocking(move || has_table(&owned))
        .await
        .unwrap_or(false)
}

/// Whether `markdown` holds a table (GitHub's syntax, as Telegram's rich Markdown reads
/// it).
fn has_table(markdown: &str) -> bool {
    Parser::new_ext(markdown, Options::ENABLE_TABLES)
        .any(|event| matches!(event, Event::Start(Tag::Table(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tables_and_long_answers_go_rich_and_the_rest_stays_html() {
        let table = "Prices:\n\n| fruit | price |\n| --- | --- |\n| apple | 1 |\n";
        assert!(wanted(table, 1).await);
        assert!(!wanted("a | b is not a table", 1).await);
        assert!(!wanted("just words", 1).await);
        assert!(wanted("long", 2).await, "more than one message");
        let huge = "x".repeat(RICH_LIMIT + 1);
        assert!(!wanted(&huge, 9).await, "past the rich limit");
        let long_table = format!("{}\n\n{table}", "word ".repeat(2000));
        assert!(wanted(&long_table, 1).await, "looked at off the thread");
    }
}
