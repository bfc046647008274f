//! Temporary S3 credentials scoped by an inline session policy, minted with STS
//! `AssumeRole` (MinIO and other S3 servers that implement it at their own endpoint).
//!
//! The operator uses them where a host must read storage it may not write: a cross-host
//! Restore reads the source host's repository with a credential that can only `GetObject`
//! and list below that host's prefix, and that expires. The pure parts (the policy, the
//! lifetime) are here next to the one network call, which keeps every secret in
//! [`SecretBytes`] and every error free of key material.

use std::time::Duration;

use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_http_client::tls;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::host::model::SecretBytes;

/// STS refuses sessions shorter than this (AWS and MinIO alike).
pub const MIN_SESSION: Duration = Duration::from_secs(900);
/// The longest session asked for: what AWS allows a role at most.
pub const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);
/// Added to the work's own time limit, for connecting and the executor's start.
const SESSION_MARGIN: Duration = Duration::from_secs(120);

/// A temporary credential: all three parts are secret.
#[derive(Clone, Debug)]
pub struct TemporaryCredentials {
    pub access_key_id: SecretBytes,
    pub secret_access_key: SecretBytes,
    pub session_token: SecretBytes,
    /// When the storage stops accepting it, as STS reported.
    pub expiration: Option<DateTime<Utc>>,
}

