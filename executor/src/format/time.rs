//! Timestamps as Go's `time.Time` JSON: RFC 3339, nanoseconds with trailing zeros trimmed,
//! the writer's own UTC offset (`Z` for zero).

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, Local, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GoTime(pub DateTime<FixedOffset>);

impl Default for GoTime {
    fn default() -> GoTime {
        // Go's zero time; what restic writes when a time is unknown.
        GoTime(
            FixedOffset::east_opt(0)
                .expect("zero offset")
                .with_ymd_and_hms(1, 1, 1, 0, 0, 0)
                .single()
                .expect("valid date"),
        )
    }
}

impl GoTime {
    pub fn now() -> GoTime {
        let now = Local::now();
        GoTime(now.with_timezone(now.offset()))
    }

    /// From seconds + nanoseconds since the epoch, in the local zone.
    pub fn from_unix(secs: i64, nanos: u32) -> GoTime {
        match Utc.timestamp_opt(secs, nanos).single() {
            Some(t) => {
                let local = t.with_timezone(&Local);
                GoTime(local.with_timezone(local.offset()))
            }
            None => GoTime::default(),
        }
    }

    pub fn unix(&self) -> (i64, u32) {
        (self.0.timestamp(), self.0.timestamp_subsec_nanos())
    }

    pub fn unix_nanos(&self) -> i128 {
        let (s, n) = self.unix();
        s as i128 * 1_000_000_000 + n as i128
    }
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        // Go cannot encode years outside 0..=9999, so restic clamps them.
        let year = t.year().clamp(0, 9999);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            year,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        let ns = t.nanosecond() % 1_000_000_000;
        if ns != 0 {
            let frac = format!("{ns:09}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        let off = t.offset().local_minus_utc();
        if off == 0 {
            f.write_str("Z")
        } else {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.abs();
            write!(f, "{}{:02}:{:02}", sign, a / 3600, (a % 3600) / 60)
        }
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoTime, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(GoTime)
            .map_err(|e| serde::de::Error::custom(format!("time {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_format_roundtrips_observed_values() {
        for s in [
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:21.5Z",
            "2023-11-14T22:13:22.123456789Z",
            "2023-11-15T03:43:20+05:30",
            "2023-11-15T03:43:20.000000001-07:00",
        ] {
            let t: GoTime = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(t.to_string(), s);
        }
        let t: GoTime = serde_json::from_str("\"2023-11-15T03:43:20+05:30\"").unwrap();
        assert_eq!(t.unix(), (1700000000, 0));
    }
}
