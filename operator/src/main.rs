use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use fleetsnap_operator::controller::{self, Settings};
use fleetsnap_operator::host::layout;
use fleetsnap_operator::host::model::ExecutorArtifact;
use fleetsnap_operator::host::plan::sha256_hex;
use fleetsnap_operator::leader::LeaseLock;
use fleetsnap_operator::metrics::{self, Health, Metrics};
use tracing::{error, info};

/// fleetsnap-operator: reconciles fleetsnap.io resources onto Linux hosts over SSH.
#[derive(Parser, Debug)]
#[command(name = "fleetsnap-operator", version)]
struct Cli {
    /// kubeconfig file; without it, in-cluster config or $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "FLEETSNAP_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "FLEETSNAP_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080", env = "FLEETSNAP_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Hosts worked on at the same time, across all policies.
    #[arg(long, default_value_t = 16, env = "FLEETSNAP_MAX_CONCURRENT_HOSTS")]
    max_concurrent_hosts: usize,
    /// SSH logins in progress at the same time. A login holds no work permit, so hosts that
    /// hang in the handshake never delay connected hosts.
    #[arg(long, default_value_t = 16, env = "FLEETSNAP_MAX_CONNECTING")]
    max_connecting: usize,
    /// SSH master connections kept open (about 1.3 MiB each); past it, the least recently
    /// used idle one is closed.
    #[arg(long, default_value_t = 128, env = "FLEETSNAP_MAX_OPEN_CONNECTIONS")]
    max_open_connections: usize,
    /// An SSH master unused for this long is closed.
    #[arg(long, default_value = "2m", value_parser = parse_duration, env = "FLEETSNAP_SSH_IDLE_CLOSE")]
    ssh_idle_close: Duration,
    /// Upper bound for one reconcile's work on one host (connect, upload, apply, observe).
    #[arg(long, default_value = "10m", value_parser = parse_duration, env = "FLEETSNAP_HOST_TIMEOUT")]
    host_timeout: Duration,
    /// Executor binary pushed to hosts (default: `fleetsnap` next to this executable).
    #[arg(long, env = "FLEETSNAP_EXECUTOR_PATH")]
    executor_path: Option<PathBuf>,
    /// Expected sha256 of the executor; startup fails if the file differs. Computed from
    /// the file when not given.
    #[arg(long, env = "FLEETSNAP_EXECUTOR_SHA256")]
    executor_sha256: Option<String>,
    /// Namespace of the leader election Lease (default: --namespace, the pod's namespace,
    /// or `default`).
    #[arg(long, env = "FLEETSNAP_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    #[arg(
        long,
        default_value = "fleetsnap-operator",
        env = "FLEETSNAP_LEASE_NAME"
    )]
    lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME or hostname-pid).
    #[arg(long, env = "FLEETSNAP_IDENTITY")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "FLEETSNAP_LOG_JSON")]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fleetsnap_crds::common::parse_duration(s).map_err(|e| e.to_string())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Escape codes only for a terminal; a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The executor to push: its version directory carries the operator version and a hash
/// prefix, so two different builds never share a path on a host.
fn executor_artifact(cli: &Cli) -> anyhow::Result<ExecutorArtifact> {
    let path = match &cli.executor_path {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating the operator executable")?
            .with_file_name("fleetsnap"),
    };
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the executor binary {}", path.display()))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(expected) = &cli.executor_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        bail!(
            "executor {} has sha256 {sha256}, but --executor-sha256 says {expected}",
            path.display()
        );
    }
    let version = format!("{}-{}", env!("CARGO_PKG_VERSION"), &sha256[..12]);
    layout::validate_version(&version).map_err(anyhow::Error::msg)?;
    Ok(ExecutorArtifact {
        version,
        sha256,
        local_path: path,
    })
}

async fn kube_client(cli: &Cli) -> anyhow::Result<kube::Client> {
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "fleetsnap".into());
        format!("{host}-{}", std::process::id())
    })
}

fn lease_namespace(cli: &Cli) -> String {
    cli.leader_election_namespace
        .clone()
        .or_else(|| cli.namespace.clone())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "default".into())
}

