//! Updates and how the bot polls for them: queuing what users do, `getUpdates` with its
//! `offset` (an answer does not consume updates, only a later offset acknowledges them),
//! `limit`, `timeout` (a long poll held until an update arrives, then briefly for more, as
//! the Bot API server does, and ended with 409 by a newer one) and `allowed_updates` (kept
//! from call to call; updates of other kinds are never queued), and the webhook that makes
//! `getUpdates` answer 409.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    FakeTelegram, Inner, PollFault, Response, State, api_error, as_i64,
    faults::poll_fault_response, ok,
};

/// Telegram caps long polls at 50 seconds.
const MAX_POLL_TIMEOUT_SECS: i64 = 50;

/// The Bot API server answers the first conflict at once and later ones, within this
/// time of it, only after this time (telegram-bot-api's `fail_query_conflict`), so two
/// instances fighting over one token do not spin.
const CONFLICT_THROTTLE: Duration = Duration::from_secs(3);

/// A long poll that an update wakes is answered once no other update came for this long,
/// and at the latest [`GATHER_AT_MOST`] after the first (telegram-bot-api's
/// `LONG_POLL_WAIT_AFTER` and `LONG_POLL_MAX_DELAY`, `long_poll_wakeup`): updates that
/// arrive together are answered together. A fake that answered each at once made a bot
/// that re-polls quickly take about one update a poll where Telegram hands it several.
const GATHER_QUIET: Duration = Duration::from_millis(1);
const GATHER_AT_MOST: Duration = Duration::from_millis(2);

const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

const WEBHOOK_CONFLICT: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";

/// Update kinds a bot gets when it never set `allowed_updates` or set an empty list
/// (Bot API, `getUpdates`): every kind but these.
const NOT_BY_DEFAULT: [&str; 3] = ["chat_member", "message_reaction", "message_reaction_count"];

/// How one `getUpdates` request ended (so far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Still long-polling, or the client left before an answer.
    Waiting,
    /// Answered `ok` (possibly with no updates).
    Answered,
    /// A scripted fault was served.
    Fault(PollFault),
    /// Hung because of [`FakeTelegram::stall_get_updates`].
    Stalled,
    /// Ended with 409 because a newer `getUpdates` arrived while this one waited.
    Conflict,
    /// Refused with 409 because a webhook is set.
    Webhook,
}

/// One `getUpdates` request, logged when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRecord {
    pub at: Instant,
    pub offset: Option<i64>,
    /// The requested long-poll timeout in seconds, as sent.
    pub timeout: Option<i64>,
    pub answered_ids: Vec<i64>,
    pub outcome: PollOutcome,
}

impl FakeTelegram {
    /// Numbers updates anew from `next`, as Telegram does after a week without updates (a
    /// random start, maybe lower than every id before and reusing them) and a local Bot
    /// API server does when it restarts (from 1). What was acknowledged belongs to the
    /// old sequence and is forgotten with it.
    pub fn restart_update_ids(&self, next: i64) {
        let mut g = self.state.lock();
        g.last_update_id = next - 1;
        g.acked_up_to = 0;
    }

    /// Queue a raw update object; its `update_id` is set by the fake. Returns the update id.
    ///
    /// As on Telegram, an update of a kind the bot's last `allowed_updates` excludes is
    /// never queued: it goes to [`FakeTelegram::withheld_updates`] (its id is still used).
    pub fn push_update(&self, mut update: Value) -> i64 {
        let mut g = self.state.lock();
        g.last_update_id += 1;
        let id = g.last_update_id;
        if let Some(chat) = update
            .as_object()
            .and_then(|u| u.values().find_map(|v| v.get("chat")))
            .and_then(|c| Some((c.get("id")?.as_i64()?, c.clone())))
        {
            g.chats.insert(chat.0, chat.1);
        }
        update["update_id"] = json!(id);
        g.remember(&update);
        if g.allows(&update) {
            g.pending.push_back((id, update));
        } else {
            g.withheld.push(update);
        }
        drop(g);
        self.state.bump();
        id
    }

    /// Updates that were never queued because the bot's `allowed_updates` excluded their
    /// kind when they happened.
    pub fn withheld_updates(&self) -> Vec<Value> {
        self.state.lock().withheld.clone()
    }

