//! `BackupRepository`: where snapshots are stored.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef, SecretRef};

/// Storage backend and credentials. Exactly one of `s3`, `local` and `rest` is set.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetsnap.io",
    version = "v1alpha1",
    kind = "BackupRepository",
    namespaced,
    doc = "Where backups go: an S3 bucket, a directory on each host, or a restic REST server, with one restic-format repository per host under pathTemplate.",
    status = "BackupRepositoryStatus",
    shortname = "fsrepo",
    category = "fleetsnap",
    printcolumn(name = "Bucket", type_ = "string", json_path = ".spec.s3.bucket"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.pathTemplate"),
    printcolumn(
        name = "Append-Only",
        type_ = "boolean",
        json_path = ".spec.appendOnly"
    ),
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.hosts"),
    printcolumn(
        name = "Initialized",
        type_ = "integer",
        json_path = ".status.initializedHosts"
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
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.s3.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Policies",
        type_ = "integer",
        json_path = ".status.policies",
        priority = 1
    ),
    printcolumn(
        name = "Last Maintenance",
        type_ = "date",
        json_path = ".status.lastMaintenance",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.s3) ? 1 : 0) + (has(self.local) ? 1 : 0) + (has(self.rest) ? 1 : 0) == 1"
).message("set exactly one of s3, local or rest"))]
#[x_kube(validation = kube::core::Rule::new(
    "!self.appendOnly || has(self.maintenanceCredentialsSecretRef)"
).message("appendOnly repositories need maintenanceCredentialsSecretRef: hosts cannot delete, so forget/prune runs in the operator with these separate credentials"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.s3) || !has(self.s3.operatorSts) || has(self.maintenanceCredentialsSecretRef)"
).message("s3.operatorSts needs maintenanceCredentialsSecretRef: the operator mints host keys with those credentials"))]
#[x_kube(validation = kube::core::Rule::new(
    "!(self.appendOnly && has(self.local))"
).message("a local repository cannot be append-only: the host owns the directory and can overwrite or delete any file in it; use s3 (with versioning or Object Lock) or rest (a server run with --append-only)"))]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.s3) == has(oldSelf.s3) && has(self.local) == has(oldSelf.local) && has(self.rest) == has(oldSelf.rest)"
).message("the backend type is immutable: create a new BackupRepository to move to another backend"))]
pub struct BackupRepositorySpec {
    /// An S3 or S3-compatible bucket (AWS, MinIO, Ceph RGW, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Backend>,
    /// A directory on each host's own filesystem (typically a mounted NFS share or a
    /// separate disk). Offers no protection against a host compromise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalBackend>,
    /// A restic REST server (`rest-server`, `rclone serve restic`); run it with
    /// `--append-only` for append-only repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestBackend>,
    /// Path of each host's repository below the backend's root (bucket, directory or URL).
    /// `{hostname}` expands to the Host's hostname and must appear, so that each host
    /// writes only to its own repository; `{namespace}` expands to this object's namespace.
    /// Immutable, because changing it would orphan every existing repository.
    #[serde(default = "default_path_template")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('{hostname}')")
        .message("pathTemplate must contain {hostname} so every host gets its own repository"))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[A-Za-z0-9._{}-]+(/[A-Za-z0-9._{}-]+)*$') && !self.split('/').exists(s, s == '.' || s == '..')"
    ).message("pathTemplate must be a relative path of letters, digits, '.', '_', '-' and placeholders, without '..' or empty segments"))]
    #[x_kube(validation = kube::core::Rule::new("!self.replace('{hostname}', '').replace('{namespace}', '').matches('[{}]')")
        .message("pathTemplate knows only the placeholders {hostname} and {namespace}"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf")
        .message("pathTemplate is immutable: changing it would orphan every existing host repository"))]
    pub path_template: String,
    /// Secret key holding the repository password that encrypts all data client-side.
    /// Losing it makes every snapshot unreadable; keep a copy outside the cluster.
    pub password_secret_ref: SecretKeyRef,
    /// Hosts get credentials that can add data but not delete or overwrite it. Retention
    /// then has to run with `runOn: Operator`, using maintenanceCredentialsSecretRef.
    /// The storage has to enforce it: on S3 the operator reads the bucket's versioning and
    /// Object Lock configuration with the maintenance credentials and reports `Ready=False`
    /// (`AppendOnlyNotEnforced`) on a bucket with neither, where a host's PutObject over an
    /// existing file destroys it; a REST server must run with `--append-only`, which the
    /// operator cannot check. Not allowed with `local`.
    #[serde(default)]
    pub append_only: bool,
    /// Credentials with delete rights, used only by the operator for forget/prune and never
    /// sent to hosts. Same keys as the backend's credentials Secret. Required when appendOnly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_credentials_secret_ref: Option<SecretRef>,
    /// Object Lock configured on the bucket, recorded for readers of this resource. Prune and
    /// forget read the bucket's own lock configuration: versions still inside their lock window
    /// are hidden and reported (`lockedObjectsRetained`), expired ones deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
}

