//! The quota circuit: once a provider says its quota or balance is exhausted, stop asking
//! it for a while.
//!
//! An exhausted account does not recover in seconds, and every request sent to it is
//! wasted time for the user (and, for some providers, makes the account's standing worse).
//! So after a `QuotaExhausted` answer the provider is *open* for its
//! `quota_cooldown_secs`: jobs skip it and go straight to the fallbacks, and when no
//! provider is left the user gets the quota reply at once, with no worker and no request.
//! After the cool-down exactly one job probes the provider again; its result closes the
//! circuit or opens it for another cool-down.
//!
//! A probe is a [`Plan`] value, not a state to remember to clear: a plan dropped without
//! [`Plan::settle`] (its turn ended before any worker asked the provider: a refused or
//! unfetchable file, `/stop` during a download, a question too big to send) gives its
//! probes back, and the next job probes instead. Otherwise one such turn would leave the
//! provider probing for good, and every later message would get the quota reply until a
//! restart.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_protocol::{Event, Failure, Outcome, ProviderPlan};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open {
        until: Instant,
    },
    /// One job is trying the provider again after its cool-down.
    Probing,
}

pub struct Circuits {
    cooldowns: Mutex<HashMap<String, Duration>>,
    state: Mutex<HashMap<String, State>>,
}

/// The providers one job may use, and which of them it probes. Dropped unsettled, it
/// gives its probes back (see the module's documentation).
pub struct Plan {
    pub providers: Vec<ProviderPlan>,
    /// The providers this job probes, each with the end of the cool-down it probes after.
    probes: Vec<(String, Instant)>,
    /// The first provider skipped because its circuit is open, with when it reopens.
    pub first_skipped: Option<(String, Duration)>,
    circuits: Arc<Circuits>,
}

impl Plan {
    /// Records what the job learnt (see [`Circuits::settle`]); the probes are settled.
    pub fn settle(mut self, events: &[Event], outcome: &Outcome, now: Instant) {
        let probes = std::mem::take(&mut self.probes);
        self.circuits.settle(&probes, events, outcome, now);
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if !self.probes.is_empty() {
            self.circuits.give_back(&self.probes);
        }
    }
}

/// What a caller sees of one provider's circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Closed,
    Open { remaining: Duration },
    Probing,
}

/// A circuit's state without its time, as `status.json` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    Probing,
}

impl View {
    pub fn state(&self) -> CircuitState {
        match self {
            View::Closed => CircuitState::Closed,
            View::Open { .. } => CircuitState::Open,
            View::Probing => CircuitState::Probing,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::Probing => "probing",
        })
    }
}

