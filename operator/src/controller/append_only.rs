//! Whether `appendOnly: true` holds: hosts without delete rights can still destroy history
//! wherever the storage lets a write replace an existing file. The decision is
//! [`verdict`] (pure); the bucket is asked by [`super::storage_probe`], at most every
//! [`REPROBE`] per repository and on every spec change ([`ProbeCache`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fleetsnap::backend::s3::{BucketProtection, Versioning};
use fleetsnap_crds::BackupRepository;

/// A known bucket configuration is asked again this often.
pub const REPROBE: Duration = Duration::from_secs(600);
/// A failed probe is retried this soon.
pub const RETRY: Duration = Duration::from_secs(60);

/// What the storage does to a host overwriting an existing repository file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The storage keeps the original; the message says how (for the Ready message).
    Enforced(String),
    /// A host can destroy history; the message names the missing setting and the fix.
    NotEnforced(String),
}

/// The verdict for one repository: `None` when it is not append-only (nothing promised).
/// `probe` is the bucket's configuration as last read (S3 only; `None` not read yet).
pub fn verdict(
    repo: &BackupRepository,
    probe: Option<&Result<BucketProtection, String>>,
) -> Option<Verdict> {
    if !repo.spec.append_only {
        return None;
    }
    let spec = &repo.spec;
    if spec.local.is_some() {
        return Some(Verdict::NotEnforced(
            "a local repository cannot be append-only: the host owns the directory and can \
             overwrite or delete any file in it; use s3 with versioning or Object Lock, or rest"
                .into(),
        ));
    }
    if spec.rest.is_some() {
        return Some(Verdict::Enforced(
            "append-only is enforced by the REST server, which the operator cannot inspect: \
             run rest-server or rclone serve restic (1.60.1 or newer, tested) with --append-only"
                .into(),
        ));
    }
    let bucket = spec.s3.as_ref().map(|s| s.bucket.as_str()).unwrap_or("?");
    let hole = "a host can overwrite and so destroy snapshot, index, key, config and pack files";
    Some(match probe {
        None => Verdict::NotEnforced(format!(
            "bucket {bucket}'s versioning and Object Lock configuration has not been read yet"
        )),
        Some(Err(e)) => Verdict::NotEnforced(format!(
            "cannot read bucket {bucket}'s versioning and Object Lock configuration with the \
             maintenance credentials ({e}); until it is known, {hole}; allow them \
             s3:GetBucketVersioning and s3:GetBucketObjectLockConfiguration"
        )),
        Some(Ok(p)) if p.object_lock => Verdict::Enforced(format!(
            "bucket {bucket} has Object Lock: overwritten and deleted files stay as locked versions"
        )),
        Some(Ok(p)) => match p.versioning {
            Versioning::Enabled => Verdict::Enforced(format!(
                "bucket {bucket} has versioning: an overwrite keeps the original as an older \
                 version and a VerifyPolicy reports it (Object Lock would also stop the \
                 versions from being deleted)"
            )),
            Versioning::Suspended => Verdict::NotEnforced(format!(
                "bucket {bucket} has versioning suspended and no Object Lock: {hole}; enable \
                 versioning again (better: Object Lock)"
            )),
            Versioning::Off => Verdict::NotEnforced(format!(
                "bucket {bucket} has no versioning and no Object Lock: {hole}; enable \
                 versioning (better: Object Lock)"
            )),
        },
    })
}

/// One repository's last probe.
#[derive(Clone, Debug)]
struct Entry {
    generation: Option<i64>,
    at: Instant,
    /// How long the entry answers: [`REPROBE`] after a read, [`RETRY`] after a failure.
    ttl: Duration,
    result: Result<BucketProtection, String>,
}

/// Last probe result per repository (`namespace/name`), process-wide.
pub struct ProbeCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ProbeCache {
    pub fn global() -> &'static ProbeCache {
        static CACHE: OnceLock<ProbeCache> = OnceLock::new();
        CACHE.get_or_init(|| ProbeCache {
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The cached result when still fresh for this generation; `None` means probe now.
    pub fn fresh(
        &self,
        key: &str,
        generation: Option<i64>,
        now: Instant,
    ) -> Option<Result<BucketProtection, String>> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(key)?;
        (e.generation == generation && now.duration_since(e.at) < e.ttl).then(|| e.result.clone())
    }

    /// Records a probe. A failed probe does not replace a known answer for the same
    /// generation (a short S3 outage does not flip Ready), but is retried after [`RETRY`].
    pub fn record(
        &self,
        key: &str,
        generation: Option<i64>,
        now: Instant,
        result: Result<BucketProtection, String>,
    ) -> Result<BucketProtection, String> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_err()
            && let Some(known) = map.get_mut(key)
            && known.generation == generation
            && let Ok(p) = known.result
        {
            known.at = now;
            known.ttl = RETRY;
            return Ok(p);
        }
        map.insert(
            key.to_string(),
            Entry {
                generation,
                at: now,
                ttl: if result.is_ok() { REPROBE } else { RETRY },
                result: result.clone(),
            },
        );
        result
    }

