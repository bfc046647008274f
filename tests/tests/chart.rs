//! The Helm chart (charts/fleetsnap) against the real thing: `helm lint`, `helm template |
//! kubectl apply --dry-run=server` on testenv's kube-apiserver, the operator's RBAC proven
//! with a real ServiceAccount token (what it can do, and what it is refused), and the alert
//! rules checked and unit-tested by `promtool`. A missing tool (helm, promtool) fails the test
//! and names the tool.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fleetsnap_tests::{Options, TestEnv, check, repo_root, wait};
use serde_json::Value;

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: 0,
        s3: false,
        ..Options::default()
    })
}

fn chart() -> PathBuf {
    repo_root().join("charts/fleetsnap")
}

/// helm, built by tests/testenv/tools.sh (a no-op when cached).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let tools = repo_root().join("tests/testenv/tools.sh");
        let built = Command::new("bash").arg(&tools).arg("helm").output();
        match built {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "helm is not available: `tests/testenv/tools.sh helm` failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("helm is not available: cannot run tests/testenv/tools.sh: {e}"),
        }
        let dir = Command::new("bash")
            .arg(&tools)
            .args(["path", "helm"])
            .output()
            .expect("tools.sh path helm");
        let bin = PathBuf::from(String::from_utf8_lossy(&dir.stdout).trim()).join("helm");
        assert!(bin.exists(), "helm is not available at {}", bin.display());
        bin
    })
}

fn run_helm(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(helm()).args(args).output()?;
    check(&format!("helm {}", args.join(" ")), out)
}

/// `helm template` of the chart as release `fleetsnap` in `ns`, with extra arguments.
fn render(ns: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "fleetsnap", chart.to_str().unwrap(), "-n", ns];
    args.extend_from_slice(extra);
    run_helm(&args).unwrap()
}

fn promtool() -> Command {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Command::new("promtool"),
        _ => panic!(
            "promtool is not installed (Debian package `prometheus`; tests/testenv/deps.sh installs it)"
        ),
    }
}

/// kubectl with `input` on stdin; Ok(stdout) or Err(stderr).
fn kubectl_stdin(
    env: &TestEnv,
    kubeconfig: Option<&Path>,
    args: &[&str],
    input: &str,
) -> anyhow::Result<String> {
    let mut cmd = env.command("kubectl");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    check(
        &format!("kubectl {}", args.join(" ")),
        child.wait_with_output()?,
    )
}

fn install_crds(env: &TestEnv) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for dir in [
            chart().join("crds"),
            chart().join("tests/fixtures/monitoring.coreos.com-crds.yaml"),
        ] {
            let d = dir.to_str().unwrap();
            env.kubectl(&["apply", "--server-side", "-f", d]).unwrap();
            env.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                d,
            ])
            .unwrap();
        }
    });
}

fn namespace(env: &TestEnv, name: &str) {
    let _ = env.kubectl(&["create", "namespace", name]);
    env.kubectl(&["get", "namespace", name]).unwrap();
}

fn items(list_json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(list_json).unwrap();
    match v["kind"].as_str() {
        Some("List") => v["items"].as_array().unwrap().clone(),
        _ => vec![v],
    }
}

fn find<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn helm_lint_passes_for_default_and_optional_values() {
    let chart = chart();
    let c = chart.to_str().unwrap();
    run_helm(&["lint", "--strict", c]).unwrap();
    run_helm(&[
        "lint",
        "--strict",
        c,
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,watchNamespaces={team-a}",
    ])
    .unwrap();
    // Two replicas without leader election would let two operators touch the same hosts.
    let err = run_helm(&["template", c, "--set", "leaderElection.enabled=false"]).unwrap_err();
    assert!(format!("{err:#}").contains("leaderElection"), "{err:#}");
    run_helm(&[
        "template",
        c,
        "--set",
        "leaderElection.enabled=false,replicaCount=1",
    ])
    .unwrap();
}

#[test]
fn chart_metadata_and_crds_match_the_workspace() {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("appVersion: \"{version}\"")),
        "Chart.yaml appVersion is not the workspace version {version}"
    );
    // The chart ships exactly the generated CRDs (crdgen writes both places).
    let generated = repo_root().join("crds/generated");
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(&generated).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        let in_chart = std::fs::read(chart().join("crds").join(&name))
            .unwrap_or_else(|_| panic!("charts/fleetsnap/crds lacks {name:?}"));
        assert!(
            in_chart == std::fs::read(&p).unwrap(),
            "{name:?} differs from crds/generated"
        );
        names.insert(name);
    }
    assert_eq!(
        names.len(),
        std::fs::read_dir(chart().join("crds")).unwrap().count()
    );
    assert_eq!(names.len(), 6);
}

