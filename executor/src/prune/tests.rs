//! Prune against a real local repository, including refusing storage.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, LocalBackend, Removal,
};
use crate::backup::{BackupOptions, Source};
use crate::pattern::PathMatcher;

/// What every test double below passes straight to the backend it wraps, but writes.
macro_rules! forward_reads_to_inner {
    () => {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> BackendResult<()> {
            self.inner.create()
        }
        fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>> {
            self.inner.list(t)
        }
        fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>> {
            self.inner.read(t, name)
        }
        fn read_prefix(&self, t: FileType, n: &str, max: u64) -> BackendResult<Vec<u8>> {
            self.inner.read_prefix(t, n, max)
        }
        fn read_range(&self, t: FileType, n: &str, o: u64, l: u64) -> BackendResult<Vec<u8>> {
            self.inner.read_range(t, n, o, l)
        }
    };
}

/// Reads and writes forwarded: the doubles that only change removal.
macro_rules! forward_to_inner {
    () => {
        forward_reads_to_inner!();
        fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
            self.inner.write(t, name, data)
        }
    };
}

/// Refuses `remove` of one file type with a given error kind, like S3 Object Lock or an
/// append-only REST server.
struct Refusing {
    inner: Arc<dyn Backend>,
    kind: BackendErrorKind,
    only: FileType,
}

impl Backend for Refusing {
    forward_to_inner!();
    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        if t == self.only {
            return Err(BackendError::new(
                self.kind,
                "remove",
                format!("{}/{name}", t.dirname()),
                self.location(),
                "refused",
            ));
        }
        self.inner.remove(t, name)
    }
}

/// Like an S3 Object Lock bucket: `remove_permanently` hides files of the given types from
/// the repository but reports their storage as retained.
struct Retaining {
    inner: Arc<dyn Backend>,
    types: Vec<FileType>,
}

const UNTIL: &str = "2099-01-01T00:00:00Z";

impl Backend for Retaining {
    forward_to_inner!();
    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        self.inner.remove(t, name)
    }
    fn remove_permanently(&self, t: FileType, name: &str) -> BackendResult<Removal> {
        self.inner.remove(t, name)?;
        Ok(if self.types.contains(&t) {
            Removal::Retained {
                versions: 1,
                until: Some(UNTIL.into()),
            }
        } else {
            Removal::Deleted
        })
    }
}

fn backup(repo: Repository, src: &Path) -> Repository {
    let mut r = repo.load_index().unwrap();
    let opts = BackupOptions {
        excludes: PathMatcher::new(&[]).unwrap(),
        exclude_patterns: vec![],
        exclude_caches: false,
        one_file_system: false,
        tags: vec![],
        host: "h".into(),
        progress: None,
    };
    crate::backup::backup(&mut r, Source::Paths(vec![src.to_path_buf()]), opts).unwrap();
    r.into_parts().0
}

/// Two snapshots with different big files; the older one forgotten.
fn repo_with_garbage(dir: &Path) -> Arc<dyn Backend> {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("repo")));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut r = Repository::init(be.clone(), b"pw").unwrap();
    for _ in 0..2 {
        let data: Vec<u8> = (0..2_000_000u32).map(|_| rand::random::<u8>()).collect();
        std::fs::write(src.join("big"), data).unwrap();
        std::fs::write(src.join("small"), b"same").unwrap();
        r = backup(r, &src);
    }
    let oldest = r.snapshots().unwrap()[0].0;
    be.remove(FileType::Snapshot, &oldest.to_hex()).unwrap();
    be
}

fn opts() -> PruneOptions {
    PruneOptions {
        plan: PlanOptions {
            max_unused: plan::MaxUnused::Percent(0.0),
            // These tests prune what they have just written.
            keep_young: std::time::Duration::ZERO,
            ..Default::default()
        },
        dry_run: false,
    }
}

fn check_ok(be: Arc<dyn Backend>) -> crate::check::CheckReport {
    let rep = crate::check::check(
        Repository::open(be, b"pw").unwrap(),
        Some(crate::check::Subset::All),
    )
    .unwrap();
    assert!(rep.ok(), "{:?}", rep.errors);
    rep
}

