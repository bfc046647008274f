//! SSH connections: one multiplexed master per host, reused by every reconcile that touches
//! the host, one user at a time (two policies installing the same executor at once would
//! race on its temp file), and a global bound on hosts worked on concurrently.

pub mod breaker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};
use tracing::debug;

use crate::host::HostError;
use crate::host::model::HostTarget;
use crate::host::ssh::{SshHost, SshOptions};

/// How the pool opens a connection: SSH in the operator, a fake in the pool's own tests.
pub trait Connector: Send + Sync + 'static {
    type Conn: Send + Sync + 'static;
    fn connect<'a>(&'a self, target: &'a HostTarget)
    -> BoxFuture<'a, Result<Self::Conn, HostError>>;
}

pub struct SshConnector(pub SshOptions);

impl Connector for SshConnector {
    type Conn = SshHost;
    fn connect<'a>(&'a self, target: &'a HostTarget) -> BoxFuture<'a, Result<SshHost, HostError>> {
        Box::pin(SshHost::connect(target, &self.0))
    }
}

struct Slot<C> {
    /// Hash of everything that decides how to connect; a change (new key, new pinned host
    /// key, new address) must never reuse a connection made under the old trust.
    fingerprint: String,
    conn: Option<C>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            fingerprint: String::new(),
            conn: None,
        }
    }
}

pub struct HostPool<C: Connector = SshConnector> {
    permits: Semaphore,
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot<C::Conn>>>>>,
    connector: C,
}

