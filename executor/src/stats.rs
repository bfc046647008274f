//! `stats`: how big the snapshots are once restored, and how much repository data they use.

use std::collections::HashSet;

use serde::Serialize;

use crate::format::pack::BlobType;
use crate::format::tree::NodeType;
use crate::id::Id;
use crate::repo::{IndexedRepository, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sum of file sizes as a restore would write them (hard links counted once).
    RestoreSize,
    /// Unique blobs referenced, as stored (after dedup, compression, encryption).
    RawData,
}

impl Mode {
    pub fn parse(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "restore-size" => Ok(Mode::RestoreSize),
            "raw-data" => Ok(Mode::RawData),
            other => Err(format!("--mode {other:?}: use restore-size or raw-data")),
        }
    }
}

/// Field names follow restic's `stats --json` so existing tooling reads them.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub total_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_file_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_uncompressed_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_blob_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    pub snapshots_count: u64,
}

pub fn stats(repo: &IndexedRepository, snapshots: &[Id], mode: Mode) -> Result<Stats> {
    let mut st = Stats {
        snapshots_count: snapshots.len() as u64,
        ..Default::default()
    };
    let mut trees_seen: HashSet<Id> = HashSet::new();
    let mut blobs: HashSet<(BlobType, Id)> = HashSet::new();
    let mut files = 0u64;
    for sid in snapshots {
        let snap = repo.load_unpacked::<crate::format::snapshot::Snapshot>(
            crate::backend::FileType::Snapshot,
            sid,
        )?;
        // Hard links are restored once per snapshot; (device, inode) identifies them.
        let mut inodes: HashSet<(u64, u64)> = HashSet::new();
        let mut stack = vec![snap.tree];
        while let Some(t) = stack.pop() {
            // Raw data counts a shared subtree once; restore size must walk it per snapshot.
            let first_visit = trees_seen.insert(t);
            if mode == Mode::RawData && !first_visit {
                continue;
            }
            blobs.insert((BlobType::Tree, t));
            for n in repo.load_tree(&t)?.nodes {
                match n.node_type {
                    NodeType::Dir => stack.extend(n.subtree),
                    NodeType::File => {
                        if mode == Mode::RawData {
                            for id in n.content.iter().flatten() {
                                blobs.insert((BlobType::Data, *id));
                            }
                        } else if n.links <= 1 || inodes.insert((n.device_id, n.inode)) {
                            files += 1;
                            st.total_size += n.size;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    match mode {
        Mode::RestoreSize => st.total_file_count = Some(files),
        Mode::RawData => {
            let mut stored = 0u64;
            let mut plain = 0u64;
            for (t, id) in &blobs {
                if let Some((_, loc)) = repo.index().locations(*t, id).first() {
                    stored += loc.length as u64;
                    plain += repo.index().plain_size(*t, id).unwrap_or(0);
                }
            }
            st.total_size = stored;
            st.total_uncompressed_size = Some(plain);
            st.total_blob_count = Some(blobs.len() as u64);
            st.compression_ratio = Some(if stored == 0 {
                0.0
            } else {
                plain as f64 / stored as f64
            });
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::testutil::open_fixture;

    #[test]
    fn both_modes_on_a_fixture() {
        let repo = open_fixture("repo-v2");
        let ids: Vec<Id> = repo
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert!(!ids.is_empty());
        let r = stats(&repo, &ids, Mode::RestoreSize).unwrap();
        assert!(r.total_file_count.unwrap() > 0 && r.total_size > 0);
        let d = stats(&repo, &ids, Mode::RawData).unwrap();
        assert!(d.total_blob_count.unwrap() > 0);
        assert!(d.total_uncompressed_size.unwrap() > 0);
        // Two identical snapshot lists double restore size but not raw data.
        let twice: Vec<Id> = ids.iter().chain(&ids).copied().collect();
        let r2 = stats(&repo, &twice, Mode::RestoreSize).unwrap();
        assert_eq!(r2.total_size, 2 * r.total_size);
        assert_eq!(
            stats(&repo, &twice, Mode::RawData).unwrap().total_size,
            d.total_size
        );
        assert!(Mode::parse("blobs-per-file").is_err());
    }
}
