//! The seam between host logic and transport: apply and observe speak only this trait, so
//! they run against a scripted fake in unit tests and against SSH in production.
//!
//! Output is bounded here, for every transport: [`Capture`] is the one accumulator both the
//! SSH transport and the test fake feed, and [`run_ok`] decides what an overflow means.

use std::future::Future;

use super::error::{HostError, stderr_tail};
use crate::limits::{MAX_STDERR, MAX_STDOUT};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// `None` when the remote process was killed by a signal, or its channel was dropped
    /// because it printed more than the limit.
    pub code: Option<i32>,
    /// At most the limit's bytes: the first ones ([`StdoutLimit::Fail`]) or the last ones
    /// ([`StdoutLimit::Tail`]).
    pub stdout: Vec<u8>,
    /// The last [`MAX_STDERR`] bytes.
    pub stderr: Vec<u8>,
    /// More stdout arrived than the limit (and was not kept).
    pub stdout_truncated: bool,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How much stdout of one command the operator keeps, and what more means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdoutLimit {
    /// Keep up to this many bytes; more is an error ([`HostError::OutputTooLarge`]) and the
    /// transport stops reading and drops the command's channel.
    Fail(usize),
    /// Keep the last this many bytes (for output whose end is what counts); never an error.
    Tail(usize),
}

impl StdoutLimit {
    pub fn bytes(self) -> usize {
        match self {
            StdoutLimit::Fail(n) | StdoutLimit::Tail(n) => n,
        }
    }
}

impl Default for StdoutLimit {
    fn default() -> Self {
        StdoutLimit::Fail(MAX_STDOUT)
    }
}

/// A bounded buffer for one output stream. Pure: transports push what they read.
#[derive(Debug)]
pub struct Capture {
    buf: Vec<u8>,
    max: usize,
    keep_tail: bool,
    truncated: bool,
}

impl Capture {
    pub fn new(limit: StdoutLimit) -> Self {
        let (max, keep_tail) = match limit {
            StdoutLimit::Fail(n) => (n, false),
            StdoutLimit::Tail(n) => (n, true),
        };
        Capture {
            buf: Vec::new(),
            max,
            keep_tail,
            truncated: false,
        }
    }

    /// The tail-keeping capture used for stderr.
    pub fn stderr() -> Self {
        Capture::new(StdoutLimit::Tail(MAX_STDERR))
    }

    /// Adds a chunk. Returns false once a [`StdoutLimit::Fail`] capture overflowed: the
    /// reader should stop (nothing more will be kept).
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.keep_tail {
            self.buf.extend_from_slice(chunk);
            // Trim in batches: at most twice the limit is ever held.
            if self.buf.len() > self.max.saturating_mul(2).max(8192) {
                let cut = self.buf.len() - self.max;
                self.buf.drain(..cut);
                self.truncated = true;
            }
            return true;
        }
        let room = self.max - self.buf.len();
        if chunk.len() > room {
            self.buf.extend_from_slice(&chunk[..room]);
            self.truncated = true;
            return false;
        }
        self.buf.extend_from_slice(chunk);
        true
    }

    pub fn overflowed(&self) -> bool {
        self.truncated && !self.keep_tail
    }

    /// The kept bytes and whether any were dropped.
    pub fn finish(mut self) -> (Vec<u8>, bool) {
        if self.buf.len() > self.max {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
            self.truncated = true;
        }
        (self.buf, self.truncated)
    }
}

pub trait HostShell: Sync {
    /// Host name for spans and errors.
    fn host_name(&self) -> &str;

