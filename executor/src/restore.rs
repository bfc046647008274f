//! Restore a snapshot tree into a target directory.
//!
//! Names come from the repository and are untrusted: anything that could leave the target
//! (`/`, `..`, `.`, NUL, empty) is refused. Directories get their metadata after their
//! children, so read-only directories and mtimes survive.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use filetime::FileTime;

use crate::backend::FileType;
use crate::format::mode::unix_perm_from_go;
use crate::format::pack::BlobType;
use crate::format::tree::{Node, NodeType};
use crate::id::Id;
use crate::pattern::PathMatcher;
use crate::repo::{IndexedRepository, RepoError, Result, decode_blob_mut};

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

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("names were checked for NUL")
}

struct Restorer<'a> {
    repo: &'a IndexedRepository,
    opts: &'a RestoreOptions,
    stats: RestoreStats,
    hardlinks: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
    verify_list: Vec<(PathBuf, Vec<Id>)>,
    /// Files created empty at their final size; their content is written pack by pack.
    files: Vec<PathBuf>,
    /// Where each needed data blob goes: (file index, offset in the file).
    targets: HashMap<Id, Vec<(usize, u64)>>,
    /// Metadata to apply once all content is written, in the order it was decided.
    meta_queue: Vec<(Node, PathBuf)>,
}

