//! An opened repository: backend + master key + config, and (once loaded) the index.
//!
//! Typestate: [`Repository`] can read/write unpacked files; [`IndexedRepository`] (after
//! [`Repository::load_index`]) can also read blobs.

pub mod index;
pub mod keys;
pub mod mem;

use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, BackendError, BackendErrorKind, FileType};
use crate::crypto::{CryptoError, Key, KeyFile};
use crate::format::config::Config;
use crate::format::index::IndexFile;
use crate::format::pack::BlobType;
use crate::format::snapshot::Snapshot;
use crate::format::tree::Tree;
use crate::format::unpacked::{self, FramingError};
use crate::id::Id;
use crate::limits;
pub use index::MasterIndex;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("no repository at {0} (hint: run `fleetsnap init` first)")]
    NoRepository(String),
    #[error("repository at {0} already exists")]
    AlreadyExists(String),
    #[error("wrong password or no key found (hint: check RESTIC_PASSWORD / --password-file)")]
    WrongPassword,
    #[error("{what}: {source}")]
    Crypto {
        what: String,
        #[source]
        source: CryptoError,
    },
    #[error("{what}: {msg}")]
    Corrupt { what: String, msg: String },
    #[error("{what}: blob not found in index (hint: run `fleetsnap check`)")]
    MissingBlob { what: String },
    /// A file or blob is larger than any restic or fleetsnap writes (see [`crate::limits`]):
    /// planted by something with write access to the repository, or damaged. Nothing of it
    /// was read beyond the limit.
    #[error(
        "{what}: {detail} (hint: restic and fleetsnap never write one this large; check who \
         can write to the repository, then delete `{path}` from the storage)"
    )]
    TooLarge {
        what: String,
        /// What exceeded which limit, e.g. "the stored file is larger than the 68 KiB limit".
        detail: String,
        /// The object to delete, e.g. `locks/3f…`.
        path: String,
    },
    #[error("{0}")]
    Locked(String),
    #[error("lost the repository lock: {0}")]
    LockLost(String),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, RepoError>;

