//! Restore reconciler: a one-shot `fleetsnap restore` on the target host over SSH.
//!
//! Phases go Pending → Running → Succeeded | Failed and a finished Restore is never run
//! again, whatever happens to the operator. Credentials travel on the SSH session's stdin
//! into a root-only temporary directory that the script removes on exit; they never appear
//! in argv, and the AWS keys live only in the environment of the root-owned restore
//! process (readable by root alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetsnap_crds::common::{condition_types, reasons};
use fleetsnap_crds::restore::{Restore, RestorePhase, RestoreStatus};
use fleetsnap_crds::{BackupRepository, Host};
use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::derive;
use super::error::{Error, Failure};
use super::identity;
use super::jobs::{self, condition};
use super::summary::to_time;
use crate::host::apply::{apply_plan, gather_facts};
use crate::host::layout::JobId;
use crate::host::model::{Credentials, PolicyKind};
use crate::host::plan::{Action as HostAction, JobInputs, fact_query, plan_job};
use crate::host::shell::{HostShell, StdoutLimit, run_script_limited};
use crate::limits::RESTORE_STDOUT_TAIL;

pub const KIND: &str = "Restore";

/// stdin: AWS key id line, AWS secret line (both empty without static keys), then the
/// repository password to EOF (raw bytes, newlines allowed).
const RESTORE_SCRIPT: &str = r#"set -eu
umask 077
d=$(mktemp -d /run/fleetsnap-restore.XXXXXX)
trap 'rm -rf -- "$d"' EXIT
IFS= read -r ak || true
IFS= read -r sk || true
cat > "$d/password"
repo=$1; snap=$2; target=$3; host=$4; shift 4
if [ -n "$ak" ]; then
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
fi
mkdir -p -- "$target"
set -- --host "$host" "$@"
/usr/local/bin/fleetsnap -r "$repo" --password-file "$d/password" --json restore "$snap" --target "$target" "$@"
"#;

/// What the reconcile should do with a Restore in its current state.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Already finished: never run again.
    Done,
    /// Refuse without touching the host.
    Refuse(String),
    Run,
}

pub fn next_step(restore: &Restore) -> Step {
    let phase = restore.status.as_ref().and_then(|s| s.phase);
    if matches!(phase, Some(RestorePhase::Succeeded | RestorePhase::Failed)) {
        return Step::Done;
    }
    if !restore.spec.target_allowed() {
        return Step::Refuse(format!(
            "targetDirectory {:?} is a live system path; restore into a scratch directory or set allowLiveSystemPaths: true",
            restore.spec.target_directory
        ));
    }
    Step::Run
}

/// The executor's restore arguments after the repository, snapshot, target and host.
pub fn include_args(restore: &Restore) -> Vec<String> {
    restore
        .spec
        .include
        .iter()
        .flat_map(|p| ["--include".to_string(), p.clone()])
        .collect()
}

/// What the executor's `--json` restore summary (its last JSON line) reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: i64,
    pub bytes: i64,
    /// The full ID of the snapshot restored (what `latest` resolved to).
    pub snapshot_id: Option<String>,
}

