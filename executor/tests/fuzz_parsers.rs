//! Bounded property-based fuzzing of every repository file parser, seeded from the real
//! restic fixtures: mutated bytes must give an error, never a panic. Runs in seconds in
//! debug builds (PROPTEST_CASES overrides the per-parser case count).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fleetsnap::backend::{Backend, FileType, LocalBackend};
use fleetsnap::crypto::{Key, KeyFile};
use fleetsnap::format::config::Config;
use fleetsnap::format::index::IndexFile;
use fleetsnap::format::pack;
use fleetsnap::format::snapshot::Snapshot;
use fleetsnap::format::tree::Tree;
use fleetsnap::format::unpacked;
use fleetsnap::repo::Repository;
use proptest::prelude::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/restic-fixtures/repos/repo-v2"
);

/// Raw and decrypted bytes of one file of each kind from the fixture repository.
struct Seeds {
    key: Key,
    key_file: Vec<u8>,
    sealed_config: Vec<u8>,
    /// Decrypted but still framed (v2: `0x02` + zstd) unpacked files.
    framed: Vec<Vec<u8>>,
    config_json: Vec<u8>,
    index_json: Vec<u8>,
    snapshot_json: Vec<u8>,
    tree_json: Vec<u8>,
    pack_file: Vec<u8>,
    header_plain: Vec<u8>,
}

fn seeds() -> &'static Seeds {
    static S: OnceLock<Seeds> = OnceLock::new();
    S.get_or_init(|| {
        assert!(
            Path::new(FIXTURE).exists(),
            "missing fixture repository {FIXTURE}"
        );
        let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(FIXTURE));
        let repo = Repository::open(be.clone(), b"fixture-password").unwrap();
        let key = repo.key().clone();
        let first = |t: FileType| be.list(t).unwrap()[0].name.clone();
        let key_file = be.read(FileType::Key, &first(FileType::Key)).unwrap();
        let sealed_config = be.read(FileType::Config, "config").unwrap();
        let mut framed = Vec::new();
        let mut plain = |t: FileType, name: &str| {
            let f = key.open(&be.read(t, name).unwrap()).unwrap();
            framed.push(f.clone());
            unpacked::decode(2, f, fleetsnap::limits::MAX_INDEX).unwrap()
        };
        let config_json = plain(FileType::Config, "config");
        let index_json = plain(FileType::Index, &first(FileType::Index));
        let snapshot_json = plain(FileType::Snapshot, &first(FileType::Snapshot));
        let snap: Snapshot = serde_json::from_slice(&snapshot_json).unwrap();
        let idx = IndexFile::parse(&index_json).unwrap();
        let repo = repo.load_index().unwrap();
        let tree_json = repo.load_blob(pack::BlobType::Tree, &snap.tree).unwrap();
        let pack_id = idx.packs[0].id.to_hex();
        let pack_file = be.read(FileType::Pack, &pack_id).unwrap();
        let n = pack_file.len();
        let trailer: [u8; 4] = pack_file[n - 4..].try_into().unwrap();
        let (off, len) = pack::header_range(n as u64, trailer).unwrap();
        let header_plain = key
            .open(&pack_file[off as usize..(off + len) as usize])
            .unwrap();
        Seeds {
            key,
            key_file,
            sealed_config,
            framed,
            config_json,
            index_json,
            snapshot_json,
            tree_json,
            pack_file,
            header_plain,
        }
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize, usize),
    Truncate(usize),
    /// Overwrite with a byte that is significant to JSON or to length fields.
    Special(usize, u8),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let special = prop::sample::select(vec![
        b'"', b'{', b'}', b'[', b']', b':', b',', b'\\', b'0', b'9', b'-', 0u8, 0xff, 0x80,
    ]);
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(p, m)| Edit::Flip(p, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Remove(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), special).prop_map(|(p, b)| Edit::Special(p, b)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let len = v.len().max(1);
        match *e {
            Edit::Flip(p, m) if !v.is_empty() => v[p % len] ^= m,
            Edit::Special(p, b) if !v.is_empty() => v[p % len] = b,
            Edit::Insert(p, b) => v.insert(p % (v.len() + 1), b),
            Edit::Remove(p, n) if !v.is_empty() => {
                let s = p % len;
                let e = (s + n).min(v.len());
                v.drain(s..e);
            }
            Edit::Truncate(p) => v.truncate(p % len),
            _ => {}
        }
    }
    v
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn key_file(e in edits()) {
        let m = mutate(&seeds().key_file, &e);
        // Only the JSON layer: deriving with a mutated scrypt N could take arbitrarily long.
        if let Ok(kf) = serde_json::from_slice::<KeyFile>(&m) {
            let _ = serde_json::to_vec(&kf);
        }
        let _ = Key::from_master_json(&m);
    }

    #[test]
    fn sealed_config_and_mac(e in edits()) {
        let s = seeds();
        let m = mutate(&s.sealed_config, &e);
        if m != s.sealed_config {
            prop_assert!(s.key.open(&m).is_err());
        }
    }

    #[test]
    fn config_json(e in edits()) {
        if let Ok(c) = serde_json::from_slice::<Config>(&mutate(&seeds().config_json, &e)) {
            let _ = c.validate();
        }
    }

    #[test]
    fn unpacked_framing(e in edits(), which in 0usize..3, v in 1u32..=2) {
        let s = seeds();
        let _ = unpacked::decode(
            v,
            mutate(&s.framed[which % s.framed.len()], &e),
            fleetsnap::limits::MAX_INDEX,
        );
    }

    #[test]
    fn pack_header(e in edits()) {
        let s = seeds();
        let _ = pack::parse_header(&mutate(&s.header_plain, &e), 2);
        let _ = pack::parse_header(&mutate(&s.header_plain, &e), 1);
        let m = mutate(&s.pack_file, &e);
        let _ = pack::read_header(&s.key, &m, 2);
        let n = m.len() as u64;
        if m.len() >= 4 {
            let _ = pack::header_range(n, m[m.len() - 4..].try_into().unwrap());
        }
    }

    #[test]
    fn index(e in edits()) {
        if let Ok(f) = IndexFile::parse(&mutate(&seeds().index_json, &e)) {
            let _ = f.to_json();
        }
    }

    #[test]
    fn snapshot(e in edits()) {
        if let Ok(s) = serde_json::from_slice::<Snapshot>(&mutate(&seeds().snapshot_json, &e)) {
            let _ = serde_json::to_vec(&s);
        }
    }

    #[test]
    fn tree(e in edits()) {
        if let Ok(t) = Tree::parse(&mutate(&seeds().tree_json, &e)) {
            let _ = t.to_json();
        }
    }
}
