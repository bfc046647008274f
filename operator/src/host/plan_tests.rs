use super::*;
use crate::host::facts::{DirFact, FileFact, UnitFact};
use crate::host::model::{
    AwsCredentials, IoSchedulingClass, PolicyKind, RestCredentials, StdinSource,
};

const PASSWORD: &str = "correct-horse-battery-staple";
const AWS_ID: &str = "AKIAFLEETSNAPTEST";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn artifact(version: &str) -> ExecutorArtifact {
    ExecutorArtifact {
        version: version.into(),
        sha256: sha256_hex(version.as_bytes()),
        local_path: format!("/cache/fleetsnap-{version}").into(),
    }
}

fn policy(kind: PolicyKind) -> PolicySpec {
    PolicySpec {
        name: "nightly".into(),
        kind,
        repository: "s3:http://10.0.2.100:9000/backups/hosts/ct1".into(),
        paths: vec!["/etc".into(), "/home".into()],
        excludes: vec!["/home/*/.cache".into()],
        exclude_caches: true,
        one_file_system: true,
        stdin_sources: vec![],
        tags: vec!["nightly".into()],
        host_tag: "ct1".into(),
        on_calendar: "*-*-* 02:00:00".into(),
        randomized_delay_sec: 900,
        persistent: true,
        nice: Some(10),
        io_scheduling_class: Some(IoSchedulingClass::Idle),
        io_scheduling_priority: Some(7),
        cpu_quota_percent: None,
        max_runtime_sec: Some(43_200),
        lock_wait_sec: 3600,
        extra_args: vec![],
        credential_process: vec![],
    }
}

fn creds(aws: bool) -> Credentials {
    Credentials {
        repository_password: SecretBytes::new(PASSWORD),
        aws: aws.then(|| AwsCredentials {
            access_key_id: SecretBytes::new(AWS_ID),
            secret_access_key: SecretBytes::new(AWS_SECRET),
            session_token: None,
        }),
        rest: None,
        expires: None,
    }
}

fn fresh_host(encrypt: bool) -> HostFacts {
    HostFacts {
        arch: "x86_64".into(),
        kernel: "6.1.0".into(),
        systemd: "systemd 252 (252.33-1~deb12u1)".into(),
        libc: Some("glibc 2.36".into()),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        tpm2: Some("partial".into()),
        creds_encrypt: encrypt,
        ..Default::default()
    }
}

fn profile_of(encrypt: bool) -> HostProfile {
    profile::profile(&fresh_host(encrypt)).unwrap()
}

/// Facts of a host on which `desired` has been fully applied.
fn converged(mut facts: HostFacts, desired: &DesiredState) -> HostFacts {
    for d in &desired.dirs {
        facts.dirs.insert(
            d.path.clone(),
            DirFact {
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            },
        );
    }
    for f in desired.files.iter().chain(&desired.units) {
        facts.files.insert(
            f.path.clone(),
            FileFact {
                sha256: f.sha256.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
            },
        );
    }
    let exe = &desired.executor;
    facts.files.insert(
        exe.path.clone(),
        FileFact {
            sha256: exe.sha256.clone(),
            mode: 0o755,
            owner: ROOT.into(),
            group: ROOT.into(),
        },
    );
    facts
        .links
        .insert(layout::BIN_LINK.into(), exe.path.clone());
    facts.units.insert(
        desired.timer.clone(),
        UnitFact {
            enabled: "enabled".into(),
            active: "active".into(),
            needs_reload: false,
        },
    );
    facts.units.insert(
        desired.service.clone(),
        UnitFact {
            enabled: "static".into(),
            active: "inactive".into(),
            needs_reload: false,
        },
    );
    facts
}

fn plan(a: &ExecutorArtifact, p: &PolicySpec, c: &Credentials, f: &HostFacts) -> HostPlan {
    plan_job(
        &JobInputs {
            artifact: a,
            policy: p,
            credentials: c,
        },
        f,
    )
    .unwrap()
}

fn text(f: &DesiredFile) -> String {
    String::from_utf8(f.content.bytes().to_vec()).unwrap()
}

fn unit_text(plan: &HostPlan, suffix: &str) -> String {
    let d = plan.desired.as_ref().unwrap();
    text(d.units.iter().find(|u| u.path.ends_with(suffix)).unwrap())
}

