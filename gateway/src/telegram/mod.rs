//! Everything that talks to the Telegram Bot API: the `getUpdates` loop (with what an
//! update says, and a webhook that would stop it), outgoing messages, the answer shown
//! while it is written, and Markdown made into Telegram's HTML and cut to size. Built on
//! teloxide's `Bot` (its typed requests), not its `Dispatcher`: the gateway must own the
//! update offset and every error path, and no handler code may run inside the poll loop.

pub mod bot_api;
pub mod format;
mod incoming;
pub mod live;
pub mod poller;
pub mod reactions;
pub mod rich;
pub mod sender;
pub mod split;
mod webhook;

use std::time::Duration;

use teloxide_core::Bot;

/// Builds a bot client for `api_url` whose requests time out after `timeout`, so a
/// connection that silently dies is noticed: a little after the long poll for polling,
/// [`sender::SEND_TIMEOUT`] for sending.
pub fn bot(token: &str, api_url: &str, timeout: Duration) -> Result<Bot, String> {
    let url = api_url
        .parse()
        .map_err(|e| format!("telegram.api_url {api_url:?}: {e}"))?;
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Bot::with_client(token, client).set_api_url(url))
}
