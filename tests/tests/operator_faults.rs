//! The operator under faults (issue 17, "The operator"): the real operator binary against a
//! real API server, etcd and systemd hosts, while its own clock, its API server and its own
//! process fail under it.
//!
//! - two replicas whose clocks disagree by 30 s (faketime): the standby never takes over a
//!   lease the leader keeps renewing, and takes over soon after the leader dies;
//! - kube-apiserver killed in the middle of a reconcile of three hosts, then etcd for 30 s:
//!   the operator reconnects, converges within 60 s, and repeats no completed host action;
//! - SIGKILL at each named failpoint inside a host session (a `failpoints` build): every
//!   point converges on restart to exactly the state of a clean install.
//!
//! One environment (API server, MinIO, three hosts) serves the whole file. Tests that change
//! hosts take [`exclusive`]; the leader test touches no host and runs beside them.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use fleetsnap_tests::kube::{self, apply_yaml, get_json, host_yaml};
use fleetsnap_tests::operator::{Launch, Variant};
use fleetsnap_tests::{Options, TestEnv, feature_bin, step, wait, workspace_bin};

const PASSWORD: &str = "opfaults-repository-password-41c9";
const BUCKET: &str = "fleetsnap-opfaults";
/// Every namespace names its policy the same, so the host-side job (and its files) is the
/// same one and states from different namespaces compare equal.
const POLICY: &str = "opf";
const SLUG: &str = "backup-opf";
const LEASE: &str = "fleetsnap-operator";
/// What an armed operator prints before its SIGKILL (src/failpoint.rs).
const FAILPOINT_MARKER: &str = "fleetsnap failpoint reached: ";
const FAILPOINTS: [&str; 4] = [
    "after-upload",
    "before-link-switch",
    "before-daemon-reload",
    "before-status-write",
];

fn env() -> &'static TestEnv {
    let env = TestEnv::shared(Options {
        hosts: 3,
        ..Options::default()
    });
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        kube::install_crds(env);
        env.mc(&["mb", "--ignore-existing", &format!("testenv/{BUCKET}")])
            .unwrap();
    });
    env
}

/// Tests that install on or wipe the hosts run one at a time.
static HOSTS: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    HOSTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stripped copy of the debug executor, shared by every operator of the file.
fn executor(env: &TestEnv) -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let built = workspace_bin("fleetsnap").unwrap();
        let stripped = env.dir().join("fleetsnap-stripped");
        let ok = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&built)
            .status()
            .is_ok_and(|s| s.success());
        if ok { stripped } else { built }
    })
    .clone()
}

fn launch(env: &TestEnv, ns: &str) -> Launch {
    Launch {
        executor: executor(env),
        host_timeout: "60s".into(),
        maintenance_s3_endpoint: None,
        ..Launch::admin(env, ns)
    }
}

/// Namespace `ns` with the usual Secrets, a BackupRepository on MinIO, a Host for each of
/// `hosts` and the policy [`POLICY`] on all of them. Its schedule never fires during a test
/// (the timers are installed, enabled and waiting), so host state changes only by the
/// operator's hand.
fn world(env: &TestEnv, ns: &str, hosts: &[&str], dir: &Path) {
    kube::create_namespace(env, ns);
    kube::base_secrets(env, ns, dir, PASSWORD, "minio");
    let mut yaml = String::new();
    for h in hosts {
        yaml.push_str(&host_yaml(
            h,
            "group: opf",
            env.ssh_port(h),
            env.var("HOST_KEY"),
        ));
    }
    yaml.push_str(&kube::s3_repository_yaml(env, BUCKET));
    yaml.push_str(&policy_yaml("/etc", NEVER));
    apply_yaml(env, ns, dir, "world.yaml", &yaml);
}

/// Calendars that never fire while a test runs (but are valid and installed).
const NEVER: &str = "2099-01-01 00:00:00";
const NEVER_EITHER: &str = "2098-01-01 00:00:00";

