//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one operator replica
//! touches hosts. Every write is a create or a resourceVersion-guarded replace: two replicas
//! racing for an expired lease cannot both win, the loser gets a 409 Conflict.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What this replica last saw of the lease record, and when, by its own monotonic clock.
///
/// Expiry is measured from `seen_at_ms`, never from the `renewTime` inside the record: that
/// timestamp comes from the holder's wall clock, and comparing it with ours would make
/// leadership depend on the two clocks agreeing (client-go's `observedTime` works the same
/// way). A holder that keeps renewing keeps changing the record, which restarts our count.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    record: LeaseSpec,
    seen_at_ms: u64,
}

/// Folds the lease as read now into what we saw before: a changed record (or a first
/// sighting) is stamped with `now_ms`; an unchanged one keeps the time it was first seen.
pub fn observe(
    previous: Option<Observation>,
    lease: Option<&LeaseSpec>,
    now_ms: u64,
) -> Option<Observation> {
    let spec = lease?;
    match previous {
        Some(p) if p.record == *spec => Some(p),
        _ => Some(Observation {
            record: spec.clone(),
            seen_at_ms: now_ms,
        }),
    }
}

/// Pure decision from the lease as last observed, our identity and our own monotonic time
/// (milliseconds on the same clock as [`Observation::seen_at_ms`]).
pub fn decide(observed: Option<&Observation>, identity: &str, now_ms: u64) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    let spec = &observed.record;
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration_ms = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(0) * 1000;
    if observed.seen_at_ms.saturating_add(duration_ms) > now_ms {
        Decision::Standby { holder }
    } else {
        Decision::TakeOver
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// Origin of the monotonic milliseconds fed to [`decide`].
    started: Instant,
    observed: Mutex<Option<Observation>>,
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
            started: Instant::now(),
            observed: Mutex::new(None),
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
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let decision = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            *observed = observe(
                observed.take(),
                current.as_ref().and_then(|l| l.spec.as_ref()),
                now_ms,
            );
            decide(observed.as_ref(), &self.identity, now_ms)
        };
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

    /// A lease record as the holder writes it, `renewed_ms` on the holder's wall clock.
    fn spec(holder: Option<&str>, renewed_ms: Option<i64>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: renewed_ms.map(|ms| MicroTime(Timestamp::from_millisecond(ms).unwrap())),
            ..LeaseSpec::default()
        }
    }

    /// The decision after seeing `records` in turn, each at its own monotonic time.
    fn after(records: &[(u64, Option<LeaseSpec>)], identity: &str, now_ms: u64) -> Decision {
        let mut observed = None;
        for (at, record) in records {
            observed = observe(observed, record.as_ref(), *at);
        }
        decide(observed.as_ref(), identity, now_ms)
    }

    #[test]
    fn decisions() {
        let t = 1_000_000;
        assert_eq!(after(&[(t, None)], "me", t), Decision::Create);
        assert_eq!(
            after(&[(t, Some(spec(Some("me"), Some(0))))], "me", t + 60_000),
            Decision::Renew,
            "our own lease is renewed however old it looks"
        );
        assert_eq!(
            after(&[(t, Some(spec(Some("other"), Some(0))))], "me", t + 5_000),
            Decision::Standby {
                holder: "other".into()
            }
        );
        assert_eq!(
            after(&[(t, Some(spec(Some("other"), Some(0))))], "me", t + 15_000),
            Decision::TakeOver,
            "unchanged for a whole lease duration by our clock"
        );
        assert_eq!(
            after(&[(t, Some(spec(Some("other"), None)))], "me", t + 15_000),
            Decision::TakeOver
        );
        assert_eq!(
            after(&[(t, Some(spec(None, Some(0))))], "me", t),
            Decision::TakeOver,
            "a released lease is free"
        );
    }

    /// The standby's wall clock runs 20 s ahead of the leader's. The leader has just
    /// renewed, so the lease is live and the standby must wait.
    #[test]
    fn standby_clock_ahead_does_not_take_over_a_fresh_lease() {
        let leader_now = 1_000_000;
        let fresh = spec(Some("leader"), Some(leader_now));
        // First sighting, and a renewal seen every 5 s for a minute: never a takeover,
        // whatever the renewTime says relative to our wall clock.
        let mut seen = vec![];
        for i in 0..12u64 {
            let renewed = spec(Some("leader"), Some(leader_now + 5_000 * i as i64));
            seen.push((i * 5_000, Some(renewed)));
            assert_eq!(
                after(&seen, "standby", i * 5_000 + 4_999),
                Decision::Standby {
                    holder: "leader".into()
                }
            );
        }
        assert_eq!(
            after(&[(0, Some(fresh))], "standby", 14_999),
            Decision::Standby {
                holder: "leader".into()
            }
        );
    }

    /// The standby's clock runs behind (or the leader's ahead): a renewTime in our future
    /// must not keep a dead leader's lease alive past one lease duration.
    #[test]
    fn leader_clock_ahead_does_not_extend_a_dead_lease() {
        let far_future = 4_000_000_000_000; // year 2096 on the holder's clock
        let dead = spec(Some("leader"), Some(far_future));
        assert_eq!(
            after(
                &[(0, Some(dead.clone())), (10_000, Some(dead))],
                "standby",
                15_000
            ),
            Decision::TakeOver
        );
    }

    /// A record that changes (any field) restarts the count; one that does not, does not.
    #[test]
    fn only_a_changed_record_counts_as_a_renewal() {
        let a = spec(Some("leader"), Some(1));
        let b = spec(Some("leader"), Some(2));
        assert_eq!(
            after(
                &[(0, Some(a.clone())), (10_000, Some(b))],
                "standby",
                20_000
            ),
            Decision::Standby {
                holder: "leader".into()
            }
        );
        assert_eq!(
            after(
                &[(0, Some(a.clone())), (10_000, Some(a))],
                "standby",
                20_000
            ),
            Decision::TakeOver
        );
        assert_eq!(
            after(
                &[(0, Some(spec(Some("x"), Some(1)))), (10_000, None)],
                "standby",
                30_000
            ),
            Decision::Create,
            "a deleted lease is created anew"
        );
    }
}