#[test]
fn rendered_chart_passes_server_side_dry_run() {
    let env = env();
    install_crds(env);
    let ns = "fleetsnap-dryrun";
    namespace(env, ns);

    let all = render(
        ns,
        &[
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true",
        ],
    );
    let out = kubectl_stdin(
        env,
        None,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            ns,
            "-o",
            "json",
            "-f",
            "-",
        ],
        &all,
    )
    .unwrap();
    let objs = items(&out);
    let kinds: BTreeSet<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kinds.contains(k), "{k} missing from the dry run: {kinds:?}");
    }

    // The Deployment as the API server defaulted and accepted it.
    let dep = find(&objs, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fleetsnap-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let joined = args.join(" ");
    assert!(joined.contains("--metrics-addr 0.0.0.0:8080"), "{joined}");
    assert!(
        joined.contains(&format!("--leader-election-namespace {ns}")),
        "{joined}"
    );
    assert!(
        c["image"].as_str().unwrap().ends_with(":0.1.0"),
        "{}",
        c["image"]
    );

    // The Service selects the Deployment's pods.
    let svc = find(&objs, "Service");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&dep["spec"]["template"]["metadata"]["labels"][k], v);
    }

    // PrometheusRule carries exactly the promtool-tested rule file.
    let rule = find(&objs, "PrometheusRule");
    let alerts = std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap();
    let wrapped = format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {{name: reference}}\nspec:\n{}",
        alerts
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let reference = kubectl_stdin(
        env,
        None,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            ns,
            "-o",
            "json",
            "-f",
            "-",
        ],
        &wrapped,
    )
    .unwrap();
    let reference: Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(rule["spec"], reference["spec"]);
    assert!(rule["spec"]["groups"].as_array().unwrap().len() >= 3);

    // Grafana dashboard: sidecar label, valid JSON, panels.
    let cm = find(&objs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value = serde_json::from_str(cm["data"]["fleetsnap.json"].as_str().unwrap()).unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 10);

    // Optional parts really are optional.
    let minimal = render(ns, &[]);
    assert!(!minimal.contains("kind: ServiceMonitor") && !minimal.contains("kind: PrometheusRule"));
    kubectl_stdin(
        env,
        None,
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        &minimal,
    )
    .unwrap();
}

#[test]
fn namespaced_mode_renders_roles_per_watched_namespace() {
    let env = env();
    install_crds(env);
    let ns = "fleetsnap-nsmode";
    for n in [ns, "team-a", "team-b"] {
        namespace(env, n);
    }
    // The operator watches one namespace or all; more than one is refused at render time.
    let err = run_helm(&[
        "template",
        chart().to_str().unwrap(),
        "--set",
        "watchNamespaces={team-a,team-b}",
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("watchNamespaces"), "{err:#}");
    let out = render(ns, &["--set", "watchNamespaces={team-a}"]);
    // Objects carry their namespaces (release namespace, team-a, team-b).
    let applied = kubectl_stdin(
        env,
        None,
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        &out,
    )
    .unwrap();
    let objs = items(&applied);
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding")
    );
    let role_ns: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "Role" && o["metadata"]["name"] == "fleetsnap-operator")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(role_ns, BTreeSet::from(["team-a"]));
    let dep = find(&objs, "Deployment");
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains(r#""--namespace","team-a""#), "{args}");
}

