//! `BackupPolicy`: what to back up on which hosts, and when.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LocalObjectRef, Schedule};

/// Paths, sources, schedule and resource limits for the backup job on every selected host.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "BackupPolicy",
    namespaced,
    doc = "Backs up the selected Hosts into a BackupRepository on a systemd timer, and reports per host whether the last backup succeeded and is recent enough.",
    status = "BackupPolicyStatus",
    shortname = "fsbp",
    selectable = ".spec.repositoryRef.name",
    category = "fleetsnap",
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.hostsTotal"),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.hostsSucceeded"
    ),
    printcolumn(
        name = "Failing",
        type_ = "integer",
        json_path = ".status.hostsFailing"
    ),
    printcolumn(name = "Stale", type_ = "integer", json_path = ".status.hostsStale"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSnapshotTime"
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
        name = "Oldest Success",
        type_ = "date",
        json_path = ".status.oldestLastSuccess",
        priority = 1
    ),
    printcolumn(
        name = "Repository",
        type_ = "string",
        json_path = ".spec.repositoryRef.name",
        priority = 1
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule.onCalendar",
        priority = 1
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.paths) && size(self.paths) > 0) || (has(self.stdinSources) && size(self.stdinSources) > 0)")
    .message("a backup needs something to back up: set paths, stdinSources, or both"))]
pub struct BackupPolicySpec {
    /// Hosts (in this namespace) this policy applies to, by label. `{}` selects every Host.
    #[x_kube(validation = kube::core::Rule::new(crate::common::SELECTOR_RULE).message(crate::common::SELECTOR_MESSAGE))]
    pub host_selector: LabelSelector,
    /// The BackupRepository (in this namespace) snapshots are written to.
    pub repository_ref: LocalObjectRef,
    /// Absolute paths to back up, e.g. `/etc`, `/home`, `/var/lib/myapp`.
    #[serde(default)]
    #[schemars(length(max = 128), inner(length(min = 1, max = 4096)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.startsWith('/') && size(p) <= 4096)")
        .message("every entry of paths must be an absolute path (starting with '/') of at most 4096 characters"))]
    pub paths: Vec<String>,
    /// Exclude patterns in restic `--exclude` syntax, e.g. `/var/lib/myapp/tmp` or `*.tmp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 4096)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, size(e) > 0 && size(e) <= 4096)")
        .message("excludes entries must be non-empty patterns of at most 4096 characters"))]
    pub excludes: Vec<String>,
    /// Skip directories containing a `CACHEDIR.TAG` file.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Do not cross filesystem boundaries below the given paths.
    #[serde(default)]
    pub one_file_system: bool,
    /// Commands whose standard output is stored as a file in its own snapshot, e.g.
    /// `pg_dumpall` for a consistent database dump instead of a torn copy of its data directory.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, self.exists_one(t, t.name == s.name))")
        .message("stdinSources names must be unique"))]
    pub stdin_sources: Vec<StdinSource>,
    /// Tags added to every snapshot, e.g. `fleet`, `prod`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(t, t.matches('^[A-Za-z0-9._:=@+-]{1,128}$'))")
        .message("tags may only contain letters, digits and . _ : = @ + - (commas separate tags in restic)"))]
    pub tags: Vec<String>,
    /// When the backup runs on each host.
    pub schedule: Schedule,
    /// CPU and IO priority of the backup process, so it does not disturb the host's workload.
    #[serde(default)]
    pub resources: ResourceControls,
    /// A host whose last success is older than this counts as stale (and alerts). A
    /// duration such as `26h`; defaults to the schedule's interval plus its randomized delay
    /// plus one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1m')"
    ).message("stalenessWindow must be a duration such as '26h' or '90m', at least 1m"))]
    pub staleness_window: Option<String>,
    /// Stop scheduling new runs (timers are disabled on the hosts; units and data stay).
    #[serde(default)]
    pub suspend: bool,
}

impl BackupPolicySpec {
    /// How old the last success may get before a host counts as stale.
    ///
    /// `interval` is the time between two scheduled runs, which only systemd can compute
    /// from an arbitrary calendar expression; the caller gets it from
    /// `systemd-analyze calendar --iterations=2` on the host or its own calendar logic.
    pub fn effective_staleness_window(
        &self,
        interval: std::time::Duration,
    ) -> Result<std::time::Duration, crate::common::ScheduleError> {
        if let Some(window) = &self.staleness_window {
            return crate::common::parse_duration(window);
        }
        // One missed run should already count: the slack only covers the random spread and
        // a long-running backup, not a whole extra interval.
        Ok(interval + self.schedule.randomized_delay()? + std::time::Duration::from_secs(3600))
    }
}

