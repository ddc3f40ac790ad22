//! What the fake's answers say they used, as OpenAI reports it: `usage` with
//! `prompt_tokens`, `completion_tokens`, `total_tokens` and
//! `prompt_tokens_details.cached_tokens`, in every whole completion and, in a stream,
//! only in the usage chunk after the finish chunk, and only when the request asked for it
//! (`stream_options.include_usage`). A test sets the figures ([`FakeProvider::report_usage`])
//! and may add the cost some providers send (OpenRouter's `usage.cost`); it counts the
//! chat-completions requests, which is what a budget must keep at zero.

use serde_json::{Value, json};

use super::FakeProvider;

/// The usage every answer reports until a test says otherwise: one token each way.
pub const DEFAULT_USAGE: Reported = Reported {
    prompt_tokens: 1,
    completion_tokens: 1,
    cached_tokens: 0,
    cost: None,
};

/// The figures an answer reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the prompt tokens, those served from the cache.
    pub cached_tokens: u64,
    /// `usage.cost`, in dollars, as OpenRouter sends it; `None`: no cost field.
    pub cost: Option<f64>,
}

impl Reported {
    pub fn tokens(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Self {
        Reported {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            cost: None,
        }
    }

    /// OpenAI's `usage` object.
    pub fn to_json(&self) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        });
        if let Some(cost) = self.cost {
            usage["cost"] = json!(cost);
        }
        usage
    }
}

impl FakeProvider {
    /// Every answer from now on reports `usage`.
    pub fn report_usage(&self, usage: Reported) {
        self.state.lock().usage = usage.to_json();
    }

    /// Requests to `/chat/completions` received so far (refused ones included): a call
    /// the gateway must not make shows here.
    pub fn chat_request_count(&self) -> usize {
        self.state
            .lock()
            .requests
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{ask, post};
    use super::super::{FakeProvider, ProviderReply};
    use super::*;

    #[tokio::test]
    async fn usage_comes_whole_and_in_a_streams_last_chunk_only_when_asked() {
        let fake = FakeProvider::start().await;
        fake.report_usage(Reported {
            cost: Some(0.25),
            ..Reported::tokens(100, 20, 40)
        });
        let v: Value = post(&fake, &ask("a")).await.unwrap().json().await.unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 100);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 40);
        assert_eq!(v["usage"]["cost"], 0.25);

        let mut streamed = ask("b");
        streamed["stream"] = json!(true);
        let without = post(&fake, &streamed).await.unwrap().text().await.unwrap();
        assert!(!without.contains("usage"), "not asked for: {without}");

        streamed["stream_options"] = json!({"include_usage": true});
        fake.push(ProviderReply::Text("one two three".into()));
        let with = post(&fake, &streamed).await.unwrap().text().await.unwrap();
        let chunks: Vec<Value> = with
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        let carrying: Vec<usize> = (0..chunks.len())
            .filter(|&i| chunks[i].get("usage").is_some())
            .collect();
        assert_eq!(carrying, [chunks.len() - 1], "only the last chunk: {with}");
        assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 20);
        assert_eq!(chunks[chunks.len() - 1]["choices"], json!([]));
        assert_eq!(fake.chat_request_count(), 3);
    }
}
