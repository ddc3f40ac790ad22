//! What a provider's error answer means, as a pure function of its status and body: the
//! failure taxonomy of DESIGN.md in one place. Quota and auth problems are never retried
//! against the same provider; overload and outages are.

/// What to do about one failed HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 402, or a quota/balance code: the account is out of money or quota.
    Quota,
    /// 401, 403.
    Auth,
    /// 400 about the context window: retry once with less history.
    ContextTooLong,
    /// Any other client error: this request will not succeed here.
    Rejected,
    /// 429 without a quota code: retry after a wait.
    RateLimited,
    /// 408, 409, 425, 5xx: retry after a wait.
    Unavailable,
}

pub fn classify(status: u16, body: &str) -> Verdict {
    let (code, kind, message) = error_fields(body);
    let quota_code = [code.as_deref(), kind.as_deref()]
        .into_iter()
        .flatten()
        .any(is_quota_code);
    match status {
        402 => Verdict::Quota,
        400..=499 if quota_code => Verdict::Quota,
        429 => Verdict::RateLimited,
        401 | 403 => Verdict::Auth,
        408 | 409 | 425 => Verdict::Unavailable,
        400 if is_context_too_long(code.as_deref(), &message.unwrap_or_default(), body) => {
            Verdict::ContextTooLong
        }
        400..=499 => Verdict::Rejected,
        _ => Verdict::Unavailable,
    }
}

fn is_quota_code(code: &str) -> bool {
    let code = code.to_ascii_lowercase();
    code == "insufficient_quota"
        || code.starts_with("daily_limit")
        || code.contains("quota")
        || code.contains("balance")
        || code.contains("billing")
}

fn is_context_too_long(code: Option<&str>, message: &str, body: &str) -> bool {
    if code == Some("context_length_exceeded") {
        return true;
    }
    let text = format!("{message} {body}").to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "context length",
        "too many tokens",
        "prompt is too long",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// `error.code`, `error.type` and `error.message` of an OpenAI-style error body (also
/// accepting a top-level `code`/`message`, as some compatible servers send).
fn error_fields(body: &str) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return (None, None, None);
    };
    let error = value.get("error").unwrap_or(&value);
    let field = |name: &str| match error.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    (field("code"), field("type"), field("message"))
}

/// A short, human account of an error answer: `HTTP 402: <the provider's message>`.
/// HTML error pages are named, not quoted; long bodies are cut.
pub fn describe(status: u16, body: &str) -> String {
    let (_, _, message) = error_fields(body);
    if let Some(message) = message.filter(|m| !m.trim().is_empty()) {
        return format!("HTTP {status}: {}", shorten(&message));
    }
    let trimmed = body.trim_start();
    if trimmed.starts_with('<') {
        return format!("HTTP {status} (HTML error page)");
    }
    if trimmed.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    format!("HTTP {status}: {}", shorten(trimmed))
}

/// Collapses whitespace and cuts to 200 characters.
pub fn shorten(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > 200 {
        let cut: String = collapsed.chars().take(200).collect();
        format!("{cut}…")
    } else {
        collapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"error":{"message":"Insufficient available balance for new requests. Daily quota: $200.00, spent: $199.8100, in use by pending requests: $0.1900 (available: $0.0000). Please wait for ongoing requests to complete.","type":"insufficient_balance","code":"daily_limit_busy"}}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const CONTEXT: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;

    #[test]
    fn the_taxonomy() {
        let cases: &[(u16, &str, Verdict)] = &[
            (402, SEED, Verdict::Quota),
            (402, "Payment Required", Verdict::Quota),
            (
                402,
                r#"{"error":{"code":"daily_limit_busy"}}"#,
                Verdict::Quota,
            ),
            (429, OPENAI_QUOTA, Verdict::Quota),
            (
                429,
                r#"{"error":{"code":"daily_limit_exceeded"}}"#,
                Verdict::Quota,
            ),
            (
                403,
                r#"{"error":{"code":"daily_limit_busy"}}"#,
                Verdict::Quota,
            ),
            (
                400,
                r#"{"error":{"code":"daily_limit_busy"}}"#,
                Verdict::Quota,
            ),
            (
                429,
                r#"{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}"#,
                Verdict::RateLimited,
            ),
            (429, "", Verdict::RateLimited),
            (
                401,
                r#"{"error":{"code":"invalid_api_key"}}"#,
                Verdict::Auth,
            ),
            (403, "Forbidden", Verdict::Auth),
            (400, CONTEXT, Verdict::ContextTooLong),
            (
                400,
                r#"{"error":{"message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
                Verdict::ContextTooLong,
            ),
            (
                400,
                r#"{"error":{"message":"temperature must be <= 2"}}"#,
                Verdict::Rejected,
            ),
            (
                404,
                r#"{"error":{"code":"model_not_found"}}"#,
                Verdict::Rejected,
            ),
            (422, "{}", Verdict::Rejected),
            (408, "", Verdict::Unavailable),
            (409, "", Verdict::Unavailable),
            (425, "", Verdict::Unavailable),
            (500, "", Verdict::Unavailable),
            (
                502,
                "<html><body>Bad Gateway</body></html>",
                Verdict::Unavailable,
            ),
            (503, "", Verdict::Unavailable),
            (504, "", Verdict::Unavailable),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
                Verdict::Unavailable,
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(classify(*status, body), *expected, "{status} {body}");
        }
    }

    #[test]
    fn descriptions_are_short_and_human() {
        assert!(describe(402, SEED).starts_with("HTTP 402: Insufficient available balance"));
        assert_eq!(
            describe(502, "<html><head><title>502</title></head></html>"),
            "HTTP 502 (HTML error page)"
        );
        assert_eq!(describe(500, ""), "HTTP 500 with an empty body");
        assert_eq!(
            describe(500, "oops\n  it   broke"),
            "HTTP 500: oops it broke"
        );
        let long = "x".repeat(500);
        assert!(describe(500, &long).chars().count() < 220);
    }
}
