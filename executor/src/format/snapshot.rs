//! Snapshot files.

use serde::{Deserialize, Serialize};

use super::time::GoTime;
use crate::id::Id;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Snapshot {
    pub time: GoTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub program_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SnapshotSummary {
    pub backup_start: GoTime,
    pub backup_end: GoTime,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
}

impl Snapshot {
    pub fn has_tags(&self, wanted: &[String]) -> bool {
        // restic: each --tag value is a comma-separated AND group; groups are ORed.
        wanted.is_empty()
            || wanted.iter().any(|group| {
                group
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .all(|t| self.tags.iter().any(|have| have == t))
            })
    }

    pub fn has_paths(&self, wanted: &[String]) -> bool {
        wanted.is_empty() || wanted.iter().all(|p| self.paths.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_snapshots_keeping_offsets() {
        for repo in ["repo-v1", "repo-v2"] {
            let dir = format!(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/restic-fixtures/vectors/{}/plaintext/snapshots"
                ),
                repo
            );
            for e in std::fs::read_dir(dir).unwrap() {
                let data = std::fs::read(e.unwrap().path()).unwrap();
                let s: Snapshot = serde_json::from_slice(&data).unwrap();
                assert_eq!(s.paths, vec!["/tmp/restic-fixture/src".to_string()]);
                assert!(s.has_tags(&["fixture".into()]));
                assert!(!s.has_tags(&["fixture,nope".into()]));
                let out = String::from_utf8(serde_json::to_vec(&s).unwrap()).unwrap();
                if repo == "repo-v1" {
                    assert!(out.contains("+05:30"), "{out}");
                }
                assert!(!out.contains("summary"));
            }
        }
    }
}
