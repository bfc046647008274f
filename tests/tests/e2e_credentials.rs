//! End to end: the credentials a BackupRepository names reach every place that opens the
//! repository (issue 16, static sources).
//!
//! - A Secret holding a short-lived key (key id, secret and `AWS_SESSION_TOKEN`, minted by
//!   MinIO's STS) backs up a real host: the token must reach the host job, or the storage
//!   answers 403 to a temporary key id without it.
//! - A REST server that requires HTTP basic auth (`rclone serve restic --htpasswd`): the
//!   Secret's `username` and `password` must reach the host job, the Restore and the
//!   operator's own retention, or the server answers 401.
//! - `s3.credentialProcess`: the host job runs a broker in the AWS `credential_process`
//!   contract and backs up with what it prints.
//!
//! Each test also checks that no secret shows in the unit files, the job config, the
//! operator's log or any status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetsnap_tests::kube::{
    self, apply_yaml, get_json, host_yaml, policy_entry, secret_from_files,
};
use fleetsnap_tests::operator::{Launch, Operator, Variant, free_port};
use fleetsnap_tests::{Options, TestEnv, step, wait};
use serde_json::{Value, json};

const PASSWORD: &str = "cred-repository-password-91b2";

fn env() -> &'static TestEnv {
    let env = TestEnv::shared(Options {
        hosts: 1,
        ..Options::default()
    });
    for tool in ["mc", "restic", "kubectl", "rclone"] {
        let p = env.tool(tool);
        assert!(
            p.exists(),
            "{tool} is missing from the testenv at {}",
            p.display()
        );
    }
    env
}

/// The suites share the one host; each test uses its own namespace and policy names, but the
/// operator of one would remove the other's units (it owns every fleetsnap unit on the host).
static HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn host_lock() -> std::sync::MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|e| e.into_inner())
}

/// A MinIO user with every right on `bucket` (so an STS session inherits them).
fn bucket_user(env: &TestEnv, dir: &Path, name: &str, bucket: &str) -> (String, String) {
    let keys = (name.to_string(), format!("{name}-secret-5d0c7e21"));
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")]}]
    });
    fleetsnap_tests::minio::add_user(env, dir, &keys, &policy).unwrap();
    keys
}

/// An STS AssumeRole session for `keys`, as `(key, secret, token, expiration)`, signed by
/// curl itself.
fn assume_role(env: &TestEnv, keys: &(String, String)) -> (String, String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--aws-sigv4",
            "aws:amz:us-east-1:sts",
        ])
        .args(["--user", &format!("{}:{}", keys.0, keys.1)])
        .args([
            "-d",
            "Action=AssumeRole&Version=2011-06-15&DurationSeconds=3600",
        ])
        .arg(format!("{}/", env.var("S3_ENDPOINT")))
        .output()
        .expect("run curl");
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "STS AssumeRole failed: {xml}");
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = xml
            .find(&open)
            .unwrap_or_else(|| panic!("no {name} in {xml}"))
            + open.len();
        let end = start + xml[start..].find('<').unwrap();
        xml[start..end].to_string()
    };
    (
        field("AccessKeyId"),
        field("SecretAccessKey"),
        field("SessionToken"),
        field("Expiration"),
    )
}

fn base(env: &TestEnv, ns: &str, dir: &Path) {
    kube::install_crds(env);
    kube::create_namespace(env, ns);
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, ns, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret_from_files(env, ns, dir, "repo-password", &[("password", PASSWORD)]);
    let host = &env.hosts()[0];
    apply_yaml(
        env,
        ns,
        dir,
        "host.yaml",
        &host_yaml(
            host,
            "group: creds",
            env.ssh_port(host),
            env.var("HOST_KEY"),
        ),
    );
}

/// [`base`] plus an empty bucket and a MinIO user with every right on it.
fn s3_case(env: &TestEnv, ns: &str, dir: &Path, bucket: &str) -> (String, String) {
    base(env, ns, dir);
    env.mc(&["mb", &format!("testenv/{bucket}")]).unwrap();
    bucket_user(env, dir, &format!("{ns}-user"), bucket)
}

fn backup_policy(name: &str, repo: &str) -> String {
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {{name: {name}}}
spec:
  hostSelector: {{matchLabels: {{group: creds}}}}
  repositoryRef: {{name: {repo}}}
  paths: [/etc/hostname, /etc/os-release]
  schedule: {{onCalendar: "*-*-* *:*:00/20", persistent: false}}
"#
    )
}

