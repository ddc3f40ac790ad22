//! The integration tests: the real `hermes-gateway` and `hermes-worker` binaries against
//! fakes on 127.0.0.1 (and one test against a VM with a real systemd), one module per
//! subject. One test binary, not one per file: `cargo test` runs test binaries one after
//! another, and these tests mostly wait on events (a retry's backoff, Telegram's outage
//! window, a VM's timers), so in one binary their waits overlap instead of adding up, and
//! the whole set is linked once.
//!
//! `fakes_are_strict` stays a binary of its own: it is small, and the harness builds it to
//! get the binaries with the features these tests resolve (`harness::cargo_build`).

// libtest starts tests in the order of their names. The VM test takes about four minutes,
// nearly all of it waiting on the VM, so it is named to start first and overlap the rest
// instead of running alone at the end.
#[path = "unit_under_systemd.rs"]
mod a_real_systemd;

mod albums;
mod approvals;
mod chat;
mod clock;
mod commands;
mod delivery;
mod files_back;
mod forked_workers;
mod instances;
mod live_answer;
mod many_gateways;
mod media;
mod metrics;
mod operations;
mod provider_faults;
mod schedules;
mod soak;
mod spares;
mod strangers;
mod streaming;
mod telegram_faults;
mod tool_guard;
mod tools;
mod topics;
mod transient_trouble;
mod usage;
mod worker_bounds;
mod worker_faults;
