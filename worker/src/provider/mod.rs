//! One provider of the chain: an OpenAI-compatible `POST {base_url}/chat/completions`,
//! tried, retried and given up on according to [`classify`] and [`retry`], all within
//! the job's deadline.

pub mod classify;
pub mod retry;

use std::time::{Duration, Instant, SystemTime};

use hermes_protocol::{ChatMessage, Event, Failure, ProviderPlan, Role};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use classify::{Verdict, classify, describe, shorten};

/// A usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    /// The model the provider says answered, else the one asked for.
    pub model: String,
}

/// Why a provider gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// Failed for good; the chain moves on.
    Failed(Failure),
    /// The job's deadline passed; nothing more may be tried.
    Deadline,
}

/// One failed attempt, before the retry policy has looked at it.
#[derive(Debug)]
enum Attempt {
    Status {
        status: u16,
        verdict: Verdict,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Connection refused or reset, body cut off: worth retrying.
    Transport(String),
    /// The attempt's own timeout fired.
    TimedOut(Duration),
    /// A 2xx answer that is not a chat completion.
    Protocol(String),
}

/// Asks `plan` for a completion of `messages`, retrying what is worth retrying, until
/// `deadline`.
pub async fn complete(
    client: &reqwest::Client,
    plan: &ProviderPlan,
    messages: &[ChatMessage],
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<Completion, ProviderError> {
    let provider = plan.name.clone();
    let mut messages = messages.to_vec();
    let mut attempt = 0u32;
    let mut retries = 0u32;
    let mut trimmed = false;
    let mut protocol_retried = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProviderError::Deadline);
        }
        attempt += 1;
        let _ = events.send(Event::Attempt {
            provider: provider.clone(),
            attempt,
        });
        let budget = Duration::from_millis(plan.request_timeout_ms).min(deadline - now);
        let failed = match send_once(client, plan, &messages, budget).await {
            Ok(completion) => return Ok(completion),
            Err(failed) => failed,
        };
        let (verdict, detail, retry_after) = match failed {
            Attempt::Status {
                status,
                verdict,
                detail,
                retry_after,
            } => match verdict {
                Verdict::Quota => return fail(Failure::QuotaExhausted { provider, detail }),
                Verdict::Auth => {
                    return fail(Failure::ProviderAuth {
                        provider,
                        status,
                        detail,
                    });
                }
                Verdict::Rejected => {
                    return fail(Failure::ProviderRejected {
                        provider,
                        status,
                        detail,
                    });
                }
                Verdict::ContextTooLong if !trimmed => {
                    trimmed = true;
                    trim_history(&mut messages);
                    tracing::info!(
                        provider,
                        "context too long; retrying once with older history trimmed"
                    );
                    continue;
                }
                Verdict::ContextTooLong => {
                    return fail(Failure::ContextTooLong { provider, detail });
                }
                Verdict::RateLimited | Verdict::Unavailable => (verdict, detail, retry_after),
            },
            Attempt::Protocol(detail) if !protocol_retried => {
                protocol_retried = true;
                tracing::info!(provider, "unreadable answer ({detail}); retrying once");
                continue;
            }
            Attempt::Protocol(detail) => {
                return fail(Failure::ProviderProtocol { provider, detail });
            }
            Attempt::TimedOut(_) if Instant::now() >= deadline => {
                return Err(ProviderError::Deadline);
            }
            Attempt::TimedOut(after) => (
                Verdict::Unavailable,
                format!("no answer within {:.0} s", after.as_secs_f64()),
                None,
            ),
            Attempt::Transport(detail) => (Verdict::Unavailable, detail, None),
        };
        let give_up = || {
            if verdict == Verdict::RateLimited {
                Failure::RateLimited {
                    provider: provider.clone(),
                    detail: detail.clone(),
                }
            } else {
                Failure::ProviderUnavailable {
                    provider: provider.clone(),
                    detail: detail.clone(),
                }
            }
        };
        if retries >= plan.max_retries {
            return fail(give_up());
        }
        retries += 1;
        let wait = retry::delay(retries, retry_after);
        if Instant::now() + wait >= deadline {
            tracing::info!(
                provider,
                "not retrying: the wait of {wait:?} would pass the job's deadline"
            );
            return fail(give_up());
        }
        tracing::info!(provider, attempt, "{detail}; retrying in {wait:?}");
        let _ = events.send(Event::Retrying {
            provider: provider.clone(),
            after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            reason: detail.clone(),
        });
        tokio::time::sleep(wait).await;
    }
}

