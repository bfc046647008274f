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
    SecretBytes, StdinSource,
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
    if let Some(s3) = &repo.spec.s3 {
        if let Some(r) = &s3.credentials_secret_ref {
            names.push(r.name.clone());
        }
        if let Some(per_host) = &s3.per_host_credentials
            && let Ok(name) = expand_secret_name_template(
                &per_host.secret_name_template,
                &host.name_any(),
                host.effective_hostname(),
            )
        {
            names.push(name);
        }
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

/// Secrets delivered to the host: repository password, plus static S3 keys when the
/// repository has them (shared or per host).
pub fn credentials(
    repo: &BackupRepository,
    host: &Host,
    secrets: &Secrets,
) -> Result<Credentials, DeriveError> {
    let repository_password = secret_value(secrets, &repo.spec.password_secret_ref)?;
    let aws_secret = match &repo.spec.s3 {
        Some(s3) => match (&s3.credentials_secret_ref, &s3.per_host_credentials) {
            (Some(r), _) => Some(r.name.clone()),
            (None, Some(per_host)) => Some(
                expand_secret_name_template(
                    &per_host.secret_name_template,
                    &host.name_any(),
                    host.effective_hostname(),
                )
                .map_err(|e| DeriveError::new(reasons::REPOSITORY_ERROR, e.to_string()))?,
            ),
            (None, None) => None,
        },
        None => None,
    };
    let aws = match aws_secret {
        Some(name) => {
            let key = |k: &str| SecretKeyRef {
                name: name.clone(),
                key: k.to_string(),
            };
            Some(AwsCredentials {
                access_key_id: secret_value(secrets, &key("AWS_ACCESS_KEY_ID"))?,
                secret_access_key: secret_value(secrets, &key("AWS_SECRET_ACCESS_KEY"))?,
            })
        }
        None => None,
    };
    Ok(Credentials {
        repository_password,
        aws,
    })
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
        extra_args: Vec::new(),
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
        return step.parse::<u64>().ok().filter(|s| *s > 0).map(|s| s * unit);
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

fn calendar_interval(expr: &str) -> Option<u64> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let (weekday, rest) = match parts.first() {
        Some(first) if first.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) => {
            (Some(*first), &parts[1..])
        }
        _ => (None, &parts[..]),
    };
    let (date, time) = match rest {
        [d, t] if d.contains('-') => (Some(*d), *t),
        [t] if t.contains(':') => (None, *t),
        [d] => (Some(*d), "00:00:00"),
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
