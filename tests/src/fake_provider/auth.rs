//! The API key, checked as OpenAI checks it: `Authorization: Bearer <key>` when the
//! provider has a key, and OpenAI's 401 (with the wrong key's ends echoed, the middle
//! starred) when it is missing or wrong.

use serde_json::{Value, json};

use super::State;
use crate::http::Response;

impl State {
    /// OpenAI's 401 for a missing or wrong key, if this provider wants one.
    pub(super) fn key_problem(&self, authorization: Option<&str>) -> Option<Response> {
        let key = self.key.as_deref()?;
        let sent = authorization.and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let message = match sent {
            Some(sent) if sent == key => return None,
            Some(sent) => format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                masked(sent)
            ),
            None => "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into(),
        };
        let code = if sent.is_some() {
            json!("invalid_api_key")
        } else {
            Value::Null
        };
        Some(Response::json(
            401,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
        ))
    }
}

/// A key as OpenAI echoes a wrong one: its ends, the middle starred.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::tests::{ask, post_as};
    use super::super::{API_KEY, FakeProvider, ProviderReply};

    #[tokio::test]
    async fn a_missing_or_wrong_key_is_refused_as_openai_does() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Text("kept for the keyed request".into()));
        let (status, body) = post_as(&fake, None, &ask("x")).await;
        assert_eq!(status, 401);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("You didn't provide an API key."),
            "{body}"
        );
        assert_eq!(body["error"]["code"], Value::Null);
        let (status, body) = post_as(&fake, Some("Bearer sk-wrong-key-123"), &ask("x")).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("sk-*********-123"), "{message}");
        // Basic auth, or the key without its scheme, is no bearer token.
        for header in ["Basic c2stdGVzdC1rZXk6", API_KEY] {
            assert_eq!(post_as(&fake, Some(header), &ask("x")).await.0, 401);
        }
        let (status, body) = post_as(&fake, Some(&format!("Bearer {API_KEY}")), &ask("x")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "kept for the keyed request"
        );
        assert_eq!(fake.request_count(), 5, "refused requests are logged too");

        // A provider without a key takes requests without one.
        let open = FakeProvider::start_with_key(None).await;
        assert_eq!(post_as(&open, None, &ask("x")).await.0, 200);
    }
}
