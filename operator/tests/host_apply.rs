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
use fleetsnap_operator::host::apply::{apply_plan, gather_facts, reconcile_job, remove_job};
use fleetsnap_operator::host::layout::JobId;
use fleetsnap_operator::host::model::{
    Credentials, ExecutorArtifact, HostTarget, IoSchedulingClass, PolicyKind, PolicySpec,
    SecretBytes,
};
use fleetsnap_operator::host::observe::observe_job;
use fleetsnap_operator::host::plan::{self, JobInputs, sha256_hex};
use fleetsnap_operator::host::shell::{HostShell, run_ok};
use fleetsnap_operator::host::ssh::{SshHost, SshOptions};

const PASSWORD: &str = "it-password-5b1d0c7e";

/// The tests share one host, and the operator never applies two jobs to a host at once (the
/// debris sweep relies on that): neither may they.
static ONE_HOST_USER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        cpu_quota_percent: Some(50),
        max_runtime_sec: Some(43_200),
        lock_wait_sec: 3600,
        extra_args: vec![],
        credential_process: vec![],
    }
}

async fn connect() -> SshHost {
    SshHost::connect(&target(), &SshOptions::default())
        .await
        .unwrap()
}

fn credentials() -> Credentials {
    Credentials {
        repository_password: SecretBytes::new(PASSWORD),
        aws: None,
        rest: None,
        expires: None,
    }
}

async fn rm_rf<S: HostShell>(sh: &S, paths: &[&str]) {
    let mut argv = vec!["rm", "-rf", "--"];
    argv.extend_from_slice(paths);
    run_ok(sh, "remove test leftovers", &argv, b"")
        .await
        .unwrap();
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
    let _one = ONE_HOST_USER.lock().await;
    let host = connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let name = "it-apply";
    let job = JobId::new(PolicyKind::Backup, name).unwrap();
    let slug = job.slug();
    // Start from a clean slate in case an earlier run used this host.
    remove_job(&host, &job).await.unwrap();
    rm_rf(
        &host,
        &[
            "/usr/local/lib/fleetsnap/0.0.1-it",
            "/usr/local/lib/fleetsnap/0.0.2-it",
        ],
    )
    .await;

    let (a1, p) = (artifact(tmp.path(), "0.0.1-it"), policy(name));
    let creds = credentials();
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
    // The policy's CPU quota (50 %) is what systemd loaded, not just text in the file.
    let (_, quota) = sh_out(
        &host,
        &format!("systemctl show -p CPUQuotaPerSecUSec fleetsnap-{slug}.service"),
        b"",
    )
    .await;
    assert_eq!(quota, "CPUQuotaPerSecUSec=500ms\n");

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

/// The executor (tens of MiB) is hashed when it changed, not on every gather; a change that
/// keeps its size and mtime is still seen.
#[tokio::test]
async fn the_executor_is_hashed_once_until_it_changes() {
    let _one = ONE_HOST_USER.lock().await;
    let host = connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let name = "it-hash";
    let job = JobId::new(PolicyKind::Backup, name).unwrap();
    remove_job(&host, &job).await.unwrap();
    rm_rf(&host, &["/usr/local/lib/fleetsnap/0.0.3-it"]).await;
    let (a, p) = (artifact(tmp.path(), "0.0.3-it"), policy(name));
    let creds = credentials();
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &creds,
    };
    reconcile_job(&host, &inputs).await.unwrap();
    // Every sha256sum the gather runs is logged (/usr/local/sbin comes first in root's PATH).
    let wrapper = "#!/bin/sh\nprintf '%s\\n' \"$*\" >> /run/it-sha256sum.log\nexec /usr/bin/sha256sum \"$@\"\n";
    let (code, out) = sh_out(
        &host,
        "rm -f /run/it-sha256sum.log; cat > /usr/local/sbin/sha256sum && chmod 755 /usr/local/sbin/sha256sum",
        wrapper.as_bytes(),
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let exe = fleetsnap_operator::host::layout::executor_path(&a.version);
    let hashed = || async {
        let (_, log) = sh_out(&host, "cat /run/it-sha256sum.log 2>/dev/null", b"").await;
        log.lines().filter(|l| l.contains(&exe)).count()
    };
    let (_, probe) = sh_out(
        &host,
        "sha256sum /etc/hostname >/dev/null; cat /run/it-sha256sum.log",
        b"",
    )
    .await;
    assert!(
        probe.contains("/etc/hostname"),
        "the sha256sum wrapper logs nothing: {probe:?}"
    );
    let query = plan::fact_query(&job, Some(&a));
    for _ in 0..3 {
        let f = gather_facts(&host, &query).await.unwrap();
        assert_eq!(f.files[&exe].sha256, a.sha256);
    }
    let steady = hashed().await;
    // Same size, same mtime, one byte different.
    let (code, out) = sh_out(
        &host,
        &format!("cp -p {exe} /run/it-exe.orig && printf X | dd of={exe} bs=1 seek=3 conv=notrunc status=none && touch -r /run/it-exe.orig {exe}"),
        b"",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let after = gather_facts(&host, &query).await.unwrap();
    let (_, _) = sh_out(
        &host,
        "rm -f /usr/local/sbin/sha256sum /run/it-sha256sum.log /run/it-exe.orig",
        b"",
    )
    .await;
    remove_job(&host, &job).await.unwrap();
    rm_rf(&host, &["/usr/local/lib/fleetsnap/0.0.3-it"]).await;
    assert_ne!(
        after.files[&exe].sha256, a.sha256,
        "an executor changed in place (size and mtime kept) was not noticed"
    );
    assert!(
        steady <= 1,
        "three gathers of an unchanged host hashed the executor {steady} times"
    );
}

/// A master whose owner died without closing it (the operator SIGKILLed) must not live for
/// ever: every restart would otherwise add one `ssh` process per host.
#[tokio::test]
async fn a_master_nobody_closes_exits_once_idle() {
    let dir = tempfile::Builder::new()
        .prefix("fs-persist-")
        .tempdir_in("/tmp")
        .unwrap();
    let opts = SshOptions {
        control_dir: dir.path().to_path_buf(),
        control_persist: std::time::Duration::from_secs(2),
        ..SshOptions::default()
    };
    let sh = SshHost::connect(&target(), &opts).await.unwrap();
    run_ok(&sh, "true", &["true"], b"").await.unwrap();
    let masters = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n == "master"))
            .collect()
    };
    assert_eq!(masters().len(), 1, "no control socket in {:?}", dir.path());
    // What a SIGKILLed operator leaves: nobody runs the Drop that would close it.
    std::mem::forget(sh);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !masters().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned SSH master was still running 15 s later (ControlPersist 2 s)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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

