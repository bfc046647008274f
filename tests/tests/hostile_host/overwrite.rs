//! Overwrites. A host's per-host S3 user may put, get and list its own prefix and delete only
//! its lock files, which is what `appendOnly` hands out. But PutObject over an existing key
//! replaces it: on a bucket without versioning or Object Lock that destroys the original
//! (so the operator must not call such a repository append-only), and on a versioned bucket
//! it leaves the original as an older version nothing looks at (so the VerifyPolicy lists
//! versions and reports it, and the documented recovery brings the repository back).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use fleetsnap_tests::kube::{self, apply_yaml, condition, get_json, secret_from_files};
use fleetsnap_tests::minio::{Bucket, add_user, host_policy, make_bucket};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{TestEnv, check, step, wait};
use serde_json::Value;

use crate::env;

const PASSWORD: &str = "hostile-overwrite-password-7c1d";
const WAIT: Duration = Duration::from_secs(300);

/// One host's repository in `bucket` under `hosts/<host>`, and the host's own keys.
struct HostRepo {
    env: &'static TestEnv,
    bucket: String,
    prefix: String,
    keys: (String, String),
    dir: PathBuf,
}

impl HostRepo {
    /// Makes `bucket` of `kind` and a per-host user for `host` with the documented policy.
    fn new(dir: &Path, bucket: &str, kind: Bucket, host: &str) -> HostRepo {
        let env = env();
        make_bucket(env, bucket, kind).unwrap();
        let prefix = format!("hosts/{host}");
        let keys = (
            format!("{bucket}-{host}"),
            format!("{bucket}-{host}-secret-42"),
        );
        add_user(env, dir, &keys, &host_policy(bucket, &prefix)).unwrap();
        HostRepo {
            env,
            bucket: bucket.into(),
            prefix,
            keys,
            dir: dir.to_path_buf(),
        }
    }

    /// Stock restic 0.19.1 against the repository with `keys`; password from a file.
    fn restic_as(&self, keys: &(String, String), args: &[&str]) -> Result<String> {
        let pw = self.dir.join("password");
        std::fs::write(&pw, PASSWORD)?;
        let out = Command::new(self.env.tool("restic"))
            .arg("--no-cache")
            .args(args)
            .env(
                "RESTIC_REPOSITORY",
                format!(
                    "s3:{}/{}/{}",
                    self.env.var("S3_ENDPOINT"),
                    self.bucket,
                    self.prefix
                ),
            )
            .env("RESTIC_PASSWORD_FILE", &pw)
            .env("AWS_ACCESS_KEY_ID", &keys.0)
            .env("AWS_SECRET_ACCESS_KEY", &keys.1)
            .env_remove("RESTIC_PASSWORD")
            .stdin(Stdio::null())
            .output()?;
        check(&format!("restic {}", args.join(" ")), out)
    }

    fn admin_keys(&self) -> (String, String) {
        (
            self.env.var("MINIO_ROOT_USER").into(),
            self.env.var("MINIO_ROOT_PASSWORD").into(),
        )
    }

    /// Init and one backup, as the host would (its own keys suffice: restic deletes only
    /// its lock files). Returns the snapshot id.
    fn init_and_backup(&self) -> String {
        self.restic_as(&self.keys, &["init"]).unwrap();
        let src = self.dir.join(format!("src-{}", self.bucket));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("precious"), "history that must survive").unwrap();
        self.restic_as(&self.keys, &["backup", src.to_str().unwrap()])
            .unwrap();
        let snaps: Vec<Value> = serde_json::from_str(
            &self
                .restic_as(&self.keys, &["snapshots", "--json"])
                .unwrap(),
        )
        .unwrap();
        snaps[0]["id"].as_str().unwrap().to_string()
    }

    /// `mc` as the host: its own keys in `MC_HOST_hostile` (environment, never argv) and a
    /// config directory of its own.
    fn mc_as_host(&self, args: &[&str]) -> Result<String> {
        let endpoint = self.env.var("S3_ENDPOINT");
        let (scheme, rest) = endpoint.split_once("://").unwrap();
        let out = Command::new(self.env.tool("mc"))
            .args(args)
            .env("MC_CONFIG_DIR", self.dir.join("mc-hostile"))
            .env(
                "MC_HOST_hostile",
                format!("{scheme}://{}:{}@{rest}", self.keys.0, self.keys.1),
            )
            .stdin(Stdio::null())
            .output()?;
        check(&format!("mc {}", args.join(" ")), out)
    }

    /// The first file under `dir/` of the repository, relative to the repository root.
    fn first_key(&self, dir: &str) -> String {
        let out = self
            .mc_as_host(&[
                "ls",
                "--recursive",
                "--json",
                &format!("hostile/{}/{}/{dir}/", self.bucket, self.prefix),
            ])
            .unwrap();
        let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        format!("{dir}/{}", v["key"].as_str().unwrap())
    }

    /// The host overwrites `key` (relative to the repository root) with junk.
    fn overwrite(&self, key: &str) -> Result<String> {
        let junk = self.dir.join("junk");
        std::fs::write(&junk, "junk written by a compromised host")?;
        self.mc_as_host(&[
            "cp",
            junk.to_str().unwrap(),
            &format!("hostile/{}/{}/{key}", self.bucket, self.prefix),
        ])
    }

    fn cat(&self, key: &str) -> Result<String> {
        self.env.mc(&[
            "cat",
            &format!("testenv/{}/{}/{key}", self.bucket, self.prefix),
        ])
    }
}

