//! End to end for four operator behaviours, through the operator binary against testenv (real
//! kube-apiserver, MinIO, two systemd hosts). In order:
//!
//! * a BackupPolicy and a RetentionPolicy (`runOn: Host`), both named `gaps`, install their
//!   timers; each Host's `status.policies` then carries both entries side by side (same name,
//!   different kind, different field managers: neither clobbers the other), the retention
//!   entry with a run;
//! * the BackupRepository reports `Ready`, two initialised hosts and its users; one naming a
//!   missing Secret reports `SecretNotFound`;
//! * a younger Host claiming host1's hostname but pointing at host2's machine is refused
//!   (`DuplicateHost`, naming host1) and a policy selecting only it installs nothing on
//!   that machine;
//! * switching the RetentionPolicy to `runOn: Operator` takes its timer, service, config and
//!   credentials off both hosts, while the backup job stays.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Result;
use fleetsnap_tests::{Options, TestEnv, repo_root, wait, workspace_bin};
use serde_json::Value;

const NS: &str = "e2e-gaps";
const BUCKET: &str = "fleetsnap-gaps";
const PASSWORD: &str = "gaps-repository-password-3b81";
const WAIT: Duration = Duration::from_secs(300);

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: 2,
        ..Options::default()
    })
}

/// The operator process; killed when the test ends, however it ends.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

fn start_operator(env: &TestEnv) -> Operator {
    let log = env.dir().join("operator-gaps.log");
    let file = std::fs::File::create(&log).unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let child = Command::new(workspace_bin("fleetsnap-operator").unwrap())
        .args(["--kubeconfig", env.var("KUBECONFIG")])
        .args(["--namespace", NS, "--leader-election-namespace", NS])
        .args(["--metrics-addr", &metrics])
        .args(["--identity", "e2e-gaps", "--host-timeout", "120s"])
        .arg("--executor-path")
        .arg(workspace_bin("fleetsnap").unwrap())
        // Operator-side retention reaches MinIO at another address than the hosts do.
        .env("FLEETSNAP_MAINTENANCE_S3_ENDPOINT", env.var("S3_ENDPOINT"))
        .env("RUST_LOG", "info,fleetsnap_operator=debug,kube=warn")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Operator { child, log }
}

fn apply_yaml(env: &TestEnv, dir: &Path, name: &str, yaml: &str) {
    let f = dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    env.kubectl(&["apply", "-n", NS, "-f", f.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn get_json(env: &TestEnv, what: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &env.kubectl(&["get", "-n", NS, what, "-o", "json"])?,
    )?)
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn entry<'a>(host: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    host["status"]["policies"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == kind && e["name"] == name)
}

/// Secrets from files, so no value ever appears on a command line.
fn secret(env: &TestEnv, dir: &Path, name: &str, pairs: &[(&str, &str)]) {
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        "-n".into(),
        NS.into(),
        name.into(),
    ];
    for (k, v) in pairs {
        let f = dir.join(format!("{name}-{k}"));
        std::fs::write(&f, v).unwrap();
        args.push(format!("--from-file={k}={}", f.display()));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    env.kubectl(&a).unwrap();
}

fn host_yaml(
    env: &TestEnv,
    name: &str,
    machine: &str,
    group: &str,
    hostname: Option<&str>,
) -> String {
    let hostname = hostname
        .map(|h| format!("  hostname: {h}\n"))
        .unwrap_or_default();
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: Host
metadata: {{name: {name}, labels: {{group: {group}}}}}
spec:
  address: 127.0.0.1
  port: {port}
  user: root
  sshKeySecretRef: {{name: ssh-key, key: id_ed25519}}
  hostKey: "{key}"
{hostname}"#,
        port = env.ssh_port(machine),
        key = env.var("HOST_KEY"),
    )
}

