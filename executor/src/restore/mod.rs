//! Restore a snapshot tree into a target directory.
//!
//! The snapshot is untrusted (a compromised host wrote it), and the restore must never
//! write outside its target, also when it runs as root into a target that earlier restores
//! filled. Hence:
//! - names that could escape or alias (`/`, `..`, `.`, NUL, empty) are refused, and trees
//!   with duplicate names do not parse ([`crate::format::tree::Tree::parse`]);
//! - everything is created, replaced and changed by name relative to an open directory
//!   descriptor and never through a symlink ([`nofollow`]): what is in the way of an entry
//!   is removed, not entered or written through; a directory is entered only if it is one;
//! - content and verification reopen files from the target without following any symlink
//!   on the way (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
//!
//! Directories get their metadata after their children, so read-only directories and
//! mtimes survive.

mod nofollow;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::FileType;
use crate::format::mode::unix_perm_from_go;
use crate::format::pack::BlobType;
use crate::format::tree::{Node, NodeType};
use crate::id::Id;
use crate::pattern::PathMatcher;
use crate::repo::{IndexedRepository, RepoError, Result, decode_blob_mut};
use nofollow::{Dir, cname, open_beneath, open_dir_beneath};

pub struct RestoreOptions {
    pub target: PathBuf,
    pub include: PathMatcher,
    pub exclude: PathMatcher,
    pub verify: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub errors: Vec<String>,
    pub verified_files: u64,
}

