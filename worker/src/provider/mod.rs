//! One provider of the chain: an OpenAI-compatible `POST {base_url}/chat/completions`,
//! tried, retried and given up on according to [`classify`] and [`retry`], all within
//! the job's deadline. [`body`] builds requests and reads whole answers, [`sse`] reads
//! streamed ones.

pub mod body;
pub mod classify;
pub mod retry;
pub mod sse;
pub mod transcribe;

use std::time::{Duration, Instant, SystemTime};

use hermes_protocol::{ChatMessage, Event, Failure, ProviderPlan, Role};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

pub use body::Completion;
use classify::{Verdict, classify, describe};

/// What one step asks of a provider.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    /// The conversation so far, tool calls and results included.
    pub messages: &'a [ChatMessage],
    /// OpenAI function definitions; empty: the request offers no tools.
    pub tools: &'a [Value],
    /// Ask for Server-Sent Events and send [`Event::Delta`]s as text arrives.
    pub stream: bool,
    /// `data:` URLs of images that go with the last user message (the turn they came in
    /// with; later turns carry only their placeholder).
    pub images: &'a [String],
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

/// Asks `plan` for a completion of `prompt`, retrying what is worth retrying, until
/// `deadline`.
pub async fn complete(
    client: &reqwest::Client,
    plan: &ProviderPlan,
    prompt: Prompt<'_>,
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<Completion, ProviderError> {
    let provider = plan.name.clone();
    let mut messages = prompt.messages.to_vec();
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
        let attempt_prompt = Prompt {
            messages: &messages,
            ..prompt
        };
        let failed = match send_once(client, plan, attempt_prompt, budget, events).await {
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
        let give_up = || gave_up(verdict, &provider, &detail);
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
    prompt: Prompt<'_>,
    budget: Duration,
    events: &UnboundedSender<Event>,
) -> Result<Completion, Attempt> {
    let body = body::request_body(
        &plan.model,
        prompt.messages,
        prompt.tools,
        prompt.stream,
        prompt.images,
    );
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
    // Some servers ignore `stream` and answer with one JSON object: the content type
    // decides how the body is read, not what was asked for.
    let is_event_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if (200..300).contains(&status) && is_event_stream {
        return read_stream(response, &plan.model, budget, events).await;
    }
    let text = response.text().await.map_err(|e| body_error(&e, budget))?;
    if !(200..300).contains(&status) {
        return Err(Attempt::Status {
            status,
            verdict: classify(status, &text),
            detail: describe(status, &text),
            retry_after,
        });
    }
    body::parse_completion(&text, &plan.model).map_err(Attempt::Protocol)
}

/// Reads an event stream to its end, sending each text piece as it arrives.
async fn read_stream(
    mut response: reqwest::Response,
    asked_model: &str,
    budget: Duration,
    events: &UnboundedSender<Event>,
) -> Result<Completion, Attempt> {
    let mut decoder = sse::Decoder::default();
    let mut assembler = sse::Assembler::new(asked_model);
    let stream_error = |e: sse::StreamError| match e {
        sse::StreamError::Unreadable(detail) => Attempt::Protocol(detail),
        sse::StreamError::Broken(detail) => Attempt::Transport(detail),
    };
    loop {
        let (datas, ended) = match response.chunk().await {
            Ok(Some(chunk)) => (decoder.push(&chunk), false),
            Ok(None) => (decoder.finish(), true),
            Err(e) => return Err(body_error(&e, budget)),
        };
        for data in datas {
            match assembler.event(&data).map_err(stream_error)? {
                sse::Step::Text(piece) => {
                    let _ = events.send(Event::Delta(piece));
                }
                sse::Step::Nothing => {}
                sse::Step::Done => return assembler.finish(true).map_err(stream_error),
            }
        }
        if ended {
            return assembler.finish(false).map_err(stream_error);
        }
    }
}

/// A body that could not be read to its end: the attempt's own timeout, or a broken
/// connection (worth retrying either way).
fn body_error(error: &reqwest::Error, budget: Duration) -> Attempt {
    if error.is_timeout() {
        Attempt::TimedOut(budget)
    } else {
        Attempt::Transport("the connection broke while reading the answer".into())
    }
}

fn transport(error: &reqwest::Error, budget: Duration) -> Attempt {
    if error.is_timeout() {
        return Attempt::TimedOut(budget);
    }
    let root = hermes_retry::root_cause(error);
    if error.is_connect() {
        Attempt::Transport(format!("cannot connect: {root}"))
    } else {
        Attempt::Transport(format!("request failed: {root}"))
    }
}

/// Drops the oldest half of the history between the system prompt and the job's user
/// message, keeping both and everything after that message (this job's tool calls and
/// results). Tool results whose call was dropped go too: a provider refuses a `tool`
/// message that answers no call.
fn trim_history(messages: &mut Vec<ChatMessage>) {
    let system = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    let current = messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .unwrap_or(messages.len().saturating_sub(1))
        .max(system);
    let middle = current - system;
    let mut drop = middle.div_ceil(2);
    while system + drop < current && messages[system + drop].role == Role::Tool {
        drop += 1;
    }
    messages.drain(system..system + drop);
}

/// The failure of a request whose retries are spent: rate limited (the chat is told when
/// to try again), or the provider unavailable.
pub(crate) fn gave_up(verdict: Verdict, provider: &str, detail: &str) -> Failure {
    if verdict == Verdict::RateLimited {
        Failure::RateLimited {
            provider: provider.to_string(),
            detail: detail.to_string(),
        }
    } else {
        Failure::ProviderUnavailable {
            provider: provider.to_string(),
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn trimming_keeps_this_jobs_tool_turns_and_drops_orphaned_results() {
        let mut call = ChatMessage::new(Role::Assistant, "");
        call.tool_calls.push(hermes_protocol::ToolCall {
            id: "c1".into(),
            name: "t__x".into(),
            arguments: "{}".into(),
        });
        let mut m = vec![
            ChatMessage::new(Role::System, "s"),
            ChatMessage::new(Role::User, "old question"),
            call.clone(),
            ChatMessage::tool_result("c1", "old result"),
            ChatMessage::tool_result("c1", "old result 2"),
            ChatMessage::new(Role::Assistant, "old answer"),
            ChatMessage::new(Role::User, "new"),
            call,
            ChatMessage::tool_result("c1", "new result"),
        ];
        trim_history(&mut m);
        let contents: Vec<&str> = m.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["s", "old answer", "new", "", "new result"]);
    }
}
