//! Bounded input: repository files a host can write (locks, snapshots, indexes, keys,
//! config) are size-checked before they are read and decompressed under a cap, so a planted
//! zstd bomb or a huge file fails with an error naming the file instead of exhausting the
//! reader's memory (the operator reads every lock and snapshot of every host repository).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use fleetsnap::backend::{Backend, FileType, LocalBackend};
use fleetsnap::id::Id;
use fleetsnap::repo::Repository;

/// `[2]` + zstd of `plain_len` zero bytes, streamed (no buffer of `plain_len` bytes here):
/// the v2 framing of an unpacked file whose plaintext is `plain_len` bytes.
fn zstd_bomb(plain_len: u64) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(vec![2u8], 3).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = plain_len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    enc.finish().unwrap()
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

fn repo(dir: &std::path::Path) -> (Arc<LocalBackend>, Repository) {
    let be = Arc::new(LocalBackend::new(dir.join("repo")));
    let r = Repository::init(be.clone(), b"pw").unwrap();
    (be, r)
}

/// Seals `framed` with the repository key and stores it under its hash, as a host with the
/// repository password can.
fn plant(be: &LocalBackend, r: &Repository, t: FileType, framed: &[u8]) -> String {
    let sealed = r.key().seal(framed);
    let name = Id::hash(&sealed).to_hex();
    be.write(t, &name, &sealed).unwrap();
    name
}

const GIB: u64 = 1 << 30;

#[test]
fn bomb_lock_fails_acquire_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (be, r) = repo(d.path());
    let name = plant(&be, &r, FileType::Lock, &zstd_bomb(GIB));
    let t = Instant::now();
    let res = fleetsnap::lock::acquire(&r, true);
    eprintln!(
        "acquire with a 1 GiB lock bomb: {:?}, peak RSS {} MiB",
        t.elapsed(),
        peak_rss_mib()
    );
    let e = res
        .err()
        .expect("a lock bomb must not be ignored")
        .to_string();
    assert!(e.contains(&name[..8]), "{e}");
    assert!(e.contains("larger than"), "{e}");
    // Nothing of ours was left behind.
    assert_eq!(r.list(FileType::Lock).unwrap().len(), 1);
}

#[test]
fn huge_raw_lock_file_fails_acquire_without_reading_it() {
    let d = tempfile::tempdir().unwrap();
    let (be, r) = repo(d.path());
    // A sparse 3 GiB "lock": reading it whole would hold 3 GiB.
    let name = "ab".repeat(32);
    let path = be.root().join("locks").join(&name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(3 * GIB)
        .unwrap();
    let t = Instant::now();
    let res = fleetsnap::lock::acquire(&r, false);
    eprintln!(
        "acquire with a 3 GiB lock file: {:?}, peak RSS {} MiB",
        t.elapsed(),
        peak_rss_mib()
    );
    let e = res
        .err()
        .expect("a 3 GiB lock must not be ignored")
        .to_string();
    assert!(e.contains(&name[..8]), "{e}");
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn bomb_snapshot_fails_snapshots_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (be, r) = repo(d.path());
    let name = plant(&be, &r, FileType::Snapshot, &zstd_bomb(GIB));
    let t = Instant::now();
    let res = r.snapshots();
    eprintln!(
        "snapshots() with a 1 GiB snapshot bomb: {:?}, peak RSS {} MiB",
        t.elapsed(),
        peak_rss_mib()
    );
    let e = res.expect_err("a snapshot bomb is an error").to_string();
    assert!(e.contains(&name[..8]), "{e}");
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn bomb_index_fails_load_index_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (be, r) = repo(d.path());
    let name = plant(&be, &r, FileType::Index, &zstd_bomb(GIB));
    let t = Instant::now();
    let res = r.load_index();
    eprintln!(
        "load_index() with a 1 GiB index bomb: {:?}, peak RSS {} MiB",
        t.elapsed(),
        peak_rss_mib()
    );
    let e = res.err().expect("an index bomb is an error").to_string();
    assert!(e.contains(&name[..8]), "{e}");
    assert!(e.contains("larger than"), "{e}");
}
