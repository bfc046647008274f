//! BackupPolicy reconciler: for every selected Host, dereference → plan → apply over SSH →
//! observe, then write status, metrics and Events. Hosts are worked on concurrently; one
//! dead host costs its own timeout, never the others' time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::backup_policy::{BackupPolicyStatus, HostBackupState, PolicyHostSummary};
use fleetsnap_crds::common::reasons;
use fleetsnap_crds::host::{HostPolicyStatus, PolicyKind as CrdKind};
use fleetsnap_crds::{BackupPolicy, BackupRepository, Host};
use futures::FutureExt;
use futures::future::join_all;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use super::derive::{self, DeriveError};
use super::error::{Error, Failure, Retry, retry_after};
use super::events;
use super::finalized::Finalized;
use super::host_status;
use super::identity;
use super::jobs::{CLEANUP_GRACE, read_secrets, selected_hosts};
use super::summary::{self, EventSpec, HostResult, PolicyProblem};
use super::{Context, FIELD_MANAGER};
use crate::host::apply::{apply_plan, gather_facts};
use crate::host::facts::HostFacts;
use crate::host::layout::JobId;
use crate::host::model::PolicyKind;
use crate::host::observe::{JobObservation, observe_job};
use crate::host::plan::{Action as HostAction, HostPlan, JobInputs, fact_query, plan_job};
use crate::limits::{MAX_ERROR_TEXT, bounded};
use crate::metrics::{HostLabels, PolicyHostLabels, PolicyLabels};

pub const KIND: &str = "BackupPolicy";
/// Run records read per observation; enough to count a long failure streak.
const RECORDS: usize = 50;
/// Longest gap between two looks at a healthy policy, so staleness is noticed even when
/// nothing changes.
const MAX_RESYNC: Duration = Duration::from_secs(300);
const MIN_RESYNC: Duration = Duration::from_secs(10);

impl Finalized for BackupPolicy {
    const KIND: &'static str = KIND;
    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        apply(self, ctx).await
    }
    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup(self, ctx).await
    }
}

fn attempts_key(ns: &str, policy: &str, host: &str) -> String {
    format!("{KIND}/{ns}/{policy}/{host}")
}

/// While a policy is suspended its units stay but the timer must not run: the normal plan
/// (which would enable the timer) is trimmed, and a live timer is disabled.
pub fn suspend_plan(plan: &mut HostPlan, facts: &HostFacts) {
    plan.actions.retain(|a| {
        !matches!(
            a,
            HostAction::EnableTimer { .. } | HostAction::RestartTimer { .. }
        )
    });
    if let Some(d) = &plan.desired {
        let live = facts
            .units
            .get(&d.timer)
            .is_some_and(|t| t.enabled == "enabled" || t.active == "active");
        if live {
            plan.actions.push(HostAction::DisableTimer {
                unit: d.timer.clone(),
            });
        }
    }
}

/// When to look at a healthy host again to report its next run: shortly after the timer's
/// next elapse. systemd re-arms a calendar timer only once the run it triggered finished,
/// so an active timer without a next elapse means a run is in progress: look again soon.
pub fn observe_again_in(obs: &JobObservation, now: i64) -> Option<Duration> {
    let timer = obs.timer.as_ref()?;
    // next_elapse is on the host's clock; the wait is measured on ours.
    match timer.next_elapse.map(|t| obs.local_secs(t)) {
        Some(next) => {
            let wait = (next - now).max(0) as u64 + 15;
            Some(Duration::from_secs(wait).max(MIN_RESYNC))
        }
        None if timer.active_state == "active" => Some(Duration::from_secs(15)),
        None => None,
    }
}

/// Outcome of the SSH part for one host.
struct Converged {
    facts: HostFacts,
    observation: JobObservation,
    changed: Vec<String>,
    /// When the storage keys delivered to the host expire, where known.
    credential_expiry: Option<chrono::DateTime<Utc>>,
    /// When a minted key must be replaced (`s3.operatorSts`).
    refresh_at: Option<chrono::DateTime<Utc>>,
}

