//! `check`: index, pack sizes, snapshot structure and (a chosen subset of) pack data.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::FileType;
use crate::format::pack::{self, BlobType, PackedBlob};
use crate::format::tree::NodeType;
use crate::id::Id;
use crate::repo::{
    IndexedRepository, MasterIndex, Repository, Result, decode_blob, decode_blob_mut,
};

/// Which packs `--read-data*` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    All,
    /// Bucket n (1-based) of m, by the first byte of the pack ID like restic: every pack is
    /// in exactly one bucket, so running 1/m … m/m covers everything once.
    Bucket {
        n: u32,
        m: u32,
    },
    Percent(f64),
    /// A calendar rotation over m buckets, by `fleetsnap_contract::rotation` (the rule the
    /// operator reports coverage with).
    Rotate {
        m: u32,
        period: Period,
    },
}

use fleetsnap_contract::rotation::MAX_SUBSETS;
pub use fleetsnap_contract::rotation::Period;

impl Subset {
    /// Parse `n/m`, `x%`, or a rotation `m/week` (also `day`, `month`).
    pub fn parse(s: &str) -> std::result::Result<Subset, String> {
        let bad = || format!("invalid subset {s:?}: use n/m, x%, or m/week|day|month");
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(bad());
            }
            return Ok(Subset::Percent(v));
        }
        let (a, b) = s.split_once('/').ok_or_else(bad)?;
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        if let Some(period) = Period::parse(b.trim()) {
            if a == 0 || a > MAX_SUBSETS {
                return Err(bad());
            }
            return Ok(Subset::Rotate { m: a, period });
        }
        let m: u32 = b.trim().parse().map_err(|_| bad())?;
        if a == 0 || m == 0 || a > m || m > MAX_SUBSETS {
            return Err(bad());
        }
        Ok(Subset::Bucket { n: a, m })
    }

    /// Resolve a rotation to a concrete bucket for the given (UTC) date.
    pub fn resolve(self, date: chrono::NaiveDate) -> Subset {
        match self {
            Subset::Rotate { m, period } => Subset::Bucket {
                n: fleetsnap_contract::rotation::subset(m, period, date),
                m,
            },
            other => other,
        }
    }

    pub fn select(self, packs: &[Id]) -> Vec<Id> {
        match self.resolve(chrono::Utc::now().date_naive()) {
            Subset::All => packs.to_vec(),
            Subset::Bucket { n, m } => packs
                .iter()
                .filter(|p| p.0[0] as u32 % m == n - 1)
                .copied()
                .collect(),
            Subset::Percent(pct) => {
                use rand::seq::SliceRandom;
                let want = ((packs.len() as f64 * pct / 100.0).ceil() as usize).min(packs.len());
                let mut v = packs.to_vec();
                v.shuffle(&mut rand::thread_rng());
                v.truncate(want);
                v.sort();
                v
            }
            Subset::Rotate { .. } => unreachable!("resolved above"),
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots: usize,
    pub trees: usize,
    pub packs: usize,
    pub packs_read: Vec<String>,
    pub subset: Option<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Run every check. Errors in the repository go into the report; only failures to talk to
/// the backend at all are returned as `Err`.
pub fn check(repo: Repository, read_data: Option<Subset>) -> Result<CheckReport> {
    repo.check_lock()?;
    let mut rep = CheckReport::default();
    // 1. index
    let mut index = MasterIndex::new();
    let mut pack_in_files: HashMap<Id, usize> = HashMap::new();
    for id in repo.list(FileType::Index)? {
        match repo.load_index_file(&id) {
            Ok(f) => {
                for p in &f.packs {
                    *pack_in_files.entry(p.id).or_default() += 1;
                    let types: HashSet<_> = p.blobs.iter().map(|b| b.blob_type).collect();
                    if types.len() > 1 {
                        rep.warnings
                            .push(format!("pack {} mixes data and tree blobs", p.id.short()));
                    }
                }
                index.add_file(&f);
            }
            Err(e) => rep.errors.push(format!("index {}: {e}", id.short())),
        }
    }
    for (p, n) in &pack_in_files {
        if *n > 1 {
            rep.warnings
                .push(format!("pack {} is listed in {n} index files", p.short()));
        }
    }
    // 2. packs vs index sizes
    let on_disk: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Some((f.name.parse().ok()?, f.size)))
        .collect();
    let indexed = index.packs();
    rep.packs = indexed.len();
    for (id, blobs) in &indexed {
        match on_disk.get(id) {
            None => rep
                .errors
                .push(format!("pack {}: does not exist", id.short())),
            Some(&size) => {
                let want = pack::expected_size(blobs);
                if size != want {
                    rep.errors.push(format!(
                        "pack {}: unexpected file size: got {size}, expected {want}",
                        id.short()
                    ));
                }
            }
        }
    }
    for id in on_disk.keys() {
        if !indexed.contains_key(id) {
            rep.warnings.push(format!(
                "pack {} not referenced in any index (hint: `prune` removes it)",
                id.short()
            ));
        }
    }
    let repo = IndexedRepository::from_parts(repo, index);
    // 3. structure
    let mut seen: HashSet<Id> = HashSet::new();
    for id in repo.list(FileType::Snapshot)? {
        repo.check_lock()?;
        match repo.load_unpacked::<crate::format::snapshot::Snapshot>(FileType::Snapshot, &id) {
            Ok(s) => {
                rep.snapshots += 1;
                let mut stack = vec![(s.tree, format!("snapshot {}", id.short()))];
                while let Some((tid, path)) = stack.pop() {
                    if !seen.insert(tid) {
                        continue;
                    }
                    rep.trees += 1;
                    let tree = match repo.load_tree(&tid) {
                        Ok(t) => t,
                        Err(e) => {
                            rep.errors
                                .push(format!("{path}: tree {}: {e}", tid.short()));
                            continue;
                        }
                    };
                    for n in &tree.nodes {
                        let np = format!("{path}/{}", n.display_name());
                        if n.name.is_empty() {
                            rep.errors.push(format!("{path}: node with empty name"));
                        }
                        match n.node_type {
                            NodeType::File => match &n.content {
                                None => rep.errors.push(format!("{np}: file has nil blob list")),
                                Some(c) => {
                                    for b in c {
                                        if b.is_zero() || !repo.index().has(BlobType::Data, b) {
                                            rep.errors.push(format!(
                                                "{np}: data blob {} not found in index",
                                                b.short()
                                            ));
                                        }
                                    }
                                }
                            },
                            NodeType::Dir => match n.subtree {
                                Some(st) if !st.is_zero() => stack.push((st, np)),
                                _ => rep.errors.push(format!("{np}: dir has no subtree")),
                            },
                            NodeType::Symlink
                            | NodeType::Dev
                            | NodeType::Chardev
                            | NodeType::Fifo
                            | NodeType::Socket => {}
                            t => rep.errors.push(format!("{np}: invalid node type {t:?}")),
                        }
                    }
                }
            }
            Err(e) => rep.errors.push(format!("snapshot {}: {e}", id.short())),
        }
    }
    // 4. data
    if let Some(subset) = read_data {
        let mut all: Vec<Id> = indexed.keys().copied().collect();
        all.sort();
        let chosen = subset.select(&all);
        rep.subset = Some(format!(
            "{:?}",
            subset.resolve(chrono::Utc::now().date_naive())
        ));
        let errors = Mutex::new(Vec::new());
        // A download that failed is no verdict on the pack: the first such error ends the
        // check as incomplete instead of being counted as damage.
        let unreadable: Mutex<Option<crate::backend::BackendError>> = Mutex::new(None);
        let next = AtomicUsize::new(0);
        // Two per core: while one pack is being downloaded, the other is being decrypted.
        let workers = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = chosen.get(i) else { break };
                        if repo.check_lock().is_err()
                            || unreadable.lock().expect("poisoned").is_some()
                        {
                            break;
                        }
                        match read_pack(&repo, id, &indexed[id]) {
                            Ok(errs) => errors.lock().expect("poisoned").extend(errs),
                            Err(e) => {
                                unreadable.lock().expect("poisoned").get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        repo.check_lock()?;
        if let Some(e) = unreadable.into_inner().expect("poisoned") {
            return Err(e.into());
        }
        rep.errors.extend(errors.into_inner().expect("poisoned"));
        rep.packs_read = chosen.iter().map(|p| p.to_hex()).collect();
    }
    Ok(rep)
}

/// Verify one pack completely against its name, its header and the index. A pack that is
/// missing is damage; one that could not be downloaded (`Err`) is not known to be.
fn read_pack(
    repo: &IndexedRepository,
    id: &Id,
    indexed: &[PackedBlob],
) -> std::result::Result<Vec<String>, crate::backend::BackendError> {
    let name = format!("pack {}", id.short());
    let mut data = match repo.backend().read(FileType::Pack, &id.to_hex()) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(vec![format!("{name}: {e}")]),
        Err(e) => return Err(e),
    };
    let mut errs = Vec::new();
    if Id::hash(&data) != *id {
        errs.push(format!(
            "{name}: content does not match its name (hash mismatch)"
        ));
    }
    let mut expected_off = 0u32;
    for b in indexed {
        if b.offset != expected_off {
            errs.push(format!(
                "{name}: gaps or overlapping blobs at offset {}",
                b.offset
            ));
            break;
        }
        expected_off = b.offset.saturating_add(b.length);
    }
    match pack::read_header(repo.key(), &data, repo.version()) {
        Ok(header) => {
            let mut decoded_to = 0usize;
            if pack::expected_size(&header) != data.len() as u64 {
                errs.push(format!("{name}: header does not describe the whole pack"));
            }
            let idx: HashSet<_> = indexed
                .iter()
                .map(|b| (b.blob_type, b.id, b.offset, b.length, b.uncompressed_length))
                .collect();
            for h in &header {
                if !idx.contains(&(h.blob_type, h.id, h.offset, h.length, h.uncompressed_length)) {
                    errs.push(format!(
                        "{name}: blob {} not contained in index or position is incorrect",
                        h.id.short()
                    ));
                }
                let end = h.offset as usize + h.length as usize;
                let what = format!("{name}: {} blob {}", h.blob_type, h.id.short());
                // Decrypt in place (no copy) unless a corrupt header makes blobs overlap
                // what was already decrypted.
                let result = if h.offset as usize >= decoded_to {
                    let Some(sealed) = data.get_mut(h.offset as usize..end) else {
                        errs.push(format!("{name}: blob {} beyond end of pack", h.id.short()));
                        continue;
                    };
                    decoded_to = end;
                    decode_blob_mut(repo.key(), sealed, h.uncompressed_length, &h.id, &what)
                } else {
                    let Some(sealed) = data.get(h.offset as usize..end) else {
                        errs.push(format!("{name}: blob {} beyond end of pack", h.id.short()));
                        continue;
                    };
                    decode_blob(repo.key(), sealed, h.uncompressed_length, &h.id, &what)
                };
                if let Err(e) = result {
                    errs.push(e.to_string());
                }
            }
        }
        Err(e) => errs.push(format!("{name}: header: {e}")),
    }
    Ok(errs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::repo::RepoError;
    use crate::repo::testutil::*;
    use std::sync::Arc;

    #[test]
    fn subset_parsing_and_rotation_cover_everything_once() {
        assert_eq!(Subset::parse("2/5").unwrap(), Subset::Bucket { n: 2, m: 5 });
        assert_eq!(Subset::parse("10%").unwrap(), Subset::Percent(10.0));
        assert_eq!(
            Subset::parse("20/week").unwrap(),
            Subset::Rotate {
                m: 20,
                period: Period::Week
            }
        );
        for bad in ["0/5", "6/5", "x", "0%", "101%", "0/week", "1/0"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        let packs: Vec<Id> = (0..500u32).map(|i| Id::hash(&i.to_le_bytes())).collect();
        let rot = Subset::parse("20/week").unwrap();
        let mut seen = HashMap::new();
        // 20 consecutive ISO weeks hit 20 distinct buckets.
        let start = chrono::NaiveDate::from_ymd_opt(2025, 3, 3).unwrap();
        for w in 0..20 {
            let d = start + chrono::Duration::weeks(w);
            let Subset::Bucket { n, m } = rot.resolve(d) else {
                panic!()
            };
            for p in (Subset::Bucket { n, m }).select(&packs) {
                *seen.entry(p).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), packs.len());
        assert!(seen.values().all(|&c| c == 1));
    }

    #[test]
    fn fixtures_pass_full_check_and_corruption_is_reported() {
        for name in ["repo-v1", "repo-v2", "repo-v2-compression-off"] {
            let be = fixture(name);
            let repo = Repository::open(be.clone(), b"fixture-password").unwrap();
            let rep = check(repo.clone(), Some(Subset::All)).unwrap();
            assert!(rep.ok(), "{name}: {:?}", rep.errors);
            assert!(rep.snapshots >= 1 && rep.trees > 5);
            assert_eq!(rep.packs_read.len(), rep.packs);
            // Flip one byte in the biggest pack.
            let packs = be.list(FileType::Pack).unwrap();
            let big = packs.iter().max_by_key(|f| f.size).unwrap();
            let mut d = be.read(FileType::Pack, &big.name).unwrap();
            d[100] ^= 0xff;
            be.put_raw(FileType::Pack, &big.name, d);
            let rep = check(repo, Some(Subset::All)).unwrap();
            assert!(
                rep.errors.iter().any(|e| e.contains("hash mismatch")),
                "{:?}",
                rep.errors
            );
            assert!(
                rep.errors
                    .iter()
                    .any(|e| e.contains("ciphertext verification failed"))
            );
        }
    }

    /// Pack downloads time out; everything else is served from the fixture.
    struct PacksTimeOut(Arc<crate::repo::mem::MemBackend>);

    impl Backend for PacksTimeOut {
        fn location(&self) -> String {
            self.0.location()
        }
        fn create(&self) -> crate::backend::BackendResult<()> {
            self.0.create()
        }
        fn list(
            &self,
            t: FileType,
        ) -> crate::backend::BackendResult<Vec<crate::backend::FileInfo>> {
            self.0.list(t)
        }
        fn read(&self, t: FileType, name: &str) -> crate::backend::BackendResult<Vec<u8>> {
            if t == FileType::Pack {
                return Err(crate::backend::BackendError::new(
                    crate::backend::BackendErrorKind::Transient,
                    "read",
                    format!("data/{name}"),
                    self.location(),
                    "timed out",
                ));
            }
            self.0.read(t, name)
        }
        fn read_prefix(
            &self,
            t: FileType,
            n: &str,
            max: u64,
        ) -> crate::backend::BackendResult<Vec<u8>> {
            self.0.read_prefix(t, n, max)
        }
        fn read_range(
            &self,
            t: FileType,
            n: &str,
            o: u64,
            l: u64,
        ) -> crate::backend::BackendResult<Vec<u8>> {
            self.0.read_range(t, n, o, l)
        }
        fn write(&self, t: FileType, name: &str, data: &[u8]) -> crate::backend::BackendResult<()> {
            self.0.write(t, name, data)
        }
        fn remove(&self, t: FileType, name: &str) -> crate::backend::BackendResult<()> {
            self.0.remove(t, name)
        }
    }

    /// A pack that cannot be downloaded (a network fault) is no verdict on the repository:
    /// the check fails as incomplete, with the backend's error, and names no pack as damaged
    /// (the operator reports named packs as damage).
    #[test]
    fn an_unreadable_pack_fails_the_check_without_calling_it_damaged() {
        let repo = Repository::open(
            Arc::new(PacksTimeOut(fixture("repo-v2"))),
            b"fixture-password",
        )
        .unwrap();
        match check(repo, Some(Subset::All)) {
            Err(RepoError::Backend(e)) => {
                assert_eq!(e.kind, crate::backend::BackendErrorKind::Transient, "{e}");
                assert!(!e.to_string().contains("pack "), "{e}");
            }
            Ok(rep) => panic!("a check that read no pack reported: {:?}", rep.errors),
            Err(e) => panic!("{e}"),
        }
    }
}
