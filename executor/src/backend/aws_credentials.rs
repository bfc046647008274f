//! Where the S3 backend gets its AWS credentials when they are not the SDK's default chain.
//!
//! - **Static** keys (`S3Options::static_credentials`), optionally with a session token
//!   (credentials minted by STS, Vault's AWS engine or any broker): they go straight into the
//!   client and never enter an environment.
//! - **Process** (`S3Options::credential_process`): the AWS `credential_process` contract. The executor runs the program
//!   (argv, no shell) whenever the SDK's identity cache needs credentials, i.e. at the start
//!   and again shortly before the previous ones' `Expiration`. So a long run keeps working on
//!   credentials that expire in minutes, and nothing long-lived is stored on the host. Its
//!   output is bounded and it gets a deadline, like everything else read from outside.
//!
//! Leaving both unset means the SDK's default chain (environment, profile with
//! `credential_process`, web identity, ECS, EC2 instance metadata): the "ambient" source.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

/// Largest output of a credential process we read; real ones print well under 4 KiB.
pub const PROCESS_OUTPUT_CAP: usize = 64 * 1024;
/// How long a credential process may take.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Expiration of the newest key a credential process printed in this process, for the run
/// record (one job per process).
static LAST_EXPIRY: std::sync::Mutex<Option<SystemTime>> = std::sync::Mutex::new(None);

/// When the newest key from a credential process expires, if one was fetched.
pub fn last_process_expiry() -> Option<SystemTime> {
    *LAST_EXPIRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `credential_process` provider.
#[derive(Debug)]
pub struct CredentialProcess {
    command: Vec<String>,
}

impl CredentialProcess {
    pub fn new(command: Vec<String>) -> Self {
        Self { command }
    }

    async fn run(&self) -> provider::Result {
        let program = self
            .command
            .first()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                CredentialsError::invalid_configuration("credential process: no command")
            })?;
        let mut child = tokio::process::Command::new(program)
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "credential process {program}: cannot start: {e}"
                ))
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // The first 4 KiB of stderr are kept for the error message; the rest is drained so
        // that a chatty broker never blocks on a full pipe. It ends when the child does.
        let stderr_task = tokio::spawn(async move {
            let mut err = Vec::new();
            let mut err_r = stderr.take(4096);
            err_r.read_to_end(&mut err).await?;
            tokio::io::copy(&mut err_r.into_inner(), &mut tokio::io::sink()).await?;
            Ok::<_, std::io::Error>(err)
        });
        let work = async {
            let mut out = Vec::new();
            stdout
                .take(PROCESS_OUTPUT_CAP as u64 + 1)
                .read_to_end(&mut out)
                .await?;
            if out.len() > PROCESS_OUTPUT_CAP {
                // Over the cap: stop here; dropping the child kills it.
                return Ok(None);
            }
            let status = child.wait().await?;
            let err = stderr_task.await.map_err(std::io::Error::other)??;
            Ok::<_, std::io::Error>(Some((status, out, err)))
        };
        let result = tokio::time::timeout(PROCESS_TIMEOUT, work)
            .await
            .map_err(|_| CredentialsError::provider_timed_out(PROCESS_TIMEOUT))?
            .map_err(|e| {
                CredentialsError::provider_error(format!("credential process {program}: {e}"))
            })?;
        let Some((status, out, err)) = result else {
            return Err(CredentialsError::provider_error(format!(
                "credential process {program} printed more than {PROCESS_OUTPUT_CAP} bytes"
            )));
        };
        if !status.success() {
            let first = String::from_utf8_lossy(&err);
            let first = first.lines().next().unwrap_or("").chars().take(300);
            return Err(CredentialsError::provider_error(format!(
                "credential process {program} failed ({status}): {}",
                first.collect::<String>()
            )));
        }
        let creds = parse_process_output(&out, SystemTime::now()).map_err(|m| {
            CredentialsError::provider_error(format!("credential process {program}: {m}"))
        })?;
        *LAST_EXPIRY.lock().unwrap_or_else(|e| e.into_inner()) = creds.expiry();
        Ok(creds)
    }
}