/// dereference → plan → apply → observe for one (policy, host) pair.
async fn converge_host(
    ctx: &Context,
    policy: &BackupPolicy,
    repo: &BackupRepository,
    host: &Host,
) -> Result<Converged, Failure> {
    let ns = policy.namespace().unwrap_or_default();
    let secrets = read_secrets(ctx, &ns, &derive::referenced_secrets(host, repo)).await?;
    debug!(secrets = secrets.len(), "secrets read");
    let derived = (|| -> Result<_, DeriveError> {
        Ok((
            derive::host_target(host, &secrets)?,
            derive::backup_policy_spec(policy, host, repo)?,
        ))
    })();
    let (target, spec) = derived.map_err(|e| Failure::from_derive(&e))?;
    let next_run = host_status::current_entry(
        ctx,
        &ns,
        &host.name_any(),
        fleetsnap_crds::host::PolicyKind::BackupPolicy,
        &spec.name,
    )
    .and_then(|e| e.next_run)
    .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    let resolved = super::host_credentials::resolve(ctx, repo, host, &secrets, next_run).await?;
    let (credentials, refresh_at) = (resolved.credentials, resolved.refresh_at);
    let job = JobId::new(PolicyKind::Backup, &spec.name).map_err(|detail| Failure {
        reason: super::error::INVALID_SPEC,
        message: detail,
        retry: Retry::OnChange,
    })?;
    let suspended = policy.spec.suspend;
    let artifact = ctx.artifact.clone();
    let host_name = target.name.clone();
    let key = format!("{ns}/{}", host.name_any());
    // The closure may run twice (a dead reused connection is replaced once), so it owns
    // its inputs and hands each attempt copies.
    let work = ctx.pool.with_host(&key, &target, |sh| {
        let (job, artifact, spec, credentials, host_name) = (
            job.clone(),
            artifact.clone(),
            spec.clone(),
            credentials.clone(),
            host_name.clone(),
        );
        async move {
            let inputs = JobInputs {
                artifact: &artifact,
                policy: &spec,
                credentials: &credentials,
            };
            let facts = gather_facts(sh, &fact_query(&job, Some(&artifact))).await?;
            let mut plan = plan_job(&inputs, &facts).map_err(|e| e.for_host(&host_name))?;
            if suspended {
                suspend_plan(&mut plan, &facts);
            }
            let report = apply_plan(sh, &plan).await?;
            let observation = observe_job(sh, &job, RECORDS).await?;
            Ok(Converged {
                facts,
                observation,
                changed: report.actions,
                credential_expiry: None,
                refresh_at: None,
            })
        }
        .boxed()
    });
    let expires = credentials.expires;
    match tokio::time::timeout(ctx.host_timeout, work).await {
        Err(_) => Err(Failure::timeout(&target.name, ctx.host_timeout)),
        Ok(Err(e)) => Err(Failure::from_host(&e)),
        Ok(Ok(c)) => Ok(Converged {
            credential_expiry: expires,
            refresh_at,
            ..c
        }),
    }
}

/// The per-host failure of a Host refused as a duplicate identity; only a change to the
/// Hosts can end it.
pub fn duplicate_failure(message: &str) -> Failure {
    Failure {
        reason: reasons::DUPLICATE_HOST,
        message: message.to_string(),
        retry: Retry::OnChange,
    }
}

/// The policy-level problems that stop every host before any SSH work.
fn policy_problem(
    policy: &BackupPolicy,
    repo: Option<&Arc<BackupRepository>>,
) -> Option<PolicyProblem> {
    if let Err(e) = policy.spec.schedule.timer_directives() {
        return Some(PolicyProblem {
            reason: reasons::INVALID_SCHEDULE,
            message: e.to_string(),
        });
    }
    if repo.is_none() {
        return Some(PolicyProblem {
            reason: reasons::REFERENCE_NOT_FOUND,
            message: format!(
                "BackupRepository {:?} does not exist in this namespace",
                policy.spec.repository_ref.name
            ),
        });
    }
    None
}

