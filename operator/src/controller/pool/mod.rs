//! SSH connections to hosts, shared by every controller.
//!
//! - One multiplexed master per host, used by one caller at a time (two policies installing
//!   the same executor at once would race on its temp file).
//! - One circuit breaker per host ([`breaker`]): a host whose login failed is not dialled
//!   again before its backoff has passed; until then callers get that failure back at once,
//!   with no permit and no `ssh` process.
//! - Two bounds: `max_connecting` logins at once and `max_concurrent_hosts` hosts worked on
//!   at once. A login holds only the first, so a host that hangs in its handshake never holds
//!   a permit that a connected host needs.
//! - At most `max_open` masters: opening one more closes the least recently used idle one. A
//!   sweep closes masters idle for `idle_close` and those of Hosts that no longer exist.

pub mod breaker;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tracing::{debug, info};

use crate::host::HostError;
use crate::host::model::HostTarget;
use crate::host::ssh::{SshHost, SshOptions};
use breaker::{Admit, BackoffSettings, Breaker, Tripped};

/// How the pool opens and closes connections: SSH in the operator, a fake in the tests.
pub trait Connector: Send + Sync + 'static {
    type Conn: Send + Sync + 'static;
    fn connect<'a>(
        &'a self,
        target: &'a HostTarget,
    ) -> BoxFuture<'a, Result<Self::Conn, HostError>>;

    /// Closes a connection the pool no longer keeps. The returned future may run later, in
    /// a task of its own.
    fn close(conn: Self::Conn) -> BoxFuture<'static, ()> {
        drop(conn);
        Box::pin(async {})
    }
}

pub struct SshConnector(pub SshOptions);

impl Connector for SshConnector {
    type Conn = SshHost;
    fn connect<'a>(&'a self, target: &'a HostTarget) -> BoxFuture<'a, Result<SshHost, HostError>> {
        Box::pin(SshHost::connect(target, &self.0))
    }

    fn close(conn: SshHost) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = conn.close().await;
        })
    }
}

/// Bounds of the pool (operator flags).
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Hosts worked on at once (commands running).
    pub max_concurrent_hosts: usize,
    /// SSH logins in progress at once.
    pub max_connecting: usize,
    /// Masters kept open; raised to at least `max_concurrent_hosts + max_connecting`, the
    /// most that can be in use at one time.
    pub max_open: usize,
    /// A master unused for this long is closed by the sweep.
    pub idle_close: Duration,
    pub backoff: BackoffSettings,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_concurrent_hosts: 16,
            max_connecting: 16,
            max_open: 128,
            idle_close: Duration::from_secs(120),
            backoff: BackoffSettings::default(),
        }
    }
}

/// A snapshot for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub open: usize,
    pub circuits_open: usize,
    pub permits_in_use: usize,
    pub connecting: usize,
}

struct Slot<C> {
    /// Hash of everything that decides how to connect; a change (new key, new pinned host
    /// key, new address) must never reuse a connection made under the old trust.
    fingerprint: String,
    conn: Option<C>,
    last_used: Instant,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            fingerprint: String::new(),
            conn: None,
            last_used: Instant::now(),
        }
    }
}

type SlotRef<C> = Arc<Mutex<Slot<C>>>;

pub struct HostPool<C: Connector = SshConnector> {
    limits: PoolLimits,
    work: Semaphore,
    connecting: Semaphore,
    slots: std::sync::Mutex<HashMap<String, SlotRef<C::Conn>>>,
    /// Only hosts whose last attempt failed have an entry.
    circuits: std::sync::Mutex<HashMap<String, Breaker>>,
    /// Connections held in slots.
    open: AtomicUsize,
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

fn jitter_seed(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn shutting_down(host: &str) -> HostError {
    HostError::Unreachable {
        host: host.to_string(),
        detail: "operator is shutting down".into(),
    }
}

/// Records a login that never finished because its caller gave up (the reconcile's host
/// deadline): a host that hangs in the handshake must open its circuit like one that refuses.
struct DialGuard<'a, C: Connector> {
    pool: &'a HostPool<C>,
    key: &'a str,
    fingerprint: &'a str,
    armed: bool,
}

impl<C: Connector> Drop for DialGuard<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.record_failure(
                self.key,
                self.fingerprint,
                Tripped::Unreachable("SSH login did not finish before the deadline".into()),
            );
        }
    }
}

impl HostPool<SshConnector> {
    pub fn new(limits: PoolLimits, opts: SshOptions) -> Self {
        Self::with_limits(limits, SshConnector(opts))
    }
}

impl<C: Connector> HostPool<C> {
    pub fn with_limits(mut limits: PoolLimits, connector: C) -> Self {
        limits.max_concurrent_hosts = limits.max_concurrent_hosts.max(1);
        limits.max_connecting = limits.max_connecting.max(1);
        Self {
            work: Semaphore::new(limits.max_concurrent_hosts),
            connecting: Semaphore::new(limits.max_connecting),
            limits,
            slots: std::sync::Mutex::new(HashMap::new()),
            circuits: std::sync::Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            connector,
        }
    }

