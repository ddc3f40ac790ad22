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

/// The gateway's clients of the Bot API, one per kind of request, each with the bound
/// that kind needs.
pub struct Clients {
    /// `getUpdates` (and the command menu).
    pub polling: Bot,
    pub sending: Bot,
    /// Files people send; `telegram.download_timeout_secs` bounds each fetch.
    pub fetching: Bot,
    /// Files sent back.
    pub uploading: Bot,
}

impl Clients {
    pub fn new(token: &str, api_url: &str, poll_timeout: Duration) -> Result<Clients, String> {
        Ok(Clients {
            polling: bot(token, api_url, poll_timeout + POLL_MARGIN)?,
            sending: bot(token, api_url, sender::SEND_TIMEOUT)?,
            fetching: bot(token, api_url, FETCH_CLIENT_TIMEOUT)?,
            uploading: bot(token, api_url, UPLOAD_CLIENT_TIMEOUT)?,
        })
    }
}

/// A `getUpdates` request may take this much longer than its long poll before it counts
/// as lost.
const POLL_MARGIN: Duration = Duration::from_secs(15);
/// The HTTP client's own bound on a file fetch; `telegram.download_timeout_secs` (at most
/// an hour) is the one that applies, as it stands when the job starts (a reload may
/// change it).
const FETCH_CLIENT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bound on one upload of a file sent back (up to 50 MB).
const UPLOAD_CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

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