/// Every host that may carry this policy's job: those with an entry in `Host.status`
/// (written before the first install), and those an older status listed in `status.hosts`.
fn recorded_hosts(
    previous: &BackupPolicyStatus,
    entries: &BTreeMap<String, HostPolicyStatus>,
) -> BTreeSet<String> {
    entries
        .keys()
        .cloned()
        .chain(previous.hosts.iter().map(|h| h.name.clone()))
        .collect()
}

/// What was last known of each host: its `Host.status` entry, else what an older status
/// listed for it. An entry written before hosts had a `state` gets one from its error.
fn previous_summaries(
    previous: &BackupPolicyStatus,
    entries: &BTreeMap<String, HostPolicyStatus>,
) -> BTreeMap<String, PolicyHostSummary> {
    let mut out: BTreeMap<String, PolicyHostSummary> = previous
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.clone()))
        .collect();
    for (host, e) in entries {
        let legacy = out.get(host).map(|h| h.state);
        let state = e
            .state
            .or(legacy)
            .unwrap_or(match (&e.error, &e.last_success) {
                (Some(_), _) => HostBackupState::Failing,
                (None, Some(_)) => HostBackupState::Succeeded,
                (None, None) => HostBackupState::Pending,
            });
        out.insert(
            host.clone(),
            PolicyHostSummary {
                name: host.clone(),
                state,
                last_success: e.last_success.clone(),
                snapshot_id: e.snapshot_id.clone(),
                message: e.error.clone(),
            },
        );
    }
    out
}

/// Before the job is first installed on a host, its entry is written: the record that the
/// host may carry the job, so it is removed when the host leaves the selector even if the
/// operator stops right after installing.
async fn record_install(
    ctx: &Context,
    ns: &str,
    policy: &str,
    host: &str,
    entries: &BTreeMap<String, HostPolicyStatus>,
) -> Result<(), Failure> {
    if entries.contains_key(host) {
        return Ok(());
    }
    let entry = host_status::install_record(CrdKind::BackupPolicy, policy);
    host_status::apply_policy_entry(ctx, ns, host, policy, Some(entry))
        .await
        .map_err(|e| Failure {
            reason: "KubeApiError",
            message: format!("recording the host before installing the job failed: {e}"),
            retry: Retry::Backoff,
        })
}

