//! What a chat completion and a transcription have in common: the POST to an
//! OpenAI-compatible endpoint with the provider's key and the attempt's timeout, an error
//! answer read and classified, and the loop that retries failed attempts until the
//! provider fails for good or the job's deadline passes. Written once so the two
//! endpoints cannot drift apart: the same answer (a 402, a 429 with `Retry-After`, a
//! timeout) means the same thing, is retried the same way and reads the same to the user.

use std::time::{Duration, Instant, SystemTime};

use hermes_protocol::{Event, Failure, ProviderPlan};
use tokio::sync::mpsc::UnboundedSender;

use super::ProviderError;
use super::classify::{Verdict, classify, describe};
use super::retry;

/// One failed attempt, before the retry policy has looked at it.
#[derive(Debug)]
pub(super) enum Attempt {
    Status {
        status: u16,
        verdict: Verdict,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Connection refused or reset, body cut off: worth retrying.
    Transport(String),
    /// The attempt's own timeout fired.
    TimedOut(Duration),
    /// A 2xx answer that is not what the endpoint should answer.
    Protocol(String),
}

/// One kind of request to a provider, as [`run`] sends it again and again.
pub(super) trait Request {
    type Answer;
    /// What the log calls an answer that could not be read.
    const ANSWER: &'static str;

    /// One attempt, bounded by `budget`.
    async fn send(&mut self, budget: Duration) -> Result<Self::Answer, Attempt>;

    /// The provider said the request is too long for its context window: Ok to send it
    /// again (shortened), or the failure to give up with.
    fn context_too_long(
        &mut self,
        provider: &str,
        status: u16,
        detail: String,
    ) -> Result<(), Failure>;
}

/// `POST {base_url}/{path}` with `plan`'s key, given up on after `budget`.
pub(super) fn post(
    client: &reqwest::Client,
    plan: &ProviderPlan,
    path: &str,
    budget: Duration,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(format!("{}/{path}", plan.base_url.trim_end_matches('/')))
        .timeout(budget);
    if let Some(key) = &plan.api_key {
        request = request.bearer_auth(key.expose());
    }
    request
}

/// A 2xx `response`, for the caller to read; any other is read here (`read_error` says
/// what a body that cannot be read to its end means) and classified.
pub(super) async fn check(
    response: reqwest::Response,
    read_error: impl FnOnce(&reqwest::Error) -> Attempt,
) -> Result<reqwest::Response, Attempt> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    let text = response.text().await.map_err(|e| read_error(&e))?;
    Err(Attempt::Status {
        status,
        verdict: classify(status, &text),
        detail: describe(status, &text),
        retry_after,
    })
}

/// Sends `request` to `plan`'s provider, retrying what is worth retrying, until
/// `deadline`. Events name the provider `label`.
pub(super) async fn run<R: Request>(
    request: &mut R,
    plan: &ProviderPlan,
    label: &str,
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<R::Answer, ProviderError> {
    let provider = plan.name.clone();
    let mut attempt = 0u32;
    let mut retries = 0u32;
    let mut protocol_retried = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProviderError::Deadline);
        }
        attempt += 1;
        let _ = events.send(Event::Attempt {
            provider: label.to_string(),
            attempt,
        });
        let budget = Duration::from_millis(plan.request_timeout_ms).min(deadline - now);
        let failed = match request.send(budget).await {
            Ok(answer) => return Ok(answer),
            Err(failed) => failed,
        };
        let (verdict, detail, retry_after) = match failed {
            Attempt::Status {
                status,
                verdict,
                detail,
                retry_after,
            } => match verdict {
                Verdict::Quota => return fail(Failure::QuotaExhausted { provider, detail }),
                Verdict::Auth => {
                    return fail(Failure::ProviderAuth {
                        provider,
                        status,
                        detail,
                    });
                }
                Verdict::Rejected => {
                    return fail(Failure::ProviderRejected {
                        provider,
                        status,
                        detail,
                    });
                }
                Verdict::ContextTooLong => {
                    match request.context_too_long(&provider, status, detail) {
                        Ok(()) => continue,
                        Err(failure) => return fail(failure),
                    }
                }
                Verdict::RateLimited | Verdict::Unavailable => (verdict, detail, retry_after),
            },
            Attempt::Protocol(detail) if !protocol_retried => {
                protocol_retried = true;
                tracing::info!(
                    provider,
                    "unreadable {} ({detail}); retrying once",
                    R::ANSWER
                );
                continue;
            }
            Attempt::Protocol(detail) => {
                return fail(Failure::ProviderProtocol { provider, detail });
            }
            Attempt::TimedOut(_) if Instant::now() >= deadline => {
                return Err(ProviderError::Deadline);
            }
            Attempt::TimedOut(after) => (
                Verdict::Unavailable,
                format!("no answer within {:.0} s", after.as_secs_f64()),
                None,
            ),
            Attempt::Transport(detail) => (Verdict::Unavailable, detail, None),
        };
        let give_up = || gave_up(verdict, &provider, &detail);
        if retries >= plan.max_retries {
            return fail(give_up());
        }
        retries += 1;
        let wait = retry::delay(retries, retry_after);
        if Instant::now() + wait >= deadline {
            tracing::info!(
                provider,
                "not retrying: the wait of {wait:?} would pass the job's deadline"
            );
            return fail(give_up());
        }
        tracing::info!(provider, attempt, "{detail}; retrying in {wait:?}");
        let _ = events.send(Event::Retrying {
            provider: label.to_string(),
            after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            reason: detail.clone(),
        });
        tokio::time::sleep(wait).await;
    }
}

fn fail<T>(failure: Failure) -> Result<T, ProviderError> {
    Err(ProviderError::Failed(failure))
}

/// The failure of a request whose retries are spent: rate limited (the chat is told when
/// to try again), or the provider unavailable.
fn gave_up(verdict: Verdict, provider: &str, detail: &str) -> Failure {
    if verdict == Verdict::RateLimited {
        Failure::RateLimited {
            provider: provider.to_string(),
            detail: detail.to_string(),
        }
    } else {
        Failure::ProviderUnavailable {
            provider: provider.to_string(),
            detail: detail.to_string(),
        }
    }
}
