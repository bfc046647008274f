//! End to end for the maintenance side: the reference runbook's validation list on testenv
//! hosts, through the operator binary.
//!
//! One append-only repository on a MinIO bucket with versioning and Object Lock (GOVERNANCE,
//! one day), each host with its own MinIO user whose policy only allows its own prefix (and
//! deleting lock files only); the operator holds the only key that can delete. Checked, in order: snapshots exist and carry the policy's tags; a
//! Restore of /etc into a scratch directory matches /etc (`diff -r` on the host); PostgreSQL
//! (started over ssh, a database with a unicode string and a 100 000-row table) is backed up
//! by a `pg_dumpall` stdin source, a Restore brings `/pg_dumpall.sql` back byte for byte as
//! stock `restic dump` reads it, and the dump loads into a fresh cluster with
//! `ON_ERROR_STOP=on` and yields the same rows; a VerifyPolicy reading all data goes Ready; a
//! host cannot list another host's repository and its own `fleetsnap forget` is refused;
//! host-side retention on the append-only repository is refused as InvalidSpec;
//! operator-side retention (7 daily, 4 weekly, 6 monthly; backups suspended meanwhile) over
//! a synthetic history of almost eight months written by stock restic, plus the real /etc
//! and dump groups, leaves exactly the snapshots an independent oracle computes, which stock
//! `restic forget --dry-run` confirms beforehand, while every forgotten snapshot file stays
//! stored under its lock and is reported in `lockedObjectsRetained`; a corrupted pack makes
//! the VerifyPolicy go not-ready naming the pack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use fleetsnap_tests::kube::{
    self, apply_yaml, condition, event_names, get_json, host_yaml, secret_from_files, set_suspend,
};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{Options, TestEnv, repo_root, step, wait};
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

fn setup(env: &TestEnv, dir: &Path) {
    kube::install_crds(env);
    kube::create_namespace(env, NS);
    // Versioning + Object Lock (GOVERNANCE, 1 day), the ransomware-proof setup: whatever is
    // deleted stays stored for the lock window.
    env.mc(&[
        "mb",
        "--with-lock",
        "--ignore-existing",
        &format!("testenv/{BUCKET}"),
    ])
    .unwrap();
    env.mc(&[
        "retention",
        "set",
        "--default",
        "GOVERNANCE",
        "1d",
        &format!("testenv/{BUCKET}"),
    ])
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
            NS,
            dir,
            &format!("s3-{h}"),
            &[("AWS_ACCESS_KEY_ID", &ak), ("AWS_SECRET_ACCESS_KEY", &sk)],
        );
    }
    kube::base_secrets(env, NS, dir, PASSWORD, "maintenance");
    let mut hosts = String::new();
    for (i, h) in env.hosts().iter().enumerate() {
        // The second host is also the database server (the `db` BackupPolicy selects it).
        let role = if i == 1 { ", role: db" } else { "" };
        hosts.push_str(&host_yaml(
            h,
            &format!("group: pol{role}"),
            env.ssh_port(h),
            env.var("HOST_KEY"),
        ));
    }
    apply_yaml(env, NS, dir, "hosts.yaml", &hosts);
    apply_yaml(
        env,
        NS,
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
        NS,
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

/// Stock restic on one host's repository with root credentials, from the test process.
///
/// `TZ=UTC`: restic reads `backup --time` as local time and records times in the local
/// zone. The test machine runs in UTC anyway; setting it keeps the synthetic times UTC on any
/// machine. Keep rules bucket by the calendar date in the offset each snapshot records (restic
/// and the operator alike), so the oracle reads the same calendar fields.
fn restic_cmd(env: &TestEnv, host: &str) -> Command {
    let repo = format!("s3:{}/{BUCKET}/hosts/{host}", env.var("S3_ENDPOINT"));
    let mut c = Command::new(env.tool("restic"));
    // --retry-lock: the policies' own timers (verify at :30) hold the repository's lock
    // now and then; a listing must wait for them, not fail.
    c.args(["-r", &repo, "--no-cache", "--retry-lock", "2m"])
        .env("TZ", "UTC")
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER"))
        .env("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD"))
        .stdin(Stdio::null());
    c
}

fn restic(env: &TestEnv, host: &str, args: &[&str]) -> Result<String> {
    let out = restic_cmd(env, host).args(args).output()?;
    fleetsnap_tests::check(&format!("restic {}", args.join(" ")), out)
}

