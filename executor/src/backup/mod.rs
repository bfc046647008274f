//! `backup`: walk → compare with the parent snapshot → chunk → hash → dedup → (pool:)
//! compress → encrypt → pack → upload; then index, then snapshot.

pub mod chunker;
pub mod node;
pub mod saver;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Instant;

use crate::backend::FileType;
use crate::format::index::{IndexBlob, IndexFile, IndexPack};
use crate::format::pack::BlobType;
use crate::format::snapshot::{Snapshot, SnapshotSummary};
use crate::format::time::GoTime;
use crate::format::tree::{Node, NodeType, Tree};
use crate::id::Id;
use crate::pattern::PathMatcher;
use crate::repo::{IndexedRepository, RepoError, Result, corrupt};
use chunker::Chunker;
use node::{Names, node_from_metadata};
use saver::Saver;

pub const MIN_CHUNK: u32 = 512 * 1024;
pub const AVG_CHUNK: u32 = 1024 * 1024;
pub const MAX_CHUNK: u32 = 8 * 1024 * 1024;
/// Index files are split like restic's (any size is readable, smaller loads faster).
const INDEX_MAX_BLOBS: usize = 50_000;
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

pub enum Source {
    Paths(Vec<PathBuf>),
    /// Store one stream under this file name (stdin or a command's stdout).
    Stream {
        filename: String,
        reader: Box<dyn Read + Send>,
    },
}

pub type ProgressFn = Box<dyn FnMut(&Progress)>;

pub struct BackupOptions {
    pub excludes: PathMatcher,
    pub exclude_patterns: Vec<String>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub host: String,
    /// Called with a JSON status line now and then (for `--json`).
    pub progress: Option<ProgressFn>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Progress {
    pub files_done: u64,
    pub bytes_done: u64,
    pub seconds_elapsed: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BackupResult {
    pub snapshot_id: String,
    pub parent: Option<String>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub total_duration: f64,
    /// Source entries that could not be read (exit code 3 when non-empty).
    pub errors: Vec<String>,
}

struct Walker<'a> {
    repo: &'a IndexedRepository,
    saver: &'a Saver,
    opts: &'a mut BackupOptions,
    names: Names,
    /// For a stream source, which is chunked on the walking thread.
    chunker: Chunker,
    files: SyncSender<FileJob>,
    res: BackupResult,
    started: Instant,
    last_progress: Instant,
}

impl Walker<'_> {
    fn save_blob(&mut self, t: BlobType, data: Vec<u8>) -> Result<Id> {
        let id = Id::hash(&data);
        let known = self.repo.index().has(t, &id);
        self.saver.save(t, id, data, known)?;
        Ok(id)
    }

    fn save_tree(&mut self, nodes: Vec<Node>) -> Result<Id> {
        // A safe point: once our lock is lost, stop before writing more.
        self.repo.check_lock()?;
        let json = Tree { nodes }.to_json().map_err(|e| corrupt("tree", e))?;
        self.save_blob(BlobType::Tree, json)
    }

    fn progress(&mut self) {
        if self.last_progress.elapsed().as_secs() >= 1
            && let Some(cb) = self.opts.progress.as_mut()
        {
            self.last_progress = Instant::now();
            cb(&Progress {
                files_done: self.res.total_files_processed,
                bytes_done: self.res.total_bytes_processed,
                seconds_elapsed: self.started.elapsed().as_secs(),
            });
        }
    }

    fn stream(&mut self, r: impl Read) -> std::io::Result<Result<(Vec<Id>, u64)>> {
        chunk_stream(self.repo, self.saver, &mut self.chunker, &[], r)
    }

    fn file_unchanged(node: &Node, old: Option<&Node>, repo: &IndexedRepository) -> bool {
        let Some(o) = old else { return false };
        o.node_type == NodeType::File
            && o.size == node.size
            && o.mtime.unix() == node.mtime.unix()
            && o.ctime.unix() == node.ctime.unix()
            && o.inode == node.inode
            && o.content
                .as_ref()
                .is_some_and(|c| c.iter().all(|id| repo.index().has(BlobType::Data, id)))
    }

