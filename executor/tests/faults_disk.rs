//! Full disks (issue 17, review finding G-Q): a full local-backend target, a full temporary
//! directory (where packs are assembled for S3 and REST), and a full run-record directory.
//! Each is a real size-limited tmpfs, mounted by the test (root only), filled by the
//! executor itself or by a filler file.
//!
//! Every test asserts: a clear error naming the full path; no half-written file (no
//! temporary names left, restic 0.19.1 `check --read-data` passes); the next run succeeds
//! once there is space again.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{MINIO_PASSWORD, MINIO_USER, Minio, pattern, restic_bin};

const PASSWORD: &str = "diskfaults-pw";

/// A size-limited tmpfs at a fresh directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the full-disk tests mount size-limited tmpfs file systems and need root \
             (tests/run.sh runs as root)"
        );
        fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path }
    }

    /// Give the file system a new size limit (the content stays).
    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fill what is left with one file, which `free` removes again.
    fn fill(&self) {
        use std::io::Write;
        let mut f = fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
    }

    fn free(&self) {
        fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn source(root: &Path, files: usize, size: usize, seed: u64) -> PathBuf {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        fs::write(
            root.join(format!("f{i:02}")),
            pattern(size, seed + i as u64),
        )
        .unwrap();
    }
    root.to_path_buf()
}

fn env(c: &mut Command, home: &Path) {
    c.env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", MINIO_PASSWORD)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", home)
        .env("RESTIC_CACHE_DIR", home.join("restic-cache"))
        .env("FLEETSNAP_LOG", "warn")
        .stdin(Stdio::null());
}

fn fleetsnap(repo: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsnap"));
    env(&mut c, home);
    c.env("RESTIC_REPOSITORY", repo);
    c
}

fn restic(repo: &str, home: &Path) -> Command {
    let mut c = Command::new(restic_bin());
    env(&mut c, home);
    c.env("RESTIC_REPOSITORY", repo);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(c: &mut Command, what: &str) -> Output {
    let o = c.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert!(o.status.success(), "{what} failed: {}", text(&o));
    o
}

/// A failure within `bound` whose error says the disk is full and names `path`.
fn fails_full(c: &mut Command, what: &str, path: &Path, bound: Duration) -> Output {
    let t0 = Instant::now();
    let o = c.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let took = t0.elapsed();
    eprintln!(
        "FAULT {what}: {} in {:.1}s: {}",
        o.status,
        took.as_secs_f64(),
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("space"))
            .unwrap_or("(no line mentions space)")
    );
    assert!(
        !o.status.success(),
        "{what}: expected a failure: {}",
        text(&o)
    );
    assert!(took < bound, "{what}: took {took:?}, bound {bound:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.to_ascii_lowercase().contains("no space left"),
        "{what}: the error does not say the disk is full: {}",
        text(&o)
    );
    assert!(
        err.contains(path.to_str().unwrap()),
        "{what}: the error does not name the full path {}: {}",
        path.display(),
        text(&o)
    );
    o
}

/// Files anywhere below `root` whose names are temporary (`-tmp-`, `.tmp`).
fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("-tmp-") || n.ends_with(".tmp"))
            {
                out.push(p);
            }
        }
    }
    out
}

fn restic_checks(repo: &str, home: &Path) {
    let o = ok(
        restic(repo, home).args(["check", "--read-data"]),
        "restic check --read-data",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no errors were found"),
        "{}",
        text(&o)
    );
}

/// The repository's own file system fills up in the middle of a backup.
#[test]
fn full_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let disk = Tmpfs::mount(tmp.path().join("disk"), "6m");
    let repo = disk.path.join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = source(&tmp.path().join("src"), 3, 4 << 20, 11);
    ok(fleetsnap(&repo_s, &home).arg("init"), "init");

    fails_full(
        fleetsnap(&repo_s, &home).arg("backup").arg(&src),
        "backup into a full local repository",
        &repo,
        Duration::from_secs(60),
    );
    let left = temporaries(&repo);
    assert!(left.is_empty(), "half-written files left: {left:?}");

    // restic's check takes a lock, which needs a little space.
    disk.resize("64m");
    restic_checks(&repo_s, &home);
    ok(
        fleetsnap(&repo_s, &home).arg("backup").arg(&src),
        "backup once there is space",
    );
    restic_checks(&repo_s, &home);
    assert!(temporaries(&repo).is_empty());
}

