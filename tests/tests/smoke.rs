//! The environment is real: each test drives one real component and checks an effect that only
//! the real thing produces.

use std::process::{Command, Stdio};
use std::time::Duration;

use fleetsnap_tests::{Options, TestEnv, read_until, wait, workspace_bin};

fn env() -> &'static TestEnv {
    TestEnv::shared(Options {
        hosts: 2,
        ..Options::default()
    })
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.fleetsnap.io}
spec:
  group: smoke.fleetsnap.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
"#;

/// The README's shell setup: `source <dir>/env` in a fresh shell, then plain `kubectl` must
/// reach this API server (a variable that is set but not exported would leave kubectl
/// talking to localhost:8080).
#[test]
fn sourcing_the_env_file_is_enough_for_kubectl() {
    let env = env();
    let script = format!(
        "source '{}/env' && kubectl get --raw /readyz",
        env.dir().display()
    );
    let out = Command::new("env")
        .args([
            "-i",
            "HOME=/root",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "kubectl after `source env` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crd_applied_with_kubectl_is_served_and_watchable() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, WIDGET_CRD).unwrap();
    env.kubectl(&["apply", "-f", crd.to_str().unwrap()])
        .unwrap();
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/widgets.smoke.fleetsnap.io",
    ])
    .unwrap();

    let mut watch = env
        .command("kubectl")
        .args(["get", "widgets", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let obj = dir.path().join("w.yaml");
    std::fs::write(
        &obj,
        "apiVersion: smoke.fleetsnap.io/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    )
    .unwrap();
    env.kubectl(&["apply", "-f", obj.to_str().unwrap()])
        .unwrap();
    let seen = read_until(stdout, Duration::from_secs(60), |l| l.contains("w1"));
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen.unwrap().trim(), "widget.smoke.fleetsnap.io/w1");

    // The schema is enforced by the API server, not by a client.
    std::fs::write(
        &obj,
        "apiVersion: smoke.fleetsnap.io/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
    )
    .unwrap();
    let err = env
        .kubectl(&["apply", "-f", obj.to_str().unwrap()])
        .unwrap_err();
    assert!(format!("{err}").contains("spec.size"), "{err}");
}

#[test]
fn a_binary_copied_over_ssh_runs_on_the_host() {
    let env = env();
    let bin = workspace_bin("fleetsnap").unwrap();
    env.ssh_ok("host1", "mkdir -p /usr/local/lib/fleetsnap/smoke")
        .unwrap();
    env.scp(&bin, "host1", "/usr/local/lib/fleetsnap/smoke/fleetsnap")
        .unwrap();
    let local = std::process::Command::new("sha256sum")
        .arg(&bin)
        .output()
        .unwrap();
    let remote = env
        .ssh_ok(
            "host1",
            "sha256sum /usr/local/lib/fleetsnap/smoke/fleetsnap && /usr/local/lib/fleetsnap/smoke/fleetsnap --version && hostname",
        )
        .unwrap();
    let local_sum = String::from_utf8_lossy(&local.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(remote.starts_with(&local_sum), "{remote}");
    assert!(remote.contains("fleetsnap "), "{remote}");
    assert!(remote.trim_end().ends_with("host1"), "{remote}");
}

#[test]
fn a_systemd_timer_fires_and_the_journal_shows_the_run() {
    let env = env();
    let unit = "[Unit]\nDescription=smoke tick\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo smoke-tick-$(hostname)'\n";
    let timer =
        "[Timer]\nOnCalendar=*-*-* *:*:00/3\nAccuracySec=1s\n[Install]\nWantedBy=timers.target\n";
    let script = format!(
        "cat > /etc/systemd/system/smoke-tick.service <<'E'\n{unit}E\ncat > /etc/systemd/system/smoke-tick.timer <<'E'\n{timer}E\n\
         systemd-analyze verify /etc/systemd/system/smoke-tick.service /etc/systemd/system/smoke-tick.timer && \
         systemctl daemon-reload && systemctl enable --now smoke-tick.timer"
    );
    env.ssh_ok("host2", &script).unwrap();
    let journal = wait::until(
        "the timer's first run in the journal",
        Duration::from_secs(60),
        || {
            let out = env.ssh_ok(
                "host2",
                "journalctl -u smoke-tick.service --no-pager -o cat",
            )?;
            Ok(out.contains("smoke-tick-host2").then_some(out))
        },
    )
    .unwrap();
    assert!(journal.contains("smoke-tick-host2"));
    let state = env
        .ssh_ok(
            "host2",
            "systemctl show smoke-tick.timer -p LastTriggerUSec --value",
        )
        .unwrap();
    assert!(!state.trim().is_empty() && state.trim() != "n/a", "{state}");
}

#[test]
fn an_object_written_inside_a_host_lands_in_minio() {
    let env = env();
    env.mc(&["mb", "--ignore-existing", "testenv/smoke-inbox"])
        .unwrap();
    env.scp(&env.tool("mc"), "host1", "/usr/local/bin/mc")
        .unwrap();
    // The credentials travel on stdin, never on a command line.
    let url = format!(
        "http://{}:{}@10.0.2.100:9000\n",
        env.var("MINIO_ROOT_USER"),
        env.var("MINIO_ROOT_PASSWORD")
    );
    let out = env
        .ssh(
            "host1",
            "read -r MC_HOST_s3 && export MC_HOST_s3 && echo \"written-by-$(hostname)\" | mc --quiet pipe s3/smoke-inbox/from-host1.txt",
            url.as_bytes(),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = env
        .mc(&["cat", "testenv/smoke-inbox/from-host1.txt"])
        .unwrap();
    assert_eq!(body.trim(), "written-by-host1");
}

#[test]
fn object_lock_refuses_deleting_a_locked_version() {
    let env = env();
    env.mc(&["mb", "--with-lock", "testenv/smoke-locked"])
        .unwrap();
    env.mc(&[
        "retention",
        "set",
        "--default",
        "GOVERNANCE",
        "1d",
        "testenv/smoke-locked",
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("obj");
    std::fs::write(&f, b"history").unwrap();
    env.mc(&["cp", f.to_str().unwrap(), "testenv/smoke-locked/obj"])
        .unwrap();
    let listing = env
        .mc(&["ls", "--versions", "--json", "testenv/smoke-locked/obj"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(listing.lines().next().unwrap()).unwrap();
    let version = v["versionId"].as_str().unwrap().to_string();
    let err = env
        .mc(&["rm", "--version-id", &version, "testenv/smoke-locked/obj"])
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("worm")
            || format!("{err:#}").contains("Object is WORM protected")
            || format!("{err:#}").contains("AccessDenied"),
        "{err:#}"
    );
    // The version is still there and readable.
    assert_eq!(
        env.mc(&["cat", "--version-id", &version, "testenv/smoke-locked/obj"])
            .unwrap(),
        "history"
    );
}

/// Onboarding: an Ansible inventory of the test hosts becomes Host objects whose host keys
/// were read from the real sshd (the fingerprints are ssh-keygen's), and the API server
/// admits them; an unreachable host stops the write unless it is skipped by request.
#[test]
fn onboarding_an_inventory_pins_the_keys_sshd_presents() {
    let env = env();
    fleetsnap_tests::kube::install_crds(env);
    let ns = "onboard-smoke";
    let _ = env.kubectl(&["create", "namespace", ns]);
    let hosts = env.hosts();
    let dir = tempfile::tempdir().unwrap();
    let mut ini = String::from("[web]\n");
    ini += &format!(
        "{} ansible_host=127.0.0.1 ansible_port={}\n",
        hosts[0],
        env.ssh_port(&hosts[0])
    );
    ini += "[db]\n";
    ini += &format!(
        "{} ansible_host=127.0.0.1 ansible_port={}\n",
        hosts[1],
        env.ssh_port(&hosts[1])
    );
    ini += "[prod:children]\nweb\ndb\n";
    let inv = dir.path().join("hosts.ini");
    std::fs::write(&inv, &ini).unwrap();
    let out_yaml = dir.path().join("hosts.yaml");
    let bin = workspace_bin("kubectl-fleetsnap").unwrap();
    let onboard = |inv: &std::path::Path, extra: &[&str]| {
        Command::new(&bin)
            .arg("onboard")
            .arg(inv)
            .args([
                "--ssh-key-secret",
                "fleet-ssh",
                "-n",
                ns,
                "--yes",
                "--timeout",
                "3",
            ])
            .arg("-o")
            .arg(&out_yaml)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = onboard(&inv, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // What sshd presents, as ssh-keygen fingerprints it.
    let key_file = dir.path().join("host_key.pub");
    std::fs::write(&key_file, format!("{}\n", env.var("HOST_KEY"))).unwrap();
    let fp = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&key_file)
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        stderr.matches(&fp).count(),
        2,
        "fingerprint {fp} not shown per host:\n{stderr}"
    );
    let want_key: Vec<&str> = env.var("HOST_KEY").split_whitespace().take(2).collect();
    let yaml = std::fs::read_to_string(&out_yaml).unwrap();
    let docs: Vec<serde_json::Value> = yaml
        .split("---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    for (d, h) in docs.iter().zip(&hosts) {
        assert_eq!(d["metadata"]["name"], h.as_str());
        assert_eq!(d["spec"]["hostKey"], want_key.join(" "));
        assert_eq!(
            d["metadata"]["labels"]["inventory.fleetsnap.io/prod"],
            "true"
        );
    }
    // Admitted by the real API server (schema and CEL rules of the Host CRD).
    env.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        out_yaml.to_str().unwrap(),
    ])
    .unwrap();

    // A host with no sshd: nothing is written, and the failure names it.
    std::fs::remove_file(&out_yaml).unwrap();
    let with_dead = dir.path().join("with-dead.ini");
    std::fs::write(
        &with_dead,
        format!("{ini}[db]\ndead ansible_host=127.0.0.1 ansible_port=1\n"),
    )
    .unwrap();
    let out = onboard(&with_dead, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("dead") && stderr.contains("FAILED"),
        "{stderr}"
    );
    assert!(!out_yaml.exists(), "written although a host failed");
    // Skipped by request: the others are written, and the exit code says some were left out.
    let out = onboard(&with_dead, &["--skip-failed"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out_yaml)
            .unwrap()
            .matches("kind: Host")
            .count(),
        2
    );
}
