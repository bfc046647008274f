//! Duplicate host identities. Two Host objects with the same hostname in one namespace, or
//! whose repository paths resolve to the same S3/REST repository, would write into one
//! repository (and, as two Hosts for one machine, fight over the same units). The older Host
//! keeps the identity; every younger one is refused: the policies apply nothing to it and it
//! reports `DuplicateHost` naming the older one. Pure, over what the caches hold.
//!
//! The rule is pairwise, not a chain: a Host is refused when any older Host shares one of
//! its identity keys, whether or not that older Host is refused itself. So deleting a Host
//! can only release others, and the outcome never depends on evaluation order.

use std::collections::BTreeMap;

use fleetsnap_crds::{BackupRepository, Host};
use kube::ResourceExt;

use super::derive;

/// A Host, by namespace and name.
pub type HostKey = (String, String);

/// One Host's claim to identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub host: HostKey,
    /// `metadata.creationTimestamp` in seconds; older wins. Missing sorts last.
    pub created: Option<i64>,
    /// Identity keys, each a human-readable description used in the refusal message.
    pub keys: Vec<String>,
}

/// Why a Host is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The older Host that keeps the identity.
    pub of: HostKey,
    /// The identity both claim, as described in [`Claim::keys`].
    pub key: String,
}

impl Duplicate {
    /// The condition message: what is shared, with whom, and what to do about it.
    pub fn message(&self, host: &HostKey) -> String {
        let other = if self.of.0 == host.0 {
            self.of.1.clone()
        } else {
            format!("{}/{}", self.of.0, self.of.1)
        };
        let fix = if self.key.starts_with("repository ") {
            "give the repositories distinct paths (e.g. {namespace} in pathTemplate) or the \
             hosts distinct spec.hostname values"
        } else {
            "delete one of the two Hosts, or recreate this one with its own spec.hostname"
        };
        format!(
            "Host {} has the same {} as the older Host {other}; both would write into one \
             repository, so nothing is applied to this one: {fix}",
            host.1, self.key,
        )
    }
}

/// The identity keys of one Host: its hostname within its namespace, and the repository URL
/// it resolves to in every S3 or REST BackupRepository of its namespace. A `local` repository
/// lives on each machine's own disk, so equal paths there are not a shared repository (two
/// Hosts of one namespace with one hostname are caught by the hostname key anyway).
pub fn identity_keys(host: &Host, repos: &[&BackupRepository]) -> Vec<String> {
    let ns = host.namespace().unwrap_or_default();
    let hostname = host.effective_hostname();
    let mut keys = vec![format!("hostname {hostname:?} (namespace {ns})")];
    for repo in repos {
        if repo.spec.local.is_some() {
            continue;
        }
        // A path that cannot be expanded is reported by the policies using the repository.
        if let Ok(url) = derive::repository_url(repo, hostname, &ns) {
            keys.push(format!("repository {url}"));
        }
    }
    keys
}

/// The refused Hosts, each with the oldest other Host sharing one of its keys. Order: older
/// creation first, then namespace and name, so equal timestamps still decide the same way
/// every time.
pub fn refused(claims: &[Claim]) -> BTreeMap<HostKey, Duplicate> {
    let order = |c: &Claim| (c.created.is_none(), c.created, c.host.clone());
    let mut by_key: BTreeMap<&str, Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        for k in &c.keys {
            let list = by_key.entry(k.as_str()).or_default();
            // A Host listing one key twice is still one claimant.
            if !list.iter().any(|o| o.host == c.host) {
                list.push(c);
            }
        }
    }
    let mut out: BTreeMap<HostKey, (&Claim, Duplicate)> = BTreeMap::new();
    for (key, mut list) in by_key {
        if list.len() < 2 {
            continue;
        }
        list.sort_by_key(|c| order(c));
        let owner = list[0];
        for younger in &list[1..] {
            let better = match out.get(&younger.host) {
                Some((seen, _)) => order(owner) < order(seen),
                None => true,
            };
            if better {
                out.insert(
                    younger.host.clone(),
                    (
                        owner,
                        Duplicate {
                            of: owner.host.clone(),
                            key: key.to_string(),
                        },
                    ),
                );
            }
        }
    }
    out.into_iter().map(|(k, (_, d))| (k, d)).collect()
}

