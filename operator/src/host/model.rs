//! Plain input data for the host layer. The controller dereferences custom resources and
//! Secrets into these types; nothing here knows about Kubernetes, so the planner and the
//! SSH edge can be tested without an API server.

use std::fmt;
use std::path::PathBuf;

/// Secret material (SSH private key, repository password, cloud keys).
///
/// Debug and Display never show the bytes, so a secret that ends up in a `tracing` field,
/// an error message or a `{:?}` of a larger struct prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The only way to reach the bytes; grep for `expose` to audit every use.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretBytes {
    // Best effort: shortens the time a secret lingers in freed heap memory.
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our own buffer.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// One machine reached over SSH.
#[derive(Clone, Debug)]
pub struct HostTarget {
    /// Stable name (the Host resource name); used in logs, spans and errors.
    pub name: String,
    /// IP address or DNS name.
    pub address: String,
    pub port: u16,
    /// Login user. Anything other than `root` runs privileged commands through `sudo -n`.
    pub user: String,
    /// Pinned public host key as one `ssh-ed25519 AAAA...` line (type and base64 key; a
    /// trailing comment is allowed and ignored).
    pub host_key: String,
    /// OpenSSH private key file content.
    pub private_key: SecretBytes,
}

/// The executor binary to install on hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorArtifact {
    /// Version string; becomes a directory name, so it is validated like one.
    pub version: String,
    /// Lowercase hex sha256 of the binary.
    pub sha256: String,
    /// Where the operator has the binary locally.
    pub local_path: PathBuf,
}

/// The kind of a policy, which is the kind of the job it installs on a host (the contract's
/// `JobKind`: one word in unit names, config names and run records).
pub use fleetsnap_contract::JobKind as PolicyKind;

/// A command whose stdout is stored as one file in the snapshot (e.g. `pg_dumpall`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StdinSource {
    pub name: String,
    pub command: Vec<String>,
    /// File name the stream gets inside the snapshot.
    pub filename: String,
}

/// systemd `IOSchedulingClass=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoSchedulingClass {
    Realtime,
    BestEffort,
    Idle,
}

impl IoSchedulingClass {
    pub fn as_systemd(self) -> &'static str {
        match self {
            IoSchedulingClass::Realtime => "realtime",
            IoSchedulingClass::BestEffort => "best-effort",
            IoSchedulingClass::Idle => "idle",
        }
    }
}

/// Everything one scheduled job needs on one host (after templating such as per-host
/// repository paths has been resolved by the controller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// Kubernetes object name (DNS-1123 label); part of file and unit names.
    pub name: String,
    pub kind: PolicyKind,
    /// Repository location without any secret (e.g. `s3:https://minio:9000/bucket/hosts/a`).
    pub repository: String,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    pub stdin_sources: Vec<StdinSource>,
    pub tags: Vec<String>,
    /// Host name recorded in snapshots (restic's `--host`).
    pub host_tag: String,
    /// systemd calendar expression, e.g. `*-*-* 02:00:00`.
    pub on_calendar: String,
    pub randomized_delay_sec: u32,
    pub persistent: bool,
    /// `Nice=` (-20..=19).
    pub nice: Option<i8>,
    pub io_scheduling_class: Option<IoSchedulingClass>,
    /// `IOSchedulingPriority=` (0..=7).
    pub io_scheduling_priority: Option<u8>,
    /// `CPUQuota=` in percent of one CPU (200 is two full CPUs).
    pub cpu_quota_percent: Option<u32>,
    /// Longest one run may take, in seconds (`TimeoutStartSec=`, which bounds a oneshot
    /// service); `None` leaves systemd's default, which for a oneshot service is no limit.
    pub max_runtime_sec: Option<u64>,
    /// How long a run waits for the host's other jobs and a conflicting repository lock, in
    /// seconds (the config's `lock_wait_seconds`); 0 fails at once.
    pub lock_wait_sec: u64,
    /// Extra executor arguments (keep rules for retention, `--read-data-subset` for
    /// verify). Stored in the config file, never on the command line of the unit.
    pub extra_args: Vec<String>,
    /// The AWS `credential_process` command the executor runs for S3 keys (argv, no shell);
    /// empty for static keys or the host's own chain. Public: it names a program, never a
    /// secret.
    pub credential_process: Vec<String>,
}

/// Secrets delivered to the host as systemd credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub repository_password: SecretBytes,
    pub aws: Option<AwsCredentials>,
    pub rest: Option<RestCredentials>,
    /// When the storage keys stop working, where that is known (not a secret).
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: SecretBytes,
    pub secret_access_key: SecretBytes,
    /// Present for a temporary key (STS): the storage refuses the key id without it.
    pub session_token: Option<SecretBytes>,
}

/// HTTP basic auth of a restic REST server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestCredentials {
    pub username: SecretBytes,
    pub password: SecretBytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_everywhere() {
        let creds = Credentials {
            repository_password: SecretBytes::new("hunter2"),
            aws: Some(AwsCredentials {
                access_key_id: SecretBytes::new("AKIAEXAMPLE"),
                secret_access_key: SecretBytes::new("s3cr3t"),
                session_token: Some(SecretBytes::new("t0ken")),
            }),
            rest: Some(RestCredentials {
                username: SecretBytes::new("restuser"),
                password: SecretBytes::new("restpass"),
            }),
            expires: None,
        };
        let dbg = format!("{creds:?} {creds:#?}");
        for s in [
            "hunter2",
            "AKIAEXAMPLE",
            "s3cr3t",
            "t0ken",
            "restuser",
            "restpass",
        ] {
            assert!(!dbg.contains(s), "{s} leaked in {dbg}");
        }
        assert!(dbg.contains("<redacted>"));
        assert_eq!(creds.repository_password.to_string(), "<redacted>");

        let host = HostTarget {
            name: "a".into(),
            address: "127.0.0.1".into(),
            port: 22,
            user: "root".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            private_key: SecretBytes::new("-----BEGIN OPENSSH PRIVATE KEY-----"),
        };
        assert!(!format!("{host:?}").contains("BEGIN"));
    }
}
