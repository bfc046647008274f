//! S3 and S3-compatible object storage (AWS, MinIO, Ceph RGW, ...) through aws-sdk-s3.
//!
//! The trait is synchronous while the SDK is async, so the backend owns one multi-thread
//! tokio runtime and every call does `block_on` on it. `Runtime::block_on` takes `&self`, so
//! the engine's upload threads each drive their own request concurrently over one shared
//! connection pool. Calling into this backend from inside another tokio runtime would
//! panic; the engine is plain threads, so that does not arise.

use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled,
};
use aws_smithy_http_client::tls;
use tokio::runtime::Runtime;
use tracing::{debug, debug_span, warn};

use super::local::short_read_error;
use super::url::S3Location;
use super::{
    Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, FileType, Removal,
    check_name, is_id, object_path,
};
use crate::failpoint;

/// Objects above this size go up in parts: a failed part is retried on its own instead of
/// restarting a large pack, and parts travel in parallel.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 64 << 20;
const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Parts of one object in flight at once; several objects are already uploaded in parallel
/// by the engine, so this stays small to bound memory and connections.
const PARTS_IN_FLIGHT: usize = 4;

/// Longest one attempt of a request may take when it carries no large body (everything but
/// object and part uploads): from sending it until the response head is in. A server that
/// accepts connections but never answers (frozen, black-holed) fails this attempt instead
/// of hanging the backup, its lock and every later run.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Slowest upload still taken for progress. An upload attempt gets the base timeout plus
/// its body's size at this rate (16 MiB part: 2 min + 4 min 16 s), so a slow but working
/// link finishes a large part instead of having every attempt cut at the same point.
const MIN_UPLOAD_RATE: u64 = 64 << 10;
/// A body that moves no data for this long is abandoned (the SDK's stalled-stream
/// protection, uploads and downloads). Catches a stall in the middle of a transfer much
/// sooner than the size-scaled attempt timeout; never longer than the base timeout.
const STALL_GRACE: Duration = Duration::from_secs(20);
/// Total attempts per request, the first included (SDK standard mode: exponential backoff
/// with jitter, 200 ms doubling up to 20 s, and a retry quota shared by the client so a dead
/// endpoint is not hammered).
const DEFAULT_MAX_ATTEMPTS: u32 = 6;

/// Settings that do not belong in the URL. `from_env` reads the usual variables; tests and
/// the operator can fill fields directly.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Path-style (`host/bucket/key`) instead of virtual-hosted (`bucket.host/key`)
    /// addressing. `None`: on for custom endpoints, off for AWS.
    pub path_style: Option<bool>,
    /// Region override; otherwise AWS_REGION / AWS_DEFAULT_REGION / profile, then us-east-1.
    pub region: Option<String>,
    /// Access key and secret, bypassing the AWS credential chain.
    pub static_credentials: Option<(String, String)>,
    /// Session token that goes with `static_credentials` (keys minted by STS or a broker).
    pub session_token: Option<String>,
    /// A `credential_process` command (argv) run whenever credentials are needed; used
    /// when `static_credentials` is not set.
    pub credential_process: Option<Vec<String>>,
    pub multipart_threshold: Option<usize>,
    pub part_size: Option<usize>,
    /// Total attempts per request including the first (SDK standard retry mode).
    pub max_attempts: Option<u32>,
    /// Base per-attempt timeout ([`DEFAULT_ATTEMPT_TIMEOUT`]); uploads add time for their size.
    pub attempt_timeout: Option<Duration>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("path_style", &self.path_style)
            .field("region", &self.region)
            .field(
                "static_credentials",
                &self.static_credentials.as_ref().map(|(k, _)| (k, "***")),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field(
                "credential_process",
                &self.credential_process.as_ref().and_then(|c| c.first()),
            )
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("max_attempts", &self.max_attempts)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl S3Options {
    pub fn from_env() -> Self {
        let path_style = std::env::var("FLEETSNAP_S3_PATH_STYLE").ok().and_then(|v| {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => {
                    warn!(value = %v, "ignoring FLEETSNAP_S3_PATH_STYLE: not a boolean");
                    None
                }
            }
        });
        // Seconds; for slow or far-away endpoints, and for tests that freeze a server.
        let attempt_timeout =
            env_number("FLEETSNAP_S3_TIMEOUT", 1..=3600).map(|s| Duration::from_secs(s.into()));
        let max_attempts = env_number("FLEETSNAP_S3_MAX_ATTEMPTS", 1..=20);
        S3Options {
            path_style,
            attempt_timeout,
            max_attempts,
            ..Default::default()
        }
    }
}

/// A whole number from the environment within `range`; anything else is ignored with a
/// warning that names the variable, and the default applies.
fn env_number(var: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    let v = std::env::var(var).ok()?;
    match v.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            warn!(value = %v, "ignoring {var}: not a whole number in {}..={}",
                  range.start(), range.end());
            None
        }
    }
}

/// Attempt timeout for an upload of `len` bytes: the base plus the body at
/// [`MIN_UPLOAD_RATE`].
fn upload_attempt_timeout(base: Duration, len: u64) -> Duration {
    base + Duration::from_secs(len.div_ceil(MIN_UPLOAD_RATE))
}

/// Bound on a whole upload of `len` bytes, retries and backoff included.
fn upload_operation_timeout(base: Duration, attempts: u32, len: u64) -> Duration {
    base * attempts.max(1) + Duration::from_secs(len.div_ceil(MIN_UPLOAD_RATE))
}

pub struct S3Backend {
    rt: Runtime,
    client: Client,
    loc: S3Location,
    multipart_threshold: usize,
    part_size: usize,
    region: String,
    /// Base per-attempt timeout; uploads get more (see [`S3Backend::upload_timeouts`]).
    attempt_timeout: Duration,
    max_attempts: u32,
    /// How often a download whose body broke off is started again.
    body_attempts: u32,
    /// How `remove_permanently` deletes here; found out on first use.
    delete_mode: Mutex<Option<DeleteMode>>,
}