pub(crate) fn corrupt(what: impl Into<String>, msg: impl std::fmt::Display) -> RepoError {
    RepoError::Corrupt {
        what: what.into(),
        msg: msg.to_string(),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn username() -> String {
    std::env::var("USER").unwrap_or_else(|_| {
        if unsafe { libc::geteuid() } == 0 {
            "root".into()
        } else {
            String::new()
        }
    })
}

/// Reads a whole non-pack file of type `t`, refusing (without reading further) one that is
/// larger than [`limits::max_stored`] allows: `what` names it in the error.
pub fn read_bounded(backend: &dyn Backend, t: FileType, name: &str, what: &str) -> Result<Vec<u8>> {
    let max = limits::max_stored(t);
    let data = backend.read_prefix(t, name, max.saturating_add(1))?;
    if data.len() as u64 > max {
        return Err(RepoError::TooLarge {
            what: what.to_string(),
            detail: format!(
                "the stored file is larger than the {} limit",
                limits::human(max)
            ),
            path: crate::backend::object_path(t, name, false),
        });
    }
    Ok(data)
}

#[derive(Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Arc<Key>,
    config: Config,
    key_id: String,
    /// Locks held on this repository (shared by its clones), for [`Repository::check_lock`].
    leases: Arc<crate::lock::Leases>,
    /// How long taking a lock waits out a conflicting one (restic's `--retry-lock`).
    lock_wait: std::time::Duration,
}

impl Repository {
    fn config_exists(backend: &dyn Backend) -> Result<bool> {
        match backend.list(FileType::Config) {
            Ok(l) => Ok(!l.is_empty()),
            Err(e) if e.kind == BackendErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Create a new v2 repository. Fails if one exists already.
    pub fn init(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        if Self::config_exists(&*backend)? {
            return Err(RepoError::AlreadyExists(backend.location()));
        }
        backend.create()?;
        let key = Key::random();
        let config = Config::new_v2();
        let kf = KeyFile::create(
            &key,
            password,
            crate::crypto::DEFAULT_SCRYPT,
            &username(),
            &hostname(),
        )
        .map_err(|e| RepoError::Crypto {
            what: "new key".into(),
            source: e,
        })?;
        let kf_json = serde_json::to_vec(&kf).expect("key file serializes");
        let key_id = Id::hash(&kf_json).to_hex();
        backend.write(FileType::Key, &key_id, &kf_json)?;
        let sealed = key.seal(&serde_json::to_vec(&config).expect("config serializes"));
        // Config last: a repository "exists" only once its key is in place.
        backend.write(FileType::Config, "config", &sealed)?;
        Ok(Repository {
            backend,
            key: Arc::new(key),
            config,
            key_id,
            leases: Arc::default(),
            lock_wait: std::time::Duration::ZERO,
        })
    }

    /// Try every key file; a MAC failure means "not this key".
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let sealed_config = match read_bounded(&*backend, FileType::Config, "config", "config") {
            Ok(c) => c,
            Err(RepoError::Backend(e)) if e.kind == BackendErrorKind::NotFound => {
                return Err(RepoError::NoRepository(backend.location()));
            }
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = backend
            .list(FileType::Key)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        names.sort();
        for name in names {
            let data = read_bounded(&*backend, FileType::Key, &name, &format!("key {name}"))?;
            let kf: KeyFile =
                serde_json::from_slice(&data).map_err(|e| corrupt(format!("key {name}"), e))?;
            let key = match kf.open(password) {
                Ok(k) => k,
                Err(CryptoError::Mac) => continue,
                Err(e) => {
                    return Err(RepoError::Crypto {
                        what: format!("key {name}"),
                        source: e,
                    });
                }
            };
            let plain = key.open(&sealed_config).map_err(|e| RepoError::Crypto {
                what: "config (config or key is damaged)".into(),
                source: e,
            })?;
            let config: Config =
                serde_json::from_slice(&plain).map_err(|e| corrupt("config", e))?;
            config.validate().map_err(|m| corrupt("config", m))?;
            return Ok(Repository {
                backend,
                key: Arc::new(key),
                config,
                key_id: name,
                leases: Arc::default(),
                lock_wait: std::time::Duration::ZERO,
            });
        }
        Err(RepoError::WrongPassword)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn key(&self) -> &Key {
        &self.key
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn version(&self) -> u32 {
        self.config.version
    }
    pub fn leases(&self) -> &crate::lock::Leases {
        &self.leases
    }

    /// Locks taken on this repository wait up to `d` for a conflicting lock to go away.
    pub fn with_lock_wait(mut self, d: std::time::Duration) -> Repository {
        self.lock_wait = d;
        self
    }

    pub fn lock_wait(&self) -> std::time::Duration {
        self.lock_wait
    }

    /// `Err(LockLost)` once a lock held on this repository could not be kept (refresh kept
    /// failing, or someone removed it): long operations call this at safe points and
    /// before anything that deletes.
    pub fn check_lock(&self) -> Result<()> {
        self.leases.check()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn list(&self, t: FileType) -> Result<Vec<Id>> {
        let mut ids: Vec<Id> = self
            .backend
            .list(t)?
            .into_iter()
            .filter_map(|f| f.name.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Load, hash-check, decrypt and unframe an index/snapshot/lock file. Neither the stored
    /// file nor its plaintext may exceed the type's caps in [`limits`].
    pub fn load_unpacked_raw(&self, t: FileType, id: &Id) -> Result<Vec<u8>> {
        let what = format!("{t} {}", id.short());
        let name = id.to_hex();
        let data = read_bounded(&*self.backend, t, &name, &what)?;
        if Id::hash(&data) != *id {
            return Err(corrupt(
                what,
                "file content does not match its name (hash mismatch)",
            ));
        }
        let plain = self.key.open(&data).map_err(|e| RepoError::Crypto {
            what: what.clone(),
            source: e,
        })?;
        unpacked::decode(self.version(), plain, limits::max_plain(t)).map_err(|e| match e {
            FramingError::TooLarge(detail) => RepoError::TooLarge {
                what,
                detail,
                path: crate::backend::object_path(t, &name, false),
            },
            e => corrupt(what, e),
        })
    }

    pub fn load_unpacked<T: DeserializeOwned>(&self, t: FileType, id: &Id) -> Result<T> {
        let json = self.load_unpacked_raw(t, id)?;
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("{t} {}", id.short()), e))
    }

    /// Frame, seal and store JSON bytes; the name is the hash of what is stored.
    pub fn save_unpacked_raw(&self, t: FileType, json: &[u8]) -> Result<Id> {
        let sealed = self.key.seal(&unpacked::encode(self.version(), json));
        let id = Id::hash(&sealed);
        self.backend.write(t, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    pub fn save_unpacked<T: Serialize>(&self, t: FileType, v: &T) -> Result<Id> {
        let json = serde_json::to_vec(v).map_err(|e| corrupt(t.to_string(), e))?;
        self.save_unpacked_raw(t, &json)
    }

    pub fn load_index_file(&self, id: &Id) -> Result<IndexFile> {
        let json = self.load_unpacked_raw(FileType::Index, id)?;
        let f = IndexFile::parse(&json).map_err(|e| corrupt(format!("index {}", id.short()), e))?;
        check_index_entries(&f, id)?;
        if self.version() < 2 && f.uses_compression() {
            return Err(corrupt(
                format!("index {}", id.short()),
                "index uses feature not supported by repository version 1",
            ));
        }
        Ok(f)
    }

    pub fn load_index(self) -> Result<IndexedRepository> {
        let mut index = MasterIndex::new();
        for id in self.list(FileType::Index)? {
            index.add_file(&self.load_index_file(&id)?);
        }
        Ok(IndexedRepository { repo: self, index })
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = Vec::new();
        for id in self.list(FileType::Snapshot)? {
            out.push((id, self.load_unpacked::<Snapshot>(FileType::Snapshot, &id)?));
        }
        out.sort_by_key(|(_, s)| s.time.unix_nanos());
        Ok(out)
    }

    /// Every snapshot with the storage's own write time of its file (`None` where the
    /// backend does not say), oldest claimed time first. One listing feeds both, so a
    /// snapshot added meanwhile is simply not in the result.
    pub fn snapshots_with_write_times(
        &self,
    ) -> Result<Vec<(Id, Snapshot, Option<std::time::SystemTime>)>> {
        let mut out = Vec::new();
        for f in self.backend.list(FileType::Snapshot)? {
            let Ok(id) = f.name.parse::<Id>() else {
                continue;
            };
            let s = self.load_unpacked::<Snapshot>(FileType::Snapshot, &id)?;
            out.push((id, s, f.modified));
        }
        out.sort_by_key(|(id, s, _)| (s.time.unix_nanos(), *id));
        Ok(out)
    }

    /// Resolve `latest`, a full ID or a unique prefix.
    pub fn find_snapshot(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
        let snaps: Vec<_> = self
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| filter.matches(s))
            .collect();
        if spec == "latest" {
            return snaps
                .into_iter()
                .last()
                .ok_or_else(|| RepoError::Usage("no matching snapshot found".into()));
        }
        let mut hits = snaps
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec.to_lowercase()));
        match (hits.next(), hits.next()) {
            (Some(h), None) => Ok(h),
            (Some(_), Some(_)) => Err(RepoError::Usage(format!(
                "snapshot prefix {spec:?} is ambiguous"
            ))),
            _ => Err(RepoError::Usage(format!("no snapshot matches {spec:?}"))),
        }
    }
}

/// Every blob an index lists must fit the caps of its type ([`limits::max_blob_plain`],
/// [`limits::max_blob_stored`]): lengths from the index size the reads and buffers of every
/// later blob load, so an entry claiming 4 GiB is refused here, naming the index file.
fn check_index_entries(f: &IndexFile, id: &Id) -> Result<()> {
    for p in &f.packs {
        for b in &p.blobs {
            let (plain, stored) = (
                limits::max_blob_plain(b.blob_type),
                limits::max_blob_stored(b.blob_type),
            );
            let bad = if b.uncompressed_length as u64 > plain {
                Some((b.uncompressed_length, plain, "decompresses to"))
            } else if b.length as u64 > stored {
                Some((b.length, stored, "is stored as"))
            } else {
                None
            };
            if let Some((n, limit, verb)) = bad {
                return Err(RepoError::TooLarge {
                    what: format!("index {}", id.short()),
                    detail: format!(
                        "{} blob {} in pack {} {verb} {} per the index, larger than the {} limit",
                        b.blob_type,
                        b.id.short(),
                        p.id.short(),
                        limits::human(n as u64),
                        limits::human(limit)
                    ),
                    path: crate::backend::object_path(FileType::Index, &id.to_hex(), false),
                });
            }
        }
    }
    Ok(())
}

#[derive(Default, Clone, Debug)]
pub struct SnapshotFilter {
    pub hosts: Vec<String>,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && s.has_tags(&self.tags)
            && s.has_paths(&self.paths)
    }
}

pub struct IndexedRepository {
    repo: Repository,
    index: MasterIndex,
}

impl Deref for IndexedRepository {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

/// Decrypt, decompress and hash-check one stored blob.
pub fn decode_blob(
    key: &Key,
    sealed: &[u8],
    uncompressed_length: u32,
    id: &Id,
    what: &str,
) -> Result<Vec<u8>> {
    let plain = key.open(sealed).map_err(|e| RepoError::Crypto {
        what: what.to_string(),
        source: e,
    })?;
    let plain = if uncompressed_length != 0 {
        decompress(&plain, uncompressed_length, what)?
    } else {
        plain
    };
    verify_id(plain, id, what)
}

/// [`decode_blob`] for a buffer the caller owns: decrypts in place (no copy of the
/// ciphertext). `sealed` is garbage afterwards unless the MAC check failed.
pub fn decode_blob_mut(
    key: &Key,
    sealed: &mut [u8],
    uncompressed_length: u32,
    id: &Id,
    what: &str,
) -> Result<Vec<u8>> {
    let plain = key.open_in_place(sealed).map_err(|e| RepoError::Crypto {
        what: what.to_string(),
        source: e,
    })?;
    let plain = if uncompressed_length != 0 {
        decompress(plain, uncompressed_length, what)?
    } else {
        plain.to_vec()
    };
    verify_id(plain, id, what)
}

fn verify_id(plain: Vec<u8>, id: &Id, what: &str) -> Result<Vec<u8>> {
    if Id::hash(&plain) != *id {
        return Err(corrupt(
            what,
            "content does not match its ID (hash mismatch)",
        ));
    }
    Ok(plain)
}

/// Decompress a blob into a buffer of exactly its indexed size, with one zstd context per
/// thread (a streaming decoder grows its output step by step and copies it each time).
fn decompress(payload: &[u8], uncompressed_length: u32, what: &str) -> Result<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    // Index entries are checked against the blob caps when the index is loaded; this keeps
    // a caller with lengths from elsewhere (pack headers) bounded as well.
    let cap = limits::MAX_TREE_BLOB.max(limits::MAX_DATA_BLOB);
    if uncompressed_length as u64 > cap {
        return Err(corrupt(
            what,
            format!(
                "blob claims to decompress to {}, more than any blob can ({})",
                limits::human(uncompressed_length as u64),
                limits::human(cap)
            ),
        ));
    }
    let mut out = Vec::with_capacity(uncompressed_length as usize);
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| corrupt(what, e))?);
        }
        d.as_mut()
            .expect("just set")
            .decompress_to_buffer(payload, &mut out)
            .map_err(|e| {
                corrupt(
                    what,
                    format!("{e} (decompressing, index says {uncompressed_length} bytes)"),
                )
            })
    })?;
    if out.len() != uncompressed_length as usize {
        return Err(corrupt(
            what,
            format!(
                "decompressed to {} bytes, index says {uncompressed_length}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

impl IndexedRepository {
    pub fn from_parts(repo: Repository, index: MasterIndex) -> IndexedRepository {
        IndexedRepository { repo, index }
    }
    pub fn into_parts(self) -> (Repository, MasterIndex) {
        (self.repo, self.index)
    }
    pub fn index(&self) -> &MasterIndex {
        &self.index
    }
    pub fn index_mut(&mut self) -> &mut MasterIndex {
        &mut self.index
    }
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Read a blob, trying every indexed copy before giving up.
    pub fn load_blob(&self, t: BlobType, id: &Id) -> Result<Vec<u8>> {
        let locs = self.index.locations(t, id);
        if locs.is_empty() {
            return Err(RepoError::MissingBlob {
                what: format!("{t} blob {}", id.short()),
            });
        }
        let mut last = None;
        for (pack, l) in locs {
            let what = format!("{t} blob {} in pack {}", id.short(), pack.short());
            let r = self
                .backend()
                .read_range(
                    FileType::Pack,
                    &pack.to_hex(),
                    l.offset as u64,
                    l.length as u64,
                )
                .map_err(RepoError::from)
                .and_then(|sealed| {
                    if sealed.len() != l.length as usize {
                        return Err(corrupt(&what, "pack is truncated"));
                    }
                    decode_blob(self.key(), &sealed, l.uncompressed_length, id, &what)
                });
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!("{e}; trying another copy if any");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one location"))
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let data = self.load_blob(BlobType::Tree, id)?;
        Tree::parse(&data).map_err(|e| corrupt(format!("tree {}", id.short()), e))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/restic-fixtures");

    /// A fixture repository copied into memory, plus the crafted cheap key for repo-v2 so
    /// tests do not pay for calibrated scrypt.
    pub fn fixture(name: &str) -> Arc<mem::MemBackend> {
        let be = mem::MemBackend::new();
        let root = std::path::Path::new(FIXTURES).join("repos").join(name);
        let local = crate::backend::LocalBackend::new(root);
        for t in FileType::DIRS {
            for f in local.list(t).unwrap_or_default() {
                be.put_raw(t, &f.name, local.read(t, &f.name).unwrap());
            }
        }
        be.put_raw(
            FileType::Config,
            "config",
            local.read(FileType::Config, "config").unwrap(),
        );
        Arc::new(be)
    }

    pub fn open_fixture(name: &str) -> IndexedRepository {
        let be = fixture(name);
        Repository::open(be, b"fixture-password")
            .unwrap()
            .load_index()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn init_open_wrong_password_and_existing() {
        let be: Arc<dyn Backend> = Arc::new(mem::MemBackend::new());
        assert!(matches!(
            Repository::open(be.clone(), b"pw"),
            Err(RepoError::NoRepository(_))
        ));
        let r = Repository::init(be.clone(), b"pw").unwrap();
        assert_eq!(r.version(), 2);
        assert!(matches!(
            Repository::init(be.clone(), b"pw"),
            Err(RepoError::AlreadyExists(_))
        ));
        assert!(matches!(
            Repository::open(be.clone(), b"nope"),
            Err(RepoError::WrongPassword)
        ));
        let r2 = Repository::open(be, b"pw").unwrap();
        assert_eq!(r2.config(), r.config());
        let id = r2.save_unpacked_raw(FileType::Snapshot, b"{}").unwrap();
        assert_eq!(r.load_unpacked_raw(FileType::Snapshot, &id).unwrap(), b"{}");
    }

    #[test]
    fn fixture_repos_open_and_read_trees() {
        for name in ["repo-v1", "repo-v2", "repo-v2-compression-off"] {
            let r = open_fixture(name);
            let snaps = r.snapshots().unwrap();
            assert!(!snaps.is_empty(), "{name}");
            for (_, s) in snaps {
                let t = r.load_tree(&s.tree).unwrap();
                assert_eq!(t.nodes[0].name, b"src");
            }
        }
    }
}