    /// The update kinds the bot last asked for in `getUpdates` (`None`: never asked).
    pub fn allowed_updates(&self) -> Option<Vec<String>> {
        self.state.lock().allowed_updates.clone()
    }

    /// Ids of updates not yet acknowledged.
    pub fn pending_update_ids(&self) -> Vec<i64> {
        self.state
            .lock()
            .pending
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// When `update_id` was first handed to the gateway by a `getUpdates` answer.
    pub fn served_at(&self, update_id: i64) -> Option<Instant> {
        self.state.lock().served.get(&update_id).copied()
    }

    /// Highest update id the client acknowledged through `offset` (0 if none).
    pub fn acked_up_to(&self) -> i64 {
        self.state.lock().acked_up_to
    }

    /// Sets a webhook on the token, as another framework using it would: `getUpdates`
    /// answers 409 until it is deleted, and a long poll waiting now ends with that 409.
    pub fn set_webhook(&self, url: &str) {
        self.state.lock().webhook = Some(url.to_string());
        self.state.bump();
    }

    /// The webhook set on the token.
    pub fn webhook(&self) -> Option<String> {
        self.state.lock().webhook.clone()
    }

    pub fn get_updates_log(&self) -> Vec<PollRecord> {
        self.state.lock().polls.clone()
    }

    /// Wait until at least `n` `getUpdates` requests arrived.
    pub async fn wait_for_polls(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.polls.len() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Wait until the client acknowledged `update_id` (sent an offset above it).
    pub async fn wait_for_ack(&self, update_id: i64, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.acked_up_to >= update_id).then_some(()))
            .await
            .is_some()
    }
}