    /// Back up one filesystem entry; None when excluded or unreadable (recorded).
    fn entry(
        &mut self,
        path: &Path,
        name: &[u8],
        old: Option<&Node>,
        dev: Option<u64>,
    ) -> Result<Option<Node>> {
        let slot = self.start_entry(path, name, old, dev)?;
        self.finish_entry(slot)
    }

    /// First pass: stat the entry and hand a changed file to the readers. Nothing is
    /// recorded in `res.errors` here, so errors keep the order of the entries.
    fn start_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        old: Option<&Node>,
        dev: Option<u64>,
    ) -> Result<Slot> {
        if self.opts.excludes.matches(path.as_os_str().as_bytes()) {
            return Ok(Slot::Skip);
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => return Ok(Slot::Failed(format!("{}: {e}", path.display()))),
        };
        let mut node = node_from_metadata(name, path, &meta, &mut self.names);
        self.progress();
        match node.node_type {
            NodeType::File => {
                self.res.total_files_processed += 1;
                self.res.total_bytes_processed += node.size;
                if Self::file_unchanged(&node, old, self.repo) {
                    node.content = old.and_then(|o| o.content.clone());
                    self.res.files_unmodified += 1;
                    return Ok(Slot::Ready(node));
                }
                let (reply, rx) = channel();
                self.files
                    .send(FileJob {
                        path: path.to_path_buf(),
                        size: node.size,
                        reply,
                    })
                    .map_err(|_| RepoError::Usage("file readers stopped".into()))?;
                Ok(Slot::File {
                    node,
                    path: path.to_path_buf(),
                    had_old: old.is_some(),
                    rx,
                })
            }
            NodeType::Dir => {
                if let Some(d) = dev
                    && self.opts.one_file_system
                    && meta.dev() != d
                {
                    return Ok(Slot::Skip);
                }
                Ok(Slot::Dir {
                    node,
                    path: path.to_path_buf(),
                    old_subtree: old.and_then(|o| o.subtree),
                    dev: dev.unwrap_or(meta.dev()),
                })
            }
            _ => Ok(Slot::Ready(node)),
        }
    }

    /// Second pass, in entry order: wait for a file's content or walk a subdirectory.
    fn finish_entry(&mut self, slot: Slot) -> Result<Option<Node>> {
        match slot {
            Slot::Skip => Ok(None),
            Slot::Failed(e) => {
                self.res.errors.push(e);
                Ok(None)
            }
            Slot::Ready(n) => Ok(Some(n)),
            Slot::File {
                mut node,
                path,
                had_old,
                rx,
            } => {
                let out = rx
                    .recv()
                    .map_err(|_| RepoError::Usage("file reader stopped".into()))?;
                match out {
                    Ok(content) => node.content = Some(content?),
                    Err(e) => {
                        self.res.errors.push(format!("{}: {e}", path.display()));
                        return Ok(None);
                    }
                }
                if had_old {
                    self.res.files_changed += 1;
                } else {
                    self.res.files_new += 1;
                }
                Ok(Some(node))
            }
            Slot::Dir {
                mut node,
                path,
                old_subtree,
                dev,
            } => {
                let old_tree = match old_subtree {
                    Some(t) => self.repo.load_tree(&t).ok(),
                    None => None,
                };
                let sub = self.dir(&path, old_tree.as_ref(), Some(dev))?;
                match old_subtree {
                    None => self.res.dirs_new += 1,
                    Some(o) if o == sub => self.res.dirs_unmodified += 1,
                    Some(_) => self.res.dirs_changed += 1,
                }
                node.subtree = Some(sub);
                Ok(Some(node))
            }
        }
    }

    fn dir(&mut self, path: &Path, old: Option<&Tree>, dev: Option<u64>) -> Result<Id> {
        let mut entries: Vec<Vec<u8>> = match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(|e| match e {
                    Ok(e) => Some(e.file_name().as_bytes().to_vec()),
                    Err(err) => {
                        self.res.errors.push(format!("{}: {err}", path.display()));
                        None
                    }
                })
                .collect(),
            Err(e) => {
                self.res.errors.push(format!("{}: {e}", path.display()));
                Vec::new()
            }
        };
        if self.opts.exclude_caches && is_cache_dir(path) {
            entries.retain(|n| n == b"CACHEDIR.TAG");
        }
        entries.sort();
        // All files of the directory are queued before any is waited for, so the readers
        // work on them side by side; the nodes are still assembled in name order.
        let mut slots = Vec::with_capacity(entries.len());
        for name in entries {
            let child = path.join(std::ffi::OsStr::from_bytes(&name));
            let old_node = old.and_then(|t| t.nodes.iter().find(|n| n.name == name));
            slots.push(self.start_entry(&child, &name, old_node, dev)?);
        }
        let mut nodes = Vec::with_capacity(slots.len());
        for slot in slots {
            if let Some(n) = self.finish_entry(slot)? {
                nodes.push(n);
            }
        }
        self.save_tree(nodes)
    }

    /// The root tree holds the path components of every target (`/a/b` → `a` → `b`).
    fn virtual_dir(&mut self, v: &VDir, old: Option<&Tree>) -> Result<Id> {
        let mut nodes = Vec::new();
        for (name, child) in &v.children {
            let old_node = old.and_then(|t| t.nodes.iter().find(|n| &n.name == name));
            match child {
                VEntry::Target(path) => {
                    if let Some(n) = self.entry(path, name, old_node, None)? {
                        nodes.push(n);
                    }
                }
                VEntry::Dir(d) => {
                    let path = &d.fs;
                    let meta = std::fs::symlink_metadata(path)
                        .map_err(|e| RepoError::Usage(format!("{}: {e}", path.display())))?;
                    let mut node = node_from_metadata(name, path, &meta, &mut self.names);
                    let old_tree = match old_node.and_then(|o| o.subtree) {
                        Some(t) => self.repo.load_tree(&t).ok(),
                        None => None,
                    };
                    node.subtree = Some(self.virtual_dir(d, old_tree.as_ref())?);
                    nodes.push(node);
                }
            }
        }
        self.save_tree(nodes)
    }
}

