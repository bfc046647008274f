//! Executes plans through a [`HostShell`]: gather facts, then perform each action with a
//! constant script whose variable parts arrive as positional arguments or on stdin.
//!
//! Every write is temp file + fsync + rename in the target directory, so a reconcile killed
//! at any point leaves either the old or the new file, never half of one. Units are staged
//! and checked with `systemd-analyze verify` before they replace the installed ones.

use tracing::{Instrument, debug, info, info_span};

use super::error::{HostError, stderr_tail};
use super::facts::{self, FactQuery, HostFacts};
use super::layout::{self, JobId};
use super::plan::{self, Action, DesiredExecutor, DesiredFile, FileRole, HostPlan, JobInputs};
use super::shell::{HostShell, run_ok, run_script};
use crate::failpoint::{self, Point};

/// Exit code the upload script uses for "sha256 differs".
const CHECKSUM_EXIT: i32 = 86;

/// What an apply did, for logs and Events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub actions: Vec<String>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !self.actions.is_empty()
    }
}

pub async fn gather_facts<S: HostShell>(sh: &S, q: &FactQuery) -> Result<HostFacts, HostError> {
    let args = facts::gather_args(q);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let span = info_span!("gather_facts", host = %sh.host_name());
    async {
        let out = run_script(sh, "gather facts", facts::GATHER_SCRIPT, &argv, b"").await?;
        facts::parse_gather_output(&out.stdout_text()).map_err(|detail| HostError::Protocol {
            host: sh.host_name().to_string(),
            what: "facts".into(),
            detail,
        })
    }
    .instrument(span)
    .await
}

/// gather → plan → apply for one job. Returns the plan that was applied.
pub async fn reconcile_job<S: HostShell>(
    sh: &S,
    inputs: &JobInputs<'_>,
) -> Result<(HostPlan, ApplyReport), HostError> {
    let invalid = |detail| HostError::InvalidSpec {
        host: sh.host_name().to_string(),
        detail,
    };
    let job = JobId::new(inputs.policy.kind, &inputs.policy.name).map_err(invalid)?;
    let facts = gather_facts(sh, &plan::fact_query(&job, Some(inputs.artifact))).await?;
    let plan = plan::plan_job(inputs, &facts).map_err(|e| e.for_host(sh.host_name()))?;
    let report = apply_plan(sh, &plan).await?;
    Ok((plan, report))
}

/// gather → removal plan → apply.
pub async fn remove_job<S: HostShell>(
    sh: &S,
    job: &JobId,
) -> Result<(HostPlan, ApplyReport), HostError> {
    let facts = gather_facts(sh, &plan::fact_query(job, None)).await?;
    let plan = plan::plan_removal(job, &facts);
    let report = apply_plan(sh, &plan).await?;
    Ok((plan, report))
}

pub async fn apply_plan<S: HostShell>(sh: &S, plan: &HostPlan) -> Result<ApplyReport, HostError> {
    let mut report = ApplyReport::default();
    for action in &plan.actions {
        let label = action.label();
        let span = info_span!("host_action", host = %sh.host_name(), job = %plan.job.slug(), action = %label);
        async {
            apply_action(sh, action).await?;
            // One line per completed host action: a log proves what was (and was not) done.
            info!("host action done");
            Ok::<_, HostError>(())
        }
        .instrument(span)
        .await?;
        report.actions.push(label);
    }
    if report.changed() {
        info!(host = %sh.host_name(), job = %plan.job.slug(), actions = report.actions.len(), "host converged");
    } else {
        debug!(host = %sh.host_name(), job = %plan.job.slug(), "host already converged");
    }
    Ok(report)
}