    /// Runs `argv` on the host (each element passed as one argument, never re-split by a
    /// shell) with `stdin` as its standard input. Secrets go in `stdin`, never in `argv`.
    /// A non-zero exit is not an error here; transport failures are. stdout is kept as
    /// `limit` says and stderr's last [`MAX_STDERR`] bytes, whatever the host sends.
    fn run_limited(
        &self,
        argv: &[&str],
        stdin: &[u8],
        limit: StdoutLimit,
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send;

    /// [`HostShell::run_limited`] with the default limit ([`MAX_STDOUT`], overflow fails).
    fn run(
        &self,
        argv: &[&str],
        stdin: &[u8],
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send {
        self.run_limited(argv, stdin, StdoutLimit::default())
    }
}

/// Runs a command and turns a non-zero exit into [`HostError::CommandFailed`] labelled `what`.
pub async fn run_ok<S: HostShell>(
    sh: &S,
    what: &str,
    argv: &[&str],
    stdin: &[u8],
) -> Result<CommandOutput, HostError> {
    run_ok_limited(sh, what, argv, stdin, StdoutLimit::default()).await
}

/// [`run_ok`] with a stdout limit; overflowing a [`StdoutLimit::Fail`] limit is
/// [`HostError::OutputTooLarge`], whatever the exit code.
pub async fn run_ok_limited<S: HostShell>(
    sh: &S,
    what: &str,
    argv: &[&str],
    stdin: &[u8],
    limit: StdoutLimit,
) -> Result<CommandOutput, HostError> {
    let out = sh.run_limited(argv, stdin, limit).await?;
    check_output(sh.host_name(), what, limit, out)
}

/// The decision on one command's output: too much, failed, or fine.
pub fn check_output(
    host: &str,
    what: &str,
    limit: StdoutLimit,
    out: CommandOutput,
) -> Result<CommandOutput, HostError> {
    let overflow = match limit {
        StdoutLimit::Fail(n) => out.stdout_truncated || out.stdout.len() > n,
        StdoutLimit::Tail(_) => false,
    };
    if overflow {
        return Err(HostError::OutputTooLarge {
            host: host.to_string(),
            cmd: what.to_string(),
            limit: limit.bytes(),
        });
    }
    if out.success() {
        Ok(out)
    } else {
        Err(HostError::CommandFailed {
            host: host.to_string(),
            cmd: what.to_string(),
            code: out.code,
            stderr_tail: stderr_tail(&out.stderr),
        })
    }
}

/// Runs a POSIX shell script with positional arguments. Scripts are constants of this crate;
/// variable data only ever arrives as `$1..` or on stdin, so nothing is interpolated.
pub async fn run_script<S: HostShell>(
    sh: &S,
    what: &str,
    script: &str,
    args: &[&str],
    stdin: &[u8],
) -> Result<CommandOutput, HostError> {
    run_script_limited(sh, what, script, args, stdin, StdoutLimit::default()).await
}

/// [`run_script`] with a stdout limit.
pub async fn run_script_limited<S: HostShell>(
    sh: &S,
    what: &str,
    script: &str,
    args: &[&str],
    stdin: &[u8],
    limit: StdoutLimit,
) -> Result<CommandOutput, HostError> {
    let mut argv = vec!["sh", "-c", script, "fleetsnap"];
    argv.extend_from_slice(args);
    run_ok_limited(sh, what, &argv, stdin, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_capture_stops_at_the_limit() {
        let mut c = Capture::new(StdoutLimit::Fail(10));
        assert!(c.push(b"12345"));
        assert!(c.push(b"67890"));
        assert!(!c.overflowed());
        assert!(!c.push(b"x"));
        assert!(c.overflowed());
        assert_eq!(c.finish(), (b"1234567890".to_vec(), true));
    }

    #[test]
    fn tail_capture_keeps_the_end_in_bounded_memory() {
        let mut c = Capture::new(StdoutLimit::Tail(10_000));
        for i in 0..10_000u32 {
            assert!(c.push(format!("line {i}\n").as_bytes()));
            assert!(c.buf.len() <= 20_000);
        }
        let (kept, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(kept.len(), 10_000);
        assert!(kept.ends_with(b"line 9999\n"));
    }

    #[test]
    fn overflow_is_an_error_before_the_exit_code_counts() {
        let out = CommandOutput {
            code: None,
            stdout: vec![b'x'; 4],
            stdout_truncated: true,
            ..Default::default()
        };
        let e =
            check_output("h", "read run records", StdoutLimit::Fail(4), out.clone()).unwrap_err();
        assert!(
            matches!(e, HostError::OutputTooLarge { limit: 4, .. }),
            "{e}"
        );
        // A tail limit never fails on size.
        let tail = CommandOutput {
            code: Some(0),
            ..out
        };
        assert!(check_output("h", "restore", StdoutLimit::Tail(4), tail).is_ok());
    }
}
