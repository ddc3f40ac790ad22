//! A job start that was not the message's fault is not counted against it.
//!
//! `take_turn` counts a start for each message of a turn before its job runs, so a
//! message whose jobs keep dying with the gateway is given up after
//! `chats::admit::MAX_ATTEMPTS` starts. A clean stop (SIGTERM, a restart by the operator
//! or by systemd) that cuts a job short says nothing about the message: its start is
//! taken back, or a few restarts during a slow job would make the bot give up on it.

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// Takes back the start counted for each of `rows` (inbox rows whose job the gateway's
    /// own stop cut short), committed before it returns.
    pub fn uncount_start(&self, rows: &[i64]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        for row in rows {
            self.wrap(
                tx.prepare_cached(
                    "UPDATE inbox SET attempts = attempts - 1 WHERE id = ?1 AND attempts > 0",
                )
                .and_then(|mut st| st.execute(params![row])),
            )?;
        }
        self.commit(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, Pending};
    use super::*;

    #[test]
    fn a_start_taken_back_is_not_counted_and_never_goes_below_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let message = Pending {
            message_id: 1,
            chat_id: 7,
            user_id: 7,
            text: "slow".into(),
            kind: Kind::Message,
            ..Pending::default()
        };
        let mut batch = vec![message];
        store.accept(&mut batch, &[]).unwrap();
        assert_eq!(batch[0].id, 1);
        for _ in 0..5 {
            let turn = store.take_turn(7, |_| false, |_| false).unwrap();
            assert_eq!(turn[0].earlier_attempts, 0, "every start was taken back");
            store.uncount_start(&[1]).unwrap();
        }
        store.uncount_start(&[1]).unwrap();
        let turn = store.take_turn(7, |_| false, |_| false).unwrap();
        assert_eq!(turn[0].earlier_attempts, 0);
        let turn = store.take_turn(7, |_| false, |_| false).unwrap();
        assert_eq!(turn[0].earlier_attempts, 1, "a start not taken back counts");
    }
}
