//! BackupRepository status: whether the spec is usable and its Secrets resolve, who uses
//! the repository, what is known about it from the policies' own status, and for an
//! `appendOnly` repository whether the storage enforces it. The only storage calls are that
//! bucket probe (two requests, cached for ten minutes per repository: see
//! [`super::append_only`]), so a large fleet costs a few list calls per repository and
//! resync, never one per host.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetsnap_crds::common::{
    Condition, ConditionStatus, SecretKeyRef, condition_types, reasons, upsert_condition,
};
use fleetsnap_crds::repository::{
    BackupRepositoryStatus, expand_path_template, expand_secret_name_template,
};
use fleetsnap_crds::retention_policy::RunOn;
use fleetsnap_crds::{BackupPolicy, BackupRepository, Host, RetentionPolicy, VerifyPolicy};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{Instrument, debug, info_span, warn};

use super::Context;
use super::append_only::{self, ProbeCache, Verdict};
use super::derive::{self, Secrets};
use super::error::Error;
use super::host_job::HostJob;
use super::summary::to_time;

pub const KIND: &str = "BackupRepository";
/// Usage counts and Secrets are looked at again this often (and on every spec change).
const RESYNC: Duration = Duration::from_secs(60);
/// Problems named in the Ready message before the rest is only counted.
const LISTED: usize = 5;

/// One Secret key the spec names, with the field that names it (for the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    pub field: &'static str,
    pub key: SecretKeyRef,
}

/// The Secret keys every use of the repository needs, whichever host: password, shared and
/// maintenance S3 keys, REST basic-auth credentials.
pub fn shared_secret_keys(repo: &BackupRepository) -> Vec<SecretUse> {
    let key = |field, name: &str, key: &str| SecretUse {
        field,
        key: SecretKeyRef {
            name: name.to_string(),
            key: key.to_string(),
        },
    };
    let mut out = vec![SecretUse {
        field: "passwordSecretRef",
        key: repo.spec.password_secret_ref.clone(),
    }];
    let aws = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
    if let Some(r) = repo
        .spec
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        out.extend(aws.map(|k| key("s3.credentialsSecretRef", &r.name, k)));
    }
    if let Some(r) = &repo.spec.maintenance_credentials_secret_ref {
        out.extend(aws.map(|k| key("maintenanceCredentialsSecretRef", &r.name, k)));
    }
    if let Some(r) = repo
        .spec
        .rest
        .as_ref()
        .and_then(|r| r.credentials_secret_ref.as_ref())
    {
        out.extend(["username", "password"].map(|k| key("rest.credentialsSecretRef", &r.name, k)));
    }
    out
}