/// BackupRepository `name` with `body` (the backend and its credentials, each line after the
/// first indented by two spaces) and the suite's password Secret.
fn repository(env: &TestEnv, ns: &str, dir: &Path, name: &str, body: &str) {
    let yaml = format!(
        "apiVersion: fleetsnap.io/v1alpha1\nkind: BackupRepository\nmetadata: {{name: {name}}}\nspec:\n  \
         {body}  passwordSecretRef: {{name: repo-password, key: password}}\n"
    );
    apply_yaml(env, ns, dir, &format!("repo-{name}.yaml"), &yaml);
}

/// BackupPolicy `policy` on `repo`, an operator started as `cred-<policy>` with `variant`,
/// and the host's first successful backup (its `Host.status.policies[]` entry).
fn back_up(
    env: &TestEnv,
    ns: &str,
    dir: &Path,
    policy: &str,
    repo: &str,
    variant: &Variant,
) -> (Operator, Value) {
    apply_yaml(
        env,
        ns,
        dir,
        &format!("policy-{policy}.yaml"),
        &backup_policy(policy, repo),
    );
    let op = Launch::admin(env, ns).start_variant(env, &format!("cred-{policy}"), variant);
    let entry = await_backup(env, ns, policy, &op);
    (op, entry)
}

/// Waits for the host's entry of BackupPolicy `name` to show a success; on timeout the
/// panic carries the entry (with the host's own error) and the operator's log tail.
fn await_backup(env: &TestEnv, ns: &str, name: &str, op: &Operator) -> Value {
    let host = env.hosts()[0].clone();
    let mut last = Value::Null;
    let r = wait::until(
        &format!("BackupPolicy {name} succeeded on {host}"),
        Duration::from_secs(180),
        || {
            let h = get_json(env, ns, &format!("host/{host}"))?;
            last = policy_entry(&h, "BackupPolicy", name)
                .cloned()
                .unwrap_or(Value::Null);
            Ok(last["lastSuccess"].is_string().then(|| last.clone()))
        },
    );
    r.unwrap_or_else(|e| panic!("{e:#}\nhost entry: {last:#}\n{}", op.tail()))
}

/// What a compromised reader of the host, the API or the logs could see: unit files and job
/// configs on the host, the operator's log, the Host's and policies' status, Events.
fn assert_nowhere(env: &TestEnv, ns: &str, op: &Operator, secrets: &[(&str, &str)]) {
    let host = &env.hosts()[0];
    let on_host = env
        .ssh_ok(
            host,
            "cat /etc/systemd/system/fleetsnap-* /etc/fleetsnap/*.json 2>/dev/null; \
             ps -eo args; systemctl show-environment",
        )
        .unwrap();
    let api = env
        .kubectl(&[
            "get",
            "hosts,backuppolicies,retentionpolicies,restores,events",
            "-n",
            ns,
            "-o",
            "json",
        ])
        .unwrap();
    let log = op.log_text();
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        assert!(
            !on_host.contains(secret),
            "{what} is in a unit, job config or argv on the host"
        );
        assert!(!api.contains(secret), "{what} is in a status or Event");
        assert!(!log.contains(secret), "{what} is in the operator log");
    }
}

