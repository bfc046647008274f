//! The checked-in CRD YAML is what the chart and the test environment install, so it must
//! be exactly what the types generate.

use std::fs;
use std::path::Path;

const HINT: &str = "run `cargo run -p fleetsnap-crds --bin crdgen` and commit the result";

fn check_dir(dir: &Path) {
    let expected = fleetsnap_crds::generated_files();
    for f in &expected {
        let path = dir.join(&f.file_name);
        let actual = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}; {HINT}", path.display()));
        assert!(
            actual == f.contents,
            "{} differs from what the types generate; {HINT}",
            path.display()
        );
    }
    let mut stray: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}; {HINT}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !expected.iter().any(|f| &f.file_name == name))
        .collect();
    stray.sort();
    assert!(
        stray.is_empty(),
        "{} holds files no type generates: {stray:?}; {HINT}",
        dir.display()
    );
}

#[test]
fn crate_copy_is_up_to_date() {
    check_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("generated"));
}

#[test]
fn chart_copy_is_up_to_date() {
    check_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/fleetsnap/crds"));
}

#[test]
fn every_kind_has_the_agreed_names() {
    let crds = fleetsnap_crds::all_crds();
    let names: Vec<(String, Vec<String>)> = crds
        .iter()
        .map(|c| {
            (
                c.spec.names.kind.clone(),
                c.spec.names.short_names.clone().unwrap_or_default(),
            )
        })
        .collect();
    let want = [
        ("Host", "fsh"),
        ("BackupRepository", "fsrepo"),
        ("BackupPolicy", "fsbp"),
        ("RetentionPolicy", "fsret"),
        ("VerifyPolicy", "fsver"),
        ("Restore", "fsrestore"),
    ];
    assert_eq!(names.len(), want.len());
    for ((kind, shorts), (want_kind, want_short)) in names.iter().zip(want) {
        assert_eq!(kind, want_kind);
        assert_eq!(shorts, &vec![want_short.to_string()]);
    }
    for crd in &crds {
        assert_eq!(crd.spec.group, "fleetsnap.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        // `all` would drag fleetsnap objects into `kubectl get all`, which people use to
        // look at workloads; the dedicated category is enough.
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["fleetsnap".to_string()][..]),
            "{}",
            crd.spec.names.kind
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} needs the status subresource",
            crd.spec.names.kind
        );
        let columns = version
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default();
        assert!(
            columns
                .iter()
                .any(|c| c.name == "Age" && c.json_path == ".metadata.creationTimestamp"),
            "{} lacks an Age column",
            crd.spec.names.kind
        );
    }
}

/// `kubectl explain` is only useful when every field says what it is for.
#[test]
fn every_field_is_documented() {
    fn walk(kind: &str, path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let top_level =
                    path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                let described = prop
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.trim().is_empty());
                if !described && !top_level {
                    missing.push(format!("{kind}{here}"));
                }
                walk(kind, &here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(kind, &format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in fleetsnap_crds::all_crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        walk(&crd.spec.names.kind, "", &schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// Every CEL rule must tell the user what to fix, not just that something failed.
#[test]
fn every_cel_rule_has_a_message() {
    fn walk(v: &serde_json::Value, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(rules) = map
                    .get("x-kubernetes-validations")
                    .and_then(|r| r.as_array())
                {
                    for r in rules {
                        if r.get("message")
                            .and_then(|m| m.as_str())
                            .is_none_or(str::is_empty)
                        {
                            bad.push(r["rule"].to_string());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, bad));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    for crd in fleetsnap_crds::all_crds() {
        walk(&serde_json::to_value(&crd).unwrap(), &mut bad);
    }
    assert!(bad.is_empty(), "rules without a message: {bad:#?}");
}

#[test]
fn docs_field_reference_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let page =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let regenerated = fleetsnap_crds::splice_field_reference(&page)
        .unwrap_or_else(|| panic!("{} lacks the generated-reference markers", path.display()));
    assert!(
        page == regenerated,
        "the field reference in docs/api.md is stale; {HINT}"
    );
}