#[test]
fn fresh_host_gets_everything_in_order() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let plan = plan(&a, &p, &c, &fresh_host(true));
    let labels: Vec<String> = plan.actions.iter().map(Action::label).collect();
    let pos = |needle: &str| {
        labels
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing in {labels:?}"))
    };
    assert!(pos("ensure directory") < pos("install executor"));
    assert!(pos("install executor") < pos("switch executor link"));
    assert!(pos("switch executor link") < pos("write /etc/fleetsnap/backup-nightly.json"));
    assert!(pos("write credentials [\"/etc/fleetsnap/credstore.encrypted/") < pos("install units"));
    assert!(pos("install units") < pos("systemctl daemon-reload"));
    assert!(pos("systemctl daemon-reload") < pos("enable fleetsnap-backup-nightly.timer"));
    // Three credentials (password + AWS pair), encrypted, 0600 root.
    let creds: Vec<&DesiredFile> = plan
        .desired
        .as_ref()
        .unwrap()
        .files
        .iter()
        .filter(|f| matches!(f.role, FileRole::Credential { .. }))
        .collect();
    assert_eq!(creds.len(), 3);
    for f in creds {
        assert_eq!((f.mode, f.owner.as_str()), (0o600, "root"));
        assert!(
            f.path
                .starts_with("/etc/fleetsnap/credstore.encrypted/backup-nightly.")
        );
    }
}

#[test]
fn converged_host_needs_nothing() {
    for encrypt in [false, true] {
        for kind in [
            PolicyKind::Backup,
            PolicyKind::Retention,
            PolicyKind::Verify,
        ] {
            let (a, p, c) = (artifact("0.1.0"), policy(kind), creds(encrypt));
            let first = plan(&a, &p, &c, &fresh_host(encrypt));
            let facts = converged(fresh_host(encrypt), first.desired.as_ref().unwrap());
            let second = plan(&a, &p, &c, &facts);
            assert!(second.is_noop(), "{kind:?}/{encrypt}: {:?}", second.actions);
        }
    }
}

#[test]
fn no_secret_in_units_config_or_debug() {
    for encrypt in [false, true] {
        let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
        let plan = plan(&a, &p, &c, &fresh_host(encrypt));
        let d = plan.desired.as_ref().unwrap();
        let public: Vec<&DesiredFile> = d
            .units
            .iter()
            .chain(&d.files)
            .filter(|f| !matches!(f.role, FileRole::Credential { .. }))
            .collect();
        assert_eq!(public.len(), 3, "config + service + timer");
        let debug = format!("{plan:?} {plan:#?}");
        for secret in [PASSWORD, AWS_ID, AWS_SECRET] {
            for f in &public {
                assert!(!text(f).contains(secret), "{secret} in {}", f.path);
            }
            assert!(!debug.contains(secret), "{secret} in Debug of the plan");
        }
        let service = unit_text(&plan, ".service");
        assert!(!service.contains("Environment"));
        // Secrets do reach the credential files (otherwise this test proves nothing).
        let pw = d
            .files
            .iter()
            .find(|f| f.path.ends_with(".repository-password"))
            .unwrap();
        assert_eq!(pw.content.bytes(), PASSWORD.as_bytes());
    }
}