/// What a converged job looks like, independent of when it was written: path, mode, owner
/// and content hash of every file the job owns (credentials hashed after decryption, since
/// `systemd-creds encrypt` is randomised), the executor link, the timer's state, and any
/// temp or staged file an interrupted write could have left.
async fn converged_state<S: HostShell>(sh: &S, slug: &str) -> String {
    let script = format!(
        "cd / && for f in /etc/systemd/system/fleetsnap-{slug}.* /etc/fleetsnap/{slug}.json \
         /usr/local/lib/fleetsnap/*/fleetsnap; do \
         printf '%s %s\\n' \"$(stat -c '%n %a %U' \"$f\")\" \"$(sha256sum < \"$f\")\"; done; \
         for f in /etc/fleetsnap/credstore*/{slug}.*; do \
         case $f in *.encrypted/*) h=$(systemd-creds decrypt --name=\"${{f##*/{slug}.}}\" \"$f\" - | sha256sum);; \
         *) h=$(sha256sum < \"$f\");; esac; printf '%s %s\\n' \"$(stat -c '%n %a %U' \"$f\")\" \"$h\"; done; \
         readlink /usr/local/bin/fleetsnap; \
         systemctl is-enabled fleetsnap-{slug}.timer; systemctl is-active fleetsnap-{slug}.timer; \
         echo debris:; find /etc/systemd/system /etc/fleetsnap /usr/local/bin /usr/local/lib/fleetsnap -maxdepth 2 \
         \\( -name '*fleetsnap-tmp' -o -name '*.fleetsnap-new' -o -name '.fleetsnap.upload' \\) -print; \
         ls -A /etc/fleetsnap/.staging"
    );
    let (code, out) = sh_out(sh, &script, b"").await;
    assert_eq!(code, Some(0), "{out}");
    out
}

