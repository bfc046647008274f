//! Pure status computation: observations and failures of every selected host → the
//! per-host entries of `Host.status`, the `BackupPolicy.status`, and the Events worth
//! emitting. Time is a parameter, so all of it is tested without clocks or hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::backup_policy::{BackupPolicyStatus, HostBackupState, PolicyHostSummary};
use fleetsnap_crds::common::{
    Condition, ConditionStatus, condition_types, reasons, upsert_condition,
};
use fleetsnap_crds::host::{HostPolicyStatus, PolicyKind as CrdKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::error::Failure;
use crate::host::observe::JobObservation;

pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(
        Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

pub fn unix_time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What one reconcile learned about one selected host.
#[derive(Clone, Debug, Default)]
pub struct HostResult {
    pub host: String,
    /// Run records and timer state, when the host was reached.
    pub observation: Option<JobObservation>,
    /// Why the host could not be planned, reached or converged.
    pub failure: Option<Failure>,
}

/// Facts about one host's backups, derived from its run records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostView {
    pub summary: Option<PolicyHostSummary>,
    pub entry: Option<HostPolicyStatus>,
    pub consecutive_failures: i32,
}

/// Failed runs since the newest success (or since the oldest record kept).
pub fn consecutive_failures(obs: &JobObservation) -> i32 {
    obs.records
        .iter()
        .rev()
        .take_while(|r| !r.succeeded())
        .count() as i32
}

/// The `Host.status.policies[]` entry of this backup policy.
pub fn host_policy_entry(policy: &str, obs: &JobObservation) -> HostPolicyStatus {
    let last = obs.last_run();
    let success = obs.last_success();
    HostPolicyStatus {
        kind: CrdKind::BackupPolicy,
        name: policy.to_string(),
        last_run: last.map(|r| to_time(r.finished)),
        last_success: success.map(|r| to_time(r.finished)),
        snapshot_id: success.and_then(|r| r.snapshot_id.clone()),
        bytes_added: last.map(|r| i64::try_from(r.bytes_added).unwrap_or(i64::MAX)),
        duration_seconds: last.map(|r| r.duration_seconds),
        error: last.filter(|r| !r.succeeded()).map(|r| {
            r.error
                .clone()
                .unwrap_or_else(|| format!("exit code {}", r.exit_code))
        }),
        next_run: obs
            .timer
            .as_ref()
            .and_then(|t| t.next_elapse)
            .map(unix_time),
        consecutive_failures: consecutive_failures(obs),
    }
}

/// Summary state of one host. A failure to reach or converge the host wins over its run
/// records; without it, the newest run decides, and staleness is judged on the newest success.
pub fn host_summary(
    r: &HostResult,
    previous: Option<&PolicyHostSummary>,
    now: DateTime<Utc>,
    window: Duration,
) -> PolicyHostSummary {
    let success = r.observation.as_ref().and_then(|o| o.last_success());
    // An unreachable host keeps what was last known about its backups.
    let last_success = success
        .map(|s| to_time(s.finished))
        .or_else(|| previous.and_then(|p| p.last_success.clone()));
    let snapshot_id = success
        .and_then(|s| s.snapshot_id.clone())
        .or_else(|| previous.and_then(|p| p.snapshot_id.clone()));
    let stale = last_success.as_ref().is_some_and(|t| {
        let age = now.timestamp() - t.0.as_second();
        age > i64::try_from(window.as_secs()).unwrap_or(i64::MAX)
    });
    let (state, message) = if let Some(f) = &r.failure {
        (HostBackupState::Failing, Some(format!("{}: {}", f.reason, f.message)))
    } else {
        match r.observation.as_ref().and_then(|o| o.last_run()) {
            Some(last) if !last.succeeded() => (
                HostBackupState::Failing,
                Some(format!(
                    "{}: last run failed with exit code {}: {}",
                    run_failure_reason(last.exit_code),
                    last.exit_code,
                    last.error.as_deref().unwrap_or("no error message")
                )),
            ),
            Some(_) if stale => (
                HostBackupState::Stale,
                Some(format!("no successful backup within {}", human(window))),
            ),
            Some(_) => (HostBackupState::Succeeded, None),
            None => (HostBackupState::Pending, None),
        }
    };
    PolicyHostSummary {
        name: r.host.clone(),
        state,
        last_success,
        snapshot_id,
        message,
    }
}

/// restic's exit codes for repository trouble (10: does not exist, 11: locked, 12: wrong
/// password) say where to look; other failures are the backup's own.
pub fn run_failure_reason(exit_code: i32) -> &'static str {
    match exit_code {
        10..=12 => reasons::REPOSITORY_ERROR,
        _ => "BackupFailed",
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A problem of the policy as a whole (missing repository, invalid schedule) that stops
/// every host from being planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub reason: &'static str,
    pub message: String,
}

/// The new `BackupPolicy.status`. `previous` provides condition transition times.
pub fn policy_status(
    hosts: Vec<PolicyHostSummary>,
    problem: Option<&PolicyProblem>,
    failures: &[&Failure],
    previous: Option<&BackupPolicyStatus>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> BackupPolicyStatus {
    let mut hosts = hosts;
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let count = |s: HostBackupState| hosts.iter().filter(|h| h.state == s).count() as i32;
    let total = hosts.len() as i32;
    let succeeded = count(HostBackupState::Succeeded);
    let failing = count(HostBackupState::Failing);
    let stale = count(HostBackupState::Stale);
    let pending = count(HostBackupState::Pending);
    let all_succeeded_once = !hosts.is_empty() && hosts.iter().all(|h| h.last_success.is_some());
    let oldest_last_success = all_succeeded_once
        .then(|| {
            hosts
                .iter()
                .filter_map(|h| h.last_success.clone())
                .min_by_key(|t| t.0)
        })
        .flatten();
    let last_snapshot_time = hosts
        .iter()
        .filter_map(|h| h.last_success.clone())
        .max_by_key(|t| t.0);

    let names = |s: HostBackupState| {
        hosts
            .iter()
            .filter(|h| h.state == s)
            .map(|h| match &h.message {
                Some(m) => format!("{} ({m})", h.name),
                None => h.name.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (ready, ready_reason, ready_msg) = if let Some(p) = problem {
        (ConditionStatus::False, p.reason, p.message.clone())
    } else if total == 0 {
        (
            ConditionStatus::False,
            reasons::NO_HOSTS_SELECTED,
            "the hostSelector matches no Host in this namespace".to_string(),
        )
    } else if failing > 0 {
        (
            ConditionStatus::False,
            reasons::HOSTS_FAILING,
            format!("{failing} of {total} host(s) failing: {}", names(HostBackupState::Failing)),
        )
    } else if stale > 0 {
        (
            ConditionStatus::False,
            reasons::HOSTS_STALE,
            format!("{stale} of {total} host(s) stale: {}", names(HostBackupState::Stale)),
        )
    } else if pending > 0 {
        (
            ConditionStatus::False,
            reasons::PROGRESSING,
            format!("waiting for the first backup on: {}", names(HostBackupState::Pending)),
        )
    } else {
        (
            ConditionStatus::True,
            reasons::SUCCEEDED,
            format!("all {total} host(s) backed up within the staleness window"),
        )
    };
    // Stalled: nothing will improve without a human — a policy-level spec problem, or a
    // host failure that is not retried on its own.
    let stalled = problem
        .map(|p| (p.reason, p.message.clone()))
        .or_else(|| {
            failures
                .iter()
                .find(|f| !f.is_transient())
                .map(|f| (f.reason, f.message.clone()))
        });
    let reconciling = pending > 0 && problem.is_none();

    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let cond = |t: &str, s: ConditionStatus, r: &str, m: String| {
        Condition::new(t, s, r, m, generation, to_time(now))
    };
    upsert_condition(
        &mut conditions,
        cond(condition_types::READY, ready, ready_reason, ready_msg),
    );
    upsert_condition(
        &mut conditions,
        if reconciling {
            cond(
                condition_types::RECONCILING,
                ConditionStatus::True,
                reasons::PROGRESSING,
                format!("{pending} host(s) have not completed a backup yet"),
            )
        } else {
            cond(
                condition_types::RECONCILING,
                ConditionStatus::False,
                reasons::SUCCEEDED,
                "every selected host is configured".to_string(),
            )
        },
    );
    upsert_condition(
        &mut conditions,
        match stalled {
            Some((reason, message)) => cond(
                condition_types::STALLED,
                ConditionStatus::True,
                reason,
                message,
            ),
            None => cond(
                condition_types::STALLED,
                ConditionStatus::False,
                reasons::SUCCEEDED,
                "no failure that needs a change to resolve".to_string(),
            ),
        },
    );

    BackupPolicyStatus {
        hosts_total: total,
        hosts_succeeded: succeeded,
        hosts_failing: failing,
        hosts_stale: stale,
        oldest_last_success,
        last_snapshot_time,
        hosts,
        conditions,
        observed_generation: generation,
    }
}

/// An Event to publish on the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Events for state changes only, so a host failing for a week produces one Warning, not
/// one per reconcile.
pub fn transitions(
    previous: &[PolicyHostSummary],
    current: &[PolicyHostSummary],
) -> Vec<EventSpec> {
    let before: BTreeMap<&str, HostBackupState> = previous
        .iter()
        .map(|h| (h.name.as_str(), h.state))
        .collect();
    let mut out = Vec::new();
    for h in current {
        let prev = before.get(h.name.as_str()).copied();
        let msg = h.message.clone().unwrap_or_default();
        match (prev, h.state) {
            (p, HostBackupState::Failing) if p != Some(HostBackupState::Failing) => {
                out.push(EventSpec {
                    warning: true,
                    reason: "BackupFailing",
                    note: format!("host {}: {msg}", h.name),
                })
            }
            (p, HostBackupState::Stale) if p != Some(HostBackupState::Stale) => {
                out.push(EventSpec {
                    warning: true,
                    reason: "BackupStale",
                    note: format!("host {}: {msg}", h.name),
                })
            }
            (Some(HostBackupState::Failing | HostBackupState::Stale), HostBackupState::Succeeded) => {
                out.push(EventSpec {
                    warning: false,
                    reason: "BackupRecovered",
                    note: format!("host {} backed up successfully again", h.name),
                })
            }
            _ => {}
        }
    }
    out
}
