//! Cross-host restore: a Restore of host A's snapshot onto host B must not hand B the
//! credentials of A (issue 10 item 6).
//!
//! Host A writes its repository with its own per-host MinIO keys (read, write and list its
//! prefix, delete only its locks). A Restore then brings A's snapshot onto host B. The
//! operator runs with a stand-in executor that records, on the host, the environment and the
//! contents of the password-file directory of every `restore` it runs before executing the
//! real binary, so the test sees exactly what reached B. Checked: the files on B match A's;
//! A's secret access key never reached B, a temporary (session-token) credential did; with
//! that credential B reads A's repository but cannot write into it (a `backup` there is
//! refused by the storage), and the credential expires within the hour.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetsnap_tests::kube::{self, apply_yaml, get_json, host_yaml, secret_from_files};
use fleetsnap_tests::minio::{self, Bucket};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{TestEnv, step, wait};
use serde_json::{Value, json};

use crate::{env, fleetsnap};

const NS: &str = "hh-xrestore";
const BUCKET: &str = "hh-xrestore";
const PASSWORD: &str = "xrestore-repository-password-4f1e";
/// The real executor on the hosts; the operator pushes [`STAND_IN`] in its place.
const REAL: &str = "/opt/xrestore/fleetsnap-real";
const CAPTURE_DIR: &str = "/var/tmp/xrestore-capture";
const TARGET: &str = "/var/tmp/xrestore-target";

