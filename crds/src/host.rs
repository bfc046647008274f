//! `Host`: one machine the operator manages over SSH.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef};

/// How to reach one machine and how to recognise it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "Host",
    namespaced,
    doc = "A Linux machine that fleetsnap backs up over SSH. Its labels (env, role, account, ...) are what policies select on.",
    status = "HostStatus",
    shortname = "fsh",
    category = "fleetsnap",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Reachable", type_ = "boolean", json_path = ".status.reachable"),
    printcolumn(
        name = "Executor",
        type_ = "string",
        json_path = ".status.executor.version"
    ),
    printcolumn(
        name = "Last Contact",
        type_ = "date",
        json_path = ".status.lastContact"
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
        name = "Arch",
        type_ = "string",
        json_path = ".status.os.arch",
        priority = 1
    ),
    printcolumn(
        name = "Kernel",
        type_ = "string",
        json_path = ".status.os.kernel",
        priority = 1
    ),
    printcolumn(
        name = "OS",
        type_ = "string",
        json_path = ".status.os.distribution",
        priority = 1
    ),
    printcolumn(
        name = "Systemd",
        type_ = "integer",
        json_path = ".status.os.systemdVersion",
        priority = 1
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".status.os.credentialMode",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.hostname) == has(oldSelf.hostname) && (!has(self.hostname) || self.hostname == oldSelf.hostname)"
).message("hostname is immutable: it names this host's repository path; create a new Host to change it"))]
pub struct HostSpec {
    /// DNS name or IP address the operator connects to over SSH.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9.:_-]*[A-Za-z0-9])?$')")
        .message("address must be a DNS name or an IPv4/IPv6 address without brackets, port or user"))]
    pub address: String,
    /// SSH port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Login user. Backups need root or a user with passwordless sudo; `root` is the default.
    #[serde(default = "default_user")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z_][a-z0-9_.-]*[$]?$')")
        .message("user must be a POSIX user name such as 'root' or 'backup'"))]
    pub user: String,
    /// Secret key holding the SSH private key (OpenSSH format), e.g. the `ssh-privatekey` key
    /// of a `kubernetes.io/ssh-auth` Secret.
    pub ssh_key_secret_ref: SecretKeyRef,
    /// The host's public SSH host key, pinned: one `<type> <base64>` line as printed by
    /// `ssh-keyscan` or found in `/etc/ssh/ssh_host_ed25519_key.pub` (a trailing comment is
    /// allowed). The operator refuses to talk to a host presenting any other key.
    #[schemars(length(min = 16, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) AAAA[0-9A-Za-z+/]+={0,3}( [ -~]*)?$')"
    ).message("hostKey must be one public key line like 'ssh-ed25519 AAAAC3Nza...', e.g. from `ssh-keyscan -t ed25519 <host>`"))]
    pub host_key: String,
    /// Name under which this host's snapshots are recorded and its repository path is
    /// built (`{hostname}` in a repository's pathTemplate), normally the FQDN. Defaults to
    /// the Host object's name. Fixed at creation: it cannot be added, changed or removed later,
    /// because that would move the host to a different repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?([.][a-z0-9]([a-z0-9-]*[a-z0-9])?)*$')")
        .message("hostname must be a lower-case DNS name such as 'db1.prod.example.com'"))]
    pub hostname: Option<String>,
}

fn default_port() -> i32 {
    22
}

fn default_user() -> String {
    "root".to_string()
}

impl Host {
    /// The name this host is known by in repositories.
    pub fn effective_hostname(&self) -> &str {
        self.spec
            .hostname
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

/// Facts gathered from the host on each contact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OsFacts {
    /// CPU architecture as reported by `uname -m`, e.g. `x86_64` or `aarch64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// `PRETTY_NAME` from /etc/os-release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// systemd major version; decides which unit directives can be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_version: Option<i32>,
    /// Whether the host supports encrypted systemd credentials (`LoadCredentialEncrypted=`);
    /// when false, credentials are delivered as root-only files instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_encrypted: Option<bool>,
    /// C library (`getconf GNU_LIBC_VERSION`), e.g. `glibc 2.31`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<String>,
    /// How the host's jobs get their secrets, chosen from its systemd: `encrypted`
    /// (`LoadCredentialEncrypted=`, systemd 250+), `load-credential` (`LoadCredential=` of
    /// root-only files, 247+) or `file` (root-only files the executor opens itself, older
    /// systemd); `unsupported` when nothing can be installed (the Ready condition says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_mode: Option<String>,
}

/// The executor binary installed on the host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorStatus {
    /// Installed executor version.
    pub version: String,
    /// SHA-256 of the installed binary, verified on the host before first use.
    pub sha256: String,
}

/// Kinds of policy that leave run records on a host.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PolicyKind {
    BackupPolicy,
    RetentionPolicy,
    VerifyPolicy,
}

/// The latest state of one policy on this host, collected from the executor's run records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPolicyStatus {
    /// Kind of the policy.
    pub kind: PolicyKind,
    /// Name of the policy, in this namespace.
    pub name: String,
    /// When the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// When the last successful run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// Snapshot written by the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes of new data the last run added to the repository (after dedup and compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<i64>,
    /// Wall time of the last run in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Error of the last run when it failed; empty after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the timer fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// When the storage credential this job was given stops working, where that is known:
    /// `AWS_CREDENTIAL_EXPIRATION` in the credentials Secret (a temporary key). Compared with
    /// `nextRun` by the `FleetsnapCredentialExpiresBeforeNextRun` alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expiry: Option<Time>,
    /// Failed runs since the last success.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// BackupPolicy entries only: the host's summary state under the policy (`Pending`,
    /// `Succeeded`, `Failing`, `Stale`), the per-host detail behind the policy's counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::backup_policy::HostBackupState>,
}

/// Observed state of a Host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Whether the last SSH connection attempt succeeded (with the pinned host key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// When the operator last talked to the host successfully. While the host stays reachable it is refreshed at most every 5 minutes, so a steady host is not rewritten on every contact; `fleetsnap_host_last_contact_timestamp_seconds` has the exact time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
    /// Operating-system facts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsFacts>,
    /// The installed executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorStatus>,
    /// Per-policy run state on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub policies: Vec<HostPolicyStatus>,
    /// Standard conditions: `Ready`, `Reconciling`, `Stalled` (e.g. reason `HostKeyMismatch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