/// A kubeconfig that authenticates as the chart's ServiceAccount with a real token.
fn token_kubeconfig(env: &TestEnv, ns: &str, dir: &Path) -> PathBuf {
    let token = env
        .kubectl(&[
            "create",
            "token",
            "fleetsnap-operator",
            "-n",
            ns,
            "--duration=1h",
        ])
        .unwrap();
    let server = env
        .kubectl(&[
            "config",
            "view",
            "--raw",
            "--flatten",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
        .unwrap();
    let ca = env
        .kubectl(&[
            "config",
            "view",
            "--raw",
            "--flatten",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])
        .unwrap();
    let path = dir.join("operator.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: operator\n  context: {{cluster: testenv, user: operator}}\ncurrent-context: operator\n",
            token.trim()
        ),
    )
    .unwrap();
    path
}

#[test]
fn operator_service_account_has_exactly_the_rights_it_needs() {
    let env = env();
    install_crds(env);
    let ns = "fleetsnap-rbac";
    let watched = "fleetsnap-rbac-team";
    let other = "fleetsnap-rbac-other";
    for n in [ns, watched, other] {
        namespace(env, n);
    }
    // The chart's ServiceAccount, RBAC and spec guard, applied for real.
    let rbac = render(
        ns,
        &[
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/spec-guard.yaml",
        ],
    );
    kubectl_stdin(env, None, &["apply", "-n", ns, "-f", "-"], &rbac).unwrap();

    // Something to act on: a policy and a Secret in a watched namespace.
    let policy = r#"{"apiVersion":"fleetsnap.io/v1alpha1","kind":"BackupPolicy","metadata":{"name":"nightly"},
        "spec":{"hostSelector":{},"repositoryRef":{"name":"r"},"paths":["/etc"],"schedule":{"onCalendar":"*-*-* 02:00:00"}}}"#;
    kubectl_stdin(env, None, &["apply", "-n", watched, "-f", "-"], policy).unwrap();
    let _ = env.kubectl(&[
        "create",
        "secret",
        "generic",
        "restic-password",
        "-n",
        watched,
        "--from-literal=password=x",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let kc = token_kubeconfig(env, ns, dir.path());
    let as_operator = |args: &[&str]| -> anyhow::Result<String> {
        let out = env
            .command("kubectl")
            .env("KUBECONFIG", &kc)
            .args(args)
            .output()?;
        check(&format!("kubectl (as operator) {}", args.join(" ")), out)
    };
    // The token really is the ServiceAccount.
    let who = as_operator(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .unwrap();
    assert_eq!(
        who,
        format!("system:serviceaccount:{ns}:fleetsnap-operator")
    );

    // `kubectl auth can-i` with the token: a SelfSubjectAccessReview evaluated by the server.
    let can = |args: &[&str]| -> bool {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        let out = env
            .command("kubectl")
            .env("KUBECONFIG", &kc)
            .args(&a)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            said == "yes" || said == "no",
            "can-i {args:?}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        said == "yes"
    };
    let allowed: &[&[&str]] = &[
        &["list", "backuppolicies.fleetsnap.io", "--all-namespaces"],
        &["watch", "hosts.fleetsnap.io", "-n", watched],
        &["get", "restores.fleetsnap.io", "-n", watched],
        &[
            "patch",
            "backuppolicies.fleetsnap.io",
            "--subresource=status",
            "-n",
            watched,
        ],
        &[
            "update",
            "hosts.fleetsnap.io",
            "--subresource=status",
            "-n",
            watched,
        ],
        &["patch", "verifypolicies.fleetsnap.io", "-n", watched],
        &["get", "secrets", "-n", watched],
        &["list", "secrets", "-n", watched],
        &["create", "events.events.k8s.io", "-n", watched],
        &["create", "events", "-n", watched],
        &["create", "leases.coordination.k8s.io", "-n", ns],
        &[
            "update",
            "leases.coordination.k8s.io/fleetsnap-operator",
            "-n",
            ns,
        ],
        &[
            "get",
            "leases.coordination.k8s.io/fleetsnap-operator",
            "-n",
            ns,
        ],
    ];
    let refused: &[&[&str]] = &[
        &["delete", "secrets", "-n", watched],
        &["create", "secrets", "-n", watched],
        &["patch", "secrets", "-n", watched],
        &["create", "pods", "-n", watched],
        &["create", "pods/exec", "-n", watched],
        &["update", "backuppolicies.fleetsnap.io", "-n", watched],
        &["create", "backuppolicies.fleetsnap.io", "-n", watched],
        &["delete", "backuppolicies.fleetsnap.io", "-n", watched],
        &["delete", "hosts.fleetsnap.io", "-n", watched],
        &["create", "leases.coordination.k8s.io", "-n", other],
        &[
            "update",
            "leases.coordination.k8s.io/fleetsnap-operator",
            "-n",
            other,
        ],
        &[
            "update",
            "leases.coordination.k8s.io/someone-elses-lease",
            "-n",
            ns,
        ],
        &[
            "delete",
            "leases.coordination.k8s.io/fleetsnap-operator",
            "-n",
            ns,
        ],
        &["create", "clusterrolebindings"],
        &["update", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "serviceaccounts/token", "-n", ns],
    ];
    let mut wrong = Vec::new();
    for a in allowed {
        if !can(a) {
            wrong.push(format!("should be allowed: {a:?}"));
        }
    }
    for a in refused {
        if can(a) {
            wrong.push(format!("should be refused: {a:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // And for real, with requests the API server executes.
    as_operator(&["get", "backuppolicies", "-A"]).unwrap();
    as_operator(&["get", "secret", "restic-password", "-n", watched]).unwrap();
    as_operator(&[
        "patch",
        "backuppolicy",
        "nightly",
        "-n",
        watched,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"hostsTotal":3,"observedGeneration":1}}"#,
    ])
    .unwrap();
    let total = env
        .kubectl(&[
            "get",
            "backuppolicy",
            "nightly",
            "-n",
            watched,
            "-o",
            "jsonpath={.status.hostsTotal}",
        ])
        .unwrap();
    assert_eq!(total, "3");
    as_operator(&[
        "patch",
        "backuppolicy",
        "nightly",
        "-n",
        watched,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["fleetsnap.io/cleanup"]}}"#,
    ])
    .unwrap();
    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"fleetsnap-operator"},"spec":{"holderIdentity":"op-0","leaseDurationSeconds":15}}"#;
    let lease_file = dir.path().join("lease.json");
    std::fs::write(&lease_file, lease).unwrap();
    let lf = lease_file.to_str().unwrap();
    as_operator(&["create", "-n", ns, "-f", lf]).unwrap();
    as_operator(&["replace", "-n", ns, "-f", lf]).unwrap();
    let err = as_operator(&["create", "-n", other, "-f", lf]).unwrap_err();
    assert!(format!("{err:#}").contains("Forbidden"), "{err:#}");
    let err = as_operator(&["delete", "secret", "restic-password", "-n", watched]).unwrap_err();
    assert!(format!("{err:#}").contains("Forbidden"), "{err:#}");
    let err = as_operator(&["run", "pwn", "-n", watched, "--image=busybox"]).unwrap_err();
    assert!(format!("{err:#}").contains("Forbidden"), "{err:#}");
    // update (PUT) of the whole object: refused by RBAC.
    let current = env
        .kubectl(&[
            "get",
            "backuppolicy",
            "nightly",
            "-n",
            watched,
            "-o",
            "json",
        ])
        .unwrap();
    let err = kubectl_stdin(env, Some(&kc), &["replace", "-f", "-"], &current).unwrap_err();
    assert!(format!("{err:#}").contains("Forbidden"), "{err:#}");

    // A patch that changes spec passes RBAC (patch is needed for finalizers) but the chart's
    // ValidatingAdmissionPolicy refuses it. Policies load asynchronously: wait until the
    // server enforces it (dry-run probes change nothing).
    let spec_patch = r#"{"spec":{"paths":["/root"]}}"#;
    let refusal = wait::until(
        "the spec guard to be enforced",
        Duration::from_secs(60),
        || match as_operator(&[
            "patch",
            "backuppolicy",
            "nightly",
            "-n",
            watched,
            "--type=merge",
            "--dry-run=server",
            "-p",
            spec_patch,
        ]) {
            Ok(_) => Ok(None),
            Err(e) => Ok(Some(format!("{e:#}"))),
        },
    )
    .unwrap();
    assert!(refusal.contains("only status and finalizers"), "{refusal}");
    let err = as_operator(&[
        "patch",
        "backuppolicy",
        "nightly",
        "-n",
        watched,
        "--type=merge",
        "-p",
        spec_patch,
    ])
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("only status and finalizers"),
        "{err:#}"
    );
    let paths = env
        .kubectl(&[
            "get",
            "backuppolicy",
            "nightly",
            "-n",
            watched,
            "-o",
            "jsonpath={.spec.paths}",
        ])
        .unwrap();
    assert_eq!(paths, r#"["/etc"]"#);
    // The guard is specific to the operator: the admin can still edit spec.
    env.kubectl(&[
        "patch",
        "backuppolicy",
        "nightly",
        "-n",
        watched,
        "--type=merge",
        "--dry-run=server",
        "-p",
        spec_patch,
    ])
    .unwrap();
    // Finalizer and status changes still pass the guard.
    as_operator(&[
        "patch",
        "backuppolicy",
        "nightly",
        "-n",
        watched,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .unwrap();
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let alerts = chart().join("files/alerts.yaml");
    let out = promtool()
        .args(["check", "rules"])
        .arg(&alerts)
        .output()
        .unwrap();
    let text = check("promtool check rules", out).unwrap();
    assert!(text.contains("SUCCESS"), "{text}");

    let tests = chart().join("tests/alerts_test.yaml");
    let long_tests = chart().join("tests/alerts_long_test.yaml");
    let out = promtool()
        .args(["test", "rules"])
        .arg(&tests)
        .arg(&long_tests)
        .output()
        .unwrap();
    let text = check("promtool test rules", out).unwrap();
    assert_eq!(text.matches("SUCCESS").count(), 2, "{text}");
    // Every alert has unit tests.
    let all_tests =
        std::fs::read_to_string(&tests).unwrap() + &std::fs::read_to_string(&long_tests).unwrap();
    for line in std::fs::read_to_string(&alerts).unwrap().lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            let fired = all_tests
                .matches(&format!(
                    "alertname: {name}\n    exp_alerts:\n    - exp_labels"
                ))
                .count();
            let silent = all_tests
                .matches(&format!("alertname: {name}\n    exp_alerts: []"))
                .count();
            assert!(
                fired >= 1 && silent >= 1,
                "{name}: {fired} firing and {silent} silent cases"
            );
        }
    }

    // The unit tests can fail: with the staleness comparison inverted they must.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let rules = std::fs::read_to_string(&alerts).unwrap();
    let broken = rules.replacen(
        "> on (namespace, policy) group_left ()",
        "< on (namespace, policy) group_left ()",
        1,
    );
    assert_ne!(broken, rules);
    std::fs::write(dir.path().join("files/alerts.yaml"), broken).unwrap();
    std::fs::copy(&tests, dir.path().join("tests/alerts_test.yaml")).unwrap();
    let out = promtool()
        .args(["test", "rules"])
        .arg(dir.path().join("tests/alerts_test.yaml"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "promtool accepted broken rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Metric names (`fleetsnap_...`) used in a text, histogram series mapped to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("fleetsnap_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let preceded_by_word = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'/'
                || bytes[start - 1] == b'-'
                || bytes[start - 1] == b'.');
        if !preceded_by_word {
            let mut name = text[start..end].to_string();
            for suffix in ["_bucket", "_count", "_sum"] {
                if name.ends_with(suffix) && name.contains("duration_seconds") {
                    name.truncate(name.len() - suffix.len());
                }
            }
            names.insert(name);
        }
        i = end;
    }
    names
}

fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("fleetsnap_"))
        .map(String::from)
        .collect()
}

