//! Host layer against a real SSH + systemd host (e.g. a testbed nspawn container).
//!
//! Built only with `--features host-tests`; then the host is mandatory and a missing
//! variable fails the test by name:
//!   FLEETSNAP_TEST_HOST=127.0.0.1:22401
//!   FLEETSNAP_TEST_HOST_KEY_FILE=/var/tmp/fleetsnap-testbed/img/id_ed25519   (login key)
//!   FLEETSNAP_TEST_KNOWN_HOSTS=/var/tmp/fleetsnap-testbed/img/known_hosts   (pinned host key)
//! The login user is root (override with FLEETSNAP_TEST_USER).
#![cfg(feature = "host-tests")]

use std::path::PathBuf;

use fleetsnap_operator::host::HostError;
use fleetsnap_operator::host::apply::{reconcile_job, remove_job};
use fleetsnap_operator::host::layout::JobId;
use fleetsnap_operator::host::model::{
    Credentials, ExecutorArtifact, HostTarget, IoSchedulingClass, PolicyKind, PolicySpec,
    SecretBytes,
};
use fleetsnap_operator::host::observe::observe_job;
use fleetsnap_operator::host::plan::{JobInputs, sha256_hex};
use fleetsnap_operator::host::shell::{HostShell, run_ok};
use fleetsnap_operator::host::ssh::{SshHost, SshOptions};

const PASSWORD: &str = "it-password-5b1d0c7e";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("feature host-tests is on but {name} is not set (see operator/tests/host_apply.rs)")
    })
}

fn target() -> HostTarget {
    let hostport = env("FLEETSNAP_TEST_HOST");
    let (address, port) = hostport
        .rsplit_once(':')
        .expect("FLEETSNAP_TEST_HOST must be address:port");
    let key = std::fs::read(env("FLEETSNAP_TEST_HOST_KEY_FILE"))
        .expect("read FLEETSNAP_TEST_HOST_KEY_FILE");
    let known = std::fs::read_to_string(env("FLEETSNAP_TEST_KNOWN_HOSTS"))
        .expect("read FLEETSNAP_TEST_KNOWN_HOSTS");
    // known_hosts line: "<pattern> <type> <base64>"; the pin is type + key.
    let line = known
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .expect("FLEETSNAP_TEST_KNOWN_HOSTS has no entry");
    let fields: Vec<&str> = line.split_whitespace().collect();
    HostTarget {
        name: format!("test-{port}"),
        address: address.to_string(),
        port: port.parse().expect("port"),
        user: std::env::var("FLEETSNAP_TEST_USER").unwrap_or_else(|_| "root".into()),
        host_key: format!("{} {}", fields[1], fields[2]),
        private_key: SecretBytes::new(key),
    }
}

/// Stand-in for the executor: checks that its credential arrived, then writes a run
/// record where the real executor would.
const STAND_IN: &str = r#"#!/bin/sh
set -u
cfg=$3
slug=$(basename "$cfg" .json)
dir=/var/lib/fleetsnap/runs/$slug
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
name=$(date -u +%Y%m%dT%H%M%SZ)
code=0; err=null
if ! [ -s "$CREDENTIALS_DIRECTORY/repository-password" ]; then code=1; err='"no credential"'; fi
printf '{"policy":"%s","kind":"backup","started":"%s","finished":"%s","exit_code":%s,"snapshot_id":"0123abcd","files_new":1,"files_changed":0,"files_unmodified":0,"bytes_added":42,"duration_seconds":0.1,"error":%s}\n' \
  "${slug#backup-}" "$start" "$start" "$code" "$err" > "$dir/$name.json.tmp"
mv "$dir/$name.json.tmp" "$dir/$name.json"
exit $code
"#;

fn artifact(dir: &std::path::Path, version: &str) -> ExecutorArtifact {
    let path: PathBuf = dir.join(format!("fleetsnap-{version}"));
    let body = format!("{STAND_IN}# version {version}\n");
    std::fs::write(&path, &body).unwrap();
    ExecutorArtifact {
        version: version.into(),
        sha256: sha256_hex(body.as_bytes()),
        local_path: path,
    }
}

fn policy(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        kind: PolicyKind::Backup,
        repository: "local:/srv/fleetsnap-it".into(),
        paths: vec!["/etc".into()],
        excludes: vec![],
        exclude_caches: true,
        one_file_system: true,
        stdin_sources: vec![],
        tags: vec!["it".into()],
        host_tag: "it".into(),
        on_calendar: "*-*-* 03:00:00".into(),
        randomized_delay_sec: 60,
        persistent: true,
        nice: Some(10),
        io_scheduling_class: Some(IoSchedulingClass::Idle),
        io_scheduling_priority: Some(7),
        extra_args: vec![],
    }
}

