//! The cycle the RetentionPolicy (`runOn: Host`) and VerifyPolicy controllers share around
//! their host-side job: resolve the targets, decide per host ([`units::plan_units`]), record
//! new hosts in `status.installedHosts` before installing, take the job off hosts that no
//! longer want it, write each converged host's `Host.status.policies` entry, list refused
//! duplicates and pending removals in `status.errors`, and the finalizer cleanup. What a
//! round concludes from the hosts' run records stays with each kind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::common::{Condition, LocalObjectRef, condition_types, reasons};
use fleetsnap_crds::host::HostPolicyStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde::Serialize;

use super::Context;
use super::error::{Error, Failure, retry_after};
use super::finalized::Finalized;
use super::host_status;
use super::identity;
use super::jobs::{self, Converged, Targets, condition};
use super::summary;
use super::units::{self, UnitMode, UnitPlan};
use crate::host::model::PolicyKind;
use crate::host::observe::JobObservation;

/// Longest gap between two looks at a policy.
pub const MAX_RESYNC: Duration = Duration::from_secs(300);
/// Most entries of a policy's `status.errors`; `errorsTotal` counts them all.
pub const MAX_ERRORS: usize = 10;

/// The status of a policy with a host-side job, as far as the shared cycle touches it.
pub trait JobStatus: Clone + Default + PartialEq + Serialize {
    /// One entry of `status.errors`.
    type Error;
    /// The record of an older status (`status.installedHosts`), read only for the upgrade.
    fn installed_hosts(&self) -> Option<&Vec<String>>;
    /// `status.hostsInstalled`: set once the record lives in the Hosts' entries.
    fn hosts_installed(&self) -> Option<i32>;
    /// Records how many hosts may carry the job (their entries are the record itself) and
    /// drops an older status's list.
    fn set_installed_hosts(&mut self, hosts: Vec<String>);
    /// Cuts `status.errors`, as the round computed them, to [`MAX_ERRORS`], counting them
    /// all in `errorsTotal`.
    fn cap_errors(&mut self);
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn errors_mut(&mut self) -> &mut Vec<Self::Error>;
    /// A `status.errors` entry that is a note (no run behind it, so no time).
    fn note(host: String, message: String) -> Self::Error;
    fn message(e: &Self::Error) -> &str;
}

/// A policy kind that installs a `<kind>-<policy>` job on its hosts.
pub trait HostJob: Finalized {
    type Status: JobStatus;
    /// The job's kind on the hosts.
    const JOB: PolicyKind;
    /// Prefix of the status note for a host the job could not be removed from yet.
    const REMOVAL_PENDING: &'static str;
    fn job_status(&self) -> Option<&Self::Status>;
    fn target_refs(&self) -> TargetRefs<'_>;
}

/// `backupPolicyRef`, `hostSelector`, `repositoryRef`.
pub type TargetRefs<'a> = (
    Option<&'a LocalObjectRef>,
    Option<&'a LabelSelector>,
    Option<&'a LocalObjectRef>,
);

/// Implements [`JobStatus`], [`Finalized`] and [`HostJob`] for a policy kind whose spec has
/// `backupPolicyRef`, `hostSelector` and `repositoryRef` and whose status has
/// `installedHosts`, `conditions` and `errors` (entries with `host` and `message`). The
/// kinds differ only in what is passed here; cleanup is [`cleanup`] for all.
macro_rules! host_job_kind {
    (
        $policy:ty, $status:ty, $error:ty,
        kind: $kind:expr,
        job: $job:expr,
        removal_pending: $pending:expr,
        apply: $apply:path,
        note: |$host:ident, $message:ident| $note:expr $(,)?
    ) => {
        impl $crate::controller::host_job::JobStatus for $status {
            type Error = $error;
            fn installed_hosts(&self) -> Option<&Vec<String>> {
                self.installed_hosts.as_ref()
            }
            fn hosts_installed(&self) -> Option<i32> {
                self.hosts_installed
            }
            fn set_installed_hosts(&mut self, hosts: Vec<String>) {
                self.hosts_installed = Some(i32::try_from(hosts.len()).unwrap_or(i32::MAX));
                self.installed_hosts = None;
            }
            fn cap_errors(&mut self) {
                self.errors_total = i32::try_from(self.errors.len()).unwrap_or(i32::MAX);
                self.errors
                    .truncate($crate::controller::host_job::MAX_ERRORS);
            }
            fn conditions_mut(&mut self) -> &mut Vec<fleetsnap_crds::common::Condition> {
                &mut self.conditions
            }
            fn errors_mut(&mut self) -> &mut Vec<$error> {
                &mut self.errors
            }
            fn note($host: String, $message: String) -> $error {
                $note
            }
            fn message(e: &$error) -> &str {
                &e.message
            }
        }

        impl $crate::controller::finalized::Finalized for $policy {
            const KIND: &'static str = $kind;
            async fn apply(
                &self,
                ctx: &$crate::controller::Context,
            ) -> Result<kube::runtime::controller::Action, $crate::controller::error::Error> {
                $apply(self, ctx).await
            }
            async fn cleanup(
                &self,
                ctx: &$crate::controller::Context,
            ) -> Result<kube::runtime::controller::Action, $crate::controller::error::Error> {
                $crate::controller::host_job::cleanup(self, ctx).await
            }
        }

        impl $crate::controller::host_job::HostJob for $policy {
            type Status = $status;
            const JOB: $crate::host::model::PolicyKind = $job;
            const REMOVAL_PENDING: &'static str = $pending;
            fn job_status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn target_refs(&self) -> $crate::controller::host_job::TargetRefs<'_> {
                let s = &self.spec;
                (
                    s.backup_policy_ref.as_ref(),
                    s.host_selector.as_ref(),
                    s.repository_ref.as_ref(),
                )
            }
        }
    };
}
pub(crate) use host_job_kind;