impl ProvideCredentials for CredentialProcess {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.run())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// Parses the `credential_process` JSON (Version 1). Error messages never quote the output:
/// it holds the secret.
pub fn parse_process_output(out: &[u8], now: SystemTime) -> Result<Credentials, String> {
    let p: ProcessOutput = serde_json::from_slice(out).map_err(|e| {
        // serde's message names a line and column, never the content.
        format!("output is not credential_process JSON ({e})")
    })?;
    if p.version != 1 {
        return Err(format!("output has Version {}, only 1 is known", p.version));
    }
    if p.access_key_id.is_empty() || p.secret_access_key.is_empty() {
        return Err("output has an empty AccessKeyId or SecretAccessKey".into());
    }
    let expiry = match &p.expiration {
        None => None,
        Some(t) => {
            let t = chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| format!("Expiration {t:?} is not RFC 3339: {e}"))?;
            let t = SystemTime::from(t.with_timezone(&chrono::Utc));
            if t <= now {
                return Err("the credentials it printed have already expired".into());
            }
            Some(t)
        }
    };
    Ok(Credentials::new(
        p.access_key_id,
        p.secret_access_key,
        p.session_token.filter(|t| !t.is_empty()),
        expiry,
        "fleetsnap-credential-process",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        SystemTime::from(chrono::DateTime::parse_from_rfc3339(s).unwrap())
    }

    #[test]
    fn the_contract_parses_with_and_without_expiry() {
        let now = at("2026-12-02T08:00:00Z");
        let c = parse_process_output(
            br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"T","Expiration":"2026-12-02T09:00:00Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AK");
        assert_eq!(c.session_token(), Some("T"));
        assert_eq!(c.expiry(), Some(at("2026-12-02T09:00:00Z")));
        let c = parse_process_output(
            br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK"}"#,
            now,
        )
        .unwrap();
        assert_eq!(c.expiry(), None);
        assert_eq!(c.session_token(), None);
    }

    #[test]
    fn bad_output_is_refused_without_quoting_the_secret() {
        let now = at("2026-12-02T08:00:00Z");
        for (out, want) in [
            (&br#"{"Version":2,"AccessKeyId":"AK","SecretAccessKey":"s3cr3t"}"#[..], "Version 2"),
            (br#"{"Version":1,"AccessKeyId":"","SecretAccessKey":"s3cr3t"}"#, "empty"),
            (br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"s3cr3t","Expiration":"2026-12-02T07:00:00Z"}"#, "already expired"),
            (br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"s3cr3t","Expiration":"soon"}"#, "RFC 3339"),
            (br#"AccessKeyId=AK SecretAccessKey=s3cr3t"#, "not credential_process JSON"),
        ] {
            let e = parse_process_output(out, now).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    fn run(command: &[&str]) -> provider::Result {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(CredentialProcess::new(command.iter().map(|s| s.to_string()).collect()).run())
    }

    #[test]
    fn a_failing_or_flooding_process_is_a_clear_error() {
        let e = run(&["sh", "-c", "echo 'vault: permission denied' >&2; exit 3"]).unwrap_err();
        let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
        assert!(
            msg.contains("permission denied") && msg.contains("exit status: 3"),
            "{msg}"
        );
        let e = run(&["sh", "-c", "head -c 200000 /dev/zero"]).unwrap_err();
        let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
        assert!(msg.contains("more than 65536 bytes"), "{msg}");
        let e = run(&["/nonexistent/broker"]).unwrap_err();
        let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
        assert!(msg.contains("cannot start"), "{msg}");
    }

    #[test]
    fn a_working_process_yields_its_credentials() {
        let c = run(&[
            "sh",
            "-c",
            r#"printf '{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK"}'"#,
        ])
        .unwrap();
        assert_eq!(c.access_key_id(), "AK");
    }
}
