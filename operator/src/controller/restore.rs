//! Restore reconciler: a one-shot `fleetsnap restore` on the target host over SSH.
//!
//! Phases go Pending → Running → Succeeded | Failed and a finished Restore is never run
//! again, whatever happens to the operator. Credentials travel on the SSH session's stdin
//! into a root-only temporary directory that the script removes on exit; they never appear
//! in argv, and the AWS keys live only in the environment of the root-owned restore
//! process (readable by root alone).
//!
//! A Restore of one host's backups onto another never hands the target the source's
//! per-host keys: those could write into the source's repository (forge snapshots, say
//! future-dated ones that make retention delete the real history). The target gets a
//! read-only STS session scoped to the source's prefix and limited to the restore's time
//! instead, minted with the repository's maintenance credentials, and restores without
//! writing a lock ([`read_access`] decides, [`super::sts`] mints).

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
use super::error::{Error, Failure, Retry};
use super::identity;
use super::jobs::{self, condition};
use super::sts;
use super::summary::to_time;
use crate::host::apply::{apply_plan, gather_facts};
use crate::host::layout::JobId;
use crate::host::model::{AwsCredentials, Credentials, PolicyKind, RestCredentials, SecretBytes};
use crate::host::plan::{Action as HostAction, JobInputs, fact_query, plan_job};
use crate::host::shell::{HostShell, StdoutLimit, run_script_limited};
use crate::limits::RESTORE_STDOUT_TAIL;

pub const KIND: &str = "Restore";
const RESTORE_FAILED: &str = "RestoreFailed";

/// stdin: AWS key id, AWS secret, AWS session token, REST user and REST password lines
/// (each empty when the repository has none), then the repository password to EOF (raw
/// bytes, newlines allowed). The script exports only what is set.
///
/// The secrets directory carries the shell's PID, so a later run can tell a directory whose
/// shell was killed before its EXIT trap ran (SIGKILL, a lost SSH session) from one in use,
/// and removes the former first.
const RESTORE_SCRIPT: &str = r#"set -eu
umask 077
for old in /run/fleetsnap-restore.*; do
  [ -d "$old" ] || continue
  pid=${old#/run/fleetsnap-restore.}; pid=${pid%%.*}
  case $pid in
  ''|*[!0-9]*) rm -rf -- "$old" ;;
  *) kill -0 "$pid" 2>/dev/null || rm -rf -- "$old" ;;
  esac
done
d=$(mktemp -d "/run/fleetsnap-restore.$$.XXXXXX")
trap 'rm -rf -- "$d"' EXIT
IFS= read -r ak || true
IFS= read -r sk || true
IFS= read -r tok || true
IFS= read -r ru || true
IFS= read -r rp || true
cat > "$d/password"
repo=$1; snap=$2; target=$3; host=$4; shift 4
unset AWS_SESSION_TOKEN RESTIC_REST_USERNAME RESTIC_REST_PASSWORD
if [ -n "$ak" ]; then
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  if [ -n "$tok" ]; then
    AWS_SESSION_TOKEN=$tok
    export AWS_SESSION_TOKEN
  fi
fi
if [ -n "$ru" ]; then
  RESTIC_REST_USERNAME=$ru RESTIC_REST_PASSWORD=$rp
  export RESTIC_REST_USERNAME RESTIC_REST_PASSWORD
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

/// Which credential the target host reads the source's repository with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccess {
    /// What the target host is given for its own backups: its own per-host keys, the
    /// repository's shared keys, its own credential chain, or (local, REST) nothing beyond
    /// what every host of the repository already holds. Nothing new reaches the target.
    TargetOwn,
    /// Per-host keys and another host's backups: a read-only, time-limited STS session on
    /// the source's prefix, minted with the maintenance credentials in `secret`.
    ReadOnlySession {
        secret: String,
        bucket: String,
        prefix: String,
    },
    /// No credential that is safe to hand over: the message says what to configure.
    Refuse(String),
}