async fn apply(policy: &BackupPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let now = Utc::now();
    let previous = policy.status.clone().unwrap_or_default();
    let repo = ctx
        .repos
        .get(&ObjectRef::new(&policy.spec.repository_ref.name).within(&ns));
    let selected = selected_hosts(ctx, &policy.spec.host_selector, &ns);
    let interval = derive::expected_interval(&policy.spec.schedule.on_calendar);
    let window = policy
        .spec
        .effective_staleness_window(interval)
        .unwrap_or(interval + Duration::from_secs(3600));
    let plabels = PolicyLabels {
        namespace: ns.clone(),
        policy: name.clone(),
    };
    ctx.metrics
        .backup_expected_interval
        .get_or_create(&plabels)
        .set(interval.as_secs_f64());
    ctx.metrics
        .backup_staleness_window
        .get_or_create(&plabels)
        .set(window.as_secs_f64());

    // What is known per host: this policy's Host.status entries, and for a status written
    // before bounded status, its per-host list (read only to carry it over).
    let entries = host_status::entries_of(ctx, &ns, CrdKind::BackupPolicy, &name);
    let prev_by_name = previous_summaries(&previous, &entries);
    let recorded = recorded_hosts(&previous, &entries);
    if let Some(problem) = policy_problem(policy, repo.as_ref()) {
        // Nothing can be planned; keep what was known about each host.
        let hosts = selected
            .iter()
            .map(|h| {
                prev_by_name
                    .get(h.name_any().as_str())
                    .cloned()
                    .unwrap_or(PolicyHostSummary {
                        name: h.name_any(),
                        state: HostBackupState::Pending,
                        last_success: None,
                        snapshot_id: None,
                        message: None,
                    })
            })
            .collect();
        let mut status = summary::policy_status(
            hosts,
            Some(&problem),
            &[],
            Some(&previous),
            policy.metadata.generation,
            now,
        );
        // An older status's host list is the only record of some hosts until a normal
        // pass has moved it onto their entries.
        status.hosts = previous.hosts.clone();
        ctx.metrics.reconcile_error(KIND, problem.reason);
        warn!(reason = problem.reason, message = %problem.message, "policy cannot be applied");
        write_status(ctx, policy, &previous, status).await?;
        // Spec problem: the watches on the policy and repository bring us back.
        return Ok(Action::await_change());
    }
    let repo = repo.expect("checked by policy_problem");

    // Every selected host concurrently; the pool bounds how many actually run at once. A
    // Host refused as a duplicate identity gets nothing: no SSH, no units.
    let refused = identity::refused_in_namespace(ctx, &ns);
    let repo = &repo;
    let refused_ref = &refused;
    let entries_ref = &entries;
    let (ns_ref, name_ref) = (ns.as_str(), name.as_str());
    let results: Vec<(Arc<Host>, Result<Converged, Failure>)> =
        join_all(selected.iter().map(|host| {
            let span = info_span!("host", host = %host.name_any());
            async move {
                let hname = host.name_any();
                let r = match refused_ref.get(&hname) {
                    Some(message) => Err(duplicate_failure(message)),
                    None => {
                        match record_install(ctx, ns_ref, name_ref, &hname, entries_ref).await {
                            Ok(()) => converge_host(ctx, policy, repo, host).await,
                            Err(f) => Err(f),
                        }
                    }
                };
                (host.clone(), r)
            }
            .instrument(span)
        }))
        .await;

    let mut host_results = Vec::new();
    let mut new_entries: BTreeMap<String, HostPolicyStatus> = BTreeMap::new();
    let mut requeue = MAX_RESYNC;
    for (host, result) in results {
        let hname = host.name_any();
        let labels = PolicyHostLabels {
            namespace: ns.clone(),
            policy: name.clone(),
            host: hname.clone(),
        };
        let hlabels = HostLabels {
            namespace: ns.clone(),
            host: hname.clone(),
        };
        let key = attempts_key(&ns, &name, &hname);
        match result {
            Ok(c) => {
                ctx.reset_attempts(&key);
                if !c.changed.is_empty() {
                    info!(host = %hname, actions = ?c.changed, "host converged");
                }
                ctx.metrics.observe_backup(&labels, &c.observation);
                // What the operator delivered, else what the executor reported (a broker's
                // key on the host).
                let expiry = c
                    .credential_expiry
                    .or_else(|| c.observation.last_run().and_then(|r| r.credential_expiry));
                ctx.metrics
                    .credential_expiry(&labels, expiry, &c.observation);
                ctx.metrics.host_contact(&hlabels, true, now);
                let entry = HostPolicyStatus {
                    credential_expiry: expiry.map(summary::to_time),
                    ..summary::host_policy_entry(&name, &c.observation)
                };
                new_entries.insert(hname.clone(), entry);
                if let Some(wait) = observe_again_in(&c.observation, now.timestamp()) {
                    requeue = requeue.min(wait);
                }
                if let Some(at) = c.refresh_at {
                    // At least a few seconds: a key due now was just minted.
                    let wait = (at - now).to_std().unwrap_or_default();
                    requeue = requeue.min(wait.max(Duration::from_secs(5)));
                }
                debug!(host = %hname, systemd = %c.facts.systemd, "observed");
                host_results.push(HostResult {
                    host: hname,
                    observation: Some(c.observation),
                    failure: None,
                });
            }
            Err(f) => {
                let attempt = if f.is_transient() {
                    ctx.failed_attempt(&key)
                } else {
                    1
                };
                warn!(host = %hname, reason = f.reason, message = %f.message, "host failed");
                ctx.metrics.reconcile_error(KIND, f.reason);
                ctx.metrics
                    .backup_host_selected
                    .get_or_create(&labels)
                    .set(1.0);
                if matches!(
                    f.reason,
                    reasons::HOST_UNREACHABLE | reasons::AUTH_FAILED | reasons::HOST_KEY_MISMATCH
                ) {
                    ctx.metrics.host_contact(&hlabels, false, now);
                }
                if let Some(d) = retry_after(&f, attempt) {
                    requeue = requeue.min(d);
                }
                // A refused duplicate never got the job: it gets no entry (no record) of its
                // own; every other host has one since its install record.
                if f.reason != reasons::DUPLICATE_HOST || recorded.contains(&hname) {
                    new_entries.insert(
                        hname.clone(),
                        summary::unreached_entry(
                            CrdKind::BackupPolicy,
                            &name,
                            entries.get(&hname),
                            &f,
                        ),
                    );
                }
                host_results.push(HostResult {
                    host: hname,
                    observation: None,
                    failure: Some(f),
                });
            }
        }
    }

    // Hosts that may carry the job (an entry, or listed by an older status) but are no
    // longer selected: take the job off them.
    let selected_names: BTreeSet<String> = selected.iter().map(|h| h.name_any()).collect();
    let mut leaving_pending = Vec::new();
    for host in recorded.iter().filter(|h| !selected_names.contains(*h)) {
        // A refused duplicate may share its machine with the older Host, which may still
        // want this job: it stays recorded until the refusal ends.
        let removal = match refused.get(host) {
            Some(message) => Err(duplicate_failure(message)),
            None => remove_from_host(ctx, &ns, &name, host).await,
        };
        match removal {
            Ok(()) => {
                info!(host = %host, "host left the selector; job removed");
                ctx.metrics.forget_backup_host(&PolicyHostLabels {
                    namespace: ns.clone(),
                    policy: name.clone(),
                    host: host.clone(),
                });
            }
            Err(f) => {
                warn!(host = %host, reason = f.reason, "removing the job from a deselected host failed");
                requeue = requeue.min(retry_after(&f, 1).unwrap_or(MAX_RESYNC));
                let prev = prev_by_name.get(host);
                let message = bounded(
                    &format!(
                        "left the selector; removing the job is pending: {}: {}",
                        f.reason, f.message
                    ),
                    MAX_ERROR_TEXT,
                );
                // The entry stays (or, for a host only an older status listed, is written)
                // so the removal is retried.
                let entry = HostPolicyStatus {
                    error: Some(message.clone()),
                    state: Some(HostBackupState::Failing),
                    ..entries.get(host).cloned().unwrap_or_else(|| {
                        host_status::install_record(CrdKind::BackupPolicy, &name)
                    })
                };
                if host_status::entry_differs(entries.get(host), Some(&entry)) {
                    host_status::apply_policy_entry(ctx, &ns, host, &name, Some(entry)).await?;
                }
                leaving_pending.push(PolicyHostSummary {
                    name: host.clone(),
                    state: HostBackupState::Failing,
                    last_success: prev.and_then(|p| p.last_success.clone()),
                    snapshot_id: prev.and_then(|p| p.snapshot_id.clone()),
                    message: Some(message),
                });
            }
        }
    }

    let summaries: Vec<PolicyHostSummary> = host_results
        .iter()
        .map(|r| summary::host_summary(r, prev_by_name.get(&r.host), now, window))
        .collect();
    // Each host's entry carries its state; written only when it changed.
    for h in &summaries {
        if let Some(mut entry) = new_entries.remove(&h.name) {
            entry.state = Some(h.state);
            if host_status::entry_differs(entries.get(&h.name), Some(&entry)) {
                host_status::apply_policy_entry(ctx, &ns, &h.name, &name, Some(entry)).await?;
            }
        }
    }
    let failures: Vec<&Failure> = host_results
        .iter()
        .filter_map(|r| r.failure.as_ref())
        .collect();
    let mut status = summary::policy_status(
        summaries.clone(),
        None,
        &failures,
        Some(&previous),
        policy.metadata.generation,
        now,
    );
    // Listed (their removal is pending) but not counted: they are not selected.
    status.worst_hosts = summary::worst_hosts(summaries.iter().chain(&leaving_pending));

    let before: Vec<PolicyHostSummary> = prev_by_name.into_values().collect();
    let after: Vec<PolicyHostSummary> = summaries.into_iter().chain(leaving_pending).collect();
    for ev in summary::transitions(&before, &after) {
        publish(ctx, policy, &ev).await;
    }
    // Only here, after host work: the early status writes (a policy that cannot be
    // applied) are not "a converged host whose status is lost".
    crate::failpoint::hit(crate::failpoint::Point::BeforeStatusWrite);
    write_status(ctx, policy, &previous, status).await?;
    Ok(Action::requeue(requeue.max(MIN_RESYNC)))
}

