//! Pure status computation: observations and failures of every selected host → the
//! per-host entries of `Host.status`, the `BackupPolicy.status`, and the Events worth
//! emitting. Time is a parameter, so all of it is tested without clocks or hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::backup_policy::{
    BackupPolicyStatus, HostBackupState, MAX_WORST_HOST_ERROR, MAX_WORST_HOSTS, PolicyHostSummary,
    WorstHost,
};
use fleetsnap_crds::common::{
    Condition, ConditionStatus, condition_types, reasons, upsert_condition,
};
use fleetsnap_crds::host::{HostPolicyStatus, PolicyKind as CrdKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::error::Failure;
use crate::host::observe::JobObservation;
use crate::limits::{MAX_CONDITION_MESSAGE, MAX_ERROR_TEXT, bounded};
use fleetsnap_contract::RunRecord;

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

/// The `Host.status.policies[]` entry of this backup policy: the host-side job's entry plus
/// snapshot and size.
pub fn host_policy_entry(policy: &str, obs: &JobObservation) -> HostPolicyStatus {
    let last = obs.last_run();
    HostPolicyStatus {
        snapshot_id: obs.last_success().and_then(|r| r.snapshot_id.clone()),
        bytes_added: last.map(|r| i64::try_from(r.bytes_added).unwrap_or(i64::MAX)),
        ..job_entry(CrdKind::BackupPolicy, policy, obs)
    }
}

/// A failed run's error for status: the record's message, else its exit code; the record
/// comes from the host, so its text is cut to [`MAX_ERROR_TEXT`].
pub fn run_error(r: &RunRecord) -> String {
    match &r.error {
        Some(e) => bounded(e, MAX_ERROR_TEXT),
        None => format!("exit code {}", r.exit_code),
    }
}

/// Why the newest run cannot be judged, when its record is unreadable (too large, not a
/// run record): reported instead of an older run's outcome.
pub fn unreadable_error(obs: &JobObservation) -> Option<String> {
    obs.newest_unreadable().map(|(name, why)| {
        bounded(
            &format!("the newest run record {name} cannot be read: {why}"),
            MAX_ERROR_TEXT,
        )
    })
}

/// The `Host.status.policies[]` entry of a host-side Retention or Verify job, from its run
/// records (backup-only fields stay empty).
pub fn job_entry(kind: CrdKind, policy: &str, obs: &JobObservation) -> HostPolicyStatus {
    let last = obs.last_run();
    HostPolicyStatus {
        kind,
        name: policy.to_string(),
        last_run: last.map(|r| to_time(r.started)),
        last_success: obs.last_success().map(|r| to_time(r.finished)),
        snapshot_id: None,
        bytes_added: None,
        duration_seconds: last.map(|r| r.duration_seconds),
        error: unreadable_error(obs).or_else(|| last.filter(|r| !r.succeeded()).map(run_error)),
        next_run: obs
            .timer
            .as_ref()
            .and_then(|t| t.next_elapse)
            .map(unix_time),
        consecutive_failures: consecutive_failures(obs),
        credential_expiry: last.and_then(|r| r.credential_expiry).map(to_time),
        state: None,
    }
}

/// The entry of a host the reconcile could not reach or converge: what was known about its
/// runs stays, the error says why the host is not up to date. The failure is not a failed
/// run, so the failure streak is not counted up.
pub fn unreached_entry(
    kind: CrdKind,
    policy: &str,
    previous: Option<&HostPolicyStatus>,
    failure: &Failure,
) -> HostPolicyStatus {
    HostPolicyStatus {
        kind,
        name: policy.to_string(),
        error: Some(failure_text(failure)),
        ..previous
            .cloned()
            .unwrap_or_else(|| empty_entry(kind, policy))
    }
}

/// An entry with nothing known yet about the host's runs.
pub fn empty_entry(kind: CrdKind, policy: &str) -> HostPolicyStatus {
    HostPolicyStatus {
        kind,
        name: policy.to_string(),
        last_run: None,
        last_success: None,
        snapshot_id: None,
        bytes_added: None,
        duration_seconds: None,
        error: None,
        next_run: None,
        consecutive_failures: 0,
        credential_expiry: None,
        state: None,
    }
}

/// The entry of one host's repository after an operator-side retention run.
pub fn operator_run_entry(
    policy: &str,
    previous: Option<&HostPolicyStatus>,
    started: DateTime<Utc>,
    duration: Duration,
    error: Option<&str>,
    next_run: Option<DateTime<Utc>>,
) -> HostPolicyStatus {
    let succeeded = error.is_none();
    HostPolicyStatus {
        kind: CrdKind::RetentionPolicy,
        name: policy.to_string(),
        last_run: Some(to_time(started)),
        last_success: if succeeded {
            Some(to_time(started + duration))
        } else {
            previous.and_then(|p| p.last_success.clone())
        },
        snapshot_id: None,
        bytes_added: None,
        duration_seconds: Some((duration.as_secs_f64() * 10.0).round() / 10.0),
        error: error.map(|e| bounded(e, MAX_ERROR_TEXT)),
        next_run: next_run.map(to_time),
        consecutive_failures: if succeeded {
            0
        } else {
            previous
                .map_or(0, |p| p.consecutive_failures)
                .saturating_add(1)
        },
        credential_expiry: None,
        state: None,
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
    // Age on the operator's clock: the record's time is the host's, which may be hours off.
    let offset = r.observation.as_ref().map_or(0, |o| o.clock_offset_secs);
    let stale = last_success.as_ref().is_some_and(|t| {
        let age = now.timestamp() - t.0.as_second().saturating_sub(offset);
        age > i64::try_from(window.as_secs()).unwrap_or(i64::MAX)
    });
    let unreadable = r.observation.as_ref().and_then(unreadable_error);
    let (state, message) = if let Some(f) = &r.failure {
        (HostBackupState::Failing, Some(failure_text(f)))
    } else if let Some(u) = unreadable {
        (
            HostBackupState::Failing,
            Some(bounded(
                &format!("UnreadableRunRecord: {u}"),
                MAX_ERROR_TEXT,
            )),
        )
    } else {
        match r.observation.as_ref().and_then(|o| o.last_run()) {
            Some(last) if !last.succeeded() => (
                HostBackupState::Failing,
                Some(bounded(
                    &format!(
                        "{}: last run failed with exit code {}: {}",
                        run_failure_reason(last.exit_code),
                        last.exit_code,
                        last.error.as_deref().unwrap_or("no error message")
                    ),
                    MAX_ERROR_TEXT,
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

/// A failure as one host's status text: `Reason: message`, cut to [`MAX_ERROR_TEXT`].
pub fn failure_text(f: &Failure) -> String {
    bounded(&format!("{}: {}", f.reason, f.message), MAX_ERROR_TEXT)
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
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
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

/// Hosts named in a condition message or Event; the rest are counted ("and N more").
pub const MAX_HOSTS_NAMED: usize = 5;

/// Rank of a state among the worst hosts: failing first, then stale, then pending.
fn badness(s: HostBackupState) -> u8 {
    match s {
        HostBackupState::Failing => 0,
        HostBackupState::Stale => 1,
        HostBackupState::Pending => 2,
        HostBackupState::Succeeded => 3,
    }
}

/// The order of `status.worstHosts`: failing, stale, pending; within a state the oldest last
/// success first (never succeeded is oldest), then by name.
pub fn worst_first(a: &PolicyHostSummary, b: &PolicyHostSummary) -> std::cmp::Ordering {
    badness(a.state)
        .cmp(&badness(b.state))
        .then_with(|| {
            let t = |h: &PolicyHostSummary| h.last_success.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
        })
        .then_with(|| a.name.cmp(&b.name))
}

/// The at most [`MAX_WORST_HOSTS`] hosts that are not `Succeeded`, worst first, errors cut to
/// [`MAX_WORST_HOST_ERROR`]. `extra` are hosts listed without being counted (removal pending).
pub fn worst_hosts<'a>(hosts: impl IntoIterator<Item = &'a PolicyHostSummary>) -> Vec<WorstHost> {
    let mut bad: Vec<&PolicyHostSummary> = hosts
        .into_iter()
        .filter(|h| h.state != HostBackupState::Succeeded)
        .collect();
    bad.sort_by(|a, b| worst_first(a, b));
    bad.into_iter()
        .take(MAX_WORST_HOSTS)
        .map(|h| WorstHost {
            name: h.name.clone(),
            state: h.state,
            last_success: h.last_success.clone(),
            error: h
                .message
                .as_deref()
                .map(|m| bounded(m, MAX_WORST_HOST_ERROR)),
        })
        .collect()
}

/// Error text per host in a condition message or Event that names several hosts.
pub const MAX_NAMED_ERROR: usize = 160;

/// At most [`MAX_HOSTS_NAMED`] of `first` joined with "; ", as many as fit into `max` bytes
/// (the first one cut if even it does not), then "and N more" for the rest of `total`.
pub fn name_some(first: Vec<String>, total: usize, max: usize) -> String {
    let sep = "; ";
    let tail = |shown: usize| {
        if total > shown {
            format!("and {} more", total - shown)
        } else {
            String::new()
        }
    };
    let mut out = String::new();
    let mut shown = 0;
    for item in first.iter().take(MAX_HOSTS_NAMED) {
        let t = tail(shown + 1);
        let need = out.len()
            + if shown > 0 { sep.len() } else { 0 }
            + item.len()
            + if t.is_empty() { 0 } else { sep.len() + t.len() };
        if need > max {
            if shown == 0 {
                let room = max.saturating_sub(sep.len() + t.len() + crate::limits::ELLIPSIS.len());
                out = bounded(item, room);
                shown = 1;
            }
            break;
        }
        if shown > 0 {
            out.push_str(sep);
        }
        out.push_str(item);
        shown += 1;
    }
    let t = tail(shown);
    if !t.is_empty() {
        if !out.is_empty() {
            out.push_str(sep);
        }
        out.push_str(&t);
    }
    out
}

/// The new `BackupPolicy.status`. `previous` provides condition transition times. Its size
/// does not depend on the number of hosts: counts, at most [`MAX_WORST_HOSTS`] worst hosts,
/// and a `Ready` message naming at most [`MAX_HOSTS_NAMED`].
pub fn policy_status(
    hosts: Vec<PolicyHostSummary>,
    problem: Option<&PolicyProblem>,
    failures: &[&Failure],
    previous: Option<&BackupPolicyStatus>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> BackupPolicyStatus {
    let mut hosts = hosts;
    hosts.sort_by(worst_first);
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

    // The worst hosts of one state with their (bounded) errors, at most MAX_HOSTS_NAMED,
    // the rest as "and N more", within the condition's budget (the prefix "N of M host(s)
    // failing: " is a few dozen bytes).
    let names = |s: HostBackupState| {
        let items: Vec<String> = hosts
            .iter()
            .filter(|h| h.state == s)
            .take(MAX_HOSTS_NAMED)
            .map(|h| match &h.message {
                Some(m) => format!("{} ({})", h.name, bounded(m, MAX_NAMED_ERROR)),
                None => h.name.clone(),
            })
            .collect();
        name_some(items, count(s) as usize, MAX_CONDITION_MESSAGE - 64)
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
            format!(
                "{failing} of {total} host(s) failing: {}",
                names(HostBackupState::Failing)
            ),
        )
    } else if stale > 0 {
        (
            ConditionStatus::False,
            reasons::HOSTS_STALE,
            format!(
                "{stale} of {total} host(s) stale: {}",
                names(HostBackupState::Stale)
            ),
        )
    } else if pending > 0 {
        (
            ConditionStatus::False,
            reasons::PROGRESSING,
            format!(
                "waiting for the first backup on: {}",
                names(HostBackupState::Pending)
            ),
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
    let stalled = problem.map(|p| (p.reason, p.message.clone())).or_else(|| {
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
        hosts_pending: pending,
        oldest_last_success,
        last_snapshot_time,
        worst_hosts: worst_hosts(&hosts),
        hosts: Vec::new(),
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
/// one per reconcile; and one Event per kind of change (failing, stale, recovered) per
/// reconcile, naming at most [`MAX_HOSTS_NAMED`] hosts, so a fleet-wide outage is three
/// Events, not one per host.
pub fn transitions(
    previous: &[PolicyHostSummary],
    current: &[PolicyHostSummary],
) -> Vec<EventSpec> {
    let before: BTreeMap<&str, HostBackupState> = previous
        .iter()
        .map(|h| (h.name.as_str(), h.state))
        .collect();
    let (mut failing, mut stale, mut recovered) = (Vec::new(), Vec::new(), Vec::new());
    for h in current {
        let prev = before.get(h.name.as_str()).copied();
        match (prev, h.state) {
            (p, HostBackupState::Failing) if p != Some(HostBackupState::Failing) => failing.push(h),
            (p, HostBackupState::Stale) if p != Some(HostBackupState::Stale) => stale.push(h),
            // A host that comes back empty (reinstalled VM) is re-provisioned and shows
            // Pending until its first run; that is the recovery worth telling.
            (
                Some(HostBackupState::Failing | HostBackupState::Stale),
                HostBackupState::Succeeded | HostBackupState::Pending,
            ) => recovered.push(h),
            _ => {}
        }
    }
    let budget = MAX_ERROR_TEXT;
    let problem = |hs: &[&PolicyHostSummary], what: &str| -> String {
        let detail = |h: &PolicyHostSummary| {
            bounded(h.message.as_deref().unwrap_or_default(), MAX_NAMED_ERROR)
        };
        match hs {
            [h] => bounded(
                &format!(
                    "host {}: {}",
                    h.name,
                    h.message.as_deref().unwrap_or_default()
                ),
                budget,
            ),
            _ => format!(
                "{} hosts {what}: {}",
                hs.len(),
                name_some(
                    hs.iter()
                        .take(MAX_HOSTS_NAMED)
                        .map(|h| format!("{} ({})", h.name, detail(h)))
                        .collect(),
                    hs.len(),
                    budget,
                )
            ),
        }
    };
    let mut out = Vec::new();
    if !failing.is_empty() {
        out.push(EventSpec {
            warning: true,
            reason: "BackupFailing",
            note: problem(&failing, "started failing"),
        });
    }
    if !stale.is_empty() {
        out.push(EventSpec {
            warning: true,
            reason: "BackupStale",
            note: problem(&stale, "became stale"),
        });
    }
    if !recovered.is_empty() {
        let how = |h: &PolicyHostSummary| {
            if h.state == HostBackupState::Succeeded {
                "backed up successfully again"
            } else {
                "is reachable and configured again; waiting for its next backup"
            }
        };
        let note = match recovered.as_slice() {
            [h] => format!("host {} {}", h.name, how(h)),
            hs => format!(
                "{} hosts recovered: {}",
                hs.len(),
                name_some(
                    hs.iter()
                        .take(MAX_HOSTS_NAMED)
                        .map(|h| format!("{} ({})", h.name, how(h)))
                        .collect(),
                    hs.len(),
                    budget,
                )
            ),
        };
        out.push(EventSpec {
            warning: false,
            reason: "BackupRecovered",
            note: bounded(&note, budget + 64),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::model::PolicyKind;
    use crate::host::observe::TimerState;
    use chrono::TimeZone;
    use fleetsnap_contract::RunRecord;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn record(finished: i64, exit_code: i32) -> RunRecord {
        RunRecord {
            policy: "p".into(),
            kind: PolicyKind::Backup,
            started: at(finished - 5),
            finished: at(finished),
            exit_code,
            snapshot_id: (exit_code == 0).then(|| format!("snap{finished}")),
            files_new: 1,
            files_changed: 0,
            files_unmodified: 0,
            bytes_added: 100,
            duration_seconds: 5.0,
            error: (exit_code != 0).then(|| "repository unreachable".into()),
            credential_expiry: None,
        }
    }

    fn obs(records: Vec<RunRecord>) -> JobObservation {
        JobObservation {
            records,
            unreadable: vec![],
            timer: Some(TimerState {
                next_elapse: Some(5000),
                ..TimerState::default()
            }),
            clock_offset_secs: 0,
        }
    }

    fn ok(host: &str, records: Vec<RunRecord>) -> HostResult {
        HostResult {
            host: host.into(),
            observation: Some(obs(records)),
            failure: None,
        }
    }

    fn unreachable(host: &str) -> HostResult {
        HostResult {
            host: host.into(),
            observation: None,
            failure: Some(Failure {
                reason: reasons::HOST_UNREACHABLE,
                message: "connection refused".into(),
                retry: super::super::error::Retry::Backoff,
            }),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn host_entry_counts_failures_since_last_success() {
        let o = obs(vec![record(100, 0), record(200, 3), record(300, 1)]);
        let e = host_policy_entry("p", &o);
        assert_eq!(e.consecutive_failures, 2);
        assert_eq!(e.snapshot_id.as_deref(), Some("snap100"));
        assert_eq!(e.last_success, Some(unix_time(100)));
        // lastRun is when the newest run started (docs/api.md), lastSuccess when one finished.
        assert_eq!(e.last_run, Some(unix_time(295)));
        assert_eq!(e.error.as_deref(), Some("repository unreachable"));
        assert_eq!(e.next_run, Some(unix_time(5000)));
        assert_eq!(e.bytes_added, Some(100));
        let clean = host_policy_entry("p", &obs(vec![record(100, 0)]));
        assert_eq!((clean.consecutive_failures, clean.error), (0, None));
    }

    #[test]
    fn retention_and_verify_entries_carry_their_kind_and_no_backup_fields() {
        let o = obs(vec![record(100, 0), record(200, 3)]);
        let e = job_entry(CrdKind::VerifyPolicy, "weekly", &o);
        assert_eq!(e.kind, CrdKind::VerifyPolicy);
        assert_eq!(e.name, "weekly");
        assert_eq!(e.last_run, Some(to_time(at(195))));
        assert_eq!(e.last_success, Some(to_time(at(100))));
        assert_eq!(e.error.as_deref(), Some("repository unreachable"));
        assert_eq!(e.consecutive_failures, 1);
        assert_eq!(e.next_run, Some(unix_time(5000)));
        assert_eq!((e.snapshot_id, e.bytes_added), (None, None));
        // Serialized kind is the Kubernetes kind, the list-map key beside the name.
        let v = serde_json::to_value(job_entry(CrdKind::RetentionPolicy, "r", &o)).unwrap();
        assert_eq!(v["kind"], "RetentionPolicy");
    }

    #[test]
    fn an_unreached_host_keeps_its_run_history_and_says_why() {
        let f = Failure {
            reason: "HostUnreachable",
            message: "connection refused".into(),
            retry: super::super::error::Retry::Backoff,
        };
        let before = job_entry(CrdKind::RetentionPolicy, "r", &obs(vec![record(100, 0)]));
        let e = unreached_entry(CrdKind::RetentionPolicy, "r", Some(&before), &f);
        assert_eq!(e.last_success, before.last_success);
        assert_eq!(e.consecutive_failures, 0);
        assert_eq!(
            e.error.as_deref(),
            Some("HostUnreachable: connection refused")
        );
        let fresh = unreached_entry(CrdKind::VerifyPolicy, "v", None, &f);
        assert_eq!(fresh.kind, CrdKind::VerifyPolicy);
        assert_eq!(fresh.last_run, None);
    }

    #[test]
    fn operator_side_entries_count_failures_and_keep_the_last_success() {
        let ok = operator_run_entry(
            "r",
            None,
            at(1000),
            Duration::from_secs(12),
            None,
            Some(at(2000)),
        );
        assert_eq!(ok.kind, CrdKind::RetentionPolicy);
        assert_eq!(ok.last_run, Some(to_time(at(1000))));
        assert_eq!(ok.last_success, Some(to_time(at(1012))));
        assert_eq!(ok.next_run, Some(to_time(at(2000))));
        assert_eq!(ok.duration_seconds, Some(12.0));
        let bad = operator_run_entry(
            "r",
            Some(&ok),
            at(3000),
            Duration::from_secs(1),
            Some("boom"),
            None,
        );
        assert_eq!(bad.last_success, ok.last_success);
        assert_eq!(bad.error.as_deref(), Some("boom"));
        assert_eq!(bad.consecutive_failures, 1);
        let worse = operator_run_entry(
            "r",
            Some(&bad),
            at(4000),
            Duration::from_secs(1),
            Some("boom"),
            None,
        );
        assert_eq!(worse.consecutive_failures, 2);
        let healed = operator_run_entry(
            "r",
            Some(&worse),
            at(5000),
            Duration::from_secs(1),
            None,
            None,
        );
        assert_eq!((healed.consecutive_failures, healed.error), (0, None));
    }

    #[test]
    fn host_states() {
        let now = at(1000);
        let s = |r: &HostResult| host_summary(r, None, now, DAY).state;
        assert_eq!(s(&ok("a", vec![])), HostBackupState::Pending);
        assert_eq!(
            s(&ok("a", vec![record(900, 0)])),
            HostBackupState::Succeeded
        );
        assert_eq!(
            s(&ok("a", vec![record(800, 0), record(900, 3)])),
            HostBackupState::Failing
        );
        assert_eq!(s(&unreachable("a")), HostBackupState::Failing);
        // Old success, nothing since: stale.
        let stale = host_summary(&ok("a", vec![record(10, 0)]), None, at(10 + 86_401), DAY);
        assert_eq!(stale.state, HostBackupState::Stale);
        assert!(stale.message.unwrap().contains("24h"));
        let repo = host_summary(&ok("a", vec![record(900, 12)]), None, now, DAY);
        assert!(repo.message.unwrap().starts_with("RepositoryError"));
    }

    /// Staleness on a host whose clock is 3 h off: the operator's clock decides. A host 3 h
    /// behind records a backup finished a minute ago as 3 h old (Stale at face value with a
    /// 1 h window); a host 3 h ahead records one that finished 2 h ago as an hour in the
    /// future (Succeeded at face value, though nothing ran for two windows).
    #[test]
    fn staleness_is_judged_on_the_operators_clock() {
        let now = 1_000_000;
        let h3 = 3 * 3600;
        let skewed = |finished_on_host: i64, offset: i64| HostResult {
            host: "a".into(),
            observation: Some(JobObservation {
                clock_offset_secs: offset,
                ..obs(vec![record(finished_on_host, 0)])
            }),
            failure: None,
        };
        let hour = Duration::from_secs(3600);
        let state = |r: &HostResult| host_summary(r, None, at(now), hour).state;
        assert_eq!(
            state(&skewed(now - 60 - h3, -h3)),
            HostBackupState::Succeeded
        );
        assert_eq!(state(&skewed(now - 7200 + h3, h3)), HostBackupState::Stale);
        // The same records without the offset: what the operator concluded before it
        // measured host clocks.
        assert_eq!(state(&skewed(now - 60 - h3, 0)), HostBackupState::Stale);
        assert_eq!(
            state(&skewed(now - 7200 + h3, 0)),
            HostBackupState::Succeeded
        );
    }

    #[test]
    fn unreachable_host_keeps_previous_success() {
        let prev = host_summary(&ok("a", vec![record(900, 0)]), None, at(1000), DAY);
        let now = host_summary(&unreachable("a"), Some(&prev), at(2000), DAY);
        assert_eq!(now.state, HostBackupState::Failing);
        assert_eq!(now.last_success, Some(unix_time(900)));
        assert_eq!(now.snapshot_id.as_deref(), Some("snap900"));
        assert!(now.message.unwrap().starts_with("HostUnreachable"));
    }

    fn summaries(results: &[HostResult]) -> Vec<PolicyHostSummary> {
        results
            .iter()
            .map(|r| host_summary(r, None, at(1000), DAY))
            .collect()
    }

    #[test]
    fn policy_counts_and_times() {
        let rs = [
            ok("c", vec![record(700, 0)]),
            ok("a", vec![record(900, 0)]),
            unreachable("b"),
        ];
        let failures: Vec<&Failure> = rs.iter().filter_map(|r| r.failure.as_ref()).collect();
        let st = policy_status(summaries(&rs), None, &failures, None, Some(4), at(1000));
        assert_eq!(
            (
                st.hosts_total,
                st.hosts_succeeded,
                st.hosts_failing,
                st.hosts_stale
            ),
            (3, 2, 1, 0)
        );
        assert_eq!(st.hosts_pending, 0);
        // Only hosts that are not Succeeded are listed, and no per-host list any more.
        assert_eq!(
            st.worst_hosts
                .iter()
                .map(|h| (h.name.as_str(), h.state))
                .collect::<Vec<_>>(),
            vec![("b", HostBackupState::Failing)]
        );
        assert!(st.hosts.is_empty());
        // b never succeeded: no "oldest last success" yet.
        assert_eq!(st.oldest_last_success, None);
        assert_eq!(st.last_snapshot_time, Some(unix_time(900)));
        let ready = fleetsnap_crds::common::find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, reasons::HOSTS_FAILING);
        assert!(
            ready.message.contains("b (HostUnreachable"),
            "{}",
            ready.message
        );
        let stalled = fleetsnap_crds::common::find_condition(&st.conditions, "Stalled").unwrap();
        assert_eq!(
            stalled.status,
            ConditionStatus::False,
            "unreachable is transient"
        );
        assert_eq!(st.observed_generation, Some(4));

        let all_ok = [ok("a", vec![record(900, 0)]), ok("c", vec![record(700, 0)])];
        let st = policy_status(summaries(&all_ok), None, &[], None, Some(4), at(1000));
        assert_eq!(st.oldest_last_success, Some(unix_time(700)));
        let ready = fleetsnap_crds::common::find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, "Succeeded")
        );
    }

    #[test]
    fn policy_conditions_for_problems_pending_and_empty() {
        let problem = PolicyProblem {
            reason: reasons::REFERENCE_NOT_FOUND,
            message: "BackupRepository \"r\" does not exist".into(),
        };
        let st = policy_status(vec![], Some(&problem), &[], None, Some(1), at(1));
        let find = |t: &str| {
            fleetsnap_crds::common::find_condition(&st.conditions, t)
                .unwrap()
                .clone()
        };
        assert_eq!(find("Ready").reason, reasons::REFERENCE_NOT_FOUND);
        assert_eq!(find("Stalled").status, ConditionStatus::True);

        let st = policy_status(vec![], None, &[], None, Some(1), at(1));
        let ready = fleetsnap_crds::common::find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, reasons::NO_HOSTS_SELECTED);

        let st = policy_status(
            summaries(&[ok("a", vec![])]),
            None,
            &[],
            None,
            Some(1),
            at(1),
        );
        let find = |t: &str| {
            fleetsnap_crds::common::find_condition(&st.conditions, t)
                .unwrap()
                .clone()
        };
        assert_eq!(find("Ready").reason, reasons::PROGRESSING);
        assert_eq!(find("Reconciling").status, ConditionStatus::True);

        let key = Failure {
            reason: reasons::HOST_KEY_MISMATCH,
            message: "pinned key differs".into(),
            retry: super::super::error::Retry::Slow(Duration::from_secs(900)),
        };
        let st = policy_status(vec![], None, &[&key], None, Some(1), at(1));
        let stalled = fleetsnap_crds::common::find_condition(&st.conditions, "Stalled").unwrap();
        assert_eq!(
            (stalled.status, stalled.reason.as_str()),
            (ConditionStatus::True, "HostKeyMismatch")
        );
    }

    #[test]
    fn unchanged_inputs_give_an_identical_status() {
        let rs = [ok("a", vec![record(900, 0)])];
        let first = policy_status(summaries(&rs), None, &[], None, Some(1), at(1000));
        let second = policy_status(summaries(&rs), None, &[], Some(&first), Some(1), at(2000));
        assert_eq!(first, second, "a resync must not cause a status write");
    }

    #[test]
    fn events_only_on_transitions() {
        let good = summaries(&[ok("a", vec![record(900, 0)])]);
        let bad = summaries(&[unreachable("a")]);
        let evs = transitions(&good, &bad);
        assert_eq!(evs.len(), 1);
        assert!(evs[0].warning);
        assert_eq!(evs[0].reason, "BackupFailing");
        assert!(evs[0].note.contains("host a"));
        assert!(
            transitions(&bad, &bad).is_empty(),
            "still failing: no new event"
        );
        let evs = transitions(&bad, &good);
        assert_eq!((evs[0].warning, evs[0].reason), (false, "BackupRecovered"));
        assert!(transitions(&good, &good).is_empty());
        // A host seen for the first time and already failing is worth a warning too.
        assert_eq!(transitions(&[], &bad).len(), 1);
        let pending = summaries(&[ok("a", vec![])]);
        assert!(
            transitions(&pending, &good).is_empty(),
            "first success is not a recovery"
        );
        let evs = transitions(&bad, &pending);
        assert_eq!(
            evs[0].reason, "BackupRecovered",
            "a re-provisioned host recovered"
        );
        assert!(evs[0].note.contains("configured again"));
    }

    /// A host's run record with megabytes of error text (a compromised host can write any
    /// record) must not reach status, Events or conditions unbounded.
    #[test]
    fn status_error_text_is_bounded_per_host() {
        let huge = format!("{}é", "x".repeat(4 << 20));
        let mut bad = record(300, 1);
        bad.error = Some(huge.clone());
        let limit = 1024 + '…'.len_utf8();
        let e = job_entry(
            CrdKind::BackupPolicy,
            "p",
            &obs(vec![record(100, 0), bad.clone()]),
        );
        let err = e.error.unwrap();
        assert!(err.len() <= limit, "entry error is {} bytes", err.len());
        assert!(err.ends_with('…'));
        let rs: Vec<HostResult> = (0..200)
            .map(|i| ok(&format!("h{i:03}"), vec![record(100, 0), bad.clone()]))
            .chain([ok("zz-good", vec![record(900, 0)])])
            .collect();
        let hosts = summaries(&rs);
        for h in &hosts {
            let m = h.message.as_deref().unwrap_or("");
            assert!(m.len() <= limit, "{}: message is {} bytes", h.name, m.len());
        }
        let good = hosts.iter().find(|h| h.name == "zz-good").unwrap();
        assert_eq!(good.state, HostBackupState::Succeeded);
        let evs = transitions(&[], &hosts);
        assert!(
            evs.iter().all(|e| e.note.len() <= 1024 + 64),
            "event notes bounded"
        );
        let st = policy_status(hosts, None, &[], None, Some(1), at(1000));
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(
            ready.message.len() <= 8 << 10,
            "Ready message is {} bytes",
            ready.message.len()
        );
        assert!(
            ready.message.contains("200 of 201"),
            "{}",
            &ready.message[..200]
        );
        assert_eq!(st.hosts_failing, 200);
        assert_eq!(st.hosts_succeeded, 1);
    }

    /// A fleet in trouble: 1,000 and 5,000 hosts failing with realistic error text (~200
    /// bytes each). The policy's status must stay small and must not grow with the fleet,
    /// or the status write fails at etcd's 1.5 MiB object limit exactly when it matters.
    #[test]
    fn policy_status_stays_bounded_with_thousands_of_failing_hosts() {
        let failing = |n: usize| -> Vec<HostResult> {
            (0..n)
                .map(|i| HostResult {
                    host: format!("db-{i:05}.prod.eu-west-1.example.com"),
                    observation: None,
                    failure: Some(Failure {
                        reason: reasons::HOST_UNREACHABLE,
                        message: format!(
                            "ssh: connect to host 10.{}.{}.{} port 22: Connection timed out \
                             after 30s (ControlMaster /run/fleetsnap/ssh/cm-{i:05}); the host \
                             is down, firewalled, or its sshd does not answer",
                            i / 65536,
                            (i / 256) % 256,
                            i % 256
                        ),
                        retry: super::super::error::Retry::Backoff,
                    }),
                })
                .collect()
        };
        let mut sizes = Vec::new();
        for n in [1_000, 5_000] {
            let rs = failing(n);
            assert!(
                rs.iter().all(|r| {
                    let t = failure_text(r.failure.as_ref().unwrap());
                    (180..=260).contains(&t.len())
                }),
                "error text is about 200 bytes"
            );
            let failures: Vec<&Failure> = rs.iter().filter_map(|r| r.failure.as_ref()).collect();
            let st = policy_status(summaries(&rs), None, &failures, None, Some(1), at(1000));
            assert_eq!(st.hosts_failing, n as i32);
            assert_eq!(st.hosts_total, n as i32);
            let bytes = serde_json::to_vec(&st).unwrap().len();
            println!("BackupPolicy.status for {n} failing hosts: {bytes} bytes");
            sizes.push(bytes);
        }
        for (n, bytes) in [1_000, 5_000].iter().zip(&sizes) {
            assert!(
                *bytes <= 16 << 10,
                "status for {n} failing hosts is {bytes} bytes, over 16 KiB"
            );
        }
        assert!(
            sizes[1].abs_diff(sizes[0]) <= 64,
            "status grows with the fleet: {sizes:?}"
        );
    }

    fn summary(name: &str, state: HostBackupState, last: Option<i64>) -> PolicyHostSummary {
        PolicyHostSummary {
            name: name.into(),
            state,
            last_success: last.map(unix_time),
            snapshot_id: None,
            message: (state != HostBackupState::Succeeded)
                .then(|| format!("{name}: {}", "e".repeat(600))),
        }
    }

    /// Failing first, then stale, then pending; within a state the oldest success first
    /// (never succeeded is oldest), then the name; at most ten, errors cut.
    #[test]
    fn worst_hosts_are_bounded_and_deterministic() {
        use HostBackupState::*;
        let mut hosts = vec![
            summary("ok", Succeeded, Some(900)),
            summary("pending", Pending, None),
            summary("stale-new", Stale, Some(500)),
            summary("stale-old", Stale, Some(100)),
            summary("fail-b", Failing, Some(300)),
            summary("fail-a", Failing, Some(300)),
            summary("fail-never", Failing, None),
            summary("fail-old", Failing, Some(10)),
        ];
        let names = |w: &[WorstHost]| w.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        let w = worst_hosts(&hosts);
        assert_eq!(
            names(&w),
            [
                "fail-never",
                "fail-old",
                "fail-a",
                "fail-b",
                "stale-old",
                "stale-new",
                "pending"
            ]
        );
        assert!(
            w.iter()
                .all(|h| h.error.as_ref().unwrap().len() <= MAX_WORST_HOST_ERROR + 3)
        );
        assert_eq!(w[1].last_success, Some(unix_time(10)));
        // Input order does not matter.
        hosts.reverse();
        assert_eq!(names(&worst_hosts(&hosts)), names(&w));
        // Never more than ten.
        let many: Vec<PolicyHostSummary> = (0..50)
            .map(|i| summary(&format!("h{i:02}"), Failing, Some(1000 - i)))
            .collect();
        let w = worst_hosts(&many);
        assert_eq!(w.len(), MAX_WORST_HOSTS);
        assert_eq!(w[0].name, "h49", "oldest success first");
    }

    #[test]
    fn ready_names_five_hosts_and_counts_the_rest() {
        let hosts: Vec<PolicyHostSummary> = (0..40)
            .map(|i| summary(&format!("h{i:02}"), HostBackupState::Failing, Some(100 + i)))
            .collect();
        let st = policy_status(hosts, None, &[], None, Some(1), at(1000));
        let ready = fleetsnap_crds::common::find_condition(&st.conditions, "Ready").unwrap();
        assert!(
            ready.message.starts_with("40 of 40 host(s) failing: h00 ("),
            "{}",
            ready.message
        );
        assert!(
            ready.message.ends_with("; and 35 more"),
            "{}",
            ready.message
        );
        assert_eq!(ready.message.matches("(h").count(), 5, "{}", ready.message);
        assert_eq!(st.worst_hosts.len(), 10);
    }

    #[test]
    fn events_aggregate_per_kind_of_change() {
        let before: Vec<PolicyHostSummary> = (0..300)
            .map(|i| summary(&format!("h{i:03}"), HostBackupState::Succeeded, Some(900)))
            .collect();
        let mut after: Vec<PolicyHostSummary> = (0..300)
            .map(|i| summary(&format!("h{i:03}"), HostBackupState::Failing, Some(900)))
            .collect();
        after[0].state = HostBackupState::Stale;
        let evs = transitions(&before, &after);
        assert_eq!(evs.len(), 2, "one Event per kind of change, not per host");
        assert_eq!(evs[0].reason, "BackupFailing");
        assert!(
            evs[0].note.starts_with("299 hosts started failing: h001 ("),
            "{}",
            evs[0].note
        );
        assert!(evs[0].note.ends_with("and 294 more"), "{}", evs[0].note);
        assert!(evs[0].note.len() <= MAX_ERROR_TEXT + 64);
        assert_eq!(evs[1].reason, "BackupStale");
        assert!(evs[1].note.starts_with("host h000: "), "{}", evs[1].note);
        let back = transitions(&after, &before);
        assert_eq!(back.len(), 1);
        assert!(
            back[0].note.starts_with("300 hosts recovered: "),
            "{}",
            back[0].note
        );
        assert!(back[0].note.len() <= MAX_ERROR_TEXT + 64);
    }
}
