//! Strangers (people not in `telegram.allowed_users`) cannot delay members: each gets at
//! most one reply an hour, the rest are dropped and counted in the status, and their
//! replies wait behind every member's answer in the same chat. And a group that became a
//! supergroup has its waiting messages answered there at once.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario runs
//! in both worker modes.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::{BOT_USERNAME, FloodLimits, SendFault, SentMessage};
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually};

hermes_tests::both_modes!(
    fifty_strangers_in_a_group_do_not_hold_back_a_members_answer,
    a_stranger_writing_three_times_in_an_hour_is_answered_once_and_two_are_counted,
    a_migrated_groups_waiting_message_is_answered_there_at_once,
);

const STRANGERS: i64 = 50;

fn is_stranger_reply(m: &SentMessage) -> bool {
    m.text.contains("Your Telegram user id is")
}

async fn fifty_strangers_in_a_group_do_not_hold_back_a_members_answer(mode: WorkerMode) {
    let group = -7070;
    let rig = Rig::start(mode, |_| {}).await;
    // Telegram's own limits: 20 messages a minute in a group, so fifty replies take
    // two and a half minutes to go out.
    rig.telegram.set_flood_limits(FloodLimits::telegram());
    let bot = format!("@{BOT_USERNAME}");
    for i in 0..STRANGERS {
        rig.telegram
            .send_text(group, 800_000 + i, &format!("{bot} let me in"));
    }
    rig.telegram
        .send_text(group, USER, &format!("{bot} member question"));
    let answer = rig
        .telegram
        .wait_for_sent(|m| m.text == "echo: member question", PATIENCE)
        .await;
    assert!(
        answer.is_some(),
        "the member's answer waited behind the strangers' replies\n{}",
        rig.gateway.log()
    );
    let before: Vec<SentMessage> = rig
        .telegram
        .sent_to(group)
        .into_iter()
        .take_while(|m| m.text != "echo: member question")
        .collect();
    let strangers_first = before.iter().filter(|m| is_stranger_reply(m)).count();
    assert!(
        strangers_first < 10,
        "{strangers_first} strangers' replies went before the member's answer"
    );
    // The strangers are answered too, after it, as the group's limit allows.
    assert!(
        rig.telegram
            .wait_for_sent(is_stranger_reply, PATIENCE)
            .await
            .is_some()
    );
}

async fn a_stranger_writing_three_times_in_an_hour_is_answered_once_and_two_are_counted(
    mode: WorkerMode,
) {
    let stranger = 777_000_321;
    let group = -7171;
    let rig = Rig::start(mode, |_| {}).await;
    let told = rig.ask_in(stranger, stranger, "let me in").await;
    assert!(told.text.contains(&stranger.to_string()), "{}", told.text);
    rig.telegram.send_text(stranger, stranger, "please");
    // The hour is the stranger's, not the chat's.
    rig.telegram
        .send_text(group, stranger, &format!("@{BOT_USERNAME} please"));
    assert!(
        eventually(
            PATIENCE,
            || rig.gateway.status_json()["strangers"]["dropped"] == 2
        )
        .await,
        "{}\n{}",
        rig.gateway.status_json(),
        rig.gateway.log()
    );
    // A member's turn after them: everything before it was handled.
    assert_eq!(rig.ask("still here?").await.text, "echo: still here?");
    assert_eq!(rig.telegram.sent_to(stranger).len(), 1);
    assert!(rig.telegram.sent_to(group).is_empty());
    let (code, out) = rig.gateway.status_command(&[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("strangers: 1 answered, 2 dropped"),
        "status says:\n{out}"
    );
}

async fn a_migrated_groups_waiting_message_is_answered_there_at_once(mode: WorkerMode) {
    let group = -600;
    let supergroup = -1_000_000_000_600;
    let stranger = 5555;
    let rig = Rig::start(mode, |_| {}).await;
    let bot = format!("@{BOT_USERNAME}");
    assert_eq!(
        rig.ask_in(group, USER, &format!("{bot} first")).await.text,
        "echo: first"
    );
    rig.provider
        .push_for("slow", ProviderReply::Delay(Duration::from_secs(3)));
    rig.telegram.send_text(group, USER, &format!("{bot} slow"));
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    // While the job runs, a message waits in the group for the next turn...
    let waiting = rig
        .telegram
        .send_text(group, USER, &format!("{bot} waiting"));
    assert!(rig.telegram.wait_for_ack(waiting, PATIENCE).await);
    // ... the group becomes a supergroup, and a reply sent there (to a stranger) is the
    // first to learn it: the waiting message moves with the group.
    rig.telegram.migrate_chat(group, supergroup);
    rig.telegram
        .send_text(group, stranger, &format!("{bot} let me in"));
    assert!(
        rig.telegram
            .wait_for_sent(is_stranger_reply, PATIENCE)
            .await
            .is_some()
    );
    // The running job's answer, for the group, is held up by flood control: the
    // waiting message's answer, for the supergroup, still goes after it.
    rig.telegram.fail_send(SendFault::RetryAfter(1));
    let answered = rig
        .telegram
        .wait_for_sent(|m| m.text == "echo: waiting", PATIENCE)
        .await;
    assert!(
        answered.is_some(),
        "the moved message was never answered\n{}",
        rig.gateway.log()
    );
    let texts: Vec<String> = rig
        .telegram
        .sent_to(supergroup)
        .into_iter()
        .filter(|m| m.text.starts_with("echo: "))
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts,
        ["echo: slow", "echo: waiting"],
        "in turn order\n{}",
        rig.gateway.log()
    );
    assert_eq!(rig.provider.requests().len(), 3);
}
