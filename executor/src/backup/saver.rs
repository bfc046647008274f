//! The write half of backup: compress + encrypt on a worker pool, gather blobs into packs
//! (data and tree separately), upload packs from several threads, remember what was stored.
//!
//! Memory is bounded by the bytes of chunks queued for the workers ([`QUEUED_BYTES`]) and
//! what the workers hold while compressing and encrypting. Packs are assembled in unlinked
//! temporary files (like restic), not in memory: open packs and finished packs waiting for
//! their upload cost page cache, not resident memory. The local backend links such a file
//! into the repository without copying it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::backend::{BackendError, BackendErrorKind, FileType};
use crate::crypto::Key;
use crate::format::pack::{self, BlobType, PackedBlob};
use crate::id::Id;
use crate::repo::{RepoError, Repository, Result};

/// A finished pack: its ID, the temporary file holding it, its length and its blobs.
type FinishedPack = (Id, File, u64, Vec<PackedBlob>);

/// Plaintext bytes of chunks handed to [`Saver::save`] and not yet written to a pack. A
/// single chunk larger than this (up to 8 MiB) is still accepted when nothing else is queued.
pub const QUEUED_BYTES: usize = 6 << 20;
/// A durably stored pack and its blobs, ready for the index.
pub type StoredPack = (Id, Vec<PackedBlob>);

pub const PACK_TARGET: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct OpenPack {
    /// Created with the first blob, in `dir`.
    file: Option<File>,
    /// Where `file` lives, for an error that names the full disk.
    dir: PathBuf,
    len: u64,
    hasher: Sha256,
    blobs: Vec<PackedBlob>,
}