/// The operator can die between any two host actions (SIGKILL, lost leadership, a dropped
/// connection) and in the middle of one. Whatever was left, the next reconcile must reach
/// exactly the state an uninterrupted one reaches, and a further one must change nothing.
#[tokio::test]
async fn interrupted_apply_converges_from_every_point() {
    let _one = ONE_HOST_USER.lock().await;
    let host = connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let name = "it-kill";
    let version = "0.0.9-kill";
    let job = JobId::new(PolicyKind::Backup, name).unwrap();
    let slug = job.slug();
    let (art, p) = (artifact(tmp.path(), version), policy(name));
    let creds = credentials();
    let inputs = JobInputs {
        artifact: &art,
        policy: &p,
        credentials: &creds,
    };
    // A clean slate, as on a host never touched: no units, no config or credential
    // directories, no executor, no link (so every plan creates all of them).
    let clean = || async {
        remove_job(&host, &job).await.unwrap();
        rm_rf(
            &host,
            &[
                "/etc/fleetsnap",
                "/usr/local/lib/fleetsnap",
                "/usr/local/bin/fleetsnap",
            ],
        )
        .await;
    };

    clean().await;
    let (full, _) = reconcile_job(&host, &inputs).await.unwrap();
    let reference = converged_state(&host, &slug).await;
    assert!(
        reference.contains("enabled\nactive\ndebris:\n"),
        "{reference}"
    );
    assert!(reference.ends_with("debris:\n"), "{reference}");
    assert!(full.actions.len() >= 5, "{:?}", full.actions);
    // The clean slate keeps run-record and cache directories (history is never removed), so
    // on a host's very first install the reference plan also created those: count the steps
    // from the plan every iteration below starts with.
    clean().await;
    let facts = gather_facts(&host, &plan::fact_query(&job, Some(&art)))
        .await
        .unwrap();
    let steps = plan::plan_job(&inputs, &facts).unwrap().actions.len();
    assert!(steps >= 5 && steps <= full.actions.len(), "{steps}");
    eprintln!("a fresh install is {steps} host actions; killing after each");

    for k in 0..steps {
        clean().await;
        let facts = gather_facts(&host, &plan::fact_query(&job, Some(&art)))
            .await
            .unwrap();
        let mut partial = plan::plan_job(&inputs, &facts).unwrap();
        assert_eq!(partial.actions.len(), steps, "{:?}", partial.actions);
        let killed_in = partial.actions[k].label();
        partial.actions.truncate(k);
        apply_plan(&host, &partial).await.unwrap();
        // What SIGKILL in the middle of action k can leave: a partial upload, a temp file next
        // to its target, a staged unit, a half-made link (scripts' EXIT traps do not run on
        // SIGKILL).
        run_ok(
            &host,
            "leave debris",
            &[
                "sh",
                "-c",
                &format!(
                    "set -e; mkdir -p /usr/local/lib/fleetsnap/{version} /etc/fleetsnap/.staging; \
                     head -c 1000 /dev/urandom > /usr/local/lib/fleetsnap/{version}/.fleetsnap.upload; \
                     echo partial > /etc/fleetsnap/.{slug}.json.fleetsnap-tmp; \
                     mkdir -p /etc/fleetsnap/credstore.encrypted; \
                     echo half-a-secret > /etc/fleetsnap/credstore.encrypted/.{slug}.repository-password.fleetsnap-tmp; \
                     echo partial > /etc/fleetsnap/.staging/.fleetsnap-{slug}.timer.fleetsnap-tmp; \
                     echo '[Unit]' > /etc/fleetsnap/.staging/fleetsnap-{slug}.timer; \
                     ln -sfn /nonexistent /usr/local/bin/fleetsnap.fleetsnap-new"
                ),
            ],
            b"",
        )
        .await
        .unwrap();
        let (_, report) = reconcile_job(&host, &inputs)
            .await
            .unwrap_or_else(|e| panic!("reconcile after a kill in {killed_in:?}: {e}"));
        assert!(report.changed(), "{report:?}");
        assert_eq!(
            converged_state(&host, &slug).await,
            reference,
            "after a kill in step {k} ({killed_in})"
        );
        let (again, _) = reconcile_job(&host, &inputs).await.unwrap();
        assert!(
            again.is_noop(),
            "not converged after a kill in step {k} ({killed_in}): {:?}",
            again.actions
        );
    }
    clean().await;
    host.close().await.unwrap();
}