    /// Forgets a deleted repository.
    pub fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repo(backend: serde_json::Value, append_only: bool) -> BackupRepository {
        let mut spec = json!({
            "pathTemplate": "hosts/{hostname}",
            "passwordSecretRef": {"name": "pw", "key": "password"},
            "appendOnly": append_only,
            "maintenanceCredentialsSecretRef": {"name": "maint"},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(backend.as_object().unwrap().clone());
        BackupRepository::new("r", serde_json::from_value(spec).unwrap())
    }

    fn s3() -> serde_json::Value {
        json!({"s3": {"endpoint": "http://minio:9000", "bucket": "fleet"}})
    }

    fn p(versioning: Versioning, object_lock: bool) -> Result<BucketProtection, String> {
        Ok(BucketProtection {
            versioning,
            object_lock,
        })
    }

    /// Name, backend, appendOnly, probe, enforced (None: no verdict), message part.
    type Case = (
        &'static str,
        serde_json::Value,
        bool,
        Option<Result<BucketProtection, String>>,
        Option<bool>,
        &'static str,
    );

    #[test]
    fn only_a_bucket_that_keeps_the_original_enforces_append_only() {
        use Versioning::*;
        let table: Vec<Case> = vec![
            (
                "not append-only: nothing promised",
                s3(),
                false,
                Some(p(Off, false)),
                None,
                "",
            ),
            (
                "plain bucket",
                s3(),
                true,
                Some(p(Off, false)),
                Some(false),
                "bucket fleet has no versioning and no Object Lock",
            ),
            (
                "suspended versioning",
                s3(),
                true,
                Some(p(Suspended, false)),
                Some(false),
                "versioning suspended",
            ),
            (
                "versioning",
                s3(),
                true,
                Some(p(Enabled, false)),
                Some(true),
                "keeps the original as an older version",
            ),
            (
                "object lock",
                s3(),
                true,
                Some(p(Enabled, true)),
                Some(true),
                "Object Lock",
            ),
            (
                "object lock, versioning reported off",
                s3(),
                true,
                Some(p(Off, true)),
                Some(true),
                "Object Lock",
            ),
            (
                "not read yet",
                s3(),
                true,
                None,
                Some(false),
                "not been read yet",
            ),
            (
                "cannot read",
                s3(),
                true,
                Some(Err("AccessDenied: no (HTTP 403)".into())),
                Some(false),
                "s3:GetBucketVersioning",
            ),
            (
                "rest",
                json!({"rest": {"url": "https://r:8000/"}}),
                true,
                None,
                Some(true),
                "--append-only",
            ),
            (
                "local",
                json!({"local": {"path": "/srv"}}),
                true,
                None,
                Some(false),
                "cannot be append-only",
            ),
        ];
        for (name, backend, ao, probe, want, text) in table {
            let got = verdict(&repo(backend, ao), probe.as_ref());
            match (got, want) {
                (None, None) => {}
                (Some(Verdict::Enforced(m)), Some(true))
                | (Some(Verdict::NotEnforced(m)), Some(false)) => {
                    assert!(m.contains(text), "{name}: {m}");
                }
                (got, want) => panic!("{name}: got {got:?}, want enforced={want:?}"),
            }
        }
        // The fix is named where it is missing.
        let Some(Verdict::NotEnforced(m)) = verdict(&repo(s3(), true), Some(&p(Off, false))) else {
            panic!()
        };
        assert!(m.contains("enable versioning (better: Object Lock)"), "{m}");
        assert!(
            m.contains("overwrite and so destroy snapshot, index"),
            "{m}"
        );
    }

    #[test]
    fn the_cache_reprobes_after_ten_minutes_on_spec_change_and_soon_after_a_failure() {
        let c = ProbeCache {
            entries: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        assert!(c.fresh("ns/r", Some(1), t0).is_none());
        let _ = c.record("ns/r", Some(1), t0, p(Versioning::Off, false));
        assert!(
            c.fresh("ns/r", Some(1), t0 + Duration::from_secs(599))
                .is_some()
        );
        assert!(c.fresh("ns/r", Some(1), t0 + REPROBE).is_none());
        assert!(c.fresh("ns/r", Some(2), t0).is_none(), "spec changed");
        // A failure keeps the known answer for the same generation, retried after RETRY.
        let kept = c.record("ns/r", Some(1), t0, Err("timeout".into()));
        assert_eq!(kept, p(Versioning::Off, false));
        assert!(
            c.fresh("ns/r", Some(1), t0 + RETRY - Duration::from_secs(1))
                .is_some()
        );
        assert!(c.fresh("ns/r", Some(1), t0 + RETRY).is_none());
        // Without a known answer the failure is the answer, for RETRY.
        let e = c.record("ns/x", None, t0, Err("denied".into()));
        assert!(e.is_err());
        assert!(
            c.fresh("ns/x", None, t0 + Duration::from_secs(59))
                .unwrap()
                .is_err()
        );
        assert!(c.fresh("ns/x", None, t0 + RETRY).is_none());
        c.forget("ns/x");
        assert!(c.fresh("ns/x", None, t0).is_none());
    }
}
