//! Attack 1, forged snapshot times (the attack restic documents for append-only mode).
//!
//! A host backs up daily for 60 days into its own prefix. The history's snapshot files carry
//! the storage write times such a history has (each file written two minutes after the time
//! its snapshot claims); the harness sets them with the bucket owner's keys, as MinIO's own
//! replication does, because a test cannot wait 60 days. Then the host, compromised, uses
//! plain restic 0.19.1 with its own append-only keys to add 17 snapshots dated in 2099 and
//! one snapshot a second newer than each real one. Stock restic and `fleetsnap forget` with
//! restic's semantics keep none of the real snapshots under 7 daily / 4 weekly / 6 monthly;
//! the operator's retention (`snapshotTimes.trust: Verified`, the default) keeps every real
//! snapshot those rules keep on the honest history, and reports every forgery.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetsnap_tests::kube::{
    apply_yaml, condition, create_namespace, event_names, get_json, host_yaml, install_crds,
    per_host_repository_yaml, secret_from_files,
};
use fleetsnap_tests::minio::{Bucket, add_user, host_policy, make_bucket};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{TestEnv, check, step, wait};
use serde_json::Value;

use crate::{env, fleetsnap};

const NS: &str = "hostile-times";
const PASSWORD: &str = "forged-times-password";
const DAYS: i64 = 60;
const FUTURE: usize = 17;

struct Repo {
    env: &'static TestEnv,
    bucket: String,
    prefix: String,
    host: String,
    host_keys: (String, String),
    dir: tempfile::TempDir,
}

impl Repo {
    fn url(&self) -> String {
        format!(
            "s3:{}/{}/{}",
            self.env.var("S3_ENDPOINT"),
            self.bucket,
            self.prefix
        )
    }

    fn root_keys(&self) -> (String, String) {
        (
            self.env.var("MINIO_ROOT_USER").to_string(),
            self.env.var("MINIO_ROOT_PASSWORD").to_string(),
        )
    }

    /// A tool on the repository with the given keys; `TZ=UTC` so `--time` means UTC.
    fn command(&self, program: &Path, keys: &(String, String)) -> Command {
        let mut c = Command::new(program);
        c.env("RESTIC_REPOSITORY", self.url())
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", &keys.0)
            .env("AWS_SECRET_ACCESS_KEY", &keys.1)
            .env("TZ", "UTC")
            .stdin(Stdio::null());
        c
    }

    /// Plain restic as the host, with its own (append-only) keys.
    fn restic_as_host(&self, args: &[&str]) -> String {
        let out = self
            .command(&self.env.tool("restic"), &self.host_keys)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap();
        check(&format!("restic {}", args.join(" ")), out).unwrap()
    }

