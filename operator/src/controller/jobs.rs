//! Shared plumbing of the RetentionPolicy and VerifyPolicy controllers: which hosts and
//! repository a policy targets, and the same dereference → plan → apply → observe pipeline
//! the BackupPolicy controller runs, for a job of another kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleetsnap_crds::common::{LocalObjectRef, Schedule, reasons};
use fleetsnap_crds::host::PolicyKind as CrdKind;
use fleetsnap_crds::{BackupPolicy, BackupRepository, Host};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::backup_policy::suspend_plan;
use super::derive::{self, DeriveError, Secrets};
use super::error::{Failure, Retry};
use super::host_status;
use super::units::{UnitMode, UnitPlan, plan_units};
use crate::host::apply::{apply_plan, gather_facts, remove_job};
use crate::host::layout::JobId;
use crate::host::model::{PolicyKind, PolicySpec};
use crate::host::observe::{JobObservation, observe_job};
use crate::host::plan::{JobInputs, fact_query, plan_job};
use crate::host::shell::{HostShell, StdoutLimit};
use crate::limits::{FAILURE_LOG_LINES, MAX_FAILURE_LOG, MAX_LOG_LINE, bounded};
use crate::metrics::PolicyHostLabels;
use k8s_openapi::api::core::v1::ObjectReference;

/// Run records read per observation.
pub const RECORDS: usize = 50;
/// After a deletion, hosts that stay unreachable this long are given up on, so a dead VM
/// cannot keep a policy in Terminating forever. A Warning Event names them.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(600);

/// The hosts and repository a Retention/VerifyPolicy applies to, once references are
/// resolved.
pub struct Targets {
    pub selector: LabelSelector,
    pub repository: Arc<BackupRepository>,
}

/// Resolves `backupPolicyRef` or `hostSelector` + `repositoryRef`. Errors are spec problems
/// (a missing object): the caller reports them and waits for a change.
pub async fn resolve_targets(
    ctx: &Context,
    ns: &str,
    backup_policy_ref: Option<&LocalObjectRef>,
    host_selector: Option<&LabelSelector>,
    repository_ref: Option<&LocalObjectRef>,
) -> Result<Targets, DeriveError> {
    let missing = |what: &str, name: &str| DeriveError {
        reason: reasons::REFERENCE_NOT_FOUND,
        message: format!("{what} {name:?} does not exist in this namespace"),
    };
    let (selector, repo_name) = match (backup_policy_ref, host_selector, repository_ref) {
        (Some(bp), _, _) => {
            let api: Api<BackupPolicy> = Api::namespaced(ctx.client.clone(), ns);
            let policy = api
                .get_opt(&bp.name)
                .await
                .map_err(|e| DeriveError {
                    reason: "KubeApiError",
                    message: format!("reading BackupPolicy {:?}: {e}", bp.name),
                })?
                .ok_or_else(|| missing("BackupPolicy", &bp.name))?;
            (
                policy.spec.host_selector.clone(),
                policy.spec.repository_ref.name.clone(),
            )
        }
        (None, Some(sel), Some(repo)) => (sel.clone(), repo.name.clone()),
        _ => {
            return Err(DeriveError {
                reason: super::error::INVALID_SPEC,
                message: "set either backupPolicyRef, or hostSelector with repositoryRef".into(),
            });
        }
    };
    let repository = ctx
        .repos
        .get(&ObjectRef::new(&repo_name).within(ns))
        .ok_or_else(|| missing("BackupRepository", &repo_name))?;
    Ok(Targets {
        selector,
        repository,
    })
}

/// Hosts of the namespace the selector picks, sorted by name, deleted ones left out.
pub fn selected_hosts(ctx: &Context, selector: &LabelSelector, ns: &str) -> Vec<Arc<Host>> {
    let mut hosts: Vec<Arc<Host>> = ctx
        .hosts
        .state()
        .into_iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .filter(|h| h.metadata.deletion_timestamp.is_none())
        .filter(|h| derive::selects(selector, h))
        .collect();
    hosts.sort_by_key(|h| h.name_any());
    hosts
}

