//! The controllers: BackupPolicy (primary; reconciles policies onto hosts) and Host (keeps
//! `Host.status` reachability and OS facts fresh). Both share one SSH pool, so the bound on
//! concurrently worked hosts and the one-connection-per-host rule hold across them.

pub mod append_only;
pub mod backup_policy;
pub mod derive;
pub mod error;
pub mod events;
pub mod finalized;
pub mod host_credentials;
pub mod host_job;
pub mod host_status;
pub mod identity;
pub mod jobs;
pub mod maintenance;
pub mod pool;
pub mod repository_status;
pub mod restore;
pub mod retention_policy;
pub mod secret_cache;
pub mod storage_probe;
pub mod sts;
pub mod summary;
pub mod tamper;
pub mod units;
pub mod verify_policy;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fleetsnap_crds::{BackupPolicy, BackupRepository, Host};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::host::model::ExecutorArtifact;
use crate::host::ssh::SshOptions;
use crate::metrics::Metrics;
use pool::HostPool;

/// Field manager of every status write; per-policy entries in `Host.status.policies` use
/// `<FIELD_MANAGER>.<kind>.<policy>` so that server-side apply merges the entries written by
/// different policies instead of one replacing the others.
pub const FIELD_MANAGER: &str = "fleetsnap-operator";

/// Shared state of all reconcilers.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub artifact: ExecutorArtifact,
    pub pool: HostPool,
    pub hosts: Store<Host>,
    pub repos: Store<BackupRepository>,
    /// Upper bound for everything done on one host in one reconcile (connect, upload the
    /// executor, apply, observe), so a host that stalls mid-session cannot pin a reconcile.
    pub host_timeout: Duration,
    /// Flips to true once the Host and BackupRepository caches hold a full list. A watch
    /// channel, because `Store::wait_until_ready` wakes only one of several concurrent
    /// waiters (its oneshot keeps a single waker), which left reconciles hanging.
    caches_ready: tokio::sync::watch::Receiver<bool>,
    /// Consecutive transient failures per `<kind>/<namespace>/<object>/<host>`, for backoff.
    attempts: std::sync::Mutex<HashMap<String, u32>>,
    /// Host keys minted for `s3.operatorSts` repositories.
    pub minted: host_credentials::MintedKeys,
    /// Secret values, valid while their resourceVersion matches `secret_versions`.
    pub secrets: secret_cache::SecretCache,
    /// Secret metadata from the watch (names and resourceVersions only).
    pub secret_versions: Store<PartialObjectMeta<Secret>>,
}