/// Whether a status error is a note derived anew by every reconcile (a pending removal, a
/// refused duplicate) rather than the outcome of a run.
pub fn is_note<P: HostJob>(e: &<P::Status as JobStatus>::Error) -> bool {
    let message = <P::Status as JobStatus>::message(e);
    message.starts_with(P::REMOVAL_PENDING)
        || message
            .strip_prefix(reasons::DUPLICATE_HOST)
            .is_some_and(|rest| rest.starts_with(": "))
}

/// `Stalled=True` and `Ready=False` for one reason: a problem only a change can fix.
pub fn stalled<S: JobStatus>(status: &mut S, reason: &str, message: &str, gen_: Option<i64>) {
    for (type_, value) in [
        (condition_types::STALLED, true),
        (condition_types::READY, false),
    ] {
        condition(
            status.conditions_mut(),
            type_,
            Some(value),
            reason,
            message,
            gen_,
        );
    }
}

/// Writes the status when it differs from `previous` (or none was ever written).
pub async fn write<P: HostJob>(
    ctx: &Context,
    policy: &P,
    previous: &P::Status,
    status: &P::Status,
) -> Result<(), Error> {
    let changed = policy.job_status().is_none() || previous != status;
    jobs::write_status(
        ctx,
        policy,
        P::KIND,
        changed,
        serde_json::to_value(status).unwrap_or_default(),
    )
    .await
}

/// Resolves the policy's references. Without targets the selection is unknown: hosts keep
/// what they have, the status says why (`Stalled`) and the policy is looked at again after
/// [`MAX_RESYNC`] (the returned action).
pub async fn resolve_targets<P: HostJob>(
    ctx: &Context,
    policy: &P,
    ns: &str,
    previous: &P::Status,
    status: &mut P::Status,
) -> Result<Result<Targets, Action>, Error> {
    let (bp, selector, repo) = policy.target_refs();
    match jobs::resolve_targets(ctx, ns, bp, selector, repo).await {
        Ok(t) => Ok(Ok(t)),
        Err(e) => {
            stalled(status, e.reason, &e.message, policy.meta().generation);
            write(ctx, policy, previous, status).await?;
            Ok(Err(Action::requeue(MAX_RESYNC)))
        }
    }
}

/// What [`plan_round`] did.
pub struct Round<S> {
    /// Which selected hosts to converge now (the rest of the decision already ran).
    pub plan: UnitPlan,
    /// The namespace's Hosts refused as duplicate identities, with why.
    pub refused: BTreeMap<String, String>,
    /// Hosts whose removal failed (they stay recorded).
    pub removal: BTreeMap<String, Failure>,
    /// The status as last written, to compare the final one against.
    pub written: S,
}