/// Reads the named Secrets; absent ones are simply missing from the map. Each comes from
/// the shared cache while the Secret watch shows it unchanged (`secret_cache`).
pub async fn read_secrets(ctx: &Context, ns: &str, names: &[String]) -> Result<Secrets, Failure> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Secrets::new();
    for name in names {
        let current = ctx
            .secret_versions
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|m| m.metadata.resource_version.clone());
        let got = ctx
            .secrets
            .get(ns, name, current.as_deref(), || api.get_opt(name))
            .await;
        match got {
            Ok(Some(s)) => {
                out.insert(name.clone(), s);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure {
                    reason: "KubeApiError",
                    message: format!("reading Secret {name:?} failed: {e}"),
                    retry: Retry::Backoff,
                });
            }
        }
    }
    Ok(out)
}

/// A job of `kind` for one host: repository of the host, schedule and extra arguments; no
/// paths, tags or stdin sources (those belong to backups).
pub fn job_spec(
    kind: PolicyKind,
    name: &str,
    schedule: &Schedule,
    host: &Host,
    repo: &BackupRepository,
    extra_args: Vec<String>,
) -> Result<PolicySpec, DeriveError> {
    let invalid = |e: fleetsnap_crds::common::ScheduleError| DeriveError {
        reason: reasons::INVALID_SCHEDULE,
        message: e.to_string(),
    };
    let directives = schedule.timer_directives().map_err(invalid)?;
    let on_calendar = directives
        .iter()
        .find(|(k, _)| *k == "OnCalendar")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let delay = schedule.randomized_delay().map_err(invalid)?;
    let hostname = host.effective_hostname();
    let ns = repo.namespace().unwrap_or_default();
    Ok(PolicySpec {
        name: name.to_string(),
        kind,
        repository: derive::repository_url(repo, hostname, &ns)?,
        paths: Vec::new(),
        excludes: Vec::new(),
        exclude_caches: false,
        one_file_system: false,
        stdin_sources: Vec::new(),
        tags: Vec::new(),
        host_tag: hostname.to_string(),
        on_calendar,
        randomized_delay_sec: u32::try_from(delay.as_secs()).unwrap_or(u32::MAX),
        persistent: schedule.persistent,
        nice: Some(10),
        io_scheduling_class: Some(crate::host::model::IoSchedulingClass::Idle),
        io_scheduling_priority: None,
        cpu_quota_percent: None,
        max_runtime_sec: Some(schedule.max_runtime().map_err(invalid)?.as_secs()),
        lock_wait_sec: schedule.lock_wait().map_err(invalid)?.as_secs(),
        extra_args,
        credential_process: derive::credential_process(repo, host),
    })
}

/// What a host reported after its job was converged.
pub struct Converged {
    pub observation: JobObservation,
    /// Journal lines of the newest failed run (only when asked for), for error details the
    /// run record does not carry, such as the damaged pack's id.
    pub failure_log: Vec<String>,
    /// When the storage keys delivered to the host expire, where known.
    pub credential_expiry: Option<chrono::DateTime<chrono::Utc>>,
    /// When a minted key must be replaced (`s3.operatorSts`).
    pub refresh_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Prints the `error:` lines the service logged since a given time (the run that failed):
/// the last `$3` of them, each cut to `$4` bytes.
const FAILURE_LOG: &str = r#"journalctl -u "$1" --since "@$2" -o cat --no-pager 2>/dev/null | grep -E '^(error|Fatal):' | tail -n "$3" | cut -b "1-$4" || true"#;

/// The failure log's lines from the command's (tail-bounded) stdout: at most
/// [`FAILURE_LOG_LINES`] lines of at most [`MAX_LOG_LINE`] bytes, whatever the host sent.
pub fn parse_failure_log(stdout: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..]
        .iter()
        .map(|l| bounded(l, MAX_LOG_LINE))
        .collect()
}