async fn publish(ctx: &Context, policy: &BackupPolicy, ev: &EventSpec) {
    events::publish(&ctx.recorder, &policy.object_ref(&()), ev).await;
}

/// Server-side apply of the status subresource; skipped when nothing changed, so an idle
/// fleet causes no writes (and no watch events) at all.
async fn write_status(
    ctx: &Context,
    policy: &BackupPolicy,
    previous: &BackupPolicyStatus,
    status: BackupPolicyStatus,
) -> Result<(), Error> {
    if policy.status.is_some() && *previous == status {
        return Ok(());
    }
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<BackupPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "fleetsnap.io/v1alpha1",
        "kind": "BackupPolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Takes the policy's job off one host: units, config and credentials; never data.
async fn remove_from_host(
    ctx: &Context,
    ns: &str,
    policy: &str,
    host: &str,
) -> Result<(), Failure> {
    let span = info_span!("remove_job", host = %host, policy = %policy);
    async {
        let Some(h) = ctx.hosts.get(&ObjectRef::new(host).within(ns)) else {
            // The Host object is gone: there is no address or key to reach it with.
            debug!("Host object deleted; nothing to reach");
            return Ok(());
        };
        let secret_name = h.spec.ssh_key_secret_ref.name.clone();
        let secrets = read_secrets(ctx, ns, &[secret_name]).await?;
        let target = derive::host_target(&h, &secrets).map_err(|e| Failure::from_derive(&e))?;
        let job = JobId::new(PolicyKind::Backup, policy).map_err(|detail| Failure {
            reason: super::error::INVALID_SPEC,
            message: detail,
            retry: Retry::OnChange,
        })?;
        let key = format!("{ns}/{host}");
        let work = ctx.pool.with_host(&key, &target, |sh| {
            let job = job.clone();
            async move { crate::host::apply::remove_job(sh, &job).await }.boxed()
        });
        match tokio::time::timeout(ctx.host_timeout, work).await {
            Err(_) => Err(Failure::timeout(host, ctx.host_timeout)),
            Ok(Err(e)) => Err(Failure::from_host(&e)),
            Ok(Ok((_, report))) => {
                if report.changed() {
                    info!(actions = ?report.actions, "job removed from host");
                }
                host_status::apply_policy_entry(ctx, ns, host, policy, None)
                    .await
                    .map_err(|e| Failure {
                        reason: "KubeApiError",
                        message: e.to_string(),
                        retry: Retry::Backoff,
                    })?;
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

/// Finalizer cleanup: every host that is selected or was tracked loses the job.
async fn cleanup(policy: &BackupPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let mut hosts: BTreeSet<String> = selected_hosts(ctx, &policy.spec.host_selector, &ns)
        .iter()
        .map(|h| h.name_any())
        .collect();
    let previous = policy.status.clone().unwrap_or_default();
    hosts.extend(recorded_hosts(
        &previous,
        &host_status::entries_of(ctx, &ns, CrdKind::BackupPolicy, &name),
    ));
    let (ns_ref, name_ref) = (&ns, &name);
    let results = join_all(
        hosts
            .iter()
            .map(|h| async move { (h.clone(), remove_from_host(ctx, ns_ref, name_ref, h).await) }),
    )
    .await;
    let deleting_for = policy
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| (Utc::now().timestamp() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0);
    let mut pending = Vec::new();
    for (host, r) in results {
        match r {
            Ok(()) => {}
            // An unreachable host blocks deletion only for a while; after that it is named
            // in an Event and left (its timer keeps running until someone cleans it).
            Err(f)
                if f.reason == reasons::HOST_UNREACHABLE
                    && deleting_for > CLEANUP_GRACE.as_secs() =>
            {
                publish(
                    ctx,
                    policy,
                    &EventSpec {
                        warning: true,
                        reason: "CleanupAbandoned",
                        note: format!(
                            "host {host} stayed unreachable for {}s after deletion; its units were left in place",
                            CLEANUP_GRACE.as_secs()
                        ),
                    },
                )
                .await;
            }
            Err(f) => {
                warn!(host = %host, reason = f.reason, message = %f.message, "cleanup failed");
                pending.push(host);
            }
        }
    }
    for h in &hosts {
        ctx.metrics.forget_backup_host(&PolicyHostLabels {
            namespace: ns.clone(),
            policy: name.clone(),
            host: h.clone(),
        });
    }
    if !pending.is_empty() {
        return Err(Error::CleanupIncomplete {
            policy: name,
            hosts: pending.join(", "),
        });
    }
    ctx.metrics.forget_policy(&PolicyLabels {
        namespace: ns,
        policy: name.clone(),
    });
    info!(policy = %name, hosts = hosts.len(), "policy removed from all hosts");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::UnitFact;
    use crate::host::layout::JobId;
    use crate::host::observe::TimerState;

    fn plan_with(actions: Vec<HostAction>, timer: &str) -> HostPlan {
        let job = JobId::new(PolicyKind::Backup, "p").unwrap();
        let desired = crate::host::plan::DesiredState {
            executor: crate::host::plan::DesiredExecutor {
                version: "1".into(),
                sha256: "00".into(),
                path: "/x".into(),
                local_path: "/x".into(),
            },
            dirs: vec![],
            files: vec![],
            units: vec![],
            timer: timer.into(),
            service: "s".into(),
        };
        HostPlan {
            job,
            desired: Some(desired),
            actions,
        }
    }

    fn timer(next: Option<i64>, state: &str, offset: i64) -> JobObservation {
        JobObservation {
            timer: Some(TimerState {
                next_elapse: next,
                active_state: state.into(),
                ..TimerState::default()
            }),
            clock_offset_secs: offset,
            ..JobObservation::default()
        }
    }

    /// After an upgrade the old `status.hosts` still counts as the record and as what was
    /// known; entries win where both exist, and an entry without `state` gets one.
    #[test]
    fn the_record_and_previous_state_come_from_entries_and_an_older_list() {
        let legacy = |name: &str, state| PolicyHostSummary {
            name: name.into(),
            state,
            last_success: Some(summary::unix_time(100)),
            snapshot_id: Some("s100".into()),
            message: None,
        };
        let previous = BackupPolicyStatus {
            hosts: vec![
                legacy("old-only", HostBackupState::Succeeded),
                legacy("both", HostBackupState::Failing),
            ],
            ..BackupPolicyStatus::default()
        };
        let entry = |state, error: Option<&str>| HostPolicyStatus {
            error: error.map(Into::into),
            state,
            last_success: Some(summary::unix_time(200)),
            ..host_status::install_record(CrdKind::BackupPolicy, "p")
        };
        let entries: BTreeMap<String, HostPolicyStatus> = [
            (
                "both".to_string(),
                entry(Some(HostBackupState::Succeeded), None),
            ),
            ("no-state".to_string(), entry(None, Some("boom"))),
            (
                "new".to_string(),
                entry(Some(HostBackupState::Pending), None),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            recorded_hosts(&previous, &entries),
            ["both", "new", "no-state", "old-only"]
                .map(String::from)
                .into()
        );
        let prev = previous_summaries(&previous, &entries);
        assert_eq!(prev["old-only"].state, HostBackupState::Succeeded);
        assert_eq!(prev["old-only"].snapshot_id.as_deref(), Some("s100"));
        assert_eq!(prev["both"].state, HostBackupState::Succeeded);
        assert_eq!(prev["both"].last_success, Some(summary::unix_time(200)));
        assert_eq!(prev["no-state"].state, HostBackupState::Failing);
        assert_eq!(prev["new"].state, HostBackupState::Pending);
        // A fresh install: nothing recorded, nothing known.
        let none = BackupPolicyStatus::default();
        assert!(recorded_hosts(&none, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn requeue_follows_the_timer() {
        let t = |next, state| timer(next, state, 0);
        assert_eq!(
            observe_again_in(&t(Some(1_100), "active"), 1_000),
            Some(Duration::from_secs(115))
        );
        // Elapse in the past or imminent: never faster than the floor.
        assert_eq!(
            observe_again_in(&t(Some(900), "active"), 1_000),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            observe_again_in(&t(Some(1_000), "active"), 1_000),
            Some(Duration::from_secs(15))
        );
        // Running now: the record lands soon.
        assert_eq!(
            observe_again_in(&t(None, "active"), 1_000),
            Some(Duration::from_secs(15))
        );
        // Suspended (inactive) or no timer: the periodic resync is enough.
        assert_eq!(observe_again_in(&t(None, "inactive"), 1_000), None);
        assert_eq!(observe_again_in(&JobObservation::default(), 1_000), None);
    }

    /// The timer's next elapse is on the host's clock. A host 3 h ahead says "in 3 h 100 s"
    /// for a run due in 100 s; a host 3 h behind says "3 h ago" for the same run.
    #[test]
    fn requeue_follows_the_timer_on_a_skewed_host() {
        let h = 3 * 3600;
        assert_eq!(
            observe_again_in(&timer(Some(1_100 + h), "active", h), 1_000),
            Some(Duration::from_secs(115))
        );
        assert_eq!(
            observe_again_in(&timer(Some(1_100 - h), "active", -h), 1_000),
            Some(Duration::from_secs(115))
        );
    }

    #[test]
    fn suspending_drops_enables_and_disables_a_live_timer() {
        let t = "fleetsnap-backup-p.timer";
        let mut plan = plan_with(
            vec![
                HostAction::DaemonReload,
                HostAction::EnableTimer { unit: t.into() },
            ],
            t,
        );
        let mut facts = HostFacts::default();
        facts.units.insert(
            t.into(),
            UnitFact {
                enabled: "enabled".into(),
                active: "active".into(),
                needs_reload: false,
            },
        );
        suspend_plan(&mut plan, &facts);
        assert_eq!(
            plan.actions,
            vec![
                HostAction::DaemonReload,
                HostAction::DisableTimer { unit: t.into() }
            ]
        );
        // Already disabled: nothing to do, so a suspended policy is idempotent too.
        let mut plan = plan_with(vec![HostAction::EnableTimer { unit: t.into() }], t);
        suspend_plan(&mut plan, &HostFacts::default());
        assert!(plan.actions.is_empty());
    }
}