/// A temporary key's token and a REST login go out as credentials, each named in the
/// config and loaded by the unit, and appear in no public file; the config names exactly
/// the credentials the unit loads.
#[test]
fn session_tokens_and_rest_logins_are_credentials_the_config_names() {
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";
    let a = artifact("0.1.0");
    let mut c = creds(true);
    c.aws.as_mut().unwrap().session_token = Some(SecretBytes::new(TOKEN));
    let p = policy(PolicyKind::Backup);
    let d = plan(&a, &p, &c, &fresh_host(true)).desired.unwrap();
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(d.files[0].content.bytes()).unwrap();
    assert_eq!(
        cfg.credentials.aws_session_token.as_deref(),
        Some("aws-session-token")
    );
    assert_eq!(cfg.credentials.rest_username, None);
    let token = d
        .files
        .iter()
        .find(|f| f.path.ends_with(".aws-session-token"))
        .unwrap_or_else(|| {
            panic!(
                "no token credential in {:?}",
                d.files.iter().map(|f| &f.path).collect::<Vec<_>>()
            )
        });
    assert_eq!(token.content.bytes(), TOKEN.as_bytes());
    let service = text(
        d.units
            .iter()
            .find(|u| u.path.ends_with(".service"))
            .unwrap(),
    );
    assert!(service.contains("aws-session-token:"), "{service}");
    assert!(!service.contains(TOKEN) && !text(&d.files[0]).contains(TOKEN));

    let mut rest_policy = policy(PolicyKind::Backup);
    rest_policy.repository = "rest:https://rest.example:8000/hosts/ct1".into();
    let rest = Credentials {
        repository_password: SecretBytes::new(PASSWORD),
        aws: None,
        rest: Some(RestCredentials {
            username: SecretBytes::new("fleet"),
            password: SecretBytes::new("rest-pass-77"),
        }),
        expires: None,
    };
    let d = plan(&a, &rest_policy, &rest, &fresh_host(false))
        .desired
        .unwrap();
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(d.files[0].content.bytes()).unwrap();
    assert_eq!(
        (
            cfg.credentials.rest_username.as_deref(),
            cfg.credentials.rest_password.as_deref()
        ),
        (Some("rest-username"), Some("rest-password"))
    );
    assert_eq!(cfg.credentials.aws_access_key_id, None);
    let service = text(
        d.units
            .iter()
            .find(|u| u.path.ends_with(".service"))
            .unwrap(),
    );
    for id in ["rest-username", "rest-password", "repository-password"] {
        assert!(
            service.contains(&format!("{id}:")),
            "{id} not loaded:\n{service}"
        );
    }
    assert!(!service.contains("aws-"), "{service}");
    assert!(!service.contains("rest-pass-77") && !text(&d.files[0]).contains("rest-pass-77"));

    let mut broker = policy(PolicyKind::Backup);
    broker.credential_process = vec!["/usr/local/bin/broker".into(), "--host=ct1".into()];
    let d = plan(&a, &broker, &creds(false), &fresh_host(true))
        .desired
        .unwrap();
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(d.files[0].content.bytes()).unwrap();
    assert_eq!(
        cfg.aws_credential_process,
        ["/usr/local/bin/broker", "--host=ct1"]
    );
    assert_eq!(cfg.credentials.aws_access_key_id, None);
}

