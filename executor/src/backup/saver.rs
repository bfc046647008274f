//! The write half of backup: compress + encrypt on a worker pool, gather blobs into packs
//! (data and tree separately), upload packs from several threads, remember what was stored.
//!
//! Memory is bounded by the channel capacities (a few chunks of at most 8 MiB in flight, plus
//! one open pack per blob type and a few finished packs queued for upload).

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::backend::FileType;
use crate::crypto::Key;
use crate::format::pack::{self, BlobType, PackedBlob};
use crate::id::Id;
use crate::repo::{RepoError, Repository, Result};

/// A finished pack: its ID, bytes and the blobs it holds.
type FinishedPack = (Id, Vec<u8>, Vec<PackedBlob>);
/// A durably stored pack and its blobs, ready for the index.
pub type StoredPack = (Id, Vec<PackedBlob>);

pub const PACK_TARGET: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct OpenPack {
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
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

    fn add(&self, t: BlobType, id: Id, plain: Vec<u8>) {
        // Never compress empty blobs: uncompressed_length 0 means "not compressed".
        let (payload, ulen) = if self.compress && !plain.is_empty() {
            let c = zstd::bulk::compress(&plain, 3).expect("in-memory zstd cannot fail");
            (c, plain.len() as u32)
        } else {
            (plain, 0)
        };
        let sealed = self.key.seal(&payload);
        {
            let mut s = self.stats.lock().expect("poisoned");
            match t {
                BlobType::Data => s.data_blobs += 1,
                BlobType::Tree => s.tree_blobs += 1,
            }
            s.data_added += if ulen != 0 {
                ulen as u64
            } else {
                payload.len() as u64
            };
            s.data_added_packed += sealed.len() as u64;
        }
        let full = {
            let mut p = self.open[Self::slot(t)].lock().expect("poisoned");
            if p.data.capacity() == 0 {
                // Room for a full pack plus one more blob and the header, so growing it
                // never copies the pack to a buffer twice its size.
                p.data.reserve(PACK_TARGET + (2 << 20));
            }
            let offset = p.data.len() as u32;
            p.blobs.push(PackedBlob {
                blob_type: t,
                id,
                offset,
                length: sealed.len() as u32,
                uncompressed_length: ulen,
            });
            p.data.extend_from_slice(&sealed);
            if p.data.len() >= PACK_TARGET {
                Some(std::mem::take(&mut *p))
            } else {
                None
            }
        };
        if let Some(p) = full {
            self.ship(p);
        }
    }

    fn ship(&self, mut p: OpenPack) {
        if p.blobs.is_empty() {
            return;
        }
        pack::finish(&self.key, &mut p.data, &p.blobs);
        let id = Id::hash(&p.data);
        let tx = self.upload_tx.lock().expect("poisoned").clone();
        if let Some(tx) = tx {
            let _ = tx.send((id, p.data, p.blobs));
        }
    }
}

type Job = (BlobType, Id, Vec<u8>);

pub struct Saver {
    shared: Arc<Shared>,
    job_tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    uploaders: Vec<JoinHandle<()>>,
    /// Blobs known to be stored or queued; checked before any work is done.
    known: Mutex<HashSet<(BlobType, Id)>>,
}

impl Saver {
    pub fn new(repo: &Repository, cpu_workers: usize, upload_workers: usize) -> Saver {
        // Half as many finished packs queued as uploaders keeps them busy; every queued pack
        // is 16 MiB of resident memory.
        let queued = (upload_workers / 2).max(1);
        let (upload_tx, upload_rx) = sync_channel::<(Id, Vec<u8>, Vec<PackedBlob>)>(queued);
        let shared = Arc::new(Shared {
            key: repo.key().clone(),
            compress: repo.version() >= 2,
            open: [Mutex::default(), Mutex::default()],
            upload_tx: Mutex::new(Some(upload_tx)),
            stored: Mutex::default(),
            error: Mutex::default(),
            stats: Mutex::default(),
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
                        let Ok((id, data, blobs)) = msg else { break };
                        match be.write(FileType::Pack, &id.to_hex(), &data) {
                            // Only a durably stored pack may be indexed.
                            Ok(()) => sh.stored.lock().expect("poisoned").push((id, blobs)),
                            Err(e) => sh.fail(e.into()),
                        }
                    }
                })
            })
            .collect();
        let (job_tx, job_rx) = sync_channel::<Job>(cpu_workers * 2);
        let job_rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(job_rx));
        let workers = (0..cpu_workers)
            .map(|_| {
                let rx = job_rx.clone();
                let sh = shared.clone();
                std::thread::spawn(move || {
                    loop {
                        let msg = rx.lock().expect("poisoned").recv();
                        let Ok((t, id, plain)) = msg else { break };
                        sh.add(t, id, plain);
                    }
                })
            })
            .collect();
        Saver {
            shared,
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
