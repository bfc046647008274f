//! The prune decision: which packs to keep, delete or repack. A pure function of the index,
//! the listed pack files and the set of used blobs, so every rule is unit-testable and
//! `--dry-run` shows exactly what the real run would do.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::format::pack::{self, BlobType, PackedBlob};
use crate::id::Id;

pub type BlobKey = (BlobType, Id);

/// A bound on leftover unused space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// Percentage of the whole repository that may remain unused (restic's `5%`).
    Percent(f64),
    Bytes(u64),
    Unlimited,
}

impl MaxUnused {
    pub fn parse(s: &str) -> Result<MaxUnused, String> {
        let s = s.trim();
        if s == "unlimited" {
            return Ok(MaxUnused::Unlimited);
        }
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("--max-unused {s:?}: not a percentage"))?;
            if !(0.0..100.0).contains(&v) {
                return Err(format!(
                    "--max-unused {s:?}: must be at least 0% and below 100%"
                ));
            }
            return Ok(MaxUnused::Percent(v));
        }
        parse_size(s).map(MaxUnused::Bytes)
    }

    /// Unused bytes allowed for this much used data. For a percentage p the unused share
    /// of the total must not exceed p, i.e. unused ≤ used·p/(100−p).
    pub fn limit(self, used: u64) -> u64 {
        match self {
            MaxUnused::Percent(p) => (used as f64 * p / (100.0 - p)) as u64,
            MaxUnused::Bytes(b) => b,
            MaxUnused::Unlimited => u64::MAX,
        }
    }
}

/// `10M`, `512k`, `2G`, `1T`, `123` (bytes); binary units like restic's, `B`/`iB` tolerated.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown size unit {c:?} (use k, M, G or T)")),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a size (e.g. 500M, 10G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Default grace period: packs younger than this are neither deleted nor repacked (rustic
/// keeps 23 h, Kopia 24 h, Proxmox Backup Server 24 h 5 min).
pub const DEFAULT_KEEP_YOUNG: Duration = Duration::from_secs(24 * 3600);

/// A grace period: `0`, or numbers with units `d`, `h`, `m` (minutes), `s`, e.g. `1d12h`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("--keep-young {s:?}: not a duration (e.g. 24h, 90m, 2d, 0)"))?;
        num.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "--keep-young {s:?}: unknown unit {c:?} (use d, h, m, s)"
                ));
            }
        };
        total += Duration::from_secs(n.saturating_mul(unit));
    }
    if !num.is_empty() || t.is_empty() {
        return Err(format!(
            "--keep-young {s:?}: give a unit (d, h, m, s), e.g. 24h"
        ));
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    pub max_unused: MaxUnused,
    pub max_repack_size: Option<u64>,
    /// Repository format version: v2 wants every tree blob compressed.
    pub version: u32,
    /// Grace period. A pack whose storage time (not a time a host wrote into a file) is less
    /// than this old is kept as it is: it may belong to a backup still running whose lock
    /// was taken for stale. Zero turns the grace period off.
    pub keep_young: Duration,
    /// Packs whose storage time is unknown (REST lists none) count as old rather than young.
    /// Off by default: without a time the grace period cannot be checked, so they are kept.
    pub unknown_age_is_old: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            max_unused: MaxUnused::Percent(5.0),
            max_repack_size: None,
            version: 2,
            keep_young: DEFAULT_KEEP_YOUNG,
            unknown_age_is_old: false,
        }
    }
}

impl PlanOptions {
    /// Whether a pack stored at `modified` (None: unknown) is within the grace period at
    /// `now`. A time in the future (clock skew) counts as young.
    pub fn is_young(&self, modified: Option<SystemTime>, now: SystemTime) -> bool {
        if self.keep_young.is_zero() {
            return false;
        }
        match modified {
            None => !self.unknown_age_is_old,
            Some(m) => now
                .duration_since(m)
                .map_or(true, |age| age < self.keep_young),
        }
    }
}

/// What reading a copy of a blob showed: `(pack, (type, blob id))` → whether the copy
/// decrypts and hashes to its ID.
pub type Verified = HashMap<(Id, BlobKey), bool>;