impl State {
    pub(super) async fn get_updates(&self, params: &Value) -> Response {
        let offset = params.get("offset").and_then(as_i64);
        let timeout = params.get("timeout").and_then(as_i64);
        let limit = params
            .get("limit")
            .and_then(as_i64)
            .unwrap_or(100)
            .clamp(1, 100) as usize;
        let allowed = match params.get("allowed_updates").map(update_kinds) {
            Some(Ok(kinds)) => Some(kinds),
            Some(Err(())) => {
                return api_error(
                    400,
                    "Bad Request: can't parse allowed_updates JSON array",
                    None,
                );
            }
            None => None,
        };
        let wait = Duration::from_secs(timeout.unwrap_or(0).clamp(0, MAX_POLL_TIMEOUT_SECS) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.changed.subscribe();

        let (index, early) = {
            let mut g = self.lock();
            let index = g.polls.len();
            g.polls.push(PollRecord {
                at: Instant::now(),
                offset,
                timeout,
                answered_ids: Vec::new(),
                outcome: PollOutcome::Waiting,
            });
            let early = if let Some(fault) = g.poll_faults.pop_front() {
                g.polls[index].outcome = PollOutcome::Fault(fault.clone());
                Some(poll_fault_response(fault))
            } else if g.webhook.is_some() {
                g.polls[index].outcome = PollOutcome::Webhook;
                Some(api_error(409, WEBHOOK_CONFLICT, None))
            } else if g.stalled {
                g.polls[index].outcome = PollOutcome::Stalled;
                Some(Response::Hang)
            } else {
                if let Some(offset) = offset {
                    g.acknowledge(offset);
                }
                // Kept for later calls; it does not touch updates already queued.
                if let Some(kinds) = allowed {
                    g.allowed_updates = Some(kinds);
                }
                // A poll that is going to wait ends the one already waiting, as
                // telegram-bot-api's `do_get_updates` does: the newest consumer wins.
                if !wait.is_zero()
                    && g.pending.is_empty()
                    && let Some(old) = g.long_poll.replace(index)
                {
                    g.polls[old].outcome = PollOutcome::Conflict;
                    g.terminated.insert(old);
                }
                None
            };
            (index, early)
        };
        self.bump();
        if let Some(response) = early {
            return response;
        }
        // However this poll ends (answered, or its client gone), it waits no longer.
        let _waiting = LongPollGuard { state: self, index };
        let mut answer_when = AnswerWhen::Arrived;

        loop {
            let conflict = {
                let mut g = self.lock();
                if g.terminated.remove(&index) {
                    let now = Instant::now();
                    let delay = match g.conflict_quiet_until {
                        Some(until) if until > now => CONFLICT_THROTTLE,
                        _ => Duration::ZERO,
                    };
                    g.conflict_quiet_until = Some(now + delay + CONFLICT_THROTTLE);
                    Some(delay)
                } else {
                    None
                }
            };
            if let Some(delay) = conflict {
                tokio::time::sleep(delay).await;
                return Response::json(409, &conflict_body());
            }
            {
                let mut g = self.lock();
                if g.stalled {
                    g.polls[index].outcome = PollOutcome::Stalled;
                    return Response::Hang;
                }
                if g.webhook.is_some() {
                    g.polls[index].outcome = PollOutcome::Webhook;
                    return api_error(409, WEBHOOK_CONFLICT, None);
                }
                let batch: Vec<Value> = g
                    .pending
                    .iter()
                    .take(limit)
                    .map(|(_, u)| u.clone())
                    .collect();
                let now = tokio::time::Instant::now();
                if answer_when.now(batch.len(), now, deadline) {
                    g.polls[index].answered_ids = batch
                        .iter()
                        .filter_map(|u| u["update_id"].as_i64())
                        .collect();
                    let now = Instant::now();
                    for id in g.polls[index].answered_ids.clone() {
                        g.served.entry(id).or_insert(now);
                    }
                    g.polls[index].outcome = PollOutcome::Answered;
                    drop(g);
                    self.bump();
                    return ok(Value::Array(batch));
                }
            }
            // On timeout the loop comes round once more and answers with what there is.
            let until = answer_when.at().unwrap_or(deadline);
            let _ = tokio::time::timeout_at(until, rx.changed()).await;
        }
    }

    /// `setWebhook`: an https URL, as Telegram requires.
    pub(super) fn set_webhook_call(&self, params: &Value) -> Response {
        let url = params.get("url").and_then(Value::as_str).unwrap_or("");
        if url.is_empty() {
            self.lock().webhook = None;
            return ok(json!(true));
        }
        if !url.starts_with("https://") {
            return api_error(
                400,
                "Bad Request: bad webhook: HTTPS url must be provided for webhook",
                None,
            );
        }
        self.lock().webhook = Some(url.to_string());
        self.bump();
        ok(json!(true))
    }

    /// `deleteWebhook`, dropping the updates Telegram holds only when asked to.
    pub(super) fn delete_webhook(&self, params: &Value) -> Response {
        let drop_pending = matches!(params.get("drop_pending_updates"), Some(Value::Bool(true)))
            || params.get("drop_pending_updates").and_then(Value::as_str) == Some("true");
        let mut g = self.lock();
        g.webhook = None;
        if drop_pending {
            let last = g.pending.back().map(|(id, _)| *id);
            g.pending.clear();
            if let Some(last) = last {
                g.acked_up_to = g.acked_up_to.max(last);
            }
        }
        drop(g);
        self.bump();
        ok(json!(true))
    }
}

/// When a `getUpdates` that found updates answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerWhen {
    /// The poll has just arrived: what is queued now is answered at once.
    Arrived,
    /// The poll waited, and nothing has come yet.
    Waiting,
    /// Updates woke it: it answers `at`, `GATHER_QUIET` after the last of the `seen` it
    /// has found and no later than `GATHER_AT_MOST` after the first.
    Gathering {
        at: tokio::time::Instant,
        seen: usize,
        latest: tokio::time::Instant,
    },
}