pub fn restore(repo: &IndexedRepository, tree: &Id, opts: &RestoreOptions) -> Result<RestoreStats> {
    fs::create_dir_all(&opts.target)
        .map_err(|e| RepoError::Usage(format!("target {}: {e}", opts.target.display())))?;
    let mut r = Restorer {
        repo,
        opts,
        stats: RestoreStats::default(),
        hardlinks: HashMap::new(),
        is_root: unsafe { libc::geteuid() } == 0,
        verify_list: Vec::new(),
        files: Vec::new(),
        targets: HashMap::new(),
        meta_queue: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    // The target may hold old files: only directories made by this restore are known empty.
    r.tree(tree, &opts.target, b"", false)?;
    let t1 = std::time::Instant::now();
    r.write_content();
    repo.check_lock()?;
    let t2 = std::time::Instant::now();
    // After the content: writes would change file mtimes, and a read-only directory would
    // refuse them.
    for (node, path) in std::mem::take(&mut r.meta_queue) {
        r.metadata(&node, &path);
    }
    tracing::debug!(
        walk_ms = (t1 - t0).as_millis() as u64,
        content_ms = (t2 - t1).as_millis() as u64,
        metadata_ms = t2.elapsed().as_millis() as u64,
        files = r.files.len(),
        "restore phases"
    );
    if opts.verify {
        for (path, content) in std::mem::take(&mut r.verify_list) {
            match verify_file(repo, &path, &content) {
                Ok(()) => r.stats.verified_files += 1,
                Err(e) => r
                    .stats
                    .errors
                    .push(format!("verify {}: {e}", path.display())),
            }
        }
    }
    Ok(r.stats)
}

impl Restorer<'_> {
    fn selected(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.opts.exclude.matches(rel) {
            return false;
        }
        // Directories are always walked when including: something below may match.
        self.opts.include.is_empty() || is_dir || self.opts.include.matches(rel)
    }

    /// `fresh`: `dir` was just created, so nothing can be in the way of its entries.
    fn tree(&mut self, id: &Id, dir: &Path, rel: &[u8], fresh: bool) -> Result<bool> {
        self.repo.check_lock()?;
        let tree = self.repo.load_tree(id)?;
        let mut any = false;
        let mut dirs_meta = Vec::new();
        for node in &tree.nodes {
            if let Err(e) = check_name(&node.name) {
                self.stats.errors.push(e);
                continue;
            }
            let mut nrel = rel.to_vec();
            nrel.push(b'/');
            nrel.extend_from_slice(&node.name);
            let is_dir = node.node_type == NodeType::Dir;
            if !self.selected(&nrel, is_dir) {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(&node.name));
            if is_dir {
                let Some(sub) = node.subtree else {
                    self.stats
                        .errors
                        .push(format!("{}: dir without subtree", path.display()));
                    continue;
                };
                let fully = !self.opts.include.is_empty() && self.opts.include.matches(&nrel);
                let created = match fs::create_dir(&path) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => {
                        self.stats
                            .errors
                            .push(format!("mkdir {}: {e}", path.display()));
                        continue;
                    }
                };
                let below = self.tree(&sub, &path, &nrel, created)?;
                if below || self.opts.include.is_empty() || fully {
                    self.stats.dirs += 1;
                    dirs_meta.push((path, node));
                    any = true;
                } else {
                    let _ = fs::remove_dir(&path);
                }
                continue;
            }
            if let Err(e) = self.entry(node, &path, fresh) {
                self.stats.errors.push(format!("{}: {e}", path.display()));
            }
            any = true;
        }
        for (path, node) in dirs_meta {
            self.meta_queue.push((node.clone(), path));
        }
        Ok(any)
    }

    fn entry(&mut self, node: &Node, path: &Path, fresh: bool) -> std::result::Result<(), String> {
        // Replace whatever is in the way, but never follow it.
        if !fresh
            && let Ok(m) = fs::symlink_metadata(path)
            && !m.is_dir()
        {
            fs::remove_file(path).map_err(|e| e.to_string())?;
        }
        match node.node_type {
            NodeType::File => {
                if node.links > 1 && node.inode != 0 {
                    let key = (node.device_id, node.inode);
                    if let Some(first) = self.hardlinks.get(&key) {
                        fs::hard_link(first, path).map_err(|e| e.to_string())?;
                        self.stats.files += 1;
                        return Ok(());
                    }
                    self.hardlinks.insert(key, path.to_path_buf());
                }
                self.file(node, path).map_err(|e| e.to_string())?;
                self.stats.files += 1;
            }
            NodeType::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.link_target()), path)
                    .map_err(|e| e.to_string())?;
                self.stats.other += 1;
            }
            NodeType::Fifo => {
                let p = cpath(path);
                if unsafe { libc::mkfifo(p.as_ptr(), 0o600) } != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
                self.stats.other += 1;
            }
            NodeType::Dev | NodeType::Chardev => {
                let kind = if node.node_type == NodeType::Dev {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                let p = cpath(path);
                if unsafe { libc::mknod(p.as_ptr(), kind | 0o600, node.device as libc::dev_t) } != 0
                {
                    return Err(format!("mknod: {}", std::io::Error::last_os_error()));
                }
                self.stats.other += 1;
            }
            // restic does not restore sockets either.
            NodeType::Socket => return Ok(()),
            _ => return Err(format!("unsupported node type {:?}", node.node_type)),
        }
        self.meta_queue.push((node.clone(), path.to_path_buf()));
        Ok(())
    }

    /// Create the file at its final size (unwritten ranges stay holes) and plan where its
    /// blobs go; [`Restorer::write_content`] fills it in.
    fn file(&mut self, node: &Node, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| RepoError::Usage(format!("{}: {e}", path.display()));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
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
        let len: u64 = sizes.iter().sum();
        f.set_len(len).map_err(io)?;
        let idx = self.files.len();
        self.files.push(path.to_path_buf());
        let mut off = 0;
        for (id, size) in content.iter().zip(sizes) {
            self.targets.entry(*id).or_default().push((idx, off));
            off += size;
        }
        self.stats.bytes += len;
        if self.opts.verify {
            self.verify_list.push((path.to_path_buf(), content));
        }
        Ok(())
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
        let (repo, files) = (self.repo, &self.files);
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
                        let errs = restore_pack(repo, files, pack, blobs);
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

    /// Ownership, xattrs, mode, then times (last, since the others touch ctime/mtime).
    fn metadata(&mut self, node: &Node, path: &Path) {
        let p = cpath(path);
        let symlink = node.node_type == NodeType::Symlink;
        if self.is_root && unsafe { libc::lchown(p.as_ptr(), node.uid, node.gid) } != 0 {
            self.stats.errors.push(format!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        if !symlink {
            for x in &node.extended_attributes {
                if let Err(e) = xattr::set(path, &x.name, &x.value) {
                    tracing::warn!("xattr {} on {}: {e}", x.name, path.display());
                }
            }
            let perm = fs::Permissions::from_mode(unix_perm_from_go(node.mode));
            if let Err(e) = fs::set_permissions(path, perm) {
                self.stats
                    .errors
                    .push(format!("chmod {}: {e}", path.display()));
            }
        }
        let (ms, mn) = node.mtime.unix();
        let (as_, an) = node.atime.unix();
        if let Err(e) = filetime::set_symlink_file_times(
            path,
            FileTime::from_unix_time(as_, an),
            FileTime::from_unix_time(ms, mn),
        ) {
            self.stats
                .errors
                .push(format!("utimes {}: {e}", path.display()));
        }
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
    files: &[PathBuf],
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
                        errs.push(format!("{}: {e}", files[*f].display()));
                    }
                    continue;
                }
            };
            // All-zero blobs stay holes: the file was created at full length.
            if plain.iter().all(|&x| x == 0) {
                continue;
            }
            for (f, off) in &b.targets {
                let path = &files[*f];
                // Consecutive blobs of a pack mostly go to the same file: keep it open.
                if open.as_ref().is_none_or(|(i, _)| i != f) {
                    open = None;
                    match OpenOptions::new().write(true).open(path) {
                        Ok(fh) => open = Some((*f, fh)),
                        Err(e) => {
                            errs.push(format!("{}: {e}", path.display()));
                            continue;
                        }
                    }
                }
                let fh = &open.as_ref().expect("just opened").1;
                let r = fh.write_all_at(&plain, *off);
                if let Err(e) = r {
                    errs.push(format!("{}: {e}", path.display()));
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
    path: &Path,
    content: &[Id],
) -> std::result::Result<(), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
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
