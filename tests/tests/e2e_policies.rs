//! End to end for the maintenance side: the reference runbook's validation list on testenv
//! hosts, through the operator binary.
//!
//! One append-only repository on MinIO, each host with its own MinIO user whose policy only
//! allows its own prefix (and deleting lock files only); the operator holds the only key
//! that can delete. Checked, in order: snapshots exist and carry the policy's tags; a
//! Restore of /etc into a scratch directory matches /etc (`diff -r` on the host); a
//! VerifyPolicy reading all data goes Ready; a host cannot list another host's repository
//! and its own `fleetsnap forget` is refused; host-side retention on the append-only
//! repository is refused as InvalidSpec; operator-side retention (keep-last) succeeds; a
//! corrupted pack makes the VerifyPolicy go not-ready naming the pack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use fleetsnap_tests::{Options, TestEnv, repo_root, wait, workspace_bin};
use serde_json::Value;

const NS: &str = "e2e-policies";
const BUCKET: &str = "fleetsnap-policies";
const PASSWORD: &str = "policies-repository-password-91c2";
const HOSTS: usize = 2;

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: HOSTS,
        ..Options::default()
    })
}

struct Operator {
    child: Child,
    log: PathBuf,
    metrics: String,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_operator(env: &TestEnv) -> Operator {
    let log = env.dir().join("operator-policies.log");
    let metrics = format!("127.0.0.1:{}", free_port());
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(workspace_bin("fleetsnap-operator").unwrap())
        .args(["--kubeconfig", env.var("KUBECONFIG")])
        .args(["--namespace", NS, "--leader-election-namespace", NS])
        .args(["--metrics-addr", &metrics])
        .args(["--identity", "e2e-policies", "--host-timeout", "120s"])
        .arg("--executor-path")
        .arg(workspace_bin("fleetsnap").unwrap())
        // The operator reaches MinIO at another address than the hosts do.
        .env("FLEETSNAP_MAINTENANCE_S3_ENDPOINT", env.var("S3_ENDPOINT"))
        .env("RUST_LOG", "info,fleetsnap_operator=debug,kube=warn")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Operator {
        child,
        log,
        metrics,
    }
}

/// `fleetsnap_*` names used by the chart's alert rules (histogram series by family).
fn alert_metric_names() -> std::collections::BTreeSet<String> {
    let rules =
        std::fs::read_to_string(repo_root().join("charts/fleetsnap/files/alerts.yaml")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in rules.match_indices("fleetsnap_") {
        if i > 0
            && (rules.as_bytes()[i - 1].is_ascii_alphanumeric()
                || b"_-/.".contains(&rules.as_bytes()[i - 1]))
        {
            continue;
        }
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(family);
    }
    names
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

fn host_keys(h: &str) -> (String, String) {
    (format!("fs-{h}"), format!("secret-{h}-5d0e8a11"))
}

/// Each host's MinIO user: read/write/list its own prefix, delete only its lock files.
fn host_policy(h: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": [format!("arn:aws:s3:::{BUCKET}/hosts/{h}/*")]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [format!("arn:aws:s3:::{BUCKET}")],
             "Condition": {"StringLike": {"s3:prefix": [format!("hosts/{h}/*"), format!("hosts/{h}")]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"],
             "Resource": [format!("arn:aws:s3:::{BUCKET}")]},
            {"Effect": "Allow", "Action": ["s3:DeleteObject"],
             "Resource": [format!("arn:aws:s3:::{BUCKET}/hosts/{h}/locks/*")]}
        ]
    })
    .to_string()
}

fn secret_from_files(env: &TestEnv, dir: &Path, name: &str, pairs: &[(&str, &str)]) {
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
    for h in env.hosts() {
        let (ak, sk) = host_keys(&h);
        env.mc(&["admin", "user", "add", "testenv", &ak, &sk])
            .unwrap();
        let pf = dir.join(format!("policy-{h}.json"));
        std::fs::write(&pf, host_policy(&h)).unwrap();
        let pname = format!("fleetsnap-{h}");
        env.mc(&[
            "admin",
            "policy",
            "create",
            "testenv",
            &pname,
            pf.to_str().unwrap(),
        ])
        .unwrap();
        env.mc(&[
            "admin", "policy", "attach", "testenv", &pname, "--user", &ak,
        ])
        .unwrap();
        secret_from_files(
            env,
            dir,
            &format!("s3-{h}"),
            &[("AWS_ACCESS_KEY_ID", &ak), ("AWS_SECRET_ACCESS_KEY", &sk)],
        );
    }
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret_from_files(env, dir, "repo-password", &[("password", PASSWORD)]);
    secret_from_files(
        env,
        dir,
        "maintenance",
        &[
            ("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER")),
            ("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD")),
        ],
    );
    let mut hosts = String::new();
    for h in env.hosts() {
        hosts.push_str(&format!(
            r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: Host
metadata: {{name: {h}, labels: {{group: pol}}}}
spec:
  address: 127.0.0.1
  port: {port}
  user: root
  sshKeySecretRef: {{name: ssh-key, key: id_ed25519}}
  hostKey: "{key}"
"#,
            port = env.ssh_port(&h),
            key = env.var("HOST_KEY"),
        ));
    }
    apply_yaml(env, dir, "hosts.yaml", &hosts);
    apply_yaml(
        env,
        dir,
        "repo.yaml",
        &format!(
            r#"apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {{name: minio}}
spec:
  s3:
    endpoint: {endpoint}
    bucket: {BUCKET}
    pathStyle: true
    perHostCredentials: {{secretNameTemplate: "s3-{{host}}"}}
  pathTemplate: "hosts/{{hostname}}"
  passwordSecretRef: {{name: repo-password, key: password}}
  appendOnly: true
  maintenanceCredentialsSecretRef: {{name: maintenance}}
"#,
            endpoint = env.var("S3_ENDPOINT_FROM_HOSTS"),
        ),
    );
    // Backups once a minute at :00; verification at :30, so the two never contend for the
    // repository lock.
    apply_yaml(
        env,
        dir,
        "backup.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: nightly}
spec:
  hostSelector: {matchLabels: {group: pol}}
  repositoryRef: {name: minio}
  paths: [/etc]
  tags: [runbook, nightly]
  schedule: {onCalendar: "*-*-* *:*:00", persistent: false}
"#,
    );
}

/// Snapshots of one host's repository as stock restic lists them (root credentials).
fn restic_snapshots(env: &TestEnv, host: &str) -> Result<Vec<Value>> {
    let repo = format!("s3:{}/{BUCKET}/hosts/{host}", env.var("S3_ENDPOINT"));
    let out = Command::new(env.tool("restic"))
        .args(["-r", &repo, "--no-cache", "snapshots", "--json"])
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER"))
        .env("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD"))
        .stdin(Stdio::null())
        .output()?;
    let text = fleetsnap_tests::check("restic snapshots", out)?;
    Ok(serde_json::from_str::<Vec<Value>>(&text)?)
}

/// Runs the executor on a host with that host's own (append-only) keys, passed on stdin.
fn fleetsnap_as_host(env: &TestEnv, host: &str, repo_host: &str, args: &str) -> (bool, String) {
    let (ak, sk) = host_keys(host);
    let repo = format!(
        "s3:{}/{BUCKET}/hosts/{repo_host}",
        env.var("S3_ENDPOINT_FROM_HOSTS")
    );
    let script = format!(
        "read -r ak; read -r sk; read -r pw; export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk RESTIC_PASSWORD=$pw; \
         /usr/local/bin/fleetsnap -r '{repo}' {args} 2>&1"
    );
    let out = env
        .ssh(
            host,
            &script,
            format!("{ak}\n{sk}\n{PASSWORD}\n").as_bytes(),
        )
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

#[test]
fn runbook_validation_list() {
    let t0 = Instant::now();
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    setup(env, dir.path());
    let op = start_operator(env);
    let hosts = env.hosts();
    let fail = |e: anyhow::Error| -> ! { panic!("{e:#}\noperator log:\n{}", op.tail()) };
    step(t0, "resources applied, operator started");

    // (a) Snapshots exist on every host and carry the policy's tags.
    for h in &hosts {
        let snaps = wait::until(
            &format!("a snapshot of {h}"),
            Duration::from_secs(420),
            || {
                let s = restic_snapshots(env, h).unwrap_or_default();
                Ok((!s.is_empty()).then_some(s))
            },
        )
        .unwrap_or_else(|e| fail(e));
        let tags: Vec<&str> = snaps[0]["tags"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            tags.contains(&"runbook") && tags.contains(&"nightly"),
            "{snaps:#?}"
        );
        assert_eq!(snaps[0]["hostname"], h.as_str());
    }
    step(t0, "(a) snapshots exist with the policy's tags");

    // (c) Restore /etc of host1 into a scratch directory; it matches /etc.
    let h1 = hosts[0].clone();
    apply_yaml(
        env,
        dir.path(),
        "restore.yaml",
        &format!(
            r#"apiVersion: fleetsnap.io/v1alpha1
kind: Restore
metadata: {{name: etc-drill}}
spec:
  hostRef: {{name: {h1}}}
  repositoryRef: {{name: minio}}
  include: [/etc]
  targetDirectory: /var/tmp/restore-etc
"#
        ),
    );
    let r = wait::until("Restore finished", Duration::from_secs(300), || {
        let r = get_json(env, "restore/etc-drill")?;
        let phase = r["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok((phase == "Succeeded" || phase == "Failed").then_some(r))
    })
    .unwrap_or_else(|e| fail(e));
    assert_eq!(r["status"]["phase"], "Succeeded", "{r:#}");
    assert!(
        r["status"]["filesRestored"].as_i64().unwrap_or(0) > 10,
        "{r:#}"
    );
    // What the operator itself writes under /etc after the snapshot was taken differs.
    let diff = env
        .ssh(
            &h1,
            "diff -r --no-dereference -x fleetsnap -x system -x mtab /etc /var/tmp/restore-etc/etc",
            b"",
        )
        .unwrap();
    assert!(
        diff.status.success(),
        "restored /etc differs:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    step(t0, "(c) Restore of /etc matches /etc");

    // (b) Verification reading all data passes.
    apply_yaml(
        env,
        dir.path(),
        "verify.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: VerifyPolicy
metadata: {name: weekly}
spec:
  backupPolicyRef: {name: nightly}
  schedule: {onCalendar: "*-*-* *:*:30", persistent: false}
  readData: {rotation: {subsets: 1, period: Day}}
  restoreDrill: {sampleFiles: 5, scratchDir: /var/tmp/fleetsnap-drill}
"#,
    );
    let v = wait::until("VerifyPolicy Ready", Duration::from_secs(300), || {
        let v = get_json(env, "verifypolicy/weekly")?;
        Ok(condition(&v, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(v))
    })
    .unwrap_or_else(|e| fail(e));
    assert_eq!(v["status"]["coveragePercent"], 100, "{v:#}");
    step(t0, "(b) VerifyPolicy Ready after check --read-data");

    // (d) Append-only: the host's own key cannot see another host's repository, and cannot
    // forget its own snapshots.
    let h2 = hosts[1].clone();
    let (ok, out) = fleetsnap_as_host(env, &h1, &h2, "snapshots");
    assert!(!ok, "{h1} listed {h2}'s snapshots:\n{out}");
    let (ok, out) = fleetsnap_as_host(env, &h1, &h1, "snapshots");
    assert!(ok, "{h1} cannot list its own snapshots:\n{out}");
    // Forget a snapshot by id: a keep rule could keep everything and delete nothing.
    let (ok, out) = fleetsnap_as_host(env, &h1, &h1, "--json snapshots");
    assert!(ok, "{out}");
    let listed: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| fail(anyhow::anyhow!("{e}: {out}")));
    let id = listed[0]["id"]
        .as_str()
        .unwrap_or_else(|| fail(anyhow::anyhow!("no snapshot id in {out}")))
        .to_string();
    let (ok, out) = fleetsnap_as_host(env, &h1, &h1, &format!("forget {id}"));
    assert!(!ok, "forget with an append-only key succeeded:\n{out}");
    assert!(out.contains("append-only"), "unclear forget error:\n{out}");
    step(t0, "(d) host key cannot list others or forget");

    // Host-side retention on an append-only repository is refused with a clear condition.
    apply_yaml(
        env,
        dir.path(),
        "retention-host.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {name: on-hosts}
spec:
  backupPolicyRef: {name: nightly}
  keep: {last: 2}
  schedule: {onCalendar: "daily"}
  runOn: Host
"#,
    );
    let rp = wait::until("host retention Stalled", Duration::from_secs(120), || {
        let p = get_json(env, "retentionpolicy/on-hosts")?;
        Ok(condition(&p, "Stalled")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "InvalidSpec")
            .then_some(p))
    })
    .unwrap_or_else(|e| fail(e));
    let msg = condition(&rp, "Stalled").unwrap()["message"].to_string();
    assert!(
        msg.contains("append-only") && msg.contains("runOn: Operator"),
        "{msg}"
    );

    // (e) Operator-side retention with keep-last succeeds and leaves at most that many
    // snapshots per host (plus any backup that landed since).
    apply_yaml(
        env,
        dir.path(),
        "retention-op.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {name: central}
spec:
  backupPolicyRef: {name: nightly}
  keep: {last: 1}
  prune: {maxUnused: "0%"}
  schedule: {onCalendar: "*-*-* *:*:15"}
  runOn: Operator
"#,
    );
    let rp = wait::until(
        "operator retention succeeded",
        Duration::from_secs(240),
        || {
            let p = get_json(env, "retentionpolicy/central")?;
            Ok(
                (condition(&p, "Ready").is_some_and(|c| c["status"] == "True")
                    && p["status"]["lastSuccess"].is_string())
                .then_some(p),
            )
        },
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(rp["status"]["snapshotsKept"], HOSTS as i64, "{rp:#}");
    step(t0, "(e) operator-side retention succeeded");

    // (b') A corrupted pack makes the VerifyPolicy go not-ready, naming the pack.
    let listing = env
        .mc(&[
            "ls",
            "--recursive",
            &format!("testenv/{BUCKET}/hosts/{h1}/data/"),
        ])
        .unwrap();
    let object = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .next()
        .ok_or_else(|| anyhow!("no pack in {listing}"))
        .unwrap()
        .to_string();
    let pack = object.rsplit('/').next().unwrap().to_string();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    env.mc(&[
        "cp",
        junk.to_str().unwrap(),
        &format!("testenv/{BUCKET}/hosts/{h1}/data/{object}"),
    ])
    .unwrap();
    let v = wait::until(
        "VerifyPolicy not ready naming the pack",
        Duration::from_secs(300),
        || {
            let v = get_json(env, "verifypolicy/weekly")?;
            let named = condition(&v, "Ready").is_some_and(|c| {
                c["status"] == "False"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&pack[..8]))
            });
            Ok(named.then_some(v))
        },
    )
    .unwrap_or_else(|e| fail(e));
    assert!(
        v["status"]["errors"][0]["packs"]
            .as_array()
            .is_some_and(|p| p
                .iter()
                .any(|x| x.as_str().is_some_and(|x| pack.starts_with(x)))),
        "{v:#}"
    );
    let events = env
        .kubectl(&[
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "reason=VerifyFailed",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(!events.trim().is_empty(), "no VerifyFailed event");
    step(t0, "(b') corrupted pack reported");

    // Every metric an alert rule uses is served by the real operator now that backup,
    // verify and retention policies have run.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", op.metrics)])
        .output()
        .unwrap();
    let scrape = fleetsnap_tests::check("curl /metrics", out).unwrap();
    let served: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    let wanted = alert_metric_names();
    assert!(!wanted.is_empty());
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "alert rules use metrics the operator does not serve: {missing:?}\n{scrape}"
    );
    step(t0, "every metric used by an alert rule is served");

    let log = std::fs::read_to_string(&op.log).unwrap();
    for secret in [PASSWORD, env.var("MINIO_ROOT_PASSWORD")] {
        assert!(
            !log.contains(secret),
            "a secret appears in the operator log"
        );
    }
}
