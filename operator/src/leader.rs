//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one operator replica
//! touches hosts. Every write is a create or a resourceVersion-guarded replace: two replicas
//! racing for an expired lease cannot both win, the loser gets a 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// What to do with the lease as currently stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease object yet.
    Create,
    /// We hold it: extend.
    Renew,
    /// Someone held it but stopped renewing (or released it): take over.
    TakeOver,
    /// Someone else holds a live lease.
    Standby { holder: String },
}

/// Pure decision from the stored lease, our identity and the current time (Unix millis).
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now_ms: i64) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000;
    let renewed_ms = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_millisecond());
    match renewed_ms {
        Some(r) if r + duration_ms > now_ms => Decision::Standby { holder },
        _ => Decision::TakeOver,
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, take_over: bool) -> LeaseSpec {
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if take_over || previous.is_none() {
                Some(now())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if take_over {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: returns whether we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            Timestamp::now().as_millisecond(),
        );
        let result = match (&decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, false)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                let take_over = decision == Decision::TakeOver;
                // metadata (with its resourceVersion) is kept: that is the guard.
                lease.spec = Some(self.spec(lease.spec.as_ref(), take_over));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (Decision::Standby { holder }, _) => {
                debug!(%holder, "lease held by another replica");
                return Ok(false);
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                }
                Ok(true)
            }
            // Someone else wrote first: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: lease request failed"),
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Renews until leadership is lost, then returns. Leadership counts as lost as soon as
    /// another replica holds the lease, or when renewals kept failing for so long that the
    /// lease may have expired in the meantime — stopping early is safe, acting on an
    /// expired lease is not.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "leader election: renewing the lease failed");
                    if last_renewed.elapsed() + RENEW_INTERVAL >= LEASE_DURATION {
                        warn!(lease = %self.name, "could not renew the lease in time; stepping down");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up on shutdown so a standby replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_ms: Option<i64>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: renewed_ms.map(|ms| MicroTime(Timestamp::from_millisecond(ms).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = 1_000_000;
        assert_eq!(decide(None, "me", now), Decision::Create);
        assert_eq!(
            decide(Some(&spec(Some("me"), Some(now - 60_000))), "me", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("other"), Some(now - 5_000))), "me", now),
            Decision::Standby {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&spec(Some("other"), Some(now - 15_001))), "me", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(Some("other"), None)), "me", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(None, Some(now))), "me", now),
            Decision::TakeOver,
            "a released lease is free"
        );
    }

    /// The standby's wall clock runs 20 s ahead of the leader's. The leader has just
    /// renewed, so the lease is live and the standby must wait.
    #[test]
    fn standby_clock_ahead_does_not_take_over_a_fresh_lease() {
        let leader_now = 1_000_000;
        let skew = 20_000;
        let fresh = spec(Some("leader"), Some(leader_now));
        assert_eq!(
            decide(Some(&fresh), "standby", leader_now + skew),
            Decision::Standby {
                holder: "leader".into()
            }
        );
    }
}