#[test]
fn service_unit_rendering() {
    let (a, mut p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let s = unit_text(&plan(&a, &p, &c, &fresh_host(true)), ".service");
    for line in [
        "Type=oneshot",
        "ExecStart=/usr/local/bin/fleetsnap run --config /etc/fleetsnap/backup-nightly.json",
        "LoadCredentialEncrypted=repository-password:/etc/fleetsnap/credstore.encrypted/backup-nightly.repository-password",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/fleetsnap /var/cache/fleetsnap",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=read-only",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
        "Nice=10",
        "IOSchedulingClass=idle",
        "IOSchedulingPriority=7",
    ] {
        assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
    }
    assert!(!s.contains("aws"), "no AWS credentials configured");

    let plain = unit_text(&plan(&a, &p, &c, &fresh_host(false)), ".service");
    assert!(plain.lines().any(|l| l
        == "LoadCredential=repository-password:/etc/fleetsnap/credstore/backup-nightly.repository-password"));
    assert!(!plain.contains("LoadCredentialEncrypted"));

    p.stdin_sources.push(StdinSource {
        name: "pg".into(),
        command: vec![
            "runuser".into(),
            "-u".into(),
            "postgres".into(),
            "--".into(),
            "pg_dumpall".into(),
        ],
        filename: "pg_dumpall.sql".into(),
    });
    let s = unit_text(&plan(&a, &p, &c, &fresh_host(true)), ".service");
    assert!(s.contains("\nCapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SETUID CAP_SETGID\n"));

    for kind in [PolicyKind::Retention, PolicyKind::Verify] {
        let s = unit_text(&plan(&a, &policy(kind), &c, &fresh_host(true)), ".service");
        assert!(s.contains("\nCapabilityBoundingSet=\n"), "{s}");
        assert!(s.contains("\nProtectHome=yes\n"));
        assert!(s.contains(&format!("/etc/fleetsnap/{kind}-nightly.json")));
    }
}

/// Every job unit carries the policy's bound on one run in the directive that bounds a
/// oneshot service (TimeoutStartSec=), not in RuntimeMaxSec= (ignored for oneshot, with a
/// warning on every load); without it a hung run would block the job forever, and 0 would
/// mean exactly that.
#[test]
fn service_unit_bounds_one_run() {
    let (a, c) = (artifact("0.1.0"), creds(false));
    for kind in [
        PolicyKind::Backup,
        PolicyKind::Retention,
        PolicyKind::Verify,
    ] {
        let mut p = policy(kind);
        p.max_runtime_sec = Some(5400);
        let s = unit_text(&plan(&a, &p, &c, &fresh_host(true)), ".service");
        let service = s.split("[Service]").nth(1).expect("a [Service] section");
        assert_eq!(
            service
                .lines()
                .filter(|l| *l == "TimeoutStartSec=5400")
                .count(),
            1,
            "{kind}: TimeoutStartSec=5400 once in [Service]:\n{s}"
        );
        assert!(
            !service.lines().any(|l| l.starts_with("RuntimeMaxSec=")),
            "{kind}: RuntimeMaxSec= has no effect on oneshot units:\n{s}"
        );
    }
    let mut p = policy(PolicyKind::Backup);
    p.max_runtime_sec = Some(0);
    let job = JobInputs {
        policy: &p,
        artifact: &a,
        credentials: &c,
    };
    let Err(err) = desired_state(&job, profile_of(true)) else {
        panic!("maxRuntime 0 s must be refused");
    };
    assert!(err.contains("maxRuntime"), "{err}");
}

#[test]
fn timer_and_config_rendering() {
    let (a, mut p, c) = (artifact("0.1.0"), policy(PolicyKind::Verify), creds(true));
    p.extra_args = vec!["--read-data-subset".into(), "1/7".into()];
    let plan = plan(&a, &p, &c, &fresh_host(true));
    let t = unit_text(&plan, ".timer");
    for line in [
        "OnCalendar=*-*-* 02:00:00",
        "RandomizedDelaySec=900",
        "Persistent=true",
        "AccuracySec=1s",
        "Unit=fleetsnap-verify-nightly.service",
        "WantedBy=timers.target",
    ] {
        assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
    }
    let d = plan.desired.as_ref().unwrap();
    let cfg_file = &d.files[0];
    assert_eq!(
        (cfg_file.path.as_str(), cfg_file.mode),
        ("/etc/fleetsnap/verify-nightly.json", 0o644)
    );
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(cfg_file.content.bytes()).unwrap();
    assert_eq!(cfg.kind, PolicyKind::Verify);
    assert_eq!(cfg.extra_args, ["--read-data-subset", "1/7"]);
    assert_eq!(cfg.run_record_dir, "/var/lib/fleetsnap/runs/verify-nightly");
    assert_eq!(
        cfg.credentials.aws_secret_access_key.as_deref(),
        Some("aws-secret-access-key")
    );
    // Deterministic: same inputs, same bytes.
    let again = plan_job(
        &JobInputs {
            artifact: &a,
            policy: &p,
            credentials: &c,
        },
        &fresh_host(true),
    )
    .unwrap();
    assert_eq!(again.desired, plan.desired);
}

#[test]
fn executor_upgrade_only_switches_binary_and_link() {
    let (p, c) = (policy(PolicyKind::Backup), creds(false));
    let v1 = plan(&artifact("0.1.0"), &p, &c, &fresh_host(true));
    let facts = converged(fresh_host(true), v1.desired.as_ref().unwrap());
    let v2 = plan(&artifact("0.2.0"), &p, &c, &facts);
    let labels: Vec<String> = v2.actions.iter().map(Action::label).collect();
    assert_eq!(
        labels,
        [
            "ensure directory /usr/local/lib/fleetsnap/0.2.0",
            "install executor 0.2.0",
            "switch executor link to /usr/local/lib/fleetsnap/0.2.0/fleetsnap",
        ]
    );
    // Units run the link, so they are untouched by an upgrade.
    assert!(
        !v2.actions
            .iter()
            .any(|a| matches!(a, Action::InstallUnits { .. } | Action::DaemonReload))
    );
}

#[test]
fn tampered_executor_is_reinstalled() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let mut facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    facts
        .files
        .get_mut("/usr/local/lib/fleetsnap/0.1.0/fleetsnap")
        .unwrap()
        .sha256 = "0".repeat(64);
    let again = plan(&a, &p, &c, &facts);
    assert!(matches!(
        again.actions.as_slice(),
        [Action::InstallExecutor(_)]
    ));
}