fn default_path_template() -> String {
    "hosts/{hostname}".to_string()
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.credentialsSecretRef) ? 1 : 0) + (has(self.perHostCredentials) ? 1 : 0) + (has(self.credentialProcess) ? 1 : 0) + (has(self.operatorSts) ? 1 : 0) <= 1")
    .message("set at most one of credentialsSecretRef, perHostCredentials, credentialProcess and operatorSts"))]
pub struct S3Backend {
    /// Endpoint URL, e.g. `https://s3.us-east-1.amazonaws.com` or `http://minio.minio:9000`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^https?://[^/?#\\\\s]+(/[^?#\\\\s]*)?$')")
        .message("endpoint must be an http:// or https:// URL without query string"))]
    pub endpoint: String,
    /// Region, e.g. `us-east-1`; MinIO accepts any value.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Bucket name. Immutable.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$')")
        .message("bucket must be a valid S3 bucket name (lower-case letters, digits, '.' and '-')"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf")
        .message("bucket is immutable: create a new BackupRepository to use another bucket"))]
    pub bucket: String,
    /// Address objects as `endpoint/bucket/key` instead of `bucket.endpoint/key`; needed by
    /// most self-hosted S3 servers such as MinIO.
    #[serde(default)]
    pub path_style: bool,
    /// Secret with keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN` (for a temporary key), shared by all hosts. Leave this,
    /// perHostCredentials and credentialProcess unset to use the host's own credential chain
    /// (an EC2 instance profile, web identity, a profile in /root/.aws).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// One credentials Secret per host, so each host's key can be scoped by IAM policy to
    /// its own prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_credentials: Option<PerHostCredentials>,
    /// A program on each host that prints a short-lived key in the AWS `credential_process`
    /// contract (the Vault CLI, aws-vault, an in-house broker). The executor runs it at the
    /// start of every job and again before the key it printed expires, so no key is stored
    /// on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_process: Option<CredentialProcess>,
    /// The operator mints each host's key itself: STS `AssumeRole` with the maintenance
    /// credentials and an inline session policy that allows the host's own prefix only and
    /// no delete except of its own lock files. The key lives at most `duration` and is
    /// replaced before it runs out and before the host's next run, so no long-lived key is
    /// ever on a host. Needs `maintenanceCredentialsSecretRef`; retention then runs in the
    /// operator (`runOn: Operator`), since hosts cannot delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_sts: Option<OperatorSts>,
}

/// Host keys minted by the operator with STS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorSts {
    /// Role to assume (AWS needs one: its trust policy must let the maintenance identity
    /// assume it, and its own policy must allow what hosts do). MinIO ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 2048))]
    pub role_arn: Option<String>,
    /// Lifetime of each host key, `15m` to `12h` (STS's limits; on AWS also at most the
    /// role's MaxSessionDuration). A key is replaced once half of it is used up, and so that
    /// every run starts with at least half a lifetime left: a backup must finish within
    /// half of `duration`.
    #[serde(default = "default_sts_duration")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(m|h)$') && (self.endsWith('h') ? int(self.substring(0, size(self) - 1)) >= 1 && int(self.substring(0, size(self) - 1)) <= 12 : int(self.substring(0, size(self) - 1)) >= 15 && int(self.substring(0, size(self) - 1)) <= 720)")
        .message("operatorSts.duration must be 15m..720m or 1h..12h, e.g. '1h'"))]
    pub duration: String,
}

fn default_sts_duration() -> String {
    "1h".to_string()
}

