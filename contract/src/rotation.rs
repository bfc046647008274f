//! Which data subset a rotating verification reads in a period: one rule for the executor
//! (which reads it) and the operator (which reports it and the coverage).
//!
//! The period index is continuous since 1970 in UTC, so `m` consecutive periods read each of
//! the `m` subsets exactly once, whatever year boundaries, 53-week years or month counts
//! lie between. Calendar numbers (ISO week, day of year, month) restart every year and
//! would not. UTC, not the host's local time, so that the operator can name the subset of
//! any run from its start time alone.

use chrono::{Datelike, NaiveDate};

/// At most this many subsets: packs are split by the first byte of their ID, as restic's
/// `--read-data-subset n/m` does, which gives 256 distinct buckets.
pub const MAX_SUBSETS: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    /// Weeks start on Monday, as ISO weeks do.
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// The number of whole periods between 1970 and the period that contains `date` (UTC).
pub fn period_index(period: Period, date: NaiveDate) -> i64 {
    let days = i64::from(
        date.num_days_from_ce()
            - NaiveDate::from_ymd_opt(1970, 1, 1)
                .unwrap()
                .num_days_from_ce(),
    );
    match period {
        Period::Day => days,
        // 1970-01-01 was a Thursday; shifting by 3 days puts week boundaries on Monday.
        Period::Week => (days + 3).div_euclid(7),
        Period::Month => (i64::from(date.year()) - 1970) * 12 + i64::from(date.month0()),
    }
}

/// The subset `n` (1-based, of `m`) read in the period that contains `date`.
pub fn subset(m: u32, period: Period, date: NaiveDate) -> u32 {
    let m = m.clamp(1, MAX_SUBSETS);
    (period_index(period, date).rem_euclid(i64::from(m)) + 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn weeks_start_on_monday_and_indices_are_continuous() {
        // 2026-08-24 is a Monday: a new week; the Sunday before is the week before.
        let mon = period_index(Period::Week, d(2026, 8, 24));
        assert_eq!(period_index(Period::Week, d(2026, 8, 23)), mon - 1);
        assert_eq!(period_index(Period::Week, d(2026, 8, 30)), mon);
        assert_eq!(period_index(Period::Day, d(1970, 1, 1)), 0);
        assert_eq!(period_index(Period::Month, d(1971, 2, 28)), 13);
        assert_eq!(period_index(Period::Day, d(1969, 12, 31)), -1);
    }

    #[test]
    fn any_m_consecutive_periods_read_every_subset_once() {
        for (m, period) in [
            (20, Period::Week),
            (7, Period::Day),
            (20, Period::Month),
            (256, Period::Week),
        ] {
            for start in [
                d(2025, 11, 3),
                d(2026, 12, 28),
                d(2027, 12, 27),
                d(2031, 1, 1),
            ] {
                let mut seen = std::collections::BTreeSet::new();
                for i in 0..m {
                    let date = match period {
                        Period::Day => start + chrono::Duration::days(i64::from(i)),
                        Period::Week => start + chrono::Duration::weeks(i64::from(i)),
                        Period::Month => start.checked_add_months(chrono::Months::new(i)).unwrap(),
                    };
                    seen.insert(subset(m, period, date));
                }
                assert_eq!(
                    seen.len(),
                    m as usize,
                    "{m}/{} from {start}",
                    period.as_str()
                );
                assert!(seen.iter().all(|&n| (1..=m).contains(&n)));
            }
        }
    }
}
