//! One circuit breaker per host, shared by every controller through the pool.
//!
//! A host whose connection failed is not contacted again until its backoff has passed; until
//! then every caller gets the last failure back at once, with no permit, no `ssh` process and
//! no network. After the backoff, one caller probes (the pool's per-host lock serialises
//! them); success closes the circuit, failure opens it again for twice as long.
//!
//! Pure: callers pass the time in, so the table tests below need no clock.

use std::time::{Duration, Instant};

use crate::host::HostError;

/// Backoff of the first failure; it doubles per failure in a row up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct BackoffSettings {
    pub base: Duration,
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// What the last failure was, enough to give callers the same class of error (a wrong key
/// stays `AuthFailed` in status while the circuit is open, it does not become "unreachable").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tripped {
    Unreachable(String),
    AuthFailed(String),
    HostKeyMismatch,
}

impl Tripped {
    /// The failures that say "this host cannot be worked on right now". Failures of a command
    /// on a reachable host (a full disk, a bad unit) say nothing about the connection.
    pub fn of(e: &HostError) -> Option<Self> {
        match e {
            HostError::Unreachable { detail, .. } => Some(Tripped::Unreachable(detail.clone())),
            HostError::AuthFailed { detail, .. } => Some(Tripped::AuthFailed(detail.clone())),
            HostError::HostKeyMismatch { .. } => Some(Tripped::HostKeyMismatch),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Breaker {
    /// Trust inputs the state was learned under: a new key or address starts afresh.
    fingerprint: String,
    failures: u32,
    open_until: Option<Instant>,
    last: Option<Tripped>,
}

/// The breaker's answer to "may I contact the host now?".
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Refused: the last failure and how long until a probe is allowed.
    Refuse {
        last: Tripped,
        failures: u32,
        retry_in: Duration,
    },
}

impl Breaker {
    pub fn admit(&mut self, fingerprint: &str, now: Instant) -> Admit {
        if self.fingerprint != fingerprint {
            *self = Breaker {
                fingerprint: fingerprint.to_string(),
                ..Breaker::default()
            };
        }
        match (&self.open_until, &self.last) {
            (Some(until), Some(last)) if *until > now => Admit::Refuse {
                last: last.clone(),
                failures: self.failures,
                retry_in: *until - now,
            },
            _ => Admit::Go,
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.last = None;
    }

    /// Records a failure; returns how long the circuit now stays open.
    pub fn failed(
        &mut self,
        tripped: Tripped,
        now: Instant,
        settings: BackoffSettings,
        jitter_seed: u64,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, settings, jitter_seed);
        self.open_until = Some(now + wait);
        self.last = Some(tripped);
        wait
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|u| u > now)
    }

    /// Time left until the next probe, if the circuit is open.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }
}

/// `base · 2^(n-1)` capped at `max`, then shortened by up to 20 % by a per-host seed, so a
/// rack that went down together is not probed in lockstep.
pub fn backoff(failures: u32, s: BackoffSettings, jitter_seed: u64) -> Duration {
    let doubling = 1u32 << failures.saturating_sub(1).min(16);
    let full = s.base.saturating_mul(doubling).min(s.max);
    let cut = full.mul_f64((jitter_seed % 1000) as f64 / 1000.0 * 0.2);
    full.saturating_sub(cut)
}

/// The error a refused caller gets: the same class and text as the failure that opened the
/// circuit (the text changes only when a probe fails again, so status is not rewritten by
/// every refusal).
pub fn refused_error(host: &str, last: &Tripped, failures: u32) -> HostError {
    let host = host.to_string();
    let when = format!("{failures} attempt(s) in a row failed; retried with backoff");
    match last {
        Tripped::Unreachable(d) => HostError::Unreachable {
            host,
            detail: format!("{d} ({when})"),
        },
        Tripped::AuthFailed(d) => HostError::AuthFailed {
            host,
            detail: format!("{d} ({when})"),
        },
        Tripped::HostKeyMismatch => HostError::HostKeyMismatch { host },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: BackoffSettings = BackoffSettings {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_only_shortens() {
        let table = [
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 300),
            (40, 300),
        ];
        for (n, secs) in table {
            assert_eq!(backoff(n, S, 0), Duration::from_secs(secs), "failure {n}");
            let j = backoff(n, S, 999);
            assert!(j <= Duration::from_secs(secs) && j >= Duration::from_secs(secs).mul_f64(0.8));
        }
    }

    #[test]
    fn an_open_circuit_refuses_until_its_backoff_passed_then_lets_one_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.admit("fp", t0), Admit::Go);
        let wait = b.failed(Tripped::Unreachable("timed out".into()), t0, S, 0);
        assert_eq!(wait, Duration::from_secs(10));
        match b.admit("fp", t0 + Duration::from_secs(3)) {
            Admit::Refuse {
                failures, retry_in, ..
            } => {
                assert_eq!(failures, 1);
                assert_eq!(retry_in, Duration::from_secs(7));
            }
            Admit::Go => panic!("an open circuit let a caller through"),
        }
        assert_eq!(b.admit("fp", t0 + Duration::from_secs(10)), Admit::Go);
        // The probe failed again: twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            b.failed(Tripped::Unreachable("timed out".into()), t1, S, 0),
            Duration::from_secs(20)
        );
        assert!(b.is_open(t1 + Duration::from_secs(19)));
        b.succeeded();
        assert_eq!(b.admit("fp", t1 + Duration::from_secs(1)), Admit::Go);
    }

    #[test]
    fn a_new_key_or_address_closes_the_circuit() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.admit("old", t0);
        b.failed(Tripped::AuthFailed("denied".into()), t0, S, 0);
        assert!(matches!(b.admit("old", t0), Admit::Refuse { .. }));
        assert_eq!(b.admit("new", t0), Admit::Go);
    }

    #[test]
    fn refusals_keep_the_class_of_the_failure() {
        let e = refused_error("h", &Tripped::AuthFailed("denied".into()), 2);
        assert_eq!(e.reason(), "AuthFailed");
        assert!(
            e.to_string()
                .contains("denied (2 attempt(s) in a row failed"),
            "{e}"
        );
        let e = refused_error("h", &Tripped::HostKeyMismatch, 1);
        assert_eq!(e.reason(), "HostKeyMismatch");
        let cmd = HostError::CommandFailed {
            host: "h".into(),
            cmd: "x".into(),
            code: Some(1),
            stderr_tail: String::new(),
        };
        assert_eq!(Tripped::of(&cmd), None);
    }
}
