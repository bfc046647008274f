//! The programs a campaign drives, each found or built here, or a clear error naming the
//! missing component and how to get it: a campaign that ran without its parts would prove
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::repo_root;

/// What a failpoint build embeds and a shipped build must not (see `executor/src/failpoint.rs`).
const FAILPOINT_MARKER: &str = "FLEETSNAP_FAILPOINTS_TALLY";

#[derive(Debug, Clone)]
pub struct Tools {
    /// The executor exactly as `cargo build --workspace` makes it: strace kills this one.
    pub fleetsnap: PathBuf,
    /// `fleetsnap-failpoints`: the executor built with `--features failpoints`.
    pub fleetsnap_failpoints: PathBuf,
    pub restic: PathBuf,
    pub strace: PathBuf,
    pub minio: PathBuf,
    pub mc: PathBuf,
}

/// Overrides from the command line; everything else is found in the usual places.
#[derive(Debug, Clone, Default)]
pub struct ToolPaths {
    pub fleetsnap: Option<PathBuf>,
    pub fleetsnap_failpoints: Option<PathBuf>,
}

impl Tools {
    pub fn find(over: &ToolPaths, need_s3: bool) -> Result<Tools> {
        let fleetsnap = match &over.fleetsnap {
            Some(p) => p.clone(),
            None => workspace_executor()?,
        };
        require("fleetsnap executor", &fleetsnap, "cargo build --workspace")?;
        // Feature unification could switch failpoints on in the workspace build; the
        // campaign must kill the binary that ships, so refuse one that has them.
        if contains(&fleetsnap, FAILPOINT_MARKER)? {
            bail!(
                "{} was built with the `failpoints` feature; the workspace build must not \
                 have it (did a crate enable fleetsnap/failpoints?)",
                fleetsnap.display()
            );
        }
        let fleetsnap_failpoints = match &over.fleetsnap_failpoints {
            Some(p) => p.clone(),
            None => build_failpoint_executor(&fleetsnap)?,
        };
        require(
            "fleetsnap executor with failpoints",
            &fleetsnap_failpoints,
            "cargo build --workspace --bin fleetsnap-failpoints --features fleetsnap/failpoints",
        )?;
        if !contains(&fleetsnap_failpoints, FAILPOINT_MARKER)? {
            bail!(
                "{} has no failpoints (built without --features failpoints)",
                fleetsnap_failpoints.display()
            );
        }
        let restic = match std::env::var_os("FLEETSNAP_RESTIC") {
            Some(p) => PathBuf::from(p),
            None => tool_dir("restic")?.join("restic"),
        };
        require("restic 0.19.1", &restic, "tests/testenv/tools.sh restic")?;
        let strace = PathBuf::from("/usr/bin/strace");
        require("strace", &strace, "tests/testenv/deps.sh installs it")?;
        let (minio, mc) = if need_s3 {
            let minio = tool_dir("minio")?.join("minio");
            require("MinIO server", &minio, "tests/testenv/tools.sh minio")?;
            let mc = tool_dir("mc")?.join("mc");
            require("MinIO client mc", &mc, "tests/testenv/tools.sh mc")?;
            (minio, mc)
        } else {
            (PathBuf::new(), PathBuf::new())
        };
        Ok(Tools {
            fleetsnap,
            fleetsnap_failpoints,
            restic,
            strace,
            minio,
            mc,
        })
    }
}

fn require(component: &str, path: &Path, how: &str) -> Result<()> {
    if !path.is_file() {
        bail!(
            "missing component: {component} not found at {} ({how})",
            path.display()
        );
    }
    Ok(())
}

/// `tests/testenv/tools.sh path NAME`: the cache directory of a Go-built test tool.
fn tool_dir(name: &str) -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("tests/testenv/tools.sh"))
        .args(["path", name])
        .output()
        .context("running tests/testenv/tools.sh path")?;
    let dir = crate::check(&format!("tools.sh path {name}"), out)?;
    Ok(PathBuf::from(dir.trim()))
}

/// The `fleetsnap` next to this program: `target/<profile>/robustness` or
/// `target/<profile>/deps/<test>` both have it in `target/<profile>/`.
fn workspace_executor() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("fleetsnap");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "missing component: fleetsnap executor not found next to {} (run `cargo build \
         --workspace` first, or pass --executor)",
        exe.display()
    ))
}

/// Build `fleetsnap-failpoints` (the executor with the `failpoints` feature) next to the
/// workspace's binaries, through the workspace so that it reuses every dependency build; the
/// regular `fleetsnap` beside it is not touched. A no-op when it is current.
fn build_failpoint_executor(workspace_bin: &Path) -> Result<PathBuf> {
    // target/<profile>/fleetsnap -> target
    let target = workspace_bin
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected executor location {}", workspace_bin.display()))?;
    crate::feature_bin_in(target, "fleetsnap", "fleetsnap-failpoints", "failpoints")
}

/// Whether the file holds `needle` (grep: fast on a debug binary of hundreds of MB).
fn contains(file: &Path, needle: &str) -> Result<bool> {
    let st = Command::new("grep")
        .args(["-q", "-a", "-F", needle])
        .arg(file)
        .status()
        .context("running grep")?;
    match st.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("grep {needle} {} failed: {st}", file.display()),
    }
}