async fn apply_action<S: HostShell>(sh: &S, action: &Action) -> Result<(), HostError> {
    match action {
        Action::InstallExecutor(exe) => {
            install_executor(sh, exe).await?;
            failpoint::hit(Point::AfterUpload);
            Ok(())
        }
        Action::SwitchExecutorLink { link, target } => {
            failpoint::hit(Point::BeforeLinkSwitch);
            run_script(
                sh,
                "switch executor link",
                SWITCH_LINK,
                &[link, target],
                b"",
            )
            .await?;
            Ok(())
        }
        Action::EnsureDir(d) => {
            let mode = format!("{:o}", d.mode);
            run_script(
                sh,
                "create directory",
                ENSURE_DIR,
                &[&d.path, &mode, &d.owner, &d.group],
                b"",
            )
            .await?;
            Ok(())
        }
        Action::WriteFile(f) => write_file(sh, f, &f.path, false).await,
        Action::WriteCredentials(files) => write_credentials(sh, files).await,
        Action::SetMetadata {
            path,
            mode,
            owner,
            group,
        } => {
            let mode = format!("{mode:o}");
            run_script(
                sh,
                "set mode/owner",
                SET_METADATA,
                &[path, &mode, owner, group],
                b"",
            )
            .await?;
            Ok(())
        }
        Action::InstallUnits { units, changed } => install_units(sh, units, changed).await,
        Action::DaemonReload => {
            failpoint::hit(Point::BeforeDaemonReload);
            systemctl(sh, &["daemon-reload"]).await
        }
        Action::EnableTimer { unit } => systemctl(sh, &["enable", "--now", unit]).await,
        Action::RestartTimer { unit } => systemctl(sh, &["restart", unit]).await,
        Action::DisableTimer { unit } => systemctl(sh, &["disable", "--now", unit]).await,
        Action::StopService { unit } => systemctl(sh, &["stop", unit]).await,
        Action::RemoveFiles { paths } => {
            let mut argv = vec!["rm", "-f", "--"];
            argv.extend(paths.iter().map(String::as_str));
            run_ok(sh, "remove files", &argv, b"").await?;
            Ok(())
        }
        Action::ResetFailed { units } => {
            let args: Vec<&str> = units.iter().map(String::as_str).collect();
            // reset-failed complains about units that are already gone; that is the goal.
            run_script(sh, "reset-failed", RESET_FAILED, &args, b"").await?;
            Ok(())
        }
    }
}

async fn systemctl<S: HostShell>(sh: &S, args: &[&str]) -> Result<(), HostError> {
    let mut argv = vec!["systemctl"];
    argv.extend_from_slice(args);
    let what = format!("systemctl {}", args.join(" "));
    run_ok(sh, &what, &argv, b"").await?;
    Ok(())
}

async fn install_executor<S: HostShell>(sh: &S, exe: &DesiredExecutor) -> Result<(), HostError> {
    let host = sh.host_name().to_string();
    // The whole binary is held in memory while it streams over SSH stdin; executors are
    // tens of MiB, and this keeps the transport trait simple.
    let bytes = tokio::fs::read(&exe.local_path)
        .await
        .map_err(|source| HostError::Local {
            host: host.clone(),
            what: format!("read executor artifact {}", exe.local_path.display()),
            source,
        })?;
    // A corrupt local cache would otherwise be detected only after the upload.
    let local = plan::sha256_hex(&bytes);
    if local != exe.sha256 {
        return Err(HostError::ChecksumMismatch {
            host,
            path: exe.local_path.display().to_string(),
            expected: exe.sha256.clone(),
            actual: local,
        });
    }
    let dir = layout::executor_dir(&exe.version);
    let out = sh
        .run(
            &["sh", "-c", UPLOAD_EXECUTOR, "fleetsnap", &dir, &exe.sha256],
            &bytes,
        )
        .await?;
    match out.code {
        Some(0) => Ok(()),
        Some(CHECKSUM_EXIT) => Err(HostError::ChecksumMismatch {
            host,
            path: exe.path.clone(),
            expected: exe.sha256.clone(),
            actual: out.stdout_text().trim().to_string(),
        }),
        code => Err(HostError::CommandFailed {
            host,
            cmd: "upload executor".into(),
            code,
            stderr_tail: stderr_tail(&out.stderr),
        }),
    }
}

/// Stage every file, then rename them all in one command. A pass killed in between leaves
/// `.<name>.fleetsnap-tmp` files, which the next pass sweeps as debris before it writes.
async fn write_credentials<S: HostShell>(sh: &S, files: &[DesiredFile]) -> Result<(), HostError> {
    for f in files {
        write_file(sh, f, &f.path, true).await?;
    }
    let dests: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    run_script(
        sh,
        "promote staged credentials",
        PROMOTE_STAGED,
        &dests,
        b"",
    )
    .await?;
    Ok(())
}

