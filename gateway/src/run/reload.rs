//! SIGHUP: the configuration file read again and applied to what a reload may change
//! ([`crate::settings`]), while the gateway runs on. A file that does not load keeps the
//! old configuration, with the reasons in the log; keys that only a restart applies are
//! named. Jobs in flight keep the settings they started with.

use std::path::Path;

use hermes_config::{Config, load_or_report};

use crate::circuit::Circuits;
use crate::health::Health;
use crate::sandbox;
use crate::settings::{ChatSettings, LiveSettings, needs_restart};
use crate::setup;

/// Applies a changed configuration file to the live settings, or keeps the old ones and
/// says why. Jobs in flight keep the settings they started with.
pub fn reload(
    path: &Path,
    running: &Config,
    settings: &LiveSettings,
    circuits: &Circuits,
    health: &Health,
) {
    let Some((new, setup)) = load_or_report(path, setup::resolve, |e| {
        tracing::error!("reload failed, keeping the old configuration: {e}")
    }) else {
        return;
    };
    let restart = needs_restart(running, &new);
    if !restart.is_empty() {
        tracing::warn!(
            "changed keys that only take effect after a restart: {}",
            restart.join(", ")
        );
    }
    sandbox::warn_opted_out(&new);
    health.set_unsandboxed(
        sandbox::opted_out(&new)
            .iter()
            .map(|n| n.to_string())
            .collect(),
    );
    let fresh = ChatSettings::new(&new, &setup);
    circuits.set_cooldowns(fresh.cooldowns.clone());
    tracing::info!(
        allowed_users = fresh.allowed.len(),
        providers = fresh.providers.len(),
        "configuration reloaded"
    );
    settings.replace(fresh);
}
