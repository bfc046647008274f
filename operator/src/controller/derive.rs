//! Dereference: custom resources + Secrets → the plain inputs of the host layer.
//!
//! Everything here is pure. The reconciler fetches objects; these functions decide what they
//! mean, so every rule about references, templates and schedules is unit-tested without an
//! API server or a host.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetsnap_crds::backup_policy::BackupPolicy;
use fleetsnap_crds::common::{SecretKeyRef, reasons};
use fleetsnap_crds::host::Host;
use fleetsnap_crds::repository::{BackupRepository, expand_secret_name_template};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::host::model::{
    AwsCredentials, Credentials, HostTarget, IoSchedulingClass, PolicyKind, PolicySpec,
    RestCredentials, SecretBytes, StdinSource,
};

/// Why a (policy, host) pair cannot even be planned. These are spec problems: retrying
/// without a change to some object is pointless.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeriveError {
    /// Condition reason (`SecretNotFound`, `InvalidSchedule`, ...).
    pub reason: &'static str,
    pub message: String,
}

impl DeriveError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Secrets the reconciler has read, by name, in the policy's namespace. A name that is
/// absent here did not exist when it was looked up.
pub type Secrets = BTreeMap<String, Secret>;

/// Every Secret name a (policy, host) pair reads, so the reconciler can fetch exactly those
/// and the Secret watch can map a change back to the policies that care.
pub fn referenced_secrets(host: &Host, repo: &BackupRepository) -> Vec<String> {
    let mut names = vec![
        host.spec.ssh_key_secret_ref.name.clone(),
        repo.spec.password_secret_ref.name.clone(),
    ];
    if let Ok(Some(name)) = host_keys_secret(repo, host) {
        names.push(name);
    }
    // Read to mint the host's key, never delivered to it.
    if repo
        .spec
        .s3
        .as_ref()
        .is_some_and(|s| s.operator_sts.is_some())
        && let Some(r) = &repo.spec.maintenance_credentials_secret_ref
    {
        names.push(r.name.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// One key of a Secret, non-empty. The message names Secret and key, never the value.
pub fn secret_value(secrets: &Secrets, r: &SecretKeyRef) -> Result<SecretBytes, DeriveError> {
    let secret = secrets.get(&r.name).ok_or_else(|| {
        DeriveError::new(
            reasons::SECRET_NOT_FOUND,
            format!("Secret {:?} does not exist", r.name),
        )
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.as_bytes().to_vec())
        })
        .ok_or_else(|| {
            DeriveError::new(
                reasons::SECRET_NOT_FOUND,
                format!("Secret {:?} has no key {:?}", r.name, r.key),
            )
        })?;
    if value.is_empty() {
        return Err(DeriveError::new(
            reasons::SECRET_NOT_FOUND,
            format!("key {:?} of Secret {:?} is empty", r.key, r.name),
        ));
    }
    Ok(SecretBytes::new(value))
}

/// How the operator reaches a Host over SSH.
pub fn host_target(host: &Host, secrets: &Secrets) -> Result<HostTarget, DeriveError> {
    let port = u16::try_from(host.spec.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            DeriveError::new(
                "InvalidSpec",
                format!("port {} is out of range", host.spec.port),
            )
        })?;
    Ok(HostTarget {
        name: host.name_any(),
        address: host.spec.address.clone(),
        port,
        user: host.spec.user.clone(),
        host_key: host.spec.host_key.clone(),
        private_key: secret_value(secrets, &host.spec.ssh_key_secret_ref)?,
    })
}

/// Whether the policy's selector picks this host. An unparsable selector selects nothing
/// (admission rejects those; this is the last line of defence).
pub fn selects(selector: &LabelSelector, host: &Host) -> bool {
    match Selector::try_from(selector.clone()) {
        Ok(sel) => sel.matches(host.labels()),
        Err(_) => false,
    }
}

/// The restic repository URL of one host, without any credential.
pub fn repository_url(
    repo: &BackupRepository,
    hostname: &str,
    namespace: &str,
) -> Result<String, DeriveError> {
    let path = repo
        .spec
        .host_path(hostname, namespace)
        .map_err(|e| DeriveError::new(reasons::REPOSITORY_ERROR, e.to_string()))?;
    let join = |base: &str| format!("{}/{path}", base.trim_end_matches('/'));
    if let Some(s3) = &repo.spec.s3 {
        let base = format!("{}/{}", s3.endpoint.trim_end_matches('/'), s3.bucket);
        Ok(format!("s3:{}", join(&base)))
    } else if let Some(local) = &repo.spec.local {
        Ok(format!("local:{}", join(&local.path)))
    } else if let Some(rest) = &repo.spec.rest {
        Ok(format!("rest:{}", join(&rest.url)))
    } else {
        Err(DeriveError::new(
            reasons::REPOSITORY_ERROR,
            format!(
                "BackupRepository {:?} has no backend (s3, local or rest)",
                repo.name_any()
            ),
        ))
    }
}

/// The Secret holding the storage keys a host job uses: the repository's shared S3 keys,
/// the host's own per-host S3 keys, or the REST server's basic-auth login. `None` when the
/// host brings its own (the AWS chain, a credential_process) or the backend needs none.
pub fn host_keys_secret(
    repo: &BackupRepository,
    host: &Host,
) -> Result<Option<String>, DeriveError> {
    if let Some(s3) = &repo.spec.s3 {
        return match (&s3.credentials_secret_ref, &s3.per_host_credentials) {
            (Some(r), _) => Ok(Some(r.name.clone())),
            (None, Some(per_host)) => expand_secret_name_template(
                &per_host.secret_name_template,
                &host.name_any(),
                host.effective_hostname(),
            )
            .map(Some)
            .map_err(|e| DeriveError::new(reasons::REPOSITORY_ERROR, e.to_string())),
            (None, None) => Ok(None),
        };
    }
    Ok(repo
        .spec
        .rest
        .as_ref()
        .and_then(|r| r.credentials_secret_ref.as_ref())
        .map(|r| r.name.clone()))
}

/// Storage keys read from one Secret, by the repository's backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageKeys {
    pub aws: Option<AwsCredentials>,
    pub rest: Option<RestCredentials>,
    /// `AWS_CREDENTIAL_EXPIRATION` of a temporary key, the name the AWS SDKs and CLI read.
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

/// Reads the keys of Secret `name` the way every user of the repository does (host jobs,
/// Restore, operator-side maintenance and probes): S3 takes `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and, if present, `AWS_SESSION_TOKEN` and
/// `AWS_CREDENTIAL_EXPIRATION` (RFC 3339); REST takes `username` and `password`. A missing
/// required key, or an expiration that is no time, is an error naming Secret and key.
pub fn storage_keys(
    repo: &BackupRepository,
    name: &str,
    secrets: &Secrets,
) -> Result<StorageKeys, DeriveError> {
    let key = |k: &str| SecretKeyRef {
        name: name.to_string(),
        key: k.to_string(),
    };
    if repo.spec.rest.is_some() {
        return Ok(StorageKeys {
            aws: None,
            rest: Some(RestCredentials {
                username: secret_value(secrets, &key("username"))?,
                password: secret_value(secrets, &key("password"))?,
            }),
            expires: None,
        });
    }
    // Optional: long-lived keys have none. A missing Secret surfaces below through the
    // required keys.
    let session_token = secret_value(secrets, &key("AWS_SESSION_TOKEN")).ok();
    let expires = match secret_value(secrets, &key("AWS_CREDENTIAL_EXPIRATION")) {
        Err(_) => None,
        Ok(v) => {
            let text = String::from_utf8_lossy(v.expose()).trim().to_string();
            // Not secret, so the message may quote it (bounded).
            let t = chrono::DateTime::parse_from_rfc3339(&text).map_err(|_| {
                DeriveError::new(
                    reasons::REPOSITORY_ERROR,
                    format!(
                        "Secret {name:?} key AWS_CREDENTIAL_EXPIRATION {:?} is not an RFC 3339 time such as 2026-12-02T18:00:00Z",
                        text.chars().take(40).collect::<String>()
                    ),
                )
            })?;
            Some(t.with_timezone(&chrono::Utc))
        }
    };
    Ok(StorageKeys {
        aws: Some(AwsCredentials {
            access_key_id: secret_value(secrets, &key("AWS_ACCESS_KEY_ID"))?,
            secret_access_key: secret_value(secrets, &key("AWS_SECRET_ACCESS_KEY"))?,
            session_token,
        }),
        rest: None,
        expires,
    })
}

/// Secrets delivered to the host: the repository password, plus the storage keys of
/// [`host_keys_secret`] when the repository names any.
pub fn credentials(
    repo: &BackupRepository,
    host: &Host,
    secrets: &Secrets,
) -> Result<Credentials, DeriveError> {
    let repository_password = secret_value(secrets, &repo.spec.password_secret_ref)?;
    let keys = match host_keys_secret(repo, host)? {
        Some(name) => storage_keys(repo, &name, secrets)?,
        None => StorageKeys::default(),
    };
    Ok(Credentials {
        repository_password,
        aws: keys.aws,
        rest: keys.rest,
        expires: keys.expires,
    })
}

/// The repository's `credential_process` command for this host, placeholders expanded.
pub fn credential_process(repo: &BackupRepository, host: &Host) -> Vec<String> {
    repo.spec
        .s3
        .as_ref()
        .and_then(|s3| s3.credential_process.as_ref())
        .map(|p| {
            p.command
                .iter()
                .map(|a| {
                    a.replace("{hostname}", host.effective_hostname())
                        .replace("{host}", &host.name_any())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn io_class(c: fleetsnap_crds::backup_policy::IoSchedulingClass) -> IoSchedulingClass {
    use fleetsnap_crds::backup_policy::IoSchedulingClass as Crd;
    match c {
        Crd::Realtime => IoSchedulingClass::Realtime,
        Crd::BestEffort => IoSchedulingClass::BestEffort,
        Crd::Idle => IoSchedulingClass::Idle,
    }
}

/// The backup job of `policy` on `host`, with the per-host repository path resolved.
pub fn backup_policy_spec(
    policy: &BackupPolicy,
    host: &Host,
    repo: &BackupRepository,
) -> Result<PolicySpec, DeriveError> {
    let spec = &policy.spec;
    let invalid_schedule = |e: fleetsnap_crds::common::ScheduleError| {
        DeriveError::new(reasons::INVALID_SCHEDULE, e.to_string())
    };
    // timer_directives re-validates the calendar expression and the delay; only validated
    // values reach the unit file.
    let directives = spec.schedule.timer_directives().map_err(invalid_schedule)?;
    let on_calendar = directives
        .iter()
        .find(|(k, _)| *k == "OnCalendar")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let delay = spec.schedule.randomized_delay().map_err(invalid_schedule)?;
    let namespace = policy.namespace().unwrap_or_default();
    let hostname = host.effective_hostname();
    let stdin_sources = spec
        .stdin_sources
        .iter()
        .map(|s| StdinSource {
            name: s.name.clone(),
            // runuser drops privileges without a shell or PAM session, which is what the
            // unit's CAP_SETUID/CAP_SETGID allow.
            command: match &s.user {
                Some(user) => ["runuser", "-u", user, "--"]
                    .into_iter()
                    .map(String::from)
                    .chain(s.command.iter().cloned())
                    .collect(),
                None => s.command.clone(),
            },
            filename: s.filename.clone(),
        })
        .collect();
    Ok(PolicySpec {
        name: policy.name_any(),
        kind: PolicyKind::Backup,
        repository: repository_url(repo, hostname, &namespace)?,
        paths: spec.paths.clone(),
        excludes: spec.excludes.clone(),
        exclude_caches: spec.exclude_caches,
        one_file_system: spec.one_file_system,
        stdin_sources,
        tags: spec.tags.clone(),
        host_tag: hostname.to_string(),
        on_calendar,
        randomized_delay_sec: u32::try_from(delay.as_secs()).unwrap_or(u32::MAX),
        persistent: spec.schedule.persistent,
        nice: i8::try_from(spec.resources.nice.clamp(-20, 19)).ok(),
        io_scheduling_class: Some(io_class(spec.resources.io_scheduling_class)),
        io_scheduling_priority: u8::try_from(spec.resources.io_scheduling_priority.clamp(0, 7))
            .ok(),
        cpu_quota_percent: spec.resources.cpu_quota_percent(),
        max_runtime_sec: Some(
            spec.schedule
                .max_runtime()
                .map_err(invalid_schedule)?
                .as_secs(),
        ),
        lock_wait_sec: spec
            .schedule
            .lock_wait()
            .map_err(invalid_schedule)?
            .as_secs(),
        extra_args: Vec::new(),
        credential_process: credential_process(repo, host),
    })
}

/// Estimated time between two runs of a systemd calendar expression.
///
/// Only systemd knows every calendar form exactly; this covers the shorthands and the
/// `[weekday] date time` shapes policies use, looking for the finest field that repeats.
/// Anything it cannot read counts as daily, the common backup cadence, so staleness
/// alerts err on the side of firing late rather than flapping.
pub fn expected_interval(on_calendar: &str) -> Duration {
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    let expr = on_calendar.trim();
    let secs = match expr.to_ascii_lowercase().as_str() {
        "minutely" => MIN,
        "hourly" => HOUR,
        "daily" => DAY,
        "weekly" => 7 * DAY,
        "monthly" => 30 * DAY,
        "quarterly" => 91 * DAY,
        "semiannually" | "semi-annually" => 182 * DAY,
        "yearly" | "annually" => 365 * DAY,
        _ => calendar_interval(expr).unwrap_or(DAY),
    };
    Duration::from_secs(secs)
}

/// Interval of one field (`*`, `a/n`, `a,b,c`, or a fixed value); `None` when fixed.
fn field_step(field: &str, unit: u64, wrap: u64) -> Option<u64> {
    if field == "*" {
        return Some(unit);
    }
    if let Some((_, step)) = field.split_once('/') {
        return step
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(|s| s * unit);
    }
    if field.contains(',') {
        // Uneven lists repeat at most every wrap / count on average.
        let n = field.split(',').count() as u64;
        return Some((wrap * unit / n).max(unit));
    }
    if field.contains("..") {
        return Some(unit);
    }
    None
}

/// `Mon`, `Mon,Wed`, `Mon..Fri`, `Monday`: day names joined by `,` or `..`.
fn is_weekday_list(token: &str) -> bool {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    token
        .split([',', '.'])
        .filter(|d| !d.is_empty())
        .all(|d| DAYS.iter().any(|p| d.to_ascii_lowercase().starts_with(p)))
}

fn calendar_interval(expr: &str) -> Option<u64> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let (weekday, rest) = match parts.first() {
        Some(first) if first.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            if !is_weekday_list(first) {
                return None;
            }
            (Some(*first), &parts[1..])
        }
        _ => (None, &parts[..]),
    };
    let (date, time) = match rest {
        [d, t] if d.contains('-') => (Some(*d), *t),
        [t] if t.contains(':') => (None, *t),
        [d] if d.contains('-') => (Some(*d), "00:00:00"),
        _ => return None,
    };
    let mut t = time.split(':');
    let (h, m, s) = (t.next()?, t.next()?, t.next().unwrap_or("00"));
    let fine = field_step(s, 1, 60)
        .or_else(|| field_step(m, 60, 60))
        .or_else(|| field_step(h, 3600, 24));
    if let Some(f) = fine {
        return Some(f);
    }
    let days_per_week = weekday.map(|w| {
        if w.contains("..") {
            5
        } else {
            w.split(',').count() as u64
        }
    });
    let daily_date = date.is_none_or(|d| d.ends_with("-*") || d.ends_with("*-*"));
    Some(match (days_per_week, daily_date) {
        (Some(n), _) => 7 * 86_400 / n.max(1),
        (None, true) => 86_400,
        (None, false) => 30 * 86_400,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: crate::host::profile::HostProfile = crate::host::profile::HostProfile {
        systemd: 252,
        credentials: crate::host::profile::CredentialMode::Encrypted,
    };
    use fleetsnap_crds::backup_policy::{BackupPolicySpec, ResourceControls};
    use fleetsnap_crds::common::{LocalObjectRef, Schedule, SecretRef};
    use fleetsnap_crds::host::HostSpec;
    use fleetsnap_crds::repository::{
        BackupRepositorySpec, LocalBackend, PerHostCredentials, RestBackend, S3Backend,
    };
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        let mut h = Host::new(
            name,
            HostSpec {
                address: "10.0.0.5".into(),
                port: 2222,
                user: "root".into(),
                ssh_key_secret_ref: SecretKeyRef {
                    name: "ssh".into(),
                    key: "id".into(),
                },
                host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx".into(),
                hostname: None,
            },
        );
        h.metadata.namespace = Some("ns".into());
        h.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        h
    }

    fn s3_repo() -> BackupRepository {
        let mut r = BackupRepository::new(
            "r",
            BackupRepositorySpec {
                s3: Some(S3Backend {
                    endpoint: "http://minio:9000/".into(),
                    region: "us-east-1".into(),
                    bucket: "b".into(),
                    path_style: true,
                    credentials_secret_ref: Some(SecretRef { name: "s3".into() }),
                    per_host_credentials: None,
                    credential_process: None,
                    operator_sts: None,
                }),
                local: None,
                rest: None,
                path_template: "{namespace}/hosts/{hostname}".into(),
                password_secret_ref: SecretKeyRef {
                    name: "pw".into(),
                    key: "password".into(),
                },
                append_only: false,
                maintenance_credentials_secret_ref: None,
                object_lock: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r
    }

    fn policy(on_calendar: &str) -> BackupPolicy {
        let mut p = BackupPolicy::new(
            "nightly",
            BackupPolicySpec {
                host_selector: LabelSelector::default(),
                repository_ref: LocalObjectRef { name: "r".into() },
                paths: vec!["/etc".into()],
                excludes: vec!["*.tmp".into()],
                exclude_caches: true,
                one_file_system: false,
                stdin_sources: vec![fleetsnap_crds::backup_policy::StdinSource {
                    name: "pg".into(),
                    command: vec!["pg_dumpall".into()],
                    filename: "pg.sql".into(),
                    user: Some("postgres".into()),
                }],
                tags: vec!["fleet".into()],
                schedule: Schedule {
                    on_calendar: on_calendar.into(),
                    randomized_delay: Some("45m".into()),
                    persistent: true,
                    max_runtime: None,
                    lock_wait: None,
                },
                resources: ResourceControls::default(),
                staleness_window: None,
                suspend: false,
            },
        );
        p.metadata.namespace = Some("ns".into());
        p
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn secrets() -> Secrets {
        let mut s = Secrets::new();
        s.insert("ssh".into(), secret(&[("id", "-----BEGIN KEY-----")]));
        s.insert("pw".into(), secret(&[("password", "hunter2")]));
        s.insert(
            "s3".into(),
            secret(&[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")]),
        );
        s
    }

    #[test]
    fn repository_urls_per_backend() {
        let r = s3_repo();
        assert_eq!(
            repository_url(&r, "web-1", "ns").unwrap(),
            "s3:http://minio:9000/b/ns/hosts/web-1"
        );
        let mut local = s3_repo();
        local.spec.s3 = None;
        local.spec.local = Some(LocalBackend {
            path: "/srv/backup/".into(),
        });
        local.spec.path_template = "hosts/{hostname}".into();
        assert_eq!(
            repository_url(&local, "web-1", "ns").unwrap(),
            "local:/srv/backup/hosts/web-1"
        );
        let mut rest = local.clone();
        rest.spec.local = None;
        rest.spec.rest = Some(RestBackend {
            url: "https://rest:8000".into(),
            credentials_secret_ref: None,
        });
        assert_eq!(
            repository_url(&rest, "web-1", "ns").unwrap(),
            "rest:https://rest:8000/hosts/web-1"
        );
        let mut none = rest.clone();
        none.spec.rest = None;
        assert_eq!(
            repository_url(&none, "web-1", "ns").unwrap_err().reason,
            reasons::REPOSITORY_ERROR
        );
        // A hostname that would escape its path segment is refused, not expanded.
        assert!(repository_url(&r, "../other", "ns").is_err());
    }

    #[test]
    fn secrets_resolve_and_missing_ones_are_named() {
        let s = secrets();
        let h = host("web-1", &[]);
        let t = host_target(&h, &s).unwrap();
        assert_eq!(
            (t.address.as_str(), t.port, t.user.as_str()),
            ("10.0.0.5", 2222, "root")
        );
        assert_eq!(t.private_key.expose(), b"-----BEGIN KEY-----");

        let c = credentials(&s3_repo(), &h, &s).unwrap();
        assert_eq!(c.repository_password.expose(), b"hunter2");
        assert_eq!(c.aws.as_ref().unwrap().access_key_id.expose(), b"AK");

        let mut partial = s.clone();
        partial.remove("s3");
        let e = credentials(&s3_repo(), &h, &partial).unwrap_err();
        assert_eq!(e.reason, reasons::SECRET_NOT_FOUND);
        assert!(e.message.contains("\"s3\""), "{}", e.message);

        partial.insert("pw".into(), secret(&[("other", "x")]));
        let e = credentials(&s3_repo(), &h, &partial).unwrap_err();
        assert!(e.message.contains("no key \"password\""), "{}", e.message);
        assert!(!e.message.contains('x'.to_string().repeat(2).as_str()));

        partial.insert("pw".into(), secret(&[("password", "")]));
        assert!(credentials(&s3_repo(), &h, &partial).is_err());
    }

    #[test]
    fn a_session_token_travels_with_its_keys_and_is_optional() {
        let h = host("web-1", &[]);
        let mut s = secrets();
        let c = credentials(&s3_repo(), &h, &s).unwrap();
        assert_eq!(c.aws.unwrap().session_token, None);
        s.insert(
            "s3".into(),
            secret(&[
                ("AWS_ACCESS_KEY_ID", "ASIA1"),
                ("AWS_SECRET_ACCESS_KEY", "SK1"),
                ("AWS_SESSION_TOKEN", "TOK1"),
            ]),
        );
        let c = credentials(&s3_repo(), &h, &s).unwrap();
        assert_eq!(c.expires, None);
        assert_eq!(c.aws.unwrap().session_token.unwrap().expose(), b"TOK1");
        let mut with_expiry = s.clone();
        let keys = [
            ("AWS_ACCESS_KEY_ID", "ASIA1"),
            ("AWS_SECRET_ACCESS_KEY", "SK1"),
            ("AWS_SESSION_TOKEN", "TOK1"),
            ("AWS_CREDENTIAL_EXPIRATION", "2026-12-02T18:30:00+01:00"),
        ];
        with_expiry.insert("s3".into(), secret(&keys));
        assert_eq!(
            credentials(&s3_repo(), &h, &with_expiry)
                .unwrap()
                .expires
                .unwrap()
                .to_rfc3339(),
            "2026-12-02T17:30:00+00:00"
        );
        let mut bad = keys;
        bad[3].1 = "tomorrow";
        with_expiry.insert("s3".into(), secret(&bad));
        let e = credentials(&s3_repo(), &h, &with_expiry).unwrap_err();
        assert!(
            e.message.contains("AWS_CREDENTIAL_EXPIRATION") && e.message.contains("RFC 3339"),
            "{}",
            e.message
        );
        // A token alone is no credential: the key pair is still required and named.
        s.insert("s3".into(), secret(&[("AWS_SESSION_TOKEN", "TOK1")]));
        let e = credentials(&s3_repo(), &h, &s).unwrap_err();
        assert!(e.message.contains("AWS_ACCESS_KEY_ID"), "{}", e.message);
    }

    #[test]
    fn rest_logins_are_read_fetched_and_required() {
        let h = host("web-1", &[]);
        let mut r = s3_repo();
        r.spec.s3 = None;
        r.spec.rest = Some(RestBackend {
            url: "https://rest:8000/".into(),
            credentials_secret_ref: Some(SecretRef {
                name: "rest-login".into(),
            }),
        });
        assert!(referenced_secrets(&h, &r).contains(&"rest-login".to_string()));
        let mut s = secrets();
        s.insert(
            "rest-login".into(),
            secret(&[("username", "fleet"), ("password", "pw1")]),
        );
        let c = credentials(&r, &h, &s).unwrap();
        assert!(c.aws.is_none());
        let rest = c.rest.unwrap();
        assert_eq!(
            (rest.username.expose(), rest.password.expose()),
            (&b"fleet"[..], &b"pw1"[..])
        );
        s.insert("rest-login".into(), secret(&[("username", "fleet")]));
        let e = credentials(&r, &h, &s).unwrap_err();
        assert!(e.message.contains("no key \"password\""), "{}", e.message);
        // Without a Secret the server is open: nothing to deliver.
        r.spec.rest.as_mut().unwrap().credentials_secret_ref = None;
        assert_eq!(credentials(&r, &h, &s).unwrap().rest, None);
    }

    #[test]
    fn a_credential_process_expands_per_host_and_needs_no_secret() {
        let mut h = host("web-1", &[]);
        h.spec.hostname = Some("web-1.example.com".into());
        let mut r = s3_repo();
        let s3 = r.spec.s3.as_mut().unwrap();
        s3.credentials_secret_ref = None;
        s3.credential_process = Some(fleetsnap_crds::repository::CredentialProcess {
            command: vec![
                "/usr/local/bin/broker".into(),
                "--role={host}".into(),
                "--name={hostname}".into(),
            ],
        });
        assert_eq!(
            credential_process(&r, &h),
            [
                "/usr/local/bin/broker",
                "--role=web-1",
                "--name=web-1.example.com"
            ]
        );
        let c = credentials(&r, &h, &secrets()).unwrap();
        assert!(c.aws.is_none() && c.rest.is_none());
        let spec = backup_policy_spec(&policy("daily"), &h, &r).unwrap();
        assert_eq!(spec.credential_process.len(), 3);
        assert!(credential_process(&s3_repo(), &h).is_empty());
    }

    #[test]
    fn string_data_is_accepted_too() {
        let mut s = Secrets::new();
        s.insert(
            "pw".into(),
            Secret {
                string_data: Some([("password".to_string(), "pw".to_string())].into()),
                ..Secret::default()
            },
        );
        let r = SecretKeyRef {
            name: "pw".into(),
            key: "password".into(),
        };
        assert_eq!(secret_value(&s, &r).unwrap().expose(), b"pw");
    }

    #[test]
    fn per_host_credentials_and_referenced_secrets() {
        let mut repo = s3_repo();
        if let Some(s3) = repo.spec.s3.as_mut() {
            s3.credentials_secret_ref = None;
            s3.per_host_credentials = Some(PerHostCredentials {
                secret_name_template: "s3-{host}".into(),
            });
        }
        let h = host("web-1", &[]);
        assert_eq!(
            referenced_secrets(&h, &repo),
            vec!["pw".to_string(), "s3-web-1".into(), "ssh".into()]
        );
        let mut s = secrets();
        s.insert(
            "s3-web-1".into(),
            secret(&[("AWS_ACCESS_KEY_ID", "A1"), ("AWS_SECRET_ACCESS_KEY", "S1")]),
        );
        let c = credentials(&repo, &h, &s).unwrap();
        assert_eq!(c.aws.unwrap().access_key_id.expose(), b"A1");
        assert_eq!(
            referenced_secrets(&h, &s3_repo()),
            vec!["pw".to_string(), "s3".into(), "ssh".into()]
        );
    }

    #[test]
    fn selectors() {
        let web = host("web-1", &[("role", "web"), ("env", "prod")]);
        let all = LabelSelector::default();
        assert!(selects(&all, &web));
        let by_label = LabelSelector {
            match_labels: Some([("role".to_string(), "web".to_string())].into()),
            ..LabelSelector::default()
        };
        assert!(selects(&by_label, &web));
        assert!(!selects(&by_label, &host("db-1", &[("role", "db")])));
        let expr = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
            ..LabelSelector::default()
        };
        assert!(!selects(&expr, &web));
        let broken = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Sideways".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        assert!(
            !selects(&broken, &web),
            "an invalid selector selects nothing"
        );
    }

    #[test]
    fn policy_spec_for_a_host() {
        let p = policy("*-*-* 02:00:00");
        let spec = backup_policy_spec(&p, &host("web-1", &[]), &s3_repo()).unwrap();
        assert_eq!(spec.name, "nightly");
        assert_eq!(spec.kind, PolicyKind::Backup);
        assert_eq!(spec.repository, "s3:http://minio:9000/b/ns/hosts/web-1");
        assert_eq!(spec.host_tag, "web-1");
        assert_eq!(spec.on_calendar, "*-*-* 02:00:00");
        assert_eq!(spec.randomized_delay_sec, 2700);
        assert!(spec.persistent);
        assert_eq!(spec.nice, Some(10));
        assert_eq!(
            spec.io_scheduling_class,
            Some(IoSchedulingClass::BestEffort)
        );
        assert_eq!(spec.io_scheduling_priority, Some(7));
        assert_eq!(
            spec.stdin_sources[0].command,
            vec!["runuser", "-u", "postgres", "--", "pg_dumpall"]
        );
        assert!(spec.extra_args.is_empty());
        // The default lock wait (1h) travels into the job config.
        assert_eq!(spec.lock_wait_sec, 3600);
        let mut short = p.clone();
        short.spec.schedule.lock_wait = Some("10m".into());
        let spec = backup_policy_spec(&short, &host("web-1", &[]), &s3_repo()).unwrap();
        assert_eq!(spec.lock_wait_sec, 600);
        let cfg: fleetsnap_contract::JobConfig =
            serde_json::from_slice(&crate::host::render::config_json(
                &crate::host::layout::JobId::new(PolicyKind::Backup, "nightly").unwrap(),
                &spec,
                &[],
                crate::host::profile::CredentialMode::Encrypted,
            ))
            .unwrap();
        assert_eq!(cfg.lock_wait_seconds, 600);

        let mut named = host("web-1", &[]);
        named.spec.hostname = Some("web-1.prod.example".into());
        let spec = backup_policy_spec(&p, &named, &s3_repo()).unwrap();
        assert_eq!(spec.host_tag, "web-1.prod.example");
        assert!(spec.repository.ends_with("/hosts/web-1.prod.example"));
    }

    /// Every resource control the CRD accepts reaches the unit (issue 12: `cpuQuota` was
    /// accepted, documented and dropped).
    #[test]
    fn resource_controls_reach_the_service_unit() {
        let mut p = policy("*-*-* 02:00:00");
        p.spec.resources.cpu_quota = Some("50%".into());
        p.spec.resources.nice = 5;
        let job = crate::host::layout::JobId::new(PolicyKind::Backup, "nightly").unwrap();
        let unit_of = |p: &BackupPolicy| {
            let spec = backup_policy_spec(p, &host("web-1", &[]), &s3_repo()).unwrap();
            String::from_utf8(crate::host::render::service_unit(
                &job,
                &spec,
                &[],
                BOOKWORM,
            ))
            .unwrap()
        };
        let unit = unit_of(&p);
        for line in [
            "Nice=5",
            "IOSchedulingClass=best-effort",
            "IOSchedulingPriority=7",
            "CPUQuota=50%",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "{line} missing from the unit:\n{unit}"
            );
        }
        p.spec.resources.cpu_quota = None;
        let unit = unit_of(&p);
        assert!(!unit.contains("CPUQuota"), "no quota unless asked for");
    }

    #[test]
    fn bad_schedules_are_invalid_schedule() {
        for cal in ["0 2 * * *", "daily\nExecStart=/bin/sh", " "] {
            let e = backup_policy_spec(&policy(cal), &host("h", &[]), &s3_repo()).unwrap_err();
            assert_eq!(e.reason, reasons::INVALID_SCHEDULE, "{cal:?}");
        }
    }

    #[test]
    fn expected_intervals() {
        let s = |e: &str| expected_interval(e).as_secs();
        assert_eq!(s("daily"), 86_400);
        assert_eq!(s("hourly"), 3600);
        assert_eq!(s("weekly"), 7 * 86_400);
        assert_eq!(s("*-*-* 02:00:00"), 86_400);
        assert_eq!(s("*-*-* *:*:00/20"), 20);
        assert_eq!(s("*-*-* *:00/15:00"), 900);
        assert_eq!(s("*-*-* *:00:00"), 3600);
        assert_eq!(s("*:0/5"), 300);
        assert_eq!(s("Sun *-*-* 04:30:00"), 7 * 86_400);
        assert_eq!(s("Mon..Fri *-*-* 04:30:00"), 7 * 86_400 / 5);
        assert_eq!(s("*-*-01 03:00:00"), 30 * 86_400);
        assert_eq!(s("*-*-* 00,12:00:00"), 12 * 3600);
        assert_eq!(s("something odd"), 86_400);
        assert_eq!(s("Someday *-*-* 04:30:00"), 86_400);
    }
}
