//! Retrying operations that failed for reasons that may go away (timeouts, 5xx, resets).
//!
//! Every repository write is idempotent (files are content-addressed and written whole), so
//! repeating a failed request is always safe; only the error kind decides whether to.

use std::time::Duration;

use rand::Rng;
use tracing::warn;

use super::{BackendErrorKind, BackendResult};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter, so that many hosts hitting one struggling
    /// server do not retry in lockstep.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_backoff);
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
    }

    pub fn run<T>(&self, mut f: impl FnMut() -> BackendResult<T>) -> BackendResult<T> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e)
                    if e.kind == BackendErrorKind::Transient && attempt + 1 < self.max_attempts =>
                {
                    let wait = self.delay(attempt);
                    warn!(op = e.op, what = %e.what, error = %e.message, attempt = attempt + 1,
                          wait_ms = wait.as_millis() as u64, "transient backend error, retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    fn err(kind: BackendErrorKind) -> BackendError {
        BackendError::new(kind, "read", "x", "loc", "m")
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[test]
    fn retries_transient_until_success() {
        let mut n = 0;
        let r = fast().run(|| {
            n += 1;
            if n < 3 {
                Err(err(BackendErrorKind::Transient))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);
    }

    #[test]
    fn gives_up_after_max_attempts_and_never_retries_permanent_errors() {
        let mut n = 0;
        let r: BackendResult<()> = fast().run(|| {
            n += 1;
            Err(err(BackendErrorKind::Transient))
        });
        assert_eq!(r.unwrap_err().kind, BackendErrorKind::Transient);
        assert_eq!(n, 3);

        let mut n = 0;
        let r: BackendResult<()> = fast().run(|| {
            n += 1;
            Err(err(BackendErrorKind::Denied))
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert!(p.delay(0) <= Duration::from_millis(100));
        assert!(p.delay(3) >= Duration::from_millis(400));
        assert!(p.delay(30) <= Duration::from_secs(1));
    }
}
