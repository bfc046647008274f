//! The seam between host logic and transport: apply and observe speak only this trait, so
//! they run against a scripted fake in unit tests and against SSH in production.

use std::future::Future;

use super::error::{HostError, stderr_tail};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// `None` when the remote process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub trait HostShell: Sync {
    /// Host name for spans and errors.
    fn host_name(&self) -> &str;

    /// Runs `argv` on the host (each element passed as one argument, never re-split by a
    /// shell) with `stdin` as its standard input. Secrets go in `stdin`, never in `argv`.
    /// A non-zero exit is not an error here; transport failures are.
    fn run(
        &self,
        argv: &[&str],
        stdin: &[u8],
    ) -> impl Future<Output = Result<CommandOutput, HostError>> + Send;
}

/// Runs a command and turns a non-zero exit into [`HostError::CommandFailed`] labelled `what`.
pub async fn run_ok<S: HostShell>(
    sh: &S,
    what: &str,
    argv: &[&str],
    stdin: &[u8],
) -> Result<CommandOutput, HostError> {
    let out = sh.run(argv, stdin).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(HostError::CommandFailed {
            host: sh.host_name().to_string(),
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
    let mut argv = vec!["sh", "-c", script, "fleetsnap"];
    argv.extend_from_slice(args);
    run_ok(sh, what, &argv, stdin).await
}
