//! Secret values shared by every reconcile, read again only when the Secret changed.
//!
//! The operator watches Secret metadata (names and resourceVersions, never values). A cached
//! value is served while its resourceVersion is the one that watch last saw, so a distinct
//! Secret is read once per change instead of once per host per pass, and a rotated Secret is
//! read again as soon as its watch event has arrived. Concurrent readers of one Secret share
//! one GET. RBAC stays `get` by name: nothing lists Secret values.
//!
//! Values live only in the operator's memory, where every reconcile held them anyway.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

type Cell = Arc<tokio::sync::Mutex<Option<Secret>>>;

#[derive(Default)]
pub struct SecretCache {
    cells: std::sync::Mutex<HashMap<(String, String), Cell>>,
}

impl SecretCache {
    fn cell(&self, ns: &str, name: &str) -> Cell {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .entry((ns.to_string(), name.to_string()))
            .or_default()
            .clone()
    }

    /// The Secret `ns/name`: from the cache when `current` (the resourceVersion the metadata
    /// watch knows; `None` when it knows none yet) matches the cached copy, else from `fetch`.
    pub async fn get<E, Fut>(
        &self,
        ns: &str,
        name: &str,
        current: Option<&str>,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Option<Secret>, E>
    where
        Fut: Future<Output = Result<Option<Secret>, E>>,
    {
        let cell = self.cell(ns, name);
        // Held across the GET: the readers that queue behind it find the fresh copy.
        let mut held = cell.lock().await;
        if let (Some(rv), Some(s)) = (current, held.as_ref())
            && s.metadata.resource_version.as_deref() == Some(rv)
        {
            return Ok(Some(s.clone()));
        }
        let fresh = fetch().await?;
        held.clone_from(&fresh);
        Ok(fresh)
    }

    /// Drops the copies of Secrets `keep` says no to (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.retain(|(ns, name), _| keep(ns, name));
    }

    pub fn len(&self) -> usize {
        self.cells.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn secret(rv: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("ssh-key".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[tokio::test]
    async fn a_pass_over_many_hosts_reads_each_secret_once_per_change() {
        let cache = SecretCache::default();
        let gets = AtomicUsize::new(0);
        let version = std::sync::Mutex::new("1".to_string());
        let read = || async {
            gets.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Some(secret(&version.lock().unwrap())))
        };
        // 200 hosts of one pass, concurrently, all naming the same Secret.
        let pass = |rv: &'static str| {
            futures::future::join_all((0..200).map(|_| cache.get("ns", "ssh-key", Some(rv), read)))
        };
        let got = pass("1").await;
        assert!(got.iter().all(|s| {
            s.as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .metadata
                .resource_version
                .as_deref()
                == Some("1")
        }));
        assert_eq!(
            gets.load(Ordering::SeqCst),
            1,
            "one GET per host instead of one per Secret"
        );
        pass("1").await;
        assert_eq!(
            gets.load(Ordering::SeqCst),
            1,
            "the next pass read an unchanged Secret again"
        );
        // Rotated: the watch reports version 2, and the value is read again once.
        *version.lock().unwrap() = "2".into();
        let got = pass("2").await;
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        assert_eq!(
            got[199]
                .as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("2")
        );
    }

    #[tokio::test]
    async fn without_a_known_version_every_read_goes_to_the_api_and_errors_are_not_cached() {
        let cache = SecretCache::default();
        let gets = AtomicUsize::new(0);
        for _ in 0..3 {
            cache
                .get("ns", "pw", None, || async {
                    gets.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Some(secret("7")))
                })
                .await
                .unwrap();
        }
        assert_eq!(gets.load(Ordering::SeqCst), 3);
        let failed = cache
            .get("ns", "other", Some("1"), || async {
                Err::<Option<Secret>, _>("429")
            })
            .await;
        assert_eq!(failed.unwrap_err(), "429");
        let ok = cache
            .get("ns", "other", Some("1"), || async {
                Ok::<_, &str>(Some(secret("1")))
            })
            .await
            .unwrap();
        assert!(ok.is_some());
        cache.retain(|_, name| name != "pw");
        assert_eq!(cache.len(), 1);
    }
}