/// The executor the operator installs: for a `restore`, it records its environment and the
/// files of its password-file directory (everything that arrived on the SSH session's stdin)
/// into a root-only file, then runs the real executor.
const STAND_IN: &str = r#"#!/bin/sh
case " $* " in
*" restore "*)
  umask 077
  mkdir -p /var/tmp/xrestore-capture
  f=/var/tmp/xrestore-capture/$(date +%s%N).txt
  {
    echo "ARGS: $*"
    env | sed 's/^/ENV: /'
    prev=
    for a in "$@"; do
      if [ "$prev" = --password-file ]; then
        for x in "$(dirname "$a")"/*; do echo "FILE $x:"; cat "$x"; echo; done
      fi
      prev=$a
    done
  } > "$f"
  ;;
esac
exec /opt/xrestore/fleetsnap-real "$@"
"#;

fn keys(who: &str) -> (String, String) {
    (format!("xr-{who}"), format!("xr-secret-{who}-7c5a19e2d0"))
}

/// The maintenance identity: a normal MinIO user (not root) with every right on the bucket.
fn maintenance_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:*"],
             "Resource": [format!("arn:aws:s3:::{BUCKET}"), format!("arn:aws:s3:::{BUCKET}/*")]}
        ]
    })
}

fn ssh_stdin(env: &TestEnv, host: &str, script: &str, stdin: &[u8]) -> (bool, String) {
    let out = env.ssh(host, script, stdin).unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The real executor on `host` against A's repository with the given environment lines
/// (`export` statements read from stdin, so no secret is on a command line).
fn fleetsnap_with(env: &TestEnv, host: &str, exports: &str, args: &str) -> (bool, String) {
    let repo = format!(
        "s3:{}/{BUCKET}/hosts/host1",
        env.var("S3_ENDPOINT_FROM_HOSTS")
    );
    let script = format!(
        "set -e; IFS= read -r ak; IFS= read -r sk; IFS= read -r tok; export AWS_ACCESS_KEY_ID=\"$ak\" AWS_SECRET_ACCESS_KEY=\"$sk\"; \
         if [ -n \"$tok\" ]; then export AWS_SESSION_TOKEN=\"$tok\"; fi; \
         export RESTIC_PASSWORD='{PASSWORD}'; {REAL} -r '{repo}' {args} 2>&1"
    );
    ssh_stdin(env, host, &script, exports.as_bytes())
}

/// `NAME=value` of the captured environment.
fn captured_var<'a>(capture: &'a str, name: &str) -> Option<&'a str> {
    capture.lines().find_map(|l| {
        l.strip_prefix("ENV: ")?
            .strip_prefix(name)?
            .strip_prefix('=')
    })
}

/// The `exp` claim of a JWT (MinIO's session tokens are JWTs), in Unix seconds.
fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    serde_json::from_slice::<Value>(&out).ok()?["exp"].as_i64()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn cross_host_restore_gets_no_write_credentials() {
    let _hosts = crate::exclusive();
    let env = env();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let hosts = env.hosts();
    let (a, b) = (hosts[0].as_str(), hosts[1].as_str());
    assert_eq!(
        a, "host1",
        "the repository URL below assumes host1 is the source"
    );

    kube::install_crds(env);
    kube::create_namespace(env, NS);
    minio::make_bucket(env, BUCKET, Bucket::Versioned).unwrap();
    for h in [a, b] {
        let k = keys(h);
        minio::add_user(
            env,
            dir.path(),
            &k,
            &minio::host_policy(BUCKET, &format!("hosts/{h}")),
        )
        .unwrap();
        secret_from_files(
            env,
            NS,
            dir.path(),
            &format!("s3-{h}"),
            &[("AWS_ACCESS_KEY_ID", &k.0), ("AWS_SECRET_ACCESS_KEY", &k.1)],
        );
    }
    let maint = keys("maintenance");
    minio::add_user(env, dir.path(), &maint, &maintenance_policy()).unwrap();
    secret_from_files(
        env,
        NS,
        dir.path(),
        "maintenance",
        &[
            ("AWS_ACCESS_KEY_ID", &maint.0),
            ("AWS_SECRET_ACCESS_KEY", &maint.1),
        ],
    );
    let ssh_key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, NS, dir.path(), "ssh-key", &[("id_ed25519", &ssh_key)]);
    secret_from_files(
        env,
        NS,
        dir.path(),
        "repo-password",
        &[("password", PASSWORD)],
    );

    // The real executor on both hosts, behind the stand-in the operator installs.
    for h in [a, b] {
        env.ssh_ok(h, "mkdir -p /opt/xrestore").unwrap();
        env.scp(&fleetsnap(), h, REAL).unwrap();
        env.ssh_ok(
            h,
            &format!("chmod 755 {REAL}; rm -rf {CAPTURE_DIR} {TARGET}"),
        )
        .unwrap();
    }
    let stand_in = dir.path().join("fleetsnap-stand-in");
    std::fs::write(&stand_in, STAND_IN).unwrap();

    // Host A backs up with its own keys.
    env.ssh_ok(
        a,
        "rm -rf /srv/xr-data; mkdir -p /srv/xr-data/sub; echo alpha > /srv/xr-data/a.txt; \
         head -c 300000 /dev/urandom > /srv/xr-data/b.bin; echo gamma > /srv/xr-data/sub/c.txt",
    )
    .unwrap();
    let a_keys = keys(a);
    let a_exports = format!("{}\n{}\n\n", a_keys.0, a_keys.1);
    let (ok, out) = fleetsnap_with(env, a, &a_exports, "init");
    assert!(ok, "init on {a}: {out}");
    let (ok, out) = fleetsnap_with(env, a, &a_exports, "backup --host host1 /srv/xr-data");
    assert!(ok, "backup on {a}: {out}");
    step(t0, "host A's repository written with A's keys");

    let mut hosts_yaml = String::new();
    for h in [a, b] {
        hosts_yaml.push_str(&host_yaml(
            h,
            "group: xrestore",
            env.ssh_port(h),
            env.var("HOST_KEY"),
        ));
    }
    apply_yaml(env, NS, dir.path(), "hosts.yaml", &hosts_yaml);
    apply_yaml(
        env,
        NS,
        dir.path(),
        "repo.yaml",
        &fleetsnap_tests::kube::per_host_repository_yaml(env, "minio", BUCKET, true),
    );
    let mut launch = Launch::admin(env, NS);
    launch.executor = stand_in;
    let op = launch.start(env, "xrestore");

    let restore_started = now_unix();
    apply_yaml(
        env,
        NS,
        dir.path(),
        "restore.yaml",
        &format!(
            "apiVersion: fleetsnap.io/v1alpha1\nkind: Restore\nmetadata: {{name: a-onto-b}}\nspec:\n  \
             hostRef: {{name: {b}}}\n  repositoryRef: {{name: minio}}\n  source: {{hostname: {a}}}\n  \
             targetDirectory: {TARGET}\n"
        ),
    );
    let r = wait::until(
        "Restore a-onto-b finished",
        Duration::from_secs(120),
        || {
            let r = get_json(env, NS, "restore/a-onto-b")?;
            let phase = r["status"]["phase"].as_str().unwrap_or_default();
            Ok((phase == "Succeeded" || phase == "Failed").then_some(r))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    step(t0, "Restore of A's snapshot onto B finished");

    // (1) It succeeded and B now has A's files.
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{:#}\n{}",
        r["status"],
        op.tail()
    );
    let sums = "cd /srv/xr-data && find . -type f | sort | xargs sha256sum";
    let on_a = env.ssh_ok(a, sums).unwrap();
    let on_b = env
        .ssh_ok(
            b,
            &format!("cd {TARGET}/srv/xr-data && find . -type f | sort | xargs sha256sum"),
        )
        .unwrap();
    assert_eq!(on_a, on_b, "restored files differ");
    assert_eq!(on_a.lines().count(), 3);

    // (2) What reached B: never A's secret key; a temporary credential instead.
    let capture = env
        .ssh_ok(b, &format!("cat {CAPTURE_DIR}/*.txt"))
        .unwrap_or_else(|e| panic!("no restore was captured on {b}: {e:#}"));
    let redacted = capture.replace(&a_keys.1, "<A's SECRET KEY>");
    assert!(
        !capture.contains(&a_keys.1),
        "host B received host A's secret access key:\n{redacted}"
    );
    assert!(
        !capture.contains(&maint.1),
        "host B received the maintenance secret key"
    );
    let ak = captured_var(&capture, "AWS_ACCESS_KEY_ID").unwrap_or_default();
    let sk = captured_var(&capture, "AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    let token = captured_var(&capture, "AWS_SESSION_TOKEN")
        .unwrap_or_else(|| panic!("host B got no session token:\n{redacted}"));
    assert!(
        ak != a_keys.0 && ak != maint.0 && !ak.is_empty(),
        "host B got a long-lived identity {ak:?}"
    );
    assert!(
        capture.contains("--no-lock"),
        "a read-only restore must not try to write a lock:\n{redacted}"
    );

    // (3) With that credential B reads A's repository but cannot write into it.
    let temp_exports = format!("{ak}\n{sk}\n{token}\n");
    let (ok, out) = fleetsnap_with(env, b, &temp_exports, "--no-lock snapshots");
    assert!(
        ok,
        "the temporary credential cannot read A's repository: {out}"
    );
    let (ok, out) = fleetsnap_with(env, b, &temp_exports, "backup --host host1 /etc/hostname");
    assert!(
        !ok,
        "host B wrote a snapshot into A's repository with the credential it was given: {out}"
    );
    assert!(
        out.contains("AccessDenied") || out.contains("Access Denied") || out.contains("403"),
        "the write must be refused by the storage, not fail otherwise: {out}"
    );
    eprintln!(
        "backup into A's repository with B's credential: {}",
        out.lines()
            .find(|l| l.contains("AccessDenied")
                || l.contains("Access Denied")
                || l.contains("403"))
            .unwrap_or_default()
    );
    // Nor does any secret show in the operator's log or the Restore's status.
    let log = op.log_text();
    let status = r["status"].to_string();
    for (what, secret) in [
        ("A's secret key", a_keys.1.as_str()),
        ("the maintenance secret key", maint.1.as_str()),
        ("the temporary secret key", sk),
        ("the session token", token),
    ] {
        assert!(!log.contains(secret), "{what} is in the operator log");
        assert!(!status.contains(secret), "{what} is in the Restore status");
    }
    let exp = jwt_exp(token).expect("MinIO session tokens carry an exp claim");
    let lifetime = exp - restore_started;
    eprintln!("temporary credential lifetime: {lifetime} s (expires at {exp})");
    assert!(
        exp > now_unix() && lifetime <= 3600 + 60,
        "the credential must expire within the hour (exp {exp}, lifetime {lifetime} s)"
    );
    step(t0, "B got a read-only, time-limited credential");
    drop(op);
}
