//! Prune on a repository that hosts can write to (append-only for them, but they hold the
//! key): forged index entries must not make the trusted prune delete the only good copy, and
//! packs a backup is still writing must survive a prune that runs because the backup's lock
//! looked stale. Checked with the real restic 0.19.1 (`check --read-data`, `restore`).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{noise, restic_bin};
use fleetsnap::backend::{Backend, FileType, LocalBackend};
use fleetsnap::format::pack::{self, BlobType, PackedBlob};
use fleetsnap::id::Id;
use fleetsnap::repo::Repository;

const PW: &str = "hostile-pw";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout and stderr of a command that may fail (the caller asserts).
fn try_run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn fleetsnap(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsnap"));
    c.arg("-r").arg(repo).env("RESTIC_PASSWORD", PW);
    c
}

fn restic(repo: &Path) -> Command {
    let mut c = Command::new(restic_bin());
    c.arg("-r")
        .arg(repo)
        .env("RESTIC_PASSWORD", PW)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"));
    c
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = fs::read_dir(repo.join("data")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = dirs
        .filter_map(|d| fs::read_dir(d.ok()?.path()).ok())
        .flatten()
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_str().is_some_and(|n| n.len() == 64))
        .map(|f| f.path())
        .collect();
    v.sort();
    v
}

fn set_age(path: &Path, age: Duration) {
    let t = filetime::FileTime::from_system_time(SystemTime::now() - age);
    filetime::set_file_mtime(path, t).unwrap();
}

fn restic_check_read_data(repo: &Path) -> (bool, String) {
    try_run(restic(repo).args(["check", "--read-data"]))
}

/// Every file under `a` has the same bytes at the same relative path under `b`.
fn same_files(a: &Path, b: &Path) -> Result<(), String> {
    for e in fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let (pa, pb) = (e.path(), b.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            same_files(&pa, &pb)?;
        } else {
            let got = fs::read(&pb).map_err(|err| format!("{}: {err}", pb.display()))?;
            if got != fs::read(&pa).unwrap() {
                return Err(format!("{} differs after restore", pb.display()));
            }
        }
    }
    Ok(())
}

