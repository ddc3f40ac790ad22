//! The agent loop against the fake provider, in process: streaming on and off, streamed
//! and whole tool calls, the step budget, fallbacks in the middle of a tool loop, and
//! every broken-answer case of the failure taxonomy with `stream` set. (Tool servers
//! themselves are exercised through the real binaries in `tests/tests/tools.rs`.)

use std::time::{Duration, Instant};

use hermes_protocol::{
    ChatMessage, Event, Failure, Job, JobId, Outcome, ProviderPlan, Reply, Role, Secret, ToolCall,
};
use hermes_tests::fake_provider::{API_KEY, FakeProvider, ProviderReply, SEED_402_BODY};
use hermes_worker::agent;
use hermes_worker::tools::Toolbox;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn plan(provider: &FakeProvider, name: &str) -> ProviderPlan {
    ProviderPlan {
        name: name.into(),
        base_url: provider.base_url(),
        model: format!("model-{name}"),
        api_key: Some(Secret::new(API_KEY)),
        request_timeout_ms: 10_000,
        max_retries: 2,
        vision: false,
        prices: None,
    }
}

fn job(providers: Vec<ProviderPlan>, stream: bool) -> Job {
    Job {
        id: JobId(1),
        chat_id: 1,
        messages: vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "what is 2+3?"),
        ],
        providers,
        timeout_ms: 10_000,
        stream,
        tools: Vec::new(),
        max_steps: 8,
        attachments: Vec::new(),
        transcription: None,
        output_dir: None,
    }
}

async fn run(job: &Job) -> (agent::Run, Vec<Event>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tools = Toolbox::default();
    let deadline = agent::deadline_of(job);
    let run = agent::run_with_tools(job, &client, &tx, &tools, deadline).await;
    drop(tx);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    (run, events)
}

fn reply(run: &agent::Run) -> &Reply {
    match &run.outcome {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn failure(run: &agent::Run) -> &Failure {
    match &run.outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn tool_call_answer(id: &str, name: &str, arguments: &str) -> ProviderReply {
    ProviderReply::Json(json!({
        "id": "chatcmpl-t", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}}]
    }))
}

fn sse(events: &[Value]) -> ProviderReply {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    ProviderReply::Status {
        status: 200,
        headers: vec![("Content-Type".into(), "text/event-stream".into())],
        body,
    }
}

fn deltas(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Delta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streamed_text_arrives_as_deltas_and_the_request_asks_for_a_stream() {
    let provider = FakeProvider::start().await;
    provider.push(ProviderReply::Text("two plus three is five".into()));
    let (run, events) = run(&job(vec![plan(&provider, "a")], true)).await;
    let reply = reply(&run);
    assert_eq!(reply.text, "two plus three is five");
    assert_eq!(deltas(&events), "two plus three is five");
    assert!(matches!(events[0], Event::Attempt { attempt: 1, .. }));
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Delta(_)))
            .count()
            > 1
    );
    let body = &provider.requests()[0].body;
    assert_eq!(body["stream"], json!(true));
    assert!(
        body.get("tools").is_none(),
        "no tools configured: none offered"
    );
    assert_eq!(
        reply.transcript,
        vec![ChatMessage::new(Role::Assistant, "two plus three is five")]
    );
}

#[tokio::test]
async fn a_stream_request_answered_with_plain_json_is_read_as_json() {
    let provider = FakeProvider::start().await;
    provider.push(ProviderReply::Json(json!({
        "model": "m", "choices": [{"message": {"role": "assistant", "content": "plain"}}]
    })));
    let (run, events) = run(&job(vec![plan(&provider, "a")], true)).await;
    assert_eq!(reply(&run).text, "plain");
    assert_eq!(deltas(&events), "");
}

#[tokio::test]
async fn without_stream_no_stream_key_is_sent() {
    let provider = FakeProvider::start().await;
    let (run, _) = run(&job(vec![plan(&provider, "a")], false)).await;
    assert_eq!(reply(&run).text, "echo: what is 2+3?");
    assert!(provider.requests()[0].body.get("stream").is_none());
}