pub fn parse_summary(stdout: &str) -> Summary {
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.trim())
                .ok()
                .filter(|v| v.is_object())
        })
        .map(|v| Summary {
            files: v["files"].as_i64().unwrap_or(0),
            bytes: v["bytes"].as_i64().unwrap_or(0),
            // From the host: kept only if it is a snapshot ID (64 hex digits at most).
            snapshot_id: v["snapshot_id"]
                .as_str()
                .filter(|id| {
                    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .map(str::to_owned),
        })
        .unwrap_or_default()
}

pub async fn reconcile(restore: Arc<Restore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = restore.namespace().ok_or(Error::NoNamespace)?;
    let span = info_span!("reconcile", kind = KIND, namespace = %ns, restore = %restore.name_any());
    let r = async {
        ctx.caches_ready().await;
        run(&restore, &ctx, &ns).await
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_took(KIND, started.elapsed().as_secs_f64());
    r
}

pub fn error_policy(restore: Arc<Restore>, err: &Error, ctx: Arc<Context>) -> Action {
    let (attempt, action) = ctx.reconcile_failed(KIND, restore.as_ref(), err);
    warn!(restore = %restore.name_any(), error = %err, attempt, "reconcile failed");
    action
}

async fn write(ctx: &Context, restore: &Restore, status: &RestoreStatus) -> Result<(), Error> {
    let changed = restore.status.as_ref() != Some(status);
    jobs::write_status(
        ctx,
        restore,
        KIND,
        changed,
        serde_json::to_value(status).unwrap_or_default(),
    )
    .await
}

async fn finish(
    ctx: &Context,
    restore: &Restore,
    mut status: RestoreStatus,
    result: Result<Summary, String>,
    t0: Option<Instant>,
) -> Result<Action, Error> {
    let gen_ = restore.metadata.generation;
    status.completion_time = Some(to_time(Utc::now()));
    if let Some(t0) = t0 {
        status.duration_seconds = Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    }
    let obj = restore.object_ref(&());
    match result {
        Ok(Summary {
            files,
            bytes,
            snapshot_id,
        }) => {
            status.phase = Some(RestorePhase::Succeeded);
            status.snapshot_id = snapshot_id;
            status.files_restored = files;
            status.bytes_restored = bytes;
            status.error = None;
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(true),
                reasons::SUCCEEDED,
                format!("restored {files} files, {bytes} bytes"),
                gen_,
            );
            jobs::event(
                ctx,
                &obj,
                false,
                "RestoreSucceeded",
                format!(
                    "restored {files} files ({bytes} bytes) into {}",
                    restore.spec.target_directory
                ),
            )
            .await;
        }
        Err(msg) => {
            status.phase = Some(RestorePhase::Failed);
            status.error = Some(msg.clone());
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(false),
                "RestoreFailed",
                msg.clone(),
                gen_,
            );
            jobs::event(ctx, &obj, true, "RestoreFailed", msg).await;
        }
    }
    write(ctx, restore, &status).await?;
    Ok(Action::await_change())
}

