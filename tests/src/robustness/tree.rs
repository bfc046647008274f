//! The source trees the campaign backs up: four versions of one directory, drawn from the
//! seed, and a byte-for-byte comparison of a restored tree with the version it must be.
//!
//! Versions only add or change entries, never remove any, so a restore of v3 over a target
//! that holds v2 must leave exactly v3 (restore does not delete extra files, as restic).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::rng::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One version of the tree: relative path → entry (parents listed as `Dir`).
pub type Tree = BTreeMap<PathBuf, Entry>;

fn put(t: &mut Tree, path: &str, e: Entry) {
    let p = PathBuf::from(path);
    for a in p.ancestors().skip(1) {
        if !a.as_os_str().is_empty() {
            t.insert(a.to_path_buf(), Entry::Dir);
        }
    }
    t.insert(p, e);
}

/// Versions 1..=4. v1..v3 are the snapshots already in the repository when a kill point
/// starts; v4 is what the backup under test reads (its data and tree packs go up from two
/// upload threads). Small, because every point restores every snapshot.
pub fn versions(rng: &Rng) -> Vec<Tree> {
    let mut r = rng.fork("tree");
    let mut v = Tree::new();
    put(&mut v, "big/a.bin", Entry::File(r.bytes(700 << 10)));
    put(&mut v, "big/b.bin", Entry::File(r.bytes(650 << 10)));
    put(&mut v, "big/c.bin", Entry::File(r.bytes(1200 << 10)));
    for i in 0..24 {
        put(
            &mut v,
            &format!("small/s{i:02}"),
            Entry::File(r.bytes(3 << 10)),
        );
    }
    put(
        &mut v,
        "docs/readme.txt",
        Entry::File(b"version 1 of the readme\n".to_vec()),
    );
    put(&mut v, "docs/empty", Entry::File(Vec::new()));
    put(&mut v, "link", Entry::Symlink("docs/readme.txt".into()));
    put(&mut v, "deep/x/y/z.txt", Entry::File(b"deep\n".to_vec()));
    put(&mut v, "emptydir", Entry::Dir);
    let v1 = v.clone();

    put(&mut v, "big/a.bin", Entry::File(r.bytes(700 << 10)));
    put(&mut v, "big/d.bin", Entry::File(r.bytes(800 << 10)));
    put(&mut v, "small/s03", Entry::File(r.bytes(5 << 10)));
    let v2 = v.clone();

    put(&mut v, "big/b.bin", Entry::File(r.bytes(650 << 10)));
    put(&mut v, "big/e.bin", Entry::File(r.bytes(600 << 10)));
    put(
        &mut v,
        "docs/readme.txt",
        Entry::File(b"version 3 of the readme, longer\n".to_vec()),
    );
    put(&mut v, "deep/x/w.txt", Entry::File(b"w\n".to_vec()));
    let v3 = v.clone();

    put(&mut v, "big/c.bin", Entry::File(r.bytes(1200 << 10)));
    put(&mut v, "small/s05", Entry::File(r.bytes(7 << 10)));
    for i in 0..4 {
        put(
            &mut v,
            &format!("bulk/b{i:02}.bin"),
            Entry::File(r.bytes(600 << 10)),
        );
    }
    vec![v1, v2, v3, v]
}

/// Make `root` hold exactly `tree` (whatever was there is removed first).
pub fn materialize(tree: &Tree, root: &Path) -> io::Result<()> {
    if root.symlink_metadata().is_ok() {
        remove_all(root)?;
    }
    fs::create_dir_all(root)?;
    for (rel, e) in tree {
        let p = root.join(rel);
        match e {
            Entry::Dir => fs::create_dir_all(&p)?,
            Entry::File(data) => fs::write(&p, data)?,
            Entry::Symlink(target) => symlink(target, &p)?,
        }
    }
    Ok(())
}

/// Remove a tree, also one whose files and directories lost their write bits (a local
/// repository stores its files read-only).
pub fn remove_all(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            for d in walk(root)?.into_iter().filter(|(_, e)| *e == Entry::Dir) {
                let _ = fs::set_permissions(root.join(&d.0), fs::Permissions::from_mode(0o700));
            }
            fs::remove_dir_all(root)
        }
    }
}

/// What is at `root`, as a [`Tree`].
pub fn walk(root: &Path) -> io::Result<Tree> {
    let mut out = Tree::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let r = rel.join(entry.file_name());
            let ft = entry.file_type()?;
            let e = if ft.is_symlink() {
                Entry::Symlink(fs::read_link(entry.path())?.to_string_lossy().into_owned())
            } else if ft.is_dir() {
                stack.push(r.clone());
                Entry::Dir
            } else {
                Entry::File(fs::read(entry.path())?)
            };
            out.insert(r, e);
        }
    }
    Ok(out)
}

/// The names of all files below `root` (unreadable parts are skipped): for counting, not
/// comparing, so contents are not read.
pub fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// `Ok` when `root` holds exactly `want`; else the first few differences.
pub fn compare(want: &Tree, root: &Path) -> Result<(), String> {
    let got = walk(root).map_err(|e| format!("reading {}: {e}", root.display()))?;
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(g) if g != w => diffs.push(format!("differs {}", p.display())),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("extra {}", p.display()));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let n = diffs.len();
    diffs.truncate(5);
    Err(format!(
        "{} differs from the source in {n} entries: {}",
        root.display(),
        diffs.join(", ")
    ))
}

/// Where restore puts a tree backed up from the absolute path `src` under `target`.
pub fn restored_at(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap_or(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow_and_compare_sees_every_difference() {
        let vs = versions(&Rng::new(3));
        for w in vs.windows(2) {
            assert!(
                w[0].keys().all(|k| w[1].contains_key(k)),
                "a version removed a path"
            );
            assert_ne!(w[0], w[1]);
        }
        assert_eq!(versions(&Rng::new(3)), vs, "not reproducible from the seed");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        materialize(&vs[1], &root).unwrap();
        compare(&vs[1], &root).unwrap();
        let err = compare(&vs[2], &root).unwrap_err();
        assert!(err.contains("missing big/e.bin"), "{err}");
        assert!(err.contains("differs big/b.bin"), "{err}");
        fs::write(root.join("junk"), b"x").unwrap();
        assert!(compare(&vs[1], &root).unwrap_err().contains("extra junk"));
    }
}