/// The AWS `credential_process` contract: the program prints
/// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProcess {
    /// Program and arguments, run without a shell as the job's user (root). `{hostname}`
    /// and `{host}` (the Host object's name) expand in every argument. It is stored in the
    /// host's job config, which is world-readable: pass no secret here.
    #[schemars(length(min = 1, max = 32), inner(length(max = 1024)))]
    #[x_kube(validation = kube::core::Rule::new("self[0].startsWith('/')")
        .message("credentialProcess.command[0] must be an absolute path: the job's unit sets no search path"))]
    pub command: Vec<String>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// Per-host S3 credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerHostCredentials {
    /// Name of each host's Secret, with `{hostname}` or `{host}` (the Host object's name)
    /// expanded, e.g. `s3-{host}`. Keys as in credentialsSecretRef.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('{hostname}') || self.contains('{host}')")
        .message("secretNameTemplate must contain {hostname} or {host}, otherwise every host would share one Secret"))]
    #[x_kube(validation = kube::core::Rule::new("self.replace('{hostname}', 'h').replace('{host}', 'h').matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("secretNameTemplate must yield a valid Secret name: lower-case letters, digits, '-' and '.', with {host} or {hostname} as the only placeholders"))]
    pub secret_name_template: String,
}

/// A directory on each host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalBackend {
    /// Absolute directory under which host repositories are created. Immutable.
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')")
        .message("local.path must be an absolute path without '..'"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf")
        .message("local.path is immutable: create a new BackupRepository to use another directory"))]
    pub path: String,
}

/// A restic REST server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestBackend {
    /// Base URL of the server, e.g. `https://backup.example.com:8000/`. Credentials do not
    /// belong in the URL; use credentialsSecretRef.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^https?://[^/?#@\\\\s]+(/[^?#\\\\s]*)?$')")
        .message("rest.url must be an http:// or https:// URL without user:password@ or query string"))]
    pub url: String,
    /// Secret with keys `username` and `password` for HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// S3 Object Lock mode, as configured on the bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ObjectLockMode {
    /// Users with the bypass permission can still delete locked versions.
    #[serde(rename = "GOVERNANCE")]
    Governance,
    /// Nobody can delete a locked version before its retention ends.
    #[serde(rename = "COMPLIANCE")]
    Compliance,
}

/// Object Lock configured on the bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLock {
    /// Lock mode of the bucket's default retention.
    pub mode: ObjectLockMode,
    /// Default retention in days.
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: i32,
}

/// Observed state of a BackupRepository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// Hosts whose own repository below this one is known to exist: a backup on that host
    /// succeeded at least once (from the BackupPolicies' status; the operator makes no
    /// storage call to count them).
    #[serde(default)]
    pub initialized_hosts: i32,
    /// Hosts selected by the policies that use this repository.
    #[serde(default)]
    pub hosts: i32,
    /// BackupPolicies, RetentionPolicies and VerifyPolicies using this repository, directly
    /// or through backupPolicyRef.
    #[serde(default)]
    pub policies: i32,
    /// When an operator-side retention run (forget/prune) over this repository last
    /// succeeded, from the RetentionPolicies' status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_maintenance: Option<Time>,
    /// Standard conditions: `Ready` (the spec is usable and every Secret it names resolves:
    /// reason `InvalidSpec` or `SecretNotFound` otherwise; for an `appendOnly` S3 repository
    /// also that the bucket enforces it, reason `AppendOnlyNotEnforced` otherwise, probed with
    /// the maintenance credentials at most every 10 minutes and on every spec change),
    /// `Stalled` (True while a human has to fix one of those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Why a pathTemplate cannot be expanded into a repository path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathTemplateError {
    MissingHostname,
    UnknownPlaceholder(String),
    Unbalanced,
    /// A value would escape or reshape the path (`/`, `..`, empty, odd characters).
    UnsafeValue {
        placeholder: String,
        value: String,
    },
}

impl fmt::Display for PathTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathTemplateError::MissingHostname => {
                f.write_str("pathTemplate does not contain {hostname}")
            }
            PathTemplateError::UnknownPlaceholder(p) => {
                write!(
                    f,
                    "unknown placeholder {{{p}}}; use {{hostname}} or {{namespace}}"
                )
            }
            PathTemplateError::Unbalanced => f.write_str("unbalanced '{' or '}' in pathTemplate"),
            PathTemplateError::UnsafeValue { placeholder, value } => {
                write!(
                    f,
                    "{{{placeholder}}} value {value:?} is not a single safe path segment"
                )
            }
        }
    }
}

impl std::error::Error for PathTemplateError {}