fn fail(failure: Failure) -> Result<Completion, ProviderError> {
    Err(ProviderError::Failed(failure))
}

async fn send_once(
    client: &reqwest::Client,
    plan: &ProviderPlan,
    messages: &[ChatMessage],
    budget: Duration,
) -> Result<Completion, Attempt> {
    let body = json!({
        "model": plan.model,
        "messages": messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect::<Vec<_>>(),
    });
    let mut request = client
        .post(format!(
            "{}/chat/completions",
            plan.base_url.trim_end_matches('/')
        ))
        .timeout(budget)
        .json(&body);
    if let Some(key) = &plan.api_key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.map_err(|e| transport(&e, budget))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    let text = response.text().await.map_err(|e| {
        if e.is_timeout() {
            Attempt::TimedOut(budget)
        } else {
            Attempt::Transport("the connection broke while reading the answer".into())
        }
    })?;
    if !(200..300).contains(&status) {
        return Err(Attempt::Status {
            status,
            verdict: classify(status, &text),
            detail: describe(status, &text),
            retry_after,
        });
    }
    parse_completion(&text, &plan.model).map_err(Attempt::Protocol)
}

fn transport(error: &reqwest::Error, budget: Duration) -> Attempt {
    if error.is_timeout() {
        return Attempt::TimedOut(budget);
    }
    let mut root: &dyn std::error::Error = error;
    while let Some(source) = root.source() {
        root = source;
    }
    if error.is_connect() {
        Attempt::Transport(format!("cannot connect: {root}"))
    } else {
        Attempt::Transport(format!("request failed: {root}"))
    }
}

/// The text of `choices[0].message.content`, or why the body is not a usable answer.
fn parse_completion(body: &str, asked_model: &str) -> Result<Completion, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|_| format!("the answer is not JSON: {}", shorten(body)))?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("the answer has no choices")?;
    let text = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .ok_or("the answer's first choice has no text content")?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(asked_model)
        .to_string();
    Ok(Completion {
        text: text.trim().to_string(),
        model,
    })
}

/// Drops the oldest half of the conversation between the system prompt and the new
/// message, keeping both of those.
fn trim_history(messages: &mut Vec<ChatMessage>) {
    let system = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    let middle = messages.len().saturating_sub(system + 1);
    let drop = middle.div_ceil(2);
    messages.drain(system..system + drop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_parse_and_bad_bodies_are_protocol_errors() {
        let ok = r#"{"model":"m-2","choices":[{"message":{"role":"assistant","content":" hi "}}]}"#;
        assert_eq!(
            parse_completion(ok, "m").unwrap(),
            Completion {
                text: "hi".into(),
                model: "m-2".into()
            }
        );
        assert!(
            parse_completion("<<nope>>", "m")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse_completion(r#"{"choices":[]}"#, "m")
                .unwrap_err()
                .contains("no choices")
        );
        assert!(parse_completion(r#"{"choices":[{"message":{"content":null}}]}"#, "m").is_err());
    }

    #[test]
    fn trimming_keeps_the_system_prompt_and_the_new_message() {
        let mut m = vec![ChatMessage::new(Role::System, "s")];
        for i in 0..6 {
            m.push(ChatMessage::new(
                if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                format!("h{i}"),
            ));
        }
        m.push(ChatMessage::new(Role::User, "new"));
        trim_history(&mut m);
        let contents: Vec<&str> = m.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["s", "h3", "h4", "h5", "new"]);
        let mut single = vec![ChatMessage::new(Role::User, "only")];
        trim_history(&mut single);
        assert_eq!(single.len(), 1);
    }
}