fn policy_yaml(path: &str, calendar: &str) -> String {
    format!(
        r#"---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {{name: {POLICY}}}
spec:
  hostSelector: {{matchLabels: {{group: opf}}}}
  repositoryRef: {{name: minio}}
  paths: [{path}]
  schedule: {{onCalendar: "{calendar}", persistent: false}}
"#
    )
}

/// Take everything fleetsnap ever put on `host` off it: as on a machine never touched.
fn wipe(env: &TestEnv, host: &str) {
    env.ssh_ok(
        host,
        &format!(
            "systemctl disable --now fleetsnap-{SLUG}.timer >/dev/null 2>&1; \
             systemctl stop fleetsnap-{SLUG}.service >/dev/null 2>&1; \
             rm -f /etc/systemd/system/fleetsnap-*; systemctl daemon-reload; \
             rm -rf /etc/fleetsnap /usr/local/lib/fleetsnap /usr/local/bin/fleetsnap \
             /usr/local/bin/fleetsnap.fleetsnap-new /var/lib/fleetsnap /run/fleetsnap-restore.*"
        ),
    )
    .unwrap();
}

/// Everything the job owns on `host`, independent of when it was written: path, mode, owner
/// and content hash of every unit, config, credential (hashed after decryption, since
/// `systemd-creds encrypt` is randomised) and executor, the executor link, the timer's
/// state, and any temp, staged or upload file an interrupted write could leave behind.
fn converged_state(env: &TestEnv, host: &str) -> Result<String> {
    env.ssh_ok(
        host,
        &format!(
            "cd / && for f in /etc/systemd/system/fleetsnap-* /etc/fleetsnap/*.json \
             /usr/local/lib/fleetsnap/*/fleetsnap; do [ -e \"$f\" ] || continue; \
             printf '%s %s\\n' \"$(stat -c '%n %a %U' \"$f\")\" \"$(sha256sum < \"$f\")\"; done; \
             for f in /etc/fleetsnap/credstore*/*; do [ -e \"$f\" ] || continue; \
             case $f in *.encrypted/*) h=$(systemd-creds decrypt --name=\"${{f##*/{SLUG}.}}\" \"$f\" - | sha256sum);; \
             *) h=$(sha256sum < \"$f\");; esac; printf '%s %s\\n' \"$(stat -c '%n %a %U' \"$f\")\" \"$h\"; done; \
             echo link: $(readlink /usr/local/bin/fleetsnap); \
             echo timer: $(systemctl is-enabled fleetsnap-{SLUG}.timer) $(systemctl is-active fleetsnap-{SLUG}.timer); \
             echo loaded: $(systemctl show -p NeedDaemonReload --value fleetsnap-{SLUG}.timer fleetsnap-{SLUG}.service); \
             echo debris:; find /etc/systemd/system /etc/fleetsnap /usr/local/bin /usr/local/lib/fleetsnap /run -maxdepth 3 \
             \\( -name '*fleetsnap-tmp' -o -name '*.fleetsnap-new' -o -name '.fleetsnap.upload' \
             -o -name 'fleetsnap-restore.*' \\) -print 2>/dev/null; \
             ls -A /etc/fleetsnap/.staging 2>/dev/null; true"
        ),
    )
}

/// A clean, complete install: the timer enabled and waiting, systemd's view current, and
/// no debris.
fn is_complete(state: &str) -> bool {
    state.contains("\ntimer: enabled active\nloaded: no no\ndebris:\n")
        && state.ends_with("debris:\n")
        && state.contains("link: /usr/local/lib/fleetsnap/")
}

