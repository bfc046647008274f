//! Pieces shared by several kinds: references, schedules, keep rules, conditions.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types the operator sets. `Ready` is present on every kind so that
/// `kubectl wait --for=condition=Ready` works uniformly.
pub mod condition_types {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

/// Reasons shared across kinds. They are part of the API: alerts and Argo CD
/// health checks match on them, so renaming one is a breaking change.
pub mod reasons {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PROGRESSING: &str = "Progressing";
    pub const HOST_UNREACHABLE: &str = "HostUnreachable";
    pub const AUTH_FAILED: &str = "AuthenticationFailed";
    pub const HOST_KEY_MISMATCH: &str = "HostKeyMismatch";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
    pub const REPOSITORY_ERROR: &str = "RepositoryError";
    pub const HOSTS_FAILING: &str = "HostsFailing";
    pub const HOSTS_STALE: &str = "HostsStale";
    pub const NO_HOSTS_SELECTED: &str = "NoHostsSelected";
    pub const SUSPENDED: &str = "Suspended";
    /// An older Host has the same hostname or resolves to the same repository path; this
    /// one is refused and nothing is applied to it.
    pub const DUPLICATE_HOST: &str = "DuplicateHost";
    /// The host cannot run the executor or its units (architecture, C library, no or too
    /// old systemd); nothing is installed on it.
    pub const UNSUPPORTED_HOST: &str = "UnsupportedHost";
    /// Snapshots whose claimed time the storage's write time contradicts (forged or from a
    /// badly wrong clock): retention kept them without counting them.
    pub const SUSPICIOUS_SNAPSHOTS: &str = "SuspiciousSnapshots";
    /// A Restore of one host's backups onto another that cannot be given a read-only
    /// credential for the source's repository, or whose minting failed.
    pub const CROSS_HOST_CREDENTIALS: &str = "CrossHostCredentials";
    /// `appendOnly` is set but the storage does not enforce it: an S3 bucket with neither
    /// versioning nor Object Lock (or whose configuration the maintenance identity cannot
    /// read), where a host can overwrite and so destroy existing repository files.
    pub const APPEND_ONLY_NOT_ENFORCED: &str = "AppendOnlyNotEnforced";
    /// A repository file's current content differs from the content first stored under its
    /// name (a versioned bucket keeps the original as an older version): a host overwrote it.
    pub const TAMPERED: &str = "Tampered";
}

/// Three-valued status of a condition, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// One observation about the object, in the shape of the standard Kubernetes
/// `metav1.Condition`, so generic tooling (kubectl wait, Argo CD, kstatus) understands it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition in CamelCase: `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition, e.g. `HostUnreachable`.
    pub reason: String,
    /// Human-readable explanation; says what to fix when the condition is unhealthy.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (not when the condition was last checked).
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The longest condition message [`Condition::new`] keeps, in bytes: a condition is read by
/// people (`kubectl describe`), and its message may quote hosts' errors, so it is cut (on a
/// character boundary, ending in `…`) rather than allowed to grow with the fleet.
pub const MAX_CONDITION_MESSAGE: usize = 4096;

impl Condition {
    /// A condition; `message` is cut to [`MAX_CONDITION_MESSAGE`] bytes.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
        now: Time,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: cut_message(message.into()),
            last_transition_time: now,
            observed_generation,
        }
    }
}

fn cut_message(mut m: String) -> String {
    if m.len() <= MAX_CONDITION_MESSAGE {
        return m;
    }
    let mut end = MAX_CONDITION_MESSAGE - '…'.len_utf8();
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    m.truncate(end);
    m.push('…');
    m
}

/// Inserts or replaces the condition of the same type.
///
/// `lastTransitionTime` is carried over unless the status flips: consumers use it to
/// answer "since when has this been failing", which a refresh must not reset.
/// Returns whether anything observable changed, so callers can skip no-op status patches.
pub fn upsert_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == new {
                false
            } else {
                *existing = new;
                true
            }
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Looks up a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Points at one key of a Secret in the object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Points at a whole Secret in the object's own namespace; the keys read from it
/// are documented on the field that uses it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Points at another fleetsnap object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the referenced object, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// CEL check of a label selector's expressions. The API server validates selectors inside
/// built-in objects but not inside custom resources, and a mistyped operator would otherwise
/// surface only as a policy that silently selects nothing.
pub(crate) const SELECTOR_RULE: &str = "!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'] && ((e.operator == 'In' || e.operator == 'NotIn') == (has(e.values) && size(e.values) > 0)))";
pub(crate) const SELECTOR_MESSAGE: &str = "matchExpressions operators must be In or NotIn with a non-empty values list, or Exists or DoesNotExist without values";