fn setup_namespace(env: &TestEnv, dir: &Path, ns: &str) {
    // Once per test binary: two tests applying the CRDs at once race on their creation.
    static CRDS: std::sync::Once = std::sync::Once::new();
    CRDS.call_once(|| kube::install_crds(env));
    kube::create_namespace(env, ns);
    secret_from_files(env, ns, dir, "repo-password", &[("password", PASSWORD)]);
    secret_from_files(
        env,
        ns,
        dir,
        "maintenance",
        &[
            ("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER")),
            ("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD")),
        ],
    );
}

fn repository_yaml(env: &TestEnv, name: &str, bucket: &str) -> String {
    fleetsnap_tests::kube::per_host_repository_yaml(env, name, bucket, true)
}

/// The Ready condition of `what` once `pred` holds for it.
fn ready_when(env: &TestEnv, ns: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    wait::until(&format!("{what} Ready as wanted"), WAIT, || {
        let obj = get_json(env, ns, what)?;
        Ok(condition(&obj, "Ready").filter(|c| pred(c)).cloned())
    })
}

#[test]
fn append_only_refused_without_versioning() {
    let _hosts = crate::shared();
    let t0 = Instant::now();
    let env = env();
    let ns = "hostile-ao";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup_namespace(env, dir, ns);
    let sfx = std::process::id();
    let plain = HostRepo::new(dir, &format!("ao-plain-{sfx}"), Bucket::Plain, "host1");
    let versioned = HostRepo::new(
        dir,
        &format!("ao-versioned-{sfx}"),
        Bucket::Versioned,
        "host1",
    );
    let locked = HostRepo::new(dir, &format!("ao-locked-{sfx}"), Bucket::Locked, "host1");
    step(t0, "buckets and per-host users");

    // The hole: the host's own keys overwrite every kind of repository file, and the
    // plain bucket keeps nothing of the original.
    let snap = plain.init_and_backup();
    let keys = [
        format!("snapshots/{snap}"),
        plain.first_key("index"),
        plain.first_key("keys"),
        "config".to_string(),
    ];
    for key in &keys {
        plain
            .overwrite(key)
            .unwrap_or_else(|e| panic!("the host could not overwrite {key}: {e:#}"));
        assert_eq!(
            plain.cat(key).unwrap(),
            "junk written by a compromised host",
            "{key}"
        );
    }
    let versions = env
        .mc(&[
            "ls",
            "--versions",
            &format!("testenv/{}/{}/config", plain.bucket, plain.prefix),
        ])
        .unwrap();
    assert_eq!(
        versions.lines().count(),
        1,
        "a plain bucket keeps no original: {versions}"
    );
    assert!(
        plain
            .restic_as(&plain.admin_keys(), &["cat", "config"])
            .is_err()
    );
    step(
        t0,
        "host overwrote snapshot, index, key and config on the plain bucket",
    );

    let repos = repository_yaml(env, "plain", &plain.bucket)
        + &repository_yaml(env, "versioned", &versioned.bucket)
        + &repository_yaml(env, "locked", &locked.bucket);
    apply_yaml(env, ns, dir, "repos.yaml", &repos);
    let op = Launch::admin(env, ns).start(env, "hostile-ao");
    let fail = |e: anyhow::Error| -> ! { op.fail(e) };

    let c = ready_when(env, ns, "backuprepository/plain", |c| c["status"] != "True")
        .unwrap_or_else(|e| fail(e));
    assert_eq!(c["status"], "False", "{c:#}");
    assert_eq!(c["reason"], "AppendOnlyNotEnforced", "{c:#}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "bucket {} has no versioning and no Object Lock",
            plain.bucket
        )) && msg.contains("enable versioning (better: Object Lock)"),
        "{msg}"
    );
    step(t0, "plain bucket: Ready=False AppendOnlyNotEnforced");
    for (name, how) in [
        ("versioned", "has versioning"),
        ("locked", "has Object Lock"),
    ] {
        let c = ready_when(env, ns, &format!("backuprepository/{name}"), |c| {
            c["status"] == "True"
        })
        .unwrap_or_else(|e| fail(e));
        let msg = c["message"].as_str().unwrap();
        assert!(msg.contains(how), "{name}: {msg}");
    }
    step(t0, "versioned and locked buckets: Ready=True");
    // Secrets stay out of status and log.
    let log = op.log_text();
    assert!(
        !log.contains(env.var("MINIO_ROOT_PASSWORD")),
        "secret in the operator log"
    );
}