/// The temporary directory, where packs for S3 (and REST) are assembled, is full.
#[test]
fn full_temporary_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let minio = Minio::start();
    minio.admin().create_bucket("disk");
    let repo = format!("s3:{}/disk/repo", minio.endpoint);
    ok(restic(&repo, &home).arg("init"), "restic init");
    let scratch = Tmpfs::mount(tmp.path().join("scratch"), "2m");
    let src = source(&tmp.path().join("src"), 2, 4 << 20, 21);

    fails_full(
        fleetsnap(&repo, &home)
            .env("TMPDIR", &scratch.path)
            .arg("backup")
            .arg(&src),
        "backup with a full temporary directory",
        &scratch.path,
        Duration::from_secs(60),
    );
    // Unlinked temporary files vanish with the process: nothing may be left.
    let left: Vec<_> = fs::read_dir(&scratch.path).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the temporary directory: {left:?}");
    restic_checks(&repo, &home);

    scratch.resize("64m");
    ok(
        fleetsnap(&repo, &home)
            .env("TMPDIR", &scratch.path)
            .arg("backup")
            .arg(&src),
        "backup once there is space",
    );
    restic_checks(&repo, &home);
    let incomplete = minio.admin().incomplete_uploads("disk");
    assert!(incomplete.is_empty(), "incomplete uploads: {incomplete:?}");
}

/// The run-record directory (the operator's only view of a run) is full. The backup
/// itself succeeds, but a run nobody can see must not count as a success, and no partial
/// record may be left for the operator to trip over.
#[test]
fn full_run_record_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s);
    let src = source(&p("src"), 1, 1 << 20, 31);
    fs::create_dir_all(p("creds")).unwrap();
    fs::write(p("creds/repository-password"), PASSWORD).unwrap();
    let records = Tmpfs::mount(p("runs"), "1m");
    let record_dir = records.path.join("backup-nightly");
    fs::create_dir_all(&record_dir).unwrap();
    records.fill();
    let cfg = serde_json::json!({
        "format": 1, "policy": "nightly", "kind": "backup",
        "repository": p("repo").to_str().unwrap(),
        "paths": [src.to_str().unwrap()],
        "excludes": [], "exclude_caches": false, "one_file_system": false,
        "stdin": [], "tags": ["nightly"], "host": "web-1", "extra_args": [],
        "credentials": {"repository_password": "repository-password"},
        "run_record_dir": record_dir.to_str().unwrap(),
        "cache_dir": p("cache").to_str().unwrap(),
    });
    let cfg_path = p("backup.json");
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let run = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsnap"));
        c.arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .env("CREDENTIALS_DIRECTORY", p("creds"))
            .env("HOME", p("home"))
            .env_remove("RESTIC_PASSWORD")
            .env_remove("RESTIC_REPOSITORY")
            .stdin(Stdio::null());
        c
    };
    fails_full(
        &mut run(),
        "run with a full run-record directory",
        &record_dir,
        Duration::from_secs(60),
    );
    let left = temporaries(&records.path);
    assert!(left.is_empty(), "partial run records left: {left:?}");

    records.free();
    ok(&mut run(), "run once there is space");
    let written: Vec<_> = fs::read_dir(&record_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.iter().any(|n| n.ends_with(".json")),
        "no record written: {written:?}"
    );
    assert!(temporaries(&records.path).is_empty());
    let repo = p("repo");
    restic_checks(repo.to_str().unwrap(), &p("home"));
}

/// MinIO's own disk fills up (HTTP 507 `XMinioStorageFull`, or a 5xx the SDK retries): the
/// backup fails saying the storage is full, nothing half-stored is referenced, and the
/// next run succeeds once MinIO has space again.
#[test]
fn full_minio_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let disk = Tmpfs::mount(tmp.path().join("minio-data"), "48m");
    let minio = Minio::start_with_data(Some(&disk.path));
    minio.admin().create_bucket("full");
    let repo = format!("s3:{}/full/repo", minio.endpoint);
    ok(restic(&repo, &home).arg("init"), "restic init");
    let src = source(&tmp.path().join("src"), 4, 16 << 20, 41);

    let t0 = Instant::now();
    let o = fleetsnap(&repo, &home)
        .env("FLEETSNAP_S3_TIMEOUT", "10")
        .env("FLEETSNAP_S3_MAX_ATTEMPTS", "3")
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    eprintln!(
        "FAULT backup into a full MinIO: {} in {:.1}s: {}",
        o.status,
        took.as_secs_f64(),
        err.lines().last().unwrap_or("")
    );
    assert!(!o.status.success(), "expected a failure: {}", text(&o));
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let lower = err.to_ascii_lowercase();
    assert!(
        ["storage", "space", "full", "quota"]
            .iter()
            .any(|w| lower.contains(w)),
        "the error does not say the storage is full: {}",
        text(&o)
    );

    disk.resize("256m");
    restic_checks(&repo, &home);
    ok(
        fleetsnap(&repo, &home).arg("backup").arg(&src),
        "backup once MinIO has space",
    );
    restic_checks(&repo, &home);
    let incomplete = minio.admin().incomplete_uploads("full");
    assert!(incomplete.is_empty(), "incomplete uploads: {incomplete:?}");
}
