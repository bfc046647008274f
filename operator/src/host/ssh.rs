//! The SSH edge: one multiplexed OpenSSH connection per host (the `openssh` crate in process
//! mode, driving the system `ssh` client), reused for every command of a reconcile.
//!
//! Trust is pinned, not learned: a known_hosts file is generated from the Host's pinned key,
//! strict checking is on, and the user's own ssh config, agent and known_hosts are ignored.
//! The private key exists on disk only in a private 0700 temp directory, as a 0600 file, for
//! as long as the master connection takes to authenticate.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, debug, info_span};

use super::error::HostError;
use super::model::HostTarget;
use super::shell::{Capture, CommandOutput, HostShell, StdoutLimit};

#[derive(Clone, Debug)]
pub struct SshOptions {
    /// TCP connect plus SSH handshake, per attempt.
    pub connect_timeout: Duration,
    /// Keepalive probes so a vanished host fails commands instead of hanging them.
    pub server_alive_interval: Duration,
    /// Parent of the control socket directories (socket paths must stay short).
    pub control_dir: PathBuf,
    /// How long an unused master lives on by itself (`ControlPersist`). The pool closes
    /// idle masters sooner; this bounds the ones nobody closes, such as those of an operator
    /// that was killed.
    pub control_persist: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(20),
            server_alive_interval: Duration::from_secs(15),
            control_dir: std::env::temp_dir(),
            control_persist: Duration::from_secs(180),
        }
    }
}

/// A connected host. Dropping it closes the master connection.
#[derive(Debug)]
pub struct SshHost {
    name: String,
    session: Session,
    /// Non-root logins run every command through `sudo -n`.
    sudo: bool,
}

/// Validates the pinned key and returns the known_hosts line for `address:port`.
/// Only `type base64` is kept, so a comment or stray newline cannot add entries.
pub fn known_hosts_line(address: &str, port: u16, host_key: &str) -> Result<String, String> {
    let mut parts = host_key.split_whitespace();
    let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
        return Err("the pinned host key must look like \"ssh-ed25519 AAAA...\"".into());
    };
    let kind_ok = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    let key_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !kind_ok || !key_ok || host_key.contains('\n') {
        return Err(format!(
            "unsupported pinned host key type or encoding ({kind})"
        ));
    }
    let addr_ok = !address.is_empty()
        && address
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    if !addr_ok {
        return Err(format!(
            "address {address:?} is not a host name or IP address"
        ));
    }
    let pattern = if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    };
    Ok(format!("{pattern} {kind} {key}\n"))
}

/// ssh_config for the master connection: everything that decides trust is explicit, so the
/// operator's environment (~/.ssh/config, agent, global known_hosts) cannot weaken it.
fn ssh_config(known_hosts: &Path) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "Host *");
    let _ = writeln!(c, "  UserKnownHostsFile \"{}\"", known_hosts.display());
    for line in [
        "GlobalKnownHostsFile /dev/null",
        "StrictHostKeyChecking yes",
        "UpdateHostKeys no",
        "CheckHostIP no",
        "IdentitiesOnly yes",
        "IdentityAgent none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "ServerAliveCountMax 3",
        "LogLevel ERROR",
    ] {
        let _ = writeln!(c, "  {line}");
    }
    c
}

