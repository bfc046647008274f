//! `Host.status`: the Host controller keeps reachability, OS facts and the installed
//! executor fresh (one fact-gathering round trip per host and resync), and the policy
//! reconcilers add their own entry to `status.policies`.
//!
//! Both write with server-side apply. The host-level fields belong to the field manager
//! `fleetsnap-operator` and are always written complete; each policy's entry belongs to a
//! manager named after the policy, so entries written by different policies merge instead
//! of replacing each other, and removing one entry is an apply of nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::Host;
use fleetsnap_crds::common::{
    Condition, ConditionStatus, condition_types, reasons, upsert_condition,
};
use fleetsnap_crds::host::{ExecutorStatus, HostPolicyStatus, HostStatus, OsFacts, PolicyKind};
use futures::FutureExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info_span, warn};

use super::derive;
use super::error::{Error, Failure, Retry, retry_after};
use super::identity;
use super::summary::to_time;
use super::{Context, FIELD_MANAGER};
use crate::host::apply::gather_facts;
use crate::host::facts::{FactQuery, HostFacts};
use crate::host::layout;
use crate::host::model::ExecutorArtifact;
use crate::host::profile;
use crate::metrics::HostLabels;

pub const KIND: &str = "Host";
/// How often a healthy host is contacted for fresh facts.
const RESYNC: Duration = Duration::from_secs(60);
/// `lastContact` of a host that stays reachable is refreshed this often, not on every
/// contact (one etcd write per host per minute is what Kubernetes dropped for Nodes,
/// KEP-0009); `fleetsnap_host_last_contact_timestamp_seconds` keeps the exact time.
pub const LAST_CONTACT_REFRESH: Duration = Duration::from_secs(300);
/// Reachability condition type (besides the standard `Ready`).
pub const REACHABLE: &str = "Reachable";

/// Field manager of one policy's entry: `fleetsnap-operator.<kind>.<policy>`. One manager
/// per (kind, policy) owns exactly one item of the `policies` list (keyed by kind and name),
/// so an apply by one policy can neither replace nor remove another's entry, whichever
/// controller wrote it.
pub fn policy_manager(kind: PolicyKind, policy: &str) -> String {
    let kind = match kind {
        PolicyKind::BackupPolicy => "backuppolicy",
        PolicyKind::RetentionPolicy => "retentionpolicy",
        PolicyKind::VerifyPolicy => "verifypolicy",
    };
    format!("{FIELD_MANAGER}.{kind}.{policy}")
}

/// The patch that sets (or with `None` removes) one policy's entry. Removing is an apply of
/// an empty status by the entry's manager: server-side apply drops the fields that manager
/// alone owned, and nothing else.
pub fn entry_patch(entry: Option<&HostPolicyStatus>) -> serde_json::Value {
    let status = match entry {
        Some(e) => json!({ "policies": [e] }),
        None => json!({}),
    };
    json!({
        "apiVersion": "fleetsnap.io/v1alpha1",
        "kind": "Host",
        "status": status,
    })
}

/// Writes (or with `None` removes) this BackupPolicy's entry in `Host.status.policies`.
pub async fn apply_policy_entry(
    ctx: &Context,
    ns: &str,
    host: &str,
    policy: &str,
    entry: Option<HostPolicyStatus>,
) -> Result<(), Error> {
    apply_entry(
        ctx,
        ns,
        host,
        PolicyKind::BackupPolicy,
        policy,
        entry.as_ref(),
    )
    .await
}