fn lease_holder(env: &TestEnv, ns: &str) -> Result<String> {
    env.kubectl(&[
        "get",
        "lease",
        "-n",
        ns,
        LEASE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

fn lease_renew_time(env: &TestEnv, ns: &str) -> Result<String> {
    env.kubectl(&[
        "get",
        "lease",
        "-n",
        ns,
        LEASE,
        "-o",
        "jsonpath={.spec.renewTime}",
    ])
}

/// The policy counts every one of `hosts`, none failing, and each Host has the policy's
/// entry (its per-host state).
fn policy_converged(env: &TestEnv, ns: &str, hosts: &[&str]) -> Result<bool> {
    let p = get_json(env, ns, &format!("backuppolicy/{POLICY}"))?;
    let s = &p["status"];
    let mut entries = true;
    for h in hosts {
        let host = get_json(env, ns, &format!("host/{h}"))?;
        entries &= fleetsnap_tests::kube::policy_entry(&host, "BackupPolicy", POLICY).is_some();
    }
    Ok(s["hostsTotal"] == hosts.len() && s["hostsFailing"] == 0 && entries)
}

/// Completed host actions in an operator log, by `host_action{...}` span (host, job and
/// action): every line the operator logs after an action succeeded on a host.
fn completed_actions(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("host action done")) {
        if let Some(start) = line.find("host_action{") {
            let rest = &line[start..];
            let span = &rest[..rest.find('}').map_or(rest.len(), |i| i + 1)];
            *out.entry(span.to_string()).or_default() += 1;
        }
    }
    out
}

fn repeated(actions: &BTreeMap<String, usize>) -> Vec<(&String, &usize)> {
    actions.iter().filter(|(_, n)| **n > 1).collect()
}

/// Two replicas, the standby's clock 30 s ahead of the leader's (libfaketime). The old
/// decision compared the leader's `renewTime` with the standby's clock and took over at
/// once; the standby must stand by for as long as the leader renews (here: four renewals,
/// more than a lease duration), and take over within a lease duration plus a retry once
/// the leader is SIGKILLed.
#[test]
fn skewed_standby_never_takes_a_renewed_lease() {
    let t0 = Instant::now();
    let env = env();
    let ns = "opf-leader";
    let dir = tempfile::tempdir().unwrap();
    kube::create_namespace(env, ns);
    let launch = launch(env, ns);
    let mut leader = launch.start(env, "opf-leader-a");
    wait::until("leader holds the lease", Duration::from_secs(60), || {
        Ok((lease_holder(env, ns)? == "opf-leader-a").then_some(()))
    })
    .unwrap_or_else(|e| leader.fail(e));
    let standby = launch.start_variant(env, "opf-leader-b", &Variant::clock("+30s"));
    wait::until("standby waiting", Duration::from_secs(30), || {
        Ok(standby
            .log_text()
            .contains("waiting for leadership")
            .then_some(()))
    })
    .unwrap_or_else(|e| standby.fail(e));
    // The skew is real: the standby's own log lines are stamped 30 s into our future.
    let stamp = standby
        .log_text()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let logged: chrono::DateTime<chrono::Utc> = stamp.parse().unwrap();
    let ahead = (logged - chrono::Utc::now()).num_seconds();
    assert!((25..=35).contains(&ahead), "standby clock {ahead}s ahead");
    step(t0, &format!("standby up, its clock {ahead}s ahead"));

    let mut renewals = Vec::new();
    let mut last = lease_renew_time(env, ns).unwrap();
    wait::until("four lease renewals", Duration::from_secs(60), || {
        let holder = lease_holder(env, ns)?;
        assert_eq!(
            holder,
            "opf-leader-a",
            "the skewed standby took a lease the leader renews:\n{}",
            standby.tail()
        );
        let now = lease_renew_time(env, ns)?;
        if now != last {
            renewals.push(now.clone());
            last = now;
        }
        Ok((renewals.len() >= 4).then_some(()))
    })
    .unwrap_or_else(|e| leader.fail(e));
    let log = standby.log_text();
    assert!(
        !log.contains("acquired leadership") && !log.contains("controllers running"),
        "the standby acted while the leader renewed:\n{log}"
    );
    step(t0, "four renewals, standby stood by");

    leader.kill();
    let killed = Instant::now();
    wait::until("standby took the lease", Duration::from_secs(40), || {
        Ok((lease_holder(env, ns)? == "opf-leader-b").then_some(()))
    })
    .unwrap_or_else(|e| standby.fail(e));
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(25),
        "takeover after {took:?}: more than a lease duration (15 s) plus a retry (5 s)"
    );
    step(
        t0,
        &format!("leader killed; standby took over in {took:.1?}"),
    );

    // Stopped as Kubernetes stops a pod (SIGTERM), the leader gives the lease up.
    let mut standby = standby;
    standby.terminate();
    let status = standby
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| standby.fail(e));
    assert!(status.success(), "{status:?}\n{}", standby.tail());
    assert_eq!(
        lease_holder(env, ns).unwrap(),
        "",
        "lease not released on SIGTERM"
    );
    step(t0, "SIGTERM: exited and released the lease");
    drop(dir);
}

