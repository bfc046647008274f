//! kubectl helpers for the end-to-end suites: CRDs, namespaced objects, Secrets and the
//! status fields the tests read. Everything goes through [`TestEnv::kubectl`], so through the
//! testenv admin kubeconfig.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::{TestEnv, repo_root};

/// The CRDs in `crds/generated`, by plural name.
pub const CRDS: [&str; 6] = [
    "hosts",
    "backuprepositories",
    "backuppolicies",
    "retentionpolicies",
    "verifypolicies",
    "restores",
];

/// Apply `crds/generated` and wait until the API server serves every one of [`CRDS`].
pub fn install_crds(env: &TestEnv) {
    let crds = repo_root().join("crds/generated");
    env.kubectl(&["apply", "-f", crds.to_str().unwrap()])
        .unwrap();
    for crd in CRDS {
        env.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}.fleetsnap.io"),
        ])
        .unwrap();
    }
}

/// Create namespace `ns` (it must not exist yet).
pub fn create_namespace(env: &TestEnv, ns: &str) {
    env.kubectl(&["create", "namespace", ns]).unwrap();
}

/// Write `yaml` to `dir/name` and `kubectl apply` it in `ns`; panics with kubectl's error.
pub fn apply_yaml(env: &TestEnv, ns: &str, dir: &Path, name: &str, yaml: &str) {
    let f = dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    env.kubectl(&["apply", "-n", ns, "-f", f.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `kubectl get -n <ns> <what> -o json`, parsed (`what` is e.g. `host/host1`).
pub fn get_json(env: &TestEnv, ns: &str, what: &str) -> Result<Value> {
    let out = env.kubectl(&["get", "-n", ns, what, "-o", "json"])?;
    Ok(serde_json::from_str(&out)?)
}

/// The condition of type `type_` in an object's `status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// A BackupPolicy's `status.worstHosts` entry for `host` (only hosts that are not
/// `Succeeded` are listed, at most ten).
pub fn worst_host<'a>(policy: &'a Value, host: &str) -> Option<&'a Value> {
    policy["status"]["worstHosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == host)
}

/// The `state` of the BackupPolicy `policy` on Host `host`, from the Host's
/// `status.policies[]` entry (the per-host detail behind the policy's counts); empty when
/// the Host has no entry.
pub fn backup_state(env: &TestEnv, ns: &str, host: &str, policy: &str) -> Result<String> {
    let h = get_json(env, ns, &format!("host/{host}"))?;
    Ok(policy_entry(&h, "BackupPolicy", policy)
        .and_then(|e| e["state"].as_str())
        .unwrap_or_default()
        .to_string())
}

/// A Host's `status.policies` entry for the policy `kind`/`name`.
pub fn policy_entry<'a>(host: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    host["status"]["policies"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == kind && e["name"] == name)
}

/// A generic Secret `name` in `ns` from `(key, value)` pairs. The values go through files in
/// `dir` (`<name>-<key>`), so no value ever appears on a command line.
/// The Secrets the suites' Hosts and BackupRepositories share: the test SSH key
/// (`ssh-key`), the repository password (`repo-password`) and MinIO's root keys under the
/// name `s3_secret`.
pub fn base_secrets(env: &TestEnv, ns: &str, dir: &Path, password: &str, s3_secret: &str) {
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, ns, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret_from_files(env, ns, dir, "repo-password", &[("password", password)]);
    secret_from_files(
        env,
        ns,
        dir,
        s3_secret,
        &[
            ("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER")),
            ("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD")),
        ],
    );
}

pub fn secret_from_files(env: &TestEnv, ns: &str, dir: &Path, name: &str, pairs: &[(&str, &str)]) {
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        "-n".into(),
        ns.into(),
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

/// Set `spec.suspend` of `what` (e.g. `backuppolicy/nightly`) with a merge patch.
pub fn set_suspend(env: &TestEnv, ns: &str, what: &str, suspend: bool) {
    env.kubectl(&[
        "patch",
        "-n",
        ns,
        what,
        "--type",
        "merge",
        "-p",
        &format!(r#"{{"spec":{{"suspend":{suspend}}}}}"#),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Names (`event/...`) of the Events in `ns` matching a field selector such as
/// `reason=BackupFailing`, one per line.
pub fn event_names(env: &TestEnv, ns: &str, field_selector: &str) -> String {
    env.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        field_selector,
        "-o",
        "name",
    ])
    .unwrap()
}

/// A Host named `name` reaching a test machine's sshd on 127.0.0.1:`port` as root with the
/// `ssh-key` Secret, pinned to `host_key`. `labels` is the inside of a flow mapping
/// (`group: e2e, role: db`). The spec comes last, so callers may append spec fields.
/// The suites' S3 BackupRepository `minio`: MinIO's root keys (Secret `minio`), one
/// repository per host under `hosts/{hostname}` in `bucket`.
pub fn s3_repository_yaml(env: &TestEnv, bucket: &str) -> String {
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {{name: minio}}
spec:
  s3:
    endpoint: {endpoint}
    bucket: {bucket}
    pathStyle: true
    credentialsSecretRef: {{name: minio}}
  pathTemplate: "hosts/{{hostname}}"
  passwordSecretRef: {{name: repo-password, key: password}}
"#,
        endpoint = env.var("S3_ENDPOINT_FROM_HOSTS"),
    )
}

pub fn host_yaml(name: &str, labels: &str, port: u16, host_key: &str) -> String {
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: Host
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  address: 127.0.0.1
  port: {port}
  user: root
  sshKeySecretRef: {{name: ssh-key, key: id_ed25519}}
  hostKey: "{host_key}"
"#
    )
}

/// A BackupRepository `name` on the testenv MinIO bucket `bucket` (as the hosts reach it),
/// with per-host keys in Secrets `s3-<host>`, the password in `repo-password` and the
/// operator's keys in `maintenance`: the setup every append-only suite starts from.
pub fn per_host_repository_yaml(
    env: &TestEnv,
    name: &str,
    bucket: &str,
    append_only: bool,
) -> String {
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {{name: {name}}}
spec:
  s3:
    endpoint: {endpoint}
    bucket: {bucket}
    pathStyle: true
    perHostCredentials: {{secretNameTemplate: "s3-{{host}}"}}
  pathTemplate: "hosts/{{hostname}}"
  passwordSecretRef: {{name: repo-password, key: password}}
  appendOnly: {append_only}
  maintenanceCredentialsSecretRef: {{name: maintenance}}
"#,
        endpoint = env.var("S3_ENDPOINT_FROM_HOSTS"),
    )
}
