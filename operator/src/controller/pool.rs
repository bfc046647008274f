//! SSH connections: one multiplexed master per host, reused by every reconcile that touches
//! the host, one user at a time (two policies installing the same executor at once would
//! race on its temp file), and a global bound on hosts worked on concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};
use tracing::debug;

use crate::host::HostError;
use crate::host::model::HostTarget;
use crate::host::ssh::{SshHost, SshOptions};

#[derive(Default)]
struct Slot {
    /// Hash of everything that decides how to connect; a change (new key, new pinned host
    /// key, new address) must never reuse a connection made under the old trust.
    fingerprint: String,
    conn: Option<SshHost>,
}

pub struct HostPool {
    permits: Semaphore,
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    opts: SshOptions,
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

impl HostPool {
    pub fn new(max_concurrent_hosts: usize, opts: SshOptions) -> Self {
        Self {
            permits: Semaphore::new(max_concurrent_hosts.max(1)),
            slots: std::sync::Mutex::new(HashMap::new()),
            opts,
        }
    }

    fn slot(&self, key: &str) -> Arc<Mutex<Slot>> {
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
        work: impl for<'a> Fn(&'a SshHost) -> BoxFuture<'a, Result<T, HostError>>,
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
            slot.conn = Some(SshHost::connect(target, &self.opts).await?);
        }
        let conn = slot.conn.as_ref().expect("connected above");
        match work(conn).await {
            Err(HostError::Unreachable { .. }) if reused => {
                debug!(host = %target.name, "reused SSH connection is dead; reconnecting");
                slot.conn = None;
                slot.conn = Some(SshHost::connect(target, &self.opts).await?);
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
