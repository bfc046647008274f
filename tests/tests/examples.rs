//! Every file in examples/ passes admission on a real kube-apiserver with the chart's CRDs,
//! first as a server-side dry run and then for real, and what the API server stores is the
//! reference runbook's scenario (schedules, spread, retention, rotation, append-only, stdin
//! dump, restore).

use std::path::PathBuf;

use fleetsnap_tests::{Options, TestEnv, repo_root};
use serde_json::Value;

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: 0,
        s3: false,
        ..Options::default()
    })
}

fn install_crds(env: &TestEnv) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| install_crds_now(env));
}

fn install_crds_now(env: &TestEnv) {
    let crds = repo_root().join("charts/fleetsnap/crds");
    env.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()])
        .unwrap();
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        crds.to_str().unwrap(),
    ])
    .unwrap();
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the runbook scenario in examples/, found {files:?}"
    );
    files
}

fn namespace(env: &TestEnv, name: &str) {
    let _ = env.kubectl(&["create", "namespace", name]);
    env.kubectl(&["get", "namespace", name]).unwrap();
}

fn get(env: &TestEnv, ns: &str, what: &str) -> Value {
    serde_json::from_str(&env.kubectl(&["get", "-n", ns, what, "-o", "json"]).unwrap()).unwrap()
}

#[test]
fn every_example_passes_admission_and_is_stored() {
    let env = env();
    install_crds(env);
    let ns = "fleetsnap-examples";
    namespace(env, ns);

    // Dry run first: the server runs the full admission chain (schema, CEL) without storing.
    for f in example_files() {
        let out = env
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "-n",
                ns,
                "-f",
                f.to_str().unwrap(),
            ])
            .unwrap_or_else(|e| panic!("{} refused at admission: {e:#}", f.display()));
        assert!(out.contains("(server dry run)"), "{}: {out}", f.display());
    }
    // Nothing was stored by the dry run.
    let none = env
        .kubectl(&["get", "fleetsnap", "-n", ns, "-o", "name"])
        .unwrap();
    assert!(none.trim().is_empty(), "dry run stored objects: {none}");

    // Then for real, in file order (Secrets, Hosts, repository, policies, restore).
    for f in example_files() {
        env.kubectl(&["apply", "-n", ns, "-f", f.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{} refused: {e:#}", f.display()));
    }
    let names = env
        .kubectl(&["get", "fleetsnap", "-n", ns, "-o", "name"])
        .unwrap();
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "backuppolicy.fleetsnap.io/nightly",
            "backuppolicy.fleetsnap.io/postgres-dump",
            "backuprepository.fleetsnap.io/aws-fleet",
            "host.fleetsnap.io/app1",
            "host.fleetsnap.io/app2",
            "host.fleetsnap.io/build1",
            "host.fleetsnap.io/db1",
            "restore.fleetsnap.io/app1-etc-check",
            "retentionpolicy.fleetsnap.io/standard",
            "verifypolicy.fleetsnap.io/weekly",
        ]
    );

    // Hosts are labelled by environment, role and account.
    let hosts = get(env, ns, "hosts");
    for h in hosts["items"].as_array().unwrap() {
        let labels = &h["metadata"]["labels"];
        for k in ["env", "role", "account"] {
            assert!(
                labels[k].is_string(),
                "host {} lacks label {k}",
                h["metadata"]["name"]
            );
        }
    }
    // The nightly prod selector picks the prod hosts (app1, app2, db1) but not the build agent.
    let selected = env
        .kubectl(&["get", "hosts", "-n", ns, "-l", "env=prod", "-o", "name"])
        .unwrap();
    assert_eq!(selected.lines().count(), 3, "{selected}");

    let repo = get(env, ns, "backuprepository/aws-fleet");
    assert_eq!(repo["spec"]["pathTemplate"], "hosts/{hostname}");
    assert_eq!(repo["spec"]["appendOnly"], true);
    assert_eq!(
        repo["spec"]["maintenanceCredentialsSecretRef"]["name"],
        "s3-maintenance"
    );
    assert_eq!(
        repo["spec"]["s3"]["perHostCredentials"]["secretNameTemplate"],
        "s3-{host}"
    );
    assert_eq!(repo["spec"]["objectLock"]["mode"], "GOVERNANCE");

    let nightly = get(env, ns, "backuppolicy/nightly");
    let sched = &nightly["spec"]["schedule"];
    assert_eq!(sched["onCalendar"], "*-*-* 02:00:00");
    assert_eq!(sched["randomizedDelay"], "45m");
    assert_eq!(sched["persistent"], true);
    assert_eq!(
        nightly["spec"]["hostSelector"]["matchLabels"]["env"],
        "prod"
    );

    let pg = get(env, ns, "backuppolicy/postgres-dump");
    let src = &pg["spec"]["stdinSources"][0];
    assert_eq!(src["command"], serde_json::json!(["pg_dumpall"]));
    assert_eq!(src["user"], "postgres");
    assert_eq!(src["filename"], "pg_dumpall.sql");

    let ret = get(env, ns, "retentionpolicy/standard");
    assert_eq!(
        ret["spec"]["keep"],
        serde_json::json!({"daily": 7, "weekly": 4, "monthly": 6})
    );
    assert_eq!(ret["spec"]["schedule"]["onCalendar"], "Sun *-*-* 04:30:00");
    assert_eq!(ret["spec"]["runOn"], "Operator");

    let ver = get(env, ns, "verifypolicy/weekly");
    assert_eq!(ver["spec"]["schedule"]["onCalendar"], "Sat *-*-* 05:00:00");
    assert_eq!(
        ver["spec"]["readData"]["rotation"],
        serde_json::json!({"subsets": 20, "period": "Week"})
    );
    assert_eq!(ver["spec"]["restoreDrill"]["enabled"], true);

    let restore = get(env, ns, "restore/app1-etc-check");
    assert_eq!(restore["spec"]["hostRef"]["name"], "app1");
    assert_eq!(restore["spec"]["include"], serde_json::json!(["/etc"]));

    // Every reference in the examples resolves to an object the examples create.
    let secrets = env
        .kubectl(&["get", "secrets", "-n", ns, "-o", "name"])
        .unwrap();
    for s in ["fleetsnap-ssh", "restic-password", "s3-maintenance"] {
        assert!(
            secrets.contains(&format!("secret/{s}\n")),
            "missing Secret {s}: {secrets}"
        );
    }
    for h in hosts["items"].as_array().unwrap() {
        let name = h["metadata"]["name"].as_str().unwrap();
        assert!(
            secrets.contains(&format!("secret/s3-{name}\n")),
            "no per-host credentials Secret s3-{name}"
        );
    }
}

