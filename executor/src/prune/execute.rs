//! Carry out a [`PrunePlan`]. Order matters for crash safety: new packs, then new index
//! files, then old index files go, and only then packs. Killed at any point, every index
//! file still points only at packs that exist, so `restic check` stays clean.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use serde::Serialize;

use super::Loaded;
use super::plan::{Action, PlanError, PlanOptions, PrunePlan, Verified, still_deletable};
use crate::backend::{Backend, BackendError, BackendErrorKind, FileType, Removal, object_path};
use crate::backup::saver::Saver;
use crate::format::pack::PackedBlob;
use crate::id::Id;
use crate::repo::{IndexedRepository, RepoError, decode_blob};

pub const APPEND_ONLY_MESSAGE: &str = "this identity may not delete: the repository is append-only for it; \
     run retention with maintenance credentials";

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{APPEND_ONLY_MESSAGE} (refused: {0})")]
    AppendOnly(String),
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ExecuteReport {
    pub packs_written: usize,
    pub blobs_repacked: usize,
    pub index_files_written: usize,
    pub index_files_removed: usize,
    /// Packs gone from the repository, including those whose storage is still retained.
    pub packs_removed: usize,
    /// Objects the storage keeps for now because of a retention lock (S3 Object Lock).
    pub locked: Vec<LockedObject>,
}

/// A file prune or forget deleted whose storage is (still) protected by a retention lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockedObject {
    /// Path in the repository, e.g. `data/3f/3f…`.
    pub object: String,
    /// When the last lock on it ends (RFC 3339), if the storage said.
    pub retained_until: Option<String>,
    /// True: the file is gone from the repository and only the storage keeps its locked
    /// versions, until the bucket's lifecycle rules remove them after the lock expires.
    /// False: the storage refused the delete, so the file is still in the repository and a
    /// later prune deletes it once the lock expires.
    pub hidden: bool,
}

impl std::fmt::Display for LockedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.object)?;
        match (&self.retained_until, self.hidden) {
            (Some(t), true) => write!(f, " (removed from the repository; stored until {t})"),
            (None, true) => f.write_str(" (removed from the repository; still stored)"),
            (Some(t), false) => write!(f, " (not removed; locked until {t})"),
            (None, false) => f.write_str(" (not removed; locked)"),
        }
    }
}

/// Delete one repository file for good. Retention locks are collected in `locked`, not
/// fatal; a refusal to delete at all means an append-only identity. Returns whether the file
/// is gone from the repository.
pub fn remove_file(
    backend: &dyn Backend,
    t: FileType,
    name: &str,
    locked: &mut Vec<LockedObject>,
) -> Result<bool, PruneError> {
    match backend.remove_permanently(t, name) {
        Ok(Removal::Deleted) => Ok(true),
        Ok(Removal::Retained { until, .. }) => {
            let o = LockedObject {
                object: object_path(t, name, false),
                retained_until: until,
                hidden: true,
            };
            tracing::info!("{o}: under a retention lock, so the storage keeps it for now");
            locked.push(o);
            Ok(true)
        }
        Err(BackendError {
            kind: BackendErrorKind::Locked,
            what,
            ..
        }) => {
            let o = LockedObject {
                object: what,
                retained_until: None,
                hidden: false,
            };
            tracing::info!("{o}: the storage refused to delete it until the lock expires");
            locked.push(o);
            Ok(false)
        }
        Err(e) if e.kind == BackendErrorKind::Denied => Err(PruneError::AppendOnly(e.what)),
        Err(e) => Err(RepoError::from(e).into()),
    }
}

fn remove(
    loaded: &Loaded,
    t: FileType,
    id: &Id,
    rep: &mut ExecuteReport,
) -> Result<bool, PruneError> {
    // Nothing is deleted once the exclusive lock is lost: others may be writing again.
    loaded.repo.check_lock()?;
    remove_file(
        loaded.repo.backend().as_ref(),
        t,
        &id.to_hex(),
        &mut rep.locked,
    )
}