#[test]
fn metadata_drift_is_fixed_without_rewriting() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let mut facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    let cred = "/etc/fleetsnap/credstore.encrypted/backup-nightly.repository-password";
    facts.files.get_mut(cred).unwrap().mode = 0o644;
    let again = plan(&a, &p, &c, &facts);
    assert_eq!(
        again.actions,
        [Action::SetMetadata {
            path: cred.into(),
            mode: 0o600,
            owner: "root".into(),
            group: "root".into()
        }]
    );
}

#[test]
fn schedule_change_rewrites_only_the_timer_and_restarts_it() {
    let (a, mut p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    p.on_calendar = "hourly".into();
    let again = plan(&a, &p, &c, &facts);
    match again.actions.as_slice() {
        [
            Action::InstallUnits { units, changed },
            Action::DaemonReload,
            Action::RestartTimer { unit },
        ] => {
            assert_eq!(units.len(), 2, "both units are staged for verification");
            assert_eq!(
                changed,
                &["/etc/systemd/system/fleetsnap-backup-nightly.timer"]
            );
            assert_eq!(unit, "fleetsnap-backup-nightly.timer");
        }
        other => panic!("{other:?}"),
    }
}

/// The operator was killed after installing a changed timer and before daemon-reload: the
/// files match, but systemd still runs the old schedule. The next plan must finish the
/// install (reload, restart the timer), not call the host converged.
#[test]
fn units_installed_but_never_reloaded_are_reloaded() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let desired = first.desired.as_ref().unwrap();
    let mut facts = converged(fresh_host(true), desired);
    facts.units.get_mut(&desired.timer).unwrap().needs_reload = true;
    assert_eq!(
        plan(&a, &p, &c, &facts).actions,
        vec![
            Action::DaemonReload,
            Action::RestartTimer {
                unit: desired.timer.clone()
            }
        ]
    );
    // Only the service changed: reload, no timer restart.
    let mut facts = converged(fresh_host(true), desired);
    facts.units.get_mut(&desired.service).unwrap().needs_reload = true;
    assert_eq!(plan(&a, &p, &c, &facts).actions, vec![Action::DaemonReload]);
}

#[test]
fn stopped_timer_is_started_again() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(false));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let mut facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    facts
        .units
        .get_mut("fleetsnap-backup-nightly.timer")
        .unwrap()
        .active = "inactive".into();
    let again = plan(&a, &p, &c, &facts);
    assert_eq!(
        again.actions,
        [Action::EnableTimer {
            unit: "fleetsnap-backup-nightly.timer".into()
        }]
    );
}

#[test]
fn switching_to_encrypted_storage_removes_plain_files() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let plain = plan(&a, &p, &c, &fresh_host(false));
    let mut facts = converged(fresh_host(false), plain.desired.as_ref().unwrap());
    facts.creds_encrypt = true;
    let enc = plan(&a, &p, &c, &facts);
    let removed = match enc.actions.last() {
        Some(Action::RemoveFiles { paths }) => paths.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(removed.len(), 3);
    assert!(
        removed
            .iter()
            .all(|p| p.starts_with("/etc/fleetsnap/credstore/"))
    );
    assert!(
        enc.actions
            .iter()
            .any(|a| matches!(a, Action::InstallUnits { .. }))
    );
}

#[test]
fn removal_plan_cleans_up_but_never_touches_data() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let mut facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    facts
        .units
        .get_mut("fleetsnap-backup-nightly.service")
        .unwrap()
        .active = "activating".into();
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let removal = plan_removal(&job, &facts);
    match removal.actions.as_slice() {
        [
            Action::DisableTimer { unit: t },
            Action::StopService { unit: s },
            Action::RemoveFiles { paths },
            Action::DaemonReload,
            Action::ResetFailed { .. },
        ] => {
            assert_eq!(t, "fleetsnap-backup-nightly.timer");
            assert_eq!(s, "fleetsnap-backup-nightly.service");
            assert_eq!(paths.len(), 6, "{paths:?}");
            for p in paths {
                assert!(p.starts_with("/etc/"), "{p}");
            }
        }
        other => panic!("{other:?}"),
    }
    // After removal the host is clean: planning the removal again does nothing.
    let clean = fresh_host(true);
    assert!(plan_removal(&job, &clean).is_noop());
    // The other kind with the same policy name is not affected.
    let other = plan_removal(
        &JobId::new(PolicyKind::Retention, "nightly").unwrap(),
        &facts,
    );
    assert!(other.is_noop(), "{:?}", other.actions);
}

