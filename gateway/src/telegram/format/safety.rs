//! What a rendered answer must not carry: a code language Telegram's `class` would refuse,
//! and links that would cost the message its formatting or offer a reader one tap to
//! something a web page talked the model into (a proxy, a join link, an app scheme).

/// The language of a fence's info string as Telegram's `class` may carry it: its first
/// word, letters, digits and `_+-` only.
pub(super) fn sanitize_language(info: &str) -> Option<String> {
    let word = info
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
        .find(|word| !word.is_empty())?;
    let lang: String = word
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
        .collect();
    (!lang.is_empty()).then_some(lang)
}

/// Whether `url` has one of `schemes` (case-insensitive) and nothing Telegram would refuse
/// in a URL (a link it refuses costs the whole message its formatting), and is not one of
/// Telegram's own web links that act like a `tg:` link when tapped.
pub(super) fn link_allowed(url: &str, schemes: &[&str]) -> bool {
    let has_scheme = schemes.iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
            && url.len() > scheme.len()
    });
    has_scheme
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && !acts_in_telegram(url)
}

/// `t.me/proxy`, `t.me/socks`, `t.me/+…` and `t.me/joinchat/…` (and the same on
/// telegram.me and telegram.dog): one tap sets up a proxy or joins a chat, so a model
/// talked into one by a web page must not hide it behind innocent link text.
fn acts_in_telegram(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
    else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Credentials or a port before the host do not change where the link goes.
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host).trim_end_matches('.');
    let host = host.strip_prefix("www.").unwrap_or(host);
    ["t.me", "telegram.me", "telegram.dog"].contains(&host)
        && ["proxy", "socks", "+", "%2b", "joinchat"]
            .iter()
            .any(|kind| path.starts_with(kind))
}