/// One pack as the prune sees it: what the index says and what the backend listed.
#[derive(Debug, Clone)]
pub struct PackInput {
    pub id: Id,
    /// All index entries for this pack (empty when no index mentions it).
    pub blobs: Vec<PackedBlob>,
    pub indexed: bool,
    /// Size of the file in `data/`, `None` if the backend has no such file.
    pub size: Option<u64>,
    /// When the storage wrote the file (S3 LastModified, local mtime), if it says.
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    /// In no index: left behind by an interrupted backup or prune.
    DeleteUnreferenced,
    /// Indexed, but none of its blobs is used.
    Delete,
    /// Copy the used blobs into new packs, then delete this one.
    Repack,
    /// Indexed but not in `data/`, and nothing used lives in it: leave it out of the new index.
    DropMissing,
    /// Would be deleted or repacked, but it is younger than the grace period (or its age is
    /// unknown): left as it is, and in the index if it was.
    KeepYoung,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackPlan {
    pub id: String,
    pub action: Action,
    pub size: u64,
    pub used_bytes: u64,
    pub unused_bytes: u64,
    pub blob_type: Option<BlobType>,
    pub mixed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanStats {
    pub packs: usize,
    pub blobs_used: usize,
    pub bytes_used: u64,
    pub bytes_unused: u64,
    pub bytes_duplicate: u64,
    pub packs_keep: usize,
    pub packs_delete: usize,
    pub packs_unreferenced: usize,
    pub packs_repack: usize,
    pub packs_drop_missing: usize,
    /// Packs left alone because they are within the grace period.
    pub packs_young: usize,
    pub bytes_young: u64,
    /// Copies of used blobs read to make sure the copy that stays holds the data.
    pub copies_verified: usize,
    /// Copies that did not (forged or damaged index entries); never kept as the only copy.
    pub copies_bad: usize,
    pub bytes_delete: u64,
    pub bytes_repack: u64,
    /// Bytes that are freed: deleted packs plus the unused part of repacked ones.
    pub bytes_reclaimed: u64,
    pub bytes_unused_after: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub packs: Vec<PackPlan>,
    pub stats: PlanStats,
    /// Blobs to copy, grouped by source pack, in offset order.
    #[serde(skip)]
    pub repack_blobs: HashMap<Id, Vec<PackedBlob>>,
    /// Copies to read before this plan may be carried out: the copy chosen to stay for a
    /// used blob that has other copies about to go. Re-plan with the results.
    #[serde(skip)]
    pub verify: Vec<(Id, PackedBlob)>,
    /// Index entries whose copy did not verify, e.g. `data blob 1a2b3c4d in pack 5e6f7a8b`.
    pub bad_copies: Vec<String>,
}

impl PrunePlan {
    pub fn ids(&self, a: Action) -> Vec<Id> {
        self.packs
            .iter()
            .filter(|p| p.action == a)
            .map(|p| p.id.parse().expect("own hex id"))
            .collect()
    }

    pub fn is_noop(&self) -> bool {
        self.packs
            .iter()
            .all(|p| matches!(p.action, Action::Keep | Action::KeepYoung))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "integrity check failed: {count} used blobs are in no readable pack (first: {first}); \
         nothing was deleted (hint: run `fleetsnap check`, then `restic repair index` / `restic repair packs`)"
    )]
    MissingBlobs { count: usize, first: String },
    #[error(
        "pack {pack}: size {actual} differs from {expected} computed from the index and it holds used blobs; \
         nothing was deleted (hint: run `restic repair index`)"
    )]
    SizeMismatch {
        pack: String,
        actual: u64,
        expected: u64,
    },
}

struct Tally {
    input: usize,
    used: u64,
    unused: u64,
    keep_blobs: Vec<PackedBlob>,
    blob_type: Option<BlobType>,
    mixed: bool,
    needs_compression: bool,
}

