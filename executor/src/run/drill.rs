//! Restore drill: prove that files come back, not just that packs decrypt.
//!
//! A random sample of regular files from the latest snapshot is restored into a private
//! directory under the scratch dir, then read back from disk and re-hashed blob by blob
//! against the content IDs in the tree. The directory is removed whatever happens.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::format::pack::BlobType;
use crate::format::tree::NodeType;
use crate::id::Id;
use crate::repo::{IndexedRepository, SnapshotFilter};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DrillReport {
    pub snapshot: String,
    pub files: usize,
    pub bytes: u64,
    /// Paths in the snapshot (lossy UTF-8) of the files restored.
    pub paths: Vec<String>,
}

struct Candidate {
    path: String,
    size: u64,
    content: Vec<Id>,
}

/// Removes the drill directory on every exit path, including errors and panics.
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("restore drill: could not remove {}: {e}", self.0.display());
        }
    }
}

pub fn restore_drill(
    repo: &IndexedRepository,
    files: usize,
    scratch: &Path,
) -> Result<DrillReport, String> {
    let (sid, snap) = repo
        .find_snapshot("latest", &SnapshotFilter::default())
        .map_err(|e| e.to_string())?;
    let sample = sample_files(repo, &snap.tree, files)?;
    std::fs::create_dir_all(scratch)
        .map_err(|e| format!("scratch dir {}: {e}", scratch.display()))?;
    let dir = scratch.join(format!("fleetsnap-drill-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _guard = ScratchGuard(dir.clone());
    let mut rep = DrillReport {
        snapshot: sid.to_hex(),
        ..Default::default()
    };
    for (i, c) in sample.iter().enumerate() {
        // Flat numbered names: the drill tests content, and snapshot names may be hostile.
        let target = dir.join(i.to_string());
        restore_one(repo, c, &target).map_err(|e| format!("{}: {e}", c.path))?;
        verify_one(repo, c, &target).map_err(|e| format!("{}: {e}", c.path))?;
        rep.files += 1;
        rep.bytes += c.size;
        rep.paths.push(c.path.clone());
    }
    Ok(rep)
}

/// Reservoir sample over a full tree walk: memory is bounded by `n`, not by the snapshot.
fn sample_files(repo: &IndexedRepository, root: &Id, n: usize) -> Result<Vec<Candidate>, String> {
    let mut rng = rand::thread_rng();
    let mut seen = 0usize;
    let mut out: Vec<Candidate> = Vec::with_capacity(n);
    let mut stack = vec![(String::new(), *root)];
    while let Some((prefix, tree)) = stack.pop() {
        let t = repo.load_tree(&tree).map_err(|e| e.to_string())?;
        for node in t.nodes {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&node.name));
            match node.node_type {
                NodeType::Dir => {
                    if let Some(st) = node.subtree {
                        stack.push((path, st));
                    }
                }
                NodeType::File => {
                    seen += 1;
                    let c = Candidate {
                        path,
                        size: node.size,
                        content: node.content.unwrap_or_default(),
                    };
                    if out.len() < n {
                        out.push(c);
                    } else {
                        let j = rng.gen_range(0..seen);
                        if j < n {
                            out[j] = c;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn restore_one(repo: &IndexedRepository, c: &Candidate, target: &Path) -> Result<(), String> {
    let f = File::create(target).map_err(|e| e.to_string())?;
    let mut w = BufWriter::new(f);
    for id in &c.content {
        let data = repo
            .load_blob(BlobType::Data, id)
            .map_err(|e| e.to_string())?;
        w.write_all(&data).map_err(|e| e.to_string())?;
    }
    let f = w.into_inner().map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

/// Read the restored file back from disk and hash it in blob-sized pieces.
fn verify_one(repo: &IndexedRepository, c: &Candidate, target: &Path) -> Result<(), String> {
    let mut f = File::open(target).map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for id in &c.content {
        let len = repo
            .index()
            .plain_size(BlobType::Data, id)
            .ok_or_else(|| format!("blob {} not in the index", id.short()))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)
            .map_err(|e| format!("restored file is short at byte {total}: {e}"))?;
        if Id::hash(&buf) != *id {
            return Err(format!(
                "restored bytes {total}..{} do not hash to blob {}",
                total + len,
                id.short()
            ));
        }
        total += len;
    }
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(|e| e.to_string())? != 0 {
        return Err("restored file is longer than its blobs".into());
    }
    if total != c.size {
        return Err(format!(
            "restored {total} bytes, the snapshot records {}",
            c.size
        ));
    }
    Ok(())
}
