//! `hermes-gateway schedules --config FILE`: every chat's schedules, for the operator,
//! read from the state store beside a running gateway (SQLite's write-ahead log lets a
//! reader in while the gateway writes; the file is opened read-only, so this command can
//! neither migrate nor lock it).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::chat;
use crate::store::ScheduleRow;

/// Prints the schedules: exit 0, or 78 for a configuration that does not load, 1 for a
/// store that cannot be read.
pub fn schedules_command(config: &Path) -> i32 {
    let config = match hermes_config::Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return hermes_config::EXIT_CONFIG;
        }
    };
    let path = crate::setup::state_dir(&config).join("state.db");
    match read(&path) {
        Ok(rows) if rows.is_empty() => {
            println!("No schedules ({}).", path.display());
            0
        }
        Ok(rows) => {
            for (s, runs, failed) in rows {
                println!(
                    "chat {}{} · user {} · {} · runs {runs}, failed {failed}",
                    s.chat_id,
                    s.thread_id
                        .map(|t| format!(" topic {t}"))
                        .unwrap_or_default(),
                    s.user_id,
                    chat::line(&s)
                );
            }
            0
        }
        Err(e) => {
            eprintln!("cannot read the schedules in {}: {e}", path.display());
            1
        }
    }
}

type Listed = (ScheduleRow, i64, i64);

fn read(path: &Path) -> rusqlite::Result<Vec<Listed>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT s.id, s.chat_id, s.thread_id, s.user_id, s.prompt, s.cron, s.time_zone, s.next_at,
                (SELECT count(*) FROM schedule_runs r WHERE r.schedule_id = s.id),
                (SELECT count(r.failure) FROM schedule_runs r WHERE r.schedule_id = s.id)
         FROM schedules s WHERE s.next_at IS NOT NULL ORDER BY s.chat_id, s.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            ScheduleRow {
                id: r.get(0)?,
                chat_id: r.get(1)?,
                thread_id: r.get(2)?,
                user_id: r.get::<_, i64>(3)? as u64,
                prompt: r.get(4)?,
                cron: r.get(5)?,
                time_zone: r.get(6)?,
                next_at: r.get(7)?,
            },
            r.get(8)?,
            r.get(9)?,
        ))
    })?;
    rows.collect()
}
