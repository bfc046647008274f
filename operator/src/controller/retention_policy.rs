//! RetentionPolicy reconciler.
//!
//! `runOn: Host` installs a retention timer on every targeted host, through the same
//! plan/apply pipeline as backups. `runOn: Operator` keeps hosts out of deletion entirely:
//! the operator runs forget + prune itself, on the policy's calendar, with the repository's
//! maintenance credentials, one run per repository at a time. That is what makes
//! append-only repositories possible: no host ever holds a key that can delete.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetsnap::snapshot_times::Tolerance;
use fleetsnap_crds::Host;
use fleetsnap_crds::common::{condition_types, reasons};
use fleetsnap_crds::host::PolicyKind as CrdKind;
use fleetsnap_crds::repository::BackupRepository;
use fleetsnap_crds::retention_policy::{
    RetentionPolicy, RetentionPolicyStatus, RunError, RunOn, SnapshotTimes, TimeTrust,
};
use futures::future::join_all;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::derive::{self, Secrets};
use super::error::{Error, Failure};
use super::host_job::{self, MAX_RESYNC};
use super::host_status;
use super::jobs::{self, condition};
use super::maintenance::{self, Calendar, MaintenanceJob, MaintenanceReport};
use super::summary::{self, to_time};
use super::units::UnitMode;
use crate::host::model::PolicyKind;
use crate::metrics::{PolicyHostLabels, PolicyLabels};

pub const KIND: &str = "RetentionPolicy";
const MIN_RESYNC: Duration = Duration::from_secs(5);
/// A repository locked by a running backup is tried again after this long.
const LOCKED_RETRY: Duration = Duration::from_secs(60);
/// Condition reason for a spec that cannot work as written.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Spec problems found without touching any host or repository.
pub fn spec_problem(
    policy: &RetentionPolicy,
    repo: &BackupRepository,
) -> Option<(&'static str, String)> {
    let spec = &policy.spec;
    if spec.keep.keeps_nothing() {
        return Some((
            INVALID_SPEC,
            "keep has no rule; refusing to forget every snapshot".into(),
        ));
    }
    let minted = repo
        .spec
        .s3
        .as_ref()
        .is_some_and(|s| s.operator_sts.is_some());
    match spec.run_on {
        RunOn::Host if minted => Some((
            INVALID_SPEC,
            format!(
                "BackupRepository {:?} gives its hosts keys minted by the operator (s3.operatorSts), \
                 which cannot delete: set runOn: Operator",
                repo.name_any()
            ),
        )),
        RunOn::Host if repo.spec.append_only => Some((
            INVALID_SPEC,
            format!(
                "BackupRepository {:?} is append-only: its hosts hold credentials that cannot delete, \
                 so retention cannot run on them; set runOn: Operator (the operator then uses the \
                 repository's maintenanceCredentialsSecretRef)",
                repo.name_any()
            ),
        )),
        RunOn::Operator => {
            if let Err(e) = Calendar::parse(&spec.schedule.on_calendar) {
                return Some((
                    reasons::INVALID_SCHEDULE,
                    format!("schedule.onCalendar {:?}: {e}", spec.schedule.on_calendar),
                ));
            }
            if repo.spec.local.is_some() {
                return Some((
                    INVALID_SPEC,
                    "a local repository lives on each host, out of the operator's reach: use runOn: Host".into(),
                ));
            }
            // The operator needs an identity of its own: the maintenance keys, the shared
            // S3 keys, its own AWS chain (no keys named at all), or a REST server's login
            // (or an open server). Per-host keys and a host-side broker are the hosts' own.
            let has_keys = repo.spec.maintenance_credentials_secret_ref.is_some()
                || repo.spec.rest.is_some()
                || repo.spec.s3.as_ref().is_some_and(|s| {
                    s.credentials_secret_ref.is_some()
                        || (s.per_host_credentials.is_none() && s.credential_process.is_none())
                });
            if repo.spec.append_only && repo.spec.maintenance_credentials_secret_ref.is_none() {
                return Some((
                    INVALID_SPEC,
                    format!(
                        "BackupRepository {:?} is append-only but has no maintenanceCredentialsSecretRef; \
                         operator-side retention needs credentials that may delete",
                        repo.name_any()
                    ),
                ));
            }
            if !has_keys {
                return Some((
                    INVALID_SPEC,
                    "operator-side retention needs maintenanceCredentialsSecretRef (or shared credentials) on the repository".into(),
                ));
            }
            trust(&spec.snapshot_times).err().map(|m| (INVALID_SPEC, m))
        }
        RunOn::Host => None,
    }
}