/// kube-apiserver is SIGKILLed as soon as the first host action of a three-host reconcile
/// completes, and kept down long enough (20 s) for the leader to step down; then it starts
/// again on the same port and etcd. The operator must reconnect, take the lease back,
/// converge every host within 60 s of the API server's return, and never repeat a host
/// action that had completed. Then etcd stops for 30 s right after a spec change, with the
/// same expectations.
#[test]
fn apiserver_and_etcd_restarts_mid_reconcile_converge_without_repeating_work() {
    let _hosts = exclusive();
    let t0 = Instant::now();
    let env = env();
    let ns = "opf-api";
    let hosts = ["host1", "host2", "host3"];
    let dir = tempfile::tempdir().unwrap();
    for h in hosts {
        wipe(env, h);
    }
    world(env, ns, &hosts, dir.path());
    let op = launch(env, ns).start(env, "opf-api");
    wait::until("a first host action", Duration::from_secs(60), || {
        Ok((!completed_actions(&op.log_text()).is_empty()).then_some(()))
    })
    .unwrap_or_else(|e| op.fail(e));
    env.apiserver_stop().unwrap();
    let stopped = Instant::now();
    let done_at_stop = completed_actions(&op.log_text()).values().sum::<usize>();
    step(
        t0,
        &format!("kube-apiserver killed after {done_at_stop} host action(s)"),
    );
    // Without the API server the lease cannot be renewed: the leader must stop host work.
    wait::until("leader steps down", Duration::from_secs(30), || {
        Ok(op.log_text().contains("stepping down").then_some(()))
    })
    .unwrap_or_else(|e| op.fail(e));
    step(
        t0,
        &format!(
            "leader stepped down {:.1?} after the kill",
            stopped.elapsed()
        ),
    );
    // Down for 20 s in all: past the 15 s lease, so leadership really lapses.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed()));
    env.apiserver_start().unwrap();
    let back = Instant::now();
    step(t0, "kube-apiserver back");
    let converged = |what: &str| {
        wait::until(what, Duration::from_secs(60), || {
            if lease_holder(env, ns)? != "opf-api" || !policy_converged(env, ns, &hosts)? {
                return Ok(None);
            }
            for h in hosts {
                if !is_complete(&converged_state(env, h)?) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .unwrap_or_else(|e| op.fail(e));
    };
    converged("converged after the API server restart");
    let took = back.elapsed();
    let actions = completed_actions(&op.log_text());
    assert!(
        repeated(&actions).is_empty(),
        "host actions repeated after the restart: {:?}",
        repeated(&actions)
    );
    let total: usize = actions.values().sum();
    step(
        t0,
        &format!(
            "converged {took:.1?} after the API server returned; {total} host actions, none repeated"
        ),
    );
    let runs = op.log_text().matches("controllers running").count();
    assert_eq!(
        runs, 2,
        "controllers ran at start and again after the restart"
    );

    // etcd: a spec change lands, etcd dies right after, stays down 30 s. Only actions
    // from here on count: the change rewrites the config written at install.
    let offset = op.log_text().len();
    apply_yaml(
        env,
        ns,
        dir.path(),
        "policy2.yaml",
        &policy_yaml("/etc/systemd", NEVER),
    );
    env.etcd_stop().unwrap();
    let stopped = Instant::now();
    step(t0, "etcd killed right after a spec change");
    std::thread::sleep(Duration::from_secs(30));
    env.etcd_start().unwrap();
    let back = Instant::now();
    wait::until(
        "config rewritten everywhere",
        Duration::from_secs(60),
        || {
            for h in hosts {
                let cfg = env.ssh_ok(h, &format!("cat /etc/fleetsnap/{SLUG}.json"))?;
                if !cfg.contains("/etc/systemd") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap_or_else(|e| op.fail(e));
    converged("converged after etcd returned");
    let after = completed_actions(&op.log_text()[offset..]);
    assert!(
        repeated(&after).is_empty(),
        "host actions repeated around the etcd outage: {:?}",
        repeated(&after)
    );
    step(
        t0,
        &format!(
            "etcd down {:.1?}; converged {:.1?} after it returned, {} new host actions, none repeated",
            back - stopped,
            back.elapsed(),
            after.values().sum::<usize>()
        ),
    );
}

/// The armed build, dying at `point` (or at none: a restarted pod without the variable).
fn armed_at(binary: &Path, point: Option<&str>) -> Variant {
    Variant {
        binary: Some(binary.to_path_buf()),
        env: point
            .map(|p| vec![("FLEETSNAP_FAILPOINT".to_string(), p.to_string())])
            .unwrap_or_default(),
    }
}

/// SIGKILL inside a host session at each failpoint (`fleetsnap-operator-failpoints`, the
/// operator built with the `failpoints` feature). Each point starts from a wiped host, dies
/// exactly there, and the restarted operator (same identity, as a restarted pod) must bring
/// the host to the state a clean install by the regular binary reaches: same files, modes,
/// owners and hashes, credentials included, no temp, staged or upload file, and the status
/// written.
#[test]
fn sigkill_at_every_failpoint_converges_to_a_clean_install() {
    let t0 = Instant::now();
    let env = env();
    let host = "host1";
    // Built before taking the hosts, so the build overlaps the other host test.
    let armed = feature_bin(
        "fleetsnap-operator",
        "fleetsnap-operator-failpoints",
        "failpoints",
    )
    .unwrap();
    step(t0, "failpoints build ready");
    // The regular binary has no failpoints: not even the line an armed one prints.
    let has_marker = |bin: &Path| {
        Command::new("grep")
            .args(["-qF", FAILPOINT_MARKER])
            .arg(bin)
            .status()
            .unwrap()
            .success()
    };
    assert!(
        !has_marker(&workspace_bin("fleetsnap-operator").unwrap()),
        "the regular operator binary contains failpoints"
    );
    assert!(has_marker(&armed), "the armed binary has no failpoints");
    let _hosts = exclusive();
    step(t0, "hosts taken");

    // The reference: a clean install by the regular operator.
    let dir = tempfile::tempdir().unwrap();
    wipe(env, host);
    world(env, "opf-fp-ref", &[host], dir.path());
    let op = launch(env, "opf-fp-ref").start(env, "opf-fp-ref");
    let reference = wait::until("reference install", Duration::from_secs(90), || {
        let s = converged_state(env, host)?;
        Ok((is_complete(&s) && policy_converged(env, "opf-fp-ref", &[host])?).then_some(s))
    })
    .unwrap_or_else(|e| op.fail(e));
    drop(op);
    step(t0, "reference install done");

    let mut table = Vec::new();
    for point in FAILPOINTS {
        let ns = format!("opf-fp-{point}");
        wipe(env, host);
        world(env, &ns, &[host], dir.path());
        let started = Instant::now();
        let mut op = launch(env, &ns).start_variant(env, "opf-fp", &armed_at(&armed, Some(point)));
        let status = op
            .wait_exit(Duration::from_secs(90))
            .unwrap_or_else(|e| op.fail(e));
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: {status:?}\n{}",
            op.tail()
        );
        assert!(
            op.log_text()
                .contains(&format!("{FAILPOINT_MARKER}{point}")),
            "{point}: died elsewhere\n{}",
            op.tail()
        );
        let killed_after = started.elapsed();
        let left = converged_state(env, host).unwrap();
        let status = get_json(env, &ns, &format!("backuppolicy/{POLICY}")).unwrap();
        if point == "before-status-write" {
            // The host is done; only the policy's status is lost.
            assert_eq!(left, reference, "{point}");
            assert!(
                status["status"]["hostsTotal"]
                    .as_i64()
                    .is_none_or(|n| n == 0),
                "{point}: {status:#}"
            );
        } else {
            assert_ne!(left, reference, "{point}: the kill changed nothing");
        }
        let restarted = Instant::now();
        let op = launch(env, &ns).start_variant(env, "opf-fp", &armed_at(&armed, None));
        wait::until(
            &format!("convergence after a kill at {point}"),
            Duration::from_secs(90),
            || {
                Ok((converged_state(env, host)? == reference
                    && policy_converged(env, &ns, &[host])?)
                .then_some(()))
            },
        )
        .unwrap_or_else(|e| {
            let now = converged_state(env, host).unwrap_or_default();
            op.fail(anyhow!("{e:#}\nreference:\n{reference}\nnow:\n{now}"))
        });
        let took = restarted.elapsed();
        drop(op);
        step(
            t0,
            &format!(
                "{point}: killed after {killed_after:.1?}, converged {took:.1?} after restart"
            ),
        );
        table.push((point, killed_after, took, left));
    }

    // An update killed between installing the changed timer and daemon-reload: the files
    // on disk are right, systemd still runs the old schedule. The restart must finish the
    // install (reload, restart the timer), not call the host converged.
    let ns = "opf-fp-update";
    wipe(env, host);
    world(env, ns, &[host], dir.path());
    let op = launch(env, ns).start(env, "opf-fp-upd");
    wait::until("first install", Duration::from_secs(90), || {
        let s = converged_state(env, host)?;
        Ok((is_complete(&s) && policy_converged(env, ns, &[host])?).then_some(()))
    })
    .unwrap_or_else(|e| op.fail(e));
    drop(op);
    apply_yaml(
        env,
        ns,
        dir.path(),
        "update.yaml",
        &policy_yaml("/etc", NEVER_EITHER),
    );
    let mut op = launch(env, ns).start_variant(
        env,
        "opf-fp-upd",
        &armed_at(&armed, Some("before-daemon-reload")),
    );
    let status = op
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|e| op.fail(e));
    assert_eq!(status.signal(), Some(9), "{status:?}\n{}", op.tail());
    let loaded_calendar = || {
        env.ssh_ok(
            host,
            &format!("systemctl show -p TimersCalendar --value fleetsnap-{SLUG}.timer"),
        )
    };
    let left = converged_state(env, host).unwrap();
    assert!(
        left.contains("loaded: yes no"),
        "the timer awaits a reload: {left}"
    );
    assert!(
        loaded_calendar().unwrap().contains("2099"),
        "old schedule still loaded"
    );
    let restarted = Instant::now();
    let op = launch(env, ns).start_variant(env, "opf-fp-upd", &armed_at(&armed, None));
    wait::until(
        "the interrupted update finished",
        Duration::from_secs(90),
        || {
            Ok(
                (is_complete(&converged_state(env, host)?) && loaded_calendar()?.contains("2098"))
                    .then_some(()),
            )
        },
    )
    .unwrap_or_else(|e| {
        let now = converged_state(env, host).unwrap_or_default();
        op.fail(anyhow!(
            "{e:#}\nnow:\n{now}\ncalendar: {:?}",
            loaded_calendar()
        ))
    });
    step(
        t0,
        &format!(
            "update killed before daemon-reload: reloaded and on the new schedule {:.1?} after restart",
            restarted.elapsed()
        ),
    );
    drop(op);

    for (point, killed, took, left) in &table {
        eprintln!(
            "--- {point}: killed {killed:.1?}, converged {took:.1?}; host state at the kill:\n{left}"
        );
    }
}