/// How [`Backend::remove_permanently`] deletes on one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteMode {
    /// A plain DELETE, as restic does: unversioned buckets; plain versioned buckets, where it
    /// leaves a delete marker and the bucket's lifecycle rules reclaim old versions; and
    /// identities that may not see the bucket's lock configuration or object versions.
    Plain,
    /// Object Lock bucket: every version of the file is deleted, because nothing else ever
    /// will (lifecycle rules are optional there). Versions still under retention stay,
    /// hidden behind a delete marker.
    AllVersions,
}

/// One entry of a key's version listing (a stored version or a delete marker).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VersionEntry {
    id: String,
    delete_marker: bool,
    latest: bool,
}

/// How to delete every version of one key, decided from its listing.
#[derive(Debug, PartialEq, Eq)]
struct PurgeSteps {
    /// Hide the file before deleting versions: deleting the newest of several stored
    /// versions would make the next older one the file's content again, for everyone reading
    /// the repository meanwhile and for good if the older one is locked.
    marker_first: bool,
    /// Stored versions, newest first.
    versions: Vec<String>,
    /// Existing delete markers; removed too once no version is left.
    markers: Vec<String>,
    /// The newest entry is a delete marker: the repository already sees no file.
    hidden: bool,
}

impl PurgeSteps {
    fn new(entries: &[VersionEntry]) -> Self {
        let versions: Vec<String> = entries
            .iter()
            .filter(|e| !e.delete_marker)
            .map(|e| e.id.clone())
            .collect();
        let hidden = entries.iter().any(|e| e.delete_marker && e.latest);
        PurgeSteps {
            marker_first: !hidden && versions.len() > 1,
            markers: entries
                .iter()
                .filter(|e| e.delete_marker)
                .map(|e| e.id.clone())
                .collect(),
            versions,
            hidden,
        }
    }

    /// After the deletes, `retained` versions are left: does a delete marker still have to
    /// hide them? A retained version that was the newest would otherwise stay visible.
    fn marker_after(&self, retained: usize) -> bool {
        retained > 0 && !self.hidden && !self.marker_first
    }
}

/// Whether the bucket keeps old versions of an object, from `GetBucketVersioning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: an overwrite or delete destroys the original.
    Off,
    /// Enabled: an overwrite leaves the original as a noncurrent version.
    Enabled,
    /// Was enabled, now suspended: new writes replace the `null` version in place.
    Suspended,
}

/// What the bucket's own configuration does to an overwrite, as seen by this identity. A
/// plain value: the decision what it means for `appendOnly` is the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketProtection {
    pub versioning: Versioning,
    /// Object Lock is enabled on the bucket (which implies versioning).
    pub object_lock: bool,
}

/// One stored version or delete marker below the repository, from `ListObjectVersions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Key relative to the repository root, e.g. `config` or `snapshots/<id>`.
    pub key: String,
    pub version_id: String,
    pub etag: Option<String>,
    pub size: u64,
    pub delete_marker: bool,
    pub latest: bool,
    pub modified: Option<std::time::SystemTime>,
}

/// A repository file whose current content is not the content first stored under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwritten {
    /// Key relative to the repository root.
    pub key: String,
    /// The oldest stored version: what to copy back to recover.
    pub original_version: String,
    /// Stored versions of the key (delete markers not counted).
    pub versions: usize,
}

