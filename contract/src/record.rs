//! The run record: one JSON file per run, the operator's only view of what happened.
//!
//! The executor writes it as `<name>.json.tmp`, fsyncs and renames it, because the operator
//! reads `*.json` at any moment and must never see half a record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::JobKind;

/// The contract says "at least the last 50"; keeping exactly that bounds the directory.
pub const KEEP_RECORDS: usize = 50;

/// The longest `error` text written into a record, in bytes. The operator refuses records
/// over 64 KiB (`docs/host-layout.md`) and shows 1 KiB of the error; an error chain is rarely
/// more than a few hundred bytes, so this only cuts runaway messages (e.g. thousands of
/// unreadable paths), keeping their beginning.
pub const MAX_ERROR: usize = 8 << 10;

/// `s` cut to at most `max` bytes on a character boundary, ending in `…` when cut.
pub fn truncate_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub policy: String,
    pub kind: JobKind,
    #[serde(with = "rfc3339")]
    pub started: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub finished: DateTime<Utc>,
    pub exit_code: i32,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub bytes_added: u64,
    pub duration_seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
    /// When the storage key the run used last expires, where the executor learned it (a
    /// `credential_process` key's `Expiration`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub credential_expiry: Option<DateTime<Utc>>,
}

mod rfc3339_opt {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// `2025-03-01T02:00:03.123Z`: UTC with a `Z`, which every RFC 3339 parser accepts.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

impl RunRecord {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    /// Sortable by start time and unique per start second.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.started.format("%Y%m%dT%H%M%SZ"))
    }
}

/// Only our own names (`20250301T020003Z.json`), so foreign files are never deleted.
pub fn is_record_name(n: &str) -> bool {
    let Some(stem) = n.strip_suffix(".json") else {
        return false;
    };
    let b = stem.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(sec: u32) -> RunRecord {
        let started = Utc.with_ymd_and_hms(2025, 3, 1, 2, 0, sec).unwrap();
        RunRecord {
            policy: "nightly".into(),
            kind: JobKind::Backup,
            started,
            finished: started + chrono::Duration::milliseconds(62_500),
            exit_code: 0,
            snapshot_id: Some("ab".repeat(32)),
            files_new: 3,
            files_changed: 1,
            files_unmodified: 1000,
            bytes_added: 4096,
            duration_seconds: 62.5,
            error: None,
            credential_expiry: None,
        }
    }

    #[test]
    fn json_matches_the_operator_contract() {
        let r = record(3);
        assert_eq!(r.file_name(), "20250301T020003Z.json");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes_added",
                "duration_seconds",
                "error",
                "exit_code",
                "files_changed",
                "files_new",
                "files_unmodified",
                "finished",
                "kind",
                "policy",
                "snapshot_id",
                "started"
            ]
        );
        assert_eq!(v["started"], "2025-03-01T02:00:03.000Z");
        assert_eq!(v["kind"], "backup");
        assert!(v["error"].is_null());
        // The operator's own test input parses here too.
        let op = r#"{"policy":"nightly","kind":"verify","started":"2025-03-01T02:00:03Z",
            "finished":"2025-03-01T02:00:04Z","exit_code":1,"duration_seconds":1.0,
            "error":"repository locked"}"#;
        let back: RunRecord = serde_json::from_str(op).unwrap();
        assert_eq!(back.kind, JobKind::Verify);
        assert_eq!(back.bytes_added, 0);
        assert_eq!(back.credential_expiry, None);
        // A broker's key expiry, when there was one, travels with the record.
        let mut r = record(3);
        r.credential_expiry = Some("2025-03-01T03:00:00Z".parse().unwrap());
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["credential_expiry"], "2025-03-01T03:00:00Z");
        let back: RunRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.credential_expiry, r.credential_expiry);
    }

    #[test]
    fn a_failed_run_may_omit_the_counters() {
        let failed: RunRecord = serde_json::from_str(
            r#"{"policy":"nightly","kind":"verify","started":"2025-03-01T02:00:03Z",
                "finished":"2025-03-01T02:00:04Z","exit_code":1,"duration_seconds":1.0,
                "error":"repository locked"}"#,
        )
        .unwrap();
        assert!(!failed.succeeded());
        assert!(record(3).succeeded());
        assert_eq!(failed.bytes_added, 0);
    }

    #[test]
    fn only_record_names_are_records() {
        assert!(is_record_name("20250301T020003Z.json"));
        for n in [
            "notes.txt",
            "20250301T020003Z.json.tmp",
            "2025030XT020003Z.json",
            "a.json",
        ] {
            assert!(!is_record_name(n), "{n}");
        }
    }
}