#[test]
fn a_session_token_in_the_secret_reaches_the_host_job() {
    let _host = host_lock();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (ns, bucket) = ("cred-sts", "cred-sts");
    let user = s3_case(env, ns, dir.path(), bucket);
    let (ak, sk, tok, expiration) = assume_role(env, &user);
    secret_from_files(
        env,
        ns,
        dir.path(),
        "sts-keys",
        &[
            ("AWS_ACCESS_KEY_ID", &ak),
            ("AWS_SECRET_ACCESS_KEY", &sk),
            ("AWS_SESSION_TOKEN", &tok),
            ("AWS_CREDENTIAL_EXPIRATION", &expiration),
        ],
    );
    repository(
        env,
        ns,
        dir.path(),
        "sts",
        &format!(
            "s3: {{endpoint: \"{}\", bucket: {bucket}, pathStyle: true, credentialsSecretRef: {{name: sts-keys}}}}\n",
            env.var("S3_ENDPOINT_FROM_HOSTS")
        ),
    );
    let (op, entry) = back_up(env, ns, dir.path(), "sts", "sts", &Variant::default());
    step(t0, "backup with a Secret's STS session succeeded");

    // The snapshot is real: stock restic lists it with the same session.
    let host = &env.hosts()[0];
    let out = Command::new(env.tool("restic"))
        .args([
            "-r",
            &format!("s3:{}/{bucket}/hosts/{host}", env.var("S3_ENDPOINT")),
        ])
        .args(["snapshots", "--json"])
        .env("AWS_ACCESS_KEY_ID", &ak)
        .env("AWS_SECRET_ACCESS_KEY", &sk)
        .env("AWS_SESSION_TOKEN", &tok)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let snaps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "restic snapshots: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let id = entry["snapshotId"].as_str().unwrap_or_default();
    assert!(
        snaps.iter().any(|s| s["short_id"] == id || s["id"] == id),
        "restic does not list the snapshot {id} the operator reported: {snaps:?}"
    );
    assert_nowhere(
        env,
        ns,
        &op,
        &[("the secret key", &sk), ("the session token", &tok)],
    );
    step(
        t0,
        "restic reads it; no secret in units, argv, status or log",
    );

    // The key's expiry is known: Host status and the metric the alert compares with the
    // next run both carry STS's own Expiration.
    let expected = chrono::DateTime::parse_from_rfc3339(&expiration)
        .unwrap()
        .timestamp();
    let shown = entry["credentialExpiry"]
        .as_str()
        .unwrap_or_else(|| panic!("no credentialExpiry: {entry:#}"));
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(shown)
            .unwrap()
            .timestamp(),
        expected,
        "{entry:#}"
    );
    // Both series the alert compares, from one scrape (the next run is known once the
    // operator has observed the timer between two runs).
    let mut scrape = String::new();
    let (expiry_metric, next) = wait::until(
        "the expiry and next-run series served",
        Duration::from_secs(60),
        || {
            scrape = op.scrape()?;
            let value = |name: &str| {
                scrape
                    .lines()
                    .find(|l| {
                        l.starts_with(&format!("{name}{{"))
                            && l.contains(&format!("host=\"{host}\""))
                    })
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Ok(
                value("fleetsnap_backup_credential_expiry_timestamp_seconds")
                    .zip(value("fleetsnap_backup_next_run_timestamp_seconds")),
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{scrape}"));
    assert_eq!(expiry_metric as i64, expected);
    let next = next as i64;
    assert!(
        next < expected,
        "next run {next} is not before the expiry {expected}"
    );
    step(
        t0,
        "credentialExpiry and the expiry metric show STS's Expiration",
    );
}

/// Makes 127.0.0.1:`port` of the test machine reachable by the hosts at `bind`:`bind_port`
/// inside their network namespace, the two-hop way testenv forwards MinIO: a socat on the
/// machine behind a unix socket, and one inside the namespace in front of it.
fn forward_to_hosts(
    env: &TestEnv,
    dir: &Path,
    name: &str,
    port: u16,
    bind: &str,
    bind_port: u16,
) -> Vec<Child> {
    let sock = dir.join(format!("{name}.sock"));
    let outer = Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
        .arg(format!("TCP:127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let inner = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.var("NETNS")))
        .arg("socat")
        .arg(format!("TCP-LISTEN:{bind_port},bind={bind},reuseaddr,fork"))
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    vec![outer, inner]
}

/// `rclone serve restic` with basic auth on the test machine, reachable by the hosts at
/// `10.0.2.100:<port>` through the same two-hop forward testenv uses for MinIO.
struct RestServer {
    children: Vec<Child>,
    local_url: String,
    host_url: String,
}

impl Drop for RestServer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rest_server(env: &TestEnv, dir: &Path, user: &str, password: &str) -> RestServer {
    let htpasswd = dir.join("htpasswd");
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", password])
        .output()
        .unwrap();
    assert!(hash.status.success(), "openssl passwd");
    std::fs::write(
        &htpasswd,
        format!("{user}:{}", String::from_utf8_lossy(&hash.stdout)),
    )
    .unwrap();
    let data = dir.join("rest-data");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("rclone.log")).unwrap();
    let rclone = Command::new(env.tool("rclone"))
        .args(["serve", "restic", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--htpasswd")
        .arg(&htpasswd)
        .arg(&data)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let inner_port = free_port();
    let forward = forward_to_hosts(env, dir, "rest", port, "10.0.2.100", inner_port);
    let server = RestServer {
        children: std::iter::once(rclone).chain(forward).collect(),
        local_url: format!("http://127.0.0.1:{port}/"),
        host_url: format!("http://10.0.2.100:{inner_port}/"),
    };
    wait::until(
        "rclone serve restic answers",
        Duration::from_secs(30),
        || {
            let code = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &server.local_url,
                ])
                .output()?;
            Ok((String::from_utf8_lossy(&code.stdout) == "401").then_some(()))
        },
    )
    .unwrap();
    server
}

#[test]
fn rest_basic_auth_reaches_host_jobs_restore_and_operator_retention() {
    let _host = host_lock();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let ns = "cred-rest";
    let (user, pass) = ("fleet", "rest-basic-auth-pass-3e9a");
    let server = rest_server(env, dir.path(), user, pass);
    base(env, ns, dir.path());
    secret_from_files(
        env,
        ns,
        dir.path(),
        "rest-auth",
        &[("username", user), ("password", pass)],
    );
    repository(
        env,
        ns,
        dir.path(),
        "rest",
        &format!(
            "rest: {{url: \"{}\", credentialsSecretRef: {{name: rest-auth}}}}\n",
            server.host_url
        ),
    );
    let variant = Variant {
        binary: None,
        env: vec![(
            "FLEETSNAP_MAINTENANCE_REST_URL".into(),
            server.local_url.clone(),
        )],
    };
    let (op, _) = back_up(env, ns, dir.path(), "rest", "rest", &variant);
    step(t0, "backup to a REST server with basic auth succeeded");

    // Operator-side retention opens the same repository with the same Secret.
    apply_yaml(
        env,
        ns,
        dir.path(),
        "retention.yaml",
        "apiVersion: fleetsnap.io/v1alpha1\nkind: RetentionPolicy\nmetadata: {name: rest}\nspec:\n  \
         backupPolicyRef: {name: rest}\n  keep: {last: 1}\n  schedule: {onCalendar: \"*-*-* *:*:00/30\"}\n  runOn: Operator\n",
    );
    let mut last = Value::Null;
    wait::until(
        "operator retention over REST succeeded",
        Duration::from_secs(180),
        || {
            last = get_json(env, ns, "retentionpolicy/rest")?;
            Ok(last["status"]["lastSuccess"].is_string().then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:#}\n{}", last["status"], op.tail()));
    step(t0, "operator-side retention over REST succeeded");

    // A Restore on the host reads it back.
    let host = env.hosts()[0].clone();
    let target = "/var/tmp/cred-rest-restore";
    env.ssh_ok(&host, &format!("rm -rf {target}")).unwrap();
    apply_yaml(
        env,
        ns,
        dir.path(),
        "restore.yaml",
        &format!(
            "apiVersion: fleetsnap.io/v1alpha1\nkind: Restore\nmetadata: {{name: back}}\nspec:\n  \
             hostRef: {{name: {host}}}\n  repositoryRef: {{name: rest}}\n  targetDirectory: {target}\n"
        ),
    );
    let mut r = Value::Null;
    wait::until(
        "Restore over REST finished",
        Duration::from_secs(120),
        || {
            r = get_json(env, ns, "restore/back")?;
            let phase = r["status"]["phase"].as_str().unwrap_or_default();
            Ok((phase == "Succeeded" || phase == "Failed").then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", op.tail()));
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{:#}\n{}",
        r["status"],
        op.tail()
    );
    let restored = env
        .ssh_ok(&host, &format!("cat {target}/etc/hostname"))
        .unwrap();
    let original = env.ssh_ok(&host, "cat /etc/hostname").unwrap();
    assert_eq!(restored, original);
    assert_nowhere(env, ns, &op, &[("the REST password", pass)]);
    step(
        t0,
        "Restore over REST succeeded; no secret in units, argv, status or log",
    );
    drop(op);
    drop(server);
}

#[test]
fn a_credential_process_named_by_the_repository_backs_up() {
    let _host = host_lock();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (ns, bucket) = ("cred-process", "cred-process");
    let user = s3_case(env, ns, dir.path(), bucket);
    let (ak, sk, tok, _) = assume_role(env, &user);
    // The broker on the host prints a session minted by MinIO's STS in the credential_process
    // contract (the hosts have no route to an STS of their own to ask).
    let host = env.hosts()[0].clone();
    let expires = chrono::Utc::now() + chrono::Duration::minutes(55);
    let doc = json!({"Version": 1, "AccessKeyId": ak, "SecretAccessKey": sk, "SessionToken": tok,
        "Expiration": expires.to_rfc3339()});
    let out = env
        .ssh(
            &host,
            "umask 077; mkdir -p /opt/cred-broker; cat > /opt/cred-broker/session.json; \
             printf '#!/bin/sh\\necho \"called $*\" >> /var/lib/fleetsnap/cred-broker-calls\\nexec cat /opt/cred-broker/session.json\\n' \
             > /opt/cred-broker/broker; chmod 700 /opt/cred-broker/broker; rm -f /var/lib/fleetsnap/cred-broker-calls",
            doc.to_string().as_bytes(),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    repository(
        env,
        ns,
        dir.path(),
        "broker",
        &format!(
            "s3:\n    endpoint: \"{}\"\n    bucket: {bucket}\n    pathStyle: true\n    credentialProcess: {{command: [/opt/cred-broker/broker, \"--host={{hostname}}\"]}}\n",
            env.var("S3_ENDPOINT_FROM_HOSTS")
        ),
    );
    let repo = get_json(env, ns, "backuprepository/broker").unwrap();
    assert_eq!(
        repo["spec"]["s3"]["credentialProcess"]["command"][0], "/opt/cred-broker/broker",
        "the API server dropped s3.credentialProcess: {repo:#}"
    );
    let (op, entry) = back_up(env, ns, dir.path(), "broker", "broker", &Variant::default());
    // The broker's Expiration comes back through the run record into Host status.
    let shown = entry["credentialExpiry"]
        .as_str()
        .unwrap_or_else(|| panic!("no credentialExpiry from the broker's key: {entry:#}"));
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(shown)
            .unwrap()
            .timestamp(),
        expires.timestamp(),
        "{entry:#}"
    );
    let calls = env
        .ssh_ok(&host, "cat /var/lib/fleetsnap/cred-broker-calls")
        .unwrap();
    assert!(
        calls.contains(&format!("--host={host}")),
        "the broker was not called with the expanded hostname: {calls}"
    );
    assert_nowhere(
        env,
        ns,
        &op,
        &[("the secret key", &sk), ("the session token", &tok)],
    );
    step(t0, "backup through a credential_process broker succeeded");
}

/// The minted key's parts as the host's job holds them (decrypted on the host itself).
fn host_job_keys(env: &TestEnv, host: &str, slug: &str) -> Vec<String> {
    let script = format!(
        "for id in aws-access-key-id aws-secret-access-key aws-session-token; do \
           e=/etc/fleetsnap/credstore.encrypted/{slug}.$id; p=/etc/fleetsnap/credstore/{slug}.$id; \
           if [ -f \"$e\" ]; then systemd-creds decrypt --name=\"$id\" \"$e\" - ; else cat \"$p\"; fi; echo; \
         done"
    );
    env.ssh_ok(host, &script)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn operator_minted_host_keys_back_up_cannot_delete_and_are_replaced() {
    let _host = host_lock();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (ns, bucket) = ("cred-opsts", "cred-opsts");
    let maint = s3_case(env, ns, dir.path(), bucket);
    secret_from_files(
        env,
        ns,
        dir.path(),
        "maintenance",
        &[
            ("AWS_ACCESS_KEY_ID", &maint.0),
            ("AWS_SECRET_ACCESS_KEY", &maint.1),
        ],
    );
    repository(
        env,
        ns,
        dir.path(),
        "minted",
        &format!(
            "s3: {{endpoint: \"{}\", bucket: {bucket}, pathStyle: true, operatorSts: {{duration: 15m}}}}\n  maintenanceCredentialsSecretRef: {{name: maintenance}}\n",
            env.var("S3_ENDPOINT_FROM_HOSTS")
        ),
    );
    // The operator's clock runs 9 minutes ahead (libfaketime; SigV4 tolerates 15): every
    // 15-minute key it mints is already past half its life, so the replacement path runs on
    // every pass instead of after 7.5 minutes.
    let (op, entry) = back_up(
        env,
        ns,
        dir.path(),
        "opsts",
        "minted",
        &Variant::clock("+9m"),
    );
    step(t0, "backup with an operator-minted host key succeeded");

    let host = env.hosts()[0].clone();
    let repo_url = format!("s3:{}/{bucket}/hosts/{host}", env.var("S3_ENDPOINT"));
    // The clock offset makes the operator replace this key on every pass, and it writes the
    // three credential files one after another, so one read can catch a new key id with the
    // old token. Read until the triple works together (a quick `cat config`, cut off before
    // restic's own 15-minute retries); a unit starting mid-write has the same window, which
    // the closing note of issue 16 records.
    let mut keys = Vec::new();
    wait::until(
        "a consistent key triple on the host",
        Duration::from_secs(120),
        || {
            keys = host_job_keys(env, &host, "backup-opsts");
            if keys.len() != 3 {
                return Err(anyhow::anyhow!("{keys:?}"));
            }
            let ok = Command::new("timeout")
                .arg("20")
                .arg(env.tool("restic"))
                .args(["-r", &repo_url, "cat", "config"])
                .env("AWS_ACCESS_KEY_ID", &keys[0])
                .env("AWS_SECRET_ACCESS_KEY", &keys[1])
                .env("AWS_SESSION_TOKEN", &keys[2])
                .env("RESTIC_PASSWORD", PASSWORD)
                .output()?
                .status
                .success();
            Ok(ok.then_some(()))
        },
    )
    .unwrap();
    let (ak, sk, tok) = (&keys[0], &keys[1], &keys[2]);
    assert!(
        !ak.is_empty() && !tok.is_empty(),
        "the host got no session key"
    );
    assert_ne!(ak, &maint.0, "the host got the maintenance identity");
    let restic = |args: &[&str]| {
        Command::new(env.tool("restic"))
            .args([
                "-r",
                &format!("s3:{}/{bucket}/hosts/{host}", env.var("S3_ENDPOINT")),
            ])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk)
            .env("AWS_SESSION_TOKEN", tok)
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let listed = restic(&["snapshots", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let snaps: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    let forget = restic(&["forget", &id]);
    let out = String::from_utf8_lossy(&forget.stderr).to_string();
    assert!(
        out.contains("Access Denied") || out.contains("AccessDenied"),
        "the host's key deleted a snapshot (or failed otherwise): {out}"
    );
    let still = restic(&["snapshots", "--json"]);
    let after: Vec<Value> = serde_json::from_slice(&still.stdout).unwrap();
    assert!(after.iter().any(|s| s["id"] == id), "snapshot {id} is gone");
    // Another host's prefix is out of reach.
    let other = Command::new(env.tool("restic"))
        .args([
            "-r",
            &format!("s3:{}/{bucket}/hosts/not-{host}", env.var("S3_ENDPOINT")),
        ])
        .args(["init"])
        .env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", sk)
        .env("AWS_SESSION_TOKEN", tok)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        !other.status.success(),
        "the host's key wrote below another host's prefix"
    );
    step(
        t0,
        "the minted key reads and adds, cannot delete, cannot leave its prefix",
    );

    // Replacement: a newer key reaches the host and the next backup succeeds with it.
    let first_expiry = entry["credentialExpiry"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!first_expiry.is_empty(), "no credentialExpiry: {entry:#}");
    let first_success = entry["lastSuccess"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    wait::until(
        "a replaced key and a backup with it",
        Duration::from_secs(180),
        || {
            let now = host_job_keys(env, &host, "backup-opsts");
            let h = get_json(env, ns, &format!("host/{host}"))?;
            last = policy_entry(&h, "BackupPolicy", "opsts")
                .cloned()
                .unwrap_or(Value::Null);
            let newer = last["lastSuccess"]
                .as_str()
                .is_some_and(|s| s > first_success.as_str());
            Ok((now[0] != *ak && newer).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{last:#}\n{}", op.tail()));
    let minted = op.log_text().matches("host key minted").count();
    assert!(minted >= 2, "{minted} keys minted");
    let expiry =
        chrono::DateTime::parse_from_rfc3339(last["credentialExpiry"].as_str().unwrap()).unwrap();
    let lifetime = expiry.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        lifetime <= 15 * 60,
        "a key outlives its 15-minute duration: {lifetime} s"
    );
    assert_nowhere(
        env,
        ns,
        &op,
        &[
            ("the maintenance secret key", &maint.1),
            ("a minted secret key", sk),
            ("a session token", tok),
        ],
    );
    step(
        t0,
        &format!("{minted} keys minted; backups go on with the replaced key"),
    );
}

/// amazon-ec2-metadata-mock serving one STS session as the instance profile's credentials,
/// reachable by the hosts at 169.254.169.254:80 like the real instance metadata service.
struct Imds {
    children: Vec<Child>,
    netns: String,
}

impl Drop for Imds {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.netns,
                "addr",
                "del",
                "169.254.169.254/32",
                "dev",
                "br0",
            ])
            .status();
    }
}

fn imds(env: &TestEnv, dir: &Path, creds: (&str, &str, &str, &str)) -> Imds {
    let bin = fleetsnap_tests::repo_root().join("tests/testenv/tools.sh");
    let out = Command::new(&bin).args(["path", "aemm"]).output().unwrap();
    let aemm = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("ec2-metadata-mock");
    assert!(
        aemm.exists(),
        "amazon-ec2-metadata-mock is missing at {} (tests/testenv/tools.sh aemm builds it)",
        aemm.display()
    );
    let config = dir.join("aemm-config.json");
    let (ak, sk, tok, exp) = creds;
    std::fs::write(
        &config,
        json!({"metadata": {"values": {"iam-security-credentials": {
            "Code": "Success", "LastUpdated": chrono::Utc::now().to_rfc3339(), "Type": "AWS-HMAC",
            "AccessKeyId": ak, "SecretAccessKey": sk, "Token": tok, "Expiration": exp}}}})
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("aemm.log")).unwrap();
    let mock = Command::new(&aemm)
        .args(["-n", "127.0.0.1", "-p", &port.to_string(), "-c"])
        .arg(&config)
        .env("HOME", dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let netns = env.var("NETNS").to_string();
    let ok = Command::new("ip")
        .args([
            "-n",
            &netns,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "br0",
        ])
        .status()
        .unwrap();
    assert!(ok.success(), "cannot add 169.254.169.254 in {netns}");
    let forward = forward_to_hosts(env, dir, "imds", port, "169.254.169.254", 80);
    let server = Imds {
        children: std::iter::once(mock).chain(forward).collect(),
        netns,
    };
    let url = format!("http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/");
    wait::until("the metadata mock answers", Duration::from_secs(30), || {
        let o = Command::new("curl").args(["-sf", &url]).output()?;
        Ok(o.status.success().then_some(()))
    })
    .unwrap();
    server
}

#[test]
fn the_hosts_own_identity_from_instance_metadata_backs_up() {
    let _host = host_lock();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (ns, bucket) = ("cred-ambient", "cred-ambient");
    let user = s3_case(env, ns, dir.path(), bucket);
    let (ak, sk, tok, exp) = assume_role(env, &user);
    let _imds = imds(env, dir.path(), (&ak, &sk, &tok, &exp));
    // No credentials in the repository at all: the executor's S3 client takes the SDK's
    // default chain, which ends at the instance metadata service.
    repository(
        env,
        ns,
        dir.path(),
        "ambient",
        &format!(
            "s3: {{endpoint: \"{}\", bucket: {bucket}, pathStyle: true}}\n",
            env.var("S3_ENDPOINT_FROM_HOSTS")
        ),
    );
    let (op, _) = back_up(
        env,
        ns,
        dir.path(),
        "ambient",
        "ambient",
        &Variant::default(),
    );
    let host = &env.hosts()[0];
    let keys = env
        .mc(&[
            "ls",
            "--recursive",
            &format!("testenv/{bucket}/hosts/{host}/snapshots/"),
        ])
        .unwrap();
    assert!(
        !keys.trim().is_empty(),
        "no snapshot file written with the instance profile's key"
    );
    // The key came from the metadata service: the mock logged the role's credentials read.
    let log = std::fs::read_to_string(dir.path().join("aemm.log")).unwrap();
    assert!(
        log.contains("/latest/meta-data/iam/security-credentials/baskinc-role"),
        "the instance metadata service was never asked for the role's credentials:\n{log}"
    );
    assert_nowhere(
        env,
        ns,
        &op,
        &[("the secret key", &sk), ("the session token", &tok)],
    );
    step(
        t0,
        "backup with the host's own identity (instance metadata) succeeded",
    );
}
