//! Prune interop with the real restic, and crash safety: backup and prune killed with
//! SIGKILL at exact commit points (strace syscall injection) leave a repository both tools
//! check clean, and the next run succeeds. The full kill-point campaign is
//! `tests/src/bin/robustness.rs`.

mod common;

use common::noise;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn restic_bins() -> Vec<PathBuf> {
    let newest = std::env::var("FLEETSNAP_RESTIC")
        .unwrap_or_else(|_| "/var/cache/fleetsnap/tools/restic-v0.19.1/restic".into());
    let old = std::env::var("FLEETSNAP_RESTIC_014").unwrap_or_else(|_| "/usr/bin/restic".into());
    [("FLEETSNAP_RESTIC", newest), ("FLEETSNAP_RESTIC_014", old)]
        .into_iter()
        .map(|(var, p)| {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "missing component: restic ({var}) not found at {}",
                p.display()
            );
            p
        })
        .collect()
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

fn make_tree(root: &Path, files: usize, size: usize, seed: u64) {
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/small.txt"), b"small and stable").unwrap();
    for i in 0..files {
        fs::write(root.join(format!("f{i:03}")), noise(size, seed + i as u64)).unwrap();
    }
}

/// Both restic versions and fleetsnap find no errors (stale locks of killed runs removed).
fn check_all(bins: &[PathBuf], repo: &Path) {
    run(restic(&bins[0], repo).arg("unlock"));
    for bin in bins {
        let out = run(restic(bin, repo).args(["check", "--read-data"]));
        assert!(
            out.contains("no errors were found"),
            "{}: {out}",
            bin.display()
        );
    }
    run(fleetsnap(repo).args(["check", "--read-data"]));
}

fn strace() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("FLEETSNAP_STRACE").unwrap_or_else(|_| "/usr/bin/strace".into()),
    );
    assert!(
        p.is_file(),
        "missing component: strace not found at {} (tests/testenv/deps.sh installs it)",
        p.display()
    );
    p
}

/// Run fleetsnap with SIGKILL injected on entry to the `n`-th `syscall` of one of its
/// threads (strace counts per thread), and assert that the kill happened: a run that ends
/// first never reached the point and proves nothing.
fn run_killed_at(repo: &Path, args: &[&std::ffi::OsStr], syscall: &str, n: u32) {
    use std::os::unix::process::ExitStatusExt;
    let log = repo.with_extension(format!("{syscall}-{n}.strace"));
    let out = Command::new(strace())
        .args(["-f", "-q", "-o"])
        .arg(&log)
        // strace 6.1 injects only into syscalls it traces.
        .arg("-e")
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=SIGKILL:when={n}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_fleetsnap"))
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", "interop-pw")
        .output()
        .expect("spawn strace");
    // strace re-raises the tracee's fatal signal on itself, and logs it.
    let trace = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.signal() == Some(libc::SIGKILL) && trace.contains("+++ killed by SIGKILL +++"),
        "fleetsnap {args:?} was not killed at {syscall} #{n} (it ended with {}): the point \
         was not reached\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fleetsnap_prunes_restic_repo_and_restic_prunes_fleetsnap_repo() {
    let bins = restic_bins();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 4, 3_000_000, 1);

    // restic writes, fleetsnap forgets and prunes.
    let rrepo = tmp.path().join("restic-repo");
    run(restic(&bins[0], &rrepo).arg("init"));
    run(restic(&bins[0], &rrepo).arg("backup").arg(&src));
    make_tree(&src, 4, 3_000_000, 100);
    run(restic(&bins[0], &rrepo).arg("backup").arg(&src));
    // The packs were just written: no grace period, or nothing would be deleted.
    let out = run(fleetsnap(&rrepo).args([
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--max-unused",
        "0%",
        "--keep-young",
        "0",
    ]));
    assert!(out.contains("removed 1 snapshots"), "{out}");
    check_all(&bins, &rrepo);
    let stats = run(fleetsnap(&rrepo).args(["--json", "stats", "--mode", "raw-data"]));
    assert!(stats.contains("\"total_blob_count\""), "{stats}");

    // fleetsnap writes, restic forgets and prunes.
    let frepo = tmp.path().join("fleetsnap-repo");
    run(fleetsnap(&frepo).arg("init"));
    run(fleetsnap(&frepo).arg("backup").arg(&src));
    make_tree(&src, 4, 3_000_000, 200);
    run(fleetsnap(&frepo).arg("backup").arg(&src));
    run(restic(&bins[0], &frepo).args([
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--max-unused",
        "0%",
    ]));
    check_all(&bins, &frepo);
    // And fleetsnap prunes after restic: nothing should be left to do.
    let out = run(fleetsnap(&frepo).args(["--json", "prune", "--dry-run"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan"]["stats"]["packs_delete"], 0, "{out}");
}

#[test]
fn killed_backup_and_prune_leave_a_clean_repository() {
    let bins = restic_bins();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // ~200 MB in 50 files: about a dozen 16 MiB packs.
    make_tree(&src, 50, 4_000_000, 7);
    let repo = tmp.path().join("repo");
    run(fleetsnap(&repo).arg("init"));

    // Packs are linked into the repository by 4 upload threads, and strace counts per
    // thread: kill as the first pack is linked, as some thread links its second (midway
    // through the ~12 packs), and at the only unlink, the lock's removal after the
    // snapshot is saved.
    for (syscall, n) in [("linkat", 1), ("linkat", 2), ("unlink", 1)] {
        run_killed_at(&repo, &[OsStr::new("backup"), src.as_os_str()], syscall, n);
        check_all(&bins, &repo);
    }
    run(fleetsnap(&repo).arg("backup").arg(&src));
    check_all(&bins, &repo);

    // Make most of the data garbage, then kill prunes at different stages.
    for i in 0..40 {
        fs::remove_file(src.join(format!("f{i:03}"))).unwrap();
    }
    run(fleetsnap(&repo).arg("backup").arg(&src));
    run(fleetsnap(&repo).args(["forget", "--keep-last", "1"]));
    let prune: Vec<&OsStr> = ["prune", "--max-unused", "0%", "--keep-young", "0"]
        .map(OsStr::new)
        .to_vec();
    // While repacking: as the first repacked pack is linked in. While deleting: at the
    // third removal (old index files and packs go one by one).
    for (syscall, n) in [("linkat", 1), ("unlink", 3)] {
        run_killed_at(&repo, &prune, syscall, n);
        check_all(&bins, &repo);
    }
    run(fleetsnap(&repo).arg("unlock"));
    run(fleetsnap(&repo).args(["prune", "--max-unused", "0%", "--keep-young", "0"]));
    check_all(&bins, &repo);
    run(fleetsnap(&repo).arg("backup").arg(&src));
    check_all(&bins, &repo);
}
