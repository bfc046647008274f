//! The exact kill-point campaign of issue 17: SIGKILL the executor at the N-th occurrence of
//! each commit point, then check that nothing was lost.
//!
//! * local backend: every rename, link, unlink and fsync, by strace's syscall injection,
//!   on the executor exactly as the workspace builds it;
//! * S3 (MinIO): before and after every PUT and DELETE, and at named prune phases, by the
//!   executor's failpoints (`executor/src/failpoint.rs`, a separate build);
//! * for `backup`, `forget`, `prune` (plan, repack, deletes), `check` and `restore`.
//!
//! A dry run of each command × backend counts the occurrences, so every point is one that
//! happens; the seed picks which of them run (`--points N`), or all of them. After every
//! kill, [`verify`] checks the repository. The binary is `src/bin/robustness.rs`; CI runs a
//! sample from `tests/robustness.rs`; the full campaign is `tests/robustness/run.sh`.

pub mod kill;
pub mod points;
pub mod report;
pub mod rng;
pub mod storage;
pub mod tools;
pub mod tree;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use kill::{Invocation, Outcome};
use points::{Backend, Command, Point};
use report::{Report, Verdict};
use rng::Rng;
use storage::{Minio, Repo};
use tools::{ToolPaths, Tools};
use tree::Tree;

/// The password of every campaign repository.
pub const PASSWORD: &str = "robustness-pw";

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// How many points to run; `None`: every point of the selected cells.
    pub points: Option<usize>,
    pub backends: Vec<Backend>,
    pub commands: Vec<Command>,
    /// Run exactly these points (replay), skipping the dry runs' sampling.
    pub only: Vec<Point>,
    /// Working directory; a fresh temporary one when `None`.
    pub work: Option<PathBuf>,
    /// Keep every point's files, not only those of failed points.
    pub keep: bool,
    pub tools: ToolPaths,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            points: None,
            backends: Backend::ALL.to_vec(),
            commands: Command::ALL.to_vec(),
            only: Vec::new(),
            work: None,
            keep: false,
            tools: ToolPaths::default(),
        }
    }
}

/// What every point starts from: three snapshots of `src` (v1, v2, v3) in `repo`, and the
/// same repository after `forget --keep-last 1` in `pruneable` (S3 only, with the packs of
/// v1 and v2 partly garbage, so prune both deletes and repacks).
pub struct Baseline {
    pub tools: Tools,
    pub src: PathBuf,
    pub versions: Vec<Tree>,
    pub repo: PathBuf,
    pub pruneable: PathBuf,
    /// Full IDs of the snapshots of v1, v2 and v3.
    pub snaps: Vec<String>,
}

impl Baseline {
    fn build(tools: Tools, dir: &Path, rng: &Rng) -> Result<Baseline> {
        let versions = tree::versions(rng);
        let src = dir.join("src");
        let repo = dir.join("base-repo");
        let fleetsnap = |args: &[&str]| -> Result<String> {
            let mut a = vec!["-r".to_string(), repo.display().to_string()];
            a.extend(args.iter().map(|s| s.to_string()));
            let f = kill::run(kill::executor(
                &tools.fleetsnap,
                &Invocation {
                    args: a,
                    env: vec![("RESTIC_PASSWORD", PASSWORD.to_string())],
                },
            ))?;
            if !f.status.success() {
                bail!(
                    "baseline: fleetsnap {} failed: {}",
                    args.join(" "),
                    f.describe()
                );
            }
            Ok(f.stdout)
        };
        fleetsnap(&["init"])?;
        let mut snaps = Vec::new();
        for v in &versions[..3] {
            tree::materialize(v, &src)?;
            let out = fleetsnap(&["--json", "backup", &src.display().to_string()])?;
            let summary: serde_json::Value = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message_type"] == "summary")
                .with_context(|| format!("baseline: no backup summary in {out}"))?;
            snaps.push(
                summary["snapshot_id"]
                    .as_str()
                    .context("baseline: summary without snapshot_id")?
                    .to_string(),
            );
        }
        let pruneable = dir.join("base-pruneable");
        storage::copy_dir(&repo, &pruneable)?;
        let f = kill::run(kill::executor(
            &tools.fleetsnap,
            &Invocation {
                args: vec![
                    "-r".into(),
                    pruneable.display().to_string(),
                    "forget".into(),
                    "--keep-last".into(),
                    "1".into(),
                ],
                env: vec![("RESTIC_PASSWORD", PASSWORD.to_string())],
            },
        ))?;
        if !f.status.success() {
            bail!("baseline: forget failed: {}", f.describe());
        }
        // The backup under test reads v4.
        tree::materialize(&versions[3], &src)?;
        Ok(Baseline {
            tools,
            src,
            versions,
            repo,
            pruneable,
            snaps,
        })
    }

    /// Which version (0-based) a baseline snapshot holds.
    pub fn version_of(&self, id: &str) -> Option<usize> {
        self.snaps.iter().position(|s| s == id)
    }
}