/// Writes (or with `None` removes) one policy's entry in `Host.status.policies`.
pub async fn apply_entry(
    ctx: &Context,
    ns: &str,
    host: &str,
    kind: PolicyKind,
    policy: &str,
    entry: Option<&HostPolicyStatus>,
) -> Result<(), Error> {
    let api: Api<Host> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch_status(
            host,
            &PatchParams::apply(&policy_manager(kind, policy)).force(),
            &Patch::Apply(&entry_patch(entry)),
        )
        .await
    {
        Ok(_) => Ok(()),
        // The Host was deleted meanwhile: there is no entry to keep up to date.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// This policy's entry on a Host as the cache last saw it.
pub fn cached_entry(host: &Host, kind: PolicyKind, policy: &str) -> Option<HostPolicyStatus> {
    host.status
        .as_ref()?
        .policies
        .iter()
        .find(|e| e.kind == kind && e.name == policy)
        .cloned()
}

/// Whether writing `entry` would change what the Host shows (compared as the JSON the API
/// stores, so an unchanged entry costs no write and no watch event).
pub fn entry_differs(cached: Option<&HostPolicyStatus>, entry: Option<&HostPolicyStatus>) -> bool {
    let as_json = |e: Option<&HostPolicyStatus>| e.map(|e| serde_json::to_value(e).ok());
    as_json(cached) != as_json(entry)
}

/// This policy's entry on the named Host, from the cache.
pub fn current_entry(
    ctx: &Context,
    ns: &str,
    host: &str,
    kind: PolicyKind,
    policy: &str,
) -> Option<HostPolicyStatus> {
    ctx.hosts
        .get(&kube::runtime::reflector::ObjectRef::new(host).within(ns))
        .and_then(|h| cached_entry(&h, kind, policy))
}

/// Names of the namespace's Hosts that list this policy in `status.policies`.
pub fn hosts_with_entry(
    ctx: &Context,
    ns: &str,
    kind: PolicyKind,
    policy: &str,
) -> std::collections::BTreeSet<String> {
    ctx.hosts
        .state()
        .into_iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .filter(|h| cached_entry(h, kind, policy).is_some())
        .map(|h| h.name_any())
        .collect()
}

/// This policy's entries on the namespace's Hosts, by Host name, from the cache: the
/// per-host state behind the policy's counts, and the record of which hosts may carry the
/// policy's job.
pub fn entries_of(
    ctx: &Context,
    ns: &str,
    kind: PolicyKind,
    policy: &str,
) -> std::collections::BTreeMap<String, HostPolicyStatus> {
    ctx.hosts
        .state()
        .into_iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .filter_map(|h| cached_entry(&h, kind, policy).map(|e| (h.name_any(), e)))
        .collect()
}

/// The entry written for a host before its job is first installed: it records that the
/// host may carry the job (so a crash between install and the next status write cannot
/// forget it), with no run known yet.
pub fn install_record(kind: PolicyKind, policy: &str) -> HostPolicyStatus {
    HostPolicyStatus {
        state: (kind == PolicyKind::BackupPolicy)
            .then_some(fleetsnap_crds::backup_policy::HostBackupState::Pending),
        ..super::summary::empty_entry(kind, policy)
    }
}

/// Sets (or removes) the entry unless the cached Host already shows exactly that. Failures
/// are logged, not returned: the entry is a report, and the next reconcile writes it again.
pub async fn sync_entry(
    ctx: &Context,
    ns: &str,
    host: &str,
    kind: PolicyKind,
    policy: &str,
    entry: Option<&HostPolicyStatus>,
) {
    let cached = current_entry(ctx, ns, host, kind, policy);
    if !entry_differs(cached.as_ref(), entry) {
        return;
    }
    if let Err(e) = apply_entry(ctx, ns, host, kind, policy, entry).await {
        warn!(host, ?kind, policy, error = %e, "writing the Host.status.policies entry failed");
    }
}

/// The executor as installed: version from the link target, sha256 when it is the
/// version this operator ships (the only file whose hash was asked for).
pub fn installed_executor(
    facts: &HostFacts,
    artifact: &ExecutorArtifact,
) -> Option<ExecutorStatus> {
    let target = facts.links.get(layout::BIN_LINK)?;
    let version = target
        .strip_prefix(&format!("{}/", layout::LIB_DIR))?
        .strip_suffix("/fleetsnap")?
        .to_string();
    let sha256 = facts
        .files
        .get(target)
        .map(|f| f.sha256.clone())
        .filter(|_| version == artifact.version)
        .unwrap_or_default();
    Some(ExecutorStatus { version, sha256 })
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> Condition {
    Condition::new(
        type_,
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason,
        message,
        None,
        to_time(now),
    )
}

/// The previous `lastContact` while the host stayed reachable and it is younger than
/// [`LAST_CONTACT_REFRESH`]; otherwise now.
fn last_contact(
    previous: &HostStatus,
    now: DateTime<Utc>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let refresh = LAST_CONTACT_REFRESH.as_secs() as i64;
    match (&previous.reachable, &previous.last_contact) {
        (Some(true), Some(t)) if (0..refresh).contains(&(now.timestamp() - t.0.as_second())) => {
            t.clone()
        }
        _ => to_time(now),
    }
}

/// Host-level status after a successful contact. A host the jobs cannot run on
/// ([`profile`]) is reachable but not Ready, and Stalled: only a change to the host or to the
/// selection helps.
pub fn reachable_status(
    previous: &HostStatus,
    facts: &HostFacts,
    artifact: &ExecutorArtifact,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> HostStatus {
    let mut conditions = previous.conditions.clone();
    release_duplicate(&mut conditions);
    upsert_condition(
        &mut conditions,
        condition(
            REACHABLE,
            true,
            reasons::SUCCEEDED,
            "SSH login with the pinned host key works".into(),
            now,
        ),
    );
    let profile = profile::profile(facts);
    match &profile {
        Ok(p) => {
            conditions.retain(|c| {
                !(c.type_ == condition_types::STALLED && c.reason == reasons::UNSUPPORTED_HOST)
            });
            upsert_condition(
                &mut conditions,
                condition(
                    condition_types::READY,
                    true,
                    reasons::SUCCEEDED,
                    format!(
                        "host is reachable and managed (systemd {}, credentials: {})",
                        p.systemd, p.credentials
                    ),
                    now,
                ),
            );
        }
        Err(why) => {
            let message = format!("{why}; nothing is installed on this host");
            for (type_, ok) in [
                (condition_types::READY, false),
                (condition_types::STALLED, true),
            ] {
                upsert_condition(
                    &mut conditions,
                    condition(type_, ok, reasons::UNSUPPORTED_HOST, message.clone(), now),
                );
            }
        }
    }
    let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    HostStatus {
        reachable: Some(true),
        last_contact: Some(last_contact(previous, now)),
        os: Some(OsFacts {
            arch: nonempty(&facts.arch),
            kernel: nonempty(&facts.kernel),
            distribution: nonempty(&facts.os)
                .or_else(|| previous.os.as_ref().and_then(|o| o.distribution.clone())),
            systemd_version: facts.systemd_version().and_then(|v| i32::try_from(v).ok()),
            creds_encrypted: Some(facts.creds_encrypt),
            libc: facts.libc.clone(),
            credential_mode: Some(
                profile
                    .map(|p| p.credentials.as_str())
                    .unwrap_or("unsupported")
                    .to_string(),
            ),
        }),
        executor: installed_executor(facts, artifact).or_else(|| previous.executor.clone()),
        policies: Vec::new(),
        conditions,
        observed_generation: generation,
    }
}

/// Host-level status after a failed contact: the last known facts stay.
pub fn unreachable_status(
    previous: &HostStatus,
    failure: &Failure,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> HostStatus {
    let mut conditions = previous.conditions.clone();
    release_duplicate(&mut conditions);
    let message = failure.message.clone();
    upsert_condition(
        &mut conditions,
        condition(REACHABLE, false, failure.reason, message.clone(), now),
    );
    upsert_condition(
        &mut conditions,
        condition(condition_types::READY, false, failure.reason, message, now),
    );
    HostStatus {
        reachable: Some(false),
        last_contact: previous.last_contact.clone(),
        os: previous.os.clone(),
        executor: previous.executor.clone(),
        policies: Vec::new(),
        conditions,
        observed_generation: generation,
    }
}

/// Host-level status of a Host refused as a duplicate identity: nothing was contacted, so
/// the last known facts and reachability stay; `Ready` is False and `Stalled` True, both
/// with reason `DuplicateHost` and a message naming the older Host.
pub fn duplicate_status(
    previous: &HostStatus,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> HostStatus {
    let mut conditions = previous.conditions.clone();
    upsert_condition(
        &mut conditions,
        condition(
            condition_types::READY,
            false,
            reasons::DUPLICATE_HOST,
            message.to_string(),
            now,
        ),
    );
    upsert_condition(
        &mut conditions,
        Condition::new(
            condition_types::STALLED,
            ConditionStatus::True,
            reasons::DUPLICATE_HOST,
            message,
            None,
            to_time(now),
        ),
    );
    HostStatus {
        policies: Vec::new(),
        conditions,
        observed_generation: generation,
        ..previous.clone()
    }
}

/// A Host no longer refused loses the `DuplicateHost` stall; other conditions stay.
fn release_duplicate(conditions: &mut Vec<Condition>) {
    conditions
        .retain(|c| !(c.type_ == condition_types::STALLED && c.reason == reasons::DUPLICATE_HOST));
}

/// The host-level part of a status, for comparing without the policies' entries.
fn host_level(s: &HostStatus) -> HostStatus {
    HostStatus {
        policies: Vec::new(),
        ..s.clone()
    }
}

pub async fn reconcile(host: Arc<Host>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = host.namespace().ok_or(Error::NoNamespace)?;
    let name = host.name_any();
    let span = info_span!("reconcile", kind = KIND, namespace = %ns, host = %name);
    async {
        let previous = host.status.clone().unwrap_or_default();
        let now = Utc::now();
        let key = format!("{ns}/{name}");
        let attempts_key = format!("{KIND}/{key}");
        // A refused duplicate is not even contacted: its address may well be the older
        // Host's machine. Judged on full caches only: a half-filled one could miss the twin.
        ctx.caches_ready().await;
        if let Some(message) = identity::refused_in_namespace(&ctx, &ns).get(&name) {
            let status = duplicate_status(&previous, message, host.metadata.generation, now);
            if host_level(&previous) != status || host.status.is_none() {
                warn!(%message, "duplicate host identity; refused");
                write_host_level(&ctx, &ns, &name, &status).await?;
            }
            // Released only when the other Host changes or goes; looked at again each resync.
            return Ok(Action::requeue(RESYNC));
        }
        let contact = contact(&ctx, &host, &ns).await;
        let labels = HostLabels {
            namespace: ns.clone(),
            host: name.clone(),
        };
        let (status, action) = match contact {
            Ok(facts) => {
                ctx.reset_attempts(&attempts_key);
                ctx.metrics.host_contact(&labels, true, now);
                (
                    reachable_status(
                        &previous,
                        &facts,
                        &ctx.artifact,
                        host.metadata.generation,
                        now,
                    ),
                    Action::requeue(RESYNC),
                )
            }
            Err(f) => {
                warn!(reason = f.reason, message = %f.message, "host not reachable");
                ctx.metrics.reconcile_error(KIND, f.reason);
                if matches!(f.retry, Retry::Slow(_))
                    || f.reason == fleetsnap_crds::common::reasons::HOST_UNREACHABLE
                {
                    ctx.metrics.host_contact(&labels, false, now);
                }
                let attempt = if f.is_transient() {
                    ctx.failed_attempt(&attempts_key)
                } else {
                    1
                };
                let action = match retry_after(&f, attempt) {
                    Some(d) => Action::requeue(d.max(Duration::from_secs(10))),
                    None => Action::await_change(),
                };
                (
                    unreachable_status(&previous, &f, host.metadata.generation, now),
                    action,
                )
            }
        };
        if host_level(&previous) != status || host.status.is_none() {
            write_host_level(&ctx, &ns, &name, &status).await?;
        }
        Ok(action)
    }
    .instrument(span)
    .await
}

/// Server-side apply of the host-level status fields (manager `fleetsnap-operator`).
async fn write_host_level(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &HostStatus,
) -> Result<(), Error> {
    let api: Api<Host> = Api::namespaced(ctx.client.clone(), ns);
    let mut body = serde_json::to_value(status).unwrap_or_default();
    // Policies' entries belong to their own field managers.
    if let Some(obj) = body.as_object_mut() {
        obj.remove("policies");
    }
    let patch = json!({
        "apiVersion": "fleetsnap.io/v1alpha1",
        "kind": "Host",
        "status": body,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Logs in and gathers OS facts plus the installed executor.
async fn contact(ctx: &Context, host: &Host, ns: &str) -> Result<HostFacts, Failure> {
    let secrets = super::jobs::read_secrets(
        ctx,
        ns,
        std::slice::from_ref(&host.spec.ssh_key_secret_ref.name),
    )
    .await?;
    let target = derive::host_target(host, &secrets).map_err(|e| Failure::from_derive(&e))?;
    let query = FactQuery {
        large_files: vec![layout::executor_path(&ctx.artifact.version)],
        links: vec![layout::BIN_LINK.to_string()],
        ..FactQuery::default()
    };
    let key = format!("{ns}/{}", host.name_any());
    let work = ctx.pool.with_host(&key, &target, |sh| {
        let q = query.clone();
        async move { gather_facts(sh, &q).await }.boxed()
    });
    match tokio::time::timeout(ctx.host_timeout, work).await {
        Err(_) => Err(Failure::timeout(&target.name, ctx.host_timeout)),
        Ok(Err(e)) => Err(Failure::from_host(&e)),
        Ok(Ok(f)) => Ok(f),
    }
}

pub fn error_policy(host: Arc<Host>, err: &Error, ctx: Arc<Context>) -> Action {
    let (_, action) = ctx.reconcile_failed(KIND, host.as_ref(), err);
    warn!(host = %host.name_any(), error = %err, "Host reconcile failed");
    action
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::FileFact;

    fn artifact() -> ExecutorArtifact {
        ExecutorArtifact {
            version: "0.1.0-abc".into(),
            sha256: "f".repeat(64),
            local_path: "/bin/true".into(),
        }
    }

    fn facts() -> HostFacts {
        let mut f = HostFacts {
            arch: "x86_64".into(),
            kernel: "6.1.0".into(),
            systemd: "systemd 252 (252.33-1~deb12u1)".into(),
            libc: Some("glibc 2.36".into()),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            creds_encrypt: true,
            ..HostFacts::default()
        };
        let exe = layout::executor_path("0.1.0-abc");
        f.links.insert(layout::BIN_LINK.into(), exe.clone());
        f.files.insert(
            exe,
            FileFact {
                sha256: "f".repeat(64),
                mode: 0o755,
                owner: "root".into(),
                group: "root".into(),
            },
        );
        f
    }

    #[test]
    fn reachable_host_reports_facts_and_executor() {
        let now = Utc::now();
        let s = reachable_status(&HostStatus::default(), &facts(), &artifact(), Some(2), now);
        assert_eq!(s.reachable, Some(true));
        let os = s.os.unwrap();
        assert_eq!(os.systemd_version, Some(252));
        assert_eq!(os.arch.as_deref(), Some("x86_64"));
        assert_eq!(os.libc.as_deref(), Some("glibc 2.36"));
        assert_eq!(
            os.distribution.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os.credential_mode.as_deref(), Some("encrypted"));
        let exe = s.executor.unwrap();
        assert_eq!(exe.version, "0.1.0-abc");
        assert_eq!(exe.sha256, "f".repeat(64));
        assert_eq!(s.conditions.len(), 2);
        assert!(
            s.conditions
                .iter()
                .all(|c| c.status == ConditionStatus::True)
        );
    }

    /// An aarch64 host is reachable, but not Ready and Stalled with the reason; once it is
    /// replaced by one the executor runs on, the Stalled condition goes.
    #[test]
    fn a_host_the_jobs_cannot_run_on_is_stalled_with_the_reason() {
        let now = Utc::now();
        let mut arm = facts();
        arm.arch = "aarch64".into();
        let s = reachable_status(&HostStatus::default(), &arm, &artifact(), Some(1), now);
        assert_eq!(s.reachable, Some(true));
        let find = |s: &HostStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .unwrap_or_else(|| panic!("no {t} condition"))
        };
        let ready = find(&s, "Ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "UnsupportedHost");
        assert!(
            ready.message.contains("architecture \"aarch64\"")
                && ready.message.contains("nothing is installed"),
            "{}",
            ready.message
        );
        assert_eq!(find(&s, "Stalled").status, ConditionStatus::True);
        assert_eq!(
            s.os.as_ref().unwrap().credential_mode.as_deref(),
            Some("unsupported")
        );

        let mut old = facts();
        old.systemd = "systemd 239 (239-78.el8)".into();
        let back = reachable_status(&s, &old, &artifact(), Some(1), now);
        assert!(back.conditions.iter().all(|c| c.type_ != "Stalled"));
        let ready = find(&back, "Ready");
        assert_eq!(ready.status, ConditionStatus::True);
        assert!(
            ready.message.contains("credentials: file"),
            "{}",
            ready.message
        );
        assert_eq!(back.os.unwrap().credential_mode.as_deref(), Some("file"));
    }

    #[test]
    fn foreign_executor_version_has_no_hash_and_missing_link_keeps_previous() {
        let mut f = facts();
        f.links
            .insert(layout::BIN_LINK.into(), layout::executor_path("0.0.9"));
        let exe = installed_executor(&f, &artifact()).unwrap();
        assert_eq!(exe.version, "0.0.9");
        assert_eq!(exe.sha256, "");
        f.links.clear();
        assert_eq!(installed_executor(&f, &artifact()), None);
    }

    #[test]
    fn every_policy_kind_and_name_has_its_own_field_manager() {
        let managers: std::collections::BTreeSet<String> = [
            (PolicyKind::BackupPolicy, "nightly"),
            (PolicyKind::RetentionPolicy, "nightly"),
            (PolicyKind::VerifyPolicy, "nightly"),
            (PolicyKind::RetentionPolicy, "weekly"),
        ]
        .iter()
        .map(|(k, n)| policy_manager(*k, n))
        .collect();
        assert_eq!(managers.len(), 4);
        // Unchanged for backups, so entries written by earlier versions keep their owner.
        assert_eq!(
            policy_manager(PolicyKind::BackupPolicy, "nightly"),
            "fleetsnap-operator.backuppolicy.nightly"
        );
        // Longest policy name still fits the API's 128-character manager limit.
        assert!(policy_manager(PolicyKind::RetentionPolicy, &"a".repeat(63)).len() <= 128);
    }

    /// What makes per-manager entries safe: the API merges `status.policies` items by
    /// (kind, name), so an apply carrying one item never replaces the list.
    #[test]
    fn host_policies_merge_by_kind_and_name() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Host::crd()).unwrap();
        let policies = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["policies"];
        assert_eq!(policies["x-kubernetes-list-type"], "map");
        assert_eq!(
            policies["x-kubernetes-list-map-keys"],
            serde_json::json!(["kind", "name"])
        );
    }

    #[test]
    fn an_entry_patch_carries_one_item_and_removal_carries_none() {
        let e = HostPolicyStatus {
            kind: PolicyKind::VerifyPolicy,
            name: "weekly".into(),
            last_run: None,
            last_success: None,
            snapshot_id: None,
            bytes_added: None,
            duration_seconds: None,
            error: Some("HostUnreachable: timed out".into()),
            next_run: None,
            consecutive_failures: 0,
            credential_expiry: None,
            state: None,
        };
        let p = entry_patch(Some(&e));
        assert_eq!(p["kind"], "Host");
        assert_eq!(p["status"]["policies"].as_array().unwrap().len(), 1);
        assert_eq!(p["status"]["policies"][0]["kind"], "VerifyPolicy");
        assert_eq!(entry_patch(None)["status"], serde_json::json!({}));
        // Unchanged entries are not written again; a change or a removal is.
        assert!(!entry_differs(Some(&e), Some(&e.clone())));
        assert!(entry_differs(None, Some(&e)));
        assert!(entry_differs(Some(&e), None));
        assert!(!entry_differs(None, None));
        let mut later = e.clone();
        later.consecutive_failures = 1;
        assert!(entry_differs(Some(&e), Some(&later)));
    }

    #[test]
    fn a_refused_duplicate_stalls_and_is_released_by_the_next_contact() {
        let now = Utc::now();
        let ok = reachable_status(&HostStatus::default(), &facts(), &artifact(), Some(1), now);
        let msg = "Host b has the same hostname \"a\" as the older Host a";
        let dup = duplicate_status(&ok, msg, Some(1), now);
        // Facts stay as last known: nothing was contacted.
        assert_eq!(
            (dup.reachable, &dup.os, &dup.executor),
            (ok.reachable, &ok.os, &ok.executor)
        );
        let ready = dup.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "DuplicateHost")
        );
        assert_eq!(ready.message, msg);
        let stalled = dup
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(
            (stalled.status, stalled.reason.as_str()),
            (ConditionStatus::True, "DuplicateHost")
        );
        // Unchanged refusal: identical status, so no write.
        assert_eq!(duplicate_status(&dup, msg, Some(1), now), dup);
        // Released: the next successful contact drops the stall and is Ready again.
        let back = reachable_status(&dup, &facts(), &artifact(), Some(1), now);
        assert!(back.conditions.iter().all(|c| c.type_ != "Stalled"));
        assert_eq!(back.conditions.len(), 2);
        let f = Failure {
            reason: "HostUnreachable",
            message: "down".into(),
            retry: Retry::Backoff,
        };
        let down = unreachable_status(&dup, &f, Some(1), now);
        assert!(down.conditions.iter().all(|c| c.type_ != "Stalled"));
    }

    #[test]
    fn a_steady_host_is_rewritten_on_change_or_every_few_minutes_not_every_contact() {
        let t0 = Utc::now();
        let first = reachable_status(&HostStatus::default(), &facts(), &artifact(), Some(1), t0);
        let minute = chrono::Duration::seconds(60);
        let next = reachable_status(&first, &facts(), &artifact(), Some(1), t0 + minute);
        assert_eq!(
            host_level(&first),
            next,
            "an unchanged host was rewritten one minute after its last contact"
        );
        let refresh = chrono::Duration::from_std(LAST_CONTACT_REFRESH).unwrap();
        let later = t0 + refresh + minute;
        let refreshed = reachable_status(&first, &facts(), &artifact(), Some(1), later);
        assert_eq!(refreshed.last_contact, Some(to_time(later)));
        // Coming back after a failure is a change: written at once, with the exact time.
        let f = Failure {
            reason: "HostUnreachable",
            message: "down".into(),
            retry: Retry::Backoff,
        };
        let down = unreachable_status(&first, &f, Some(1), t0 + minute);
        let back = reachable_status(&down, &facts(), &artifact(), Some(1), t0 + minute * 2);
        assert_eq!(back.last_contact, Some(to_time(t0 + minute * 2)));
    }

    #[test]
    fn unreachable_host_keeps_last_known_facts() {
        let now = Utc::now();
        let ok = reachable_status(&HostStatus::default(), &facts(), &artifact(), Some(1), now);
        let f = Failure {
            reason: "HostKeyMismatch",
            message: "host key changed".into(),
            retry: Retry::Slow(Duration::from_secs(900)),
        };
        let s = unreachable_status(&ok, &f, Some(1), now);
        assert_eq!(s.reachable, Some(false));
        assert_eq!(s.os, ok.os);
        assert_eq!(s.last_contact, ok.last_contact);
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "HostKeyMismatch");
        assert_eq!(ready.status, ConditionStatus::False);
    }
}