#[test]
fn prune_frees_space_and_keeps_the_repository_valid() {
    let dir = tempfile::tempdir().unwrap();
    let be = repo_with_garbage(dir.path());
    let dry = prune(
        Repository::open(be.clone(), b"pw").unwrap(),
        &PruneOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(dry.executed.is_none());
    assert!(dry.plan.stats.bytes_reclaimed > 1_000_000);
    let packs_before = be.list(FileType::Pack).unwrap().len();

    let rep = prune(Repository::open(be.clone(), b"pw").unwrap(), &opts()).unwrap();
    let x = rep.executed.unwrap();
    assert!(x.packs_removed >= 1 && x.locked.is_empty());
    assert!(be.list(FileType::Pack).unwrap().len() < packs_before);
    let c = check_ok(be.clone());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Nothing left to do: a second prune changes nothing.
    let again = prune(Repository::open(be.clone(), b"pw").unwrap(), &opts()).unwrap();
    assert!(again.plan.is_noop(), "{:?}", again.plan.packs);
    assert_eq!(again.executed.unwrap().index_files_written, 0);
}

#[test]
fn object_lock_refusals_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let be: Arc<dyn Backend> = Arc::new(Refusing {
        inner: inner.clone(),
        kind: BackendErrorKind::Locked,
        only: FileType::Pack,
    });
    let rep = prune(Repository::open(be, b"pw").unwrap(), &opts()).unwrap();
    let x = rep.executed.unwrap();
    assert!(!x.locked.is_empty());
    assert!(x.locked.iter().all(|o| o.object.starts_with("data/")));
    assert!(x.locked.iter().all(|o| !o.hidden), "{:?}", x.locked);
    assert_eq!(x.packs_removed, 0, "a refused pack is still there");
    // The locked packs are merely unreferenced now: a warning, not an error.
    check_ok(inner);
}

#[test]
fn an_index_file_that_stays_keeps_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let packs_before = inner.list(FileType::Pack).unwrap().len();
    let be: Arc<dyn Backend> = Arc::new(Refusing {
        inner: inner.clone(),
        kind: BackendErrorKind::Locked,
        only: FileType::Index,
    });
    let rep = prune(Repository::open(be, b"pw").unwrap(), &opts()).unwrap();
    let x = rep.executed.unwrap();
    assert!(x.locked.iter().any(|o| o.object.starts_with("index/")));
    assert_eq!(x.index_files_removed, 0);
    // Every old index file is still there and names every old pack: none may go.
    assert_eq!(x.packs_removed, 0, "{x:?}");
    assert!(inner.list(FileType::Pack).unwrap().len() >= packs_before);
    check_ok(inner);
}

#[test]
fn retained_files_are_gone_from_the_repository_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let be: Arc<dyn Backend> = Arc::new(Retaining {
        inner: inner.clone(),
        types: vec![FileType::Pack, FileType::Index],
    });
    let dry = prune(
        Repository::open(be.clone(), b"pw").unwrap(),
        &PruneOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    let planned = dry.plan.stats.packs_delete + dry.plan.stats.packs_repack;
    assert!(planned > 0, "{:?}", dry.plan.stats);

    let x = prune(Repository::open(be, b"pw").unwrap(), &opts())
        .unwrap()
        .executed
        .unwrap();
    // A hidden index file no longer protects its packs: they are removed as planned.
    assert_eq!(x.packs_removed, planned, "{x:?}");
    assert!(x.index_files_removed >= 1, "{x:?}");
    assert_eq!(x.locked.len(), x.packs_removed + x.index_files_removed);
    assert!(x.locked.iter().all(|o| o.hidden));
    assert!(
        x.locked
            .iter()
            .all(|o| o.retained_until.as_deref() == Some(UNTIL))
    );
    assert!(x.locked.iter().any(|o| o.object.starts_with("index/")));
    let shown = x.locked[0].to_string();
    assert!(
        shown.contains("removed from the repository") && shown.contains(UNTIL),
        "{shown}"
    );
    // The repository itself is clean: nothing unreferenced, nothing missing.
    let c = check_ok(inner);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn remove_file_sorts_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let snap = inner.list(FileType::Snapshot).unwrap()[0].name.clone();
    let mut locked = Vec::new();

    let denied = Refusing {
        inner: inner.clone(),
        kind: BackendErrorKind::Denied,
        only: FileType::Snapshot,
    };
    let e = execute::remove_file(&denied, FileType::Snapshot, &snap, &mut locked).unwrap_err();
    assert!(matches!(e, PruneError::AppendOnly(_)), "{e}");
    assert!(locked.is_empty());

    let retaining = Retaining {
        inner: inner.clone(),
        types: vec![FileType::Snapshot],
    };
    assert!(execute::remove_file(&retaining, FileType::Snapshot, &snap, &mut locked).unwrap());
    assert_eq!(
        locked,
        vec![LockedObject {
            object: format!("snapshots/{snap}"),
            retained_until: Some(UNTIL.into()),
            hidden: true,
        }]
    );
    assert!(inner.list(FileType::Snapshot).unwrap().is_empty());
}

