//! The few storage calls the operator makes outside forget/prune: reading an S3 bucket's
//! versioning and Object Lock configuration (does `appendOnly` hold?) and listing a
//! repository's object versions (was a file overwritten?). Always with the operator's own
//! credentials (maintenance keys, else the repository's shared keys), never a host's, and
//! always on a dedicated OS thread with a deadline: the S3 backend builds its own runtime
//! and blocks, which must not happen on the operator's runtime.

use std::time::Duration;

use fleetsnap::backend::s3::{BucketProtection, ObjectVersion};
use fleetsnap::backend::{Location, S3Backend, S3Options};
use fleetsnap_crds::BackupRepository;

use super::derive::{self, Secrets};
use crate::host::model::{AwsCredentials, SecretBytes};

/// Longest a probe or a listing may take before the reconcile goes on without it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Where and as whom the operator reaches one S3 location. Debug is safe: keys redacted.
#[derive(Clone, Debug)]
pub struct S3Access {
    /// `s3:<endpoint>/<bucket>[/<prefix>]`, with `FLEETSNAP_MAINTENANCE_S3_ENDPOINT` applied.
    pub url: String,
    pub region: String,
    pub path_style: bool,
    pub keys: Option<AwsCredentials>,
}

/// The identity the operator uses for a repository's storage: the maintenance keys when the
/// spec names them, else its shared keys. `None` for non-S3 repositories, or when the only
/// keys are per host (the operator holds no identity of its own then). Errors name the
/// Secret and key, never a value.
pub fn access(
    repo: &BackupRepository,
    path: Option<&str>,
    secrets: &Secrets,
) -> Option<Result<S3Access, String>> {
    let s3 = repo.spec.s3.as_ref()?;
    let secret = repo
        .spec
        .maintenance_credentials_secret_ref
        .as_ref()
        .or(s3.credentials_secret_ref.as_ref())?;
    let keys = match derive::storage_keys(repo, &secret.name, secrets) {
        Ok(k) => k.aws,
        Err(e) => return Some(Err(e.message)),
    };
    let endpoint = s3.endpoint.trim_end_matches('/');
    let mut url = format!("s3:{endpoint}/{}", s3.bucket);
    if let Some(p) = path {
        url.push('/');
        url.push_str(p);
    }
    let override_ = std::env::var("FLEETSNAP_MAINTENANCE_S3_ENDPOINT").ok();
    let url = super::maintenance::operator_repository_url(&url, endpoint, override_.as_deref());
    Some(Ok(S3Access {
        url,
        region: s3.region.clone(),
        path_style: s3.path_style,
        keys,
    }))
}

fn open(access: &S3Access) -> Result<S3Backend, String> {
    let loc = match fleetsnap::backend::url::parse(&access.url).map_err(|e| e.to_string())? {
        Location::S3(loc) => loc,
        _ => return Err(format!("{} is not an S3 location", access.url)),
    };
    let text = |b: &SecretBytes| String::from_utf8_lossy(b.expose()).trim().to_string();
    S3Backend::open(
        loc,
        S3Options {
            // As maintenance does: unset means path style for custom endpoints.
            path_style: access.path_style.then_some(true),
            region: Some(access.region.clone()),
            static_credentials: access
                .keys
                .as_ref()
                .map(|k| (text(&k.access_key_id), text(&k.secret_access_key))),
            session_token: access
                .keys
                .as_ref()
                .and_then(|k| k.session_token.as_ref())
                .map(text),
            max_attempts: Some(2),
            ..S3Options::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// Runs blocking `f` on its own OS thread and waits at most [`DEADLINE`] for it. A thread
/// that overruns is left to finish on its own (the S3 client's own timeouts end it).
pub async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread for the storage call: {e}"))?;
    match tokio::time::timeout(DEADLINE, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the storage call panicked".into()),
        Err(_) => Err(format!("no answer from the storage within {DEADLINE:?}")),
    }
}

/// The bucket's versioning and Object Lock configuration.
pub async fn bucket_protection(access: S3Access) -> Result<BucketProtection, String> {
    on_thread("fleetsnap-probe", move || {
        open(&access)?
            .bucket_protection()
            .map_err(|e| e.to_string())
    })
    .await
}

/// Every object version below one host's repository.
pub async fn object_versions(access: S3Access) -> Result<Vec<ObjectVersion>, String> {
    on_thread("fleetsnap-versions", move || {
        open(&access)?.object_versions().map_err(|e| e.to_string())
    })
    .await
}