#[test]
fn spec_errors() {
    let (a, c) = (artifact("0.1.0"), creds(false));
    let f = fresh_host(true);
    let run = |p: &PolicySpec, a: &ExecutorArtifact| {
        plan_job(
            &JobInputs {
                artifact: a,
                policy: p,
                credentials: &c,
            },
            &f,
        )
    };
    let mut p = policy(PolicyKind::Backup);
    p.on_calendar = "daily\nExecStartPre=/bin/evil".into();
    assert!(run(&p, &a).unwrap_err().to_string().contains("onCalendar"));
    let mut p = policy(PolicyKind::Backup);
    p.name = "../etc".into();
    assert!(run(&p, &a).is_err());
    let mut p = policy(PolicyKind::Backup);
    p.nice = Some(40);
    assert!(run(&p, &a).is_err());
    let mut bad = a.clone();
    bad.version = "../../bin".into();
    assert!(run(&policy(PolicyKind::Backup), &bad).is_err());
}

#[test]
fn fact_query_covers_what_the_plan_compares() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let q = fact_query(&job, Some(&a));
    for encrypt in [false, true] {
        let d = desired_state(
            &JobInputs {
                artifact: &a,
                policy: &p,
                credentials: &c,
            },
            profile_of(encrypt),
        )
        .unwrap();
        for f in d.files.iter().chain(&d.units) {
            let listed = if matches!(
                f.role,
                FileRole::Credential {
                    encrypted: true,
                    ..
                }
            ) {
                q.encrypted_files.contains(&f.path)
            } else {
                q.files.contains(&f.path)
            };
            assert!(listed, "{} not queried", f.path);
        }
        for dir in &d.dirs {
            assert!(q.dirs.contains(&dir.path), "{} not queried", dir.path);
        }
    }
    assert!(
        q.large_files
            .contains(&"/usr/local/lib/fleetsnap/0.1.0/fleetsnap".to_string()),
        "the executor is queried through the hash memo"
    );
    assert!(
        q.units
            .contains(&"fleetsnap-backup-nightly.timer".to_string())
    );
}

#[test]
fn debris_of_a_killed_reconcile_is_swept_first() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let first = plan(&a, &p, &c, &fresh_host(true));
    let mut facts = converged(fresh_host(true), first.desired.as_ref().unwrap());
    let debris = vec![
        "/etc/fleetsnap/.staging/fleetsnap-backup-nightly.timer".to_string(),
        "/etc/fleetsnap/credstore.encrypted/.backup-nightly.repository-password.fleetsnap-tmp"
            .to_string(),
        "/usr/local/bin/fleetsnap.fleetsnap-new".to_string(),
    ];
    facts.debris = debris.clone();
    // Converged otherwise: the sweep is the whole plan, for installs and removals alike.
    let install = plan(&a, &p, &c, &facts);
    assert_eq!(
        install.actions,
        vec![Action::RemoveFiles {
            paths: debris.clone()
        }]
    );
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let removal = plan_removal(&job, &facts);
    assert_eq!(
        removal.actions.first(),
        Some(&Action::RemoveFiles { paths: debris })
    );
    // On a fresh host the sweep precedes everything else.
    let mut fresh = fresh_host(true);
    fresh.debris = vec!["/usr/local/lib/fleetsnap/0.1.0/.fleetsnap.upload".into()];
    let p2 = plan(&a, &p, &c, &fresh);
    assert!(matches!(
        p2.actions.first(),
        Some(Action::RemoveFiles { .. })
    ));
    assert!(p2.actions.len() > 5);
}