/// CEL regular expression for a plausible systemd OnCalendar expression. It cannot prove the
/// expression is valid (only `systemd-analyze calendar` can, and the operator runs
/// `systemd-analyze verify` on the host), but it rejects cron syntax, free text and anything that
/// could smuggle a newline into a unit file.
pub const ON_CALENDAR_CEL: &str = r"self.matches('^(minutely|hourly|daily|weekly|monthly|quarterly|semiannually|yearly|annually|((Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*((,|[.][.])(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*)*)|(((Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*((,|[.][.])(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*)* )?([0-9*,./~]+-[0-9*,./~-]+|[0-9*,./]+:[0-9*,./]+(:[0-9*,./]+)?|[0-9*,./~]+-[0-9*,./~-]+ [0-9*,./]+:[0-9*,./]+(:[0-9*,./]+)?)( [A-Za-z][A-Za-z0-9_+/-]*)?))$')";

/// When a job runs: rendered onto the host as a systemd timer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// systemd calendar expression for the timer's `OnCalendar=`, e.g. `*-*-* 02:00:00`,
    /// `Sun *-*-* 04:30:00` or `daily`. Cron syntax is not accepted; check an expression with
    /// `systemd-analyze calendar '<expr>'`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = kube::core::Rule::new(ON_CALENDAR_CEL).message(
        "onCalendar must be a systemd calendar expression such as '*-*-* 02:00:00', 'Sun *-*-* 04:30:00' or 'daily' (cron syntax is not supported)"
    ))]
    pub on_calendar: String,
    /// Random delay added to each run so a fleet does not start all at once
    /// (`RandomizedDelaySec=`). A duration such as `45m` or `1h30m`; between 0 and 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('0s') && duration(self) <= duration('24h')"
    ).message("randomizedDelay must be a duration like '45m' or '1h30m', at most 24h"))]
    pub randomized_delay: Option<String>,
    /// Run a missed job at the next boot when the host was off at the scheduled time (`Persistent=`).
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// Longest one run may take (the service's `TimeoutStartSec=`, the limit that applies to
    /// a oneshot unit), e.g. `6h` or `90m`, between 1m and 168h; when it is up,
    /// systemd stops the run (SIGTERM, then SIGKILL) and the service fails. The last line
    /// of defence against a run that hangs (a frozen storage endpoint, a stuck dump command):
    /// a job's next run cannot start while one still runs. Defaults to 12h, which fits a
    /// first full backup of about 1 TB at 25 MB/s and ends a hung daily run before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^([0-9]+(h|m|s))+$') && duration(self) >= duration('1m') && duration(self) <= duration('168h')"
    ).message("maxRuntime must be a duration like '6h' or '90m', between 1m and 168h"))]
    pub max_runtime: Option<String>,
    /// How long a run waits for the host's other fleetsnap jobs and for a conflicting
    /// repository lock (a running check or prune locks exclusively; restic's
    /// `--retry-lock`) before it fails, e.g. `30m`; `0s` fails at once and lets the host's
    /// jobs overlap. Defaults to 1h, and is never more than half of `maxRuntime`, so a run
    /// that waited has time left to do its work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^([0-9]+(h|m|s))+$') && duration(self) <= duration('24h')"
    ).message("lockWait must be a duration like '30m' or '0s', at most 24h"))]
    pub lock_wait: Option<String>,
}

/// How long a run waits for a lock when its schedule says nothing (see [`Schedule::lock_wait`]).
pub const DEFAULT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);
const MAX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How long a run may take when its schedule says nothing (see [`Schedule::max_runtime`]).
pub const DEFAULT_MAX_RUNTIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
const MIN_MAX_RUNTIME: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_MAX_RUNTIME: std::time::Duration = std::time::Duration::from_secs(168 * 3600);

pub(crate) fn default_true() -> bool {
    true
}

