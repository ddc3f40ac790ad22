//! Everything that talks to the Telegram Bot API: the `getUpdates` loop, outgoing
//! messages, and cutting long replies to size. Built on teloxide's `Bot` (its typed
//! requests), not its `Dispatcher`: the gateway must own the update offset and every error
//! path, and no handler code may run inside the poll loop.

pub mod format;
pub mod poller;
pub mod sender;
pub mod split;

use std::time::Duration;

use teloxide_core::Bot;

/// Builds the bot client for `api_url`. HTTP requests time out a little after the
/// long-poll period, so a connection that silently dies is noticed.
pub fn bot(token: &str, api_url: &str, poll_timeout_secs: u32) -> Result<Bot, String> {
    let url = api_url
        .parse()
        .map_err(|e| format!("telegram.api_url {api_url:?}: {e}"))?;
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(Duration::from_secs(u64::from(poll_timeout_secs) + 15))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Bot::with_client(token, client).set_api_url(url))
}
