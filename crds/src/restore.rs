//! `Restore`: a one-shot request to bring files back onto a host.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LocalObjectRef};

/// Top-level directories whose contents a running system depends on. Restoring over them
/// can break or backdoor a host, so it needs `allowLiveSystemPaths`. Kept in one place
/// with [`LIVE_SYSTEM_PATH_CEL`] so admission and the operator agree.
const LIVE_TOP_LEVEL: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "opt", "proc", "root",
    "run", "sbin", "srv", "sys", "usr", "var",
];

const LIVE_SYSTEM_PATH_CEL: &str = "self.allowLiveSystemPaths || !(self.targetDirectory.matches('^/+$') || (self.targetDirectory.matches('^/(bin|boot|dev|etc|home|lib|lib32|lib64|libx32|opt|proc|root|run|sbin|srv|sys|usr|var)(/.*)?$') && !self.targetDirectory.matches('^/var/tmp/[^/]+')))";

/// Which snapshot to restore, onto which host, and where.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    doc = "A one-shot restore of a snapshot (by default the host's latest) into a directory on a Host. Create a new Restore to restore again; the spec cannot be changed.",
    status = "RestoreStatus",
    shortname = "fsrestore",
    selectable = ".spec.hostRef.name",
    selectable = ".spec.repositoryRef.name",
    category = "fleetsnap",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.hostRef.name"),
    printcolumn(
        name = "Snapshot",
        type_ = "string",
        json_path = ".spec.source.snapshot"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Files", type_ = "integer", json_path = ".status.filesRestored"),
    printcolumn(
        name = "Duration",
        type_ = "number",
        json_path = ".status.durationSeconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetDirectory",
        priority = 1
    ),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.bytesRestored",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf")
    .message("a Restore cannot be changed once created; create a new Restore instead"))]
#[x_kube(validation = kube::core::Rule::new(LIVE_SYSTEM_PATH_CEL)
    .message("targetDirectory is a live system path (/, /etc, /usr, /var, /home, ...); restore into a scratch directory such as /var/tmp/restore-1, or set allowLiveSystemPaths: true to overwrite the running system on purpose"))]
pub struct RestoreSpec {
    /// The Host files are restored onto; the restore runs there.
    pub host_ref: LocalObjectRef,
    /// The BackupRepository holding the snapshot.
    pub repository_ref: LocalObjectRef,
    /// Which snapshot to restore.
    #[serde(default)]
    pub source: RestoreSource,
    /// Only restore these absolute paths from the snapshot (e.g. `/etc`); empty restores everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 4096)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.startsWith('/') && size(p) <= 4096)")
        .message("include entries must be absolute paths (starting with '/')"))]
    pub include: Vec<String>,
    /// Absolute directory on the host the files are restored under, keeping their original
    /// paths below it (restoring `/etc` into `/var/tmp/r1` yields `/var/tmp/r1/etc`).
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.startsWith('/') && !self.contains('//') && !self.split('/').exists(s, s == '.' || s == '..')"
    ).message("targetDirectory must be an absolute path without '//', '.' or '..' segments"))]
    pub target_directory: String,
    /// Permit a targetDirectory that is `/` or under a live system directory (/etc, /usr,
    /// /var, /home, ...). Overwrites files the running system uses.
    #[serde(default)]
    pub allow_live_system_paths: bool,
}

/// Which snapshot to restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// Restore another host's backups (its hostname as recorded in the repository), e.g. to
    /// rebuild a lost machine onto a replacement. Defaults to the target Host's own hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?([.][a-z0-9]([a-z0-9-]*[a-z0-9])?)*$')")
        .message("source.hostname must be a lower-case DNS name such as 'db1.prod.example.com'"))]
    pub hostname: Option<String>,
    /// `latest`, or a snapshot ID (full, or a unique prefix of at least 8 hex characters).
    #[serde(default = "default_snapshot")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self == 'latest' || self.matches('^[0-9a-f]{8,64}$')")
        .message("snapshot must be 'latest' or a snapshot ID of 8 to 64 lower-case hex characters"))]
    pub snapshot: String,
}

fn default_snapshot() -> String {
    "latest".to_string()
}

impl Default for RestoreSource {
    fn default() -> Self {
        RestoreSource {
            hostname: None,
            snapshot: default_snapshot(),
        }
    }
}

/// Whether `dir` is `/` or lies in a directory the running system depends on.
///
/// Works on the path's text only; the executor must still refuse symlinks that lead from a
/// harmless-looking directory into a live one, since only the host knows those.
pub fn is_live_system_path(dir: &str) -> bool {
    let segments: Vec<&str> = dir
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let Some(first) = segments.first() else {
        return true;
    };
    if segments.contains(&"..") {
        return true;
    }
    if *first == "var" && segments.get(1) == Some(&"tmp") && segments.len() >= 3 {
        return false;
    }
    LIVE_TOP_LEVEL.contains(first)
}

impl RestoreSpec {
    /// Whether the operator may run this restore as specified.
    pub fn target_allowed(&self) -> bool {
        self.allow_live_system_paths || !is_live_system_path(&self.target_directory)
    }
}

/// Lifecycle of a Restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RestorePhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// Observed state of a Restore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// The snapshot ID `latest` resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// When the restore started on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Files written.
    #[serde(default)]
    pub files_restored: i64,
    /// Bytes written.
    #[serde(default)]
    pub bytes_restored: i64,
    /// Wall time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Why the restore failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Standard conditions: `Ready` is True once the restore succeeded.
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

    #[test]
    fn live_system_paths() {
        for live in [
            "/",
            "//",
            "/etc",
            "/etc/",
            "/usr/local",
            "/var",
            "/var/lib/postgresql",
            "/var/tmp",
            "/home/alice",
            "/tmp/../etc",
        ] {
            assert!(is_live_system_path(live), "{live} is live");
        }
        for scratch in [
            "/tmp/restore-test",
            "/var/tmp/r1",
            "/var/tmp/r1/deeper",
            "/mnt/restore",
            "/restore",
        ] {
            assert!(!is_live_system_path(scratch), "{scratch} is scratch");
        }
    }

    #[test]
    fn explicit_permission_allows_live_targets() {
        let mut spec = RestoreSpec {
            host_ref: LocalObjectRef { name: "h".into() },
            repository_ref: LocalObjectRef { name: "r".into() },
            source: RestoreSource::default(),
            include: vec!["/etc".into()],
            target_directory: "/".into(),
            allow_live_system_paths: false,
        };
        assert!(!spec.target_allowed());
        spec.allow_live_system_paths = true;
        assert!(spec.target_allowed());
    }
}
