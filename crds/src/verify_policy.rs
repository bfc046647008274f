//! `VerifyPolicy`: proves repositories are intact and restorable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LocalObjectRef, Schedule};
use crate::retention_policy::{REPOSITORY_MESSAGE, REPOSITORY_RULE, TARGET_MESSAGE, TARGET_RULE};

/// What to verify, how much data to re-read, and when.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "VerifyPolicy",
    namespaced,
    doc = "Checks repositories on a schedule: structure always, plus a re-read of a rotating subset or a random percentage of the data, and optionally a restore drill.",
    status = "VerifyPolicyStatus",
    shortname = "fsver",
    selectable = ".spec.backupPolicyRef.name",
    category = "fleetsnap",
    printcolumn(
        name = "Coverage",
        type_ = "integer",
        json_path = ".status.coveragePercent"
    ),
    printcolumn(
        name = "Failing",
        type_ = "integer",
        json_path = ".status.hostsFailing"
    ),
    printcolumn(
        name = "Last Verified",
        type_ = "date",
        json_path = ".status.lastVerified"
    ),
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
        name = "Subset",
        type_ = "string",
        json_path = ".status.lastSubset",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(TARGET_RULE).message(TARGET_MESSAGE))]
#[x_kube(validation = kube::core::Rule::new(REPOSITORY_RULE).message(REPOSITORY_MESSAGE))]
pub struct VerifyPolicySpec {
    /// Verify the hosts and repository of this BackupPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy_ref: Option<LocalObjectRef>,
    /// Verify the repositories of these Hosts (use with repositoryRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(crate::common::SELECTOR_RULE).message(crate::common::SELECTOR_MESSAGE))]
    pub host_selector: Option<LabelSelector>,
    /// Repository holding the selected hosts' snapshots (use with hostSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectRef>,
    /// When verification runs, e.g. `Sat *-*-* 05:00:00`.
    pub schedule: Schedule,
    /// Data to re-read and re-hash on each run, beyond the structural check. Unset means
    /// structure only, which does not catch damaged pack contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data: Option<ReadData>,
    /// Restore a sample of files from the latest snapshot to scratch space and compare
    /// their content hashes: the end-to-end proof that backups can be brought back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_drill: Option<RestoreDrill>,
    /// Stop scheduling new runs.
    #[serde(default)]
    pub suspend: bool,
}

/// How much data each run re-reads. Exactly one of rotation and percentage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.rotation) != has(self.percentage)")
    .message("readData needs exactly one of rotation or percentage"))]
pub struct ReadData {
    /// Split the data into `subsets` parts and read the next one each period, so the whole
    /// repository is read once per `subsets` periods (e.g. 20 subsets weekly = 20 weeks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// Read a random sample of this percentage of the data each run (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percentage: Option<i32>,
}

/// The most subsets a rotation may have: the executor splits packs by the first byte of
/// their ID, as restic does (`fleetsnap_contract::rotation::MAX_SUBSETS`).
pub const MAX_ROTATION_SUBSETS: i32 = fleetsnap_contract::rotation::MAX_SUBSETS as i32;

/// Calendar unit a rotation advances by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RotationPeriod {
    Day,
    #[default]
    Week,
    Month,
}

impl RotationPeriod {
    /// The same period in the executor contract.
    pub fn period(self) -> fleetsnap_contract::rotation::Period {
        use fleetsnap_contract::rotation::Period;
        match self {
            RotationPeriod::Day => Period::Day,
            RotationPeriod::Week => Period::Week,
            RotationPeriod::Month => Period::Month,
        }
    }
}

/// A calendar-keyed rotation through data subsets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Number of subsets the data is split into, 1 to 256 (packs are split by the first
    /// byte of their ID, as restic's `--read-data-subset n/m` does).
    #[schemars(range(min = 1, max = 256))]
    pub subsets: i32,
    /// How often the rotation moves to the next subset.
    #[serde(default)]
    pub period: RotationPeriod,
}

