//! The calendar budgets count in: the day and the month a moment falls in, in
//! `budgets.time_zone`, and how long until each starts again. Days begin at local
//! midnight, months on the first, whatever daylight saving does (jiff knows the zone's
//! rules; a midnight a DST change skips begins the day at the first moment that exists).

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::store::Days;

/// The periods a moment falls in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods {
    /// `YYYY-MM-DD`: the key usage is stored under.
    pub day: String,
    pub month_first: String,
    pub month_last: String,
    /// Until the next day begins.
    pub day_left_secs: u64,
    /// Until the next month begins.
    pub month_left_secs: u64,
}

impl Periods {
    pub fn today(&self) -> Days<'_> {
        Days {
            from: &self.day,
            to: &self.day,
        }
    }

    pub fn this_month(&self) -> Days<'_> {
        Days {
            from: &self.month_first,
            to: &self.month_last,
        }
    }
}

/// The periods `unix` falls in, in `zone`.
pub fn periods(zone: &TimeZone, unix: u64) -> Periods {
    let seconds = i64::try_from(unix).unwrap_or(i64::MAX);
    let now = Timestamp::from_second(seconds).unwrap_or(Timestamp::MAX);
    let date = now.to_zoned_datetime(zone.clone()).date();
    let left = |next: Option<Date>| {
        next.and_then(|d| d.to_zoned_datetime(zone.clone()).ok())
            .map(|start| start.timestamp().as_second().saturating_sub(seconds))
            .and_then(|secs| u64::try_from(secs).ok())
            .unwrap_or(0)
    };
    Periods {
        day: date.to_string(),
        month_first: date.first_of_month().to_string(),
        month_last: date.last_of_month().to_string(),
        day_left_secs: left(date.tomorrow().ok()),
        month_left_secs: left(date.last_of_month().tomorrow().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-31 23:30 UTC.
    const NEW_YEARS_EVE: u64 = 1_798_759_800;

    #[test]
    fn the_day_and_month_are_the_zones_and_reset_at_its_midnight() {
        let utc = periods(&TimeZone::UTC, NEW_YEARS_EVE);
        assert_eq!(utc.day, "2026-12-31");
        assert_eq!(
            (utc.month_first.as_str(), utc.month_last.as_str()),
            ("2026-12-01", "2026-12-31")
        );
        assert_eq!((utc.day_left_secs, utc.month_left_secs), (1800, 1800));

        // Berlin is an hour ahead in winter: it is already the new year there.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let b = periods(&berlin, NEW_YEARS_EVE);
        assert_eq!(b.day, "2027-01-01");
        assert_eq!(b.month_first, "2027-01-01");
        assert_eq!(b.day_left_secs, 23 * 3600 + 1800);
        assert_eq!(b.month_left_secs, 30 * 86_400 + 23 * 3600 + 1800);

        // New York is five hours behind: still the afternoon of the 31st.
        let ny = TimeZone::get("America/New_York").unwrap();
        let n = periods(&ny, NEW_YEARS_EVE);
        assert_eq!(n.day, "2026-12-31");
        assert_eq!(n.day_left_secs, 5 * 3600 + 1800);
    }

    #[test]
    fn a_day_with_a_dst_change_is_23_or_25_hours() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29 00:00 in Berlin (CET, UTC+1) is 2026-03-28 23:00 UTC; clocks go
        // forward at 02:00, so that day has 23 hours.
        let midnight = 1_774_738_800;
        assert_eq!(periods(&berlin, midnight).day, "2026-03-29");
        assert_eq!(periods(&berlin, midnight).day_left_secs, 23 * 3600);
        assert_eq!(periods(&berlin, midnight - 1).day, "2026-03-28");
    }
}
