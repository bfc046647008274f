//! Prometheus metrics, exactly the names of `docs/metrics.md` (the chart's alert rules
//! match on them), and the small HTTP server for `/metrics`, `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{debug, warn};

use crate::controller::summary::consecutive_failures;
use crate::host::observe::JobObservation;

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyHostLabels {
    pub namespace: String,
    pub policy: String,
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub namespace: String,
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub backup_host_selected: Family<PolicyHostLabels, FGauge>,
    pub backup_last_success: Family<PolicyHostLabels, FGauge>,
    pub backup_last_run: Family<PolicyHostLabels, FGauge>,
    pub backup_last_duration: Family<PolicyHostLabels, FGauge>,
    pub backup_last_bytes_added: Family<PolicyHostLabels, FGauge>,
    pub backup_consecutive_failures: Family<PolicyHostLabels, FGauge>,
    pub backup_next_run: Family<PolicyHostLabels, FGauge>,
    pub backup_credential_expiry: Family<PolicyHostLabels, FGauge>,
    pub backup_expected_interval: Family<PolicyLabels, FGauge>,
    pub backup_staleness_window: Family<PolicyLabels, FGauge>,
    // The verify and retention series are part of the contract; they stay empty until the
    // VerifyPolicy and RetentionPolicy controllers exist.
    pub verify_host_selected: Family<PolicyHostLabels, FGauge>,
    pub verify_last_success: Family<PolicyHostLabels, FGauge>,
    pub verify_consecutive_failures: Family<PolicyHostLabels, FGauge>,
    pub verify_expected_interval: Family<PolicyLabels, FGauge>,
    /// Repository files found overwritten (versioned bucket) by the VerifyPolicy's listing.
    pub tampered_objects: Family<PolicyHostLabels, FGauge>,
    pub retention_host_selected: Family<PolicyHostLabels, FGauge>,
    pub retention_last_success: Family<PolicyHostLabels, FGauge>,
    pub retention_consecutive_failures: Family<PolicyHostLabels, FGauge>,
    pub retention_expected_interval: Family<PolicyLabels, FGauge>,
    pub retention_suspicious_snapshots: Family<PolicyHostLabels, FGauge>,
    pub host_reachable: Family<HostLabels, FGauge>,
    pub host_last_contact: Family<HostLabels, FGauge>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// The SSH pool, set by its sweep every few seconds.
    pub ssh_connections_open: Gauge,
    pub ssh_logins_in_progress: Gauge,
    pub host_circuits_open: Gauge,
    pub host_pool_permits_in_use: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut g = |name: &str, help: &str| -> Family<PolicyHostLabels, FGauge> {
            let f = Family::default();
            registry.register(name, help, f.clone());
            f
        };
        let backup_host_selected = g(
            "fleetsnap_backup_host_selected",
            "The host is selected by the BackupPolicy",
        );
        let backup_last_success = g(
            "fleetsnap_backup_last_success_timestamp_seconds",
            "Finish time of the newest successful backup run",
        );
        let backup_last_run = g(
            "fleetsnap_backup_last_run_timestamp_seconds",
            "Finish time of the newest backup run",
        );
        let backup_last_duration = g(
            "fleetsnap_backup_last_run_duration_seconds",
            "Duration of the newest backup run",
        );
        let backup_last_bytes_added = g(
            "fleetsnap_backup_last_run_bytes_added",
            "Bytes added to the repository by the newest backup run",
        );
        let backup_consecutive_failures = g(
            "fleetsnap_backup_consecutive_failures",
            "Failed backup runs since the last success",
        );
        let backup_next_run = g(
            "fleetsnap_backup_next_run_timestamp_seconds",
            "When the host's backup timer fires next (on the operator's clock)",
        );
        let backup_credential_expiry = g(
            "fleetsnap_backup_credential_expiry_timestamp_seconds",
            "When the storage credential delivered for the backup job expires, where known",
        );
        let verify_host_selected = g(
            "fleetsnap_verify_host_selected",
            "The host is covered by the VerifyPolicy",
        );
        let verify_last_success = g(
            "fleetsnap_verify_last_success_timestamp_seconds",
            "Newest successful verification",
        );
        let verify_consecutive_failures = g(
            "fleetsnap_verify_consecutive_failures",
            "Failed verifications since the last success",
        );
        let tampered_objects = g(
            "fleetsnap_tampered_objects",
            "Repository files whose current content differs from the first stored version",
        );
        let retention_host_selected = g(
            "fleetsnap_retention_host_selected",
            "The host's repository is covered by the RetentionPolicy",
        );
        let retention_consecutive_failures = g(
            "fleetsnap_retention_consecutive_failures",
            "Failed forget+prune runs since the last success",
        );
        let retention_last_success = g(
            "fleetsnap_retention_last_success_timestamp_seconds",
            "Newest successful forget+prune",
        );
        let retention_suspicious_snapshots = g(
            "fleetsnap_retention_suspicious_snapshots",
            "Snapshots the last operator-side retention kept uncounted: their claimed time contradicts the storage's write time or lies in the future",
        );
        let mut p = |name: &str, help: &str| -> Family<PolicyLabels, FGauge> {
            let f = Family::default();
            registry.register(name, help, f.clone());
            f
        };
        let backup_expected_interval = p(
            "fleetsnap_backup_expected_interval_seconds",
            "Interval between scheduled backup runs",
        );
        let backup_staleness_window = p(
            "fleetsnap_backup_staleness_window_seconds",
            "Age after which a host counts as stale",
        );
        let verify_expected_interval = p(
            "fleetsnap_verify_expected_interval_seconds",
            "Interval between scheduled verifications",
        );
        let retention_expected_interval = p(
            "fleetsnap_retention_expected_interval_seconds",
            "Interval between scheduled forget+prune runs",
        );
        let host_reachable = Family::<HostLabels, FGauge>::default();
        registry.register(
            "fleetsnap_host_reachable",
            "The last SSH contact succeeded",
            host_reachable.clone(),
        );
        let host_last_contact = Family::<HostLabels, FGauge>::default();
        registry.register(
            "fleetsnap_host_last_contact_timestamp_seconds",
            "Time of the last successful SSH contact",
            host_last_contact.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "fleetsnap_reconcile_errors",
            "Reconcile failures by condition reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<KindLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        registry.register(
            "fleetsnap_reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let mut plain = |name: &str, help: &str| -> Gauge {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let ssh_connections_open = plain(
            "fleetsnap_ssh_connections_open",
            "SSH master connections the operator holds open",
        );
        let ssh_logins_in_progress = plain(
            "fleetsnap_ssh_logins_in_progress",
            "SSH logins being attempted now",
        );
        let host_circuits_open = plain(
            "fleetsnap_host_circuits_open",
            "Hosts not contacted until their backoff passes, after failed logins",
        );
        let host_pool_permits_in_use = plain(
            "fleetsnap_host_pool_permits_in_use",
            "Hosts being worked on now (of --max-concurrent-hosts)",
        );
        Metrics {
            registry,
            ssh_connections_open,
            ssh_logins_in_progress,
            host_circuits_open,
            host_pool_permits_in_use,
            backup_host_selected,
            backup_last_success,
            backup_last_run,
            backup_last_duration,
            backup_last_bytes_added,
            backup_consecutive_failures,
            backup_next_run,
            backup_credential_expiry,
            backup_expected_interval,
            backup_staleness_window,
            verify_host_selected,
            verify_last_success,
            verify_consecutive_failures,
            verify_expected_interval,
            tampered_objects,
            retention_host_selected,
            retention_last_success,
            retention_consecutive_failures,
            retention_expected_interval,
            retention_suspicious_snapshots,
            host_reachable,
            host_last_contact,
            reconcile_errors,
            reconcile_duration,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Per-host backup series from freshly observed run records. Series without data stay
    /// absent (an alert on "no success yet" should use `..._host_selected`).
    pub fn observe_backup(&self, l: &PolicyHostLabels, obs: &JobObservation) {
        self.backup_host_selected.get_or_create(l).set(1.0);
        if let Some(s) = obs.last_success() {
            self.backup_last_success
                .get_or_create(l)
                .set(unix_f64(obs.local(s.finished)));
        }
        // On the operator's clock, so `time() - ...` alerts hold for a host whose clock is off.
        if let Some(r) = obs.last_run() {
            self.backup_last_run
                .get_or_create(l)
                .set(unix_f64(obs.local(r.finished)));
            self.backup_last_duration
                .get_or_create(l)
                .set(r.duration_seconds);
            self.backup_last_bytes_added
                .get_or_create(l)
                .set(r.bytes_added as f64);
        }
        self.backup_consecutive_failures
            .get_or_create(l)
            .set(f64::from(consecutive_failures(obs)));
    }

    /// The next run of the host's timer and the expiry of the credential it was given, both
    /// on the operator's clock: together they say whether the next run can authenticate.
    pub fn credential_expiry(
        &self,
        l: &PolicyHostLabels,
        expiry: Option<chrono::DateTime<chrono::Utc>>,
        obs: &JobObservation,
    ) {
        // While a run is in progress systemd may show no next elapse: the last known one
        // stays until the next observation says otherwise.
        if let Some(next) = obs.timer.as_ref().and_then(|t| t.next_elapse) {
            self.backup_next_run
                .get_or_create(l)
                .set(obs.local_secs(next) as f64);
        }
        match expiry {
            Some(t) => {
                self.backup_credential_expiry
                    .get_or_create(l)
                    .set(t.timestamp() as f64);
            }
            None => {
                self.backup_credential_expiry.remove(l);
            }
        }
    }

    /// The host left the policy (or the policy is gone): its series disappear.
    pub fn forget_backup_host(&self, l: &PolicyHostLabels) {
        self.backup_next_run.remove(l);
        self.backup_credential_expiry.remove(l);
        self.backup_host_selected.remove(l);
        self.backup_last_success.remove(l);
        self.backup_last_run.remove(l);
        self.backup_last_duration.remove(l);
        self.backup_last_bytes_added.remove(l);
        self.backup_consecutive_failures.remove(l);
    }

    /// The host no longer belongs to the policy of that kind: its series disappear.
    pub fn forget_job_host(&self, kind: crate::host::model::PolicyKind, l: &PolicyHostLabels) {
        use crate::host::model::PolicyKind;
        match kind {
            PolicyKind::Backup => self.forget_backup_host(l),
            PolicyKind::Retention => {
                self.retention_host_selected.remove(l);
                self.retention_consecutive_failures.remove(l);
                self.retention_last_success.remove(l);
                self.retention_suspicious_snapshots.remove(l);
            }
            PolicyKind::Verify => {
                self.verify_host_selected.remove(l);
                self.verify_last_success.remove(l);
                self.verify_consecutive_failures.remove(l);
                self.tampered_objects.remove(l);
            }
        }
    }

    pub fn forget_policy(&self, l: &PolicyLabels) {
        self.backup_expected_interval.remove(l);
        self.backup_staleness_window.remove(l);
    }

    pub fn pool(&self, s: crate::controller::pool::PoolStats) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.ssh_connections_open.set(n(s.open));
        self.ssh_logins_in_progress.set(n(s.connecting));
        self.host_circuits_open.set(n(s.circuits_open));
        self.host_pool_permits_in_use.set(n(s.permits_in_use));
    }

    pub fn host_contact(
        &self,
        l: &HostLabels,
        reachable: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        self.host_reachable
            .get_or_create(l)
            .set(if reachable { 1.0 } else { 0.0 });
        if reachable {
            self.host_last_contact.get_or_create(l).set(unix_f64(now));
        }
    }

    pub fn reconcile_error(&self, kind: &str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn reconcile_took(&self, kind: &str, secs: f64) {
        self.reconcile_duration
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(secs);
    }
}

fn duration_histogram() -> Histogram {
    // 50 ms .. ~7 min: a reconcile may upload the executor to a slow host.
    Histogram::new(exponential_buckets(0.05, 2.5, 11))
}

fn unix_f64(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Liveness is "the process serves HTTP"; readiness flips once the operator is either
/// leading or standing by with a working API client.
#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
}

pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_is_exported() {
        let m = Metrics::new();
        let ph = PolicyHostLabels {
            namespace: "ns".into(),
            policy: "p".into(),
            host: "h".into(),
        };
        let pl = PolicyLabels {
            namespace: "ns".into(),
            policy: "p".into(),
        };
        for f in [
            &m.backup_host_selected,
            &m.backup_last_success,
            &m.backup_last_run,
            &m.backup_last_duration,
            &m.backup_last_bytes_added,
            &m.backup_consecutive_failures,
            &m.backup_next_run,
            &m.backup_credential_expiry,
            &m.verify_host_selected,
            &m.verify_last_success,
            &m.verify_consecutive_failures,
            &m.tampered_objects,
            &m.retention_host_selected,
            &m.retention_last_success,
            &m.retention_consecutive_failures,
            &m.retention_suspicious_snapshots,
        ] {
            f.get_or_create(&ph).set(1.0);
        }
        for f in [
            &m.backup_expected_interval,
            &m.backup_staleness_window,
            &m.verify_expected_interval,
            &m.retention_expected_interval,
        ] {
            f.get_or_create(&pl).set(1.0);
        }
        m.host_contact(
            &HostLabels {
                namespace: "ns".into(),
                host: "h".into(),
            },
            true,
            chrono::Utc::now(),
        );
        m.reconcile_error("BackupPolicy", "HostUnreachable");
        m.reconcile_took("BackupPolicy", 0.3);
        m.pool(crate::controller::pool::PoolStats::default());
        let text = m.encode();
        let doc = include_str!("../../docs/metrics.md");
        let names: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `fleetsnap_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert_eq!(names.len(), 28, "{names:?}");
        for n in names {
            let full = format!("fleetsnap_{n}");
            let present = text.lines().any(|l| {
                l.starts_with(&format!("{full}{{"))
                    || l.starts_with(&format!("{full} "))
                    || l.starts_with(&format!("{full}_bucket{{"))
            });
            assert!(present, "{full} missing from:\n{text}");
        }
    }

    #[test]
    fn forgetting_a_host_removes_its_series() {
        let m = Metrics::new();
        let ph = PolicyHostLabels {
            namespace: "ns".into(),
            policy: "p".into(),
            host: "h".into(),
        };
        m.observe_backup(&ph, &JobObservation::default());
        assert!(m.encode().contains("fleetsnap_backup_host_selected{"));
        m.forget_backup_host(&ph);
        assert!(!m.encode().contains("fleetsnap_backup_host_selected{"));
    }
}