/// Read-only access to one repository below `prefix` in `bucket`: get its objects and list
/// its keys, nothing else (no put, no delete, no other prefix). The storage intersects this
/// with the calling identity's own policy, so the result is never more than both allow.
pub fn read_only_policy(bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}/*")]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [format!("arn:aws:s3:::{bucket}")],
             "Condition": {"StringLike": {"s3:prefix": [format!("{prefix}/*"), prefix.to_string()]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"],
             "Resource": [format!("arn:aws:s3:::{bucket}")]}
        ]
    })
    .to_string()
}

/// What a host's own minted key may do (`s3.operatorSts`): read and add files below its
/// own `prefix`, list it, and delete nothing but its own lock files (restic removes its
/// lock when a run ends). No overwrite protection comes from this policy alone: S3 lets a
/// PutObject replace an object, so the bucket's versioning or Object Lock keeps the old
/// version, as for any append-only host key.
pub fn host_policy(bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}/*")]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [format!("arn:aws:s3:::{bucket}")],
             "Condition": {"StringLike": {"s3:prefix": [format!("{prefix}/*"), prefix.to_string()]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"],
             "Resource": [format!("arn:aws:s3:::{bucket}")]},
            {"Effect": "Allow", "Action": ["s3:DeleteObject"],
             "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}/locks/*")]}
        ]
    })
    .to_string()
}

/// How long to ask for: the longest the work may take plus a margin, within what STS
/// grants. The work itself is cut off at `work_limit`, so the credential outlives it by no
/// more than the margin (or up to STS's 15-minute minimum).
pub fn session_duration(work_limit: Duration) -> Duration {
    (work_limit + SESSION_MARGIN).clamp(MIN_SESSION, MAX_SESSION)
}

/// One `AssumeRole` call.
pub struct AssumeRole<'a> {
    /// The STS endpoint (for MinIO: the S3 endpoint itself).
    pub endpoint: &'a str,
    pub region: &'a str,
    /// The identity the session is derived from.
    pub access_key_id: &'a SecretBytes,
    pub secret_access_key: &'a SecretBytes,
    /// Inline session policy ([`read_only_policy`], [`host_policy`]).
    pub policy: String,
    /// The role to assume; MinIO needs none.
    pub role_arn: Option<String>,
    pub duration: Duration,
    /// Shows in the storage's audit log.
    pub session_name: String,
}

fn text(b: &SecretBytes) -> String {
    String::from_utf8_lossy(b.expose()).trim().to_string()
}

/// A session name STS accepts (`[A-Za-z0-9=,.@-]`, at most 64), shown in the audit log.
pub fn session_name(prefix: &str, who: &str) -> String {
    format!("{prefix}{who}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "=,.@-".contains(*c))
        .take(64)
        .collect()
}

/// How long one `AssumeRole` may take before the caller gives up on it.
pub const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// [`assume_role`] within [`CALL_DEADLINE`].
pub async fn assume_role_within(req: AssumeRole<'_>) -> Result<TemporaryCredentials, String> {
    let endpoint = req.endpoint.to_string();
    match tokio::time::timeout(CALL_DEADLINE, assume_role(req)).await {
        Err(_) => Err(format!(
            "STS AssumeRole at {endpoint} did not answer within {CALL_DEADLINE:?}"
        )),
        Ok(r) => r,
    }
}

/// Calls STS. Errors carry the service's error code and message, never a key.
pub async fn assume_role(req: AssumeRole<'_>) -> Result<TemporaryCredentials, String> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(req.region.to_string()))
        .credentials_provider(Credentials::new(
            text(req.access_key_id),
            text(req.secret_access_key),
            None,
            None,
            "fleetsnap-maintenance",
        ))
        .endpoint_url(req.endpoint.trim_end_matches('/'))
        .http_client(http)
        .build();
    let client = aws_sdk_sts::Client::from_conf(conf);
    let seconds = i32::try_from(req.duration.as_secs()).unwrap_or(i32::MAX);
    let out = client
        .assume_role()
        .set_role_arn(req.role_arn)
        .role_session_name(req.session_name)
        .policy(req.policy)
        .duration_seconds(seconds)
        .send()
        .await
        .map_err(|e| match (e.code(), e.message()) {
            (Some(code), Some(msg)) => format!("STS AssumeRole at {}: {code}: {msg}", req.endpoint),
            (Some(code), None) => format!("STS AssumeRole at {}: {code}", req.endpoint),
            _ => format!(
                "STS AssumeRole at {}: {}",
                req.endpoint,
                DisplayErrorContext(&e)
            ),
        })?;
    let c = out.credentials.ok_or_else(|| {
        format!(
            "STS AssumeRole at {}: no credentials returned",
            req.endpoint
        )
    })?;
    let expiration = DateTime::<Utc>::from_timestamp(c.expiration.secs(), 0);
    Ok(TemporaryCredentials {
        access_key_id: SecretBytes::new(c.access_key_id.into_bytes()),
        secret_access_key: SecretBytes::new(c.secret_access_key.into_bytes()),
        session_token: SecretBytes::new(c.session_token.into_bytes()),
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn read_only_policy_allows_get_and_list_of_one_prefix_only() {
        let p: Value = serde_json::from_str(&read_only_policy("b1", "hosts/db1/")).unwrap();
        let st = p["Statement"].as_array().unwrap();
        let actions: Vec<&str> = st
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            actions,
            ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]
        );
        assert!(st.iter().all(|s| s["Effect"] == "Allow"));
        assert_eq!(st[0]["Resource"][0], "arn:aws:s3:::b1/hosts/db1/*");
        assert_eq!(
            st[1]["Condition"]["StringLike"]["s3:prefix"],
            serde_json::json!(["hosts/db1/*", "hosts/db1"])
        );
        // No write or delete of any kind, and nothing outside the prefix.
        let text = read_only_policy("b1", "hosts/db1");
        for word in ["Put", "Delete", "s3:*", "Bypass", "Abort"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
        assert!(!text.contains("hosts/db2"));
        // STS limits inline policies to 2048 characters.
        assert!(read_only_policy(&"b".repeat(63), &"p".repeat(400)).len() < 2048);
    }

    #[test]
    fn host_policy_adds_to_one_prefix_and_deletes_only_its_locks() {
        let p: Value = serde_json::from_str(&host_policy("b1", "/hosts/db1/")).unwrap();
        let st = p["Statement"].as_array().unwrap();
        assert!(st.iter().all(|s| s["Effect"] == "Allow"));
        let delete: Vec<&Value> = st
            .iter()
            .filter(|s| s["Action"].to_string().contains("Delete"))
            .collect();
        assert_eq!(delete.len(), 1);
        assert_eq!(
            delete[0]["Resource"],
            serde_json::json!(["arn:aws:s3:::b1/hosts/db1/locks/*"])
        );
        let text = host_policy("b1", "hosts/db1");
        for word in ["s3:*", "Bypass", "PutBucket", "DeleteBucket", "hosts/db2"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
        // STS limits inline policies to 2048 characters; host prefixes are short (a path
        // template and a hostname), so a 63-character bucket and a 200-character prefix fit.
        assert!(host_policy(&"b".repeat(63), &"p".repeat(200)).len() < 2048);
    }

    #[test]
    fn sessions_outlive_the_work_by_a_margin_within_sts_limits() {
        assert_eq!(session_duration(Duration::from_secs(120)), MIN_SESSION);
        assert_eq!(
            session_duration(Duration::from_secs(600)),
            Duration::from_secs(900)
        );
        assert_eq!(
            session_duration(Duration::from_secs(1800)),
            Duration::from_secs(1920)
        );
        assert_eq!(session_duration(Duration::from_secs(86_400)), MAX_SESSION);
    }

    #[test]
    fn temporary_credentials_never_print() {
        let c = TemporaryCredentials {
            access_key_id: SecretBytes::new("ASIAEXAMPLE"),
            secret_access_key: SecretBytes::new("sekrit"),
            session_token: SecretBytes::new("tok3n"),
            expiration: None,
        };
        let s = format!("{c:?}");
        for v in ["ASIAEXAMPLE", "sekrit", "tok3n"] {
            assert!(!s.contains(v), "{s}");
        }
    }
}
