//! A job's outcome as the frame that carries it to the gateway, within the frame size cap:
//! a transcript too large for one frame is shortened rather than lose the answer.

use hermes_protocol::frame::{FrameError, encode};
use hermes_protocol::{ChatMessage, FromWorker, JobId, Outcome, Reply, Role};

/// The outcome as a frame the gateway accepts: a transcript too large for one frame
/// (many long tool results) is shortened rather than lose the answer: first each long
/// tool result is cut, then, if that is not enough, only the answer is kept.
pub fn fit(job_id: JobId, outcome: Outcome) -> FromWorker {
    let mut reply = match check(job_id, outcome) {
        Fit::Sendable(message) => return message,
        Fit::TooBig(reply) => reply,
    };
    tracing::warn!("the transcript of {job_id} does not fit one frame; shortening tool results");
    for m in &mut reply.transcript {
        if m.role == Role::Tool && m.content.chars().count() > 500 {
            let head: String = m.content.chars().take(500).collect();
            m.content = format!("{head}\n[… cut: the result was too long to keep]");
        }
    }
    let mut reply = match check(job_id, Outcome::Reply(reply)) {
        Fit::Sendable(message) => return message,
        Fit::TooBig(reply) => reply,
    };
    reply.transcript = vec![ChatMessage::new(Role::Assistant, reply.text.clone())];
    outcome_frame(job_id, Outcome::Reply(reply))
}

enum Fit {
    Sendable(FromWorker),
    /// A reply whose frame would pass the size cap.
    TooBig(Reply),
}

fn check(job_id: JobId, outcome: Outcome) -> Fit {
    let message = outcome_frame(job_id, outcome);
    if !matches!(encode(&message), Err(FrameError::Oversized { .. })) {
        return Fit::Sendable(message);
    }
    match message {
        FromWorker::Outcome {
            outcome: Outcome::Reply(reply),
            ..
        } => Fit::TooBig(reply),
        // Failures are a few short strings; one cannot reach the cap.
        other => Fit::Sendable(other),
    }
}

fn outcome_frame(job_id: JobId, outcome: Outcome) -> FromWorker {
    FromWorker::Outcome {
        job_id,
        outcome,
        retire: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(results: usize, result_len: usize, answer_len: usize) -> Outcome {
        let mut transcript = Vec::new();
        for i in 0..results {
            transcript.push(ChatMessage::tool_result(
                format!("c{i}"),
                "x".repeat(result_len),
            ));
        }
        let text = "a".repeat(answer_len);
        transcript.push(ChatMessage::new(Role::Assistant, text.clone()));
        Outcome::Reply(Reply {
            text,
            provider: "p".into(),
            model: "m".into(),
            transcript,
            heard: Vec::new(),
            files: Vec::new(),
        })
    }

    fn transcript(message: &FromWorker) -> &[ChatMessage] {
        match message {
            FromWorker::Outcome {
                outcome: Outcome::Reply(reply),
                ..
            } => &reply.transcript,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outcomes_that_fit_are_sent_as_they_are() {
        let outcome = reply(3, 1000, 10);
        let message = fit(JobId(1), outcome.clone());
        assert_eq!(
            message,
            FromWorker::Outcome {
                job_id: JobId(1),
                outcome,
                retire: false,
            }
        );
    }

    #[test]
    fn oversized_transcripts_lose_tool_output_before_the_answer() {
        // 20 results of 300 kB: over the 4 MiB frame cap.
        let message = fit(JobId(1), reply(20, 300_000, 10));
        assert!(encode(&message).is_ok());
        let kept = transcript(&message);
        assert_eq!(kept.len(), 21);
        assert!(kept[0].content.ends_with("too long to keep]"));

        // Too many results even when cut: only the answer is kept.
        let message = fit(JobId(1), reply(20_000, 600, 10));
        assert!(encode(&message).is_ok());
        assert_eq!(transcript(&message).len(), 1);
    }
}
