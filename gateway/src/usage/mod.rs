//! What the bot spends at its providers, and the caps on it.
//!
//! A provider's bill is otherwise the first an operator hears of it (a peer's users found
//! out after about $40 of retries in two days). So every call a provider answered is
//! counted: the worker reports its `usage` as an event (tokens, cached tokens, the cost the
//! provider sent or its configured prices make), a job's are summed as they come
//! ([`JobUsage`], bounded by provider), and when the job ends, however it ends, they are
//! added to the store under the user, the chat, the provider and the day ([`record`]).
//!
//! Before a job starts, [`budget::check`] compares what the user, and everyone, used
//! today and this month with `[budgets]`: a user over a cap is answered at once and no
//! worker or provider is involved. The check is made before each job, not during one, so
//! a job that crosses a cap finishes and the next is refused. Days and months are the
//! calendar's in `budgets.time_zone` ([`calendar`]). `/usage` shows a user their own use
//! (`commands::usage`); [`report`] is the operator's `hermes-gateway usage` and the
//! usage lines of `hermes-gateway status`.

pub mod budget;
pub mod calendar;
pub mod report;

use hermes_protocol::{Event, Usage};
use jiff::tz::TimeZone;

use crate::clock::unix_now;
use crate::store::{Store, Totals};

/// The most providers one job's usage is kept for: a worker names the provider of each
/// call, and the chain of a job is far shorter; usage named otherwise is counted under
/// the last one kept, so none is lost and the list stays bounded (invariant 6).
const MAX_PROVIDERS: usize = 16;

/// What one job's calls used, by provider.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobUsage {
    by_provider: Vec<(String, Totals)>,
}

impl JobUsage {
    /// Counts `event` if it reports usage.
    pub fn observe(&mut self, event: &Event) {
        if let Event::Usage {
            provider, usage, ..
        } = event
        {
            self.add(provider, usage);
        }
    }

    pub fn add(&mut self, provider: &str, usage: &Usage) {
        if let Some((_, totals)) = self.by_provider.iter_mut().find(|(p, _)| p == provider) {
            totals.add(usage);
        } else if self.by_provider.len() < MAX_PROVIDERS {
            let mut totals = Totals::default();
            totals.add(usage);
            self.by_provider.push((provider.to_string(), totals));
        } else if let Some((_, totals)) = self.by_provider.last_mut() {
            totals.add(usage);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_provider.is_empty()
    }

    pub fn by_provider(&self) -> &[(String, Totals)] {
        &self.by_provider
    }
}

/// Adds `used` to `user`'s usage in `chat` today (in `zone`), with the job's reply.
pub fn record(store: &Store, zone: &TimeZone, user: u64, chat: i64, used: &JobUsage) {
    if used.is_empty() {
        return;
    }
    let day = calendar::periods(zone, unix_now()).day;
    store.add_usage(user, chat, &day, used.by_provider());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_usage_is_summed_by_provider_and_bounded() {
        let mut used = JobUsage::default();
        let call = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 1,
            cost_micros: Some(4),
        };
        for provider in ["a", "b", "a"] {
            used.observe(&Event::Usage {
                provider: provider.into(),
                model: "m".into(),
                usage: call,
            });
        }
        used.observe(&Event::Delta("not usage".into()));
        let a = &used.by_provider()[0];
        assert_eq!((a.0.as_str(), a.1.calls, a.1.tokens()), ("a", 2, 10));
        assert_eq!(used.by_provider().len(), 2);
        for i in 0..100 {
            used.add(&format!("p{i}"), &call);
        }
        assert_eq!(used.by_provider().len(), MAX_PROVIDERS);
        let calls: u64 = used.by_provider().iter().map(|(_, t)| t.calls).sum();
        assert_eq!(calls, 103, "nothing lost past the bound");
    }
}
