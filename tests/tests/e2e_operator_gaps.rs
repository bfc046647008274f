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

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use fleetsnap_tests::kube::{
    self, apply_yaml, condition, get_json, policy_entry, secret_from_files,
};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{Options, TestEnv, wait};

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

/// A Host `name` on test machine `machine`, optionally claiming another `hostname`.
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
    kube::host_yaml(
        name,
        &format!("group: {group}"),
        env.ssh_port(machine),
        env.var("HOST_KEY"),
    ) + &hostname
}

fn setup(env: &TestEnv, dir: &Path) {
    kube::install_crds(env);
    kube::create_namespace(env, NS);
    env.mc(&["mb", "--ignore-existing", &format!("testenv/{BUCKET}")])
        .unwrap();
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, NS, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret_from_files(env, NS, dir, "repo-password", &[("password", PASSWORD)]);
    secret_from_files(
        env,
        NS,
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
    apply_yaml(env, NS, dir, "hosts.yaml", &hosts);
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
    apply_yaml(env, NS, dir, "repos.yaml", &repos);
    // Same name, two kinds: their Host.status entries must live side by side.
    apply_yaml(
        env,
        NS,
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
    let op = Launch::admin(env, NS).start(env, "e2e-gaps");
    let fail = |e: anyhow::Error| -> ! { op.fail(e) };
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
    // The record is each Host's entry; the policy only counts them.
    wait::until("hostsInstalled to count both hosts", WAIT, || {
        let rp = get_json(env, NS, "retentionpolicy/gaps")?;
        let mut recorded = true;
        for h in &hosts {
            let host = get_json(env, NS, &format!("host/{h}"))?;
            recorded &= policy_entry(&host, "RetentionPolicy", "gaps").is_some();
        }
        Ok((rp["status"]["hostsInstalled"] == 2
            && rp["status"]["installedHosts"].is_null()
            && recorded)
            .then_some(()))
    })
    .unwrap_or_else(|e| fail(e));

    // Host.status: the RetentionPolicy entry (after a run) beside the BackupPolicy entry of
    // the same name.
    for h in &hosts {
        let host = wait::until("both entries on the Host", WAIT, || {
            let host = get_json(env, NS, &format!("host/{h}"))?;
            let ok = policy_entry(&host, "RetentionPolicy", "gaps")
                .is_some_and(|e| e["lastRun"].is_string())
                && policy_entry(&host, "BackupPolicy", "gaps")
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
            let r = get_json(env, NS, "backuprepository/minio")?;
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
            let r = get_json(env, NS, "backuprepository/broken")?;
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
        NS,
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
        let h = get_json(env, NS, "host/host1-dup")?;
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
        let p = get_json(env, NS, "backuppolicy/duponly")?;
        let refused = p["status"]["worstHosts"].as_array().is_some_and(|hs| {
            hs.iter().any(|h| {
                h["name"] == "host1-dup"
                    && h["state"] == "Failing"
                    && h["error"]
                        .as_str()
                        .is_some_and(|m| m.contains("DuplicateHost"))
            })
        });
        Ok((refused && p["status"]["hostsFailing"] == 1).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));
    let units = env
        .ssh_ok(&hosts[1], "ls /etc/systemd/system /etc/fleetsnap")
        .unwrap_or_else(|e| fail(e));
    assert!(!units.contains("duponly"), "{}: {units}", hosts[1]);
    // Nothing was installed, so nothing is recorded on the refused Host.
    let dup = get_json(env, NS, "host/host1-dup").unwrap();
    assert!(
        policy_entry(&dup, "BackupPolicy", "duponly").is_none(),
        "{dup:#}"
    );
    // The older Host is untouched by the refusal.
    let h1 = get_json(env, NS, &format!("host/{}", hosts[0])).unwrap();
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
    wait::until("hostsInstalled to be 0", WAIT, || {
        let rp = get_json(env, NS, "retentionpolicy/gaps")?;
        Ok((rp["status"]["hostsInstalled"] == 0).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));
    let log = op.log_text();
    assert!(!log.contains("panicked"), "{}", op.tail());
    assert!(
        !log.contains(PASSWORD),
        "the repository password reached the log"
    );
}