async fn write_file<S: HostShell>(
    sh: &S,
    f: &DesiredFile,
    dest: &str,
    stage: bool,
) -> Result<(), HostError> {
    let mode = format!("{:o}", f.mode);
    let encrypt_as = match &f.role {
        FileRole::Credential {
            id,
            encrypted: true,
        } => id.as_str(),
        _ => "",
    };
    // Content (including secrets) travels on stdin only.
    run_script(
        sh,
        &format!("write {dest}"),
        WRITE_FILE,
        &[
            dest,
            &mode,
            &f.owner,
            &f.group,
            encrypt_as,
            if stage { "stage" } else { "" },
        ],
        f.content.bytes(),
    )
    .await?;
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

async fn install_units<S: HostShell>(
    sh: &S,
    units: &[DesiredFile],
    changed: &[String],
) -> Result<(), HostError> {
    let staged: Vec<String> = units
        .iter()
        .map(|u| format!("{}/{}", layout::STAGING_DIR, file_name(&u.path)))
        .collect();
    for (u, dest) in units.iter().zip(&staged) {
        write_file(sh, u, dest, false).await?;
    }
    let mut argv = vec!["systemd-analyze", "verify"];
    argv.extend(staged.iter().map(String::as_str));
    let out = sh.run(&argv, b"").await?;
    if !out.success() {
        let mut text = out.stderr.clone();
        text.extend_from_slice(&out.stdout);
        // Leave nothing half-done: the installed units stay as they were.
        let mut rm = vec!["rm", "-f", "--"];
        rm.extend(staged.iter().map(String::as_str));
        let _ = sh.run(&rm, b"").await;
        return Err(HostError::VerifyFailed {
            host: sh.host_name().to_string(),
            units: units
                .iter()
                .map(|u| file_name(&u.path).to_string())
                .collect(),
            output: stderr_tail(&text),
        });
    }
    // Service before timer (plan order), so a timer never points at a missing service.
    let mut args: Vec<&str> = vec![layout::STAGING_DIR, layout::UNIT_DIR];
    for (u, stage) in units.iter().zip(&staged) {
        args.push(stage);
        args.push(if changed.contains(&u.path) { "1" } else { "0" });
    }
    run_script(sh, "install verified units", MOVE_UNITS, &args, b"").await?;
    Ok(())
}

const ENSURE_DIR: &str = r#"set -eu
mkdir -p -- "$1"
chown -- "$3:$4" "$1"
chmod -- "$2" "$1"
"#;

const SET_METADATA: &str = r#"set -eu
chown -- "$3:$4" "$1"
chmod -- "$2" "$1"
"#;

/// $1 path, $2 mode, $3 owner, $4 group, $5 credential id to encrypt as (or empty),
/// $6 `stage` to leave the finished temp file for [`PROMOTE_STAGED`] instead of renaming.
/// The temp file is created under umask 077 and only renamed into place after mode and
/// owner are final, so a secret is never readable by others even for a moment.
const WRITE_FILE: &str = r#"set -eu
dir=$(dirname -- "$1")
tmp="$dir/.$(basename -- "$1").fleetsnap-tmp"
umask 077
trap 'rm -f -- "$tmp"' EXIT
if [ -n "$5" ]; then
  systemd-creds encrypt --name="$5" - "$tmp"
else
  cat > "$tmp"
fi
chown -- "$3:$4" "$tmp"
chmod -- "$2" "$tmp"
sync -- "$tmp"
if [ "${6:-}" = stage ]; then trap - EXIT; exit 0; fi
mv -f -- "$tmp" "$1"
trap - EXIT
"#;

/// Arguments: final paths whose staged temp files (as [`WRITE_FILE`] names them) all exist;
/// they are checked first, then renamed one right after the other. (promote staged files)
const PROMOTE_STAGED: &str = r#"set -eu
# promote staged files
for f in "$@"; do
  t="$(dirname -- "$f")/.$(basename -- "$f").fleetsnap-tmp"
  [ -f "$t" ] || { echo "staged file $t is missing" >&2; exit 1; }
done
for f in "$@"; do
  mv -f -- "$(dirname -- "$f")/.$(basename -- "$f").fleetsnap-tmp" "$f"
done
"#;

/// $1 versioned dir, $2 expected sha256; binary on stdin.
const UPLOAD_EXECUTOR: &str = r#"set -eu
mkdir -p -- "$1"
tmp="$1/.fleetsnap.upload"
umask 022
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
got=$(sha256sum -- "$tmp" | cut -d' ' -f1)
if [ "$got" != "$2" ]; then echo "$got"; exit 86; fi
chown root:root "$tmp"
chmod 0755 "$tmp"
sync -- "$tmp"
mv -f -- "$tmp" "$1/fleetsnap"
trap - EXIT
"#;

/// $1 link, $2 target. `ln -sfn` alone unlinks then creates (a window without the link);
/// creating a new link and renaming it over the old one is atomic.
const SWITCH_LINK: &str = r#"set -eu
mkdir -p -- "$(dirname -- "$1")"
ln -sfn -- "$2" "$1.fleetsnap-new"
mv -T -f -- "$1.fleetsnap-new" "$1"
"#;

/// $1 staging dir, $2 unit dir, then pairs (staged file, 1 = install / 0 = discard).
const MOVE_UNITS: &str = r#"set -eu
unitdir=$2
shift 2
while [ $# -ge 2 ]; do
  if [ "$2" = 1 ]; then mv -f -- "$1" "$unitdir/$(basename -- "$1")"; else rm -f -- "$1"; fi
  shift 2
done
"#;

const RESET_FAILED: &str = r#"for u in "$@"; do systemctl reset-failed -- "$u" >/dev/null 2>&1 || true; done
"#;

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
