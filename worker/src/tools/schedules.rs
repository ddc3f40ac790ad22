//! The built-in schedule tools: `schedule_create`, `schedule_list` and `schedule_cancel`,
//! served by the worker itself (no MCP server), for the job's chat. The worker keeps no
//! schedule: each call becomes a request to the gateway, which alone writes the store, and
//! its answer is the result the model reads. The model does the language ("in 20
//! minutes", "every weekday at 8"): the tools take a delay, a local date-time, or a cron
//! expression, in the chat's time zone, which the descriptions name with the local time
//! now. Their names have no `__`, so no MCP server's tool can take them.

use std::time::Instant;

use hermes_protocol::{ScheduleAction, ScheduleAnswer, ScheduleOffer, When};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::Toolbox;
use super::calls::parse_arguments;

pub const CREATE: &str = "schedule_create";
pub const LIST: &str = "schedule_list";
pub const CANCEL: &str = "schedule_cancel";

/// A schedule tool's call on its way to the gateway, and where the answer goes.
pub struct ScheduleAsk {
    pub action: ScheduleAction,
    pub answer: oneshot::Sender<ScheduleAnswer>,
}

/// Whether `name` is one of these tools.
pub fn is_schedule_tool(name: &str) -> bool {
    matches!(name, CREATE | LIST | CANCEL)
}

/// The three function definitions, with the chat's zone and local time in their text.
pub fn definitions(offer: &ScheduleOffer) -> Vec<Value> {
    let zone = &offer.time_zone;
    let now = &offer.local_now;
    vec![
        json!({"type": "function", "function": {
            "name": CREATE,
            "description": format!(
                "Schedule a reminder or a task for this chat. At each run, `prompt` is given \
                 to you as a new message and your answer is sent to the chat. Give exactly \
                 one of: `in_seconds` (once, after a delay), `at` (once, at a local date and \
                 time \"YYYY-MM-DD HH:MM\"), or `cron` (repeating; 5 fields: minute hour \
                 day-of-month month day-of-week, e.g. \"0 8 * * *\" for every day at 8:00). \
                 Times are in the chat's time zone, {zone}; it is now {now} there."),
            "parameters": {"type": "object", "properties": {
                "prompt": {"type": "string", "description": "What to do or say at each run, written as the user's request (\"Remind me to call Ann\")."},
                "in_seconds": {"type": "integer", "minimum": 1},
                "at": {"type": "string", "description": "Local date and time, YYYY-MM-DD HH:MM"},
                "cron": {"type": "string"},
            }, "required": ["prompt"]},
        }}),
        json!({"type": "function", "function": {
            "name": LIST,
            "description": format!("List this chat's schedules with their ids and next runs ({zone})."),
            "parameters": {"type": "object", "properties": {}},
        }}),
        json!({"type": "function", "function": {
            "name": CANCEL,
            "description": "Cancel one of this chat's schedules by its id (see schedule_list).",
            "parameters": {"type": "object", "properties": {
                "id": {"type": "integer"},
            }, "required": ["id"]},
        }}),
    ]
}

/// What the model's arguments ask for, or the error result it reads instead.
pub fn action(name: &str, arguments: &str) -> Result<ScheduleAction, String> {
    let args = parse_arguments(arguments)?;
    match name {
        LIST => Ok(ScheduleAction::List),
        CANCEL => match args.get("id").and_then(Value::as_i64) {
            Some(id) => Ok(ScheduleAction::Cancel { id }),
            None => Err("error: `id` (an integer) is required.".into()),
        },
        _ => {
            let prompt = args
                .get("prompt")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .ok_or("error: `prompt` (a non-empty string) is required.")?;
            let delay = args.get("in_seconds").and_then(Value::as_u64);
            let at = args.get("at").and_then(Value::as_str);
            let cron = args.get("cron").and_then(Value::as_str);
            let when = match (delay, at, cron) {
                (Some(seconds), None, None) => When::After { seconds },
                (None, Some(at), None) => When::At(at.trim().to_string()),
                (None, None, Some(cron)) => When::Cron(cron.trim().to_string()),
                _ => {
                    return Err(
                        "error: give exactly one of `in_seconds` (a positive integer), \
                                `at` or `cron`."
                            .into(),
                    );
                }
            };
            Ok(ScheduleAction::Create {
                prompt: prompt.to_string(),
                when,
            })
        }
    }
}

impl Toolbox {
    /// Runs a schedule tool's call through the gateway: `(ok, result text)`.
    pub(super) async fn schedule_call(
        &self,
        name: &str,
        arguments: &str,
        deadline: Instant,
    ) -> (bool, String) {
        let action = match action(name, arguments) {
            Ok(action) => action,
            Err(problem) => return (false, problem),
        };
        let Some(asks) = self.schedules.as_ref().filter(|_| self.offer.is_some()) else {
            return (
                false,
                "error: schedules are not available here.".to_string(),
            );
        };
        let (answer, answered) = oneshot::channel();
        if asks.send(ScheduleAsk { action, answer }).is_err() {
            return (false, "error: the gateway could not be asked.".to_string());
        }
        match tokio::time::timeout_at(deadline.into(), answered).await {
            Ok(Ok(answer)) => {
                let text = if answer.ok {
                    answer.text
                } else {
                    format!("error: {}", answer.text)
                };
                (answer.ok, text)
            }
            Ok(Err(_)) => (false, "error: the gateway did not answer.".to_string()),
            Err(_) => (
                false,
                "error: the time for this answer ran out waiting for the gateway.".to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_become_actions_or_errors_the_model_reads() {
        assert_eq!(
            action(CREATE, r#"{"prompt": "tea", "in_seconds": 60}"#),
            Ok(ScheduleAction::Create {
                prompt: "tea".into(),
                when: When::After { seconds: 60 }
            })
        );
        assert_eq!(
            action(CREATE, r#"{"prompt": "tea", "cron": "0 8 * * *"}"#),
            Ok(ScheduleAction::Create {
                prompt: "tea".into(),
                when: When::Cron("0 8 * * *".into())
            })
        );
        assert!(action(CREATE, r#"{"prompt": "tea"}"#).is_err());
        assert!(action(CREATE, r#"{"prompt": "tea", "at": "x", "cron": "y"}"#).is_err());
        assert_eq!(
            action(CANCEL, r#"{"id": 3}"#),
            Ok(ScheduleAction::Cancel { id: 3 })
        );
        assert_eq!(action(LIST, ""), Ok(ScheduleAction::List));
    }
}
