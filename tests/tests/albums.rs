//! Telegram as people use it: an album is one question, a paste Telegram split is one
//! question, and a reply brings what it replies to. The incidents behind them, from the
//! trackers of the gateways users compare us with: an album's second photo reached the
//! model without the caption, a long paste was answered twice, a reply lost what it was
//! about.
//!
//! Real binaries against the fake Telegram (which delivers an album as one update per
//! member with one `media_group_id`, and keeps users' messages for replies to them) and
//! the fake provider, in both worker modes. Each test lets the gateway store and
//! acknowledge the first part alone before the rest is sent: the worst case Telegram
//! allows, where a gateway without a settle window answers the first part by itself.

use base64::Engine;
use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply, ProviderRequest, image_urls};
use hermes_tests::fake_telegram::{BOT_USERNAME, MAX_MESSAGE_TEXT, split_paste};
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

hermes_tests::both_modes!(
    an_album_of_three_photos_with_a_caption_is_one_turn_with_three_images,
    a_paste_telegram_split_is_one_turn_with_one_answer,
    a_reply_carries_the_quoted_part_or_the_replied_to_text_into_the_request,
    a_reply_to_a_photo_brings_the_photo_along,
    a_gateway_killed_inside_the_settle_window_answers_the_album_once_after_the_restart,
    in_a_group_an_album_whose_caption_mentions_the_bot_is_taken_whole,
);

/// A rig whose provider reads images, with the settle window at `settle_ms`.
async fn rig(mode: WorkerMode, settle_ms: u64) -> Rig {
    Rig::start(mode, |o| {
        o.vision = vec![0];
        o.telegram_toml = format!("settle_ms = {settle_ms}");
    })
    .await
}

fn chat_requests(provider: &FakeProvider) -> Vec<ProviderRequest> {
    provider
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .collect()
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The content of the last user message of `request`, as parts: the text and the images.
fn question(request: &ProviderRequest) -> Value {
    request.body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| m["content"].clone())
        .unwrap_or(Value::Null)
}

async fn an_album_of_three_photos_with_a_caption_is_one_turn_with_three_images(mode: WorkerMode) {
    let mut rig = rig(mode, 1000).await;
    let photos: [&[u8]; 3] = [b"\xff\xd8 one", b"\xff\xd8 two", b"\xff\xd8 three"];
    let mut album = rig.telegram.album(USER, USER);
    let (first, _) = album.photo(&[photos[0]], Some("which one is sharpest?"));
    // Stored and acknowledged alone: the rest comes in a later getUpdates answer.
    assert!(rig.telegram.wait_for_ack(first, PATIENCE).await);
    album.photo(&[photos[1]], None);
    album.photo(&[photos[2]], None);
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|r| r.text.as_str()),
        Some("echo: which one is sharpest?"),
        "{}",
        rig.gateway.log()
    );
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1, "one turn: {asked:#?}");
    assert_eq!(
        question(&asked[0]),
        json!([
            {"type": "text", "text": "which one is sharpest?"},
            {"type": "image_url", "image_url": {"url": data_url(photos[0])}},
            {"type": "image_url", "image_url": {"url": data_url(photos[1])}},
            {"type": "image_url", "image_url": {"url": data_url(photos[2])}},
        ])
    );
    rig.assert_replies(1);
    // An ordinary message afterwards is its own turn, and the album was answered once.
    rig.assert_follow_up("and now?", "echo: and now?").await;
    assert_eq!(chat_requests(&rig.provider).len(), 2);
}

async fn a_paste_telegram_split_is_one_turn_with_one_answer(mode: WorkerMode) {
    let mut rig = rig(mode, 1000).await;
    let paste: String = (0..1000)
        .map(|i| format!("w{i:03} "))
        .collect::<String>()
        .chars()
        .take(6000)
        .collect();
    let parts = split_paste(&paste);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].encode_utf16().count(), MAX_MESSAGE_TEXT);
    rig.provider.push(ProviderReply::Text("read it all".into()));
    let first = rig.telegram.send_text(USER, USER, &parts[0]);
    assert!(rig.telegram.wait_for_ack(first, PATIENCE).await);
    rig.telegram.send_text(USER, USER, &parts[1]);
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|r| r.text.as_str()),
        Some("read it all"),
        "{}",
        rig.gateway.log()
    );
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1, "one turn");
    assert_eq!(
        asked[0].last_user_text().as_deref(),
        Some(parts.join("\n").as_str())
    );
    rig.assert_replies(1);
    rig.assert_follow_up("thanks", "echo: thanks").await;
}

