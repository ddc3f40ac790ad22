//! Every text of an approval the user reads: the question with its buttons, what it says
//! once decided, the answers to a button press (shown briefly by the client), and why a
//! call was not asked about (for the chat and for the model). Kept with the approvals
//! rather than in `replies`, as they are built from the approvals' own types.

use std::time::Duration;

use super::{MAX_WAITING, Unaskable};
use crate::html::{Piece, escape};
use crate::telegram::split::MESSAGE_LIMIT;

/// Arguments of more lines or characters than this go in a quote the reader expands:
/// folded, the question and its buttons fit on one screen.
const FOLD_LINES: usize = 12;
const FOLD_CHARS: usize = 600;
/// A tool name longer than this is cut in a refusal's note (the question shows it
/// whole, within the message's limit).
const TOOL_IN_NOTE: usize = 100;

pub const ALLOW_BUTTON: &str = "✅ Allow";
pub const DENY_BUTTON: &str = "❌ Deny";
pub const PRESSED_ALLOW: &str = "Allowed.";
pub const PRESSED_DENY: &str = "Denied.";
pub const NOT_YOURS: &str = "Only the bot's allowed users can answer this.";
pub const EXPIRED: &str = "This request has expired.";

/// Asks whether `tool` may run with `arguments`, all of them as given (the caller made
/// them safe to show and checks the whole fits in one message). The HTML shows the
/// same characters as the plain text.
pub fn question(tool: &str, arguments: &str, timeout: Duration) -> Piece {
    let secs = timeout.as_secs_f64().ceil();
    let folded = arguments.lines().count() > FOLD_LINES || arguments.chars().count() > FOLD_CHARS;
    // A quote cannot hold a code block (Telegram nests neither), so a long one is
    // plain text in an expandable quote.
    let (open, close) = if folded {
        ("<blockquote expandable>", "</blockquote>")
    } else {
        ("<pre>", "</pre>")
    };
    Piece {
        html: format!(
            "🔐 The agent wants to run <b>{}</b> with:\n{open}{}{close}\nAllow it? No \
             answer within {secs} s counts as Deny.",
            escape(tool),
            escape(arguments)
        ),
        plain: format!(
            "🔐 The agent wants to run {tool} with:\n{arguments}\nAllow it? No answer \
             within {secs} s counts as Deny."
        ),
    }
}

/// The chat is told that a call of `tool` was refused without asking, and `why`.
pub fn refused(tool: &str, why: &str) -> Piece {
    let tool = match tool.char_indices().nth(TOOL_IN_NOTE) {
        Some((cut, _)) => format!("{}…", &tool[..cut]),
        None => tool.to_string(),
    };
    let plain = format!("🔐 The agent wanted to run {tool}; not asked and not run: {why}.");
    Piece {
        html: escape(&plain),
        plain,
    }
}

/// Why the chat was not asked, for the model (the worker wraps it as "the user could
/// not be asked to approve this call (…)").
pub fn unaskable_for_model(why: &Unaskable) -> String {
    match why {
        Unaskable::NotJson(e) => format!("its arguments are not valid JSON: {e}"),
        Unaskable::RepeatedKey(e) => format!(
            "its arguments name a key twice ({e}); the user is only asked about \
             arguments that say one thing. Call it again with each key once"
        ),
        Unaskable::TooLong { chars } => format!(
            "its arguments are too long to show the user whole ({chars} characters \
             with the question; one message holds {MESSAGE_LIMIT}), and the user only \
             approves what they can read. Do it in smaller calls, or tell the user \
             what you wanted to do"
        ),
        Unaskable::TooManyWaiting => format!(
            "{MAX_WAITING} calls of this answer already wait for the user's approval, \
             the most that may wait at once. Wait for their results before calling \
             another tool that needs approval"
        ),
    }
}

/// Why the chat was not asked, briefly, for the chat.
pub fn unaskable_for_chat(why: &Unaskable) -> String {
    match why {
        Unaskable::NotJson(_) => "its arguments are not valid JSON".into(),
        Unaskable::RepeatedKey(_) => {
            "its arguments name the same key twice, so what would run is unclear".into()
        }
        Unaskable::TooLong { chars } => {
            format!("its arguments are too long to show here ({chars} characters)")
        }
        Unaskable::TooManyWaiting => {
            format!("{MAX_WAITING} other questions are already waiting")
        }
    }
}

pub fn allowed(tool: &str, by: &str) -> Piece {
    decided("✅", tool, &format!("allowed by {by}"))
}

pub fn denied(tool: &str, by: &str) -> Piece {
    decided("🚫", tool, &format!("denied by {by}; not run"))
}

pub fn timed_out(tool: &str, timeout: Duration) -> Piece {
    decided(
        "⌛",
        tool,
        &format!(
            "no answer within {} s, so denied; not run",
            timeout.as_secs_f64().ceil()
        ),
    )
}

/// The job ended (`/stop`, its deadline, the gateway stopping) before an answer.
pub fn not_run(tool: &str) -> Piece {
    decided("⏹", tool, "not run: the request ended before an answer")
}

fn decided(mark: &str, tool: &str, what: &str) -> Piece {
    Piece {
        html: format!("{mark} <b>{}</b>: {}", escape(tool), escape(what)),
        plain: format!("{mark} {tool}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_escapes_and_shows_all_of_the_arguments() {
        let arguments = format!("{{\"command\": \"<b>rm</b> & {}\"}}", "x".repeat(500));
        let q = question("shell.run", &arguments, Duration::from_secs(120));
        assert!(q.html.contains("&lt;b&gt;rm&lt;/b&gt; &amp;"), "{}", q.html);
        assert!(!q.html.contains("<b>rm"), "{}", q.html);
        assert!(q.plain.contains(&arguments), "{}", q.plain);
        assert!(q.html.contains("<pre>"), "short: a code block");
        assert!(q.plain.contains("120 s"));
        let long = "x".repeat(FOLD_CHARS + 1);
        let q = question("t", &long, Duration::from_secs(1));
        assert!(q.html.contains("<blockquote expandable>"), "{}", q.html);
        assert!(q.plain.contains(&long));
        let who = allowed("shell.run", "<Ann>");
        assert!(who.html.contains("&lt;Ann&gt;"), "{}", who.html);
        let note = refused(&"t".repeat(500), "why");
        assert!(note.plain.chars().count() < 200, "{}", note.plain);
    }
}