/// A command whose output is backed up as one file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdinSource {
    /// Identifier of this source, used in unit and record names.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')")
        .message("name must be lower-case letters, digits and '-', e.g. 'postgres'"))]
    pub name: String,
    /// Program and arguments, executed directly without a shell, e.g. `["pg_dumpall"]`.
    /// The first element is an absolute path or a name looked up in PATH.
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    #[x_kube(validation = kube::core::Rule::new("size(self[0]) > 0")
        .message("the first element of command, the program, must not be empty"))]
    pub command: Vec<String>,
    /// File name the output is stored under in the snapshot, e.g. `pg_dumpall.sql`.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9._-]+$') && self != '.' && self != '..'")
        .message("filename must be a plain file name such as 'pg_dumpall.sql' (no '/')"))]
    pub filename: String,
    /// Run the command as this user (e.g. `postgres`) instead of the backup's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z_][a-z0-9_.-]*[$]?$')")
        .message("user must be a POSIX user name such as 'postgres'"))]
    pub user: Option<String>,
}

/// IO scheduling class of the backup process (`IOSchedulingClass=`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IoSchedulingClass {
    Realtime,
    #[default]
    BestEffort,
    Idle,
}

impl IoSchedulingClass {
    /// The value systemd expects.
    pub fn as_systemd(self) -> &'static str {
        match self {
            IoSchedulingClass::Realtime => "realtime",
            IoSchedulingClass::BestEffort => "best-effort",
            IoSchedulingClass::Idle => "idle",
        }
    }
}

/// Process priority settings for the backup unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceControls {
    /// CPU niceness (`Nice=`), -20 (greedy) to 19 (polite).
    #[serde(default = "default_nice")]
    #[schemars(range(min = -20, max = 19))]
    pub nice: i32,
    /// IO scheduling class (`IOSchedulingClass=`): `realtime`, `best-effort` or `idle`.
    #[serde(default)]
    pub io_scheduling_class: IoSchedulingClass,
    /// IO priority within the class (`IOSchedulingPriority=`), 0 (highest) to 7 (lowest).
    #[serde(default = "default_io_priority")]
    #[schemars(range(min = 0, max = 7))]
    pub io_scheduling_priority: i32,
    /// CPU time limit (`CPUQuota=`) as a percentage of one CPU, e.g. `50%` or `200%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[1-9][0-9]{0,4}%$')")
        .message("cpuQuota must be a percentage such as '50%' (100% is one full CPU)"))]
    pub cpu_quota: Option<String>,
}

impl ResourceControls {
    /// The CPU quota in percent of one CPU, in the exact shape admission allows
    /// (`[1-9][0-9]{0,4}%`); anything else is `None`, since it would end up in a unit file.
    pub fn cpu_quota_percent(&self) -> Option<u32> {
        let digits = self.cpu_quota.as_deref()?.strip_suffix('%')?;
        if digits.is_empty()
            || digits.len() > 5
            || digits.starts_with('0')
            || !digits.chars().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        digits.parse().ok()
    }
}

fn default_nice() -> i32 {
    10
}

fn default_io_priority() -> i32 {
    7
}

impl Default for ResourceControls {
    fn default() -> Self {
        ResourceControls {
            nice: default_nice(),
            io_scheduling_class: IoSchedulingClass::default(),
            io_scheduling_priority: default_io_priority(),
            cpu_quota: None,
        }
    }
}

/// Summary state of one host under this policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HostBackupState {
    /// Selected but no run observed yet.
    Pending,
    /// Last run succeeded within the staleness window.
    Succeeded,
    /// Last run failed, or the host cannot be reached.
    Failing,
    /// No success within the staleness window (including a timer that stopped firing).
    Stale,
}

/// One selected host as the policy's reconcile sees it. Not part of the policy's status any
/// more (per-host detail lives in `Host.status.policies[]`); kept as the input of the status
/// computation and to read `status.hosts` written by earlier versions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHostSummary {
    /// Name of the Host object.
    pub name: String,
    /// Summary state.
    pub state: HostBackupState,
    /// When the last successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// Snapshot of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Why the host is failing or stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Most entries of `status.worstHosts`.