    fn slot(&self, key: &str) -> SlotRef<C::Conn> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }

    fn put(&self, slot: &mut Slot<C::Conn>, conn: C::Conn) {
        if let Some(old) = slot.conn.replace(conn) {
            tokio::spawn(C::close(old));
        } else {
            self.open.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn close_conn(&self, slot: &mut Slot<C::Conn>) {
        if let Some(conn) = slot.conn.take() {
            self.open.fetch_sub(1, Ordering::SeqCst);
            tokio::spawn(C::close(conn));
        }
    }

    fn admit(&self, key: &str, fp: &str, host: &str) -> Result<(), HostError> {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = circuits.get_mut(key) else {
            return Ok(());
        };
        match b.admit(fp, Instant::now()) {
            Admit::Go => Ok(()),
            Admit::Refuse {
                last,
                failures,
                retry_in,
            } => {
                debug!(host, ?retry_in, "circuit open; not contacted");
                Err(breaker::refused_error(host, &last, failures))
            }
        }
    }

    fn record_failure(&self, key: &str, fp: &str, tripped: Tripped) -> u32 {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let b = circuits.entry(key.to_string()).or_default();
        // Align the breaker with the trust inputs before counting.
        let _ = b.admit(fp, Instant::now());
        let wait = b.failed(
            tripped,
            Instant::now(),
            self.limits.backoff,
            jitter_seed(key),
        );
        info!(host = key, failures = b.failures(), ?wait, "circuit opened");
        b.failures()
    }

    fn record_success(&self, key: &str) {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.remove(key);
    }

    /// A failure the caller sees: the error that opened the circuit, worded as every refusal
    /// until the next probe will be, so status does not flip between two texts.
    fn failed(&self, key: &str, fp: &str, host: &str, e: HostError) -> HostError {
        match Tripped::of(&e) {
            Some(t) => {
                let n = self.record_failure(key, fp, t.clone());
                breaker::refused_error(host, &t, n)
            }
            None => e,
        }
    }

    /// How long until a host with an open circuit is dialled again; `None` when it may be
    /// contacted now. Controllers requeue by it instead of a fixed short retry.
    pub fn retry_in(&self, key: &str) -> Option<Duration> {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.get(key).and_then(|b| b.retry_in(Instant::now()))
    }

    /// Closes the least recently used idle masters until one more fits under the cap.
    fn make_room(&self) {
        let cap = self
            .limits
            .max_open
            .max(self.limits.max_concurrent_hosts + self.limits.max_connecting);
        while self.open.load(Ordering::SeqCst) >= cap {
            let slots: Vec<SlotRef<C::Conn>> = {
                let map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                map.values().cloned().collect()
            };
            let oldest = slots
                .iter()
                .filter_map(|s| {
                    let g = s.try_lock().ok()?;
                    g.conn.as_ref().map(|_| (g.last_used, s.clone()))
                })
                .min_by_key(|(t, _)| *t);
            let Some((_, slot)) = oldest else {
                // Every master is in use: the cap is exceeded until one is released.
                return;
            };
            if let Ok(mut g) = slot.try_lock() {
                debug!("closing the least recently used SSH master to stay under the cap");
                self.close_conn(&mut g);
            }
        }
    }

    /// Logs in while holding a connect permit, then takes the work permit before giving the
    /// connect permit back: connected hosts waiting for work are bounded by `max_connecting`,
    /// not by the size of the fleet.
    async fn dial(
        &self,
        key: &str,
        fp: &str,
        target: &HostTarget,
    ) -> Result<(C::Conn, SemaphorePermit<'_>), HostError> {
        let _connecting = self
            .connecting
            .acquire()
            .await
            .map_err(|_| shutting_down(&target.name))?;
        self.make_room();
        let mut guard = DialGuard {
            pool: self,
            key,
            fingerprint: fp,
            armed: true,
        };
        let result = self.connector.connect(target).await;
        guard.armed = false;
        match result {
            Ok(conn) => {
                self.record_success(key);
                let permit = self
                    .work
                    .acquire()
                    .await
                    .map_err(|_| shutting_down(&target.name))?;
                Ok((conn, permit))
            }
            Err(e) => Err(self.failed(key, fp, &target.name, e)),
        }
    }

    /// Runs `work` on the host, connecting if needed. A reused connection whose master died
    /// (host rebooted, network blip) is replaced once before the failure counts.
    pub async fn with_host<T>(
        &self,
        key: &str,
        target: &HostTarget,
        work: impl for<'a> Fn(&'a C::Conn) -> BoxFuture<'a, Result<T, HostError>>,
    ) -> Result<T, HostError> {
        let fp = fingerprint(target);
        // Refused before waiting for the host's lock: an open circuit costs callers nothing.
        self.admit(key, &fp, &target.name)?;
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        debug!(host = %target.name, "host slot taken");
        if slot.fingerprint != fp {
            self.close_conn(&mut slot);
            slot.fingerprint = fp.clone();
        }
        // The caller before us may have probed and failed while we waited.
        self.admit(key, &fp, &target.name)?;
        let reused = slot.conn.is_some();
        let permit = if reused {
            self.work
                .acquire()
                .await
                .map_err(|_| shutting_down(&target.name))?
        } else {
            let (conn, permit) = self.dial(key, &fp, target).await?;
            self.put(&mut slot, conn);
            permit
        };
        slot.last_used = Instant::now();
        let conn = slot.conn.as_ref().expect("connected above");
        let result = work(conn).await;
        match result {
            Err(HostError::Unreachable { .. }) if reused => {
                debug!(host = %target.name, "reused SSH connection is dead; reconnecting");
                self.close_conn(&mut slot);
                drop(permit);
                let (conn, _permit) = self.dial(key, &fp, target).await?;
                self.put(&mut slot, conn);
                let conn = slot.conn.as_ref().expect("connected above");
                match work(conn).await {
                    Err(e @ HostError::Unreachable { .. }) => {
                        self.close_conn(&mut slot);
                        Err(self.failed(key, &fp, &target.name, e))
                    }
                    other => other,
                }
            }
            Err(e @ HostError::Unreachable { .. }) => {
                self.close_conn(&mut slot);
                Err(self.failed(key, &fp, &target.name, e))
            }
            other => other,
        }
    }

    /// Closes masters unused since `now - idle_close`.
    pub fn close_idle(&self, now: Instant) {
        let slots: Vec<SlotRef<C::Conn>> = {
            let map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        for s in slots {
            if let Ok(mut g) = s.try_lock()
                && g.conn.is_some()
                && now.saturating_duration_since(g.last_used) >= self.limits.idle_close
            {
                self.close_conn(&mut g);
            }
        }
    }

    /// Drops the connection and circuit of every host `keep` says no to (deleted Hosts). A
    /// host in use is left for the next sweep.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|key, s| {
            if keep(key) {
                return true;
            }
            match s.try_lock() {
                Ok(mut g) => {
                    self.close_conn(&mut g);
                    false
                }
                Err(_) => true,
            }
        });
        drop(map);
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.retain(|key, _| keep(key));
    }

    /// Drops the connection of one Host that was deleted.
    pub fn forget(&self, key: &str) {
        self.retain(|k| k != key);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        PoolStats {
            open: self.open_connections(),
            circuits_open: circuits.values().filter(|b| b.is_open(now)).count(),
            permits_in_use: self.limits.max_concurrent_hosts - self.work.available_permits(),
            connecting: self.limits.max_connecting - self.connecting.available_permits(),
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
        let healthy =
            tokio::time::timeout(Duration::from_secs(5), touch(&pool, "healthy", "10.0.0.1")).await;
        stuck.abort();
        assert!(
            matches!(healthy, Ok(Ok(()))),
            "a host hanging in connect kept the only permit from a connected healthy host"
        );
    }

    #[tokio::test]
    async fn a_login_abandoned_at_the_callers_deadline_opens_the_circuit() {
        let fake = Arc::new(Fake::default());
        let pool = HostPool::with_limits(limits(4, 64), fake.clone());
        let first = tokio::time::timeout(Duration::from_millis(50), touch(&pool, "stuck", "hang"));
        assert!(first.await.is_err(), "the hanging login returned");
        let e = touch(&pool, "stuck", "hang").await.unwrap_err();
        assert_eq!(e.reason(), "HostUnreachable");
        assert!(
            e.to_string().contains("did not finish before the deadline"),
            "{e}"
        );
        assert_eq!(fake.dials.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().circuits_open, 1);
        assert_eq!(
            pool.stats().connecting,
            0,
            "the abandoned login kept its permit"
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
        assert_eq!(
            fake.dials.load(Ordering::SeqCst),
            dials,
            "the busiest host was evicted"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_gone_hosts_forgotten() {
        let fake = Arc::new(Fake::default());
        let pool = HostPool::with_limits(limits(4, 64), fake.clone());
        for i in 0..6 {
            touch(&pool, &format!("h{i}"), "10.0.0.1").await.unwrap();
        }
        pool.retain(|key| key != "h5");
        assert_eq!(
            fake.live.load(Ordering::SeqCst),
            5,
            "a deleted Host kept its connection"
        );
        pool.close_idle(Instant::now() + Duration::from_secs(121));
        assert_eq!(
            fake.live.load(Ordering::SeqCst),
            0,
            "idle connections stayed open"
        );
        assert_eq!(pool.open_connections(), 0);
    }
}