/// When the next operator-side run is due: the first calendar instant after the last run,
/// or after the policy was created for a policy that never ran.
pub fn next_run(
    cal: &Calendar,
    last_run: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    cal.next_after(last_run.unwrap_or(created))
}

fn time_to_chrono(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

// Cleanup removes from exactly the recorded hosts (those with this policy's `Host.status`
// entry, or an older status's `installedHosts`), whatever `runOn` says now.
host_job::host_job_kind!(
    RetentionPolicy,
    RetentionPolicyStatus,
    RunError,
    kind: KIND,
    job: PolicyKind::Retention,
    removal_pending: "removing the host-side retention job is pending: ",
    apply: apply,
    note: |host, message| RunError {
        host,
        message,
        time: None,
    },
);

async fn apply(policy: &RetentionPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let gen_ = policy.metadata.generation;
    let previous = policy.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = gen_;
    let spec = &policy.spec;
    // Without targets the selection is unknown: hosts keep what they have.
    let targets = match host_job::resolve_targets(ctx, policy, &ns, &previous, &mut status).await? {
        Ok(t) => t,
        Err(action) => return Ok(action),
    };
    let problem = spec_problem(policy, &targets.repository);
    ctx.metrics
        .retention_expected_interval
        .get_or_create(&PolicyLabels {
            namespace: ns.clone(),
            policy: policy.name_any(),
        })
        .set(super::derive::expected_interval(&spec.schedule.on_calendar).as_secs_f64());
    let hosts = jobs::selected_hosts(ctx, &targets.selector, &ns);
    let selected: BTreeSet<String> = hosts.iter().map(|h| h.name_any()).collect();
    let mode = match (spec.run_on, &problem) {
        (RunOn::Operator, _) => UnitMode::RemoveAll,
        (RunOn::Host, None) => UnitMode::Install,
        (RunOn::Host, Some(_)) => UnitMode::Hold,
    };
    let round =
        host_job::plan_round(ctx, policy, &ns, mode, &selected, &previous, &mut status).await?;

    // When to look again; `None` waits for a change.
    let mut requeue = if let Some((reason, message)) = problem {
        warn!(reason, %message, "retention policy cannot run");
        host_job::stalled(&mut status, reason, &message, gen_);
        None
    } else {
        condition(
            &mut status.conditions,
            condition_types::STALLED,
            Some(false),
            reasons::SUCCEEDED,
            "",
            gen_,
        );
        let converge: Vec<Arc<Host>> = hosts
            .iter()
            .filter(|h| round.plan.converge.contains(&h.name_any()))
            .cloned()
            .collect();
        let requeue = match spec.run_on {
            RunOn::Host => {
                host_mode(ctx, policy, &targets.repository, &converge, &mut status).await
            }
            RunOn::Operator => {
                let usable: Vec<Arc<Host>> = hosts
                    .iter()
                    .filter(|h| !round.refused.contains_key(&h.name_any()))
                    .cloned()
                    .collect();
                operator_mode(ctx, policy, &targets.repository, &usable, &mut status).await
            }
        };
        if hosts.is_empty() {
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(false),
                reasons::NO_HOSTS_SELECTED,
                "no Host matches the policy's selector",
                gen_,
            );
        }
        requeue
    };
    // Refused duplicates and pending removals are listed beside the run errors and derived
    // anew each round: the previous round's notes are replaced, not piled up.
    status
        .errors
        .retain(|e| !host_job::is_note::<RetentionPolicy>(e));
    if let Some(after) =
        host_job::add_notes::<RetentionPolicy>(&mut status, &round, &selected, gen_)
    {
        requeue = Some(requeue.map_or(after, |r: Duration| r.min(after)));
    }
    jobs::keep_transition_times(&previous.conditions, &mut status.conditions);
    host_job::JobStatus::cap_errors(&mut status);
    host_job::write(ctx, policy, &round.written, &status).await?;
    Ok(match requeue {
        Some(r) => Action::requeue(r),
        None => Action::await_change(),
    })
}