#[test]
fn overwrite_on_versioned_bucket_is_detected_and_recoverable() {
    let _hosts = crate::shared();
    let t0 = Instant::now();
    let env = env();
    let ns = "hostile-tamper";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup_namespace(env, dir, ns);
    let host = "host1";
    let repo = HostRepo::new(
        dir,
        &format!("tamper-{}", std::process::id()),
        Bucket::Versioned,
        host,
    );
    let snap = repo.init_and_backup();
    let config_before = repo.cat("config").unwrap();
    step(t0, "versioned bucket with one snapshot");

    // The attack: the host's own keys replace config and the snapshot.
    let snapshot_key = format!("snapshots/{snap}");
    for key in ["config", snapshot_key.as_str()] {
        repo.overwrite(key)
            .unwrap_or_else(|e| panic!("the host could not overwrite {key}: {e:#}"));
    }
    assert!(repo.restic_as(&repo.keys, &["cat", "config"]).is_err());
    step(t0, "host overwrote config and the snapshot");

    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, ns, dir, "ssh-key", &[("id_ed25519", &key)]);
    secret_from_files(
        env,
        ns,
        dir,
        &format!("s3-{host}"),
        &[
            ("AWS_ACCESS_KEY_ID", &repo.keys.0),
            ("AWS_SECRET_ACCESS_KEY", &repo.keys.1),
        ],
    );
    let objects = kube::host_yaml(
        host,
        "group: tamper",
        env.ssh_port(host),
        env.var("HOST_KEY"),
    ) + &repository_yaml(env, "versioned", &repo.bucket)
        + r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: VerifyPolicy
metadata: {name: tamper-verify}
spec:
  hostSelector: {matchLabels: {group: tamper}}
  repositoryRef: {name: versioned}
  schedule: {onCalendar: "*-*-* *:*:00", persistent: false}
"#;
    apply_yaml(env, ns, dir, "objects.yaml", &objects);
    let op = Launch::admin(env, ns).start(env, "hostile-tamper");
    let fail = |e: anyhow::Error| -> ! { op.fail(e) };

    let c = ready_when(env, ns, "verifypolicy/tamper-verify", |c| {
        c["reason"] == "Tampered"
    })
    .unwrap_or_else(|e| fail(e));
    let msg = c["message"].as_str().unwrap();
    assert_eq!(c["status"], "False", "{c:#}");
    assert!(
        msg.contains("2 repository file(s) overwritten")
            && msg.contains("config (original version ")
            && msg.contains(&format!("{snapshot_key} (original version ")),
        "{msg}"
    );
    step(
        t0,
        "VerifyPolicy Ready=False Tampered, naming config and the snapshot",
    );
    let events = kube::event_names(env, ns, "reason=Tampered");
    assert!(!events.trim().is_empty(), "no Tampered Event");
    wait::until("fleetsnap_tampered_objects 2", WAIT, || {
        let text = op.scrape()?;
        Ok(text
            .lines()
            .any(|l| {
                l.starts_with("fleetsnap_tampered_objects{")
                    && l.contains(&format!("host=\"{host}\""))
                    && (l.ends_with(" 2.0") || l.ends_with(" 2"))
            })
            .then_some(text))
    })
    .unwrap_or_else(|e| fail(e));

    // The documented recovery (docs/operations.md): copy each original version back with
    // the maintenance (admin) identity, then restic check.
    let status = get_json(env, ns, "verifypolicy/tamper-verify").unwrap();
    let report = status["status"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("Tampered: ")
        })
        .cloned()
        .unwrap_or_else(|| fail(anyhow!("no Tampered entry in {status:#}")));
    assert_eq!(report["host"], host);
    let text = report["message"].as_str().unwrap();
    for key in ["config", snapshot_key.as_str()] {
        let marker = format!("{key} (original version ");
        let start = text.find(&marker).unwrap() + marker.len();
        let version = &text[start..start + text[start..].find(')').unwrap()];
        let path = format!("testenv/{}/{}/{key}", repo.bucket, repo.prefix);
        env.mc(&["cp", "--version-id", version, &path, &path])
            .unwrap_or_else(|e| fail(e));
    }
    assert_eq!(repo.cat("config").unwrap(), config_before);
    let checked = repo
        .restic_as(&repo.admin_keys(), &["check", "--read-data"])
        .unwrap_or_else(|e| fail(e));
    assert!(checked.contains("no errors were found"), "{checked}");
    let snaps: Vec<Value> = serde_json::from_str(
        &repo
            .restic_as(&repo.admin_keys(), &["snapshots", "--json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], snap.as_str());
    step(
        t0,
        "recovered: restic 0.19.1 check passes, the snapshot is back",
    );

    // The next verify run lists again and the report clears.
    let c = ready_when(env, ns, "verifypolicy/tamper-verify", |c| {
        c["reason"] != "Tampered"
    })
    .unwrap_or_else(|e| fail(e));
    step(
        t0,
        &format!("after recovery: Ready={} {}", c["status"], c["reason"]),
    );
}
