//! Index files: which blobs live in which pack at which offset.

use serde::{Deserialize, Serialize};

use super::pack::{BlobType, PackedBlob};
use crate::id::Id;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct IndexFile {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct IndexPack {
    pub id: Id,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexBlob {
    pub id: Id,
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    #[serde(default)]
    pub offset: u32,
    #[serde(default)]
    pub length: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncompressed_length: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl From<&PackedBlob> for IndexBlob {
    fn from(b: &PackedBlob) -> IndexBlob {
        IndexBlob {
            id: b.id,
            blob_type: b.blob_type,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        }
    }
}

impl IndexBlob {
    pub fn packed(&self) -> PackedBlob {
        PackedBlob {
            blob_type: self.blob_type,
            id: self.id,
            offset: self.offset,
            length: self.length,
            uncompressed_length: self.uncompressed_length,
        }
    }
}

impl IndexFile {
    /// Parse either the current object format or the legacy bare array of packs.
    pub fn parse(json: &[u8]) -> serde_json::Result<IndexFile> {
        if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            let packs: Vec<IndexPack> = serde_json::from_slice(json)?;
            return Ok(IndexFile {
                supersedes: vec![],
                packs,
            });
        }
        serde_json::from_slice(json)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("index serializes");
        v.push(b'\n');
        v
    }

    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    pub fn uses_compression(&self) -> bool {
        self.packs
            .iter()
            .any(|p| p.blobs.iter().any(|b| b.uncompressed_length != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_index_and_legacy() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/restic-fixtures/vectors/repo-v2/plaintext/index"
        );
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            let idx = IndexFile::parse(&data).unwrap();
            assert!(idx.blob_count() > 0);
            assert!(idx.uses_compression());
            let again = IndexFile::parse(&idx.to_json()).unwrap();
            assert_eq!(again.blob_count(), idx.blob_count());
        }
        let legacy = format!(r#"[{{"id":"{}","blobs":[]}}]"#, Id::hash(b"x"));
        assert_eq!(IndexFile::parse(legacy.as_bytes()).unwrap().packs.len(), 1);
    }
}
