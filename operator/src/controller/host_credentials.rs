//! The storage keys a host job is given: what the repository's Secrets say
//! ([`derive::credentials`]), or, for `s3.operatorSts`, a key the operator mints for that
//! host alone and replaces before it runs out.
//!
//! The rule for a minted key, up front: **every scheduled run starts with at least half a
//! lifetime left.** Once the next run is known, a key is replaced exactly when a fresh one
//! would cover the run and the current one would not, which is half a lifetime before the
//! run: one key per run, and between runs the host may hold an expired one. While the next
//! run is unknown (first pass), a key is replaced once half of it is used up. The reconcile
//! comes back at the moment a replacement is due ([`refresh_at`]). Both are pure decisions,
//! apart from the one network call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetsnap_crds::common::reasons;
use fleetsnap_crds::{BackupRepository, Host};
use kube::ResourceExt;
use tracing::info;

use super::Context;
use super::derive::{self, Secrets};
use super::error::{Failure, Retry};
use super::sts::{self, TemporaryCredentials};
use crate::host::model::{AwsCredentials, Credentials};

/// Condition reason when the operator cannot mint a host's key.
pub const STS_FAILED: &str = "HostCredentialFailed";

/// Minted keys by `<namespace>/<repository>/<host>`, kept only in memory: after a restart
/// each host gets a new key on its first pass. An entry lives until it is replaced or the
/// operator restarts (a few hundred bytes per host).
#[derive(Default)]
pub struct MintedKeys(Mutex<HashMap<String, TemporaryCredentials>>);

impl MintedKeys {
    fn get(&self, key: &str) -> Option<TemporaryCredentials> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: String, c: TemporaryCredentials) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, c);
    }
}

/// Credentials for one host job, and when the reconcile must come back to replace them.
pub struct Resolved {
    pub credentials: Credentials,
    pub refresh_at: Option<DateTime<Utc>>,
}

/// Whether a minted key that expires at `expiry` may still be handed out at `now`, for a
/// host whose next run is `next_run` (as last observed).
pub fn keep(
    expiry: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lifetime: Duration,
    next_run: Option<DateTime<Utc>>,
) -> bool {
    let Some(expiry) = expiry else {
        return false;
    };
    let half = half(lifetime);
    match next_run.filter(|n| *n > now) {
        // A fresh key would cover the next run: this one must, too.
        Some(n) if n + half <= now + full(lifetime) => expiry >= n + half,
        // The next run is out of reach of any key minted now: minting would only put a
        // valid key on the host for longer. It is replaced when a fresh one covers the run.
        Some(_) => true,
        // Next run unknown (first pass) or just past and not observed since.
        None => expiry >= now + half,
    }
}

/// When [`keep`] turns false for this key, for the reconcile to come back then; `None`
/// when the key covers the next run (the pass after that run decides again).
pub fn refresh_at(
    expiry: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lifetime: Duration,
    next_run: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let expiry = expiry?;
    let half = half(lifetime);
    match next_run.filter(|n| *n > now) {
        Some(n) if expiry >= n + half => None,
        Some(n) => Some(n + half - full(lifetime)),
        None => Some(expiry - half),
    }
}

fn half(lifetime: Duration) -> chrono::Duration {
    chrono::Duration::from_std(lifetime / 2).unwrap_or(chrono::Duration::MAX)
}

fn full(lifetime: Duration) -> chrono::Duration {
    chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX)
}

/// The key lifetime of `s3.operatorSts`, or `None` when the repository does not mint.
pub fn lifetime(repo: &BackupRepository) -> Option<Result<Duration, String>> {
    let sts = repo.spec.s3.as_ref()?.operator_sts.as_ref()?;
    Some(
        fleetsnap_crds::common::parse_duration(&sts.duration)
            .map_err(|e| format!("operatorSts.duration: {e}"))
            .map(|d| d.clamp(sts::MIN_SESSION, sts::MAX_SESSION)),
    )
}

/// The credentials of one host job. `next_run` is the job's next run as last observed.
pub async fn resolve(
    ctx: &Context,
    repo: &BackupRepository,
    host: &Host,
    secrets: &Secrets,
    next_run: Option<DateTime<Utc>>,
) -> Result<Resolved, Failure> {
    let mut credentials =
        derive::credentials(repo, host, secrets).map_err(|e| Failure::from_derive(&e))?;
    let Some(lifetime) = lifetime(repo) else {
        return Ok(Resolved {
            credentials,
            refresh_at: None,
        });
    };
    let invalid = |message: String| Failure {
        reason: super::error::INVALID_SPEC,
        message,
        retry: Retry::OnChange,
    };
    let lifetime = lifetime.map_err(invalid)?;
    let ns = repo.namespace().unwrap_or_default();
    let cache_key = format!("{ns}/{}/{}", repo.name_any(), host.name_any());
    let now = Utc::now();
    let minted = match ctx.minted.get(&cache_key) {
        Some(c) if keep(c.expiration, now, lifetime, next_run) => c,
        _ => {
            let c = mint(repo, host, secrets, lifetime).await?;
            ctx.minted.put(cache_key, c.clone());
            c
        }
    };
    credentials.expires = minted.expiration;
    credentials.aws = Some(AwsCredentials {
        access_key_id: minted.access_key_id,
        secret_access_key: minted.secret_access_key,
        session_token: Some(minted.session_token),
    });
    Ok(Resolved {
        credentials,
        refresh_at: refresh_at(minted.expiration, now, lifetime, next_run),
    })
}