/// A host holding the key writes a pack of garbage sealed under the IDs and lengths of real
/// blobs, with a lower pack ID than the genuine pack and an older storage time, plus an index
/// for it. The trusted prune must keep a copy that really holds the data.
#[test]
fn prune_keeps_a_genuine_copy_over_a_forged_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        fs::write(src.join(format!("f{i}")), noise(1_500_000, 40 + i)).unwrap();
    }
    let repo = tmp.path().join("repo");
    run(fleetsnap(&repo).arg("init"));
    run(fleetsnap(&repo).arg("backup").arg(&src));

    // The host's side: it has the key, so it can seal whatever it likes.
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(repo.clone()));
    let r = Repository::open(be.clone(), PW.as_bytes())
        .unwrap()
        .load_index()
        .unwrap();
    let (genuine, real): (Id, Vec<PackedBlob>) = r
        .index()
        .packs()
        .into_iter()
        .find(|(_, b)| b.iter().all(|b| b.blob_type == BlobType::Data))
        .expect("a data pack");
    let mut tries = 0;
    let (forged, forged_blobs) = loop {
        tries += 1;
        assert!(tries < 200, "no forged pack ID below the genuine one");
        let mut data = Vec::new();
        let mut blobs = Vec::new();
        for b in &real {
            // Garbage that decrypts (it is sealed with the real key) but is not the blob.
            let junk: Vec<u8> = (0..b.length as usize - 32)
                .map(|_| rand::random::<u8>())
                .collect();
            let sealed = r.key().seal(&junk);
            assert_eq!(sealed.len(), b.length as usize);
            blobs.push(PackedBlob {
                offset: data.len() as u32,
                ..*b
            });
            data.extend_from_slice(&sealed);
        }
        pack::finish(r.key(), &mut data, &blobs);
        assert_eq!(data.len() as u64, pack::expected_size(&blobs));
        let id = Id::hash(&data);
        if id < genuine {
            be.write(FileType::Pack, &id.to_hex(), &data).unwrap();
            break (id, blobs);
        }
    };
    fleetsnap::backup::write_index(&r, &[(forged, forged_blobs)]).unwrap();
    // Both copies are old; the forgery claims to be the older one (a host that can set
    // times on its storage, e.g. a local or NFS repository).
    for p in packs(&repo) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let age = if name == forged.to_hex() { 72 } else { 48 };
        set_age(&p, Duration::from_secs(age * 3600));
    }
    let genuine_path = repo
        .join("data")
        .join(&genuine.to_hex()[..2])
        .join(genuine.to_hex());

    let (ok, out) = try_run(fleetsnap(&repo).args(["prune", "--max-unused", "0%"]));
    println!("fleetsnap prune: {out}");
    assert!(ok, "prune failed: {out}");
    assert!(
        genuine_path.exists(),
        "prune deleted the genuine pack {} and kept the forgery {}",
        genuine.short(),
        forged.short()
    );

    let (ok, out) = restic_check_read_data(&repo);
    assert!(ok && out.contains("no errors were found"), "{out}");
    let target = tmp.path().join("restored");
    run(restic(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    same_files(&src, &target.join(src.strip_prefix("/").unwrap())).unwrap();
}

/// A backup whose lock looks stale (its clock is 45 minutes behind) is still writing packs
/// when `restic unlock` removes its lock and a prune runs. The prune must leave the young,
/// still unreferenced packs alone; the backup then finishes and the repository checks clean.
#[test]
fn young_unreferenced_packs_survive_prune() {
    let faketime = Path::new("/usr/bin/faketime");
    assert!(
        faketime.exists(),
        "missing component: faketime (apt-get install faketime; tests/testenv/deps.sh)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    run(fleetsnap(&repo).arg("init"));
    let blob = tmp.path().join("blob");
    fs::write(&blob, noise(40_000_000, 9)).unwrap();
    let gate = tmp.path().join("gate");
    let script = format!(
        "cat {}; while [ ! -e {} ]; do sleep 0.05; done",
        blob.display(),
        gate.display()
    );
    let started = Instant::now();
    let mut child = Command::new(faketime)
        .args(["-f", "-45m"])
        .arg(env!("CARGO_BIN_EXE_fleetsnap"))
        .arg("-r")
        .arg(&repo)
        .args([
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "db.dump",
        ])
        .args(["--", "sh", "-c", &script])
        .env("RESTIC_PASSWORD", PW)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until the backup has stored packs (and is blocked on its source).
    let deadline = Instant::now() + Duration::from_secs(300);
    while packs(&repo).len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended early: {:?}",
            child.wait_with_output()
        );
        assert!(Instant::now() < deadline, "no packs after 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let written = packs(&repo);
    println!(
        "backup stored {} packs after {:?}",
        written.len(),
        started.elapsed()
    );

    // restic judges the lock by the time inside it: 45 minutes old, so stale.
    let out = run(restic(&repo).arg("unlock"));
    println!("restic unlock: {out}");
    assert_eq!(
        fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "restic unlock left the backup's lock: {out}"
    );

    let (ok, out) = try_run(fleetsnap(&repo).args(["prune", "--max-unused", "0%"]));
    println!("fleetsnap prune: {out}");
    assert!(ok, "{out}");
    let missing: Vec<_> = written.iter().filter(|p| !p.exists()).collect();

    fs::File::create(&gate).unwrap().flush().unwrap();
    let out = child.wait_with_output().unwrap();
    println!(
        "backup: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        missing.is_empty(),
        "prune deleted {} of the backup's {} young packs",
        missing.len(),
        written.len()
    );
    assert!(out.status.success(), "backup failed");
    let (ok, out) = restic_check_read_data(&repo);
    assert!(ok && out.contains("no errors were found"), "{out}");
    println!("test took {:?}", started.elapsed());
}
