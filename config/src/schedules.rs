//! `[schedules]`: reminders and scheduled tasks the model sets up for a chat. The time zone
//! schedules are read in when a chat has not chosen its own (`/timezone`), and how many
//! one chat may keep, so a model in a loop cannot fill the store.

use crate::report::Problem;
use crate::section::{Doc, Section, Table};

/// `[schedules]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulesConfig {
    /// An IANA time zone name (`Europe/Berlin`); `UTC` by default.
    pub time_zone: String,
    /// Active schedules one chat may keep; a new one past it is refused to the model.
    /// 0: the model is not offered the schedule tools at all.
    pub max_per_chat: u32,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        SchedulesConfig {
            time_zone: "UTC".into(),
            max_per_chat: 20,
        }
    }
}

/// Whether `name` is a time zone this build knows (IANA names, as `/timezone` takes them).
pub fn valid_time_zone(name: &str) -> bool {
    name.parse::<chrono_tz::Tz>().is_ok()
}

impl Doc<'_> {
    pub(crate) fn schedules(&mut self, table: Option<&Table>) -> SchedulesConfig {
        let mut s = Section::new("schedules", table.cloned());
        let defaults = SchedulesConfig::default();
        let time_zone: String = s.take_or("time_zone", defaults.time_zone, self);
        let zone_line = s.raw_line("time_zone", self);
        let max_per_chat = s.take_in("max_per_chat", defaults.max_per_chat, 0..=1000, self);
        s.finish(self);
        if !valid_time_zone(&time_zone) {
            self.problems.push(Problem {
                line: zone_line,
                key: "schedules.time_zone".into(),
                message: format!(
                    "{time_zone:?} is not a time zone name (use an IANA name such as \"UTC\" or \"Europe/Berlin\")"
                ),
            });
        }
        SchedulesConfig {
            time_zone,
            max_per_chat,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{MINIMAL, parse};

    #[test]
    fn schedules_default_to_utc_and_refuse_unknown_zones() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.schedules.time_zone, "UTC");
        assert_eq!(c.schedules.max_per_chat, 20);
        let c = parse(&format!(
            "{MINIMAL}\n[schedules]\ntime_zone = \"Europe/Berlin\"\nmax_per_chat = 3\n"
        ))
        .unwrap();
        assert_eq!(
            (c.schedules.time_zone.as_str(), c.schedules.max_per_chat),
            ("Europe/Berlin", 3)
        );
        let problems = parse(&format!(
            "{MINIMAL}\n[schedules]\ntime_zone = \"Mars/Olympus\"\n"
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key, "schedules.time_zone");
    }
}