#[test]
fn append_only_identity_gets_a_clear_error_and_a_valid_repository() {
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let be: Arc<dyn Backend> = Arc::new(Refusing {
        inner: inner.clone(),
        kind: BackendErrorKind::Denied,
        only: FileType::Index,
    });
    let e = prune(Repository::open(be, b"pw").unwrap(), &opts()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("this identity may not delete: the repository is append-only for it; run retention with maintenance credentials"), "{msg}");
    check_ok(inner);
}

/// Seal garbage under the IDs and lengths of every blob of one genuine data pack, in a pack
/// whose ID sorts before the genuine one, and index it: what a host holding the key can do.
fn forge_duplicate(be: &Arc<dyn Backend>) -> (Id, Id) {
    use crate::format::pack::{self, PackedBlob};
    let r = Repository::open(be.clone(), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let used = used_blobs(&r).unwrap();
    let (genuine, real) = r
        .index()
        .packs()
        .into_iter()
        .filter(|(_, b)| {
            b.iter()
                .all(|b| b.blob_type == BlobType::Data && used.contains(&(b.blob_type, b.id)))
        })
        .max_by_key(|(id, _)| *id)
        .expect("a used data pack");
    for _ in 0..200 {
        let mut data = Vec::new();
        let mut blobs = Vec::new();
        for b in &real {
            let junk: Vec<u8> = (0..b.length as usize - 32)
                .map(|_| rand::random::<u8>())
                .collect();
            blobs.push(PackedBlob {
                offset: data.len() as u32,
                ..*b
            });
            data.extend_from_slice(&r.key().seal(&junk));
        }
        pack::finish(r.key(), &mut data, &blobs);
        let id = Id::hash(&data);
        if id < genuine {
            be.write(FileType::Pack, &id.to_hex(), &data).unwrap();
            crate::backup::write_index(&r, &[(id, blobs)]).unwrap();
            return (genuine, id);
        }
    }
    panic!("no forged ID below the genuine one");
}

#[test]
fn prune_keeps_a_genuine_copy_over_a_forged_duplicate_unit() {
    let dir = tempfile::tempdir().unwrap();
    let be = repo_with_garbage(dir.path());
    let (genuine, forged) = forge_duplicate(&be);
    // The forgery claims the older storage time, so it is the copy asked for first.
    let hex = forged.to_hex();
    let path = dir.path().join("repo/data").join(&hex[..2]).join(&hex);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(old)).unwrap();
    prune(Repository::open(be.clone(), b"pw").unwrap(), &opts()).unwrap();
    let left: Vec<String> = be
        .list(FileType::Pack)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(
        left.contains(&genuine.to_hex()),
        "prune deleted the genuine pack {} and kept the forgery {}",
        genuine.short(),
        forged.short()
    );
    assert!(!left.contains(&forged.to_hex()), "the forgery is garbage");
    check_ok(be);
}

