//! What the providers' calls used, kept per user, chat, provider and day (`usage_daily`):
//! one row a day for each, however many calls, so the table grows with the days and the
//! people, not with the messages. The day is the calendar day in `budgets.time_zone` when
//! the call's job ended, written as `YYYY-MM-DD`, so a month is a range of days and sums
//! are one indexed query.
//!
//! The sums are read by the budget check before each job, by `/usage`, and by the
//! operator's `hermes-gateway usage` and `status`, which open the file read-only beside
//! the running gateway ([`UsageReader`]): SQLite's write-ahead log lets them read while it
//! writes.

use std::path::Path;

use hermes_protocol::Usage;
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use super::{Store, StoreError};

/// Sums of calls, as one row or many rows add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the prompt tokens, those served from a cache.
    pub cached_tokens: u64,
    /// The cost of the calls whose cost is known, in millionths of a dollar.
    pub cost_micros: u64,
    /// Calls whose cost is not known (the provider sent none, and no prices are set).
    pub uncosted_calls: u64,
}

impl Totals {
    /// What a token budget counts: prompt and completion tokens.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Adds one call.
    pub fn add(&mut self, usage: &Usage) {
        self.calls = self.calls.saturating_add(1);
        self.prompt_tokens = self.prompt_tokens.saturating_add(usage.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(usage.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(usage.cached_tokens);
        match usage.cost_micros {
            Some(cost) => self.cost_micros = self.cost_micros.saturating_add(cost),
            None => self.uncosted_calls = self.uncosted_calls.saturating_add(1),
        }
    }
}

/// Days from `from` to `to`, both included (`YYYY-MM-DD`).
#[derive(Debug, Clone, Copy)]
pub struct Days<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

impl Days<'static> {
    /// Every day there is.
    pub const ALL: Days<'static> = Days {
        from: "0000-00-00",
        to: "9999-99-99",
    };
}

const SUMS: &str = "COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), \
    COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0), \
    COALESCE(SUM(cost_micros), 0), COALESCE(SUM(uncosted_calls), 0)";

fn totals_at(row: &rusqlite::Row, first: usize) -> rusqlite::Result<Totals> {
    // SQLite sums in i64; a sum past it is an error there, so every value read is >= 0.
    let get = |i: usize| row.get::<_, i64>(first + i).map(|v| v.max(0) as u64);
    Ok(Totals {
        calls: get(0)?,
        prompt_tokens: get(1)?,
        completion_tokens: get(2)?,
        cached_tokens: get(3)?,
        cost_micros: get(4)?,
        uncosted_calls: get(5)?,
    })
}

/// SQLite's integers are signed; a count past `i64::MAX` is kept at it.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The sums of `user`'s calls (everyone's with `None`) on `days`.
fn sum(conn: &Connection, user: Option<u64>, days: Days) -> rusqlite::Result<Totals> {
    match user {
        Some(user) => conn
            .prepare_cached(&format!(
                "SELECT {SUMS} FROM usage_daily WHERE user_id = ?1 AND day BETWEEN ?2 AND ?3"
            ))?
            .query_row(params![int(user), days.from, days.to], |r| totals_at(r, 0)),
        None => conn
            .prepare_cached(&format!(
                "SELECT {SUMS} FROM usage_daily WHERE day BETWEEN ?1 AND ?2"
            ))?
            .query_row(params![days.from, days.to], |r| totals_at(r, 0)),
    }
}

/// The sums on `days` for each value of `column` (`user_id` or `provider`).
fn grouped<K: rusqlite::types::FromSql>(
    conn: &Connection,
    column: &str,
    days: Days,
) -> rusqlite::Result<Vec<(K, Totals)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {column}, {SUMS} FROM usage_daily WHERE day BETWEEN ?1 AND ?2 \
         GROUP BY {column} ORDER BY {column}"
    ))?;
    let rows = stmt.query_map(params![days.from, days.to], |r| {
        Ok((r.get(0)?, totals_at(r, 1)?))
    })?;
    rows.collect()
}

/// One job's calls to one provider, for `user` in `chat` on `day`.
#[derive(Debug, Clone)]
pub(super) struct UsageRow {
    user: u64,
    chat: i64,
    provider: String,
    day: String,
    totals: Totals,
}

/// Adds `row` to its day's row.
pub(super) fn insert(tx: &rusqlite::Transaction, row: &UsageRow) -> rusqlite::Result<()> {
    let t = &row.totals;
    tx.prepare_cached(
        "INSERT INTO usage_daily (user_id, chat_id, provider, day, calls, \
         prompt_tokens, completion_tokens, cached_tokens, cost_micros, uncosted_calls) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (user_id, day, chat_id, provider) DO UPDATE SET \
         calls = calls + excluded.calls, \
         prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens, \
         cached_tokens = cached_tokens + excluded.cached_tokens, \
         cost_micros = cost_micros + excluded.cost_micros, \
         uncosted_calls = uncosted_calls + excluded.uncosted_calls",
    )?
    .execute(params![
        int(row.user),
        row.chat,
        row.provider,
        row.day,
        int(t.calls),
        int(t.prompt_tokens),
        int(t.completion_tokens),
        int(t.cached_tokens),
        int(t.cost_micros),
        int(t.uncosted_calls),
    ])
    .map(|_| ())
}