/// dereference → plan → apply → observe for one (policy, host) pair.
pub async fn converge_host(
    ctx: &Context,
    host: &Host,
    repo: &BackupRepository,
    spec: Result<PolicySpec, DeriveError>,
    suspended: bool,
    want_failure_log: bool,
) -> Result<Converged, Failure> {
    let ns = host.namespace().unwrap_or_default();
    let spec = spec.map_err(|e| Failure::from_derive(&e))?;
    let secrets = read_secrets(ctx, &ns, &derive::referenced_secrets(host, repo)).await?;
    let target = derive::host_target(host, &secrets).map_err(|e| Failure::from_derive(&e))?;
    let next_run = super::host_status::current_entry(
        ctx,
        &ns,
        &host.name_any(),
        crd_kind(spec.kind),
        &spec.name,
    )
    .and_then(|e| e.next_run)
    .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0));
    let resolved = super::host_credentials::resolve(ctx, repo, host, &secrets, next_run).await?;
    let (credentials, refresh_at) = (resolved.credentials, resolved.refresh_at);
    let job = JobId::new(spec.kind, &spec.name).map_err(|detail| Failure {
        reason: super::error::INVALID_SPEC,
        message: detail,
        retry: Retry::OnChange,
    })?;
    let artifact = ctx.artifact.clone();
    let key = format!("{ns}/{}", host.name_any());
    let work = ctx.pool.with_host(&key, &target, |sh| {
        let (job, artifact, spec, credentials) = (
            job.clone(),
            artifact.clone(),
            spec.clone(),
            credentials.clone(),
        );
        async move {
            let inputs = JobInputs {
                artifact: &artifact,
                policy: &spec,
                credentials: &credentials,
            };
            let facts = gather_facts(sh, &fact_query(&job, Some(&artifact))).await?;
            let mut plan = plan_job(&inputs, &facts).map_err(|e| e.for_host(sh.host_name()))?;
            if suspended {
                suspend_plan(&mut plan, &facts);
            }
            let report = apply_plan(sh, &plan).await?;
            if report.changed() {
                info!(actions = ?report.actions, job = %job.slug(), "host converged");
            }
            let observation = observe_job(sh, &job, RECORDS).await?;
            let mut failure_log = Vec::new();
            if want_failure_log
                && let Some(last) = observation.last_run().filter(|r| !r.succeeded())
            {
                let since = last.started.timestamp().to_string();
                let unit = job.service_unit();
                let out = crate::host::shell::run_script_limited(
                    sh,
                    "read the failed run's journal",
                    FAILURE_LOG,
                    &[
                        &unit,
                        &since,
                        &FAILURE_LOG_LINES.to_string(),
                        &MAX_LOG_LINE.to_string(),
                    ],
                    b"",
                    StdoutLimit::Tail(MAX_FAILURE_LOG),
                )
                .await?;
                failure_log = parse_failure_log(&out.stdout);
            }
            Ok(Converged {
                observation,
                failure_log,
                credential_expiry: None,
                refresh_at: None,
            })
        }
        .boxed()
    });
    let span = info_span!("host_job", host = %host.name_any(), job = %job.slug());
    let expires = credentials.expires;
    match tokio::time::timeout(ctx.host_timeout, work.instrument(span)).await {
        Err(_) => Err(Failure::timeout(&target.name, ctx.host_timeout)),
        Ok(Err(e)) => Err(Failure::from_host(&e)),
        Ok(Ok(c)) => Ok(Converged {
            credential_expiry: expires,
            refresh_at,
            ..c
        }),
    }
}

/// Names of the namespace's Hosts as the cache holds them (deleting ones included: they can
/// still be reached until they are gone).
pub fn existing_hosts(ctx: &Context, ns: &str) -> BTreeSet<String> {
    ctx.hosts
        .state()
        .into_iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .map(|h| h.name_any())
        .collect()
}

