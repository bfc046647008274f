//! The master index: the union of all index files, held compactly in memory.

use std::collections::HashMap;

use crate::format::index::IndexFile;
use crate::format::pack::{BlobType, PackedBlob};
use crate::id::Id;

/// Where one copy of a blob lives. Packs are referenced by position to keep entries small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: u32,
}

#[derive(Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    /// First known location of each blob.
    blobs: HashMap<(BlobType, Id), Location>,
    /// Further copies (concurrent backups, interrupted prunes); rare, so kept apart.
    extra: HashMap<(BlobType, Id), Vec<Location>>,
}

impl MasterIndex {
    pub fn new() -> MasterIndex {
        MasterIndex::default()
    }

    fn pack_index(&mut self, id: Id) -> u32 {
        if let Some(&p) = self.pack_pos.get(&id) {
            return p;
        }
        let p = self.packs.len() as u32;
        self.packs.push(id);
        self.pack_pos.insert(id, p);
        p
    }

    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let p = self.pack_index(pack);
        for b in blobs {
            let loc = Location {
                pack: p,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            let key = (b.blob_type, b.id);
            match self.blobs.get(&key) {
                None => {
                    self.blobs.insert(key, loc);
                }
                Some(first) if *first == loc => {}
                Some(_) => {
                    let v = self.extra.entry(key).or_default();
                    if !v.contains(&loc) {
                        v.push(loc);
                    }
                }
            }
        }
    }

    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            let blobs: Vec<PackedBlob> = p.blobs.iter().map(|b| b.packed()).collect();
            self.add_pack(p.id, &blobs);
        }
    }

    pub fn has(&self, t: BlobType, id: &Id) -> bool {
        self.blobs.contains_key(&(t, *id))
    }

    /// Every known location of a blob, first one first.
    pub fn locations(&self, t: BlobType, id: &Id) -> Vec<(Id, Location)> {
        let key = (t, *id);
        let mut out = Vec::new();
        if let Some(l) = self.blobs.get(&key) {
            out.push((self.packs[l.pack as usize], *l));
        }
        if let Some(v) = self.extra.get(&key) {
            out.extend(v.iter().map(|l| (self.packs[l.pack as usize], *l)));
        }
        out
    }

    /// Plaintext size of a blob, if indexed.
    pub fn plain_size(&self, t: BlobType, id: &Id) -> Option<u64> {
        self.blobs.get(&(t, *id)).map(|l| {
            if l.uncompressed_length != 0 {
                l.uncompressed_length as u64
            } else {
                l.length as u64 - crate::crypto::OVERHEAD as u64
            }
        })
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Every pack with every blob the index assigns to it (all copies), offsets ascending.
    pub fn packs(&self) -> HashMap<Id, Vec<PackedBlob>> {
        let mut out: HashMap<Id, Vec<PackedBlob>> = HashMap::new();
        for id in &self.packs {
            out.entry(*id).or_default();
        }
        let all = self.blobs.iter().chain(
            self.extra
                .iter()
                .flat_map(|(k, v)| v.iter().map(move |l| (k, l))),
        );
        for ((t, id), l) in all {
            out.entry(self.packs[l.pack as usize])
                .or_default()
                .push(PackedBlob {
                    blob_type: *t,
                    id: *id,
                    offset: l.offset,
                    length: l.length,
                    uncompressed_length: l.uncompressed_length,
                });
        }
        for v in out.values_mut() {
            v.sort_by_key(|b| b.offset);
        }
        out
    }
}
