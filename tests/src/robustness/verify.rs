//! What must hold after every kill (issue 17): the lock the killed process left is treated
//! as restic treats it, both tools' `check --read-data` pass, every snapshot in the
//! repository restores byte for byte, no snapshot was lost, and the next run of the same
//! command succeeds.
//!
//! Stale locks, decided as restic does it: nothing removes a lock on its own. A killed
//! process leaves its lock behind; it is stale (same host, dead PID), but restic still
//! honours it until `restic unlock`, which removes stale locks only. So a stale shared lock
//! (backup, restore) does not stop other shared-lock commands, a stale exclusive one
//! (check, forget, prune) stops every command that locks, and after `unlock` everything
//! proceeds. The verification asserts exactly that, then unlocks with fleetsnap's `unlock`
//! (stale locks only) and expects it to remove the one lock.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::kill::{self, Invocation};
use super::points::Command as Cmd;
use super::storage::Repo;
use super::tree;
use super::{Baseline, Cell};

/// Exit code of a command refused because the repository is locked (restic's, too).
const EXIT_LOCKED: i32 = 11;

type Check = std::result::Result<(), String>;

pub struct Verifier<'a> {
    pub base: &'a Baseline,
    pub cell: &'a Cell,
    pub repo: &'a Repo<'a>,
    pub dir: &'a Path,
}