/// The decision table: same host → its own; another host's backups with per-host S3 keys →
/// a read-only session if maintenance credentials exist, else refused; anything else → the
/// target's own (shared keys the target already holds, or no keys at all).
pub fn read_access(
    repo: &BackupRepository,
    target_hostname: &str,
    source_hostname: &str,
    namespace: &str,
) -> ReadAccess {
    if source_hostname == target_hostname {
        return ReadAccess::TargetOwn;
    }
    let Some(s3) = &repo.spec.s3 else {
        return ReadAccess::TargetOwn;
    };
    if s3.credentials_secret_ref.is_some() || s3.per_host_credentials.is_none() {
        return ReadAccess::TargetOwn;
    }
    let prefix = match repo.spec.host_path(source_hostname, namespace) {
        Ok(p) => p,
        Err(e) => return ReadAccess::Refuse(format!("source.hostname: {e}")),
    };
    match &repo.spec.maintenance_credentials_secret_ref {
        Some(m) => ReadAccess::ReadOnlySession {
            secret: m.name.clone(),
            bucket: s3.bucket.clone(),
            prefix,
        },
        None => ReadAccess::Refuse(format!(
            "restoring {source_hostname:?}'s backups onto {target_hostname:?} would hand \
             {target_hostname:?} the per-host keys of {source_hostname:?}, which can write into \
             its repository; set maintenanceCredentialsSecretRef on BackupRepository {:?} (keys \
             of a non-root storage user that may call STS AssumeRole and read {prefix:?}) so \
             the operator can mint a read-only, time-limited credential for that prefix",
            repo.metadata.name.as_deref().unwrap_or_default()
        )),
    }
}

/// Where the operator reaches STS: the S3 endpoint as the operator sees it (MinIO serves
/// STS at its S3 endpoint), which `FLEETSNAP_MAINTENANCE_S3_ENDPOINT` overrides as for
/// operator-side maintenance.
pub fn sts_endpoint(s3_endpoint: &str, override_endpoint: Option<&str>) -> String {
    match override_endpoint {
        Some(o) if !o.trim().is_empty() => o.trim().trim_end_matches('/').to_string(),
        _ => s3_endpoint.trim_end_matches('/').to_string(),
    }
}