async fn sh_out<S: HostShell>(sh: &S, script: &str, stdin: &[u8]) -> (Option<i32>, String) {
    let out = sh.run(&["sh", "-c", script], stdin).await.unwrap();
    (out.code, out.stdout_text())
}

/// Path, sha256, mtime (ns) and mode of every file the job owns, plus the link target.
async fn snapshot<S: HostShell>(sh: &S, slug: &str) -> String {
    let script = format!(
        "cd / && for f in /etc/systemd/system/fleetsnap-{slug}.* /etc/fleetsnap/{slug}.json \
         /etc/fleetsnap/credstore*/{slug}.* /usr/local/lib/fleetsnap/*/fleetsnap; do \
         printf '%s %s\\n' \"$(stat -c '%n %.9Y %a %U' \"$f\")\" \"$(sha256sum < \"$f\")\"; done; \
         readlink /usr/local/bin/fleetsnap"
    );
    let (code, out) = sh_out(sh, &script, b"").await;
    assert_eq!(code, Some(0), "{out}");
    out
}

#[tokio::test]
async fn apply_is_idempotent_secret_free_and_removable() {
    let target = target();
    let host = SshHost::connect(&target, &SshOptions::default())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let name = "it-apply";
    let job = JobId::new(PolicyKind::Backup, name).unwrap();
    let slug = job.slug();
    // Start from a clean slate in case an earlier run was interrupted.
    remove_job(&host, &job).await.unwrap();

    let (a1, p) = (artifact(tmp.path(), "0.0.1-it"), policy(name));
    let creds = Credentials {
        repository_password: SecretBytes::new(PASSWORD),
        aws: None,
    };
    let inputs = JobInputs {
        artifact: &a1,
        policy: &p,
        credentials: &creds,
    };
    let (plan, report) = reconcile_job(&host, &inputs).await.unwrap();
    assert!(report.changed() && !plan.is_noop());

    // Units present and valid, timer enabled and running.
    let service = format!("/etc/systemd/system/fleetsnap-{slug}.service");
    let timer = format!("/etc/systemd/system/fleetsnap-{slug}.timer");
    run_ok(
        &host,
        "verify",
        &["systemd-analyze", "verify", &service, &timer],
        b"",
    )
    .await
    .unwrap();
    let (_, state) = sh_out(&host, &format!("systemctl is-enabled fleetsnap-{slug}.timer; systemctl is-active fleetsnap-{slug}.timer"), b"").await;
    assert_eq!(state, "enabled\nactive\n");

    // Credentials: root-only, encrypted on this host if it can, never readable as plain text
    // in units or config.
    let (_, meta) = sh_out(
        &host,
        &format!("stat -c '%a %U %G' /etc/fleetsnap/credstore*/{slug}.repository-password"),
        b"",
    )
    .await;
    assert_eq!(meta, "600 root root\n");
    // The secret only ever travels on stdin (grep -f -), so these greps cannot leak it.
    let files = format!(
        "/etc/systemd/system/fleetsnap-{slug}.service /etc/systemd/system/fleetsnap-{slug}.timer /etc/fleetsnap/{slug}.json"
    );
    let (code, hits) = sh_out(
        &host,
        &format!("grep -l -F -f - {files}"),
        PASSWORD.as_bytes(),
    )
    .await;
    assert_eq!(code, Some(1), "secret in: {hits}");
    let (code, hits) = sh_out(&host, &format!("systemctl cat fleetsnap-{slug}.service fleetsnap-{slug}.timer > /tmp/it-cat && grep -F -f - /tmp/it-cat; r=$?; rm -f /tmp/it-cat; exit $r"), PASSWORD.as_bytes()).await;
    assert_eq!(code, Some(1), "secret in systemctl cat: {hits}");

    // A run: the stand-in sees its credential through $CREDENTIALS_DIRECTORY and writes a
    // record under ProtectSystem=strict. While it runs, no process has the secret in argv.
    run_ok(
        &host,
        "run service",
        &["systemctl", "start", &format!("fleetsnap-{slug}.service")],
        b"",
    )
    .await
    .unwrap();
    let (code, leaked) = sh_out(
        &host,
        "grep -l -a -F -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null",
        PASSWORD.as_bytes(),
    )
    .await;
    assert_eq!(code, Some(1), "secret found in: {leaked}");
    let obs = observe_job(&host, &job, 10).await.unwrap();
    let last = obs.last_run().expect("a run record");
    assert_eq!(last.exit_code, 0, "{last:?}");
    assert_eq!(last.bytes_added, 42);
    let t = obs.timer.expect("timer state");
    assert_eq!(
        (t.active_state.as_str(), t.unit_file_state.as_str()),
        ("active", "enabled")
    );
    assert!(t.next_elapse.is_some(), "{t:?}");

    // Second apply of the same inputs: no action, identical hashes and mtimes.
    let before = snapshot(&host, &slug).await;
    let (plan2, report2) = reconcile_job(&host, &inputs).await.unwrap();
    assert!(plan2.is_noop(), "{:?}", plan2.actions);
    assert!(!report2.changed());
    assert_eq!(snapshot(&host, &slug).await, before);

    // A schedule systemd rejects: verification fails on the host and the installed units,
    // config and credentials stay exactly as they were.
    let mut bad = p.clone();
    bad.on_calendar = "not a calendar".into();
    let bad_inputs = JobInputs {
        artifact: &a1,
        policy: &bad,
        credentials: &creds,
    };
    let err = reconcile_job(&host, &bad_inputs).await.unwrap_err();
    assert!(matches!(err, HostError::VerifyFailed { .. }), "{err}");
    assert!(err.to_string().contains("calendar"), "{err}");
    assert_eq!(snapshot(&host, &slug).await, before);
    let (_, staged) = sh_out(&host, "ls -A /etc/fleetsnap/.staging", b"").await;
    assert_eq!(staged, "", "staging left behind");

    // Executor upgrade: new versioned binary, link switched, units untouched.
    let a2 = artifact(tmp.path(), "0.0.2-it");
    let inputs2 = JobInputs {
        artifact: &a2,
        policy: &p,
        credentials: &creds,
    };
    let (_, up) = reconcile_job(&host, &inputs2).await.unwrap();
    assert!(
        up.actions
            .iter()
            .any(|a| a.starts_with("install executor 0.0.2-it")),
        "{up:?}"
    );
    assert!(!up.actions.iter().any(|a| a.contains("units")), "{up:?}");
    let (_, link) = sh_out(&host, "readlink /usr/local/bin/fleetsnap", b"").await;
    assert_eq!(link.trim(), "/usr/local/lib/fleetsnap/0.0.2-it/fleetsnap");

    // Removal: units, config and credentials gone; run records (history) stay.
    let (_, rm) = remove_job(&host, &job).await.unwrap();
    assert!(rm.changed());
    let (_, left) = sh_out(&host, &format!("ls /etc/systemd/system/fleetsnap-{slug}.* /etc/fleetsnap/{slug}.json /etc/fleetsnap/credstore*/{slug}.* 2>/dev/null; systemctl is-enabled fleetsnap-{slug}.timer 2>/dev/null; ls /var/lib/fleetsnap/runs/{slug} | wc -l"), b"").await;
    let lines: Vec<&str> = left.lines().collect();
    assert!(
        lines.len() <= 2 && lines.last() != Some(&"0"),
        "left over: {left}"
    );
    assert!(!left.contains("/etc/"), "left over: {left}");
    let (_, again) = remove_job(&host, &job).await.unwrap();
    assert!(!again.changed(), "{again:?}");
    host.close().await.unwrap();
}

#[tokio::test]
async fn wrong_host_key_is_refused_before_anything_runs() {
    let good = target();
    let mut bad = good.clone();
    // A syntactically valid ed25519 key that is not the host's.
    bad.host_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBpbm5lZC1rZXktdGhhdC1pcy1ub3QtdGhlLWhvc3Q".into();
    let err = SshHost::connect(&bad, &SshOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::HostKeyMismatch { .. }), "{err}");
    assert_eq!(err.reason(), "HostKeyMismatch");

    // Wrong login key: a distinct error.
    let mut wrong_user_key = good.clone();
    wrong_user_key.private_key = SecretBytes::new(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    let err = SshHost::connect(&wrong_user_key, &SshOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::AuthFailed { .. }), "{err}");

    // Unreachable port.
    let mut down = good.clone();
    down.port = 1;
    let err = SshHost::connect(&down, &SshOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Unreachable { .. }), "{err}");
}