impl Circuits {
    pub fn new(cooldowns: impl IntoIterator<Item = (String, Duration)>) -> Self {
        Circuits {
            cooldowns: Mutex::new(cooldowns.into_iter().collect()),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// New cool-downs after a configuration reload; circuits already open keep their time.
    pub fn set_cooldowns(&self, cooldowns: impl IntoIterator<Item = (String, Duration)>) {
        *self.cooldowns.lock().unwrap_or_else(|e| e.into_inner()) = cooldowns.into_iter().collect();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chooses the providers for a job, in chain order, skipping open circuits.
    pub fn plan(self: &Arc<Self>, all: &[ProviderPlan], now: Instant) -> Plan {
        let mut state = self.lock();
        let mut plan = Plan {
            providers: Vec::new(),
            probes: Vec::new(),
            first_skipped: None,
            circuits: self.clone(),
        };
        for provider in all {
            match state.get(&provider.name).copied() {
                None => plan.providers.push(provider.clone()),
                Some(State::Open { until }) if now >= until => {
                    state.insert(provider.name.clone(), State::Probing);
                    plan.probes.push((provider.name.clone(), until));
                    plan.providers.push(provider.clone());
                }
                Some(State::Open { until }) => {
                    plan.first_skipped
                        .get_or_insert((provider.name.clone(), until - now));
                }
                Some(State::Probing) => {
                    plan.first_skipped
                        .get_or_insert((provider.name.clone(), Duration::ZERO));
                }
            }
        }
        plan
    }

    /// Records what a job learnt: every provider that answered "quota exhausted" (in a
    /// fallback event or as the final failure) opens; every probe that did not, closes.
    fn settle(
        &self,
        probes: &[(String, Instant)],
        events: &[Event],
        outcome: &Outcome,
        now: Instant,
    ) {
        let mut exhausted: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::FellBack {
                    from,
                    failure: Failure::QuotaExhausted { .. },
                } => Some(from.as_str()),
                _ => None,
            })
            .collect();
        if let Outcome::Failed(Failure::QuotaExhausted { provider, .. }) = outcome {
            exhausted.push(provider);
        }
        exhausted.sort_unstable();
        exhausted.dedup();
        let mut state = self.lock();
        for name in &exhausted {
            let cooldown = self
                .cooldowns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(*name)
                .copied()
                .unwrap_or_default();
            if cooldown.is_zero() {
                continue;
            }
            tracing::warn!(
                provider = name,
                "provider quota exhausted; skipping it for {} s",
                cooldown.as_secs()
            );
            state.insert(
                name.to_string(),
                State::Open {
                    until: now + cooldown,
                },
            );
        }
        for (probe, _) in probes {
            if !exhausted.contains(&probe.as_str()) && state.get(probe) == Some(&State::Probing) {
                tracing::info!(provider = %probe, "provider probed after its quota cool-down; using it again");
                state.remove(probe);
            }
        }
    }

    /// Probes whose job never asked the provider: their circuits are open again with the
    /// cool-down they had, which is over, so the next job probes.
    fn give_back(&self, probes: &[(String, Instant)]) {
        let mut state = self.lock();
        for (probe, until) in probes {
            if state.get(probe) == Some(&State::Probing) {
                tracing::info!(provider = %probe, "the probing job ended before asking the provider; the next job probes it");
                state.insert(probe.clone(), State::Open { until: *until });
            }
        }
    }

    pub fn view(&self, provider: &str, now: Instant) -> View {
        match self.lock().get(provider) {
            None => View::Closed,
            Some(State::Probing) => View::Probing,
            Some(State::Open { until }) => View::Open {
                remaining: until.saturating_duration_since(now),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str) -> ProviderPlan {
        ProviderPlan {
            name: name.into(),
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: None,
            request_timeout_ms: 1000,
            max_retries: 0,
            vision: false,
            prices: None,
        }
    }

    fn quota(name: &str) -> Outcome {
        Outcome::Failed(Failure::QuotaExhausted {
            provider: name.into(),
            detail: String::new(),
        })
    }

    #[test]
    fn quota_opens_the_circuit_until_the_cooldown_then_one_probe_passes() {
        let c = Arc::new(Circuits::new([("a".to_string(), Duration::from_secs(600))]));
        let all = [provider("a")];
        let t0 = Instant::now();
        let plan = c.plan(&all, t0);
        assert_eq!(plan.providers.len(), 1);
        plan.settle(&[], &quota("a"), t0);

        let during = c.plan(&all, t0 + Duration::from_secs(599));
        assert!(during.providers.is_empty());
        assert_eq!(
            during.first_skipped.as_ref().map(|s| s.0.as_str()),
            Some("a")
        );

        let after = t0 + Duration::from_secs(600);
        let probe = c.plan(&all, after);
        assert_eq!(probe.providers.len(), 1, "one probe after the cool-down");
        let second = c.plan(&all, after);
        assert!(second.providers.is_empty(), "only one probe at a time");

        probe.settle(&[], &quota("a"), after);
        assert!(matches!(c.view("a", after), View::Open { .. }));
        let probe = c.plan(&all, after + Duration::from_secs(600));
        probe.settle(
            &[],
            &Outcome::Failed(Failure::TimedOut { after_ms: 1 }),
            after,
        );
        assert_eq!(c.view("a", after), View::Closed);
    }

    #[test]
    fn a_fallback_event_opens_the_primary_and_the_chain_continues() {
        let c = Arc::new(Circuits::new([
            ("a".to_string(), Duration::from_secs(60)),
            ("b".to_string(), Duration::from_secs(60)),
        ]));
        let all = [provider("a"), provider("b")];
        let t0 = Instant::now();
        let plan = c.plan(&all, t0);
        let events = [Event::FellBack {
            from: "a".into(),
            failure: Failure::QuotaExhausted {
                provider: "a".into(),
                detail: String::new(),
            },
        }];
        let reply = Outcome::Reply(hermes_protocol::Reply {
            transcript: Vec::new(),
            heard: Vec::new(),
            files: Vec::new(),
            text: "hi".into(),
            provider: "b".into(),
            model: "m".into(),
        });
        plan.settle(&events, &reply, t0);
        let next = c.plan(&all, t0);
        assert_eq!(
            next.providers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn zero_cooldown_never_opens() {
        let c = Arc::new(Circuits::new([("a".to_string(), Duration::ZERO)]));
        let t0 = Instant::now();
        let plan = c.plan(&[provider("a")], t0);
        plan.settle(&[], &quota("a"), t0);
        assert_eq!(c.view("a", t0), View::Closed);
    }

    /// Opens `a` at `t0` for 600 s and returns the moment its cool-down ends.
    fn opened(c: &Arc<Circuits>, t0: Instant) -> Instant {
        let plan = c.plan(&[provider("a")], t0);
        plan.settle(&[], &quota("a"), t0);
        t0 + Duration::from_secs(600)
    }

    #[test]
    fn a_probe_dropped_unsettled_is_given_back_and_the_next_job_probes() {
        let c = Arc::new(Circuits::new([("a".to_string(), Duration::from_secs(600))]));
        let after = opened(&c, Instant::now());
        let probe = c.plan(&[provider("a")], after);
        assert_eq!(probe.providers.len(), 1);
        assert_eq!(c.view("a", after), View::Probing);
        // The turn ended before any worker ran: a refused file, /stop during a download.
        drop(probe);
        assert!(
            matches!(c.view("a", after), View::Open { remaining } if remaining.is_zero()),
            "{:?}",
            c.view("a", after)
        );
        let next = c.plan(&[provider("a")], after);
        assert_eq!(next.providers.len(), 1, "the next job probes");
        next.settle(
            &[],
            &Outcome::Failed(Failure::TimedOut { after_ms: 1 }),
            after,
        );
        assert_eq!(c.view("a", after), View::Closed);
    }

    #[test]
    fn a_settled_probe_is_not_given_back_when_dropped() {
        let c = Arc::new(Circuits::new([("a".to_string(), Duration::from_secs(600))]));
        let after = opened(&c, Instant::now());
        c.plan(&[provider("a")], after)
            .settle(&[], &quota("a"), after);
        assert!(
            matches!(c.view("a", after), View::Open { remaining } if remaining == Duration::from_secs(600)),
            "the new cool-down stands"
        );
    }

    #[test]
    fn a_plan_without_probes_changes_nothing_when_dropped() {
        let c = Arc::new(Circuits::new([("a".to_string(), Duration::from_secs(600))]));
        let t0 = Instant::now();
        let after = opened(&c, t0);
        let probe = c.plan(&[provider("a")], after);
        // A second job meanwhile skips the provider; its plan going does not touch the probe.
        drop(c.plan(&[provider("a")], after));
        assert_eq!(c.view("a", after), View::Probing);
        drop(probe);
        drop(c.plan(&[provider("a")], t0));
    }
}