/// Why a schedule cannot be rendered into a timer unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    EmptyOnCalendar,
    /// Control characters would split a unit file line and inject directives.
    ControlCharacter,
    /// Five or six whitespace-separated fields of digits and `*` is cron, which systemd reads
    /// differently (or not at all).
    LooksLikeCron(String),
    BadDuration(String),
    DelayOutOfRange(String),
    MaxRuntimeOutOfRange(String),
    LockWaitOutOfRange(String),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::EmptyOnCalendar => f.write_str("onCalendar is empty"),
            ScheduleError::ControlCharacter => f.write_str("schedule contains a control character"),
            ScheduleError::LooksLikeCron(s) => write!(
                f,
                "onCalendar {s:?} looks like cron syntax; use a systemd calendar expression such as '*-*-* 02:00:00'"
            ),
            ScheduleError::BadDuration(s) => {
                write!(f, "{s:?} is not a duration such as '45m' or '1h30m'")
            }
            ScheduleError::DelayOutOfRange(s) => {
                write!(f, "randomizedDelay {s:?} must be between 0 and 24h")
            }
            ScheduleError::MaxRuntimeOutOfRange(s) => {
                write!(f, "maxRuntime {s:?} must be between 1m and 168h")
            }
            ScheduleError::LockWaitOutOfRange(s) => {
                write!(f, "lockWait {s:?} must be at most 24h")
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

/// Parses a Go-style duration (`45m`, `1h30m`, `90s`) as used by Kubernetes APIs.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ScheduleError> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|_| ScheduleError::BadDuration(s.to_string()))?;
    if d.is_negative() {
        return Err(ScheduleError::BadDuration(s.to_string()));
    }
    Ok(d.into())
}

fn check_on_calendar(expr: &str) -> Result<(), ScheduleError> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(ScheduleError::EmptyOnCalendar);
    }
    if expr.chars().any(char::is_control) {
        return Err(ScheduleError::ControlCharacter);
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    let cronish = |f: &&str| f.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c));
    if (5..=6).contains(&fields.len()) && fields.iter().all(cronish) {
        return Err(ScheduleError::LooksLikeCron(expr.to_string()));
    }
    Ok(())
}

impl Schedule {
    /// The `[Timer]` directives for this schedule, in a stable order so that rendering the
    /// same schedule twice yields byte-identical unit files (the operator compares hashes).
    ///
    /// This re-checks what admission already checked: objects created before a rule
    /// existed, or written with validation bypassed, must still never reach a unit file.
    pub fn timer_directives(&self) -> Result<Vec<(&'static str, String)>, ScheduleError> {
        check_on_calendar(&self.on_calendar)?;
        let mut out = vec![("OnCalendar", self.on_calendar.trim().to_string())];
        if let Some(delay) = &self.randomized_delay {
            let d = parse_duration(delay)?;
            if d > std::time::Duration::from_secs(24 * 3600) {
                return Err(ScheduleError::DelayOutOfRange(delay.clone()));
            }
            // systemd accepts fractional seconds, but whole seconds keep the unit readable
            // and sub-second spread is meaningless for fleet scheduling.
            out.push(("RandomizedDelaySec", d.as_secs().to_string()));
        }
        out.push((
            "Persistent",
            if self.persistent { "true" } else { "false" }.to_string(),
        ));
        Ok(out)
    }

    /// How long one run may take: `maxRuntime`, or [`DEFAULT_MAX_RUNTIME`]. Re-checks the
    /// range admission enforces, since the value ends up in a unit file.
    pub fn max_runtime(&self) -> Result<std::time::Duration, ScheduleError> {
        let Some(text) = &self.max_runtime else {
            return Ok(DEFAULT_MAX_RUNTIME);
        };
        let d = parse_duration(text)?;
        if !(MIN_MAX_RUNTIME..=MAX_MAX_RUNTIME).contains(&d) {
            return Err(ScheduleError::MaxRuntimeOutOfRange(text.clone()));
        }
        Ok(d)
    }

    /// How long a run waits for a lock: `lockWait`, or [`DEFAULT_LOCK_WAIT`], at most half
    /// of [`Schedule::max_runtime`] (systemd would stop a run that waited longer before it
    /// could finish).
    pub fn lock_wait(&self) -> Result<std::time::Duration, ScheduleError> {
        let wait = match &self.lock_wait {
            None => DEFAULT_LOCK_WAIT,
            Some(text) => {
                let d = parse_duration(text)?;
                if d > MAX_LOCK_WAIT {
                    return Err(ScheduleError::LockWaitOutOfRange(text.clone()));
                }
                d
            }
        };
        Ok(wait.min(self.max_runtime()? / 2))
    }