/// What the restore script reads from stdin, in order: five lines (AWS key id, secret,
/// session token, REST user, REST password; each empty when absent), then the repository
/// password to EOF. A key with a line break inside would shift every later line, so it is
/// refused, naming only which key it was.
pub fn script_stdin(
    aws: Option<&AwsCredentials>,
    rest: Option<&RestCredentials>,
    password: &SecretBytes,
) -> Result<Vec<u8>, String> {
    let empty = SecretBytes::new("");
    let lines: [(&str, &SecretBytes); 5] = [
        (
            "AWS_ACCESS_KEY_ID",
            aws.map_or(&empty, |a| &a.access_key_id),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            aws.map_or(&empty, |a| &a.secret_access_key),
        ),
        (
            "AWS_SESSION_TOKEN",
            aws.and_then(|a| a.session_token.as_ref()).unwrap_or(&empty),
        ),
        ("username", rest.map_or(&empty, |r| &r.username)),
        ("password", rest.map_or(&empty, |r| &r.password)),
    ];
    let mut stdin = Vec::new();
    for (what, value) in lines {
        let v = value.expose().trim_ascii();
        if v.contains(&b'\n') || v.contains(&b'\r') {
            return Err(format!("the credential {what} contains a line break"));
        }
        stdin.extend_from_slice(v);
        stdin.push(b'\n');
    }
    stdin.extend_from_slice(password.expose());
    Ok(stdin)
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
    result: Result<Summary, (&'static str, String)>,
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
        Err((reason, msg)) => {
            status.phase = Some(RestorePhase::Failed);
            status.error = Some(msg.clone());
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(false),
                reason,
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
        Step::Refuse(msg) => {
            return finish(ctx, restore, status, Err((RESTORE_FAILED, msg)), None).await;
        }
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
    let source_hostname = source_hostname(restore, &host);
    let access = read_access(&repo, host.effective_hostname(), &source_hostname, ns);
    if let ReadAccess::Refuse(msg) = access {
        return finish(
            ctx,
            restore,
            status,
            Err((reasons::CROSS_HOST_CREDENTIALS, msg)),
            None,
        )
        .await;
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
    match restore_on_host(ctx, restore, &host, &repo, ns, &source_hostname, &access).await {
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
        Err(f) if f.reason == reasons::CROSS_HOST_CREDENTIALS => {
            finish(ctx, restore, status, Err((f.reason, f.message)), Some(t0)).await
        }
        Err(f) => {
            finish(
                ctx,
                restore,
                status,
                Err((RESTORE_FAILED, format!("{}: {}", f.reason, f.message))),
                Some(t0),
            )
            .await
        }
    }
}

/// The host whose backups are restored: `source.hostname`, by default the target's own.
fn source_hostname(restore: &Restore, target: &Host) -> String {
    restore
        .spec
        .source
        .hostname
        .clone()
        .unwrap_or_else(|| target.effective_hostname().to_string())
}

/// A read-only session on `prefix`, from the maintenance keys in Secret `secret`.
async fn mint_read_only(
    ctx: &Context,
    repo: &BackupRepository,
    secret: &str,
    bucket: &str,
    prefix: &str,
    secrets: &derive::Secrets,
    target: &str,
) -> Result<sts::TemporaryCredentials, Failure> {
    let refused = |message: String| Failure {
        reason: reasons::CROSS_HOST_CREDENTIALS,
        message,
        retry: Retry::OnChange,
    };
    let s3 = repo
        .spec
        .s3
        .as_ref()
        .ok_or_else(|| refused("the repository has no s3 backend".into()))?;
    let key = |k: &str| fleetsnap_crds::common::SecretKeyRef {
        name: secret.to_string(),
        key: k.into(),
    };
    let get = |k: &str| derive::secret_value(secrets, &key(k)).map_err(|e| refused(e.message));
    let (ak, sk) = (get("AWS_ACCESS_KEY_ID")?, get("AWS_SECRET_ACCESS_KEY")?);
    let override_ = std::env::var("FLEETSNAP_MAINTENANCE_S3_ENDPOINT").ok();
    let endpoint = sts_endpoint(&s3.endpoint, override_.as_deref());
    let duration = sts::session_duration(ctx.host_timeout);
    let policy = sts::read_only_policy(bucket, prefix);
    let creds = sts::assume_role_within(sts::AssumeRole {
        endpoint: &endpoint,
        region: &s3.region,
        access_key_id: &ak,
        secret_access_key: &sk,
        policy,
        role_arn: None,
        duration,
        session_name: sts::session_name("fleetsnap-restore-", target),
    })
    .await
    .map_err(|e| {
        refused(format!(
            "cannot mint a read-only credential for {prefix:?} with the maintenance \
             credentials (Secret {secret:?}): {e}"
        ))
    })?;
    info!(
        prefix,
        lifetime_seconds = duration.as_secs(),
        expires = ?creds.expiration,
        "read-only cross-host restore credential minted"
    );
    Ok(creds)
}

async fn restore_on_host(
    ctx: &Context,
    restore: &Restore,
    host: &Host,
    repo: &BackupRepository,
    ns: &str,
    source_hostname: &str,
    access: &ReadAccess,
) -> Result<Summary, Failure> {
    let mut names = vec![
        host.spec.ssh_key_secret_ref.name.clone(),
        repo.spec.password_secret_ref.name.clone(),
    ];
    match access {
        ReadAccess::TargetOwn => names.extend(derive::referenced_secrets(host, repo)),
        ReadAccess::ReadOnlySession { secret, .. } => names.push(secret.clone()),
        ReadAccess::Refuse(msg) => {
            return Err(Failure {
                reason: reasons::CROSS_HOST_CREDENTIALS,
                message: msg.clone(),
                retry: Retry::OnChange,
            });
        }
    }
    names.sort();
    names.dedup();
    let secrets = jobs::read_secrets(ctx, ns, &names).await?;
    let target = derive::host_target(host, &secrets).map_err(|e| Failure::from_derive(&e))?;
    let password = derive::secret_value(&secrets, &repo.spec.password_secret_ref)
        .map_err(|e| Failure::from_derive(&e))?;
    let url =
        derive::repository_url(repo, source_hostname, ns).map_err(|e| Failure::from_derive(&e))?;
    let mut extra = Vec::new();
    let stdin = match access {
        ReadAccess::ReadOnlySession {
            secret,
            bucket,
            prefix,
        } => {
            let t =
                mint_read_only(ctx, repo, secret, bucket, prefix, &secrets, &target.name).await?;
            // A read-only identity cannot write a lock; the executor still honours an
            // exclusive one.
            extra.push("--no-lock".to_string());
            let session = AwsCredentials {
                access_key_id: t.access_key_id,
                secret_access_key: t.secret_access_key,
                session_token: Some(t.session_token),
            };
            script_stdin(Some(&session), None, &password)
        }
        _ => {
            // The host's own key, as for its backups (minted for operatorSts repositories).
            let own = super::host_credentials::resolve(ctx, repo, host, &secrets, None)
                .await?
                .credentials;
            script_stdin(own.aws.as_ref(), own.rest.as_ref(), &password)
        }
    }
    .map_err(|message| Failure {
        reason: reasons::REPOSITORY_ERROR,
        message,
        retry: Retry::OnChange,
    })?;
    // The install plan below keeps only the executor steps; it needs no storage keys.
    let creds = Credentials {
        repository_password: password,
        aws: None,
        rest: None,
        expires: None,
    };
    let args: Vec<String> = [
        url,
        restore.spec.source.snapshot.clone(),
        restore.spec.target_directory.clone(),
        source_hostname.to_string(),
    ]
    .into_iter()
    .chain(extra)
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
            max_runtime: None,
            lock_wait: None,
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
            let mut plan = plan_job(&inputs, &facts).map_err(|e| e.for_host(sh.host_name()))?;
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
    use fleetsnap_crds::common::{LocalObjectRef, SecretKeyRef, SecretRef};
    use fleetsnap_crds::repository::{
        BackupRepositorySpec, LocalBackend, PerHostCredentials, S3Backend,
    };
    use fleetsnap_crds::restore::{RestoreSource, RestoreSpec};

    /// An S3 repository; `shared` or `per_host` keys, `maintenance` keys or not.
    fn repo(shared: bool, per_host: bool, maintenance: bool) -> BackupRepository {
        BackupRepository::new(
            "minio",
            BackupRepositorySpec {
                s3: Some(S3Backend {
                    endpoint: "http://minio:9000".into(),
                    region: "us-east-1".into(),
                    bucket: "backups".into(),
                    path_style: true,
                    credentials_secret_ref: shared.then(|| SecretRef { name: "s3".into() }),
                    per_host_credentials: per_host.then(|| PerHostCredentials {
                        secret_name_template: "s3-{host}".into(),
                    }),
                    credential_process: None,
                    operator_sts: None,
                }),
                local: None,
                rest: None,
                path_template: "{namespace}/hosts/{hostname}".into(),
                password_secret_ref: SecretKeyRef {
                    name: "pw".into(),
                    key: "password".into(),
                },
                append_only: maintenance,
                maintenance_credentials_secret_ref: maintenance.then(|| SecretRef {
                    name: "maint".into(),
                }),
                object_lock: None,
            },
        )
    }

    #[test]
    fn cross_host_restores_never_get_the_source_hosts_keys() {
        // Own backups: the target's own credentials, whatever the repository.
        for r in [
            repo(false, true, true),
            repo(false, true, false),
            repo(true, false, false),
        ] {
            assert_eq!(read_access(&r, "db1", "db1", "ns"), ReadAccess::TargetOwn);
        }
        // Another host's backups with per-host keys and maintenance keys: a read-only
        // session on exactly the source's prefix, minted with the maintenance Secret.
        assert_eq!(
            read_access(&repo(false, true, true), "db2", "db1", "ns"),
            ReadAccess::ReadOnlySession {
                secret: "maint".into(),
                bucket: "backups".into(),
                prefix: "ns/hosts/db1".into(),
            }
        );
        // ... without maintenance keys: refused, naming what to configure.
        match read_access(&repo(false, true, false), "db2", "db1", "ns") {
            ReadAccess::Refuse(m) => {
                assert!(m.contains("maintenanceCredentialsSecretRef"), "{m}");
                assert!(m.contains("\"db1\"") && m.contains("\"db2\""), "{m}");
            }
            other => panic!("{other:?}"),
        }
        // Shared keys (every host holds them already), the host's own credential chain, and
        // local or REST backends: nothing new reaches the target.
        assert_eq!(
            read_access(&repo(true, false, true), "db2", "db1", "ns"),
            ReadAccess::TargetOwn
        );
        assert_eq!(
            read_access(&repo(false, false, false), "db2", "db1", "ns"),
            ReadAccess::TargetOwn
        );
        let mut local = repo(false, false, false);
        local.spec.s3 = None;
        local.spec.local = Some(LocalBackend {
            path: "/srv/backup".into(),
        });
        assert_eq!(
            read_access(&local, "db2", "db1", "ns"),
            ReadAccess::TargetOwn
        );
        // A source hostname that would escape its path segment is refused, not expanded.
        assert!(matches!(
            read_access(&repo(false, true, true), "db2", "../db1", "ns"),
            ReadAccess::Refuse(_)
        ));
    }

    #[test]
    fn sts_endpoint_prefers_the_operator_side_override() {
        assert_eq!(
            sts_endpoint("http://minio:9000/", None),
            "http://minio:9000"
        );
        assert_eq!(
            sts_endpoint("http://minio:9000", Some("http://127.0.0.1:9000/")),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            sts_endpoint("http://minio:9000", Some(" ")),
            "http://minio:9000"
        );
    }

    #[test]
    fn script_stdin_has_five_key_lines_then_the_password() {
        let aws = AwsCredentials {
            access_key_id: SecretBytes::new("AK"),
            secret_access_key: SecretBytes::new("SK\n"),
            session_token: Some(SecretBytes::new("TOK")),
        };
        let rest = RestCredentials {
            username: SecretBytes::new("u"),
            password: SecretBytes::new("p"),
        };
        let pw = SecretBytes::new("pass\nword");
        assert_eq!(
            script_stdin(Some(&aws), None, &pw).unwrap(),
            b"AK\nSK\nTOK\n\n\npass\nword"
        );
        let long_lived = AwsCredentials {
            session_token: None,
            ..aws.clone()
        };
        assert_eq!(
            script_stdin(Some(&long_lived), None, &pw).unwrap(),
            b"AK\nSK\n\n\n\npass\nword"
        );
        assert_eq!(
            script_stdin(None, Some(&rest), &pw).unwrap(),
            b"\n\n\nu\np\npass\nword"
        );
        assert_eq!(
            script_stdin(None, None, &pw).unwrap(),
            b"\n\n\n\n\npass\nword"
        );
        let broken = RestCredentials {
            password: SecretBytes::new("a\nb"),
            ..rest
        };
        let err = script_stdin(None, Some(&broken), &pw).unwrap_err();
        assert!(err.contains("password") && !err.contains("a\nb"), "{err}");
        // The script reads exactly those five lines before the password.
        assert_eq!(RESTORE_SCRIPT.matches("IFS= read -r").count(), 5);
        assert!(RESTORE_SCRIPT.contains("export AWS_SESSION_TOKEN"));
        assert!(RESTORE_SCRIPT.contains("export RESTIC_REST_USERNAME RESTIC_REST_PASSWORD"));
    }

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