/// Read each listed copy and tell whether it holds its blob (decrypts, decompresses and
/// hashes to its ID). A copy that cannot be read at all is an error: prune stops rather than
/// guess.
pub fn verify_copies(
    repo: &IndexedRepository,
    copies: &[(Id, PackedBlob)],
) -> Result<Verified, PruneError> {
    let mut out = Verified::new();
    for (pack, b) in copies {
        let what = format!(
            "{} blob {} in pack {}",
            b.blob_type,
            b.id.short(),
            pack.short()
        );
        let sealed = repo
            .backend()
            .read_range(
                FileType::Pack,
                &pack.to_hex(),
                b.offset as u64,
                b.length as u64,
            )
            .map_err(RepoError::from)?;
        let ok = sealed.len() == b.length as usize
            && decode_blob(repo.key(), &sealed, b.uncompressed_length, &b.id, &what).is_ok();
        if !ok {
            tracing::warn!("{what}: the copy the index points at is not the blob");
        }
        out.insert((*pack, (b.blob_type, b.id)), ok);
    }
    Ok(out)
}

/// The packs of `ids` that may still be deleted, by a fresh listing (see
/// [`still_deletable`]).
fn recheck(loaded: &Loaded, ids: Vec<Id>, opts: &PlanOptions) -> Result<Vec<Id>, PruneError> {
    if ids.is_empty() {
        return Ok(ids);
    }
    let planned_times: HashMap<Id, Option<SystemTime>> =
        loaded.inputs.iter().map(|p| (p.id, p.modified)).collect();
    let planned: Vec<(Id, Option<SystemTime>)> = ids
        .iter()
        .map(|id| (*id, planned_times.get(id).copied().flatten()))
        .collect();
    let relisted: HashMap<Id, Option<SystemTime>> = loaded
        .repo
        .backend()
        .list(FileType::Pack)
        .map_err(RepoError::from)?
        .into_iter()
        .filter_map(|f| Some((f.name.parse::<Id>().ok()?, f.modified)))
        .collect();
    let ok = still_deletable(&planned, &relisted, opts, SystemTime::now());
    for id in ids.iter().filter(|id| !ok.contains(id)) {
        tracing::info!(
            "pack {}: changed or young since the plan, or gone; not deleted",
            id.short()
        );
    }
    Ok(ok)
}

pub fn execute(
    loaded: &Loaded,
    plan: &PrunePlan,
    opts: &PlanOptions,
) -> Result<ExecuteReport, PruneError> {
    assert!(plan.verify.is_empty(), "plan has copies left to verify");
    let mut rep = ExecuteReport::default();
    loaded.repo.check_lock()?;
    // Unreferenced packs first, as restic does: no index can point at them.
    for id in recheck(loaded, plan.ids(Action::DeleteUnreferenced), opts)? {
        if remove(loaded, FileType::Pack, &id, &mut rep)? {
            rep.packs_removed += 1;
        }
    }

    let stored = repack(loaded, plan, &mut rep)?;

    // The new index describes every pack that stays, with all its blobs (check compares
    // the pack header with the index), plus the freshly written packs.
    let staying: HashSet<Id> = plan
        .ids(Action::Keep)
        .into_iter()
        .chain(plan.ids(Action::KeepYoung))
        .collect();
    let all = loaded.repo.index().packs();
    let mut new_index: Vec<(Id, Vec<PackedBlob>)> = all
        .into_iter()
        .filter(|(id, _)| staying.contains(id))
        .collect();
    new_index.sort_by_key(|(id, _)| *id);
    new_index.extend(stored);
    if plan.is_noop() && rep.packs_removed == 0 {
        return Ok(rep);
    }
    loaded.repo.check_lock()?;
    let written = crate::backup::write_index(&loaded.repo, &new_index)?;
    rep.index_files_written = written.len();
    crate::failpoint::hit(crate::failpoint::PRUNE_INDEXED);

    // Old index files go next; one still in the repository (its delete was refused) still
    // references its packs, which therefore must survive.
    let mut protected: HashSet<Id> = HashSet::new();
    for (idx, packs) in &loaded.index_files {
        if written.contains(idx) {
            continue;
        }
        if remove(loaded, FileType::Index, idx, &mut rep)? {
            rep.index_files_removed += 1;
        } else {
            protected.extend(packs.iter().copied());
        }
    }

    let doomed: Vec<Id> = plan
        .ids(Action::Delete)
        .into_iter()
        .chain(plan.ids(Action::Repack))
        .filter(|id| !protected.contains(id))
        .collect();
    for id in recheck(loaded, doomed, opts)? {
        if remove(loaded, FileType::Pack, &id, &mut rep)? {
            rep.packs_removed += 1;
        }
    }
    Ok(rep)
}

