//! The one error type of the host layer. Each variant maps to a status condition reason and
//! a retry cadence in the controller, so classification matters more than wording.
//!
//! No variant carries secret material: commands are described by a label chosen by the
//! caller (never the argv or stdin), and stderr is truncated to a short tail of output from
//! commands that never receive secrets in a form they could echo.

use std::time::Duration;

/// Bytes of remote stderr kept in [`HostError::CommandFailed`].
const STDERR_TAIL: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host {host} is unreachable: {detail}")]
    Unreachable { host: String, detail: String },

    #[error("SSH authentication to host {host} failed: {detail}")]
    AuthFailed { host: String, detail: String },

    #[error("SSH host key of host {host} does not match the pinned key; nothing was changed")]
    HostKeyMismatch { host: String },

    #[error("on host {host}, {cmd} failed (exit code {code:?}): {stderr_tail}")]
    CommandFailed {
        host: String,
        cmd: String,
        code: Option<i32>,
        stderr_tail: String,
    },

    #[error("on host {host}, systemd-analyze verify rejected {units:?}: {output}")]
    VerifyFailed {
        host: String,
        units: Vec<String>,
        output: String,
    },

    #[error("on host {host}, {path} has sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        host: String,
        path: String,
        expected: String,
        actual: String,
    },

    #[error("invalid input for host {host}: {detail}")]
    InvalidSpec { host: String, detail: String },

    #[error("host {host} cannot run fleetsnap's jobs, so nothing was installed: {detail}")]
    Unsupported { host: String, detail: String },

    #[error("host {host} returned output that could not be understood ({what}): {detail}")]
    Protocol {
        host: String,
        what: String,
        detail: String,
    },

    #[error(
        "host {host} printed more than the {limit} bytes the operator reads for {cmd}; \
         the rest was not read and the command's connection was dropped"
    )]
    OutputTooLarge {
        host: String,
        cmd: String,
        limit: usize,
    },

    #[error("local I/O for host {host} failed ({what}): {source}")]
    Local {
        host: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    /// A short condition reason for status (`Ready=False, reason=...`).
    pub fn reason(&self) -> &'static str {
        match self {
            HostError::Unreachable { .. } => "HostUnreachable",
            HostError::AuthFailed { .. } => "AuthFailed",
            HostError::HostKeyMismatch { .. } => "HostKeyMismatch",
            HostError::CommandFailed { .. } => "CommandFailed",
            HostError::VerifyFailed { .. } => "UnitVerifyFailed",
            HostError::ChecksumMismatch { .. } => "ChecksumMismatch",
            HostError::InvalidSpec { .. } => "InvalidSpec",
            HostError::Unsupported { .. } => "UnsupportedHost",
            HostError::Protocol { .. } => "UnexpectedHostOutput",
            HostError::OutputTooLarge { .. } => "HostOutputTooLarge",
            HostError::Local { .. } => "OperatorIOError",
        }
    }

    /// What the user can do about it; goes into the condition message next to the error.
    pub fn hint(&self) -> &'static str {
        match self {
            HostError::Unreachable { .. } => {
                "check that the host is running, the address and port in the Host resource, \
                 and that sshd is reachable from the operator"
            }
            HostError::AuthFailed { .. } => {
                "check that the public half of the SSH key Secret is in the user's \
                 authorized_keys and that the user in the Host resource is right"
            }
            HostError::HostKeyMismatch { .. } => {
                "the host presented a different SSH host key than pinned in the Host resource; \
                 if the host was legitimately reinstalled, update the pinned key, otherwise \
                 investigate a possible man-in-the-middle"
            }
            HostError::CommandFailed { .. } => {
                "a command on the host failed; the stderr tail says why (disk full, \
                 read-only filesystem, missing sudo rights...)"
            }
            HostError::VerifyFailed { .. } => {
                "systemd on the host rejected the generated units (often an invalid OnCalendar \
                 expression or an old systemd); the installed units were left unchanged"
            }
            HostError::ChecksumMismatch { .. } => {
                "the executor binary did not arrive intact or the local artifact is wrong; it \
                 was not installed. Retry, and check the pinned sha256 of the executor"
            }
            HostError::InvalidSpec { .. } => "fix the policy or host spec named in the message",
            HostError::Unsupported { .. } => {
                "docs/security.md lists the hosts fleetsnap supports; take this host out of the \
                 policy's selector, or upgrade it"
            }
            HostError::Protocol { .. } => {
                "the host's tools printed something unexpected; check the host's systemd and \
                 coreutils versions"
            }
            HostError::OutputTooLarge { .. } => {
                "fleetsnap's own commands never print this much; check the host for tampering \
                 (a replaced shell or coreutils, oversized files under /var/lib/fleetsnap/runs); \
                 the limits are in docs/host-layout.md"
            }
            HostError::Local { .. } => {
                "the operator could not use its local temporary directory or artifact cache"
            }
        }
    }

    /// Transient failures are retried soon; the rest wait for a spec change or a slow
    /// backoff, so that a bad key does not turn into a connection storm.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HostError::Unreachable { .. }
                | HostError::CommandFailed { .. }
                | HostError::ChecksumMismatch { .. }
                | HostError::Local { .. }
        )
    }

    /// Suggested delay before the controller retries this host.
    pub fn retry_after(&self) -> Duration {
        match self {
            HostError::Unreachable { .. } => Duration::from_secs(30),
            HostError::CommandFailed { .. }
            | HostError::ChecksumMismatch { .. }
            | HostError::Local { .. } => Duration::from_secs(60),
            HostError::Protocol { .. }
            | HostError::OutputTooLarge { .. }
            | HostError::VerifyFailed { .. } => Duration::from_secs(300),
            HostError::AuthFailed { .. }
            | HostError::HostKeyMismatch { .. }
            | HostError::InvalidSpec { .. }
            | HostError::Unsupported { .. } => Duration::from_secs(900),
        }
    }
}

/// The last `STDERR_TAIL` bytes of `stderr`, lossily decoded, starting at a char boundary.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&stderr[start..]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded() {
        let long = vec![b'x'; 10_000];
        assert_eq!(stderr_tail(&long).len(), STDERR_TAIL);
        assert_eq!(stderr_tail(b"  boom\n"), "boom");
    }

    #[test]
    fn every_variant_has_a_hint_and_reason() {
        let e = HostError::HostKeyMismatch { host: "h".into() };
        assert_eq!(e.reason(), "HostKeyMismatch");
        assert!(!e.is_transient());
        assert!(e.hint().contains("pinned"));
        assert!(e.to_string().contains("nothing was changed"));
    }
}