fn setup(env: &TestEnv, dir: &Path) {
    let crds = repo_root().join("crds/generated");
    env.kubectl(&["apply", "-f", crds.to_str().unwrap()])
        .unwrap();
    for crd in [
        "hosts",
        "backuprepositories",
        "backuppolicies",
        "retentionpolicies",
        "verifypolicies",
        "restores",
    ] {
        env.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}.fleetsnap.io"),
        ])
        .unwrap();
    }
    env.kubectl(&["create", "namespace", NS]).unwrap();
    env.mc(&["mb", "--ignore-existing", &format!("testenv/{BUCKET}")])
        .unwrap();
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret(env, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret(env, dir, "repo-password", &[("password", PASSWORD)]);
    secret(
        env,
        dir,
        "s3-keys",
        &[
            ("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER")),
            ("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD")),
        ],
    );
    let hosts: String = env
        .hosts()
        .iter()
        .map(|h| host_yaml(env, h, h, "gaps", None))
        .collect();
    apply_yaml(env, dir, "hosts.yaml", &hosts);
    let repo = |name: &str, password_secret: &str| {
        format!(
            r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {{name: {name}}}
spec:
  s3:
    endpoint: {endpoint}
    bucket: {BUCKET}
    pathStyle: true
    credentialsSecretRef: {{name: s3-keys}}
  pathTemplate: "{name}/{{hostname}}"
  passwordSecretRef: {{name: {password_secret}, key: password}}
"#,
            endpoint = env.var("S3_ENDPOINT_FROM_HOSTS"),
        )
    };
    let repos = repo("minio", "repo-password") + &repo("broken", "no-such-secret");
    apply_yaml(env, dir, "repos.yaml", &repos);
    // Same name, two kinds: their Host.status entries must live side by side.
    apply_yaml(
        env,
        dir,
        "policies.yaml",
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: gaps}
spec:
  hostSelector: {matchLabels: {group: gaps}}
  repositoryRef: {name: minio}
  paths: [/etc/hostname]
  schedule: {onCalendar: "*-*-* *:*:00", persistent: false}
---
apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {name: gaps}
spec:
  hostSelector: {matchLabels: {group: gaps}}
  repositoryRef: {name: minio}
  keep: {last: 3}
  schedule: {onCalendar: "*-*-* *:*:30", persistent: false}
  runOn: Host
"#,
    );
}

/// Every retention-gaps unit, config and credential file the host still has, and whether
/// systemd still lists its timer.
fn retention_leftovers(env: &TestEnv, host: &str) -> Result<String> {
    env.ssh_ok(
        host,
        "{ systemctl list-timers --all --no-legend; ls -R /etc/systemd/system /etc/fleetsnap; } \
         2>/dev/null | grep retention-gaps || true",
    )
}