#[test]
fn alerts_and_dashboard_use_only_documented_metrics() {
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "{documented:?}");
    let alerts = std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap();
    // Only expressions count (annotations mention metric names in prose too).
    let exprs: String = alerts
        .split("expr: |")
        .skip(1)
        .map(|s| s.split("for:").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let used = metric_names(&exprs);
    for required in [
        "fleetsnap_backup_last_success_timestamp_seconds",
        "fleetsnap_backup_staleness_window_seconds",
        "fleetsnap_backup_host_selected",
        "fleetsnap_verify_consecutive_failures",
        "fleetsnap_verify_last_success_timestamp_seconds",
        "fleetsnap_retention_consecutive_failures",
        "fleetsnap_retention_last_success_timestamp_seconds",
        "fleetsnap_host_reachable",
    ] {
        assert!(used.contains(required), "no alert uses {required}");
    }
    let unknown: Vec<_> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics not in docs/metrics.md: {unknown:?}"
    );
    for alert in [
        "FleetsnapBackupStale",
        "FleetsnapBackupNeverSucceeded",
        "FleetsnapVerifyFailing",
        "FleetsnapVerifyOverdue",
        "FleetsnapRetentionFailing",
        "FleetsnapRetentionOverdue",
        "FleetsnapHostUnreachable",
    ] {
        assert!(
            alerts.contains(&format!("alert: {alert}\n")),
            "missing alert {alert}"
        );
    }

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut dash_exprs = String::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            dash_exprs.push_str(t["expr"].as_str().unwrap());
            dash_exprs.push('\n');
        }
    }
    let in_dash = metric_names(&dash_exprs);
    let unknown: Vec<_> = in_dash.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses metrics not in docs/metrics.md: {unknown:?}"
    );
    // Every documented metric is on the dashboard.
    let missing: Vec<_> = documented.difference(&in_dash).collect();
    assert!(missing.is_empty(), "dashboard lacks panels for {missing:?}");
}
