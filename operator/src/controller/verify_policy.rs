//! VerifyPolicy reconciler: a verify timer on every targeted host (structure check, a
//! calendar-rotating or random data subset, optional restore drill), and status, Events and
//! metrics from the hosts' run records.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetsnap_crds::common::{condition_types, reasons};
use fleetsnap_crds::host::PolicyKind as CrdKind;
use fleetsnap_crds::verify_policy::{Rotation, VerifyError, VerifyPolicy, VerifyPolicyStatus};
use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info_span, warn};

use super::Context;
use super::error::Error;
use super::host_status;
use super::identity;
use super::jobs::{self, condition};
use super::summary::{self, to_time};
use super::units::{self, UnitMode};
use crate::host::model::PolicyKind;
use crate::host::observe::JobObservation;
use crate::host::record::RunRecord;
use crate::metrics::{PolicyHostLabels, PolicyLabels};

pub const KIND: &str = "VerifyPolicy";
const FINALIZER: &str = "fleetsnap.io/host-cleanup";
const MAX_RESYNC: Duration = Duration::from_secs(300);
const MIN_RESYNC: Duration = Duration::from_secs(5);
/// Prefix of the status note for a host the job could not be removed from yet.
const REMOVAL_PENDING: &str = "left the selection; removing the verify job is pending: ";

/// Whether a status error is a note derived anew by every reconcile (a pending removal, a
/// refused duplicate) rather than a verification outcome.
fn is_note(e: &VerifyError) -> bool {
    e.message.starts_with(REMOVAL_PENDING)
        || e.message
            .strip_prefix(reasons::DUPLICATE_HOST)
            .is_some_and(|rest| rest.starts_with(": "))
}

/// Executor arguments of the verify job: what data to re-read, then the drill.
pub fn extra_args(policy: &VerifyPolicy) -> Vec<String> {
    use fleetsnap_crds::verify_policy::RotationPeriod;
    let mut args = Vec::new();
    if let Some(rd) = &policy.spec.read_data {
        if let Some(r) = &rd.rotation {
            let period = match r.period {
                RotationPeriod::Day => "day",
                RotationPeriod::Week => "week",
                RotationPeriod::Month => "month",
            };
            args.push("--read-data-rotate".into());
            args.push(format!("{}/{period}", r.subsets.clamp(1, 1000)));
        } else if let Some(p) = rd.percentage {
            args.push("--read-data-subset".into());
            args.push(format!("{}%", p.clamp(1, 100)));
        }
    }
    if let Some(d) = policy.spec.restore_drill.as_ref().filter(|d| d.enabled) {
        args.push("--restore-drill-files".into());
        args.push(d.sample_files.clamp(1, 10_000).to_string());
        args.push("--scratch".into());
        args.push(d.scratch_dir.clone());
    }
    args
}

fn to_ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Subsets of a rotation read successfully within the current window (the last `subsets`
/// periods): which parts of the data have been proven readable lately.
pub fn covered_subsets(
    rotation: &Rotation,
    records: &[RunRecord],
    now: DateTime<Utc>,
) -> BTreeSet<u32> {
    use fleetsnap_crds::verify_policy::RotationPeriod;
    let period_days: i64 = match rotation.period {
        RotationPeriod::Day => 1,
        RotationPeriod::Week => 7,
        RotationPeriod::Month => 31,
    };
    let window = chrono::Duration::days(period_days * rotation.subsets.clamp(1, 1000) as i64);
    records
        .iter()
        .filter(|r| r.succeeded() && now - r.started < window)
        .map(|r| rotation.subset_at(to_ts(r.started)).0)
        .collect()
}

/// Short (8 hex) or full pack ids named in error lines such as `pack 1a2b3c4d: ...`.
pub fn packs_named(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        let mut words = line.split(|c: char| c.is_whitespace() || c == ':' || c == ',');
        while let Some(w) = words.next() {
            if w == "pack"
                && let Some(id) = words.next()
                && id.len() >= 8
                && id.chars().all(|c| c.is_ascii_hexdigit())
                && !out.iter().any(|p: &String| p == id)
            {
                out.push(id.to_string());
            }
        }
    }
    out
}