/// Spec problems admission may have let through (objects stored before a rule existed, or
/// rules admission cannot express).
pub fn spec_problems(repo: &BackupRepository) -> Vec<String> {
    let spec = &repo.spec;
    let mut out = Vec::new();
    let backends = [spec.s3.is_some(), spec.local.is_some(), spec.rest.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if backends != 1 {
        out.push(format!(
            "set exactly one of s3, local or rest ({backends} are set)"
        ));
    }
    if let Some(s3) = &spec.s3
        && s3.credentials_secret_ref.is_some()
        && s3.per_host_credentials.is_some()
    {
        out.push("s3: set credentialsSecretRef or perHostCredentials, not both".into());
    }
    if spec.append_only && spec.local.is_some() {
        out.push(
            "a local repository cannot be append-only: the host owns the directory and can \
             overwrite or delete any file in it"
                .into(),
        );
    }
    if spec.append_only && spec.maintenance_credentials_secret_ref.is_none() {
        out.push(
            "appendOnly needs maintenanceCredentialsSecretRef: hosts cannot delete, so \
             forget/prune runs in the operator with those credentials"
                .into(),
        );
    }
    // Any valid hostname expands like this sample; a bad template fails for every host.
    let ns = repo.namespace().unwrap_or_else(|| "default".into());
    if let Err(e) = expand_path_template(&spec.path_template, "host", &ns) {
        out.push(format!("pathTemplate {:?}: {e}", spec.path_template));
    }
    out
}

/// The per-host credentials Secret of every using Host, or why its name cannot be built.
pub fn per_host_secrets(
    repo: &BackupRepository,
    hosts: &[&Host],
) -> (Vec<(String, String)>, Vec<String>) {
    let Some(per_host) = repo
        .spec
        .s3
        .as_ref()
        .and_then(|s| s.per_host_credentials.as_ref())
    else {
        return (Vec::new(), Vec::new());
    };
    let (mut names, mut problems) = (Vec::new(), Vec::new());
    for h in hosts {
        match expand_secret_name_template(
            &per_host.secret_name_template,
            &h.name_any(),
            h.effective_hostname(),
        ) {
            Ok(name) => names.push((h.name_any(), name)),
            Err(e) => problems.push(format!(
                "perHostCredentials.secretNameTemplate for Host {}: {e}",
                h.name_any()
            )),
        }
    }
    (names, problems)
}

/// Which shared keys do not resolve; messages name Secret, key and field, never a value.
pub fn unresolved(uses: &[SecretUse], secrets: &Secrets) -> Vec<String> {
    uses.iter()
        .filter_map(|u| {
            derive::secret_value(secrets, &u.key)
                .err()
                .map(|e| format!("{} ({})", e.message, u.field))
        })
        .collect()
}

/// Per-host Secrets that do not exist (existence only: their keys are checked by the
/// policies when they deliver them, per host).
pub fn missing_per_host(names: &[(String, String)], existing: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|(_, secret)| !existing.contains(secret))
        .map(|(host, secret)| {
            format!("Secret {secret:?} does not exist (perHostCredentials of Host {host})")
        })
        .collect()
}

/// Who uses the repository, from the policies and the Host cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub policies: i32,
    pub hosts: BTreeSet<String>,
    pub initialized: BTreeSet<String>,
    pub last_maintenance: Option<Time>,
}

/// Policies using the repository (directly, or a Retention/VerifyPolicy through its
/// BackupPolicy), the Hosts they select, the Hosts a backup succeeded on at least once, and
/// the newest successful operator-side retention.
pub fn usage(
    repo: &str,
    backup: &[BackupPolicy],
    retention: &[RetentionPolicy],
    verify: &[VerifyPolicy],
    hosts: &[&Host],
) -> Usage {
    let mut out = Usage::default();
    let mut selectors: Vec<&LabelSelector> = Vec::new();
    let using_bp: Vec<&BackupPolicy> = backup
        .iter()
        .filter(|p| p.spec.repository_ref.name == repo)
        .collect();
    for p in &using_bp {
        out.policies += 1;
        selectors.push(&p.spec.host_selector);
        // Listed by a status written before bounded status.
        for h in p.status.iter().flat_map(|s| &s.hosts) {
            if h.last_success.is_some() {
                out.initialized.insert(h.name.clone());
            }
        }
    }
    // Each Host's entry of a policy using this repository says whether a backup succeeded.
    for h in hosts {
        let succeeded = h.status.iter().flat_map(|s| &s.policies).any(|e| {
            e.kind == fleetsnap_crds::host::PolicyKind::BackupPolicy
                && e.last_success.is_some()
                && using_bp.iter().any(|p| p.name_any() == e.name)
        });
        if succeeded {
            out.initialized.insert(h.name_any());
        }
    }
    // A Retention/VerifyPolicy targets either a BackupPolicy (whose hosts are counted
    // already) or its own selector with a repositoryRef.
    let targets = |bp: Option<&fleetsnap_crds::common::LocalObjectRef>,
                   direct: Option<&fleetsnap_crds::common::LocalObjectRef>|
     -> bool {
        match bp {
            Some(b) => using_bp.iter().any(|p| p.name_any() == b.name),
            None => direct.is_some_and(|r| r.name == repo),
        }
    };
    let maintenance = |p: &RetentionPolicy| {
        p.status
            .as_ref()
            .and_then(|st| st.last_success.clone())
            .filter(|_| p.spec.run_on == RunOn::Operator)
    };
    let jobs = retention
        .iter()
        .map(|p| (p.target_refs(), maintenance(p)))
        .chain(verify.iter().map(|p| (p.target_refs(), None)));
    for ((bp_ref, selector, repo_ref), last_maintenance) in jobs {
        if !targets(bp_ref, repo_ref) {
            continue;
        }
        out.policies += 1;
        if bp_ref.is_none()
            && let Some(sel) = selector
        {
            selectors.push(sel);
        }
        if let Some(t) = last_maintenance
            && out.last_maintenance.as_ref().is_none_or(|m| m.0 < t.0)
        {
            out.last_maintenance = Some(t);
        }
    }
    out.hosts = hosts
        .iter()
        .filter(|h| h.metadata.deletion_timestamp.is_none())
        .filter(|h| selectors.iter().any(|s| derive::selects(s, h)))
        .map(|h| h.name_any())
        .collect();
    // A host that left every policy is no longer counted, even if its repository remains.
    out.initialized.retain(|h| out.hosts.contains(h));
    out
}