/// Refuse names that could escape the target or alias another entry.
pub fn check_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(format!(
            "refusing unsafe file name {:?} (would escape the restore target)",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

/// The first restored copy of a hardlink group: where it is and which inode it got.
struct FirstLink {
    dir: usize,
    name: Vec<u8>,
    ino: u64,
}

struct Restorer<'a> {
    repo: &'a IndexedRepository,
    opts: &'a RestoreOptions,
    root: Dir,
    stats: RestoreStats,
    hardlinks: HashMap<(u64, u64), FirstLink>,
    is_root: bool,
    /// Path below the target of every directory entered, `/`-separated; index 0 is the
    /// target itself (empty).
    dirs: Vec<Vec<u8>>,
    verify_list: Vec<(PathBuf, Vec<Id>)>,
    /// Files created empty at their final size, by path below the target; their content is
    /// written pack by pack.
    files: Vec<PathBuf>,
    /// Where each needed data blob goes: (file index, offset in the file).
    targets: HashMap<Id, Vec<(usize, u64)>>,
    /// Metadata to apply once all content is written, with the index of the directory the
    /// entry is in, in the order it was decided.
    meta_queue: Vec<(Node, usize)>,
}

pub fn restore(repo: &IndexedRepository, tree: &Id, opts: &RestoreOptions) -> Result<RestoreStats> {
    let usage =
        |e: std::io::Error| RepoError::Usage(format!("target {}: {e}", opts.target.display()));
    std::fs::create_dir_all(&opts.target).map_err(usage)?;
    let mut r = Restorer {
        repo,
        opts,
        root: Dir::open_target(&opts.target).map_err(usage)?,
        stats: RestoreStats::default(),
        hardlinks: HashMap::new(),
        is_root: unsafe { libc::geteuid() } == 0,
        dirs: vec![Vec::new()],
        verify_list: Vec::new(),
        files: Vec::new(),
        targets: HashMap::new(),
        meta_queue: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let root_tree = repo.load_tree(tree)?;
    let root = r.root.open_dir(c".").map_err(usage)?;
    r.tree(&root_tree, &root, 0, b"");
    drop(root);
    repo.check_lock()?;
    let t1 = std::time::Instant::now();
    r.write_content();
    repo.check_lock()?;
    let t2 = std::time::Instant::now();
    // After the content: writes would change file mtimes, and a read-only directory would
    // refuse them.
    r.apply_metadata();
    tracing::debug!(
        walk_ms = (t1 - t0).as_millis() as u64,
        content_ms = (t2 - t1).as_millis() as u64,
        metadata_ms = t2.elapsed().as_millis() as u64,
        files = r.files.len(),
        "restore phases"
    );
    if opts.verify {
        for (rel, content) in std::mem::take(&mut r.verify_list) {
            match verify_file(repo, &r.root, &rel, &content) {
                Ok(()) => r.stats.verified_files += 1,
                Err(e) => r
                    .stats
                    .errors
                    .push(format!("verify {}: {e}", opts.target.join(&rel).display())),
            }
        }
    }
    Ok(r.stats)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.is_empty() {
        return dir.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Restorer<'_> {
    fn selected(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.opts.exclude.matches(rel) {
            return false;
        }
        // Directories are always walked when including: something below may match.
        self.opts.include.is_empty() || is_dir || self.opts.include.matches(rel)
    }

    /// `name` in directory `dir` (an index into `dirs`) as a full path, for messages.
    fn shown(&self, dir: usize, name: &[u8]) -> String {
        let rel = join(&self.dirs[dir], name);
        self.opts
            .target
            .join(OsStr::from_bytes(&rel))
            .display()
            .to_string()
    }

    /// Restore the entries of `tree` into `dir` (index `dir_idx`, include path `rel`).
    /// Returns whether anything was restored.
    fn tree(
        &mut self,
        tree: &crate::format::tree::Tree,
        dir: &Dir,
        dir_idx: usize,
        rel: &[u8],
    ) -> bool {
        // A lost lock stops the walk; `restore` then fails with it.
        if self.repo.check_lock().is_err() {
            return false;
        }
        let mut any = false;
        let mut dirs_meta = Vec::new();
        for node in &tree.nodes {
            if let Err(e) = check_name(&node.name) {
                let shown = self.shown(dir_idx, b"");
                self.stats.errors.push(format!("in {shown}: {e}"));
                continue;
            }
            let mut nrel = rel.to_vec();
            nrel.push(b'/');
            nrel.extend_from_slice(&node.name);
            let is_dir = node.node_type == NodeType::Dir;
            if !self.selected(&nrel, is_dir) {
                continue;
            }
            let name = match cname(&node.name) {
                Ok(n) => n,
                Err(e) => {
                    self.stats
                        .errors
                        .push(format!("{}: {e}", self.shown(dir_idx, &node.name)));
                    continue;
                }
            };
            if !is_dir {
                if let Err(e) = self.entry(node, dir, dir_idx, &name) {
                    let shown = self.shown(dir_idx, &node.name);
                    self.stats.errors.push(format!("{shown}: {e}"));
                }
                any = true;
                continue;
            }
            let Some(sub) = node.subtree else {
                let shown = self.shown(dir_idx, &node.name);
                self.stats
                    .errors
                    .push(format!("{shown}: dir without subtree"));
                continue;
            };
            let fully = !self.opts.include.is_empty() && self.opts.include.matches(&nrel);
            let (subdir, created) = match dir.ensure_dir(&name) {
                Ok(d) => d,
                Err(e) => {
                    let shown = self.shown(dir_idx, &node.name);
                    self.stats.errors.push(format!("mkdir {shown}: {e}"));
                    continue;
                }
            };
            let sub_idx = self.dirs.len();
            self.dirs.push(join(&self.dirs[dir_idx], &node.name));
            // A subtree that cannot be loaded (corrupt, duplicate names) is reported and
            // skipped; its siblings are restored.
            let below = match self.repo.load_tree(&sub) {
                Ok(t) => self.tree(&t, &subdir, sub_idx, &nrel),
                Err(e) => {
                    let shown = self.shown(dir_idx, &node.name);
                    self.stats.errors.push(format!("{shown}: {e}"));
                    true
                }
            };
            drop(subdir);
            if below || self.opts.include.is_empty() || fully {
                self.stats.dirs += 1;
                dirs_meta.push(node);
                any = true;
            } else if created {
                let _ = dir.remove_empty_dir(&name);
            }
        }
        for node in dirs_meta {
            self.meta_queue.push((node.clone(), dir_idx));
        }
        any
    }

    fn entry(
        &mut self,
        node: &Node,
        dir: &Dir,
        dir_idx: usize,
        name: &CStr,
    ) -> std::result::Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        match node.node_type {
            NodeType::File => {
                let group =
                    (node.links > 1 && node.inode != 0).then_some((node.device_id, node.inode));
                if let Some(key) = group
                    && let Some(first) = self.hardlinks.get(&key)
                {
                    let from = open_dir_beneath(&self.root, &self.dirs[first.dir]).map_err(io)?;
                    let from_name = cname(&first.name).map_err(io)?;
                    dir.hard_link(&from, &from_name, name).map_err(io)?;
                    // The first copy was created by this restore and names are unique, so this
                    // holds; checked anyway because a link to anything else would let the
                    // metadata below land on it.
                    if dir.lstat(name).map_err(io)? != (libc::S_IFREG, first.ino) {
                        let _ = dir.remove(name);
                        return Err("hardlink source is no longer the file restored first".into());
                    }
                    self.stats.files += 1;
                    return Ok(());
                }
                let ino = self
                    .file(node, dir, dir_idx, name, group.is_some())
                    .map_err(|e| e.to_string())?;
                if let Some(key) = group {
                    self.hardlinks.insert(
                        key,
                        FirstLink {
                            dir: dir_idx,
                            name: node.name.clone(),
                            ino,
                        },
                    );
                }
                self.stats.files += 1;
            }
            NodeType::Symlink => {
                let target = cname(&node.link_target()).map_err(io)?;
                dir.symlink(&target, name).map_err(io)?;
                self.stats.other += 1;
            }
            NodeType::Fifo => {
                dir.mkfifo(name).map_err(io)?;
                self.stats.other += 1;
            }
            NodeType::Dev | NodeType::Chardev => {
                let kind = if node.node_type == NodeType::Dev {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                dir.mknod(name, kind, node.device as libc::dev_t)
                    .map_err(|e| format!("mknod: {e}"))?;
                self.stats.other += 1;
            }
            // restic does not restore sockets either.
            NodeType::Socket => return Ok(()),
            _ => return Err(format!("unsupported node type {:?}", node.node_type)),
        }
        self.meta_queue.push((node.clone(), dir_idx));
        Ok(())
    }

    /// Create the file at its final size (unwritten ranges stay holes) and plan where its
    /// blobs go; [`Restorer::write_content`] fills it in. Returns the new inode number when
    /// `want_ino` (hardlink groups), else 0.
    fn file(
        &mut self,
        node: &Node,
        dir: &Dir,
        dir_idx: usize,
        name: &CStr,
        want_ino: bool,
    ) -> Result<u64> {
        let content = node.content.clone().unwrap_or_default();
        let mut sizes = Vec::with_capacity(content.len());
        for id in &content {
            let size = self
                .repo
                .index()
                .plain_size(BlobType::Data, id)
                .ok_or_else(|| RepoError::MissingBlob {
                    what: format!("data blob {}", id.short()),
                })?;
            sizes.push(size);
        }
        let io = |e: std::io::Error| RepoError::Usage(e.to_string());
        let f = dir.create_file(name).map_err(io)?;
        let len: u64 = sizes.iter().sum();
        if len > 0 {
            f.set_len(len).map_err(io)?;
        }
        let ino = if want_ino {
            use std::os::unix::fs::MetadataExt;
            f.metadata().map_err(io)?.ino()
        } else {
            0
        };
        drop(f);
        let rel = PathBuf::from(OsStr::from_bytes(&join(&self.dirs[dir_idx], &node.name)));
        let idx = self.files.len();
        let mut off = 0;
        for (id, size) in content.iter().zip(sizes) {
            self.targets.entry(*id).or_default().push((idx, off));
            off += size;
        }
        self.stats.bytes += len;
        if self.opts.verify {
            self.verify_list.push((rel.clone(), content));
        }
        self.files.push(rel);
        Ok(ino)
    }

    /// Read every pack that holds needed blobs once, several packs at a time, and write each
    /// blob to all its places. Reading blob by blob costs one request per blob, which on
    /// S3 means one round trip per small file.
    fn write_content(&mut self) {
        let mut by_pack: HashMap<Id, Vec<Wanted>> = HashMap::new();
        for (id, targets) in std::mem::take(&mut self.targets) {
            let Some((pack, loc)) = self
                .repo
                .index()
                .locations(BlobType::Data, &id)
                .into_iter()
                .next()
            else {
                continue;
            };
            by_pack.entry(pack).or_default().push(Wanted {
                id,
                offset: loc.offset,
                length: loc.length,
                ulen: loc.uncompressed_length,
                targets,
            });
        }
        let mut packs: Vec<(Id, Vec<Wanted>)> = by_pack.into_iter().collect();
        packs.sort_by_key(|p| p.0);
        for (_, blobs) in &mut packs {
            blobs.sort_by_key(|b| b.offset);
        }
        let errors = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = (cpus * 2).clamp(2, 8).min(packs.len().max(1));
        let out = Output {
            root: &self.root,
            target: &self.opts.target,
            files: &self.files,
        };
        let repo = self.repo;
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((pack, blobs)) = packs.get(i) else {
                            break;
                        };
                        if repo.check_lock().is_err() {
                            break;
                        }
                        let errs = restore_pack(repo, &out, pack, blobs);
                        if !errs.is_empty() {
                            errors.lock().expect("poisoned").extend(errs);
                        }
                    }
                });
            }
        });
        self.stats
            .errors
            .extend(errors.into_inner().expect("poisoned"));
    }

    /// Apply the queued metadata, each entry by name in its directory's descriptor.
    /// Consecutive entries mostly share a directory, so one descriptor is kept open.
    fn apply_metadata(&mut self) {
        let mut open: Option<(usize, Dir)> = None;
        for (node, dir_idx) in std::mem::take(&mut self.meta_queue) {
            if open.as_ref().is_none_or(|(i, _)| *i != dir_idx) {
                open = None;
                match open_dir_beneath(&self.root, &self.dirs[dir_idx]) {
                    Ok(d) => open = Some((dir_idx, d)),
                    Err(e) => {
                        let shown = self.shown(dir_idx, b"");
                        self.stats.errors.push(format!("metadata in {shown}: {e}"));
                        continue;
                    }
                }
            }
            let dir = &open.as_ref().expect("just opened").1;
            self.metadata(&node, dir, dir_idx);
        }
    }

    /// Ownership, xattrs, mode, then times (last, since the others touch ctime/mtime).
    fn metadata(&mut self, node: &Node, dir: &Dir, dir_idx: usize) {
        let Ok(name) = cname(&node.name) else { return };
        let symlink = node.node_type == NodeType::Symlink;
        let mut errs = Vec::new();
        if self.is_root
            && let Err(e) = dir.chown(&name, node.uid, node.gid)
        {
            errs.push(("chown", e));
        }
        // Linux symlinks have no mode of their own, and user xattrs are refused on them.
        if !symlink {
            for x in &node.extended_attributes {
                if let Err(e) = dir.set_xattr(&name, &x.name, &x.value) {
                    let shown = self.shown(dir_idx, &node.name);
                    tracing::warn!("xattr {} on {shown}: {e}", x.name);
                }
            }
            if let Err(e) = dir.chmod(&name, unix_perm_from_go(node.mode)) {
                errs.push(("chmod", e));
            }
        }
        if let Err(e) = dir.set_times(&name, node.atime.unix(), node.mtime.unix()) {
            errs.push(("utimes", e));
        }
        if !errs.is_empty() {
            let shown = self.shown(dir_idx, &node.name);
            for (op, e) in errs {
                self.stats.errors.push(format!("{op} {shown}: {e}"));
            }
        }
    }
}

