//! A tool call that waits for a person: what the worker asks the gateway
//! ([`ApprovalRequest`]) and what the gateway answers ([`Decision`]).

use serde::{Deserialize, Serialize};

/// A tool call waiting for a user's approval.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Unique within the job; the decision names it.
    pub id: u64,
    /// The tool as the user knows it: `server.tool`.
    pub tool: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// No answer within this counts as a denial.
    pub timeout_ms: u64,
}

/// What became of an [`ApprovalRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An allowed user of the chat pressed Allow; `by` names them.
    Allowed { by: String },
    /// An allowed user of the chat pressed Deny.
    Denied { by: String },
    /// Nobody answered within the request's timeout.
    TimedOut,
    /// The chat could not be asked (the prompt could not be sent).
    Unavailable { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FromWorker, JobId, ToWorker};

    /// Both new messages of version 3 travel whole, each its own way, over one socket
    /// pair: the worker asks, the gateway decides.
    #[tokio::test]
    async fn an_approval_goes_to_the_gateway_and_its_decision_back_to_the_worker() {
        use crate::Connection;
        let (a, b) = tokio::io::duplex(4096);
        let (mut worker, mut gateway) = (Connection::new(a), Connection::new(b));
        let asked = FromWorker::Approval {
            job_id: JobId(7),
            request: ApprovalRequest {
                id: 1,
                tool: "shell.run".into(),
                arguments: r#"{"command": "rm -rf /"}"#.into(),
                timeout_ms: 120_000,
            },
        };
        worker.write_frame(&asked).await.unwrap();
        assert_eq!(gateway.read_frame::<FromWorker>().await.unwrap(), asked);
        for decision in [
            Decision::Allowed { by: "Ann".into() },
            Decision::Denied { by: "Ann".into() },
            Decision::TimedOut,
            Decision::Unavailable {
                reason: "Telegram refused the prompt".into(),
            },
        ] {
            let answer = ToWorker::Decision {
                job_id: JobId(7),
                approval: 1,
                decision,
            };
            gateway.write_frame(&answer).await.unwrap();
            assert_eq!(worker.read_frame::<ToWorker>().await.unwrap(), answer);
        }
    }
}