fn listed(problems: &[String]) -> String {
    let mut msg = problems
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > LISTED {
        msg.push_str(&format!("; and {} more", problems.len() - LISTED));
    }
    msg
}

/// The new status. Spec problems win over Secret problems (a fixed spec may name other
/// Secrets), and both over an append-only promise the storage does not keep; `previous`
/// keeps condition transition times.
pub fn repository_status(
    previous: &BackupRepositoryStatus,
    generation: Option<i64>,
    spec: &[String],
    secrets: &[String],
    append_only: Option<&Verdict>,
    usage: &Usage,
    now: DateTime<Utc>,
) -> BackupRepositoryStatus {
    let (ready, reason, message) = if !spec.is_empty() {
        (false, super::error::INVALID_SPEC, listed(spec))
    } else if !secrets.is_empty() {
        (false, reasons::SECRET_NOT_FOUND, listed(secrets))
    } else if let Some(Verdict::NotEnforced(m)) = append_only {
        (
            false,
            reasons::APPEND_ONLY_NOT_ENFORCED,
            format!("appendOnly is not enforced: {m}"),
        )
    } else {
        let mut m = format!(
            "spec usable and every Secret resolves; {} of {} host(s) backed up into it",
            usage.initialized.len(),
            usage.hosts.len()
        );
        if let Some(Verdict::Enforced(how)) = append_only {
            m.push_str("; append-only: ");
            m.push_str(how);
        }
        (true, reasons::SUCCEEDED, m)
    };
    let mut conditions = previous.conditions.clone();
    let cond = |t: &str, s: ConditionStatus, r: &str, m: String| {
        Condition::new(t, s, r, m, generation, to_time(now))
    };
    let status = |b: bool| {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    };
    upsert_condition(
        &mut conditions,
        cond(
            condition_types::READY,
            status(ready),
            reason,
            message.clone(),
        ),
    );
    upsert_condition(
        &mut conditions,
        if ready {
            cond(
                condition_types::STALLED,
                ConditionStatus::False,
                reasons::SUCCEEDED,
                "nothing needs a change".into(),
            )
        } else {
            cond(
                condition_types::STALLED,
                ConditionStatus::True,
                reason,
                message,
            )
        },
    );
    BackupRepositoryStatus {
        initialized_hosts: usage.initialized.len() as i32,
        hosts: usage.hosts.len() as i32,
        policies: usage.policies,
        last_maintenance: usage.last_maintenance.clone(),
        conditions,
        observed_generation: generation,
    }
}