fn safe_segment(v: &str) -> bool {
    !v.is_empty()
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Expands `{hostname}` and `{namespace}` in a pathTemplate.
///
/// Substituted values must be single path segments: a hostname of `../other` must never
/// let one host reach another host's repository, whatever admission allowed.
pub fn expand_path_template(
    template: &str,
    hostname: &str,
    namespace: &str,
) -> Result<String, PathTemplateError> {
    let mut out = String::with_capacity(template.len() + hostname.len());
    let mut rest = template;
    let mut saw_hostname = false;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(PathTemplateError::Unbalanced);
        }
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(PathTemplateError::Unbalanced)?;
        let name = &after[..close];
        let value = match name {
            "hostname" => {
                saw_hostname = true;
                hostname
            }
            "namespace" => namespace,
            other if other.contains('{') => return Err(PathTemplateError::Unbalanced),
            other => return Err(PathTemplateError::UnknownPlaceholder(other.to_string())),
        };
        if !safe_segment(value) {
            return Err(PathTemplateError::UnsafeValue {
                placeholder: name.to_string(),
                value: value.to_string(),
            });
        }
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if !saw_hostname {
        return Err(PathTemplateError::MissingHostname);
    }
    Ok(out)
}

/// Name of one host's credentials Secret from a `perHostCredentials.secretNameTemplate`.
///
/// `{host}` is the Host object's name (already a valid object name) and `{hostname}` the
/// host's hostname; the result must still be a valid Secret name, which is checked here
/// because admission cannot know the names the template will be combined with.
pub fn expand_secret_name_template(
    template: &str,
    host: &str,
    hostname: &str,
) -> Result<String, PathTemplateError> {
    let name = template
        .replace("{hostname}", hostname)
        .replace("{host}", host);
    if name.contains(['{', '}']) {
        return Err(PathTemplateError::Unbalanced);
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid || template == name {
        return Err(PathTemplateError::UnsafeValue {
            placeholder: "secretNameTemplate".to_string(),
            value: name,
        });
    }
    Ok(name)
}

impl BackupRepositorySpec {
    /// This host's repository path below the backend root.
    pub fn host_path(&self, hostname: &str, namespace: &str) -> Result<String, PathTemplateError> {
        expand_path_template(&self.path_template, hostname, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_host_secret_names() {
        assert_eq!(
            expand_secret_name_template("s3-{host}", "app1", "app1.prod.acme.internal").unwrap(),
            "s3-app1"
        );
        assert_eq!(
            expand_secret_name_template("s3-{hostname}", "app1", "app1.prod.acme.internal")
                .unwrap(),
            "s3-app1.prod.acme.internal"
        );
        // A template without a placeholder would hand every host the same credentials.
        assert!(expand_secret_name_template("s3-creds", "app1", "a").is_err());
        assert!(expand_secret_name_template("S3_{host}", "app1", "a").is_err());
        assert!(expand_secret_name_template("s3-{hosts}", "app1", "a").is_err());
    }

    #[test]
    fn expands_default_template() {
        assert_eq!(
            expand_path_template("hosts/{hostname}", "db1.prod.example.com", "backup").unwrap(),
            "hosts/db1.prod.example.com"
        );
    }

    #[test]
    fn expands_namespace_and_repeated_placeholders() {
        assert_eq!(
            expand_path_template("{namespace}/hosts/{hostname}/{hostname}", "h1", "team-a")
                .unwrap(),
            "team-a/hosts/h1/h1"
        );
    }

    #[test]
    fn refuses_templates_without_hostname_or_with_unknown_placeholders() {
        assert_eq!(
            expand_path_template("shared", "h1", "ns"),
            Err(PathTemplateError::MissingHostname)
        );
        assert_eq!(
            expand_path_template("hosts/{host}", "h1", "ns"),
            Err(PathTemplateError::UnknownPlaceholder("host".into()))
        );
        assert_eq!(
            expand_path_template("hosts/{hostname", "h1", "ns"),
            Err(PathTemplateError::Unbalanced)
        );
        assert_eq!(
            expand_path_template("hosts/}{hostname}", "h1", "ns"),
            Err(PathTemplateError::Unbalanced)
        );
    }

    #[test]
    fn refuses_values_that_escape_their_segment() {
        for bad in ["../other", "a/b", "", "..", "h1\n", "h 1"] {
            assert!(
                matches!(
                    expand_path_template("hosts/{hostname}", bad, "ns"),
                    Err(PathTemplateError::UnsafeValue { .. })
                ),
                "{bad:?} must be refused"
            );
        }
    }
}