/// Snapshots of one host's repository as stock restic lists them (root credentials).
fn restic_snapshots(env: &TestEnv, host: &str) -> Result<Vec<Value>> {
    let text = restic(env, host, &["snapshots", "--json"])?;
    Ok(serde_json::from_str::<Vec<Value>>(&text)?)
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn id_of(s: &Value) -> String {
    s["id"].as_str().unwrap_or_default().to_string()
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

/// Wait until Restore `name` has finished (Succeeded or Failed) and return it.
/// A Restore of `include` from `host`'s backups (`snapshot`: an ID, or `None` for `latest`).
fn restore_yaml(
    name: &str,
    host: &str,
    snapshot: Option<&str>,
    include: &str,
    target: &str,
) -> String {
    let source = snapshot
        .map(|id| format!("  source: {{snapshot: {id}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: fleetsnap.io/v1alpha1\nkind: Restore\nmetadata: {{name: {name}}}\nspec:\n  \
         hostRef: {{name: {host}}}\n  repositoryRef: {{name: minio}}\n{source}  include: [{include}]\n  \
         targetDirectory: {target}\n"
    )
}

fn restore_finished(env: &TestEnv, name: &str) -> Result<Value> {
    wait::until(
        &format!("Restore {name} finished"),
        Duration::from_secs(300),
        || {
            let r = get_json(env, NS, &format!("restore/{name}"))?;
            let phase = r["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok((phase == "Succeeded" || phase == "Failed").then_some(r))
        },
    )
}

/// The runbook's keep rules as stock restic takes them.
const KEEP_ARGS: [&str; 6] = [
    "--keep-daily",
    "7",
    "--keep-weekly",
    "4",
    "--keep-monthly",
    "6",
];

/// Stock `restic forget --dry-run --json` with [`KEEP_ARGS`] on one host's repository,
/// `extra` (e.g. a `--tag` filter) before the keep rules: one entry per group.
fn forget_dry_run(env: &TestEnv, host: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let args = [
        &["forget", "--dry-run", "--json", "--retry-lock", "5m"],
        extra,
        &KEEP_ARGS[..],
    ]
    .concat();
    Ok(serde_json::from_str(&restic(env, host, &args)?)?)
}

/// Ids of the snapshots a `forget --json` group keeps.
fn kept_ids(group: &Value) -> BTreeSet<String> {
    group["keep"]
        .as_array()
        .into_iter()
        .flatten()
        .map(id_of)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Retention oracle: restic's keep rules, written out independently of the executor.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// A snapshot time as restic buckets it: the calendar fields in the UTC offset the snapshot
/// was recorded with (Go's `Time.Date()` on the parsed time), plus the instant for ordering.
#[derive(Clone, Copy, Debug)]
struct SnapTime {
    /// Days since 1970-01-01 of the recorded calendar date.
    day: i64,
    year: i64,
    month: i64,
    /// Nanoseconds since the epoch (UTC), for newest-first ordering.
    instant: i128,
}

impl SnapTime {
    /// From RFC 3339 as restic prints it: `2024-05-20T05:17:07Z`,
    /// `2026-01-02T03:04:05.123456789+00:00`.
    fn parse(t: &str) -> Result<SnapTime> {
        let bad = || anyhow!("unexpected snapshot time {t:?}");
        let num = |r: std::ops::Range<usize>| -> Result<i64> {
            t.get(r).and_then(|x| x.parse().ok()).ok_or_else(bad)
        };
        let (year, month, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let secs = num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
        let mut rest = t.get(19..).ok_or_else(bad)?;
        let mut nanos = 0i128;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            rest = &frac[digits.len()..];
            nanos = format!("{digits:0<9}")[..9].parse().map_err(|_| bad())?;
        }
        let offset = match rest {
            "Z" => 0,
            _ => {
                let sign = match rest.get(..1) {
                    Some("+") => 1,
                    Some("-") => -1,
                    _ => return Err(bad()),
                };
                let h: i64 = rest
                    .get(1..3)
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(bad)?;
                let m: i64 = rest
                    .get(4..6)
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(bad)?;
                sign * (h * 3600 + m * 60)
            }
        };
        let day = days_from_civil(year, month, d);
        let utc_secs = day * 86_400 + secs - offset;
        Ok(SnapTime {
            day,
            year,
            month,
            instant: utc_secs as i128 * 1_000_000_000 + nanos,
        })
    }

    /// Bucket keys of the daily, weekly (ISO week: Monday to Sunday) and monthly rules.
    fn buckets(&self) -> [i64; 3] {
        // 1970-01-01 was a Thursday: days + 3 counts from a Monday.
        let monday = self.day - (self.day + 3).rem_euclid(7);
        [self.day, monday, self.year * 12 + self.month]
    }
}

/// restic's `forget --keep-daily D --keep-weekly W --keep-monthly M` on one group (host +
/// paths): going from newest to oldest, a snapshot is kept when it is the first (= newest)
/// one seen of its day / ISO week / month while that rule has budget left, and uses up one
/// of it; a snapshot kept by several rules is kept once. A rule with budget left at the
/// group's oldest snapshot keeps that one too ("oldest daily snapshot").
fn expected_keep(group: &[(String, SnapTime)], budget: [u32; 3]) -> BTreeSet<String> {
    let mut newest_first: Vec<&(String, SnapTime)> = group.iter().collect();
    newest_first.sort_by_key(|(_, t)| std::cmp::Reverse(t.instant));
    let mut left = budget;
    let mut seen: [Option<i64>; 3] = [None; 3];
    let mut keep = BTreeSet::new();
    for (n, (id, t)) in newest_first.iter().enumerate() {
        let oldest = n + 1 == newest_first.len();
        for (rule, bucket) in t.buckets().into_iter().enumerate() {
            if left[rule] > 0 && (seen[rule] != Some(bucket) || oldest) {
                seen[rule] = Some(bucket);
                left[rule] -= 1;
                keep.insert(id.clone());
            }
        }
    }
    keep
}

/// Keep rules of the runbook (and of the `central` RetentionPolicy): 7 daily, 4 weekly,
/// 6 monthly.
const KEEP: [u32; 3] = [7, 4, 6];

type GroupKey = (String, Vec<String>);

/// One host's snapshots grouped as restic's default `--group-by host,paths`.
fn groups(snaps: &[Value]) -> Result<BTreeMap<GroupKey, Vec<(String, SnapTime)>>> {
    let mut out: BTreeMap<GroupKey, Vec<(String, SnapTime)>> = BTreeMap::new();
    for s in snaps {
        let mut paths: Vec<String> = str_list(&s["paths"])
            .into_iter()
            .map(String::from)
            .collect();
        paths.sort();
        let host = s["hostname"].as_str().unwrap_or_default().to_string();
        let time = SnapTime::parse(s["time"].as_str().unwrap_or_default())?;
        out.entry((host, paths)).or_default().push((id_of(s), time));
    }
    Ok(out)
}

/// The synthetic history's snapshot times (`restic backup --time`, read as UTC): from
/// 2024-05-20 to 2025-01-08, one snapshot every one or two days at a varying time of day,
/// plus a few days with an earlier (00:00:00) and a later (23:59:59) snapshot, so that
/// "newest of its day" matters. Nine calendar months exhaust the six monthly buckets before
/// the first one, and ending in January makes the last four ISO weeks straddle the year
/// (2024-12-30 is in 2025-W01).
fn synthetic_times() -> Vec<String> {
    let first = days_from_civil(2024, 5, 20);
    let last = days_from_civil(2025, 1, 8);
    let mut times = Vec::new();
    let (mut day, mut i) = (first, 0i64);
    while day <= last {
        let (y, m, d) = civil_from_days(day);
        let date = format!("{y:04}-{m:02}-{d:02}");
        times.push(format!(
            "{date} {:02}:{:02}:{:02}",
            1 + (i * 5) % 22,
            (i * 17) % 60,
            (i * 31) % 60
        ));
        if i % 11 == 3 || day == last {
            times.push(format!("{date} 00:00:00"));
        }
        if i % 17 == 5 || day == last {
            times.push(format!("{date} 23:59:59"));
        }
        day += if i % 3 == 0 { 1 } else { 2 };
        i += 1;
    }
    times
}

/// Writes the synthetic history into `host`'s repository with stock restic, a few processes
/// at a time (backups share the repository under non-exclusive locks). Returns the count.
fn build_synthetic_history(env: &TestEnv, host: &str, dir: &Path) -> Result<usize> {
    let data = dir.join("synthetic");
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("README"),
        "a tiny directory backed up with fake times\n",
    )?;
    let times = synthetic_times();
    for batch in times.chunks(8) {
        let children = batch
            .iter()
            .map(|t| {
                restic_cmd(env, host)
                    .args(["backup", "--quiet", "--retry-lock", "5m", "--time", t])
                    .args(["--host", host, "--tag", "synthetic"])
                    .arg(&data)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map(|c| (t, c))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        for (t, c) in children {
            fleetsnap_tests::check(
                &format!("restic backup --time {t:?}"),
                c.wait_with_output()?,
            )?;
        }
    }
    Ok(times.len())
}

/// Whether the backup timers and services of `policies` on `host` have stopped (a
/// suspended policy's timer is disabled; a run already started finishes first).
fn backups_idle(env: &TestEnv, host: &str, policies: &[&str]) -> Result<bool> {
    let units: Vec<String> = policies
        .iter()
        .flat_map(|p| {
            [
                format!("fleetsnap-backup-{p}.timer"),
                format!("fleetsnap-backup-{p}.service"),
            ]
        })
        .collect();
    let out = env.ssh(
        host,
        &format!("systemctl is-active {}", units.join(" ")),
        b"",
    )?;
    let states: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    Ok(states.len() == units.len()
        && states.iter().all(|s| {
            !matches!(
                s.as_str(),
                "active" | "activating" | "reloading" | "deactivating"
            )
        }))
}

// ---------------------------------------------------------------------------------------
// PostgreSQL on a test host.

/// A name psql and pg_dump must carry through untouched: non-ASCII Latin, CJK, an emoji
/// outside the BMP.
const UNICODE_NAME: &str = "Zoë Ångström – 東京 🐘";
const EVENT_ROWS: u32 = 100_000;

fn seed_sql() -> String {
    format!(
        r#"CREATE ROLE shop_app LOGIN;
CREATE DATABASE shop ENCODING 'UTF8' TEMPLATE template0;
\connect shop
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers VALUES
  (1, '{UNICODE_NAME}'),
  (2, 'O''Brien; DROP TABLE customers;--'),
  (3, E'tab\there\nnewline');
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, payload text NOT NULL);
INSERT INTO events
  SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', md5(g::text)
  FROM generate_series(1, {EVENT_ROWS}) g;
GRANT SELECT ON customers TO shop_app;
"#
    )
}

/// What the database holds, one line per query: the unicode name, a digest of each table
/// and the application role.
const FINGERPRINT_SQL: &str = r#"SELECT name FROM customers WHERE id = 1;
SELECT count(*) || ' ' || md5(string_agg(id || ':' || name, '|' ORDER BY id)) FROM customers;
SELECT count(*) || ' ' || md5(string_agg(id || ',' || extract(epoch FROM at) || ',' || payload, ';' ORDER BY id)) FROM events;
SELECT rolname FROM pg_roles WHERE rolname = 'shop_app';
"#;

fn pg_fingerprint(env: &TestEnv, host: &str, port: u16) -> Result<String> {
    let out = env.ssh(
        host,
        &format!(
            "cd / && runuser -u postgres -- psql -X -A -t -p {port} -d shop --set ON_ERROR_STOP=on"
        ),
        FINGERPRINT_SQL.as_bytes(),
    )?;
    fleetsnap_tests::check(&format!("psql fingerprint on port {port}"), out)
}

fn pg_ready(env: &TestEnv, host: &str, port: u16) -> Result<()> {
    wait::until(
        &format!("PostgreSQL on {host}:{port} accepting connections"),
        Duration::from_secs(120),
        || {
            let out = env.ssh(host, &format!("pg_isready -q -p {port}"), b"")?;
            Ok(out.status.success().then_some(()))
        },
    )
}

#[test]
fn runbook_validation_list() {
    let t0 = Instant::now();
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    setup(env, dir.path());
    let op = Launch::admin(env, NS).start(env, "e2e-policies");
    let hosts = env.hosts();
    let fail = |e: anyhow::Error| -> ! { op.fail(e) };
    step(t0, "resources applied, operator started");
    let h1 = hosts[0].clone();
    let h2 = hosts[1].clone();

    // (f, first half) PostgreSQL on the database host, set up as its administrator would:
    // enable the packaged service, create a database; then a BackupPolicy dumps it through a
    // stdin source as the runbook does (`sudo -u postgres pg_dumpall | restic backup --stdin`).
    env.ssh_ok(&h2, "systemctl enable --now postgresql")
        .unwrap_or_else(|e| fail(e));
    pg_ready(env, &h2, 5432).unwrap_or_else(|e| fail(e));
    let out = env
        .ssh(
            &h2,
            "cd / && runuser -u postgres -- psql -X -q --set ON_ERROR_STOP=on -d postgres",
            seed_sql().as_bytes(),
        )
        .unwrap();
    fleetsnap_tests::check("seeding the shop database", out).unwrap_or_else(|e| fail(e));
    let source_fingerprint = pg_fingerprint(env, &h2, 5432).unwrap_or_else(|e| fail(e));
    assert_eq!(
        source_fingerprint.lines().next(),
        Some(UNICODE_NAME),
        "{source_fingerprint}"
    );
    apply_yaml(
        env,
        NS,
        dir.path(),
        "backup-db.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: db}
spec:
  hostSelector: {matchLabels: {role: db}}
  repositoryRef: {name: minio}
  stdinSources:
  - {name: postgres, command: [pg_dumpall], user: postgres, filename: pg_dumpall.sql}
  tags: [runbook, postgres]
  schedule: {onCalendar: "*-*-* *:*:00", persistent: false}
"#,
    );
    step(t0, "(f) PostgreSQL started and seeded on the database host");

    // (a) Snapshots of /etc exist on every host and carry the policy's tags.
    for h in &hosts {
        let snap = wait::until(
            &format!("a snapshot of {h}:/etc"),
            Duration::from_secs(420),
            || {
                let s = restic_snapshots(env, h).unwrap_or_default();
                Ok(s.into_iter().find(|s| str_list(&s["paths"]) == ["/etc"]))
            },
        )
        .unwrap_or_else(|e| fail(e));
        let tags = str_list(&snap["tags"]);
        assert!(
            tags.contains(&"runbook") && tags.contains(&"nightly"),
            "{snap:#}"
        );
        assert_eq!(snap["hostname"], h.as_str());
    }
    step(t0, "(a) snapshots exist with the policy's tags");

    // (e, first half) A synthetic history for the retention check, written by stock restic
    // into host1's repository (which the first backup created) while the next steps run.
    let history = {
        let (h, d) = (h1.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || build_synthetic_history(env, &h, &d))
    };

    // (c) Restore /etc of host1 into a scratch directory; it matches /etc.
    apply_yaml(
        env,
        NS,
        dir.path(),
        "restore.yaml",
        &restore_yaml("etc-drill", &h1, None, "/etc", "/var/tmp/restore-etc"),
    );
    let r = restore_finished(env, "etc-drill").unwrap_or_else(|e| fail(e));
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

    // (f) The dump's snapshot: restic keeps a stdin file at /<filename>.
    let db_snap = wait::until(
        "a snapshot of the pg_dumpall stdin source",
        Duration::from_secs(300),
        || {
            let s = restic_snapshots(env, &h2)?;
            Ok(s.into_iter()
                .find(|s| str_list(&s["paths"]) == ["/pg_dumpall.sql"]))
        },
    )
    .unwrap_or_else(|e| fail(e));
    assert!(
        str_list(&db_snap["tags"]).contains(&"postgres"),
        "{db_snap:#}"
    );
    let db_id = id_of(&db_snap);
    apply_yaml(
        env,
        NS,
        dir.path(),
        "restore-db.yaml",
        &restore_yaml(
            "db-drill",
            &h2,
            Some(&db_id),
            "/pg_dumpall.sql",
            "/var/tmp/restore-db",
        ),
    );
    let r = restore_finished(env, "db-drill").unwrap_or_else(|e| fail(e));
    assert_eq!(r["status"]["phase"], "Succeeded", "{r:#}");
    assert_eq!(r["status"]["filesRestored"], 1, "{r:#}");
    // Interop: stock restic reads the same bytes from the snapshot as the Restore wrote.
    let dumped = restic_cmd(env, &h2)
        .args(["dump", &db_id, "/pg_dumpall.sql"])
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "restic dump: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let restored = env
        .ssh(&h2, "cat /var/tmp/restore-db/pg_dumpall.sql", b"")
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
    assert!(
        restored.stdout == dumped.stdout,
        "restored dump ({} bytes) differs from `restic dump` ({} bytes)",
        restored.stdout.len(),
        dumped.stdout.len()
    );
    assert_eq!(
        r["status"]["bytesRestored"],
        dumped.stdout.len() as i64,
        "{r:#}"
    );
    assert!(
        String::from_utf8_lossy(&dumped.stdout).contains("CREATE DATABASE shop"),
        "not a pg_dumpall of the shop database"
    );
    assert_eq!(r["status"]["snapshotId"], db_id.as_str(), "{r:#}");
    // `latest` with include paths on a host that backs up both /etc and the dump: each
    // Restore takes the newest snapshot holding its paths, whichever kind is newest overall.
    for (name, include, paths) in [
        ("db-latest", "/pg_dumpall.sql", "/pg_dumpall.sql"),
        ("etc-latest", "/etc/hostname", "/etc"),
    ] {
        apply_yaml(
            env,
            NS,
            dir.path(),
            &format!("{name}.yaml"),
            &restore_yaml(name, &h2, None, include, &format!("/var/tmp/{name}")),
        );
        let r = restore_finished(env, name).unwrap_or_else(|e| fail(e));
        assert_eq!(r["status"]["phase"], "Succeeded", "{r:#}");
        assert_eq!(r["status"]["filesRestored"], 1, "{r:#}");
        let used = r["status"]["snapshotId"].as_str().unwrap_or_default();
        let snaps = restic_snapshots(env, &h2).unwrap_or_else(|e| fail(e));
        let snap = snaps
            .iter()
            .find(|s| id_of(s) == used)
            .unwrap_or_else(|| fail(anyhow!("{name}: snapshot {used:?} not in {snaps:#?}")));
        assert_eq!(str_list(&snap["paths"]), [paths], "{name}: {snap:#}");
    }
    // Load it into a fresh cluster. pg_dumpall begins with `CREATE ROLE postgres;`, which
    // stops a load with ON_ERROR_STOP into any cluster whose bootstrap superuser is
    // `postgres` (every stock one, so also runbook item 4 as written): this cluster's
    // superuser is `restorer` instead, with trust on its local socket only.
    env.ssh_ok(
        &h2,
        "pg_createcluster 15 restored --port 5433 --start -- --username=restorer --auth-local=trust >/dev/null",
    )
    .unwrap_or_else(|e| fail(e));
    pg_ready(env, &h2, 5433).unwrap_or_else(|e| fail(e));
    env.ssh_ok(
        &h2,
        "cd / && runuser -u postgres -- psql -X -q -p 5433 -U restorer -d postgres \
         --set ON_ERROR_STOP=on -f - </var/tmp/restore-db/pg_dumpall.sql >/dev/null",
    )
    .unwrap_or_else(|e| fail(e));
    let restored_fingerprint = pg_fingerprint(env, &h2, 5433).unwrap_or_else(|e| fail(e));
    assert_eq!(restored_fingerprint, source_fingerprint);
    let lines: Vec<&str> = restored_fingerprint.lines().collect();
    assert_eq!(lines[0], UNICODE_NAME, "{restored_fingerprint}");
    assert!(lines[1].starts_with("3 "), "{restored_fingerprint}");
    assert!(
        lines[2].starts_with(&format!("{EVENT_ROWS} ")),
        "{restored_fingerprint}"
    );
    assert_eq!(lines[3], "shop_app", "{restored_fingerprint}");
    step(
        t0,
        "(f) pg_dumpall restored, loaded into a fresh cluster, rows match",
    );

    let synthetic = history
        .join()
        .expect("synthetic history thread")
        .unwrap_or_else(|e| fail(e));
    step(
        t0,
        &format!("(e) {synthetic} synthetic snapshots written by restic"),
    );

    // (b) Verification reading all data passes.
    apply_yaml(
        env,
        NS,
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
        let v = get_json(env, NS, "verifypolicy/weekly")?;
        Ok(condition(&v, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(v))
    })
    .unwrap_or_else(|e| fail(e));
    assert_eq!(v["status"]["coveragePercent"], 100, "{v:#}");
    step(t0, "(b) VerifyPolicy Ready after check --read-data");

    // (d) Append-only: the host's own key cannot see another host's repository, and cannot
    // forget its own snapshots.
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
    // The policies' own timers run every minute: a forget that meets one of their locks is
    // refused for that (exit 11) before it gets to the delete, so wait for a lock-free try.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (ok, out) = loop {
        let (ok, out) = fleetsnap_as_host(env, &h1, &h1, &format!("forget {id}"));
        if ok || !out.contains("already locked") || std::time::Instant::now() > deadline {
            break (ok, out);
        }
    };
    assert!(!ok, "forget with an append-only key succeeded:\n{out}");
    assert!(out.contains("append-only"), "unclear forget error:\n{out}");
    step(t0, "(d) host key cannot list others or forget");

    // Host-side retention on an append-only repository is refused with a clear condition.
    apply_yaml(
        env,
        NS,
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
        let p = get_json(env, NS, "retentionpolicy/on-hosts")?;
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

    // (e) Operator-side retention with the runbook's rules (7 daily, 4 weekly, 6 monthly)
    // over every group (host + paths) of both repositories: host1's synthetic history and
    // /etc, host2's /etc and dump. Backups are suspended meanwhile, so the snapshots the
    // operator sees are the ones the oracle and stock restic saw.
    set_suspend(env, NS, "backuppolicy/nightly", true);
    set_suspend(env, NS, "backuppolicy/db", true);
    for h in &hosts {
        let policies: &[&str] = if *h == h2 {
            &["nightly", "db"]
        } else {
            &["nightly"]
        };
        wait::until(
            &format!("backups on {h} suspended and finished"),
            Duration::from_secs(180),
            || Ok(backups_idle(env, h, policies)?.then_some(())),
        )
        .unwrap_or_else(|e| fail(e));
    }
    let mut before = 0;
    let mut expected = BTreeSet::new();
    let mut synthetic_expected = BTreeSet::new();
    let mut synthetic_ids = BTreeSet::new();
    for h in &hosts {
        let snaps = restic_snapshots(env, h).unwrap_or_else(|e| fail(e));
        before += snaps.len();
        let groups = groups(&snaps).unwrap_or_else(|e| fail(e));
        // The oracle against stock restic, group by group, before anything is forgotten.
        let dry = forget_dry_run(env, h, &[]).unwrap_or_else(|e| fail(e));
        assert_eq!(dry.len(), groups.len(), "{dry:#?}");
        for g in &dry {
            let mut paths: Vec<String> = str_list(&g["paths"])
                .into_iter()
                .map(String::from)
                .collect();
            paths.sort();
            let key = (g["host"].as_str().unwrap_or_default().to_string(), paths);
            let members = &groups[&key];
            let want = expected_keep(members, KEEP);
            let by_restic = kept_ids(g);
            assert_eq!(
                by_restic, want,
                "group {key:?}: stock restic and the oracle disagree"
            );
            eprintln!(
                "    group {} {:?}: keep {} of {}",
                key.0,
                key.1,
                want.len(),
                members.len()
            );
            expected.extend(want);
        }
        if *h == h1 {
            let synthetic_snaps: Vec<&Value> = snaps
                .iter()
                .filter(|s| str_list(&s["tags"]).contains(&"synthetic"))
                .collect();
            assert_eq!(synthetic_snaps.len(), synthetic);
            synthetic_ids = synthetic_snaps.iter().map(|s| id_of(s)).collect();
            let group = &groups[&(
                h1.clone(),
                str_list(&synthetic_snaps[0]["paths"])
                    .into_iter()
                    .map(String::from)
                    .collect(),
            )];
            assert_eq!(group.len(), synthetic, "the synthetic history is one group");
            synthetic_expected = expected_keep(group, KEEP);
            // And as the runbook's operator would ask restic, by tag.
            let tagged =
                forget_dry_run(env, h, &["--tag", "synthetic"]).unwrap_or_else(|e| fail(e));
            assert_eq!(tagged.len(), 1, "{tagged:#?}");
            let by_restic = kept_ids(&tagged[0]);
            assert_eq!(by_restic, synthetic_expected);
            // One per day: of the last day's three snapshots only the 23:59:59 one stays.
            let time_of = |id: &String| {
                synthetic_snaps
                    .iter()
                    .find(|s| &id_of(s) == id)
                    .and_then(|s| s["time"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let kept_times: BTreeSet<String> = synthetic_expected.iter().map(time_of).collect();
            let last_day: Vec<&str> = synthetic_snaps
                .iter()
                .filter_map(|s| s["time"].as_str())
                .filter(|t| t.starts_with("2025-01-08"))
                .collect();
            assert_eq!(last_day.len(), 3, "{last_day:?}");
            assert!(
                kept_times.contains("2025-01-08T23:59:59Z"),
                "{kept_times:#?}"
            );
            assert_eq!(
                kept_times
                    .iter()
                    .filter(|t| t.starts_with("2025-01-08"))
                    .count(),
                1,
                "{kept_times:#?}"
            );
            // Eight months: the six monthly buckets run out before the first month.
            assert!(
                !kept_times.iter().any(|t| t.starts_with("2024-05")),
                "{kept_times:#?}"
            );
        }
    }
    let expected_removed = before - expected.len();
    assert!(
        synthetic_expected.len() > 7 && synthetic_expected.len() < synthetic,
        "{synthetic_expected:?}"
    );
    apply_yaml(
        env,
        NS,
        dir.path(),
        "retention-op.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {name: central}
spec:
  backupPolicyRef: {name: nightly}
  keep: {daily: 7, weekly: 4, monthly: 6}
  prune: {maxUnused: "0%"}
  schedule: {onCalendar: "*-*-* *:*:15"}
  runOn: Operator
  # The synthetic history was written just now with old times: this run checks restic's
  # keep semantics, so it takes times as claimed (the default would keep them as suspicious,
  # which the hostile_host suite checks).
  snapshotTimes: {trust: Claimed}
"#,
    );
    let rp = wait::until(
        "operator retention succeeded",
        Duration::from_secs(240),
        || {
            let p = get_json(env, NS, "retentionpolicy/central")?;
            Ok(
                (condition(&p, "Ready").is_some_and(|c| c["status"] == "True")
                    && p["status"]["lastSuccess"].is_string())
                .then_some(p),
            )
        },
    )
    .unwrap_or_else(|e| fail(e));
    let mut after = BTreeSet::new();
    for h in &hosts {
        after.extend(
            restic_snapshots(env, h)
                .unwrap_or_else(|e| fail(e))
                .iter()
                .map(id_of),
        );
    }
    assert_eq!(
        after, expected,
        "snapshots left by the operator's retention"
    );
    let synthetic_after: BTreeSet<String> = serde_json::from_str::<Vec<Value>>(
        &restic(env, &h1, &["snapshots", "--json", "--tag", "synthetic"])
            .unwrap_or_else(|e| fail(e)),
    )
    .unwrap()
    .iter()
    .map(id_of)
    .collect();
    assert_eq!(synthetic_after, synthetic_expected);
    // Object Lock: every forgotten snapshot file is still stored (hidden behind a delete
    // marker), and retention reported those objects instead of failing on them.
    let versions = env
        .mc(&[
            "ls",
            "--versions",
            "--recursive",
            &format!("testenv/{BUCKET}/hosts/{h1}/snapshots/"),
        ])
        .unwrap();
    let stored: BTreeSet<&str> = versions
        .lines()
        .filter(|l| !l.contains(" DEL "))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|n| n.rsplit('/').next())
        .collect();
    let lost: Vec<&String> = synthetic_ids
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "forgotten snapshots gone from the Object Lock bucket: {lost:?}"
    );
    let retained = rp["status"]["lockedObjectsRetained"].as_u64().unwrap_or(0);
    let forgotten_synthetic = (synthetic_ids.len() - synthetic_expected.len()) as u64;
    assert_eq!(
        rp["status"]["snapshotsKept"],
        expected.len() as i64,
        "{rp:#}"
    );
    // An earlier attempt that failed on one repository (locked) already removed snapshots
    // from the other, which the succeeding run then does not count again.
    let earlier_failures = event_names(
        env,
        NS,
        "involvedObject.name=central,reason=RetentionFailed",
    );
    if earlier_failures.trim().is_empty() {
        assert_eq!(
            rp["status"]["snapshotsRemoved"], expected_removed as i64,
            "{rp:#}"
        );
        assert!(retained >= expected_removed as u64, "{rp:#}");
        let msg = condition(&rp, "Ready").unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            msg.contains(&format!(
                "kept {} and removed {expected_removed} snapshots",
                expected.len()
            )),
            "{msg}"
        );
    } else {
        eprintln!("retention failed before it succeeded: {earlier_failures}");
        assert!(retained > 0, "{rp:#}");
        assert!(
            rp["status"]["snapshotsRemoved"]
                .as_u64()
                .unwrap_or(u64::MAX)
                <= expected_removed as u64,
            "{rp:#}"
        );
    }
    eprintln!(
        "    {retained} objects retained under Object Lock ({forgotten_synthetic} forgotten synthetic snapshots among them)"
    );
    set_suspend(env, NS, "backuppolicy/nightly", false);
    set_suspend(env, NS, "backuppolicy/db", false);
    step(
        t0,
        &format!(
            "(e) operator-side retention kept exactly the {} expected snapshots ({} synthetic) and removed {expected_removed}",
            expected.len(),
            synthetic_expected.len()
        ),
    );

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
            let v = get_json(env, NS, "verifypolicy/weekly")?;
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
    let events = event_names(env, NS, "reason=VerifyFailed");
    assert!(!events.trim().is_empty(), "no VerifyFailed event");
    step(t0, "(b') corrupted pack reported");

    // Every metric an alert rule uses is served by the real operator now that backup,
    // verify and retention policies have run.
    let scrape = op.scrape().unwrap();
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
    // Served only for temporary keys with a known expiry, which this suite does not use;
    // e2e_credentials checks it with a real value.
    let elsewhere = ["fleetsnap_backup_credential_expiry_timestamp_seconds"];
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !served.contains(m.as_str()) && !elsewhere.contains(&m.as_str()))
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