/// Chunk `prefix` + a stream into data blobs; holds at most one chunk besides the chunker's
/// window.
fn chunk_stream(
    repo: &IndexedRepository,
    saver: &Saver,
    chunker: &mut Chunker,
    prefix: &[u8],
    mut r: impl Read,
) -> std::io::Result<Result<(Vec<Id>, u64)>> {
    let mut content = Vec::new();
    let total = match chunker.chunk(prefix, &mut r, |c| {
        content.push(store_data(repo, saver, c)?);
        Ok(())
    })? {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok((content, total)))
}

/// A file's content. Files no longer than MIN_CHUNK are always a single chunk, so they are
/// read into a buffer of their own size and never touch the chunker.
fn chunk_file(
    repo: &IndexedRepository,
    saver: &Saver,
    chunker: &mut Chunker,
    mut f: File,
    size: u64,
) -> std::io::Result<Result<Vec<Id>>> {
    if size > MIN_CHUNK as u64 {
        return Ok(chunk_stream(repo, saver, chunker, &[], f)?.map(|r| r.0));
    }
    match chunker::read_small(&mut f, size)? {
        Ok(data) if data.is_empty() => Ok(Ok(Vec::new())),
        Ok(data) => Ok(store_data(repo, saver, data).map(|id| vec![id])),
        Err(prefix) => Ok(chunk_stream(repo, saver, chunker, &prefix, f)?.map(|r| r.0)),
    }
}

