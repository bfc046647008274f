//! VerifyPolicy reconciler: a verify timer on every targeted host (structure check, a
//! calendar-rotating or random data subset, optional restore drill), and status, Events and
//! metrics from the hosts' run records.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::common::{condition_types, reasons};
use fleetsnap_crds::host::PolicyKind as CrdKind;
use fleetsnap_crds::verify_policy::{
    MAX_ROTATION_SUBSETS, Rotation, VerifyError, VerifyPolicy, VerifyPolicyStatus,
};
use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::Context;
use super::error::Error;
use super::host_job::{self, MAX_RESYNC};
use super::host_status;
use super::jobs::{self, condition};
use super::summary::{self, to_time};
use super::tamper::{self, ScanCache};
use super::units::UnitMode;
use crate::host::model::PolicyKind;
use crate::host::observe::JobObservation;
use crate::metrics::{PolicyHostLabels, PolicyLabels};

pub const KIND: &str = "VerifyPolicy";
const MIN_RESYNC: Duration = Duration::from_secs(5);

host_job::host_job_kind!(
    VerifyPolicy,
    VerifyPolicyStatus,
    VerifyError,
    kind: KIND,
    job: PolicyKind::Verify,
    removal_pending: "left the selection; removing the verify job is pending: ",
    apply: apply,
    note: |host, message| VerifyError {
        host,
        message,
        packs: vec![],
        time: None,
    },
);

