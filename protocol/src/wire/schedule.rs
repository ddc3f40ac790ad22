//! Schedules: reminders and scheduled tasks the model sets up with the worker's built-in
//! tools. Only the gateway keeps schedules, so the worker asks it ([`ScheduleRequest`])
//! and passes its answer ([`ScheduleAnswer`]) to the model as the tool's result. The job
//! says whether the tools are offered at all, and what the model needs to turn "on Monday
//! at 9" into a date: the chat's time zone and its local time now ([`ScheduleOffer`]).

use serde::{Deserialize, Serialize};

/// The schedule tools are offered for this job's chat.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScheduleOffer {
    /// The chat's IANA time zone.
    pub time_zone: String,
    /// The chat's local date and time when the job was prepared (`2026-12-05 15:04,
    /// Saturday`), for the model to count from.
    pub local_now: String,
}

/// What the model asked the schedule tools to do.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ScheduleAction {
    /// A new schedule for the job's chat (and topic): `prompt` is the turn each run asks.
    Create { prompt: String, when: When },
    /// The chat's schedules, with their next runs.
    List,
    /// Ends the chat's schedule `id` (the id `List` and `Create` show).
    Cancel { id: i64 },
}

/// When a schedule runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Once, at a local date and time of the chat's zone (`YYYY-MM-DD HH:MM`).
    At(String),
    /// Once, this many seconds from now.
    After { seconds: u64 },
    /// Again and again: a cron expression (5 fields, minute first) in the chat's zone.
    Cron(String),
}

/// A request of the schedule tools, known within its job by `id`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRequest {
    pub id: u64,
    pub action: ScheduleAction,
}

/// The gateway's answer, which the model reads as the tool's result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScheduleAnswer {
    /// False: refused (a bad time, the chat's bound reached, no such schedule).
    pub ok: bool,
    pub text: String,
}
