//! Prune against a real local repository, including refusing storage.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::backend::{
    Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, LocalBackend, Removal,
};
use crate::backup::{BackupOptions, Source};
use crate::pattern::PathMatcher;

/// What the test doubles below pass straight to the backend they wrap.
macro_rules! forward_to_inner {
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
