//! The messages gateway and worker exchange, in the order they happen:
//!
//! 1. The worker connects and sends a `Hello` (protocol version first, then the one-time
//!    token the gateway gave it); the gateway answers a `Welcome` (both in
//!    [`handshake`](crate::handshake)).
//! 2. The gateway sends [`ToWorker::Job`]; the worker answers with any number of
//!    [`FromWorker::Event`]s and exactly one [`FromWorker::Outcome`], all carrying the job's
//!    [`JobId`] so anything left over from another job is recognised.
//! 3. During a job, before a call to a tool its entry says to confirm, the worker sends
//!    [`FromWorker::Approval`] and waits; the gateway asks the chat and answers with
//!    [`ToWorker::Decision`] (the only thing it ever says during a job).
//! 4. [`ToWorker::Shutdown`] (or the socket closing) ends the worker.
//!
//! A failed job is not an error of the protocol: it is an [`Outcome::Failed`] carrying a
//! [`Failure`], a typed value from where it happened to the sentence the user reads.
//!
//! The types live by subject: `job` (what starts a job), `chat` (the conversation),
//! `events` (progress), `usage` (what a provider call used and cost), `approval` (a call that waits for a person) and `outcome` (how a
//! job ends, its failure classes). This file holds the two envelopes, [`ToWorker`] and
//! [`FromWorker`], and what every message shares; it re-exports the rest, so
//! `hermes_protocol::wire::X` names each type wherever it lives.

use std::fmt;

use serde::{Deserialize, Serialize};

mod approval;
mod chat;
mod events;
mod job;
mod outcome;
mod usage;

pub use approval::{ApprovalRequest, Decision};
pub use chat::{ChatMessage, Role, ToolCall};
pub use events::Event;
pub use job::{Attachment, Confirm, Job, MediaKind, ProviderPlan, ToolServer, TranscriptionPlan};
pub use outcome::{
    BudgetPeriod, CancelReason, CrashCause, Failure, FailureClass, MediaProblem, Outcome, Reply,
};
pub use usage::{Prices, Usage, format_money};

/// Bumped on any change to these types. Leads the first frame so a mismatch is reported as
/// one, not as an undecodable frame.
pub const PROTOCOL_VERSION: u32 = 5;

/// A string that must not end up in logs: API keys, worker tokens.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    Job(Job),
    /// The answer to the job's [`FromWorker::Approval`] `approval`.
    Decision {
        job_id: JobId,
        approval: u64,
        decision: Decision,
    },
    Shutdown,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    Event {
        job_id: JobId,
        event: Event,
    },
    Outcome {
        job_id: JobId,
        outcome: Outcome,
        /// Something of this job may still run in the worker's process group (a tool call
        /// that outlived the deadline): the gateway ends the group before it replies, and
        /// the worker gets no other job.
        retire: bool,
    },
    /// A tool call that needs a user's approval; the tool runs only after a
    /// [`ToWorker::Decision`] that allows it.
    Approval {
        job_id: JobId,
        request: ApprovalRequest,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let plan = ProviderPlan {
            name: "main".into(),
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Some(Secret::new("sk-very-secret")),
            request_timeout_ms: 1,
            max_retries: 0,
            vision: false,
            prices: None,
        };
        assert!(!format!("{plan:?}").contains("sk-very-secret"));
    }

    /// The layout of what version 3 added, byte for byte (version 5 added files sent back): a change to these types without
    /// a new version fails here first (the fix is to bump `PROTOCOL_VERSION` and these
    /// bytes together).
    #[test]
    fn version_3_pins_the_layout_of_approvals_and_tool_servers() {
        let decision = crate::codec::to_bytes(&ToWorker::Decision {
            job_id: JobId(1),
            approval: 2,
            decision: Decision::Denied { by: "A".into() },
        })
        .unwrap();
        let server = crate::codec::to_bytes(&ToolServer {
            confirm: Confirm::Tools(vec!["x".into()]),
            ..ToolServer::new("s", "c", Vec::new())
        })
        .unwrap();
        assert_eq!(
            (PROTOCOL_VERSION, decision, server),
            (
                5,
                vec![1, 1, 2, 1, 1, b'A'],
                vec![
                    1, b's', 1, b'c', 0, 0, 0xb0, 0xea, 0x01, 1, 0, 0, 0, 0, 2, 1, 1, b'x', 0xc0,
                    0xa9, 0x07
                ]
            )
        );
    }

    /// What version 5 added: usage events, prices in a provider's plan, and the budget
    /// failure, byte for byte.
    #[test]
    fn version_5_pins_the_layout_of_usage_prices_and_budgets() {
        let usage = crate::codec::to_bytes(&FromWorker::Event {
            job_id: JobId(1),
            event: Event::Usage {
                provider: "p".into(),
                model: "m".into(),
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    cached_tokens: 1,
                    cost_micros: Some(300),
                },
            },
        })
        .unwrap();
        let prices = crate::codec::to_bytes(&Prices {
            input_micros_per_mtok: 1,
            output_micros_per_mtok: 2,
            cached_micros_per_mtok: 3,
        })
        .unwrap();
        let budget = crate::codec::to_bytes(&Failure::OverBudget {
            everyone: true,
            period: BudgetPeriod::Month,
            cap: "c".into(),
            resets_in_secs: 4,
            time_zone: "z".into(),
        })
        .unwrap();
        assert_eq!(
            (PROTOCOL_VERSION, usage, prices, budget),
            (
                5,
                vec![0, 1, 6, 1, b'p', 1, b'm', 3, 2, 1, 1, 0xac, 0x02],
                vec![1, 2, 3],
                vec![11, 1, 1, 1, b'c', 4, 1, b'z'],
            )
        );
    }
}
