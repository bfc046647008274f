//! The job config (format 1): rendered by the operator, read by the executor.
//!
//! Unknown fields are tolerated so that an operator one version ahead does not break older
//! executors; the format number changes only with an incompatible change.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The systemd credential ids a job's unit loads (`LoadCredential[Encrypted]=<id>:<file>`);
/// the config names the ones its unit has in [`CredentialIds`].
pub mod credential_id {
    pub const REPOSITORY_PASSWORD: &str = "repository-password";
    pub const AWS_ACCESS_KEY_ID: &str = "aws-access-key-id";
    pub const AWS_SECRET_ACCESS_KEY: &str = "aws-secret-access-key";
    pub const AWS_SESSION_TOKEN: &str = "aws-session-token";
    pub const REST_USERNAME: &str = "rest-username";
    pub const REST_PASSWORD: &str = "rest-password";
}

pub const CONFIG_FORMAT: u32 = 1;

/// What a job does. The operator calls it the policy kind: one job per policy and host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Retention,
    Verify,
}

impl JobKind {
    /// The lowercase word used in unit names, config names and executor subcommands.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Retention => "retention",
            JobKind::Verify => "verify",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "backup" => Some(JobKind::Backup),
            "retention" => Some(JobKind::Retention),
            "verify" => Some(JobKind::Verify),
            _ => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    pub format: u32,
    pub policy: String,
    pub kind: JobKind,
    pub repository: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub exclude_caches: bool,
    #[serde(default)]
    pub one_file_system: bool,
    #[serde(default)]
    pub stdin: Vec<StdinSource>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub extra_args: Vec<String>,
    pub credentials: CredentialIds,
    pub run_record_dir: String,
    #[serde(default)]
    pub cache_dir: String,
    /// A `credential_process` command (argv, no shell) that prints AWS credentials in the
    /// AWS contract; run at start and again before they expire. Empty: static keys from
    /// `credentials`, or else the SDK's default chain (the host's own identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_credential_process: Vec<String>,
    /// How long the job waits for this host's other jobs and for a conflicting repository
    /// lock (restic's `--retry-lock`) before it fails; 0 fails at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_wait_seconds: u64,
    /// Credential id → root-only file, for hosts whose systemd cannot load credentials
    /// (before 247). The executor opens these only when `$CREDENTIALS_DIRECTORY` is unset,
    /// and refuses a file that is not a regular file owned by root with no group or other
    /// permission bits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credential_files: BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdinSource {
    pub name: String,
    pub command: Vec<String>,
    pub filename: String,
    /// Run the command as this user; the CRD has the field, older configs do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialIds {
    pub repository_password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<String>,
    /// Session token of short-lived keys; only with the key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_session_token: Option<String>,
    /// HTTP basic auth of a REST server; both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_password: Option<String>,
}

impl JobConfig {
    /// Parses and checks a config; the error names the problem and, for a format mismatch,
    /// the likely cause.
    pub fn parse(bytes: &[u8]) -> Result<JobConfig, String> {
        let c: JobConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.format != CONFIG_FORMAT {
            return Err(format!(
                "config format {} is not supported by fleetsnap {} (expected {CONFIG_FORMAT}); \
                 hint: the operator and the executor versions do not match",
                c.format,
                env!("CARGO_PKG_VERSION")
            ));
        }
        if c.run_record_dir.is_empty() {
            return Err("run_record_dir is empty".into());
        }
        for s in &c.stdin {
            if s.command.first().is_none_or(|p| p.is_empty()) {
                return Err(format!("stdin source {:?} has no command", s.name));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config example of docs/host-layout.md, read from the page itself so that the
    /// documentation cannot drift from the type.
    fn doc_example() -> String {
        let page = include_str!("../../docs/host-layout.md");
        let after = &page[page
            .find("Config (`contract/src/config.rs`")
            .expect("section")..];
        let start = after.find("```json\n").expect("json block") + "```json\n".len();
        let len = after[start..].find("```").expect("block end");
        after[start..start + len].to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let c = JobConfig::parse(doc_example().as_bytes()).unwrap();
        assert_eq!(c.kind, JobKind::Backup);
        assert_eq!(c.policy, "nightly");
        assert_eq!(c.paths, ["/etc", "/home"]);
        assert_eq!(c.excludes, ["/home/*/.cache"]);
        assert!(c.exclude_caches && c.one_file_system);
        assert_eq!(c.stdin.len(), 1);
        assert_eq!(c.stdin[0].filename, "pg_dumpall.sql");
        assert_eq!(c.stdin[0].command[0], "runuser");
        assert_eq!(c.stdin[0].user, None);
        assert_eq!(c.host, "web-1");
        assert_eq!(c.credentials.repository_password, "repository-password");
        assert_eq!(
            c.credentials.aws_secret_access_key.as_deref(),
            Some("aws-secret-access-key")
        );
        assert_eq!(c.run_record_dir, "/var/lib/fleetsnap/runs/backup-nightly");
        assert_eq!(c.cache_dir, "/var/cache/fleetsnap");
    }

    #[test]
    fn optional_fields_and_errors() {
        let min = r#"{"format":1,"policy":"keep","kind":"retention","repository":"/r",
            "extra_args":["--keep-daily","7"],
            "credentials":{"repository_password":"pw"},"run_record_dir":"/runs"}"#;
        let c = JobConfig::parse(min.as_bytes()).unwrap();
        assert_eq!(c.kind, JobKind::Retention);
        assert!(c.credentials.aws_access_key_id.is_none());
        let user = r#"{"format":1,"policy":"p","kind":"backup","repository":"/r",
            "stdin":[{"name":"pg","command":["pg_dumpall"],"filename":"a.sql","user":"postgres"}],
            "credentials":{"repository_password":"pw"},"run_record_dir":"/runs"}"#;
        let c = JobConfig::parse(user.as_bytes()).unwrap();
        assert_eq!(c.stdin[0].user.as_deref(), Some("postgres"));

        let v2 = min.replace("\"format\":1", "\"format\":2");
        assert!(
            JobConfig::parse(v2.as_bytes())
                .unwrap_err()
                .contains("format 2")
        );
        let bad_kind = min.replace("retention", "archive");
        assert!(JobConfig::parse(bad_kind.as_bytes()).is_err());
        let empty_cmd = user.replace("[\"pg_dumpall\"]", "[]");
        assert!(
            JobConfig::parse(empty_cmd.as_bytes())
                .unwrap_err()
                .contains("no command")
        );
    }
}
