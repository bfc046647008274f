//! The prune decision: which packs to keep, delete or repack. A pure function of the index,
//! the listed pack files and the set of used blobs, so every rule is unit-testable and
//! `--dry-run` shows exactly what the real run would do.

use std::collections::{HashMap, HashSet};

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    pub max_unused: MaxUnused,
    pub max_repack_size: Option<u64>,
    /// Repository format version: v2 wants every tree blob compressed.
    pub version: u32,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            max_unused: MaxUnused::Percent(5.0),
            max_repack_size: None,
            version: 2,
        }
    }
}

/// One pack as the prune sees it: what the index says and what the backend listed.
#[derive(Debug, Clone)]
pub struct PackInput {
    pub id: Id,
    /// All index entries for this pack (empty when no index mentions it).
    pub blobs: Vec<PackedBlob>,
    pub indexed: bool,
    /// Size of the file in `data/`, `None` if the backend has no such file.
    pub size: Option<u64>,
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
        self.packs.iter().all(|p| p.action == Action::Keep)
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

/// Decide. Each used blob counts once, in the first healthy pack (by pack id) holding it;
/// further copies count as duplicates, i.e. unused.
pub fn plan(
    inputs: &[PackInput],
    used: &HashSet<BlobKey>,
    opts: &PlanOptions,
) -> Result<PrunePlan, PlanError> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].id);

    // Pass 1: where does each used blob live? Only healthy packs may serve it.
    let mut owner: HashMap<BlobKey, usize> = HashMap::new();
    for &i in &order {
        let p = &inputs[i];
        if !p.indexed || p.size != Some(pack::expected_size(&p.blobs)) {
            continue;
        }
        for b in &p.blobs {
            let k = (b.blob_type, b.id);
            if used.contains(&k) {
                owner.entry(k).or_insert(i);
            }
        }
    }
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
        let action = if !p.indexed {
            Some(Action::DeleteUnreferenced)
        } else if p.size.is_none() {
            // Pass 1 guarantees nothing used depends on it.
            Some(Action::DropMissing)
        } else if t.used == 0 {
            Some(Action::Delete)
        } else if t.unused == 0 && !t.mixed && !t.needs_compression {
            Some(Action::Keep)
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
        }
    }
    Ok(PrunePlan {
        packs,
        stats,
        repack_blobs,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = plan(&inputs, &used(D, &[1, 2]), &PlanOptions::default()).unwrap();
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
        let p = plan(std::slice::from_ref(&a), &u, &PlanOptions::default()).unwrap();
        assert_eq!(action_of(&p, &a), Action::Repack);
        assert_eq!(p.repack_blobs[&a.id].len(), 10);
        assert_eq!(p.stats.bytes_reclaimed, 1000);
        let lax = PlanOptions {
            max_unused: MaxUnused::Percent(10.0),
            ..Default::default()
        };
        assert_eq!(
            action_of(&plan(std::slice::from_ref(&a), &u, &lax).unwrap(), &a),
            Action::Keep
        );
        let abs = PlanOptions {
            max_unused: MaxUnused::Bytes(1000),
            ..Default::default()
        };
        let p = plan(std::slice::from_ref(&a), &u, &abs).unwrap();
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
        let p = plan(&inputs, &u, &opts).unwrap();
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
        let p = plan(&[t.clone(), raw.clone()], &u, &lax).unwrap();
        assert_eq!(action_of(&p, &t), Action::Repack);
        assert_eq!(action_of(&p, &raw), Action::Repack);
        // v1 repositories have no compression to catch up on.
        let v1 = PlanOptions { version: 1, ..lax };
        assert_eq!(
            action_of(
                &plan(std::slice::from_ref(&raw), &used(T, &[3]), &v1).unwrap(),
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
                &plan(std::slice::from_ref(&t), &used(T, &[1]), &tight).unwrap(),
                &t
            ),
            Action::Keep
        );
    }

    #[test]
    fn duplicates_count_once_and_free_the_second_copy() {
        let a = pack(1, D, &[1, 2], 1000);
        let b = pack(2, D, &[1, 2], 1000);
        let p = plan(
            &[a.clone(), b.clone()],
            &used(D, &[1, 2]),
            &PlanOptions::default(),
        )
        .unwrap();
        let (first, second) = if a.id < b.id { (&a, &b) } else { (&b, &a) };
        assert_eq!(action_of(&p, first), Action::Keep);
        assert_eq!(action_of(&p, second), Action::Delete);
        assert_eq!(p.stats.bytes_duplicate, 2000);
    }

    #[test]
    fn missing_used_data_and_size_mismatch_abort() {
        let a = pack(1, D, &[1], 1000);
        let e = plan(
            std::slice::from_ref(&a),
            &used(D, &[1, 9]),
            &PlanOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::MissingBlobs { count: 1, .. }), "{e}");
        let mut short = a.clone();
        short.size = Some(10);
        let e = plan(&[short], &used(D, &[1]), &PlanOptions::default()).unwrap_err();
        assert!(matches!(e, PlanError::SizeMismatch { .. }), "{e}");
        let mut gone = a.clone();
        gone.size = None;
        assert!(plan(&[gone], &used(D, &[1]), &PlanOptions::default()).is_err());
        // A damaged pack nothing uses is simply deleted.
        let mut bad = pack(2, D, &[7], 1000);
        bad.size = Some(5);
        let p = plan(
            &[a.clone(), bad.clone()],
            &used(D, &[1]),
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(action_of(&p, &bad), Action::Delete);
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
