//! Writing run records (the shape is `fleetsnap_contract::record`). A record is written as
//! `<name>.json.tmp`, fsynced and renamed, because the operator reads `*.json` at any moment
//! and must never see half a record.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

use fleetsnap_contract::record::is_record_name;
pub use fleetsnap_contract::record::{KEEP_RECORDS, MAX_ERROR, RunRecord, truncate_text};

/// Write atomically into `dir` (created if missing) and prune old records.
/// Returns the final path.
pub fn write(record: &RunRecord, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(record.file_name());
    let tmp = dir.join(format!("{}.tmp", record.file_name()));
    let mut rec = record.clone();
    rec.error = rec.error.map(|e| truncate_text(&e, MAX_ERROR));
    let mut json = serde_json::to_vec_pretty(&rec).expect("record serializes");
    json.push(b'\n');
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        // A full disk leaves a partial record behind: remove it, so that it neither
        // holds on to the space nor looks like a record to anyone listing the directory.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is only durable once the directory entry is.
    std::fs::File::open(dir)?.sync_all()?;
    prune_records(dir, KEEP_RECORDS)?;
    Ok(path)
}

/// Delete all but the newest `keep` records. Names sort by time, so lexical order is age.
pub fn prune_records(dir: &Path, keep: usize) -> std::io::Result<usize> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_record_name(n))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        std::fs::remove_file(dir.join(n))?;
    }
    Ok(excess)
}

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(sec: u32) -> RunRecord {
        let started = Utc.with_ymd_and_hms(2025, 3, 1, 2, 0, sec).unwrap();
        RunRecord {
            policy: "nightly".into(),
            kind: fleetsnap_contract::JobKind::Backup,
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
    fn long_errors_are_cut_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record(1);
        r.exit_code = 1;
        r.error = Some("é".repeat(1 << 20));
        let path = write(&r, dir.path()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        // Well under the operator's 64 KiB per-record limit.
        assert!(size < 16 << 10, "{size}");
        let back: RunRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let e = back.error.unwrap();
        assert!(e.len() <= MAX_ERROR + '…'.len_utf8() && e.ends_with('…'));
    }

    #[test]
    fn written_atomically_and_pruned_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        for s in 0..55 {
            write(&record(s), dir.path()).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), KEEP_RECORDS + 1);
        assert_eq!(names[0], "20250301T020005Z.json");
        assert!(names.contains(&"notes.txt".to_string()));
        assert!(!names.iter().any(|n| n.ends_with(".tmp")));
        let last: RunRecord = serde_json::from_slice(
            &std::fs::read(dir.path().join("20250301T020054Z.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(last, record(54));
    }
}
