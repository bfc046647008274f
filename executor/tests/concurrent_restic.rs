//! Stock restic and fleetsnap on one repository at the same moment.
//!
//! A fleet runs both: the operator's fleetsnap prunes while an admin's restic backs up, or a
//! host still has a restic timer next to ours. The lock files are the only thing keeping an
//! exclusive prune away from a backup whose packs are not indexed yet, so each tool must see
//! and honour the other's locks, must not remove a live lock of the other as stale, and must
//! remove a dead one the way the other does.
//!
//! To hold a lock for as long as a test needs without timing games, a process is frozen with
//! SIGSTOP as soon as its lock file exists: its lock stays fresh (minutes, not the 30 of
//! staleness) and its PID alive, which is exactly what a slow run looks like to the other
//! tool. After every scenario both tools check the repository with `--read-data` and every
//! snapshot restores byte for byte.
//!
//! Measured with restic 0.19.1: its `check` and `prune` lock exclusively, `backup` shared, and
//! a crashed run's lock blocks the next run until `unlock` removes it as stale (same host,
//! dead PID, or older than 30 minutes). fleetsnap behaves the same in each case.

mod common;

use common::{noise, restic_bin};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "concurrent-pw";
const EXIT_LOCKED: i32 = 11;

#[derive(Debug, Clone, Copy)]
enum Tool {
    Restic,
    Fleetsnap,
}

/// One repository, one source tree, and the two tools pointed at them.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    src: PathBuf,
    restic: PathBuf,
}

impl Fixture {
    /// A repository made by fleetsnap with one snapshot from each tool.
    fn new(mib: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let f = Fixture {
            repo: root.join("repo"),
            src: root.join("src"),
            restic: restic_bin(),
            root,
            _dir: dir,
        };
        write_tree(&f.src, mib, 1);
        ok(f.fleetsnap().arg("init"));
        ok(f.fleetsnap().arg("backup").arg(&f.src));
        fs::write(f.src.join("changed-by-restic"), noise(1 << 20, 99)).unwrap();
        ok(f.restic().arg("backup").arg(&f.src));
        f
    }

    fn fleetsnap(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fleetsnap"));
        c.arg("-r").arg(&self.repo).env("RESTIC_PASSWORD", PASSWORD);
        c
    }

    fn restic(&self) -> Command {
        let mut c = Command::new(&self.restic);
        c.arg("-r")
            .arg(&self.repo)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_CACHE_DIR", self.root.join("restic-cache"));
        c
    }