/// Decide. Each used blob counts once, in the first healthy pack holding a copy not known to
/// be bad, oldest by storage time first (unknown times last, then by pack id); further copies
/// count as duplicates, i.e. unused.
///
/// The index alone is not trusted where it matters: a host holding the key can index garbage
/// under real blob IDs with the right lengths. So when a used blob has several copies, the one
/// that stays must have been read and found to hold the blob (`verified`) before the others
/// may go; until then the plan lists it in [`PrunePlan::verify`] and the caller reads it and
/// plans again. Packs within the grace period at `now` are never deleted or repacked.
pub fn plan(
    inputs: &[PackInput],
    used: &HashSet<BlobKey>,
    verified: &Verified,
    opts: &PlanOptions,
    now: SystemTime,
) -> Result<PrunePlan, PlanError> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].id);
    let mut preference = order.clone();
    preference.sort_by_key(|&i| {
        (
            inputs[i].modified.is_none(),
            inputs[i].modified,
            inputs[i].id,
        )
    });

    // Pass 1: where does each used blob live? Only healthy packs may serve it, and only with
    // a copy that is not known to be bad.
    let mut owner: HashMap<BlobKey, usize> = HashMap::new();
    let mut copies: HashMap<BlobKey, usize> = HashMap::new();
    let mut bad_copies = Vec::new();
    for &i in &preference {
        let p = &inputs[i];
        if !p.indexed || p.size != Some(pack::expected_size(&p.blobs)) {
            continue;
        }
        for b in &p.blobs {
            let k = (b.blob_type, b.id);
            if !used.contains(&k) {
                continue;
            }
            *copies.entry(k).or_default() += 1;
            if verified.get(&(p.id, k)) == Some(&false) {
                continue;
            }
            owner.entry(k).or_insert(i);
        }
    }
    for &i in &order {
        let p = &inputs[i];
        let mut seen = HashSet::new();
        for b in &p.blobs {
            let k = (b.blob_type, b.id);
            if verified.get(&(p.id, k)) == Some(&false) && seen.insert(k) {
                bad_copies.push(format!(
                    "{} blob {} in pack {}",
                    b.blob_type,
                    b.id.short(),
                    p.id.short()
                ));
            }
        }
    }
    // The copy that stays must be known good wherever another copy could go.
    let mut verify: Vec<(Id, PackedBlob)> = Vec::new();
    for (k, &i) in &owner {
        let p = &inputs[i];
        if copies.get(k).copied().unwrap_or(0) > 1 && verified.get(&(p.id, *k)) != Some(&true) {
            let b = p
                .blobs
                .iter()
                .find(|b| (b.blob_type, b.id) == *k)
                .expect("owner holds the blob");
            verify.push((p.id, *b));
        }
    }
    verify.sort_by_key(|(p, b)| (*p, b.offset));
    let mut missing: Vec<&BlobKey> = used.iter().filter(|k| !owner.contains_key(k)).collect();
    // A size mismatch is the more useful message when it explains the missing blobs.
    for &i in &order {
        let p = &inputs[i];
        let expected = pack::expected_size(&p.blobs);
        if let (true, Some(actual)) = (p.indexed, p.size)
            && actual != expected
            && p.blobs.iter().any(|b| used.contains(&(b.blob_type, b.id)))
        {
            return Err(PlanError::SizeMismatch {
                pack: p.id.to_hex(),
                actual,
                expected,
            });
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(PlanError::MissingBlobs {
            count: missing.len(),
            first: format!("{} {}", missing[0].0, missing[0].1.to_hex()),
        });
    }

    let mut stats = PlanStats {
        packs: inputs.len(),
        blobs_used: used.len(),
        ..Default::default()
    };
    let mut packs: Vec<PackPlan> = Vec::with_capacity(inputs.len());
    let mut candidates: Vec<Tally> = Vec::new();
    let mut repack_blobs = HashMap::new();

    for &i in &order {
        let p = &inputs[i];
        let size = p.size.unwrap_or(0);
        let mut t = Tally {
            input: i,
            used: 0,
            unused: 0,
            keep_blobs: Vec::new(),
            blob_type: None,
            mixed: false,
            needs_compression: false,
        };
        let mut seen_here = HashSet::new();
        for b in &p.blobs {
            let k = (b.blob_type, b.id);
            match t.blob_type {
                None => t.blob_type = Some(b.blob_type),
                Some(bt) if bt != b.blob_type => t.mixed = true,
                _ => {}
            }
            if owner.get(&k) == Some(&i) && seen_here.insert(k) {
                t.used += b.length as u64;
                t.keep_blobs.push(*b);
                if opts.version >= 2 && b.blob_type == BlobType::Tree && b.uncompressed_length == 0
                {
                    t.needs_compression = true;
                }
            } else {
                t.unused += b.length as u64;
                if used.contains(&k) {
                    stats.bytes_duplicate += b.length as u64;
                }
            }
        }
        stats.bytes_used += t.used;
        stats.bytes_unused += t.unused;
        let young = opts.is_young(p.modified, now);
        let action = if !p.indexed {
            Some(if young {
                Action::KeepYoung
            } else {
                Action::DeleteUnreferenced
            })
        } else if p.size.is_none() {
            // Pass 1 guarantees nothing used depends on it.
            Some(Action::DropMissing)
        } else if t.used == 0 {
            Some(if young {
                Action::KeepYoung
            } else {
                Action::Delete
            })
        } else if t.unused == 0 && !t.mixed && !t.needs_compression {
            Some(Action::Keep)
        } else if young {
            Some(Action::KeepYoung)
        } else {
            None
        };
        match action {
            Some(a) => packs.push(pack_plan(p, &t, a, size)),
            None => candidates.push(t),
        }
    }

    // Packs that must be rewritten go first, then the most wasteful ones.
    candidates.sort_by(|a, b| {
        let must =
            |t: &Tally| t.mixed || t.blob_type == Some(BlobType::Tree) || t.needs_compression;
        let ratio = |t: &Tally| t.unused as f64 / (t.used + t.unused).max(1) as f64;
        must(b)
            .cmp(&must(a))
            .then(ratio(b).total_cmp(&ratio(a)))
            .then(inputs[a.input].id.cmp(&inputs[b.input].id))
    });
    let limit = opts.max_unused.limit(stats.bytes_used);
    let mut unused_left: u64 = candidates.iter().map(|t| t.unused).sum();
    let mut repack_budget = opts.max_repack_size.unwrap_or(u64::MAX);
    for t in candidates {
        let p = &inputs[t.input];
        let size = p.size.unwrap_or(0);
        let must = t.mixed || t.blob_type == Some(BlobType::Tree) || t.needs_compression;
        let wanted = must || unused_left > limit;
        let action = if wanted && size <= repack_budget {
            repack_budget -= size;
            unused_left -= t.unused;
            repack_blobs.insert(p.id, t.keep_blobs.clone());
            Action::Repack
        } else {
            Action::Keep
        };
        packs.push(pack_plan(p, &t, action, size));
    }
    packs.sort_by(|a, b| a.id.cmp(&b.id));

    for pp in &packs {
        match pp.action {
            Action::Keep => {
                stats.packs_keep += 1;
                stats.bytes_unused_after += pp.unused_bytes;
            }
            Action::Delete => {
                stats.packs_delete += 1;
                stats.bytes_delete += pp.size;
                stats.bytes_reclaimed += pp.size;
            }
            Action::DeleteUnreferenced => {
                stats.packs_unreferenced += 1;
                stats.bytes_delete += pp.size;
                stats.bytes_reclaimed += pp.size;
            }
            Action::Repack => {
                stats.packs_repack += 1;
                stats.bytes_repack += pp.size;
                stats.bytes_reclaimed += pp.unused_bytes;
            }
            Action::DropMissing => stats.packs_drop_missing += 1,
            Action::KeepYoung => {
                stats.packs_young += 1;
                stats.bytes_young += pp.size;
                stats.bytes_unused_after += pp.unused_bytes;
            }
        }
    }
    stats.copies_verified = verified.values().filter(|ok| **ok).count();
    stats.copies_bad = bad_copies.len();
    Ok(PrunePlan {
        packs,
        stats,
        repack_blobs,
        verify,
        bad_copies,
    })
}