    /// The upper bound of the random spread, zero when none is configured.
    pub fn randomized_delay(&self) -> Result<std::time::Duration, ScheduleError> {
        match &self.randomized_delay {
            Some(d) => parse_duration(d),
            None => Ok(std::time::Duration::ZERO),
        }
    }
}

/// Which snapshots to keep; everything else is forgotten. Counts are per time bucket, as in
/// `restic forget`: `daily: 7` keeps the newest snapshot of each of the last 7 days that have one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.last) || has(self.hourly) || has(self.daily) || has(self.weekly) || has(self.monthly) || has(self.yearly) || has(self.within) || (has(self.tags) && size(self.tags) > 0)"
).message("keep needs at least one rule (last, hourly, daily, weekly, monthly, yearly, within or tags); an empty rule set would forget every snapshot"))]
pub struct KeepRules {
    /// Keep the newest N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub last: Option<i32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub hourly: Option<i32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub daily: Option<i32>,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub weekly: Option<i32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub monthly: Option<i32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub yearly: Option<i32>,
    /// Keep every snapshot newer than this, relative to the newest snapshot, written as
    /// restic does: a sequence of number+unit with units y, m (months), d, h, e.g. `1y6m` or `14d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+[ymdh])+$')")
        .message("within must look like '14d', '6m' or '1y6m' (units y, m, d, h)"))]
    pub within: Option<String>,
    /// Keep every snapshot carrying any of these tags, regardless of the other rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(t, t.matches('^[A-Za-z0-9._:=@+-]{1,128}$'))")
        .message("keep tags may only contain letters, digits and . _ : = @ + - (commas separate tags in restic)"))]
    pub tags: Vec<String>,
}