/// What a reader reports for one file: an I/O error skips the file (recorded), a
/// repository error aborts the backup.
type FileOutcome = std::io::Result<Result<Vec<Id>>>;

struct FileJob {
    path: PathBuf,
    size: u64,
    reply: Sender<FileOutcome>,
}

/// Reading, chunking and hashing are most of a backup's CPU outside the blob workers; with
/// several readers a slow disk read or a big file no longer stalls everything behind it.
fn reader(repo: &IndexedRepository, saver: &Saver, jobs: &Mutex<Receiver<FileJob>>) {
    let mut chunker = Chunker::default();
    loop {
        let job = jobs.lock().expect("poisoned").recv();
        let Ok(job) = job else { break };
        let out =
            File::open(&job.path).and_then(|f| chunk_file(repo, saver, &mut chunker, f, job.size));
        let _ = job.reply.send(out);
    }
}

/// One directory entry between the two passes of [`Walker::dir`].
enum Slot {
    Skip,
    Failed(String),
    Ready(Node),
    File {
        node: Node,
        path: PathBuf,
        had_old: bool,
        rx: Receiver<FileOutcome>,
    },
    Dir {
        node: Node,
        path: PathBuf,
        old_subtree: Option<Id>,
        dev: u64,
    },
}

/// Queue one data blob unless it is already stored; its ID either way.
fn store_data(repo: &IndexedRepository, saver: &Saver, data: Vec<u8>) -> Result<Id> {
    let id = Id::hash(&data);
    let known = repo.index().has(BlobType::Data, &id);
    saver.save(BlobType::Data, id, data, known)?;
    Ok(id)
}

