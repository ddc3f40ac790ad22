//! Whether the state store takes writes. The store reports every error and every commit
//! here as it happens (it is the one place every write passes through, whoever asked for
//! it: the poller storing updates, a chat committing its reply, the outbox recording a
//! delivery), so the health report needs no caller to remember to say so.
//!
//! The store is failing from its first error until a commit succeeds again. While it
//! fails the gateway is degraded, with the error as the reason; once it has failed for a
//! whole watchdog period, and still fails, the watchdog is no longer fed
//! ([`StoreWrites::stuck_for`]), so systemd restarts a gateway whose store is stuck.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::clock::unix;

#[derive(Default)]
pub struct StoreWrites {
    failing: Mutex<Option<Failing>>,
}

struct Failing {
    since: SystemTime,
    since_mono: Instant,
    /// The latest error: a store nothing tried since may have recovered unseen.
    last: Instant,
    error: String,
}

/// The store's trouble as published: since when (Unix seconds), and the latest error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    pub since_unix: u64,
    pub error: String,
}

impl StoreWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A statement or a commit failed.
    pub fn failed(&self, error: &dyn Display) {
        let now = Instant::now();
        let error = error.to_string();
        let mut failing = self.lock();
        match failing.as_mut() {
            Some(f) => {
                f.last = now;
                f.error = error;
            }
            None => {
                tracing::warn!("the state store fails ({error}); retrying what it refused");
                *failing = Some(Failing {
                    since: SystemTime::now(),
                    since_mono: now,
                    last: now,
                    error,
                });
            }
        }
    }

    /// A transaction committed: the store takes writes.
    pub fn committed(&self) {
        let mut failing = self.lock();
        if let Some(f) = failing.take() {
            tracing::info!(
                "the state store takes writes again, after {} s",
                f.since_mono.elapsed().as_secs()
            );
        }
    }

    pub fn trouble(&self) -> Option<Trouble> {
        self.lock().as_ref().map(|f| Trouble {
            since_unix: unix(f.since),
            error: f.error.clone(),
        })
    }

    /// Failing for longer than `period`, and failing still (an error within `period`).
    pub fn stuck_for(&self, period: Duration) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|f| f.since_mono.elapsed() > period && f.last.elapsed() <= period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_until_a_commit_and_stuck_only_when_it_lasts_and_persists() {
        let writes = StoreWrites::default();
        assert!(writes.trouble().is_none());
        writes.failed(&"database is locked");
        writes.failed(&"database or disk is full");
        let trouble = writes.trouble().expect("failing");
        assert_eq!(trouble.error, "database or disk is full");
        assert!(
            !writes.stuck_for(Duration::from_secs(60)),
            "not for long yet"
        );
        std::thread::sleep(Duration::from_millis(30));
        writes.failed(&"database or disk is full");
        assert!(writes.stuck_for(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !writes.stuck_for(Duration::from_millis(20)),
            "nothing failed within the period: it may have recovered unseen"
        );
        writes.committed();
        assert!(writes.trouble().is_none());
        assert!(!writes.stuck_for(Duration::ZERO));
    }
}
