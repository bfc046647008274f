//! Splitting the fleet between operator replicas.
//!
//! Every replica keeps a Lease of its own, `<group>-<identity>`, labelled
//! [`GROUP_LABEL`]`=<group>`, and renews it like the leader lease. A replica counts as a live
//! member while its record keeps changing within its lease duration, measured on the
//! observer's monotonic clock (the same rule as `leader.rs`, so no two clocks have to agree).
//! A Host belongs to the live member with the highest rendezvous score
//! `sha256(member NUL host)`: when a member joins or leaves, only the hosts it wins or held
//! move, and every replica that sees the same members computes the same owner.
//!
//! The one rule that keeps two replicas off one host: **yield early, claim late.**
//! - A replica drops a host the moment it sees a member that outranks it, and stops all
//!   host work as soon as it cannot prove its own lease is live (renewals failing for
//!   nearly a lease duration), before anyone else may consider it gone.
//! - A replica claims nothing until it has been a member for [`CLAIM_AFTER`], longer than
//!   any other replica needs to see it (one renew interval), and takes over a departed
//!   member's hosts only once that member's lease has expired by its own clock.
//!
//! Host work in flight when a host moves is cancelled, which the host layer's crash-safety
//! rule (every step is temp + rename, every plan re-derived from facts) makes safe.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::leader::{LEASE_DURATION, RENEW_INTERVAL};

/// Label that groups the member Leases of one operator deployment.
pub const GROUP_LABEL: &str = "fleetsnap.io/shard-group";

/// How long a new member waits before it claims hosts: every other member renews and
/// re-reads the member list once per [`RENEW_INTERVAL`], so after this long all of them have
/// seen it and dropped the hosts it wins.
pub const CLAIM_AFTER: Duration = Duration::from_secs(LEASE_DURATION.as_secs());

/// Rendezvous score of `host` on `member`: the first 8 bytes of a SHA-256, so that replicas
/// built by different compilers agree (std's hasher promises no stability).
pub fn score(member: &str, host: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0]);
    h.update(host.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The member that owns `host`: highest score, ties broken by the smaller name.
pub fn owner<'a>(host: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .map(|m| (score(m, host), std::cmp::Reverse(m), m))
        .max()
        .map(|(_, _, m)| m)
}

/// One member's lease as this replica last saw it, stamped with our monotonic time.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    record: LeaseSpec,
    changed_at_ms: u64,
}

/// What this replica knows of the group: every member lease it has seen, when each last
/// changed by our clock, and since when we ourselves have been a member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    seen: BTreeMap<String, Seen>,
    /// Our own membership: monotonic time of the renewal that started the current unbroken
    /// run of successful renewals, and of the latest one.
    own_since_ms: Option<u64>,
    own_renewed_ms: Option<u64>,
}

impl Membership {
    /// Folds in the member leases as listed now (`identity → spec`). A member whose record
    /// changed is stamped `now_ms`; one that vanished is forgotten.
    pub fn observe(&mut self, listed: &BTreeMap<String, LeaseSpec>, now_ms: u64) {
        self.seen.retain(|k, _| listed.contains_key(k));
        for (id, spec) in listed {
            match self.seen.get_mut(id) {
                Some(s) if s.record == *spec => {}
                _ => {
                    self.seen.insert(
                        id.clone(),
                        Seen {
                            record: spec.clone(),
                            changed_at_ms: now_ms,
                        },
                    );
                }
            }
        }
    }

    /// Our own lease was renewed (or not) at `now_ms`.
    pub fn renewed(&mut self, ok: bool, now_ms: u64) {
        if ok {
            if self.own_since_ms.is_none() {
                self.own_since_ms = Some(now_ms);
            }
            self.own_renewed_ms = Some(now_ms);
        } else if let Some(last) = self.own_renewed_ms
            && last + (LEASE_DURATION - RENEW_INTERVAL).as_millis() as u64 <= now_ms
        {
            // We can no longer prove our lease is live: others may soon take our hosts.
            self.own_since_ms = None;
            self.own_renewed_ms = None;
        }
    }