impl AnswerWhen {
    /// Whether a poll that finds `pending` updates at `now` answers now (it always does
    /// at its `deadline`); from the next check on, it is a waiting one.
    fn now(
        &mut self,
        pending: usize,
        now: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> bool {
        let answer = match *self {
            _ if now >= deadline => true,
            _ if pending == 0 => false,
            AnswerWhen::Arrived => true,
            AnswerWhen::Waiting => {
                let latest = deadline.min(now + GATHER_AT_MOST);
                *self = AnswerWhen::Gathering {
                    at: latest.min(now + GATHER_QUIET),
                    seen: pending,
                    latest,
                };
                false
            }
            AnswerWhen::Gathering {
                ref mut at,
                ref mut seen,
                latest,
            } => {
                if pending > *seen {
                    *seen = pending;
                    *at = latest.min(now + GATHER_QUIET);
                }
                now >= *at
            }
        };
        if *self == AnswerWhen::Arrived {
            *self = AnswerWhen::Waiting;
        }
        answer
    }

    /// When a gathering poll answers, if it is one.
    fn at(&self) -> Option<tokio::time::Instant> {
        match self {
            AnswerWhen::Gathering { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Clears [`Inner::long_poll`] when the poll it names stops waiting, however it stops.
struct LongPollGuard<'a> {
    state: &'a State,
    index: usize,
}

impl Drop for LongPollGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.state.lock();
        if g.long_poll == Some(self.index) {
            g.long_poll = None;
        }
        g.terminated.remove(&self.index);
    }
}

impl Inner {
    /// Apply a `getUpdates` offset: Telegram forgets every update below a positive offset,
    /// and all but the last `-offset` updates for a negative one.
    fn acknowledge(&mut self, offset: i64) {
        if offset > 0 {
            self.pending.retain(|(id, _)| *id >= offset);
            self.acked_up_to = self.acked_up_to.max(offset - 1);
        } else if offset < 0 {
            let keep = offset.unsigned_abs() as usize;
            while self.pending.len() > keep {
                if let Some((id, _)) = self.pending.pop_front() {
                    self.acked_up_to = self.acked_up_to.max(id);
                }
            }
        }
    }

    /// Whether Telegram would queue `update` for this bot now.
    fn allows(&self, update: &Value) -> bool {
        let Some(kind) = update
            .as_object()
            .and_then(|u| u.keys().find(|k| *k != "update_id"))
        else {
            return true;
        };
        match &self.allowed_updates {
            Some(kinds) if !kinds.is_empty() => kinds.iter().any(|k| k == kind),
            _ => !NOT_BY_DEFAULT.contains(&kind.as_str()),
        }
    }
}

/// `allowed_updates` as a list of kinds: a JSON array, or JSON text of one (forms).
fn update_kinds(value: &Value) -> Result<Vec<String>, ()> {
    let list = match value {
        Value::Array(list) => list.clone(),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(list)) => list,
            _ => return Err(()),
        },
        _ => return Err(()),
    };
    Ok(list
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect())
}

pub(super) fn conflict_body() -> Value {
    json!({"ok": false, "error_code": 409, "description": CONFLICT})
}

#[cfg(test)]
mod tests {
    use super::super::tests::{T, bot};
    use super::super::*;
    use super::AnswerWhen;
    use teloxide_core::{
        ApiError, RequestError, payloads::GetUpdatesSetters, prelude::Requester,
        types::AllowedUpdate,
    };