pub const MAX_WORST_HOSTS: usize = 10;
/// Longest `error` of one `status.worstHosts` entry, in bytes (plus a trailing `…`).
pub const MAX_WORST_HOST_ERROR: usize = 256;

/// One of the hosts worst off under this policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorstHost {
    /// Name of the Host object; its `status.policies[]` has the full detail.
    pub name: String,
    /// Summary state: `Failing`, `Stale` or `Pending`.
    pub state: HostBackupState,
    /// When the host's last successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// Why the host is failing or stale, cut to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Observed state of a BackupPolicy. Its size does not depend on the number of hosts:
/// counts, times, conditions and at most ten worst hosts; per-host detail is in each
/// `Host.status.policies[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// Number of Hosts the selector matches.
    #[serde(default)]
    pub hosts_total: i32,
    /// Hosts whose last run succeeded within the staleness window.
    #[serde(default)]
    pub hosts_succeeded: i32,
    /// Hosts whose last run failed or that cannot be reached.
    #[serde(default)]
    pub hosts_failing: i32,
    /// Hosts without a success within the staleness window.
    #[serde(default)]
    pub hosts_stale: i32,
    /// Selected hosts without any observed run yet.
    #[serde(default)]
    pub hosts_pending: i32,
    /// The oldest "last success" over all selected hosts: how far back the worst-off host's
    /// newest backup is. Unset while some host has never succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_last_success: Option<Time>,
    /// Time of the newest snapshot written by any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_time: Option<Time>,
    /// At most 10 hosts that are not `Succeeded`, worst first: failing, then stale, then
    /// pending; within each, the oldest last success (never is oldest), then by name. Hosts
    /// that left the selector and still carry the job (removal pending) are listed as
    /// failing without being counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub worst_hosts: Vec<WorstHost>,
    /// Written by versions before bounded status: every host with its detail. Never written
    /// now; read once after an upgrade, so that hosts listed only here still lose the job
    /// when they leave the selector, and dropped with the next status write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub hosts: Vec<PolicyHostSummary>,
    /// Standard conditions: `Ready` (every selected host succeeded recently), `Reconciling`,
    /// `Stalled`; reasons such as `HostsFailing`, `HostsStale`, `NoHostsSelected`. The `Ready`
    /// message names at most five hosts and counts the rest ("and N more").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Schedule;
    use std::time::Duration;

    fn policy(window: Option<&str>, delay: Option<&str>) -> BackupPolicySpec {
        BackupPolicySpec {
            host_selector: LabelSelector::default(),
            repository_ref: LocalObjectRef { name: "r".into() },
            paths: vec!["/etc".into()],
            excludes: vec![],
            exclude_caches: false,
            one_file_system: false,
            stdin_sources: vec![],
            tags: vec![],
            schedule: Schedule {
                on_calendar: "daily".into(),
                randomized_delay: delay.map(Into::into),
                persistent: true,
                max_runtime: None,
                lock_wait: None,
            },
            resources: ResourceControls::default(),
            staleness_window: window.map(Into::into),
            suspend: false,
        }
    }

    #[test]
    fn staleness_window_defaults_from_schedule() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            policy(None, Some("45m"))
                .effective_staleness_window(day)
                .unwrap(),
            day + Duration::from_secs(45 * 60 + 3600)
        );
        assert_eq!(
            policy(Some("26h"), Some("45m"))
                .effective_staleness_window(day)
                .unwrap(),
            Duration::from_secs(26 * 3600)
        );
    }

    #[test]
    fn cpu_quota_only_in_the_admitted_shape() {
        let q = |v: &str| {
            ResourceControls {
                cpu_quota: Some(v.into()),
                ..ResourceControls::default()
            }
            .cpu_quota_percent()
        };
        assert_eq!(ResourceControls::default().cpu_quota_percent(), None);
        assert_eq!(q("50%"), Some(50));
        assert_eq!(q("200%"), Some(200));
        for bad in [
            "50",
            "050%",
            "%",
            "123456%",
            "50%\nExecStartPre=/bin/sh",
            "5 0%",
        ] {
            assert_eq!(q(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_fill_in_when_fields_are_absent() {
        let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "hostSelector": {},
            "repositoryRef": {"name": "r"},
            "paths": ["/etc"],
            "schedule": {"onCalendar": "daily"}
        }))
        .unwrap();
        assert!(spec.schedule.persistent);
        assert_eq!(spec.resources, ResourceControls::default());
        assert!(!spec.suspend);
    }
}
