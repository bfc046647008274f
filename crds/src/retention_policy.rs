//! `RetentionPolicy`: which snapshots to keep, and where forget/prune runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, KeepRules, LocalObjectRef, Schedule};

/// CEL rules shared by the policies that target either a BackupPolicy's hosts and repository
/// or an explicit selector plus repository.
pub(crate) const TARGET_RULE: &str = "has(self.backupPolicyRef) != has(self.hostSelector)";
pub(crate) const TARGET_MESSAGE: &str = "set either backupPolicyRef (hosts and repository of that BackupPolicy) or hostSelector with repositoryRef, not both";
pub(crate) const REPOSITORY_RULE: &str = "has(self.hostSelector) == has(self.repositoryRef)";
pub(crate) const REPOSITORY_MESSAGE: &str = "repositoryRef goes with hostSelector (and is taken from the BackupPolicy when backupPolicyRef is used)";

/// Keep rules, prune limits, schedule and where retention runs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "RetentionPolicy",
    namespaced,
    doc = "Ages out snapshots (forget + prune) on a schedule, either on each host or centrally in the operator for append-only repositories.",
    status = "RetentionPolicyStatus",
    shortname = "fsret",
    selectable = ".spec.backupPolicyRef.name",
    selectable = ".spec.runOn",
    category = "fleetsnap",
    printcolumn(name = "Run On", type_ = "string", json_path = ".spec.runOn"),
    printcolumn(name = "Kept", type_ = "integer", json_path = ".status.snapshotsKept"),
    printcolumn(
        name = "Removed",
        type_ = "integer",
        json_path = ".status.snapshotsRemoved"
    ),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRun"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule.onCalendar",
        priority = 1
    ),
    printcolumn(
        name = "Reclaimed",
        type_ = "integer",
        json_path = ".status.spaceReclaimedBytes",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(TARGET_RULE).message(TARGET_MESSAGE))]
#[x_kube(validation = kube::core::Rule::new(REPOSITORY_RULE).message(REPOSITORY_MESSAGE))]
pub struct RetentionPolicySpec {
    /// Apply retention to the hosts and repository of this BackupPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy_ref: Option<LocalObjectRef>,
    /// Apply retention to the repositories of these Hosts (use with repositoryRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(crate::common::SELECTOR_RULE).message(crate::common::SELECTOR_MESSAGE))]
    pub host_selector: Option<LabelSelector>,
    /// Repository holding the selected hosts' snapshots (use with hostSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectRef>,
    /// Which snapshots to keep. At least one rule is required.
    pub keep: KeepRules,
    /// Whether and how unreferenced data is removed after forgetting snapshots.
    #[serde(default)]
    pub prune: PruneOptions,
    /// When retention runs, e.g. `Sun *-*-* 04:30:00`, well clear of the backup window.
    pub schedule: Schedule,
    /// `Host` runs forget/prune from a timer on each host against its own repository.
    /// `Operator` runs it from the operator with the repository's maintenance credentials,
    /// one repository at a time; required for append-only repositories.
    #[serde(default)]
    pub run_on: RunOn,
    /// Stop scheduling new runs.
    #[serde(default)]
    pub suspend: bool,
    /// How operator-side retention treats the times hosts write into their snapshots.
    #[serde(default)]
    pub snapshot_times: SnapshotTimes,
}

/// Hosts write their snapshots' times themselves, so a compromised host can date snapshots
/// to make keep rules drop the real ones (the attack restic documents for append-only
/// repositories). With `trust: Verified` the operator compares each snapshot's time with
/// the storage's own write time of its file (S3 `LastModified`) and with its own clock; a
/// snapshot outside `[written - maxBackupDuration, min(written, now) + clockSkew]` is
/// suspicious: it is neither counted towards a keep rule nor removed, and it is reported
/// (`status.suspiciousSnapshots`, reason `SuspiciousSnapshots`, an Event, a metric).
/// `keepWithin` counts back from the operator's clock. Host-side retention (`runOn: Host`)
/// always uses restic's semantics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTimes {
    /// `Verified` (default) or `Claimed` (restic's semantics: keep rules take each
    /// snapshot's time as written, e.g. for a history imported with `restic copy`).
    #[serde(default)]
    pub trust: TimeTrust,
    /// Clock difference tolerated between hosts, the storage and the operator.
    #[serde(default = "default_clock_skew")]
    #[x_kube(validation = kube::core::Rule::new(GO_DURATION_RULE).message("clockSkew must be a duration like '15m' or '1h'"))]
    pub clock_skew: String,
    /// Longest a backup runs: how long before its file was written a snapshot may say it
    /// started. A forged snapshot can only compete with real ones this recent.
    #[serde(default = "default_max_backup_duration")]
    #[x_kube(validation = kube::core::Rule::new(GO_DURATION_RULE).message("maxBackupDuration must be a duration like '24h'"))]
    pub max_backup_duration: String,
}

const GO_DURATION_RULE: &str = "self.matches('^([0-9]+(h|m|s))+$')";