/// Where content goes: the files by path below the target, reopened without following.
struct Output<'a> {
    root: &'a Dir,
    target: &'a Path,
    files: &'a [PathBuf],
}

impl Output<'_> {
    fn shown(&self, f: usize) -> String {
        self.target.join(&self.files[f]).display().to_string()
    }
}

/// A blob to restore and where it sits in its pack.
struct Wanted {
    id: Id,
    offset: u32,
    length: u32,
    ulen: u32,
    targets: Vec<(usize, u64)>,
}

/// Blobs closer together than this are fetched in one read (the gap is read and dropped).
const MAX_GAP: u64 = 256 * 1024;
/// Upper bound for one read, so memory does not grow with the pack size.
const MAX_READ: u64 = 2 * 1024 * 1024;

fn restore_pack(
    repo: &IndexedRepository,
    out: &Output,
    pack: &Id,
    blobs: &[Wanted],
) -> Vec<String> {
    let mut errs = Vec::new();
    let mut open: Option<(usize, File)> = None;
    let name = pack.to_hex();
    let mut i = 0;
    while i < blobs.len() {
        let start = blobs[i].offset as u64;
        let mut end = start + blobs[i].length as u64;
        let mut j = i + 1;
        while let Some(b) = blobs.get(j) {
            let b_end = b.offset as u64 + b.length as u64;
            if b.offset as u64 > end + MAX_GAP || b_end - start > MAX_READ {
                break;
            }
            end = end.max(b_end);
            j += 1;
        }
        let mut range = repo
            .backend()
            .read_range(FileType::Pack, &name, start, end - start);
        for b in &blobs[i..j] {
            let what = format!("data blob {} in pack {}", b.id.short(), pack.short());
            let from_range = match &mut range {
                Ok(data) => {
                    let lo = (b.offset as u64 - start) as usize;
                    // Blobs never overlap, so decrypting one in place leaves the others.
                    match data.get_mut(lo..lo + b.length as usize) {
                        Some(sealed) => decode_blob_mut(repo.key(), sealed, b.ulen, &b.id, &what),
                        None => Err(crate::repo::corrupt(&what, "pack is truncated")),
                    }
                }
                Err(e) => Err(RepoError::Usage(format!("{what}: {e}"))),
            };
            // Another copy of the blob may still be good.
            let plain = from_range.or_else(|e| {
                tracing::warn!("{e}; trying another copy if any");
                repo.load_blob(BlobType::Data, &b.id)
            });
            let plain = match plain {
                Ok(p) => p,
                Err(e) => {
                    for (f, _) in &b.targets {
                        errs.push(format!("{}: {e}", out.shown(*f)));
                    }
                    continue;
                }
            };
            // All-zero blobs stay holes: the file was created at full length.
            if plain.iter().all(|&x| x == 0) {
                continue;
            }
            for (f, off) in &b.targets {
                // Consecutive blobs of a pack mostly go to the same file: keep it open.
                if open.as_ref().is_none_or(|(i, _)| i != f) {
                    open = None;
                    let rel = out.files[*f].as_os_str().as_bytes();
                    match open_beneath(out.root, rel, libc::O_WRONLY) {
                        Ok(fd) => open = Some((*f, File::from(fd))),
                        Err(e) => {
                            errs.push(format!("{}: {e}", out.shown(*f)));
                            continue;
                        }
                    }
                }
                let fh = &open.as_ref().expect("just opened").1;
                if let Err(e) = fh.write_all_at(&plain, *off) {
                    errs.push(format!("{}: {e}", out.shown(*f)));
                }
            }
        }
        i = j;
    }
    errs
}