/// One `AssumeRole` with the maintenance keys, scoped to the host's prefix.
async fn mint(
    repo: &BackupRepository,
    host: &Host,
    secrets: &Secrets,
    lifetime: Duration,
) -> Result<TemporaryCredentials, Failure> {
    let failed = |message: String| Failure {
        reason: STS_FAILED,
        message,
        retry: Retry::Backoff,
    };
    let s3 = repo.spec.s3.as_ref().expect("operatorSts is an s3 field");
    let sts_spec = s3.operator_sts.as_ref().expect("checked by lifetime()");
    let secret = repo
        .spec
        .maintenance_credentials_secret_ref
        .as_ref()
        .ok_or_else(|| Failure {
            reason: super::error::INVALID_SPEC,
            message: "s3.operatorSts needs maintenanceCredentialsSecretRef".into(),
            retry: Retry::OnChange,
        })?;
    let keys = derive::storage_keys(repo, &secret.name, secrets)
        .map_err(|e| Failure::from_derive(&e))?
        .aws
        .ok_or_else(|| failed("the maintenance Secret holds no AWS keys".into()))?;
    let ns = repo.namespace().unwrap_or_default();
    let prefix = repo
        .spec
        .host_path(host.effective_hostname(), &ns)
        .map_err(|e| Failure {
            reason: reasons::REPOSITORY_ERROR,
            message: e.to_string(),
            retry: Retry::OnChange,
        })?;
    let override_ = std::env::var("FLEETSNAP_MAINTENANCE_S3_ENDPOINT").ok();
    let endpoint = super::restore::sts_endpoint(&s3.endpoint, override_.as_deref());
    let c = sts::assume_role_within(sts::AssumeRole {
        endpoint: &endpoint,
        region: &s3.region,
        access_key_id: &keys.access_key_id,
        secret_access_key: &keys.secret_access_key,
        policy: sts::host_policy(&s3.bucket, &prefix),
        role_arn: sts_spec.role_arn.clone(),
        duration: lifetime,
        session_name: sts::session_name("fleetsnap-host-", &host.name_any()),
    })
    .await
    .map_err(|e| {
        failed(format!(
            "cannot mint the host's key with the maintenance credentials (Secret {:?}): {e}",
            secret.name
        ))
    })?;
    info!(
        host = %host.name_any(),
        prefix,
        lifetime_seconds = lifetime.as_secs(),
        expires = ?c.expiration,
        "host key minted"
    );
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn without_a_known_next_run_a_key_is_kept_for_half_its_life() {
        let minted = t("2026-12-02T10:00:00Z");
        let expiry = Some(minted + chrono::Duration::hours(1));
        assert!(keep(expiry, minted, HOUR, None));
        assert!(keep(expiry, t("2026-12-02T10:29:59Z"), HOUR, None));
        assert!(!keep(expiry, t("2026-12-02T10:30:01Z"), HOUR, None));
        assert!(!keep(None, minted, HOUR, None));
        assert_eq!(
            refresh_at(expiry, minted, HOUR, None),
            Some(t("2026-12-02T10:30:00Z"))
        );
        // A next run already past (not observed since) counts as unknown.
        let past = Some(t("2026-12-02T09:00:00Z"));
        assert!(keep(expiry, t("2026-12-02T10:05:00Z"), HOUR, past));
        assert!(!keep(expiry, t("2026-12-02T10:31:00Z"), HOUR, past));
    }

    #[test]
    fn a_run_never_starts_with_less_than_half_a_lifetime_left() {
        let minted = t("2026-12-02T10:00:00Z");
        let expiry = Some(minted + chrono::Duration::hours(1));
        // A run at 10:20 is covered (40 minutes left): kept, nothing to come back for.
        let soon = Some(t("2026-12-02T10:20:00Z"));
        assert!(keep(expiry, t("2026-12-02T10:05:00Z"), HOUR, soon));
        assert_eq!(refresh_at(expiry, minted, HOUR, soon), None);
        // A run at 10:45 would have 15 minutes: replace as soon as a fresh key covers it,
        // from 10:15 on; a fresh key then lasts until 11:15 and is kept.
        let next = Some(t("2026-12-02T10:45:00Z"));
        assert!(!keep(expiry, t("2026-12-02T10:15:00Z"), HOUR, next));
        assert!(keep(
            Some(t("2026-12-02T11:15:00Z")),
            t("2026-12-02T10:15:00Z"),
            HOUR,
            next
        ));
    }

    #[test]
    fn a_far_run_gets_one_key_half_a_lifetime_before_it() {
        let minted = t("2026-12-02T10:00:00Z");
        let expiry = Some(minted + chrono::Duration::hours(1));
        let tomorrow = Some(t("2026-12-03T02:00:00Z"));
        // No new key every pass, nor every hour, while no fresh key could reach the run.
        assert!(keep(expiry, t("2026-12-02T10:05:00Z"), HOUR, tomorrow));
        assert!(keep(expiry, t("2026-12-02T23:00:00Z"), HOUR, tomorrow));
        assert_eq!(
            refresh_at(expiry, t("2026-12-02T10:05:00Z"), HOUR, tomorrow),
            Some(t("2026-12-03T01:30:00Z"))
        );
        // The pass that comes back for it mints one that covers the run.
        assert!(!keep(expiry, t("2026-12-03T01:30:00Z"), HOUR, tomorrow));
        let fresh = Some(t("2026-12-03T02:30:00Z"));
        assert!(keep(fresh, t("2026-12-03T01:30:00Z"), HOUR, tomorrow));
        assert_eq!(
            refresh_at(fresh, t("2026-12-03T01:30:00Z"), HOUR, tomorrow),
            None
        );
    }
}