/// A host's verification failure for status, naming the packs when the log does.
pub fn host_error(host: &str, obs: &JobObservation, log: &[String]) -> Option<VerifyError> {
    let last = obs.last_run().filter(|r| !r.succeeded())?;
    let packs = packs_named(log);
    let base = last
        .error
        .clone()
        .unwrap_or_else(|| format!("exit code {}", last.exit_code));
    let detail: Vec<&String> = log.iter().take(3).collect();
    let mut message = base;
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(
            &detail
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    if !packs.is_empty() {
        message.push_str(&format!(" (damaged pack(s): {})", packs.join(", ")));
    }
    Some(VerifyError {
        host: host.to_string(),
        message,
        packs,
        time: Some(to_time(last.finished)),
    })
}

pub async fn reconcile(policy: Arc<VerifyPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let span = info_span!("reconcile", kind = KIND, namespace = %ns, policy = %policy.name_any());
    let api: Api<VerifyPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let result = async {
        ctx.caches_ready().await;
        finalizer(&api, FINALIZER, policy, |event| async {
            match event {
                FinalizerEvent::Apply(p) => apply(&p, &ctx).await,
                FinalizerEvent::Cleanup(p) => cleanup(&p, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_took(KIND, started.elapsed().as_secs_f64());
    result
}

pub fn error_policy(policy: Arc<VerifyPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    let (attempt, action) = ctx.reconcile_failed(KIND, policy.as_ref(), err);
    warn!(policy = %policy.name_any(), error = %err, attempt, "reconcile failed");
    action
}

async fn apply(policy: &VerifyPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let gen_ = policy.metadata.generation;
    let now = Utc::now();
    let previous = policy.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = gen_;
    let spec = &policy.spec;
    let targets = match jobs::resolve_targets(
        ctx,
        &ns,
        spec.backup_policy_ref.as_ref(),
        spec.host_selector.as_ref(),
        spec.repository_ref.as_ref(),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            condition(
                &mut status.conditions,
                condition_types::STALLED,
                Some(true),
                e.reason,
                &e.message,
                gen_,
            );
            condition(
                &mut status.conditions,
                condition_types::READY,
                Some(false),
                e.reason,
                &e.message,
                gen_,
            );
            write(ctx, policy, &previous, &status).await?;
            return Ok(Action::requeue(MAX_RESYNC));
        }
    };
    let interval = super::derive::expected_interval(&spec.schedule.on_calendar);
    ctx.metrics
        .verify_expected_interval
        .get_or_create(&PolicyLabels {
            namespace: ns.clone(),
            policy: name.clone(),
        })
        .set(interval.as_secs_f64());
    let hosts = jobs::selected_hosts(ctx, &targets.selector, &ns);
    let selected: BTreeSet<String> = hosts.iter().map(|h| h.name_any()).collect();
    let recorded: Option<BTreeSet<String>> = previous
        .installed_hosts
        .as_ref()
        .map(|r| r.iter().cloned().collect());
    let refused = identity::refused_in_namespace(ctx, &ns);
    let plan = units::plan_units(
        UnitMode::Install,
        &selected,
        recorded.as_ref(),
        &jobs::existing_hosts(ctx, &ns),
        &refused.keys().cloned().collect(),
    );
    let mut written = previous.clone();
    if let Some(record) = units::record_before_install(&plan, recorded.as_ref()) {
        status.installed_hosts = Some(record);
        write(ctx, policy, &written, &status).await?;
        written = status.clone();
    }
    let removal = jobs::remove_planned(ctx, &ns, PolicyKind::Verify, &name, &plan, &selected).await;
    let record = units::next_record(&plan, &removal.keys().cloned().collect());
    jobs::drop_stale_entries(ctx, &ns, CrdKind::VerifyPolicy, &name, &selected, &record).await;
    status.installed_hosts = Some(record);
    let repo = &targets.repository;
    let args = extra_args(policy);
    let converge = hosts
        .iter()
        .filter(|h| plan.converge.contains(&h.name_any()));
    let results = join_all(converge.map(|h| {
        let spec = jobs::job_spec(
            PolicyKind::Verify,
            &name,
            &policy.spec.schedule,
            h,
            repo,
            args.clone(),
        );
        async move {
            (
                h.name_any(),
                jobs::converge_host(ctx, h, repo, spec, policy.spec.suspend, true).await,
            )
        }
    }))
    .await;

    let mut errors = Vec::new();
    let mut last_run: Option<DateTime<Utc>> = None;
    let mut last_verified: Option<DateTime<Utc>> = None;
    let mut all_verified = !hosts.is_empty();
    let mut coverage: Option<i32> = None;
    let mut requeue = MAX_RESYNC;
    let mut stalled_reason = None;
    for (host, r) in results {
        let labels = PolicyHostLabels {
            namespace: ns.clone(),
            policy: name.clone(),
            host: host.clone(),
        };
        ctx.metrics
            .verify_host_selected
            .get_or_create(&labels)
            .set(1.0);
        let entry = match &r {
            Ok(c) => summary::job_entry(CrdKind::VerifyPolicy, &name, &c.observation),
            Err(f) => summary::unreached_entry(
                CrdKind::VerifyPolicy,
                &name,
                host_status::current_entry(ctx, &ns, &host, CrdKind::VerifyPolicy, &name).as_ref(),
                f,
            ),
        };
        host_status::sync_entry(ctx, &ns, &host, CrdKind::VerifyPolicy, &name, Some(&entry)).await;
        match r {
            Ok(c) => {
                let obs = &c.observation;
                if let Some(ok) = obs.last_success() {
                    ctx.metrics
                        .verify_last_success
                        .get_or_create(&labels)
                        .set(ok.finished.timestamp() as f64);
                    last_verified = Some(
                        last_verified.map_or(ok.finished, |v: DateTime<Utc>| v.min(ok.finished)),
                    );
                } else {
                    all_verified = false;
                }
                ctx.metrics
                    .verify_consecutive_failures
                    .get_or_create(&labels)
                    .set(summary::consecutive_failures(obs) as f64);
                if let Some(last) = obs.last_run() {
                    last_run = last_run.max(Some(last.started));
                }
                if let Some(e) = host_error(&host, obs, &c.failure_log) {
                    errors.push(e);
                }
                if let Some(rot) = spec.read_data.as_ref().and_then(|r| r.rotation.as_ref()) {
                    let done = covered_subsets(rot, &obs.records, now).len() as i32;
                    let pct = (done * 100 / rot.subsets.clamp(1, 1000)).min(100);
                    coverage = Some(coverage.map_or(pct, |c| c.min(pct)));
                }
                if let Some(next) = obs.timer.as_ref().and_then(|t| t.next_elapse) {
                    let wait = (next - now.timestamp()).max(0) as u64 + 15;
                    requeue = requeue.min(Duration::from_secs(wait));
                }
            }
            Err(f) => {
                all_verified = false;
                ctx.metrics.reconcile_error(KIND, f.reason);
                if f.retry == super::error::Retry::OnChange {
                    stalled_reason = Some((f.reason, f.message.clone()));
                }
                requeue = requeue.min(super::error::retry_after(&f, 1).unwrap_or(MAX_RESYNC));
                errors.push(VerifyError {
                    host,
                    message: format!("{}: {}", f.reason, f.message),
                    packs: vec![],
                    time: None,
                });
            }
        }
    }
    status.last_run = last_run.map(to_time);
    if all_verified && let Some(v) = last_verified {
        status.last_verified = Some(to_time(v));
    }
    if let Some(rot) = spec.read_data.as_ref().and_then(|r| r.rotation.as_ref()) {
        let (n, m) = rot.subset_at(to_ts(last_run.unwrap_or(now)));
        status.last_subset = Some(format!("{n}/{m}"));
    }
    status.coverage_percent = coverage;
    status.hosts_failing = errors.len() as i32;

    // One Event per newly failing host, naming the packs; one when it recovers.
    let before: BTreeSet<&str> = previous
        .errors
        .iter()
        .filter(|e| !is_note(e))
        .map(|e| e.host.as_str())
        .collect();
    let after: BTreeSet<&str> = errors.iter().map(|e| e.host.as_str()).collect();
    let obj = policy.object_ref(&());
    for e in errors.iter().filter(|e| !before.contains(e.host.as_str())) {
        jobs::event(
            ctx,
            &obj,
            true,
            "VerifyFailed",
            format!("{}: {}", e.host, e.message),
        )
        .await;
    }
    for h in before.difference(&after) {
        jobs::event(
            ctx,
            &obj,
            false,
            "VerifyRecovered",
            format!("{h}: verification passes again"),
        )
        .await;
    }
    status.errors = errors;
    match (&stalled_reason, status.errors.first()) {
        (Some((reason, msg)), _) => {
            condition(
                &mut status.conditions,
                condition_types::STALLED,
                Some(true),
                reason,
                msg.clone(),
                gen_,
            );
        }
        _ => condition(
            &mut status.conditions,
            condition_types::STALLED,
            Some(false),
            reasons::SUCCEEDED,
            "",
            gen_,
        ),
    }
    if hosts.is_empty() {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::NO_HOSTS_SELECTED,
            "no Host matches the policy's selector",
            gen_,
        );
    } else if let Some(first) = status.errors.first() {
        let msg = if first.packs.is_empty() {
            format!(
                "{} host(s) failing; {}: {}",
                status.errors.len(),
                first.host,
                first.message
            )
        } else {
            format!(
                "{} host(s) failing; {}: damaged pack(s) {}: {}",
                status.errors.len(),
                first.host,
                first.packs.join(", "),
                first.message
            )
        };
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            "VerifyFailed",
            msg,
            gen_,
        );
    } else if !all_verified {
        condition(
            &mut status.conditions,
            condition_types::READY,
            None,
            reasons::PROGRESSING,
            "waiting for the first verification on every host",
            gen_,
        );
    } else {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(true),
            reasons::SUCCEEDED,
            "every host's repository verified",
            gen_,
        );
    }
    // Refused duplicates and hosts the job could not be taken off yet are listed (not
    // counted as failing); removals are retried.
    let refused_selected: Vec<(&String, &String)> = refused
        .iter()
        .filter(|(h, _)| selected.contains(*h))
        .collect();
    for (host, message) in &refused_selected {
        status.errors.push(VerifyError {
            host: host.to_string(),
            message: format!("{}: {message}", reasons::DUPLICATE_HOST),
            packs: vec![],
            time: None,
        });
    }
    if let Some((host, message)) = refused_selected.first() {
        condition(
            &mut status.conditions,
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
    for (host, f) in &removal {
        status.errors.push(VerifyError {
            host: host.clone(),
            message: format!("{REMOVAL_PENDING}{}: {}", f.reason, f.message),
            packs: vec![],
            time: None,
        });
        requeue = requeue.min(super::error::retry_after(f, 1).unwrap_or(MAX_RESYNC));
    }
    jobs::keep_transition_times(&previous.conditions, &mut status.conditions);
    write(ctx, policy, &written, &status).await?;
    Ok(Action::requeue(requeue.max(MIN_RESYNC)))
}

async fn write(
    ctx: &Context,
    policy: &VerifyPolicy,
    previous: &VerifyPolicyStatus,
    status: &VerifyPolicyStatus,
) -> Result<(), Error> {
    let changed = policy.status.is_none() || previous != status;
    jobs::write_status(
        ctx,
        policy,
        KIND,
        changed,
        serde_json::to_value(status).unwrap_or_default(),
    )
    .await
}

/// Finalizer: the job leaves every host that may carry it (`status.installedHosts`, or the
/// selection for a status written before that record existed).
async fn cleanup(policy: &VerifyPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let previous = policy.status.clone().unwrap_or_default();
    let spec = &policy.spec;
    let recorded = jobs::recorded_or_selected(
        ctx,
        &ns,
        previous.installed_hosts.as_ref(),
        spec.backup_policy_ref.as_ref(),
        spec.host_selector.as_ref(),
        spec.repository_ref.as_ref(),
    )
    .await;
    let pending = jobs::remove_everywhere(
        ctx,
        &policy.object_ref(&()),
        &policy.metadata,
        PolicyKind::Verify,
        &recorded,
    )
    .await;
    if !pending.is_empty() {
        // Hosts already cleaned leave the record, so the retry contacts only the rest.
        let mut status = previous.clone();
        status.installed_hosts = Some(pending.clone());
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
    use fleetsnap_crds::common::{LocalObjectRef, Schedule};
    use fleetsnap_crds::verify_policy::{ReadData, RestoreDrill, RotationPeriod, VerifyPolicySpec};

    fn policy(read_data: Option<ReadData>, drill: Option<RestoreDrill>) -> VerifyPolicy {
        VerifyPolicy::new(
            "v",
            VerifyPolicySpec {
                backup_policy_ref: Some(LocalObjectRef { name: "bp".into() }),
                host_selector: None,
                repository_ref: None,
                schedule: Schedule {
                    on_calendar: "Sat *-*-* 05:00:00".into(),
                    randomized_delay: None,
                    persistent: true,
                },
                read_data,
                restore_drill: drill,
                suspend: false,
            },
        )
    }

    fn record(started: &str, ok: bool, error: Option<&str>) -> RunRecord {
        let t: DateTime<Utc> = started.parse().unwrap();
        RunRecord {
            policy: "v".into(),
            kind: PolicyKind::Verify,
            started: t,
            finished: t + chrono::Duration::seconds(5),
            exit_code: if ok { 0 } else { 1 },
            snapshot_id: None,
            files_new: 0,
            files_changed: 0,
            files_unmodified: 0,
            bytes_added: 0,
            duration_seconds: 5.0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn args_for_rotation_percentage_and_drill() {
        let rot = ReadData {
            rotation: Some(Rotation {
                subsets: 20,
                period: RotationPeriod::Week,
            }),
            percentage: None,
        };
        let drill = RestoreDrill {
            enabled: true,
            sample_files: 20,
            scratch_dir: "/var/tmp/d".into(),
        };
        assert_eq!(
            extra_args(&policy(Some(rot), Some(drill.clone()))).join(" "),
            "--read-data-rotate 20/week --restore-drill-files 20 --scratch /var/tmp/d"
        );
        let pct = ReadData {
            rotation: None,
            percentage: Some(10),
        };
        assert_eq!(
            extra_args(&policy(Some(pct), None)).join(" "),
            "--read-data-subset 10%"
        );
        let off = RestoreDrill {
            enabled: false,
            ..drill
        };
        assert!(extra_args(&policy(None, Some(off))).is_empty());
    }

    #[test]
    fn coverage_counts_distinct_successful_subsets_in_the_window() {
        let rot = Rotation {
            subsets: 4,
            period: RotationPeriod::Week,
        };
        let now: DateTime<Utc> = "2026-03-28T12:00:00Z".parse().unwrap();
        let recs = vec![
            record("2026-01-03T05:00:00Z", true, None), // outside the 4-week window
            record("2026-03-07T05:00:00Z", true, None),
            record("2026-03-14T05:00:00Z", true, None),
            record("2026-03-15T05:00:00Z", true, None), // same week as the 14th: same subset
            record("2026-03-21T05:00:00Z", false, Some("check found 1 errors")),
            record("2026-03-28T05:00:00Z", true, None),
        ];
        assert_eq!(covered_subsets(&rot, &recs, now).len(), 3);
    }

    #[test]
    fn failures_name_the_damaged_pack() {
        let log = vec![
            "error: pack 1a2b3c4d: ciphertext verification failed".to_string(),
            "error: pack 1a2b3c4d: data blob 99aa: not found".to_string(),
            "Fatal: check found 2 errors".to_string(),
        ];
        assert_eq!(packs_named(&log), vec!["1a2b3c4d".to_string()]);
        let obs = JobObservation {
            records: vec![record(
                "2026-03-21T05:00:00Z",
                false,
                Some("check found 2 errors"),
            )],
            ..Default::default()
        };
        let e = host_error("host1", &obs, &log).unwrap();
        assert_eq!(e.packs, vec!["1a2b3c4d".to_string()]);
        assert!(
            e.message.contains("check found 2 errors") && e.message.contains("1a2b3c4d"),
            "{}",
            e.message
        );
        let ok = JobObservation {
            records: vec![record("2026-03-21T05:00:00Z", true, None)],
            ..Default::default()
        };
        assert!(host_error("host1", &ok, &log).is_none());
        assert!(packs_named(&["error: snapshot deadbeef: tree x".to_string()]).is_empty());
    }
}