impl Context {
    /// Waits until the caches are filled; planning against half-filled caches would
    /// treat hosts as deselected.
    pub async fn caches_ready(&self) {
        let mut rx = self.caches_ready.clone();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Counts a failure and returns how many happened in a row.
    pub fn failed_attempt(&self, key: &str) -> u32 {
        let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let n = a.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn reset_attempts(&self, key: &str) {
        let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        a.remove(key);
    }

    /// A failed reconcile of one object (every controller's `error_policy`): counted in the
    /// metrics and per `<kind>/<namespace>/<name>`; returns how many failed in a row and the
    /// requeue after the matching backoff.
    pub fn reconcile_failed<K: ResourceExt>(
        &self,
        kind: &str,
        obj: &K,
        err: &error::Error,
    ) -> (u32, kube::runtime::controller::Action) {
        self.metrics.reconcile_error(kind, err.reason());
        let key = format!(
            "{kind}/{}/{}",
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        );
        let attempt = self.failed_attempt(&key);
        (
            attempt,
            kube::runtime::controller::Action::requeue(error::backoff(attempt)),
        )
    }
}

/// Settings of the controllers from the command line.
pub struct Settings {
    pub namespace: Option<String>,
    pub pool: pool::PoolLimits,
    pub artifact: ExecutorArtifact,
    pub identity: String,
    pub host_timeout: Duration,
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn hash_of(parts: impl Hash) -> Option<u64> {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    Some(h.finish())
}

/// Runs both controllers until the future is dropped (leadership lost) or they end.
pub async fn run(client: Client, metrics: Arc<Metrics>, settings: Settings) {
    let wc = watcher::Config::default();
    let ns = &settings.namespace;

    // Caches of Hosts and repositories: reconciles read them instead of listing.
    // Two Host caches on purpose: the Host controller waits for its own store's readiness,
    // and a store must have a single waiter (see `caches_ready`). The shared cache is fed
    // by the policy controller's Host trigger stream below.
    let (hosts, host_writer) = reflector::store::<Host>();
    let (host_ctrl_store, host_ctrl_writer) = reflector::store::<Host>();
    // The reflected Host stream drives the Host controller; only spec changes (generation)
    // wake it, so its own status writes do not loop back into it.
    let host_stream = watcher(api::<Host>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(host_ctrl_writer)
        .touched_objects()
        .predicate_filter(
            |h: &Host| hash_of(h.metadata.generation),
            Default::default(),
        );
    let (repos, repo_writer) = reflector::store::<BackupRepository>();
    let repo_cache = watcher(api::<BackupRepository>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(repo_writer)
        .touched_objects()
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "BackupRepository watch failed");
            }
        });

    let (secret_versions, secret_versions_writer) = reflector::store::<PartialObjectMeta<Secret>>();

    let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    let (hosts_ready, repos_ready) = (hosts.clone(), repos.clone());
    // One waiter only, then broadcast; parked forever afterwards so select! keeps going.
    let readiness = async move {
        let _ = hosts_ready.wait_until_ready().await;
        let _ = repos_ready.wait_until_ready().await;
        let _ = ready_tx.send(true);
        futures::future::pending::<()>().await
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        ),
        artifact: settings.artifact,
        // ssh's own idle timer outlasts the pool's idle close, so it ends only the masters
        // nobody closes: those of a replica that was killed.
        pool: HostPool::new(
            settings.pool,
            SshOptions {
                control_persist: settings.pool.idle_close + Duration::from_secs(60),
                ..SshOptions::default()
            },
        ),
        hosts: hosts.clone(),
        repos: repos.clone(),
        host_timeout: settings.host_timeout,
        attempts: Default::default(),
        minted: Default::default(),
        secrets: Default::default(),
        secret_versions,
        caches_ready,
    });
    let policies = Controller::new(api::<BackupPolicy>(&client, ns), wc.clone());
    let policy_store = policies.store();

    // Host changes matter to policies only through spec and labels; status writes (every
    // lastContact refresh) must not wake every policy selecting the host.
    let host_changes = watcher(api::<Host>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(host_writer)
        .touched_objects()
        .predicate_filter(
            |h: &Host| {
                hash_of((
                    h.metadata.generation,
                    h.labels(),
                    h.metadata.deletion_timestamp.is_some(),
                ))
            },
            Default::default(),
        );
    let store = policy_store.clone();
    let policies = policies.watches_stream(host_changes, move |host: Host| {
        let ns = host.namespace();
        let name = host.name_any();
        store
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns)
            .filter(|p| {
                // Selected, or may still carry the job: the Host has the policy's entry (or
                // a status written before bounded status lists it).
                derive::selects(&p.spec.host_selector, &host)
                    || host.status.as_ref().is_some_and(|s| {
                        s.policies.iter().any(|e| {
                            e.kind == fleetsnap_crds::host::PolicyKind::BackupPolicy
                                && e.name == p.name_any()
                        })
                    })
                    || p.status
                        .as_ref()
                        .is_some_and(|s| s.hosts.iter().any(|h| h.name == name))
            })
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    });
    let store = policy_store.clone();
    let policies = policies.watches(
        api::<BackupRepository>(&client, ns),
        wc.clone(),
        move |repo| {
            let ns = repo.namespace();
            let name = repo.name_any();
            store
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && p.spec.repository_ref.name == name)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        },
    );
    // Only Secret metadata is watched (names, not contents); values are read at reconcile.
    let store = policy_store.clone();
    let (hosts_for_secrets, repos_for_secrets) = (hosts.clone(), repos.clone());
    let secret_changes = watcher(api::<PartialObjectMeta<Secret>>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(secret_versions_writer)
        .touched_objects();
    let policies = policies.watches_stream(secret_changes, move |secret| {
        let ns = secret.namespace();
        let name = secret.name_any();
        store
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns)
            .filter(|p| {
                let repo = repos_for_secrets.get(
                    &ObjectRef::new(&p.spec.repository_ref.name)
                        .within(ns.as_deref().unwrap_or("")),
                );
                let Some(repo) = repo else { return false };
                hosts_for_secrets
                    .state()
                    .iter()
                    .filter(|h| h.namespace() == ns && derive::selects(&p.spec.host_selector, h))
                    .any(|h| derive::referenced_secrets(h, &repo).contains(&name))
            })
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    });
    let policy_loop = policies
        .shutdown_on_signal()
        .run(
            finalized::reconcile::<BackupPolicy>,
            finalized::error_policy::<BackupPolicy>,
            ctx.clone(),
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(policy = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "BackupPolicy reconcile failed"),
            }
        });

    let host_loop = Controller::for_stream(host_stream, host_ctrl_store)
        .shutdown_on_signal()
        .run(
            host_status::reconcile,
            host_status::error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "Host reconcile failed");
            }
        });

    let maintenance_loops = run_maintenance_controllers(&client, ns, ctx.clone());

    let sweep = sweep_pool(ctx.clone());

    info!("controllers running");
    tokio::select! {
        _ = sweep => {},
        _ = policy_loop => {},
        _ = maintenance_loops => {},
        _ = host_loop => {},
        _ = repo_cache => {},
        _ = readiness => {},
    }
}

