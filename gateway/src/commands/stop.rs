//! `/stop`: cancel the chat's job in flight. Its worker's whole process group is killed
//! (tools included), and then the chat is told, so "stopped" means nothing of it still
//! runs. Messages waiting behind it (sent before the `/stop`) are ended with it: one reply
//! for all of them.
//!
//! `/stop` does not queue behind the very job it is meant to end: the router hands it to
//! the chat's [`InFlight`] slot the moment it arrives, and the job's own task sends the one
//! reply once the group is gone (one reply for the message and its `/stop`s).
//!
//! The ⏹ button under a streamed answer (`crate::chats::stop_button`) is the same stop
//! without a message: it ends the job and the messages that waited when it was pressed,
//! and only the user who asked may press it.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The chat's job in flight, if any, where `/stop` finds it.
#[derive(Default)]
pub struct InFlight(Mutex<Option<Running>>);

struct Running {
    cancel: CancellationToken,
    /// `/stop` messages that asked for this job's end; answered with it.
    stop_requests: Vec<i64>,
    /// The key of the job's ⏹ button and the user who may press it, once it has one.
    button: Option<(String, u64)>,
    /// The ⏹ button was pressed when the chat's waiting messages went up to this row.
    pressed_through: Option<i64>,
}

/// What asked a job to stop, answered when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stops {
    /// The `/stop` messages.
    pub rows: Vec<i64>,
    /// The ⏹ button, and the last waiting message it ends with the job (0: none).
    pub pressed_through: Option<i64>,
}

impl Stops {
    /// The last waiting message ended with the job: every one sent before a `/stop` or
    /// the press, all of them when the job was stopped otherwise.
    pub fn through(&self) -> i64 {
        self.rows
            .iter()
            .copied()
            .max()
            .max(self.pressed_through)
            .unwrap_or(i64::MAX)
    }
}

/// What a press of the ⏹ button did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    /// The job is being ended.
    Stopping,
    /// Someone other than the user who asked pressed it: nothing happens.
    NotYours,
    /// The button's job is over (or of an earlier run).
    Over,
}

/// What a `/stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// The job is being ended; its task answers this `/stop` too.
    Cancelled,
    /// Nothing runs in the chat: the `/stop` needs its own answer.
    NothingRunning,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job starts: the token `/stop` cancels it with.
    pub fn begin(&self) -> CancellationToken {
        let cancel = CancellationToken::new();
        *self.lock() = Some(Running {
            cancel: cancel.clone(),
            stop_requests: Vec::new(),
            button: None,
            pressed_through: None,
        });
        cancel
    }

    /// The job in flight gets a ⏹ button with `key` in its data, that `asker` alone may
    /// press; false when no job runs.
    pub fn button(&self, asker: u64, key: &str) -> bool {
        let mut running = self.lock();
        let Some(running) = running.as_mut() else {
            return false;
        };
        running.button = Some((key.to_string(), asker));
        true
    }

    /// The ⏹ button with `key` was pressed by `user` when the chat's waiting messages
    /// went up to row `through`.
    pub fn press(&self, key: &str, user: u64, through: i64) -> Press {
        let mut running = self.lock();
        let Some(running) = running.as_mut() else {
            return Press::Over;
        };
        match &running.button {
            Some((k, _)) if k != key => Press::Over,
            None => Press::Over,
            Some((_, asker)) if *asker != user => Press::NotYours,
            Some(_) => {
                running.pressed_through = Some(through);
                running.cancel.cancel();
                Press::Stopping
            }
        }
    }

    /// The job is over: what asked it to stop, to answer with it.
    pub fn end(&self) -> Stops {
        self.lock()
            .take()
            .map(|running| Stops {
                rows: running.stop_requests,
                pressed_through: running.pressed_through,
            })
            .unwrap_or_default()
    }

    /// `/stop` (inbox row `row`) arrived.
    pub fn stop(&self, row: i64) -> Stopping {
        match self.lock().as_mut() {
            Some(running) => {
                running.stop_requests.push(row);
                running.cancel.cancel();
                Stopping::Cancelled
            }
            None => Stopping::NothingRunning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_cancels_only_a_job_in_flight_and_is_answered_with_it() {
        let slot = InFlight::default();
        assert_eq!(slot.stop(1), Stopping::NothingRunning);
        let cancel = slot.begin();
        assert_eq!(slot.stop(2), Stopping::Cancelled);
        assert_eq!(slot.stop(3), Stopping::Cancelled);
        assert!(cancel.is_cancelled());
        let stops = slot.end();
        assert_eq!(stops.rows, [2, 3]);
        assert_eq!(stops.through(), 3);
        assert_eq!(slot.stop(4), Stopping::NothingRunning);
    }

    #[test]
    fn the_button_stops_only_its_own_job_and_only_for_the_asker() {
        let slot = InFlight::default();
        assert_eq!(slot.press("k", 7, 0), Press::Over, "nothing runs");
        let cancel = slot.begin();
        assert_eq!(slot.press("k", 7, 0), Press::Over, "no button yet");
        assert!(slot.button(7, "k"));
        assert_eq!(slot.press("old", 7, 0), Press::Over, "another job's button");
        assert_eq!(slot.press("k", 8, 5), Press::NotYours);
        assert!(!cancel.is_cancelled(), "a stranger's press does nothing");
        assert_eq!(slot.press("k", 7, 5), Press::Stopping);
        assert!(cancel.is_cancelled());
        let stops = slot.end();
        assert!(stops.rows.is_empty());
        assert_eq!(stops.through(), 5, "what waited when it was pressed");
        assert_eq!(Stops::default().through(), i64::MAX);
        assert_eq!(slot.press("k", 7, 0), Press::Over, "the job is over");
    }
}
