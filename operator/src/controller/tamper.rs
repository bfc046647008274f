//! Overwrites on a versioned bucket: a host may PutObject over its own repository's files.
//! The bucket keeps the original as an older version, but nothing in restic looks at
//! versions, and a noncurrent-version expiry rule deletes the original for good later. So
//! after each verify run the VerifyPolicy lists the host repository's object versions with
//! the operator's credentials and reports every file whose current content is not the one
//! first stored ([`fleetsnap::backend::s3::overwritten`] decides).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use fleetsnap::backend::s3::Overwritten;

/// Files named in a message before the rest is only counted.
pub const LISTED: usize = 5;
/// Prefix of a tampering entry in `VerifyPolicy.status.errors`.
pub const PREFIX: &str = "Tampered: ";

/// The `status.errors` message for a host's overwritten files: the first [`LISTED`] keys
/// with the version to copy back, then a count. `None` when nothing was overwritten.
pub fn message(found: &[Overwritten]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let named: Vec<String> = found
        .iter()
        .take(LISTED)
        .map(|o| format!("{} (original version {})", o.key, o.original_version))
        .collect();
    let mut m = format!(
        "{PREFIX}{} repository file(s) overwritten since first stored: {}",
        found.len(),
        named.join(", ")
    );
    if found.len() > LISTED {
        m.push_str(&format!(", and {} more", found.len() - LISTED));
    }
    m.push_str(
        "; copy the original version back (docs/operations.md, \"Recovering overwritten files\") \
         and rotate the host's credentials",
    );
    Some(m)
}

/// Whether a `status.errors` message is a tampering report.
pub fn is_report(message: &str) -> bool {
    message.starts_with(PREFIX)
}

/// One host's listings: the one after the latest run, and the last one that succeeded.
#[derive(Clone, Debug, Default)]
struct Scan {
    run: Option<DateTime<Utc>>,
    result: Option<Result<Vec<Overwritten>, String>>,
    last_ok: Option<Vec<Overwritten>>,
}

/// The last listing per `namespace/policy/host`, keyed by the verify run it followed: a
/// host's versions are listed once per run, not once per reconcile. A failed listing keeps
/// the last successful one as what is reported, so a storage hiccup never clears a report.
pub struct ScanCache {
    entries: Mutex<HashMap<String, Scan>>,
}

impl ScanCache {
    pub fn global() -> &'static ScanCache {
        static CACHE: OnceLock<ScanCache> = OnceLock::new();
        CACHE.get_or_init(|| ScanCache {
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The listing made after the run that started at `run`, if there is one.
    pub fn get(&self, key: &str, run: DateTime<Utc>) -> Option<Result<Vec<Overwritten>, String>> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let scan = map.get(key).filter(|s| s.run == Some(run))?;
        scan.result.clone()
    }

    pub fn put(&self, key: &str, run: DateTime<Utc>, result: Result<Vec<Overwritten>, String>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let scan = map.entry(key.to_string()).or_default();
        if let Ok(found) = &result {
            scan.last_ok = Some(found.clone());
        }
        scan.run = Some(run);
        scan.result = Some(result);
    }

    /// What to report for a host now: the last successful listing.
    pub fn reported(&self, key: &str) -> Option<Vec<Overwritten>> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).and_then(|s| s.last_ok.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(key: &str) -> Overwritten {
        Overwritten {
            key: key.into(),
            original_version: format!("v-{key}"),
            versions: 2,
        }
    }

    #[test]
    fn reports_name_the_keys_and_the_version_to_restore_bounded() {
        assert_eq!(message(&[]), None);
        let m = message(&[o("config"), o("snapshots/ab")]).unwrap();
        assert!(is_report(&m));
        assert!(
            m.contains("2 repository file(s) overwritten")
                && m.contains("config (original version v-config)")
                && m.contains("snapshots/ab (original version v-snapshots/ab)"),
            "{m}"
        );
        let many: Vec<Overwritten> = (0..8).map(|i| o(&format!("index/{i}"))).collect();
        let m = message(&many).unwrap();
        assert!(m.contains("index/4") && !m.contains("index/5"), "{m}");
        assert!(m.contains(", and 3 more;"), "{m}");
        assert!(!is_report("check found 2 errors"));
    }

    #[test]
    fn one_listing_per_verify_run() {
        let c = ScanCache {
            entries: Mutex::new(HashMap::new()),
        };
        let t1: DateTime<Utc> = "2026-03-01T05:00:00Z".parse().unwrap();
        let t2: DateTime<Utc> = "2026-03-08T05:00:00Z".parse().unwrap();
        assert!(c.get("ns/v/h", t1).is_none());
        c.put("ns/v/h", t1, Ok(vec![o("config")]));
        assert_eq!(c.get("ns/v/h", t1), Some(Ok(vec![o("config")])));
        assert!(c.get("ns/v/h", t2).is_none(), "a new run lists again");
        // A failed listing is retried after the next run, and the report stays.
        c.put("ns/v/h", t2, Err("timeout".into()));
        assert!(c.get("ns/v/h", t2).unwrap().is_err());
        assert_eq!(c.reported("ns/v/h"), Some(vec![o("config")]));
        c.put("ns/v/h", t2, Ok(vec![]));
        assert_eq!(c.reported("ns/v/h"), Some(vec![]));
    }
}