/// "N host(s) failing: " and at most five of them with their errors, bounded.
fn failing_note(errors: &[RunError]) -> String {
    format!(
        "{} host(s) failing: {}",
        errors.len(),
        summary::name_some(
            errors
                .iter()
                .take(summary::MAX_HOSTS_NAMED)
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.host,
                        crate::limits::bounded(&e.message, summary::MAX_NAMED_ERROR)
                    )
                })
                .collect(),
            errors.len(),
            crate::limits::MAX_ERROR_TEXT,
        )
    )
}

/// The retention job's executor arguments: keep rules, then prune limits.
pub fn host_extra_args(policy: &RetentionPolicy) -> Vec<String> {
    let mut args = policy.spec.keep.to_cli_args();
    args.extend(policy.spec.prune.to_cli_args());
    args
}

async fn host_mode(
    ctx: &Context,
    policy: &RetentionPolicy,
    repo: &BackupRepository,
    hosts: &[Arc<Host>],
    status: &mut RetentionPolicyStatus,
) -> Option<Duration> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let gen_ = policy.metadata.generation;
    let name_ref = &name;
    let results = join_all(hosts.iter().map(|h| async move {
        let spec = jobs::job_spec(
            PolicyKind::Retention,
            name_ref,
            &policy.spec.schedule,
            h,
            repo,
            host_extra_args(policy),
        );
        (
            h.name_any(),
            jobs::converge_host(ctx, h, repo, spec, policy.spec.suspend, false).await,
        )
    }))
    .await;
    // Which hosts failed before this round, from their entries (`status.errors` lists only
    // the first few).
    let failing_before: BTreeSet<String> =
        host_status::entries_of(ctx, &ns, CrdKind::RetentionPolicy, &name)
            .into_iter()
            .filter(|(_, e)| e.error.is_some())
            .map(|(h, _)| h)
            .collect();
    let mut errors = Vec::new();
    let mut last_run: Option<DateTime<Utc>> = None;
    let mut all_ok = true;
    let mut requeue = MAX_RESYNC;
    for (host, r) in results {
        let labels = PolicyHostLabels {
            namespace: ns.clone(),
            policy: name.clone(),
            host: host.clone(),
        };
        host_job::sync_host_entry::<RetentionPolicy>(ctx, &ns, &name, &host, &r).await;
        ctx.metrics
            .retention_host_selected
            .get_or_create(&labels)
            .set(1.0);
        match r {
            Ok(c) => {
                ctx.metrics
                    .retention_consecutive_failures
                    .get_or_create(&labels)
                    .set(summary::consecutive_failures(&c.observation) as f64);
                if let Some(ok) = c.observation.last_success() {
                    ctx.metrics
                        .retention_last_success
                        .get_or_create(&labels)
                        .set(ok.finished.timestamp() as f64);
                }
                if let Some(last) = c.observation.last_run() {
                    last_run = last_run.max(Some(last.started));
                    if !last.succeeded() {
                        all_ok = false;
                        errors.push(RunError {
                            host: host.clone(),
                            message: summary::run_error(last),
                            time: Some(to_time(last.finished)),
                        });
                    }
                }
                if let Some(wait) = host_job::after_next_elapse(&c.observation, Utc::now()) {
                    requeue = requeue.min(wait);
                }
            }
            Err(f) => {
                all_ok = false;
                let (after, message) = host_job::unreached::<RetentionPolicy>(ctx, &ns, &host, &f);
                requeue = requeue.min(after);
                errors.push(RunError {
                    host: host.clone(),
                    message,
                    time: None,
                });
            }
        }
    }
    if let Some(t) = last_run {
        status.last_run = Some(to_time(t));
        if all_ok {
            status.last_success = Some(to_time(t));
        }
    }
    let failing = !errors.is_empty();
    if errors.iter().any(|e| !failing_before.contains(&e.host)) {
        jobs::event(
            ctx,
            &policy.object_ref(&()),
            true,
            "RetentionFailed",
            failing_note(&errors),
        )
        .await;
    }
    status.errors = errors;
    if failing {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::HOSTS_FAILING,
            format!("{} host(s) failing", status.errors.len()),
            gen_,
        );
    } else {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(true),
            reasons::SUCCEEDED,
            "retention timers installed on every host",
            gen_,
        );
    }
    Some(requeue.max(MIN_RESYNC))
}

