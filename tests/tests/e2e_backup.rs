//! End to end: the operator binary against a real API server, MinIO and three systemd hosts.
//!
//! Hosts, a BackupRepository on MinIO (one repository per host) and a BackupPolicy on a
//! 20-second schedule go in with kubectl; the operator pushes the executor and units over
//! SSH; the test then checks what only the real thing produces: `kubectl get` reporting 3/3
//! with a snapshot time, repositories that stock `restic check --read-data` accepts, a second
//! reconcile that leaves every managed file untouched, one stopped host reported failing
//! while the others stay green, a pinned host key mismatch that touches nothing, and a
//! deletion that takes the units off the hosts but leaves the data in the bucket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fleetsnap_tests::kube::{
    self, apply_yaml, backup_state, condition, event_names, get_json, host_yaml, set_suspend,
    worst_host,
};
use fleetsnap_tests::operator::{Launch, Operator};
use fleetsnap_tests::{Options, TestEnv, Tier, repo_root, step, wait, workspace_bin};

const NS: &str = "e2e";
const BUCKET: &str = "fleetsnap-e2e";
const PASSWORD: &str = "e2e-repository-password-7f3a";
const POLICY: &str = "etc";

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: 3,
        ..Options::default()
    })
}

/// The executor the operator pushes: a stripped copy of the debug build (a tenth of the bytes
/// to push to every host), or of the release build on emulated VMs, where a debug executor
/// needs minutes for one backup of /etc.
fn executor(env: &TestEnv, dir: &Path) -> PathBuf {
    let built = match env.tier() {
        Tier::Vm => fleetsnap_tests::release_bin("fleetsnap", "fleetsnap").unwrap(),
        Tier::Container => workspace_bin("fleetsnap").unwrap(),
    };
    let stripped = dir.join("fleetsnap");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .status()
        .is_ok_and(|s| s.success());
    if ok { stripped } else { built }
}

/// A kubeconfig for the operator's own ServiceAccount token, as it runs in a cluster.
fn operator_kubeconfig(env: &TestEnv, dir: &Path) -> PathBuf {
    // The chart's own ServiceAccount, least-privilege RBAC and spec guard: the operator runs
    // with exactly the rights an installation gives it, no more.
    let chart = fleetsnap_tests::repo_root().join("charts/fleetsnap");
    let out = Command::new(fleetsnap_tests::helm().unwrap())
        .args(["template", "fleetsnap", chart.to_str().unwrap(), "-n", NS])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/spec-guard.yaml"])
        .output()
        .unwrap();
    let rbac = dir.join("chart-rbac.yaml");
    std::fs::write(&rbac, fleetsnap_tests::check("helm template", out).unwrap()).unwrap();
    env.kubectl(&["apply", "-n", NS, "-f", rbac.to_str().unwrap()])
        .unwrap();
    let token = env
        .kubectl(&[
            "create",
            "token",
            "-n",
            NS,
            "fleetsnap-operator",
            "--duration=2h",
        ])
        .unwrap();
    let view = |path: &str| {
        env.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .unwrap()
    };
    let server = view(".clusters[0].cluster.server");
    let ca = view(".clusters[0].cluster.certificate-authority");
    let kc = dir.join("operator.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}\n\
             users:\n- name: op\n  user: {{token: \"{}\"}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: op}}\ncurrent-context: t\n",
            token.trim()
        ),
    )
    .unwrap();
    kc
}