/// Decides per host for `mode`, records hosts about to be installed (an extra status write
/// only when the record grows), takes the job off the hosts that lose it, drops stale
/// `Host.status` entries and leaves the new record in `status.installedHosts`. Installing is
/// the caller's, on `plan.converge`.
pub async fn plan_round<P: HostJob>(
    ctx: &Context,
    policy: &P,
    ns: &str,
    mode: UnitMode,
    selected: &BTreeSet<String>,
    previous: &P::Status,
    status: &mut P::Status,
) -> Result<Round<P::Status>, Error> {
    let name = policy.name_any();
    let kind = jobs::crd_kind(P::JOB);
    let entries = host_status::hosts_with_entry(ctx, ns, kind, &name);
    let recorded = recorded_hosts(previous, &entries);
    let refused = identity::refused_in_namespace(ctx, ns);
    let plan = units::plan_units(
        mode,
        selected,
        recorded.as_ref(),
        &jobs::existing_hosts(ctx, ns),
        &refused.keys().cloned().collect(),
    );
    let written = previous.clone();
    // The record is each host's entry: written before the job is installed (and, after an
    // upgrade, for every host only the old status listed), so no crash in between can
    // forget a host that carries the job.
    if let Some(record) = units::record_before_install(&plan, recorded.as_ref())
        .or_else(|| previous.installed_hosts().cloned())
    {
        for host in record.iter().filter(|h| !entries.contains(*h)) {
            host_status::apply_entry(
                ctx,
                ns,
                host,
                kind,
                &name,
                Some(&host_status::install_record(kind, &name)),
            )
            .await?;
        }
    }
    let removal = jobs::remove_planned(ctx, ns, P::JOB, &name, &plan, selected).await;
    let record = units::next_record(&plan, &removal.keys().cloned().collect());
    jobs::drop_stale_entries(ctx, ns, jobs::crd_kind(P::JOB), &name, selected, &record).await;
    status.set_installed_hosts(record);
    Ok(Round {
        plan,
        refused,
        removal,
        written,
    })
}

/// Every host that may carry the job: those with this policy's `Host.status` entry (unless
/// `hostsInstalled` is 0), plus those an older status listed in `installedHosts`. `None` for a status that predates any
/// record (neither `installedHosts` nor `hostsInstalled`): the selection then stands in.
pub fn recorded_hosts<S: JobStatus>(
    previous: &S,
    entries: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    if previous.installed_hosts().is_none() && previous.hosts_installed().is_none() {
        return None;
    }
    // With no host carrying the job (`runOn: Operator` after its removal), entries are
    // the operator-side runs' reports, not install records.
    let mut out = if previous.hosts_installed() == Some(0) {
        BTreeSet::new()
    } else {
        entries.clone()
    };
    out.extend(previous.installed_hosts().into_iter().flatten().cloned());
    Some(out)
}

/// Writes a converged host's `Host.status.policies` entry: from its run records, or for a
/// host that could not be reached or converged, the last known entry with the error.
pub async fn sync_host_entry<P: HostJob>(
    ctx: &Context,
    ns: &str,
    policy: &str,
    host: &str,
    result: &Result<Converged, Failure>,
) {
    let kind = jobs::crd_kind(P::JOB);
    let entry = match result {
        Ok(c) => {
            let entry = summary::job_entry(kind, policy, &c.observation);
            HostPolicyStatus {
                credential_expiry: c
                    .credential_expiry
                    .map(summary::to_time)
                    .or(entry.credential_expiry.clone()),
                ..entry
            }
        }
        Err(f) => summary::unreached_entry(
            kind,
            policy,
            host_status::current_entry(ctx, ns, host, kind, policy).as_ref(),
            f,
        ),
    };
    host_status::sync_entry(ctx, ns, host, kind, policy, Some(&entry)).await;
}

/// When to look at a host again to report its next run: shortly after the timer's next
/// elapse.
pub fn after_next_elapse(obs: &JobObservation, now: DateTime<Utc>) -> Option<Duration> {
    let next = obs.local_secs(obs.timer.as_ref().and_then(|t| t.next_elapse)?);
    Some(Duration::from_secs(
        (next - now.timestamp()).max(0) as u64 + 15,
    ))
}

/// A host that could not be reached or converged: counted in the metrics; returns when to
/// try again and its `status.errors` message.
/// A host whose circuit is open is looked at again when its backoff ends, not every 10 s.
pub fn unreached<P: HostJob>(
    ctx: &Context,
    ns: &str,
    host: &str,
    f: &Failure,
) -> (Duration, String) {
    ctx.metrics.reconcile_error(P::KIND, f.reason);
    let first = retry_after(f, 1).unwrap_or(MAX_RESYNC);
    let after = ctx
        .pool
        .retry_in(&format!("{ns}/{host}"))
        .map_or(first, |open| open.max(first));
    (after, super::summary::failure_text(f))
}

