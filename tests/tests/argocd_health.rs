//! Argo CD health checks (deploy/argocd/health/<kind>.lua), run by Debian's Lua interpreter
//! the way Argo CD runs them (`obj` global, returns {status, message}) against the fixtures in
//! deploy/argocd/health/testdata/<kind>/*.json. A missing lua5.4 or lua-cjson fails the test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetsnap_tests::repo_root;
use serde_json::Value;

const KINDS: [&str; 6] = [
    "Host",
    "BackupRepository",
    "BackupPolicy",
    "RetentionPolicy",
    "VerifyPolicy",
    "Restore",
];

fn health_dir() -> PathBuf {
    repo_root().join("deploy/argocd/health")
}

fn lua() -> Command {
    match Command::new("lua5.4")
        .args(["-e", "require('cjson')"])
        .output()
    {
        Ok(o) if o.status.success() => Command::new("lua5.4"),
        Ok(o) => panic!(
            "lua-cjson is not available to lua5.4 (Debian package lua-cjson; tests/testenv/deps.sh installs it): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "lua5.4 is not installed (Debian package lua5.4; tests/testenv/deps.sh installs it): {e}"
        ),
    }
}

/// Run `script` on the fixture's object; (status, message).
fn run(script: &Path, fixture: &Path) -> (String, String) {
    let out = lua()
        .arg(health_dir().join("testdata/run.lua"))
        .arg(script)
        .arg(fixture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} on {}: {}",
        script.display(),
        fixture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn every_kind_has_a_health_check_that_matches_its_fixtures() {
    let mut failures = Vec::new();
    let mut total = 0;
    for kind in KINDS {
        let script = health_dir().join(format!("{}.lua", kind.to_lowercase()));
        assert!(
            script.exists(),
            "no health check for {kind}: {}",
            script.display()
        );
        let dir = health_dir().join("testdata").join(kind.to_lowercase());
        let mut seen = BTreeSet::new();
        let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no fixtures for {kind} in {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        fixtures.sort();
        for f in fixtures {
            let case: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            assert_eq!(case["object"]["kind"], kind, "{}", f.display());
            let want_status = case["expected"]["status"].as_str().unwrap();
            let want_msg = case["expected"]["messageContains"].as_str().unwrap();
            let (status, message) = run(&script, &f);
            total += 1;
            seen.insert(status.clone());
            if status != want_status || !message.contains(want_msg) {
                failures.push(format!(
                    "{}: got {status} {message:?}, want {want_status} containing {want_msg:?}",
                    f.display()
                ));
            }
        }
        // Every kind is exercised in each state it can be in.
        let mut states = vec!["Healthy", "Progressing", "Degraded"];
        if ["BackupPolicy", "RetentionPolicy", "VerifyPolicy"].contains(&kind) {
            states.push("Suspended");
        }
        for s in states {
            assert!(
                seen.contains(s),
                "{kind}: no fixture ends {s} (seen {seen:?})"
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(total >= 40, "only {total} fixtures");
}

#[test]
fn the_harness_notices_a_wrong_script() {
    // A script that always says Healthy must disagree with the fixtures.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("always-healthy.lua");
    std::fs::write(&script, "return {status = \"Healthy\", message = \"ok\"}\n").unwrap();
    let fixture = health_dir().join("testdata/backuppolicy/not-ready.json");
    let (status, _) = run(&script, &fixture);
    assert_eq!(status, "Healthy");
    let (status, _) = run(&health_dir().join("backuppolicy.lua"), &fixture);
    assert_eq!(status, "Degraded");
}

#[test]
fn argocd_cm_patch_carries_exactly_the_scripts() {
    let cm =
        std::fs::read_to_string(repo_root().join("deploy/argocd/argocd-cm-health.yaml")).unwrap();
    for kind in KINDS {
        let key = format!("  resource.customizations.health.fleetsnap.io_{kind}: |\n");
        let start = cm
            .find(&key)
            .unwrap_or_else(|| panic!("argocd-cm-health.yaml lacks {kind}"))
            + key.len();
        let mut body = String::new();
        for line in cm[start..].lines() {
            if line.is_empty() {
                body.push('\n');
                continue;
            }
            match line.strip_prefix("    ") {
                Some(l) => {
                    body.push_str(l);
                    body.push('\n');
                }
                None => break,
            }
        }
        let script =
            std::fs::read_to_string(health_dir().join(format!("{}.lua", kind.to_lowercase())))
                .unwrap();
        assert_eq!(
            body.trim_end(),
            script.trim_end(),
            "argocd-cm-health.yaml's {kind} script differs from health/{}.lua",
            kind.to_lowercase()
        );
    }
}

#[test]
fn scripts_are_generated_from_their_templates() {
    let out = Command::new("python3")
        .arg(repo_root().join("deploy/argocd/generate.py"))
        .arg("--check")
        .output()
        .expect("python3 runs deploy/argocd/generate.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