fn fingerprint(t: &HostTarget) -> String {
    let mut h = Sha256::new();
    for part in [
        t.address.as_bytes(),
        &t.port.to_be_bytes(),
        t.user.as_bytes(),
        t.host_key.as_bytes(),
        t.private_key.expose(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

impl HostPool<SshConnector> {
    pub fn new(max_concurrent_hosts: usize, opts: SshOptions) -> Self {
        Self::with_connector(max_concurrent_hosts, SshConnector(opts))
    }
}

/// Bounds of the pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub max_concurrent_hosts: usize,
    pub max_connecting: usize,
    pub max_open: usize,
    pub idle_close: Duration,
    pub backoff: breaker::BackoffSettings,
}

impl<C: Connector> HostPool<C> {
    pub fn with_limits(limits: PoolLimits, connector: C) -> Self {
        Self::with_connector(limits.max_concurrent_hosts, connector)
    }

    pub fn open_connections(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter(|s| s.try_lock().map(|s| s.conn.is_some()).unwrap_or(true))
            .count()
    }

    pub fn close_idle(&self, _now: Instant) {}

    pub fn retain(&self, _keep: impl Fn(&str) -> bool) {}

    pub fn with_connector(max_concurrent_hosts: usize, connector: C) -> Self {
        Self {
            permits: Semaphore::new(max_concurrent_hosts.max(1)),
            slots: std::sync::Mutex::new(HashMap::new()),
            connector,
        }
    }

    fn slot(&self, key: &str) -> Arc<Mutex<Slot<C::Conn>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }

    /// Drops the connection of a Host that was deleted.
    pub fn forget(&self, key: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(key);
    }

    /// Runs `work` on the host, connecting if needed. A reused connection whose master died
    /// (host rebooted, network blip) is replaced once before the failure counts.
    pub async fn with_host<T>(
        &self,
        key: &str,
        target: &HostTarget,
        work: impl for<'a> Fn(&'a C::Conn) -> BoxFuture<'a, Result<T, HostError>>,
    ) -> Result<T, HostError> {
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        debug!(host = %target.name, "host slot taken");
        // The permit is taken after the host's own lock, so waiting for a busy host does
        // not hold a permit another host could use.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HostError::Unreachable {
                host: target.name.clone(),
                detail: "operator is shutting down".into(),
            })?;
        let fp = fingerprint(target);
        if slot.fingerprint != fp {
            slot.conn = None;
            slot.fingerprint = fp;
        }
        let reused = slot.conn.is_some();
        if !reused {
            slot.conn = Some(self.connector.connect(target).await?);
        }
        let conn = slot.conn.as_ref().expect("connected above");
        match work(conn).await {
            Err(HostError::Unreachable { .. }) if reused => {
                debug!(host = %target.name, "reused SSH connection is dead; reconnecting");
                slot.conn = None;
                slot.conn = Some(self.connector.connect(target).await?);
                let conn = slot.conn.as_ref().expect("connected above");
                let result = work(conn).await;
                if matches!(result, Err(HostError::Unreachable { .. })) {
                    slot.conn = None;
                }
                result
            }
            Err(e @ HostError::Unreachable { .. }) => {
                slot.conn = None;
                Err(e)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::model::SecretBytes;

    fn target(key: &str) -> HostTarget {
        HostTarget {
            name: "h".into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: "root".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            private_key: SecretBytes::new(key),
        }
    }

    #[test]
    fn fingerprint_changes_with_trust_inputs_and_hides_the_key() {
        let a = fingerprint(&target("k1"));
        assert_eq!(a, fingerprint(&target("k1")));
        assert_ne!(a, fingerprint(&target("k2")));
        let mut t = target("k1");
        t.host_key = "ssh-ed25519 BBBB".into();
        assert_ne!(a, fingerprint(&t));
        assert!(!a.contains("k1"));
    }
}

/// The pool against a fake connector: how often it dials, what it keeps open, and who waits.
#[cfg(test)]
mod pool_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::breaker::BackoffSettings;
    use super::*;
    use crate::host::model::SecretBytes;

    /// Counts dials and live connections. Address "dead" refuses at once, "hang" never
    /// answers (and says when it started), anything else connects.
    #[derive(Default)]
    struct Fake {
        dials: AtomicUsize,
        live: Arc<AtomicUsize>,
        hanging: tokio::sync::Notify,
    }

    struct FakeConn(Arc<AtomicUsize>);

    impl Drop for FakeConn {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Connector for Arc<Fake> {
        type Conn = FakeConn;
        fn connect<'a>(
            &'a self,
            target: &'a HostTarget,
        ) -> BoxFuture<'a, Result<FakeConn, HostError>> {
            async move {
                self.dials.fetch_add(1, Ordering::SeqCst);
                match target.address.as_str() {
                    "dead" => Err(HostError::Unreachable {
                        host: target.name.clone(),
                        detail: "connection refused".into(),
                    }),
                    "hang" => {
                        self.hanging.notify_one();
                        futures::future::pending().await
                    }
                    _ => {
                        self.live.fetch_add(1, Ordering::SeqCst);
                        Ok(FakeConn(self.live.clone()))
                    }
                }
            }
            .boxed()
        }
    }

    fn host(name: &str, address: &str) -> HostTarget {
        HostTarget {
            name: name.into(),
            address: address.into(),
            port: 22,
            user: "root".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            private_key: SecretBytes::new("k"),
        }
    }

    fn limits(permits: usize, max_open: usize) -> PoolLimits {
        PoolLimits {
            max_concurrent_hosts: permits,
            max_connecting: permits,
            max_open,
            idle_close: Duration::from_secs(120),
            backoff: BackoffSettings::default(),
        }
    }

    async fn touch(pool: &HostPool<Arc<Fake>>, name: &str, address: &str) -> Result<(), HostError> {
        pool.with_host(name, &host(name, address), |_| async { Ok(()) }.boxed())
            .await
    }

    #[tokio::test]
    async fn a_dead_host_is_not_dialled_again_before_its_backoff() {
        let fake = Arc::new(Fake::default());
        let pool = HostPool::with_limits(limits(16, 64), fake.clone());
        for pass in 0..10 {
            let e = touch(&pool, "dead-1", "dead").await.unwrap_err();
            assert_eq!(e.reason(), "HostUnreachable", "pass {pass}: {e}");
        }
        assert_eq!(
            fake.dials.load(Ordering::SeqCst),
            1,
            "ten passes within the backoff dialled the dead host more than once"
        );
    }

    #[tokio::test]
    async fn a_host_stuck_connecting_holds_no_permit_a_healthy_host_needs() {
        let fake = Arc::new(Fake::default());
        let pool = Arc::new(HostPool::with_limits(limits(1, 64), fake.clone()));
        touch(&pool, "healthy", "10.0.0.1").await.unwrap();
        let p = pool.clone();
        let stuck = tokio::spawn(async move { touch(&p, "stuck", "hang").await });
        fake.hanging.notified().await;
        // A bound to detect the failure, not a wait for it: the healthy host's work needs
        // no network at all here.
        let healthy = tokio::time::timeout(Duration::from_secs(5), touch(&pool, "healthy", "10.0.0.1"))
            .await;
        stuck.abort();
        assert!(
            matches!(healthy, Ok(Ok(()))),
            "a host hanging in connect kept the only permit from a connected healthy host"
        );
    }

    #[tokio::test]
    async fn open_connections_are_capped_and_the_least_recently_used_goes_first() {
        let fake = Arc::new(Fake::default());
        let pool = HostPool::with_limits(limits(1, 4), fake.clone());
        for i in 0..10 {
            touch(&pool, &format!("h{i}"), "10.0.0.1").await.unwrap();
            touch(&pool, "h0", "10.0.0.1").await.unwrap();
        }
        assert!(
            fake.live.load(Ordering::SeqCst) <= 4,
            "{} connections open with a cap of 4",
            fake.live.load(Ordering::SeqCst)
        );
        let dials = fake.dials.load(Ordering::SeqCst);
        touch(&pool, "h0", "10.0.0.1").await.unwrap();
        assert_eq!(fake.dials.load(Ordering::SeqCst), dials, "the busiest host was evicted");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_gone_hosts_forgotten() {
        let fake = Arc::new(Fake::default());
        let pool = HostPool::with_limits(limits(4, 64), fake.clone());
        for i in 0..6 {
            touch(&pool, &format!("h{i}"), "10.0.0.1").await.unwrap();
        }
        pool.retain(|key| key != "h5");
        assert_eq!(fake.live.load(Ordering::SeqCst), 5, "a deleted Host kept its connection");
        pool.close_idle(Instant::now() + Duration::from_secs(121));
        assert_eq!(fake.live.load(Ordering::SeqCst), 0, "idle connections stayed open");
        assert_eq!(pool.open_connections(), 0);
    }
}