/// Repository files that were overwritten with other content, from a version listing.
///
/// Restic never rewrites a file: data, index, snapshot and key files are named by the hash
/// of their content, and `config` is written once. So a key whose newest stored version
/// differs (ETag or size) from its oldest was overwritten. Not counted: lock files (written
/// and deleted all the time), keys whose newest entry is a delete marker (our own prune
/// hides versions Object Lock still holds that way), and identical re-uploads (an S3 retry,
/// a backup that wrote the same blob again). A file copied back to its original content no
/// longer counts, so a recovery clears the report. Sorted by key.
pub fn overwritten(versions: &[ObjectVersion]) -> Vec<Overwritten> {
    use std::collections::BTreeMap;
    let mut by_key: BTreeMap<&str, Vec<&ObjectVersion>> = BTreeMap::new();
    for v in versions {
        if v.key.starts_with("locks/") {
            continue;
        }
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    let mut out = Vec::new();
    for (key, entries) in by_key {
        if entries.iter().any(|e| e.delete_marker && e.latest) {
            continue;
        }
        let mut stored: Vec<&&ObjectVersion> =
            entries.iter().filter(|e| !e.delete_marker).collect();
        if stored.len() < 2 {
            continue;
        }
        // Oldest first; the listing's `latest` flag wins over timestamps for the newest.
        stored.sort_by_key(|e| (e.latest, e.modified));
        let (oldest, newest) = (*stored[0], *stored[stored.len() - 1]);
        let same = |a: &ObjectVersion, b: &ObjectVersion| {
            a.size == b.size && a.etag.is_some() && a.etag == b.etag
        };
        if !same(oldest, newest) {
            out.push(Overwritten {
                key: key.to_string(),
                original_version: oldest.version_id.clone(),
                versions: stored.len(),
            });
        }
    }
    out
}

impl S3Backend {
    pub fn open(loc: S3Location, opts: S3Options) -> BackendResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("fleetsnap-s3")
            .enable_all()
            .build()
            .map_err(|e| {
                BackendError::new(
                    BackendErrorKind::Other,
                    "open",
                    "s3 client",
                    loc.display(),
                    format!("cannot start the I/O runtime: {e}"),
                )
            })?;

        let fail = |what: &str, detail: String| {
            BackendError::new(BackendErrorKind::Other, "open", what, loc.display(), detail)
        };
        let trust = trust_store(loc.endpoint.as_deref()).map_err(|e| fail("CA certificates", e))?;
        let tls_context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| fail("TLS configuration", e.to_string()))?;
        // ring is already in the tree for kube's TLS; the SDK's default would add aws-lc.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls_context)
            .build_https();
        // Not the SDK's default region chain: that ends at EC2 instance metadata, which
        // means a network probe (and a delay) on every host that is not on EC2.
        let region_chain = match &opts.region {
            Some(r) => RegionProviderChain::first_try(Region::new(r.clone())),
            None => RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new()),
        }
        .or_else(ProfileFileRegionProvider::new())
        .or_else(Region::from_static("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region_chain);
        if let Some((key, secret)) = &opts.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                key.clone(),
                secret.clone(),
                opts.session_token.clone(),
                None,
                "fleetsnap-static",
            ));
        } else if let Some(command) = &opts.credential_process {
            loader = loader.credentials_provider(super::aws_credentials::CredentialProcess::new(
                command.clone(),
            ));
        }
        let shared = rt.block_on(loader.load());
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());

        let max_attempts = opts.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
        let retry = RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(20));
        let attempt_timeout = opts.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
        // No read timeout: the SDK measures it from the start of the request to the first
        // byte of the response, so it would also bound the upload of a request body and cut
        // large parts on slow links. The attempt timeout (scaled for uploads) and the
        // stalled-stream protection bound the same waits without that flaw. No operation
        // timeout either: attempts × attempt timeout plus backoff already bounds it.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10).min(attempt_timeout))
            .operation_attempt_timeout(attempt_timeout)
            .build();
        let stall = aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
            .grace_period(STALL_GRACE.min(attempt_timeout))
            .build();
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(retry)
            .timeout_config(timeouts)
            .stalled_stream_protection(stall)
            .force_path_style(opts.path_style.unwrap_or(loc.endpoint.is_some()));
        if let Some(ep) = &loc.endpoint {
            conf = conf.endpoint_url(ep);
        }
        let client = Client::from_conf(conf.build());

        let part_size = opts.part_size.unwrap_or(DEFAULT_PART_SIZE).max(5 << 20);
        Ok(S3Backend {
            rt,
            client,
            multipart_threshold: opts
                .multipart_threshold
                .unwrap_or(DEFAULT_MULTIPART_THRESHOLD)
                .max(part_size),
            part_size,
            loc,
            region,
            attempt_timeout,
            max_attempts,
            body_attempts: max_attempts,
            delete_mode: Mutex::new(None),
        })
    }

    /// Per-request override for an upload of `len` bytes: its attempts may take as long as
    /// the body needs at [`MIN_UPLOAD_RATE`], on top of the base timeout.
    ///
    /// A body smaller than the socket buffers on the way (several MiB) is "sent" at once
    /// even to a frozen server, so neither stalled-stream protection nor a per-attempt limit
    /// that assumes a slow link ends the wait for its answer quickly. The operation timeout
    /// bounds the whole upload, retries included: every attempt's base time plus the body
    /// once at the minimum rate.
    fn upload_timeouts(&self, len: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(upload_attempt_timeout(self.attempt_timeout, len))
                .operation_timeout(upload_operation_timeout(
                    self.attempt_timeout,
                    self.max_attempts,
                    len,
                ))
                .build(),
        )
    }

    /// A download's body broke off after the response head (reset, closed connection,
    /// stalled stream). The SDK only retries up to the response head, so the whole GET is
    /// repeated here, with backoff, up to the client's attempt count; then the error names
    /// the file and how often it was tried.
    async fn body_failed(
        &self,
        what: &str,
        attempt: &mut u32,
        e: &dyn std::error::Error,
    ) -> BackendResult<()> {
        if *attempt >= self.body_attempts {
            return Err(BackendError::new(
                BackendErrorKind::Transient,
                "read",
                what,
                self.location(),
                format!(
                    "download interrupted ({} of {} attempts): {}",
                    attempt,
                    self.body_attempts,
                    chain(e)
                ),
            ));
        }
        let wait = Duration::from_millis(200u64 << (*attempt - 1).min(5));
        warn!(what, attempt = *attempt, error = %chain(e), wait_ms = wait.as_millis() as u64,
              "download interrupted, retrying");
        tokio::time::sleep(wait).await;
        *attempt += 1;
        Ok(())
    }

    pub fn bucket(&self) -> &str {
        &self.loc.bucket
    }

    /// The object key for a repository file (restic's default layout, packs in data/xx/).
    pub fn key(&self, t: FileType, name: &str) -> String {
        self.with_prefix(&object_path(t, name, false))
    }

    fn with_prefix(&self, rel: &str) -> String {
        if self.loc.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{}", self.loc.prefix, rel)
        }
    }

    fn err<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &'static str,
        what: impl Into<String>,
        e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> BackendError {
        let (kind, message) = classify(e);
        BackendError::new(kind, op, what, self.location(), message)
    }

    /// The bucket's versioning and Object Lock configuration (`GetBucketVersioning`,
    /// `GetObjectLockConfiguration`). A bucket without a lock configuration is an answer
    /// (`object_lock: false`); being refused either call is an error, since then nothing is
    /// known about what an overwrite does.
    pub fn bucket_protection(&self) -> BackendResult<BucketProtection> {
        let _span = debug_span!("backend.bucket_protection", backend = "s3").entered();
        let what = "the bucket's versioning";
        let v = self
            .rt
            .block_on(
                self.client
                    .get_bucket_versioning()
                    .bucket(&self.loc.bucket)
                    .send(),
            )
            .map_err(|e| self.err("read", what, &e))?;
        let versioning = match v.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Off,
        };
        let lock = self.rt.block_on(
            self.client
                .get_object_lock_configuration()
                .bucket(&self.loc.bucket)
                .send(),
        );
        let object_lock = match lock {
            Ok(out) => {
                out.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled)
            }
            Err(e) => {
                let code = e.as_service_error().and_then(|se| se.code()).unwrap_or("");
                if code == "ObjectLockConfigurationNotFoundError" {
                    false
                } else {
                    return Err(self.err("read", "the bucket's Object Lock configuration", &e));
                }
            }
        };
        Ok(BucketProtection {
            versioning,
            object_lock,
        })
    }

    /// Every stored version and delete marker below the repository (`ListObjectVersions`),
    /// keys relative to the repository root.
    pub fn object_versions(&self) -> BackendResult<Vec<ObjectVersion>> {
        let _span = debug_span!("backend.object_versions", backend = "s3").entered();
        let prefix = self.with_prefix("");
        let what = "the repository's object versions";
        let rel = |key: &str| key.strip_prefix(prefix.as_str()).unwrap_or(key).to_string();
        self.rt.block_on(async {
            let mut out = Vec::new();
            let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
            loop {
                let page = self
                    .client
                    .list_object_versions()
                    .bucket(&self.loc.bucket)
                    .prefix(&prefix)
                    .set_key_marker(key_marker.take())
                    .set_version_id_marker(version_marker.take())
                    .send()
                    .await
                    .map_err(|e| self.err("list versions of", what, &e))?;
                for v in page.versions() {
                    let (Some(key), Some(id)) = (v.key(), v.version_id()) else {
                        continue;
                    };
                    out.push(ObjectVersion {
                        key: rel(key),
                        version_id: id.to_string(),
                        etag: v.e_tag().map(str::to_owned),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        delete_marker: false,
                        latest: v.is_latest().unwrap_or(false),
                        modified: v.last_modified().and_then(system_time),
                    });
                }
                for m in page.delete_markers() {
                    let (Some(key), Some(id)) = (m.key(), m.version_id()) else {
                        continue;
                    };
                    out.push(ObjectVersion {
                        key: rel(key),
                        version_id: id.to_string(),
                        etag: None,
                        size: 0,
                        delete_marker: true,
                        latest: m.is_latest().unwrap_or(false),
                        modified: m.last_modified().and_then(system_time),
                    });
                }
                if !page.is_truncated().unwrap_or(false) {
                    break;
                }
                key_marker = page.next_key_marker().map(str::to_owned);
                version_marker = page.next_version_id_marker().map(str::to_owned);
                if key_marker.is_none() && version_marker.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Version IDs of one repository file, newest first. Only meaningful on versioned
    /// buckets; used by maintenance and tests that deal with Object Lock.
    pub fn versions(&self, t: FileType, name: &str) -> BackendResult<Vec<String>> {
        let key = self.key(t, name);
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.versions", backend = "s3", what = %what).entered();
        let entries = self.rt.block_on(self.list_versions(&key, &what))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.delete_marker)
            .map(|e| e.id)
            .collect())
    }

    /// Every version and delete marker of exactly `key`, each kind newest first.
    async fn list_versions(&self, key: &str, what: &str) -> BackendResult<Vec<VersionEntry>> {
        let mut out = Vec::new();
        // The SDK has no paginator for versions; follow the markers by hand.
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.loc.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.err("list versions of", what, &e))?;
            // The prefix also matches longer keys; only the exact key is this file.
            for v in page.versions() {
                if v.key() == Some(key)
                    && let Some(id) = v.version_id()
                {
                    out.push(VersionEntry {
                        id: id.to_string(),
                        delete_marker: false,
                        latest: v.is_latest().unwrap_or(false),
                    });
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(key)
                    && let Some(id) = m.version_id()
                {
                    out.push(VersionEntry {
                        id: id.to_string(),
                        delete_marker: true,
                        latest: m.is_latest().unwrap_or(false),
                    });
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Permanently delete one version. Unlike `remove`, this is refused on an Object Lock
    /// bucket while the version is under retention, which surfaces as `Locked`.
    pub fn remove_version(&self, t: FileType, name: &str, version_id: &str) -> BackendResult<()> {
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.remove_version", backend = "s3", what = %what, version_id)
            .entered();
        self.rt
            .block_on(self.delete_version(&self.key(t, name), &what, version_id))
    }

    /// Delete one version or delete marker; one that is already gone is not an error.
    async fn delete_version(&self, key: &str, what: &str, version_id: &str) -> BackendResult<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.loc.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.err("remove", format!("{what} (version {version_id})"), &e);
                if err.kind == BackendErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// A plain DELETE: removes the object on an unversioned bucket, hides it behind a new
    /// delete marker on a versioned one. Returns the marker's version ID, if one was made.
    async fn delete_current(&self, key: &str, what: &str) -> BackendResult<Option<String>> {
        match self
            .client
            .delete_object()
            .bucket(&self.loc.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) if out.delete_marker() == Some(true) => Ok(out.version_id().map(str::to_owned)),
            Ok(_) => Ok(None),
            Err(e) => {
                let err = self.err("remove", what, &e);
                if err.kind == BackendErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Whether `remove_permanently` must deal with versions here, asked once per backend.
    fn delete_mode(&self) -> DeleteMode {
        let mut cached = self.delete_mode.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mode) = *cached {
            return mode;
        }
        let answer = self.rt.block_on(
            self.client
                .get_object_lock_configuration()
                .bucket(&self.loc.bucket)
                .send(),
        );
        let mode = match answer {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled());
                if enabled == Some(&ObjectLockEnabled::Enabled) {
                    DeleteMode::AllVersions
                } else {
                    DeleteMode::Plain
                }
            }
            Err(e) => {
                // No configuration (the usual answer for buckets without Object Lock) or no
                // permission to read it: delete as restic does, which is never worse than
                // before.
                let err = self.err("read", "the bucket's Object Lock configuration", &e);
                debug!(error = %err, "treating the bucket as one without Object Lock");
                if err.kind == BackendErrorKind::Transient {
                    // Not an answer about the bucket: ask again on the next delete.
                    return DeleteMode::Plain;
                }
                DeleteMode::Plain
            }
        };
        debug!(?mode, bucket = %self.loc.bucket, "delete mode");
        *cached = Some(mode);
        mode
    }

    /// Delete every version of `key`. Versions under retention stay, hidden behind a delete
    /// marker so the repository never sees them again.
    async fn purge(&self, key: &str, what: &str) -> BackendResult<Removal> {
        let entries = self.list_versions(key, what).await?;
        let steps = PurgeSteps::new(&entries);
        let mut placed = None;
        if steps.marker_first {
            placed = self.delete_current(key, what).await?;
        }
        let mut retained = Vec::new();
        for v in &steps.versions {
            match self.delete_version(key, what, v).await {
                Ok(()) => {}
                Err(e) if e.kind == BackendErrorKind::Locked => retained.push(v.as_str()),
                Err(e) => return Err(e),
            }
        }
        if retained.is_empty() {
            // Markers of a key without versions only clutter version listings.
            for m in steps.markers.iter().chain(placed.iter()) {
                if let Err(e) = self.delete_version(key, what, m).await {
                    warn!(error = %e, "could not remove a delete marker; it is harmless");
                }
            }
            return Ok(Removal::Deleted);
        }
        if steps.marker_after(retained.len()) {
            self.delete_current(key, what).await?;
        }
        let mut until: Option<chrono::DateTime<chrono::Utc>> = None;
        for v in &retained {
            if let Some(t) = self.retain_until(key, v).await {
                until = until.max(Some(t));
            }
        }
        Ok(Removal::Retained {
            versions: retained.len(),
            until: until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        })
    }

    /// When one version's retention ends. `None` when it has none (a legal hold keeps it)
    /// or the identity may not read it: the date only makes the report more useful.
    async fn retain_until(
        &self,
        key: &str,
        version_id: &str,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let out = self
            .client
            .get_object_retention()
            .bucket(&self.loc.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| debug!(error = %self.err("read", "retention", &e), "no retention date"))
            .ok()?;
        let t = out.retention()?.retain_until_date()?;
        chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
    }

    async fn put_single(&self, key: &str, what: &str, data: &[u8]) -> BackendResult<()> {
        self.client
            .put_object()
            .bucket(&self.loc.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data.to_vec()))
            .customize()
            .config_override(self.upload_timeouts(data.len() as u64))
            .send()
            .await
            .map_err(|e| self.err("write", what, &e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, what: &str, data: &[u8]) -> BackendResult<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.loc.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("write", what, &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(BackendError::new(
                BackendErrorKind::Other,
                "write",
                what,
                self.location(),
                "server started a multipart upload without an upload id",
            ));
        };

        let result = self.upload_parts(key, what, &upload_id, data).await;
        if result.is_err() {
            // Abandoned uploads keep costing storage until a lifecycle rule removes them.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.loc.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                warn!(key, error = %self.err("write", what, &e), "aborting multipart upload failed");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        what: &str,
        upload_id: &str,
        data: &[u8],
    ) -> BackendResult<()> {
        let chunks: Vec<(i32, &[u8])> = data
            .chunks(self.part_size)
            .enumerate()
            .map(|(i, c)| (i as i32 + 1, c))
            .collect();
        let mut completed = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(PARTS_IN_FLIGHT) {
            let uploads = batch.iter().map(|&(number, chunk)| async move {
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.loc.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(chunk.len() as i64)
                    .body(ByteStream::from(chunk.to_vec()))
                    .customize()
                    .config_override(self.upload_timeouts(chunk.len() as u64))
                    .send()
                    .await
                    .map_err(|e| self.err("write", format!("{what} (part {number})"), &e))?;
                Ok::<_, BackendError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                        .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_owned))
                        .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_owned))
                        .set_checksum_sha1(out.checksum_sha1().map(str::to_owned))
                        .set_checksum_sha256(out.checksum_sha256().map(str::to_owned))
                        .build(),
                )
            });
            for part in join_all(uploads).await {
                completed.push(part?);
            }
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.loc.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("write", what, &e))?;
        Ok(())
    }

    async fn list_prefix(&self, rel_dir: &str, what: &str) -> BackendResult<Vec<FileInfo>> {
        let prefix = self.with_prefix(&format!("{rel_dir}/"));
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.loc.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", what, &e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let name = key.rsplit('/').next().unwrap_or(key);
                if is_id(name) {
                    out.push(
                        FileInfo::new(name, obj.size().unwrap_or(0).max(0) as u64)
                            .modified(obj.last_modified().and_then(system_time)),
                    );
                }
            }
        }
        Ok(out)
    }
}