async fn a_reply_carries_the_quoted_part_or_the_replied_to_text_into_the_request(mode: WorkerMode) {
    let mut rig = rig(mode, 1000).await;
    let said = "Paris is in France.\nMadrid is in Spain.";
    let answer = rig.ask(said).await;
    // The user selects part of the bot's answer and replies to it.
    rig.reply_to(USER, "a reply with a quote", |t| {
        t.send_reply_quoting(
            USER,
            USER,
            "is that so?",
            answer.message_id,
            Some("Madrid is in Spain."),
        );
    })
    .await;
    let quoted =
        "[quoting part of your message]\n> Madrid is in Spain.\n[end of quote]\nis that so?";
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked[1].last_user_text().as_deref(), Some(quoted));
    // A reply without a selection carries the replied-to text: here the user's own.
    let own = rig.telegram.send_text(USER, USER, "Rome is in Italy.");
    let mine = rig.telegram.message_id_of(own).expect("remembered");
    rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    rig.assert_replies(3);
    rig.reply_to(USER, "a reply", |t| {
        t.send_reply_quoting(USER, USER, "and this?", mine, None);
    })
    .await;
    let asked = chat_requests(&rig.provider);
    assert_eq!(
        asked[3].last_user_text().as_deref(),
        Some("[quoting my earlier message]\n> Rome is in Italy.\n[end of quote]\nand this?")
    );
    // Stored with the turn: the conversation's history keeps the quote.
    rig.ask("go on").await;
    let history = &chat_requests(&rig.provider)[4].body["messages"];
    assert!(
        history
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["content"] == quoted)),
        "{history:#}"
    );
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_reply_to_a_photo_brings_the_photo_along(mode: WorkerMode) {
    let mut rig = rig(mode, 1000).await;
    let photo: &[u8] = b"\xff\xd8 a cat";
    let mut sent = 0;
    rig.reply_to(USER, "a photo", |t| {
        sent = t.send_photo(USER, USER, &[photo], Some("my cat")).0;
    })
    .await;
    let message = rig.telegram.message_id_of(sent).expect("remembered");
    rig.reply_to(USER, "a reply to the photo", |t| {
        t.send_reply_quoting(USER, USER, "what colour is it?", message, None);
    })
    .await;
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 2);
    assert_eq!(
        question(&asked[1]),
        json!([
            {"type": "text", "text": "[quoting my earlier message]\n\n> my cat\n[end of quote]\nwhat colour is it?"},
            {"type": "image_url", "image_url": {"url": data_url(photo)}},
        ])
    );
    assert_eq!(image_urls(&asked[1].body).len(), 1);
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_gateway_killed_inside_the_settle_window_answers_the_album_once_after_the_restart(
    mode: WorkerMode,
) {
    // Long enough that the kill surely comes inside it.
    let settle_ms = 2000;
    let rig = rig(mode, settle_ms).await;
    let photos: [&[u8]; 3] = [b"\xff\xd8 one", b"\xff\xd8 two", b"\xff\xd8 three"];
    let mut album = rig.telegram.album(USER, USER);
    album.photo(&[photos[0]], Some("all three, please"));
    let (second, _) = album.photo(&[photos[1]], None);
    assert!(rig.telegram.wait_for_ack(second, PATIENCE).await);
    assert_eq!(rig.provider.request_count(), 0, "asked inside the window");
    rig.gateway.signal(Signal::SIGKILL);
    let Rig {
        telegram,
        provider,
        mut gateway,
        ..
    } = rig;
    assert!(gateway.wait_exit(PATIENCE).await.is_some());
    let options = GatewayOptions {
        providers: vec![provider.base_url()],
        vision: vec![0],
        telegram_toml: format!("settle_ms = {settle_ms}"),
        ..GatewayOptions::new(mode)
    };
    let restarted = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    // The album's last photo reaches the new run.
    album.photo(&[photos[2]], None);
    let mut rig = Rig::from_parts(telegram, provider, restarted);
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|r| r.text.as_str()),
        Some("echo: all three, please"),
        "{}",
        rig.gateway.log()
    );
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1, "one turn: {asked:#?}");
    assert_eq!(image_urls(&asked[0].body), photos.map(data_url));
    rig.assert_replies(1);
    rig.assert_follow_up("after", "echo: after").await;
    assert_eq!(chat_requests(&rig.provider).len(), 2, "answered once");
}

/// In a group (mention mode) only the member with the caption mentions the bot; the
/// album's other members, without a caption, are for the bot because their album is.
async fn in_a_group_an_album_whose_caption_mentions_the_bot_is_taken_whole(mode: WorkerMode) {
    let group = -100_555;
    let mut rig = rig(mode, 1000).await;
    let photos: [&[u8]; 2] = [b"\xff\xd8 left", b"\xff\xd8 right"];
    let mut album = rig.telegram.album(group, USER);
    let caption = format!("@{BOT_USERNAME} spot the difference");
    let (first, _) = album.photo(&[photos[0]], Some(&caption));
    assert!(rig.telegram.wait_for_ack(first, PATIENCE).await);
    album.photo(&[photos[1]], None);
    // Someone else's album in the group, not for the bot.
    let mut chatter = rig.telegram.album(group, USER);
    chatter.photo(&[b"\xff\xd8 a"], Some("look"));
    chatter.photo(&[b"\xff\xd8 b"], None);
    let replies = rig
        .telegram
        .wait_for_chat_messages(group, 1, PATIENCE)
        .await;
    assert_eq!(
        replies.first().map(|r| r.text.as_str()),
        Some("echo: spot the difference"),
        "{}",
        rig.gateway.log()
    );
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1);
    assert_eq!(image_urls(&asked[0].body), photos.map(data_url));
    rig.assert_replies_in(group, 1);
    rig.assert_follow_up("/help", "/new").await;
    assert_eq!(
        rig.messages_in(group).len(),
        1,
        "the chatter was not answered"
    );
}
