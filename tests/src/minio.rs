//! MinIO identities for the suites: a per-host user whose policy is the one the docs
//! recommend for append-only hosts (read, write and list its own prefix; delete nothing but
//! its own lock files), and the bucket setups that decide what such a user can destroy.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::TestEnv;

/// The documented per-host policy: get/put/list on `prefix` in `bucket`, delete only
/// `prefix/locks/*`.
pub fn host_policy(bucket: &str, prefix: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}/*")]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [format!("arn:aws:s3:::{bucket}")],
             "Condition": {"StringLike": {"s3:prefix": [format!("{prefix}/*"), prefix.to_string()]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration"],
             "Resource": [format!("arn:aws:s3:::{bucket}")]},
            {"Effect": "Allow", "Action": ["s3:DeleteObject"],
             "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}/locks/*")]}
        ]
    })
}

/// Creates (or replaces) MinIO user `keys.0` with secret `keys.1` and attaches `policy` to
/// it, under a policy of the same name. `dir` holds the policy file.
pub fn add_user(env: &TestEnv, dir: &Path, keys: &(String, String), policy: &Value) -> Result<()> {
    let file = dir.join(format!("policy-{}.json", keys.0));
    std::fs::write(&file, policy.to_string())?;
    env.mc(&["admin", "user", "add", "testenv", &keys.0, &keys.1])?;
    env.mc(&[
        "admin",
        "policy",
        "create",
        "testenv",
        &keys.0,
        file.to_str().expect("utf-8 temp path"),
    ])?;
    env.mc(&[
        "admin", "policy", "attach", "testenv", &keys.0, "--user", &keys.0,
    ])
    .or_else(|e| {
        // Attaching a policy that is already attached is an error in mc; that is fine.
        if format!("{e:#}").contains("already") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

/// How a bucket protects old data, which is what decides whether `appendOnly` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// No versioning: an overwrite destroys the original.
    Plain,
    /// Versioning only: an overwrite leaves the original as a noncurrent version.
    Versioned,
    /// Object Lock with a default GOVERNANCE retention of one day (versioning implied).
    Locked,
}

/// Makes `bucket` with the given protection (fails if it exists).
pub fn make_bucket(env: &TestEnv, bucket: &str, kind: Bucket) -> Result<()> {
    let target = format!("testenv/{bucket}");
    match kind {
        Bucket::Plain => {
            env.mc(&["mb", &target])?;
        }
        Bucket::Versioned => {
            env.mc(&["mb", &target])?;
            env.mc(&["version", "enable", &target])?;
        }
        Bucket::Locked => {
            env.mc(&["mb", "--with-lock", &target])?;
            env.mc(&["retention", "set", "--default", "GOVERNANCE", "1d", &target])?;
        }
    }
    Ok(())
}
