//! `prune`: free the space of blobs no snapshot uses, planned first, then executed in the
//! order that keeps the repository valid at every instant (SPEC §10, §13).

pub mod execute;
pub mod plan;

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::backend::FileType;
use crate::format::pack::BlobType;
use crate::format::tree::NodeType;
use crate::id::Id;
use crate::repo::{IndexedRepository, MasterIndex, RepoError, Repository};
pub use execute::{ExecuteReport, LockedObject, PruneError};
use plan::{BlobKey, PackInput, PlanOptions, PrunePlan, Verified};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneOptions {
    pub plan: PlanOptions,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub plan: PrunePlan,
    pub executed: Option<ExecuteReport>,
}

/// Everything the planner needs, read once under the exclusive lock.
pub struct Loaded {
    pub repo: IndexedRepository,
    /// Index file → packs it describes (to know which old index files still matter).
    pub index_files: Vec<(Id, Vec<Id>)>,
    pub inputs: Vec<PackInput>,
    pub used: HashSet<BlobKey>,
}

/// The caller holds the exclusive lock; if it is lost (see [`Repository::check_lock`]), prune
/// stops with `LockLost` before its next write or delete.
pub fn prune(repo: Repository, opts: &PruneOptions) -> Result<PruneReport, PruneError> {
    repo.check_lock()?;
    let now = std::time::SystemTime::now();
    let loaded = load(repo)?;
    let plan_opts = PlanOptions {
        version: loaded.repo.version(),
        ..opts.plan
    };
    // Plan, read the copies the plan wants confirmed, plan again with what they showed;
    // every round settles at least one copy, so this ends.
    let mut verified = Verified::new();
    let plan = loop {
        let plan = plan::plan(&loaded.inputs, &loaded.used, &verified, &plan_opts, now)?;
        if plan.verify.is_empty() {
            break plan;
        }
        loaded.repo.check_lock()?;
        let before = verified.len();
        verified.extend(execute::verify_copies(&loaded.repo, &plan.verify)?);
        assert!(verified.len() > before, "verification made no progress");
    };
    for b in &plan.bad_copies {
        tracing::warn!(
            "{b}: the index lists it there, but that copy is not the blob (forged or damaged); \
             another copy is kept"
        );
    }
    let executed = if opts.dry_run {
        None
    } else {
        crate::failpoint::hit(crate::failpoint::PRUNE_PLANNED);
        Some(execute::execute(&loaded, &plan, &plan_opts)?)
    };
    Ok(PruneReport {
        dry_run: opts.dry_run,
        plan,
        executed,
    })
}

pub fn load(repo: Repository) -> Result<Loaded, RepoError> {
    let mut index = MasterIndex::new();
    let mut index_files = Vec::new();
    for id in repo.list(FileType::Index)? {
        let f = repo.load_index_file(&id)?;
        index.add_file(&f);
        index_files.push((id, f.packs.iter().map(|p| p.id).collect()));
    }
    let repo = IndexedRepository::from_parts(repo, index);
    let used = used_blobs(&repo)?;
    let mut on_disk: HashMap<Id, (u64, Option<std::time::SystemTime>)> = HashMap::new();
    for f in repo.backend().list(FileType::Pack)? {
        if let Ok(id) = f.name.parse::<Id>() {
            on_disk.insert(id, (f.size, f.modified));
        }
    }
    let mut inputs: Vec<PackInput> = repo
        .index()
        .packs()
        .into_iter()
        .map(|(id, blobs)| {
            let listed = on_disk.remove(&id);
            PackInput {
                id,
                size: listed.map(|l| l.0),
                modified: listed.and_then(|l| l.1),
                blobs,
                indexed: true,
            }
        })
        .collect();
    inputs.extend(on_disk.into_iter().map(|(id, (size, modified))| PackInput {
        id,
        blobs: Vec::new(),
        indexed: false,
        size: Some(size),
        modified,
    }));
    Ok(Loaded {
        repo,
        index_files,
        inputs,
        used,
    })
}

/// Every tree reachable from any snapshot and every data blob a file node lists.
pub fn used_blobs(repo: &IndexedRepository) -> Result<HashSet<BlobKey>, RepoError> {
    let mut used = HashSet::new();
    let mut stack: Vec<Id> = Vec::new();
    for (_, s) in repo.snapshots()? {
        if used.insert((BlobType::Tree, s.tree)) {
            stack.push(s.tree);
        }
    }
    while let Some(t) = stack.pop() {
        for node in repo.load_tree(&t)?.nodes {
            match node.node_type {
                NodeType::Dir => {
                    if let Some(st) = node.subtree
                        && used.insert((BlobType::Tree, st))
                    {
                        stack.push(st);
                    }
                }
                NodeType::File => {
                    for id in node.content.into_iter().flatten() {
                        used.insert((BlobType::Data, id));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests;
