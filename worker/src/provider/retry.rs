//! When to try a provider again: `hermes-retry`'s jittered exponential backoff, never
//! sooner than the provider's own `Retry-After`.

use std::time::{Duration, SystemTime};

const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(30);

/// `Retry-After` as seconds (integer or decimal) or as an HTTP date, relative to `now`.
/// A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The exponential step before retry `n` (1-based): 500 ms, 1 s, 2 s, … capped at 30 s.
pub fn step(n: u32) -> Duration {
    hermes_retry::step(BASE, CAP, n)
}

/// The wait before retry `n`: the step, jittered (so many workers retrying together
/// spread out), and never less than `retry_after`.
pub fn delay(n: u32, retry_after: Option<Duration>) -> Duration {
    hermes_retry::jittered(step(n)).max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 2.5 ", now),
            Some(Duration::from_millis(2500))
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn delays_are_jittered_within_the_step_and_capped() {
        for n in 1..=12 {
            let full = step(n);
            for _ in 0..50 {
                let d = delay(n, None);
                assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} vs {full:?}");
            }
        }
        assert_eq!(step(1), Duration::from_millis(500));
        assert_eq!(step(2), Duration::from_secs(1));
        assert_eq!(step(40), CAP);
    }

    #[test]
    fn never_sooner_than_retry_after() {
        for _ in 0..50 {
            assert!(delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }
}