#[test]
fn fact_query_scans_every_directory_a_write_goes_through() {
    let a = artifact("0.1.0");
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let q = fact_query(&job, Some(&a));
    for d in [
        layout::CONFIG_DIR,
        layout::CREDSTORE_DIR,
        layout::CREDSTORE_ENCRYPTED_DIR,
        layout::BIN_DIR,
    ] {
        assert!(q.debris_dirs.contains(&d.to_string()), "{d}");
    }
    assert!(q.debris_dirs.contains(&layout::executor_dir("0.1.0")));
    assert_eq!(q.scratch_dirs, vec![layout::STAGING_DIR.to_string()]);
}

/// What the operator renders is what the executor accepts: one type on both sides
/// (`fleetsnap_contract`), and the executor's own checks (format, run-record dir, stdin
/// commands) pass on it.
#[test]
fn the_rendered_config_is_one_the_executor_accepts() {
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let mut p = policy(PolicyKind::Backup);
    p.stdin_sources.push(StdinSource {
        name: "pg".into(),
        command: ["runuser", "-u", "postgres", "--", "pg_dumpall"]
            .map(String::from)
            .to_vec(),
        filename: "pg.sql".into(),
    });
    let ids = [
        layout::CRED_REPOSITORY_PASSWORD,
        layout::CRED_AWS_ACCESS_KEY_ID,
        layout::CRED_AWS_SECRET_ACCESS_KEY,
    ];
    let ids: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.to_string(), job.credential_path(id, true)))
        .collect();
    let json = render::config_json(&job, &p, &ids, profile::CredentialMode::Encrypted);
    let cfg = fleetsnap_contract::JobConfig::parse(&json).unwrap();
    assert_eq!(cfg.kind, PolicyKind::Backup);
    assert_eq!(cfg.run_record_dir, job.runs_dir());
    assert_eq!(cfg.stdin[0].command[0], "runuser");
    assert_eq!(
        cfg.stdin[0].user, None,
        "the command already drops privileges"
    );
    assert_eq!(
        cfg.credentials.aws_access_key_id.as_deref(),
        Some("aws-access-key-id")
    );
    assert_eq!(
        cfg.credentials.aws_session_token, None,
        "not loaded by the unit"
    );
}

/// A host the executor cannot run on, or without systemd, gets no action at all: before host
/// profiles every one of these got the executor, credentials and `LoadCredential=` units.
#[test]
fn hosts_that_cannot_run_the_job_get_nothing() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let mut arm = fresh_host(true);
    arm.arch = "aarch64".into();
    let mut no_systemd = fresh_host(false);
    no_systemd.systemd = String::new();
    let mut musl = fresh_host(false);
    musl.libc = None;
    for (facts, want) in [
        (arm, "architecture \"aarch64\""),
        (no_systemd, "systemd is not running"),
        (musl, "no GNU C library"),
    ] {
        let inputs = JobInputs {
            artifact: &a,
            policy: &p,
            credentials: &c,
        };
        let err = plan_job(&inputs, &facts).unwrap_err();
        assert!(matches!(err, PlanError::Unsupported(_)), "{err:?}");
        let host_err = err.for_host("h1");
        assert_eq!(host_err.reason(), "UnsupportedHost");
        assert!(!host_err.is_transient());
        let msg = host_err.to_string();
        assert!(
            msg.contains(want) && msg.contains("nothing was installed"),
            "{msg}"
        );
    }
}