impl Verifier<'_> {
    fn inv(&self, args: &[&str]) -> Invocation {
        let mut a = vec!["-r".to_string(), self.repo.url.clone()];
        a.extend(args.iter().map(|s| s.to_string()));
        Invocation {
            args: a,
            env: self.repo.env(),
        }
    }

    fn fleetsnap(&self, args: &[&str]) -> Result<kill::Finished> {
        kill::run(kill::executor(&self.base.tools.fleetsnap, &self.inv(args)))
    }

    fn fleetsnap_ok(&self, args: &[&str]) -> std::result::Result<String, String> {
        let f = self.fleetsnap(args).map_err(|e| format!("{e:#}"))?;
        if !f.status.success() {
            return Err(format!(
                "fleetsnap {} failed: {}",
                args.join(" "),
                f.describe()
            ));
        }
        Ok(f.stdout)
    }

    fn restic_check(&self) -> Check {
        let mut c = Command::new(&self.base.tools.restic);
        c.args(["-r", &self.repo.url, "--no-cache", "check", "--read-data"])
            .envs(self.repo.env());
        let f = kill::run(c).map_err(|e| format!("{e:#}"))?;
        if !f.status.success() || !f.stdout.contains("no errors were found") {
            return Err(format!("restic check --read-data: {}", f.describe()));
        }
        Ok(())
    }

    /// The repository's snapshots (full IDs). `--no-lock` here and in the restores below:
    /// the lock rules are tested once, in [`Self::stale_locks`], and each lock costs the
    /// 200 ms settle pause restic's protocol has.
    fn snapshots(&self) -> std::result::Result<BTreeSet<String>, String> {
        parse_snapshots(&self.fleetsnap_ok(&["--no-lock", "--json", "snapshots"])?)
    }

    /// Everything after a kill; `Err` names the first property that does not hold.
    pub fn after_kill(&self) -> Check {
        let listed = self.stale_locks()?;
        self.restic_check()?;
        self.fleetsnap_ok(&["check", "--read-data"])?;
        let after = self.snapshots_restore(listed)?;
        self.next_run(&after)
    }

    /// The lock the killed process left behaves as restic's rule says, then goes with a
    /// stale-only unlock. Returns the snapshot list when the probe (a shared-lock command)
    /// was let through, so it need not be read again.
    fn stale_locks(&self) -> std::result::Result<Option<BTreeSet<String>>, String> {
        let left = self.repo.locks().map_err(|e| format!("{e:#}"))?;
        if left > 1 {
            return Err(format!(
                "the killed process left {left} locks, expected at most 1"
            ));
        }
        if left == 0 {
            return Ok(None);
        }
        let probe = self
            .fleetsnap(&["--json", "snapshots"])
            .map_err(|e| format!("{e:#}"))?;
        let refused = probe.status.code() == Some(EXIT_LOCKED);
        let exclusive = self.cell.command.exclusive();
        if refused != exclusive {
            let (kind, should) = if exclusive {
                ("exclusive", "be refused with exit code 11")
            } else {
                ("shared", "succeed")
            };
            return Err(format!(
                "with a stale {kind} lock left, `snapshots` (shared lock) should {should} \
                 (restic's rule), but: {}",
                probe.describe()
            ));
        }
        let listed = if refused {
            None
        } else if probe.status.success() {
            Some(parse_snapshots(&probe.stdout)?)
        } else {
            return Err(format!("snapshots failed: {}", probe.describe()));
        };
        // Stale-only unlock must judge the dead process's lock stale (same host, dead PID),
        // as `restic unlock` does.
        let out = self.fleetsnap_ok(&["unlock"])?;
        if !out.contains("removed 1 locks") {
            return Err(format!(
                "unlock did not take the killed process's lock for stale: {out}"
            ));
        }
        let now = self.repo.locks().map_err(|e| format!("{e:#}"))?;
        if now != 0 {
            return Err(format!("{now} locks left after unlock"));
        }
        Ok(listed)
    }

    /// No snapshot lost, none that should not be there, and every one restores to the tree
    /// it was taken of. Returns the snapshots present.
    fn snapshots_restore(
        &self,
        listed: Option<BTreeSet<String>>,
    ) -> std::result::Result<BTreeSet<String>, String> {
        let after = match listed {
            Some(l) => l,
            None => self.snapshots()?,
        };
        let before: BTreeSet<&String> = self.cell.snapshots_before.iter().collect();
        for s in &before {
            if !after.contains(*s) && !self.cell.may_remove.contains(*s) {
                return Err(format!("snapshot {} was lost", &s[..8]));
            }
        }
        let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
        let may_add = usize::from(self.cell.command == Cmd::Backup);
        if new.len() > may_add {
            return Err(format!("unexpected new snapshots {new:?}"));
        }
        for id in &after {
            // A snapshot the killed backup managed to save must be complete: it is of v4.
            let version = self.base.version_of(id).unwrap_or(3);
            let target = self.dir.join(format!("check-{}", &id[..8]));
            self.fleetsnap_ok(&[
                "--no-lock",
                "restore",
                id,
                "--target",
                &target.display().to_string(),
            ])?;
            tree::compare(
                &self.base.versions[version],
                &tree::restored_at(&target, &self.base.src),
            )
            .map_err(|e| format!("snapshot {} (v{}): {e}", &id[..8], version + 1))?;
            tree::remove_all(&target).map_err(|e| e.to_string())?;
        }
        Ok(after)
    }

    /// The same command again, undisturbed, succeeds and leaves what it should.
    fn next_run(&self, after_kill: &BTreeSet<String>) -> Check {
        let args = self.cell.args(self.base, self.repo, self.dir);
        let f = kill::run(kill::executor(
            &self.base.tools.fleetsnap,
            &Invocation {
                args,
                env: self.repo.env(),
            },
        ))
        .map_err(|e| format!("{e:#}"))?;
        if !f.status.success() {
            return Err(format!(
                "the next {} failed: {}",
                self.cell.command.name(),
                f.describe()
            ));
        }
        let expect = match self.cell.command {
            Cmd::Restore => {
                return tree::compare(
                    &self.base.versions[2],
                    &tree::restored_at(&self.dir.join("restore"), &self.base.src),
                )
                .map_err(|e| format!("after the next restore: {e}"));
            }
            Cmd::Check => return Ok(()),
            Cmd::Backup => after_kill.len() + 1,
            Cmd::Forget => 1,
            Cmd::Prune => after_kill.len(),
        };
        if self.cell.command != Cmd::Prune {
            let now = self.snapshots()?;
            if now.len() != expect {
                return Err(format!(
                    "after the next {}: {} snapshots, expected {expect}",
                    self.cell.command.name(),
                    now.len()
                ));
            }
            return Ok(());
        }
        // After a prune that followed a killed one, the structure too ("N snapshots, T
        // trees, P packs checked").
        let out = self.fleetsnap_ok(&["check"])?;
        if !out.contains(&format!("\n{expect} snapshots,"))
            && !out.starts_with(&format!("{expect} snapshots,"))
        {
            return Err(format!(
                "after the next {}, check does not report {expect} snapshots: {out}",
                self.cell.command.name()
            ));
        }
        Ok(())
    }
}

fn parse_snapshots(out: &str) -> std::result::Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("snapshots --json: {e}: {out}"))?;
    Ok(v.as_array()
        .ok_or("snapshots --json: not a list")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}