#[test]
fn example_secrets_are_placeholders() {
    // Templates only: every value must be an obvious placeholder, never a real-looking secret.
    let text = std::fs::read_to_string(repo_root().join("examples/00-secrets.yaml")).unwrap();
    let mut values = 0;
    let mut in_data = false;
    for line in text.lines() {
        if line.starts_with("stringData:") || line.starts_with("data:") {
            in_data = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_data = false;
            continue;
        }
        if in_data {
            // `key: value`, or `key: |` followed by the indented lines of a block scalar.
            if line.trim_end().ends_with(": |") {
                continue;
            }
            values += 1;
            assert!(
                line.contains("REPLACE-ME"),
                "not a marked placeholder: {line}"
            );
        }
    }
    assert!(values >= 10, "found only {values} secret values");
}

#[test]
fn a_broken_example_is_refused() {
    // The admission above means something: the same nightly policy with a cron schedule
    // (what people paste from crontab) is refused by the API server with a useful message.
    let env = env();
    install_crds(env);
    let ns = "fleetsnap-examples-neg";
    namespace(env, ns);
    let text =
        std::fs::read_to_string(repo_root().join("examples/30-backuppolicy-nightly.yaml")).unwrap();
    let broken = text.replace("\"*-*-* 02:00:00\"", "\"0 2 * * *\"");
    assert_ne!(broken, text);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.yaml");
    std::fs::write(&f, broken).unwrap();
    let err = env
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            f.to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(format!("{err:#}").contains("onCalendar"), "{err:#}");
}

#[test]
fn readme_explains_every_example() {
    let readme = std::fs::read_to_string(repo_root().join("examples/README.md")).unwrap();
    for f in example_files() {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(name),
            "examples/README.md does not mention {name}"
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with('#'),
            "{name} should start with a comment explaining it"
        );
    }
}