impl KeepRules {
    /// The executor's `forget` arguments for these rules, in a fixed order so the rendered
    /// config is stable across reconciles.
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let counts = [
            ("--keep-last", self.last),
            ("--keep-hourly", self.hourly),
            ("--keep-daily", self.daily),
            ("--keep-weekly", self.weekly),
            ("--keep-monthly", self.monthly),
            ("--keep-yearly", self.yearly),
        ];
        for (flag, n) in counts {
            if let Some(n) = n {
                args.push(flag.to_string());
                args.push(n.to_string());
            }
        }
        if let Some(within) = &self.within {
            args.push("--keep-within".to_string());
            args.push(within.clone());
        }
        for tag in &self.tags {
            args.push("--keep-tag".to_string());
            args.push(tag.clone());
        }
        args
    }

    /// True when the rules would keep nothing, which is never what a policy means.
    pub fn keeps_nothing(&self) -> bool {
        let any_count = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(|n| n.is_some_and(|n| n > 0));
        !any_count && self.within.is_none() && self.tags.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: ConditionStatus, reason: &str, at: i64) -> Condition {
        Condition::new(
            condition_types::READY,
            status,
            reason,
            "msg",
            Some(1),
            t(at),
        )
    }

    #[test]
    fn upsert_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![ready(
            ConditionStatus::False,
            reasons::HOST_UNREACHABLE,
            100,
        )];
        let changed = upsert_condition(
            &mut conds,
            ready(ConditionStatus::False, reasons::HOST_UNREACHABLE, 200),
        );
        assert!(!changed, "a refresh with identical content is not a change");
        assert_eq!(conds[0].last_transition_time, t(100));

        let changed = upsert_condition(
            &mut conds,
            ready(ConditionStatus::False, reasons::AUTH_FAILED, 300),
        );
        assert!(changed, "a new reason is a change");
        assert_eq!(conds[0].reason, reasons::AUTH_FAILED);
        assert_eq!(conds[0].last_transition_time, t(100));
    }

    #[test]
    fn upsert_bumps_transition_time_on_status_flip() {
        let mut conds = vec![ready(
            ConditionStatus::False,
            reasons::HOST_UNREACHABLE,
            100,
        )];
        assert!(upsert_condition(
            &mut conds,
            ready(ConditionStatus::True, reasons::SUCCEEDED, 200)
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, ConditionStatus::True);
        assert_eq!(conds[0].last_transition_time, t(200));
    }

    #[test]
    fn upsert_appends_new_types_and_leaves_others_alone() {
        let mut conds = vec![ready(ConditionStatus::True, reasons::SUCCEEDED, 100)];
        let stalled = Condition::new(
            condition_types::STALLED,
            ConditionStatus::True,
            reasons::SECRET_NOT_FOUND,
            "secret x missing",
            Some(2),
            t(150),
        );
        assert!(upsert_condition(&mut conds, stalled));
        assert_eq!(conds.len(), 2);
        assert_eq!(
            find_condition(&conds, condition_types::READY)
                .unwrap()
                .last_transition_time,
            t(100)
        );
        assert_eq!(
            find_condition(&conds, condition_types::STALLED)
                .unwrap()
                .reason,
            reasons::SECRET_NOT_FOUND
        );
    }

    #[test]
    fn condition_serializes_in_metav1_shape() {
        let v = serde_json::to_value(ready(ConditionStatus::Unknown, "Progressing", 0)).unwrap();
        assert_eq!(v["type"], "Ready");
        assert_eq!(v["status"], "Unknown");
        assert_eq!(v["lastTransitionTime"], "1970-01-01T00:00:00Z");
        assert_eq!(v["observedGeneration"], 1);
    }

    fn sched(cal: &str, delay: Option<&str>, persistent: bool) -> Schedule {
        Schedule {
            on_calendar: cal.into(),
            randomized_delay: delay.map(Into::into),
            persistent,
            max_runtime: None,
            lock_wait: None,
        }
    }

    #[test]
    fn max_runtime_defaults_and_range() {
        let mut s = sched("daily", None, true);
        assert_eq!(s.max_runtime(), Ok(DEFAULT_MAX_RUNTIME));
        s.max_runtime = Some("1h30m".into());
        assert_eq!(s.max_runtime(), Ok(std::time::Duration::from_secs(5400)));
        for bad in ["30s", "169h"] {
            s.max_runtime = Some(bad.into());
            assert_eq!(
                s.max_runtime(),
                Err(ScheduleError::MaxRuntimeOutOfRange(bad.into())),
                "{bad}"
            );
        }
        s.max_runtime = Some("forever".into());
        assert!(matches!(
            s.max_runtime(),
            Err(ScheduleError::BadDuration(_))
        ));
    }

    #[test]
    fn lock_wait_defaults_and_stays_within_half_the_runtime() {
        let secs = std::time::Duration::from_secs;
        let mut s = sched("daily", None, true);
        assert_eq!(s.lock_wait(), Ok(DEFAULT_LOCK_WAIT));
        s.lock_wait = Some("0s".into());
        assert_eq!(s.lock_wait(), Ok(secs(0)));
        s.lock_wait = Some("20m".into());
        assert_eq!(s.lock_wait(), Ok(secs(1200)));
        // A wait that would leave the run no time is cut to half of maxRuntime.
        s.max_runtime = Some("30m".into());
        assert_eq!(s.lock_wait(), Ok(secs(900)));
        s.lock_wait = None;
        assert_eq!(s.lock_wait(), Ok(secs(900)));
        s.lock_wait = Some("25h".into());
        assert_eq!(
            s.lock_wait(),
            Err(ScheduleError::LockWaitOutOfRange("25h".into()))
        );
    }

    #[test]
    fn renders_runbook_nightly_schedule() {
        let d = sched("*-*-* 02:00:00", Some("45m"), true)
            .timer_directives()
            .unwrap();
        assert_eq!(
            d,
            vec![
                ("OnCalendar", "*-*-* 02:00:00".to_string()),
                ("RandomizedDelaySec", "2700".to_string()),
                ("Persistent", "true".to_string()),
            ]
        );
    }

    #[test]
    fn renders_without_delay() {
        let d = sched("Sun *-*-* 04:30:00", None, false)
            .timer_directives()
            .unwrap();
        assert_eq!(
            d,
            vec![
                ("OnCalendar", "Sun *-*-* 04:30:00".to_string()),
                ("Persistent", "false".to_string()),
            ]
        );
    }

    #[test]
    fn rejects_unrenderable_schedules() {
        assert_eq!(
            sched("  ", None, true).timer_directives(),
            Err(ScheduleError::EmptyOnCalendar)
        );
        assert_eq!(
            sched("daily\nExecStart=/bin/sh", None, true).timer_directives(),
            Err(ScheduleError::ControlCharacter)
        );
        assert!(matches!(
            sched("0 2 * * *", None, true).timer_directives(),
            Err(ScheduleError::LooksLikeCron(_))
        ));
        assert!(matches!(
            sched("daily", Some("soon"), true).timer_directives(),
            Err(ScheduleError::BadDuration(_))
        ));
        assert!(matches!(
            sched("daily", Some("-5m"), true).timer_directives(),
            Err(ScheduleError::BadDuration(_))
        ));
        assert!(matches!(
            sched("daily", Some("25h"), true).timer_directives(),
            Err(ScheduleError::DelayOutOfRange(_))
        ));
    }

    #[test]
    fn keep_rules_render_in_fixed_order() {
        let k = KeepRules {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(6),
            ..Default::default()
        };
        assert_eq!(
            k.to_cli_args().join(" "),
            "--keep-daily 7 --keep-weekly 4 --keep-monthly 6"
        );
        let k = KeepRules {
            last: Some(3),
            yearly: Some(0),
            within: Some("14d".into()),
            tags: vec!["pinned".into(), "legal-hold".into()],
            ..Default::default()
        };
        assert_eq!(
            k.to_cli_args().join(" "),
            "--keep-last 3 --keep-yearly 0 --keep-within 14d --keep-tag pinned --keep-tag legal-hold"
        );
    }

    #[test]
    fn keeps_nothing_detects_empty_and_all_zero_rules() {
        assert!(KeepRules::default().keeps_nothing());
        assert!(
            KeepRules {
                daily: Some(0),
                ..Default::default()
            }
            .keeps_nothing()
        );
        assert!(
            !KeepRules {
                within: Some("1d".into()),
                ..Default::default()
            }
            .keeps_nothing()
        );
    }
}

