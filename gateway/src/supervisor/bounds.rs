//! What a worker's messages may make the gateway keep, and where a worker stops being
//! busy and starts being broken: every text an event carries is cut to its bound, and one
//! job's fallbacks, running tools, approvals and usage reports are counted against what an
//! honest worker can send (invariant 6: a worker cannot grow the gateway).

use std::collections::{HashMap, HashSet};

use hermes_protocol::{CrashCause, Event, Failure};

use crate::approvals::MAX_WAITING;
use crate::jobs::MAX_ANSWER_BYTES;
use crate::telegram::live::{MAX_TOOL_NAME_BYTES, MAX_TOOLS_RUNNING, cut_at_char};

/// The longest name, reason or detail an event keeps: plenty for a provider's error
/// message, and the most a chat's queue of events holds is then stated by its length.
const MAX_EVENT_TEXT_BYTES: usize = 1024;

/// An event as the chat may hold it: at most [`MAX_ANSWER_BYTES`] of streamed text, tool
/// names of at most [`MAX_TOOL_NAME_BYTES`], every other text of at most
/// [`MAX_EVENT_TEXT_BYTES`] (a frame may carry 4 MiB of it, and the chat's queue of
/// events is bounded by count).
pub(super) fn bounded(event: Event) -> Event {
    match event {
        Event::Delta(mut text) => {
            cut(&mut text, MAX_ANSWER_BYTES);
            Event::Delta(text)
        }
        Event::ToolStarted { mut name } => {
            cut(&mut name, MAX_TOOL_NAME_BYTES);
            Event::ToolStarted { name }
        }
        Event::ToolFinished { mut name, ok, ms } => {
            cut(&mut name, MAX_TOOL_NAME_BYTES);
            Event::ToolFinished { name, ok, ms }
        }
        Event::Attempt {
            mut provider,
            attempt,
        } => {
            cut(&mut provider, MAX_EVENT_TEXT_BYTES);
            Event::Attempt { provider, attempt }
        }
        Event::Retrying {
            mut provider,
            after_ms,
            mut reason,
        } => {
            cut(&mut provider, MAX_EVENT_TEXT_BYTES);
            cut(&mut reason, MAX_EVENT_TEXT_BYTES);
            Event::Retrying {
                provider,
                after_ms,
                reason,
            }
        }
        Event::FellBack {
            mut from,
            mut failure,
        } => {
            cut(&mut from, MAX_EVENT_TEXT_BYTES);
            for text in failure_texts(&mut failure) {
                cut(text, MAX_EVENT_TEXT_BYTES);
            }
            Event::FellBack { from, failure }
        }
        Event::Usage {
            mut provider,
            mut model,
            usage,
        } => {
            cut(&mut provider, MAX_EVENT_TEXT_BYTES);
            cut(&mut model, MAX_EVENT_TEXT_BYTES);
            Event::Usage {
                provider,
                model,
                usage,
            }
        }
    }
}

fn cut(text: &mut String, max: usize) {
    let end = cut_at_char(text, max).len();
    text.truncate(end);
}

/// Every text a failure carries.
fn failure_texts(failure: &mut Failure) -> Vec<&mut String> {
    use hermes_protocol::MediaProblem;
    match failure {
        Failure::QuotaExhausted { provider, detail }
        | Failure::RateLimited { provider, detail }
        | Failure::ProviderUnavailable { provider, detail }
        | Failure::ContextTooLong { provider, detail }
        | Failure::ProviderProtocol { provider, detail }
        | Failure::ProviderAuth {
            provider, detail, ..
        }
        | Failure::ProviderRejected {
            provider, detail, ..
        } => vec![provider, detail],
        Failure::WorkerCrashed { cause } => match cause {
            CrashCause::Signalled { name, .. } => vec![name],
            CrashCause::ProtocolViolation { detail } | CrashCause::NotStarted { detail } => {
                vec![detail]
            }
            CrashCause::Exited { .. } | CrashCause::Disconnected => Vec::new(),
        },
        Failure::Media { problem } => match problem {
            MediaProblem::UnsupportedFile { file_name } => vec![file_name],
            MediaProblem::Unreadable { file_name, detail } => vec![file_name, detail],
            MediaProblem::DownloadFailed { detail } => vec![detail],
            MediaProblem::TooBig { .. }
            | MediaProblem::TooLong { .. }
            | MediaProblem::TooMuchAtOnce { .. }
            | MediaProblem::VoiceNotEnabled
            | MediaProblem::NoVision => Vec::new(),
        },
        Failure::OverBudget { cap, time_zone, .. } => vec![cap, time_zone],
        Failure::TimedOut { .. } | Failure::Cancelled { .. } => Vec::new(),
    }
}