fn default_clock_skew() -> String {
    "15m".to_string()
}

fn default_max_backup_duration() -> String {
    "24h".to_string()
}

impl Default for SnapshotTimes {
    fn default() -> Self {
        SnapshotTimes {
            trust: TimeTrust::default(),
            clock_skew: default_clock_skew(),
            max_backup_duration: default_max_backup_duration(),
        }
    }
}

/// Whether snapshot times are checked against the storage's write times.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TimeTrust {
    #[default]
    Verified,
    Claimed,
}

/// Where forget/prune runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RunOn {
    #[default]
    Host,
    Operator,
}

/// Prune limits, as in `restic prune`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneOptions {
    /// Remove unreferenced data after forgetting; without it forget only drops snapshot
    /// records and no space is reclaimed.
    #[serde(default = "crate::common::default_true")]
    pub enabled: bool,
    /// Unused space tolerated in the repository to avoid repacking, as a percentage (`5%`),
    /// a size (`2G`) or `unlimited`.
    #[serde(default = "default_max_unused")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = kube::core::Rule::new(SIZE_OR_PERCENT_RULE)
        .message("maxUnused must be a percentage like '5%', a size like '2G' or 'unlimited'"))]
    pub max_unused: String,
    /// Upper bound of data repacked per run, as a size such as `2G`; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+[KMGT]?$')")
        .message("maxRepackSize must be a size like '500M' or '2G'"))]
    pub max_repack_size: Option<String>,
}

const SIZE_OR_PERCENT_RULE: &str = "self == 'unlimited' || self.matches('^[0-9]+([.][0-9]+)?%$') || self.matches('^[0-9]+[KMGT]?$')";

fn default_max_unused() -> String {
    "5%".to_string()
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            enabled: true,
            max_unused: default_max_unused(),
            max_repack_size: None,
        }
    }
}

impl PruneOptions {
    /// Arguments appended to `forget` (or passed to `prune`) for these limits.
    pub fn to_cli_args(&self) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let mut args = vec![
            "--prune".to_string(),
            "--max-unused".to_string(),
            self.max_unused.clone(),
        ];
        if let Some(size) = &self.max_repack_size {
            args.push("--max-repack-size".to_string());
            args.push(size.clone());
        }
        args
    }
}

/// An error from the last run on one host or repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunError {
    /// Host (or, for operator-side runs, the host whose repository) the error belongs to.
    pub host: String,
    /// What went wrong.
    pub message: String,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Observed state of a RetentionPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicyStatus {
    /// When the last run (over all targeted repositories) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// When the last run finished without errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// Snapshots kept by the last run, summed over repositories.
    #[serde(default)]
    pub snapshots_kept: i64,
    /// Snapshots forgotten by the last run, summed over repositories.
    #[serde(default)]
    pub snapshots_removed: i64,
    /// Bytes freed by the last prune.
    #[serde(default)]
    pub space_reclaimed_bytes: i64,
    /// Objects prune could not delete because S3 Object Lock still protects them; they
    /// are freed by the bucket's lifecycle rules once the lock expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_objects_retained: Option<i64>,
    /// Number of Hosts that carry, or may still carry, this policy's job (timer, service,
    /// config and credentials). Each of them has this policy's entry in
    /// `Host.status.policies[]`: the operator writes it before installing the job and removes
    /// it only once the job was removed, so it can take the job off a host that leaves the
    /// selection, when `runOn` switches to `Operator` or when the policy is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_installed: Option<i32>,
    /// Written by versions before bounded status: the hosts that may carry the job, by name.
    /// Never written now; read once after an upgrade (its hosts get their `Host.status`
    /// entry) and dropped with the next status write. When neither this nor
    /// `hostsInstalled` is set, every selected host is treated as a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_hosts: Option<Vec<String>>,
    /// Number of errors of the last run, of which `errors` lists at most the first 10.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors_total: i32,
    /// Snapshots the last run kept without counting them because their claimed time
    /// contradicts the storage's write time or lies in the future (see `snapshotTimes`),
    /// summed over repositories. Anything above 0 needs a look: forged or badly dated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspicious_snapshots: Option<i64>,
    /// Errors of the last run, at most one per host and at most 10 (`errorsTotal` counts
    /// them all; each host's own is in its `Host.status.policies[]` entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub errors: Vec<RunError>,
    /// Standard conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_args() {
        assert_eq!(
            PruneOptions::default().to_cli_args().join(" "),
            "--prune --max-unused 5%"
        );
        let p = PruneOptions {
            enabled: true,
            max_unused: "unlimited".into(),
            max_repack_size: Some("2G".into()),
        };
        assert_eq!(
            p.to_cli_args().join(" "),
            "--prune --max-unused unlimited --max-repack-size 2G"
        );
        let off = PruneOptions {
            enabled: false,
            ..PruneOptions::default()
        };
        assert!(off.to_cli_args().is_empty());
    }
}
