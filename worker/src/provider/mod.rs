//! One provider of the chain: an OpenAI-compatible `POST {base_url}/chat/completions`,
//! tried, retried and given up on according to [`classify`] and [`retry`], all within
//! the job's deadline. `attempts` sends and retries it, as it does [`transcribe`]'s
//! requests; [`body`] builds requests and reads whole answers, [`sse`] reads streamed
//! ones.

mod attempts;
pub mod body;
pub mod classify;
pub mod retry;
pub mod sse;
pub mod transcribe;
pub mod usage;

use std::time::{Duration, Instant};

use hermes_protocol::{ChatMessage, Event, Failure, ProviderPlan, Role};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use attempts::{Attempt, Request};
pub use body::Completion;

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

/// Asks `plan` for a completion of `prompt`, retrying what is worth retrying, until
/// `deadline`.
pub async fn complete(
    client: &reqwest::Client,
    plan: &ProviderPlan,
    prompt: Prompt<'_>,
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<Completion, ProviderError> {
    let mut request = Chat {
        client,
        plan,
        prompt,
        messages: prompt.messages.to_vec(),
        trimmed: false,
        stream_usage: true,
        events,
    };
    let completion = attempts::run(&mut request, plan, &plan.name, deadline, events).await?;
    if let Some(used) = completion.usage {
        let _ = events.send(Event::Usage {
            provider: plan.name.clone(),
            model: completion.model.clone(),
            usage: usage::priced(used, plan.prices.as_ref()),
        });
    }
    Ok(completion)
}

/// A chat completion as `attempts::run` sends it: the history it may trim once.
struct Chat<'a> {
    client: &'a reqwest::Client,
    plan: &'a ProviderPlan,
    prompt: Prompt<'a>,
    /// `prompt`'s messages, as trimmed.
    messages: Vec<ChatMessage>,
    trimmed: bool,
    /// Ask a stream for its usage chunk; false once the provider refused
    /// `stream_options` (servers older than OpenAI's option do).
    stream_usage: bool,
    events: &'a UnboundedSender<Event>,
}

impl Request for Chat<'_> {
    type Answer = Completion;
    const ANSWER: &'static str = "answer";

    async fn send(&mut self, budget: Duration) -> Result<Completion, Attempt> {
        let prompt = Prompt {
            messages: &self.messages,
            ..self.prompt
        };
        let started = std::time::Instant::now();
        let response = loop {
            let mut body = body::request_body(
                &self.plan.model,
                prompt.messages,
                prompt.tools,
                prompt.stream,
                prompt.images,
            );
            if !self.stream_usage
                && let Some(fields) = body.as_object_mut()
            {
                fields.remove("stream_options");
            }
            let left = budget.saturating_sub(started.elapsed());
            let response = attempts::post(self.client, self.plan, "chat/completions", left)
                .json(&body)
                .send()
                .await
                .map_err(|e| transport(&e, budget))?;
            match attempts::check(response, |e| body_error(e, budget)).await {
                Ok(response) => break response,
                // Usage is bookkeeping: a provider that does not know the option is asked
                // again without it, at once, and its streams go uncounted.
                Err(Attempt::Status {
                    status: 400,
                    detail,
                    ..
                }) if self.stream_usage && prompt.stream && detail.contains("stream_options") => {
                    tracing::info!(
                        provider = %self.plan.name,
                        "the provider refuses stream_options ({detail}); streaming without usage"
                    );
                    self.stream_usage = false;
                }
                Err(failed) => return Err(failed),
            }
        };
        // Some servers ignore `stream` and answer with one JSON object: the content type
        // decides how the body is read, not what was asked for.
        let is_event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if is_event_stream {
            return read_stream(response, &self.plan.model, budget, self.events).await;
        }
        let text = response.text().await.map_err(|e| body_error(&e, budget))?;
        body::parse_completion(&text, &self.plan.model).map_err(Attempt::Protocol)
    }

    fn context_too_long(
        &mut self,
        provider: &str,
        _status: u16,
        detail: String,
    ) -> Result<(), Failure> {
        if self.trimmed {
            return Err(Failure::ContextTooLong {
                provider: provider.to_string(),
                detail,
            });
        }
        self.trimmed = true;
        trim_history(&mut self.messages);
        tracing::info!(
            provider,
            "context too long; retrying once with older history trimmed"
        );
        Ok(())
    }
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