/// One host's suspicious snapshots for a condition or an Event: the count and the first
/// few, described.
fn suspicious_note(host: &str, rep: &MaintenanceReport) -> String {
    let more = rep.suspicious.saturating_sub(rep.suspects.len() as u64);
    let mut note = format!("{host}: {}", rep.suspects.join("; "));
    if more > 0 {
        note.push_str(&format!("; and {more} more"));
    }
    note
}

/// Joins per-host notes, cut at a size a condition message can carry even when every host
/// of a large fleet has something to say.
fn bounded_join(notes: &[String]) -> String {
    const MAX: usize = 2048;
    let mut out = String::new();
    for (i, n) in notes.iter().enumerate() {
        let sep = if out.is_empty() { "" } else { " | " };
        if out.len() + sep.len() + n.len() > MAX {
            out.push_str(&format!(" | and {} more hosts", notes.len() - i));
            break;
        }
        out.push_str(sep);
        out.push_str(n);
    }
    out
}

/// Credentials the operator uses for one host's repository: the maintenance keys when the
/// repository has them, else its shared keys; never a host's own (append-only) keys.
fn maintenance_job(
    policy: &RetentionPolicy,
    repo: &BackupRepository,
    host: &Host,
    secrets: &Secrets,
) -> Result<MaintenanceJob, Failure> {
    let ns = repo.namespace().unwrap_or_default();
    let url = derive::repository_url(repo, host.effective_hostname(), &ns)
        .map_err(|e| Failure::from_derive(&e))?;
    let (base, override_) = maintenance::operator_override(repo);
    let repository = maintenance::operator_repository_url(&url, &base, override_.as_deref());
    let password = derive::secret_value(secrets, &repo.spec.password_secret_ref)
        .map_err(|e| Failure::from_derive(&e))?;
    // Operator-side maintenance runs with the maintenance keys (append-only repositories:
    // the hosts' keys cannot delete), else the repository's shared keys.
    let keys_secret = repo
        .spec
        .maintenance_credentials_secret_ref
        .as_ref()
        .or(repo
            .spec
            .s3
            .as_ref()
            .and_then(|s| s.credentials_secret_ref.as_ref()))
        .or(repo
            .spec
            .rest
            .as_ref()
            .and_then(|r| r.credentials_secret_ref.as_ref()));
    let keys = match keys_secret {
        Some(r) => {
            derive::storage_keys(repo, &r.name, secrets).map_err(|e| Failure::from_derive(&e))?
        }
        None => derive::StorageKeys::default(),
    };
    Ok(MaintenanceJob {
        repository,
        password,
        keys,
        keep: policy.spec.keep.clone(),
        prune: policy.spec.prune.clone(),
        trust: trust(&policy.spec.snapshot_times).map_err(|message| Failure {
            reason: INVALID_SPEC,
            message,
            retry: super::error::Retry::OnChange,
        })?,
    })
}

/// The tolerance inside which operator-side retention believes snapshot times, or `None`
/// for restic's semantics (`trust: Claimed`).
pub fn trust(t: &SnapshotTimes) -> Result<Option<Tolerance>, String> {
    if t.trust == TimeTrust::Claimed {
        return Ok(None);
    }
    let d = |field: &str, v: &str| {
        fleetsnap_crds::common::parse_duration(v)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .ok_or_else(|| format!("snapshotTimes.{field}: {v:?} is not a duration like '15m'"))
    };
    Ok(Some(Tolerance {
        clock_skew: d("clockSkew", &t.clock_skew)?,
        max_backup: d("maxBackupDuration", &t.max_backup_duration)?,
    }))
}

fn maintenance_secret_names(repo: &BackupRepository) -> Vec<String> {
    let mut names = vec![repo.spec.password_secret_ref.name.clone()];
    if let Some(r) = &repo.spec.maintenance_credentials_secret_ref {
        names.push(r.name.clone());
    }
    if let Some(r) = repo
        .spec
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        names.push(r.name.clone());
    }
    if let Some(r) = repo
        .spec
        .rest
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        names.push(r.name.clone());
    }
    names
}