pub async fn reconcile(repo: Arc<BackupRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = repo.namespace().ok_or(Error::NoNamespace)?;
    let span = info_span!("reconcile", kind = KIND, namespace = %ns, repository = %repo.name_any());
    let r = async {
        ctx.caches_ready().await;
        observe(&repo, &ctx, &ns).await
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_took(KIND, started.elapsed().as_secs_f64());
    r
}

async fn observe(repo: &BackupRepository, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let name = repo.name_any();
    let lp = ListParams::default();
    let backup = Api::<BackupPolicy>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let retention = Api::<RetentionPolicy>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let verify = Api::<VerifyPolicy>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let cached = ctx.hosts.state();
    let in_ns: Vec<&Host> = cached
        .iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .map(|h| h.as_ref())
        .collect();
    let usage = usage(&name, &backup, &retention, &verify, &in_ns);
    let using: Vec<&Host> = in_ns
        .iter()
        .copied()
        .filter(|h| usage.hosts.contains(&h.name_any()))
        .collect();

    let mut spec = spec_problems(repo);
    let (per_host, template_problems) = per_host_secrets(repo, &using);
    spec.extend(template_problems);
    let shared = shared_secret_keys(repo);
    let mut names: Vec<String> = shared.iter().map(|u| u.key.name.clone()).collect();
    names.sort();
    names.dedup();
    let secrets = super::jobs::read_secrets(ctx, ns, &names)
        .await
        .map_err(|f| Error::KubeRead(f.message))?;
    let mut secret_problems = unresolved(&shared, &secrets);
    if !per_host.is_empty() {
        // One metadata list instead of a read per host: names only, no values.
        let existing: BTreeSet<String> = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .list_metadata(&lp)
            .await?
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        secret_problems.extend(missing_per_host(&per_host, &existing));
    }
    let verdict = if spec.is_empty() && secret_problems.is_empty() {
        append_only_verdict(repo, ns, &secrets).await
    } else {
        None
    };
    let previous = repo.status.clone().unwrap_or_default();
    let status = repository_status(
        &previous,
        repo.metadata.generation,
        &spec,
        &secret_problems,
        verdict.as_ref(),
        &usage,
        Utc::now(),
    );
    if repo.status.is_none() || status != previous {
        if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Ready")
            && c.status != ConditionStatus::True
        {
            warn!(reason = %c.reason, message = %c.message, "repository not ready");
        }
        super::jobs::write_status(
            ctx,
            repo,
            KIND,
            true,
            serde_json::to_value(&status).unwrap_or_default(),
        )
        .await?;
    } else {
        debug!("repository status unchanged");
    }
    Ok(Action::requeue(RESYNC))
}

/// Whether the storage keeps the append-only promise; for S3 from the bucket's
/// configuration, read with the maintenance credentials (cached: [`ProbeCache`]).
async fn append_only_verdict(
    repo: &BackupRepository,
    ns: &str,
    secrets: &Secrets,
) -> Option<Verdict> {
    if !repo.spec.append_only {
        return None;
    }
    let probe = match super::storage_probe::access(repo, None, secrets) {
        None => None,
        Some(access) => {
            let key = format!("{ns}/{}", repo.name_any());
            let generation = repo.metadata.generation;
            let cache = ProbeCache::global();
            match cache.fresh(&key, generation, Instant::now()) {
                Some(r) => Some(r),
                None => {
                    let result = match access {
                        Ok(a) => super::storage_probe::bucket_protection(a).await,
                        Err(e) => Err(e),
                    };
                    debug!(?result, "bucket protection probed");
                    Some(cache.record(&key, generation, Instant::now(), result))
                }
            }
        }
    };
    append_only::verdict(repo, probe.as_ref())
}

pub fn error_policy(repo: Arc<BackupRepository>, err: &Error, ctx: Arc<Context>) -> Action {
    let (attempt, action) = ctx.reconcile_failed(KIND, repo.as_ref(), err);
    warn!(repository = %repo.name_any(), error = %err, attempt, "reconcile failed");
    action
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_crds::backup_policy::{HostBackupState, PolicyHostSummary};
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn repo(spec: serde_json::Value) -> BackupRepository {
        let mut base = json!({
            "pathTemplate": "hosts/{hostname}",
            "passwordSecretRef": {"name": "pw", "key": "password"},
        });
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let mut r = BackupRepository::new("minio", serde_json::from_value(base).unwrap());
        r.metadata.namespace = Some("ns".into());
        r
    }

    fn s3_per_host() -> BackupRepository {
        repo(json!({
            "s3": {"endpoint": "http://minio:9000", "bucket": "b",
                   "perHostCredentials": {"secretNameTemplate": "s3-{host}"}},
            "appendOnly": true,
            "maintenanceCredentialsSecretRef": {"name": "maint"},
        }))
    }

    fn secret(name: &str, pairs: &[(&str, &str)]) -> (String, Secret) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        (name.to_string(), s)
    }

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        let spec = serde_json::from_value(json!({
            "address": "10.0.0.1",
            "sshKeySecretRef": {"name": "k", "key": "id"},
            "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO",
        }))
        .unwrap();
        let mut h = Host::new(name, spec);
        h.metadata.namespace = Some("ns".into());
        h.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        h
    }

    fn backup(name: &str, repo: &str, group: &str, succeeded: &[&str]) -> BackupPolicy {
        let mut p = BackupPolicy::new(
            name,
            serde_json::from_value(json!({
                "hostSelector": {"matchLabels": {"group": group}},
                "repositoryRef": {"name": repo},
                "paths": ["/etc"],
                "schedule": {"onCalendar": "daily"},
            }))
            .unwrap(),
        );
        let mut status = fleetsnap_crds::BackupPolicyStatus::default();
        for h in succeeded {
            status.hosts.push(PolicyHostSummary {
                name: h.to_string(),
                state: HostBackupState::Succeeded,
                last_success: Some(super::super::summary::unix_time(1000)),
                snapshot_id: None,
                message: None,
            });
        }
        p.status = Some(status);
        p
    }

    fn retention(spec: serde_json::Value, last_success: Option<i64>) -> RetentionPolicy {
        let mut base = json!({
            "keep": {"last": 3},
            "schedule": {"onCalendar": "daily"},
        });
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let mut p = RetentionPolicy::new("ret", serde_json::from_value(base).unwrap());
        p.status = Some(fleetsnap_crds::RetentionPolicyStatus {
            last_success: last_success.map(super::super::summary::unix_time),
            ..Default::default()
        });
        p
    }

    #[test]
    fn the_shared_keys_are_password_and_every_credentials_ref() {
        let uses = shared_secret_keys(&s3_per_host());
        let got: Vec<(&str, &str, &str)> = uses
            .iter()
            .map(|u| (u.field, u.key.name.as_str(), u.key.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("passwordSecretRef", "pw", "password"),
                (
                    "maintenanceCredentialsSecretRef",
                    "maint",
                    "AWS_ACCESS_KEY_ID"
                ),
                (
                    "maintenanceCredentialsSecretRef",
                    "maint",
                    "AWS_SECRET_ACCESS_KEY"
                ),
            ]
        );
        let rest = repo(json!({"rest": {"url": "https://r:8000/",
            "credentialsSecretRef": {"name": "basic"}}}));
        assert_eq!(shared_secret_keys(&rest).len(), 3);
        let shared = repo(json!({"s3": {"endpoint": "http://m:9000", "bucket": "b",
            "credentialsSecretRef": {"name": "keys"}}}));
        assert!(
            shared_secret_keys(&shared)
                .iter()
                .any(|u| u.field == "s3.credentialsSecretRef")
        );
    }

    #[test]
    fn missing_or_empty_keys_are_named_without_values() {
        let uses = shared_secret_keys(&s3_per_host());
        let secrets: Secrets = [
            secret("pw", &[("password", "hunter2-very-secret")]),
            secret(
                "maint",
                &[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", "")],
            ),
        ]
        .into_iter()
        .collect();
        let problems = unresolved(&uses, &secrets);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("AWS_SECRET_ACCESS_KEY")
                && problems[0].contains("maint")
                && problems[0].contains("maintenanceCredentialsSecretRef"),
            "{problems:?}"
        );
        let none = unresolved(&uses, &Secrets::new());
        assert!(none[0].contains("Secret \"pw\" does not exist"), "{none:?}");
        for p in none.iter().chain(&problems) {
            assert!(!p.contains("hunter2") && !p.contains("AKIA"), "{p}");
        }
    }

    #[test]
    fn per_host_secrets_are_checked_by_name_for_the_hosts_using_the_repository() {
        let (a, b) = (host("a", &[]), host("b", &[]));
        let (names, problems) = per_host_secrets(&s3_per_host(), &[&a, &b]);
        assert!(problems.is_empty());
        assert_eq!(
            names,
            vec![("a".into(), "s3-a".into()), ("b".into(), "s3-b".into())]
        );
        let existing: BTreeSet<String> = ["s3-a".to_string()].into();
        let missing = missing_per_host(&names, &existing);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("s3-b") && missing[0].contains("Host b"));
        // No per-host template: nothing per host to check.
        let shared = repo(json!({"local": {"path": "/srv"}}));
        assert_eq!(per_host_secrets(&shared, &[&a]), (vec![], vec![]));
    }

    #[test]
    fn spec_problems_admission_could_have_missed() {
        assert!(spec_problems(&s3_per_host()).is_empty());
        let none = repo(json!({}));
        assert!(spec_problems(&none)[0].contains("exactly one of s3, local or rest"));
        let mut bad = s3_per_host();
        bad.spec.path_template = "shared".into();
        bad.spec.maintenance_credentials_secret_ref = None;
        let p = spec_problems(&bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("maintenanceCredentialsSecretRef"))
        );
        assert!(p.iter().any(|m| m.contains("{hostname}")));
    }

    #[test]
    fn usage_counts_policies_hosts_and_what_is_known_to_be_initialised() {
        let h = [
            host("a", &[("group", "web")]),
            host("b", &[("group", "web")]),
            host("c", &[("group", "db")]),
            host("d", &[("group", "other")]),
        ];
        let hosts: Vec<&Host> = h.iter().collect();
        let backup = [
            backup("web", "minio", "web", &["a", "gone"]),
            backup("elsewhere", "other-repo", "other", &["d"]),
        ];
        let retention = [
            // Through the BackupPolicy: counted, no extra hosts.
            retention(
                json!({"backupPolicyRef": {"name": "web"}, "runOn": "Operator"}),
                Some(500),
            ),
            // Own selector and repositoryRef: its hosts count too.
            retention(
                json!({"hostSelector": {"matchLabels": {"group": "db"}},
                       "repositoryRef": {"name": "minio"}, "runOn": "Operator"}),
                Some(700),
            ),
            // Host-side runs are not operator maintenance.
            retention(
                json!({"hostSelector": {"matchLabels": {"group": "db"}},
                       "repositoryRef": {"name": "minio"}}),
                Some(900),
            ),
            retention(json!({"backupPolicyRef": {"name": "elsewhere"}}), None),
        ];
        let u = usage("minio", &backup, &retention, &[], &hosts);
        assert_eq!(u.policies, 4);
        assert_eq!(u.hosts, ["a", "b", "c"].map(String::from).into());
        // "gone" left every policy; d backs up elsewhere.
        assert_eq!(u.initialized, ["a".to_string()].into());
        // The same known from b's own entry (bounded status: no per-host list on the policy).
        let mut b = h[1].clone();
        b.status = Some(fleetsnap_crds::host::HostStatus {
            policies: vec![fleetsnap_crds::host::HostPolicyStatus {
                last_success: Some(super::super::summary::unix_time(1000)),
                ..super::super::host_status::install_record(
                    fleetsnap_crds::host::PolicyKind::BackupPolicy,
                    "web",
                )
            }],
            ..Default::default()
        });
        let with_entry: Vec<&Host> = vec![&h[0], &b, &h[2], &h[3]];
        let u = usage("minio", &backup, &retention, &[], &with_entry);
        assert_eq!(u.initialized, ["a".to_string(), "b".to_string()].into());
        assert_eq!(
            u.last_maintenance,
            Some(super::super::summary::unix_time(700))
        );
        let nobody = usage("unused", &backup, &retention, &[], &hosts);
        assert_eq!(nobody, Usage::default());
    }

    #[test]
    fn ready_reflects_spec_then_secrets() {
        let now = Utc::now();
        let u = Usage {
            policies: 1,
            hosts: ["a".to_string(), "b".to_string()].into(),
            initialized: ["a".to_string()].into(),
            last_maintenance: None,
        };
        let ready = |s: &BackupRepositoryStatus| {
            let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            (c.status, c.reason.clone(), c.message.clone())
        };
        let ok = repository_status(&Default::default(), Some(3), &[], &[], None, &u, now);
        assert_eq!(ready(&ok).0, ConditionStatus::True);
        assert!(ready(&ok).2.contains("1 of 2 host(s)"));
        assert_eq!((ok.hosts, ok.initialized_hosts, ok.policies), (2, 1, 1));
        assert_eq!(ok.observed_generation, Some(3));
        let stalled = ok.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.status, ConditionStatus::False);

        let secrets = vec!["Secret \"pw\" does not exist (passwordSecretRef)".to_string()];
        let missing = repository_status(&ok, Some(3), &[], &secrets, None, &u, now);
        assert_eq!(ready(&missing).0, ConditionStatus::False);
        assert_eq!(ready(&missing).1, "SecretNotFound");
        let stalled = missing
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(
            (stalled.status, stalled.reason.as_str()),
            (ConditionStatus::True, "SecretNotFound")
        );
        let spec = vec!["pathTemplate \"x\": bad".to_string()];
        let invalid = repository_status(&ok, Some(3), &spec, &secrets, None, &u, now);
        assert_eq!(ready(&invalid).1, "InvalidSpec");
        // Same inputs, same status: nothing to write on resync.
        assert_eq!(
            repository_status(&invalid, Some(3), &spec, &secrets, None, &u, now),
            invalid
        );
        // Long lists are cut, with a count.
        let many: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let msg = ready(&repository_status(&ok, None, &many, &[], None, &u, now)).2;
        assert!(msg.ends_with("; and 3 more"), "{msg}");
    }

    #[test]
    fn an_unenforced_append_only_promise_is_not_ready_after_spec_and_secrets() {
        let now = Utc::now();
        let u = Usage::default();
        let ready = |s: &BackupRepositoryStatus| {
            let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            (c.status, c.reason.clone(), c.message.clone())
        };
        let hole = Verdict::NotEnforced("bucket b has no versioning and no Object Lock".into());
        let s = repository_status(&Default::default(), Some(1), &[], &[], Some(&hole), &u, now);
        let (st, reason, msg) = ready(&s);
        assert_eq!(
            (st, reason.as_str()),
            (ConditionStatus::False, "AppendOnlyNotEnforced")
        );
        assert!(
            msg.contains("bucket b has no versioning and no Object Lock"),
            "{msg}"
        );
        let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.status, ConditionStatus::True);
        // A missing Secret is reported first: the probe needs it.
        let secrets = vec!["Secret \"maint\" does not exist".to_string()];
        let s = repository_status(&s, Some(1), &[], &secrets, Some(&hole), &u, now);
        assert_eq!(ready(&s).1, "SecretNotFound");
        let ok = Verdict::Enforced("bucket b has Object Lock".into());
        let s = repository_status(&s, Some(1), &[], &[], Some(&ok), &u, now);
        let (st, _, msg) = ready(&s);
        assert_eq!(st, ConditionStatus::True);
        assert!(
            msg.ends_with("append-only: bucket b has Object Lock"),
            "{msg}"
        );
    }

    #[test]
    fn local_append_only_is_a_spec_problem() {
        let local = repo(json!({"local": {"path": "/srv"}, "appendOnly": true,
            "maintenanceCredentialsSecretRef": {"name": "m"}}));
        let p = spec_problems(&local);
        assert!(
            p.iter()
                .any(|m| m.contains("local repository cannot be append-only")),
            "{p:?}"
        );
    }
}