    /// The members whose lease is live at `now_ms`, by our clock.
    pub fn live(&self, now_ms: u64) -> BTreeSet<String> {
        self.seen
            .iter()
            .filter(|(_, s)| {
                s.record.holder_identity.is_some() && {
                    let d = u64::try_from(s.record.lease_duration_seconds.unwrap_or(15))
                        .unwrap_or(0)
                        * 1000;
                    s.changed_at_ms + d > now_ms
                }
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The ring as it stands for `me` at `now_ms`.
    pub fn ring(&self, me: &str, now_ms: u64) -> Ring {
        let mut members = self.live(now_ms);
        let own_live = self.own_since_ms.is_some();
        if own_live {
            members.insert(me.to_string());
        } else {
            members.remove(me);
        }
        let claiming = self
            .own_since_ms
            .is_some_and(|since| since + CLAIM_AFTER.as_millis() as u64 <= now_ms);
        Ring {
            me: me.to_string(),
            members,
            claiming,
        }
    }
}

/// Who owns what, as one replica sees it at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    pub me: String,
    /// Live members, us included while our own lease is live.
    pub members: BTreeSet<String>,
    /// We have been a member long enough for everyone else to have seen us.
    pub claiming: bool,
}

impl Ring {
    /// A ring of one that owns everything: sharding off.
    pub fn single(me: &str) -> Self {
        Self {
            me: me.to_string(),
            members: BTreeSet::from([me.to_string()]),
            claiming: true,
        }
    }

    /// Whether this replica may work on `host` now.
    pub fn owns(&self, host: &str) -> bool {
        self.claiming && owner(host, self.members.iter().map(String::as_str)) == Some(&self.me)
    }

    /// The member that owns `host` (for status and metrics), whether or not we claim yet.
    pub fn owner_of(&self, host: &str) -> Option<&str> {
        owner(host, self.members.iter().map(String::as_str))
    }
}

/// Keeps this replica's member Lease renewed and publishes the ring it sees.
pub struct ShardMember {
    api: Api<Lease>,
    group: String,
    identity: String,
    started: Instant,
    ring: watch::Sender<Ring>,
}

fn lease_name(group: &str, identity: &str) -> String {
    // Lease names are DNS subdomains: keep what is allowed, fold the rest.
    let id: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{group}-{id}");
    name.truncate(253);
    name
}

impl ShardMember {
    pub fn new(client: Client, namespace: &str, group: &str, identity: &str) -> Arc<Self> {
        let (ring, _) = watch::channel(Ring {
            me: identity.to_string(),
            members: BTreeSet::new(),
            claiming: false,
        });
        Arc::new(Self {
            api: Api::namespaced(client, namespace),
            group: group.to_string(),
            identity: identity.to_string(),
            started: Instant::now(),
            ring,
        })
    }

    /// The ring, updated after every renewal.
    pub fn subscribe(&self) -> watch::Receiver<Ring> {
        self.ring.subscribe()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn renew(&self) -> Result<(), kube::Error> {
        let name = lease_name(&self.group, &self.identity);
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        };
        match self.api.get_opt(&name).await? {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        labels: Some([(GROUP_LABEL.to_string(), self.group.clone())].into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<BTreeMap<String, LeaseSpec>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{GROUP_LABEL}={}", self.group));
        Ok(self
            .api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|l| {
                let spec = l.spec?;
                let id = spec.holder_identity.clone()?;
                (id != self.identity).then_some((id, spec))
            })
            .collect())
    }

    /// Renews and re-reads the group every [`RENEW_INTERVAL`], for ever.
    pub async fn run(&self) {
        let mut membership = Membership::default();
        loop {
            let ok = match self.renew().await {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, group = %self.group, "renewing the shard lease failed");
                    false
                }
            };
            membership.renewed(ok, self.now_ms());
            match self.list().await {
                Ok(listed) => membership.observe(&listed, self.now_ms()),
                Err(e) => warn!(error = %e, "listing the shard members failed"),
            }
            let ring = membership.ring(&self.identity, self.now_ms());
            self.ring.send_if_modified(|old| {
                if *old == ring {
                    return false;
                }
                info!(members = ?ring.members, claiming = ring.claiming, "shard ring changed");
                *old = ring;
                true
            });
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Deletes our member lease on shutdown, so the others take our hosts at once.
    pub async fn leave(&self) {
        let name = lease_name(&self.group, &self.identity);
        if let Ok(Some(l)) = self.api.get_opt(&name).await
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            let _ = self
                .api
                .delete(&l.name_any(), &DeleteParams::default())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, n: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(id.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_millisecond(n).unwrap())),
            ..LeaseSpec::default()
        }
    }

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("web-{i:04}")).collect()
    }

    #[test]
    fn every_host_has_exactly_one_owner_and_the_split_is_even() {
        let members = ["op-a", "op-b", "op-c"];
        let mut counts = BTreeMap::<&str, usize>::new();
        for h in hosts(3000) {
            *counts.entry(owner(&h, members).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 3000);
        for (m, c) in &counts {
            assert!((850..=1150).contains(c), "{m} owns {c} of 3000: {counts:?}");
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_hosts() {
        let before = ["op-a", "op-b", "op-c"];
        let after = ["op-a", "op-c"];
        for h in hosts(2000) {
            let was = owner(&h, before).unwrap();
            let now = owner(&h, after).unwrap();
            if was != "op-b" {
                assert_eq!(
                    was, now,
                    "{h} moved from {was} to {now} though {was} stayed"
                );
            }
        }
    }

    #[test]
    fn a_member_joining_takes_only_hosts_it_wins() {
        let before = ["op-a", "op-b"];
        let after = ["op-a", "op-b", "op-c"];
        let moved = hosts(2000)
            .iter()
            .filter(|h| owner(h, before) != owner(h, after))
            .inspect(|h| assert_eq!(owner(h, after), Some("op-c")))
            .count();
        assert!((500..=850).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn a_new_member_claims_nothing_until_everyone_has_seen_it() {
        let mut m = Membership::default();
        m.renewed(true, 0);
        assert!(!m.ring("me", 0).claiming);
        assert!(!m.ring("me", CLAIM_AFTER.as_millis() as u64 - 1).claiming);
        m.renewed(true, 5_000);
        let r = m.ring("me", CLAIM_AFTER.as_millis() as u64);
        assert!(r.claiming);
        assert!(
            hosts(10).iter().all(|h| r.owns(h)),
            "alone, we own every host"
        );
    }

    #[test]
    fn the_others_yield_as_soon_as_they_see_a_new_member() {
        let mut m = Membership::default();
        m.renewed(true, 0);
        m.renewed(true, 20_000);
        let alone = m.ring("op-a", 20_000);
        m.observe(&[("op-b".to_string(), spec("op-b", 1))].into(), 20_000);
        let with_b = m.ring("op-a", 20_000);
        let given_up: Vec<_> = hosts(100)
            .into_iter()
            .filter(|h| alone.owns(h) && !with_b.owns(h))
            .collect();
        assert!(!given_up.is_empty());
        assert!(given_up.iter().all(|h| with_b.owner_of(h) == Some("op-b")));
    }

    #[test]
    fn a_dead_member_is_taken_over_only_after_its_lease_expires_by_our_clock() {
        let mut m = Membership::default();
        let b = [("op-b".to_string(), spec("op-b", 1))].into();
        m.renewed(true, 0);
        m.observe(&b, 0);
        m.renewed(true, 20_000);
        // op-b stopped renewing at 0: its record never changes again.
        m.observe(&b, 14_999);
        assert!(m.live(14_999).contains("op-b"));
        m.observe(&b, 15_000);
        assert!(!m.live(15_000).contains("op-b"));
        let r = m.ring("op-a", 20_000);
        assert!(hosts(50).iter().all(|h| r.owns(h)));
    }

    #[test]
    fn a_member_that_cannot_renew_stops_before_its_lease_could_expire() {
        let mut m = Membership::default();
        m.renewed(true, 0);
        m.renewed(true, 20_000);
        assert!(m.ring("me", 20_000).owns("web-0001"));
        m.renewed(false, 25_000);
        assert!(
            m.ring("me", 25_000).owns("web-0001"),
            "one failed renewal is not yet a loss"
        );
        // Last renewal at 20 s; the lease is live until 35 s by anyone's count. We stop at
        // 30 s, one renew interval early, before any other replica may claim our hosts.
        m.renewed(false, 30_000);
        let r = m.ring("me", 30_000);
        assert!(!r.owns("web-0001"));
        assert!(!r.members.contains("me"));
        // Back: we must wait a whole claim delay again.
        m.renewed(true, 31_000);
        assert!(!m.ring("me", 31_000).claiming);
    }

    #[test]
    fn lease_names_are_valid_for_any_identity() {
        assert_eq!(lease_name("fleetsnap", "Pod_7:x"), "fleetsnap-pod-7-x");
    }
}
