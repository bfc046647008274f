//! S3 Object Lock buckets against real MinIO: prune and forget report objects still inside
//! their lock window instead of failing, delete for good what no lock protects, and leave a
//! repository that stock restic checks clean. Identities without rights on object versions
//! still get restic's behaviour, or the append-only error when they may not delete at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use fleetsnap_tests::{Options, TestEnv, check, workspace_bin};
use serde_json::Value;

fn env() -> &'static TestEnv {
    let env = TestEnv::shared(Options {
        hosts: 0,
        kube: false,
        s3: true,
        ..Default::default()
    });
    for tool in ["mc", "restic"] {
        let p = env.tool(tool);
        assert!(
            p.exists(),
            "{tool} is missing from the testenv at {}",
            p.display()
        );
    }
    env
}

/// One repository in its own bucket, and the keys to reach it with.
struct Repo {
    env: &'static TestEnv,
    bucket: String,
    url: String,
    password_file: PathBuf,
    keys: (String, String),
    src: PathBuf,
    dir: tempfile::TempDir,
}

impl Repo {
    /// A bucket created with Object Lock; `default_retention` e.g. `Some("1d")` (GOVERNANCE).
    fn new(name: &str, default_retention: Option<&str>) -> Repo {
        let env = env();
        let bucket = format!("lock-{name}-{}", std::process::id());
        env.mc(&["mb", "--with-lock", &format!("testenv/{bucket}")])
            .unwrap();
        if let Some(days) = default_retention {
            env.mc(&[
                "retention",
                "set",
                "--default",
                "GOVERNANCE",
                days,
                &format!("testenv/{bucket}"),
            ])
            .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "object-lock-test").unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        Repo {
            env,
            url: format!("s3:{}/{bucket}/repo", env.var("S3_ENDPOINT")),
            bucket,
            password_file,
            keys: (
                env.var("MINIO_ROOT_USER").to_string(),
                env.var("MINIO_ROOT_PASSWORD").to_string(),
            ),
            src,
            dir,
        }
    }

    /// Runs a tool against the repository; keys and password travel in the environment.
    fn command(&self, program: &Path, keys: &(String, String)) -> Command {
        let mut c = Command::new(program);
        c.env("RESTIC_REPOSITORY", &self.url)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("AWS_ACCESS_KEY_ID", &keys.0)
            .env("AWS_SECRET_ACCESS_KEY", &keys.1)
            .env_remove("RESTIC_PASSWORD")
            .env_remove("RESTIC_PASSWORD_COMMAND")
            .stdin(Stdio::null());
        c
    }

    fn fleetsnap_as(&self, keys: &(String, String), args: &[&str]) -> Output {
        self.command(&workspace_bin("fleetsnap").unwrap(), keys)
            .args(args)
            .output()
            .unwrap()
    }

    /// The executor with the bucket owner's (maintenance) keys; must succeed.
    fn fleetsnap(&self, args: &[&str]) -> Output {
        let out = self.fleetsnap_as(&self.keys, args);
        assert!(
            out.status.success(),
            "fleetsnap {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn restic(&self, args: &[&str]) -> String {
        let out = self
            .command(&self.env.tool("restic"), &self.keys)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap();
        check(&format!("restic {}", args.join(" ")), out).unwrap()
    }

    /// Two snapshots of different random content: all of the first one's data becomes
    /// garbage once it is forgotten. Returns the snapshot IDs, oldest first.
    fn two_backups(&self) -> (String, String) {
        self.fleetsnap(&["init"]);
        for seed in [1, 2] {
            std::fs::write(self.src.join("big"), noise(seed, 3 << 20)).unwrap();
            std::fs::write(self.src.join("same"), b"unchanged").unwrap();
            self.fleetsnap(&["backup", self.src.to_str().unwrap()]);
        }
        let ids = self.snapshot_ids();
        assert_eq!(ids.len(), 2, "{ids:?}");
        (ids[0].clone(), ids[1].clone())
    }

    /// The executor's view: snapshot IDs, oldest first.
    fn snapshot_ids(&self) -> Vec<String> {
        let out = self.fleetsnap(&["snapshots", "--json"]);
        let mut snaps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        snaps.sort_by_key(|s| s["time"].as_str().unwrap_or("").to_string());
        snaps
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every stored version and delete marker under the repository, by key relative to
    /// the repository root, newest first.
    fn versions(&self) -> BTreeMap<String, Vec<Version>> {
        let listing = self
            .env
            .mc(&[
                "ls",
                "--versions",
                "--recursive",
                "--json",
                &format!("testenv/{}/repo/", self.bucket),
            ])
            .unwrap();
        let mut out: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        for line in listing.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["status"], "success", "{line}");
            out.entry(v["key"].as_str().unwrap().to_string())
                .or_default()
                .push(Version {
                    ordinal: v["versionOrdinal"].as_u64().unwrap(),
                    delete_marker: v["isDeleteMarker"].as_bool().unwrap_or(false),
                });
        }
        for vs in out.values_mut() {
            vs.sort_by_key(|v| std::cmp::Reverse(v.ordinal));
        }
        out
    }