    #[tokio::test]
    async fn long_poll_waits_for_a_push() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let poll = tokio::spawn({
            let bot = bot.clone();
            async move { bot.get_updates().timeout(10).await }
        });
        assert!(fake.wait_for_polls(1, T).await);
        assert_eq!(fake.get_updates_log()[0].outcome, PollOutcome::Waiting);
        let id = fake.send_text(1, 1, "late");
        let updates = tokio::time::timeout(T, poll)
            .await
            .expect("long poll answered on push")
            .unwrap()
            .unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id.0 as i64, id);
    }

    #[test]
    fn a_woken_poll_gathers_what_comes_within_a_millisecond_for_two_at_most() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_micros(n * 1000);
        let deadline = ms(30_000);
        let mut arrived = AnswerWhen::Arrived;
        assert!(
            arrived.now(3, t0, deadline),
            "queued before the poll: at once"
        );
        let mut waiting = AnswerWhen::Arrived;
        assert!(!waiting.now(0, t0, deadline));
        assert!(
            !waiting.now(1, ms(10), deadline),
            "the first update wakes it"
        );
        assert_eq!(waiting.at(), Some(ms(11)));
        assert!(!waiting.now(2, t0 + Duration::from_micros(10_500), deadline));
        assert_eq!(waiting.at(), Some(t0 + Duration::from_micros(11_500)));
        assert!(!waiting.now(3, t0 + Duration::from_micros(11_400), deadline));
        assert_eq!(waiting.at(), Some(ms(12)), "2 ms after the first at most");
        assert!(waiting.now(3, ms(12), deadline));
        // A poll whose own deadline comes first answers then.
        let mut late = AnswerWhen::Waiting;
        assert!(!late.now(1, ms(29_999), deadline));
        assert_eq!(late.at(), Some(deadline));
        assert!(late.now(1, deadline, deadline));
    }

    #[tokio::test]
    async fn allowed_updates_are_kept_and_other_kinds_never_queued() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let callback = || json!({"callback_query": {"id": "1", "from": {"id": 7, "is_bot": false, "first_name": "T"}, "chat_instance": "c"}});
        // Before any setting: every kind but the member and reaction ones.
        let early_callback = fake.push_update(callback());
        fake.push_update(json!({"message_reaction": {}}));
        assert_eq!(fake.withheld_updates().len(), 1);
        let updates = bot
            .get_updates()
            .allowed_updates([AllowedUpdate::Message])
            .timeout(0)
            .await
            .unwrap();
        // The setting does not touch updates that came before it.
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id.0 as i64, early_callback);
        assert_eq!(fake.allowed_updates(), Some(vec!["message".to_string()]));
        // From now on a callback query is never queued, even for polls that do not say.
        fake.push_update(callback());
        let message = fake.send_text(7, 7, "hi");
        let updates = bot
            .get_updates()
            .offset(early_callback as i32 + 1)
            .timeout(0)
            .await
            .unwrap();
        let ids: Vec<i64> = updates.iter().map(|u| u.id.0 as i64).collect();
        assert_eq!(ids, [message]);
        assert_eq!(fake.withheld_updates().len(), 2);
        // An empty list is the default again.
        bot.get_updates()
            .allowed_updates([])
            .offset(message as i32 + 1)
            .timeout(0)
            .await
            .unwrap();
        let again = fake.push_update(callback());
        assert_eq!(fake.pending_update_ids(), [again]);
    }

    #[tokio::test]
    async fn a_newer_long_poll_ends_the_waiting_one_with_409() {
        let fake = FakeTelegram::start().await;
        let first = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().timeout(30).await }
        });
        assert!(fake.wait_for_polls(1, T).await);
        let second = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().timeout(30).await }
        });
        let err = tokio::time::timeout(T, first)
            .await
            .expect("the older poll is answered at once")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::Api(ApiError::TerminatedByOtherGetUpdates)
            ),
            "{err:?}"
        );
        assert_eq!(fake.get_updates_log()[0].outcome, PollOutcome::Conflict);
        // The newer one is the consumer now.
        let id = fake.send_text(1, 1, "to the survivor");
        let updates = tokio::time::timeout(T, second)
            .await
            .expect("the newer poll still waits for updates")
            .unwrap()
            .unwrap();
        assert_eq!(updates[0].id.0 as i64, id);

        // A poll whose client left is no longer waiting: the next one meets no conflict.
        let gone = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().offset(id as i32 + 1).timeout(30).await }
        });
        assert!(fake.wait_for_polls(3, T).await);
        assert!(fake.server().wait_for_open_connections(1, T).await);
        gone.abort();
        assert!(fake.server().wait_for_open_connections(0, T).await);
        let quick = bot(&fake).get_updates().timeout(1).await;
        assert!(quick.unwrap().is_empty());
        assert_eq!(fake.get_updates_log()[2].outcome, PollOutcome::Waiting);
    }

    #[tokio::test]
    async fn a_long_poll_with_nothing_queued_is_held_for_its_timeout() {
        let fake = FakeTelegram::start().await;
        let started = Instant::now();
        let updates = bot(&fake).get_updates().timeout(1).await.unwrap();
        assert!(updates.is_empty());
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "answered after {:?}",
            started.elapsed()
        );
        let times = fake.call_times("getUpdates");
        assert_eq!(times.len(), 1);
        assert!(times[0] <= fake.get_updates_log()[0].at);
    }
}
