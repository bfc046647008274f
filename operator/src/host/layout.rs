//! Where things live on a host. Every path the operator writes or deletes is derived here,
//! from names that were validated first, so no spec value can steer a write elsewhere.
//! `docs/host-layout.md` describes the same layout for humans and for the executor.

use super::model::PolicyKind;

pub const LIB_DIR: &str = "/usr/local/lib/fleetsnap";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const BIN_LINK: &str = "/usr/local/bin/fleetsnap";
pub const CONFIG_DIR: &str = "/etc/fleetsnap";
/// Plain credentials (root-only 0600 files) when the host cannot encrypt.
pub const CREDSTORE_DIR: &str = "/etc/fleetsnap/credstore";
/// `systemd-creds encrypt` output; unreadable without the host's credential key.
pub const CREDSTORE_ENCRYPTED_DIR: &str = "/etc/fleetsnap/credstore.encrypted";
/// Units are written here first and checked with `systemd-analyze verify`. It sits on the
/// same filesystem as the unit directory, so moving a verified unit into place is a rename.
pub const STAGING_DIR: &str = "/etc/fleetsnap/.staging";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const STATE_DIR: &str = "/var/lib/fleetsnap";
pub const RUNS_DIR: &str = "/var/lib/fleetsnap/runs";
pub const CACHE_DIR: &str = "/var/cache/fleetsnap";

/// Credential ids as seen by the executor in `$CREDENTIALS_DIRECTORY` (the contract's).
pub use fleetsnap_contract::config::credential_id::{
    AWS_ACCESS_KEY_ID as CRED_AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY as CRED_AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN as CRED_AWS_SESSION_TOKEN, REPOSITORY_PASSWORD as CRED_REPOSITORY_PASSWORD,
    REST_PASSWORD as CRED_REST_PASSWORD, REST_USERNAME as CRED_REST_USERNAME,
};
pub const ALL_CREDENTIALS: [&str; 6] = [
    CRED_REPOSITORY_PASSWORD,
    CRED_AWS_ACCESS_KEY_ID,
    CRED_AWS_SECRET_ACCESS_KEY,
    CRED_AWS_SESSION_TOKEN,
    CRED_REST_USERNAME,
    CRED_REST_PASSWORD,
];

/// One scheduled job on a host: a policy of one kind. Two kinds may share a policy name
/// (a BackupPolicy and a RetentionPolicy both called `nightly`), so every path carries both.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    pub kind: PolicyKind,
    pub policy: String,
}

impl JobId {
    /// Fails unless `policy` is a DNS-1123 label, which makes it safe in paths and unit names.
    pub fn new(kind: PolicyKind, policy: &str) -> Result<Self, String> {
        validate_dns_label(policy)?;
        Ok(Self {
            kind,
            policy: policy.to_string(),
        })
    }

    /// `<kind>-<policy>`, the common stem of every per-job name.
    pub fn slug(&self) -> String {
        format!("{}-{}", self.kind.as_str(), self.policy)
    }

    pub fn config_path(&self) -> String {
        format!("{CONFIG_DIR}/{}.json", self.slug())
    }

    pub fn service_unit(&self) -> String {
        format!("fleetsnap-{}.service", self.slug())
    }

    pub fn timer_unit(&self) -> String {
        format!("fleetsnap-{}.timer", self.slug())
    }

    pub fn runs_dir(&self) -> String {
        format!("{RUNS_DIR}/{}", self.slug())
    }

    pub fn credential_path(&self, name: &str, encrypted: bool) -> String {
        let dir = if encrypted {
            CREDSTORE_ENCRYPTED_DIR
        } else {
            CREDSTORE_DIR
        };
        format!("{dir}/{}.{name}", self.slug())
    }

    /// Every credential path this job could ever have had, for cleanup after a switch between
    /// encrypted and plain storage or after keys (or a session token) were dropped from the
    /// repository.
    pub fn all_credential_paths(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for name in ALL_CREDENTIALS {
            for enc in [false, true] {
                out.push((self.credential_path(name, enc), enc));
            }
        }
        out
    }
}

pub fn unit_path(unit: &str) -> String {
    format!("{UNIT_DIR}/{unit}")
}

pub fn executor_dir(version: &str) -> String {
    format!("{LIB_DIR}/{version}")
}

pub fn executor_path(version: &str) -> String {
    format!("{LIB_DIR}/{version}/fleetsnap")
}

/// RFC 1123 label as Kubernetes uses it for object names.
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ok_ends {
        return Err(format!(
            "{s:?} is not a DNS-1123 label (1-63 of a-z, 0-9, '-', starting and ending alphanumeric)"
        ));
    }
    Ok(())
}

/// Versions become directory names: no separators, no dot-only names, nothing a shell or
/// systemd would interpret.
pub fn validate_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "executor version {v:?} is not a safe directory name"
        ))
    }
}

pub fn validate_sha256(s: &str) -> Result<(), String> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lowercase hex sha256"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let j = JobId::new(PolicyKind::Backup, "nightly").unwrap();
        assert_eq!(j.config_path(), "/etc/fleetsnap/backup-nightly.json");
        assert_eq!(j.service_unit(), "fleetsnap-backup-nightly.service");
        assert_eq!(j.timer_unit(), "fleetsnap-backup-nightly.timer");
        assert_eq!(j.runs_dir(), "/var/lib/fleetsnap/runs/backup-nightly");
        assert_eq!(
            j.credential_path(CRED_REPOSITORY_PASSWORD, true),
            "/etc/fleetsnap/credstore.encrypted/backup-nightly.repository-password"
        );
        assert_eq!(j.all_credential_paths().len(), 2 * ALL_CREDENTIALS.len());
    }

    #[test]
    fn rejects_unsafe_names() {
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "..",
            "a b",
            "a\nb",
            &"x".repeat(64),
        ] {
            assert!(JobId::new(PolicyKind::Verify, bad).is_err(), "{bad:?}");
        }
        for bad in ["", ".", "..", "1/2", "1 2", ".hidden", "v$x"] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
        assert!(validate_version("0.1.0+build.3").is_ok());
        assert!(validate_sha256(&"a".repeat(64)).is_ok());
        assert!(validate_sha256(&"A".repeat(64)).is_err());
    }
}