fn write_private(path: &Path, data: &[u8], host: &str, what: &str) -> Result<(), HostError> {
    let local = |source| HostError::Local {
        host: host.to_string(),
        what: what.to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(local)?;
    f.write_all(data).map_err(local)?;
    // ssh refuses keys without a final newline ("invalid format").
    if !data.ends_with(b"\n") {
        f.write_all(b"\n").map_err(local)?;
    }
    Ok(())
}

fn persist(d: Duration) -> ControlPersist {
    match std::num::NonZeroUsize::new(d.as_secs() as usize) {
        Some(secs) => ControlPersist::IdleFor(secs),
        // Under a second: the smallest ssh accepts.
        None => ControlPersist::IdleFor(std::num::NonZeroUsize::MIN),
    }
}

/// Maps the master's error text (ssh's own stderr) to a class.
pub fn classify_connect_error(host: &str, text: &str) -> HostError {
    let host = host.to_string();
    let detail = text.lines().last().unwrap_or(text).trim().to_string();
    if text.contains("Host key verification failed")
        || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("host key is known for")
    {
        HostError::HostKeyMismatch { host }
    } else if text.contains("Permission denied")
        || text.contains("Too many authentication failures")
        || text.contains("Load key")
    {
        HostError::AuthFailed { host, detail }
    } else {
        HostError::Unreachable { host, detail }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

impl SshHost {
    /// Opens the master connection. Fails with `HostKeyMismatch` before anything runs on
    /// the host when the presented key differs from the pinned one.
    pub async fn connect(target: &HostTarget, opts: &SshOptions) -> Result<Self, HostError> {
        let span = info_span!("ssh_connect", host = %target.name, address = %target.address, port = target.port);
        async {
            let name = target.name.clone();
            let line = known_hosts_line(&target.address, target.port, &target.host_key).map_err(
                |detail| HostError::InvalidSpec {
                    host: name.clone(),
                    detail,
                },
            )?;
            if target.private_key.is_empty() {
                return Err(HostError::InvalidSpec {
                    host: name,
                    detail: "the SSH private key is empty".into(),
                });
            }

            // Private directory (0700) holding key, known_hosts and config; removed when
            // `secrets` drops at the end of this function, i.e. right after authentication.
            let secrets = tempfile::Builder::new()
                .prefix("fleetsnap-ssh-")
                .tempdir()
                .map_err(|source| HostError::Local {
                    host: name.clone(),
                    what: "create private temp dir".into(),
                    source,
                })?;
            let key = secrets.path().join("id");
            let kh = secrets.path().join("known_hosts");
            let cfg = secrets.path().join("config");
            write_private(&key, target.private_key.expose(), &name, "write key file")?;
            write_private(&kh, line.as_bytes(), &name, "write known_hosts")?;
            write_private(&cfg, ssh_config(&kh).as_bytes(), &name, "write ssh config")?;

            let mut b = SessionBuilder::default();
            b.user(target.user.clone())
                .port(target.port)
                .keyfile(&key)
                .config_file(&cfg)
                .user_known_hosts_file(&kh)
                .known_hosts_check(KnownHosts::Strict)
                .connect_timeout(opts.connect_timeout)
                .server_alive_interval(opts.server_alive_interval)
                .control_directory(&opts.control_dir)
                .control_persist(persist(opts.control_persist));

            // ConnectTimeout bounds each phase inside ssh; this bounds the whole login, e.g.
            // a server that accepts TCP but stalls in the banner exchange.
            let budget = opts.connect_timeout * 3;
            let result = tokio::time::timeout(budget, b.connect(&target.address)).await;
            drop(secrets);
            let session = match result {
                Err(_) => {
                    return Err(HostError::Unreachable {
                        host: name,
                        detail: format!("SSH login did not complete within {budget:?}"),
                    });
                }
                Ok(Err(e)) => return Err(classify_connect_error(&name, &error_chain(&e))),
                Ok(Ok(s)) => s,
            };
            debug!("connected");
            Ok(SshHost {
                name,
                session,
                sudo: target.user != "root",
            })
        }
        .instrument(span)
        .await
    }

    /// Closes the master connection (also happens on drop, synchronously).
    pub async fn close(self) -> Result<(), HostError> {
        let host = self.name.clone();
        self.session
            .close()
            .await
            .map_err(|e| HostError::Unreachable {
                host,
                detail: error_chain(&e),
            })
    }
}

impl HostShell for SshHost {
    fn host_name(&self) -> &str {
        &self.name
    }

    async fn run_limited(
        &self,
        argv: &[&str],
        stdin: &[u8],
        limit: StdoutLimit,
    ) -> Result<CommandOutput, HostError> {
        let transport = |e: openssh::Error| HostError::Unreachable {
            host: self.name.clone(),
            detail: error_chain(&e),
        };
        let full: Vec<&str> = if self.sudo {
            ["sudo", "-n", "--"].iter().chain(argv).copied().collect()
        } else {
            argv.to_vec()
        };
        let Some((program, args)) = full.split_first() else {
            return Err(HostError::InvalidSpec {
                host: self.name.clone(),
                detail: "empty command".into(),
            });
        };
        // `command`/`args` shell-quote each element for the remote login shell.
        let mut cmd = self.session.command(*program);
        cmd.args(args.iter().copied())
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = cmd.spawn().await.map_err(transport)?;
        let mut pipe = child.stdin().take();
        let stdout = child.stdout().take();
        let stderr = child.stderr().take();
        // Feed stdin while collecting output; sequentially, a command producing more output
        // than the pipe buffer before reading its input would deadlock.
        let feed = async move {
            if let Some(p) = pipe.as_mut() {
                // A command may exit without reading all input; its exit code tells.
                let _ = p.write_all(stdin).await;
                let _ = p.shutdown().await;
            }
            drop(pipe);
        };
        let local = |e: std::io::Error| HostError::Unreachable {
            host: self.name.clone(),
            detail: format!("reading the command's output: {e}"),
        };
        // On overflow the stdout side drops the channel at once (the local ssh process is
        // killed; the remote command dies of SIGPIPE on its next write), which also ends the
        // stderr stream: nothing waits for a host that keeps printing.
        let child = tokio::sync::Mutex::new(Some(child));
        let stdout_side = async {
            let r = capture(stdout, Capture::new(limit)).await;
            if matches!(&r, Ok(c) if c.overflowed())
                && let Some(c) = child.lock().await.take()
            {
                let _ = c.disconnect().await;
            }
            r
        };
        let ((), out, err) = tokio::join!(feed, stdout_side, capture(stderr, Capture::stderr()));
        let (out, err) = (out.map_err(local)?, err.map_err(local)?);
        let code = match child.into_inner() {
            Some(c) => c.wait().await.map_err(transport)?.code(),
            None => None,
        };
        let (stdout, stdout_truncated) = out.finish();
        let (stderr, _) = err.finish();
        Ok(CommandOutput {
            code,
            stdout,
            stderr,
            stdout_truncated,
        })
    }
}

/// Reads `stream` to its end into `cap`, or until a failing capture overflows.
async fn capture<R: tokio::io::AsyncRead + Unpin>(
    stream: Option<R>,
    mut cap: Capture,
) -> std::io::Result<Capture> {
    let Some(mut r) = stream else {
        return Ok(cap);
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 || !cap.push(&buf[..n]) {
            return Ok(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx root@image";
        assert_eq!(
            known_hosts_line("127.0.0.1", 22401, k).unwrap(),
            "[127.0.0.1]:22401 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx\n"
        );
        assert_eq!(
            known_hosts_line("db1.example", 22, k).unwrap(),
            "db1.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx\n"
        );
        assert!(known_hosts_line("h", 22, "AAAA").is_err());
        assert!(known_hosts_line("h", 22, "ssh-ed25519 AAA\n* ssh-ed25519 BBB").is_err());
        assert!(known_hosts_line("h,*", 22, k).is_err());
        assert!(known_hosts_line("h", 22, "ssh-ed25519 AA$(x)").is_err());
    }

    #[test]
    fn connect_errors_are_classified() {
        let mismatch = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
                        Host key verification failed.";
        assert!(matches!(
            classify_connect_error("h", mismatch),
            HostError::HostKeyMismatch { .. }
        ));
        assert!(matches!(
            classify_connect_error("h", "root@127.0.0.1: Permission denied (publickey)."),
            HostError::AuthFailed { .. }
        ));
        assert!(matches!(
            classify_connect_error(
                "h",
                "ssh: connect to host 127.0.0.1 port 1: Connection refused"
            ),
            HostError::Unreachable { .. }
        ));
    }

    #[test]
    fn config_pins_trust() {
        let c = ssh_config(Path::new("/tmp/x/known_hosts"));
        assert!(c.contains("StrictHostKeyChecking yes"));
        assert!(c.contains("GlobalKnownHostsFile /dev/null"));
        assert!(c.contains("IdentityAgent none"));
    }
}