fn is_cache_dir(path: &Path) -> bool {
    let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
    File::open(path.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && buf == CACHEDIR_SIGNATURE
}

/// The directories above the targets, as the snapshot shows them.
struct VDir {
    /// Where this directory is on the filesystem (its metadata becomes the node).
    fs: PathBuf,
    children: BTreeMap<Vec<u8>, VEntry>,
}

enum VEntry {
    /// A target, with its place on the filesystem.
    Target(PathBuf),
    Dir(VDir),
}

/// What the snapshot's root is made of.
enum Layout {
    /// The targets and the directories above them (`/etc/ssh` → `etc` → `ssh`).
    Tree(VDir),
    /// A target that is the snapshot root itself (`backup .`): its entries are the root's.
    Root(PathBuf),
}

/// A target's place in the snapshot, as restic chooses it: an absolute target keeps its
/// whole path; a relative one is placed relative to the snapshot root, lexically cleaned,
/// with any `..` that climbs above the current directory dropped (`../x` → `/x`).
fn snapshot_components(target: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in target.components() {
        match c {
            Component::Normal(s) => out.push(s.as_bytes().to_vec()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn build_layout(targets: &[PathBuf]) -> Result<Layout> {
    let mut root = VDir {
        fs: PathBuf::from("/"),
        children: BTreeMap::new(),
    };
    for t in targets {
        let fs = absolute(t)?;
        let comps = snapshot_components(t);
        if comps.is_empty() {
            if t.is_absolute() {
                return Err(RepoError::Usage(
                    "backing up `/` itself is not supported yet; list its subdirectories".into(),
                ));
            }
            if targets.len() > 1 {
                return Err(RepoError::Usage(format!(
                    "{} is the snapshot root (its entries go to the top of the snapshot) and \
                     cannot be combined with other targets; back them up separately or name \
                     the entries",
                    t.display()
                )));
            }
            return Ok(Layout::Root(fs));
        }
        let mut cur = &mut root;
        for (i, c) in comps.iter().enumerate() {
            if i + 1 == comps.len() {
                cur.children.insert(c.clone(), VEntry::Target(fs.clone()));
                break;
            }
            // The snapshot path is a suffix of the filesystem path, so the directory that
            // holds component i is this many levels above the target.
            let above = comps.len() - 1 - i;
            let dir_fs = fs
                .ancestors()
                .nth(above)
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            let e = cur.children.entry(c.clone()).or_insert_with(|| {
                VEntry::Dir(VDir {
                    fs: dir_fs,
                    children: BTreeMap::new(),
                })
            });
            match e {
                VEntry::Dir(d) => cur = d,
                // An ancestor is itself a target: it already covers this path.
                VEntry::Target(_) => break,
            }
        }
    }
    Ok(Layout::Tree(root))
}

/// Absolute, lexically normalized (no symlink resolution, like restic).
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(p).map_err(|e| RepoError::Usage(format!("{}: {e}", p.display())))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    Ok(out)
}

pub fn find_parent(
    repo: &IndexedRepository,
    host: &str,
    paths: &[String],
) -> Result<Option<(Id, Snapshot)>> {
    let mut want = paths.to_vec();
    want.sort();
    Ok(repo.snapshots()?.into_iter().rev().find(|(_, s)| {
        let mut have = s.paths.clone();
        have.sort();
        s.hostname == host && have == want
    }))
}

/// Write index files for everything stored; only after this may a snapshot refer to it.
pub fn write_index(
    repo: &IndexedRepository,
    stored: &[(Id, Vec<crate::format::pack::PackedBlob>)],
) -> Result<Vec<Id>> {
    let mut ids = Vec::new();
    let mut cur = IndexFile::default();
    let mut count = 0;
    for (pack, blobs) in stored {
        cur.packs.push(IndexPack {
            id: *pack,
            blobs: blobs.iter().map(IndexBlob::from).collect(),
        });
        count += blobs.len();
        if count >= INDEX_MAX_BLOBS {
            ids.push(repo.save_unpacked_raw(FileType::Index, &cur.to_json())?);
            cur = IndexFile::default();
            count = 0;
        }
    }
    if !cur.packs.is_empty() {
        ids.push(repo.save_unpacked_raw(FileType::Index, &cur.to_json())?);
    }
    Ok(ids)
}

/// A check run after the data is stored and before the index and snapshot are written; an
/// error aborts without a snapshot (`--stdin-from-command` with a failing command).
pub type SourceCheck = Box<dyn FnOnce() -> std::result::Result<(), String>>;

pub fn backup(
    repo: &mut IndexedRepository,
    source: Source,
    opts: BackupOptions,
) -> Result<BackupResult> {
    backup_checked(repo, source, opts, None)
}

pub fn backup_checked(
    repo: &mut IndexedRepository,
    source: Source,
    mut opts: BackupOptions,
    source_ok: Option<SourceCheck>,
) -> Result<BackupResult> {
    let started = Instant::now();
    let start_time = GoTime::now();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let saver = Saver::new(repo, cpus, 4);
    let readers = cpus.max(2);
    let (file_tx, file_rx) = sync_channel::<FileJob>(readers * 16);
    let file_rx = Mutex::new(file_rx);
    let shared_repo: &IndexedRepository = repo;
    let (paths, parent, tree, res) = std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| reader(shared_repo, &saver, &file_rx));
        }
        let mut w = Walker {
            repo: shared_repo,
            saver: &saver,
            opts: &mut opts,
            names: Names::default(),
            chunker: Chunker::default(),
            files: file_tx,
            res: BackupResult::default(),
            started,
            last_progress: Instant::now(),
        };
        match source {
            Source::Paths(targets) => {
                let mut abs = Vec::new();
                for t in &targets {
                    abs.push(absolute(t)?);
                }
                let paths: Vec<String> = abs
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                let parent = find_parent(w.repo, &w.opts.host, &paths)?;
                let old_root = match &parent {
                    Some((_, s)) => w.repo.load_tree(&s.tree).ok(),
                    None => None,
                };
                let tree = match build_layout(&targets)? {
                    Layout::Tree(v) => w.virtual_dir(&v, old_root.as_ref())?,
                    Layout::Root(dir) => {
                        let meta = std::fs::symlink_metadata(&dir)
                            .map_err(|e| RepoError::Usage(format!("{}: {e}", dir.display())))?;
                        if !meta.is_dir() {
                            return Err(RepoError::Usage(format!(
                                "{} is not a directory",
                                dir.display()
                            )));
                        }
                        w.dir(&dir, old_root.as_ref(), Some(meta.dev()))?
                    }
                };
                Ok((paths, parent.map(|p| p.0), tree, w.res))
            }
            Source::Stream { filename, reader } => {
                if filename.is_empty() || filename.contains('/') {
                    return Err(RepoError::Usage(format!(
                        "invalid --stdin-filename {filename:?}"
                    )));
                }
                let (content, size) = w
                    .stream(reader)
                    .map_err(|e| RepoError::Usage(format!("reading {filename}: {e}")))??;
                let now = GoTime::now();
                let node = Node {
                    name: filename.as_bytes().to_vec(),
                    node_type: NodeType::File,
                    mode: 0o644,
                    mtime: now,
                    atime: now,
                    ctime: now,
                    uid: unsafe { libc::getuid() },
                    gid: unsafe { libc::getgid() },
                    size,
                    content: Some(content),
                    ..Default::default()
                };
                w.res.files_new = 1;
                w.res.total_files_processed = 1;
                w.res.total_bytes_processed = size;
                let tree = w.save_tree(vec![node])?;
                Ok((vec![format!("/{filename}")], None, tree, w.res))
            }
        }
    })?;
    let mut res = res;
    // Crash safety: packs are durable before `finish` returns, then the index, then the snapshot.
    let (stored, stats) = saver.finish()?;
    if let Some(check) = source_ok {
        check().map_err(RepoError::Usage)?;
    }
    // Without our lock a prune may have run meanwhile: no index and no snapshot that could
    // refer to data it removed.
    repo.check_lock()?;
    write_index(repo, &stored)?;
    for (pack, blobs) in &stored {
        repo.index_mut().add_pack(*pack, blobs);
    }
    res.data_blobs = stats.data_blobs;
    res.tree_blobs = stats.tree_blobs;
    res.data_added = stats.data_added;
    res.data_added_packed = stats.data_added_packed;
    let snap = Snapshot {
        time: start_time,
        parent,
        tree,
        paths,
        hostname: opts.host.clone(),
        username: crate::repo::username(),
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        excludes: opts.exclude_patterns.clone(),
        tags: opts.tags.clone(),
        program_version: format!("fleetsnap {}", crate::VERSION),
        summary: Some(SnapshotSummary {
            backup_start: start_time,
            backup_end: GoTime::now(),
            files_new: res.files_new,
            files_changed: res.files_changed,
            files_unmodified: res.files_unmodified,
            dirs_new: res.dirs_new,
            dirs_changed: res.dirs_changed,
            dirs_unmodified: res.dirs_unmodified,
            data_blobs: res.data_blobs,
            tree_blobs: res.tree_blobs,
            data_added: res.data_added,
            data_added_packed: res.data_added_packed,
            total_files_processed: res.total_files_processed,
            total_bytes_processed: res.total_bytes_processed,
        }),
        ..Default::default()
    };
    repo.check_lock()?;
    let id = repo.save_unpacked(FileType::Snapshot, &snap)?;
    res.snapshot_id = id.to_hex();
    res.parent = parent.map(|p| p.to_hex());
    res.total_duration = started.elapsed().as_secs_f64();
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Repository;
    use crate::repo::mem::MemBackend;
    use std::sync::Arc;

    fn opts(host: &str) -> BackupOptions {
        BackupOptions {
            excludes: PathMatcher::new(&["*.skip".into()]).unwrap(),
            exclude_patterns: vec!["*.skip".into()],
            exclude_caches: true,
            one_file_system: false,
            tags: vec!["t".into()],
            host: host.into(),
            progress: None,
        }
    }

    #[test]
    fn backup_restore_check_and_incremental() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("d/e")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(s.join("big.bin"), &big).unwrap();
        std::fs::write(s.join("d/e/small.txt"), b"hello").unwrap();
        std::fs::write(s.join("d/empty"), b"").unwrap();
        std::fs::write(s.join("x.skip"), b"no").unwrap();
        std::fs::write(s.join(std::ffi::OsStr::from_bytes(b"raw-\xff")), b"raw").unwrap();
        std::fs::write(s.join("zeros"), vec![0u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("big.bin", s.join("link")).unwrap();
        std::fs::create_dir(s.join("cache")).unwrap();
        std::fs::write(s.join("cache/CACHEDIR.TAG"), CACHEDIR_SIGNATURE).unwrap();
        std::fs::write(s.join("cache/junk"), b"junk").unwrap();

        let be: Arc<dyn crate::backend::Backend> = Arc::new(MemBackend::new());
        let mut repo = Repository::init(be.clone(), b"pw")
            .unwrap()
            .load_index()
            .unwrap();
        let r1 = backup(&mut repo, Source::Paths(vec![s.to_path_buf()]), opts("h")).unwrap();
        assert!(r1.errors.is_empty(), "{:?}", r1.errors);
        assert_eq!(r1.files_new, 6);
        let rep =
            crate::check::check(repo.repo().clone(), Some(crate::check::Subset::All)).unwrap();
        assert!(rep.ok(), "{:?}", rep.errors);

        let r2 = backup(&mut repo, Source::Paths(vec![s.to_path_buf()]), opts("h")).unwrap();
        assert_eq!(r2.parent.as_deref(), Some(r1.snapshot_id.as_str()));
        assert_eq!(r2.files_unmodified, 6);
        assert_eq!(r2.data_blobs, 0);

        let (_, snap) = repo.find_snapshot("latest", &Default::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let ropts = crate::restore::RestoreOptions {
            target: out.path().to_path_buf(),
            include: PathMatcher::new(&[]).unwrap(),
            exclude: PathMatcher::new(&[]).unwrap(),
            verify: true,
        };
        let st = crate::restore::restore(&repo, &snap.tree, &ropts).unwrap();
        assert!(st.errors.is_empty(), "{:?}", st.errors);
        let r = out.path().join(s.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(r.join("big.bin")).unwrap(), big);
        assert_eq!(std::fs::read(r.join("d/e/small.txt")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(r.join(std::ffi::OsStr::from_bytes(b"raw-\xff"))).unwrap(),
            b"raw"
        );
        assert!(!r.join("x.skip").exists());
        assert!(!r.join("cache/junk").exists());
        assert!(r.join("cache/CACHEDIR.TAG").exists());
        assert_eq!(
            std::fs::read_link(r.join("link")).unwrap(),
            Path::new("big.bin")
        );
        let z = std::fs::metadata(r.join("zeros")).unwrap();
        assert_eq!(z.len(), 1 << 20);
        assert!(z.blocks() * 512 < 1 << 20, "zeros restored sparse");
    }

    #[test]
    fn stream_source() {
        let be: Arc<dyn crate::backend::Backend> = Arc::new(MemBackend::new());
        let mut repo = Repository::init(be, b"pw").unwrap().load_index().unwrap();
        let data = vec![42u8; 2_000_000];
        let r = backup(
            &mut repo,
            Source::Stream {
                filename: "dump.sql".into(),
                reader: Box::new(std::io::Cursor::new(data.clone())),
            },
            opts("h"),
        )
        .unwrap();
        let (_, snap) = repo
            .find_snapshot(&r.snapshot_id[..8], &Default::default())
            .unwrap();
        assert_eq!(snap.paths, vec!["/dump.sql".to_string()]);
        let t = repo.load_tree(&snap.tree).unwrap();
        let mut got = Vec::new();
        for id in t.nodes[0].content.as_ref().unwrap() {
            got.extend(repo.load_blob(BlobType::Data, id).unwrap());
        }
        assert_eq!(got, data);
    }
}
