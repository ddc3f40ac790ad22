//! The chat's side of schedules: `/schedules` lists them with their next run and a
//! cancel button each, `/timezone` shows or sets the zone they are read in.
//!
//! The list is sent with its buttons directly (like an approval question), not through
//! the outbox, which keeps text only: should it fail, the list goes through the outbox
//! without buttons. A press arrives as a callback query (`sc:ID`); only an allowed user's
//! counts, and only for a schedule of the chat the pressed message is in, so a client
//! that forges the data of a press can cancel nothing of another chat's. The list is then
//! shown again, with the buttons of what is left.

use teloxide_core::types::{CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup};

use super::{Schedules, times};
use crate::settings::LiveSettings;
use crate::store::ScheduleRow;
use crate::telegram::sender::{Sender, plain_pieces};
use crate::topics::Place;

/// Prefix of the cancel buttons' callback data.
pub const DATA_PREFIX: &str = "sc:";
/// Buttons a list carries at most (Telegram allows 100; a chat has at most
/// `max_per_chat` schedules anyway).
const MAX_BUTTONS: usize = 50;

pub const NO_SCHEDULES: &str =
    "This chat has no schedules. Ask me to remind you of something, or to do something every day.";

/// One schedule as a line: `#3 · every 0 8 * * * · next 2026-12-06 08:00 (Sun) — Remind me…`.
pub fn line(s: &ScheduleRow) -> String {
    let zone = times::zone(&s.time_zone);
    let how = match &s.cron {
        Some(expr) => format!("repeats ({expr})"),
        None => "once".to_string(),
    };
    let next = s
        .next_at
        .map(|at| times::show(at, zone))
        .unwrap_or_else(|| "none".into());
    let prompt: String = s.prompt.chars().take(80).collect();
    let more = if s.prompt.chars().count() > 80 {
        "…"
    } else {
        ""
    };
    format!(
        "#{} · {how} · next {next} {} — {prompt}{more}",
        s.id, s.time_zone
    )
}

/// The chat's list, and its buttons (None when it has no schedule).
pub fn list(schedules: &Schedules, chat: i64) -> (String, Option<InlineKeyboardMarkup>) {
    let rows = match schedules.inner.store.schedules(Some(chat)) {
        Ok(rows) => rows,
        Err(e) => return (super::store_trouble(e), None),
    };
    if rows.is_empty() {
        return (NO_SCHEDULES.to_string(), None);
    }
    let mut text = format!("Schedules of this chat ({}):", schedules.zone_of(chat));
    for s in &rows {
        text.push('\n');
        text.push_str(&line(s));
    }
    let buttons: Vec<Vec<InlineKeyboardButton>> = rows
        .iter()
        .take(MAX_BUTTONS)
        .map(|s| {
            vec![InlineKeyboardButton::callback(
                format!("Cancel #{}", s.id),
                format!("{DATA_PREFIX}{}", s.id),
            )]
        })
        .collect();
    (text, Some(InlineKeyboardMarkup::new(buttons)))
}

/// `/timezone` alone shows the chat's zone; with a name, sets it (for schedules made
/// from now on, and for what the model is told).
pub fn time_zone(schedules: &Schedules, chat: i64, name: Option<&str>) -> String {
    let Some(name) = name else {
        return format!(
            "Schedules in this chat use the time zone {}. Change it with /timezone followed by a name such as Europe/Berlin.",
            schedules.zone_of(chat)
        );
    };
    if !hermes_config::valid_time_zone(name) {
        return format!(
            "{name} is not a time zone name. Use a name such as UTC, Europe/Berlin or America/New_York."
        );
    }
    let zone = times::zone(name).name().to_string();
    match schedules.inner.store.set_chat_time_zone(chat, &zone) {
        Ok(()) => format!(
            "This chat's time zone is now {zone}. Schedules made from now on use it; existing ones keep theirs."
        ),
        Err(e) => super::store_trouble(e),
    }
}

/// Whether a callback query's data is a schedule button's.
pub fn is_ours(query: &CallbackQuery) -> bool {
    query
        .data
        .as_deref()
        .is_some_and(|d| d.starts_with(DATA_PREFIX))
}

/// A cancel button was pressed. Never blocks the poller: handled on its own task.
pub fn on_callback(
    schedules: Schedules,
    sender: Sender,
    settings: LiveSettings,
    query: CallbackQuery,
) {
    tokio::spawn(async move { pressed(&schedules, &sender, &settings, query).await });
}

async fn pressed(
    schedules: &Schedules,
    sender: &Sender,
    settings: &LiveSettings,
    query: CallbackQuery,
) {
    let id = query
        .data
        .as_deref()
        .and_then(|d| d.strip_prefix(DATA_PREFIX))
        .and_then(|id| id.parse::<i64>().ok());
    let message = query.message.as_ref().map(|m| (m.chat().id.0, m.id()));
    let (Some(id), Some((chat, message))) = (id, message) else {
        sender.answer_callback(&query.id, None).await;
        return;
    };
    if !settings.get().allowed.contains(&query.from.id.0) {
        tracing::info!(
            user_id = query.from.id.0,
            "a user not in telegram.allowed_users pressed a schedule's cancel button"
        );
        sender
            .answer_callback(
                &query.id,
                Some("Only the bot's users can cancel schedules."),
            )
            .await;
        return;
    }
    let answer = match schedules.inner.store.cancel_schedule(chat, id) {
        Ok(true) => {
            tracing::info!(
                chat_id = chat,
                schedule = id,
                user_id = query.from.id.0,
                "schedule cancelled with its button"
            );
            format!("Schedule #{id} cancelled.")
        }
        Ok(false) => format!("Schedule #{id} is already over."),
        Err(e) => super::store_trouble(e),
    };
    sender.answer_callback(&query.id, Some(&answer)).await;
    let (text, keyboard) = list(schedules, chat);
    let Some(piece) = plain_pieces(&text).into_iter().next() else {
        return;
    };
    if sender.replace_once(chat, message, &piece).await.is_err() {
        sender.remove_keyboard(chat, message).await;
        return;
    }
    if let Some(keyboard) = keyboard {
        sender.set_keyboard(chat, message, keyboard).await;
    }
}

/// Sends the chat's list with its buttons; false when that failed (the caller then
/// replies with the text alone, through the outbox).
pub async fn show(schedules: &Schedules, sender: &Sender, place: Place) -> Result<(), String> {
    let chat = place.chat;
    let (text, keyboard) = list(schedules, chat);
    let Some(keyboard) = keyboard else {
        return Err(text);
    };
    let Some(piece) = plain_pieces(&text).into_iter().next() else {
        return Err(text);
    };
    match sender.send_with_buttons(place, &piece, &keyboard).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(
                chat_id = chat,
                "cannot send the schedules with their buttons ({e:?}); sending the text alone"
            );
            Err(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_schedule_its_next_run_and_its_prompt() {
        let s = ScheduleRow {
            id: 3,
            chat_id: 1,
            thread_id: None,
            user_id: 1,
            prompt: "Remind me to water the plants".into(),
            cron: Some("0 8 * * *".into()),
            time_zone: "UTC".into(),
            next_at: Some(1_796_544_000),
        };
        assert_eq!(
            line(&s),
            "#3 · repeats (0 8 * * *) · next 2026-12-06 08:00 (Sun) UTC — Remind me to water the plants"
        );
    }
}