/// One command on one backend: how to run it and what its repository held before.
pub struct Cell {
    pub backend: Backend,
    pub command: Command,
    pub snapshots_before: Vec<String>,
    /// Snapshots the command is told to remove (forget).
    pub may_remove: Vec<String>,
}

impl Cell {
    fn new(base: &Baseline, backend: Backend, command: Command) -> Cell {
        let (snapshots_before, may_remove) = match command {
            Command::Prune => (vec![base.snaps[2].clone()], vec![]),
            Command::Forget => (base.snaps.clone(), base.snaps[..2].to_vec()),
            _ => (base.snaps.clone(), vec![]),
        };
        Cell {
            backend,
            command,
            snapshots_before,
            may_remove,
        }
    }

    fn base_repo<'b>(&self, base: &'b Baseline) -> &'b Path {
        match self.command {
            Command::Prune => &base.pruneable,
            _ => &base.repo,
        }
    }

    /// The command under test, for a point in `dir`.
    pub fn args(&self, base: &Baseline, repo: &Repo, dir: &Path) -> Vec<String> {
        let mut a = vec!["-r".to_string(), repo.url.clone()];
        let rest: Vec<String> = match self.command {
            Command::Backup => vec!["backup".into(), base.src.display().to_string()],
            Command::Forget => vec!["forget".into(), "--keep-last".into(), "1".into()],
            // No grace period, and repack whatever is partly unused: the baseline's packs
            // were all written a moment ago.
            Command::Prune => ["prune", "--max-unused", "0%", "--keep-young", "0"]
                .map(String::from)
                .to_vec(),
            Command::Check => vec!["check".into(), "--read-data".into()],
            Command::Restore => vec![
                "restore".into(),
                base.snaps[2].clone(),
                "--target".into(),
                dir.join("restore").display().to_string(),
            ],
        };
        a.extend(rest);
        a
    }

    /// Prepare `dir` and a fresh repository for one run of this cell.
    fn prepare<'m>(
        &self,
        base: &Baseline,
        dir: &Path,
        minio: Option<&'m Minio>,
    ) -> Result<Repo<'m>> {
        if dir.exists() {
            tree::remove_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        if self.command == Command::Restore {
            // Restore over an older restore, so it replaces files (unlinks) as well as
            // creating them.
            tree::materialize(
                &base.versions[1],
                &tree::restored_at(&dir.join("restore"), &base.src),
            )?;
        }
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("point")
            .to_string();
        Repo::copy_of(self.base_repo(base), self.backend, dir, &name, minio)
    }
}

/// Run a campaign; prints progress and the table as it goes, returns the report.
pub fn run(opts: &Options) -> Result<Report> {
    let t0 = Instant::now();
    let root = Rng::new(opts.seed);
    let work = match &opts.work {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => tempfile_dir()?,
    };
    let need_s3 =
        opts.backends.contains(&Backend::S3) || opts.only.iter().any(|p| p.backend == Backend::S3);
    let tools = Tools::find(&opts.tools, need_s3)?;
    progress(t0, &format!("work directory {}", work.display()));
    let base = Baseline::build(tools, &work.join("base"), &root)?;
    let minio = if need_s3 {
        Some(Minio::start(&base.tools, &work)?)
    } else {
        None
    };
    progress(t0, "baseline: 3 snapshots, minio up");

    let selected: Vec<Point> = if !opts.only.is_empty() {
        opts.only.clone()
    } else {
        let mut cells = Vec::new();
        for b in &opts.backends {
            for c in &opts.commands {
                let cell = Cell::new(&base, *b, *c);
                let dir = work.join(format!("dry-{}-{}", b.name(), c.name()));
                let repo = cell.prepare(&base, &dir, minio.as_ref())?;
                let inv = Invocation {
                    args: cell.args(&base, &repo, &dir),
                    env: repo.env(),
                };
                let (counts, _) = kill::dry_run(&base.tools, &inv, &dir, *b == Backend::Local)
                    .with_context(|| format!("dry run of {} on {}", c.name(), b.name()))?;
                let pts = points::cell_points(*b, *c, &local_or_s3(*b, counts));
                progress(
                    t0,
                    &format!("dry run {}/{}: {} points", b.name(), c.name(), pts.len()),
                );
                sanity(*b, *c, &pts)?;
                repo.remove()?;
                tree::remove_all(&dir)?;
                cells.push(pts);
            }
        }
        let universe: usize = cells.iter().map(Vec::len).sum();
        let want = opts.points.unwrap_or(universe);
        progress(
            t0,
            &format!(
                "{universe} distinct kill points; running {}",
                want.min(universe)
            ),
        );
        points::sample(&cells, want, &root)
    };

    let mut report = Report::new(opts.seed);
    let mut cells: BTreeMap<(Backend, Command), Cell> = BTreeMap::new();
    for (i, p) in selected.iter().enumerate() {
        let cell = cells
            .entry((p.backend, p.command))
            .or_insert_with(|| Cell::new(&base, p.backend, p.command));
        let t = Instant::now();
        let dir = work.join(format!("p{i:03}"));
        let verdict = run_point(&base, cell, p, &dir, minio.as_ref(), &mut report);
        let keep = opts.keep || matches!(verdict, Verdict::Failed(_));
        if !keep {
            let _ = tree::remove_all(&dir);
        }
        let line = match &verdict {
            Verdict::Passed(None) => "pass".to_string(),
            Verdict::Passed(Some(call)) => format!("pass, killed at {}", short(call, &work)),
            Verdict::NotReached => "not reached (the run finished first)".to_string(),
            Verdict::Failed(why) => format!(
                "FAIL (kept {}; replay: robustness --seed {} --only {p})\n    {}",
                dir.display(),
                opts.seed,
                why.replace('\n', "\n    ")
            ),
        };
        progress(
            t0,
            &format!(
                "{:>3}/{} {p}: {line} ({:.1}s)",
                i + 1,
                selected.len(),
                t.elapsed().as_secs_f64()
            ),
        );
        report.add(p, verdict);
    }
    drop(minio);
    report.seconds = t0.elapsed().as_secs_f64();
    // A temporary work directory goes unless something in it is worth a look.
    if opts.work.is_none() && !opts.keep && report.failures.is_empty() {
        let _ = tree::remove_all(&work);
    }
    Ok(report)
}

