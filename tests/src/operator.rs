//! The operator binary as a child process of an end-to-end test.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::Result;

use crate::{TestEnv, check, workspace_bin};

/// A free TCP port on 127.0.0.1 (bound, read and released: free at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How an operator process is started. [`Launch::admin`] gives the usual test setup; suites
/// that run the operator otherwise (a ServiceAccount's kubeconfig, another executor, no
/// operator-side maintenance) override fields.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The kubeconfig the operator talks to the API server with.
    pub kubeconfig: PathBuf,
    /// The namespace it watches; its leader-election lease lives there too.
    pub namespace: String,
    /// The executor binary it pushes to hosts (`--executor-path`).
    pub executor: PathBuf,
    /// `--host-timeout`.
    pub host_timeout: String,
    /// Where operator-side maintenance reaches S3 (`FLEETSNAP_MAINTENANCE_S3_ENDPOINT`): the
    /// test machine reaches MinIO at another address than the hosts do. `None` leaves it unset.
    pub maintenance_s3_endpoint: Option<String>,
}

impl Launch {
    /// The testenv admin kubeconfig, the workspace's debug executor, a 120 s host timeout and
    /// operator-side maintenance pointed at MinIO's `S3_ENDPOINT`.
    pub fn admin(env: &TestEnv, namespace: &str) -> Launch {
        Launch {
            kubeconfig: PathBuf::from(env.var("KUBECONFIG")),
            namespace: namespace.to_string(),
            executor: workspace_bin("fleetsnap").unwrap(),
            host_timeout: "120s".into(),
            maintenance_s3_endpoint: Some(env.var("S3_ENDPOINT").to_string()),
        }
    }

    /// Start one replica named `identity`, logging (stdout and stderr) to
    /// `<testenv dir>/operator-<identity>.log`, serving metrics on a free local port.
    pub fn start(&self, env: &TestEnv, identity: &str) -> Operator {
        self.start_variant(env, identity, &Variant::default())
    }

    /// [`Launch::start`] with another binary or extra environment. A
    /// restart under the same identity appends to the same log.
    pub fn start_variant(&self, env: &TestEnv, identity: &str, variant: &Variant) -> Operator {
        let log = env.dir().join(format!("operator-{identity}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let metrics = format!("127.0.0.1:{}", free_port());
        let ns = self.namespace.as_str();
        let binary = match &variant.binary {
            Some(b) => b.clone(),
            None => workspace_bin("fleetsnap-operator").unwrap(),
        };
        let mut cmd = Command::new(&binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", ns, "--leader-election-namespace", ns])
            .args(["--metrics-addr", &metrics, "--identity", identity])
            .args(["--host-timeout", &self.host_timeout])
            .arg("--executor-path")
            .arg(&self.executor)
            .env("RUST_LOG", "info,fleetsnap_operator=debug,kube=warn")
            .envs(variant.env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(endpoint) = &self.maintenance_s3_endpoint {
            cmd.env("FLEETSNAP_MAINTENANCE_S3_ENDPOINT", endpoint);
        }
        let child = cmd.spawn().unwrap();
        Operator {
            child,
            identity: identity.to_string(),
            log,
            metrics,
        }
    }
}

/// How a fault test starts the operator differently.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Another build of the operator (e.g. `fleetsnap-operator-failpoints`).
    pub binary: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Variant {
    /// The operator's clock shifted by `offset` (libfaketime, e.g. `+30s`). Preloaded into
    /// the operator itself rather than run under the `faketime` command, which forks: a
    /// SIGKILL to the wrapper would leave the operator running.
    pub fn clock(offset: &str) -> Variant {
        Variant {
            env: vec![
                (
                    "LD_PRELOAD".into(),
                    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into(),
                ),
                ("FAKETIME".into(), offset.into()),
            ],
            ..Variant::default()
        }
    }
}

/// A running operator replica; killed (SIGKILL) when dropped, however the test ends.
pub struct Operator {
    child: Child,
    identity: String,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// The `host:port` its metrics are served on.
    pub metrics: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Operator {
    /// Kill it without a chance to clean up (no lease release), and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask it to stop as Kubernetes does (SIGTERM); it should release its lease and exit.
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Wait until the process ends by itself (a failpoint, a crash) and reap it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = &mut self.child;
        crate::wait::until("operator exit", timeout, || Ok(child.try_wait()?))
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 60 lines of its log, for failure messages.
    pub fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Panic with `e` and the tail of this replica's log.
    pub fn fail(&self, e: anyhow::Error) -> ! {
        panic!("{e:#}\noperator {} log:\n{}", self.identity, self.tail())
    }

    /// The Prometheus text its `/metrics` endpoint serves now.
    pub fn scrape(&self) -> Result<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.metrics)])
            .output()?;
        check("curl /metrics", out)
    }
}