async fn run(restore: &Restore, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let mut status = restore.status.clone().unwrap_or_default();
    status.observed_generation = restore.metadata.generation;
    match next_step(restore) {
        Step::Done => return Ok(Action::await_change()),
        Step::Refuse(msg) => return finish(ctx, restore, status, Err(msg), None).await,
        Step::Run => {}
    }
    let host = ctx
        .hosts
        .get(&ObjectRef::new(&restore.spec.host_ref.name).within(ns));
    let repo = ctx
        .repos
        .get(&ObjectRef::new(&restore.spec.repository_ref.name).within(ns));
    let (Some(host), Some(repo)) = (host, repo) else {
        // Pending until both exist: a Restore may be applied together with its Host.
        status.phase = Some(RestorePhase::Pending);
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::REFERENCE_NOT_FOUND,
            format!(
                "waiting for Host {:?} and BackupRepository {:?}",
                restore.spec.host_ref.name, restore.spec.repository_ref.name
            ),
            restore.metadata.generation,
        );
        write(ctx, restore, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    // A Host refused as a duplicate identity gets nothing run on it; the Restore waits
    // for the refusal to end (the other Host deleted), as for a missing Host.
    if let Some(message) = identity::refused_in_namespace(ctx, ns).get(&host.name_any()) {
        status.phase = Some(RestorePhase::Pending);
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::DUPLICATE_HOST,
            message.clone(),
            restore.metadata.generation,
        );
        write(ctx, restore, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    status.phase = Some(RestorePhase::Running);
    status.start_time = Some(to_time(Utc::now()));
    condition(
        &mut status.conditions,
        condition_types::READY,
        Some(false),
        reasons::PROGRESSING,
        "restore running on the host",
        restore.metadata.generation,
    );
    write(ctx, restore, &status).await?;
    let t0 = Instant::now();
    match restore_on_host(ctx, restore, &host, &repo, ns).await {
        Ok(summary) => {
            info!(files = summary.files, bytes = summary.bytes, snapshot = ?summary.snapshot_id, "restore succeeded");
            finish(ctx, restore, status, Ok(summary), Some(t0)).await
        }
        // Transport trouble is retried; the restore itself is idempotent on its target
        // directory. Anything else is final.
        Err(f) if f.is_transient() && f.reason == reasons::HOST_UNREACHABLE => {
            warn!(reason = f.reason, message = %f.message, "host unreachable; restore retried");
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Err(f) => {
            finish(
                ctx,
                restore,
                status,
                Err(format!("{}: {}", f.reason, f.message)),
                Some(t0),
            )
            .await
        }
    }
}

/// Credentials for reading the source host's repository: with per-host keys the source
/// host's own (read access to its own prefix), else the repository's shared ones.
fn source_credentials(
    ctx: &Context,
    repo: &BackupRepository,
    target: &Host,
    source_hostname: &str,
    ns: &str,
    secrets: &derive::Secrets,
) -> Result<Credentials, Failure> {
    let source_host = ctx
        .hosts
        .state()
        .into_iter()
        .find(|h| h.namespace().as_deref() == Some(ns) && h.effective_hostname() == source_hostname)
        .unwrap_or_else(|| Arc::new(target.clone()));
    derive::credentials(repo, &source_host, secrets).map_err(|e| Failure::from_derive(&e))
}

async fn restore_on_host(
    ctx: &Context,
    restore: &Restore,
    host: &Host,
    repo: &BackupRepository,
    ns: &str,
) -> Result<Summary, Failure> {
    let source_hostname = restore
        .spec
        .source
        .hostname
        .clone()
        .unwrap_or_else(|| host.effective_hostname().to_string());
    let mut names = derive::referenced_secrets(host, repo);
    if let Some(h) =
        ctx.hosts.state().into_iter().find(|h| {
            h.namespace().as_deref() == Some(ns) && h.effective_hostname() == source_hostname
        })
    {
        names.extend(derive::referenced_secrets(&h, repo));
    }
    let secrets = jobs::read_secrets(ctx, ns, &names).await?;
    let target = derive::host_target(host, &secrets).map_err(|e| Failure::from_derive(&e))?;
    let creds = source_credentials(ctx, repo, host, &source_hostname, ns, &secrets)?;
    let url =
        derive::repository_url(repo, &source_hostname, ns).map_err(|e| Failure::from_derive(&e))?;
    let mut stdin = Vec::new();
    if let Some(aws) = &creds.aws {
        stdin.extend_from_slice(aws.access_key_id.expose());
        stdin.push(b'\n');
        stdin.extend_from_slice(aws.secret_access_key.expose());
        stdin.push(b'\n');
    } else {
        stdin.extend_from_slice(b"\n\n");
    }
    stdin.extend_from_slice(creds.repository_password.expose());
    let args: Vec<String> = [
        url,
        restore.spec.source.snapshot.clone(),
        restore.spec.target_directory.clone(),
        source_hostname,
    ]
    .into_iter()
    .chain(include_args(restore))
    .collect();
    // The executor must be on the host even when no policy installed it yet: plan a
    // throwaway job and keep only the executor steps.
    let install_spec = jobs::job_spec(
        PolicyKind::Verify,
        "restore",
        &fleetsnap_crds::common::Schedule {
            on_calendar: "daily".into(),
            randomized_delay: None,
            persistent: false,
        },
        host,
        repo,
        vec![],
    )
    .map_err(|e| Failure::from_derive(&e))?;
    let job = JobId::new(PolicyKind::Verify, "restore").expect("constant name");
    let artifact = ctx.artifact.clone();
    let key = format!("{ns}/{}", host.name_any());
    let exe_dir = crate::host::layout::executor_dir(&artifact.version);
    let work = ctx.pool.with_host(&key, &target, |sh| {
        let (args, stdin, job, artifact, install_spec, creds, exe_dir) = (
            args.clone(),
            stdin.clone(),
            job.clone(),
            artifact.clone(),
            install_spec.clone(),
            creds.clone(),
            exe_dir.clone(),
        );
        async move {
            let facts = gather_facts(sh, &fact_query(&job, Some(&artifact))).await?;
            let inputs = JobInputs {
                artifact: &artifact,
                policy: &install_spec,
                credentials: &creds,
            };
            let mut plan = plan_job(&inputs, &facts).map_err(|detail| {
                crate::host::HostError::InvalidSpec {
                    host: sh.host_name().to_string(),
                    detail,
                }
            })?;
            plan.actions.retain(|a| match a {
                HostAction::InstallExecutor(_) | HostAction::SwitchExecutorLink { .. } => true,
                HostAction::EnsureDir(d) => exe_dir.starts_with(&d.path) || d.path == exe_dir,
                _ => false,
            });
            plan.desired = None;
            apply_plan(sh, &plan).await?;
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            // Progress lines may be many; the summary is the last line, so keep the tail.
            run_script_limited(
                sh,
                "fleetsnap restore",
                RESTORE_SCRIPT,
                &argv,
                &stdin,
                StdoutLimit::Tail(RESTORE_STDOUT_TAIL),
            )
            .await
        }
        .boxed()
    });
    match tokio::time::timeout(ctx.host_timeout, work).await {
        Err(_) => Err(Failure::timeout(&target.name, ctx.host_timeout)),
        Ok(Err(e)) => Err(Failure::from_host(&e)),
        Ok(Ok(out)) => Ok(parse_summary(&out.stdout_text())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_crds::common::LocalObjectRef;
    use fleetsnap_crds::restore::{RestoreSource, RestoreSpec};

    fn restore(target: &str, allow: bool, phase: Option<RestorePhase>) -> Restore {
        let mut r = Restore::new(
            "r1",
            RestoreSpec {
                host_ref: LocalObjectRef { name: "h".into() },
                repository_ref: LocalObjectRef {
                    name: "repo".into(),
                },
                source: RestoreSource::default(),
                include: vec!["/etc".into(), "/srv/app".into()],
                target_directory: target.into(),
                allow_live_system_paths: allow,
            },
        );
        r.status = phase.map(|p| RestoreStatus {
            phase: Some(p),
            ..Default::default()
        });
        r
    }

    #[test]
    fn finished_restores_never_run_again() {
        assert_eq!(
            next_step(&restore("/var/tmp/r", false, Some(RestorePhase::Succeeded))),
            Step::Done
        );
        assert_eq!(
            next_step(&restore("/var/tmp/r", false, Some(RestorePhase::Failed))),
            Step::Done
        );
        // Running after an operator restart: run again (restore is idempotent on its target).
        assert_eq!(
            next_step(&restore("/var/tmp/r", false, Some(RestorePhase::Running))),
            Step::Run
        );
        assert_eq!(next_step(&restore("/var/tmp/r", false, None)), Step::Run);
    }

    #[test]
    fn live_system_targets_need_explicit_permission() {
        assert!(
            matches!(next_step(&restore("/etc", false, None)), Step::Refuse(m) if m.contains("allowLiveSystemPaths"))
        );
        assert_eq!(next_step(&restore("/", true, None)), Step::Run);
    }

    #[test]
    fn includes_and_counts() {
        assert_eq!(
            include_args(&restore("/var/tmp/r", false, None)).join(" "),
            "--include /etc --include /srv/app"
        );
        let out = "progress\n{\"files\":12,\"dirs\":3,\"other\":0,\"bytes\":4096,\"snapshot_id\":\"ab12\"}\n";
        assert_eq!(
            parse_summary(out),
            Summary {
                files: 12,
                bytes: 4096,
                snapshot_id: Some("ab12".into())
            }
        );
        // An older executor without the ID still reports its counts.
        let old = "{\"files\":1,\"bytes\":2}";
        assert_eq!(
            (parse_summary(old).files, parse_summary(old).snapshot_id),
            (1, None)
        );
        assert_eq!(parse_summary("nothing"), Summary::default());
    }

    /// The summary line comes from the host: a snapshot ID that is not one is dropped
    /// rather than copied into status.
    #[test]
    fn summary_fields_from_the_host_are_bounded() {
        let out = format!(
            "{{\"files\":1,\"bytes\":2,\"snapshot_id\":\"{}\"}}",
            "a".repeat(1 << 20)
        );
        let s = parse_summary(&out);
        assert_eq!((s.files, s.bytes), (1, 2));
        assert_eq!(s.snapshot_id, None);
        let ok = format!(
            "{{\"files\":1,\"bytes\":2,\"snapshot_id\":\"{}\"}}",
            "ab".repeat(32)
        );
        assert_eq!(parse_summary(&ok).snapshot_id, Some("ab".repeat(32)));
    }
}