impl Rotation {
    /// The subset `n` (1-based, out of `subsets`) read at `now`: the executor's rule
    /// (`fleetsnap_contract::rotation`), in UTC.
    ///
    /// The subset is derived from the calendar rather than from a counter, so a missed or
    /// repeated run never shifts the rotation and any host can compute the same answer.
    pub fn subset_at(&self, now: Timestamp) -> (u32, u32) {
        use fleetsnap_contract::rotation;
        let m = self.subsets.clamp(1, MAX_ROTATION_SUBSETS) as u32;
        let date = chrono::DateTime::from_timestamp(now.as_second(), 0)
            .unwrap_or_default()
            .date_naive();
        (rotation::subset(m, self.period.period(), date), m)
    }
}

/// A sample restore to scratch space.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreDrill {
    /// Whether the drill runs.
    #[serde(default = "crate::common::default_true")]
    pub enabled: bool,
    /// Number of files sampled from the latest snapshot, 1 to 10000.
    #[serde(default = "default_sample_files")]
    #[schemars(range(min = 1, max = 10000))]
    pub sample_files: i32,
    /// Directory on the host the sample is restored into and removed from afterwards.
    #[serde(default = "default_scratch_dir")]
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/') && self != '/' && !self.contains('/../') && !self.endsWith('/..')")
        .message("scratchDir must be an absolute directory other than '/' and without '..'"))]
    pub scratch_dir: String,
}

fn default_sample_files() -> i32 {
    20
}

fn default_scratch_dir() -> String {
    "/var/tmp/fleetsnap-drill".to_string()
}

/// A verification failure on one host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyError {
    /// Host whose repository failed.
    pub host: String,
    /// What failed.
    pub message: String,
    /// Damaged pack files, when the failure names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<String>,
    /// When it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Result of the last restore drill.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatus {
    /// When the last drill ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// Files restored and compared, summed over hosts.
    #[serde(default)]
    pub files_checked: i64,
    /// Files whose restored content did not match.
    #[serde(default)]
    pub mismatches: i64,
}

/// Observed state of a VerifyPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPolicyStatus {
    /// When the last run finished on every targeted host without finding a problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<Time>,
    /// When the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// Subset read by the last run, as `n/m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_subset: Option<String>,
    /// Share of the data re-read in the current rotation window, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_percent: Option<i32>,
    /// Pack files read by the last run, summed over hosts.
    #[serde(default)]
    pub packs_read: i64,
    /// Hosts whose last verification failed.
    #[serde(default)]
    pub hosts_failing: i32,
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
    /// Failures of the last run, at most 10 (`errorsTotal` counts them all; each host's own
    /// is in its `Host.status.policies[]` entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub errors: Vec<VerifyError>,
    /// Result of the last restore drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillStatus>,
    /// Standard conditions: `Ready` is False while any host's verification fails or is overdue.
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

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weekly_rotation_changes_on_monday_and_wraps() {
        let r = Rotation {
            subsets: 20,
            period: RotationPeriod::Week,
        };
        let sun = r.subset_at(ts("2026-11-22T23:59:59Z"));
        let mon = r.subset_at(ts("2026-11-23T00:00:00Z"));
        let next_sun = r.subset_at(ts("2026-11-29T12:00:00Z"));
        assert_eq!(mon, next_sun);
        assert_eq!(mon.0, sun.0 % 20 + 1);
        assert_eq!(mon.1, 20);
        // Twenty consecutive weeks visit every subset exactly once.
        let mut seen: Vec<u32> = (0..20)
            .map(|w| r.subset_at(ts("2026-11-23T00:00:00Z") + jiff_days(7 * w)).0)
            .collect();
        seen.sort();
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    }

    fn jiff_days(d: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(d * 86_400)
    }

    #[test]
    fn monthly_and_daily_rotation() {
        let m = Rotation {
            subsets: 12,
            period: RotationPeriod::Month,
        };
        assert_eq!(m.subset_at(ts("1970-01-31T00:00:00Z")), (1, 12));
        assert_eq!(m.subset_at(ts("1970-02-01T00:00:00Z")), (2, 12));
        assert_eq!(m.subset_at(ts("1971-01-01T00:00:00Z")), (1, 12));
        let d = Rotation {
            subsets: 1,
            period: RotationPeriod::Day,
        };
        assert_eq!(d.subset_at(ts("2026-11-22T00:00:00Z")), (1, 1));
    }
}