/// Lists refused duplicates among the selected hosts (`Ready=False`, `DuplicateHost`) and
/// pending removals in `status.errors`, neither counted as failing hosts. Returns the
/// soonest retry of a pending removal.
pub fn add_notes<P: HostJob>(
    status: &mut P::Status,
    round: &Round<P::Status>,
    selected: &BTreeSet<String>,
    gen_: Option<i64>,
) -> Option<Duration> {
    let refused_selected: Vec<(&String, &String)> = round
        .refused
        .iter()
        .filter(|(h, _)| selected.contains(*h))
        .collect();
    for (host, message) in &refused_selected {
        status.errors_mut().push(<P::Status as JobStatus>::note(
            host.to_string(),
            format!("{}: {message}", reasons::DUPLICATE_HOST),
        ));
    }
    if let Some((host, message)) = refused_selected.first() {
        condition(
            status.conditions_mut(),
            condition_types::READY,
            Some(false),
            reasons::DUPLICATE_HOST,
            format!(
                "{} selected host(s) refused as duplicates; {host}: {message}",
                refused_selected.len()
            ),
            gen_,
        );
    }
    let mut requeue: Option<Duration> = None;
    for (host, f) in &round.removal {
        status.errors_mut().push(<P::Status as JobStatus>::note(
            host.clone(),
            format!("{}{}", P::REMOVAL_PENDING, super::summary::failure_text(f)),
        ));
        let after = retry_after(f, 1).unwrap_or(MAX_RESYNC);
        requeue = Some(requeue.map_or(after, |r| r.min(after)));
    }
    requeue
}

/// Finalizer: the job leaves every host that may carry it (`status.installedHosts`, or the
/// selection for a status written before that record existed), whatever the spec says now.
pub async fn cleanup<P: HostJob>(policy: &P, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let previous = policy.job_status().cloned().unwrap_or_default();
    let (bp, selector, repo) = policy.target_refs();
    let kind = jobs::crd_kind(P::JOB);
    let name = policy.name_any();
    let record = recorded_hosts(
        &previous,
        &host_status::hosts_with_entry(ctx, &ns, kind, &name),
    )
    .map(|r| r.into_iter().collect::<Vec<_>>());
    let recorded = jobs::recorded_or_selected(ctx, &ns, record.as_ref(), bp, selector, repo).await;
    let pending = jobs::remove_everywhere(
        ctx,
        &policy.object_ref(&()),
        policy.meta(),
        P::JOB,
        &recorded,
    )
    .await;
    if !pending.is_empty() {
        // Hosts already cleaned leave the record, so the retry contacts only the rest; a
        // host only an older status listed gets its entry, the record from now on.
        let with_entry = host_status::hosts_with_entry(ctx, &ns, kind, &name);
        for host in pending.iter().filter(|h| !with_entry.contains(*h)) {
            host_status::apply_entry(
                ctx,
                &ns,
                host,
                kind,
                &name,
                Some(&host_status::install_record(kind, &name)),
            )
            .await?;
        }
        let mut status = previous.clone();
        status.set_installed_hosts(pending.clone());
        write(ctx, policy, &previous, &status).await?;
        return Err(Error::CleanupIncomplete {
            policy: policy.name_any(),
            hosts: pending.join(", "),
        });
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_crds::RetentionPolicyStatus;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The record is the Hosts' entries; an older status's list adds to it, a status older
    /// still has none (the selection stands in), and with no host carrying the job the
    /// entries are operator-side reports.
    #[test]
    fn the_record_is_the_entries_plus_an_older_list() {
        let entries = set(&["a", "b"]);
        let fresh = RetentionPolicyStatus::default();
        assert_eq!(recorded_hosts(&fresh, &entries), None);
        let counted = RetentionPolicyStatus {
            hosts_installed: Some(2),
            ..Default::default()
        };
        assert_eq!(recorded_hosts(&counted, &entries), Some(entries.clone()));
        let legacy = RetentionPolicyStatus {
            installed_hosts: Some(vec!["c".into()]),
            ..Default::default()
        };
        assert_eq!(
            recorded_hosts(&legacy, &entries),
            Some(set(&["a", "b", "c"]))
        );
        let none = RetentionPolicyStatus {
            hosts_installed: Some(0),
            ..Default::default()
        };
        assert_eq!(recorded_hosts(&none, &entries), Some(BTreeSet::new()));
    }

    #[test]
    fn errors_are_capped_and_counted_and_the_old_list_goes() {
        let mut s = RetentionPolicyStatus {
            installed_hosts: Some(vec!["a".into()]),
            errors: (0..500)
                .map(|i| fleetsnap_crds::retention_policy::RunError {
                    host: format!("h{i:03}"),
                    message: "x".repeat(200),
                    time: None,
                })
                .collect(),
            ..Default::default()
        };
        s.cap_errors();
        s.set_installed_hosts((0..500).map(|i| format!("h{i:03}")).collect());
        assert_eq!((s.errors.len(), s.errors_total), (MAX_ERRORS, 500));
        assert_eq!(s.errors[0].host, "h000");
        assert_eq!(
            (s.hosts_installed, s.installed_hosts.as_ref()),
            (Some(500), None)
        );
        let bytes = serde_json::to_vec(&s).unwrap().len();
        assert!(bytes < 4096, "{bytes} bytes");
    }
}