/// Lock files can be written until `fail` is set; then every lock write fails like an
/// unreachable store (the refresh of a held lock keeps failing).
struct LockWritesFail {
    inner: Arc<dyn Backend>,
    fail: std::sync::atomic::AtomicBool,
}

impl Backend for LockWritesFail {
    forward_reads_to_inner!();
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
        if t == FileType::Lock && self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::new(
                BackendErrorKind::Transient,
                "write",
                format!("locks/{name}"),
                self.location(),
                "connection reset (injected)",
            ));
        }
        self.inner.write(t, name, data)
    }
    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        self.inner.remove(t, name)
    }
}

fn names(be: &Arc<dyn Backend>, t: FileType) -> Vec<String> {
    let mut v: Vec<String> = be.list(t).unwrap().into_iter().map(|f| f.name).collect();
    v.sort();
    v
}

#[test]
fn operations_stop_when_the_lock_cannot_be_refreshed() {
    use crate::lock::{LockTiming, acquire_with};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let inner = repo_with_garbage(dir.path());
    let be = Arc::new(LockWritesFail {
        inner: inner.clone(),
        fail: Default::default(),
    });
    let repo = Repository::open(be.clone(), b"pw").unwrap();
    let timing = LockTiming {
        settle: Duration::ZERO,
        refresh_every: Duration::from_millis(10),
        give_up_after: Duration::from_millis(50),
        attempts: 1,
        retry_delay: Duration::ZERO,
        ..Default::default()
    };
    let guard = acquire_with(&repo, true, &timing).unwrap();
    // The refresh works while the store does.
    assert!(!guard.wait_lost(Duration::from_millis(100)));
    repo.check_lock().unwrap();

    be.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(guard.wait_lost(Duration::from_secs(60)), "never gave up");
    let why = guard.lost().unwrap();
    assert!(why.contains("could not refresh"), "{why}");

    let (packs, indexes) = (
        names(&inner, FileType::Pack),
        names(&inner, FileType::Index),
    );
    let e = prune(repo.clone(), &opts()).unwrap_err();
    assert!(
        matches!(e, PruneError::Repo(RepoError::LockLost(_))),
        "prune went on without its lock: {e}"
    );
    assert!(e.to_string().contains("lost the repository lock"), "{e}");
    assert_eq!(names(&inner, FileType::Pack), packs, "prune deleted packs");
    assert_eq!(names(&inner, FileType::Index), indexes);

    // Every long operation sees it at its first safe point.
    let e = crate::check::check(repo.clone(), Some(crate::check::Subset::All)).unwrap_err();
    assert!(matches!(e, RepoError::LockLost(_)), "check: {e}");
    let src = dir.path().join("src");
    let mut r = repo.clone().load_index().unwrap();
    let opts_b = BackupOptions {
        excludes: PathMatcher::new(&[]).unwrap(),
        exclude_patterns: vec![],
        exclude_caches: false,
        one_file_system: false,
        tags: vec![],
        host: "h".into(),
        progress: None,
    };
    let snaps = names(&inner, FileType::Snapshot);
    let e = crate::backup::backup(&mut r, Source::Paths(vec![src]), opts_b).unwrap_err();
    assert!(matches!(e, RepoError::LockLost(_)), "backup: {e}");
    assert_eq!(
        names(&inner, FileType::Snapshot),
        snaps,
        "backup wrote a snapshot"
    );
    let (_, s) = r.snapshots().unwrap().pop().unwrap();
    let ro = crate::restore::RestoreOptions {
        target: dir.path().join("restored"),
        include: PathMatcher::new(&[]).unwrap(),
        exclude: PathMatcher::new(&[]).unwrap(),
        verify: false,
    };
    let e = crate::restore::restore(&r, &s.tree, &ro).unwrap_err();
    assert!(matches!(e, RepoError::LockLost(_)), "restore: {e}");
    drop(guard);
    // Once released, a new lock works again.
    let fresh = Repository::open(inner.clone(), b"pw").unwrap();
    let _g = acquire_with(&fresh, true, &timing).unwrap();
    fresh.check_lock().unwrap();
}