async fn operator_mode(
    ctx: &Context,
    policy: &RetentionPolicy,
    repo: &BackupRepository,
    hosts: &[Arc<Host>],
    status: &mut RetentionPolicyStatus,
) -> Option<Duration> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let gen_ = policy.metadata.generation;
    let now = Utc::now();
    if policy.spec.suspend {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(true),
            reasons::SUSPENDED,
            "suspended: no runs are scheduled",
            gen_,
        );
        return None;
    }
    let cal = Calendar::parse(&policy.spec.schedule.on_calendar).expect("checked by spec_problem");
    let created = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(time_to_chrono)
        .unwrap_or(now);
    let last = status.last_run.as_ref().map(time_to_chrono);
    let Some(due) = next_run(&cal, last, created) else {
        host_job::stalled(
            status,
            reasons::INVALID_SCHEDULE,
            "the schedule never fires",
            gen_,
        );
        return None;
    };
    if due > now {
        if status.last_run.is_none() {
            condition(
                &mut status.conditions,
                condition_types::READY,
                None,
                reasons::PROGRESSING,
                format!("first operator-side run due at {due}"),
                gen_,
            );
        }
        let wait = (due - now).to_std().unwrap_or_default() + Duration::from_secs(1);
        return Some(wait.min(MAX_RESYNC).max(Duration::from_secs(1)));
    }

    let secrets = match jobs::read_secrets(ctx, &ns, &maintenance_secret_names(repo)).await {
        Ok(s) => s,
        Err(f) => {
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(false),
                f.reason,
                f.message,
                gen_,
            );
            return Some(LOCKED_RETRY);
        }
    };
    info!(hosts = hosts.len(), "operator-side retention run");
    let results = join_all(hosts.iter().map(|h| {
        let job = maintenance_job(policy, repo, h, &secrets);
        let host = h.name_any();
        let span = info_span!("maintenance", host = %host);
        async move {
            let job = match job {
                Ok(j) => j,
                Err(f) => {
                    return (
                        host,
                        Err(maintenance::MaintenanceError {
                            message: format!("{}: {}", f.reason, f.message),
                            locked: false,
                        }),
                    );
                }
            };
            // Serialised per repository: a second policy on the same repository waits here.
            let lock = maintenance::repository_lock(&job.repository);
            let _guard = lock.lock().await;
            let (started, t0) = (Utc::now(), Instant::now());
            let r = maintenance::run(job).await;
            (host, r.map(|rep| (rep, started, t0.elapsed())))
        }
        .instrument(span)
    }))
    .await;

    let mut total = MaintenanceReport::default();
    let mut errors = Vec::new();
    let mut suspicious = Vec::new();
    let mut locked = false;
    for (host, r) in results {
        let labels = PolicyHostLabels {
            namespace: ns.clone(),
            policy: name.clone(),
            host: host.clone(),
        };
        let next = cal.next_after(Utc::now());
        let previous_entry =
            host_status::current_entry(ctx, &ns, &host, CrdKind::RetentionPolicy, &name);
        let entry = match &r {
            Ok((_, started, took)) => Some(summary::operator_run_entry(
                &name,
                previous_entry.as_ref(),
                *started,
                *took,
                None,
                next,
            )),
            // Not a run: the slot is retried shortly, the entry waits for its outcome.
            Err(e) if e.locked => None,
            Err(e) => Some(summary::operator_run_entry(
                &name,
                previous_entry.as_ref(),
                now,
                Duration::ZERO,
                Some(&e.message),
                next,
            )),
        };
        ctx.metrics
            .retention_host_selected
            .get_or_create(&labels)
            .set(1.0);
        if let Some(entry) = entry {
            ctx.metrics
                .retention_consecutive_failures
                .get_or_create(&labels)
                .set(f64::from(entry.consecutive_failures));
            host_status::sync_entry(
                ctx,
                &ns,
                &host,
                CrdKind::RetentionPolicy,
                &name,
                Some(&entry),
            )
            .await;
        }
        match r.map(|(rep, _, _)| rep) {
            Ok(rep) => {
                info!(host = %host, kept = rep.kept, removed = rep.removed, reclaimed = rep.reclaimed_bytes, suspicious = rep.suspicious, "retention done");
                ctx.metrics
                    .retention_last_success
                    .get_or_create(&labels)
                    .set(Utc::now().timestamp() as f64);
                ctx.metrics
                    .retention_suspicious_snapshots
                    .get_or_create(&labels)
                    .set(rep.suspicious as f64);
                if rep.suspicious > 0 {
                    warn!(host = %host, suspicious = rep.suspicious, first = ?rep.suspects, "snapshots with times the storage contradicts: kept, not counted");
                    suspicious.push(suspicious_note(&host, &rep));
                }
                total.suspicious += rep.suspicious;
                total.kept += rep.kept;
                total.removed += rep.removed;
                total.reclaimed_bytes += rep.reclaimed_bytes;
                total.locked_objects += rep.locked_objects;
            }
            Err(e) => {
                warn!(host = %host, error = %e.message, locked = e.locked, "retention failed");
                locked |= e.locked;
                ctx.metrics.reconcile_error(
                    KIND,
                    if e.locked {
                        "RepositoryLocked"
                    } else {
                        reasons::REPOSITORY_ERROR
                    },
                );
                errors.push(RunError {
                    host,
                    message: e.message,
                    time: Some(to_time(Utc::now())),
                });
            }
        }
    }
    // A repository held by a running backup is not a failure of the schedule: the run stays
    // due and is retried shortly; every other outcome counts as this slot's run.
    if !locked {
        status.last_run = Some(to_time(now));
    }
    status.snapshots_kept = total.kept as i64;
    status.snapshots_removed = total.removed as i64;
    status.space_reclaimed_bytes = total.reclaimed_bytes as i64;
    status.locked_objects_retained =
        (total.locked_objects > 0).then_some(total.locked_objects as i64);
    status.suspicious_snapshots = (total.suspicious > 0).then_some(total.suspicious as i64);
    let obj = policy.object_ref(&());
    if !suspicious.is_empty() {
        jobs::event(
            ctx,
            &obj,
            true,
            reasons::SUSPICIOUS_SNAPSHOTS,
            bounded_join(&suspicious),
        )
        .await;
    }
    if errors.is_empty() && !suspicious.is_empty() {
        // Retention did its job on every snapshot it can believe; the rest needs a human.
        status.last_success = Some(to_time(now));
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::SUSPICIOUS_SNAPSHOTS,
            format!(
                "{} snapshots kept uncounted, their times contradict the storage (forged, or a badly wrong host clock): {}",
                total.suspicious,
                bounded_join(&suspicious)
            ),
            gen_,
        );
    } else if errors.is_empty() {
        status.last_success = Some(to_time(now));
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(true),
            reasons::SUCCEEDED,
            format!(
                "kept {} and removed {} snapshots; {} bytes reclaimed",
                total.kept, total.removed, total.reclaimed_bytes
            ),
            gen_,
        );
        jobs::event(ctx, &obj, false, "RetentionSucceeded",
            format!("operator-side retention over {} repositories: kept {}, removed {}, reclaimed {} bytes", hosts.len(), total.kept, total.removed, total.reclaimed_bytes)).await;
    } else {
        let note = failing_note(&errors);
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::HOSTS_FAILING,
            note.clone(),
            gen_,
        );
        jobs::event(ctx, &obj, true, "RetentionFailed", note).await;
    }
    status.errors = errors;
    if locked {
        return Some(LOCKED_RETRY);
    }
    let next = cal
        .next_after(now)
        .map(|n| (n - Utc::now()).to_std().unwrap_or_default())
        .unwrap_or(MAX_RESYNC);
    Some((next + Duration::from_secs(1)).min(MAX_RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_crds::common::{KeepRules, LocalObjectRef, Schedule, SecretRef};
    use fleetsnap_crds::repository::BackupRepositorySpec;
    use fleetsnap_crds::retention_policy::{PruneOptions, RetentionPolicySpec};

    fn repo(append_only: bool, maintenance: bool) -> BackupRepository {
        let spec: BackupRepositorySpec = serde_json::from_value(serde_json::json!({
            "s3": {"endpoint": "http://minio:9000", "bucket": "b", "region": "us-east-1",
                   "perHostCredentials": {"secretNameTemplate": "s3-{host}"}},
            "pathTemplate": "hosts/{hostname}",
            "passwordSecretRef": {"name": "pw", "key": "password"},
            "appendOnly": append_only,
        }))
        .unwrap();
        let mut r = BackupRepository::new("minio", spec);
        if maintenance {
            r.spec.maintenance_credentials_secret_ref = Some(SecretRef {
                name: "maint".into(),
            });
        }
        r
    }

    fn policy(run_on: RunOn, keep: KeepRules, cal: &str) -> RetentionPolicy {
        RetentionPolicy::new(
            "ret",
            RetentionPolicySpec {
                backup_policy_ref: Some(LocalObjectRef { name: "bp".into() }),
                host_selector: None,
                repository_ref: None,
                keep,
                prune: PruneOptions::default(),
                schedule: Schedule {
                    on_calendar: cal.into(),
                    randomized_delay: None,
                    persistent: true,
                    max_runtime: None,
                    lock_wait: None,
                },
                run_on,
                suspend: false,
                snapshot_times: Default::default(),
            },
        )
    }

    fn keep7() -> KeepRules {
        KeepRules {
            daily: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn host_side_retention_on_append_only_is_refused_with_a_fix() {
        let p = policy(RunOn::Host, keep7(), "daily");
        let (reason, msg) = spec_problem(&p, &repo(true, true)).unwrap();
        assert_eq!(reason, INVALID_SPEC);
        assert!(
            msg.contains("append-only") && msg.contains("runOn: Operator"),
            "{msg}"
        );
        assert!(spec_problem(&p, &repo(false, false)).is_none());
    }

    #[test]
    fn operator_side_needs_deleting_credentials_and_a_readable_calendar() {
        let p = policy(RunOn::Operator, keep7(), "daily");
        assert!(spec_problem(&p, &repo(true, true)).is_none());
        let (_, msg) = spec_problem(&p, &repo(true, false)).unwrap();
        assert!(msg.contains("maintenanceCredentialsSecretRef"), "{msg}");
        let p = policy(RunOn::Operator, keep7(), "*-*~03 02:00");
        assert_eq!(
            spec_problem(&p, &repo(true, true)).unwrap().0,
            reasons::INVALID_SCHEDULE
        );
        let p = policy(RunOn::Operator, KeepRules::default(), "daily");
        assert_eq!(spec_problem(&p, &repo(true, true)).unwrap().0, INVALID_SPEC);
    }

    #[test]
    fn operator_side_identity_by_backend() {
        let p = policy(RunOn::Operator, keep7(), "daily");
        let mut rest = repo(false, false);
        rest.spec.s3 = None;
        rest.spec.rest = Some(fleetsnap_crds::repository::RestBackend {
            url: "https://rest:8000/".into(),
            credentials_secret_ref: Some(SecretRef {
                name: "rest-login".into(),
            }),
        });
        assert!(
            spec_problem(&p, &rest).is_none(),
            "a REST login is the operator's too"
        );
        rest.spec.rest.as_mut().unwrap().credentials_secret_ref = None;
        assert!(
            spec_problem(&p, &rest).is_none(),
            "an open REST server needs none"
        );
        let mut local = rest.clone();
        local.spec.rest = None;
        local.spec.local = Some(fleetsnap_crds::repository::LocalBackend {
            path: "/srv/backup".into(),
        });
        let (_, msg) = spec_problem(&p, &local).unwrap();
        assert!(msg.contains("runOn: Host"), "{msg}");
        let mut broker = repo(false, false);
        let s3 = broker.spec.s3.as_mut().unwrap();
        s3.per_host_credentials = None;
        s3.credential_process = Some(fleetsnap_crds::repository::CredentialProcess {
            command: vec!["/usr/local/bin/broker".into()],
        });
        let (_, msg) = spec_problem(&p, &broker).unwrap();
        assert!(msg.contains("maintenanceCredentialsSecretRef"), "{msg}");
    }

    #[test]
    fn next_run_counts_from_the_last_run_or_creation() {
        let cal = Calendar::parse("*-*-* 04:30:00").unwrap();
        let created: DateTime<Utc> = "2026-03-01T05:00:00Z".parse().unwrap();
        assert_eq!(
            next_run(&cal, None, created),
            Some("2026-03-02T04:30:00Z".parse().unwrap())
        );
        let last: DateTime<Utc> = "2026-03-05T04:30:02Z".parse().unwrap();
        assert_eq!(
            next_run(&cal, Some(last), created),
            Some("2026-03-06T04:30:00Z".parse().unwrap())
        );
    }

    #[test]
    fn host_args_are_keep_rules_then_prune_limits() {
        let p = policy(
            RunOn::Host,
            KeepRules {
                last: Some(3),
                ..Default::default()
            },
            "daily",
        );
        assert_eq!(
            host_extra_args(&p).join(" "),
            "--keep-last 3 --prune --max-unused 5%"
        );
    }
}