    /// `restic backup --time T` for every time, eight at a time.
    fn backups_at(&self, times: &[String], tag: &str) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("motd"), "backed up daily\n").unwrap();
        for batch in times.chunks(8) {
            let children: Vec<_> = batch
                .iter()
                .map(|t| {
                    self.command(&self.env.tool("restic"), &self.host_keys)
                        .args(["--no-cache", "backup", "--quiet", "--retry-lock", "2m"])
                        .args(["--time", t, "--host", &self.host, "--tag", tag])
                        .arg(&data)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for c in children {
                check("restic backup --time", c.wait_with_output().unwrap()).unwrap();
            }
        }
    }

    /// Every snapshot as restic lists it: (id, claimed time in UTC, tags).
    fn snapshots(&self) -> Vec<(String, String, Vec<String>)> {
        let out = self.restic_as_host(&["snapshots", "--json"]);
        let v: Vec<Value> = serde_json::from_str(&out).unwrap();
        v.iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    utc(s["time"].as_str().unwrap()),
                    s["tags"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Rewrites an object with the bucket owner's keys so that the storage records
    /// `mtime` as its write time (`x-minio-source-mtime`, what MinIO's replication sends).
    fn set_write_time(
        &self,
        key: &str,
        mtime: &str,
        keys: &(String, String),
    ) -> anyhow::Result<()> {
        let local = self.dir.path().join("object");
        let target = format!("testenv/{}/{key}", self.bucket);
        let out = self.env.command("mc").args(["cat", &target]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "mc cat {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&local, out.stdout)?;
        put_with_mtime(self.env, &self.bucket, key, &local, mtime, keys)
    }

    /// The storage's write time of an object (RFC 3339), from `mc stat`.
    fn write_time(&self, key: &str) -> String {
        let out = self
            .env
            .mc(&["stat", "--json", &format!("testenv/{}/{key}", self.bucket)])
            .unwrap();
        let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        v["lastModified"].as_str().unwrap().to_string()
    }
}

/// PUT `file` to `bucket/key` with `x-minio-source-mtime: mtime`, signed for `keys`.
fn put_with_mtime(
    env: &TestEnv,
    bucket: &str,
    key: &str,
    file: &Path,
    mtime: &str,
    keys: &(String, String),
) -> anyhow::Result<()> {
    let url = format!("{}/{bucket}/{key}", env.var("S3_ENDPOINT"));
    // The keys go to curl on stdin as a config file, never on its command line.
    let mut child = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--config", "-"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args(["-H", &format!("x-minio-source-mtime: {mtime}")])
        .arg("-T")
        .arg(file)
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    writeln!(
        child.stdin.take().unwrap(),
        "user = \"{}:{}\"",
        keys.0,
        keys.1
    )?;
    check(&format!("curl PUT {key}"), child.wait_with_output()?)?;
    Ok(())
}

/// restic's JSON time, normalised to UTC seconds (`2026-10-02T02:00:00Z`).
fn utc(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn day(now: chrono::DateTime<chrono::Utc>, back: i64) -> chrono::DateTime<chrono::Utc> {
    now.date_naive().and_hms_opt(2, 0, 0).unwrap().and_utc() - chrono::Duration::days(back)
}

fn restic_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Real history, then the attack; returns the repository and the claimed times (UTC) that
/// 7/4/6 keeps on the honest history.
fn attacked_repo(env: &'static TestEnv, t0: Instant) -> (Repo, BTreeSet<String>) {
    let host = env.hosts()[0].clone();
    let bucket = format!("forged-times-{}", std::process::id());
    make_bucket(env, &bucket, Bucket::Plain).unwrap();
    let prefix = format!("hosts/{host}");
    let dir = tempfile::tempdir().unwrap();
    let host_keys = (format!("times-{host}"), format!("times-{host}-secret-77"));
    add_user(env, dir.path(), &host_keys, &host_policy(&bucket, &prefix)).unwrap();
    let repo = Repo {
        env,
        bucket,
        prefix,
        host,
        host_keys,
        dir,
    };
    repo.restic_as_host(&["init"]);
    let now = chrono::Utc::now();
    // The newest real snapshot is two days old: every forgery below then claims a time
    // more than a day before its write, whatever the hour the test runs at.
    let real: Vec<String> = (2..=DAYS + 1)
        .rev()
        .map(|d| restic_time(day(now, d)))
        .collect();
    repo.backups_at(&real, "real");
    step(t0, "60 daily snapshots written");
    // Each real snapshot file gets the write time of a backup that ran that day.
    for (id, time, _) in repo.snapshots() {
        let claimed = chrono::DateTime::parse_from_rfc3339(&time).unwrap();
        let written = (claimed + chrono::Duration::minutes(2)).to_rfc3339();
        let key = format!("{}/snapshots/{id}", repo.prefix);
        repo.set_write_time(&key, &written, &repo.root_keys())
            .unwrap();
        assert_eq!(utc(&repo.write_time(&key)), utc(&written), "{key}");
    }
    step(t0, "history has its storage write times");
    let expected: BTreeSet<String> = forget_dry_run(&repo, &repo.root_keys());
    // 7 daily, overlapping weekly and monthly keepers, the oldest: 11 or so, by the date.
    assert!(expected.len() >= 10, "{expected:?}");

    // The attack: plain restic, the host's own keys.
    let mut forged: Vec<String> = (0..FUTURE)
        .map(|i| restic_time(day(now, 0) + chrono::Duration::days(26_000 + 7 * i as i64)))
        .collect();
    forged.extend(
        (2..=DAYS + 1)
            .rev()
            .map(|d| restic_time(day(now, d) + chrono::Duration::seconds(1))),
    );
    repo.backups_at(&forged, "forged");
    step(t0, "the host wrote 77 forged snapshots");
    (repo, expected)
}

/// The runbook's keep rules, as both command lines spell them.
const KEEP_7_4_6: [&str; 6] = [
    "--keep-daily",
    "7",
    "--keep-weekly",
    "4",
    "--keep-monthly",
    "6",
];

/// The claimed times `restic forget --dry-run` keeps under 7/4/6 (restic's semantics).
fn forget_dry_run(repo: &Repo, keys: &(String, String)) -> BTreeSet<String> {
    let out = repo
        .command(&repo.env.tool("restic"), keys)
        .args(["--no-cache", "forget", "--dry-run", "--json"])
        .args(KEEP_7_4_6)
        .output()
        .unwrap();
    let groups: Vec<Value> =
        serde_json::from_str(&check("restic forget --dry-run", out).unwrap()).unwrap();
    groups
        .iter()
        .flat_map(|g| g["keep"].as_array().cloned().unwrap_or_default())
        .map(|s| utc(s["time"].as_str().unwrap()))
        .collect()
}

#[test]
fn forged_snapshot_times_cannot_evict_history() {
    let _hosts = crate::shared();
    let env = env();
    let t0 = Instant::now();
    let (repo, expected) = attacked_repo(env, t0);
    let real_times: BTreeSet<String> = repo
        .snapshots()
        .into_iter()
        .filter(|(_, _, tags)| tags.iter().any(|t| t == "real"))
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(real_times.len(), DAYS as usize);

    // Command level, the attack reproduced: restic 0.19.1 and `fleetsnap forget` with
    // restic's semantics keep no real snapshot; fleetsnap warns about the forgeries.
    let restic_keeps = forget_dry_run(&repo, &repo.root_keys());
    assert!(
        restic_keeps.is_disjoint(&real_times),
        "restic kept real snapshots: {:?}",
        restic_keeps.intersection(&real_times).collect::<Vec<_>>()
    );
    let out = repo
        .command(&fleetsnap(), &repo.root_keys())
        .args(["--json", "forget", "--dry-run"])
        .args(KEEP_7_4_6)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value =
        serde_json::from_str(&check("fleetsnap forget --dry-run", out).unwrap()).unwrap();
    let fleetsnap_keeps: BTreeSet<String> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["decisions"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["keep"] == true)
        .map(|d| utc(d["time"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fleetsnap_keeps, restic_keeps,
        "the command line keeps restic's semantics"
    );
    assert!(
        stderr.contains(&format!(
            "warning: {} snapshots carry times the storage contradicts",
            FUTURE + DAYS as usize
        )),
        "{stderr}"
    );
    step(t0, "restic and fleetsnap forget keep only forgeries");

    // The operator's retention, with the default snapshotTimes.
    let before: BTreeSet<String> = repo.snapshots().into_iter().map(|(_, t, _)| t).collect();
    let op = operator_retention(&repo, t0);
    let after: BTreeSet<String> = repo.snapshots().into_iter().map(|(_, t, _)| t).collect();
    let lost: Vec<&String> = expected.iter().filter(|t| !after.contains(*t)).collect();
    assert!(
        lost.is_empty(),
        "real snapshots the rules keep were removed: {lost:?}"
    );
    let real_after: BTreeSet<String> = after.intersection(&real_times).cloned().collect();
    assert_eq!(
        real_after, expected,
        "retention still removes what the rules do not keep"
    );
    let forged_after = after.difference(&real_times).count();
    assert_eq!(
        forged_after,
        FUTURE + DAYS as usize,
        "every forgery is kept for a human to look at"
    );
    assert!(before.is_superset(&after));
    drop(op);
}

/// Hosts, repository and a RetentionPolicy (runOn: Operator, 7/4/6) in their own
/// namespace; waits for the run and checks its status, Event and metric.
fn operator_retention(repo: &Repo, t0: Instant) -> fleetsnap_tests::operator::Operator {
    let env = repo.env;
    let dir = repo.dir.path();
    install_crds(env);
    create_namespace(env, NS);
    let host = &repo.host;
    secret_from_files(env, NS, dir, "repo-password", &[("password", PASSWORD)]);
    secret_from_files(
        env,
        NS,
        dir,
        &format!("s3-{host}"),
        &[
            ("AWS_ACCESS_KEY_ID", &repo.host_keys.0),
            ("AWS_SECRET_ACCESS_KEY", &repo.host_keys.1),
        ],
    );
    let root = repo.root_keys();
    secret_from_files(
        env,
        NS,
        dir,
        "maintenance",
        &[
            ("AWS_ACCESS_KEY_ID", &root.0),
            ("AWS_SECRET_ACCESS_KEY", &root.1),
        ],
    );
    let key = std::fs::read_to_string(env.var("SSH_KEY")).unwrap();
    secret_from_files(env, NS, dir, "ssh-key", &[("id_ed25519", &key)]);
    apply_yaml(
        env,
        NS,
        dir,
        "host.yaml",
        &host_yaml(
            host,
            "group: times",
            env.ssh_port(host),
            env.var("HOST_KEY"),
        ),
    );
    apply_yaml(
        env,
        NS,
        dir,
        "objects.yaml",
        &format!(
            r#"{repo}---
apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {{name: central}}
spec:
  hostSelector: {{matchLabels: {{group: times}}}}
  repositoryRef: {{name: minio}}
  keep: {{daily: 7, weekly: 4, monthly: 6}}
  prune: {{enabled: false}}
  schedule: {{onCalendar: "*-*-* *:*:00"}}
  runOn: Operator
"#,
            repo = per_host_repository_yaml(env, "minio", &repo.bucket, false),
        ),
    );
    let op = Launch::admin(env, NS).start(env, "times");
    let rp = wait::until("operator retention ran", Duration::from_secs(180), || {
        let p = get_json(env, NS, "retentionpolicy/central")?;
        Ok(p["status"]["lastRun"].is_string().then_some(p))
    })
    .unwrap_or_else(|e| op.fail(e));
    step(t0, "operator retention ran");
    let ready = condition(&rp, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready["status"], "False", "{rp:#}");
    assert_eq!(ready["reason"], "SuspiciousSnapshots", "{rp:#}");
    let msg = ready["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!(
            "{} snapshots kept uncounted",
            FUTURE + DAYS as usize
        )) && msg.contains(host.as_str())
            && msg.contains("longer than any backup runs")
            && msg.contains("and 72 more")
            && msg.len() <= 4096,
        "{msg}"
    );
    assert_eq!(
        rp["status"]["suspiciousSnapshots"],
        (FUTURE + DAYS as usize) as u64
    );
    let events = event_names(env, NS, "reason=SuspiciousSnapshots");
    assert!(!events.trim().is_empty(), "no SuspiciousSnapshots Event");
    let metrics = op.scrape().unwrap_or_else(|e| op.fail(e));
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("fleetsnap_retention_suspicious_snapshots{") && l.contains(host.as_str())
        })
        .unwrap_or_else(|| panic!("no suspicious-snapshots series:\n{metrics}"));
    assert!(
        line.ends_with(&format!(" {}", FUTURE + DAYS as usize))
            || line.ends_with(&format!(" {}.0", FUTURE + DAYS as usize)),
        "{line}"
    );
    op
}

/// What this MinIO build lets a writer do: `x-minio-source-mtime` on a plain PutObject sets
/// `LastModified`, so on it the storage's write time is only as trustworthy as the host's
/// restraint (AWS S3 sets LastModified itself). `docs/security.md` states the consequence;
/// this test fails, on purpose, the day the pinned MinIO stops honouring the header, so
/// that the statement gets revisited.
#[test]
fn this_minio_lets_a_writer_choose_last_modified() {
    let _hosts = crate::shared();
    let env = env();
    let host = env.hosts()[1].clone();
    let bucket = format!("mtime-{}", std::process::id());
    make_bucket(env, &bucket, Bucket::Plain).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = (format!("mtime-{host}"), format!("mtime-{host}-secret-91"));
    let prefix = format!("hosts/{host}");
    add_user(env, dir.path(), &keys, &host_policy(&bucket, &prefix)).unwrap();
    let file = dir.path().join("probe");
    std::fs::write(&file, b"probe").unwrap();
    let key = format!("{prefix}/snapshots/{}", "ab".repeat(32));
    put_with_mtime(env, &bucket, &key, &file, "2020-01-02T03:04:05Z", &keys).unwrap();
    let out = env
        .mc(&["stat", "--json", &format!("testenv/{bucket}/{key}")])
        .unwrap();
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        utc(v["lastModified"].as_str().unwrap()),
        "2020-01-02T03:04:05Z",
        "the pinned MinIO no longer lets a writer set LastModified: update docs/security.md"
    );
}