/// Takes the job off every listed host, concurrently (the pool bounds how many at once);
/// returns the hosts where that failed, with why.
pub async fn remove_from_hosts(
    ctx: &Context,
    ns: &str,
    kind: PolicyKind,
    policy: &str,
    hosts: &BTreeSet<String>,
) -> BTreeMap<String, Failure> {
    let results = futures::future::join_all(
        hosts
            .iter()
            .map(|h| async move { (h.clone(), remove_from_host(ctx, ns, kind, policy, h).await) }),
    )
    .await;
    let mut failed = BTreeMap::new();
    for (host, r) in results {
        match r {
            Ok(()) => info!(host = %host, kind = %kind, policy, "job removed from host"),
            Err(f) => {
                warn!(host = %host, kind = %kind, policy, reason = f.reason, message = %f.message, "removing the job failed");
                failed.insert(host, f);
            }
        }
    }
    failed
}

/// Runs a plan's removals; the series of hosts that lost the job and are not selected any
/// more disappear with it. Returns the hosts where the removal failed.
pub async fn remove_planned(
    ctx: &Context,
    ns: &str,
    kind: PolicyKind,
    policy: &str,
    plan: &UnitPlan,
    selected: &BTreeSet<String>,
) -> BTreeMap<String, Failure> {
    let failed = remove_from_hosts(ctx, ns, kind, policy, &plan.remove).await;
    for host in plan
        .remove
        .iter()
        .chain(&plan.forget)
        .filter(|h| !failed.contains_key(*h) && !selected.contains(*h))
    {
        ctx.metrics.forget_job_host(
            kind,
            &PolicyHostLabels {
                namespace: ns.to_string(),
                policy: policy.to_string(),
                host: host.clone(),
            },
        );
    }
    failed
}

