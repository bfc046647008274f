//! Error classification: every failure becomes a condition reason, a message that says what
//! to fix, and a retry cadence. Messages come from errors that never carry secret material
//! (see `host::error`), so they are safe for status, Events and logs.

use std::time::Duration;

use fleetsnap_crds::common::reasons;

use super::derive::DeriveError;
use crate::host::HostError;
use crate::limits::{MAX_ERROR_TEXT, bounded};

/// Reason for a host-side action that failed after connecting.
pub const APPLY_FAILED: &str = "ApplyFailed";
/// Reason for a spec value the host layer refused.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// When to look at a failing (policy, host) pair again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Likely to heal by itself: exponential backoff from 10 s to 5 min.
    Backoff,
    /// Needs a human (wrong key, pinned host key changed): try rarely, no connection storm.
    Slow(Duration),
    /// A spec or Secret is wrong: only a change to an object helps (the watches trigger it).
    OnChange,
}

/// A classified failure of one (policy, host) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub retry: Retry,
}

impl Failure {
    pub fn from_host(e: &HostError) -> Self {
        let (reason, retry) = match e {
            HostError::Unreachable { .. } => (reasons::HOST_UNREACHABLE, Retry::Backoff),
            HostError::AuthFailed { .. } => (reasons::AUTH_FAILED, Retry::Slow(e.retry_after())),
            HostError::HostKeyMismatch { .. } => {
                (reasons::HOST_KEY_MISMATCH, Retry::Slow(e.retry_after()))
            }
            HostError::InvalidSpec { .. } => (INVALID_SPEC, Retry::OnChange),
            // An upgraded host changes no object, so it is looked at again now and then.
            HostError::Unsupported { .. } => {
                (reasons::UNSUPPORTED_HOST, Retry::Slow(e.retry_after()))
            }
            HostError::OutputTooLarge { .. } => (e.reason(), Retry::Slow(e.retry_after())),
            HostError::VerifyFailed { .. } | HostError::Protocol { .. } => {
                (APPLY_FAILED, Retry::Slow(e.retry_after()))
            }
            HostError::CommandFailed { .. }
            | HostError::ChecksumMismatch { .. }
            | HostError::Local { .. } => (APPLY_FAILED, Retry::Backoff),
        };
        // The error part may carry host output (a stderr tail): bounded so that the message
        // with its hint and reason fits one host's share of status.
        let hint = e.hint();
        let room = MAX_ERROR_TEXT.saturating_sub(hint.len() + reason.len() + 4);
        Failure {
            reason,
            message: format!("{}; {hint}", bounded(&e.to_string(), room)),
            retry,
        }
    }

    pub fn from_derive(e: &DeriveError) -> Self {
        Failure {
            reason: e.reason,
            message: e.message.clone(),
            retry: Retry::OnChange,
        }
    }

    /// A whole reconcile step that timed out (e.g. a host that accepts TCP then stalls).
    pub fn timeout(host: &str, after: Duration) -> Self {
        Failure {
            reason: reasons::HOST_UNREACHABLE,
            message: format!("host {host} did not finish its work within {after:?}"),
            retry: Retry::Backoff,
        }
    }

    /// Whether waiting alone can fix it; spec and trust problems cannot.
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Backoff
    }
}

/// Backoff for the `attempt`-th consecutive transient failure (1-based): 10 s doubling up to
/// 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 10u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// When to look at a failure again; `None` means wait for an object change.
pub fn retry_after(f: &Failure, attempt: u32) -> Option<Duration> {
    match f.retry {
        Retry::Backoff => Some(backoff(attempt)),
        Retry::Slow(d) => Some(d),
        Retry::OnChange => None,
    }
}

/// Errors of a reconcile as a whole (not of one host): the controller's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup of {policy} is incomplete on host(s) {hosts}")]
    CleanupIncomplete { policy: String, hosts: String },
    #[error("object has no namespace")]
    NoNamespace,
    /// An API read that was already classified (e.g. a Secret read), message included.
    #[error("Kubernetes API: {0}")]
    KubeRead(String),
}

impl Error {
    /// Metric label for `fleetsnap_reconcile_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApiError",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
            Error::CleanupIncomplete { .. } => "CleanupIncomplete",
            Error::NoNamespace => "InvalidSpec",
            Error::KubeRead(_) => "KubeApiError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let got: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 10);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn host_errors_map_to_reasons_and_cadence() {
        let unreachable = HostError::Unreachable {
            host: "h".into(),
            detail: "connection refused".into(),
        };
        let f = Failure::from_host(&unreachable);
        assert_eq!(f.reason, "HostUnreachable");
        assert!(f.is_transient());
        assert_eq!(retry_after(&f, 3), Some(Duration::from_secs(40)));

        let mismatch = Failure::from_host(&HostError::HostKeyMismatch { host: "h".into() });
        assert_eq!(mismatch.reason, "HostKeyMismatch");
        assert!(!mismatch.is_transient());
        assert!(retry_after(&mismatch, 1).unwrap() >= Duration::from_secs(600));

        let auth = Failure::from_host(&HostError::AuthFailed {
            host: "h".into(),
            detail: "Permission denied".into(),
        });
        assert_eq!(auth.reason, reasons::AUTH_FAILED);
        assert!(matches!(auth.retry, Retry::Slow(_)));

        let cmd = Failure::from_host(&HostError::CommandFailed {
            host: "h".into(),
            cmd: "write".into(),
            code: Some(1),
            stderr_tail: "disk full".into(),
        });
        assert_eq!(cmd.reason, APPLY_FAILED);
        assert!(cmd.message.contains("disk full"));

        let spec = Failure::from_host(&HostError::InvalidSpec {
            host: "h".into(),
            detail: "bad".into(),
        });
        assert_eq!(retry_after(&spec, 1), None);
    }

    #[test]
    fn derive_errors_wait_for_a_change() {
        let f = Failure::from_derive(&DeriveError {
            reason: reasons::SECRET_NOT_FOUND,
            message: "Secret \"k\" does not exist".into(),
        });
        assert_eq!(f.retry, Retry::OnChange);
        assert_eq!(f.reason, "SecretNotFound");
    }
}