/// A streamed tool call for a tool that does not exist: the model gets an error result it
/// can act on, asks again, and the transcript holds the whole exchange.
#[tokio::test]
async fn streamed_tool_calls_loop_back_with_results() {
    let provider = FakeProvider::start().await;
    provider.push(sse(&[
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function",
             "function": {"name": "calc__add", "arguments": "{\"a\":"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "2,\"b\":3}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ]));
    provider.push(ProviderReply::Text("I have no calculator".into()));
    let (run, events) = run(&job(vec![plan(&provider, "a")], true)).await;
    let reply = reply(&run);
    assert_eq!(reply.text, "I have no calculator");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    assert_eq!(
        messages[2]["tool_calls"][0]["function"],
        json!({"name": "calc__add", "arguments": "{\"a\":2,\"b\":3}"})
    );
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], "call_9");
    assert!(
        messages[3]["content"]
            .as_str()
            .unwrap()
            .contains("no tool named"),
        "{}",
        messages[3]
    );
    assert_eq!(reply.transcript.len(), 3);
    assert_eq!(
        reply.transcript[0].tool_calls,
        vec![ToolCall {
            id: "call_9".into(),
            name: "calc__add".into(),
            arguments: "{\"a\":2,\"b\":3}".into()
        }]
    );
    assert_eq!(reply.transcript[1].role, Role::Tool);
    assert_eq!(reply.transcript[2].content, "I have no calculator");
    let attempts = events
        .iter()
        .filter(|e| matches!(e, Event::Attempt { .. }))
        .count();
    assert_eq!(attempts, 2, "one Attempt before every request: {events:?}");
    assert!(events.contains(&Event::ToolStarted {
        name: "calc__add".into()
    }));
}

#[tokio::test]
async fn the_step_budget_ends_with_a_plain_reply_and_a_valid_transcript() {
    let provider = FakeProvider::start().await;
    provider.push_n(tool_call_answer("c", "calc__add", "{}"), 3);
    let mut job = job(vec![plan(&provider, "a")], false);
    job.max_steps = 3;
    let (run, _) = run(&job).await;
    let reply = reply(&run);
    assert!(
        reply.text.starts_with("I stopped after 3 steps"),
        "{}",
        reply.text
    );
    assert_eq!(provider.request_count(), 3);
    assert_eq!(reply.transcript.len(), 7);
    let last = reply.transcript.last().unwrap();
    assert_eq!(last.role, Role::Assistant);
    assert!(last.tool_calls.is_empty());
    assert_eq!(reply.provider, "a");
}

/// The primary answers with a tool call, then runs out of quota: the fallback continues
/// from the same transcript, and the quota event is reported.
#[tokio::test]
async fn a_fallback_continues_the_tool_loop_from_the_same_transcript() {
    let primary = FakeProvider::start().await;
    let backup = FakeProvider::start().await;
    primary.push(tool_call_answer("c1", "calc__add", "{}"));
    primary.push(ProviderReply::status(402, SEED_402_BODY));
    backup.push(ProviderReply::Text("from the backup".into()));
    let (run, events) = run(&job(vec![plan(&primary, "a"), plan(&backup, "b")], false)).await;
    let reply = reply(&run);
    assert_eq!(reply.text, "from the backup");
    assert_eq!(reply.provider, "b");
    assert_eq!(reply.transcript.len(), 3);
    let messages = &backup.requests()[0].body["messages"];
    assert_eq!(messages[3]["role"], "tool");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::FellBack { from, failure: Failure::QuotaExhausted { .. } } if from == "a"
    )));
}

