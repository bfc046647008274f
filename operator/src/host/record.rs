//! The run record: one JSON file per executor run, written by the executor into
//! `/var/lib/fleetsnap/runs/<kind>-<policy>/` and read back by the operator.
//! `docs/host-layout.md` is the contract; this struct is its reference implementation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::PolicyKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub policy: String,
    pub kind: PolicyKind,
    /// RFC 3339, UTC.
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub exit_code: i32,
    /// Full snapshot id (hex) for successful backups; `None` otherwise.
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
    /// Human-readable error for failed runs; never contains secrets.
    #[serde(default)]
    pub error: Option<String>,
    /// When the storage key the run used expires, where the executor learned it (a
    /// `credential_process` key).
    #[serde(default)]
    pub credential_expiry: Option<DateTime<Utc>>,
}

impl RunRecord {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    /// File name the executor uses: sortable by start time, unique per start second, and
    /// ending in `.json` only once complete (written as `.json.tmp`, then renamed).
    pub fn file_name(&self) -> String {
        format!("{}.json", self.started.format("%Y%m%dT%H%M%SZ"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_stable() {
        let json = r#"{
            "policy": "nightly", "kind": "backup",
            "started": "2025-03-01T02:00:03Z", "finished": "2025-03-01T02:01:05.5Z",
            "exit_code": 0, "snapshot_id": "4f2c9a",
            "files_new": 3, "files_changed": 1, "files_unmodified": 1000,
            "bytes_added": 4096, "duration_seconds": 62.5, "error": null
        }"#;
        let r: RunRecord = serde_json::from_str(json).unwrap();
        assert!(r.succeeded());
        assert_eq!(r.kind, PolicyKind::Backup);
        assert_eq!(r.file_name(), "20250301T020003Z.json");
        let back: RunRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // A failed run may omit the counters.
        let failed: RunRecord = serde_json::from_str(
            r#"{"policy":"nightly","kind":"verify","started":"2025-03-01T02:00:03Z",
                "finished":"2025-03-01T02:00:04Z","exit_code":1,"duration_seconds":1.0,
                "error":"repository locked"}"#,
        )
        .unwrap();
        assert!(!failed.succeeded());
        assert_eq!(failed.bytes_added, 0);
    }
}