/// The server's timestamp as a `SystemTime` (S3 times are whole seconds or milliseconds).
fn system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<std::time::SystemTime> {
    std::time::SystemTime::try_from(*t).ok()
}

/// Run futures concurrently and collect their results in order. A handful of parts does not
/// justify pulling in the `futures` crate.
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut results: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}

/// Decide what an S3 failure means for the engine. The SDK has already retried what its
/// standard retry mode considers transient by the time an error gets here.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> (BackendErrorKind, String) {
    use BackendErrorKind as K;
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            let text = if code.is_empty() && msg.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("{code}: {msg} (HTTP {status})")
            };
            (classify_service(status, code, msg), text)
        }
        SdkError::TimeoutError(_) => (
            K::Transient,
            format!(
                "timed out, the endpoint did not answer in time: {}",
                chain(e)
            ),
        ),
        SdkError::DispatchFailure(_) => {
            let detail = chain(e);
            // Stalled-stream protection reports through the connector: say what happened.
            let what = if detail.contains("minimum throughput") {
                "transfer stalled, no data moved within the grace period"
            } else {
                "connection failed"
            };
            (K::Transient, format!("{what}: {detail}"))
        }
        SdkError::ResponseError(_) => (K::Transient, format!("bad response: {}", chain(e))),
        _ => (K::Other, chain(e)),
    }
}