#[tokio::test]
async fn streams_broken_mid_body_are_retried_then_unavailable() {
    let provider = FakeProvider::start().await;
    provider.push_n(ProviderReply::ResetMidBody, 3);
    let (run, events) = run(&job(vec![plan(&provider, "a")], true)).await;
    assert!(
        matches!(failure(&run), Failure::ProviderUnavailable { .. }),
        "{:?}",
        run.outcome
    );
    assert_eq!(provider.request_count(), 3);
    // Text of a broken attempt was streamed, then an Attempt told readers to start over.
    let first_delta = events.iter().position(|e| matches!(e, Event::Delta(_)));
    let second_attempt = events
        .iter()
        .position(|e| matches!(e, Event::Attempt { attempt: 2, .. }));
    assert!(
        first_delta.is_some() && first_delta < second_attempt,
        "{events:?}"
    );
}

#[tokio::test]
async fn garbage_with_stream_set_is_a_protocol_failure_retried_once() {
    for garbage in [
        ProviderReply::RawBody("{not json".into()),
        ProviderReply::Status {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            body: "data: {garbage\n\n".into(),
        },
    ] {
        let provider = FakeProvider::start().await;
        provider.push_n(garbage.clone(), 2);
        let (run, _) = run(&job(vec![plan(&provider, "a")], true)).await;
        assert!(
            matches!(failure(&run), Failure::ProviderProtocol { .. }),
            "{garbage:?}: {:?}",
            run.outcome
        );
        assert_eq!(provider.request_count(), 2, "{garbage:?}");
    }
}

#[tokio::test]
async fn a_stream_that_never_finishes_times_out_at_the_deadline() {
    let provider = FakeProvider::start().await;
    provider.push(ProviderReply::NeverFinishBody);
    let mut job = job(vec![plan(&provider, "a")], true);
    job.timeout_ms = 1500;
    let started = Instant::now();
    let (run, _) = run(&job).await;
    assert_eq!(*failure(&run), Failure::TimedOut { after_ms: 1500 });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!run.abandoned_tools);
}

/// Every answered step reports its usage once, priced from the plan when the provider
/// sends no cost, streamed or not; a failed provider's attempts report none.
#[tokio::test]
async fn each_answered_step_reports_its_usage_once_priced() {
    use hermes_protocol::{Prices, Usage};
    use hermes_tests::fake_provider::Reported;
    for stream in [false, true] {
        let failing = FakeProvider::start().await;
        failing.push(ProviderReply::status(402, SEED_402_BODY));
        let provider = FakeProvider::start().await;
        provider.report_usage(Reported::tokens(100, 20, 40));
        provider.push(ProviderReply::tool_calls(&[("c1", "calc__add", "{}")]));
        let mut priced = plan(&provider, "b");
        priced.prices = Some(Prices {
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 2_000_000,
            cached_micros_per_mtok: 500_000,
        });
        let (run, events) = run(&job(vec![plan(&failing, "a"), priced], stream)).await;
        reply(&run);
        let used: Vec<(&str, &Usage)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Usage {
                    provider, usage, ..
                } => Some((provider.as_str(), usage)),
                _ => None,
            })
            .collect();
        let expected = Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
            cached_tokens: 40,
            cost_micros: Some(120),
        };
        assert_eq!(
            used,
            [("b", &expected), ("b", &expected)],
            "stream {stream}: {events:?}"
        );
    }
}

/// A provider older than `stream_options` refuses it with a 400 naming it: the stream is
/// asked for again at once without it (no retry used up), and answered, uncounted.
#[tokio::test]
async fn a_provider_that_refuses_stream_options_still_streams() {
    let provider = FakeProvider::start().await;
    provider.push(ProviderReply::status(
        400,
        r#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error"}}"#,
    ));
    let mut plan = plan(&provider, "a");
    plan.max_retries = 0;
    let (run, events) = run(&job(vec![plan], true)).await;
    assert_eq!(reply(&run).text, "echo: what is 2+3?");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].body["stream_options"]["include_usage"], true);
    assert!(requests[1].body.get("stream_options").is_none());
    assert_eq!(requests[1].body["stream"], true);
    assert!(!events.iter().any(|e| matches!(e, Event::Usage { .. })));
}