    /// Runs prune with the maintenance keys and returns its JSON report and stderr.
    fn prune(&self) -> (Value, String) {
        // No grace period: the test prunes what it has just written.
        let out = self.fleetsnap(&["prune", "--max-unused", "0%", "--keep-young", "0", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prune --json printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (report, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Stock restic reads every pack and finds exactly `snapshot`.
    fn restic_sees_only(&self, snapshot: &str) {
        let checked = self.restic(&["check", "--read-data"]);
        assert!(checked.contains("no errors were found"), "{checked}");
        let snaps: Vec<Value> =
            serde_json::from_str(&self.restic(&["snapshots", "--json"])).unwrap();
        let ids: Vec<&str> = snaps.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids, [snapshot]);
    }
}

#[derive(Debug, Clone, Copy)]
struct Version {
    ordinal: u64,
    delete_marker: bool,
}

/// Incompressible bytes without a random-number crate (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn locked_objects(report: &Value) -> Vec<Value> {
    report["executed"]["locked"]
        .as_array()
        .unwrap_or_else(|| panic!("no executed.locked in the prune report: {report}"))
        .clone()
}

fn count(report: &Value, field: &str) -> u64 {
    report["executed"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no executed.{field} in the prune report: {report}"))
}

#[test]
fn prune_reports_objects_still_inside_their_lock_window() {
    let t0 = Instant::now();
    let repo = Repo::new("governance", Some("1d"));
    let (first, second) = repo.two_backups();

    let forget = repo.fleetsnap(&["forget", &first]);
    let stdout = String::from_utf8_lossy(&forget.stdout);
    let stderr = String::from_utf8_lossy(&forget.stderr);
    assert!(stdout.contains("removed 1 snapshots"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "snapshots/{first} (removed from the repository; stored until "
        )),
        "forget did not report the locked snapshot:\n{stderr}"
    );

    let (report, stderr) = repo.prune();
    let locked = locked_objects(&report);
    let (packs, indexes) = (
        count(&report, "packs_removed"),
        count(&report, "index_files_removed"),
    );
    assert!(packs >= 1 && indexes >= 1, "{report}");
    // Every object is under the bucket's default retention, so everything prune deleted
    // is still stored, and each one is reported once.
    assert_eq!(locked.len() as u64, packs + indexes, "{report}");
    let mut objects = BTreeSet::new();
    for o in &locked {
        let name = o["object"].as_str().unwrap();
        assert!(
            name.starts_with("data/") || name.starts_with("index/"),
            "{o}"
        );
        assert_eq!(o["hidden"], true, "{o}");
        let until = o["retained_until"]
            .as_str()
            .unwrap_or_else(|| panic!("{o}"));
        assert!(until.len() == 20 && until.ends_with('Z'), "{o}");
        assert!(
            stderr.contains(&format!("  {name} (removed from the repository")),
            "the text output does not list {name}:\n{stderr}"
        );
        assert!(objects.insert(name.to_string()), "{name} reported twice");
    }
    assert!(stderr.contains(&format!(
        "warning: {} objects are under a retention lock",
        locked.len()
    )));

    repo.restic_sees_only(&second);
    assert_eq!(repo.snapshot_ids(), [second.as_str()]);

    // The bucket still holds every locked version, hidden behind a delete marker.
    let versions = repo.versions();
    for name in objects.iter().chain([&format!("snapshots/{first}")]) {
        let vs = &versions[name];
        assert!(vs[0].delete_marker, "{name} is not hidden: {vs:?}");
        assert!(
            vs.iter().any(|v| !v.delete_marker),
            "{name} lost its locked version: {vs:?}"
        );
    }

    // Hidden objects are not the repository's any more: a second prune leaves them alone.
    let (again, _) = repo.prune();
    assert!(locked_objects(&again).is_empty(), "{again}");
    assert_eq!(count(&again, "packs_removed"), 0, "{again}");

    eprintln!(
        "object lock: {} objects reported locked ({packs} packs, {indexes} index files) + 1 snapshot by forget; {:.1}s",
        locked.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn prune_deletes_for_good_what_no_lock_protects_any_more() {
    let t0 = Instant::now();
    let repo = Repo::new("expired", Some("1d"));
    let (first, second) = repo.two_backups();
    // As if the lock had expired on packs and snapshots; index files stay locked.
    for dir in ["data", "snapshots"] {
        repo.env
            .mc(&[
                "retention",
                "clear",
                "--recursive",
                "--versions",
                &format!("testenv/{}/repo/{dir}", repo.bucket),
            ])
            .unwrap();
    }
    let before: BTreeSet<String> = repo
        .versions()
        .into_keys()
        .filter(|k| k.starts_with("data/"))
        .collect();

    let forget = repo.fleetsnap(&["forget", &first]);
    let stderr = String::from_utf8_lossy(&forget.stderr);
    assert!(!stderr.contains("retention lock"), "{stderr}");

    let (report, _) = repo.prune();
    let packs = count(&report, "packs_removed");
    assert!(packs >= 1, "{report}");
    let locked = locked_objects(&report);
    assert_eq!(
        locked.len() as u64,
        count(&report, "index_files_removed"),
        "only the index files are still locked: {report}"
    );
    assert!(
        locked
            .iter()
            .all(|o| o["object"].as_str().unwrap().starts_with("index/")),
        "{report}"
    );

    let versions = repo.versions();
    let after: BTreeSet<String> = versions
        .keys()
        .filter(|k| k.starts_with("data/"))
        .cloned()
        .collect();
    let gone: Vec<&String> = before.difference(&after).collect();
    // Deleted packs left nothing behind: no noncurrent version, no delete marker.
    assert_eq!(
        gone.len() as u64,
        packs,
        "before {before:?}\nafter {after:?}"
    );
    assert!(!versions.contains_key(&format!("snapshots/{first}")));
    for (key, vs) in &versions {
        if key.starts_with("data/") || key.starts_with("snapshots/") {
            assert!(
                vs.len() == 1 && !vs[0].delete_marker,
                "{key} kept old versions or markers: {vs:?}"
            );
        }
    }
    for o in &locked {
        let vs = &versions[o["object"].as_str().unwrap()];
        assert!(vs[0].delete_marker && vs.len() == 2, "{o}: {vs:?}");
    }

    repo.restic_sees_only(&second);
    eprintln!(
        "object lock, expired: {packs} packs deleted for good, {} index files reported locked; {:.1}s",
        locked.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// A MinIO user for the repository's bucket with the given extra statements.
fn user(repo: &Repo, name: &str, statements: Vec<Value>) -> (String, String) {
    let b = &repo.bucket;
    let mut all = vec![
        serde_json::json!({"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": [format!("arn:aws:s3:::{b}/repo/*")]}),
        serde_json::json!({"Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration"],
            "Resource": [format!("arn:aws:s3:::{b}")]}),
        serde_json::json!({"Effect": "Allow", "Action": ["s3:DeleteObject"],
            "Resource": [format!("arn:aws:s3:::{b}/repo/locks/*")]}),
    ];
    all.extend(statements);
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": all});
    let file = repo.dir.path().join(format!("{name}.json"));
    std::fs::write(&file, policy.to_string()).unwrap();
    // A throwaway identity of this test's own MinIO, not a secret worth protecting.
    let keys = (
        format!("{name}-{}", std::process::id()),
        format!("{name}-secret-{}", std::process::id()),
    );
    let env = repo.env;
    env.mc(&["admin", "user", "add", "testenv", &keys.0, &keys.1])
        .unwrap();
    env.mc(&[
        "admin",
        "policy",
        "create",
        "testenv",
        &keys.0,
        file.to_str().unwrap(),
    ])
    .unwrap();
    env.mc(&[
        "admin", "policy", "attach", "testenv", &keys.0, "--user", &keys.0,
    ])
    .unwrap();
    keys
}

#[test]
fn identities_without_rights_on_versions() {
    let repo = Repo::new("identities", Some("1d"));
    let (first, second) = repo.two_backups();

    // Append-only: may read the bucket's lock configuration, not list or delete versions,
    // and delete nothing but lock files.
    let append_only = user(&repo, "appendonly", vec![]);
    let out = repo.fleetsnap_as(&append_only, &["forget", &first]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("this identity may not delete: the repository is append-only for it"),
        "unclear error for an append-only identity:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(repo.snapshot_ids(), [first.clone(), second.clone()]);

    // May delete objects but not versions: what restic does, a delete marker, and a hint.
    // MinIO lets s3:DeleteObject delete versions too, where AWS wants s3:DeleteObjectVersion;
    // the explicit deny makes it the AWS situation.
    let b = &repo.bucket;
    let markers_only = user(
        &repo,
        "markersonly",
        vec![
            serde_json::json!({"Effect": "Allow", "Action": ["s3:DeleteObject"],
                "Resource": [format!("arn:aws:s3:::{b}/repo/*")]}),
            serde_json::json!({"Effect": "Deny",
                "Action": ["s3:ListBucketVersions", "s3:DeleteObjectVersion"],
                "Resource": [format!("arn:aws:s3:::{b}"), format!("arn:aws:s3:::{b}/*")]}),
        ],
    );
    let out = repo.fleetsnap_as(&markers_only, &["forget", &first]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("s3:DeleteObjectVersion"),
        "no hint:\n{stderr}"
    );
    assert!(!stderr.contains("retention lock"), "{stderr}");
    let vs = &repo.versions()[&format!("snapshots/{first}")];
    assert!(vs[0].delete_marker && vs.len() == 2, "{vs:?}");
    repo.restic_sees_only(&second);
}
