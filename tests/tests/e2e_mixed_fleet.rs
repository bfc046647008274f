//! End to end on a mixed fleet: Debian bookworm (systemd 252, glibc 2.36), bullseye
//! (systemd 247, glibc 2.31), trixie (systemd 257, glibc 2.41) and a bookworm root filesystem
//! with no init system at all (sshd is the container's only process; `systemctl` is installed
//! but no systemd runs).
//!
//! The operator pushes the executor that `deploy/build-executor.sh` links against glibc 2.17.
//! Each host with systemd takes a BackupPolicy, a VerifyPolicy and a Restore with the
//! credential mode its systemd supports (encrypted credentials from 250, `LoadCredential=` on
//! 247), and stock `restic check --read-data` passes on its repository. The host without
//! systemd is Stalled with the reason UnsupportedHost, and nothing is installed on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use fleetsnap_tests::kube::{self, apply_yaml, condition, get_json, host_yaml, policy_entry};
use fleetsnap_tests::operator::Launch;
use fleetsnap_tests::{Options, TestEnv, check, repo_root, step, wait};

const NS: &str = "mixed";
const BUCKET: &str = "fleetsnap-mixed";
const PASSWORD: &str = "mixed-fleet-repository-password-41c9";
/// The hosts in testenv's order, with the OS each boots.
const FLEET: [(&str, &str); 4] = [
    ("host1", "bookworm"),
    ("host2", "bullseye"),
    ("host3", "trixie"),
    ("host4", "nosystemd"),
];
/// The credential mode the plan must choose on each host with systemd.
const MODES: [(&str, &str); 3] = [
    ("host1", "encrypted"),
    ("host2", "load-credential"),
    ("host3", "encrypted"),
];

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: FLEET.len(),
        host_os: FLEET.iter().map(|(_, os)| *os).collect(),
        ..Options::default()
    })
}