/// Closes idle SSH masters and those of deleted Hosts, and publishes the pool's gauges.
async fn sweep_pool(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ctx.pool.close_idle(std::time::Instant::now());
        // Only on a full cache: a half-filled one would close connections of live Hosts.
        if *ctx.caches_ready.borrow() {
            let live: std::collections::HashSet<String> = ctx
                .hosts
                .state()
                .iter()
                .map(|h| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any()))
                .collect();
            ctx.pool.retain(|key| live.contains(key));
            let secrets = &ctx.secret_versions;
            ctx.secrets
                .retain(|ns, name| secrets.get(&ObjectRef::new(name).within(ns)).is_some());
        }
        ctx.metrics.pool(ctx.pool.stats());
    }
}

/// The RetentionPolicy, VerifyPolicy, Restore and BackupRepository (status only)
/// controllers, sharing the context (and so the SSH pool and its concurrency bound) with the
/// BackupPolicy controller.
async fn run_maintenance_controllers(client: &Client, ns: &Option<String>, ctx: Arc<Context>) {
    use fleetsnap_crds::{Restore, RetentionPolicy, VerifyPolicy};
    let wc = watcher::Config::default();
    let retention = Controller::new(api::<RetentionPolicy>(client, ns), wc.clone())
        .shutdown_on_signal()
        .run(
            finalized::reconcile::<RetentionPolicy>,
            finalized::error_policy::<RetentionPolicy>,
            ctx.clone(),
        )
        .for_each(|r| log_result(retention_policy::KIND, r));
    let verify = Controller::new(api::<VerifyPolicy>(client, ns), wc.clone())
        .shutdown_on_signal()
        .run(
            finalized::reconcile::<VerifyPolicy>,
            finalized::error_policy::<VerifyPolicy>,
            ctx.clone(),
        )
        .for_each(|r| log_result(verify_policy::KIND, r));
    let restores = Controller::new(api::<Restore>(client, ns), wc.clone())
        .shutdown_on_signal()
        .run(restore::reconcile, restore::error_policy, ctx.clone())
        .for_each(|r| log_result(restore::KIND, r));
    // Its own status writes wake it once more; that round computes the same status and
    // writes nothing.
    let repositories = Controller::new(api::<BackupRepository>(client, ns), wc)
        .shutdown_on_signal()
        .run(
            repository_status::reconcile,
            repository_status::error_policy,
            ctx,
        )
        .for_each(|r| log_result(repository_status::KIND, r));
    tokio::join!(retention, verify, restores, repositories);
}

async fn log_result<T, E: std::fmt::Display>(kind: &'static str, res: Result<T, E>) {
    if let Err(e) = res {
        warn!(kind, error = %e, "reconcile failed");
    }
}
