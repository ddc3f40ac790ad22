//! Capped, jittered exponential backoff, for everything the gateway retries: Telegram
//! calls and worker start-ups. Jitter keeps many retriers (or many restarts of this
//! service) from hitting a recovering server in lockstep.

use std::time::Duration;

use rand::Rng;

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

    /// Records a failure and returns how long to wait before the next try: the exponential
    /// step `base * 2^(failures-1)`, capped, with "equal jitter" (half fixed, half random),
    /// so the wait never drops below half the step.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = self
            .base
            .saturating_mul(1u32 << (self.failures - 1).min(20))
            .min(self.cap);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
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
    }
}