/// Copy the used blobs of every repack pack into new packs (compressed in v2, fresh IVs).
/// Each source pack is read once; every blob is verified against its ID on the way.
fn repack(
    loaded: &Loaded,
    plan: &PrunePlan,
    rep: &mut ExecuteReport,
) -> Result<Vec<(Id, Vec<PackedBlob>)>, PruneError> {
    if plan.repack_blobs.is_empty() {
        return Ok(Vec::new());
    }
    let repo = &loaded.repo;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let saver = Saver::new(repo, cpus, 4);
    let mut sources: Vec<_> = plan.repack_blobs.iter().collect();
    sources.sort_by_key(|(id, _)| **id);
    for (pack, blobs) in sources {
        repo.check_lock()?;
        crate::failpoint::hit(crate::failpoint::PRUNE_REPACK);
        // Read the used blobs in runs (gaps <= 256 KiB, <= 2 MiB per read) instead of the
        // whole pack, so memory stays at one run, not one 16 MiB pack.
        let mut blobs: Vec<_> = blobs.iter().collect();
        blobs.sort_by_key(|b| b.offset);
        let mut i = 0;
        while i < blobs.len() {
            let start = blobs[i].offset as u64;
            let mut end = start + blobs[i].length as u64;
            let mut j = i + 1;
            while let Some(b) = blobs.get(j) {
                let b_end = b.offset as u64 + b.length as u64;
                if b.offset as u64 > end + (256 << 10) || b_end - start > (2 << 20) {
                    break;
                }
                end = end.max(b_end);
                j += 1;
            }
            let data = repo
                .backend()
                .read_range(FileType::Pack, &pack.to_hex(), start, end - start)
                .map_err(RepoError::from)?;
            for b in &blobs[i..j] {
                repack_blob(repo, &saver, pack, b, &data, start, rep)?;
            }
            i = j;
        }
    }
    let (stored, _) = saver.finish()?;
    rep.packs_written = stored.len();
    crate::failpoint::hit(crate::failpoint::PRUNE_REPACKED);
    Ok(stored)
}

fn repack_blob(
    repo: &IndexedRepository,
    saver: &Saver,
    pack: &Id,
    b: &PackedBlob,
    data: &[u8],
    start: u64,
    rep: &mut ExecuteReport,
) -> Result<(), PruneError> {
    let what = format!(
        "{} blob {} in pack {}",
        b.blob_type,
        b.id.short(),
        pack.short()
    );
    let lo = (b.offset as u64 - start) as usize;
    let sealed = data
        .get(lo..lo + b.length as usize)
        .ok_or_else(|| RepoError::Corrupt {
            what: what.clone(),
            msg: "pack is shorter than the index says".into(),
        })?;
    let plain = decode_blob(repo.key(), sealed, b.uncompressed_length, &b.id, &what)?;
    if saver.save(b.blob_type, b.id, plain, false)? {
        rep.blobs_repacked += 1;
    }
    Ok(())
}