/// systemd 239 (RHEL 8) knows no `LoadCredential=`: the unit names no credentials, the config
/// names the root-only files, and directives newer than 239 are left out.
#[test]
fn old_systemd_gets_credential_files_and_the_hardening_it_knows() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let mut rhel8 = fresh_host(false);
    rhel8.systemd = "systemd 239 (239-78.el8)".into();
    rhel8.libc = Some("glibc 2.28".into());
    let plan = plan(&a, &p, &c, &rhel8);
    let d = plan.desired.as_ref().unwrap();
    let service = unit_text(&plan, ".service");
    assert!(!service.contains("LoadCredential"), "{service}");
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(d.files[0].content.bytes()).unwrap();
    let creds: Vec<&DesiredFile> = d
        .files
        .iter()
        .filter(|f| matches!(f.role, FileRole::Credential { .. }))
        .collect();
    assert_eq!(creds.len(), 3);
    for f in &creds {
        let FileRole::Credential { id, encrypted } = &f.role else {
            unreachable!()
        };
        assert!(!encrypted);
        assert_eq!(cfg.credential_files.get(id), Some(&f.path), "{id}");
        assert!(f.path.starts_with("/etc/fleetsnap/credstore/"));
        assert_eq!((f.mode, f.owner.as_str()), (0o600, "root"));
    }
    assert_eq!(cfg.credential_files.len(), creds.len());
    assert!(service.lines().any(|l| l == "ProtectSystem=strict"));
    for (line, since) in render::SANDBOX {
        assert_eq!(
            service.lines().any(|l| l == *line),
            *since <= 239,
            "{line} (systemd {since}) on systemd 239"
        );
    }

    // systemd 219 (Amazon Linux 2): no strict read-only OS and no timer splay either.
    let mut al2 = rhel8.clone();
    al2.systemd = "systemd 219".into();
    let plan = super::tests::plan(&a, &p, &c, &al2);
    let service = unit_text(&plan, ".service");
    assert!(
        service.lines().any(|l| l == "ProtectSystem=full"),
        "{service}"
    );
    assert!(!service.contains("ReadWritePaths"));
    assert!(!unit_text(&plan, ".timer").contains("RandomizedDelaySec"));

    // systemd 247 (Debian 11) loads plain credentials itself; the config names no files.
    let mut bullseye = rhel8.clone();
    bullseye.systemd = "systemd 247 (247.3-7+deb11u6)".into();
    let plan = super::tests::plan(&a, &p, &c, &bullseye);
    let d = plan.desired.as_ref().unwrap();
    assert!(unit_text(&plan, ".service").contains(
        "LoadCredential=repository-password:/etc/fleetsnap/credstore/backup-nightly.repository-password"
    ));
    let cfg: fleetsnap_contract::JobConfig =
        serde_json::from_slice(d.files[0].content.bytes()).unwrap();
    assert!(cfg.credential_files.is_empty());
    assert!(unit_text(&plan, ".timer").contains("RandomizedDelaySec=900"));
}

/// Moving to a host profile changed nothing for a current host: the bytes of the unit a
/// systemd 252 host has are the same, so an upgrade reinstalls nothing.
#[test]
fn current_hosts_keep_their_units_byte_for_byte() {
    let (a, p, c) = (artifact("0.1.0"), policy(PolicyKind::Backup), creds(true));
    let plan = plan(&a, &p, &c, &fresh_host(true));
    let service = unit_text(&plan, ".service");
    let sandbox = &service[service.find("\n# Sandbox\n").unwrap()..];
    let expected = "\n# Sandbox\nProtectSystem=strict\nReadWritePaths=/var/lib/fleetsnap /var/cache/fleetsnap\n\
ProtectHome=read-only\nPrivateTmp=yes\nNoNewPrivileges=yes\nProtectKernelTunables=yes\nProtectKernelModules=yes\n\
ProtectKernelLogs=yes\nProtectControlGroups=yes\nProtectClock=yes\nProtectHostname=yes\nRestrictSUIDSGID=yes\n\
RestrictRealtime=yes\nRestrictNamespaces=yes\nLockPersonality=yes\nMemoryDenyWriteExecute=yes\n\
SystemCallArchitectures=native\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n";
    assert!(sandbox.starts_with(expected), "{sandbox}");
}

/// docs/security.md's table of what older systemd loses names every directive of the
/// render table at the version it appears in, so the page cannot drift from the units.
#[test]
fn the_security_page_lists_each_directive_older_systemd_loses() {
    let page = include_str!("../../../docs/security.md");
    let table = &page[page
        .find("| systemd below | the service runs without |")
        .unwrap()..];
    for (line, since) in render::SANDBOX
        .iter()
        .filter(|(_, v)| *v > profile::SYSTEMD_FLOOR)
    {
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("| {since} |")))
            .unwrap_or_else(|| panic!("no row for systemd {since}"));
        assert!(
            row.contains(&format!("`{line}`")),
            "{line} missing in {row}"
        );
    }
    for since in [
        render::SYSTEMD_PROTECT_SYSTEM_STRICT,
        render::SYSTEMD_RANDOMIZED_DELAY,
    ] {
        assert!(
            table.contains(&format!("| {since} |")),
            "no row for {since}"
        );
    }
}
