//! Short-lived AWS credentials in scheduled runs (`fleetsnap run --config`), against MinIO's
//! real STS: a session token delivered as a credential, and a `credential_process` broker
//! that mints a new key from STS whenever the previous one is about to expire.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{MINIO_PASSWORD, MINIO_USER, Minio};

const BUCKET: &str = "creds";

/// The executor under test; `FLEETSNAP_BIN` runs another build (e.g. an older one).
fn fleetsnap() -> PathBuf {
    std::env::var_os("FLEETSNAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fleetsnap")))
}

/// An STS AssumeRole session minted by MinIO for the test user, as `(key, secret, token)`.
/// curl signs the request itself (`--aws-sigv4`), as a broker script on a host would.
fn assume_role(minio: &Minio) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--aws-sigv4",
            "aws:amz:us-east-1:sts",
        ])
        .args(["--user", &format!("{MINIO_USER}:{MINIO_PASSWORD}")])
        .args([
            "-d",
            "Action=AssumeRole&Version=2011-06-15&DurationSeconds=900",
        ])
        .arg(format!("{}/", minio.endpoint))
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
    )
}

struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new(minio: &Minio) -> Job {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("creds")).unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("creds/repository-password"), b"pw\n").unwrap();
        std::fs::write(dir.path().join("src/file"), common::pattern(3 << 20, 1)).unwrap();
        minio.admin().create_bucket(BUCKET);
        Job { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn credential(&self, id: &str, value: &str) {
        std::fs::write(self.path("creds").join(id), value).unwrap();
    }

    /// Runs one backup job with `credentials` (ids) and the extra config fields in `extra`.
    fn run(
        &self,
        minio: &Minio,
        credentials: serde_json::Value,
        extra: serde_json::Value,
    ) -> Output {
        let mut v = serde_json::json!({
            "format": 1, "policy": "nightly", "kind": "backup",
            "repository": format!("s3:{}/{BUCKET}/web-1", minio.endpoint),
            "paths": [self.path("src").to_str().unwrap()],
            "host": "web-1",
            "credentials": credentials,
            "run_record_dir": self.path("runs").to_str().unwrap(),
            "cache_dir": self.path("cache").to_str().unwrap(),
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let cfg = self.path("backup.json");
        std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
        Command::new(fleetsnap())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("CREDENTIALS_DIRECTORY", self.path("creds"))
            .env("FLEETSNAP_S3_PATH_STYLE", "true")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", self.dir.path())
            // Nothing from the test's own environment may stand in for what the job lacks.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The repository as restic 0.19.1 sees it, with the MinIO user's own keys.
fn restic_snapshots(minio: &Minio) -> String {
    let o = Command::new(common::restic_bin())
        .args(["-r", &format!("s3:{}/{BUCKET}/web-1", minio.endpoint)])
        .args(["snapshots", "--json", "--no-lock"])
        .env("RESTIC_PASSWORD", "pw")
        .env("AWS_ACCESS_KEY_ID", MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", MINIO_PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "restic snapshots: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn snapshot_count(minio: &Minio) -> usize {
    serde_json::from_str::<Vec<serde_json::Value>>(&restic_snapshots(minio))
        .unwrap()
        .len()
}

#[test]
fn a_session_token_is_delivered_as_a_credential_and_used() {
    let minio = Minio::start();
    let job = Job::new(&minio);
    let (key, secret, token) = assume_role(&minio);
    job.credential("aws-access-key-id", &key);
    job.credential("aws-secret-access-key", &secret);
    job.credential("aws-session-token", &token);
    let ids = serde_json::json!({
        "repository_password": "repository-password",
        "aws_access_key_id": "aws-access-key-id",
        "aws_secret_access_key": "aws-secret-access-key",
        "aws_session_token": "aws-session-token",
    });
    let o = job.run(&minio, ids.clone(), serde_json::json!({}));
    assert!(o.status.success(), "backup with STS keys: {}", text(&o));
    assert_eq!(snapshot_count(&minio), 1);
    let all = text(&o);
    assert!(
        !all.contains(&secret) && !all.contains(&token),
        "a secret was printed: {all}"
    );

    // The same keys without their token are refused by the storage, and the run says so.
    let mut no_token = ids;
    no_token
        .as_object_mut()
        .unwrap()
        .remove("aws_session_token");
    let o = job.run(&minio, no_token, serde_json::json!({}));
    assert!(
        !o.status.success(),
        "STS keys without a token were accepted: {}",
        text(&o)
    );
    assert_eq!(snapshot_count(&minio), 1, "a refused run wrote a snapshot");
}

/// A broker in the `credential_process` contract that asks STS for a new session on every
/// call and claims it expires in `claimed_s` seconds, so that the SDK has to call it again
/// during one run. It logs the key it handed out, never the secret.
fn broker(job: &Job, minio: &Minio, claimed_s: u32) -> PathBuf {
    let path = job.path("broker.sh");
    let script = format!(
        r#"#!/bin/sh
set -eu
xml=$(curl -sS --fail-with-body --aws-sigv4 aws:amz:us-east-1:sts --user '{MINIO_USER}:{MINIO_PASSWORD}' \
  -d 'Action=AssumeRole&Version=2011-06-15&DurationSeconds=900' '{endpoint}/')
get() {{ printf '%s' "$xml" | sed -n "s:.*<$1>\([^<]*\)</$1>.*:\1:p"; }}
key=$(get AccessKeyId)
echo "$key" >> '{log}'
printf '{{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","SessionToken":"%s","Expiration":"%s"}}' \
  "$key" "$(get SecretAccessKey)" "$(get SessionToken)" "$(date -u -d '+{claimed_s} seconds' +%Y-%m-%dT%H:%M:%SZ)"
"#,
        endpoint = minio.endpoint,
        log = job.path("broker.log").display(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    path
}

fn broker_calls(job: &Job) -> Vec<String> {
    std::fs::read_to_string(job.path("broker.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_credential_process_is_called_again_before_its_credentials_expire() {
    let minio = Minio::start();
    let job = Job::new(&minio);
    let broker = broker(&job, &minio, 15);
    let ids = serde_json::json!({"repository_password": "repository-password"});
    // A dump that trickles out for about half a minute: the run outlives the first
    // credential's claimed lifetime several times over and keeps writing packs meanwhile.
    let slow = serde_json::json!({
        "aws_credential_process": [broker.to_str().unwrap()],
        "paths": [],
        "stdin": [{"name": "slow", "filename": "slow.bin", "command":
            ["sh", "-c", "for i in 1 2 3 4 5 6; do head -c 6000000 /dev/urandom; sleep 5; done"]}],
    });
    let o = job.run(&minio, ids, slow);
    assert!(
        o.status.success(),
        "backup with a credential process: {}",
        text(&o)
    );
    let calls = broker_calls(&job);
    eprintln!("broker called {} times: {calls:?}", calls.len());
    assert!(
        calls.len() >= 2,
        "the broker was called {} time(s) in a run longer than its credentials' life",
        calls.len()
    );
    let distinct: std::collections::BTreeSet<_> = calls.iter().collect();
    assert_eq!(
        distinct.len(),
        calls.len(),
        "STS handed out a key twice: {calls:?}"
    );
    assert_eq!(snapshot_count(&minio), 1);
    let all = text(&o);
    assert!(!all.contains("SessionToken"), "{all}");
}

#[test]
fn a_failing_credential_process_fails_the_run_with_its_message() {
    let minio = Minio::start();
    let job = Job::new(&minio);
    let broker = job.path("broker.sh");
    std::fs::write(
        &broker,
        "#!/bin/sh\necho 'vault: permission denied' >&2\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&broker, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let o = job.run(
        &minio,
        serde_json::json!({"repository_password": "repository-password"}),
        serde_json::json!({"aws_credential_process": [broker.to_str().unwrap()]}),
    );
    assert!(!o.status.success(), "{}", text(&o));
    let records = std::fs::read_dir(job.path("runs")).unwrap().count();
    assert_eq!(records, 1, "no run record for the failed run");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(job.path("runs"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("credential process") && err.contains("permission denied"),
        "the run record does not say why: {rec}"
    );
}