/// What one job's messages made the gateway keep, each within what an honest worker can
/// send: one fallback per provider of the job, at most [`MAX_TOOLS_RUNNING`] tools running
/// at once, at most that many approvals per step, each id waiting once, one usage report
/// per step (a step is one answered call). Past a bound the worker is broken (its own
/// words say so), not merely busy.
pub(super) struct Kept {
    max_fallbacks: usize,
    fallbacks: usize,
    max_usages: usize,
    usages: usize,
    /// Tools started and not finished, by name (a name may run more than once at once).
    running: HashMap<String, usize>,
    running_total: usize,
    max_approvals: usize,
    approvals: usize,
    /// Approvals asked in the chat and not yet decided.
    pub(super) waiting: HashSet<u64>,
}

impl Kept {
    pub(super) fn new(providers: usize, max_steps: u32) -> Kept {
        let steps = usize::try_from(max_steps.max(1)).unwrap_or(usize::MAX);
        Kept {
            max_fallbacks: providers,
            fallbacks: 0,
            max_usages: steps,
            usages: 0,
            running: HashMap::new(),
            running_total: 0,
            max_approvals: steps.saturating_mul(MAX_TOOLS_RUNNING),
            approvals: 0,
            waiting: HashSet::new(),
        }
    }

    /// Counts `event` (already [`bounded`]); Err says which bound it broke.
    pub(super) fn event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::FellBack { .. } => {
                self.fallbacks += 1;
                if self.fallbacks > self.max_fallbacks {
                    return Err(format!(
                        "{} fallback events for a job of {} provider(s)",
                        self.fallbacks, self.max_fallbacks
                    ));
                }
            }
            Event::ToolStarted { name } => {
                if self.running_total >= MAX_TOOLS_RUNNING {
                    return Err(format!(
                        "more than {MAX_TOOLS_RUNNING} tools running at once"
                    ));
                }
                *self.running.entry(name.clone()).or_default() += 1;
                self.running_total += 1;
            }
            Event::ToolFinished { name, .. } => {
                if let Some(count) = self.running.get_mut(name) {
                    *count -= 1;
                    self.running_total -= 1;
                    if *count == 0 {
                        self.running.remove(name);
                    }
                }
            }
            Event::Usage { .. } => {
                self.usages += 1;
                if self.usages > self.max_usages {
                    return Err(format!(
                        "{} usage reports for a job of at most {} step(s)",
                        self.usages, self.max_usages
                    ));
                }
            }
            Event::Attempt { .. } | Event::Retrying { .. } | Event::Delta(_) => {}
        }
        Ok(())
    }

    /// Counts an approval request `id`: Ok(true) to ask the chat, Ok(false) to deny it
    /// as one too many waiting, Err for a bound broken.
    pub(super) fn approval(&mut self, id: u64) -> Result<bool, String> {
        self.approvals += 1;
        if self.approvals > self.max_approvals {
            return Err(format!(
                "{} approval requests in a job allowed at most {}",
                self.approvals, self.max_approvals
            ));
        }
        if self.waiting.contains(&id) {
            return Err(format!("approval {id} asked again while it waits"));
        }
        if self.waiting.len() >= MAX_WAITING {
            return Ok(false);
        }
        self.waiting.insert(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(name: &str) -> Event {
        Event::ToolStarted { name: name.into() }
    }

    fn finished(name: &str) -> Event {
        Event::ToolFinished {
            name: name.into(),
            ok: true,
            ms: 1,
        }
    }

    #[test]
    fn a_worker_past_a_bound_is_told_apart_from_a_busy_one() {
        let mut kept = Kept::new(2, 1);
        let fell = Event::FellBack {
            from: "p".into(),
            failure: Failure::TimedOut { after_ms: 1 },
        };
        assert!(kept.event(&fell).is_ok());
        assert!(kept.event(&fell).is_ok());
        assert!(
            kept.event(&fell).is_err(),
            "a third fallback for two providers"
        );
        let used = Event::Usage {
            provider: "p".into(),
            model: "m".into(),
            usage: hermes_protocol::Usage::default(),
        };
        assert!(kept.event(&used).is_ok());
        assert!(kept.event(&used).is_err(), "a second usage for one step");

        // The same tool may run many times at once; only what is running counts.
        let mut kept = Kept::new(1, 1);
        for _ in 0..MAX_TOOLS_RUNNING {
            assert!(kept.event(&started("s.t")).is_ok());
        }
        assert!(kept.event(&started("s.u")).is_err());
        let mut kept = Kept::new(1, 1);
        for _ in 0..10 * MAX_TOOLS_RUNNING {
            assert!(kept.event(&started("s.t")).is_ok());
            assert!(kept.event(&finished("s.t")).is_ok());
        }
        // A finish for a tool never started frees nothing.
        for _ in 0..MAX_TOOLS_RUNNING {
            assert!(kept.event(&finished("s.x")).is_ok());
            assert!(kept.event(&started("s.t")).is_ok());
        }
        assert!(kept.event(&started("s.t")).is_err());
    }

    #[test]
    fn every_text_of_an_event_is_cut_to_its_bound() {
        let huge = "é".repeat(1024 * 1024);
        let fell = bounded(Event::FellBack {
            from: huge.clone(),
            failure: Failure::ProviderRejected {
                provider: huge.clone(),
                status: 400,
                detail: huge.clone(),
            },
        });
        let Event::FellBack {
            from,
            failure: Failure::ProviderRejected {
                provider, detail, ..
            },
        } = fell
        else {
            panic!("{fell:?}");
        };
        for text in [from, provider, detail] {
            assert!(text.len() <= MAX_EVENT_TEXT_BYTES && text.len() > 1000);
        }
        let retrying = bounded(Event::Retrying {
            provider: "p".into(),
            after_ms: 1,
            reason: huge.clone(),
        });
        assert!(
            matches!(retrying, Event::Retrying { reason, .. } if reason.len() <= MAX_EVENT_TEXT_BYTES)
        );
        let delta = bounded(Event::Delta(huge));
        assert!(matches!(delta, Event::Delta(text) if text.len() <= MAX_ANSWER_BYTES));
    }

    #[test]
    fn approvals_wait_three_at_a_time_once_each_within_the_steps() {
        let mut kept = Kept::new(1, 1);
        assert_eq!(kept.approval(1), Ok(true));
        assert!(
            kept.approval(1).is_err(),
            "one id asked twice while it waits"
        );
        let mut kept = Kept::new(1, 1);
        for id in 0..MAX_WAITING as u64 {
            assert_eq!(kept.approval(id), Ok(true));
        }
        assert_eq!(kept.approval(100), Ok(false), "denied: three wait");
        kept.waiting.remove(&0);
        assert_eq!(
            kept.approval(101),
            Ok(true),
            "room again once one is decided"
        );
        // One step allows MAX_TOOLS_RUNNING requests in all, denied or not.
        let mut asked = 5;
        while asked < MAX_TOOLS_RUNNING {
            assert_eq!(kept.approval(1000 + asked as u64), Ok(false));
            asked += 1;
        }
        assert!(kept.approval(5000).is_err());
    }
}