/// An unlinked temporary file: `O_TMPFILE` in `dir` (the backend's choice, so it can link it)
/// or in the system's temporary directory, else a named file that is unlinked at once.
/// Returns the directory it is in; an error comes with the directory it failed in.
fn temp_file(dir: Option<&Path>) -> std::result::Result<(File, PathBuf), (io::Error, PathBuf)> {
    let sys = std::env::temp_dir();
    for d in dir.into_iter().chain(Some(sys.as_path())) {
        if let Ok(f) = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(d)
        {
            return Ok((f, d.to_path_buf()));
        }
    }
    let suffix: u64 = rand::random();
    let path = sys.join(format!(
        "fleetsnap-pack-{}-{suffix:016x}",
        std::process::id()
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| (e, sys.clone()))?;
    std::fs::remove_file(&path).map_err(|e| (e, sys.clone()))?;
    Ok((f, sys))
}

/// A failed write of a temporary pack file in `dir`, naming that directory: with a local
/// repository it is the repository's own `data/`, not the system's temporary directory.
fn temp_error(e: io::Error, dir: &Path) -> RepoError {
    let kind = if e.raw_os_error() == Some(libc::ENOSPC) {
        BackendErrorKind::NoSpace
    } else {
        BackendErrorKind::Other
    };
    RepoError::Backend(BackendError::new(
        kind,
        "write",
        "temporary pack file",
        dir.display().to_string(),
        e.to_string(),
    ))
}

#[derive(Default, Debug, Clone, Copy)]
pub struct SaverStats {
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
}

struct Shared {
    key: Key,
    compress: bool,
    open: [Mutex<OpenPack>; 2],
    upload_tx: Mutex<Option<SyncSender<FinishedPack>>>,
    stored: Mutex<Vec<(Id, Vec<PackedBlob>)>>,
    error: Mutex<Option<RepoError>>,
    stats: Mutex<SaverStats>,
    temp_dir: Option<PathBuf>,
}

impl Shared {
    fn fail(&self, e: RepoError) {
        let mut g = self.error.lock().expect("poisoned");
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn slot(t: BlobType) -> usize {
        match t {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    /// Compress (v2) and encrypt one blob into the worker's reused buffer, then append it
    /// to the open pack of its type.
    fn add(&self, w: &mut WorkerBuf, t: BlobType, id: Id, plain: Vec<u8>) {
        // Never compress empty blobs: uncompressed_length 0 means "not compressed".
        let buf = &mut w.sealed;
        buf.clear();
        buf.resize(crate::crypto::IV_LEN, 0);
        let mut ulen = 0;
        if self.compress && !plain.is_empty() {
            let bound = zstd::zstd_safe::compress_bound(plain.len());
            buf.resize(crate::crypto::IV_LEN + bound, 0);
            let n = w
                .zstd
                .compress_to_buffer(&plain, &mut buf[crate::crypto::IV_LEN..])
                .expect("in-memory zstd with a compress_bound buffer cannot fail");
            buf.truncate(crate::crypto::IV_LEN + n);
            ulen = plain.len() as u32;
        } else {
            buf.extend_from_slice(&plain);
        }
        let payload_len = buf.len() - crate::crypto::IV_LEN;
        drop(plain);
        self.key.seal_in_place(buf);
        let sealed = &buf[..];
        {
            let mut s = self.stats.lock().expect("poisoned");
            match t {
                BlobType::Data => s.data_blobs += 1,
                BlobType::Tree => s.tree_blobs += 1,
            }
            s.data_added += if ulen != 0 {
                ulen as u64
            } else {
                payload_len as u64
            };
            s.data_added_packed += sealed.len() as u64;
        }
        let full = {
            let mut p = self.open[Self::slot(t)].lock().expect("poisoned");
            if p.file.is_none() {
                match temp_file(self.temp_dir.as_deref()) {
                    Ok((f, dir)) => {
                        p.file = Some(f);
                        p.dir = dir;
                    }
                    Err((e, dir)) => return self.fail(temp_error(e, &dir)),
                }
            }
            let file = p.file.as_mut().expect("just created");
            if let Err(e) = file.write_all(sealed) {
                // The pack's layout is unknown after a short write: drop it (the backup
                // fails and nothing of this pack is indexed).
                let dir = std::mem::take(&mut p.dir);
                *p = OpenPack::default();
                return self.fail(temp_error(e, &dir));
            }
            let offset = p.len as u32;
            p.len += sealed.len() as u64;
            p.hasher.update(sealed);
            p.blobs.push(PackedBlob {
                blob_type: t,
                id,
                offset,
                length: sealed.len() as u32,
                uncompressed_length: ulen,
            });
            if p.len >= PACK_TARGET as u64 {
                Some(std::mem::take(&mut *p))
            } else {
                None
            }
        };
        if w.sealed.capacity() > WORKER_BUF_KEEP {
            // One 8 MiB chunk should not keep 8 MiB resident for the rest of the backup.
            w.sealed = Vec::new();
        }
        if let Some(p) = full {
            self.ship(p);
        }
    }

    fn ship(&self, p: OpenPack) {
        let OpenPack {
            file,
            dir,
            len,
            mut hasher,
            blobs,
        } = p;
        let Some(mut file) = file else { return };
        if blobs.is_empty() {
            return;
        }
        let mut trailer = self.key.seal(&pack::header_plaintext(&blobs));
        trailer.extend_from_slice(&((trailer.len() as u32).to_le_bytes()));
        if let Err(e) = file.write_all(&trailer) {
            return self.fail(temp_error(e, &dir));
        }
        hasher.update(&trailer);
        let id = Id(hasher.finalize().into());
        let len = len + trailer.len() as u64;
        let tx = self.upload_tx.lock().expect("poisoned").clone();
        if let Some(tx) = tx {
            let _ = tx.send((id, file, len, blobs));
        }
    }
}

/// Per blob worker: a zstd context and the buffer blobs are compressed and sealed in.
struct WorkerBuf {
    zstd: zstd::bulk::Compressor<'static>,
    sealed: Vec<u8>,
}

/// A worker's buffer larger than this is freed after use instead of kept.
const WORKER_BUF_KEEP: usize = 2 << 20;

/// Counts the plaintext bytes queued for the blob workers; `save` waits while it is full.
#[derive(Default)]
struct Budget {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: usize) {
        let mut used = self.used.lock().expect("poisoned");
        while *used > 0 && *used + n > QUEUED_BYTES {
            used = self.freed.wait(used).expect("poisoned");
        }
        *used += n;
    }

    fn give(&self, n: usize) {
        *self.used.lock().expect("poisoned") -= n;
        self.freed.notify_all();
    }
}

type Job = (BlobType, Id, Vec<u8>);

pub struct Saver {
    shared: Arc<Shared>,
    budget: Arc<Budget>,
    job_tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    uploaders: Vec<JoinHandle<()>>,
    /// Blobs known to be stored or queued; checked before any work is done.
    known: Mutex<HashSet<(BlobType, Id)>>,
}

impl Saver {
    pub fn new(repo: &Repository, cpu_workers: usize, upload_workers: usize) -> Saver {
        // Queued packs are temporary files (disk, page cache), not memory; the bound only
        // keeps the temporary space small when the uploads are the bottleneck.
        let queued = upload_workers.max(1);
        let (upload_tx, upload_rx) = sync_channel::<FinishedPack>(queued);
        let shared = Arc::new(Shared {
            key: repo.key().clone(),
            compress: repo.version() >= 2,
            open: [Mutex::default(), Mutex::default()],
            upload_tx: Mutex::new(Some(upload_tx)),
            stored: Mutex::default(),
            error: Mutex::default(),
            stats: Mutex::default(),
            temp_dir: repo.backend().temp_dir(),
        });
        let upload_rx = Arc::new(Mutex::new(upload_rx));
        let uploaders = (0..upload_workers)
            .map(|_| {
                let rx = upload_rx.clone();
                let sh = shared.clone();
                let be = repo.backend().clone();
                std::thread::spawn(move || {
                    loop {
                        let msg = rx.lock().expect("poisoned").recv();
                        let Ok((id, file, len, blobs)) = msg else {
                            break;
                        };
                        match be.write_file(FileType::Pack, &id.to_hex(), &file, len) {
                            // Only a durably stored pack may be indexed.
                            Ok(()) => sh.stored.lock().expect("poisoned").push((id, blobs)),
                            Err(e) => sh.fail(e.into()),
                        }
                    }
                })
            })
            .collect();
        // The real bound is `budget` (bytes); the count only limits tiny blobs.
        let (job_tx, job_rx) = sync_channel::<Job>(cpu_workers * 8);
        let job_rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(job_rx));
        let budget = Arc::new(Budget::default());
        let workers = (0..cpu_workers)
            .map(|_| {
                let rx = job_rx.clone();
                let sh = shared.clone();
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut w = WorkerBuf {
                        zstd: zstd::bulk::Compressor::new(3).expect("zstd level 3"),
                        sealed: Vec::new(),
                    };
                    loop {
                        let msg = rx.lock().expect("poisoned").recv();
                        let Ok((t, id, plain)) = msg else { break };
                        let n = plain.len();
                        sh.add(&mut w, t, id, plain);
                        budget.give(n);
                    }
                })
            })
            .collect();
        Saver {
            shared,
            budget,
            job_tx: Some(job_tx),
            workers,
            uploaders,
            known: Mutex::default(),
        }
    }

    /// Queue a blob unless it is already stored (`in_index`) or queued. Returns true if new.
    pub fn save(&self, t: BlobType, id: Id, plain: Vec<u8>, in_index: bool) -> Result<bool> {
        if let Some(e) = self.shared.error.lock().expect("poisoned").take() {
            return Err(e);
        }
        if in_index || !self.known.lock().expect("poisoned").insert((t, id)) {
            return Ok(false);
        }
        self.budget.take(plain.len());
        self.job_tx
            .as_ref()
            .expect("saver open")
            .send((t, id, plain))
            .map_err(|_| RepoError::Usage("blob workers stopped".into()))?;
        Ok(true)
    }

    /// Drain all work, upload the last packs, and return what is now durably stored.
    pub fn finish(mut self) -> Result<(Vec<StoredPack>, SaverStats)> {
        drop(self.job_tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        for slot in &self.shared.open {
            let p = std::mem::take(&mut *slot.lock().expect("poisoned"));
            self.shared.ship(p);
        }
        drop(self.shared.upload_tx.lock().expect("poisoned").take());
        for u in self.uploaders.drain(..) {
            let _ = u.join();
        }
        if let Some(e) = self.shared.error.lock().expect("poisoned").take() {
            return Err(e);
        }
        let stored = std::mem::take(&mut *self.shared.stored.lock().expect("poisoned"));
        let stats = *self.shared.stats.lock().expect("poisoned");
        Ok((stored, stats))
    }
}