/// Re-read a restored file and compare each blob-sized piece with its ID.
fn verify_file(
    repo: &IndexedRepository,
    root: &Dir,
    rel: &Path,
    content: &[Id],
) -> std::result::Result<(), String> {
    let fd = open_beneath(root, rel.as_os_str().as_bytes(), libc::O_RDONLY)
        .map_err(|e| e.to_string())?;
    let mut f = File::from(fd);
    let mut buf = Vec::new();
    for (i, id) in content.iter().enumerate() {
        let size = repo
            .index()
            .plain_size(BlobType::Data, id)
            .ok_or_else(|| format!("blob {} not in index", id.short()))?;
        buf.resize(size as usize, 0);
        f.read_exact(&mut buf)
            .map_err(|e| format!("blob {i}: {e}"))?;
        if Id::hash(&buf) != *id {
            return Err(format!("content of blob {i} ({}) differs", id.short()));
        }
    }
    if f.read(&mut [0u8; 1]).map_err(|e| e.to_string())? != 0 {
        return Err("file is longer than its content".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::testutil::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn unsafe_names_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(check_name(bad).is_err());
        }
        assert!(check_name(b"..a").is_ok());
    }

    /// Restore each fixture snapshot and compare with the source manifest.
    #[test]
    fn fixture_restores_match_manifests() {
        let cases = [
            ("repo-v2", "latest", "state2", false),
            ("repo-v2", "f304eb1c", "state1", false),
            ("repo-v1", "latest", "state1", false),
            ("repo-v2-compression-off", "latest", "state1", true),
        ];
        for (repo_name, snap, state, no_random) in cases {
            let repo = open_fixture(repo_name);
            let (_, s) = repo.find_snapshot(snap, &Default::default()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let opts = RestoreOptions {
                target: dir.path().to_path_buf(),
                include: PathMatcher::new(&[]).unwrap(),
                exclude: PathMatcher::new(&[]).unwrap(),
                verify: true,
            };
            let stats = restore(&repo, &s.tree, &opts).unwrap();
            let chown_errs = stats
                .errors
                .iter()
                .filter(|e| !e.starts_with("chown"))
                .count();
            assert_eq!(chown_errs, 0, "{repo_name}: {:?}", stats.errors);
            assert!(stats.verified_files > 20);
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(format!("{FIXTURES}/source/{state}.manifest.json")).unwrap(),
            )
            .unwrap();
            compare_manifest(&dir.path().join("src"), &manifest, no_random, repo_name);
        }
    }

    fn compare_manifest(root: &Path, manifest: &serde_json::Value, no_random: bool, what: &str) {
        let root_user = unsafe { libc::geteuid() } == 0;
        let mut checked = 0;
        for e in manifest.as_array().unwrap() {
            let rel = hex::decode(e["path_hex"].as_str().unwrap()).unwrap();
            if no_random && rel == b"random-3MiB.bin" {
                continue;
            }
            let p = root.join(OsStr::from_bytes(&rel));
            let m = fs::symlink_metadata(&p)
                .unwrap_or_else(|err| panic!("{what}: {} missing: {err}", p.display()));
            let ty = e["type"].as_str().unwrap();
            let got_ty = match m.file_type() {
                t if t.is_dir() => "dir",
                t if t.is_symlink() => "symlink",
                t if t.is_file() => "file",
                _ => "fifo",
            };
            assert_eq!(got_ty, ty, "{what}: type of {}", p.display());
            if let Some(sha) = e.get("sha256").and_then(|v| v.as_str()) {
                let data = fs::read(&p).unwrap();
                assert_eq!(Id::hash(&data).to_hex(), sha, "{what}: {}", p.display());
            }
            let got = m.mtime() as i64 * 1_000_000_000 + m.mtime_nsec();
            assert_eq!(
                got,
                e["mtime_ns"].as_i64().unwrap(),
                "{what}: mtime of {}",
                p.display()
            );
            let mode = u32::from_str_radix(e["mode_octal"].as_str().unwrap(), 8).unwrap();
            if ty != "symlink" && (root_user || mode & 0o6000 == 0) {
                assert_eq!(m.mode() & 0o7777, mode, "{what}: mode of {}", p.display());
            }
            if let Some(n) = e.get("nlink").and_then(|v| v.as_u64()) {
                assert_eq!(m.nlink(), n, "{what}: nlink of {}", p.display());
            }
            if let Some(t) = e.get("target_hex").and_then(|v| v.as_str()) {
                let got = fs::read_link(&p).unwrap();
                let want = hex::decode(t).unwrap();
                // restic 0.14 stored non-UTF-8 targets lossily (documented in MANIFEST.md).
                let want = if std::str::from_utf8(&want).is_err() {
                    String::from_utf8_lossy(&want).into_owned().into_bytes()
                } else {
                    want
                };
                assert_eq!(
                    got.as_os_str().as_bytes(),
                    &want[..],
                    "{what}: target of {}",
                    p.display()
                );
            }
            if root_user {
                assert_eq!(
                    m.uid() as u64,
                    e["uid"].as_u64().unwrap(),
                    "{what}: uid {}",
                    p.display()
                );
            }
            if let Some(x) = e.get("xattrs_hex").and_then(|v| v.as_object()) {
                for (k, v) in x {
                    let name = String::from_utf8(hex::decode(k).unwrap()).unwrap();
                    if let Ok(Some(val)) = xattr::get(&p, &name) {
                        assert_eq!(hex::encode(val), v.as_str().unwrap(), "{what}: xattr {k}");
                    }
                }
            }
            checked += 1;
        }
        assert!(checked > 30, "{what}: only {checked} entries compared");
    }
}
