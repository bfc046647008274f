//! Pack files: sealed blobs back to back, then the sealed header and its u32 LE length.

use crate::crypto::{Key, OVERHEAD};
use crate::id::Id;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

impl std::fmt::Display for BlobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        })
    }
}

/// One blob as described by a pack header (and, identically, by the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub blob_type: BlobType,
    pub id: Id,
    pub offset: u32,
    /// Stored length (IV + payload + MAC).
    pub length: u32,
    /// Plaintext length if compressed, 0 if not.
    pub uncompressed_length: u32,
}

impl PackedBlob {
    pub fn entry_size(&self) -> u64 {
        if self.uncompressed_length != 0 {
            41
        } else {
            37
        }
    }
}

pub const MAX_HEADER: u64 = 16 * 1024 * 1024;
/// Size of the header encryption overhead plus the length field.
pub const TRAILER_OVERHEAD: u64 = OVERHEAD as u64 + 4;

/// Pack size implied by its blobs (what `check` compares with the real size).
pub fn expected_size<'a>(blobs: impl IntoIterator<Item = &'a PackedBlob>) -> u64 {
    TRAILER_OVERHEAD
        + blobs
            .into_iter()
            .map(|b| b.length as u64 + b.entry_size())
            .sum::<u64>()
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack too small ({0} bytes)")]
    TooSmall(u64),
    #[error("invalid header length {0}")]
    HeaderLength(u64),
    #[error("header: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("header entry {0} truncated or of unknown type {1:#04x}")]
    Entry(usize, u8),
    #[error("compressed blob in a version-1 repository")]
    CompressedInV1,
}

pub fn header_plaintext(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut h = Vec::with_capacity(blobs.len() * 41);
    for b in blobs {
        let compressed = b.uncompressed_length != 0;
        let t = match (b.blob_type, compressed) {
            (BlobType::Data, false) => 0u8,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        h.push(t);
        h.extend_from_slice(&b.length.to_le_bytes());
        if compressed {
            h.extend_from_slice(&b.uncompressed_length.to_le_bytes());
        }
        h.extend_from_slice(&b.id.0);
    }
    h
}

/// Parse a decrypted header; offsets follow from the order of entries.
pub fn parse_header(plain: &[u8], version: u32) -> Result<Vec<PackedBlob>, PackError> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut offset: u64 = 0;
    while i < plain.len() {
        let t = plain[i];
        let (blob_type, compressed) = match t {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            _ => return Err(PackError::Entry(out.len(), t)),
        };
        if compressed && version < 2 {
            return Err(PackError::CompressedInV1);
        }
        let size = if compressed { 41 } else { 37 };
        let e = plain
            .get(i..i + size)
            .ok_or(PackError::Entry(out.len(), t))?;
        let length = u32::from_le_bytes(e[1..5].try_into().expect("4 bytes"));
        let (uncompressed_length, idb) = if compressed {
            (
                u32::from_le_bytes(e[5..9].try_into().expect("4 bytes")),
                &e[9..41],
            )
        } else {
            (0, &e[5..37])
        };
        out.push(PackedBlob {
            blob_type,
            id: Id(idb.try_into().expect("32 bytes")),
            offset: offset as u32,
            length,
            uncompressed_length,
        });
        offset += length as u64;
        i += size;
    }
    Ok(out)
}

/// Where the sealed header sits, from the file size and the trailing length field.
pub fn header_range(file_size: u64, trailer: [u8; 4]) -> Result<(u64, u64), PackError> {
    if file_size < 73 {
        return Err(PackError::TooSmall(file_size));
    }
    let hlen = u32::from_le_bytes(trailer) as u64;
    if hlen < OVERHEAD as u64 + 37 || hlen > file_size - 4 || hlen > MAX_HEADER {
        return Err(PackError::HeaderLength(hlen));
    }
    Ok((file_size - 4 - hlen, hlen))
}

/// Decode the header of a complete pack held in memory.
pub fn read_header(key: &Key, pack: &[u8], version: u32) -> Result<Vec<PackedBlob>, PackError> {
    let n = pack.len() as u64;
    let trailer: [u8; 4] = if pack.len() >= 4 {
        pack[pack.len() - 4..].try_into().expect("4 bytes")
    } else {
        return Err(PackError::TooSmall(n));
    };
    let (off, len) = header_range(n, trailer)?;
    let plain = key.open(&pack[off as usize..(off + len) as usize])?;
    parse_header(&plain, version)
}

/// Append the sealed header and its length to the blobs already in `pack`.
pub fn finish(key: &Key, pack: &mut Vec<u8>, blobs: &[PackedBlob]) {
    let sealed = key.seal(&header_plaintext(blobs));
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixture_tree_pack_kat() {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/restic-fixtures/vectors/repo-v2/kat-tree-pack.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let plain = hex::decode(v["decrypted_header_hex"].as_str().unwrap()).unwrap();
        let blobs = parse_header(&plain, 2).unwrap();
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(blobs.len(), entries.len());
        for (b, e) in blobs.iter().zip(entries) {
            assert_eq!(b.id.to_hex(), e["id"].as_str().unwrap());
            assert_eq!(b.offset as u64, e["offset"].as_u64().unwrap());
            assert_eq!(b.length as u64, e["length"].as_u64().unwrap());
        }
        assert_eq!(header_plaintext(&blobs), plain);
        let pack = hex::decode(v["pack_file_hex"].as_str().unwrap()).unwrap();
        assert_eq!(expected_size(&blobs), pack.len() as u64);
        assert!(parse_header(&plain, 1).is_err());
    }

    #[test]
    fn write_then_read() {
        let key = Key::random();
        let mut pack = Vec::new();
        let mut blobs = Vec::new();
        for (i, data) in [b"hello".as_slice(), b"world!"].iter().enumerate() {
            let sealed = key.seal(data);
            blobs.push(PackedBlob {
                blob_type: BlobType::Data,
                id: Id::hash(data),
                offset: pack.len() as u32,
                length: sealed.len() as u32,
                uncompressed_length: i as u32 * 6,
            });
            pack.extend_from_slice(&sealed);
        }
        finish(&key, &mut pack, &blobs);
        assert_eq!(read_header(&key, &pack, 2).unwrap(), blobs);
        assert_eq!(expected_size(&blobs), pack.len() as u64);
        assert!(read_header(&key, &pack[..pack.len() - 1], 2).is_err());
        assert!(read_header(&key, &pack[..10], 2).is_err());
    }
}
