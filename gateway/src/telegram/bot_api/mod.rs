//! Bot API methods that teloxide-core 0.13 (Bot API 9.1) does not have, as small typed
//! requests: one file per area, each a serde type of the parameters the gateway sends and
//! of as much of the answer as it reads, nothing more.
//!
//! They go out as every other request does: through the [`Sender`]'s `Bot` (the same
//! reqwest client and its timeout), with Telegram's answer read by teloxide (so a 429's
//! `retry_after`, a migrated chat and an error's description come back as for any method)
//! and classified by the sender into a [`SendError`]. Whoever sends one then handles flood
//! control as for any other piece: the outbox for what it keeps, [`best_effort`] for what
//! is only cosmetic. A new method is a type implementing [`Method`] in its area's file.

pub mod rich;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use teloxide_core::requests::{JsonRequest, Payload};

use super::sender::{SendError, Sender, classify};

/// A Bot API method: its name as Telegram spells it, its parameters as serde writes them,
/// and the part of its answer the gateway reads.
pub trait Method: Serialize + Send + 'static {
    const NAME: &'static str;
    type Output: DeserializeOwned + Send + 'static;
}

/// A [`Method`] as teloxide sends a payload.
struct Call<M>(M);

impl<M: Method> Payload for Call<M> {
    type Output = M::Output;
    const NAME: &'static str = M::NAME;
}

impl<M: Method> Serialize for Call<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Sender {
    /// One call of `method`, its failure named as any send's.
    pub async fn call<M: Method>(&self, method: M) -> Result<M::Output, SendError> {
        JsonRequest::new(self.bot().clone(), Call(method))
            .await
            .map_err(classify)
    }
}

/// How often a cosmetic request is tried at most.
const BEST_EFFORT_TRIES: u32 = 2;
/// The longest flood-control pause a cosmetic request waits out.
const BEST_EFFORT_PAUSE: Duration = Duration::from_secs(5);

/// A request that only decorates the chat (a reaction, a chat action), tried again once
/// after a short flood-control pause or a transient failure; anything else, or a longer
/// pause, is given up at once and returned. Never the answer's path: its caller runs it
/// on a task of its own.
pub async fn best_effort<T, F: Future<Output = Result<T, SendError>>>(
    mut attempt: impl FnMut() -> F,
) -> Result<T, SendError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        match &error {
            _ if tries >= BEST_EFFORT_TRIES => return Err(error),
            SendError::RetryAfter(wait) if *wait <= BEST_EFFORT_PAUSE => {
                tokio::time::sleep(*wait).await
            }
            SendError::Transient(_) => {}
            _ => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn best_effort_waits_out_a_short_pause_once_and_gives_up_on_a_refusal() {
        let mut calls = 0;
        let done = best_effort(|| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    Err(SendError::RetryAfter(Duration::from_millis(1)))
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!((done, calls), (Ok(7), 2));
        let mut calls = 0;
        let refused: Result<(), _> = best_effort(|| {
            calls += 1;
            async { Err(SendError::Refused("Bad Request: REACTION_INVALID".into())) }
        })
        .await;
        assert!(matches!(refused, Err(SendError::Refused(_))));
        assert_eq!(calls, 1, "a refusal is not tried again");
        let long: Result<(), _> =
            best_effort(|| async { Err(SendError::RetryAfter(Duration::from_secs(60))) }).await;
        assert_eq!(long, Err(SendError::RetryAfter(Duration::from_secs(60))));
    }
}