/// Local cells are aimed at syscalls and the prune phases; S3 cells at every failpoint.
fn local_or_s3(b: Backend, mut c: points::Counts) -> points::Counts {
    if b == Backend::Local {
        c.failpoints.retain(|name, _| name.starts_with("prune."));
    } else {
        c.syscalls.clear();
    }
    c
}

/// A cell whose dry run did not show the points it is meant to cover would pass vacuously.
fn sanity(b: Backend, c: Command, pts: &[Point]) -> Result<()> {
    let has = |name: &str| pts.iter().any(|p| p.trigger.name() == name);
    let want: &[&str] = match (b, c) {
        (Backend::S3, Command::Prune) => &["s3.put.after", "s3.delete.after", "prune.repack"],
        (Backend::S3, _) => &["s3.put.after", "s3.delete.after"],
        (Backend::Local, Command::Prune) => &["fsync", "prune.repack", "prune.indexed"],
        (Backend::Local, _) => &["fsync"],
    };
    for w in want {
        if !has(w) {
            bail!(
                "dry run of {} on {} never reached {w}: the workload does not cover it",
                c.name(),
                b.name()
            );
        }
    }
    Ok(())
}

fn run_point(
    base: &Baseline,
    cell: &Cell,
    p: &Point,
    dir: &Path,
    minio: Option<&Minio>,
    report: &mut Report,
) -> Verdict {
    let repo = match cell.prepare(base, dir, minio) {
        Ok(r) => r,
        Err(e) => return Verdict::Failed(format!("setup: {e:#}")),
    };
    let inv = Invocation {
        args: cell.args(base, &repo, dir),
        env: repo.env(),
    };
    let outcome =
        match kill::run_killed(&base.tools, &inv, &p.trigger, p.n, &dir.join("strace.log")) {
            Ok(o) => o,
            Err(e) => return Verdict::Failed(format!("{e:#}")),
        };
    let verdict = match outcome {
        Outcome::Completed => Verdict::NotReached,
        Outcome::Failed(why) => Verdict::Failed(format!("the run under test: {why}")),
        Outcome::Killed(call) => match (verify::Verifier {
            base,
            cell,
            repo: &repo,
            dir,
        })
        .after_kill()
        {
            Ok(()) => Verdict::Passed(call),
            Err(why) => Verdict::Failed(match call {
                Some(c) => format!("killed at {c}: {why}"),
                None => why,
            }),
        },
    };
    if matches!(verdict, Verdict::Passed(_)) {
        // Counted after the next run: what the kill left and nothing cleaned up.
        let debris = repo.temp_debris();
        if debris > 0 {
            progress_note(&format!(
                "{debris} temporary file(s) left in the repository"
            ));
        }
        report.debris += debris;
    }
    if !matches!(verdict, Verdict::Failed(_)) {
        let _ = repo.remove();
    } else {
        progress_note(&format!("repository kept at {}", repo.describe()));
    }
    verdict
}

/// A logged syscall with the campaign's directory left out of its paths.
fn short(call: &str, work: &Path) -> String {
    let c: String = call.split_whitespace().collect::<Vec<_>>().join(" ");
    c.replace(&format!("{}/", work.display()), "")
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("fleetsnap-robustness-{}", std::process::id()));
    if d.exists() {
        tree::remove_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn progress(t0: Instant, what: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[{:>7.1}s] {what}", t0.elapsed().as_secs_f64());
    let _ = out.flush();
}

fn progress_note(what: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "            {what}");
    let _ = out.flush();
}