fn classify_service(status: u16, code: &str, msg: &str) -> BackendErrorKind {
    use BackendErrorKind as K;
    let lower = msg.to_ascii_lowercase();
    let lock_words = [
        "worm",
        "retention",
        "legal hold",
        "object lock",
        "object-lock",
    ];
    let mentions_lock = lock_words.iter().any(|w| lower.contains(w));
    match (status, code) {
        (_, "NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchVersion") | (404, _) => K::NotFound,
        (_, "AccessDenied" | "InvalidRequest") | (403, _) | (400, _) if mentions_lock => K::Locked,
        (_, "ObjectLocked") => K::Locked,
        (
            _,
            "AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId" | "SignatureDoesNotMatch",
        )
        | (403, _) => K::Denied,
        (_, "XMinioStorageFull" | "XMinioAdminBucketQuotaExceeded" | "QuotaExceeded")
        | (507, _) => K::NoSpace,
        (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")
        | (500..=599, _)
        | (408 | 429, _) => K::Transient,
        _ => K::Other,
    }
}

/// The error and its sources on one line; the SDK's top-level Display is often just
/// "dispatch failure" with the useful part further down.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.loc.display()
    }

    fn create(&self) -> BackendResult<()> {
        let _span =
            debug_span!("backend.create", backend = "s3", bucket = %self.loc.bucket).entered();
        self.rt.block_on(async {
            let head = self
                .client
                .head_bucket()
                .bucket(&self.loc.bucket)
                .send()
                .await;
            let err = match head {
                Ok(_) => return Ok(()),
                Err(e) => self.err("create", format!("bucket {}", self.loc.bucket), &e),
            };
            match err.kind {
                // Per-host credentials often may write objects but not inspect the bucket;
                // the first real write will tell if the bucket is unusable.
                BackendErrorKind::Denied => {
                    debug!("no permission to check the bucket, assuming it exists");
                    return Ok(());
                }
                BackendErrorKind::NotFound => {}
                _ => return Err(err),
            }
            let mut req = self.client.create_bucket().bucket(&self.loc.bucket);
            if self.region != "us-east-1" {
                req = req.create_bucket_configuration(
                    aws_sdk_s3::types::CreateBucketConfiguration::builder()
                        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                            self.region.as_str(),
                        ))
                        .build(),
                );
            }
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                    // Someone else (or an earlier attempt of ours) won the race.
                    if code == "BucketAlreadyOwnedByYou" {
                        Ok(())
                    } else {
                        Err(self.err("create", format!("bucket {}", self.loc.bucket), &e))
                    }
                }
            }
        })
    }

    fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>> {
        let _span = debug_span!("backend.list", backend = "s3", what = %t).entered();
        self.rt.block_on(async {
            if t == FileType::Config {
                return match self
                    .client
                    .head_object()
                    .bucket(&self.loc.bucket)
                    .key(self.key(t, "config"))
                    .send()
                    .await
                {
                    Ok(h) => Ok(vec![
                        FileInfo::new("config", h.content_length().unwrap_or(0).max(0) as u64)
                            .modified(h.last_modified().and_then(system_time)),
                    ]),
                    Err(e) => {
                        let err = self.err("list", "config", &e);
                        if err.kind == BackendErrorKind::NotFound {
                            Ok(vec![])
                        } else {
                            Err(err)
                        }
                    }
                };
            }
            self.list_prefix(t.dirname(), t.dirname()).await
        })
    }

    fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.read", backend = "s3", what = %what).entered();
        self.rt.block_on(async {
            let mut attempt = 1;
            loop {
                let resp = self
                    .client
                    .get_object()
                    .bucket(&self.loc.bucket)
                    .key(self.key(t, name))
                    .send()
                    .await
                    .map_err(|e| self.err("read", what.clone(), &e))?;
                match resp.body.collect().await {
                    Ok(body) => return Ok(body.into_bytes().to_vec()),
                    Err(e) => self.body_failed(&what, &mut attempt, &e).await?,
                }
            }
        })
    }

    fn read_prefix(&self, t: FileType, name: &str, max: u64) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.read_prefix", backend = "s3", what = %what, max).entered();
        if max == 0 {
            return Ok(Vec::new());
        }
        self.rt.block_on(async {
            let resp = self
                .client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(self.key(t, name))
                .range(format!("bytes=0-{}", max - 1))
                .send()
                .await;
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    // An empty object has no byte 0.
                    if e.raw_response().map(|r| r.status().as_u16()) == Some(416) {
                        return Ok(Vec::new());
                    }
                    return Err(self.err("read", what.clone(), &e));
                }
            };
            // Stop at `max` even if the server ignored the range and sends the whole object.
            let mut out = Vec::new();
            while (out.len() as u64) < max {
                let chunk = resp.body.try_next().await.map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::Transient,
                        "read",
                        what.clone(),
                        self.location(),
                        format!("download interrupted: {}", chain(&e)),
                    )
                })?;
                let Some(chunk) = chunk else { break };
                let room = (max - out.len() as u64).min(chunk.len() as u64) as usize;
                out.extend_from_slice(&chunk[..room]);
            }
            Ok(out)
        })
    }

    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.read_range", backend = "s3", what = %what, offset, length)
            .entered();
        if length == 0 {
            return Ok(Vec::new());
        }
        // One attempt: `Ok(None)` when the body broke off and the GET is to be repeated.
        let get = async |attempt: &mut u32| -> BackendResult<Option<Vec<u8>>> {
            let resp = self
                .client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(self.key(t, name))
                .range(format!("bytes={}-{}", offset, offset + length - 1))
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if status == Some(416) {
                        // The range starts past the end: a truncated file, reported like one.
                        return Ok(Some(Vec::new()));
                    }
                    return Err(self.err("read", what.clone(), &e));
                }
            };
            match resp.body.collect().await {
                Ok(body) => Ok(Some(body.into_bytes().to_vec())),
                Err(e) => {
                    self.body_failed(&what, attempt, &e).await?;
                    Ok(None)
                }
            }
        };
        let buf = self.rt.block_on(async {
            let mut attempt = 1;
            loop {
                if let Some(buf) = get(&mut attempt).await? {
                    return Ok::<_, BackendError>(buf);
                }
            }
        })?;
        if (buf.len() as u64) < length {
            return Err(short_read_error(
                what,
                self.location(),
                offset,
                length,
                buf.len(),
            ));
        }
        Ok(buf)
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
        check_name(t, name, "write", &self.location())?;
        let what = object_path(t, name, false);
        let key = self.key(t, name);
        let _span =
            debug_span!("backend.write", backend = "s3", what = %what, size = data.len()).entered();
        failpoint::hit(failpoint::S3_PUT_BEFORE);
        let r = self.rt.block_on(async {
            if data.len() > self.multipart_threshold {
                self.put_multipart(&key, &what, data).await
            } else {
                self.put_single(&key, &what, data).await
            }
        });
        failpoint::hit_if_ok(failpoint::S3_PUT_AFTER, &r);
        r
    }

    /// Packs come from temporary files: a single PUT streams the body from the file
    /// (re-opened through `/proc/self/fd` for each attempt, so retries work) instead of
    /// holding the pack, and a copy of it, in memory. Multipart uploads and systems
    /// without `/proc` read the file into memory and go through `write`.
    fn write_file(
        &self,
        t: FileType,
        name: &str,
        file: &std::fs::File,
        len: u64,
    ) -> BackendResult<()> {
        let proc_path = format!(
            "/proc/self/fd/{}",
            std::os::unix::io::AsRawFd::as_raw_fd(file)
        );
        if len as usize > self.multipart_threshold || !std::path::Path::new(&proc_path).exists() {
            let data = super::read_temp_file(file, len).map_err(|e| {
                BackendError::new(
                    BackendErrorKind::Other,
                    "write",
                    object_path(t, name, false),
                    self.location(),
                    format!("reading temporary file: {e}"),
                )
            })?;
            return self.write(t, name, &data);
        }
        check_name(t, name, "write", &self.location())?;
        let what = object_path(t, name, false);
        let key = self.key(t, name);
        let _span =
            debug_span!("backend.write", backend = "s3", what = %what, size = len).entered();
        failpoint::hit(failpoint::S3_PUT_BEFORE);
        let r = self.rt.block_on(async {
            let body = ByteStream::read_from()
                .path(&proc_path)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::Other,
                        "write",
                        what.clone(),
                        self.location(),
                        format!("reading temporary file: {e}"),
                    )
                })?;
            self.client
                .put_object()
                .bucket(&self.loc.bucket)
                .key(&key)
                .content_length(len as i64)
                .body(body)
                .customize()
                .config_override(self.upload_timeouts(len))
                .send()
                .await
                .map_err(|e| self.err("write", what.clone(), &e))?;
            Ok(())
        });
        failpoint::hit_if_ok(failpoint::S3_PUT_AFTER, &r);
        r
    }

    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        check_name(t, name, "remove", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.remove", backend = "s3", what = %what).entered();
        failpoint::hit(failpoint::S3_DELETE_BEFORE);
        let r = self.rt.block_on(async {
            // On a versioned bucket this adds a delete marker and older versions stay: that
            // is exactly what Object Lock setups rely on, and restic sees the file as gone.
            match self
                .client
                .delete_object()
                .bucket(&self.loc.bucket)
                .key(self.key(t, name))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let err = self.err("remove", what, &e);
                    if err.kind == BackendErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(err)
                    }
                }
            }
        });
        failpoint::hit_if_ok(failpoint::S3_DELETE_AFTER, &r);
        r
    }

    fn remove_permanently(&self, t: FileType, name: &str) -> BackendResult<Removal> {
        check_name(t, name, "remove", &self.location())?;
        if self.delete_mode() == DeleteMode::Plain {
            return self.remove(t, name).map(|()| Removal::Deleted);
        }
        let what = object_path(t, name, false);
        let key = self.key(t, name);
        let _span =
            debug_span!("backend.remove_permanently", backend = "s3", what = %what).entered();
        failpoint::hit(failpoint::S3_DELETE_BEFORE);
        let purged = self.rt.block_on(self.purge(&key, &what));
        failpoint::hit_if_ok(failpoint::S3_DELETE_AFTER, &purged);
        match purged {
            // An identity without s3:ListBucketVersions / s3:DeleteObjectVersion can still
            // do what restic does. If it may not delete at all, `remove` says so (Denied),
            // which prune and forget explain as an append-only repository.
            Err(e) if e.kind == BackendErrorKind::Denied => {
                *self.delete_mode.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(DeleteMode::Plain);
                self.remove(t, name)?;
                warn!(
                    error = %e,
                    "this identity may not delete object versions in an Object Lock bucket: \
                     deleted files only get a delete marker and all their versions stay \
                     stored; grant s3:ListBucketVersions and s3:DeleteObjectVersion to \
                     reclaim the space"
                );
                Ok(Removal::Deleted)
            }
            other => other,
        }
    }
}