/// The admission regex for `onCalendar` is checked here with the `regex` crate, whose syntax
/// matches the RE2 dialect CEL uses, and against `systemd-analyze calendar` where available:
/// anything admission accepts must be something systemd accepts.
#[cfg(test)]
mod on_calendar_regex {
    use super::ON_CALENDAR_CEL;

    fn admission_regex() -> regex::Regex {
        let start = ON_CALENDAR_CEL.find("matches('").unwrap() + "matches('".len();
        let end = ON_CALENDAR_CEL.rfind("')").unwrap();
        regex::Regex::new(&ON_CALENDAR_CEL[start..end]).unwrap()
    }

    const ACCEPTED: &[&str] = &[
        "daily",
        "weekly",
        "minutely",
        "Sat",
        "Mon..Fri 22:00",
        "Mon,Wed,Fri *-*-* 03:15:00",
        "Sun *-*-* 04:30:00",
        "*-*-* 02:00:00",
        "*:0/15",
        "*-*-01 03:00:00",
        "*-*-* 00/6:00:00",
        "2026-12-24 18:00:00 UTC",
        "*-*-* 02:00:00 Europe/Berlin",
        "*-02~1",
    ];

    const REJECTED: &[&str] = &[
        "",
        "0 2 * * *",
        "@daily",
        "every night",
        "daily\nExecStart=/bin/sh",
        "*-*-* 02:00:00\n",
        "nightly",
        "Sun  04:30",
        "02:00; rm -rf /",
    ];

    #[test]
    fn accepts_common_expressions() {
        let re = admission_regex();
        for e in ACCEPTED {
            assert!(re.is_match(e), "{e:?} should pass admission");
        }
    }

    #[test]
    fn rejects_nonsense() {
        let re = admission_regex();
        for e in REJECTED {
            assert!(!re.is_match(e), "{e:?} should be refused at admission");
        }
    }

    #[test]
    fn systemd_agrees_with_everything_admission_accepts() {
        let probe = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIP: systemd-analyze not installed");
            return;
        }
        for e in ACCEPTED {
            let ok = std::process::Command::new("systemd-analyze")
                .args(["calendar", e])
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "admission accepts {e:?} but systemd does not");
        }
    }
}
