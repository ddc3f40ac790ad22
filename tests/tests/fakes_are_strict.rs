//! The gateway against fakes as strict as the real APIs: what they refuse, the product must
//! never send, and what they do only in production (streamed tool calls, flood control,
//! `allowed_updates`) the product must get through. The fakes' own rules are unit-tested
//! beside them (`src/fake_telegram.rs`, `src/fake_provider.rs`); these tests are about the
//! real binaries meeting those rules.

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::{FloodLimits, SendFault};
use hermes_tests::harness::{PATIENCE, Rig, USER};
use serde_json::json;

hermes_tests::both_modes!(a_tool_call_streamed_as_openai_streams_it_is_run_and_answered);

/// OpenAI streams a tool call as pieces of `delta.tool_calls`; the worker must stitch the
/// call together, and its result must answer the call by the streamed id (the fake refuses
/// the follow-up request otherwise).
async fn a_tool_call_streamed_as_openai_streams_it_is_run_and_answered(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.telegram_toml = "streaming = true\nedit_interval_ms = 200\n".into();
    })
    .await;
    rig.provider.push(ProviderReply::tool_calls(&[
        ("call_streamed_1", "calc__add", r#"{"a": 2, "b": 3}"#),
        ("call_streamed_2", "calc__mul", r#"{"a": 4, "b": 5}"#),
    ]));
    rig.provider
        .push(ProviderReply::Text("I could not use a calculator.".into()));
    rig.telegram.send_text(USER, USER, "what is 2+3 and 4*5?");
    let answered = rig
        .telegram
        .wait_for_sent(|m| m.text.contains("could not use a calculator"), PATIENCE)
        .await;
    assert!(answered.is_some(), "{}", rig.gateway.log());

    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].body["stream"], true);
    let messages = requests[1].body["messages"].as_array().unwrap();
    let call = &messages[messages.len() - 3];
    assert_eq!(call["role"], "assistant");
    assert_eq!(
        call["tool_calls"],
        json!([
            {"id": "call_streamed_1", "type": "function",
             "function": {"name": "calc__add", "arguments": r#"{"a": 2, "b": 3}"#}},
            {"id": "call_streamed_2", "type": "function",
             "function": {"name": "calc__mul", "arguments": r#"{"a": 4, "b": 5}"#}},
        ]),
        "{messages:#?}"
    );
    let answered_ids: Vec<&str> = messages[messages.len() - 2..]
        .iter()
        .filter_map(|m| m["tool_call_id"].as_str())
        .collect();
    assert_eq!(answered_ids, ["call_streamed_1", "call_streamed_2"]);
    assert!(
        rig.telegram.failed_sends().is_empty(),
        "{:#?}",
        rig.telegram.failed_sends()
    );
}

/// Whatever Markdown a model writes, the gateway's HTML is HTML Telegram parses: a refusal
/// would cost the user the formatting (the plain-text fallback), or the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markdown_of_every_kind_reaches_the_chat_as_html_telegram_accepts() {
    let rig = Rig::start(WorkerMode::Pool, |_| {}).await;
    let long_code: Vec<String> = (0..300)
        .map(|i| format!("if a[{i}] < b && c > d {{}}"))
        .collect();
    let samples = [
        "**bold** and _it_ and ~~strike~~ and `code <x> & y`".to_string(),
        "```rust\nfn main() { println!(\"<&>\"); }\n```".into(),
        "[a link](https://example.com/?a=1&b=\"2\") and <https://example.com/auto>".into(),
        "> a quote with **bold**\n>\n> > nested quote\n\nafter".into(),
        "nested **bold _italic `code` italic_ bold** and ***both***".into(),
        "# Heading <h1>\n\n- item <one>\n- item & two\n  - sub\n\n1. first\n2. second".into(),
        "| a | b |\n|---|---|\n| <x> | & |".into(),
        "![an image](http://x.test/y.png \"title\") and a footnote[^1]\n\n[^1]: the note".into(),
        "<b>raw html</b> <script>alert(1)</script> <br/> &nbsp; &amp; &#169; &bogus;".into(),
        "1 < 2 > 0, a\\*b, **unclosed bold, `unclosed code".into(),
        "💡 **bold 💡** _𝔘𝔫𝔦𝔠𝔬𝔡𝔢_ [link 💡](https://example.com/💡)".into(),
        "- [ ] task\n- [x] done\n\nterm\n: definition\n\n---\n\nend".into(),
        format!(
            "Long:\n\n```\n{}\n```\n\n**done** & dusted",
            long_code.join("\n")
        ),
        "[link with `code` and **bold**](https://example.com)".into(),
        "*[nested link](https://a.test)* and [![img](https://i.test/x.png)](https://b.test)".into(),
    ];
    for (i, sample) in samples.iter().enumerate() {
        let question = format!("sample {i}");
        rig.provider
            .push_for(&question, ProviderReply::Text(sample.clone()));
        rig.telegram.send_text(USER, USER, &question);
        // Asked alone (messages that wait together are one turn), then a second
        // question: a chat is answered in order, so once its echo is there, every
        // message of the sample's answer is too.
        assert!(rig.provider.wait_for_requests(2 * i + 1, PATIENCE).await);
        let ping = format!("ping {i}");
        rig.telegram.send_text(USER, USER, &ping);
        let echo = format!("echo: {ping}");
        let answered = rig
            .telegram
            .wait_for_sent(|m| m.text == echo, PATIENCE)
            .await;
        assert!(answered.is_some(), "sample {i}: {}", rig.gateway.log());
    }
    assert_eq!(rig.provider.request_count(), 2 * samples.len());
    let refused: Vec<_> = rig
        .telegram
        .failed_sends()
        .into_iter()
        .map(|f| (f.text, f.fault))
        .collect();
    assert!(refused.is_empty(), "Telegram would refuse: {refused:#?}");
    let sent = rig.telegram.sent_to(USER);
    assert!(
        sent.iter().all(|m| m.parse_mode.as_deref() == Some("HTML")),
        "{sent:#?}"
    );
}

/// Under Telegram's flood control (about one message a second in a chat) an answer of
/// several messages still arrives whole and in order: the gateway waits out `retry_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_under_telegrams_flood_limits_arrives_whole_and_in_order() {
    let rig = Rig::start_with(
        WorkerMode::Pool,
        |_| {},
        |telegram| telegram.set_flood_limits(FloodLimits::telegram()),
    )
    .await;
    let paragraphs: Vec<String> = (0..3)
        .map(|p| {
            (0..600)
                .map(|w| format!("p{p}w{w}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    rig.provider
        .push(ProviderReply::Text(paragraphs.join("\n\n")));
    rig.telegram.send_text(USER, USER, "tell me everything");
    let sent = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    assert!(sent.len() >= 3, "{}", rig.gateway.log());
    let words: Vec<String> = sent
        .iter()
        .flat_map(|m| {
            m.text
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = paragraphs
        .iter()
        .flat_map(|p| p.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(words, expected, "every word, in order, once");
    assert!(
        rig.telegram
            .failed_sends()
            .iter()
            .any(|f| matches!(f.fault, SendFault::RetryAfter(_))),
        "the flood limit was never reached, so this proved nothing"
    );
}

/// The gateway asks only for messages and button presses (its approval questions);
/// Telegram then never queues other kinds of update, and a press on something that is not
/// one of its questions changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_asks_telegram_for_messages_and_button_presses_only() {
    let rig = Rig::start(WorkerMode::Pool, |_| {}).await;
    assert!(rig.telegram.wait_for_polls(1, PATIENCE).await);
    assert_eq!(
        rig.telegram.allowed_updates(),
        Some(vec!["message".to_string(), "callback_query".to_string()])
    );
    rig.telegram.push_update(json!({"callback_query": {
        "id": "1", "chat_instance": "c", "data": "x",
        "from": {"id": USER, "is_bot": false, "first_name": "T"},
    }}));
    rig.telegram.push_update(json!({"edited_message": {
        "message_id": 1, "date": 0, "text": "edited",
        "chat": {"id": USER, "type": "private", "first_name": "T"},
    }}));
    assert_eq!(rig.ask("still here?").await.text, "echo: still here?");
    assert_eq!(rig.telegram.withheld_updates().len(), 1);
    assert_eq!(
        rig.telegram.sent_to(USER).len(),
        1,
        "the press changed nothing"
    );
}