/// The hosts a deleted policy's job may be on: the record, or for a status written before
/// the record existed, the current selection (empty when the references never resolved:
/// such a policy never installed anything).
pub async fn recorded_or_selected(
    ctx: &Context,
    ns: &str,
    recorded: Option<&Vec<String>>,
    backup_policy_ref: Option<&LocalObjectRef>,
    host_selector: Option<&LabelSelector>,
    repository_ref: Option<&LocalObjectRef>,
) -> BTreeSet<String> {
    if let Some(r) = recorded {
        return r.iter().cloned().collect();
    }
    match resolve_targets(ctx, ns, backup_policy_ref, host_selector, repository_ref).await {
        Ok(t) => selected_hosts(ctx, &t.selector, ns)
            .iter()
            .map(|h| h.name_any())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Finalizer work of a Retention/VerifyPolicy: the job leaves every host in `recorded`.
/// Returns the hosts still pending (the finalizer stays); unreachable hosts are given up
/// after [`CLEANUP_GRACE`] with a `CleanupAbandoned` Warning.
pub async fn remove_everywhere(
    ctx: &Context,
    obj: &ObjectReference,
    meta: &kube::core::ObjectMeta,
    kind: PolicyKind,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let plan = plan_units(
        UnitMode::RemoveAll,
        &BTreeSet::new(),
        Some(recorded),
        &existing_hosts(ctx, &ns),
        &BTreeSet::new(),
    );
    let failed = remove_planned(ctx, &ns, kind, &name, &plan, &BTreeSet::new()).await;
    let (pending, abandoned) =
        split_cleanup_failures(&failed, deleting_for(meta, chrono::Utc::now()));
    for host in &abandoned {
        event(
            ctx,
            obj,
            true,
            "CleanupAbandoned",
            format!(
                "host {host} stayed unreachable for {}s after deletion; its {kind} units were left in place",
                CLEANUP_GRACE.as_secs()
            ),
        )
        .await;
    }
    let keep: Vec<String> = pending.clone();
    drop_stale_entries(ctx, &ns, crd_kind(kind), &name, &BTreeSet::new(), &keep).await;
    if pending.is_empty() {
        info!(hosts = plan.remove.len(), kind = %kind, "job removed from every host");
    }
    pending
}

/// The API kind of a host job's policy, as `Host.status.policies[].kind` names it.
pub fn crd_kind(kind: PolicyKind) -> CrdKind {
    match kind {
        PolicyKind::Backup => CrdKind::BackupPolicy,
        PolicyKind::Retention => CrdKind::RetentionPolicy,
        PolicyKind::Verify => CrdKind::VerifyPolicy,
    }
}

/// Removes this policy's `Host.status.policies` entry from hosts that are neither selected
/// nor may still carry the job (`keep`).
pub async fn drop_stale_entries(
    ctx: &Context,
    ns: &str,
    kind: CrdKind,
    policy: &str,
    selected: &BTreeSet<String>,
    keep: &[String],
) {
    let with_entry = host_status::hosts_with_entry(ctx, ns, kind, policy);
    for host in super::units::stale_entries(&with_entry, selected, keep) {
        host_status::sync_entry(ctx, ns, &host, kind, policy, None).await;
    }
}

/// How long ago the object was marked for deletion (zero when it is not).
pub fn deleting_for(meta: &kube::core::ObjectMeta, now: chrono::DateTime<chrono::Utc>) -> Duration {
    meta.deletion_timestamp
        .as_ref()
        .map(|t| Duration::from_secs((now.timestamp() - t.0.as_second()).max(0) as u64))
        .unwrap_or_default()
}

/// Splits failed removals during a deletion into hosts that keep the finalizer and hosts
/// given up on: only an unreachable host, and only once the grace is over. Auth or host key
/// problems keep it, since a human can fix those.
pub fn split_cleanup_failures(
    failed: &BTreeMap<String, Failure>,
    deleting_for: Duration,
) -> (Vec<String>, Vec<String>) {
    let (mut pending, mut abandoned) = (Vec::new(), Vec::new());
    for (host, f) in failed {
        if f.reason == reasons::HOST_UNREACHABLE && deleting_for > CLEANUP_GRACE {
            abandoned.push(host.clone());
        } else {
            pending.push(host.clone());
        }
    }
    (pending, abandoned)
}

/// Takes a job off one host (units, config, credentials; never data or run records).
pub async fn remove_from_host(
    ctx: &Context,
    ns: &str,
    kind: PolicyKind,
    policy: &str,
    host: &str,
) -> Result<(), Failure> {
    let Some(h) = ctx.hosts.get(&ObjectRef::new(host).within(ns)) else {
        return Ok(());
    };
    let secrets = read_secrets(
        ctx,
        ns,
        std::slice::from_ref(&h.spec.ssh_key_secret_ref.name),
    )
    .await?;
    let target = derive::host_target(&h, &secrets).map_err(|e| Failure::from_derive(&e))?;
    let job = JobId::new(kind, policy).map_err(|detail| Failure {
        reason: super::error::INVALID_SPEC,
        message: detail,
        retry: Retry::OnChange,
    })?;
    let key = format!("{ns}/{host}");
    let work = ctx.pool.with_host(&key, &target, |sh| {
        let job = job.clone();
        async move { remove_job(sh, &job).await }.boxed()
    });
    let span = info_span!("remove_job", host = %host, job = %job.slug());
    match tokio::time::timeout(ctx.host_timeout, work.instrument(span)).await {
        Err(_) => Err(Failure::timeout(host, ctx.host_timeout)),
        Ok(Err(e)) => Err(Failure::from_host(&e)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Server-side apply of a status subresource, skipped when nothing changed.
pub async fn write_status<K>(
    ctx: &Context,
    obj: &K,
    kind: &str,
    changed: bool,
    status: serde_json::Value,
) -> Result<(), super::error::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if !changed {
        return Ok(());
    }
    let ns = obj.namespace().ok_or(super::error::Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "fleetsnap.io/v1alpha1",
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::apply(super::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// A condition update in one line: `Some(true)` / `Some(false)` / `None` (Unknown).
pub fn condition(
    conditions: &mut Vec<fleetsnap_crds::common::Condition>,
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    use fleetsnap_crds::common::{Condition, ConditionStatus, upsert_condition};
    let status = match status {
        Some(true) => ConditionStatus::True,
        Some(false) => ConditionStatus::False,
        None => ConditionStatus::Unknown,
    };
    upsert_condition(
        conditions,
        Condition::new(
            type_,
            status,
            reason,
            message,
            generation,
            super::summary::to_time(chrono::Utc::now()),
        ),
    );
}

/// A reconcile may set a condition more than once (a mode's verdict, then a refusal on
/// top); what counts is the change against the stored status. A condition whose status is
/// the stored one keeps the stored transition time, so such a round trip writes nothing.
pub fn keep_transition_times(
    stored: &[fleetsnap_crds::common::Condition],
    current: &mut [fleetsnap_crds::common::Condition],
) {
    for c in current.iter_mut() {
        if let Some(s) = stored
            .iter()
            .find(|s| s.type_ == c.type_ && s.status == c.status)
        {
            c.last_transition_time = s.last_transition_time.clone();
        }
    }
}

/// Best-effort Event on any object.
pub async fn event(
    ctx: &Context,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &'static str,
    note: String,
) {
    super::events::publish(
        &ctx.recorder,
        obj,
        &super::summary::EventSpec {
            warning,
            reason,
            note,
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::super::error::Retry;
    use super::*;

    fn failure(reason: &'static str) -> Failure {
        Failure {
            reason,
            message: "m".into(),
            retry: Retry::Backoff,
        }
    }

    #[test]
    fn only_unreachable_hosts_are_given_up_and_only_after_the_grace() {
        let failed: BTreeMap<String, Failure> = [
            ("dead".to_string(), failure(reasons::HOST_UNREACHABLE)),
            ("locked-out".to_string(), failure(reasons::AUTH_FAILED)),
        ]
        .into_iter()
        .collect();
        let (pending, abandoned) = split_cleanup_failures(&failed, Duration::from_secs(60));
        assert_eq!(pending, vec!["dead", "locked-out"]);
        assert!(abandoned.is_empty());
        let (pending, abandoned) =
            split_cleanup_failures(&failed, CLEANUP_GRACE + Duration::from_secs(1));
        assert_eq!(pending, vec!["locked-out"]);
        assert_eq!(abandoned, vec!["dead"]);
    }

    #[test]
    fn a_condition_back_at_its_stored_status_keeps_its_transition_time() {
        use fleetsnap_crds::common::ConditionStatus;
        let t = |s| super::super::summary::unix_time(s);
        let mut stored = Vec::new();
        condition(
            &mut stored,
            "Ready",
            Some(false),
            "DuplicateHost",
            "m",
            None,
        );
        stored[0].last_transition_time = t(100);
        // True, then False again within one reconcile.
        let mut current = stored.clone();
        condition(&mut current, "Ready", Some(true), "Succeeded", "", None);
        condition(
            &mut current,
            "Ready",
            Some(false),
            "DuplicateHost",
            "m",
            None,
        );
        assert_ne!(current, stored);
        keep_transition_times(&stored, &mut current);
        assert_eq!(current, stored);
        // A real flip keeps its new time.
        let mut flipped = stored.clone();
        condition(&mut flipped, "Ready", Some(true), "Succeeded", "", None);
        keep_transition_times(&stored, &mut flipped);
        assert_eq!(flipped[0].status, ConditionStatus::True);
        assert_ne!(flipped[0].last_transition_time, t(100));
    }

    #[test]
    fn deletion_age_is_zero_until_deleted() {
        let now = chrono::Utc::now();
        let mut meta = kube::core::ObjectMeta::default();
        assert_eq!(deleting_for(&meta, now), Duration::ZERO);
        meta.deletion_timestamp = Some(super::super::summary::to_time(
            now - chrono::Duration::seconds(90),
        ));
        assert_eq!(deleting_for(&meta, now), Duration::from_secs(90));
    }

    #[test]
    fn failure_log_is_bounded_in_lines_and_length() {
        let mut raw = Vec::new();
        for i in 0..200 {
            raw.extend_from_slice(format!("error: line {i} {}\n", "x".repeat(5000)).as_bytes());
        }
        let log = parse_failure_log(&raw);
        assert_eq!(log.len(), FAILURE_LOG_LINES);
        assert!(log[0].starts_with("error: line 150 "), "{}", &log[0][..20]);
        assert!(log.iter().all(|l| l.len() <= MAX_LOG_LINE + '…'.len_utf8()));
        assert_eq!(
            parse_failure_log(b"error: a\nFatal: b\n"),
            ["error: a", "Fatal: b"]
        );
    }
}