fn pack_plan(p: &PackInput, t: &Tally, action: Action, size: u64) -> PackPlan {
    PackPlan {
        id: p.id.to_hex(),
        action,
        size,
        used_bytes: t.used,
        unused_bytes: t.unused,
        blob_type: t.blob_type,
        mixed: t.mixed,
    }
}

/// Right before deleting: which of the packs the plan deletes may still go, given a fresh
/// listing (`relisted`: pack → its storage time now) taken at `now`. A pack that was
/// rewritten since it was planned (its storage time changed), or that is young now, stays;
/// so does one no longer listed (nothing to delete). Skipping a delete is always safe: the
/// pack is at worst left unreferenced for a later prune.
pub fn still_deletable(
    planned: &[(Id, Option<SystemTime>)],
    relisted: &HashMap<Id, Option<SystemTime>>,
    opts: &PlanOptions,
    now: SystemTime,
) -> Vec<Id> {
    planned
        .iter()
        .filter(|(id, was)| match relisted.get(id) {
            Some(is) => is == was && !opts.is_young(*is, now),
            None => false,
        })
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed "now"; every pack of [`pack`] was stored two days before it.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn plan0(
        inputs: &[PackInput],
        used: &HashSet<BlobKey>,
        opts: &PlanOptions,
    ) -> Result<PrunePlan, PlanError> {
        plan(inputs, used, &Verified::new(), opts, now())
    }

    fn id(n: u8) -> Id {
        Id::hash(&[n])
    }

    fn blob(t: BlobType, n: u8, offset: u32, len: u32, compressed: bool) -> PackedBlob {
        PackedBlob {
            blob_type: t,
            id: id(n),
            offset,
            length: len,
            uncompressed_length: if compressed { len * 2 } else { 0 },
        }
    }

    /// A healthy pack of data blobs `ns`, each `len` bytes, compressed.
    fn pack(pid: u8, t: BlobType, ns: &[u8], len: u32) -> PackInput {
        let blobs: Vec<_> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| blob(t, n, i as u32 * len, len, true))
            .collect();
        PackInput {
            id: Id::hash(&[200, pid]),
            size: Some(pack::expected_size(&blobs)),
            blobs,
            indexed: true,
            modified: Some(now() - 2 * DAY),
        }
    }

    fn used(t: BlobType, ns: &[u8]) -> HashSet<BlobKey> {
        ns.iter().map(|&n| (t, id(n))).collect()
    }

    fn action_of(p: &PrunePlan, input: &PackInput) -> Action {
        p.packs
            .iter()
            .find(|x| x.id == input.id.to_hex())
            .unwrap()
            .action
    }

    const D: BlobType = BlobType::Data;
    const T: BlobType = BlobType::Tree;

    #[test]
    fn keep_delete_unreferenced_and_missing() {
        let full = pack(1, D, &[1, 2], 1000);
        let dead = pack(2, D, &[3, 4], 1000);
        let mut orphan = pack(3, D, &[5], 1000);
        orphan.indexed = false;
        orphan.blobs.clear();
        let mut gone = pack(4, D, &[6], 1000);
        gone.size = None;
        let inputs = vec![full.clone(), dead.clone(), orphan.clone(), gone.clone()];
        let p = plan0(&inputs, &used(D, &[1, 2]), &PlanOptions::default()).unwrap();
        assert_eq!(action_of(&p, &full), Action::Keep);
        assert_eq!(action_of(&p, &dead), Action::Delete);
        assert_eq!(action_of(&p, &orphan), Action::DeleteUnreferenced);
        assert_eq!(action_of(&p, &gone), Action::DropMissing);
        assert_eq!(p.stats.packs_delete, 1);
        assert_eq!(p.stats.packs_unreferenced, 1);
        assert_eq!(p.stats.bytes_used, 2000);
        assert!(p.repack_blobs.is_empty());
    }

    #[test]
    fn partly_used_data_repacks_only_above_max_unused() {
        // 10 blobs used out of 11: 1000 of 11000 bytes unused (≈9 %).
        let a = pack(1, D, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 1000);
        let u = used(D, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let p = plan0(std::slice::from_ref(&a), &u, &PlanOptions::default()).unwrap();
        assert_eq!(action_of(&p, &a), Action::Repack);
        assert_eq!(p.repack_blobs[&a.id].len(), 10);
        assert_eq!(p.stats.bytes_reclaimed, 1000);
        let lax = PlanOptions {
            max_unused: MaxUnused::Percent(10.0),
            ..Default::default()
        };
        assert_eq!(
            action_of(&plan0(std::slice::from_ref(&a), &u, &lax).unwrap(), &a),
            Action::Keep
        );
        let abs = PlanOptions {
            max_unused: MaxUnused::Bytes(1000),
            ..Default::default()
        };
        let p = plan0(std::slice::from_ref(&a), &u, &abs).unwrap();
        assert_eq!(action_of(&p, &a), Action::Keep);
        assert_eq!(p.stats.bytes_unused_after, 1000);
    }

    #[test]
    fn most_wasteful_first_until_under_the_limit() {
        let half = pack(1, D, &[1, 2], 1000); // 50 % unused
        let tenth = pack(2, D, &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 1000); // 10 % unused
        let big = pack(3, D, &[20, 21, 22, 23, 24, 25, 26, 27, 28, 29], 1000);
        let u = used(
            D,
            &[
                1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
            ],
        );
        let opts = PlanOptions {
            max_unused: MaxUnused::Bytes(1000),
            ..Default::default()
        };
        let inputs = vec![half.clone(), tenth.clone(), big.clone()];
        let p = plan0(&inputs, &u, &opts).unwrap();
        assert_eq!(action_of(&p, &half), Action::Repack);
        assert_eq!(action_of(&p, &tenth), Action::Keep);
        assert_eq!(action_of(&p, &big), Action::Keep);
    }

    #[test]
    fn trees_and_uncompressed_trees_are_always_rewritten_within_the_budget() {
        let t = pack(1, T, &[1, 2], 100);
        let mut raw = pack(2, T, &[3], 100);
        raw.blobs[0].uncompressed_length = 0;
        raw.size = Some(pack::expected_size(&raw.blobs));
        let u: HashSet<_> = [(T, id(1)), (T, id(3))].into_iter().collect();
        let lax = PlanOptions {
            max_unused: MaxUnused::Unlimited,
            ..Default::default()
        };
        let p = plan0(&[t.clone(), raw.clone()], &u, &lax).unwrap();
        assert_eq!(action_of(&p, &t), Action::Repack);
        assert_eq!(action_of(&p, &raw), Action::Repack);
        // v1 repositories have no compression to catch up on.
        let v1 = PlanOptions { version: 1, ..lax };
        assert_eq!(
            action_of(
                &plan0(std::slice::from_ref(&raw), &used(T, &[3]), &v1).unwrap(),
                &raw
            ),
            Action::Keep
        );
        let tight = PlanOptions {
            max_repack_size: Some(10),
            ..lax
        };
        assert_eq!(
            action_of(
                &plan0(std::slice::from_ref(&t), &used(T, &[1]), &tight).unwrap(),
                &t
            ),
            Action::Keep
        );
    }

    #[test]
    fn duplicates_count_once_and_free_the_second_copy() {
        let a = pack(1, D, &[1, 2], 1000);
        let b = pack(2, D, &[1, 2], 1000);
        let inputs = [a.clone(), b.clone()];
        let u = used(D, &[1, 2]);
        let (first, second) = if a.id < b.id { (&a, &b) } else { (&b, &a) };
        // Same age: the lower ID stays, but only once its copies are known good.
        let p = plan0(&inputs, &u, &PlanOptions::default()).unwrap();
        assert_eq!(p.verify.len(), 2);
        assert!(p.verify.iter().all(|(pk, _)| *pk == first.id));
        let good: Verified = p
            .verify
            .iter()
            .map(|(pk, b)| ((*pk, (b.blob_type, b.id)), true))
            .collect();
        let p = plan(&inputs, &u, &good, &PlanOptions::default(), now()).unwrap();
        assert!(p.verify.is_empty());
        assert_eq!(action_of(&p, first), Action::Keep);
        assert_eq!(action_of(&p, second), Action::Delete);
        assert_eq!(p.stats.bytes_duplicate, 2000);
        assert_eq!(p.stats.copies_verified, 2);
    }

    /// The same blobs in two packs; which copies are good decides what stays.
    #[test]
    fn a_copy_that_does_not_verify_never_stays_alone() {
        let genuine = pack(1, D, &[1, 2], 1000);
        let mut forged = pack(2, D, &[1, 2], 1000);
        // The forgery claims to be older: it is asked for first.
        forged.modified = Some(now() - 3 * DAY);
        let inputs = [genuine.clone(), forged.clone()];
        let u = used(D, &[1, 2]);
        let k = |p: &PackInput, n: u8| (p.id, (D, id(n)));
        let p = plan0(&inputs, &u, &PlanOptions::default()).unwrap();
        assert_eq!(
            p.verify.iter().map(|(pk, _)| *pk).collect::<Vec<_>>(),
            vec![forged.id, forged.id]
        );

        // (verdicts, action of genuine, action of forged, copies to verify next)
        type Case = (Vec<((Id, BlobKey), bool)>, Action, Action, usize);
        let cases: Vec<Case> = vec![
            // Forged copies bad: the genuine pack must be read too, then it alone stays.
            (
                vec![(k(&forged, 1), false), (k(&forged, 2), false)],
                Action::Delete,
                Action::Delete,
                2,
            ),
            (
                vec![
                    (k(&forged, 1), false),
                    (k(&forged, 2), false),
                    (k(&genuine, 1), true),
                    (k(&genuine, 2), true),
                ],
                Action::Keep,
                Action::Delete,
                0,
            ),
            // One bad, one good copy in the forgery: both packs partly used, both stay
            // unless repacked; the bad copy is never what is kept.
            (
                vec![
                    (k(&forged, 1), false),
                    (k(&forged, 2), true),
                    (k(&genuine, 1), true),
                ],
                Action::Repack,
                Action::Repack,
                0,
            ),
        ];
        for (verdicts, g_action, f_action, left) in cases {
            let v: Verified = verdicts.iter().cloned().collect();
            let p = plan(
                &inputs,
                &u,
                &v,
                &PlanOptions {
                    max_unused: MaxUnused::Percent(0.0),
                    ..Default::default()
                },
                now(),
            )
            .unwrap();
            assert_eq!(p.verify.len(), left, "{verdicts:?}");
            if left == 0 {
                assert_eq!(action_of(&p, &genuine), g_action, "{verdicts:?}");
                assert_eq!(action_of(&p, &forged), f_action, "{verdicts:?}");
                if let Some(blobs) = p.repack_blobs.get(&forged.id) {
                    assert!(blobs.iter().all(|b| b.id != id(1)), "bad copy repacked");
                }
            }
            assert_eq!(
                p.bad_copies.len(),
                verdicts.iter().filter(|(_, ok)| !ok).count()
            );
        }

        // Every copy bad: nothing used is left, so nothing is deleted at all.
        let all_bad: Verified = [
            (k(&forged, 1), false),
            (k(&forged, 2), false),
            (k(&genuine, 1), false),
            (k(&genuine, 2), false),
        ]
        .into_iter()
        .collect();
        let e = plan(&inputs, &u, &all_bad, &PlanOptions::default(), now()).unwrap_err();
        assert!(matches!(e, PlanError::MissingBlobs { count: 2, .. }), "{e}");

        // A single copy is not read up front (repack verifies what it copies anyway).
        let p = plan0(std::slice::from_ref(&genuine), &u, &PlanOptions::default()).unwrap();
        assert!(p.verify.is_empty());
    }

    #[test]
    fn the_oldest_copy_by_storage_time_is_preferred() {
        let mut a = pack(1, D, &[1], 1000);
        let mut b = pack(2, D, &[1], 1000);
        let u = used(D, &[1]);
        for (ma, mb, want) in [
            (Some(now() - 3 * DAY), Some(now() - 2 * DAY), a.id),
            (Some(now() - 2 * DAY), Some(now() - 3 * DAY), b.id),
            // Unknown times come last.
            (None, Some(now() - 2 * DAY), b.id),
            (Some(now() - 2 * DAY), None, a.id),
        ] {
            a.modified = ma;
            b.modified = mb;
            let lax = PlanOptions {
                unknown_age_is_old: true,
                ..Default::default()
            };
            let p = plan(&[a.clone(), b.clone()], &u, &Verified::new(), &lax, now()).unwrap();
            assert_eq!(p.verify.len(), 1);
            assert_eq!(p.verify[0].0, want, "{ma:?} {mb:?}");
        }
    }

    /// (storage time, grace, unknown counts as old) → young?
    #[test]
    fn grace_period_table() {
        let cases = [
            (Some(now() - 2 * DAY), DAY, false, false),
            (Some(now() - DAY / 2), DAY, false, true),
            (Some(now() - DAY), DAY, false, false),
            (Some(now() + DAY), DAY, false, true), // in the future: clock skew, keep
            (None, DAY, false, true),
            (None, DAY, true, false),
            (Some(now()), Duration::ZERO, false, false),
            (None, Duration::ZERO, false, false),
        ];
        for (m, grace, unknown_old, young) in cases {
            let o = PlanOptions {
                keep_young: grace,
                unknown_age_is_old: unknown_old,
                ..Default::default()
            };
            assert_eq!(o.is_young(m, now()), young, "{m:?} {grace:?} {unknown_old}");
        }
    }

    #[test]
    fn young_packs_are_neither_deleted_nor_repacked() {
        let fresh = |mut p: PackInput| {
            p.modified = Some(now() - DAY / 4);
            p
        };
        let dead = fresh(pack(1, D, &[1], 1000));
        let mut orphan = fresh(pack(2, D, &[2], 1000));
        orphan.indexed = false;
        orphan.blobs.clear();
        let partly = fresh(pack(3, D, &[3, 4], 1000));
        let tree = fresh(pack(4, T, &[5, 8], 100));
        let mut unknown = pack(5, D, &[6], 1000);
        unknown.modified = None;
        let old_dead = pack(6, D, &[7], 1000);
        let inputs = vec![
            dead.clone(),
            orphan.clone(),
            partly.clone(),
            tree.clone(),
            unknown.clone(),
            old_dead.clone(),
        ];
        let mut u = used(D, &[3]);
        u.insert((T, id(5)));
        let strict = PlanOptions {
            max_unused: MaxUnused::Percent(0.0),
            ..Default::default()
        };
        let p = plan0(&inputs, &u, &strict).unwrap();
        for young in [&dead, &orphan, &partly, &tree, &unknown] {
            assert_eq!(action_of(&p, young), Action::KeepYoung);
        }
        assert_eq!(action_of(&p, &old_dead), Action::Delete);
        assert_eq!(p.stats.packs_young, 5);
        assert!(p.repack_blobs.is_empty());
        assert!(!p.is_noop());

        // No grace period: the same repository is cleaned up.
        let none = PlanOptions {
            keep_young: Duration::ZERO,
            ..strict
        };
        let p = plan0(&inputs, &u, &none).unwrap();
        assert_eq!(action_of(&p, &dead), Action::Delete);
        assert_eq!(action_of(&p, &orphan), Action::DeleteUnreferenced);
        assert_eq!(action_of(&p, &partly), Action::Repack);
        assert_eq!(action_of(&p, &tree), Action::Repack);
        assert_eq!(action_of(&p, &unknown), Action::Delete);
        assert_eq!(p.stats.packs_young, 0);
    }

    #[test]
    fn deletes_are_rechecked_against_a_fresh_listing() {
        let (a, b, c, d) = (id(1), id(2), id(3), id(4));
        let old = Some(now() - 2 * DAY);
        let planned = vec![(a, old), (b, old), (c, old), (d, None)];
        let relisted: HashMap<Id, Option<SystemTime>> = [
            (a, old),                    // unchanged: goes
            (b, Some(now() - DAY / 10)), // rewritten since: stays
            (d, None),                   // unknown time: stays unless told otherwise
        ]
        .into_iter()
        .collect(); // c is gone already
        let o = PlanOptions::default();
        assert_eq!(still_deletable(&planned, &relisted, &o, now()), vec![a]);
        let lax = PlanOptions {
            unknown_age_is_old: true,
            ..o
        };
        assert_eq!(
            still_deletable(&planned, &relisted, &lax, now()),
            vec![a, d]
        );
    }

    #[test]
    fn missing_used_data_and_size_mismatch_abort() {
        let a = pack(1, D, &[1], 1000);
        let e = plan0(
            std::slice::from_ref(&a),
            &used(D, &[1, 9]),
            &PlanOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::MissingBlobs { count: 1, .. }), "{e}");
        let mut short = a.clone();
        short.size = Some(10);
        let e = plan0(&[short], &used(D, &[1]), &PlanOptions::default()).unwrap_err();
        assert!(matches!(e, PlanError::SizeMismatch { .. }), "{e}");
        let mut gone = a.clone();
        gone.size = None;
        assert!(plan0(&[gone], &used(D, &[1]), &PlanOptions::default()).is_err());
        // A damaged pack nothing uses is simply deleted.
        let mut bad = pack(2, D, &[7], 1000);
        bad.size = Some(5);
        let p = plan0(
            &[a.clone(), bad.clone()],
            &used(D, &[1]),
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(action_of(&p, &bad), Action::Delete);
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("24h").unwrap(), DAY);
        assert_eq!(parse_age("1d12h").unwrap(), DAY + DAY / 2);
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        for bad in ["", "24", "1w", "h"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(MaxUnused::parse("5%").unwrap(), MaxUnused::Percent(5.0));
        assert_eq!(MaxUnused::parse("unlimited").unwrap(), MaxUnused::Unlimited);
        assert_eq!(MaxUnused::parse("1G").unwrap(), MaxUnused::Bytes(1 << 30));
        assert!(MaxUnused::parse("100%").is_err());
        assert_eq!(MaxUnused::Percent(5.0).limit(95_000), 5_000);
        assert_eq!(MaxUnused::Percent(0.0).limit(95_000), 0);
    }
}
