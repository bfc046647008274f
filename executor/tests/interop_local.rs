//! Interop with the real restic: fleetsnap writes, restic (newest and 0.14) checks and
//! restores; restic writes, fleetsnap restores. Missing binaries fail the test loudly.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn restic_bins() -> Vec<(String, PathBuf)> {
    let newest = std::env::var("FLEETSNAP_RESTIC")
        .unwrap_or_else(|_| "/var/cache/fleetsnap/tools/restic-v0.19.1/restic".into());
    let old = std::env::var("FLEETSNAP_RESTIC_014").unwrap_or_else(|_| "/usr/bin/restic".into());
    let mut out = Vec::new();
    for (name, p) in [
        ("restic newest (FLEETSNAP_RESTIC)", newest),
        ("restic 0.14 (FLEETSNAP_RESTIC_014)", old),
    ] {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "missing component: {name} not found at {}",
            p.display()
        );
        out.push((name.to_string(), p));
    }
    out
}

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

fn fleetsnap(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsnap"));
    c.arg("-r").arg(repo).env("RESTIC_PASSWORD", "interop-pw");
    c
}

fn restic(bin: &Path, repo: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("-r")
        .arg(repo)
        .env("RESTIC_PASSWORD", "interop-pw")
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"));
    c
}

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    fs::write(root.join("a/text.txt"), "hello ".repeat(100_000)).unwrap();
    fs::write(root.join("a/b/empty"), b"").unwrap();
    fs::write(root.join("exec.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::ffi::OsStrExt;
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9 \"q\"\n.txt")),
        b"latin1",
    )
    .unwrap();
    std::os::unix::fs::symlink("big.bin", root.join("link")).unwrap();
    fs::hard_link(root.join("a/text.txt"), root.join("a/hard.txt")).unwrap();
    let _ = xattr::set(root.join("a/text.txt"), "user.k", b"v\x00\xff");
}

/// Compare two trees: types, contents, permission bits, mtimes, link targets.
fn compare(a: &Path, b: &Path) {
    let mut n = 0;
    for e in walk(a) {
        let rel = e.strip_prefix(a).unwrap();
        let other = b.join(rel);
        let ma = fs::symlink_metadata(&e).unwrap();
        let mb =
            fs::symlink_metadata(&other).unwrap_or_else(|err| panic!("{}: {err}", other.display()));
        assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
        if ma.is_file() {
            assert_eq!(
                fs::read(&e).unwrap(),
                fs::read(&other).unwrap(),
                "{}",
                rel.display()
            );
            assert_eq!(ma.nlink(), mb.nlink(), "nlink {}", rel.display());
        }
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&e).unwrap(), fs::read_link(&other).unwrap());
        } else {
            assert_eq!(ma.mode(), mb.mode(), "mode {}", rel.display());
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "mtime {}",
                rel.display()
            );
        }
        n += 1;
    }
    assert!(n >= 8, "only {n} entries compared");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        out.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

#[test]
fn fleetsnap_writes_restic_reads_and_back() {
    let bins = restic_bins();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let repo = tmp.path().join("repo");
    run(fleetsnap(&repo).arg("init"));
    run(fleetsnap(&repo).arg("init")); // idempotent
    run(fleetsnap(&repo).args(["backup", "--tag", "t1"]).arg(&src));
    fs::write(src.join("a/new.txt"), b"second run").unwrap();
    let out = run(fleetsnap(&repo).args(["--json", "backup"]).arg(&src));
    assert!(out.contains("\"files_unmodified\""), "{out}");
    run(fleetsnap(&repo).args(["check", "--read-data"]));
    for (name, bin) in &bins {
        let out = run(restic(bin, &repo).args(["check", "--read-data"]));
        assert!(out.contains("no errors were found"), "{name}: {out}");
        let target = tmp
            .path()
            .join(format!("restore-{}", bin.to_string_lossy().len()));
        run(restic(bin, &repo)
            .args(["restore", "latest", "--target"])
            .arg(&target));
        compare(&src, &target.join(src.strip_prefix("/").unwrap()));
    }
    // restic writes a repository; fleetsnap restores it.
    let (_, newest) = &bins[0];
    let rrepo = tmp.path().join("restic-repo");
    run(restic(newest, &rrepo).arg("init"));
    run(restic(newest, &rrepo).arg("backup").arg(&src));
    let target = tmp.path().join("fs-restore");
    let out = run(fleetsnap(&rrepo)
        .args(["--json", "restore", "latest", "--verify", "--target"])
        .arg(&target));
    compare(&src, &target.join(src.strip_prefix("/").unwrap()));
    // The JSON summary names the snapshot `latest` resolved to (the Restore status shows it).
    let listed = run(restic(newest, &rrepo).args(["snapshots", "--json", "latest"]));
    let id = serde_json::from_str::<serde_json::Value>(&listed).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(summary["snapshot_id"], id.as_str(), "{out}");
    run(fleetsnap(&rrepo).args(["check", "--read-data"]));
    // A fleetsnap backup into the restic repository is still clean for restic.
    run(fleetsnap(&rrepo).arg("backup").arg(&src));
    run(restic(newest, &rrepo).args(["check", "--read-data"]));
}