/// A `failpoints` build may only run as `fleetsnap-operator-failpoints`: a regular binary
/// built with the feature by accident (`--all-features`) refuses to start instead of
/// carrying kill switches into a deployment.
fn refuse_armed_under_the_release_name() -> anyhow::Result<()> {
    if !fleetsnap_operator::failpoint::ARMED {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the operator executable")?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.starts_with("fleetsnap-operator-failpoints") {
        bail!("{name} was built with the `failpoints` feature: a test build, refusing to run");
    }
    tracing::warn!(
        env = fleetsnap_operator::failpoint::ENV,
        "test build with failpoints armed; never deploy it"
    );
    Ok(())
}

/// SIGTERM (how Kubernetes stops a pod) or SIGINT: stop, releasing the lease so a standby
/// takes over at once instead of after a lease duration. Latched: Kubernetes sends SIGTERM
/// once, and a `select!` that took another branch in the same instant drops its wait, so
/// the signal must stay received for every later wait.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Listens from now on (inside the runtime).
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let term = signal(SignalKind::terminate());
        tokio::spawn(async move {
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Returns once a signal has come, at once if it came before.
    fn wait(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    // Before anything slow, so a SIGTERM during start-up is not lost either.
    let shutdown = Shutdown::install();
    refuse_armed_under_the_release_name()?;
    let artifact = executor_artifact(&cli)?;
    info!(version = %artifact.version, sha256 = %artifact.sha256, path = %artifact.local_path.display(), "executor artifact");
    let client = kube_client(&cli).await?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let server = tokio::spawn(metrics::serve(
        cli.metrics_addr,
        metrics.clone(),
        health.clone(),
    ));

    let identity = cli.identity.clone().unwrap_or_else(default_identity);
    let lease = LeaseLock::new(
        client.clone(),
        &lease_namespace(&cli),
        &cli.lease_name,
        &identity,
    );
    health.ready.store(true, Ordering::Relaxed);

    loop {
        info!(%identity, lease = %cli.lease_name, "waiting for leadership");
        tokio::select! {
            _ = lease.acquire() => {}
            _ = shutdown.wait() => break,
        }
        let settings = Settings {
            namespace: cli.namespace.clone(),
            pool: controller::pool::PoolLimits {
                max_concurrent_hosts: cli.max_concurrent_hosts,
                max_connecting: cli.max_connecting,
                max_open: cli.max_open_connections,
                idle_close: cli.ssh_idle_close,
                backoff: Default::default(),
            },
            artifact: artifact.clone(),
            identity: identity.clone(),
            host_timeout: cli.host_timeout,
        };
        // Dropping the controllers' future cancels every reconcile in flight, so a replica
        // that lost the lease stops touching hosts at once.
        tokio::select! {
            _ = controller::run(client.clone(), metrics.clone(), settings) => {
                info!("controllers stopped");
                break;
            }
            _ = lease.hold() => {
                error!("leadership lost; stopping all host work");
            }
            _ = shutdown.wait() => {
                info!("shutting down");
                break;
            }
        }
        if server.is_finished() {
            bail!("metrics server stopped");
        }
    }
    lease.release().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll};

    /// A SIGTERM that arrives while the operator is between two waits must still stop it.
    /// When leadership is acquired in the same instant, `select!` takes the lease branch and
    /// drops the wait that had already received the signal; Kubernetes sends SIGTERM once,
    /// and a replica that missed it runs on until SIGKILL, without releasing its lease.
    #[tokio::test]
    async fn a_sigterm_between_two_waits_is_not_lost() {
        let shutdown = Shutdown::install();
        let mut first = Box::pin(shutdown.wait());
        // Polled once, as select! does, so that it is listening.
        let waker = futures::task::noop_waker();
        assert!(matches!(
            first.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        ));
        // SAFETY: raise(3) on our own process; the handler for SIGTERM is installed above.
        unsafe {
            libc::raise(libc::SIGTERM);
        }
        // The first wait received it, but its select! took the other branch.
        tokio::time::timeout(Duration::from_secs(2), first)
            .await
            .expect("the signal reached the first wait");
        let second = tokio::time::timeout(Duration::from_secs(2), shutdown.wait()).await;
        assert!(second.is_ok(), "the SIGTERM was lost between two waits");
    }
}
