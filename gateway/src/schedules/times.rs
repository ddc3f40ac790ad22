//! Schedule times: a chat's time zone (chrono-tz's IANA database, compiled in), when a
//! schedule runs next (a local date-time, a delay, or a cron expression parsed by croner,
//! all read in the chat's zone, daylight saving included), and times shown to people.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A one-off further ahead than this is refused (a typo's year 2206).
const MAX_AHEAD_SECS: i64 = 5 * 366 * 86_400;

/// The zone named `name`, or UTC when it is not one (the configuration and `/timezone`
/// check names before they are kept).
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

/// A cron expression as the tools take it: five fields (minute first) or an `@` alias,
/// no seconds.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let expr = expr.trim();
    if !expr.starts_with('@') && expr.split_whitespace().count() != 5 {
        return Err(format!(
            "{expr:?} is not a cron expression of 5 fields (minute hour day-of-month month day-of-week)"
        ));
    }
    Cron::from_str(expr).map_err(|e| format!("{expr:?} is not a valid cron expression ({e})"))
}

/// The first time of `cron` strictly after `after` (Unix seconds), in `zone`.
pub fn next_of_cron(cron: &Cron, zone: Tz, after: i64) -> Option<i64> {
    let start = zone.timestamp_opt(after, 0).single()?;
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp())
}

/// `YYYY-MM-DD HH:MM` (or with `T`, or seconds) in `zone`, as Unix seconds; a local time
/// that happens twice (clocks going back) is the first, one that never happens (clocks
/// going forward) is refused.
pub fn parse_local(text: &str, zone: Tz) -> Result<i64, String> {
    let text = text.trim().replace('T', " ");
    let naive = ["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&text, f).ok())
        .ok_or_else(|| format!("{text:?} is not a local date and time as YYYY-MM-DD HH:MM"))?;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.timestamp()),
        LocalResult::None => Err(format!(
            "{text} does not exist in {zone} (the clocks skip it)"
        )),
    }
}

/// Whether a one-off at `at` is acceptable `now`: not past, not absurdly far.
pub fn check_one_off(at: i64, now: i64) -> Result<(), String> {
    if at <= now {
        return Err("that time has already passed".into());
    }
    if at - now > MAX_AHEAD_SECS {
        return Err("that is more than five years ahead".into());
    }
    Ok(())
}

/// `2026-12-05 15:04 (Sat)` in `zone`.
pub fn show(at: i64, zone: Tz) -> String {
    match Utc.timestamp_opt(at, 0).single() {
        Some(t) => t
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M (%a)")
            .to_string(),
        None => at.to_string(),
    }
}

/// Now in `zone` as the model reads it: `2026-12-05 15:04, Saturday`.
pub fn local_now(now: i64, zone: Tz) -> String {
    match DateTime::<Utc>::from_timestamp(now, 0) {
        Some(t) => t
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M, %A")
            .to_string(),
        None => now.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_read_in_the_zone_and_cron_follows_daylight_saving() {
        let berlin = zone("Europe/Berlin");
        // 2026-12-07 09:00 in Berlin is 08:00 UTC.
        let at = parse_local("2026-12-07 09:00", berlin).unwrap();
        assert_eq!(show(at, zone("UTC")), "2026-12-07 08:00 (Mon)");
        assert!(
            parse_local("2026-03-29 02:30", berlin).is_err(),
            "skipped hour"
        );
        assert!(parse_local("Monday 9", berlin).is_err());
        let daily = parse_cron("0 8 * * *").unwrap();
        // Across the spring change, 8:00 stays 8:00 local.
        let before = parse_local("2026-03-28 12:00", berlin).unwrap();
        let next = next_of_cron(&daily, berlin, before).unwrap();
        assert_eq!(show(next, berlin), "2026-03-29 08:00 (Sun)");
        let after = next_of_cron(&daily, berlin, next).unwrap();
        assert_eq!(after - next, 86_400);
        assert!(parse_cron("0 0 8 * * *").is_err(), "no seconds field");
        assert!(parse_cron("every day").is_err());
        assert!(check_one_off(10, 10).is_err());
        assert!(check_one_off(11, 10).is_ok());
    }
}