/// Claims of every cached Host against the cached repositories of its namespace.
pub fn claims(
    hosts: &[std::sync::Arc<Host>],
    repos: &[std::sync::Arc<BackupRepository>],
) -> Vec<Claim> {
    hosts
        .iter()
        .map(|h| {
            let ns = h.namespace().unwrap_or_default();
            let in_ns: Vec<&BackupRepository> = repos
                .iter()
                .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
                .map(|r| r.as_ref())
                .collect();
            Claim {
                host: (ns, h.name_any()),
                created: h
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                keys: identity_keys(h, &in_ns),
            }
        })
        .collect()
}

/// The refused Hosts of the whole cache (every namespace the operator watches: a repository
/// path shared across namespaces is a collision too).
pub fn refused_in_cache(ctx: &super::Context) -> BTreeMap<HostKey, Duplicate> {
    refused(&claims(&ctx.hosts.state(), &ctx.repos.state()))
}

/// The refused Hosts of one namespace, by name, with their condition message.
pub fn refused_in_namespace(ctx: &super::Context, ns: &str) -> BTreeMap<String, String> {
    refused_in_cache(ctx)
        .into_iter()
        .filter(|((n, _), _)| n == ns)
        .map(|(k, d)| (k.1.clone(), d.message(&k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsnap_crds::host::HostSpec;

    fn claim(ns: &str, name: &str, created: Option<i64>, keys: &[&str]) -> Claim {
        Claim {
            host: (ns.into(), name.into()),
            created,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn key(ns: &str, name: &str) -> HostKey {
        (ns.into(), name.into())
    }

    #[test]
    fn the_younger_of_two_is_refused_naming_the_older() {
        let r = refused(&[
            claim("a", "db1-new", Some(200), &["hostname db1"]),
            claim("a", "db1", Some(100), &["hostname db1"]),
        ]);
        assert_eq!(r.len(), 1);
        let d = &r[&key("a", "db1-new")];
        assert_eq!(d.of, key("a", "db1"));
        let msg = d.message(&key("a", "db1-new"));
        assert!(
            msg.contains("Host db1-new") && msg.contains("older Host db1;"),
            "{msg}"
        );
        assert!(msg.contains("hostname db1"), "{msg}");
    }

    #[test]
    fn equal_timestamps_and_input_order_decide_nothing() {
        let a = claim("a", "x", Some(100), &["k"]);
        let b = claim("a", "y", Some(100), &["k"]);
        let one = refused(&[a.clone(), b.clone()]);
        let other = refused(&[b, a]);
        assert_eq!(one, other);
        assert_eq!(one[&key("a", "y")].of, key("a", "x"));
        // No timestamp (never from the API, but possible in a cache) loses to any timestamp.
        let r = refused(&[
            claim("a", "x", None, &["k"]),
            claim("a", "y", Some(5), &["k"]),
        ]);
        assert_eq!(r[&key("a", "x")].of, key("a", "y"));
    }

    #[test]
    fn distinct_identities_refuse_nobody() {
        let r = refused(&[
            claim(
                "a",
                "h1",
                Some(1),
                &["hostname h1", "repository s3:x/hosts/h1"],
            ),
            claim(
                "a",
                "h2",
                Some(2),
                &["hostname h2", "repository s3:x/hosts/h2"],
            ),
            claim("a", "h3", Some(3), &["hostname h3", "hostname h3"]),
        ]);
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn the_oldest_sharer_is_named_and_refusal_is_pairwise() {
        // b shares k1 with a (oldest), c shares k2 with b only: b is refused, and so is c,
        // because b is older than c whatever b's own fate.
        let r = refused(&[
            claim("n", "a", Some(1), &["k1"]),
            claim("n", "b", Some(2), &["k1", "k2"]),
            claim("n", "c", Some(3), &["k2", "k3"]),
            claim("n", "d", Some(4), &["k3", "k1"]),
        ]);
        assert!(!r.contains_key(&key("n", "a")));
        assert_eq!(r[&key("n", "b")].of, key("n", "a"));
        assert_eq!(r[&key("n", "c")].of, key("n", "b"));
        // d shares k3 with c and k1 with a: the oldest, a, is named.
        assert_eq!(r[&key("n", "d")].of, key("n", "a"));
        assert_eq!(r[&key("n", "d")].key, "k1");
        // Deleting the oldest releases b, never refuses anyone new.
        let r2 = refused(&[
            claim("n", "b", Some(2), &["k1", "k2"]),
            claim("n", "c", Some(3), &["k2", "k3"]),
            claim("n", "d", Some(4), &["k3", "k1"]),
        ]);
        assert!(!r2.contains_key(&key("n", "b")));
        assert!(r2.keys().all(|k| r.contains_key(k)));
    }

    fn host(ns: &str, name: &str, hostname: Option<&str>) -> Host {
        let spec: HostSpec = serde_json::from_value(serde_json::json!({
            "address": "10.0.0.1",
            "sshKeySecretRef": {"name": "k", "key": "id"},
            "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO",
            "hostname": hostname,
        }))
        .unwrap();
        let mut h = Host::new(name, spec);
        h.metadata.namespace = Some(ns.into());
        h
    }

    fn repo(ns: &str, backend: serde_json::Value, template: &str) -> BackupRepository {
        let mut spec = serde_json::json!({
            "pathTemplate": template,
            "passwordSecretRef": {"name": "pw", "key": "password"},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(backend.as_object().unwrap().clone());
        let mut r = BackupRepository::new("r", serde_json::from_value(spec).unwrap());
        r.metadata.namespace = Some(ns.into());
        r
    }

    #[test]
    fn keys_are_the_hostname_and_each_shared_repository_path() {
        let s3 = repo(
            "team-a",
            serde_json::json!({"s3": {"endpoint": "http://minio:9000/", "bucket": "b"}}),
            "hosts/{hostname}",
        );
        let local = repo(
            "team-a",
            serde_json::json!({"local": {"path": "/srv/backup"}}),
            "hosts/{hostname}",
        );
        let h = host("team-a", "db1", Some("db1.example.com"));
        let keys = identity_keys(&h, &[&s3, &local]);
        assert_eq!(
            keys,
            vec![
                "hostname \"db1.example.com\" (namespace team-a)".to_string(),
                "repository s3:http://minio:9000/b/hosts/db1.example.com".to_string(),
            ]
        );
        // Without spec.hostname the object name is the identity.
        assert_eq!(
            identity_keys(&host("team-a", "db2", None), &[])[0],
            "hostname \"db2\" (namespace team-a)"
        );
    }

    #[test]
    fn the_same_bucket_path_from_two_namespaces_collides() {
        let bucket = serde_json::json!({"s3": {"endpoint": "http://minio:9000", "bucket": "b"}});
        let repos = [
            std::sync::Arc::new(repo("team-a", bucket.clone(), "hosts/{hostname}")),
            std::sync::Arc::new(repo("team-b", bucket.clone(), "hosts/{hostname}")),
        ];
        let mut a = host("team-a", "db1", None);
        a.metadata.creation_timestamp = Some(super::super::summary::unix_time(100));
        let mut b = host("team-b", "db1", None);
        b.metadata.creation_timestamp = Some(super::super::summary::unix_time(200));
        let hosts = [std::sync::Arc::new(a.clone()), std::sync::Arc::new(b)];
        let r = refused(&claims(&hosts, &repos));
        assert_eq!(r.len(), 1);
        let d = &r[&key("team-b", "db1")];
        assert_eq!(d.of, key("team-a", "db1"));
        assert!(d.key.starts_with("repository s3:"), "{d:?}");
        // The message names a Host of another namespace with its namespace.
        assert!(d.message(&key("team-b", "db1")).contains("team-a/db1"));
        // With {namespace} in both templates the paths differ: no collision.
        let repos = [
            std::sync::Arc::new(repo("team-a", bucket.clone(), "{namespace}/{hostname}")),
            std::sync::Arc::new(repo("team-b", bucket, "{namespace}/{hostname}")),
        ];
        assert!(refused(&claims(&hosts, &repos)).is_empty());
    }
}
