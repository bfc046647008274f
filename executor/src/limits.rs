//! Size limits for everything the engine reads from a repository.
//!
//! Every file in a repository can be written by any host that holds the repository
//! password, and the operator reads the locks, snapshots and indexes of every host's
//! repository during operator-side maintenance. A compromised host must not be able to make
//! a reader hold more than a bounded amount of memory, so each file type has a cap on what is
//! read from storage (the stored size) and on what it may decompress to (the plaintext), and
//! each blob type a cap that index entries are checked against before any blob is read.
//!
//! The caps are far above what restic or fleetsnap write (the reasons are next to each), so
//! a legitimate repository never meets them; a file that exceeds one is reported as
//! [`crate::repo::RepoError::TooLarge`], naming the file. `docs/executor.md` lists them.

use crate::backend::FileType;
use crate::format::pack::BlobType;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// A lock file: `{"time","exclusive","hostname","username","pid","uid","gid"}`, about 200
/// bytes (a host name is at most 255 bytes).
pub const MAX_LOCK: u64 = 64 * KIB;

/// A key file (not encrypted, not compressed): scrypt parameters, salt and the sealed master
/// key, about 450 bytes.
pub const MAX_KEY: u64 = 64 * KIB;

/// The `config` file: version, ID and chunker polynomial, about 150 bytes.
pub const MAX_CONFIG: u64 = 64 * KIB;

/// A snapshot: mostly its `paths`, `tags` and `excludes` lists, under 10 KiB for a typical
/// backup; 16 MiB still holds ~100 000 backed-up paths of 150 bytes.
pub const MAX_SNAPSHOT: u64 = 16 * MIB;

/// An index file. restic starts a new index file at 50 000 blobs (150 000 in compressed
/// repositories, `indexMaxBlobsCompressed`), fleetsnap at 50 000; an entry is ~110 bytes of
/// JSON, so the largest index restic writes is ~17 MiB. 64 MiB leaves room for ~4x that.
pub const MAX_INDEX: u64 = 64 * MIB;

/// A data blob: restic's and fleetsnap's chunker cut at 8 MiB at most; twice that.
pub const MAX_DATA_BLOB: u64 = 16 * MIB;

/// A tree blob: one directory, ~300 bytes of JSON per entry plus 67 bytes per content blob
/// of each file, so 128 MiB holds ~400 000 entries, or files of ~2 TiB in one directory
/// at restic's 1 MiB average chunk. A prune walks trees one at a time, so this bounds its
/// peak too.
pub const MAX_TREE_BLOB: u64 = 128 * MIB;

/// zstd frames may ask the decoder for a window of up to 2^this bytes; the decoder allocates
/// it up front, so it is part of the memory bound. restic (klauspost/compress) writes 8 MiB
/// windows, fleetsnap (zstd level 3) 2 MiB; 32 MiB is 4x restic.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// The most an unpacked file of type `t` may decompress to (for `Pack`: unlimited, packs are
/// only ever read by range, blob by blob).
pub fn max_plain(t: FileType) -> u64 {
    match t {
        FileType::Config => MAX_CONFIG,
        FileType::Key => MAX_KEY,
        FileType::Snapshot => MAX_SNAPSHOT,
        FileType::Index => MAX_INDEX,
        FileType::Lock => MAX_LOCK,
        FileType::Pack => u64::MAX,
    }
}

/// The most a file of type `t` may occupy in storage: its plaintext cap, plus zstd's
/// worst-case expansion of incompressible input (under 1/128) and the encryption overhead
/// (IV + MAC) and framing byte. Key files are stored as plain JSON.
pub fn max_stored(t: FileType) -> u64 {
    match t {
        FileType::Key => MAX_KEY,
        FileType::Pack => u64::MAX,
        _ => stored_bound(max_plain(t)),
    }
}

/// [`max_stored`] for a plaintext cap.
pub const fn stored_bound(plain: u64) -> u64 {
    plain + plain / 128 + 4 * KIB
}

/// The most one blob of type `t` may decompress to.
pub fn max_blob_plain(t: BlobType) -> u64 {
    match t {
        BlobType::Data => MAX_DATA_BLOB,
        BlobType::Tree => MAX_TREE_BLOB,
    }
}

/// The most one stored (sealed, maybe compressed) blob of type `t` may occupy in its pack.
pub fn max_blob_stored(t: BlobType) -> u64 {
    stored_bound(max_blob_plain(t))
}

/// `64 KiB`, `16 MiB`, `3 GiB`, or bytes: for messages.
pub fn human(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_ordered_and_readable() {
        assert_eq!(human(MAX_LOCK), "64 KiB");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(7), "7 bytes");
        for t in [
            FileType::Config,
            FileType::Lock,
            FileType::Snapshot,
            FileType::Index,
        ] {
            assert!(max_stored(t) > max_plain(t));
        }
        assert!(max_blob_stored(BlobType::Tree) < u32::MAX as u64);
    }
}