/// Executor arguments of the verify job: what data to re-read, then the drill.
pub fn extra_args(policy: &VerifyPolicy) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(rd) = &policy.spec.read_data {
        if let Some(r) = &rd.rotation {
            args.push("--read-data-rotate".into());
            args.push(format!(
                "{}/{}",
                r.subsets.clamp(1, MAX_ROTATION_SUBSETS),
                r.period.period().as_str()
            ));
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
    obs: &JobObservation,
    now: DateTime<Utc>,
) -> BTreeSet<u32> {
    use fleetsnap_crds::verify_policy::RotationPeriod;
    let period_days: i64 = match rotation.period {
        RotationPeriod::Day => 1,
        RotationPeriod::Week => 7,
        RotationPeriod::Month => 31,
    };
    // A sliding window of `subsets` periods, not "the current period and the ones before":
    // coverage must not dip at every period boundary before that period's run has happened.
    let window = chrono::Duration::days(
        period_days * i64::from(rotation.subsets.clamp(1, MAX_ROTATION_SUBSETS)),
    );
    // Which run is recent enough is judged on the operator's clock; which subset a run
    // read follows the host's, as the executor chose it by that clock.
    obs.records
        .iter()
        .filter(|r| r.succeeded() && now - obs.local(r.started) < window)
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
    let detail: Vec<&String> = log.iter().take(3).collect();
    let mut message = summary::run_error(last);
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
        // Host-provided text (run record, journal): one host's bounded share of status.
        message: crate::limits::bounded(&message, crate::limits::MAX_ERROR_TEXT),
        packs: packs
            .into_iter()
            .take(crate::limits::MAX_PACKS_LISTED)
            .collect(),
        time: Some(to_time(last.finished)),
    })
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
    let targets = match host_job::resolve_targets(ctx, policy, &ns, &previous, &mut status).await? {
        Ok(t) => t,
        Err(action) => return Ok(action),
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
    let round = host_job::plan_round(
        ctx,
        policy,
        &ns,
        UnitMode::Install,
        &selected,
        &previous,
        &mut status,
    )
    .await?;
    let repo = &targets.repository;
    let args = extra_args(policy);
    let converge = hosts
        .iter()
        .filter(|h| round.plan.converge.contains(&h.name_any()));
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

    // Which hosts failed before this round, from their entries (`status.errors` lists only
    // the first few).
    let failing_before: BTreeSet<String> =
        host_status::entries_of(ctx, &ns, CrdKind::VerifyPolicy, &name)
            .into_iter()
            .filter(|(_, e)| e.error.is_some())
            .map(|(h, _)| h)
            .collect();
    let mut errors = Vec::new();
    let mut last_run: Option<DateTime<Utc>> = None;
    let mut last_verified: Option<DateTime<Utc>> = None;
    let mut all_verified = !hosts.is_empty();
    let mut coverage: Option<i32> = None;
    let mut requeue = MAX_RESYNC;
    let mut stalled_reason = None;
    // Hosts with a verify run, and when it started: their object versions are listed next.
    let mut ran: Vec<(String, DateTime<Utc>)> = Vec::new();
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
        host_job::sync_host_entry::<VerifyPolicy>(ctx, &ns, &name, &host, &r).await;
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
                    ran.push((host.clone(), last.started));
                }
                if let Some(e) = host_error(&host, obs, &c.failure_log) {
                    errors.push(e);
                }
                if let Some(rot) = spec.read_data.as_ref().and_then(|r| r.rotation.as_ref()) {
                    let done = covered_subsets(rot, obs, now).len() as i32;
                    let pct = (done * 100 / rot.subsets.clamp(1, MAX_ROTATION_SUBSETS)).min(100);
                    coverage = Some(coverage.map_or(pct, |c| c.min(pct)));
                }
                if let Some(wait) = host_job::after_next_elapse(obs, now) {
                    requeue = requeue.min(wait);
                }
                if let Some(at) = c.refresh_at {
                    let wait = (at - now).to_std().unwrap_or_default();
                    requeue = requeue.min(wait.max(std::time::Duration::from_secs(5)));
                }
            }
            Err(f) => {
                all_verified = false;
                if f.retry == super::error::Retry::OnChange {
                    stalled_reason = Some((f.reason, f.message.clone()));
                }
                let (after, message) = host_job::unreached::<VerifyPolicy>(ctx, &ns, &host, &f);
                requeue = requeue.min(after);
                errors.push(VerifyError {
                    host,
                    message,
                    packs: vec![],
                    time: None,
                });
            }
        }
    }
    let tampered = tampering(ctx, &ns, &name, repo, &hosts, &ran).await;
    status.last_run = last_run.map(to_time);
    if all_verified && let Some(v) = last_verified {
        status.last_verified = Some(to_time(v));
    }
    if let Some(rot) = spec.read_data.as_ref().and_then(|r| r.rotation.as_ref()) {
        let (n, m) = rot.subset_at(to_ts(last_run.unwrap_or(now)));
        status.last_subset = Some(format!("{n}/{m}"));
    }
    status.coverage_percent = coverage;

    // One Event per newly failing host, naming the packs; one when it recovers.
    let before: BTreeSet<&str> = failing_before
        .iter()
        .map(String::as_str)
        .filter(|h| round.plan.converge.contains(*h))
        .collect();
    let after: BTreeSet<&str> = errors.iter().map(|e| e.host.as_str()).collect();
    let obj = policy.object_ref(&());
    // Tampering is its own finding, with its own Event, whatever the verify run said.
    let tampered_before: BTreeSet<&str> = previous
        .errors
        .iter()
        .filter(|e| tamper::is_report(&e.message))
        .map(|e| e.host.as_str())
        .collect();
    for e in tampered
        .iter()
        .filter(|e| !tampered_before.contains(e.host.as_str()))
    {
        jobs::event(
            ctx,
            &obj,
            true,
            reasons::TAMPERED,
            format!("{}: {}", e.host, e.message),
        )
        .await;
    }
    // One Event per host while few change; past that, one naming five and counting the rest.
    let newly: Vec<&VerifyError> = errors
        .iter()
        .filter(|e| !before.contains(e.host.as_str()))
        .collect();
    if newly.len() <= summary::MAX_HOSTS_NAMED {
        for e in &newly {
            jobs::event(
                ctx,
                &obj,
                true,
                "VerifyFailed",
                format!("{}: {}", e.host, e.message),
            )
            .await;
        }
    } else {
        let note = format!(
            "{} hosts started failing verification: {}",
            newly.len(),
            summary::name_some(
                newly
                    .iter()
                    .take(summary::MAX_HOSTS_NAMED)
                    .map(|e| format!(
                        "{}: {}",
                        e.host,
                        crate::limits::bounded(&e.message, summary::MAX_NAMED_ERROR)
                    ))
                    .collect(),
                newly.len(),
                crate::limits::MAX_ERROR_TEXT,
            )
        );
        jobs::event(ctx, &obj, true, "VerifyFailed", note).await;
    }
    let recovered: Vec<&&str> = before.difference(&after).collect();
    if recovered.len() <= summary::MAX_HOSTS_NAMED {
        for h in recovered {
            jobs::event(
                ctx,
                &obj,
                false,
                "VerifyRecovered",
                format!("{h}: verification passes again"),
            )
            .await;
        }
    } else {
        let note = format!(
            "{} hosts pass verification again: {}",
            recovered.len(),
            summary::name_some(
                recovered.iter().map(|h| h.to_string()).collect(),
                recovered.len(),
                crate::limits::MAX_ERROR_TEXT,
            )
        );
        jobs::event(ctx, &obj, false, "VerifyRecovered", note).await;
    }
    let first_tampered = tampered.first().cloned();
    let tampered_hosts = tampered.len();
    errors.extend(tampered);
    status.hosts_failing = errors
        .iter()
        .map(|e| e.host.as_str())
        .collect::<BTreeSet<_>>()
        .len() as i32;
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
    } else if let Some(first) = first_tampered {
        condition(
            &mut status.conditions,
            condition_types::READY,
            Some(false),
            reasons::TAMPERED,
            format!(
                "{tampered_hosts} host(s) with overwritten repository files; {}: {}",
                first.host, first.message
            ),
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
    if let Some(after) = host_job::add_notes::<VerifyPolicy>(&mut status, &round, &selected, gen_) {
        requeue = requeue.min(after);
    }
    jobs::keep_transition_times(&previous.conditions, &mut status.conditions);
    host_job::JobStatus::cap_errors(&mut status);
    host_job::write(ctx, policy, &round.written, &status).await?;
    Ok(Action::requeue(requeue.max(MIN_RESYNC)))
}

/// After a host's verify run, lists its repository's object versions with the operator's
/// credentials (S3 only; maintenance keys, else the shared keys) and reports overwritten
/// files: a `status.errors` entry per tampered host, and `fleetsnap_tampered_objects`. One
/// listing per run ([`ScanCache`]); a listing that fails is logged and tried after the next
/// run, and the last successful listing stays what is reported.
async fn tampering(
    ctx: &Context,
    ns: &str,
    policy: &str,
    repo: &fleetsnap_crds::BackupRepository,
    hosts: &[std::sync::Arc<fleetsnap_crds::Host>],
    ran: &[(String, DateTime<Utc>)],
) -> Vec<VerifyError> {
    use super::storage_probe;
    if repo.spec.s3.is_none() || ran.is_empty() {
        return Vec::new();
    }
    let cache = ScanCache::global();
    let key = |host: &str| format!("{ns}/{policy}/{host}");
    let mut secrets = None;
    if ran.iter().any(|(h, t)| cache.get(&key(h), *t).is_none()) {
        let mut names: Vec<String> = [
            repo.spec.maintenance_credentials_secret_ref.as_ref(),
            repo.spec
                .s3
                .as_ref()
                .and_then(|s| s.credentials_secret_ref.as_ref()),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
        names.dedup();
        if names.is_empty() {
            // Per-host keys only: the operator has no identity of its own to list with.
            return Vec::new();
        }
        match jobs::read_secrets(ctx, ns, &names).await {
            Ok(s) => secrets = Some(s),
            Err(f) => {
                tracing::warn!(error = %f.message, "cannot read the credentials to list object versions")
            }
        }
    }
    let mut out = Vec::new();
    for (host, started) in ran {
        let Some(h) = hosts.iter().find(|h| h.name_any() == *host) else {
            continue;
        };
        let key = key(host);
        if cache.get(&key, *started).is_none()
            && let Some(secrets) = &secrets
        {
            let r = match repo.spec.host_path(h.effective_hostname(), ns) {
                Ok(path) => match storage_probe::access(repo, Some(&path), secrets) {
                    Some(Ok(a)) => storage_probe::object_versions(a)
                        .await
                        .map(|v| fleetsnap::backend::s3::overwritten(&v)),
                    Some(Err(e)) => Err(e),
                    None => continue,
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &r {
                tracing::warn!(host, error = %e, "cannot list the repository's object versions");
            }
            cache.put(&key, *started, r);
        }
        let Some(found) = cache.reported(&key) else {
            continue;
        };
        let labels = PolicyHostLabels {
            namespace: ns.to_string(),
            policy: policy.to_string(),
            host: host.clone(),
        };
        ctx.metrics
            .tampered_objects
            .get_or_create(&labels)
            .set(found.len() as f64);
        if let Some(message) = tamper::message(&found) {
            tracing::warn!(host, files = found.len(), "repository files overwritten");
            out.push(VerifyError {
                host: host.clone(),
                message,
                packs: vec![],
                time: Some(to_time(*started)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_contract::RunRecord;
    use fleetsnap_crds::common::{LocalObjectRef, Schedule};
    use fleetsnap_crds::verify_policy::{ReadData, RestoreDrill, RotationPeriod, VerifyPolicySpec};

    /// The subset the executor reads on `date` (by its own rule) for `m/<period>`.
    fn executor_subset(m: u32, period: &str, date: chrono::NaiveDate) -> u32 {
        let rot = fleetsnap::check::Subset::parse(&format!("{m}/{period}")).unwrap();
        match rot.resolve(date) {
            fleetsnap::check::Subset::Bucket { n, .. } => n,
            other => panic!("{other:?}"),
        }
    }

    fn noon(date: chrono::NaiveDate) -> Timestamp {
        Timestamp::from_second(date.and_hms_opt(12, 0, 0).unwrap().and_utc().timestamp()).unwrap()
    }

    /// Issue 12: the executor and the operator must name the same subset for a date, and
    /// any `subsets` consecutive periods must read every subset exactly once, across year
    /// boundaries, 53-week years and for monthly rotations with more than 12 subsets.
    #[test]
    fn rotation_is_one_rule_that_covers_every_subset_once() {
        let d = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let weekly = Rotation {
            subsets: 20,
            period: RotationPeriod::Week,
        };
        let day = d(2026, 8, 24);
        assert_eq!(
            executor_subset(20, "week", day),
            weekly.subset_at(noon(day)).0,
            "executor and status disagree on the subset of {day}"
        );
        for (m, period, rp, step_days) in [
            (20u32, "week", RotationPeriod::Week, 7i64),
            (7, "day", RotationPeriod::Day, 1),
            (20, "month", RotationPeriod::Month, 0),
        ] {
            let rot = Rotation {
                subsets: m as i32,
                period: rp,
            };
            // Windows that span new years, 2026 (53 ISO weeks) among them.
            for start in [d(2025, 11, 3), d(2026, 10, 5), d(2027, 12, 27)] {
                let mut seen = BTreeSet::new();
                for i in 0..m as i64 {
                    let date = if step_days == 0 {
                        start
                            .checked_add_months(chrono::Months::new(i as u32))
                            .unwrap()
                    } else {
                        start + chrono::Duration::days(i * step_days)
                    };
                    let n = executor_subset(m, period, date);
                    assert_eq!(n, rot.subset_at(noon(date)).0, "{m}/{period} on {date}");
                    seen.insert(n);
                }
                assert_eq!(
                    seen.len(),
                    m as usize,
                    "{m} consecutive {period}s from {start} read only {} distinct subsets",
                    seen.len()
                );
            }
        }
        // Whatever the CRD admits, the executor runs.
        let crd_max = fleetsnap_crds::verify_policy::MAX_ROTATION_SUBSETS;
        assert!(fleetsnap::check::Subset::parse(&format!("{crd_max}/week")).is_ok());
    }

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
                    max_runtime: None,
                    lock_wait: None,
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
            credential_expiry: None,
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
        let obs = JobObservation {
            records: recs,
            ..JobObservation::default()
        };
        assert_eq!(covered_subsets(&rot, &obs, now).len(), 3);
    }

    /// A host whose clock runs two weeks behind wrote "2026-03-14" for a run the operator saw
    /// on the 28th: the window is judged on the operator's clock (still 3 runs inside), the
    /// subset on the host's (the one the executor read).
    #[test]
    fn coverage_window_uses_the_operators_clock() {
        let rot = Rotation {
            subsets: 2,
            period: RotationPeriod::Week,
        };
        let now: DateTime<Utc> = "2026-03-28T12:00:00Z".parse().unwrap();
        let behind = -14 * 86_400;
        let obs = |offset| JobObservation {
            records: vec![
                // A week apart: consecutive weeks, so two different subsets.
                record("2026-03-01T05:00:00Z", true, None),
                record("2026-03-08T05:00:00Z", true, None),
            ],
            clock_offset_secs: offset,
            ..JobObservation::default()
        };
        // Taken at face value both runs are older than the 2-week window.
        assert_eq!(covered_subsets(&rot, &obs(0), now).len(), 0);
        assert_eq!(covered_subsets(&rot, &obs(behind), now).len(), 2);
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