#[test]
fn operator_gaps() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    setup(env, dir.path());
    let op = start_operator(env);
    let fail = |e: anyhow::Error| -> ! { panic!("{e:#}\noperator log:\n{}", op.tail()) };
    let hosts = env.hosts();

    // Host-side retention: timers on both hosts, both recorded.
    for h in &hosts {
        wait::until("the retention timer on the host", WAIT, || {
            let timers = env.ssh_ok(h, "systemctl list-timers --all --no-legend")?;
            Ok(timers
                .contains("fleetsnap-retention-gaps.timer")
                .then_some(()))
        })
        .unwrap_or_else(|e| fail(e));
    }
    wait::until("installedHosts to list both hosts", WAIT, || {
        let rp = get_json(env, "retentionpolicy/gaps")?;
        Ok((rp["status"]["installedHosts"] == serde_json::json!(hosts)).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));

    // Host.status: the RetentionPolicy entry (after a run) beside the BackupPolicy entry of
    // the same name.
    for h in &hosts {
        let host = wait::until("both entries on the Host", WAIT, || {
            let host = get_json(env, &format!("host/{h}"))?;
            let ok = entry(&host, "RetentionPolicy", "gaps")
                .is_some_and(|e| e["lastRun"].is_string())
                && entry(&host, "BackupPolicy", "gaps")
                    .is_some_and(|e| e["lastSuccess"].is_string());
            Ok(ok.then_some(host))
        })
        .unwrap_or_else(|e| fail(e));
        eprintln!("{h}: {:#}", host["status"]["policies"]);
    }

    // BackupRepository status, from what the operator knows.
    wait::until(
        "repository minio Ready with two initialised hosts",
        WAIT,
        || {
            let r = get_json(env, "backuprepository/minio")?;
            let s = &r["status"];
            let ready = condition(&r, "Ready").is_some_and(|c| c["status"] == "True");
            Ok((ready
                && s["initializedHosts"] == 2
                && s["hosts"] == 2
                && s["policies"] == 2
                && s["observedGeneration"] == r["metadata"]["generation"])
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| fail(e));
    let broken = wait::until(
        "repository broken to report the missing Secret",
        WAIT,
        || {
            let r = get_json(env, "backuprepository/broken")?;
            Ok(condition(&r, "Ready")
                .filter(|c| c["status"] == "False" && c["reason"] == "SecretNotFound")
                .map(|c| c["message"].as_str().unwrap_or_default().to_string()))
        },
    )
    .unwrap_or_else(|e| fail(e));
    assert!(broken.contains("no-such-secret"), "{broken}");

    // A younger Host with host1's hostname, reaching host2's machine, and a policy that
    // selects only it: refused, and nothing of that policy reaches the machine.
    apply_yaml(
        env,
        dir.path(),
        "dup.yaml",
        &(host_yaml(env, "host1-dup", &hosts[1], "dup-only", Some(&hosts[0]))
            + r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: duponly}
spec:
  hostSelector: {matchLabels: {group: dup-only}}
  repositoryRef: {name: minio}
  paths: [/etc/hostname]
  schedule: {onCalendar: "*-*-* *:*:00", persistent: false}
"#),
    );
    let ready = wait::until("host1-dup refused as DuplicateHost", WAIT, || {
        let h = get_json(env, "host/host1-dup")?;
        let stalled = condition(&h, "Stalled")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "DuplicateHost");
        Ok(condition(&h, "Ready")
            .filter(|c| stalled && c["status"] == "False" && c["reason"] == "DuplicateHost")
            .cloned())
    })
    .unwrap_or_else(|e| fail(e));
    let msg = ready["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("older Host {}", hosts[0])), "{msg}");
    wait::until("duponly to report its host as DuplicateHost", WAIT, || {
        let p = get_json(env, "backuppolicy/duponly")?;
        let refused = p["status"]["hosts"].as_array().is_some_and(|hs| {
            hs.iter().any(|h| {
                h["name"] == "host1-dup"
                    && h["state"] == "Failing"
                    && h["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("DuplicateHost"))
            })
        });
        Ok(refused.then_some(()))
    })
    .unwrap_or_else(|e| fail(e));
    let units = env
        .ssh_ok(&hosts[1], "ls /etc/systemd/system /etc/fleetsnap")
        .unwrap_or_else(|e| fail(e));
    assert!(!units.contains("duponly"), "{}: {units}", hosts[1]);
    // The older Host is untouched by the refusal.
    let h1 = get_json(env, &format!("host/{}", hosts[0])).unwrap();
    assert!(condition(&h1, "Stalled").is_none(), "{h1:#}");

    // The switch to operator-side retention takes the job off both hosts.
    env.kubectl(&[
        "patch",
        "-n",
        NS,
        "retentionpolicy/gaps",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runOn":"Operator"}}"#,
    ])
    .unwrap();
    for h in &hosts {
        wait::until("the retention job gone from the host", WAIT, || {
            let left = retention_leftovers(env, h)?;
            Ok(left.trim().is_empty().then_some(()))
        })
        .unwrap_or_else(|e| fail(e));
        let timers = env
            .ssh_ok(h, "systemctl list-timers --all --no-legend")
            .unwrap();
        assert!(
            timers.contains("fleetsnap-backup-gaps.timer"),
            "{h}: {timers}"
        );
    }
    wait::until("installedHosts to be empty", WAIT, || {
        let rp = get_json(env, "retentionpolicy/gaps")?;
        Ok((rp["status"]["installedHosts"] == serde_json::json!([])).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{}", op.tail());
    assert!(
        !log.contains(PASSWORD),
        "the repository password reached the log"
    );
}
