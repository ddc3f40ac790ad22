//! What every rendering promises, and a checker that parses HTML as Telegram does.

use super::*;
use crate::telegram::split::utf16_len;
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
                            || !lang
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
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
                        // Prompt injection must not get a tappable proxy-setup, join or
                        // any other app link into a reply.
                        let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
                        if !["http", "https", "mailto"].contains(&scheme.as_str()) {
                            return Err(format!("link with scheme {scheme:?}: {url}"));
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
    if pieces.len() > MAX_PIECES {
        return Err(format!("{} pieces", pieces.len()));
    }
    let whole = layout(markdown).text;
    let note = crate::replies::answer_too_many_messages(MAX_PIECES);
    let mut cut_short = false;
    let mut at = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let visible = visible_text(&piece.html).map_err(|e| format!("{e} in {:?}", piece.html))?;
        if visible != piece.plain {
            return Err(format!("visible {visible:?} != plain {:?}", piece.plain));
        }
        if utf16_len(&piece.plain) > limit.max(2) {
            return Err(format!("over the limit: {:?}", piece.plain));
        }
        if piece.plain.trim().is_empty() && !markdown.trim().is_empty() {
            return Err("empty piece".into());
        }
        let mut shown = piece.plain.as_str();
        if i + 1 == MAX_PIECES
            && let Some(before_note) = shown.strip_suffix(note.as_str())
        {
            shown = before_note;
            cut_short = true;
        }
        // The pieces are the whole text, in order, but for whitespace between them.
        let gap = whole[at..].find(shown).ok_or("piece not in the text")?;
        if !whole[at..at + gap].trim().is_empty() {
            return Err(format!("lost {:?}", &whole[at..at + gap]));
        }
        at += gap + shown.len();
    }
    // Only the last allowed piece may leave the rest out, and it says so (a limit too
    // small for the note cuts without one).
    let note_fits = utf16_len(&note) + 2 <= limit.max(2);
    let may_lose_the_end = cut_short || (pieces.len() == MAX_PIECES && !note_fits);
    if !may_lose_the_end && !whole[at..].trim().is_empty() {
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
        "me <a href=\"mailto:a@b.c\">mail</a>"
    );
    assert_eq!(
        html("[free proxy](tg://proxy?server=evil.example&port=443&secret=ee)"),
        "free proxy"
    );
    assert_eq!(html("<tg://join?invite=abc>"), "tg://join?invite=abc");
    assert_eq!(html("[x](TG://resolve?domain=bad)"), "x");
    assert_eq!(html("[click](javascript:alert(1))"), "click");
    assert_eq!(html("[file](file:///etc/passwd)"), "file");
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

/// The worst shapes found for layout: each nesting construct a few thousand deep. Today's
/// renderer must lay each out in proportion to its length (no line indented by all the
/// levels above it) and send it in at most [`MAX_PIECES`] messages.
fn nested_answers(depth: usize) -> Vec<(&'static str, String)> {
    vec![
        ("bullets", format!("{}text", "- ".repeat(depth))),
        ("numbers", format!("{}text", "1. ".repeat(depth))),
        (
            // Its own source grows with the square of the depth: a few hundred levels.
            "indented bullets",
            (0..depth.min(300))
                .map(|i| format!("{}- item {i}\n", "  ".repeat(i)))
                .collect(),
        ),
        ("quotes", format!("{}text", "> ".repeat(depth))),
        ("quoted bullets", format!("{}text", "> - ".repeat(depth))),
        (
            "emphasis",
            format!("{}text{}", "*_".repeat(depth), "_*".repeat(depth)),
        ),
        (
            "links",
            format!("{}x{}", "[".repeat(depth), "](https://x.org)".repeat(depth)),
        ),
    ]
}

#[test]
fn deeply_nested_markdown_lays_out_in_proportion_to_its_length() {
    for (shape, markdown) in nested_answers(3000) {
        let laid_out = layout(&markdown).text.len();
        assert!(
            laid_out <= 8 * markdown.len() + 64,
            "{shape}: {} bytes of Markdown laid out as {laid_out}",
            markdown.len()
        );
        check(&markdown, LIMIT).unwrap_or_else(|e| panic!("{shape}: {e}"));
    }
}

#[test]
fn items_past_the_kept_depth_stand_beside_the_first_one_past_it() {
    let markdown = "- a\n  - b\n    - c\n      - d\n        - e\n          - f";
    assert_eq!(
        layout(markdown).text,
        "• a\n  • b\n    • c\n      • d\n        • e\n        • f"
    );
}

#[test]
fn an_answer_of_many_messages_is_cut_in_the_last_allowed_one_with_a_note() {
    let markdown = "word ".repeat(20_000);
    let pieces = render(&markdown, LIMIT);
    assert_eq!(pieces.len(), MAX_PIECES);
    let note = crate::replies::answer_too_many_messages(MAX_PIECES);
    let last = &pieces[MAX_PIECES - 1];
    assert!(last.plain.ends_with(&note), "{:?}", last.plain);
    assert!(last.html.ends_with(&escape(&note)));
    check(&markdown, LIMIT).unwrap();
    // Exactly the allowance: no note.
    let fits = "word ".repeat(4000);
    let pieces = render(&fits, 2000);
    assert_eq!(pieces.len(), MAX_PIECES);
    assert!(!pieces[MAX_PIECES - 1].plain.contains('✂'));
    check(&fits, 2000).unwrap();
}

#[test]
fn telegram_links_that_act_on_a_tap_are_shown_as_text() {
    for url in [
        "https://t.me/proxy?server=evil.example&port=443&secret=ee",
        "https://T.ME/socks?server=evil.example&port=1080",
        "https://t.me/+AbCdEf",
        "https://t.me/%2BAbCdEf",
        "https://t.me/joinchat/AbCdEf",
        "http://telegram.me/joinchat/AbCdEf",
        "https://www.telegram.dog/proxy?server=x",
        "https://user@t.me:443/+x",
    ] {
        let piece = one(&format!("[free stuff]({url})"));
        assert_eq!(piece.html, "free stuff", "{url}");
    }
    assert_eq!(
        html("[channel](https://t.me/durov)"),
        "<a href=\"https://t.me/durov\">channel</a>"
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
        "[proxy](tg://proxy?server=1.2.3.4&port=443&secret=ab)",
        "<tg://join?invite=abc>",
        "[T](TG://resolve?domain=x)",
        "[js](javascript:alert(1))",
        "[f](file:///etc/passwd)",
        "[m](mailto:a@b.c)",
        "![i](tg://x)",
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

proptest! {
    // Answers up to the gateway's bound: a few cases, each of up to 64 KiB.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_answer_up_to_the_bound_stays_within_the_piece_cap(
        text in prop::collection::vec(markdownish(), 1..40),
        nesting in 0usize..2000,
    ) {
        let unit = text.concat();
        let mut answer = "- ".repeat(nesting);
        while answer.len() + unit.len() <= crate::jobs::MAX_ANSWER_BYTES && !unit.is_empty() {
            answer.push_str(&unit);
        }
        prop_assert_eq!(check(&answer, LIMIT), Ok(()));
    }
}