/// The CA certificates the S3 client trusts. A plain-http endpoint needs none, and minimal
/// hosts (debootstrap's minbase, appliances, containers) often have no bundle at all: the
/// SDK would then fail on its own (a debug build asserts), so such a host is told what is
/// missing before any request, and an http endpoint never looks for certificates.
fn trust_store(endpoint: Option<&str>) -> Result<tls::TrustStore, String> {
    if endpoint.is_some_and(|e| {
        e.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    }) {
        return Ok(tls::TrustStore::empty());
    }
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        return Err(format!(
            "no CA certificates found on this host to verify {}: install the ca-certificates \
             package, or point SSL_CERT_FILE at a PEM bundle",
            endpoint.unwrap_or("the AWS endpoint")
        ));
    }
    Ok(tls::TrustStore::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendErrorKind as K;

    #[test]
    fn upload_timeouts_grow_with_the_body_and_stay_bounded() {
        let base = DEFAULT_ATTEMPT_TIMEOUT;
        // A 16 MiB part at 100 KiB/s takes 164 s: one attempt must have room for it.
        let part = 16u64 << 20;
        assert!(upload_attempt_timeout(base, part) > base + Duration::from_secs(164));
        // A small request gets the base (plus a second).
        assert!(upload_attempt_timeout(base, 100) <= base + Duration::from_secs(1));
        // The whole upload, six attempts included, ends within 17 minutes.
        let total = upload_operation_timeout(base, DEFAULT_MAX_ATTEMPTS, part);
        assert!(total >= upload_attempt_timeout(base, part), "{total:?}");
        assert!(total <= Duration::from_secs(17 * 60), "{total:?}");
    }

    #[test]
    fn service_errors_map_to_engine_kinds() {
        assert_eq!(classify_service(404, "NoSuchKey", ""), K::NotFound);
        assert_eq!(classify_service(404, "", ""), K::NotFound);
        assert_eq!(
            classify_service(403, "AccessDenied", "Access Denied."),
            K::Denied
        );
        assert_eq!(
            classify_service(
                403,
                "AccessDenied",
                "Access Denied. Object is WORM protected and cannot be overwritten"
            ),
            K::Locked
        );
        assert_eq!(
            classify_service(
                400,
                "InvalidRequest",
                "Object is protected by retention settings"
            ),
            K::Locked
        );
        assert_eq!(
            classify_service(400, "InvalidRequest", "bad part"),
            K::Other
        );
        assert_eq!(classify_service(507, "XMinioStorageFull", ""), K::NoSpace);
        assert_eq!(classify_service(503, "SlowDown", ""), K::Transient);
        assert_eq!(classify_service(500, "", ""), K::Transient);
    }

    fn v(id: &str, latest: bool) -> VersionEntry {
        VersionEntry {
            id: id.into(),
            delete_marker: false,
            latest,
        }
    }

    fn m(id: &str, latest: bool) -> VersionEntry {
        VersionEntry {
            id: id.into(),
            delete_marker: true,
            latest,
        }
    }

    #[test]
    fn one_version_is_deleted_directly_and_hidden_only_if_it_stays() {
        let s = PurgeSteps::new(&[v("a", true)]);
        assert_eq!(
            s,
            PurgeSteps {
                marker_first: false,
                versions: vec!["a".into()],
                markers: vec![],
                hidden: false,
            }
        );
        assert!(!s.marker_after(0));
        assert!(
            s.marker_after(1),
            "a retained current version stays visible"
        );
    }

    #[test]
    fn several_versions_are_hidden_before_any_is_deleted() {
        // Deleting "b" first would make "a" the file again.
        let s = PurgeSteps::new(&[v("b", true), v("a", false)]);
        assert!(s.marker_first);
        assert_eq!(s.versions, ["b", "a"]);
        assert!(
            !s.marker_after(1),
            "the marker placed first already hides them"
        );
        assert!(!s.marker_after(2));
    }

    #[test]
    fn an_already_hidden_file_gets_no_second_marker() {
        // What a plain delete (restic, or fleetsnap before) left behind.
        let s = PurgeSteps::new(&[v("b", false), v("a", false), m("x", true)]);
        assert!(s.hidden && !s.marker_first);
        assert_eq!(s.versions, ["b", "a"]);
        assert_eq!(s.markers, ["x"]);
        assert!(!s.marker_after(2));
    }

    #[test]
    fn an_older_marker_does_not_hide_a_newer_version() {
        // Deleted once, then written again: the newest entry is a version, so it is visible.
        let s = PurgeSteps::new(&[v("c", true), m("x", false)]);
        assert!(!s.hidden && !s.marker_first);
        assert!(s.marker_after(1));
        assert_eq!(s.markers, ["x"]);
    }

    #[test]
    fn nothing_stored_means_nothing_to_do() {
        let s = PurgeSteps::new(&[]);
        assert!(!s.marker_first && s.versions.is_empty() && s.markers.is_empty());
        assert!(!s.marker_after(0));
        let only_markers = PurgeSteps::new(&[m("x", true), m("y", false)]);
        assert!(only_markers.versions.is_empty() && only_markers.hidden);
        assert_eq!(only_markers.markers, ["x", "y"]);
    }

    /// A stored version `n` seconds after the epoch with content tag `etag`.
    fn ov(key: &str, id: &str, etag: &str, at: u64, latest: bool) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            version_id: id.into(),
            etag: Some(etag.into()),
            size: etag.len() as u64,
            delete_marker: false,
            latest,
            modified: Some(std::time::UNIX_EPOCH + Duration::from_secs(at)),
        }
    }

    fn marker(key: &str, id: &str, at: u64, latest: bool) -> ObjectVersion {
        ObjectVersion {
            etag: None,
            size: 0,
            delete_marker: true,
            ..ov(key, id, "", at, latest)
        }
    }

    #[test]
    fn overwrites_are_found_and_everything_restic_does_itself_is_not() {
        let keys = |l: &[ObjectVersion]| -> Vec<(String, String, usize)> {
            overwritten(l)
                .into_iter()
                .map(|o| (o.key, o.original_version, o.versions))
                .collect()
        };
        type Case = (
            &'static str,
            Vec<ObjectVersion>,
            Vec<(&'static str, &'static str, usize)>,
        );
        let table: Vec<Case> = vec![
            (
                "one version each",
                vec![
                    ov("config", "a", "e1", 1, true),
                    ov("snapshots/1", "b", "e2", 1, true),
                ],
                vec![],
            ),
            (
                "config overwritten",
                vec![
                    ov("config", "new", "junk", 5, true),
                    ov("config", "orig", "e1", 1, false),
                ],
                vec![("config", "orig", 2)],
            ),
            (
                "snapshot overwritten twice",
                vec![
                    ov("snapshots/1", "v3", "j2", 9, true),
                    ov("snapshots/1", "v1", "e", 1, false),
                    ov("snapshots/1", "v2", "j1", 5, false),
                ],
                vec![("snapshots/1", "v1", 3)],
            ),
            (
                "identical re-upload (S3 retry)",
                vec![
                    ov("data/ab/1", "v2", "e", 5, true),
                    ov("data/ab/1", "v1", "e", 1, false),
                ],
                vec![],
            ),
            (
                "copied back to the original",
                vec![
                    ov("config", "v3", "e1", 9, true),
                    ov("config", "v2", "junk", 5, false),
                    ov("config", "v1", "e1", 1, false),
                ],
                vec![],
            ),
            (
                "lock files come and go",
                vec![
                    ov("locks/1", "v2", "l2", 5, true),
                    ov("locks/1", "v1", "l1", 1, false),
                    marker("locks/2", "m", 6, true),
                ],
                vec![],
            ),
            (
                "pruned on a lock bucket: hidden behind a marker",
                vec![
                    marker("data/ab/2", "m", 9, true),
                    ov("data/ab/2", "v1", "e", 1, false),
                ],
                vec![],
            ),
            (
                "deleted then written again with other content",
                vec![
                    ov("index/3", "v2", "other", 9, true),
                    marker("index/3", "m", 5, false),
                    ov("index/3", "v1", "e", 1, false),
                ],
                vec![("index/3", "v1", 2)],
            ),
            (
                "same ETag, other size",
                vec![
                    ov("keys/4", "v2", "e", 5, true),
                    ObjectVersion {
                        size: 99,
                        ..ov("keys/4", "v1", "e", 1, false)
                    },
                ],
                vec![("keys/4", "v1", 2)],
            ),
            ("nothing stored", vec![], vec![]),
        ];
        for (name, listing, want) in table {
            let want: Vec<(String, String, usize)> = want
                .into_iter()
                .map(|(k, v, n)| (k.to_string(), v.to_string(), n))
                .collect();
            assert_eq!(keys(&listing), want, "{name}");
        }
    }
}