fn lease_holder(env: &TestEnv) -> Result<String> {
    env.kubectl(&[
        "get",
        "lease",
        "-n",
        NS,
        "fleetsnap-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// Path, sha256, mtime (ns) and mode of every file the operator manages for the policy.
fn managed_files(env: &TestEnv, host: &str) -> String {
    let slug = format!("backup-{POLICY}");
    env.ssh_ok(
        host,
        &format!(
            "cd / && for f in /etc/systemd/system/fleetsnap-{slug}.* /etc/fleetsnap/{slug}.json \
             /etc/fleetsnap/credstore*/{slug}.* /usr/local/lib/fleetsnap/*/fleetsnap; do \
             printf '%s %s\\n' \"$(stat -c '%n %.9Y %a %U' \"$f\")\" \"$(sha256sum < \"$f\")\"; done; \
             readlink /usr/local/bin/fleetsnap"
        ),
    )
    .unwrap()
}

fn reconcile_count(op: &Operator) -> Result<f64> {
    let text = op.scrape()?;
    text.lines()
        .find(|l| {
            l.starts_with("fleetsnap_reconcile_duration_seconds_count{kind=\"BackupPolicy\"}")
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no reconcile count yet"))
}

fn setup(env: &TestEnv, dir: &Path) {
    kube::install_crds(env);
    kube::create_namespace(env, NS);
    env.mc(&["mb", "--ignore-existing", &format!("testenv/{BUCKET}")])
        .unwrap();

    kube::base_secrets(env, NS, dir, PASSWORD, "minio");

    let mut hosts = String::new();
    for h in env.hosts() {
        hosts.push_str(&host_yaml(
            &h,
            "group: e2e",
            env.ssh_port(&h),
            env.var("HOST_KEY"),
        ));
    }
    // Same machine as host3, but pinned to a key it does not have.
    let other_key = dir.join("other");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(st.success());
    let wrong = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    hosts.push_str(&host_yaml(
        "badkey",
        "group: badkey",
        env.ssh_port("host3"),
        wrong.trim(),
    ));
    apply_yaml(env, NS, dir, "hosts.yaml", &hosts);

    apply_yaml(
        env,
        NS,
        dir,
        "repo.yaml",
        &kube::s3_repository_yaml(env, BUCKET),
    );
    apply_yaml(env, NS, dir, "policies.yaml", &policy_yaml(POLICY, "e2e"));
    apply_yaml(env, NS, dir, "bad.yaml", &policy_yaml("bad", "badkey"));
}

fn policy_yaml(name: &str, group: &str) -> String {
    format!(
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {{name: {name}}}
spec:
  hostSelector: {{matchLabels: {{group: {group}}}}}
  repositoryRef: {{name: minio}}
  paths: [/etc]
  tags: [e2e]
  schedule: {{onCalendar: "*-*-* *:*:00/20", persistent: false}}
"#
    )
}

fn restic_check(env: &TestEnv, host: &str) -> Result<String> {
    let repo = format!("s3:{}/{BUCKET}/hosts/{host}", env.var("S3_ENDPOINT"));
    let out = Command::new(env.tool("restic"))
        // The timer keeps backing up (slow VMs are busy most of the time): wait for the
        // backup's lock instead of failing on it.
        .args([
            "-r",
            &repo,
            "--no-cache",
            "--retry-lock",
            "5m",
            "check",
            "--read-data",
        ])
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER"))
        .env("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD"))
        .stdin(Stdio::null())
        .output()?;
    fleetsnap_tests::check(&format!("restic check {repo}"), out)
}

#[test]
fn policy_backs_up_every_host_reports_failures_and_cleans_up() {
    let t0 = Instant::now();
    let env = env();
    step(t0, "testenv up");
    let dir = tempfile::tempdir().unwrap();
    setup(env, dir.path());
    // The chart's ServiceAccount, a stripped executor, no operator-side maintenance.
    let launch = Launch {
        kubeconfig: operator_kubeconfig(env, dir.path()),
        namespace: NS.into(),
        executor: executor(env, dir.path()),
        host_timeout: "90s".into(),
        maintenance_s3_endpoint: None,
    };
    let mut op = launch.start(env, "e2e-operator");
    step(t0, "resources applied, operator started");
    let hosts = env.hosts();

    // 3/3 with a snapshot time, as `kubectl get` prints it.
    let policy = wait::until("3/3 hosts backed up", Duration::from_secs(420), || {
        let p = get_json(env, NS, &format!("backuppolicy/{POLICY}"))?;
        let s = &p["status"];
        Ok(
            (s["hostsSucceeded"] == 3 && s["hostsTotal"] == 3 && s["lastSnapshotTime"].is_string())
                .then_some(p),
        )
    })
    .unwrap_or_else(|e| op.fail(e));
    step(t0, "3/3 succeeded");
    let table = env
        .kubectl(&["get", "backuppolicy", "-n", NS, POLICY])
        .unwrap();
    eprintln!("{table}");
    let row = table.lines().nth(1).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..5], &[POLICY, "3", "3", "0", "0"], "{table}");
    assert_eq!(condition(&policy, "Ready").unwrap()["status"], "True");
    // Counts only: no per-host list on the policy, and no host among the worst.
    assert!(policy["status"]["hosts"].is_null(), "{policy:#}");
    assert!(policy["status"]["worstHosts"].is_null(), "{policy:#}");
    assert_eq!(policy["status"]["hostsPending"], 0, "{policy:#}");
    for h in &hosts {
        let host = get_json(env, NS, &format!("host/{h}")).unwrap();
        let entry = host["status"]["policies"]
            .as_array()
            .and_then(|p| p.iter().find(|e| e["name"] == POLICY))
            .cloned()
            .unwrap_or_else(|| panic!("no policy entry on {h}: {host:#}"));
        assert_eq!(entry["kind"], "BackupPolicy");
        assert!(entry["lastSuccess"].is_string(), "{entry:#}");
        assert!(entry["snapshotId"].is_string(), "{entry:#}");
        assert_eq!(entry["state"], "Succeeded", "{entry:#}");
    }

    // Stock restic reads and verifies every byte of each host's repository. It needs the
    // exclusive lock, and on TCG VMs the short test schedule keeps a backup running most of
    // the time: suspend the policy the way a user would (the operator disables the timers;
    // stopping them by hand would be undone by its next reconcile), let running backups end.
    let timer = format!("fleetsnap-backup-{POLICY}.timer");
    let service = format!("fleetsnap-backup-{POLICY}.service");
    let suspend = |on: bool| set_suspend(env, NS, &format!("backuppolicy/{POLICY}"), on);
    suspend(true);
    for h in &hosts {
        wait::until(
            &format!("{h}: timer disabled and no backup running"),
            Duration::from_secs(300),
            || {
                let out = env.ssh(
                    h,
                    &format!("systemctl is-active {timer}; systemctl is-active {service}"),
                    b"",
                )?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let states: Vec<&str> = text.lines().collect();
                let busy = |s: &str| matches!(s, "active" | "activating" | "reloading");
                Ok((states.len() == 2 && !busy(states[0]) && !busy(states[1])).then_some(()))
            },
        )
        .unwrap_or_else(|e| op.fail(e));
    }
    for h in &hosts {
        let out = restic_check(env, h).unwrap();
        assert!(out.contains("no errors were found"), "{out}");
    }
    suspend(false);
    step(t0, "restic check --read-data passed on 3 repositories");

    // The wrong pinned key: reported, and nothing was written to the machine.
    let bad = wait::until("HostKeyMismatch reported", Duration::from_secs(120), || {
        let p = get_json(env, NS, "backuppolicy/bad")?;
        let h = get_json(env, NS, "host/badkey")?;
        let stalled = condition(&p, "Stalled").is_some_and(|c| c["reason"] == "HostKeyMismatch");
        let ready = condition(&h, "Ready").is_some_and(|c| c["reason"] == "HostKeyMismatch");
        Ok((stalled && ready).then_some(p))
    })
    .unwrap_or_else(|e| op.fail(e));
    assert_eq!(bad["status"]["hostsFailing"], 1, "{bad:#}");
    let units = env
        .ssh_ok("host3", "ls /etc/systemd/system/ /etc/fleetsnap/")
        .unwrap();
    assert!(!units.contains("backup-bad"), "{units}");
    step(t0, "HostKeyMismatch reported, host untouched");

    // A second reconcile of unchanged objects changes nothing on any host.
    let before: Vec<String> = hosts.iter().map(|h| managed_files(env, h)).collect();
    let count = reconcile_count(&op).unwrap();
    env.kubectl(&[
        "annotate",
        "-n",
        NS,
        "backuppolicy",
        POLICY,
        "e2e/poke=1",
        "--overwrite",
    ])
    .unwrap();
    wait::until("two more reconciles", Duration::from_secs(120), || {
        Ok((reconcile_count(&op)? >= count + 2.0).then_some(()))
    })
    .unwrap();
    let after: Vec<String> = hosts.iter().map(|h| managed_files(env, h)).collect();
    assert_eq!(before, after, "a no-op reconcile rewrote files");
    step(t0, "second reconcile changed nothing");

    // Every metric the chart's alerts use is served, with the hosts' series.
    let text = op.scrape().unwrap();
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    for name in doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("fleetsnap_"))
        // Verify (tamper listing included) and retention series exist once such policies
        // do; this test has none.
        // The credential expiry needs a key with a known expiry (e2e_credentials checks it).
        .filter(|n| {
            !n.starts_with("fleetsnap_verify_")
                && !n.starts_with("fleetsnap_retention_")
                && !n.starts_with("fleetsnap_tampered_")
                && *n != "fleetsnap_backup_credential_expiry_timestamp_seconds"
        })
    {
        let base = name.trim_end_matches("_total");
        assert!(
            text.contains(&format!("# TYPE {base}")),
            "{name} missing:\n{text}"
        );
    }
    for h in &hosts {
        let series = format!(
            "fleetsnap_backup_last_success_timestamp_seconds{{namespace=\"{NS}\",policy=\"{POLICY}\",host=\"{h}\"}}"
        );
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
    step(t0, "metrics served");

    // A second replica stands by while the leader renews, and takes over when the leader
    // dies without releasing the lease (SIGKILL, possibly mid-reconcile).
    let standby = launch.start(env, "e2e-standby");
    wait::until("standby waiting", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&standby.log)?;
        Ok(log.contains("waiting for leadership").then_some(()))
    })
    .unwrap();
    assert_eq!(lease_holder(env).unwrap(), "e2e-operator");
    let standby_log = std::fs::read_to_string(&standby.log).unwrap();
    assert!(
        !standby_log.contains("controllers running"),
        "the standby started working while the leader held the lease:\n{standby_log}"
    );
    op.kill();
    op = standby;
    wait::until("standby took the lease", Duration::from_secs(60), || {
        Ok((lease_holder(env)? == "e2e-standby").then_some(()))
    })
    .unwrap_or_else(|e| op.fail(e));
    wait::until("new leader reconciled", Duration::from_secs(60), || {
        Ok(reconcile_count(&op).ok().filter(|c| *c >= 1.0))
    })
    .unwrap_or_else(|e| op.fail(e));
    let after_takeover: Vec<String> = hosts.iter().map(|h| managed_files(env, h)).collect();
    assert_eq!(
        before, after_takeover,
        "the new leader rewrote converged files"
    );
    step(
        t0,
        "standby took over after the leader was killed; hosts untouched",
    );

    // One host down: it alone turns failing; the others stay green.
    env.host_stop("host2").unwrap();
    step(t0, "host2 stopped");
    let p = wait::until(
        "host2 failing, host1/3 green",
        Duration::from_secs(240),
        || {
            let p = get_json(env, NS, &format!("backuppolicy/{POLICY}"))?;
            let state = |h: &str| backup_state(env, NS, h, POLICY);
            // The policy names the failing host among its worst, with why.
            let down = worst_host(&p, "host2").is_some_and(|e| {
                e["state"] == "Failing"
                    && e["error"]
                        .as_str()
                        .is_some_and(|m| m.contains("HostUnreachable"))
            });
            Ok((down
                && state("host2")? == "Failing"
                && state("host1")? == "Succeeded"
                && state("host3")? == "Succeeded")
                .then_some(p))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    assert_eq!(p["status"]["hostsFailing"], 1);
    assert_eq!(p["status"]["hostsSucceeded"], 2);
    assert_eq!(condition(&p, "Ready").unwrap()["reason"], "HostsFailing");
    wait::until("host2 Reachable=False", Duration::from_secs(180), || {
        let h = get_json(env, NS, "host/host2")?;
        Ok((h["status"]["reachable"] == false).then_some(()))
    })
    .unwrap();
    let events = event_names(env, NS, "reason=BackupFailing");
    assert!(!events.trim().is_empty(), "no BackupFailing event");
    step(t0, "host2 reported failing/unreachable, host1/3 green");

    // Back up: the policy recovers and says so once.
    env.host_start("host2").unwrap();
    wait::until(
        "3/3 again after host2 restart",
        Duration::from_secs(300),
        || {
            let p = get_json(env, NS, &format!("backuppolicy/{POLICY}"))?;
            Ok((p["status"]["hostsSucceeded"] == 3).then_some(()))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    let events = event_names(env, NS, "reason=BackupRecovered");
    assert!(!events.trim().is_empty(), "no BackupRecovered event");
    step(t0, "host2 recovered");

    // A host relabelled out of the selector loses the job; its data stays.
    env.kubectl(&[
        "label",
        "-n",
        NS,
        "host",
        "host3",
        "group=elsewhere",
        "--overwrite",
    ])
    .unwrap();
    wait::until(
        "host3 deselected and cleaned",
        Duration::from_secs(120),
        || {
            let p = get_json(env, NS, &format!("backuppolicy/{POLICY}"))?;
            let host3 = get_json(env, NS, "host/host3")?;
            Ok((p["status"]["hostsTotal"] == 2
                && kube::policy_entry(&host3, "BackupPolicy", POLICY).is_none())
            .then_some(()))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    let left = env
        .ssh_ok(
            "host3",
            "systemctl list-unit-files 'fleetsnap-*' --no-legend; ls /etc/fleetsnap",
        )
        .unwrap();
    assert!(!left.contains(&format!("backup-{POLICY}")), "host3: {left}");
    let host3 = get_json(env, NS, "host/host3").unwrap();
    let entries = host3["status"]["policies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !entries.iter().any(|e| e["name"] == POLICY),
        "host3 still lists the policy: {host3:#}"
    );
    step(
        t0,
        "host3 left the selector: job removed, status entry gone",
    );

    // Deleting the policy takes the job off every host; the data stays.
    env.kubectl(&["delete", "-n", NS, "backuppolicy", POLICY, "--timeout=180s"])
        .unwrap_or_else(|e| op.fail(e));
    for h in &hosts {
        let units = env
            .ssh_ok(
                h,
                "systemctl list-unit-files 'fleetsnap-*' --no-legend; ls /etc/fleetsnap",
            )
            .unwrap();
        assert!(!units.contains(&format!("backup-{POLICY}")), "{h}: {units}");
        let data = env
            .mc(&[
                "ls",
                "--recursive",
                &format!("testenv/{BUCKET}/hosts/{h}/snapshots/"),
            ])
            .unwrap();
        assert!(!data.trim().is_empty(), "{h}: snapshots gone from MinIO");
    }
    step(t0, "policy deleted: units gone, data kept");

    // The bad policy cannot reach its host; with the Host gone, deletion completes.
    env.kubectl(&["delete", "-n", NS, "host", "badkey"])
        .unwrap();
    env.kubectl(&["delete", "-n", NS, "backuppolicy", "bad", "--timeout=120s"])
        .unwrap();
    // Secrets appear nowhere the API shows.
    let shown = [
        env.kubectl(&["get", "-n", NS, "hosts,backuppolicies", "-o", "json"])
            .unwrap(),
        env.kubectl(&["get", "-n", NS, "events", "-o", "json"])
            .unwrap(),
    ]
    .join("\n");
    for secret in [PASSWORD, env.var("MINIO_ROOT_PASSWORD")] {
        assert!(
            !shown.contains(secret),
            "a secret appears in status or Events"
        );
    }
    assert!(!shown.contains("PRIVATE KEY"));
    step(t0, "done");
    for log in std::fs::read_dir(env.dir()).unwrap().flatten() {
        let name = log.file_name().to_string_lossy().into_owned();
        if name.starts_with("operator-") {
            check_log_has_no_secrets(&log.path()).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
}

fn check_log_has_no_secrets(path: &Path) -> Result<()> {
    let log = std::fs::read_to_string(path).context("operator log")?;
    let env = env();
    for secret in [PASSWORD, env.var("MINIO_ROOT_PASSWORD")] {
        if log.contains(secret) {
            bail!("a secret appears in the operator log");
        }
    }
    if log.contains("PRIVATE KEY") {
        bail!("the SSH key appears in the operator log");
    }
    Ok(())
}