impl Store {
    /// Adds what one job's calls used, by provider, to `user`'s row for `chat` on `day`,
    /// with the next transaction that commits: the job's reply, which its chat commits
    /// next. One write for both where there were two, a tenth of the parent's CPU per
    /// message. Should that commit fail, the usage waits for the one after; should the
    /// gateway be killed first, the job's reply is lost with it, and the job is asked again.
    pub fn add_usage(&self, user: u64, chat: i64, day: &str, used: &[(String, Totals)]) {
        super::lock(&self.usage_due).extend(used.iter().map(|(provider, totals)| UsageRow {
            user,
            chat,
            provider: provider.clone(),
            day: day.to_string(),
            totals: *totals,
        }));
    }

    /// The sums of `user`'s calls (everyone's with `None`) on `days`.
    pub fn usage_sum(&self, user: Option<u64>, days: Days) -> Result<Totals, StoreError> {
        let conn = self.lock();
        self.wrap(sum(&conn, user, days))
    }
}

/// The usage table of a store another process (the running gateway) owns, opened
/// read-only for the operator's commands.
pub struct UsageReader {
    conn: Connection,
}

impl UsageReader {
    /// Opens `dir/state.db` read-only. `Ok(None)`: there is no store there, or one
    /// written before usage was kept.
    pub fn open(dir: &Path) -> Result<Option<UsageReader>, String> {
        let path = dir.join("state.db");
        if !path.exists() {
            return Ok(None);
        }
        let failed = |e: rusqlite::Error| format!("cannot read {}: {e}", path.display());
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed)?;
        let kept: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage_daily')",
                [],
                |r| r.get(0),
            )
            .map_err(failed)?;
        Ok(kept.then_some(UsageReader { conn }))
    }

    pub fn sum(&self, user: Option<u64>, days: Days) -> rusqlite::Result<Totals> {
        sum(&self.conn, user, days)
    }

    pub fn by_user(&self, days: Days) -> rusqlite::Result<Vec<(i64, Totals)>> {
        grouped(&self.conn, "user_id", days)
    }

    pub fn by_provider(&self, days: Days) -> rusqlite::Result<Vec<(String, Totals)>> {
        grouped(&self.conn, "provider", days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prompt: u64, completion: u64, cost: Option<u64>) -> Totals {
        let mut t = Totals::default();
        t.add(&Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: prompt / 2,
            cost_micros: cost,
        });
        t
    }

    #[test]
    fn usage_adds_up_per_user_day_and_provider_and_reads_beside_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_usage(1, 10, "2026-12-05", &[("a".into(), call(100, 20, Some(5)))]);
        store.add_usage(
            1,
            10,
            "2026-12-05",
            &[
                ("a".into(), call(10, 2, None)),
                ("b".into(), call(1, 1, Some(1))),
            ],
        );
        store.add_usage(2, 20, "2026-12-06", &[("a".into(), call(7, 3, Some(2)))]);
        store.add_usage(1, 11, "2026-11-30", &[("a".into(), call(50, 50, Some(9)))]);
        // Added with the next transaction that commits, whichever it is.
        assert_eq!(store.usage_sum(None, Days::ALL).unwrap(), Totals::default());
        store.record_left().unwrap();

        let day = Days {
            from: "2026-12-05",
            to: "2026-12-05",
        };
        let first = store.usage_sum(Some(1), day).unwrap();
        assert_eq!(
            (first.calls, first.tokens(), first.cached_tokens),
            (3, 134, 55)
        );
        assert_eq!((first.cost_micros, first.uncosted_calls), (6, 1));
        let december = Days {
            from: "2026-12-01",
            to: "2026-12-31",
        };
        assert_eq!(store.usage_sum(None, december).unwrap().tokens(), 144);
        assert_eq!(store.usage_sum(Some(1), Days::ALL).unwrap().tokens(), 234);
        assert_eq!(
            store.usage_sum(Some(3), Days::ALL).unwrap(),
            Totals::default()
        );

        let reader = UsageReader::open(dir.path()).unwrap().expect("usage kept");
        let users = reader.by_user(december).unwrap();
        assert_eq!(
            users
                .iter()
                .map(|(u, t)| (*u, t.tokens()))
                .collect::<Vec<_>>(),
            [(1, 134), (2, 10)]
        );
        let providers = reader.by_provider(Days::ALL).unwrap();
        assert_eq!(providers.len(), 2);
        assert_eq!(providers[1].0, "b");
        assert_eq!(reader.sum(None, Days::ALL).unwrap().calls, 5);
        assert!(
            UsageReader::open(&dir.path().join("nowhere"))
                .unwrap()
                .is_none()
        );
        // With the gateway stopped (its log and shared memory gone) too.
        drop(reader);
        drop(store);
        let reader = UsageReader::open(dir.path()).unwrap().expect("usage kept");
        assert_eq!(reader.sum(None, Days::ALL).unwrap().calls, 5);
    }
}
