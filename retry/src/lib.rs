//! `hermes-retry`: how the gateway and the worker wait before trying again what failed
//! over the network, and how they name why it failed.
//!
//! The wait is a capped exponential step with "equal jitter": half the step fixed, half
//! random, so it never drops below half the step, and many retriers (many workers, or
//! many restarts of the service) do not hit a recovering server in lockstep. The gateway
//! retries Telegram calls and worker starts with [`Backoff`]; the worker retries provider
//! requests with [`step`] and [`jittered`], never sooner than the provider's
//! `Retry-After`. A failed request's log line names its [`root_cause`]: an HTTP client's
//! own message ("error sending request") hides it.

use std::error::Error;
use std::time::Duration;

use rand::Rng;

/// The failures a caller has had in a row, and the wait before the next try.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next try: the
    /// [`jittered`] [`step`] of this many failures.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(step(self.base, self.cap, self.failures))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The exponential step before try `n` after the first (1-based): `base * 2^(n-1)`,
/// capped at `cap`.
pub fn step(base: Duration, cap: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(cap)
}

/// `step` with equal jitter: half of it fixed, half random.
pub fn jittered(step: Duration) -> Duration {
    let half = step / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// The innermost source of `error`: what actually went wrong (connection refused, timed
/// out, …) under the layers that wrapped it.
pub fn root_cause<'a>(error: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    let mut root = error;
    while let Some(source) = root.source() {
        root = source;
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stays_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.next_delay());
        }
        let expected = [100u64, 200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000];
        for (d, full) in steps.iter().zip(expected) {
            let ms = d.as_millis() as u64;
            assert!(
                ms >= full / 2 && ms <= full,
                "{ms} not in [{}, {full}]",
                full / 2
            );
        }
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(
            step(Duration::from_secs(1), Duration::from_secs(30), u32::MAX),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_root_cause_is_the_innermost_source() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl Error for Layer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                self.1.as_deref().map(|l| l as &(dyn Error + 'static))
            }
        }
        let error = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "client error",
                Some(Box::new(Layer("connection refused", None))),
            ))),
        );
        assert_eq!(root_cause(&error).to_string(), "connection refused");
        let alone = Layer("alone", None);
        assert_eq!(root_cause(&alone).to_string(), "alone");
    }
}