    fn locks(&self) -> BTreeSet<String> {
        fs::read_dir(self.repo.join("locks"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.len() == 64)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Snapshot id → the tree it records, as restic lists them.
    fn snapshots(&self) -> BTreeMap<String, String> {
        let out = ok(self.restic().args(["snapshots", "--json", "--no-lock"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["tree"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn tool(&self, t: Tool) -> Command {
        match t {
            Tool::Restic => self.restic(),
            Tool::Fleetsnap => self.fleetsnap(),
        }
    }

    /// `crashed`'s prune dies (SIGKILL) holding its exclusive lock; `other`'s backup is then
    /// refused (exit 11) until `other`'s `unlock` removes the dead lock, and then succeeds.
    fn crashed_prune_blocks_until_unlock(&self, crashed: Tool, other: Tool) {
        let mut prune = self.tool(crashed);
        prune.arg("prune");
        let prune = self.frozen_holding_a_lock(prune);
        let dead = prune.lock.clone();
        prune.crash();
        let refused = self
            .tool(other)
            .arg("backup")
            .arg(&self.src)
            .output()
            .unwrap();
        assert_locked_out(&refused);
        ok(self.tool(other).arg("unlock"));
        assert!(
            !self.locks().contains(&dead),
            "{other:?} unlock kept {crashed:?}'s dead lock"
        );
        ok(self.tool(other).arg("backup").arg(&self.src));
    }

    /// A backup of the source by `t`, frozen while it holds its (shared) lock.
    fn frozen_backup(&self, t: Tool) -> Frozen {
        let mut backup = self.tool(t);
        backup.arg("backup").arg(&self.src);
        self.frozen_holding_a_lock(backup)
    }

    /// Start `cmd`, wait until it has written a lock file, and freeze it there.
    fn frozen_holding_a_lock(&self, mut cmd: Command) -> Frozen {
        let before = self.locks();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let lock = loop {
            if let Some(new) = self.locks().difference(&before).next() {
                signal(&child, libc::SIGSTOP);
                break new.clone();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{cmd:?} finished ({status}) before its lock was seen: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(Instant::now() < deadline, "{cmd:?} wrote no lock in 60 s");
            // A 1 ms poll of the condition; the condition, not the delay, decides.
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(
            self.locks().contains(&lock) && child.try_wait().unwrap().is_none(),
            "{cmd:?} was not frozen while holding lock {lock}"
        );
        Frozen {
            child: Some(child),
            lock,
        }
    }

    /// Both tools read every byte back without an error, and every snapshot restores to the
    /// tree it was taken of.
    fn assert_intact(&self, expected: &BTreeMap<String, PathBuf>) {
        let out = ok(self.restic().args(["check", "--read-data"]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("no errors were found"),
            "restic check: {text}"
        );
        ok(self.fleetsnap().args(["check", "--read-data"]));
        let listed = self.snapshots();
        for (id, copy) in expected {
            assert!(listed.contains_key(id), "snapshot {id} is gone: {listed:?}");
            let target = self.root.join(format!("restore-{}", &id[..8]));
            ok(self
                .fleetsnap()
                .args(["restore", id, "--target"])
                .arg(&target));
            assert_same_tree(copy, &target.join(self.src.strip_prefix("/").unwrap()));
            fs::remove_dir_all(&target).unwrap();
        }
    }

    /// A frozen copy of the source as it is now, to compare a snapshot's restore with.
    fn copy_of_src(&self, name: &str) -> PathBuf {
        let to = self.root.join(name);
        copy_tree(&self.src, &to);
        to
    }

    /// Every current snapshot, paired with a copy of the source it was taken of.
    fn newest_is(&self, expected: &mut BTreeMap<String, PathBuf>, copy: PathBuf) {
        let all = self.snapshots();
        let new: Vec<_> = all
            .keys()
            .filter(|id| !expected.contains_key(*id))
            .collect();
        assert_eq!(new.len(), 1, "expected exactly one new snapshot: {new:?}");
        expected.insert(new[0].clone(), copy);
    }
}

/// A process stopped with SIGSTOP while it holds `lock`. Dropping it kills it.
struct Frozen {
    child: Option<Child>,
    lock: String,
}

impl Frozen {
    /// Let it go on, and wait for it to finish.
    fn resume(mut self) -> Output {
        let child = self.child.take().expect("still running");
        signal(&child, libc::SIGCONT);
        wait_bounded(child, Duration::from_secs(300))
    }

    /// Kill it as a crash would, leaving its lock behind.
    fn crash(mut self) {
        let mut child = self.child.take().expect("still running");
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({}, {sig}) failed", child.id());
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "process still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Refused because the other tool holds a conflicting lock (restic's exit code 11, which
/// fleetsnap uses too).
fn assert_locked_out(out: &Output) {
    assert_eq!(out.status.code(), Some(EXIT_LOCKED), "{}", describe(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already locked"),
        "{}",
        describe(out)
    );
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write_tree(root: &Path, mib: usize, seed: u64) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("sub/small.txt"), b"small and stable\n").unwrap();
    for i in 0..mib {
        fs::write(
            root.join(format!("f{i:02}")),
            noise(1 << 20, seed * 1000 + i as u64),
        )
        .unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn assert_same_tree(want: &Path, got: &Path) {
    let names = |p: &Path| -> BTreeSet<_> {
        fs::read_dir(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert_eq!(
        names(want),
        names(got),
        "{} vs {}",
        want.display(),
        got.display()
    );
    for name in names(want) {
        let (w, g) = (want.join(&name), got.join(&name));
        if w.is_dir() {
            assert_same_tree(&w, &g);
        } else {
            assert!(
                fs::read(&w).unwrap() == fs::read(&g).unwrap(),
                "{} differs from {}",
                g.display(),
                w.display()
            );
        }
    }
}

/// The history both tools wrote in `Fixture::new`, with the sources they were taken of (the
/// first snapshot is the tree without the file restic's run added).
fn initial_history(f: &Fixture) -> BTreeMap<String, PathBuf> {
    let copy_now = f.copy_of_src("src-at-2");
    let before = f.root.join("src-at-1");
    copy_tree(&copy_now, &before);
    fs::remove_file(before.join("changed-by-restic")).unwrap();
    let ids: Vec<_> = f.snapshots().into_keys().collect();
    assert_eq!(ids.len(), 2);
    // restic lists oldest first; tell them apart by content, not order.
    let mut out = BTreeMap::new();
    for id in ids {
        let ls = ok(f.restic().args(["ls", "--no-lock", &id]));
        let has = String::from_utf8_lossy(&ls.stdout).contains("changed-by-restic");
        out.insert(
            id,
            if has {
                copy_now.clone()
            } else {
                before.clone()
            },
        );
    }
    out
}

#[test]
fn restic_backup_is_refused_during_a_fleetsnap_prune_then_waits_it_out() {
    let f = Fixture::new(3);
    let mut expected = initial_history(&f);

    // The exclusive prune, frozen with its lock in place.
    let mut prune = f.fleetsnap();
    prune.arg("prune");
    let prune = f.frozen_holding_a_lock(prune);

    fs::write(f.src.join("during-prune"), noise(2 << 20, 7)).unwrap();
    let refused = f.restic().arg("backup").arg(&f.src).output().unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(EXIT_LOCKED),
        "restic backup must be refused: {}",
        describe(&refused)
    );
    assert!(text.contains("locked exclusively"), "{text}");

    // With --retry-lock restic waits until the prune is done, then backs up.
    let waiting = f
        .restic()
        .args(["backup", "--retry-lock", "5m"])
        .arg(&f.src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pruned = prune.resume();
    assert!(pruned.status.success(), "prune: {}", describe(&pruned));
    let backed_up = wait_bounded(waiting, Duration::from_secs(300));
    assert!(backed_up.status.success(), "{}", describe(&backed_up));
    let copy = f.copy_of_src("src-at-3");
    f.newest_is(&mut expected, copy);
    assert!(f.locks().is_empty(), "locks left: {:?}", f.locks());
    f.assert_intact(&expected);
}

#[test]
fn fleetsnap_backup_is_refused_during_a_restic_prune() {
    let f = Fixture::new(3);
    let mut expected = initial_history(&f);

    let mut prune = f.restic();
    prune.arg("prune");
    let prune = f.frozen_holding_a_lock(prune);

    fs::write(f.src.join("during-prune"), noise(2 << 20, 8)).unwrap();
    let refused = f.fleetsnap().arg("backup").arg(&f.src).output().unwrap();
    assert_eq!(
        refused.status.code(),
        Some(EXIT_LOCKED),
        "fleetsnap backup must be refused: {}",
        describe(&refused)
    );
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("lock"), "the error names the lock: {text}");
    assert_eq!(f.snapshots().len(), 2, "a refused backup wrote a snapshot");

    let pruned = prune.resume();
    assert!(
        pruned.status.success(),
        "restic prune: {}",
        describe(&pruned)
    );
    ok(f.fleetsnap().arg("backup").arg(&f.src));
    let copy = f.copy_of_src("src-at-3");
    f.newest_is(&mut expected, copy);
    f.assert_intact(&expected);
}

/// `check` takes an exclusive lock in both tools (restic 0.19.1 does: a check must not
/// see a backup's packs before their index, nor a prune's half-done deletes). Beside the
/// other tool's running backup it is refused with a lock error, calls nothing broken, and
/// the backup is not disturbed; restic's `--retry-lock` waits the backup out.
#[test]
fn checks_wait_for_a_backup_of_the_other_tool() {
    let f = Fixture::new(3);
    let mut expected = initial_history(&f);

    write_tree(&f.src.join("more"), 4, 3);
    let backup = f.frozen_backup(Tool::Fleetsnap);
    let check = f.restic().arg("check").output().unwrap();
    assert_locked_out(&check);
    let waiting = f
        .restic()
        .args(["check", "--retry-lock", "5m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = backup.resume();
    assert!(done.status.success(), "{}", describe(&done));
    let checked = wait_bounded(waiting, Duration::from_secs(300));
    assert!(checked.status.success(), "{}", describe(&checked));
    let copy = f.copy_of_src("src-at-3");
    f.newest_is(&mut expected, copy);

    write_tree(&f.src.join("evenmore"), 4, 4);
    let backup = f.frozen_backup(Tool::Restic);
    let check = f.fleetsnap().arg("check").output().unwrap();
    assert_locked_out(&check);
    let done = backup.resume();
    assert!(done.status.success(), "{}", describe(&done));
    let copy = f.copy_of_src("src-at-4");
    f.newest_is(&mut expected, copy);
    f.assert_intact(&expected);
}

#[test]
fn unlock_keeps_the_other_tools_live_lock_and_removes_its_dead_one() {
    let f = Fixture::new(3);
    let mut expected = initial_history(&f);

    // A live fleetsnap backup survives `restic unlock` (restic also probes the PID; we ignore
    // the SIGHUP older restic versions send for that).
    write_tree(&f.src.join("more"), 3, 5);
    let backup = f.frozen_backup(Tool::Fleetsnap);
    ok(f.restic().arg("unlock"));
    assert!(
        f.locks().contains(&backup.lock),
        "restic unlock removed fleetsnap's live lock"
    );
    let done = backup.resume();
    assert!(done.status.success(), "{}", describe(&done));
    let copy = f.copy_of_src("src-at-3");
    f.newest_is(&mut expected, copy);

    // A live restic backup survives `fleetsnap unlock`.
    write_tree(&f.src.join("evenmore"), 3, 6);
    let backup = f.frozen_backup(Tool::Restic);
    ok(f.fleetsnap().arg("unlock"));
    assert!(
        f.locks().contains(&backup.lock),
        "fleetsnap unlock removed restic's live lock"
    );
    let done = backup.resume();
    assert!(done.status.success(), "{}", describe(&done));
    let copy = f.copy_of_src("src-at-4");
    f.newest_is(&mut expected, copy);

    // A crashed prune of either tool leaves an exclusive lock with a dead PID on this host.
    // Like restic (0.19.1 refuses too, until `unlock`), neither steps over it on its own;
    // the other tool's `unlock` removes it as stale, by restic's rule, and the backup goes on.
    f.crashed_prune_blocks_until_unlock(Tool::Restic, Tool::Fleetsnap);
    let copy = f.copy_of_src("src-at-5");
    f.newest_is(&mut expected, copy);
    fs::write(f.src.join("after-crash"), b"x").unwrap();
    f.crashed_prune_blocks_until_unlock(Tool::Fleetsnap, Tool::Restic);
    let copy = f.copy_of_src("src-at-6");
    f.newest_is(&mut expected, copy);
    f.assert_intact(&expected);
}

/// Unfrozen, truly concurrent runs: restic backups and fleetsnap forget+prune race for a
/// while. Either may be refused a lock; nothing that either reported done may be lost.
#[test]
fn racing_backups_and_prunes_lose_nothing() {
    let f = Fixture::new(3);
    let mut keep = initial_history(&f);
    let mut refused = 0;
    for round in 0..6u64 {
        fs::write(f.src.join(format!("r{round}")), noise(3 << 20, 100 + round)).unwrap();
        let copy = f.copy_of_src(&format!("src-r{round}"));
        let (backup_tool, prune_tool) = if round % 2 == 0 {
            (f.restic(), f.fleetsnap())
        } else {
            (f.fleetsnap(), f.restic())
        };
        let mut backup_tool = backup_tool;
        let backup = backup_tool
            .arg("backup")
            .arg(&f.src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Forget nothing that is expected; prune what an earlier prune left unreferenced.
        let mut prune_tool = prune_tool;
        let pruned = prune_tool.arg("prune").output().unwrap();
        let backed_up = wait_bounded(backup, Duration::from_secs(300));
        for (what, out) in [("prune", &pruned), ("backup", &backed_up)] {
            match out.status.code() {
                Some(0) => {}
                Some(EXIT_LOCKED) => refused += 1,
                // restic exits 1 with "unable to create lock" when the race goes against it.
                Some(1) if String::from_utf8_lossy(&out.stderr).contains("lock") => refused += 1,
                _ => panic!("round {round} {what}: {}", describe(out)),
            }
        }
        if backed_up.status.success() {
            f.newest_is(&mut keep, copy);
        }
    }
    eprintln!("6 rounds, {refused} runs refused a lock");
    assert!(
        keep.len() > 2,
        "no backup of the race got through: {refused} refusals"
    );
    f.assert_intact(&keep);
}