/// The executor built against the glibc 2.17 floor; the script fails if the floor is broken.
fn portable_executor() -> PathBuf {
    let out = Command::new(repo_root().join("deploy/build-executor.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("running deploy/build-executor.sh");
    let path = check("deploy/build-executor.sh", out).unwrap();
    PathBuf::from(path.trim())
}

fn restic(env: &TestEnv, host: &str, args: &[&str]) -> Result<String> {
    let repo = format!("s3:{}/{BUCKET}/hosts/{host}", env.var("S3_ENDPOINT"));
    let out = Command::new(env.tool("restic"))
        .args(["-r", &repo, "--no-cache", "--retry-lock", "5m"])
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", env.var("MINIO_ROOT_USER"))
        .env("AWS_SECRET_ACCESS_KEY", env.var("MINIO_ROOT_PASSWORD"))
        .stdin(Stdio::null())
        .output()?;
    check(&format!("restic {} {repo}", args.join(" ")), out)
}

fn setup(env: &TestEnv, dir: &Path) {
    kube::install_crds(env);
    kube::create_namespace(env, NS);
    env.mc(&["mb", "--ignore-existing", &format!("testenv/{BUCKET}")])
        .unwrap();
    kube::base_secrets(env, NS, dir, PASSWORD, "minio");
    let hosts: String = FLEET
        .iter()
        .map(|(h, os)| {
            host_yaml(
                h,
                &format!("group: mixed, os: {os}"),
                env.ssh_port(h),
                env.var("HOST_KEY"),
            )
        })
        .collect();
    apply_yaml(env, NS, dir, "hosts.yaml", &hosts);
    apply_yaml(
        env,
        NS,
        dir,
        "repo.yaml",
        &kube::s3_repository_yaml(env, BUCKET),
    );
    apply_yaml(
        env,
        NS,
        dir,
        "policies.yaml",
        r#"apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: etc}
spec:
  hostSelector: {matchLabels: {group: mixed}}
  repositoryRef: {name: minio}
  paths: [/etc]
  schedule: {onCalendar: "*-*-* *:*:00/20", persistent: false}
---
apiVersion: fleetsnap.io/v1alpha1
kind: VerifyPolicy
metadata: {name: etc-verify}
spec:
  backupPolicyRef: {name: etc}
  schedule: {onCalendar: "*-*-* *:*:30", persistent: false}
  readData: {rotation: {subsets: 1, period: Day}}
  restoreDrill: {sampleFiles: 3, scratchDir: /var/tmp/fleetsnap-drill}
"#,
    );
}

/// Whether `host` has recorded a successful run of policy `kind/name`; the entry as seen,
/// for the failure message.
fn succeeded(env: &TestEnv, host: &str, kind: &str, name: &str) -> Result<(bool, String)> {
    let h = get_json(env, NS, &format!("host/{host}"))?;
    let e = policy_entry(&h, kind, name).cloned().unwrap_or_default();
    Ok((e["lastSuccess"].is_string(), format!("{kind} {e}")))
}

#[test]
fn every_kind_of_host_is_backed_up_verified_and_restored_or_refused_by_name() {
    let t0 = Instant::now();
    let env = env();
    step(t0, "testenv up (bookworm, bullseye, trixie, no systemd)");
    let dir = tempfile::tempdir().unwrap();
    let executor = portable_executor();
    step(t0, "executor built against glibc 2.17");
    setup(env, dir.path());
    let launch = Launch {
        executor,
        host_timeout: "90s".into(),
        ..Launch::admin(env, NS)
    };
    let op = launch.start(env, "mixed-operator");

    // The host without systemd: refused by name, nothing installed.
    let h4 = wait::until(
        "host4 Stalled with UnsupportedHost",
        Duration::from_secs(180),
        || {
            let h = get_json(env, NS, "host/host4")?;
            Ok(condition(&h, "Stalled")
                .is_some_and(|c| c["status"] == "True" && c["reason"] == "UnsupportedHost")
                .then_some(h))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    let msg = condition(&h4, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("systemd"), "{msg}");
    assert_eq!(
        h4["status"]["os"]["credentialMode"], "unsupported",
        "{h4:#}"
    );
    let left = env
        .ssh_ok(
            "host4",
            "ls -d /usr/local/lib/fleetsnap /etc/fleetsnap /etc/systemd/system/fleetsnap-* \
             /usr/local/bin/fleetsnap 2>/dev/null; true",
        )
        .unwrap();
    assert!(left.trim().is_empty(), "installed on host4: {left}");
    step(
        t0,
        "host4 (no systemd): Stalled UnsupportedHost, nothing installed",
    );

    // Every host with systemd backs up and verifies with the mode its systemd has.
    for (h, _) in MODES {
        wait::until(
            &format!("{h}: backup and verify succeeded"),
            Duration::from_secs(420),
            || {
                let (b, bs) = succeeded(env, h, "BackupPolicy", "etc")?;
                let (v, vs) = succeeded(env, h, "VerifyPolicy", "etc-verify")?;
                if b && v {
                    return Ok(Some(()));
                }
                anyhow::bail!("{bs}; {vs}")
            },
        )
        .unwrap_or_else(|e| op.fail(e));
    }
    for (h, mode) in MODES {
        let host = get_json(env, NS, &format!("host/{h}")).unwrap();
        assert_eq!(
            host["status"]["os"]["credentialMode"], mode,
            "{h}: {host:#}"
        );
        assert_eq!(
            condition(&host, "Ready").unwrap()["status"],
            "True",
            "{h}: {host:#}"
        );
    }
    let p = get_json(env, NS, "backuppolicy/etc").unwrap();
    assert_eq!(p["status"]["hostsSucceeded"], 3, "{p:#}");
    assert_eq!(p["status"]["hostsTotal"], 4, "{p:#}");
    // bullseye's systemd 247 has LoadCredential= but not its encrypted form.
    let unit = env
        .ssh_ok(
            "host2",
            "cat /etc/systemd/system/fleetsnap-backup-etc.service",
        )
        .unwrap();
    assert!(unit.contains("LoadCredential="), "{unit}");
    assert!(!unit.contains("LoadCredentialEncrypted="), "{unit}");
    let wide = env
        .kubectl(&["get", "fsh", "-n", NS, "-o", "wide"])
        .unwrap();
    eprintln!("{wide}");
    for needle in ["bullseye", "load-credential", "encrypted", "unsupported"] {
        assert!(
            wide.contains(needle),
            "`kubectl get fsh -o wide` lacks {needle}:\n{wide}"
        );
    }
    step(
        t0,
        "3 hosts backed up and verified; modes as their systemd allows",
    );

    // A Restore on each host with systemd; the restored file is the host's own.
    for (h, _) in MODES {
        let name = format!("{h}-release");
        apply_yaml(
            env,
            NS,
            dir.path(),
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: fleetsnap.io/v1alpha1\nkind: Restore\nmetadata: {{name: {name}}}\nspec:\n  \
                 hostRef: {{name: {h}}}\n  repositoryRef: {{name: minio}}\n  include: [/etc/debian_version]\n  \
                 targetDirectory: /var/tmp/restore-mixed\n"
            ),
        );
    }
    for (h, _) in MODES {
        let name = format!("{h}-release");
        let r = wait::until(&format!("Restore {name}"), Duration::from_secs(300), || {
            let r = get_json(env, NS, &format!("restore/{name}"))?;
            let phase = r["status"]["phase"].as_str().unwrap_or_default();
            Ok(matches!(phase, "Succeeded" | "Failed").then_some(r))
        })
        .unwrap_or_else(|e| op.fail(e));
        assert_eq!(r["status"]["phase"], "Succeeded", "{r:#}");
        let diff = env.ssh(
            h,
            "cmp /etc/debian_version /var/tmp/restore-mixed/etc/debian_version",
            b"",
        );
        match diff {
            Ok(o) if o.status.success() => {}
            other => op.fail(anyhow::anyhow!(
                "{h}: restored debian_version differs: {other:?}"
            )),
        }
    }
    step(t0, "a Restore on each of the 3 hosts matches the original");

    // Stock restic verifies every byte of each repository the fleet wrote.
    kube::set_suspend(env, NS, "backuppolicy/etc", true);
    for (h, _) in MODES {
        let out = restic(env, h, &["check", "--read-data"]).unwrap_or_else(|e| op.fail(e));
        assert!(out.contains("no errors were found"), "{h}: {out}");
    }
    // Nothing was ever written for the refused host.
    if restic(env, "host4", &["cat", "config"]).is_ok() {
        op.fail(anyhow::anyhow!("a repository exists for host4"));
    }
    step(t0, "restic check --read-data passed on 3 repositories");
}

#[test]
fn the_executor_pushed_to_hosts_starts_on_the_oldest_glibc() {
    let env = env();
    let exe = portable_executor();
    env.scp(&exe, "host2", "/tmp/fleetsnap-portable").unwrap();
    let out = env
        .ssh_ok(
            "host2",
            "getconf GNU_LIBC_VERSION; /tmp/fleetsnap-portable --version",
        )
        .unwrap();
    assert!(out.contains("glibc 2.31"), "host2 is not bullseye: {out}");
    assert!(
        out.contains(&format!("fleetsnap {}", env!("CARGO_PKG_VERSION"))),
        "the executor did not start on glibc 2.31: {out}"
    );
}