/// Bounded input on a real host: a 5 MiB run record (megabytes of error text) next to a
/// normal one is reported by name and never transferred whole; a command that floods stdout
/// fails with `HostOutputTooLarge` without the operator buffering it or waiting for its end.
#[tokio::test]
async fn oversized_run_record_and_output_flood_are_bounded() {
    let _one = ONE_HOST_USER.lock().await;
    let sh = connect().await;
    let job = JobId::new(PolicyKind::Backup, "bounds").unwrap();
    let dir = job.runs_dir();
    rm_rf(&sh, &[&dir]).await;
    let script = format!(
        "set -e; mkdir -p {dir}; cd {dir}; \
         printf '{{\"policy\":\"bounds\",\"kind\":\"backup\",\"started\":\"2026-01-01T00:00:00Z\",\"finished\":\"2026-01-01T00:00:01Z\",\"exit_code\":0,\"snapshot_id\":\"ab\",\"duration_seconds\":1.0,\"error\":null}}' > 20260101T000000Z.json; \
         {{ printf '{{\"policy\":\"bounds\",\"kind\":\"backup\",\"started\":\"2026-01-02T00:00:00Z\",\"finished\":\"2026-01-02T00:00:01Z\",\"exit_code\":1,\"duration_seconds\":1.0,\"error\":\"'; \
            head -c 5242880 /dev/zero | tr '\\000' x; printf '\"}}'; }} > 20260102T000000Z.json"
    );
    let (code, out) = sh_out(&sh, &script, b"").await;
    assert_eq!(code, Some(0), "{out}");
    let t = std::time::Instant::now();
    let obs = observe_job(&sh, &job, 50).await.unwrap();
    eprintln!("observe with a 5 MiB record: {:?}", t.elapsed());
    assert_eq!(obs.records.len(), 1, "the normal record still counts");
    assert_eq!(obs.unreadable.len(), 1);
    assert_eq!(obs.unreadable[0].0, "20260102T000000Z.json");
    assert!(
        obs.unreadable[0].1.contains("64 KiB"),
        "{:?}",
        obs.unreadable
    );
    assert!(obs.newest_unreadable().is_some());
    rm_rf(&sh, &[&dir]).await;

    // 200 MiB on stdout against the default 1 MiB limit.
    let t = std::time::Instant::now();
    let e = run_ok(
        &sh,
        "flood",
        &["sh", "-c", "head -c 209715200 /dev/zero"],
        b"",
    )
    .await
    .expect_err("a flood must be refused");
    eprintln!("200 MiB flood refused after {:?}: {e}", t.elapsed());
    assert!(matches!(e, HostError::OutputTooLarge { .. }), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    // The connection is still good for the next command.
    let (code, out) = sh_out(&sh, "echo still-here", b"").await;
    assert_eq!((code, out.trim()), (Some(0), "still-here"));
}

/// A run that hangs is ended by systemd at the policy's maxRuntime (issue 17, S8): the
/// service is `Type=oneshot`, for which `TimeoutStartSec=` is the bound that applies. The
/// stand-in executor hangs forever; `systemctl start` must come back failed, with result
/// `timeout`, within seconds of the 2 s limit, and leave no process behind.
#[tokio::test]
async fn a_hung_run_is_stopped_at_max_runtime() {
    let _one = ONE_HOST_USER.lock().await;
    let host = connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let name = "it-hang";
    let version = "0.0.1-hang";
    let job = JobId::new(PolicyKind::Backup, name).unwrap();
    let slug = job.slug();
    remove_job(&host, &job).await.unwrap();
    rm_rf(&host, &[&format!("/usr/local/lib/fleetsnap/{version}")]).await;

    // `exec` so that the hanging process is the service's main process itself.
    let body = "#!/bin/sh\nexec sleep 3600\n";
    let path = tmp.path().join("fleetsnap-hang");
    std::fs::write(&path, body).unwrap();
    let a = ExecutorArtifact {
        version: version.into(),
        sha256: sha256_hex(body.as_bytes()),
        local_path: path,
    };
    let mut p = policy(name);
    p.max_runtime_sec = Some(2);
    let creds = credentials();
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &creds,
    };
    reconcile_job(&host, &inputs).await.unwrap();
    let unit = format!("fleetsnap-{slug}.service");
    let (_, props) = sh_out(
        &host,
        &format!("systemctl show -p TimeoutStartUSec {unit}"),
        b"",
    )
    .await;
    assert!(props.contains("TimeoutStartUSec=2s"), "{props}");

    let t0 = std::time::Instant::now();
    let (code, out) = sh_out(&host, &format!("systemctl start {unit} 2>&1"), b"").await;
    let took = t0.elapsed();
    assert_ne!(code, Some(0), "a hung run must fail: {out}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "systemctl start took {took:?}: the limit did not stop the run"
    );
    let (_, result) = sh_out(
        &host,
        &format!("systemctl show -p Result -p ActiveState {unit}"),
        b"",
    )
    .await;
    assert!(result.contains("Result=timeout"), "{result}");
    let (_, procs) = sh_out(
        &host,
        &format!("systemctl show -p MainPID {unit}; pgrep -f '[s]leep 3600' || true"),
        b"",
    )
    .await;
    assert_eq!(procs.trim(), "MainPID=0", "processes left: {procs}");
    eprintln!(
        "hung run stopped after {took:?}: {}",
        result.replace('\n', " ")
    );

    remove_job(&host, &job).await.unwrap();
    rm_rf(&host, &[&format!("/usr/local/lib/fleetsnap/{version}")]).await;
    host.close().await.unwrap();
}