#[test]
fn exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("none");
    let st = fleetsnap(&repo).arg("snapshots").status().unwrap();
    assert_eq!(st.code(), Some(10));
    run(fleetsnap(&repo).arg("init"));
    let st = fleetsnap(&repo)
        .env("RESTIC_PASSWORD", "wrong")
        .arg("snapshots")
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(12));
    let st = fleetsnap(&repo)
        .args([
            "backup",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
    let out = run(fleetsnap(&repo).args(["--json", "snapshots"]));
    assert_eq!(out.trim(), "[]");
    run(fleetsnap(&repo).args([
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "echo dump",
    ]));
    let out = run(fleetsnap(&repo).args(["dump", "latest", "/sh"]));
    assert_eq!(out, "dump\n");
}

/// A host keeps files and a database dump in one repository: `restore latest --include X`
/// takes the newest snapshot that holds X, not the newest overall (which would restore
/// nothing and still succeed).
#[test]
fn latest_with_includes_picks_the_newest_snapshot_holding_them() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    let dumps = tmp.path().join("dumps");
    fs::create_dir_all(&files).unwrap();
    fs::create_dir_all(&dumps).unwrap();
    fs::write(files.join("f.txt"), b"files").unwrap();
    fs::write(dumps.join("d.sql"), b"dump").unwrap();
    let repo = tmp.path().join("repo");
    run(fleetsnap(&repo).arg("init"));
    run(fleetsnap(&repo).arg("backup").arg(&files));
    run(fleetsnap(&repo).arg("backup").arg(&dumps));
    let target = tmp.path().join("restored");
    let out = run(fleetsnap(&repo)
        .args(["--json", "restore", "latest", "--include"])
        .arg(&files)
        .arg("--target")
        .arg(&target));
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(summary["files"], 1, "{out}");
    let restored = target.join(files.strip_prefix("/").unwrap()).join("f.txt");
    assert_eq!(fs::read(&restored).unwrap(), b"files");
    // Nothing holds the path: a clear error, not an empty success.
    let missing = fleetsnap(&repo)
        .args(["restore", "latest", "--include", "/nowhere", "--target"])
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("no snapshot holds any of the include paths"),
        "{err}"
    );
}

/// The paths inside a snapshot, as `restic ls --json` lists them.
fn listed_paths(bin: &Path, repo: &Path, snapshot: &str) -> Vec<String> {
    let out = run(restic(bin, repo).args(["ls", "--json", snapshot]));
    let mut paths: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["struct_type"] == "node")
        .filter_map(|v| v["path"].as_str().map(String::from))
        .collect();
    paths.sort();
    paths
}

/// Relative targets are stored relative to the snapshot root, as restic stores them:
/// `backup .` puts the current directory's entries at the root, `backup src` keeps `/src`,
/// `backup ../x` drops the `..`; an absolute target keeps its whole path. Both tools back up
/// the same targets from the same directory, and `restic ls` must list the same paths.
#[test]
fn relative_targets_are_placed_as_restic_places_them() {
    let (_, bin) = restic_bins().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    fs::create_dir_all(work.join("src/sub")).unwrap();
    fs::create_dir_all(work.join("other")).unwrap();
    fs::write(work.join("src/a.txt"), b"a").unwrap();
    fs::write(work.join("src/sub/b.txt"), b"b").unwrap();
    fs::write(work.join("other/c.txt"), b"c").unwrap();
    let abs = work.join("other").to_string_lossy().into_owned();
    for (cwd, targets) in [
        ("src", vec!["."]),
        ("", vec!["src"]),
        ("", vec!["src/sub", "other"]),
        ("src", vec!["../other"]),
        ("src", vec![abs.as_str()]),
    ] {
        let dir = work.join(cwd);
        let mut listed = Vec::new();
        for tool in ["fleetsnap", "restic"] {
            let repo = tmp.path().join(format!("repo-{tool}"));
            let _ = fs::remove_dir_all(&repo);
            let mut init = if tool == "fleetsnap" {
                fleetsnap(&repo)
            } else {
                restic(&bin, &repo)
            };
            run(init.arg("init"));
            let mut backup = if tool == "fleetsnap" {
                fleetsnap(&repo)
            } else {
                restic(&bin, &repo)
            };
            run(backup.current_dir(&dir).arg("backup").args(&targets));
            listed.push(listed_paths(&bin, &repo, "latest"));
        }
        assert_eq!(
            listed[0],
            listed[1],
            "`backup {}` in {cwd:?}: fleetsnap (left) and restic (right) differ",
            targets.join(" ")
        );
    }
}

/// Teardown of one host (docs/operations.md): with no keep rule, `forget` refuses unless
/// told `--unsafe-allow-remove-all` (restic's flag since 0.17), then removes exactly the
/// snapshots its filter selects; the other host's snapshots stay restorable and restic's
/// check passes.
#[test]
fn removing_every_snapshot_of_one_host_needs_the_unsafe_flag_and_spares_the_rest() {
    let (_, bin) = restic_bins().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    run(fleetsnap(&repo).arg("init"));
    for host in ["gone", "gone", "stays"] {
        run(fleetsnap(&repo).args(["backup", "--host", host]).arg(&src));
    }
    let refused = fleetsnap(&repo)
        .args(["forget", "--host", "gone", "--prune"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "an empty policy removed snapshots"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--unsafe-allow-remove-all"),
        "the refusal does not name the flag: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    run(fleetsnap(&repo).args([
        "forget",
        "--host",
        "gone",
        "--unsafe-allow-remove-all",
        "--prune",
    ]));
    let out = run(restic(&bin, &repo).args(["snapshots", "--json"]));
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let hosts: Vec<&str> = snaps
        .iter()
        .filter_map(|s| s["hostname"].as_str())
        .collect();
    assert_eq!(hosts, ["stays"], "{out}");
    run(restic(&bin, &repo).args(["check", "--read-data"]));
    let target = tmp.path().join("restored");
    run(restic(&bin, &repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    let restored = target.join(src.strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read(restored).unwrap(), b"data");
}
